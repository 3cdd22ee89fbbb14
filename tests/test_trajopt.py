"""Trajectory optimization: every method lowers the loss within seconds, options act as documented."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from diffenvs.baselines.problem import Problem, ProblemConfig
from diffenvs.baselines.trajopt import (
    CEMConfig,
    CMAESConfig,
    GradientConfig,
    HybridConfig,
    MPCConfig,
    RandomConfig,
    ReinforceConfig,
    SolverConfig,
    optimize,
)
from tests.conftest import TINY_DOUGH, make_unwrapped

PUSHER_REMEDY = GradientConfig(lr=0.1, contact_weight=0.1)
DOUGH_REMEDY = GradientConfig(lr=0.2, contact_weight=10.0, softness=0.02)


@pytest.fixture(scope="module")
def pusher():
    problem = Problem(ProblemConfig(env_id="DiffEnvs/Pusher-v0", seed=2, horizon=40))
    yield problem
    problem.close()


@pytest.fixture(scope="module")
def dough():
    problem = Problem(ProblemConfig(env_id="DiffEnvs/RollingPin-v0", seed=0, horizon=10, eval_batch=8,
                                    env_kwargs={**TINY_DOUGH, "tool_softness": 0.0}))  # the reported setting: hard tools
    yield problem
    problem.close()


def replayed_loss(problem: Problem, actions: np.ndarray) -> float:
    env = problem.single_env(render_mode=None)
    env.set_state(problem.initial_state)
    info = {}
    for action in actions:
        info = env.step(action)[4]
    return info["loss"]


PUSHER_METHODS = {
    "adam": (SolverConfig(method="adam", iters=15, gradient=PUSHER_REMEDY), 0.3),
    "gd": (SolverConfig(method="gd", iters=15, gradient=GradientConfig(lr=0.5, contact_weight=0.1, grad_clip=1.0)), 0.7),
    "cem": (SolverConfig(method="cem", iters=6, cem=CEMConfig(population=16, elites=3)), 0.7),
    "cmaes": (SolverConfig(method="cmaes", iters=6, cmaes=CMAESConfig(population=16, sigma=0.5)), 0.7),
    "reinforce": (SolverConfig(method="reinforce", iters=10, gradient=GradientConfig(lr=0.1, contact_weight=0.1),
                               reinforce=ReinforceConfig(samples=16, std=0.3)), 0.9),
    "hybrid": (SolverConfig(method="hybrid", iters=8, hybrid=HybridConfig(cem_iters=3), cem=CEMConfig(population=16, elites=3),
                            gradient=PUSHER_REMEDY), 0.5),
    "random": (SolverConfig(method="random", random=RandomConfig(samples=32)), 0.9),
    "mpc": (SolverConfig(method="mpc", mpc=MPCConfig(plan_horizon=10, iters_per_step=3, execute=4),
                         gradient=GradientConfig(lr=0.2, contact_weight=0.1)), 0.5),
}


@pytest.mark.parametrize("method", list(PUSHER_METHODS))
def test_every_method_lowers_the_pusher_loss(pusher, method):
    config, fraction = PUSHER_METHODS[method]
    result = optimize(pusher, config)
    assert result.stopped is None
    assert result.loss < fraction * result.initial_loss
    assert result.actions.shape == (40, 2) and np.all(np.abs(result.actions) <= 1.0)
    assert result.loss == pytest.approx(replayed_loss(pusher, result.actions), rel=1e-9)
    assert result.metric == pytest.approx(1.0 - result.loss / result.initial_loss)
    assert result.history[-1]["best_loss"] == result.loss
    best = [r["best_loss"] for r in result.history]
    assert best == sorted(best, reverse=True)  # never gets worse


@pytest.mark.parametrize("method", ["adam", "gd", "cem", "cmaes", "hybrid", "random", "mpc"])
def test_every_method_lowers_a_small_dough_loss(dough, method):
    configs = {
        "cmaes": SolverConfig(method="cmaes", iters=3, cmaes=CMAESConfig(population=8, sigma=0.5)),
        "adam": SolverConfig(method="adam", iters=6, gradient=DOUGH_REMEDY),
        "gd": SolverConfig(method="gd", iters=6, gradient=GradientConfig(lr=0.05, contact_weight=10.0, softness=0.02, grad_clip=1.0)),
        "cem": SolverConfig(method="cem", iters=3, cem=CEMConfig(population=8, elites=2)),
        "hybrid": SolverConfig(method="hybrid", iters=3, hybrid=HybridConfig(cem_iters=2), cem=CEMConfig(population=8, elites=2),
                               gradient=DOUGH_REMEDY),
        "random": SolverConfig(method="random", random=RandomConfig(samples=8)),
        "mpc": SolverConfig(method="mpc", mpc=MPCConfig(plan_horizon=4, iters_per_step=2, execute=4), gradient=DOUGH_REMEDY),
    }
    result = optimize(dough, configs[method])
    assert result.loss < 0.97 * result.initial_loss
    assert 0.0 <= result.metric <= 1.0
    assert result.loss == pytest.approx(replayed_loss(dough, result.actions), rel=1e-5)  # hard tools, as reported


def test_budget_is_counted_the_same_way_for_every_method(pusher):
    t = pusher.horizon
    adam = optimize(pusher, SolverConfig(method="adam", iters=4, gradient=PUSHER_REMEDY)).budget
    assert (adam["forward_steps"], adam["backward_steps"], adam["eval_steps"], adam["grad_evals"]) == (4 * t, 4 * t, 0, 4)
    assert adam["env_steps"] == 8 * t and adam["wall_time"] > 0
    multi = optimize(pusher, SolverConfig(method="adam", iters=4, gradient=GradientConfig(restarts=3, contact_weight=0.1))).budget
    assert multi["grad_evals"] == 12 and multi["env_steps"] == 24 * t
    cem = optimize(pusher, SolverConfig(method="cem", iters=2, cem=CEMConfig(population=8, elites=2))).budget
    assert (cem["forward_steps"], cem["backward_steps"], cem["grad_evals"]) == (16 * t, 0, 0)
    cmaes = optimize(pusher, SolverConfig(method="cmaes", iters=2, cmaes=CMAESConfig(population=8))).budget
    assert (cmaes["forward_steps"], cmaes["backward_steps"], cmaes["grad_evals"]) == (16 * t, 0, 0)
    rand = optimize(pusher, SolverConfig(method="random", random=RandomConfig(samples=20))).budget
    assert rand["forward_steps"] == 20 * t and rand["rollouts"] == 20


def test_an_env_step_budget_is_never_exceeded(pusher, dough):
    t = pusher.horizon
    # Adam plans its length from the budget (its schedule ends there): 2t per iteration, 5 fit into 11t.
    adam = optimize(pusher, SolverConfig(method="adam", iters=100, budget=11 * t, gradient=GradientConfig(
        lr=0.1, lr_schedule="linear", contact_weight=0.1)))
    assert len(adam.history) == 5 and adam.budget["env_steps"] == 10 * t
    assert adam.history[-1]["lr"] == 0.0  # the linear schedule reached lr_final: it ended with the budget
    cem = optimize(pusher, SolverConfig(method="cem", iters=100, budget=20 * t, cem=CEMConfig(population=8, elites=2)))
    assert cem.budget["env_steps"] == 16 * t and len(cem.history) == 2  # a third generation would exceed it
    cmaes = optimize(pusher, SolverConfig(method="cmaes", iters=100, budget=20 * t, cmaes=CMAESConfig(population=8)))
    assert cmaes.budget["env_steps"] == 16 * t
    rand = optimize(pusher, SolverConfig(method="random", budget=21 * t + 3, random=RandomConfig(samples=1000)))
    assert rand.budget["env_steps"] == 21 * t and rand.budget["rollouts"] == 21  # fills it exactly
    short = optimize(pusher, SolverConfig(method="cmaes", iters=2, budget=10_000 * t, cmaes=CMAESConfig(population=8)))
    assert short.budget["env_steps"] == 16 * t  # its own length comes first
    first = optimize(pusher, SolverConfig(method="cem", iters=5, budget=t, cem=CEMConfig(population=8, elites=2)))
    assert len(first.history) == 1  # a first iteration larger than the budget still runs: there is a result
    reinforce = optimize(pusher, SolverConfig(method="reinforce", iters=100, budget=45 * t,
                                              reinforce=ReinforceConfig(samples=9)))
    assert len(reinforce.history) == 4 and reinforce.budget["env_steps"] == 40 * t
    # soft tools replayed every other iteration and at the end: the plan counts the replays
    soft = GradientConfig(lr=0.2, contact_weight=10.0, softness=0.02, eval_every=2)
    result = optimize(dough, SolverConfig(method="adam", iters=50, budget=10 * dough.horizon, gradient=soft))
    assert len(result.history) == 3 and result.budget["env_steps"] == 8 * dough.horizon  # 3 + 2 + 3: replays at 0 and last
    assert not math.isnan(result.history[-1]["loss"])  # the last iteration is judged
    with pytest.raises(ValueError, match="budget"):
        SolverConfig(budget=0)


def test_contact_loss_turns_a_zero_gradient_into_progress(pusher):
    """The ablation the remedy exists for: from a no-contact start, no gradient and no progress without it."""
    off = optimize(pusher, SolverConfig(method="adam", iters=5, gradient=GradientConfig(lr=0.1, contact_weight=0.0)))
    assert all(r["grad_norm"] == 0.0 for r in off.history)
    assert off.loss == pytest.approx(off.initial_loss)
    on = optimize(pusher, SolverConfig(method="adam", iters=15, gradient=PUSHER_REMEDY))
    assert on.history[0]["grad_norm"] > 0.0 and on.loss < 0.5 * on.initial_loss


def test_remedy_schedules_and_replays_in_the_reported_setting(dough):
    cfg = GradientConfig(lr=0.2, contact_weight=10.0, contact_weight_final=0.0, softness=0.02, softness_final=0.0,
                         anneal=0.5, eval_every=2)
    result = optimize(dough, SolverConfig(method="adam", iters=5, gradient=cfg))
    softness = [r["softness"] for r in result.history]
    np.testing.assert_allclose(softness, [0.02, 0.01, 0.0, 0.0, 0.0])
    np.testing.assert_allclose([r["contact_weight"] for r in result.history], [10.0, 5.0, 0.0, 0.0, 0.0])
    # soft iterations 0 and 1 differ from the hard reported setting: iteration 0 is replayed
    # (eval_every=2), iteration 1 is not; hard iterations are judged from their own rollout.
    assert math.isnan(result.history[1]["loss"]) and not math.isnan(result.history[0]["loss"])
    assert result.budget["eval_steps"] == dough.horizon
    assert dough.vector_env(1, differentiable=True).remedies == {"contact_weight": 0.0, "softness": 0.0, "contact_focus": 0.0}


def test_truncated_windows_cut_the_gradient_at_window_starts(pusher):
    actions = np.random.default_rng(0).uniform(-1, 1, size=(1, *pusher.action_shape))
    full = pusher.value_and_grad(actions, remedies={"contact_weight": 0.1})
    cut = pusher.value_and_grad(actions, remedies={"contact_weight": 0.1}, window=10)
    assert cut.returns == pytest.approx(full.returns) and cut.evaluation.loss == pytest.approx(full.evaluation.loss)
    np.testing.assert_allclose(cut.grads[:, -10:], full.grads[:, -10:], rtol=1e-12, atol=1e-15)  # the last window sees all it affects
    assert not np.allclose(cut.grads[:, :10], full.grads[:, :10])
    # each window is the gradient of a fresh episode from that window's start state
    env = make_unwrapped("DiffEnvs/Pusher-v0", proximity_weight=0.1)
    env.set_state(pusher.initial_state)
    for action in actions[0, :10]:
        env.step(action)
    start = env.get_state()
    env.set_state(start)
    for action in actions[0, 10:20]:
        env.step(action)
    np.testing.assert_allclose(cut.grads[0, 10:20], env.grad().actions, rtol=1e-10, atol=1e-14)


def test_multi_start_contains_the_single_start(pusher):
    single = optimize(pusher, SolverConfig(method="adam", iters=6, gradient=PUSHER_REMEDY))
    multi = optimize(pusher, SolverConfig(method="adam", iters=6, gradient=GradientConfig(lr=0.1, contact_weight=0.1, restarts=3)))
    assert multi.loss <= single.loss + 1e-12


def test_learning_rate_schedules():
    cosine = GradientConfig(lr=1.0, lr_schedule="cosine", lr_final=0.1)
    assert cosine.learning_rate(0, 11) == pytest.approx(1.0) and cosine.learning_rate(10, 11) == pytest.approx(0.1)
    assert cosine.learning_rate(5, 11) == pytest.approx(0.55)
    linear = GradientConfig(lr=1.0, lr_schedule="linear")
    assert [round(linear.learning_rate(i, 5), 6) for i in range(5)] == [1.0, 0.75, 0.5, 0.25, 0.0]
    assert GradientConfig(lr=0.3).learning_rate(7, 10) == 0.3
    # lr_steps: the step set for that length, scaled down to a longer sequence (schedule and all)
    assert GradientConfig(lr=0.3, lr_steps=100).learning_rate(7, 10, steps=400) == pytest.approx(0.075)
    assert GradientConfig(lr=0.3, lr_steps=100).learning_rate(7, 10, steps=50) == 0.3  # shorter: never a larger step
    assert GradientConfig(lr=0.3).learning_rate(7, 10, steps=400) == 0.3  # not asked for: unscaled
    assert GradientConfig(lr=1.0, lr_schedule="linear", lr_steps=10).learning_rate(2, 5, steps=20) == pytest.approx(0.25)
    with pytest.raises(ValueError, match="lr_steps must be >= 1"):
        GradientConfig(lr_steps=0)


def test_lr_steps_scales_adams_step_to_the_sequence(pusher):
    """The step Adam takes (the log's ``lr``) is ``lr * lr_steps / horizon`` on a longer horizon."""
    t = pusher.horizon
    result = optimize(pusher, SolverConfig(method="adam", iters=2, gradient=GradientConfig(lr=0.1, lr_steps=t // 4, contact_weight=0.1)))
    assert [row["lr"] for row in result.history] == [pytest.approx(0.025), pytest.approx(0.025)]


def test_gradient_clipping_bounds_each_step(pusher, monkeypatch):
    real = pusher.value_and_grad

    def steps_taken(gradient: GradientConfig) -> list[float]:
        seen = []

        def spy(actions, **kwargs):
            seen.append(np.array(actions))
            return real(actions, **kwargs)

        monkeypatch.setattr(pusher, "value_and_grad", spy)
        optimize(pusher, SolverConfig(method="gd", iters=3, gradient=gradient))
        monkeypatch.undo()
        return [float(np.linalg.norm(b - a)) for a, b in itertools.pairwise(seen)]

    clipped = steps_taken(GradientConfig(lr=1.0, grad_clip=1e-3, contact_weight=0.1))
    free = steps_taken(GradientConfig(lr=1.0, contact_weight=0.1))
    assert all(0.0 < step <= 1e-3 * (1 + 1e-9) for step in clipped)
    assert max(free) > 1e-2


def test_bad_configs_raise():
    with pytest.raises(ValueError, match="lr"):
        GradientConfig(lr=0.0)
    with pytest.raises(ValueError, match="elites"):
        CEMConfig(population=4, elites=4)
    with pytest.raises(ValueError, match="method"):
        SolverConfig(method="sgd")
    with pytest.raises(ValueError, match="execute"):
        MPCConfig(plan_horizon=2, execute=3)
    with pytest.raises(ValueError, match="render_mode"):
        ProblemConfig(env_kwargs={"render_mode": "rgb_array"})
    with pytest.raises(ValueError, match="unknown env id"):
        Problem(ProblemConfig(env_id="DiffEnvs/Nope-v0"))


def test_bad_action_sequences_raise(pusher):
    with pytest.raises(ValueError, match="shape"):
        pusher.evaluate(np.zeros((2, 3, 2)))
    with pytest.raises(ValueError, match="non-finite"):
        pusher.evaluate(np.full((1, *pusher.action_shape), np.nan))


def test_non_finite_gradient_stops_early_and_keeps_the_best(pusher, monkeypatch, caplog):
    real = pusher.value_and_grad
    calls = []

    def flaky(actions, **kwargs):
        rollout = real(actions, **kwargs)
        calls.append(1)
        if len(calls) == 4:
            rollout.grads[:] = np.nan
        return rollout

    monkeypatch.setattr(pusher, "value_and_grad", flaky)
    result = optimize(pusher, SolverConfig(method="adam", iters=10, gradient=PUSHER_REMEDY))
    assert result.stopped == "non-finite gradient at iteration 3 (every start stopped)"
    assert len(result.history) == 4 and np.all(np.isfinite(result.actions))
    assert result.loss <= result.initial_loss
    assert "stopped early" in caplog.text


def test_remedies_are_validated_and_guard_the_recording():
    from diffenvs.autodiff import GradientError

    env = make_unwrapped("DiffEnvs/Pusher-v0")
    env.reset(seed=0)
    assert env.remedies == {"contact_weight": 0.1, "softness": pytest.approx(0.002)}  # proximity_weight's default
    with pytest.raises(ValueError, match="no remedies"):
        env.set_remedies(temperature=1.0)
    with pytest.raises(ValueError, match="softness"):
        env.set_remedies(contact_weight=1.0, softness=0.0)
    assert env.remedies["contact_weight"] == 0.1  # nothing changed
    env.step(np.zeros(2))
    env.set_remedies(contact_weight=1.0)
    with pytest.raises(GradientError, match="remedies changed"):
        env.grad()
    with pytest.raises(GradientError, match="remedies changed"):
        env.step(np.zeros(2))
    env.reset(seed=0)
    assert env.step(np.zeros(2))[4]["reward_proximity"] < 0.0


def test_reinforce_estimator_matches_a_known_gradient():
    """On a linear return R(a) = sum(w * a) the likelihood-ratio estimate converges to w."""
    from diffenvs.baselines.trajopt import reinforce_gradient

    rng = np.random.default_rng(0)
    w = rng.standard_normal((5, 2))
    mean = np.zeros((5, 2))
    cosines = []
    for samples in (16, 4096):
        noise = rng.standard_normal((samples, 5, 2))
        returns = np.tensordot(noise * 0.1, w, axes=([1, 2], [0, 1]))
        g = reinforce_gradient(mean, returns, noise, 0.1)
        cosines.append(np.sum(g * w) / (np.linalg.norm(g) * np.linalg.norm(w)))
    assert cosines[1] > 0.98 and cosines[1] > cosines[0]
    returns[:-1] = -np.inf  # diverged samples are left out: fewer than two finite, no estimate
    assert np.all(reinforce_gradient(mean, returns, noise, 0.1) == 0.0)


def test_reinforce_runs_forward_only_and_improves_the_pusher(pusher):
    config = SolverConfig(method="reinforce", iters=8, gradient=GradientConfig(lr=0.1, contact_weight=0.1),
                          reinforce=ReinforceConfig(samples=16, std=0.3))
    result = optimize(pusher, config)
    budget = result.budget
    assert budget["backward_steps"] == 0 and budget["grad_evals"] == 0
    assert budget["forward_steps"] == 8 * 16 * pusher.horizon and len(result.history) == 8
    assert result.loss < pusher.initial_loss
    with pytest.raises(ValueError, match="samples"):
        ReinforceConfig(samples=1)
