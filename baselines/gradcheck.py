"""Directional finite-difference checks of ``grad()`` on any registered env: ``diffenvs gradcheck``.

For an episode of random actions from a seeded initial state, the analytic directional derivative
``grad(J) . u`` of the objective J (the return, or the final task loss) is compared with central
differences ``(J(a + eps u) - J(a - eps u)) / (2 eps)`` over several step sizes ``eps`` and
directions ``u`` (the gradient's own direction first: a clear signal; then random ones). All
perturbed rollouts run as worlds of one native vector env.

Each direction gets a verdict:

* ``agree``: at some step size the difference is within ``rtol`` of the larger of the directional
  derivative and a tenth of the gradient's norm (:data:`NOISE_FLOOR`: a unit direction nearly
  orthogonal to the gradient has a derivative smaller than the float32 noise of the objective's
  differences, and is judged against that scale instead of its own);
* ``inconclusive``: the finite differences themselves spread widely across step sizes (hard
  contact in float32 makes the objective kinky at small scales, so no single step size is
  trustworthy) and the analytic value lies within their range: finite differences cannot judge;
* ``zero``: the gradient and every difference are exactly zero (no information: see below);
* ``disagree``: none of the above.

An exactly zero gradient is reported with a warning and the remedies that give one (the env's
options behind ``set_remedies``): a hard tool that never touches what it should move gets no
gradient at all ("no contact, no gradient").
"""

from __future__ import annotations

import dataclasses
from typing import Any

import gymnasium as gym
import numpy as np

DEFAULT_EPS = (1e-1, 3e-2, 1e-2, 3e-3, 1e-3)
VERDICTS = ("agree", "inconclusive", "zero", "disagree")


@dataclasses.dataclass(frozen=True)
class GradcheckConfig:
    """What to check.

    Attributes:
        env_id: A registered diffenvs id.
        env_kwargs: Options of the env (``--set key=value``).
        seed: Seed of the initial state and of the actions and directions.
        steps: Env steps of the checked episode.
        directions: Directions checked (the gradient's own, then random ones).
        eps: Step sizes of the central differences [action units].
        action_scale: The episode's actions are uniform in [-action_scale, action_scale]
            (``action_scale + max(eps)`` must stay within 1, or perturbations would be clipped).
        objective: ``"return"`` or ``"loss"`` (as ``grad(objective)``).
        rtol: Relative difference that counts as agreement; ``None``: the registry's for the id.
        spread_rtol: Relative spread of the differences across step sizes above which they are
            too noisy to judge.
    """

    env_id: str = "DiffEnvs/Pusher-v0"
    env_kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)
    seed: int = 0
    steps: int = 5
    directions: int = 3
    eps: tuple[float, ...] = DEFAULT_EPS
    action_scale: float = 0.5
    objective: str = "return"
    rtol: float | None = None
    spread_rtol: float = 0.5

    def __post_init__(self) -> None:
        if self.steps < 1 or self.directions < 1:
            raise ValueError(f"steps and directions must be >= 1, got {self.steps} and {self.directions}")
        if not self.eps or min(self.eps) <= 0.0:
            raise ValueError(f"eps must be positive step sizes, got {self.eps}")
        if not 0.0 <= self.action_scale or self.action_scale + max(self.eps) > 1.0:
            raise ValueError(f"action_scale + max(eps) must lie in [0, 1], got {self.action_scale} + {max(self.eps)}")
        if self.objective not in ("return", "loss"):
            raise ValueError(f"objective must be 'return' or 'loss', got {self.objective!r}")
        for key in ("differentiable", "render_mode", "num_envs", "max_episode_steps"):
            if key in self.env_kwargs:
                raise ValueError(f"env_kwargs may not set {key!r}: the check chooses it")


@dataclasses.dataclass(frozen=True)
class DirectionCheck:
    """One direction's result.

    Attributes:
        analytic: ``grad . u``.
        finite: Central differences, one per step size.
        rel_error: Smallest relative difference over the step sizes.
        spread: (max - min) / max(|median|, tiny) of the differences across step sizes.
        verdict: One of :data:`VERDICTS`.
    """

    analytic: float
    finite: tuple[float, ...]
    rel_error: float
    spread: float
    verdict: str


@dataclasses.dataclass(frozen=True)
class GradcheckReport:
    """The check's outcome.

    Attributes:
        env_id, objective, eps, rtol: As checked.
        value: The objective of the unperturbed episode.
        gradient_norm: Norm of d objective / d actions.
        directions: One :class:`DirectionCheck` per direction (the gradient's own first, where
            the gradient is not zero).
        warnings: Plain-language notes (an exactly zero gradient and its remedies, noisy
            differences).
    """

    env_id: str
    objective: str
    eps: tuple[float, ...]
    rtol: float
    value: float
    gradient_norm: float
    directions: list[DirectionCheck]
    warnings: list[str]

    @property
    def zero_gradient(self) -> bool:
        """The gradient is exactly zero."""
        return self.gradient_norm == 0.0

    @property
    def passed(self) -> bool:
        """No direction disagrees."""
        return all(d.verdict != "disagree" for d in self.directions)

    def format(self) -> str:
        """A table for the terminal."""
        head = f"{'direction':>9} {'analytic':>12} " + " ".join(f"{'fd eps=' + format(e, 'g'):>13}" for e in self.eps)
        title = (f"{self.env_id}: d {self.objective} / d actions, norm {self.gradient_norm:.4g}, value {self.value:.6g}, "
                 f"rtol {self.rtol:g}")
        lines = [title, head + f" {'rel err':>9} {'spread':>8}  verdict"]
        for i, d in enumerate(self.directions):
            name = f"random {i}" if self.zero_gradient else ("gradient" if i == 0 else f"random {i}")
            lines.append(f"{name:>9} {d.analytic:>12.5g} " + " ".join(f"{f:>13.5g}" for f in d.finite)
                         + f" {d.rel_error:>9.2e} {d.spread:>8.2g}  {d.verdict}")
        lines += [f"warning: {w}" for w in self.warnings]
        lines.append("PASS: no direction disagrees" if self.passed else "FAIL: the gradient disagrees with finite differences")
        return "\n".join(lines)


