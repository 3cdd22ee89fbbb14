"""Native vector envs: equivalence with single envs, autoreset, per-world gradients, SB3 adapter."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

from tests.conftest import ENV_IDS, SMALL, TINY_DOUGH


def make_vec(env_id, num_envs, **kwargs):
    return gym.make_vec(env_id, num_envs=num_envs, vectorization_mode="vector_entry_point", **kwargs)


def singles(env_id, count, **kwargs):
    return [gym.make(env_id, **kwargs).unwrapped for _ in range(count)]


def assert_info_equal(vec_info: dict, single_infos: list[dict], worlds=None) -> None:
    """Every key of the single envs' info equals the vector env's row of it (NaN equal to NaN)."""
    worlds = range(len(single_infos)) if worlds is None else worlds
    for w, info in zip(worlds, single_infos):
        for key, value in info.items():
            assert key in vec_info, key
            np.testing.assert_array_equal(vec_info[key][w], value, err_msg=key)
            assert vec_info[f"_{key}"][w]


def explode(state: dict, world: int) -> dict:
    """``state`` with the first entry of each velocity field of ``world`` huge: it diverges in one step."""
    state = {name: value.copy() for name, value in state.items()}
    for name in state:
        if name.endswith(("_v", "_vel")):
            state[name][world].flat[0] = 1e30
    return state


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_vector_env_equals_single_envs_info_and_divergence_included(env_id):
    """The single env is the vector core at one world: observations, rewards, every info entry
    (the dough's IoU metrics included), gradients, and a diverged world, on every registered id."""
    kwargs = SMALL[env_id]
    vec = make_vec(env_id, 3, **kwargs)
    assert isinstance(vec.unwrapped, gym.vector.VectorEnv)
    assert vec.metadata["autoreset_mode"] == gym.vector.AutoresetMode.SAME_STEP
    envs = singles(env_id, 3, **kwargs)
    obs, vec_info = vec.reset(seed=11)
    resets = [e.reset(seed=11 + i) for i, e in enumerate(envs)]
    np.testing.assert_array_equal(obs, np.stack([r[0] for r in resets]))
    assert_info_equal(vec_info, [r[1] for r in resets])
    actions = np.random.default_rng(0).uniform(-1, 1, size=(6, *vec.action_space.shape)).astype(np.float32)
    for a in actions:
        obs, reward, terminated, truncated, info = vec.step(a)
        results = [e.step(a[i]) for i, e in enumerate(envs)]
        np.testing.assert_array_equal(obs, np.stack([r[0] for r in results]))
        np.testing.assert_array_equal(reward, np.array([r[1] for r in results]))
        np.testing.assert_array_equal(terminated, [r[2] for r in results])
        np.testing.assert_array_equal(truncated, [r[3] for r in results])
        assert_info_equal(info, [r[4] for r in results])
    g = vec.unwrapped.grad()
    single = [e.grad() for e in envs]
    assert g.actions.shape == (3, 6, *vec.single_action_space.shape) and np.any(g.actions != 0.0)
    np.testing.assert_allclose(g.actions, np.stack([s.actions for s in single]), rtol=1e-6, atol=1e-12)
    for name in g.initial_state:
        np.testing.assert_allclose(g.initial_state[name], np.stack([s.initial_state[name] for s in single]), rtol=1e-6, atol=1e-12)
    np.testing.assert_allclose(g.value, [s.value for s in single], rtol=1e-9)

    # World 1 diverges: the single env ends its episode, the vector env resets that world alone.
    state = explode(vec.unwrapped.get_state(), 1)
    vec.unwrapped.set_state(state)
    for w, e in enumerate(envs):
        e.set_state({name: value[w] for name, value in state.items()})
    a = np.zeros(vec.action_space.shape, np.float32)
    obs, reward, terminated, truncated, info = vec.step(a)
    results = [e.step(a[i]) for i, e in enumerate(envs)]
    assert list(terminated) == [False, True, False] and [r[2] for r in results] == [False, True, False]
    assert np.isnan(info["loss"][1]) and np.isnan(results[1][4]["loss"]) and reward[1] == results[1][1] == 0.0
    assert_info_equal(info, [r[4] for r in results])
    np.testing.assert_array_equal(info["final_obs"][1], results[1][0])  # the last valid observation
    np.testing.assert_array_equal(info["_final_obs"], [False, True, False])
    np.testing.assert_array_equal(obs[[0, 2]], np.stack([results[0][0], results[2][0]]))
    with pytest.raises(RuntimeError, match="diverged"):
        envs[1].step(a[1])


@pytest.mark.parametrize("checkpoint", [False, True])
def test_autoreset_same_step_and_gradients_of_the_current_episode(checkpoint):
    vec = make_vec("DiffEnvs/Pusher-v0", 2, proximity_weight=0.3, max_episode_steps=4, checkpoint=checkpoint)
    envs = singles("DiffEnvs/Pusher-v0", 2, proximity_weight=0.3)
    vec.reset(seed=3)
    for i, e in enumerate(envs):
        e.reset(seed=3 + i)
    rng = np.random.default_rng(1)
    for t in range(7):
        a = rng.uniform(-1, 1, size=(2, 2)).astype(np.float32)
        obs, reward, terminated, truncated, info = vec.step(a)
        results = [e.step(a[i]) for i, e in enumerate(envs)]
        np.testing.assert_array_equal(reward, [r[1] for r in results])
        if t == 3:  # the 4th step truncates both worlds: final and new observations
            assert truncated.all() and not terminated.any()
            np.testing.assert_array_equal(info["final_obs"], np.stack([r[0] for r in results]))
            assert info["_final_obs"].all()
            np.testing.assert_array_equal(obs, np.stack([e.reset()[0] for e in envs]))  # their own generators
        else:
            assert not truncated.any()
    g = vec.unwrapped.grad()
    assert g.actions.shape == (2, 7, 2)
    assert np.all(g.actions[:, :4] == 0.0)  # the first episode is over
    single = [e.grad() for e in envs]  # 3 steps of the second episode
    np.testing.assert_allclose(g.actions[:, 4:], np.stack([s.actions for s in single]), rtol=1e-6, atol=1e-12)
    for name in g.initial_state:
        np.testing.assert_allclose(g.initial_state[name], np.stack([s.initial_state[name] for s in single]), rtol=1e-6, atol=1e-12)
    np.testing.assert_allclose(g.value, [s.value for s in single], rtol=1e-9)


def test_a_diverged_world_is_reset_alone_and_keeps_others_gradients_finite():
    vec = make_vec("DiffEnvs/Pusher-v0", 2, proximity_weight=0.3)
    vec.reset(seed=0)
    state = vec.unwrapped.get_state()
    state["box_vel"][1] = [80.0, 0.0, 0.0]
    vec.unwrapped.batch.reset(state)  # world 1 flies off the table in the next step
    obs, reward, terminated, _, info = vec.step(np.zeros((2, 2), np.float32))
    assert list(terminated) == [False, True] and list(info["diverged"]) == [False, True] and reward[1] == 0.0
    assert np.all(np.isfinite(obs))
    vec.step(np.full((2, 2), 0.5, np.float32))
    g = vec.unwrapped.grad()
    assert np.all(np.isfinite(g.actions)) and np.all(g.actions[1, 0] == 0.0)


def test_bad_vector_actions_raise():
    vec = make_vec("DiffEnvs/Pusher-v0", 2)
    vec.reset(seed=0)
    before = vec.unwrapped.get_state()
    for bad in [np.zeros(2), np.zeros((3, 2)), np.full((2, 2), np.nan)]:
        with pytest.raises(ValueError, match="actions"):
            vec.step(bad)
    after = vec.unwrapped.get_state()
    for name in before:
        np.testing.assert_array_equal(before[name], after[name])


def test_dough_vector_env_reports_incremental_iou():
    vec = make_vec("DiffEnvs/Move-v0", 2, **TINY_DOUGH)
    vec.reset(seed=0)
    _, _, _, _, info = vec.step(np.zeros((2, 6), np.float32))
    assert info["iou"].shape == (2,) and np.all((0 <= info["iou_incremental"]) & (info["iou_incremental"] <= 1))


def test_sb3_ppo_smoke_runs_on_the_native_vector_env():
    """Smoke test: the SB3 adapter's VecEnv contract and a short PPO run (no learning threshold)."""
    from stable_baselines3 import PPO
    from stable_baselines3.common.vec_env import VecEnv

    from diffenvs.baselines.sb3 import SB3VecEnv

    venv = SB3VecEnv(make_vec("DiffEnvs/Pusher-v0", 4, differentiable=False, max_episode_steps=20))
    assert isinstance(venv, VecEnv) and venv.num_envs == 4
    obs = venv.reset()
    assert obs.shape == (4, 17)
    venv.step_async(np.zeros((4, 2), np.float32))
    obs, rewards, dones, infos = venv.step_wait()
    assert obs.shape == (4, 17) and rewards.shape == (4,) and len(infos) == 4
    model = PPO("MlpPolicy", venv, n_steps=32, batch_size=64, n_epochs=1, seed=0, device="cpu")
    model.learn(total_timesteps=256)
    # Episodes of 20 steps ended inside the run: SB3 got terminal observations and time-limit flags.
    venv.reset()
    for _ in range(20):
        obs, rewards, dones, infos = venv.step(np.zeros((4, 2), np.float32))
    assert dones.all() and all(i["TimeLimit.truncated"] and i["terminal_observation"].shape == (17,) for i in infos)


def test_matches_gymnasium_sync_vector_env_through_autoresets():
    """Spaces, observations, rewards, terminations, truncations and final observations agree with
    Gymnasium's SyncVectorEnv (SAME_STEP) over single envs."""
    vec = make_vec("DiffEnvs/Pusher-v0", 3, max_episode_steps=4, differentiable=False)
    sync = gym.vector.SyncVectorEnv(
        [lambda: gym.make("DiffEnvs/Pusher-v0", max_episode_steps=4, differentiable=False) for _ in range(3)],
        autoreset_mode=gym.vector.AutoresetMode.SAME_STEP,
    )
    assert vec.single_observation_space == sync.single_observation_space
    assert vec.single_action_space == sync.single_action_space
    assert vec.observation_space == sync.observation_space and vec.action_space == sync.action_space
    np.testing.assert_array_equal(vec.reset(seed=7)[0], sync.reset(seed=7)[0])
    rng = np.random.default_rng(2)
    for _ in range(9):
        a = rng.uniform(-1, 1, size=(3, 2)).astype(np.float32)
        ours, theirs = vec.step(a), sync.step(a)
        for x, y in zip(ours[:4], theirs[:4]):
            np.testing.assert_array_equal(x, y)
        if "final_obs" in theirs[4]:
            mask = theirs[4]["_final_obs"]
            np.testing.assert_array_equal(ours[4]["_final_obs"], mask)
            np.testing.assert_array_equal(ours[4]["final_obs"][mask], np.stack(theirs[4]["final_obs"][mask]))


def test_set_state_restarts_every_world_from_a_batched_snapshot():
    vec = make_vec("DiffEnvs/Pusher-v0", 2, proximity_weight=0.2)
    single = singles("DiffEnvs/Pusher-v0", 1, proximity_weight=0.2)[0]
    single.reset(seed=5)
    state = single.get_state()
    batched = {name: np.stack([value, value]) for name, value in state.items()}
    obs = vec.unwrapped.set_state(batched)
    np.testing.assert_array_equal(obs[0], obs[1])
    actions = np.random.default_rng(2).uniform(-1, 1, size=(4, 2))
    for a in actions:
        _, reward, _, _, _ = vec.step(np.stack([a, a]).astype(np.float32))
        assert reward[0] == reward[1] == single.step(a.astype(np.float32))[1]
    np.testing.assert_allclose(vec.unwrapped.grad().actions[1], single.grad().actions, rtol=1e-9)
    with pytest.raises(ValueError, match="shape"):
        vec.unwrapped.set_state(state)  # a single world's snapshot


def test_pickled_vector_env_continues_identically():
    import pickle

    vec = make_vec("DiffEnvs/Pusher-v0", 2, max_episode_steps=3).unwrapped
    vec.reset(seed=4)
    vec.step(np.full((2, 2), 0.3, np.float32))
    copy = pickle.loads(pickle.dumps(vec))
    for t in range(4):  # through an autoreset: the worlds' generators travel too
        a = np.full((2, 2), 0.1 * t, np.float32)
        for x, y in zip(vec.step(a)[:4], copy.step(a)[:4]):
            np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_instance_seed_restarts_every_episode_from_one_instance(env_id):
    """With ``instance_seed`` every world's every episode (resets and autoresets) starts from the
    instance a single env's ``reset(seed=instance_seed)`` draws."""
    kwargs = SMALL[env_id]
    single = gym.make(env_id, **kwargs).unwrapped
    single.reset(seed=3)
    instance = single.get_state()
    vec = make_vec(env_id, 2, instance_seed=3, max_episode_steps=2, **kwargs)
    vec.reset(seed=0)
    for _ in range(2):  # the second step ends the episodes: both worlds autoreset
        vec.step(np.zeros(vec.action_space.shape, np.float32))
    state = vec.unwrapped.get_state()
    for name, value in instance.items():
        np.testing.assert_array_equal(state[name], np.stack([value, value]), err_msg=name)
    other = gym.make(env_id, instance_seed=3, **kwargs).unwrapped
    other.reset(seed=99)
    for name, value in instance.items():
        np.testing.assert_array_equal(other.get_state()[name], value, err_msg=name)
