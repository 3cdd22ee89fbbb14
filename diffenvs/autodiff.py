"""Recording and differentiating rollouts: the only module of diffenvs that creates a ``wp.Tape``.

A :class:`Trajectory` holds one :class:`~diffenvs.task.StepBuffers` per environment step and one
tape per step. Buffers are allocated the first time a step index is reached and reused by later
episodes, so recording never allocates in steady state and never overwrites an array that a
tape has read (Warp's tape does not version arrays). One tape per step lets a diverged step be
dropped without re-recording the episode, and lets the backward pass be seeded per step.

Memory: with ``differentiable=True`` a trajectory keeps, for every step of the longest episode
seen, the task's step buffers: the step's outputs (state, reward, loss, observation, action) with
their gradients, and its scratch (substep states, grids) without: the backward pass
differentiates one step at a time, so all steps share one set of scratch gradients, zeroed
before each step's backward pass. Memory is ``T * (2 * outputs + scratch) + 1 * scratch``. With
``checkpoint=True`` all steps also share one set of scratch values: the forward pass records no
tape, and the backward pass re-runs each step on a tape, newest first, before differentiating
it. Memory is then ``T * (2 * outputs) + 2 * scratch``, for about one extra forward pass of
compute. With ``differentiable=False`` it keeps two step buffers (ping-pong) and no gradients.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import warp as wp

from diffenvs.task import State, StepBuffers, Task, _walk_arrays


class GradientError(RuntimeError):
    """Raised when a gradient is requested that the recorded trajectory cannot provide."""


def record_adjoint(backward: Callable[[], None], arrays: Sequence[wp.array]) -> bool:
    """Record a hand-written adjoint on the tape that is recording now; return whether one was.

    For kernels launched with ``record_tape=False`` whose adjoint is written by hand (faster
    than Warp's generated one): ``backward`` runs in the backward pass in place of the generated
    adjoint and must *add* to the gradients of the kernel's inputs. ``arrays`` are the arrays it
    reads or writes, whose gradients the tape zeroes in ``Tape.zero()``.
    """
    runtime = wp._src.context.runtime
    tape = None if runtime is None else runtime.tape
    if tape is None:
        return False
    tape.record_func(backward, [a for a in arrays if a.grad is not None])  # (the others have no gradient to zero)
    return True


@wp.kernel
def select_worlds(mask: wp.array(dtype=wp.int32), fresh: wp.array(dtype=Any), current: wp.array(dtype=Any), out: wp.array(dtype=Any)):
    """out = fresh where mask else current, per world (one value per world)."""
    w = wp.tid()
    if mask[w] != 0:
        out[w] = fresh[w]
    else:
        out[w] = current[w]


@wp.kernel
def select_worlds_2d(
    mask: wp.array(dtype=wp.int32), fresh: wp.array2d(dtype=Any), current: wp.array2d(dtype=Any), out: wp.array2d(dtype=Any)
):
    """out = fresh where mask else current, per world (a row of values per world)."""
    w, i = wp.tid()
    if mask[w] != 0:
        out[w, i] = fresh[w, i]
    else:
        out[w, i] = current[w, i]


@dataclasses.dataclass
class Entry:
    """Worlds reset between two steps: the fresh states and the state the next step starts from.

    Attributes:
        step: Index of the step that starts from ``state`` (-1: unused).
        mask: 1 for the worlds that were reset, shape (world_count,), int32.
        fresh: The reset worlds' new initial states (leaves of the tape: their gradients are the
            initial-state gradients of those worlds' new episodes).
        state: ``fresh`` where ``mask`` else the previous step's state.
    """

    step: int
    mask: wp.array
    fresh: dict[str, wp.array]
    state: dict[str, wp.array]
    mask_host: np.ndarray = None


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
        self._entries: dict[int, Entry] = {}
        self.length = 0

    def state(self, t: int | None = None) -> State:
        """State after ``t`` recorded steps (default: after all of them)."""
        t = self.length if t is None else t
        if not 0 <= t <= self.length:
            raise IndexError(f"step {t} is outside the recorded 0..{self.length}")
        entry = self._entries.get(self._slot(t))
        if entry is not None and entry.step == t:
            return entry.state
        if t == 0:
            return self.initial
        if not self.differentiable and t < self.length - 1:
            raise IndexError("a non-differentiable trajectory keeps only its last state")
        return self.buffers(t - 1).state

    def _slot(self, t: int) -> int:
        return t if self.differentiable else t % 2

    def reset_worlds(self, mask: np.ndarray, fresh: dict[str, np.ndarray]) -> None:
        """Start new episodes in the worlds of ``mask`` from ``fresh`` (batched numpy, all worlds).

        The next step starts from ``fresh`` in those worlds and from the current state in the
        others. The selection is recorded on the next step's tape, so no gradient flows from a
        world's new episode into its old one.
        """
        t = self.length
        slot = self._slot(t)
        entry = self._entries.get(slot)
        if entry is None:
            entry = Entry(
                step=-1, mask=wp.zeros(self.task.world_count, dtype=wp.int32, device=self.task.device),
                fresh=self.task.alloc_state(requires_grad=self.differentiable),
                state=self.task.alloc_state(requires_grad=self.differentiable),
            )
            self._entries[slot] = entry
        if entry.step == t:
            raise RuntimeError("worlds were already reset before this step")
        previous = self.state(t)
        entry.mask_host = np.asarray(mask, dtype=bool).copy()
        entry.mask.assign(entry.mask_host.astype(np.int32))
        for name, array in entry.fresh.items():
            array.assign(np.asarray(fresh[name], dtype=array.numpy().dtype).reshape(array.numpy().shape))
        tape = self._fresh_tape(t)
        with tape if self.differentiable else _no_tape():
            for name, out in entry.state.items():
                kernel = select_worlds if out.ndim == 1 else select_worlds_2d
                wp.launch(kernel, dim=out.shape, inputs=[entry.mask, entry.fresh[name], previous[name]], outputs=[out],
                          device=self.task.device)
        entry.step = t

    def _fresh_tape(self, t: int) -> wp.Tape:
        """An empty tape for step ``t`` in place of its old one.

        Not ``Tape.reset()``: that zeroes the gradient of every array the old tape touched,
        whole grids included (milliseconds per step, and it makes untouched memory resident);
        :meth:`backward` zeroes what it needs.
        """
        self.buffers(t)  # allocates the step's buffers and tape
        self._tapes[self._slot(t)] = wp.Tape()
        return self._tapes[self._slot(t)]

    def reset_step(self, world: int) -> int:
        """Index of the step at which ``world``'s current episode started (0: the trajectory's start)."""
        start = 0
        for entry in self._entries.values():
            if start < entry.step <= self.length and entry.mask_host[world]:
                start = entry.step
        return start

    def initial_state_of(self, world: int) -> dict[str, wp.array]:
        """Arrays holding ``world``'s current episode's initial state (and its gradient)."""
        start = self.reset_step(world)
        return self.initial if start == 0 else self._entries[self._slot(start)].fresh

    def buffers(self, t: int) -> StepBuffers:
        """Buffers of step ``t`` (allocated on first use)."""
        slot = t if self.differentiable else t % 2
        while len(self._buffers) <= slot:
            if self.differentiable and not self.checkpoint and self._buffers:
                # The scratch's gradients are shared by all steps: allocate none for it.
                buffers = self.task.alloc_step(requires_grad=False)
                buffers.attach_grads(self._buffers[0])
            else:
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
        """Forget the recorded steps and resets (their buffers are kept for reuse)."""
        for t in range(min(self.length + 1, len(self._tapes))):
            self._tapes[t] = wp.Tape()
        for entry in self._entries.values():
            entry.step = -1
        self.length = 0

    def record(self) -> StepBuffers:
        """Run the task's next step, on a tape when differentiable and not checkpointing.

        The caller writes ``buffers(self.length).action`` before calling.
        """
        t = self.length
        state_in = self.state(t)
        buffers = self.buffers(t)
        previous = self._previous(t)
        if self.differentiable and not self.checkpoint:
            # A reset entry's tape already holds the selection of this step's start state.
            tape = self._tapes[t] if self._has_entry(t) else self._fresh_tape(t)
            with tape:
                self.task.step(state_in, buffers, previous)
        else:
            self.task.step(state_in, buffers, previous)
        self.length = t + 1
        return buffers

    def _previous(self, t: int) -> StepBuffers | None:
        """Buffers of the step whose output step ``t`` starts from in every world (None at a start or reset)."""
        if t == 0 or self._has_entry(t):
            return None
        return self.buffers(t - 1)

    def _has_entry(self, t: int) -> bool:
        entry = self._entries.get(self._slot(t))
        return entry is not None and entry.step == t

    def drop_last(self) -> None:
        """Forget the last recorded step (used when it diverged)."""
        if self.length == 0:
            raise IndexError("no step to drop")
        self.length -= 1
        if self.differentiable:
            self._tapes[self.length] = wp.Tape()

    def backward(self, seed: Callable[[Sequence[StepBuffers]], None]) -> None:
        """Zero all gradients, let ``seed`` write the adjoints of the objective, run every tape backwards."""
        if not self.differentiable:
            raise GradientError("gradients are unavailable: the env was built with differentiable=False")
        if self.length == 0:
            raise GradientError("no step recorded since the last reset: call step() before grad()")
        for array in _walk_arrays(self.initial):
            array.grad.zero_()
        for entry in self._entries.values():
            if 0 <= entry.step < self.length:
                for array in _walk_arrays([entry.fresh, entry.state]):
                    array.grad.zero_()
        # Every step shares one set of scratch gradients, zeroed before each step's backward pass
        # below; zero the other gradients here, each once (thousands of small zero_() calls add up).
        seen: set[int] = set()
        for buffers in self.recorded:
            skip = {id(a) for a in buffers.scratch_arrays()}
            for array in buffers.arrays():
                if array.grad is not None and id(array) not in seen and id(array) not in skip:
                    seen.add(id(array))
                    array.grad.zero_()
        seed(self.recorded)
        for t in reversed(range(self.length)):
            buffers = self._buffers[t]
            cleared = {id(a) for a in buffers.tape_cleared_arrays()}  # the step's tape clears what it uses
            for array in buffers.scratch_arrays():
                if array.grad is not None and id(array) not in cleared:
                    array.grad.zero_()
            if self.checkpoint:
                # Re-run the step on a fresh tape: it rewrites the step's outputs with the same
                # values and refills the shared scratch. (Tape.reset() would zero every gradient
                # the tape touched, the adjoints just propagated into this step's inputs included,
                # so the tape is dropped instead.)
                tape = wp.Tape()
                with tape:
                    self.task.step(self.state(t), buffers, self._previous(t))
                tape.backward()
                if self._has_entry(t):
                    self._tapes[t].backward()  # the reset selection feeding this step
            else:
                self._tapes[t].backward()


class _no_tape:
    """A context manager that records nothing (non-differentiable trajectories)."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None
