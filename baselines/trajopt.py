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
from collections.abc import Callable

import numpy as np

from diffenvs.baselines.problem import Problem
from diffenvs.baselines.solver_config import (
    CEMConfig,
    CMAESConfig,
    GradientConfig,
    HybridConfig,
    MPCConfig,
    RandomConfig,
    ReinforceConfig,
    SolverConfig,
)
from diffenvs.baselines.tracker import BudgetSpent, Callback, Tracker, TrajOptResult

logger = logging.getLogger(__name__)

def reinforce_gradient(mean: np.ndarray, returns: np.ndarray, noise: np.ndarray, std: float) -> np.ndarray:
    """The likelihood-ratio estimate of d E[R] / d mean from returns of ``mean + std * noise``
    (noise (N, T, A)), with the batch's mean return as baseline; diverged samples (-inf) are left out."""
    finite = np.isfinite(returns)
    if finite.sum() < 2:
        return np.zeros_like(mean)
    advantage = returns[finite] - returns[finite].mean()
    return np.tensordot(advantage, noise[finite], axes=1) / (finite.sum() * std)



def optimize(problem: Problem, config: SolverConfig | None = None, *, callback: Callback | None = None,
             init_actions: np.ndarray | None = None) -> TrajOptResult:
    """Run one method on ``problem``, with a fresh budget.

    Args:
        problem: The problem (initial state, horizon, reported setting).
        config: The method and its options (default: :class:`SolverConfig`'s defaults: Adam).
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
    config = SolverConfig() if config is None else config
    problem.reset_budget()
    tracker = Tracker(problem, callback, config.budget)
    rng = np.random.default_rng(config.seed)
    if init_actions is not None:
        init_actions = problem.check_actions(init_actions)[0]
    method = config.method
    if method not in _ALGORITHMS:
        raise ValueError(f"optimize implements {sorted(_ALGORITHMS)}, not {method!r}")
    stopped = None
    try:
        stopped = _ALGORITHMS[method](problem, config, tracker, rng, init_actions)
    except BudgetSpent:
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


def _gradient(problem: Problem, cfg: GradientConfig, iters: int, tracker: Tracker, rng: np.random.Generator, *,
              optimizer: str, init: np.ndarray | None, first_iteration: int = 0) -> str | None:
    ascent = _Ascent(_initial_sequences(problem, cfg, rng, init, problem.action_shape), cfg, optimizer)
    active = np.ones(cfg.restarts, dtype=bool)
    base_softness = problem.base_remedies.get("softness")
    rollout_steps = cfg.restarts * problem.horizon
    discovery = _Discovery(problem, cfg) if cfg.contact_discovery else None

    def cost(i: int, n: int) -> int:  # forward + backward, and a replay in the reported setting when the dynamics differ
        replay = cfg.remedies(i, n).get("softness", base_softness) != base_softness and (i % cfg.eval_every == 0 or i == n - 1)
        return (2 + replay) * rollout_steps

    remaining = tracker.remaining()
    if discovery is not None and remaining is not None:
        remaining -= discovery.cost  # the executions that reach each stage's start
    iters = _iters_within(iters, remaining, cost)
    for iteration in range(iters):
        if discovery is not None and discovery.stage_starts_at(iteration, iters):
            ascent = _Ascent(discovery.place(ascent.params, tracker, iteration, iters), cfg, optimizer)
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
            lr=cfg.learning_rate(iteration, iters, problem.horizon), contact_weight=remedies.get("contact_weight", math.nan),
            softness=remedies.get("softness", math.nan),
        )
        if not active.any():
            reason = "the rollout diverged" if rollout.evaluation.diverged.any() else "non-finite gradient"
            return f"{reason} at iteration {first_iteration + iteration} (every start stopped)"
        ascent.step(grads, cfg.learning_rate(iteration, iters, problem.horizon), active)
    return None


class _Discovery:
    """Contact-point discovery (:mod:`diffenvs.baselines.contact_discovery`) in a gradient method: the
    horizon and the iterations split into equal stages; at each stage's first iteration the first
    start's sequence gets, from that stage's first step, a path of its tools to the places that
    optimal transport picks at the state the best sequence so far reaches there."""

    def __init__(self, problem: Problem, cfg: GradientConfig):
        from diffenvs.baselines import contact_discovery

        self.problem, self.module = problem, contact_discovery
        env = problem.single_env(render_mode=None)
        self.task = env.task
        contact_discovery.check_task(self.task, problem.config.env_id)
        self.stages = cfg.discovery_stages or int(getattr(self.task, "stages", 1))
        self.starts = [problem.horizon * s // self.stages for s in range(self.stages)]
        self.cost = sum(self.starts)

    def stage_starts_at(self, iteration: int, iters: int) -> bool:
        return any(iteration == iters * s // self.stages for s in range(self.stages))

    def place(self, params: np.ndarray, tracker: Tracker, iteration: int, iters: int) -> np.ndarray:
        stage = max(s for s in range(self.stages) if iters * s // self.stages <= iteration)
        first = self.starts[stage]
        last = self.starts[stage + 1] if stage + 1 < self.stages else self.problem.horizon
        sequence = tracker.best_actions if tracker.best_actions is not None else params[0]
        if first == 0:
            state = self.problem.initial_state
        else:
            state = self.problem.execute(sequence[:first], first=True)[0]
        places = self.module.placements(self.task, state)
        path = self.module.approach_actions(self.task, state, places, last - first)
        params = params.copy()
        params[0, :first] = sequence[:first]
        params[0, first:last] = path
        logger.info("contact discovery, stage %d of %d (steps %d-%d): tools to %s", stage + 1, self.stages, first, last,
                    np.round(places, 3).tolist())
        return params


# Sampling methods ------------------------------------------------------------------------------------


def _reinforce(problem: Problem, cfg: ReinforceConfig, gradient: GradientConfig, iters: int, tracker: Tracker,
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
                       grad_norm=float(np.linalg.norm(grads)), lr=gradient.learning_rate(iteration, iters, problem.horizon))
        ascent.step(grads[None], gradient.learning_rate(iteration, iters, problem.horizon), np.ones(1, dtype=bool))


def _cem(problem: Problem, cfg: CEMConfig, iters: int, tracker: Tracker, rng: np.random.Generator, *,
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


def _cmaes(problem: Problem, cfg: CMAESConfig, iters: int, tracker: Tracker, rng: np.random.Generator, *,
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


def _random(problem: Problem, cfg: RandomConfig, tracker: Tracker, rng: np.random.Generator) -> None:
    batch = problem.config.eval_batch
    remaining = tracker.remaining()
    count = cfg.samples if remaining is None else max(1, min(cfg.samples, remaining // problem.horizon))
    for index, first in enumerate(range(0, count, batch)):
        samples = rng.uniform(-1.0, 1.0, size=(min(batch, count - first), *problem.action_shape))
        evaluation = problem.evaluate(samples, as_cost=True)
        best = tracker.offer(samples, evaluation)
        tracker.record("random", index, float(evaluation.loss[best]), float(evaluation.metric[best]))


# Receding horizon ----------------------------------------------------------------------------------


def _mpc(problem: Problem, cfg: MPCConfig, gradient: GradientConfig, tracker: Tracker, rng: np.random.Generator, *,
         init: np.ndarray | None) -> str | None:
    horizon = problem.horizon
    plan = np.zeros(problem.action_shape) if init is None else init.copy()
    executed = np.zeros(problem.action_shape)
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
            ascent.step(rollout.grads, gradient.learning_rate(iteration, cfg.iters_per_step, length), np.ones(1, dtype=bool))
        plan[t:t + length] = best_plan
        steps = min(cfg.execute, horizon - t)
        executed[t:t + steps] = plan[t:t + steps]
        # the executed steps, in the reported setting, counted as every replay is
        state, evaluation = problem.execute(plan[t:t + steps], first=t == 0)
        if evaluation.diverged[0]:
            tracker.record("mpc", replan, math.inf, 0.0)
            return f"the executed trajectory diverged between steps {t} and {t + steps}"
        metric = math.nan
        if t + steps >= horizon:  # the executed sequence is complete: it is the result
            tracker.offer(executed[None], evaluation)
            metric = float(evaluation.metric[0])
        tracker.record("mpc", replan, float(evaluation.loss[0]), metric, planned_loss=best_loss)
    return None


_ALGORITHMS: dict[str, Callable[..., str | None]] = {
    "adam": lambda problem, c, tracker, rng, init: _gradient(problem, c.gradient, c.iters, tracker, rng, optimizer="adam",
                                                             init=init),
    "gd": lambda problem, c, tracker, rng, init: _gradient(problem, c.gradient, c.iters, tracker, rng, optimizer="gd",
                                                           init=init),
    "reinforce": lambda problem, c, tracker, rng, init: _reinforce(problem, c.reinforce, c.gradient, c.iters, tracker, rng,
                                                                   init=init),
    "cem": lambda problem, c, tracker, rng, init: _cem(problem, c.cem, c.iters, tracker, rng, init=init),
    "cmaes": lambda problem, c, tracker, rng, init: _cmaes(problem, c.cmaes, c.iters, tracker, rng, init=init),
    "hybrid": lambda problem, c, tracker, rng, init: _hybrid(problem, c, tracker, rng, init),
    "random": lambda problem, c, tracker, rng, init: _random(problem, c.random, tracker, rng),
    "mpc": lambda problem, c, tracker, rng, init: _mpc(problem, c.mpc, c.gradient, tracker, rng, init=init),
}
"""Each optimizer's algorithm (every optimizer registered in :mod:`diffenvs.baselines.method` has one)."""


def _hybrid(problem: Problem, config: SolverConfig, tracker: Tracker, rng: np.random.Generator,
            init: np.ndarray | None) -> str | None:
    _cem(problem, config.cem, config.hybrid.cem_iters, tracker, rng, init=init)
    return _gradient(problem, config.gradient, config.iters, tracker, rng, optimizer="adam",
                     init=tracker.best_actions.copy(), first_iteration=config.hybrid.cem_iters)


__all__ = [
    "CEMConfig",
    "GradientConfig",
    "HybridConfig",
    "MPCConfig",
    "RandomConfig",
    "SolverConfig",
    "TrajOptResult",
    "optimize",
]
