"""The Gymnasium and SB3 contracts of every registered env, seeding, pickling, bad input."""

from __future__ import annotations

import pickle
import warnings

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env as gym_check_env

from diffenvs.config import ConfigError
from diffenvs.tasks.pusher import PusherEnv
from tests.conftest import ENV_IDS, SMALL, make_unwrapped


def test_every_env_is_registered_with_a_namespaced_versioned_id():
    assert {"DiffEnvs/Pusher-v0", "DiffEnvs/RollingPin-v0", "DiffEnvs/Move-v0", "DiffEnvs/Shape-v0"} <= set(ENV_IDS)
    for env_id in ENV_IDS:
        spec = gym.spec(env_id)
        assert spec.namespace == "DiffEnvs" and spec.version is not None
        assert spec.max_episode_steps


@pytest.mark.parametrize("env_id", ENV_IDS)
@pytest.mark.parametrize("differentiable", [True, False])
def test_gymnasium_check_env(env_id, differentiable):  # the contract does not depend on the scene's size
    env = gym.make(env_id, render_mode="rgb_array", differentiable=differentiable, **SMALL[env_id])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        # Unbounded observations are declared as such (as Gymnasium's MuJoCo envs do).
        warnings.filterwarnings("ignore", message=".*Box observation space (minimum|maximum) value is")
        gym_check_env(env.unwrapped)
    env.close()


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_sb3_check_env(env_id):
    from stable_baselines3.common.env_checker import check_env as sb3_check_env

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sb3_check_env(gym.make(env_id, **SMALL[env_id]).unwrapped, warn=True)


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_seeded_determinism(env_id):
    def run(seed):
        env = gym.make(env_id, **SMALL[env_id])
        env.action_space.seed(seed)
        obs, _ = env.reset(seed=seed)
        trace = [obs]
        for _ in range(15):
            obs, reward, _, _, info = env.step(env.action_space.sample())
            trace += [obs, np.array([reward, info["loss"]])]
        return trace

    first, second, other = run(7), run(7), run(8)
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(first[0], other[0])


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_pickled_env_continues_identically(env_id):
    env = gym.make(env_id, **SMALL[env_id])
    env.reset(seed=3)
    for _ in range(4):
        env.step(env.action_space.sample())
    copy = pickle.loads(pickle.dumps(env))
    action = np.linspace(-0.5, 0.5, env.action_space.shape[0]).astype(np.float32)
    for a, b in zip(env.step(action), copy.step(action)):
        np.testing.assert_array_equal(np.asarray(a, dtype=object), np.asarray(b, dtype=object))
    for a, b in zip(env.reset(), copy.reset()):  # the generator travels too
        np.testing.assert_array_equal(np.asarray(a, dtype=object), np.asarray(b, dtype=object))


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_state_snapshot_replays_rewards_exactly(env_id):
    env = make_unwrapped(env_id)
    env.reset(seed=11)
    for _ in range(3):
        env.step(env.action_space.sample())
    snapshot = env.get_state()
    actions = [env.action_space.sample() for _ in range(10)]
    first = [env.step(a)[1] for a in actions]
    env.set_state(snapshot)
    assert [env.step(a)[1] for a in actions] == first
    name = next(iter(snapshot))
    snapshot[name].flat[0] = 123.0  # a snapshot is a copy
    assert env.get_state()[name].flat[0] != 123.0


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_render_returns_uint8_frames(env_id):
    env = gym.make(env_id, render_mode="rgb_array", render_width=96, render_height=64)
    env.reset(seed=0)
    frame = env.render()
    assert frame.shape == (64, 96, 3) and frame.dtype == np.uint8
    assert len(np.unique(frame.reshape(-1, 3), axis=0)) > 3


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_bad_actions_raise_and_leave_the_state_untouched(env_id):
    env = make_unwrapped(env_id, **SMALL.get(env_id, {}))
    env.reset(seed=0)
    n = env.action_space.shape[0]
    env.step(np.full(n, 0.1))
    before = env.get_state()
    nan, inf = np.zeros(n), np.zeros(n)
    nan[0], inf[-1] = np.nan, np.inf
    for bad in [np.zeros(n + 1), np.zeros((1, n)), [0.1], nan, inf, "up"]:
        with pytest.raises(ValueError, match="action"):
            env.step(bad)
    after = env.get_state()
    for name in before:
        np.testing.assert_array_equal(before[name], after[name])
    assert env.elapsed_steps == 1
    assert env.grad().actions.shape == (1, n)


def test_out_of_range_actions_are_clipped():
    env = make_unwrapped("DiffEnvs/Pusher-v0")
    env.reset(seed=0)
    state = env.get_state()
    big = env.step(np.array([5.0, -3.0]))
    env.set_state(state)
    clipped = env.step(np.array([1.0, -1.0]))
    np.testing.assert_array_equal(big[0], clipped[0])


def test_step_before_reset_and_bad_states_raise():
    env = make_unwrapped("DiffEnvs/Pusher-v0")
    with pytest.raises(RuntimeError, match="reset"):
        env.step(np.zeros(2))
    env.reset(seed=0)
    state = env.get_state()
    with pytest.raises(ValueError, match="fields"):
        env.set_state({"box_pose": state["box_pose"]})
    with pytest.raises(ValueError, match="shape"):
        env.set_state({**state, "box_pose": np.zeros(2)})
    with pytest.raises(ValueError, match="non-finite"):
        env.set_state({**state, "box_vel": np.array([np.nan, 0.0, 0.0])})


def test_unknown_or_invalid_options_raise_clear_errors():
    with pytest.raises(ConfigError, match="unknown option.*box_colour"):
        gym.make("DiffEnvs/Pusher-v0", box_colour="red")
    with pytest.raises(ConfigError, match="sim_substeps"):
        gym.make("DiffEnvs/Pusher-v0", sim_substeps=0)
    with pytest.raises(ConfigError, match="expected a number"):
        gym.make("DiffEnvs/Pusher-v0", proximity_weight="high")
    with pytest.raises(ValueError, match="render_mode"):
        PusherEnv(render_mode="ascii")


def test_divergence_ends_the_episode_without_nan():
    env = gym.make("DiffEnvs/Pusher-v0")
    obs, _ = env.reset(seed=0)
    state = env.unwrapped.get_state()
    state["box_vel"] = np.array([80.0, 0.0, 0.0])  # flies off the table within one step
    obs = env.unwrapped.set_state(state)
    next_obs, reward, terminated, truncated, info = env.step(np.zeros(2, dtype=np.float32))
    assert terminated and not truncated and info["diverged"]
    assert reward == 0.0 and np.all(np.isfinite(next_obs))
    np.testing.assert_array_equal(next_obs, obs)
    with pytest.raises(RuntimeError, match="diverged"):
        env.step(np.zeros(2, dtype=np.float32))
    env.reset(seed=1)
    assert not env.step(np.zeros(2, dtype=np.float32))[4]["diverged"]


def test_ppo_smoke_runs_on_the_env():
    """Smoke test: PPO steps, learns and predicts on a single env (no learning threshold)."""
    from stable_baselines3 import PPO

    env = gym.make("DiffEnvs/Pusher-v0", differentiable=False)
    model = PPO("MlpPolicy", env, n_steps=128, batch_size=64, n_epochs=2, seed=0, device="cpu")
    model.learn(total_timesteps=256)
    action, _ = model.predict(env.reset(seed=0)[0], deterministic=True)
    assert env.action_space.shape == action.shape
