"""Gradient trajectory optimization lowers the loss within seconds."""

from __future__ import annotations

import numpy as np
import pytest

from diffenvs.baselines.trajopt import Adam, AdamConfig, optimize_actions
from tests.conftest import make_unwrapped


def test_adam_lowers_the_pusher_loss_and_respects_bounds():
    env = make_unwrapped("DiffEnvs/Pusher-v0", proximity_weight=0.1)
    env.reset(seed=2)
    result = optimize_actions(env, AdamConfig(iters=25, horizon=40, lr=0.1))
    assert result.best_loss < 0.3 * result.initial_loss
    assert result.actions.shape == (40, 2)
    assert np.all(np.abs(result.actions) <= 1.0)
    assert [r["iteration"] for r in result.history] == list(range(25))
    assert result.history[-1]["env_steps"] == 2 * 40 * 25
    env.reset(seed=2)
    infos = [env.step(a)[4] for a in result.actions]
    assert infos[-1]["loss"] == pytest.approx(result.best_loss)
    assert [i["is_success"] for i in infos] == [i["loss"] <= 0.02 for i in infos]
    assert not infos[0]["is_success"]


def test_without_contact_loss_a_far_pusher_makes_no_progress():
    """The ablation the contact loss exists for: zero gradient, zero progress."""
    env = make_unwrapped("DiffEnvs/Pusher-v0")
    env.reset(seed=2)
    result = optimize_actions(env, AdamConfig(iters=5, horizon=20, lr=0.1))
    assert all(r["grad_norm"] == 0.0 for r in result.history)
    assert result.best_loss == pytest.approx(result.initial_loss)


def test_adam_step_is_projected_and_clipped():
    cfg = AdamConfig(lr=0.5, grad_clip=1.0)
    adam = Adam(np.zeros(3), cfg, -np.ones(3), np.ones(3))
    params = adam.ascend(np.array([100.0, -100.0, 0.0]))
    np.testing.assert_allclose(params, [0.5, -0.5, 0.0], atol=1e-6)
    for _ in range(5):
        params = adam.ascend(np.array([1.0, -1.0, 0.0]))
    np.testing.assert_array_equal(params[:2], [1.0, -1.0])


def test_bad_configs_raise():
    with pytest.raises(ValueError, match="lr"):
        AdamConfig(lr=0.0)
    env = make_unwrapped("DiffEnvs/Pusher-v0", differentiable=False)
    env.reset(seed=0)
    with pytest.raises(ValueError, match="differentiable"):
        optimize_actions(env, AdamConfig(iters=1, horizon=2))


def test_adam_lowers_a_small_dough_loss():
    from tests.conftest import TINY_DOUGH

    env = make_unwrapped("DiffEnvs/RollingPin-v0", **TINY_DOUGH, tool_softness=0.02, contact_weight=10.0)
    env.reset(seed=0)
    result = optimize_actions(env, AdamConfig(iters=8, horizon=10, lr=0.2))
    assert result.best_loss < 0.9 * result.initial_loss


def test_non_finite_gradient_stops_early_and_keeps_the_best(monkeypatch, caplog):
    env = make_unwrapped("DiffEnvs/Pusher-v0", proximity_weight=0.1)
    env.reset(seed=2)
    real_grad = env.grad
    calls = []

    def flaky_grad(objective="return"):
        g = real_grad(objective)
        calls.append(1)
        if len(calls) == 4:
            g.actions[:] = np.nan
        return g

    monkeypatch.setattr(env, "grad", flaky_grad)
    result = optimize_actions(env, AdamConfig(iters=10, horizon=20, lr=0.1))
    assert result.stopped == "non-finite gradient at iteration 3"
    assert len(result.history) == 3 and np.all(np.isfinite(result.actions))
    assert result.best_loss <= result.initial_loss
    assert "stopped early" in caplog.text
