"""Open-loop trajectory optimization through ``grad()``.

The optimizer works on any single diffenvs env: it replays an action sequence from a fixed
initial state, asks the env for d(return)/d(actions) and takes an Adam step uphill, keeping
the actions inside the action bounds.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from diffenvs.env import DiffEnv

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class AdamConfig:
    """Options of :func:`optimize_actions`.

    Attributes:
        iters: Gradient iterations.
        horizon: Env steps per rollout.
        lr: Adam step size, in action units.
        beta1: Adam's first-moment decay.
        beta2: Adam's second-moment decay.
        eps: Adam's denominator regulariser.
        grad_clip: Largest gradient norm used per iteration (the whole sequence); ``None`` for no clipping.
        init_scale: Standard deviation of the random initial actions (0: start from zeros).
        seed: Seed of the initial actions.
    """

    iters: int = 50
    horizon: int = 50
    lr: float = 0.05
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    grad_clip: float | None = None
    init_scale: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.iters < 1 or self.horizon < 1:
            raise ValueError(f"iters and horizon must be >= 1, got {self.iters} and {self.horizon}")
        if not self.lr > 0.0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if not (0.0 <= self.beta1 < 1.0 and 0.0 <= self.beta2 < 1.0):
            raise ValueError("beta1 and beta2 must lie in [0, 1)")


@dataclasses.dataclass
class TrajOptResult:
    """Outcome of a trajectory optimization.

    Attributes:
        actions: Best action sequence found (by final task loss), shape (horizon, *action_shape).
        best_loss: Task loss after replaying ``actions``.
        initial_loss: Task loss of the initial state.
        history: One record per iteration: iteration, return, loss (after the rollout), grad_norm,
            env_steps (forward and backward steps simulated so far) and wall_time [s].
        stopped: Why the optimization ended early (a diverged rollout or a non-finite
            gradient), or ``None`` when it ran all its iterations. The best sequence found
            until then is kept.
    """

    actions: np.ndarray
    best_loss: float
    initial_loss: float
    history: list[dict[str, float]]
    stopped: str | None = None


def rollout(env: DiffEnv, state: dict[str, np.ndarray], actions: np.ndarray) -> tuple[float, float, bool]:
    """Replay ``actions`` from ``state``; return (return, final task loss, diverged)."""
    env.set_state(state)
    total = 0.0
    loss = float("nan")
    for action in actions:
        _, reward, terminated, _, info = env.step(action)
        total += reward
        loss = info["loss"]
        if terminated:
            return total, loss, bool(info.get("diverged", False))
    return total, loss, False


class Adam:
    """Adam ascent on an array of parameters kept inside [low, high]."""

    def __init__(self, params: np.ndarray, config: AdamConfig, low: np.ndarray, high: np.ndarray):
        self.params = params.astype(np.float64)
        self.config = config
        self.low, self.high = low, high
        self.m = np.zeros_like(self.params)
        self.v = np.zeros_like(self.params)
        self.t = 0

    def ascend(self, grad: np.ndarray) -> np.ndarray:
        """Take one step uphill along ``grad``; return the new parameters."""
        cfg = self.config
        if cfg.grad_clip is not None:
            norm = float(np.linalg.norm(grad))
            if norm > cfg.grad_clip:
                grad = grad * (cfg.grad_clip / norm)
        self.t += 1
        self.m = cfg.beta1 * self.m + (1 - cfg.beta1) * grad
        self.v = cfg.beta2 * self.v + (1 - cfg.beta2) * grad * grad
        m_hat = self.m / (1 - cfg.beta1**self.t)
        v_hat = self.v / (1 - cfg.beta2**self.t)
        self.params = np.clip(self.params + cfg.lr * m_hat / (np.sqrt(v_hat) + cfg.eps), self.low, self.high)
        return self.params


def optimize_actions(
    env: DiffEnv,
    config: AdamConfig = AdamConfig(),
    *,
    state: dict[str, np.ndarray] | None = None,
    init_actions: np.ndarray | None = None,
    callback: Callable[[dict[str, Any], np.ndarray], None] | None = None,
) -> TrajOptResult:
    """Maximise the return of an open-loop action sequence with Adam on ``env.grad()``.

    Args:
        env: An unwrapped, differentiable diffenvs env that has been reset.
        config: Optimizer options.
        state: Initial state (default: the env's current state).
        init_actions: Initial sequence, shape (horizon, *action_shape); default from ``config``.
        callback: Called with each iteration's record and the actions it evaluated (for
            progress bars, logs and evaluations under other settings).

    Returns:
        The best sequence by final task loss, and the per-iteration history.
    """
    if not env.differentiable:
        raise ValueError("optimize_actions needs an env built with differentiable=True")
    state = env.get_state() if state is None else state
    space = env.action_space
    shape = (config.horizon, *space.shape)
    if init_actions is None:
        rng = np.random.default_rng(config.seed)
        init_actions = config.init_scale * rng.standard_normal(shape)
    init_actions = np.asarray(init_actions, dtype=np.float64)
    if init_actions.shape != shape:
        raise ValueError(f"init_actions must have shape {shape}, got {init_actions.shape}")
    low = np.broadcast_to(space.low.astype(np.float64), shape)
    high = np.broadcast_to(space.high.astype(np.float64), shape)
    adam = Adam(np.clip(init_actions, low, high), config, low, high)
    env.set_state(state)
    initial_loss = env.loss
    best = (float("inf"), adam.params.copy())
    history: list[dict[str, float]] = []
    start = time.perf_counter()
    stopped = None
    for iteration in range(config.iters):
        actions = adam.params.copy()
        total, loss, diverged = rollout(env, state, actions)
        if diverged:
            stopped = f"the rollout diverged at iteration {iteration}"
            break
        if loss < best[0]:
            best = (loss, actions)
        grad = env.grad("return").actions
        if not np.all(np.isfinite(grad)):
            stopped = f"non-finite gradient at iteration {iteration}"
            break
        record = {
            "iteration": iteration, "return": total, "loss": loss, "grad_norm": float(np.linalg.norm(grad)),
            "env_steps": 2 * config.horizon * (iteration + 1), "wall_time": time.perf_counter() - start,
        }
        history.append(record)
        if callback is not None:
            callback(record, actions)
        adam.ascend(grad)
    if stopped is None:
        _, final_loss, diverged = rollout(env, state, adam.params)
        if not diverged and final_loss < best[0]:
            best = (final_loss, adam.params.copy())
    else:
        logger.warning("optimize_actions stopped early: %s; keeping the best sequence so far", stopped)
    return TrajOptResult(actions=best[1], best_loss=best[0], initial_loss=initial_loss, history=history, stopped=stopped)
