"""Trajectory optimization on diffenvs tasks: gradients with remedies, sampling, a hybrid, and MPC.

Every method optimizes one open-loop action sequence (or, for MPC, a closed loop of re-planned
ones) of a :class:`~diffenvs.baselines.problem.Problem` and reports in the same units: the task
loss and metric *in the reported setting* (the env as configured, no remedies), and the
:class:`~diffenvs.baselines.problem.Budget` spent (world-steps forward, backward and in
replays, gradient evaluations, wall time).

Methods (``SolverConfig.method``):

- ``adam`` / ``gd``: ascend the return by Adam or plain gradient ascent (``a += lr * g``) on
  ``grad()``, with a learning-rate schedule, gradient-norm clipping (per sequence), the actions
  kept in [-1, 1], and the remedies of :class:`GradientConfig`: contact-loss weight and tool
  softness, each with a linear schedule; truncated backpropagation windows; random multi-start
  (all starts run as worlds of one batch). The best iterate in the reported setting is kept.
- ``reinforce``: Adam on the likelihood-ratio (REINFORCE) estimate of the same gradient of the
  same return: ``reinforce.samples`` Gaussian perturbations (``reinforce.std``) of the sequence
  per iteration, mean-return baseline, ``g = mean((R_i - b) eps_i) / std``; the same parameters,
  optimizer, step size and remedies as ``adam``, only the estimator differs (the textbook contrast
  to the analytic gradient). Each iteration costs ``samples`` forward rollouts, no backward.
- ``cem``: the cross-entropy method on the reported loss (no gradients).
- ``cmaes``: CMA-ES (the ``cma`` package) on the reported loss: ``cmaes.population`` sequences per
  generation, initial step size ``cmaes.sigma``, the actions bounded to [-1, 1].
- ``hybrid``: ``hybrid.cem_iters`` CEM generations, then Adam from the best sample.
- ``random``: the best of ``random.samples`` uniform random sequences.
- ``mpc``: receding horizon: plan ``mpc.plan_horizon`` steps with ``mpc.iters_per_step`` Adam
  iterations (warm-started from the previous plan), execute ``mpc.execute`` steps, repeat.

A rollout that diverges, or a non-finite gradient, freezes that start (the others go on); when
every start is frozen the method stops early with ``stopped`` set and the best sequence found.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import typing
from collections.abc import Callable
from typing import Any, Literal

import numpy as np

from diffenvs.baselines.problem import Evaluation, Problem

logger = logging.getLogger(__name__)

Method = Literal["adam", "gd", "reinforce", "cem", "cmaes", "hybrid", "random", "mpc"]
METHODS: tuple[str, ...] = typing.get_args(Method)
"""Every method of :func:`optimize` (the CLI's ``--method`` choices and the config's check read it)."""
Callback = Callable[[dict[str, Any], np.ndarray], None]


@dataclasses.dataclass(frozen=True)
class GradientConfig:
    """Options of the gradient methods (``adam``, ``gd``, and the gradient phase of ``hybrid`` and ``mpc``).

    Attributes:
        lr: Step size in action units (Adam's step; for ``gd`` the factor of the gradient).
        lr_schedule: ``constant``, or ``cosine`` / ``linear`` decay from ``lr`` to ``lr_final``.
        lr_final: Step size at the last iteration of a decaying schedule.
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
    """

    lr: float = 0.05
    lr_schedule: Literal["constant", "cosine", "linear"] = "constant"
    lr_final: float = 0.0
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

    def __post_init__(self) -> None:
        if not self.lr > 0.0 or self.lr_final < 0.0:
            raise ValueError(f"lr must be > 0 and lr_final >= 0, got {self.lr} and {self.lr_final}")
        if not (0.0 <= self.beta1 < 1.0 and 0.0 <= self.beta2 < 1.0):
            raise ValueError("beta1 and beta2 must lie in [0, 1)")
        if self.grad_clip is not None and not self.grad_clip > 0.0:
            raise ValueError(f"grad_clip must be > 0 or None, got {self.grad_clip}")
        if self.restarts < 1 or self.eval_every < 1 or (self.window is not None and self.window < 1):
            raise ValueError("restarts, eval_every and window must be >= 1")
        if not 0.0 < self.anneal <= 1.0:
            raise ValueError(f"anneal must lie in (0, 1], got {self.anneal}")
        for name in ("contact_weight", "contact_weight_final", "softness", "softness_final", "init_scale"):
            value = getattr(self, name)
            if value is not None and not value >= 0.0:
                raise ValueError(f"{name} must be >= 0, got {value}")

    def learning_rate(self, iteration: int, iters: int) -> float:
        """Step size of ``iteration`` (0-based) of ``iters``."""
        if self.lr_schedule == "constant" or iters <= 1:
            return self.lr
        progress = iteration / (iters - 1)
        weight = 0.5 * (1.0 + math.cos(math.pi * progress)) if self.lr_schedule == "cosine" else 1.0 - progress
        return self.lr_final + (self.lr - self.lr_final) * weight

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


def reinforce_gradient(mean: np.ndarray, returns: np.ndarray, noise: np.ndarray, std: float) -> np.ndarray:
    """The likelihood-ratio estimate of d E[R] / d mean from returns of ``mean + std * noise``
    (noise (N, T, A)), with the batch's mean return as baseline; diverged samples (-inf) are left out."""
    finite = np.isfinite(returns)
    if finite.sum() < 2:
        return np.zeros_like(mean)
    advantage = returns[finite] - returns[finite].mean()
    return np.tensordot(advantage, noise[finite], axes=1) / (finite.sum() * std)


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
        method: One of :data:`METHODS`.
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

    method: Method = "adam"
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
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")
        if self.iters < 1:
            raise ValueError(f"iters must be >= 1, got {self.iters}")
        if self.budget is not None and self.budget < 1:
            raise ValueError(f"budget must be >= 1 env step or null, got {self.budget}")


@dataclasses.dataclass
class TrajOptResult:
    """Outcome of a method.

    Attributes:
        method: The method.
        actions: Best sequence found, shape (horizon, action_dim), judged in the reported setting.
        loss: Its task loss after the last step (reported setting).
        metric: Its metric.
        metric_name: The metric's name (``Problem.metric_name``).
        initial_loss: Task loss of the initial state.
        history: One record per iteration (see :func:`optimize`).
        budget: The budget spent (:meth:`Budget.as_dict`).
        stopped: Why the method ended early, or ``None``.
    """

    method: str
    actions: np.ndarray
    loss: float
    metric: float
    metric_name: str
    initial_loss: float
    history: list[dict[str, Any]]
    budget: dict[str, float]
    stopped: str | None = None


class _BudgetSpent(Exception):
    """Raised by :meth:`_Tracker.record` once ``SolverConfig.budget`` env steps are spent."""


class _Tracker:
    """The best sequence so far, the history, the callback and the env-step budget."""

    def __init__(self, problem: Problem, callback: Callback | None, budget: int | None = None):
        self.problem = problem
        self.callback = callback
        self.budget = budget
        self.history: list[dict[str, Any]] = []
        self.best_actions = np.zeros(problem.action_shape)
        self.best_loss = math.inf
        self.best_metric = 0.0

    def offer(self, actions: np.ndarray, evaluation: Evaluation) -> int:
        """Consider a batch of evaluated sequences; return the index of the batch's best."""
        index = int(np.argmin(evaluation.loss))
        if evaluation.loss[index] < self.best_loss:
            self.best_loss = float(evaluation.loss[index])
            self.best_metric = float(evaluation.metric[index])
            self.best_actions = np.array(actions[index], dtype=np.float64)
        return index

    def record(self, phase: str, iteration: int, loss: float, metric: float, **extra: Any) -> None:
        record = {"phase": phase, "iteration": iteration, **self.problem.budget.as_dict(),
                  "loss": loss, "metric": metric, "best_loss": self.best_loss, "best_metric": self.best_metric, **extra}
        self.history.append(record)
        if self.callback is not None:
            self.callback(record, self.best_actions)
        if self.budget is not None and record["env_steps"] >= self.budget:
            raise _BudgetSpent

    def remaining(self) -> int | None:
        """Env steps left of the budget (``None``: no budget)."""
        return None if self.budget is None else max(self.budget - self.problem.budget.env_steps, 0)

    def afford(self, cost: int) -> None:
        """Raise :class:`_BudgetSpent` if an iteration of ``cost`` env steps would exceed the budget
        (unless nothing has run yet: a method always returns a result)."""
        remaining = self.remaining()
        if remaining is not None and cost > remaining and self.history:
            raise _BudgetSpent


def optimize(problem: Problem, config: SolverConfig = SolverConfig(), *, callback: Callback | None = None,
             init_actions: np.ndarray | None = None) -> TrajOptResult:
    """Run one method on ``problem``, with a fresh budget.

    Args:
        problem: The problem (initial state, horizon, reported setting).
        config: The method and its options.
        callback: Called after every iteration with its record and the best sequence so far
            (progress bars, run files). Records hold ``phase``, ``iteration``, the budget
            (``env_steps``, ``forward_steps``, ``backward_steps``, ``eval_steps``,
            ``grad_evals``, ``rollouts``, ``wall_time``), ``loss`` and ``metric`` of the
            iteration's best sequence, ``best_loss``, ``best_metric``, and per-method entries
            (``return``, ``grad_norm``, ``lr``, ``contact_weight``, ``softness`` for gradients;
            ``std`` for CEM).
        init_actions: Initial sequence (horizon, action_dim) of the gradient methods and the
            initial mean of CEM; default from the config.

    Returns:
        The best sequence in the reported setting, its loss and metric, history and budget.
    """
    problem.reset_budget()
    tracker = _Tracker(problem, callback, config.budget)
    rng = np.random.default_rng(config.seed)
    if init_actions is not None:
        init_actions = problem.check_actions(init_actions)[0]
    stopped = None
    method = config.method
    try:
        if method in ("adam", "gd"):
            stopped = _gradient(problem, config.gradient, config.iters, tracker, rng, optimizer=method, init=init_actions)
        elif method == "reinforce":
            _reinforce(problem, config.reinforce, config.gradient, config.iters, tracker, rng, init=init_actions)
        elif method == "cem":
            _cem(problem, config.cem, config.iters, tracker, rng, init=init_actions)
        elif method == "cmaes":
            _cmaes(problem, config.cmaes, config.iters, tracker, rng, init=init_actions)
        elif method == "hybrid":
            _cem(problem, config.cem, config.hybrid.cem_iters, tracker, rng, init=init_actions)
            stopped = _gradient(problem, config.gradient, config.iters, tracker, rng, optimizer="adam",
                                init=tracker.best_actions.copy(), first_iteration=config.hybrid.cem_iters)
        elif method == "random":
            _random(problem, config.random, tracker, rng)
        else:
            stopped = _mpc(problem, config.mpc, config.gradient, tracker, rng, init=init_actions)
    except _BudgetSpent:
        pass  # the budget decides, as iters would have
    if stopped is not None:
        logger.warning("%s stopped early: %s; keeping the best sequence so far", method, stopped)
    return TrajOptResult(
        method=method, actions=tracker.best_actions, loss=tracker.best_loss, metric=tracker.best_metric,
        metric_name=problem.metric_name, initial_loss=problem.initial_loss, history=tracker.history, budget=problem.budget.as_dict(), stopped=stopped,
    )


# Gradient methods ----------------------------------------------------------------------------------


def _initial_sequences(problem: Problem, cfg: GradientConfig, rng: np.random.Generator, init: np.ndarray | None,
                       shape: tuple[int, int]) -> np.ndarray:
    first = cfg.init_scale * rng.standard_normal(shape) if init is None else init[: shape[0]]
    others = rng.uniform(-1.0, 1.0, size=(cfg.restarts - 1, *shape))
    return np.clip(np.concatenate([first[None], others]), -1.0, 1.0)


def _clip_norms(grads: np.ndarray, limit: float | None) -> np.ndarray:
    if limit is None:
        return grads
    norms = np.linalg.norm(grads.reshape(len(grads), -1), axis=1)
    scale = np.minimum(1.0, limit / np.maximum(norms, 1e-300))
    return grads * scale[:, None, None]


class _Ascent:
    """Adam or plain gradient ascent on a batch of sequences kept inside [-1, 1]."""

    def __init__(self, params: np.ndarray, cfg: GradientConfig, optimizer: str):
        self.params, self.cfg, self.optimizer = params.copy(), cfg, optimizer
        self.m = np.zeros_like(params)
        self.v = np.zeros_like(params)
        self.t = 0

    def step(self, grads: np.ndarray, lr: float, active: np.ndarray) -> None:
        cfg = self.cfg
        grads = np.where(active[:, None, None], _clip_norms(grads, cfg.grad_clip), 0.0)
        if self.optimizer == "gd":
            update = grads
        else:
            self.t += 1
            self.m = np.where(active[:, None, None], cfg.beta1 * self.m + (1 - cfg.beta1) * grads, self.m)
            self.v = np.where(active[:, None, None], cfg.beta2 * self.v + (1 - cfg.beta2) * grads**2, self.v)
            update = (self.m / (1 - cfg.beta1**self.t)) / (np.sqrt(self.v / (1 - cfg.beta2**self.t)) + cfg.eps)
        self.params = np.where(active[:, None, None], np.clip(self.params + lr * update, -1.0, 1.0), self.params)


def _iters_within(iters: int, remaining: int | None, cost: Callable[[int, int], int]) -> int:
    """The most iterations (at most ``iters``, at least 1) whose env steps fit into ``remaining``.

    ``cost(i, n)`` is the env steps of iteration ``i`` in a run of ``n`` iterations (schedules and
    the final replay depend on ``n``). Methods with schedules plan their length this way, so that a
    budget ends them where their schedule ends instead of cutting it off.
    """
    if remaining is None:
        return iters

    def total(n: int) -> int:
        return sum(cost(i, n) for i in range(n))

    low, high = 1, iters
    while low < high:
        middle = (low + high + 1) // 2
        if total(middle) <= remaining:
            low = middle
        else:
            high = middle - 1
    return low


def _gradient(problem: Problem, cfg: GradientConfig, iters: int, tracker: _Tracker, rng: np.random.Generator, *,
              optimizer: str, init: np.ndarray | None, first_iteration: int = 0) -> str | None:
    ascent = _Ascent(_initial_sequences(problem, cfg, rng, init, problem.action_shape), cfg, optimizer)
    active = np.ones(cfg.restarts, dtype=bool)
    base_softness = problem.base_remedies.get("softness")
    rollout_steps = cfg.restarts * problem.horizon

    def cost(i: int, n: int) -> int:  # forward + backward, and a replay in the reported setting when the dynamics differ
        replay = cfg.remedies(i, n).get("softness", base_softness) != base_softness and (i % cfg.eval_every == 0 or i == n - 1)
        return (2 + replay) * rollout_steps

    iters = _iters_within(iters, tracker.remaining(), cost)
    for iteration in range(iters):
        remedies = cfg.remedies(iteration, iters)
        actions = ascent.params.copy()
        rollout = problem.value_and_grad(actions, remedies=remedies, window=cfg.window)
        finite = np.all(np.isfinite(rollout.grads.reshape(len(actions), -1)), axis=1)
        active &= finite & ~rollout.evaluation.diverged
        same_dynamics = remedies.get("softness", base_softness) == base_softness
        last = iteration == iters - 1
        if same_dynamics:
            evaluation = rollout.evaluation
        elif iteration % cfg.eval_every == 0 or last or not active.any():
            evaluation = problem.evaluate(actions)
        else:
            evaluation = None
        if evaluation is not None:
            best = tracker.offer(actions, evaluation)
            loss, metric = float(evaluation.loss[best]), float(evaluation.metric[best])
        else:
            loss = metric = math.nan
        grads = np.where(np.isfinite(rollout.grads), rollout.grads, 0.0)
        tracker.record(
            optimizer, first_iteration + iteration, loss, metric, **{"return": float(np.max(rollout.returns))},
            grad_norm=float(np.max(np.linalg.norm(grads.reshape(len(grads), -1), axis=1))),
            lr=cfg.learning_rate(iteration, iters), contact_weight=remedies.get("contact_weight", math.nan),
            softness=remedies.get("softness", math.nan),
        )
        if not active.any():
            reason = "the rollout diverged" if rollout.evaluation.diverged.any() else "non-finite gradient"
            return f"{reason} at iteration {first_iteration + iteration} (every start stopped)"
        ascent.step(grads, cfg.learning_rate(iteration, iters), active)
    return None


# Sampling methods ------------------------------------------------------------------------------------


def _reinforce(problem: Problem, cfg: ReinforceConfig, gradient: GradientConfig, iters: int, tracker: _Tracker,
               rng: np.random.Generator, *, init: np.ndarray | None) -> None:
    ascent = _Ascent(_initial_sequences(problem, dataclasses.replace(gradient, restarts=1), rng, init, problem.action_shape),
                     gradient, "adam")
    iters = _iters_within(iters, tracker.remaining(), lambda i, n: (cfg.samples + 1) * problem.horizon)
    for iteration in range(iters):
        remedies = gradient.remedies(iteration, iters)
        mean = ascent.params[0]
        noise = rng.standard_normal((cfg.samples, *problem.action_shape))
        samples = np.clip(mean + cfg.std * noise, -1.0, 1.0)
        returns, _ = problem.returns(samples, remedies=remedies)
        grads = reinforce_gradient(mean, returns, noise, cfg.std)
        evaluation = problem.evaluate(mean[None])  # the iterate itself, in the reported setting
        tracker.offer(mean[None], evaluation)
        tracker.record("reinforce", iteration, float(evaluation.loss[0]), float(evaluation.metric[0]),
                       **{"return": float(np.mean(returns[np.isfinite(returns)])) if np.isfinite(returns).any() else math.nan},
                       grad_norm=float(np.linalg.norm(grads)), lr=gradient.learning_rate(iteration, iters))
        ascent.step(grads[None], gradient.learning_rate(iteration, iters), np.ones(1, dtype=bool))


def _cem(problem: Problem, cfg: CEMConfig, iters: int, tracker: _Tracker, rng: np.random.Generator, *,
         init: np.ndarray | None) -> None:
    mean = np.zeros(problem.action_shape) if init is None else init.copy()
    std = np.full(problem.action_shape, cfg.init_std)
    for generation in range(iters):
        tracker.afford(cfg.population * problem.horizon)
        noise = rng.standard_normal((cfg.population - 1, *problem.action_shape))
        samples = np.clip(np.concatenate([mean[None], mean + std * noise]), -1.0, 1.0)
        evaluation = problem.evaluate(samples, as_cost=True)
        best = tracker.offer(samples, evaluation)
        elites = samples[np.argsort(evaluation.loss, kind="stable")[: cfg.elites]]
        mean = cfg.smoothing * mean + (1 - cfg.smoothing) * elites.mean(axis=0)
        std = np.maximum(cfg.smoothing * std + (1 - cfg.smoothing) * elites.std(axis=0), cfg.min_std)
        tracker.record("cem", generation, float(evaluation.loss[best]), float(evaluation.metric[best]), std=float(std.mean()))


def _cmaes(problem: Problem, cfg: CMAESConfig, iters: int, tracker: _Tracker, rng: np.random.Generator, *,
           init: np.ndarray | None) -> None:
    import cma

    mean = np.zeros(problem.action_shape) if init is None else init.copy()
    options = {"popsize": cfg.population, "bounds": [-1.0, 1.0], "seed": int(rng.integers(1, 2**31 - 1)), "verbose": -9}
    es = cma.CMAEvolutionStrategy(mean.ravel(), cfg.sigma, options)
    for generation in range(iters):
        tracker.afford(cfg.population * problem.horizon)
        samples = np.clip(np.array(es.ask()).reshape(-1, *problem.action_shape), -1.0, 1.0)
        evaluation = problem.evaluate(samples, as_cost=True)
        best = tracker.offer(samples, evaluation)
        finite = np.where(np.isfinite(evaluation.loss), evaluation.loss, 1e30)  # a diverged sequence ranks last
        es.tell(list(samples.reshape(len(samples), -1)), finite.tolist())
        tracker.record("cmaes", generation, float(evaluation.loss[best]), float(evaluation.metric[best]), sigma=float(es.sigma))


def _random(problem: Problem, cfg: RandomConfig, tracker: _Tracker, rng: np.random.Generator) -> None:
    batch = problem.config.eval_batch
    remaining = tracker.remaining()
    count = cfg.samples if remaining is None else max(1, min(cfg.samples, remaining // problem.horizon))
    for index, first in enumerate(range(0, count, batch)):
        samples = rng.uniform(-1.0, 1.0, size=(min(batch, count - first), *problem.action_shape))
        evaluation = problem.evaluate(samples, as_cost=True)
        best = tracker.offer(samples, evaluation)
        tracker.record("random", index, float(evaluation.loss[best]), float(evaluation.metric[best]))


# Receding horizon ----------------------------------------------------------------------------------


def _mpc(problem: Problem, cfg: MPCConfig, gradient: GradientConfig, tracker: _Tracker, rng: np.random.Generator, *,
         init: np.ndarray | None) -> str | None:
    horizon = problem.horizon
    plan = np.zeros(problem.action_shape) if init is None else init.copy()
    executed = np.zeros(problem.action_shape)
    env = problem.single_env(render_mode=None)
    env.set_state(problem.initial_state)
    state = problem.initial_state
    ascent_cfg = dataclasses.replace(gradient, restarts=1)
    for replan, t in enumerate(range(0, horizon, cfg.execute)):
        length = min(cfg.plan_horizon, horizon - t)
        ascent = _Ascent(plan[None, t:t + length], ascent_cfg, "adam")
        best_plan, best_loss = ascent.params[0].copy(), math.inf
        for iteration in range(cfg.iters_per_step):
            remedies = gradient.remedies(iteration, cfg.iters_per_step)
            rollout = problem.value_and_grad(ascent.params, remedies=remedies, window=gradient.window, state=state)
            if rollout.evaluation.diverged[0] or not np.all(np.isfinite(rollout.grads)):
                break
            if rollout.evaluation.loss[0] < best_loss:
                best_plan, best_loss = ascent.params[0].copy(), float(rollout.evaluation.loss[0])
            ascent.step(rollout.grads, gradient.learning_rate(iteration, cfg.iters_per_step), np.ones(1, dtype=bool))
        plan[t:t + length] = best_plan
        steps = min(cfg.execute, horizon - t)
        info: dict[str, Any] = {}
        for k in range(steps):
            executed[t + k] = plan[t + k]
            info = env.step(plan[t + k])[4]
            if info["diverged"]:
                tracker.record("mpc", replan, math.inf, 0.0)
                env.close()
                return f"the executed trajectory diverged at step {t + k}"
        problem.budget.eval_steps += steps
        problem.budget.rollouts += int(t == 0)
        state = env.get_state()  # the rest of the plan warm-starts the next re-plan
        loss = float(info["loss"])
        metric = math.nan
        if t + steps >= horizon:  # the executed sequence is complete: it is the result
            metric = float(info["iou_incremental"]) if problem.metric_name == "iou_incremental" else 1.0 - loss / problem.initial_loss
            tracker.offer(executed[None], Evaluation(np.array([loss]), np.array([metric]), np.zeros(1, dtype=bool)))
        tracker.record("mpc", replan, loss, metric, planned_loss=best_loss)
    env.close()
    return None


__all__ = [
    "METHODS",
    "CEMConfig",
    "GradientConfig",
    "HybridConfig",
    "MPCConfig",
    "RandomConfig",
    "SolverConfig",
    "TrajOptResult",
    "optimize",
]
