"""Gymnasium environments over batched Warp tasks, with analytic gradients.

Three layers, one code path:

* :class:`WorldBatch` owns a :class:`~diffenvs.task.Task` and its
  :class:`~diffenvs.autodiff.Trajectory` and does every conversion between numpy (or a caller's
  device arrays, :mod:`diffenvs.torch`) and Warp;
* :class:`EnvCore` holds the episode logic of ``num_envs`` worlds: spaces, action validation,
  seeding, ``info`` with its divergence masking, per-episode metrics, autoreset, remedies;
* :class:`DiffVectorEnv` (Gymnasium's ``VectorEnv``) and :class:`DiffEnv` (``gym.Env``) are thin
  adapters over the core: the single env is the core at one world without autoreset, so the two
  cannot drift apart (``tests/test_vector.py`` checks that they agree on every registered id).

Input handling (the same for every env):

* an action of the wrong shape, or with a NaN or infinite entry, raises ``ValueError`` and
  leaves the env untouched;
* finite actions outside ``action_space`` are clipped to it. ``grad()`` differentiates the
  clipped (applied) action: for a component that was clipped the true derivative with respect
  to the raw action is zero, and the returned value is the derivative with respect to the
  bound (a straight-through estimate). Optimizers should keep their actions inside the bounds;
* a step whose state becomes non-finite or leaves the task's bounds ends that world's episode:
  ``terminated=True``, ``info["diverged"] = True``, reward and reward terms 0, ``info["loss"]``
  NaN, the task's metrics 0, ``is_success`` False, and the last valid observation (the vector
  env's ``info["final_obs"]``). The single env undoes the step (``grad()`` covers the steps
  before it; ``step()`` raises until ``reset()``); the vector env resets the world at once.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np
import warp as wp

from diffenvs.autodiff import GradientError, Trajectory
from diffenvs.task import StepBuffers, Task
from diffenvs.warp_util import quiet_warp

OBJECTIVES = ("return", "loss")


@dataclasses.dataclass(frozen=True)
class Gradients:
    """Gradients of an objective of the rollout since the last reset.

    Attributes:
        objective: ``"return"`` (sum of the rewards; ascend it) or ``"loss"`` (task loss after
            the last step; descend it).
        value: The objective's value: a float for a single env, shape (num_envs,) for a batch.
        actions: d objective / d action for every step, shape (T, *action_shape) for a single
            env, (num_envs, T, *action_shape) for a batch.
        initial_state: d objective / d initial state, with the structure of ``get_state()``.
    """

    objective: str
    value: float | np.ndarray
    actions: np.ndarray
    initial_state: dict[str, np.ndarray]


@dataclasses.dataclass(frozen=True)
class StepResult:
    """Host copies of one step's outputs for all worlds (world axis first)."""

    obs: np.ndarray
    reward: np.ndarray
    reward_terms: np.ndarray
    loss: np.ndarray
    diverged: np.ndarray
    metrics: dict[str, np.ndarray]
    """The task's metrics (:meth:`~diffenvs.task.Task.step_metrics`), per world."""


def checked_actions(action: Any, shape: tuple[int, ...], name: str) -> np.ndarray:
    """``action`` as float64 of ``shape``, clipped to [-1, 1] (every action space is that box).

    Raises:
        ValueError: non-numeric, a wrong shape, or non-finite entries.
    """
    try:
        array = np.asarray(action, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be numeric with shape {shape}: {exc}") from None
    if array.shape != shape:
        raise ValueError(f"{name} must have shape {shape}, got {array.shape}")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} with non-finite entries: {array}")
    return np.clip(array, -1.0, 1.0)


