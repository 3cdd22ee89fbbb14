"""Recording and differentiating rollouts: the only module of diffenvs that creates a ``wp.Tape``.

A :class:`Trajectory` holds one :class:`~diffenvs.task.StepBuffers` per environment step and one
tape per step. Buffers are allocated the first time a step index is reached and reused by later
episodes, so recording never allocates in steady state and never overwrites an array that a
tape has read (Warp's tape does not version arrays), except where checkpointing overwrites and
then restores one by design (below). One tape per step lets a diverged step be
dropped without re-recording the episode, and lets the backward pass be seeded per step.

Memory: with ``differentiable=True`` a trajectory keeps, for every step of the longest episode
seen, the task's step buffers: the step's outputs (state, reward, loss, observation, action) with
their gradients, and its scratch (substep states, grids) without: the backward pass
differentiates one step at a time, so all steps share one set of scratch gradients, zeroed
before each step's backward pass. Memory is ``T * (2 * outputs + scratch) + 1 * scratch``.

With ``checkpoint=True`` steps use two sets of scratch values in turn (step t the set t % 2).
Each step is still recorded on its tape in the forward pass, but later steps overwrite its
scratch; the backward pass refills a step's set (an untaped re-run of the step, whose outputs go
to throwaway buffers) before running its tape. The two newest steps need no refill, and on the
CPU the refill of step t - 1 runs on a second thread while step t is differentiated: Warp
releases the GIL while a kernel runs, and the two touch disjoint arrays. Memory is
``T * (2 * outputs) + 3 * scratch``, for one extra forward pass of compute, mostly hidden on a
2-core CPU. With ``differentiable=False`` a trajectory keeps two step buffers (ping-pong) and no
gradients.

Replays (CUDA graphs): on a CUDA device the launches of a step (its forward pass, the divergence
check, a checkpointing refill, the backward pass of a step's tape) are captured as a CUDA graph the
second time the same step runs on the same buffers, and replayed after that: one graph launch
instead of a hundred-odd kernel launches from Python. A replayed recorded step reuses the tape
captured with it (the same launches on the same arrays). What changes the launches' scalar
arguments (the task's remedies) drops every graph (:meth:`Trajectory.forget_replays`);
``DIFFENVS_CUDA_GRAPHS=0`` in the environment turns graphs off. On the CPU,
``set_replay_mode("rerun")`` emulates a replay by re-running the step's launches outside any tape,
which tests the tape reuse without a GPU.

Threads: Warp's tape is global to the process, so differentiable envs must not be stepped or
differentiated from two Python threads at once (a launch in one would be recorded on the
other's tape). Run parallel studies in processes (e.g. Ray workers), not threads.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np
import warp as wp

from diffenvs.task import State, StepBuffers, Task
from diffenvs.warp_util import forget_reads, pooled_grads, walk_arrays

SCRATCH_SETS = 2
"""Checkpointing keeps this many sets of scratch values (substep states, grids), used by steps in
turn: the newest steps' sets are still filled when the backward pass starts, and one set is
refilled while the other's step is differentiated."""


class GradientError(RuntimeError):
    """Raised when a gradient is requested that the recorded trajectory cannot provide."""


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


