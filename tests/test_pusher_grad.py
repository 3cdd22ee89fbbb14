"""grad() of the Pusher against central finite differences of replayed rollouts."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest

from diffenvs.autodiff import GradientError
from tests.conftest import make_unwrapped, replay

ID = "DiffEnvs/Pusher-v0"


def contact_rollout(env, seed: int, steps: int):
    """Reset and drive the pusher towards the box so that contact happens within ``steps``."""
    env.reset(seed=seed)
    state = env.get_state()
    direction = state["box_pose"][:2] - state["pusher_pos"]
    direction /= np.linalg.norm(direction)
    rng = np.random.default_rng(seed)
    actions = np.clip(direction * 0.7 + 0.1 * rng.standard_normal((steps, 2)), -0.95, 0.95)
    return state, actions


def fd_directional(env, state, actions, direction, eps, objective="return"):
    plus = replay(env, state, actions + eps * direction, objective)
    minus = replay(env, state, actions - eps * direction, objective)
    return (plus - minus) / (2 * eps)


@pytest.mark.parametrize("objective", ["return", "loss"])
def test_action_gradient_matches_finite_differences_in_contact(objective):
    env = make_unwrapped(ID, proximity_weight=0.5, ctrl_weight=0.1, orientation_weight=0.05)
    state, actions = contact_rollout(env, seed=3, steps=12)
    replay(env, state, actions)
    g = env.grad(objective)
    assert g.actions.shape == (12, 2)
    assert np.abs(g.actions).max() > 1e-3
    rng = np.random.default_rng(0)
    for _ in range(3):
        direction = rng.standard_normal(actions.shape)
        fd = fd_directional(env, state, actions, direction, 1e-5, objective)
        assert np.sum(g.actions * direction) == pytest.approx(fd, rel=1e-4, abs=1e-8)
    for t, i in [(0, 0), (5, 1), (11, 0)]:
        direction = np.zeros_like(actions)
        direction[t, i] = 1.0
        fd = fd_directional(env, state, actions, direction, 1e-5, objective)
        assert g.actions[t, i] == pytest.approx(fd, rel=1e-4, abs=1e-8)


def test_initial_state_gradient_matches_finite_differences():
    env = make_unwrapped(ID, proximity_weight=0.5)
    state, actions = contact_rollout(env, seed=5, steps=10)
    replay(env, state, actions)
    g = env.grad()
    assert set(g.initial_state) == set(state)
    for name in state:
        assert g.initial_state[name].shape == state[name].shape
        for i in range(state[name].size):
            bumped = {k: v.copy() for k, v in state.items()}
            bumped[name].flat[i] += 1e-6
            plus = replay(env, bumped, actions)
            bumped[name].flat[i] -= 2e-6
            minus = replay(env, bumped, actions)
            assert g.initial_state[name].flat[i] == pytest.approx((plus - minus) / 2e-6, rel=1e-4, abs=1e-7), (name, i)


def test_no_contact_gives_exactly_zero_action_gradient_and_proximity_fixes_it():
    still = np.zeros((8, 2))
    env = make_unwrapped(ID, proximity_weight=0.0)  # the ablation: the default weight leads to the box
    env.reset(seed=1)
    for action in still:
        env.step(action)
    assert np.all(env.grad().actions == 0.0)

    env = make_unwrapped(ID)
    assert env.task.config.proximity_weight > 0.0
    env.reset(seed=1)
    state = env.get_state()
    for action in still:
        env.step(action)
    g = env.grad()
    assert np.all(np.abs(g.actions).sum(axis=1) > 0)
    # Ascending the return moves the pusher towards the box.
    towards = state["box_pose"][:2] - state["pusher_pos"]
    assert np.all(g.actions @ towards > 0)
    direction = np.random.default_rng(1).standard_normal(still.shape)
    fd = fd_directional(env, state, still, direction, 1e-5)
    assert np.sum(g.actions * direction) == pytest.approx(fd, rel=1e-5)


def test_grad_is_repeatable_and_reset_restarts_it():
    env = make_unwrapped(ID, proximity_weight=0.3)
    state, actions = contact_rollout(env, seed=2, steps=6)
    replay(env, state, actions)
    first, second = env.grad(), env.grad()
    np.testing.assert_array_equal(first.actions, second.actions)
    for name in state:
        np.testing.assert_array_equal(first.initial_state[name], second.initial_state[name])
    assert first.value == pytest.approx(replay(env, state, actions))
    env.reset(seed=2)
    env.step(actions[0])
    assert env.grad().actions.shape == (1, 2)


def test_grad_errors_are_clear():
    env = make_unwrapped(ID)
    env.reset(seed=0)
    with pytest.raises(GradientError, match="call step"):
        env.grad()
    env.step(np.zeros(2))
    with pytest.raises(ValueError, match="objective"):
        env.grad("reward")
    env = make_unwrapped(ID, differentiable=False)
    env.reset(seed=0)
    env.step(np.zeros(2))
    with pytest.raises(GradientError, match="differentiable=False"):
        env.grad()


def test_return_telescopes_to_loss_decrease():
    env = make_unwrapped(ID, proximity_weight=0.0)  # the progress term alone
    state, actions = contact_rollout(env, seed=4, steps=15)
    _, info = env.reset(seed=4)
    total = replay(env, state, actions)
    env.set_state(state)
    losses = [info["loss"]]
    for action in actions:
        losses.append(env.step(action)[4]["loss"])
    assert total == pytest.approx(losses[0] - losses[-1], abs=1e-12)
    assert total > 0.0


def test_tape_never_overwrites_an_array_it_read():
    """Record and differentiate two episodes with Warp's array-access verifier turned into errors.

    Runs in a fresh process: the verifier changes the kernels' build options, so it only
    applies to modules loaded after it is switched on.
    """
    script = textwrap.dedent(
        """
        import warnings
        import numpy as np
        import warp as wp
        wp.config.log_level = 30  # warnings and errors only (no init banner, no module-load lines)
        wp.config.verify_autograd_array_access = True
        warnings.simplefilter("error")
        import gymnasium as gym
        import diffenvs
        from diffenvs.sim.rigid2d.kernels import integrate_pusher_box
        for checkpoint in (False, True):
            env = gym.make("DiffEnvs/Pusher-v0", proximity_weight=0.5, checkpoint=checkpoint).unwrapped
            for episode in range(2):
                env.reset(seed=episode)
                for t in range(4):
                    env.step(np.array([0.5, -0.3]))
                env.grad()
                env.grad("loss")
            env.set_state(env.get_state())
            env.step(np.zeros(2))
            env.grad()
        for checkpoint in (False, True):
            env = gym.make("DiffEnvs/Move-v0", grid_res=16, particle_count=32, sim_substeps=2,
                           obs_particle_count=4, tool_softness=0.02, checkpoint=checkpoint).unwrapped
            for episode in range(2):
                env.reset(seed=episode)
                for t in range(2):
                    env.step(np.full(6, 0.3))
                env.grad()
        from diffenvs.sim.mpm.kernels import p2g_scatter
        assert integrate_pusher_box.adj.args[0].is_read, "the verifier was not active"
        assert any(a.is_read for a in p2g_scatter.adj.args), "the verifier was not active on the MPM kernels"
        print("verified")
        """
    )
    result = subprocess.run([sys.executable, "-c", script], check=False, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "verified" in result.stdout


@pytest.mark.parametrize("objective", ["return", "loss"])
def test_checkpointed_gradients_equal_recorded_ones(objective):
    grads = []
    for checkpoint in (False, True):
        env = make_unwrapped(ID, proximity_weight=0.4, checkpoint=checkpoint)
        state, actions = contact_rollout(env, seed=6, steps=10)
        replay(env, state, actions)
        grads.append(env.grad(objective))
        again = env.grad(objective)
        np.testing.assert_array_equal(again.actions, grads[-1].actions)
    np.testing.assert_array_equal(grads[0].actions, grads[1].actions)
    for name in grads[0].initial_state:
        np.testing.assert_array_equal(grads[0].initial_state[name], grads[1].initial_state[name])
    assert np.abs(grads[1].actions).max() > 0.0


def test_checkpointed_gradient_after_a_dropped_step_equals_the_recorded_one():
    """A diverged step is dropped after it overwrote the checkpointing scratch set that an earlier
    step's tape reads: the backward pass must refill that set, not trust it."""
    grads = []
    for checkpoint in (False, True):
        env = make_unwrapped(ID, proximity_weight=0.4, checkpoint=checkpoint)
        state, actions = contact_rollout(env, seed=6, steps=6)
        replay(env, state, actions)
        trajectory = env.batch.trajectory
        trajectory.buffers(trajectory.length).action.assign(np.array([[0.9, -0.9]]))
        trajectory.record()  # what a step that diverges does before it is undone
        trajectory.drop_last()
        grads.append(env.grad())
    np.testing.assert_array_equal(grads[0].actions, grads[1].actions)
    assert np.abs(grads[1].actions).max() > 0.0


def test_checkpoint_is_ignored_without_differentiable():
    env = make_unwrapped(ID, differentiable=False, checkpoint=True)
    env.reset(seed=0)
    for _ in range(3):
        env.step(np.array([0.2, 0.1]))
    with pytest.raises(GradientError, match="differentiable=False"):
        env.grad()
