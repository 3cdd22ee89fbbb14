"""Recording and differentiating rollouts: the only module of diffenvs that creates a ``wp.Tape``.

A :class:`Trajectory` holds one :class:`~diffenvs.task.StepBuffers` per environment step and one
tape per step. Buffers are allocated the first time a step index is reached and reused by later
episodes, so recording never allocates in steady state and never overwrites an array that a
tape has read (Warp's tape does not version arrays). One tape per step lets a diverged step be
dropped without re-recording the episode, and lets the backward pass be seeded per step.

Memory: with ``differentiable=True`` a trajectory keeps, for every step of the longest episode
seen, the task's step buffers and their gradients (2x the buffer size). With
``checkpoint=True`` it keeps per step only the step's outputs (state, reward, loss, observation,
action) and shares one set of scratch arrays (substep states, grids) between all steps: the
forward pass records no tape, and the backward pass re-runs each step on a tape, newest first,
before differentiating it. Memory is then ``T * (outputs) + 1 * (scratch)``, each with its
gradient, for about one extra forward pass of compute. With ``differentiable=False`` it keeps two
step buffers (ping-pong) and no gradients.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import warp as wp

from diffenvs.task import State, StepBuffers, Task, _walk_arrays


class GradientError(RuntimeError):
    """Raised when a gradient is requested that the recorded trajectory cannot provide."""


class Trajectory:
    """Per-step buffers and tapes of a batched rollout, starting from ``initial``.

    Args:
        task: Task whose steps are recorded.
        differentiable: Record each step on a tape and keep every step's buffers.
        checkpoint: Keep only each step's outputs and recompute its internals in the backward
            pass; ignored without ``differentiable`` (nothing is kept then).
    """

    def __init__(self, task: Task, *, differentiable: bool, checkpoint: bool = False):
        self.task = task
        self.differentiable = bool(differentiable)
        self.checkpoint = bool(checkpoint) and self.differentiable
        self.initial: State = task.alloc_state(requires_grad=self.differentiable)
        self._buffers: list[StepBuffers] = []
        self._tapes: list[wp.Tape] = []
        self.length = 0

    def state(self, t: int | None = None) -> State:
        """State after ``t`` recorded steps (default: after all of them)."""
        t = self.length if t is None else t
        if not 0 <= t <= self.length:
            raise IndexError(f"step {t} is outside the recorded 0..{self.length}")
        if t == 0:
            return self.initial
        if not self.differentiable and t < self.length - 1:
            raise IndexError("a non-differentiable trajectory keeps only its last state")
        return self.buffers(t - 1).state

    def buffers(self, t: int) -> StepBuffers:
        """Buffers of step ``t`` (allocated on first use)."""
        slot = t if self.differentiable else t % 2
        while len(self._buffers) <= slot:
            buffers = self.task.alloc_step(requires_grad=self.differentiable)
            if self.checkpoint and self._buffers:
                buffers.share_scratch(self._buffers[0])
            self._buffers.append(buffers)
            self._tapes.append(wp.Tape())
        return self._buffers[slot]

    @property
    def recorded(self) -> Sequence[StepBuffers]:
        """Buffers of the recorded steps, oldest first (differentiable trajectories only)."""
        if not self.differentiable:
            raise GradientError("this trajectory was built with differentiable=False and keeps no history")
        return self._buffers[: self.length]

    def clear(self) -> None:
        """Forget the recorded steps (their buffers are kept for reuse)."""
        for tape in self._tapes[: self.length]:
            tape.reset()
        self.length = 0

    def record(self) -> StepBuffers:
        """Run the task's next step, on a tape when differentiable and not checkpointing.

        The caller writes ``buffers(self.length).action`` before calling.
        """
        t = self.length
        state_in = self.state(t)
        buffers = self.buffers(t)
        if self.differentiable and not self.checkpoint:
            tape = self._tapes[t]
            tape.reset()
            with tape:
                self.task.step(state_in, buffers)
        else:
            self.task.step(state_in, buffers)
        self.length = t + 1
        return buffers

    def drop_last(self) -> None:
        """Forget the last recorded step (used when it diverged)."""
        if self.length == 0:
            raise IndexError("no step to drop")
        self.length -= 1
        if self.differentiable:
            self._tapes[self.length].reset()

    def backward(self, seed: Callable[[Sequence[StepBuffers]], None]) -> None:
        """Zero all gradients, let ``seed`` write the adjoints of the objective, run every tape backwards."""
        if not self.differentiable:
            raise GradientError("gradients are unavailable: the env was built with differentiable=False")
        if self.length == 0:
            raise GradientError("no step recorded since the last reset: call step() before grad()")
        for array in _walk_arrays(self.initial):
            array.grad.zero_()
        for buffers in self.recorded:
            for array in buffers.arrays():
                if array.grad is not None:
                    array.grad.zero_()
        seed(self.recorded)
        for t in reversed(range(self.length)):
            if self.checkpoint:
                # Re-run the step on a fresh tape: it rewrites the step's outputs with the same
                # values and refills the shared scratch, whose adjoints must start from zero.
                # (Tape.reset() would zero every gradient the tape touched, the adjoints just
                # propagated into this step's inputs included, so the tape is dropped instead.)
                for array in self._buffers[t].scratch_arrays():
                    if array.grad is not None:
                        array.grad.zero_()
                tape = wp.Tape()
                with tape:
                    self.task.step(self.state(t), self._buffers[t])
                tape.backward()
            else:
                self._tapes[t].backward()
