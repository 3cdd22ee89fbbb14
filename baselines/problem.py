"""An open-loop control problem on a diffenvs task, with batched evaluation and shared budget accounting.

A :class:`Problem` fixes an env id, its keyword arguments, a seed (hence one initial state) and a
horizon. It evaluates batches of action sequences in the *reported setting* (the env exactly as
configured, whatever remedies an optimizer uses on the side) and differentiates batches of
sequences with remedies switched on. Every method of :mod:`diffenvs.baselines.trajopt` goes through
it, so their costs are counted the same way in :class:`Budget`.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import gymnasium as gym
import numpy as np


@dataclasses.dataclass(frozen=True)
class ProblemConfig:
    """What is optimized.

    Attributes:
        env_id: A registered diffenvs id.
        seed: Seed of the initial state (``env.reset(seed=seed)``).
        horizon: Env steps of the action sequence; ``None`` for the id's ``max_episode_steps``.
        env_kwargs: Keyword arguments of the env (preset, weights, ...): the reported setting.
        eval_batch: Worlds per batched rollout (evaluations and multi-start gradients).
    """

    env_id: str = "DiffEnvs/Pusher-v0"
    seed: int = 0
    horizon: int | None = None
    env_kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)
    eval_batch: int = 16

    def __post_init__(self) -> None:
        if self.horizon is not None and self.horizon < 1:
            raise ValueError(f"horizon must be >= 1, got {self.horizon}")
        if self.eval_batch < 1:
            raise ValueError(f"eval_batch must be >= 1, got {self.eval_batch}")
        for key in ("render_mode", "differentiable", "num_envs", "max_episode_steps"):
            if key in self.env_kwargs:
                raise ValueError(f"env_kwargs may not set {key!r}: the problem chooses it")


@dataclasses.dataclass
class Budget:
    """Simulation spent by a method, counted the same way for every method.

    Attributes:
        forward_steps: World-steps simulated forward while optimizing (rollouts that a gradient
            or a sample's cost was taken from).
        backward_steps: World-steps differentiated (one per forward step of a differentiated
            rollout; a checkpointed backward pass recomputes its forward inside this count).
        eval_steps: World-steps of replays in the reported setting (needed when the optimizer's
            dynamics differ from it, e.g. with soft tools).
        grad_evals: Gradients of whole action sequences (a batch of K counts K).
        rollouts: Action sequences simulated (forward, with or without gradient, and replays).
    """

    forward_steps: int = 0
    backward_steps: int = 0
    eval_steps: int = 0
    grad_evals: int = 0
    rollouts: int = 0
    start: float = dataclasses.field(default_factory=time.perf_counter)

    @property
    def env_steps(self) -> int:
        """Forward, backward and evaluation world-steps together."""
        return self.forward_steps + self.backward_steps + self.eval_steps

    @property
    def wall_time(self) -> float:
        """Seconds since the budget was opened."""
        return time.perf_counter() - self.start

    def as_dict(self) -> dict[str, float]:
        return {
            "env_steps": self.env_steps, "forward_steps": self.forward_steps, "backward_steps": self.backward_steps,
            "eval_steps": self.eval_steps, "grad_evals": self.grad_evals, "rollouts": self.rollouts,
            "wall_time": self.wall_time,
        }


@dataclasses.dataclass(frozen=True)
class Evaluation:
    """Outcome of action sequences in the reported setting.

    Attributes:
        loss: Task loss after the last step, per sequence (``inf`` when it diverged).
        metric: The task's metric after the last step (``Problem.metric_name``; 0 when diverged).
        diverged: Whether the simulation diverged.
    """

    loss: np.ndarray
    metric: np.ndarray
    diverged: np.ndarray


@dataclasses.dataclass(frozen=True)
class Rollout:
    """A differentiated batch of sequences: returns, gradients and the outcome under the rollout's dynamics."""

    returns: np.ndarray
    grads: np.ndarray
    evaluation: Evaluation


class Problem:
    """One initial state, one horizon, batched evaluation and gradients; see the module docstring.

    Args:
        config: The problem.
        device: Warp device of every env it builds.

    Attributes:
        initial_state: The single-world initial state (``get_state()`` form).
        initial_loss: Task loss of the initial state.
        metric_name: The task's metric (``Task.metric``), read from the env's ``info``:
            ``iou_incremental`` for dough (1 = target reached), ``loss_reduction``
            (``1 - loss / initial_loss``) for the Pusher.
        budget: Shared accounting; :meth:`reset_budget` opens a new one.
        action_shape: (horizon, action_dim) of one sequence.
    """

    def __init__(self, config: ProblemConfig, *, device: str | None = None):
        import diffenvs  # noqa: F401  (registers the ids)

        if config.env_id not in gym.registry:
            raise ValueError(f"unknown env id {config.env_id!r}; see `diffenvs list`")
        self.config = config
        self.device = device
        self.spec = gym.spec(config.env_id)
        if self.spec.vector_entry_point is None:
            raise ValueError(f"{config.env_id} has no native vector env: it is not a diffenvs env")
        self.horizon = int(config.horizon or self.spec.max_episode_steps)
        self._vector_class = gym.envs.registration.load_env_creator(self.spec.vector_entry_point)
        self._envs: dict[tuple[int, bool], Any] = {}
        self._executor: Any = None  # execute()'s env: its episode goes on across calls
        env = self.single_env(render_mode=None)
        env.reset(seed=config.seed)
        self.initial_state = env.get_state()
        self.initial_loss = env.loss
        self.base_remedies = env.remedies
        self.action_dim = int(env.action_space.shape[0])
        self.action_shape = (self.horizon, self.action_dim)
        self.metric_name = env.task.metric
        env.close()
        self.budget = Budget()

    def reset_budget(self) -> Budget:
        """Open a new budget (call before timing a method)."""
        self.budget = Budget()
        return self.budget

    # Environments -------------------------------------------------------------------------------

    def single_env(self, *, render_mode: str | None = "rgb_array"):
        """A fresh single env of the reported setting (for replays and GIFs; not counted)."""
        kwargs = {**self.spec.kwargs, **self.config.env_kwargs}
        return gym.make(self.config.env_id, render_mode=render_mode, device=self.device, **kwargs).unwrapped

    def vector_env(self, worlds: int, *, differentiable: bool):
        """A cached native vector env of ``worlds`` worlds, without a time limit."""
        key = (int(worlds), bool(differentiable))
        if key not in self._envs:
            kwargs = {**self.spec.kwargs, **self.config.env_kwargs}
            if not differentiable:
                kwargs.pop("checkpoint", None)
            self._envs[key] = self._vector_class(num_envs=key[0], device=self.device, differentiable=key[1], **kwargs)
        return self._envs[key]

    def tiled_state(self, worlds: int, state: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
        """``state`` (default: the initial state) repeated for ``worlds`` worlds."""
        state = self.initial_state if state is None else state
        return {name: np.repeat(np.asarray(value)[None], worlds, axis=0) for name, value in state.items()}

    # Evaluation ---------------------------------------------------------------------------------

    def check_actions(self, actions: np.ndarray) -> np.ndarray:
        """A batch (P, horizon, action_dim) of finite sequences, clipped to [-1, 1]."""
        actions = np.asarray(actions, dtype=np.float64)
        if actions.ndim == 2:
            actions = actions[None]
        if actions.ndim != 3 or actions.shape[1:] != self.action_shape:
            raise ValueError(f"action sequences must have shape (P, {self.horizon}, {self.action_dim}), got {actions.shape}")
        if not np.all(np.isfinite(actions)):
            raise ValueError("action sequences have non-finite entries")
        return np.clip(actions, -1.0, 1.0)

    def evaluate(self, actions: np.ndarray, *, as_cost: bool = False) -> Evaluation:
        """Replay sequences (P, horizon, action_dim) from the initial state in the reported
        setting, ``eval_batch`` worlds at a time; counted as evaluation steps, or with
        ``as_cost`` as the optimizer's forward steps (a sampling method's objective).

        Raises:
            ValueError: a wrong shape or non-finite entries.
        """
        actions = self.check_actions(actions)
        count, steps = actions.shape[0], actions.shape[1]
        batch = min(self.config.eval_batch, count)
        env = self.vector_env(batch, differentiable=False)
        losses, metrics, diverged = [], [], []
        for first in range(0, count, batch):
            chunk = actions[first:first + batch]
            used = chunk.shape[0]
            if used < batch:  # pad with copies of the last sequence
                chunk = np.concatenate([chunk, np.repeat(chunk[-1:], batch - used, axis=0)])
            evaluation = self._run(env, chunk, self.tiled_state(batch), differentiable=False)[1]
            losses.append(evaluation.loss[:used])
            metrics.append(evaluation.metric[:used])
            diverged.append(evaluation.diverged[:used])
            if as_cost:
                self.budget.forward_steps += used * steps
            else:
                self.budget.eval_steps += used * steps
            self.budget.rollouts += used
        return Evaluation(np.concatenate(losses), np.concatenate(metrics), np.concatenate(diverged))

    def returns(self, actions: np.ndarray, *, remedies: dict[str, float] | None = None) -> tuple[np.ndarray, Evaluation]:
        """Returns of sequences (P, T, action_dim) from the initial state under the optimizer's dynamics
        (``remedies`` as in :meth:`value_and_grad`: the objective the gradient methods ascend), without
        gradients, ``eval_batch`` worlds at a time; counted as forward steps. Also their outcome under
        those dynamics. A diverged sequence's return is ``-inf``."""
        actions = self.check_actions(actions)
        count, steps = actions.shape[0], actions.shape[1]
        batch = min(self.config.eval_batch, count)
        env = self.vector_env(batch, differentiable=False)
        env.set_remedies(**{**self.base_remedies, **(remedies or {})})
        totals, outcomes = [], []
        try:
            for first in range(0, count, batch):
                chunk = actions[first:first + batch]
                used = chunk.shape[0]
                if used < batch:  # pad with copies of the last sequence
                    chunk = np.concatenate([chunk, np.repeat(chunk[-1:], batch - used, axis=0)])
                env.set_state(self.tiled_state(batch))
                total = np.zeros(batch)
                diverged = np.zeros(batch, dtype=bool)
                info: dict[str, Any] = {}
                for t in range(steps):
                    _, reward, terminated, _, info = env.step(chunk[:, t])
                    total += np.where(diverged, 0.0, reward)
                    diverged |= terminated
                totals.append(np.where(diverged, -np.inf, total)[:used])
                loss, metric = np.asarray(info["loss"], dtype=np.float64), np.asarray(info[self.metric_name], dtype=np.float64)
                outcomes.append((np.where(diverged, np.inf, loss)[:used], np.where(diverged, 0.0, metric)[:used], diverged[:used]))
                self.budget.forward_steps += used * steps
                self.budget.rollouts += used
        finally:
            env.set_remedies(**self.base_remedies)  # the evaluations' env: back to the reported setting
        loss, metric, diverged = (np.concatenate(part) for part in zip(*outcomes))
        return np.concatenate(totals), Evaluation(loss, metric, diverged)

    def value_and_grad(
        self,
        actions: np.ndarray,
        *,
        remedies: dict[str, float] | None = None,
        window: int | None = None,
        state: dict[str, np.ndarray] | None = None,
    ) -> Rollout:
        """Returns and their gradients for a batch (K, T, action_dim) of sequences, in one batched rollout.

        Args:
            actions: K sequences (inside [-1, 1]).
            remedies: ``contact_weight`` / ``softness`` for this rollout (default: the env's own).
            window: Truncated backpropagation: the sequence is cut into windows of this many
                steps, each differentiated from its (fixed) start state, so no gradient flows
                across a window boundary. ``None``: the whole sequence.
            state: Start state (default: the problem's initial state).

        Returns:
            Returns (K,), d return / d actions (K, T, action_dim) and the final loss and metric
            under the rollout's own dynamics (remedies included). A world that diverged gets
            a zero gradient and ``diverged=True``.
        """
        actions = np.clip(np.asarray(actions, dtype=np.float64), -1.0, 1.0)
        if actions.ndim != 3:
            raise ValueError(f"actions must have shape (K, T, action_dim), got {actions.shape}")
        count, steps = actions.shape[:2]
        window = steps if window is None else int(window)
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        env = self.vector_env(count, differentiable=True)
        env.set_remedies(**{**self.base_remedies, **(remedies or {})})
        start = self.tiled_state(count, state)
        returns = np.zeros(count)
        grads = np.zeros_like(actions)
        diverged = np.zeros(count, dtype=bool)
        evaluation = None
        for first in range(0, steps, window):
            part = slice(first, min(first + window, steps))
            # later windows go on in the same episode: gradients stop at the window's start, and the
            # metric is still measured from the episode's start
            gradient, evaluation = self._run(env, actions[:, part], start if first == 0 else None, differentiable=True)
            returns += gradient.value
            grads[:, part] = gradient.actions
            diverged |= evaluation.diverged
        grads[diverged] = 0.0
        self.budget.forward_steps += count * steps
        self.budget.backward_steps += count * steps
        self.budget.grad_evals += count
        self.budget.rollouts += count
        final = Evaluation(np.where(diverged, np.inf, evaluation.loss), np.where(diverged, 0.0, evaluation.metric), diverged)
        return Rollout(returns=returns, grads=grads, evaluation=final)

    def execute(self, actions: np.ndarray, *, first: bool) -> tuple[dict[str, np.ndarray], Evaluation]:
        """Execute actions (T, action_dim) in the reported setting as a closed loop executes its plan
        (MPC): ``first`` starts the episode at the initial state, later calls continue it, so the
        metric is measured from the initial state as in every other evaluation. Counted as
        evaluation steps (and one rollout per episode).

        Returns:
            The single-world state reached (to plan from) and the outcome after the last step.
        """
        actions = np.clip(np.asarray(actions, dtype=np.float64), -1.0, 1.0)
        if actions.ndim != 2 or actions.shape[1] != self.action_dim:
            raise ValueError(f"actions must have shape (T, {self.action_dim}), got {actions.shape}")
        if self._executor is None:
            kwargs = {key: value for key, value in {**self.spec.kwargs, **self.config.env_kwargs}.items() if key != "checkpoint"}
            self._executor = self._vector_class(num_envs=1, device=self.device, differentiable=False, **kwargs)
        evaluation = self._run(self._executor, actions[None], self.tiled_state(1) if first else None, differentiable=False)[1]
        self.budget.eval_steps += len(actions)
        self.budget.rollouts += int(first)
        return {name: np.asarray(value)[0] for name, value in self._executor.get_state().items()}, evaluation

    def _run(self, env, actions: np.ndarray, start: dict[str, np.ndarray] | None, *, differentiable: bool):
        """Step ``env`` through ``actions`` (worlds, T, A) from the batched ``start`` (``None``: go on
        from where the env is, in the same episode, a new recording); (gradient or None, evaluation)."""
        worlds = actions.shape[0]
        if start is None:
            env.detach()
        else:
            env.set_state(start)
        diverged = np.zeros(worlds, dtype=bool)
        info: dict[str, Any] = {}
        for t in range(actions.shape[1]):
            _, _, terminated, _, info = env.step(actions[:, t])
            diverged |= terminated
        loss = np.asarray(info["loss"], dtype=np.float64)
        metric = np.asarray(info[self.metric_name], dtype=np.float64)
        evaluation = Evaluation(np.where(diverged, np.inf, loss), np.where(diverged, 0.0, metric), diverged)
        gradient = env.grad("return") if differentiable else None
        return gradient, evaluation

    def close(self) -> None:
        for env in [*self._envs.values(), *([self._executor] if self._executor is not None else [])]:
            env.close()
        self._envs.clear()
        self._executor = None


__all__ = ["Budget", "Evaluation", "Problem", "ProblemConfig", "Rollout"]
