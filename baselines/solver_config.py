"""Configuration of the trajectory optimizers (``configs/optimize.yaml``'s ``solver`` section).

Every default of an optimizer lives here, in the dataclasses; ``configs/optimize.yaml`` holds only
what differs from them per env id (a test checks that it restates no default).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Literal

from diffenvs.baselines.method import method_names


@dataclasses.dataclass(frozen=True)
class GradientConfig:
    """Options of the gradient methods (``adam``, ``gd``, and the gradient phase of ``hybrid`` and ``mpc``).

    Attributes:
        lr: Step size in action units (Adam's step; for ``gd`` the factor of the gradient).
        lr_schedule: ``constant``, or ``cosine`` / ``linear`` decay from ``lr`` to ``lr_final``.
        lr_final: Step size at the last iteration of a decaying schedule.
        lr_steps: The longest sequence [env steps] for which ``lr`` (and ``lr_final``) apply: a
            longer one of H steps takes ``lr * lr_steps / H``. Adam moves every action by about its
            step at once, so a fixed step displaces the tools further the longer the sequence (on
            the Pusher at 400 steps, 0.1 set on 100 ends at 0.12-0.72 where 0.025 reaches 0.86-0.97;
            a larger step on shorter sequences did worse: ``results/long_horizon_lr/``); ``None``:
            ``lr`` at every length.
        beta1: Adam's first-moment decay.
        beta2: Adam's second-moment decay.
        eps: Adam's denominator regulariser.
        grad_clip: Largest gradient norm per sequence and iteration; ``None``: no clipping.
        init_scale: Standard deviation of the Gaussian initial actions of the first start (0: zeros).
        restarts: Starts optimized together as worlds of one batch; starts after the first begin
            from uniform random sequences. Each iteration costs ``restarts`` gradients.
        window: Truncated backpropagation window [env steps]; ``None``: the whole horizon.
        contact_weight: Contact-loss weight while optimizing; ``None``: the env's own.
        contact_weight_final: Its value after annealing (linear); ``None``: constant.
        softness: Tool softness (influence radius) while optimizing; ``None``: the env's own.
        softness_final: Its value after annealing (linear, soft to hard); ``None``: constant.
        contact_focus: Draw the tools to the dough outside the target rather than to any dough
            (dough tasks); ``None``: the env's own.
        anneal: Fraction of the iterations over which the remedies reach their final values.
        eval_every: Replay the iterates in the reported setting every this many iterations (and
            at the last), when the optimizer's dynamics differ from it (soft tools). The best
            sequence is chosen among the replayed iterates.
        contact_discovery: Contact-point discovery (dough tasks whose actions translate their
            tools; :mod:`diffenvs.baselines.contact_discovery`): at the start of each stage the
            first start's sequence gets a path of the tools to where optimal transport between
            the dough and the target says they should touch it; off for the ablation.
        discovery_stages: Stages of contact discovery (equal shares of the horizon and of the
            iterations); ``None``: the env's ``stages`` (1 unless the task has stages).
    """

    lr: float = 0.1
    lr_schedule: Literal["constant", "cosine", "linear"] = "constant"
    lr_final: float = 0.0
    lr_steps: int | None = None
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    grad_clip: float | None = None
    init_scale: float = 0.0
    restarts: int = 1
    window: int | None = None
    contact_weight: float | None = None
    contact_weight_final: float | None = None
    softness: float | None = None
    softness_final: float | None = None
    contact_focus: bool | None = None
    anneal: float = 1.0
    eval_every: int = 1
    contact_discovery: bool = False
    discovery_stages: int | None = None

    def __post_init__(self) -> None:
        if not self.lr > 0.0 or self.lr_final < 0.0:
            raise ValueError(f"lr must be > 0 and lr_final >= 0, got {self.lr} and {self.lr_final}")
        if self.lr_steps is not None and self.lr_steps < 1:
            raise ValueError(f"lr_steps must be >= 1 env step or None, got {self.lr_steps}")
        if not (0.0 <= self.beta1 < 1.0 and 0.0 <= self.beta2 < 1.0):
            raise ValueError("beta1 and beta2 must lie in [0, 1)")
        if self.grad_clip is not None and not self.grad_clip > 0.0:
            raise ValueError(f"grad_clip must be > 0 or None, got {self.grad_clip}")
        if self.restarts < 1 or self.eval_every < 1 or (self.window is not None and self.window < 1):
            raise ValueError("restarts, eval_every and window must be >= 1")
        if self.discovery_stages is not None and self.discovery_stages < 1:
            raise ValueError(f"discovery_stages must be >= 1, got {self.discovery_stages}")
        if not 0.0 < self.anneal <= 1.0:
            raise ValueError(f"anneal must lie in (0, 1], got {self.anneal}")
        for name in ("contact_weight", "contact_weight_final", "softness", "softness_final", "init_scale"):
            value = getattr(self, name)
            if value is not None and not value >= 0.0:
                raise ValueError(f"{name} must be >= 0, got {value}")

    def learning_rate(self, iteration: int, iters: int, steps: int | None = None) -> float:
        """Step size of ``iteration`` (0-based) of ``iters`` for a sequence of ``steps`` env steps
        (scaled by ``lr_steps / steps`` when both are given and the sequence is the longer)."""
        scale = min(1.0, self.lr_steps / steps) if self.lr_steps is not None and steps else 1.0
        if self.lr_schedule == "constant" or iters <= 1:
            return self.lr * scale
        progress = iteration / (iters - 1)
        weight = 0.5 * (1.0 + math.cos(math.pi * progress)) if self.lr_schedule == "cosine" else 1.0 - progress
        return (self.lr_final + (self.lr - self.lr_final) * weight) * scale

    def remedies(self, iteration: int, iters: int) -> dict[str, float]:
        """The remedies set for ``iteration``: linear from their start to their final values."""
        progress = min(iteration / max(self.anneal * (iters - 1), 1e-9), 1.0) if iters > 1 else 1.0
        values = {}
        for name in ("contact_weight", "softness"):
            start, final = getattr(self, name), getattr(self, f"{name}_final")
            if start is not None:
                values[name] = start if final is None else start + progress * (final - start)
        if self.contact_focus is not None:
            values["contact_focus"] = float(self.contact_focus)
        return values


@dataclasses.dataclass(frozen=True)
class CEMConfig:
    """Options of the cross-entropy method (``cem`` and the first phase of ``hybrid``).

    Attributes:
        population: Sequences per generation (the current mean is always one of them).
        elites: Best sequences that define the next mean and standard deviation.
        init_std: Initial standard deviation of every action component.
        min_std: Floor of the standard deviation.
        smoothing: Weight of the old mean and std in the update (0: replace).
    """

    population: int = 32
    elites: int = 4
    init_std: float = 0.5
    min_std: float = 0.05
    smoothing: float = 0.0

    def __post_init__(self) -> None:
        if not 1 <= self.elites < self.population:
            raise ValueError(f"need 1 <= elites < population, got {self.elites} and {self.population}")
        if not (self.init_std > 0.0 and self.min_std >= 0.0 and 0.0 <= self.smoothing < 1.0):
            raise ValueError("need init_std > 0, min_std >= 0 and smoothing in [0, 1)")


@dataclasses.dataclass(frozen=True)
class HybridConfig:
    """Options of ``hybrid``: ``cem_iters`` CEM generations, then ``iters`` Adam iterations."""

    cem_iters: int = 5

    def __post_init__(self) -> None:
        if self.cem_iters < 1:
            raise ValueError(f"cem_iters must be >= 1, got {self.cem_iters}")


@dataclasses.dataclass(frozen=True)
class MPCConfig:
    """Options of ``mpc`` (receding-horizon re-planning with Adam).

    Attributes:
        plan_horizon: Steps of each plan (shorter near the end of the horizon).
        iters_per_step: Adam iterations per re-plan.
        execute: Steps of each plan executed before re-planning.
    """

    plan_horizon: int = 10
    iters_per_step: int = 5
    execute: int = 1

    def __post_init__(self) -> None:
        if min(self.plan_horizon, self.iters_per_step, self.execute) < 1 or self.execute > self.plan_horizon:
            raise ValueError("need plan_horizon, iters_per_step, execute >= 1 and execute <= plan_horizon")


@dataclasses.dataclass(frozen=True)
class CMAESConfig:
    """Options of ``cmaes``: population per generation and initial step size [action units]."""

    population: int = 16
    sigma: float = 0.3

    def __post_init__(self) -> None:
        if self.population < 2:
            raise ValueError(f"population must be >= 2, got {self.population}")
        if not self.sigma > 0.0:
            raise ValueError(f"sigma must be > 0, got {self.sigma}")


@dataclasses.dataclass(frozen=True)
class ReinforceConfig:
    """Options of ``reinforce``.

    Attributes:
        samples: Perturbed sequences per iteration (the estimator's sample count).
        std: Standard deviation of the Gaussian perturbation [action units].
    """

    samples: int = 16
    std: float = 0.2

    def __post_init__(self) -> None:
        if self.samples < 2:
            raise ValueError(f"samples must be >= 2 (the baseline needs two), got {self.samples}")
        if not self.std > 0.0:
            raise ValueError(f"std must be > 0, got {self.std}")


@dataclasses.dataclass(frozen=True)
class RandomConfig:
    """Options of ``random``: the best of ``samples`` uniform random sequences."""

    samples: int = 100

    def __post_init__(self) -> None:
        if self.samples < 1:
            raise ValueError(f"samples must be >= 1, got {self.samples}")


@dataclasses.dataclass(frozen=True)
class SolverConfig:
    """How to optimize.

    Attributes:
        method: One of the registered optimizers (:func:`~diffenvs.baselines.method.method_names`).
        iters: Gradient iterations (``adam``, ``gd``, the gradient phase of ``hybrid``) or
            generations (``cem``); ``random`` uses ``random.samples``, ``mpc`` ``mpc.iters_per_step``.
        seed: Seed of the optimizer's own randomness (initial actions, samples).
        gradient: Options of the gradient methods and their remedies.
        cem: Options of the cross-entropy method.
        hybrid: Options of the hybrid.
        mpc: Options of receding-horizon control.
        random: Options of random search.
        reinforce: Options of the likelihood-ratio estimator.
        cmaes: Options of CMA-ES.
        budget: Env steps (:attr:`Budget.env_steps <diffenvs.baselines.problem.Budget.env_steps>`:
            forward, backward and replays) the method may spend: it ends at its own length
            (``iters``, ``random.samples``) or before the first iteration that would exceed the
            budget, whichever comes first, so it spends at most the budget (and at most one
            iteration's cost less); only a first iteration larger than the whole budget runs anyway
            (a method always returns a result). ``adam``, ``gd`` and ``reinforce`` plan their
            iteration count from the budget, so that their schedules (step size, remedies) end where
            the budget does; ``random`` fills it exactly. ``mpc`` stops after the first re-planning
            iteration at or past it. ``None``: no limit.
    """

    method: str = "adam"
    iters: int = 50
    seed: int = 0
    budget: int | None = None
    gradient: GradientConfig = GradientConfig()
    cem: CEMConfig = CEMConfig()
    hybrid: HybridConfig = HybridConfig()
    mpc: MPCConfig = MPCConfig()
    random: RandomConfig = RandomConfig()
    reinforce: ReinforceConfig = ReinforceConfig()
    cmaes: CMAESConfig = CMAESConfig()

    def __post_init__(self) -> None:
        if self.method not in method_names("optimizer"):
            raise ValueError(f"method must be one of {method_names('optimizer')}, got {self.method!r}")
        if self.iters < 1:
            raise ValueError(f"iters must be >= 1, got {self.iters}")
        if self.budget is not None and self.budget < 1:
            raise ValueError(f"budget must be >= 1 env step or null, got {self.budget}")


__all__ = ["CEMConfig", "CMAESConfig", "GradientConfig", "HybridConfig", "MPCConfig", "RandomConfig", "ReinforceConfig",
           "SolverConfig"]