class WorldBatch:
    """Steps all worlds of a task together and differentiates their rollouts.

    Args:
        task: The batched task.
        differentiable: Record steps for :meth:`grad`; ``False`` saves the tape's memory.
        checkpoint: Keep only each step's outputs and recompute substeps in the backward pass.
    """

    def __init__(self, task: Task, *, differentiable: bool = True, checkpoint: bool = False):
        self.task = task
        self.trajectory = Trajectory(task, differentiable=differentiable, checkpoint=checkpoint)
        self._obs = task.zeros((task.world_count, task.obs_dim), wp.float32, requires_grad=False)
        self._loss = task.zeros(task.world_count, wp.float64, requires_grad=False)
        self._remedies_changed = False
        self._pinned: dict[str, wp.array] = {}  # on a GPU: host mirrors of a step's outputs (see _to_host)

    @property
    def differentiable(self) -> bool:
        return self.trajectory.differentiable

    def set_remedies(self, **values: float) -> None:
        """Change the task's gradient remedies; they apply from the next trajectory on.

        The steps recorded so far were taken with the old values: until the next
        :meth:`reset`, :meth:`step` and :meth:`grad` raise (a checkpointed backward pass would
        recompute them with the new ones).
        """
        self.task.set_remedies(**values)
        if values:
            self.trajectory.forget_replays()  # the captured launches hold the old values
        if values and self.trajectory.length:
            self._remedies_changed = True

    # numpy <-> Warp ---------------------------------------------------------------------------

    def check_state(self, state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Validate a batched numpy state against the task's layout; return float copies."""
        layout = self.task.state_layout()
        if not isinstance(state, dict) or set(state) != set(layout):
            got = sorted(state) if isinstance(state, dict) else type(state).__name__
            raise ValueError(f"a state needs exactly the fields {sorted(layout)}, got {got}")
        checked = {}
        for name, (shape, dtype) in layout.items():
            value = np.asarray(state[name], dtype=dtype)
            expected = (self.task.world_count, *shape)
            if value.shape != expected:
                raise ValueError(f"state field {name!r} must have shape {expected}, got {value.shape}")
            if not np.all(np.isfinite(value)):
                raise ValueError(f"state field {name!r} has non-finite values")
            checked[name] = value
        return checked

    def reset(self, state: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Start a new trajectory from a batched numpy state; return its observation and loss."""
        state = self.check_state(state)
        self._remedies_changed = False
        self.trajectory.clear()
        for name, array in self.trajectory.initial.items():
            array.assign(state[name])
        self.task.prepare(self.trajectory.initial)
        self.task.observe(self.trajectory.initial, self._obs)
        self.task.loss_of(self.trajectory.initial, self._loss)
        return self._obs.numpy().copy(), self._loss.numpy().copy()

    def get_state(self) -> dict[str, np.ndarray]:
        """Host copy of the current state of all worlds."""
        return {name: array.numpy().copy() for name, array in self.trajectory.state().items()}

    @property
    def checkpoint(self) -> bool:
        """Whether the backward pass re-runs steps instead of keeping their scratch (see :mod:`diffenvs.autodiff`)."""
        return self.trajectory.checkpoint

    @property
    def parallel_refill(self) -> bool:
        """Checkpointing on the CPU: re-run steps on a second thread during the adjoints."""
        return self.trajectory.parallel_refill

    @parallel_refill.setter
    def parallel_refill(self, value: bool) -> None:
        self.trajectory.parallel_refill = bool(value)

    def reset_worlds(self, mask: np.ndarray, state: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Start new episodes in the worlds of ``mask`` from their rows of ``state`` (batched numpy,
        every world); the others go on. Return the observations and losses of every world."""
        state = self.check_state(state)
        self.trajectory.reset_worlds(mask, state)
        current = self.trajectory.state()
        self.task.prepare(current)
        self.task.observe(current, self._obs)
        self.task.loss_of(current, self._loss)
        return self._obs.numpy().copy(), self._loss.numpy().copy()

    def episode_start(self) -> dict[str, np.ndarray]:
        """The task's :meth:`~diffenvs.task.Task.episode_start` values of the current state of every world."""
        return self.task.episode_start(self.trajectory.state())

    def initial_state_arrays(self) -> dict[str, wp.array]:
        """The Warp arrays of the trajectory's initial state (read-only use: diagnostics, tests)."""
        return self.trajectory.initial

    def step(self, actions: np.ndarray | wp.array, start: dict[str, np.ndarray]) -> StepResult:
        """Step every world with ``actions`` (world_count, action_dim), already inside [-1, 1]:
        numpy, or a float64 Warp array on the task's device (copied on the device, e.g. a torch
        tensor's memory through ``wp.from_torch``); ``start`` holds each world's episode-start
        values for the task's metrics."""
        self._check_remedies()
        buffers = self.trajectory.buffers(self.trajectory.length)
        if isinstance(actions, wp.array):
            self._check_device_array(actions, (self.task.world_count, self.task.action_dim), wp.float64, "actions")
            wp.copy(buffers.action, actions)
        else:
            buffers.action.assign(np.asarray(actions, dtype=np.float64))
        self.trajectory.record(then=self.task.check)
        host = self._to_host(buffers, ("obs", "reward", "reward_terms", "loss", "diverged", *self.task.metric_fields))
        return StepResult(
            obs=host["obs"], reward=host["reward"], reward_terms=host["reward_terms"], loss=host["loss"],
            diverged=host["diverged"].astype(bool), metrics=self.task.step_metrics(host, start),
        )

    def _to_host(self, buffers: StepBuffers, names: Sequence[str]) -> dict[str, np.ndarray]:
        """Host copies of the named fields of ``buffers``. On a GPU: asynchronous copies into pinned
        mirrors and one synchronisation, instead of a blocking copy (and a host allocation) each."""
        if self.task.device.is_cpu:
            return {name: getattr(buffers, name).numpy().copy() for name in names}
        for name in names:
            array = getattr(buffers, name)
            mirror = self._pinned.get(name)
            if mirror is None or mirror.shape != array.shape or mirror.dtype != array.dtype:
                mirror = self._pinned[name] = wp.empty(array.shape, dtype=array.dtype, device="cpu", pinned=True)
            wp.copy(mirror, array)
        wp.synchronize_device(self.task.device)
        return {name: self._pinned[name].numpy().copy() for name in names}

    def _check_device_array(self, value: wp.array, shape: tuple[int, ...], dtype: type, name: str) -> None:
        device = self.task.device
        if value.shape != shape or value.dtype != dtype or value.device != device:
            raise ValueError(f"{name} must be a Warp array of shape {shape}, dtype {dtype.__name__} on {device}, "
                             f"got {value.shape}, {value.dtype.__name__} on {value.device}")

    def step_outputs(self, t: int) -> tuple[wp.array, wp.array]:
        """The observation (world_count, obs_dim) and reward (world_count,) arrays of recorded step
        ``t`` on the task's device, as the task wrote them (before :class:`EnvCore`'s masking of
        diverged worlds and autoresets); overwritten when the step's memory is reused."""
        buffers = self.trajectory.recorded[t]
        return buffers.obs, buffers.reward

    def drop_last_step(self) -> None:
        """Undo the last step (its buffers are kept, its tape is cleared)."""
        self.trajectory.drop_last()

    def _check_remedies(self) -> None:
        if self._remedies_changed:
            raise GradientError("the remedies changed during this episode: call reset() or set_state() first")

    # gradients ------------------------------------------------------------------------------

    def observe(self) -> np.ndarray:
        """Host copy of the observation of the current state of all worlds."""
        self.task.observe(self.trajectory.state(), self._obs)
        return self._obs.numpy().copy()

    def grad(self, objective: str = "return") -> Gradients:
        """Gradients of ``objective`` of every world's current episode (batched arrays).

        A world's current episode starts at the trajectory's start or at its latest reset
        (:meth:`Trajectory.reset_worlds`). Action gradients of the steps before it are zero; the
        ``loss`` objective of a world reset after the last step is NaN with zero gradients.
        """
        if objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
        self._check_remedies()
        n = self.task.world_count
        length = self.trajectory.length
        starts = np.array([self.trajectory.reset_step(w) for w in range(n)])

        def seed(steps: list[StepBuffers]) -> None:
            if objective == "return":
                for t, buffers in enumerate(steps):
                    buffers.reward.grad.assign((t >= starts).astype(np.float64))
            else:
                steps[-1].loss.grad.assign((starts < length).astype(np.float64))

        self.trajectory.backward(seed)
        steps = self.trajectory.recorded
        in_episode = np.arange(length)[None, :] >= starts[:, None]  # (worlds, steps)
        if objective == "return":
            rewards = np.stack([b.reward.numpy() for b in steps], axis=1)
            value = np.where(in_episode, rewards, 0.0).sum(axis=1)
        else:
            value = np.where(starts < length, steps[-1].loss.numpy(), np.nan)
        actions = np.stack([b.action.grad.numpy() for b in steps], axis=1)
        actions[~in_episode] = 0.0  # earlier episodes (possibly diverged ones) get nothing
        initial = {name: array.grad.numpy().copy() for name, array in self.trajectory.initial.items()}
        for start in np.unique(starts[starts > 0]):  # worlds whose episode began at a reset
            worlds = starts == start
            fresh = self.trajectory.initial_state_of(int(np.argmax(worlds)))
            for name, array in fresh.items():
                initial[name][worlds] = array.grad.numpy()[worlds]
        return Gradients(objective=objective, value=value, actions=actions, initial_state=initial)


    @property
    def length(self) -> int:
        """Steps recorded since the last reset (or :meth:`EnvCore.detach`)."""
        return self.trajectory.length

    def vjp_step(self, t: int, obs_grad: wp.array | None, reward_grad: wp.array | None) -> wp.array:
        """Differentiate recorded step ``t`` given the adjoints of its observation and reward, Warp
        arrays on the task's device (``obs_grad`` float32 (world_count, obs_dim), ``reward_grad``
        float64 (world_count,); ``None``: zero), copied there with no host round trip; their
        finiteness is the caller's to check. Returns the adjoint of the step's action: the buffer's
        own array (world_count, action_dim), valid until the next backward pass (copy it).

        For a backward pass driven from outside, newest step first (PyTorch's autograd through
        :class:`diffenvs.torch.TorchRollout`; see :meth:`Trajectory.backward_step`): the adjoint of
        step ``t``'s state comes from the steps after it differentiated before; a call for a step at
        or after the last one starts a new pass. After step 0, :meth:`initial_state_grad` holds the
        adjoint of the initial state.

        Raises:
            ValueError: an array of the wrong shape, dtype or device.
            GradientError: nothing recorded, or the env is not differentiable.
        """
        n, task = self.task.world_count, self.task
        for value, shape, dtype, name in ((obs_grad, (n, task.obs_dim), wp.float32, "obs_grad"),
                                          (reward_grad, (n,), wp.float64, "reward_grad")):
            if value is not None:
                self._check_device_array(value, shape, dtype, name)
        self._check_remedies()

        def seed(buffers: StepBuffers) -> None:
            for grad, value in ((buffers.obs.grad, obs_grad), (buffers.reward.grad, reward_grad)):
                if value is None:
                    grad.zero_()
                else:
                    wp.copy(grad, value)

        self.trajectory.backward_step(t, seed)
        return self.trajectory.buffers(t).action.grad

    def initial_state_grad(self) -> dict[str, wp.array]:
        """The adjoint arrays of the trajectory's initial state (on the task's device; copy them) after
        a backward pass through :meth:`vjp_step` reached step 0."""
        return {name: array.grad for name, array in self.trajectory.initial.items()}


@dataclasses.dataclass(frozen=True)
class BatchStep:
    """What :meth:`EnvCore.step` returns for all worlds (world axis first).

    Attributes:
        obs: Observations: of the new episode where a world was autoreset.
        reward: Rewards (0 where diverged).
        terminated: Diverged worlds.
        truncated: Worlds that reached ``max_episode_steps``.
        info: The step's info, one array per key (see :class:`EnvCore`).
        final_obs: Last observations of the episodes that ended, zeros elsewhere (autoreset only).
        ended: Worlds whose episode ended in this step.
    """

    obs: np.ndarray
    reward: np.ndarray
    terminated: np.ndarray
    truncated: np.ndarray
    info: dict[str, np.ndarray]
    final_obs: np.ndarray | None
    ended: np.ndarray


class EnvCore:
    """Episodes of ``num_envs`` worlds of a task: the one code path of the single and vector envs.

    Info of a step (one array per key, world axis first): ``loss`` (task loss after the step),
    ``diverged``, ``is_success``, ``reward_<term>`` for every reward term of the task, and the
    task's metrics (:meth:`~diffenvs.task.Task.step_metrics`, e.g. ``iou`` and
    ``iou_incremental``); in a diverged world ``loss`` is NaN, rewards and metrics are 0 and
    ``is_success`` is False. Info of a reset: ``loss`` and the task's episode-start values.

    Args:
        task_class: The task.
        num_envs: Worlds.
        autoreset: Reset a world as soon as its episode ends (the vector env); without it (the
            single env, one world only) a diverged step is undone and stepping raises until
            :meth:`reset`.
        device: Warp device.
        differentiable: Record steps for :meth:`grad`.
        checkpoint: Checkpoint the recording; ``None``: the task's default.
        max_episode_steps: Truncate episodes after this many steps (``None``: never).
        render_mode: ``None`` or ``"rgb_array"``.
        render_width: Width of rendered frames [px].
        render_height: Height of rendered frames [px].
        task_kwargs: Options of the task.
        instance_seed: Every episode of every world starts from the instance that
            ``reset(seed=instance_seed)`` draws for a single env (the problem instance of
            ``diffenvs optimize`` with that seed): training on one instance. ``None``: fresh draws.
    """

    render_modes = ("rgb_array",)

    def __init__(
        self,
        task_class: type[Task],
        num_envs: int,
        *,
        autoreset: bool,
        device: str | None,
        differentiable: bool,
        checkpoint: bool | None,
        max_episode_steps: int | None,
        render_mode: str | None,
        render_width: int,
        render_height: int,
        task_kwargs: dict[str, Any],
        instance_seed: int | None = None,
    ):
        if render_mode is not None and render_mode not in self.render_modes:
            raise ValueError(f"render_mode must be None or one of {list(self.render_modes)}, got {render_mode!r}")
        if max_episode_steps is not None and int(max_episode_steps) < 1:
            raise ValueError(f"max_episode_steps must be >= 1, got {max_episode_steps}")
        if int(render_width) < 1 or int(render_height) < 1:
            raise ValueError(f"render_width and render_height must be >= 1, got {render_width} and {render_height}")
        if not autoreset and int(num_envs) != 1:
            raise ValueError("an env without autoreset has one world")
        quiet_warp()  # see diffenvs.warp_util.VERBOSE_ENV for Warp's own messages
        self.task = task_class(int(num_envs), device=device, **task_kwargs)
        self.num_envs = self.task.world_count
        self.autoreset = bool(autoreset)
        checkpoint = self.task.default_checkpoint if checkpoint is None else bool(checkpoint)
        self.batch = WorldBatch(self.task, differentiable=differentiable, checkpoint=checkpoint)
        self.max_episode_steps = None if max_episode_steps is None else int(max_episode_steps)
        self.render_mode = render_mode
        self.render_width, self.render_height = int(render_width), int(render_height)
        self.single_action_space = gym.spaces.Box(-1.0, 1.0, shape=(self.task.action_dim,), dtype=np.float32)
        self.single_observation_space = gym.spaces.Box(-np.inf, np.inf, shape=(self.task.obs_dim,), dtype=np.float32)
        self.render_fps = round(1.0 / self.task.frame_dt)
        self.rngs: list[np.random.Generator] | None = None
        self.instance_seed = None if instance_seed is None else int(instance_seed)
        self._instance_state: dict[str, np.ndarray] | None = None
        self.elapsed = np.zeros(self.num_envs, dtype=np.int64)
        self.obs: np.ndarray | None = None
        self.loss = np.full(self.num_envs, np.nan)
        self.start: dict[str, np.ndarray] = {}
        self.ended = np.zeros(self.num_envs, dtype=bool)

    @property
    def dt(self) -> float:
        """Duration of one env step [s] (``frame_dt``)."""
        return self.task.frame_dt

    def seed(self, seed: int | Sequence[int | None] | None) -> None:
        """New generators: world ``i`` gets ``seed + i`` (a list gives one seed per world)."""
        if isinstance(seed, (list, tuple, np.ndarray)):
            seeds = list(seed)
        else:
            seeds = [None if seed is None else int(seed) + i for i in range(self.num_envs)]
        if len(seeds) != self.num_envs:
            raise ValueError(f"reset() needs {self.num_envs} seeds, got {len(seeds)}")
        self.rngs = [gym.utils.seeding.np_random(s)[0] for s in seeds]

    def _sample(self, worlds: Sequence[int], options: dict[str, Any] | None = None) -> list[dict[str, np.ndarray]]:
        if self.instance_seed is not None:  # the same instance every time (see instance_seed): drawn once
            if options is not None:
                return self.task.sample_states([gym.utils.seeding.np_random(self.instance_seed)[0] for _ in worlds], options)
            if self._instance_state is None:
                self._instance_state = self.task.sample_states([gym.utils.seeding.np_random(self.instance_seed)[0]])[0]
            return [self._instance_state for _ in worlds]
        return self.task.sample_states([self.rngs[w] for w in worlds], options)

    def reset(self, options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """New episodes in every world, drawn from the worlds' generators (see :meth:`seed`)."""
        if self.rngs is None:
            self.seed(None)
        states = self._sample(range(self.num_envs), options)
        return self.restart({name: np.stack([s[name] for s in states]) for name in states[0]})

    def restart(self, state: dict[str, np.ndarray]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """New episodes in every world from a batched numpy state (``set_state``); observations and info."""
        obs, loss = self.batch.reset(state)
        if self.rngs is None:
            self.seed(None)
        self.elapsed[:] = 0
        self.ended[:] = False
        self.obs, self.loss = obs, loss
        self.start = self.batch.episode_start()
        return obs.copy(), {"loss": loss.copy(), **{k: v.copy() for k, v in self.start.items()}}

    def get_state(self) -> dict[str, np.ndarray]:
        if self.obs is None:
            raise RuntimeError("call reset() before get_state()")
        return self.batch.get_state()

    def detach(self) -> None:
        """Start a new recording at the current state of every world; the episodes go on (their
        step counts, starts and metrics are kept). Gradients stop here, and the recorded steps'
        memory is reused from here on: truncated backpropagation windows over long runs."""
        if self.obs is None:
            raise RuntimeError("call reset() before detach()")
        self.batch.reset(self.batch.get_state())

    def check_actions(self, actions: Any, shape: tuple[int, ...], name: str) -> np.ndarray:
        """``actions`` checked against ``shape`` and clipped, as (num_envs, action_dim) float64."""
        return checked_actions(actions, shape, name).reshape(self.num_envs, self.task.action_dim)

    def step(self, actions: np.ndarray) -> BatchStep:
        """Step every world with checked ``actions`` (num_envs, action_dim); see the class docstring."""
        if self.obs is None:
            raise RuntimeError("call reset() before step()")
        if self.ended.any():
            raise RuntimeError("the episode ended because the simulation diverged: call reset()")
        result = self.batch.step(actions, self.start)
        self.elapsed += 1
        diverged = result.diverged
        terminated = diverged.copy()
        truncated = np.zeros(self.num_envs, dtype=bool)
        if self.max_episode_steps is not None:
            truncated = (self.elapsed >= self.max_episode_steps) & ~terminated
        reward = np.where(diverged, 0.0, result.reward)
        obs = np.where(diverged[:, None], self.obs, result.obs).astype(np.float32)
        info: dict[str, np.ndarray] = {
            "loss": np.where(diverged, np.nan, result.loss),
            "diverged": diverged,
            "is_success": self.task.success(result.loss) & ~diverged,
        }
        for i, name in enumerate(self.task.reward_terms):
            info[f"reward_{name}"] = np.where(diverged, 0.0, result.reward_terms[:, i])
        for name, value in result.metrics.items():
            info[name] = np.where(diverged, 0.0, value)
        self.loss = np.where(diverged, self.loss, result.loss)
        ended = terminated | truncated
        final_obs = None
        if not self.autoreset:
            if diverged.any():
                self.batch.drop_last_step()
                self.ended |= diverged
        elif ended.any():
            final_obs = np.where(ended[:, None], obs, 0.0).astype(np.float32)
            current = self.batch.get_state()
            worlds = np.flatnonzero(ended)
            for w, fresh in zip(worlds, self._sample(worlds)):
                for name, value in fresh.items():
                    current[name][w] = value
            new_obs, new_loss = self.batch.reset_worlds(ended, current)
            obs = np.where(ended[:, None], new_obs, obs).astype(np.float32)
            self.loss = np.where(ended, new_loss, self.loss)
            start = self.batch.episode_start()
            self.start = {name: np.where(ended, start[name], self.start[name]) for name in start}
            self.elapsed[ended] = 0
        self.obs = obs
        return BatchStep(obs.copy(), reward, terminated, truncated, info, final_obs, ended)

    def render(self) -> list[np.ndarray] | None:
        """A frame of every world, or ``None`` (with a warning) without a render mode."""
        if self.render_mode is None:
            gym.logger.warn("render() was called with render_mode=None; make the env with render_mode='rgb_array'.")
            return None
        state = self.get_state()
        return [
            self.task.render({name: value[w] for name, value in state.items()}, width=self.render_width, height=self.render_height)
            for w in range(self.num_envs)
        ]

    # Pickling: the constructor's arguments are kept by the adapters; this is the rest ----------

    def snapshot(self) -> dict[str, Any]:
        """What pickling keeps besides the constructor's arguments."""
        return {
            "rngs": None if self.rngs is None else [rng.bit_generator.state for rng in self.rngs],
            "state": None if self.obs is None else self.get_state(),
            "elapsed": self.elapsed.copy(), "ended": self.ended.copy(), "start": dict(self.start), "loss": self.loss.copy(),
        }

    def restore(self, saved: dict[str, Any]) -> None:
        """Undo :meth:`snapshot` on a freshly built core (the recording starts at the restored state)."""
        if saved["state"] is not None:
            self.restart(saved["state"])
            self.start, self.loss = saved["start"], saved["loss"]  # the episodes' starts, not the restored state
            self.elapsed, self.ended = saved["elapsed"], saved["ended"]
        if saved["rngs"] is not None:
            self.rngs = []
            for bit_state in saved["rngs"]:
                rng = np.random.Generator(np.random.PCG64())
                rng.bit_generator.state = bit_state
                self.rngs.append(rng)


class _CoreEnv:
    """What the single and the vector env share verbatim: construction arguments, the core's
    properties, remedies and pickling."""

    _core: EnvCore
    _init_kwargs: dict[str, Any]

    @property
    def task(self) -> Task:
        """The batched task behind the env."""
        return self._core.task

    @property
    def batch(self) -> WorldBatch:
        """The recorded rollout (numpy <-> Warp, trajectory, gradients)."""
        return self._core.batch

    @property
    def dt(self) -> float:
        """Duration of one env step [s] (``frame_dt``)."""
        return self._core.dt

    @property
    def differentiable(self) -> bool:
        """Whether steps are recorded for ``grad()``."""
        return self._core.batch.differentiable

    @property
    def checkpoint(self) -> bool:
        """Whether the recording is checkpointed (the default follows the task, e.g. the dough preset)."""
        return self._core.batch.checkpoint

    @property
    def remedies(self) -> dict[str, float]:
        """Current gradient remedies of the task (e.g. ``contact_weight``, ``softness``)."""
        return self._core.task.get_remedies()

    def detach(self) -> None:
        """Start a new recording at the current state; the episodes go on.

        ``grad()`` then differentiates from here (gradients stop at this point: truncated
        backpropagation windows), and the memory of the steps recorded so far is reused, so a
        differentiable env stepped for thousands of steps (autoresets included) stays at the
        memory of its longest window.
        """
        self._core.detach()

    def set_remedies(self, **values: float) -> None:
        """Change the gradient remedies (the names of :attr:`remedies`) of later episodes.

        They apply from the next ``reset()`` or ``set_state()``; until then ``step()`` and
        ``grad()`` raise :class:`GradientError`. Use it to schedule a remedy across the
        iterations of an optimizer (anneal soft tools to hard, fade out the contact loss).

        Raises:
            ValueError: an unknown remedy or an invalid value (nothing changes).
        """
        self._core.batch.set_remedies(**values)

    def __getstate__(self) -> dict[str, Any]:
        return {"init_kwargs": self._init_kwargs, "core": self._core.snapshot(), **self._extra_state()}

    def __setstate__(self, saved: dict[str, Any]) -> None:
        self.__init__(**saved["init_kwargs"])
        self._core.restore(saved["core"])
        self._restore_extra_state(saved)

    def _extra_state(self) -> dict[str, Any]:
        return {}

    def _restore_extra_state(self, saved: dict[str, Any]) -> None:
        pass


def _world(value: Any, w: int = 0) -> Any:
    """World ``w`` of a batched value, numpy scalars as Python numbers."""
    item = np.asarray(value)[w]
    return item.item() if np.ndim(item) == 0 else item


class DiffEnv(_CoreEnv, gym.Env[np.ndarray, np.ndarray]):
    """Base of the single diffenvs environments: the batched core at one world.

    Subclasses set ``task_class`` and document the task. Every keyword argument that is not
    one of the arguments below is passed to the task (and rejected there if unknown).

    Args:
        render_mode: ``None`` or ``"rgb_array"``.
        device: Warp device (``"cpu"``, ``"cuda"``, ``"cuda:0"``); default: Warp's default.
        differentiable: Record the episode for :meth:`grad`. ``False`` makes stepping cheaper
            and its memory independent of the episode length.
        checkpoint: With ``differentiable`` (ignored without), keep only each step's outputs and
            re-run the substeps in :meth:`grad` (less memory, one more forward pass of compute,
            on the CPU on a second thread alongside the adjoints; see :mod:`diffenvs.autodiff`
            for the memory formula). ``None``: the task's default (the dough tasks: by preset).
        render_width: Width of rendered frames [px].
        render_height: Height of rendered frames [px].
        instance_seed: Every episode starts from the instance ``reset(seed=instance_seed)``
            draws, whatever seed ``reset`` gets: training on one problem instance. ``None``: off.
        **task_kwargs: Options of the task.
    """

    metadata: ClassVar[dict[str, Any]] = {"render_modes": list(EnvCore.render_modes), "render_fps": 20}
    task_class: ClassVar[type[Task]]

    def __init__(
        self,
        render_mode: str | None = None,
        *,
        device: str | None = None,
        differentiable: bool = True,
        checkpoint: bool | None = None,
        render_width: int = 256,
        render_height: int = 256,
        instance_seed: int | None = None,
        **task_kwargs: Any,
    ):
        self._init_kwargs = dict(
            render_mode=render_mode, device=device, differentiable=differentiable, checkpoint=checkpoint,
            render_width=render_width, render_height=render_height, instance_seed=instance_seed, **task_kwargs,
        )
        self._core = EnvCore(
            self.task_class, 1, autoreset=False, device=device, differentiable=differentiable, checkpoint=checkpoint,
            max_episode_steps=None, render_mode=render_mode, render_width=render_width, render_height=render_height,
            task_kwargs=task_kwargs, instance_seed=instance_seed,
        )
        self.render_mode = render_mode
        self.action_space = self._core.single_action_space
        self.observation_space = self._core.single_observation_space
        self.metadata = {**self.metadata, "render_fps": self._core.render_fps}

    @property
    def loss(self) -> float:
        """Task loss of the current state (without shaping terms)."""
        return float(self._core.loss[0])

    @property
    def elapsed_steps(self) -> int:
        """Steps recorded since the last reset or set_state."""
        return int(self._core.batch.trajectory.length)

    # Gymnasium API --------------------------------------------------------------------------

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        self._core.rngs = [self.np_random]
        obs, info = self._core.reset(options)
        return obs[0], {key: _world(value) for key, value in info.items()}

    def step(self, action):
        out = self._core.step(self._core.check_actions(action, self.action_space.shape, "action"))
        info = {key: _world(value) for key, value in out.info.items()}
        return out.obs[0], float(out.reward[0]), bool(out.terminated[0]), bool(out.truncated[0]), info

    def render(self):
        frames = self._core.render()
        return None if frames is None else frames[0]

    # Differentiable-env contract ------------------------------------------------------------

    def grad(self, objective: str = "return") -> Gradients:
        """Gradients of the episode since the last ``reset()`` (or ``set_state()``).

        Args:
            objective: ``"return"``: the sum of the rewards received (the gradient points
                uphill); ``"loss"``: the task loss after the last step, without shaping terms
                (the gradient points uphill of the loss: descend it).

        Returns:
            :class:`Gradients` with ``actions`` of shape (T, *action_space.shape) for the T
            steps taken, and ``initial_state`` with the structure of :meth:`get_state`.
            Calling it again without stepping returns the same values.

        Raises:
            GradientError: before any step, or when the env was built with ``differentiable=False``.
        """
        g = self._core.batch.grad(objective)
        return Gradients(
            objective=g.objective, value=float(g.value[0]), actions=g.actions[0],
            initial_state={name: value[0] for name, value in g.initial_state.items()},
        )

    def get_state(self) -> dict[str, np.ndarray]:
        """A complete snapshot of the simulation as numpy arrays (copies)."""
        return {name: value[0] for name, value in self._core.get_state().items()}

    def set_state(self, state: dict[str, np.ndarray]) -> np.ndarray:
        """Restore a snapshot from :meth:`get_state` and return its observation.

        The recorded trajectory restarts here: later calls of :meth:`grad` differentiate the
        steps taken after this call, with ``initial_state`` the restored state.

        Raises:
            ValueError: missing or extra fields, wrong shapes, or non-finite values.
        """
        if not isinstance(state, dict):
            raise ValueError(f"a state is a dict of arrays, got {type(state).__name__}")  # noqa: TRY004  (bad input: ValueError)
        obs, _ = self._core.restart({name: np.asarray(value)[None] for name, value in state.items()})
        return obs[0]

    def _extra_state(self) -> dict[str, Any]:
        return {"np_random": None if self._np_random is None else self._np_random.bit_generator.state,
                "np_random_seed": self._np_random_seed}

    def _restore_extra_state(self, saved: dict[str, Any]) -> None:
        if saved["np_random"] is not None:
            self._np_random = self._core.rngs[0]  # the same generator, restored by the core
            self._np_random_seed = saved["np_random_seed"]


class DiffVectorEnv(_CoreEnv, gym.vector.VectorEnv):
    """``num_envs`` worlds of a task stepped by one set of Warp launches, with per-world gradients.

    The native vector env behind ``gym.make_vec(id, num_envs=N, vectorization_mode=
    "vector_entry_point")``: no Python loop over worlds and no second copy of the physics or of
    the episode logic (the single env is the same :class:`EnvCore` at one world).
    Subclasses set ``task_class``.

    Autoreset: ``AutoresetMode.SAME_STEP``. When a world's episode ends (diverged, or
    ``max_episode_steps`` reached) the returned observation is already that of its new episode;
    ``info["final_obs"]`` (rows masked by ``info["_final_obs"]``) holds the last observation of
    the ended one, and the other ``info`` entries are those of the final step (every key ``k`` has
    its mask ``_k``, Gymnasium's convention). World ``i`` is seeded with ``seed + i`` on
    ``reset(seed=seed)``, as ``SyncVectorEnv`` seeds its envs, and draws its later episodes from
    its own generator: the vector env reproduces N single envs.

    Gradients: :meth:`grad` returns, per world, the gradient of the return of its *current*
    episode (since ``reset()`` or its latest autoreset): ``actions`` has shape
    (num_envs, T, *single_action_space.shape) with T the steps since ``reset()``; entries of a
    world's earlier episodes are zero, and ``initial_state`` holds each world's gradient with
    respect to its current episode's initial state. With ``differentiable=True`` the recording
    grows with every step until ``reset()``: for long RL runs use ``differentiable=False``.

    Bad input: actions must have shape (num_envs, *single_action_space.shape) and be finite
    (``ValueError`` otherwise, nothing changes); values outside [-1, 1] are clipped.

    Args:
        num_envs: Worlds.
        max_episode_steps: Truncation horizon of every world's episodes (``None``: none).

    The other arguments (``render_mode``, ``device``, ``differentiable``, ``checkpoint``,
    ``render_width``, ``render_height``, ``instance_seed`` and the task's options) are those of
    :class:`DiffEnv`.
    """

    metadata: ClassVar[dict[str, Any]] = {
        "render_modes": list(EnvCore.render_modes), "autoreset_mode": gym.vector.AutoresetMode.SAME_STEP,
    }
    task_class: ClassVar[type[Task]]

    def __init__(
        self,
        num_envs: int = 1,
        *,
        render_mode: str | None = None,
        device: str | None = None,
        differentiable: bool = True,
        checkpoint: bool | None = None,
        max_episode_steps: int | None = None,
        render_width: int = 256,
        render_height: int = 256,
        instance_seed: int | None = None,
        **task_kwargs: Any,
    ):
        self._init_kwargs = dict(
            num_envs=num_envs, render_mode=render_mode, device=device, differentiable=differentiable,
            checkpoint=checkpoint, max_episode_steps=max_episode_steps, render_width=render_width,
            render_height=render_height, instance_seed=instance_seed, **task_kwargs,
        )
        self._core = EnvCore(
            self.task_class, num_envs, autoreset=True, device=device, differentiable=differentiable, checkpoint=checkpoint,
            max_episode_steps=max_episode_steps, render_mode=render_mode, render_width=render_width,
            render_height=render_height, task_kwargs=task_kwargs, instance_seed=instance_seed,
        )
        self.num_envs = self._core.num_envs
        self.render_mode = render_mode
        self.max_episode_steps = self._core.max_episode_steps
        self.single_action_space = self._core.single_action_space
        self.single_observation_space = self._core.single_observation_space
        self.action_space = gym.vector.utils.batch_space(self.single_action_space, self.num_envs)
        self.observation_space = gym.vector.utils.batch_space(self.single_observation_space, self.num_envs)
        self.metadata = {**self.metadata, "render_fps": self._core.render_fps}

    @property
    def loss(self) -> np.ndarray:
        """Task loss of the current state of every world."""
        return self._core.loss.copy()

    def _masked(self, info: dict[str, np.ndarray], masks: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
        everyone = np.ones(self.num_envs, dtype=bool)
        out = dict(info)
        for key in info:
            out[f"_{key}"] = (masks or {}).get(key, everyone)
        return out

    def reset(self, *, seed: int | list[int | None] | None = None, options: dict[str, Any] | None = None):
        if seed is not None or self._core.rngs is None:
            self._core.seed(seed)
        obs, info = self._core.reset(options)
        return obs, self._masked(info)

    def step(self, actions):
        return self._step_applied(self._core.check_actions(actions, self.action_space.shape, "actions"))

    def _step_applied(self, actions: np.ndarray | wp.array):
        """:meth:`step` with checked, clipped actions: numpy, or a float64 Warp array on the env's
        device (:class:`diffenvs.torch.TorchRollout` passes a tensor's memory, see :meth:`WorldBatch.step`)."""
        out = self._core.step(actions)
        info = dict(out.info)
        masks = {}
        if out.final_obs is not None:
            info["final_obs"], masks["final_obs"] = out.final_obs, out.ended
        return out.obs, out.reward, out.terminated, out.truncated, self._masked(info, masks)

    def render(self):
        return self._core.render()

    def grad(self, objective: str = "return") -> Gradients:
        """Per-world gradients of each world's current episode; see the class docstring."""
        return self._core.batch.grad(objective)

    def get_state(self) -> dict[str, np.ndarray]:
        """A snapshot of all worlds (world axis first)."""
        return self._core.get_state()

    def set_state(self, state: dict[str, np.ndarray]) -> np.ndarray:
        """Restart every world from a batched snapshot (world axis first); return the observations.

        All worlds start new episodes (``grad()`` differentiates from here); the per-world
        generators of later autoresets are kept (unseeded if :meth:`reset` was never called).

        Raises:
            ValueError: missing or extra fields, wrong shapes, or non-finite values.
        """
        if not isinstance(state, dict):
            raise ValueError(f"a state is a dict of batched arrays, got {type(state).__name__}")  # noqa: TRY004
        obs, _ = self._core.restart({name: np.asarray(value) for name, value in state.items()})
        return obs


__all__ = ["BatchStep", "DiffEnv", "DiffVectorEnv", "EnvCore", "GradientError", "Gradients", "StepResult", "WorldBatch"]
