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

from diffenvs.warp_util import pooled_grads, walk_arrays

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
        yield from walk_arrays(self)

    def scratch_arrays(self) -> Iterator[wp.array]:
        """The arrays of :attr:`scratch_fields`."""
        for name in self.scratch_fields:
            yield from walk_arrays(getattr(self, name))

    def tape_cleared_arrays(self) -> Iterator[wp.array]:
        """The arrays of :attr:`tape_cleared_fields`."""
        for name in self.tape_cleared_fields:
            yield from walk_arrays(getattr(self, name))

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


class Task(abc.ABC):
    """Physics, loss, reward and observation of a differentiable task over a batch of worlds.

    Subclasses set the class attributes and implement the abstract methods. All launches go to
    ``self.device``; nothing is allocated at import time.

    Attributes:
        action_dim: Size of one world's action vector (actions lie in [-1, 1]).
        obs_dim: Size of one world's observation vector.
        reward_terms: Names of the reward terms; ``info["reward_<term>"]`` reports each.
        metric: Name of the evaluation metric in ``info`` (see :meth:`step_metrics`).
        frame_dt: Duration of one environment step [s].
    """

    action_dim: ClassVar[int]
    obs_dim: ClassVar[int]
    reward_terms: ClassVar[tuple[str, ...]]
    metric: ClassVar[str] = "loss_reduction"
    """The ``info`` key of the task's evaluation metric (one of :meth:`step_metrics`'s): 1 means
    solved, 0 no progress since the episode's start. Optimizers and studies judge by it."""
    metric_fields: ClassVar[tuple[str, ...]] = ("loss",)
    """The step buffers' fields :meth:`step_metrics` reads (copied to the host with the step's outputs)."""
    remedy_options: ClassVar[dict[str, str]] = {}
    """The gradient remedies (names of :meth:`get_remedies`) and the option (``gym.make`` keyword)
    each one sets: e.g. ``{"contact_weight": "proximity_weight"}``."""
    parallel_refill: ClassVar[bool] = False
    """Whether a checkpointed backward pass on the CPU should re-run steps on a second thread while it
    differentiates others: worth it when kernels, which release the GIL, dominate a step (dough);
    not for steps made of many tiny launches, whose Python work cannot overlap (the Pusher)."""

    def __init__(self, world_count: int, device: wp.DeviceLike = None):
        if int(world_count) < 1:
            raise ValueError(f"world_count must be >= 1, got {world_count}")
        self.world_count = int(world_count)
        self.device = wp.get_device(device)

    @property
    def replayable(self) -> bool:
        """Whether a step's launches depend on device data alone (no host-side values computed from
        the state), so that captured steps can be replayed (see :class:`~diffenvs.autodiff.Replays`)."""
        return True

    @property
    def default_checkpoint(self) -> bool:
        """Whether a differentiable env of this task checkpoints when ``checkpoint`` is not given."""
        return False

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
    def alloc_step(self, *, requires_grad: bool, forward_only: bool = False) -> StepBuffers:
        """Allocate the buffers of one environment step for all worlds.

        ``forward_only``: the buffers are never recorded on a tape, so the substeps may share their
        scratch (e.g. one grid for every substep, two substates in turn).
        """

    @abc.abstractmethod
    def sample_state(self, rng: np.random.Generator, options: dict[str, Any] | None = None) -> dict[str, np.ndarray]:
        """Draw one world's initial state (numpy arrays, shapes of :meth:`state_layout`)."""

    def sample_states(self, rngs: list[np.random.Generator], options: dict[str, Any] | None = None) -> list[dict[str, np.ndarray]]:
        """One initial state per generator (:meth:`sample_state` each; tasks batch their device work here)."""
        return [self.sample_state(rng, options) for rng in rngs]

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
        """Derive per-episode data (e.g. a target's grid mass) from ``state``, the state every world
        starts its next step from, after some of them started new episodes (outside the tape).
        Worlds that go on must keep their data: derive it from fields an episode does not change."""

    def episode_start(self, state: State) -> dict[str, np.ndarray]:
        """Per-world values of ``state`` that later steps' metrics are measured against, as host
        arrays of shape (world_count,); reported in the ``info`` of ``reset()``. Called after
        :meth:`prepare`; the env keeps the values of the worlds that started a new episode."""
        loss = self.zeros(self.world_count, wp.float64, requires_grad=False)
        self.loss_of(state, loss)
        return {"loss": loss.numpy()}

    def step_metrics(self, host: dict[str, np.ndarray], start: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Evaluation metrics of a finished step, per world, reported in ``info``: ``host`` holds host
        copies of the step buffers' :attr:`metric_fields`, ``start`` each world's :meth:`episode_start`
        values. Must include :attr:`metric`.

        The default reports ``loss_reduction = 1 - loss / loss at the episode's start`` (0 where
        that is 0): 1 is a solved task, 0 no progress, negative a worse state.
        """
        loss, loss0 = host["loss"], start["loss"]
        safe = np.where(loss0 > 0.0, loss0, 1.0)
        return {"loss_reduction": np.where(loss0 > 0.0, 1.0 - loss / safe, 0.0)}

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


@wp.kernel
def keep_finished_worlds(steps: wp.array(dtype=wp.int32), t: int, before: wp.array2d(dtype=Any), after: wp.array2d(dtype=Any)):
    """after = before in the worlds whose ``steps`` are done at step ``t`` (a row of values per world)."""
    w, i = wp.tid()
    if t >= steps[w]:
        after[w, i] = before[w, i]


def rollout(task: Task, state: dict[str, np.ndarray], actions: np.ndarray, steps: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Run ``task``'s steps from a batched numpy ``state`` (world axis first) with ``actions``
    (T, world_count, action_dim), outside any tape; return the final state as numpy arrays.

    ``steps`` (world_count,) lets world w stop after its first ``steps[w]`` actions (its state is
    then kept as it was; default: every world takes all T). The low-level rollout behind scripted
    demonstrations (targets, settling): two step buffers in turn, allocated for the call and
    dropped after it, no recording, no divergence check.
    """
    actions = np.asarray(actions, dtype=np.float64)
    if actions.ndim != 3 or actions.shape[1:] != (task.world_count, task.action_dim):
        raise ValueError(f"actions must have shape (T, {task.world_count}, {task.action_dim}), got {actions.shape}")
    if steps is not None:
        steps = np.asarray(steps)
        if steps.shape != (task.world_count,) or steps.min(initial=0) < 0 or steps.max(initial=0) > len(actions):
            raise ValueError(f"steps must be {task.world_count} counts in [0, {len(actions)}], got {steps}")
        steps_array = wp.array(steps.astype(np.int32), dtype=wp.int32, device=task.device)
    current = task.alloc_state(requires_grad=False)
    for name, (_, dtype) in task.state_layout().items():
        current[name].assign(np.asarray(state[name], dtype=dtype))
    task.prepare(current)
    pair = [task.alloc_step(requires_grad=False, forward_only=True) for _ in range(2)]
    pair[1].share_scratch(pair[0])
    previous = None
    for t, action in enumerate(actions):
        buffers = pair[t % 2]
        buffers.action.assign(np.clip(action, -1.0, 1.0))
        task.step(current, buffers, previous)
        if steps is not None and t >= steps.min():
            for name, array in buffers.state.items():
                before, after = current[name], array
                if array.ndim == 1:  # one value per world: view it as a row of one
                    before, after = before.reshape((task.world_count, 1)), after.reshape((task.world_count, 1))
                wp.launch(keep_finished_worlds, dim=after.shape, inputs=[steps_array, t, before], outputs=[after],
                          device=task.device)
        current, previous = buffers.state, buffers
    return {name: array.numpy().copy() for name, array in current.items()}