class Replays:
    """Launch sequences run once, captured the second time and replayed after that.

    Args:
        device: The device the launches run on.
        mode: ``"graph"`` (CUDA graphs; CUDA devices only), ``"rerun"`` (call the function again,
            outside any tape: the CPU's stand-in for a replay, for tests) or ``None`` (always call it).
    """

    def __init__(self, device: wp.Device, mode: str | None):
        if mode not in (None, "graph", "rerun"):
            raise ValueError(f"replay mode must be None, 'graph' or 'rerun', got {mode!r}")
        if mode == "graph" and not device.is_cuda:
            raise ValueError(f"CUDA graphs need a CUDA device, got {device}")
        self.device = device
        self.mode = mode
        self._seen: set = set()
        self._graphs: dict[Any, Any] = {}
        self.captures = 0
        self.replays = 0

    def has(self, key: Any) -> bool:
        """Whether ``key``'s launches are captured (the next :meth:`run` replays them)."""
        return key in self._graphs

    def run(self, key: Any, launch: Callable[[], None], *, capture: Callable[[Callable[[], None]], None] | None = None) -> bool:
        """Run ``launch``'s launches for ``key``: called the first time, captured the second (through
        ``capture(launch)`` when given, e.g. inside a tape), replayed after that. Return whether
        this call captured."""
        run = capture or (lambda f: f())
        if self.mode is None:
            run(launch)
            return False
        if key in self._graphs:
            if self.mode == "graph":
                wp.capture_launch(self._graphs[key])
            else:
                launch()
            self.replays += 1
            return False
        if key not in self._seen:  # the first run loads the kernels' modules, which a capture must not do
            self._seen.add(key)
            run(launch)
            return False
        if self.mode == "graph":
            with wp.ScopedCapture(device=self.device, force_module_load=False) as captured:
                run(launch)
            self._graphs[key] = captured.graph
            wp.capture_launch(captured.graph)
        else:
            run(launch)
            self._graphs[key] = None
        self.captures += 1
        return True

    def forget(self) -> None:
        """Drop every capture (the launches' arguments changed)."""
        self._seen.clear()
        self._graphs.clear()


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
        self.parallel_refill = task.parallel_refill
        """Checkpointing on the CPU: refill a step's scratch on a second thread while the step after
        it is differentiated (default: the task's choice; False runs everything on the calling
        thread, e.g. to time kernels)."""
        self._holder: dict[int, int] = {}  # checkpointing: scratch set -> the step whose values it holds
        self._refill: dict[int, StepBuffers] = {}  # checkpointing: per scratch set, throwaway outputs
        self._output_grads: list[wp.array] = []  # per step: the buffer holding its outputs' gradients
        self._scratch_grads: wp.array | None = None  # the scratch gradients of every step (tape-cleared ones aside)
        self.length = 0
        graphs = task.device.is_cuda and task.replayable and os.environ.get("DIFFENVS_CUDA_GRAPHS", "1") != "0"
        self.replays = Replays(task.device, "graph" if graphs else None)
        """Captured steps (see the module's notes and :meth:`set_replay_mode`)."""
        self._replayed_tapes: dict[Any, wp.Tape] = {}  # per captured recorded step: the tape captured with it
        self._next_backward = 0  # backward_step: the step differentiated last (a call at or after it starts a pass)

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
            if self.differentiable and self._buffers:
                # All steps share one set of scratch gradients: allocate none for them.
                buffers = self.task.alloc_step(requires_grad=False)
                self._output_grads.append(buffers.attach_grads(self._buffers[0]))
                if self.checkpoint and len(self._buffers) >= SCRATCH_SETS:
                    buffers.share_scratch(self._buffers[len(self._buffers) % SCRATCH_SETS])
            elif not self.differentiable:  # two buffers in turn, one set of scratch
                buffers = self.task.alloc_step(requires_grad=False, forward_only=True)
                if self._buffers:
                    buffers.share_scratch(self._buffers[0])
            else:  # the first recorded step's: its gradients move into two buffers
                buffers = self.task.alloc_step(requires_grad=True)
                scratch = {id(a) for a in buffers.scratch_arrays()}
                cleared = {id(a) for a in buffers.tape_cleared_arrays()}  # each step's tape clears the box it uses
                device = self.task.device
                self._scratch_grads = pooled_grads(
                    [a for a in buffers.scratch_arrays() if a.grad is not None and id(a) not in cleared], device)
                self._output_grads.append(
                    pooled_grads([a for a in buffers.arrays() if a.grad is not None and id(a) not in scratch], device))
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
        self._holder.clear()
        self.length = 0
        self._next_backward = 0

    def record(self, then: Callable[[StepBuffers], None] | None = None) -> StepBuffers:
        """Run the task's next step (on its tape when differentiable), then ``then(buffers)`` outside
        the tape (e.g. the task's divergence check); both are captured and replayed (see :class:`Replays`).

        The caller writes ``buffers(self.length).action`` before calling.
        """
        t = self.length
        state_in = self.state(t)
        buffers = self.buffers(t)
        previous = self._previous(t)
        key = ("step", self._slot(t), id(state_in), id(previous))

        def launch() -> None:
            self.task.step(state_in, buffers, previous)

        if self.differentiable:
            if self.checkpoint and t >= SCRATCH_SETS and wp.config.verify_autograd_array_access:
                forget_reads(self._tapes[t - SCRATCH_SETS])  # this step overwrites that one's scratch set
            if self._has_entry(t):  # its tape already holds the selection of this step's start state
                with self._tapes[t]:
                    launch()
            elif self.replays.has(key):  # the launches and the tape captured with them
                self.replays.run(key, launch)
                self._tapes[t] = self._replayed_tapes[key]
            else:
                tape = self._fresh_tape(t)

                def taped(f: Callable[[], None]) -> None:
                    with tape:
                        f()

                if self.replays.run(key, launch, capture=taped):
                    self._replayed_tapes[key] = tape
            if self.checkpoint:
                self._holder[t % SCRATCH_SETS] = t
        else:
            self.replays.run(key, launch)
        if then is not None:
            self.replays.run(("then", self._slot(t), getattr(then, "__qualname__", id(then))), lambda: then(buffers))
        self.length = t + 1
        self._next_backward = 0  # a new step: the next backward call starts a new pass
        return buffers

    def set_replay_mode(self, mode: str | None) -> None:
        """Capture and replay steps as CUDA graphs (``"graph"``, the default on CUDA), re-run them as
        a stand-in (``"rerun"``, for tests on the CPU) or launch every step (``None``).

        Raises:
            ValueError: for a mode the device cannot run, or a replay of a task whose launches depend on
                host-side values (:attr:`~diffenvs.task.Task.replayable`).
        """
        if mode is not None and not self.task.replayable:
            raise ValueError(f"{type(self.task).__name__}'s steps cannot be replayed: their launches depend on host-side "
                             "values (for dough: set task.solver.host_box = False first)")
        self.replays = Replays(self.task.device, mode)
        self._replayed_tapes.clear()

    def forget_replays(self) -> None:
        """Drop every captured step (call when the launches' scalar arguments change, e.g. remedies)."""
        self.replays.forget()
        self._replayed_tapes.clear()

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
        if self.checkpoint:
            self._holder.pop(self.length % SCRATCH_SETS, None)  # it holds the dropped step's values

    def backward(self, seed: Callable[[Sequence[StepBuffers]], None]) -> None:
        """Zero all gradients, let ``seed`` write the adjoints of the objective, run every tape backwards."""
        self._zero_grads()
        seed(self.recorded)
        pending: Future | None = None
        # Checkpointing: each step's tape was recorded in the forward pass and reads its scratch
        # set, which later steps overwrote; it is refilled (an untaped re-run of the step) before the
        # tape runs. The two newest steps' sets are still filled. On the CPU the refill of step
        # t - 1 runs on a second thread while step t is differentiated (Warp releases the GIL while
        # a kernel runs; the two touch disjoint arrays); on a GPU both would queue on one stream.
        parallel = self.checkpoint and self.parallel_refill and self.task.device.is_cpu
        pool = ThreadPoolExecutor(1, thread_name_prefix="diffenvs-refill") if parallel else None
        try:
            for t in reversed(range(self.length)):
                if pending is not None:
                    pending.result()
                    pending = None
                if self.checkpoint and self._holder.get(t % SCRATCH_SETS) != t:
                    self._refill_scratch(t)
                if pool is not None and t > 0 and self._holder.get((t - 1) % SCRATCH_SETS) != t - 1:
                    pending = pool.submit(self._refill_scratch, t - 1)
                self._backward_step(t)
        finally:
            if pending is not None:
                pending.result()
            if pool is not None:
                pool.shutdown()
        self._next_backward = 0

    def backward_step(self, t: int, seed: Callable[[StepBuffers], None]) -> None:
        """Differentiate one step: a backward pass driven step by step from outside (PyTorch's
        autograd calls the steps of a rollout newest first).

        ``seed(buffers)`` writes the adjoints of step ``t``'s outputs that come from outside (its
        reward and observation: nothing inside the trajectory reads them); the adjoint of its state
        comes from the later steps already differentiated. A call for a step at or after the last
        one differentiated starts a new pass (all gradients zeroed); steps skipped at the end of a
        pass (their outputs unused) contribute nothing.
        """
        if not 0 <= t < self.length:
            raise IndexError(f"step {t} is outside the recorded 0..{self.length - 1}")
        if t >= self._next_backward:
            self._zero_grads()
        seed(self.buffers(t))
        if self.checkpoint and self._holder.get(t % SCRATCH_SETS) != t:
            self._refill_scratch(t)
        self._backward_step(t)
        self._next_backward = t

    def _zero_grads(self) -> None:
        if not self.differentiable:
            raise GradientError("gradients are unavailable: the env was built with differentiable=False")
        if self.length == 0:
            raise GradientError("no step recorded since the last reset: call step() before grad()")
        for array in walk_arrays(self.initial):
            array.grad.zero_()
        for entry in self._entries.values():
            if 0 <= entry.step < self.length:
                for array in walk_arrays([entry.fresh, entry.state]):
                    array.grad.zero_()
        # Every step shares one set of scratch gradients, zeroed before each step's backward pass
        # (tape-cleared ones aside); each step's outputs' gradients lie in one buffer.
        for grads in self._output_grads[: self.length]:
            grads.zero_()

    def _backward_step(self, t: int) -> None:
        """Run step ``t``'s tape backwards (replayed where the tape is one captured with its step)."""
        tape = self._tapes[t]

        def launch() -> None:
            self._scratch_grads.zero_()  # (the step's tape clears its tape-cleared arrays itself)
            tape.backward()

        if any(captured is tape for captured in self._replayed_tapes.values()):
            self.replays.run(("backward", id(tape)), launch)  # the tape lives as long as its capture
        else:
            launch()

    def _refill_scratch(self, t: int) -> None:
        """Checkpointing: re-run step ``t`` without a tape to refill its scratch set with the values
        its forward pass wrote (the step's tape, recorded then, reads them). The step's outputs,
        kept since, are not rewritten: the re-run writes them into throwaway buffers."""
        target = t % SCRATCH_SETS
        self._holder.pop(target, None)
        refill = self._refill.get(target)
        if refill is None:
            refill = self._refill[target] = self.task.alloc_step(requires_grad=False, forward_only=True)
        refill.share_scratch(self._buffers[target])
        refill.action = self._buffers[t].action  # the step's input
        state_in, previous = self.state(t), self._previous(t)

        def launch() -> None:
            self.task.step(state_in, refill, previous)  # no tape records (none is active)

        if self._has_entry(t):
            launch()
        else:
            self.replays.run(("refill", t, id(state_in), id(previous)), launch)
        self._holder[target] = t


class _no_tape:
    """A context manager that records nothing (non-differentiable trajectories)."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None