def _registry_rtol(env_id: str) -> float:
    from diffenvs.registration import env_info

    return env_info(env_id).fd_rtol


NOISE_FLOOR = 0.1
"""The scale below which a direction's derivative is judged relative to the gradient's norm (see ``agree``)."""


def _verdict(analytic: float, finite: np.ndarray, rtol: float, spread_rtol: float, floor: float = 0.0) -> DirectionCheck:
    tiny = 1e-300
    if analytic == 0.0 and np.all(finite == 0.0):
        return DirectionCheck(0.0, tuple(finite.tolist()), 0.0, 0.0, "zero")
    rel = np.abs(finite - analytic) / np.maximum(np.maximum(np.abs(finite), abs(analytic)), max(floor, tiny))
    spread = float((finite.max() - finite.min()) / max(abs(float(np.median(finite))), tiny))
    if rel.min() <= rtol:
        verdict = "agree"
    elif spread > spread_rtol and finite.min() <= analytic <= finite.max():
        verdict = "inconclusive"
    else:
        verdict = "disagree"
    return DirectionCheck(float(analytic), tuple(finite.tolist()), float(rel.min()), spread, verdict)


def gradcheck(config: GradcheckConfig, *, device: str | None = None) -> GradcheckReport:
    """Run the check of the module docstring.

    Raises:
        ValueError: an unknown id, bad options, or an episode that diverges.
    """
    import diffenvs  # noqa: F401  (registers the ids)

    if config.env_id not in gym.registry:
        raise ValueError(f"unknown env id {config.env_id!r}; see `diffenvs list`")
    spec = gym.spec(config.env_id)
    kwargs = {**spec.kwargs, **config.env_kwargs}
    rtol = _registry_rtol(config.env_id) if config.rtol is None else float(config.rtol)
    env = gym.make(config.env_id, device=device, **kwargs).unwrapped
    rng = np.random.default_rng(config.seed)
    env.reset(seed=config.seed)
    start = env.get_state()
    actions = rng.uniform(-config.action_scale, config.action_scale, size=(config.steps, *env.action_space.shape))
    for a in actions:
        if env.step(a)[2]:
            raise ValueError("the checked episode diverged: choose another seed or smaller actions")
    gradient = env.grad(config.objective)
    g = gradient.actions
    directions = [g / np.linalg.norm(g)] if np.any(g != 0.0) else []
    while len(directions) < config.directions:
        u = rng.standard_normal(g.shape)
        directions.append(u / np.linalg.norm(u))
    eps = np.asarray(config.eps, dtype=np.float64)
    # Every perturbed episode at once: direction d, step size e, sign s -> world (d * E + e) * 2 + s.
    perturbed = np.stack([actions + s * e * u for u in directions for e in eps for s in (1.0, -1.0)])
    values = _objectives(config, kwargs, start, perturbed, device)
    values = values.reshape(len(directions), len(eps), 2)
    finite = (values[:, :, 0] - values[:, :, 1]) / (2.0 * eps)
    floor = NOISE_FLOOR * float(np.linalg.norm(g))
    checks = [_verdict(float(np.sum(g * u)), finite[i], rtol, config.spread_rtol, floor) for i, u in enumerate(directions)]
    warnings = []
    if not np.any(g != 0.0):
        remedies = ", ".join(f"--set {option}=..." for option in env.task.remedy_options.values())
        warnings.append(
            "the gradient is exactly zero: nothing the actions move touches what the objective measures "
            f"(no contact, no gradient). Remedies of this env: {remedies} (the contact loss's weight, the tools' "
            "influence radius); or actions that make contact.")
    if any(c.verdict == "inconclusive" for c in checks):
        warnings.append("finite differences spread widely across step sizes (hard contact, float32): they cannot "
                        "judge those directions; a soft tool (the softness remedy) smooths the objective")
    return GradcheckReport(
        env_id=config.env_id, objective=config.objective, eps=tuple(config.eps), rtol=rtol, value=float(gradient.value),
        gradient_norm=float(np.linalg.norm(g)), directions=checks, warnings=warnings,
    )


def _objectives(config: GradcheckConfig, kwargs: dict[str, Any], start: dict[str, np.ndarray], actions: np.ndarray,
                device: str | None) -> np.ndarray:
    """The objective of every episode of ``actions`` (P, T, A) from ``start``, as worlds of one vector env."""
    count = actions.shape[0]
    vec = gym.make_vec(config.env_id, num_envs=count, vectorization_mode="vector_entry_point", differentiable=False,
                       device=device, **kwargs).unwrapped
    vec.set_state({name: np.repeat(np.asarray(value)[None], count, axis=0) for name, value in start.items()})
    total = np.zeros(count)
    info: dict[str, Any] = {}
    for t in range(actions.shape[1]):
        _, reward, terminated, _, info = vec.step(actions[:, t])
        if terminated.any():
            raise ValueError("a perturbed episode diverged: choose smaller step sizes")
        total += reward
    return total if config.objective == "return" else np.asarray(info["loss"], dtype=np.float64)


__all__ = ["DEFAULT_EPS", "VERDICTS", "DirectionCheck", "GradcheckConfig", "GradcheckReport", "gradcheck"]
