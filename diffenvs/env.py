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

    @property
    def differentiable(self) -> bool:
        return self.trajectory.differentiable

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

    # gradients ------------------------------------------------------------------------------

    def grad(self, objective: str = "return") -> Gradients:
        """Gradients of ``objective`` of every world's rollout since the last reset (batched arrays)."""
        if objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")

        def seed(steps: list[StepBuffers]) -> None:
            if objective == "return":
                for buffers in steps:
                    buffers.reward.grad.fill_(1.0)
            else:
                steps[-1].loss.grad.fill_(1.0)

        self.trajectory.backward(seed)
        steps = self.trajectory.recorded
        if objective == "return":
            value = np.sum([b.reward.numpy() for b in steps], axis=0)
        else:
            value = steps[-1].loss.numpy().copy()
        actions = np.stack([b.action.grad.numpy() for b in steps], axis=1)
        initial = {name: array.grad.numpy().copy() for name, array in self.trajectory.initial.items()}
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
        checkpoint: With ``differentiable`` (ignored without), keep only each step's outputs and recompute the
            substeps in :meth:`grad` (less memory, about one more forward pass of compute; see
            :mod:`diffenvs.autodiff` for the memory formula).
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
        self.metadata = {**self.metadata, "render_fps": int(round(1.0 / self.task.frame_dt))}
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
        try:
            array = np.asarray(action, dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"action must be numeric with shape {self.action_space.shape}: {exc}") from None
        if array.shape != self.action_space.shape:
            raise ValueError(f"action must have shape {self.action_space.shape}, got {array.shape}")
        if not np.all(np.isfinite(array)):
            raise ValueError(f"action has non-finite entries: {array}")
        return np.clip(array, self.action_space.low, self.action_space.high)

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


__all__ = ["DiffEnv", "GradientError", "Gradients", "StepResult", "WorldBatch"]
