"""The batched task interface that every diffenvs environment is built on.

A :class:`Task` owns the physics of ``world_count`` independent worlds and defines, for all of
them at once, what one environment step does: apply the actions, run the solver's substeps,
compute the loss, the reward terms and the observation. Everything a step writes goes into a
:class:`StepBuffers` that the caller allocates once and reuses, so that a recorded step never
overwrites an array that Warp's tape has read (see :mod:`diffenvs.autodiff`).

Envs (:mod:`diffenvs.env`) wrap a task; a single env is a task with one world.
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Iterator
from typing import Any, ClassVar

import numpy as np
import warp as wp

State = dict[str, wp.array]
"""A simulation state: named arrays whose first axis is the world index."""


@dataclasses.dataclass
class StepBuffers:
    """Everything one environment step writes, for all worlds.

    Tasks subclass it to add their intermediate arrays (substep states, controls).

    Attributes:
        action: Applied (clipped) action, shape (world_count, action_dim), float64.
        state: State after the step (same layout as :meth:`Task.alloc_state`).
        reward: Reward of the step, shape (world_count,), float64.
        reward_terms: Reward terms in the order of ``Task.reward_terms``, shape (world_count, K), float64.
        loss: Task loss after the step, shape (world_count,), float64.
        obs: Observation after the step, shape (world_count, obs_dim), float32.
        diverged: 1 where the step produced a non-finite or escaping state, shape (world_count,), int32.
    """

    action: wp.array
    state: State
    reward: wp.array
    reward_terms: wp.array
    loss: wp.array
    obs: wp.array
    diverged: wp.array

    scratch_fields: ClassVar[tuple[str, ...]] = ()
    """Fields only needed while the step runs (substep states, grids); checkpointing shares them."""

    tape_cleared_fields: ClassVar[tuple[str, ...]] = ()
    """Scratch fields whose gradients the step's own tape clears where it uses them, first thing in
    its backward pass (e.g. grids of which a step touches a small box): not zeroed by the trajectory."""

    def arrays(self) -> Iterator[wp.array]:
        """Every Warp array held by these buffers, nested states included."""
        yield from _walk_arrays(self)

    def scratch_arrays(self) -> Iterator[wp.array]:
        """The arrays of :attr:`scratch_fields`."""
        for name in self.scratch_fields:
            yield from _walk_arrays(getattr(self, name))

    def tape_cleared_arrays(self) -> Iterator[wp.array]:
        """The arrays of :attr:`tape_cleared_fields`."""
        for name in self.tape_cleared_fields:
            yield from _walk_arrays(getattr(self, name))

    def share_scratch(self, other: StepBuffers) -> None:
        """Use ``other``'s scratch arrays instead of this one's own."""
        for name in self.scratch_fields:
            setattr(self, name, getattr(other, name))

    def attach_grads(self, template: StepBuffers) -> wp.array:
        """Give these buffers (allocated without gradients) the gradients ``template`` has:
        ``template``'s own ones for the scratch fields, new zeroed ones for the step's outputs,
        all of them inside one buffer, which is returned (zeroing it zeroes them all).

        A backward pass differentiates one step at a time, and a step's scratch gradients are
        read only while its own tape runs backwards, so one set serves every step (the trajectory
        zeroes it before each step's backward pass).
        """
        scratch = {id(a) for a in template.scratch_arrays()}
        mine, theirs = list(self.arrays()), list(template.arrays())
        if len(mine) != len(theirs):
            raise ValueError(f"buffer layouts differ: {len(mine)} arrays against {len(theirs)}")
        outputs = []
        for array, source in zip(mine, theirs):
            if array.shape != source.shape or array.dtype != source.dtype:
                raise ValueError(f"buffer arrays differ: {array.shape} {array.dtype} against {source.shape} {source.dtype}")
            if source.grad is not None:
                if id(source) in scratch:
                    array.grad = source.grad
                else:
                    outputs.append(array)
        return pooled_grads(outputs, self.action.device)


def pooled_grads(arrays: list[wp.array], device: wp.context.Devicelike) -> wp.array:
    """Give each of ``arrays`` (contiguous) a zeroed gradient inside one new buffer; return the buffer.

    One ``zero_()`` of the buffer then zeroes every gradient: a step has dozens of small arrays,
    and a ``zero_()`` call costs about as much Python time as a kernel launch.
    """
    align = 64
    offsets, total = [], 0
    for array in arrays:
        if not array.is_contiguous:
            raise ValueError(f"only contiguous arrays can share a gradient buffer, got strides {array.strides}")
        offsets.append(total)
        total += -(-array.capacity // align) * align
    pool = wp.zeros(max(total, 1), dtype=wp.uint8, device=device)
    for array, offset in zip(arrays, offsets):
        grad = wp.array(ptr=pool.ptr + offset, dtype=array.dtype, shape=array.shape, device=pool.device)
        grad._pool = pool  # keeps the memory alive
        array.grad = grad
    return pool


def _walk_arrays(value: Any) -> Iterator[wp.array]:
    if isinstance(value, wp.array):
        yield value
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        for field in dataclasses.fields(value):
            yield from _walk_arrays(getattr(value, field.name))
    elif isinstance(value, dict):
        for item in value.values():
            yield from _walk_arrays(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _walk_arrays(item)


class Task(abc.ABC):
    """Physics, loss, reward and observation of a differentiable task over a batch of worlds.

    Subclasses set the class attributes and implement the abstract methods. All launches go to
    ``self.device``; nothing is allocated at import time.

    Attributes:
        action_dim: Size of one world's action vector (actions lie in [-1, 1]).
        obs_dim: Size of one world's observation vector.
        reward_terms: Names of the reward terms; ``info["reward_<term>"]`` reports each.
        frame_dt: Duration of one environment step [s].
    """

    action_dim: ClassVar[int]
    obs_dim: ClassVar[int]
    reward_terms: ClassVar[tuple[str, ...]]
    parallel_refill: ClassVar[bool] = False
    """Whether a checkpointed backward pass on the CPU should re-run steps on a second thread while it
    differentiates others: worth it when kernels, which release the GIL, dominate a step (dough);
    not for steps made of many tiny launches, whose Python work cannot overlap (the Pusher)."""

    def __init__(self, world_count: int, device: wp.context.Devicelike = None):
        if int(world_count) < 1:
            raise ValueError(f"world_count must be >= 1, got {world_count}")
        self.world_count = int(world_count)
        self.device = wp.get_device(device)

    @property
    @abc.abstractmethod
    def frame_dt(self) -> float:
        """Duration of one environment step [s]."""

    @abc.abstractmethod
    def state_layout(self) -> dict[str, tuple[tuple[int, ...], type]]:
        """Per-world shape and numpy dtype of each state field, in :meth:`alloc_state` order."""

    @abc.abstractmethod
    def alloc_state(self, *, requires_grad: bool) -> State:
        """Allocate a zero state for all worlds."""

    @abc.abstractmethod
    def alloc_step(self, *, requires_grad: bool) -> StepBuffers:
        """Allocate the buffers of one environment step for all worlds."""

    @abc.abstractmethod
    def sample_state(self, rng: np.random.Generator, options: dict[str, Any] | None = None) -> dict[str, np.ndarray]:
        """Draw one world's initial state (numpy arrays, shapes of :meth:`state_layout`)."""

    @abc.abstractmethod
    def step(self, state_in: State, buffers: StepBuffers, previous: StepBuffers | None = None) -> None:
        """Launch one environment step of all worlds from ``state_in`` with ``buffers.action``.

        Writes every differentiable field of ``buffers`` (all but ``diverged`` and diagnostics);
        reads ``state_in`` and never writes it. Runs on a tape, and again inside ``grad()``
        when checkpointing. ``previous`` holds the buffers of the step that produced ``state_in``
        in every world (None at an episode's start or after a reset): a task may read its
        outputs, e.g. ``previous.loss`` as the loss of ``state_in``, instead of recomputing them
        (the tape then carries the gradient back through ``previous``).
        """

    @abc.abstractmethod
    def check(self, buffers: StepBuffers) -> None:
        """Launch the diagnostics of a finished step: ``buffers.diverged`` and any metrics.

        Never recorded on a tape and not re-run when a checkpointed step is recomputed.
        """

    @abc.abstractmethod
    def observe(self, state: State, obs_out: wp.array) -> None:
        """Write the observation of ``state`` into ``obs_out`` (world_count, obs_dim)."""

    @abc.abstractmethod
    def loss_of(self, state: State, loss_out: wp.array) -> None:
        """Write the task loss of ``state`` into ``loss_out`` (world_count,)."""

    @abc.abstractmethod
    def render(self, state: dict[str, np.ndarray], *, width: int, height: int) -> np.ndarray:
        """Draw one world's state as an RGB image, uint8 of shape (height, width, 3)."""

    def prepare(self, state: State) -> None:
        """Derive per-episode data from a new initial state (called by reset and set_state, outside the tape)."""

    def step_metrics(self, buffers: StepBuffers) -> dict[str, np.ndarray]:
        """Evaluation metrics of a finished step, per world, reported in ``info`` (default none)."""
        return {}

    def success(self, loss: np.ndarray) -> np.ndarray:
        """Whether each world solves the task, judged from its task loss (``info["is_success"]``)."""
        return np.zeros(np.shape(loss), dtype=bool)

    # Gradient remedies ------------------------------------------------------------------------

    def get_remedies(self) -> dict[str, float]:
        """Current values of the task's gradient remedies (see :meth:`set_remedies`); none by default."""
        return {}

    def set_remedies(self, **values: float) -> None:
        """Change gradient remedies between episodes (``contact_weight``, ``softness``).

        ``contact_weight`` is the weight of the task's contact (proximity) loss in the reward;
        ``softness`` is the tools' influence radius (0: hard contact where the task allows it).
        Only the names in :meth:`get_remedies` are accepted.

        Raises:
            ValueError: an unknown name, or a value that is not finite or is out of range.
        """
        current = self.get_remedies()
        unknown = sorted(set(values) - set(current))
        if unknown:
            raise ValueError(f"{type(self).__name__} has no remedies {unknown}; it has {sorted(current)}")
        checked = {}
        for name, value in values.items():
            value = float(value)
            if not (np.isfinite(value) and value >= self.remedy_minimum(name)):
                raise ValueError(f"remedy {name} must be finite and >= {self.remedy_minimum(name)}, got {value}")
            checked[name] = value
        for name, value in checked.items():  # all checked first: a bad value changes nothing
            self.apply_remedy(name, value)

    def remedy_minimum(self, name: str) -> float:
        """Smallest allowed value of a remedy (default 0)."""
        return 0.0

    def apply_remedy(self, name: str, value: float) -> None:
        """Set one remedy (a name of :meth:`get_remedies`, value already checked)."""
        raise NotImplementedError

    # Helpers shared by every task ------------------------------------------------------------

    def zeros(self, shape: int | tuple[int, ...], dtype: Any, *, requires_grad: bool) -> wp.array:
        """Allocate a zero array on the task's device."""
        return wp.zeros(shape, dtype=dtype, device=self.device, requires_grad=requires_grad)

    def alloc_common(self, state: State, *, requires_grad: bool) -> dict[str, Any]:
        """The fields every :class:`StepBuffers` has, allocated for all worlds."""
        n = self.world_count
        return {
            "action": self.zeros((n, self.action_dim), wp.float64, requires_grad=requires_grad),
            "state": state,
            "reward": self.zeros(n, wp.float64, requires_grad=requires_grad),
            "reward_terms": self.zeros((n, len(self.reward_terms)), wp.float64, requires_grad=requires_grad),
            "loss": self.zeros(n, wp.float64, requires_grad=requires_grad),
            "obs": self.zeros((n, self.obs_dim), wp.float32, requires_grad=requires_grad),
            "diverged": self.zeros(n, wp.int32, requires_grad=False),
        }
