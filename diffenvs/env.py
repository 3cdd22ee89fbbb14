"""Gymnasium environments over batched Warp tasks, with analytic gradients.

:class:`WorldBatch` is the batched core: it owns a :class:`~diffenvs.task.Task`, its
:class:`~diffenvs.autodiff.Trajectory`, and every conversion between numpy and Warp.
:class:`DiffEnv` is the single Gymnasium env: a batch of one world.

Input handling (the same for every env):

* an action of the wrong shape, or with a NaN or infinite entry, raises ``ValueError`` and
  leaves the env untouched;
* finite actions outside ``action_space`` are clipped to it. ``grad()`` differentiates the
  clipped (applied) action: for a component that was clipped the true derivative with respect
  to the raw action is zero, and the returned value is the derivative with respect to the
  bound (a straight-through estimate). Optimizers should keep their actions inside the bounds;
* a step whose state becomes non-finite or leaves the task's bounds is undone: the episode ends
  with ``terminated=True``, reward 0, the last valid observation and ``info["diverged"] = True``,
  and ``grad()`` covers the steps before it.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np
import warp as wp

from diffenvs.autodiff import GradientError, Trajectory
from diffenvs.task import StepBuffers, Task

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

    def step(self, actions: np.ndarray) -> StepResult:
        """Step every world with ``actions`` (world_count, action_dim), already inside [-1, 1]."""
        self._check_remedies()
        buffers = self.trajectory.buffers(self.trajectory.length)
        buffers.action.assign(np.asarray(actions, dtype=np.float64))
        self.trajectory.record()
        self.task.check(buffers)
        return StepResult(
            obs=buffers.obs.numpy().copy(),
            reward=buffers.reward.numpy().copy(),
            reward_terms=buffers.reward_terms.numpy().copy(),
            loss=buffers.loss.numpy().copy(),
            diverged=buffers.diverged.numpy().astype(bool),
            metrics=self.task.step_metrics(buffers),
        )

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


class DiffEnv(gym.Env[np.ndarray, np.ndarray]):
    """Base of the single diffenvs environments: one world of a :class:`~diffenvs.task.Task`.

    Subclasses set ``task_class`` and document the task. Every keyword argument that is not
    one of the arguments below is passed to the task (and rejected there if unknown).

    Args:
        render_mode: ``None`` or ``"rgb_array"``.
        device: Warp device (``"cpu"``, ``"cuda"``, ``"cuda:0"``); default: Warp's default.
        differentiable: Record the episode for :meth:`grad`. ``False`` makes stepping cheaper
            and its memory independent of the episode length.
        checkpoint: With ``differentiable`` (ignored without), keep only each step's outputs and re-run the
            substeps in :meth:`grad` (less memory, one more forward pass of compute, on the CPU on a
            second thread alongside the adjoints; see :mod:`diffenvs.autodiff` for the memory formula).
        render_width: Width of rendered frames [px].
        render_height: Height of rendered frames [px].
        **task_kwargs: Options of the task.
    """

    metadata: ClassVar[dict[str, Any]] = {"render_modes": ["rgb_array"], "render_fps": 20}
    task_class: ClassVar[type[Task]]

    def __init__(
        self,
        render_mode: str | None = None,
        *,
        device: str | None = None,
        differentiable: bool = True,
        checkpoint: bool = False,
        render_width: int = 256,
        render_height: int = 256,
        **task_kwargs: Any,
    ):
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"render_mode must be None or one of {self.metadata['render_modes']}, got {render_mode!r}")
        self._init_kwargs = dict(
            render_mode=render_mode, device=device, differentiable=differentiable, checkpoint=checkpoint,
            render_width=render_width, render_height=render_height, **task_kwargs,
        )
        self.render_mode = render_mode
        self.render_width = int(render_width)
        self.render_height = int(render_height)
        self.task = self.task_class(1, device=device, **task_kwargs)
        self.batch = WorldBatch(self.task, differentiable=differentiable, checkpoint=checkpoint)
        self.action_space = gym.spaces.Box(-1.0, 1.0, shape=(self.task.action_dim,), dtype=np.float32)
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, shape=(self.task.obs_dim,), dtype=np.float32)
        self.metadata = {**self.metadata, "render_fps": round(1.0 / self.task.frame_dt)}
        self._obs: np.ndarray | None = None
        self._loss = float("nan")
        self._ended = False

    @property
    def dt(self) -> float:
        """Duration of one env step [s] (``frame_dt``)."""
        return self.task.frame_dt

    @property
    def differentiable(self) -> bool:
        return self.batch.differentiable

    @property
    def loss(self) -> float:
        """Task loss of the current state (without shaping terms)."""
        return self._loss

    @property
    def elapsed_steps(self) -> int:
        """Steps recorded since the last reset or set_state."""
        return self.batch.trajectory.length

    # Gymnasium API --------------------------------------------------------------------------

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        state = self.task.sample_state(self.np_random, options)
        return self._restart({name: value[None] for name, value in state.items()})

    def step(self, action):
        if self._obs is None:
            raise RuntimeError("call reset() before step()")
        if self._ended:
            raise RuntimeError("the episode ended because the simulation diverged: call reset()")
        applied = self.check_action(action)
        result = self.batch.step(applied[None])
        terms = {f"reward_{name}": float(v) for name, v in zip(self.task.reward_terms, result.reward_terms[0])}
        if result.diverged[0]:
            self.batch.drop_last_step()
            self._ended = True
            info = {"diverged": True, "loss": float("nan"), "is_success": False}
            info.update({key: 0.0 for key in terms})
            return self._obs.copy(), 0.0, True, False, info
        self._obs = result.obs[0]
        self._loss = float(result.loss[0])
        info = {"diverged": False, "loss": float(result.loss[0]), **terms}
        info.update({name: float(value[0]) for name, value in result.metrics.items()})
        info["is_success"] = bool(self.task.success(result.loss)[0])
        return self._obs.copy(), float(result.reward[0]), False, False, info

    def render(self):
        if self.render_mode is None:
            gym.logger.warn("render() was called with render_mode=None; make the env with render_mode='rgb_array'.")
            return None
        if self._obs is None:
            raise RuntimeError("call reset() before render()")
        return self.task.render(self.get_state(), width=self.render_width, height=self.render_height)

    # Differentiable-env contract ------------------------------------------------------------

    def check_action(self, action: Any) -> np.ndarray:
        """Validate ``action`` and return it clipped to the action space, as float64.

        Raises:
            ValueError: wrong shape, non-numeric or non-finite entries.
        """
        return checked_actions(action, self.action_space.shape, "action")

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
        g = self.batch.grad(objective)
        return Gradients(
            objective=g.objective,
            value=float(g.value[0]),
            actions=g.actions[0],
            initial_state={name: value[0] for name, value in g.initial_state.items()},
        )

    def get_state(self) -> dict[str, np.ndarray]:
        """A complete snapshot of the simulation as numpy arrays (copies)."""
        if self._obs is None:
            raise RuntimeError("call reset() before get_state()")
        return {name: value[0] for name, value in self.batch.get_state().items()}

    def set_state(self, state: dict[str, np.ndarray]) -> np.ndarray:
        """Restore a snapshot from :meth:`get_state` and return its observation.

        The recorded trajectory restarts here: later calls of :meth:`grad` differentiate the
        steps taken after this call, with ``initial_state`` the restored state.

        Raises:
            ValueError: missing or extra fields, wrong shapes, or non-finite values.
        """
        obs, _ = self._restart({name: np.asarray(value)[None] for name, value in dict(state).items()})
        return obs

    @property
    def remedies(self) -> dict[str, float]:
        """Current gradient remedies of the task: ``contact_weight`` and ``softness``."""
        return self.task.get_remedies()

    def set_remedies(self, **values: float) -> None:
        """Change the gradient remedies (``contact_weight``, ``softness``) of later episodes.

        They apply from the next :meth:`reset` or :meth:`set_state`; until then :meth:`step`
        and :meth:`grad` raise :class:`GradientError`. Use it to schedule a remedy across the
        iterations of an optimizer (anneal soft tools to hard, fade out the contact loss).

        Raises:
            ValueError: an unknown remedy or an invalid value (nothing changes).
        """
        self.batch.set_remedies(**values)

    def _restart(self, state: dict[str, np.ndarray]) -> tuple[np.ndarray, dict[str, Any]]:
        obs, loss = self.batch.reset(state)
        self._obs = obs[0]
        self._loss = float(loss[0])
        self._ended = False
        return self._obs.copy(), {"loss": self._loss}

    # Pickling: rebuild from the constructor's arguments and restore the state --------------

    def __getstate__(self) -> dict[str, Any]:
        return {
            "init_kwargs": self._init_kwargs,
            "np_random": None if self._np_random is None else self._np_random.bit_generator.state,
            "np_random_seed": self._np_random_seed,
            "sim_state": None if self._obs is None else self.get_state(),
            "ended": self._ended,
        }

    def __setstate__(self, saved: dict[str, Any]) -> None:
        self.__init__(**saved["init_kwargs"])
        if saved["np_random"] is not None:
            rng = np.random.Generator(np.random.PCG64())
            rng.bit_generator.state = saved["np_random"]
            self._np_random = rng
            self._np_random_seed = saved["np_random_seed"]
        if saved["sim_state"] is not None:
            self.set_state(saved["sim_state"])
            self._ended = saved["ended"]




class DiffVectorEnv(gym.vector.VectorEnv):
    """``num_envs`` worlds of a task stepped by one set of Warp launches, with per-world gradients.

    The native vector env behind ``gym.make_vec(id, num_envs=N, vectorization_mode=
    "vector_entry_point")``: no Python loop over worlds and no second copy of the physics (it
    drives the same :class:`WorldBatch` as the single env). Subclasses set ``task_class``.

    Autoreset: ``AutoresetMode.SAME_STEP``. When a world's episode ends (diverged, or
    ``max_episode_steps`` reached) the returned observation is already that of its new episode;
    ``info["final_obs"]`` (rows masked by ``info["_final_obs"]``) holds the last observation of
    the ended one, and the other ``info`` entries are those of the final step. World ``i`` is
    seeded with ``seed + i`` on ``reset(seed=seed)``, as ``SyncVectorEnv`` seeds its envs, and
    draws its later episodes from its own generator: the vector env reproduces N single envs.

    Gradients: :meth:`grad` returns, per world, the gradient of the return of its *current*
    episode (since ``reset()`` or its latest autoreset): ``actions`` has shape
    (num_envs, T, *single_action_space.shape) with T the steps since ``reset()``; entries of a
    world's earlier episodes are zero, and ``initial_state`` holds each world's gradient with
    respect to its current episode's initial state. With ``differentiable=True`` the recording
    grows with every step until ``reset()``: for long RL runs use ``differentiable=False``.

    Bad input: actions must have shape (num_envs, *single_action_space.shape) and be finite
    (``ValueError`` otherwise, nothing changes); values outside [-1, 1] are clipped.
    """

    metadata: ClassVar[dict[str, Any]] = {
        "render_modes": ["rgb_array"], "autoreset_mode": gym.vector.AutoresetMode.SAME_STEP,
    }
    task_class: ClassVar[type[Task]]

    def __init__(
        self,
        num_envs: int = 1,
        *,
        render_mode: str | None = None,
        device: str | None = None,
        differentiable: bool = True,
        checkpoint: bool = False,
        max_episode_steps: int | None = None,
        render_width: int = 256,
        render_height: int = 256,
        **task_kwargs: Any,
    ):
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"render_mode must be None or one of {self.metadata['render_modes']}, got {render_mode!r}")
        if max_episode_steps is not None and int(max_episode_steps) < 1:
            raise ValueError(f"max_episode_steps must be >= 1, got {max_episode_steps}")
        self.num_envs = int(num_envs)
        self.task = self.task_class(self.num_envs, device=device, **task_kwargs)
        self.batch = WorldBatch(self.task, differentiable=differentiable, checkpoint=checkpoint)
        self.render_mode = render_mode
        self.render_width, self.render_height = int(render_width), int(render_height)
        self.max_episode_steps = None if max_episode_steps is None else int(max_episode_steps)
        self.single_action_space = gym.spaces.Box(-1.0, 1.0, shape=(self.task.action_dim,), dtype=np.float32)
        self.single_observation_space = gym.spaces.Box(-np.inf, np.inf, shape=(self.task.obs_dim,), dtype=np.float32)
        self.action_space = gym.vector.utils.batch_space(self.single_action_space, self.num_envs)
        self.observation_space = gym.vector.utils.batch_space(self.single_observation_space, self.num_envs)
        self.metadata = {**self.metadata, "render_fps": round(1.0 / self.task.frame_dt)}
        self._rngs: list[np.random.Generator] | None = None
        self._elapsed = np.zeros(self.num_envs, dtype=np.int64)
        self._obs: np.ndarray | None = None

    @property
    def dt(self) -> float:
        """Duration of one env step [s]."""
        return self.task.frame_dt

    def reset(self, *, seed: int | list[int | None] | None = None, options: dict[str, Any] | None = None):
        if seed is not None or self._rngs is None:
            seeds = list(seed) if isinstance(seed, (list, tuple)) else [
                None if seed is None else int(seed) + i for i in range(self.num_envs)
            ]
            if len(seeds) != self.num_envs:
                raise ValueError(f"reset() needs {self.num_envs} seeds, got {len(seeds)}")
            self._rngs = [gym.utils.seeding.np_random(s)[0] for s in seeds]
        states = [self.task.sample_state(rng, options) for rng in self._rngs]
        obs, loss = self.batch.reset({name: np.stack([s[name] for s in states]) for name in states[0]})
        self._elapsed[:] = 0
        self._obs = obs
        self._new_episodes(np.ones(self.num_envs, dtype=bool))
        return obs.copy(), {"loss": loss}

    def step(self, actions):
        if self._obs is None:
            raise RuntimeError("call reset() before step()")
        result = self.batch.step(checked_actions(actions, self.action_space.shape, "actions"))
        self._elapsed += 1
        diverged = result.diverged
        terminated = diverged.copy()
        truncated = np.zeros(self.num_envs, dtype=bool)
        if self.max_episode_steps is not None:
            truncated = (self._elapsed >= self.max_episode_steps) & ~terminated
        reward = np.where(diverged, 0.0, result.reward)
        obs = np.where(diverged[:, None], self._obs, result.obs)
        info: dict[str, Any] = {"loss": result.loss, "diverged": diverged, "is_success": self.task.success(result.loss) & ~diverged}
        for i, name in enumerate(self.task.reward_terms):
            info[f"reward_{name}"] = np.where(diverged, 0.0, result.reward_terms[:, i])
        info.update(result.metrics)
        self._extend_info(info, diverged)
        ended = terminated | truncated
        if ended.any():
            info["final_obs"] = np.where(ended[:, None], obs, 0.0).astype(np.float32)
            info["_final_obs"] = ended
            current = self.batch.get_state()
            for w in np.flatnonzero(ended):
                for name, value in self.task.sample_state(self._rngs[w]).items():
                    current[name][w] = value
            self.batch.trajectory.reset_worlds(ended, current)
            self.task.prepare(self.batch.trajectory.state())
            obs = np.where(ended[:, None], self.batch.observe(), obs)
            self._elapsed[ended] = 0
            self._new_episodes(ended)
        for key in list(info):
            if not key.startswith("_"):
                info.setdefault(f"_{key}", ended if key == "final_obs" else np.ones(self.num_envs, dtype=bool))
        self._obs = obs.astype(np.float32)
        return self._obs.copy(), reward, terminated, truncated, info

    def grad(self, objective: str = "return") -> Gradients:
        """Per-world gradients of each world's current episode; see the class docstring."""
        return self.batch.grad(objective)

    def get_state(self) -> dict[str, np.ndarray]:
        """A snapshot of all worlds (world axis first)."""
        if self._obs is None:
            raise RuntimeError("call reset() before get_state()")
        return self.batch.get_state()

    def set_state(self, state: dict[str, np.ndarray]) -> np.ndarray:
        """Restart every world from a batched snapshot (world axis first); return the observations.

        All worlds start new episodes (``grad()`` differentiates from here); the per-world
        generators of later autoresets are kept (unseeded if :meth:`reset` was never called).

        Raises:
            ValueError: missing or extra fields, wrong shapes, or non-finite values.
        """
        if self._rngs is None:
            self._rngs = [gym.utils.seeding.np_random(None)[0] for _ in range(self.num_envs)]
        obs, _ = self.batch.reset({name: np.asarray(value) for name, value in dict(state).items()})
        self._elapsed[:] = 0
        self._obs = obs
        self._new_episodes(np.ones(self.num_envs, dtype=bool))
        return obs.copy()

    @property
    def remedies(self) -> dict[str, float]:
        """Current gradient remedies of the task (see :meth:`DiffEnv.set_remedies`)."""
        return self.task.get_remedies()

    def set_remedies(self, **values: float) -> None:
        """Change the gradient remedies of all worlds from the next reset or set_state on."""
        self.batch.set_remedies(**values)

    def render(self):
        if self.render_mode is None:
            gym.logger.warn("render() was called with render_mode=None; make the env with render_mode='rgb_array'.")
            return None
        state = self.get_state()
        return [
            self.task.render({name: value[w] for name, value in state.items()}, width=self.render_width, height=self.render_height)
            for w in range(self.num_envs)
        ]

    # Hooks for tasks with per-episode metrics -----------------------------------------------

    def _new_episodes(self, worlds: np.ndarray) -> None:
        """Called after the worlds of the mask started new episodes (reset or autoreset)."""

    def _extend_info(self, info: dict[str, Any], diverged: np.ndarray) -> None:
        """Add task-specific entries to a step's info."""


__all__ = ["DiffEnv", "DiffVectorEnv", "GradientError", "Gradients", "StepResult", "WorldBatch"]
