"""Loss landscapes in action space: why long horizons are hard for gradients.

The task loss of a sequence ``a + alpha d`` (1-D) or ``a + alpha d1 + beta d2`` (2-D) around a
sequence ``a`` (a solution, or zeros), in the reported setting, for several horizons at once:
the loss after step ``h`` depends only on the first ``h`` actions, so one batched rollout per
point gives every horizon's curve. Directions are Gaussian, scaled to unit root-mean-square per
action component (``span`` is in action units); sequences are clipped to [-1, 1] as the env
clips them. Short horizons give smooth bowls; long ones give the rugged, flat-then-cliff
curves on which gradient descent stalls or jumps.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from diffenvs.baselines.problem import Problem


@dataclasses.dataclass
class Landscape:
    """Losses on a line or a plane of action space.

    Attributes:
        alphas: Offsets along the first direction, shape (points,).
        betas: Offsets along the second direction (2-D), else ``None``.
        horizons: The horizons whose loss is reported.
        losses: Shape (len(horizons), points) for 1-D, (len(horizons), points, points) for 2-D
            (``[h, i, j]``: ``alphas[i]``, ``betas[j]``); ``inf`` where the rollout diverged.
        roughness: Per horizon: total variation of the normalised 1-D curve (or of the 2-D
            surface's rows) divided by its range; 1 for a single valley, larger when rugged.
    """

    alphas: np.ndarray
    betas: np.ndarray | None
    horizons: list[int]
    losses: np.ndarray
    roughness: list[float]


def _unit_rms(direction: np.ndarray) -> np.ndarray:
    return direction / max(float(np.sqrt(np.mean(direction**2))), 1e-12)


def loss_landscape(
    problem: Problem,
    actions: np.ndarray | None = None,
    *,
    dims: int = 1,
    points: int = 21,
    span: float = 1.0,
    horizons: list[int] | None = None,
    directions: np.ndarray | None = None,
    seed: int = 0,
) -> Landscape:
    """Evaluate the loss landscape around ``actions`` (default zeros).

    Args:
        problem: The problem (its horizon bounds ``horizons``).
        actions: Centre sequence (horizon, action_dim).
        dims: 1 (a line) or 2 (a plane).
        points: Points per axis.
        span: Offsets run over [-span, span].
        horizons: Horizons to report (default: a quarter, half and all of the problem's).
        directions: ``dims`` directions, shape (dims, horizon, action_dim); default random.
        seed: Seed of the random directions.

    Raises:
        ValueError: for a bad ``dims``, ``points``, ``span``, horizon or direction shape.
    """
    if dims not in (1, 2) or points < 2 or not span > 0.0:
        raise ValueError(f"need dims in (1, 2), points >= 2 and span > 0, got {dims}, {points}, {span}")
    shape = problem.action_shape
    centre = np.zeros(shape) if actions is None else problem.check_actions(actions)[0]
    horizons = sorted(set(horizons or [max(1, problem.horizon // 4), max(1, problem.horizon // 2), problem.horizon]))
    if horizons[0] < 1 or horizons[-1] > problem.horizon:
        raise ValueError(f"horizons must lie in [1, {problem.horizon}], got {horizons}")
    if directions is None:
        directions = np.random.default_rng(seed).standard_normal((dims, *shape))
    directions = np.asarray(directions, dtype=np.float64)
    if directions.shape != (dims, *shape):
        raise ValueError(f"directions must have shape {(dims, *shape)}, got {directions.shape}")
    directions = np.stack([_unit_rms(d) for d in directions])
    alphas = np.linspace(-span, span, points)
    if dims == 1:
        offsets = alphas[:, None, None] * directions[0]
    else:
        offsets = (alphas[:, None, None, None] * directions[0] + alphas[None, :, None, None] * directions[1]).reshape(-1, *shape)
    sequences = np.clip(centre + offsets, -1.0, 1.0)
    per_step = _losses_per_step(problem, sequences)  # (count, horizon)
    losses = np.stack([per_step[:, h - 1] for h in horizons]).reshape(len(horizons), *(points,) * dims)
    return Landscape(alphas=alphas, betas=alphas.copy() if dims == 2 else None, horizons=horizons, losses=losses,
                     roughness=[_roughness(curve) for curve in losses])


def _losses_per_step(problem: Problem, sequences: np.ndarray) -> np.ndarray:
    """Loss after every step of each sequence (reported setting, batched, counted as replays)."""
    batch = min(problem.config.eval_batch, len(sequences))
    env = problem.vector_env(batch, differentiable=False)
    out = np.empty((len(sequences), problem.horizon))
    for first in range(0, len(sequences), batch):
        chunk = sequences[first:first + batch]
        used = len(chunk)
        if used < batch:
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], batch - used, axis=0)])
        env.set_state(problem.tiled_state(batch))
        diverged = np.zeros(batch, dtype=bool)
        for t in range(problem.horizon):
            _, _, terminated, _, info = env.step(chunk[:, t])
            diverged |= terminated
            out[first:first + used, t] = np.where(diverged, np.inf, info["loss"])[:used]
        problem.budget.eval_steps += used * problem.horizon
    return out


def _roughness(values: np.ndarray) -> float:
    values = np.where(np.isfinite(values), values, np.nan)
    rows = values.reshape(-1, values.shape[-1])
    spread = np.nanmax(values) - np.nanmin(values)
    if not spread > 0:
        return 1.0
    variation = np.nanmean(np.nansum(np.abs(np.diff(rows, axis=-1)), axis=-1))
    return float(variation / spread)


def plot_landscape(landscape: Landscape, path: str | Path, *, title: str = "") -> None:
    """One panel per horizon: the loss along the line (1-D) or its contours (2-D)."""
    from matplotlib.figure import Figure  # the object API: no global backend switch

    count = len(landscape.horizons)
    if landscape.betas is None:
        fig = Figure(figsize=(3.2 * count, 3.0))
        axes = fig.subplots(1, count, squeeze=False, sharex=True)
        for ax, h, curve, rough in zip(axes[0], landscape.horizons, landscape.losses, landscape.roughness):
            ax.plot(landscape.alphas, curve, ".-", ms=3)
            ax.axvline(0.0, color="gray", lw=0.5)
            ax.set_title(f"horizon {h} (roughness {rough:.1f})", fontsize=9)
            ax.set_xlabel("offset [action units]")
        axes[0, 0].set_ylabel("task loss after the horizon")
    else:
        fig = Figure(figsize=(4 * count, 3.6))
        axes = fig.subplots(1, count, squeeze=False)
        for ax, h, surface in zip(axes[0], landscape.horizons, landscape.losses):
            contour = ax.contourf(landscape.betas, landscape.alphas, surface, levels=20)
            fig.colorbar(contour, ax=ax)
            ax.set_title(f"horizon {h}")
            ax.set_xlabel("direction 2")
            ax.set_ylabel("direction 1")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=90)


__all__ = ["Landscape", "loss_landscape", "plot_landscape"]
