"""The dough tasks: gradients against finite differences, contact remedies, checkpointing, metrics."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

from tests.conftest import DOUGH_IDS, SMALL, TINY_DOUGH, make_unwrapped


def rollout(env, state, actions):
    env.set_state(state)
    total = 0.0
    for a in actions:
        _, reward, terminated, _, _ = env.step(a)
        assert not terminated
        total += reward
    return total


def pressing_actions(env, steps):
    """Actions that drive every tool down into the dough (and a little sideways)."""
    n = env.action_space.shape[0]
    base = np.zeros(n)
    if n == 3 and env.spec.id.startswith("DiffEnvs/RollingPin"):
        base[:] = [0.4, 0.1, -0.8]
    else:
        for t in range(n // 3):
            base[3 * t: 3 * t + 3] = [0.3 * (-1) ** t, -0.8, 0.2]
        if env.spec.id.startswith("DiffEnvs/Move"):  # squeeze from both sides
            base = np.array([0.8, -0.2, 0.1, -0.8, -0.2, 0.1])
    return np.tile(base, (steps, 1)) + 0.05 * np.random.default_rng(0).standard_normal((steps, n))


@pytest.mark.parametrize("env_id", DOUGH_IDS)
def test_action_gradient_matches_finite_differences(env_id):
    env = make_unwrapped(env_id, **SMALL[env_id], tool_softness=0.02, contact_weight=1.0)
    env.reset(seed=1)
    state = env.get_state()
    actions = pressing_actions(env, 4)
    rollout(env, state, actions)
    g = env.grad()
    assert g.actions.shape == actions.shape and np.abs(g.actions).max() > 0
    direction = g.actions / np.linalg.norm(g.actions)  # the steepest direction: a clear signal
    # central differences at a large step (above float32 noise) and a small one (below the curvature
    # of contact: the torus's ring, pressed 0.05 further, meets dough the gradient cannot foresee)
    fds = [(rollout(env, state, actions + eps * direction) - rollout(env, state, actions - eps * direction)) / (2 * eps)
           for eps in (0.05, 0.01)]
    assert any(np.sum(g.actions * direction) == pytest.approx(fd, rel=0.1) for fd in fds), fds


@pytest.mark.parametrize("env_id", DOUGH_IDS)
def test_checkpointed_and_recorded_gradients_agree(env_id):
    results = []
    for checkpoint in (True, False):
        env = make_unwrapped(env_id, **SMALL[env_id], tool_softness=0.02, checkpoint=checkpoint)
        env.reset(seed=2)
        for a in pressing_actions(env, 3):
            env.step(a)
        results.append(env.grad())
    np.testing.assert_allclose(results[0].actions, results[1].actions, rtol=1e-5, atol=1e-9)
    for name in results[0].initial_state:
        np.testing.assert_allclose(results[0].initial_state[name], results[1].initial_state[name], rtol=1e-5, atol=1e-9)


def test_parallel_and_sequential_refills_give_identical_gradients():
    env = make_unwrapped("DiffEnvs/RollingPin-v0", **TINY_DOUGH, tool_softness=0.02, checkpoint=True)
    assert env.batch.parallel_refill  # the dough tasks' default
    env.reset(seed=3)
    for a in pressing_actions(env, 6):
        env.step(a)
    parallel = env.grad()
    env.batch.parallel_refill = False
    sequential = env.grad()
    np.testing.assert_array_equal(parallel.actions, sequential.actions)
    np.testing.assert_array_equal(parallel.initial_state["particle_x"], sequential.initial_state["particle_x"])
    assert not make_unwrapped("DiffEnvs/Pusher-v0", checkpoint=True).batch.parallel_refill


def test_checkpointing_follows_the_preset_unless_given():
    assert not make_unwrapped("DiffEnvs/Move-v0").checkpoint
    assert make_unwrapped("DiffEnvs/Move-v0", preset="paper").checkpoint
    assert not make_unwrapped("DiffEnvs/Move-v0", preset="paper", checkpoint=False).checkpoint
    assert make_unwrapped("DiffEnvs/Shape-v0", checkpoint=True).checkpoint
    vec = gym.make_vec("DiffEnvs/RollingPin-v0", num_envs=2, vectorization_mode="vector_entry_point", preset="paper")
    assert vec.unwrapped.checkpoint


def test_pooled_gradients_are_zeroed_together_and_need_contiguous_arrays():
    import warp as wp

    from diffenvs.task import pooled_grads

    arrays = [wp.zeros(5, dtype=wp.vec3), wp.zeros((2, 3), dtype=wp.mat33), wp.zeros(7, dtype=wp.float64)]
    pool = pooled_grads(arrays, "cpu")
    for a in arrays:
        a.grad.fill_(2.0)
    assert all(np.all(a.grad.numpy() == 2.0) for a in arrays)  # disjoint: no gradient overwrote another
    pool.zero_()
    assert all(np.all(a.grad.numpy() == 0.0) for a in arrays)
    with pytest.raises(ValueError, match="contiguous"):
        pooled_grads([wp.zeros((4, 4), dtype=float)[:, 1]], "cpu")


def test_recorded_steps_share_one_set_of_scratch_gradients():
    """Memory of a recorded (not checkpointed) episode: each step keeps its outputs' gradients and
    its scratch values, but all steps share one set of scratch gradients."""
    env = make_unwrapped("DiffEnvs/Move-v0", **TINY_DOUGH, checkpoint=False)
    env.reset(seed=0)
    for a in pressing_actions(env, 3):
        env.step(a)
    steps = env.batch.trajectory.recorded
    scratch = [[a.grad.ptr for a in b.scratch_arrays() if a.grad is not None] for b in steps]
    values = [[a.ptr for a in b.scratch_arrays()] for b in steps]
    outputs = [[a.grad.ptr for a in b.state.values()] for b in steps]
    assert scratch[0] and scratch[0] == scratch[1] == scratch[2]
    assert len({p for v in values for p in v}) == 3 * len(values[0])  # each step's own values
    assert len({p for v in outputs for p in v}) == 3 * len(outputs[0])  # each step's own output gradients


@pytest.mark.parametrize("env_id", DOUGH_IDS)
def test_no_contact_zero_gradient_and_both_remedies(env_id):
    def action_grad(**kwargs):
        env = make_unwrapped(env_id, **SMALL[env_id], **kwargs)
        env.reset(seed=0)
        state = env.get_state()
        state["tool_pos"][:, 1] = state["particle_x"][:, 1].max() + 0.25  # every tool well clear of the dough
        env.set_state(state)
        for action in pressing_actions(env, 3):  # moving towards the dough, reaching it in no case
            env.step(action)
        return env.grad().actions

    assert np.all(action_grad(contact_weight=0.0, tool_softness=0.0) == 0.0)  # the ablation: both remedies off
    assert np.all(action_grad(contact_weight=0.0) == 0.0)  # the default soft tools do not reach that far
    assert np.abs(action_grad()).max() > 0.0  # the default contact loss
    assert np.abs(action_grad(contact_weight=0.0, tool_softness=0.3)).max() > 0.0


def test_iou_metrics_are_reported():
    env = make_unwrapped("DiffEnvs/RollingPin-v0", **TINY_DOUGH)
    _, info = env.reset(seed=0)
    assert 0.0 < info["iou"] < 1.0
    _, _, _, _, info = env.step(np.array([0.5, 0.0, -1.0]))
    assert 0.0 <= info["iou"] <= 1.0 and 0.0 <= info["iou_incremental"] <= 1.0
    # A state that is the target itself scores IoU 1 and loss 0.
    state = env.get_state()
    state["particle_x"] = state["target_x"]
    env.set_state(state)
    assert env.loss == pytest.approx(0.0, abs=1e-5)
    assert env.task.iou_of(env.batch.initial_state_arrays())[0] == 1.0


def test_exploding_state_diverges_and_ends_the_episode():
    env = make_unwrapped("DiffEnvs/Shape-v0", **TINY_DOUGH)
    obs, _ = env.reset(seed=0)
    state = env.get_state()
    state["particle_v"][0] = [0.0, 1e30, 0.0]  # leaves the domain (and overflows) within one step
    obs = env.set_state(state)
    next_obs, reward, terminated, _, info = env.step(np.zeros(3))
    assert terminated and info["diverged"] and reward == 0.0
    np.testing.assert_array_equal(next_obs, obs)


def test_presets_and_bad_options():
    from diffenvs.config import ConfigError

    env = make_unwrapped("DiffEnvs/RollingPin-v0", preset="paper", differentiable=False)
    assert (env.task.grid_res, env.task.particle_count, env.task.sim_substeps) == (64, 10000, 19)
    assert env.dt == pytest.approx(1.9e-3)
    with pytest.raises(ConfigError, match="preset"):
        make_unwrapped("DiffEnvs/RollingPin-v0", preset="huge")
    with pytest.raises(ConfigError, match="grid_res"):
        make_unwrapped("DiffEnvs/Move-v0", grid_res=8)
    with pytest.raises(ConfigError, match="obs_particle_count"):
        make_unwrapped("DiffEnvs/Shape-v0", particle_count=10, obs_particle_count=20)
    with pytest.raises(ConfigError, match=r"return_mapping: 'eig' is not one of \['svd', 'series'\]"):
        make_unwrapped("DiffEnvs/Move-v0", return_mapping="eig")


def test_series_return_mapping_follows_the_svd_trajectory_and_gradient():
    """The two return mappings are one map: squeezing the dough until it yields, the states, losses and
    gradients agree to float32 rounding (the series is the more accurate of the two)."""
    results = {}
    for mapping in ("svd", "series"):
        env = make_unwrapped("DiffEnvs/Move-v0", **SMALL["DiffEnvs/Move-v0"], return_mapping=mapping)
        env.reset(seed=1)
        for a in pressing_actions(env, 6):
            env.step(a)
        F = env.get_state()["particle_F"]
        results[mapping] = (F, env.loss, env.grad().actions)
    (F_svd, loss_svd, grad_svd), (F_series, loss_series, grad_series) = results["svd"], results["series"]
    assert np.abs(F_svd - np.eye(3)).max() > 0.02  # it did squeeze
    assert not np.array_equal(F_svd, F_series) and np.abs(F_svd - F_series).max() < 1e-4
    assert loss_series == pytest.approx(loss_svd, rel=1e-4)
    assert np.sum(grad_svd * grad_series) / (np.linalg.norm(grad_svd) * np.linalg.norm(grad_series)) > 0.999


@pytest.mark.parametrize("env_id", DOUGH_IDS)
def test_targets_are_reachable_particle_sets(env_id):
    """Each target is the dough's own particles moved into place: reaching it zeroes the density term."""
    env = make_unwrapped(env_id, **SMALL[env_id])
    env.reset(seed=3)
    state = env.get_state()
    start = env.loss
    state["particle_x"] = state["target_x"]
    env.set_state(state)
    assert env.loss < min(0.1 * start, 0.01) and env.task.iou_of(env.batch.initial_state_arrays())[0] == 1.0


def test_shape_target_is_a_pressed_pit():
    env = make_unwrapped("DiffEnvs/Shape-v0", **{**TINY_DOUGH, "particle_count": 400})
    env.reset(seed=3)
    state = env.get_state()
    radius, height, _ = state["carve_size"]
    assert radius == pytest.approx(0.04) and height > 0.025
    # No target particle is left inside the volume the sphere swept (beyond the grid's blur).
    q = state["target_x"] - state["carve_base"]
    h = np.clip(q[:, 1], 0.0, height)
    depth_inside = radius - np.linalg.norm(q - np.stack([np.zeros_like(h), h, np.zeros_like(h)], axis=1), axis=1)
    assert depth_inside.max() < 0.5 * env.task.model.dx
    # and the dough in the pit region at the start is what the pit moved away
    q0 = state["particle_x"] - state["carve_base"]
    h0 = np.clip(q0[:, 1], 0.0, height)
    assert (np.linalg.norm(q0 - np.stack([np.zeros_like(h0), h0, np.zeros_like(h0)], axis=1), axis=1) < radius).sum() > 3
    # Same seed, same target: the scripted press is deterministic.
    env.reset(seed=3)
    np.testing.assert_array_equal(env.get_state()["target_x"], state["target_x"])


def test_loss_objective_gradient_matches_finite_differences():
    env = make_unwrapped("DiffEnvs/RollingPin-v0", **TINY_DOUGH, tool_softness=0.02)
    env.reset(seed=4)
    state = env.get_state()
    actions = pressing_actions(env, 10)  # long enough for the pin to reach the dough
    rollout(env, state, actions)
    g = env.grad("loss")
    assert g.value == pytest.approx(env.loss)
    assert np.abs(g.actions).max() > 0
    direction = g.actions / np.linalg.norm(g.actions)

    def final_loss(a):
        rollout(env, state, a)
        return env.loss

    eps = 0.05
    fd = (final_loss(actions + eps * direction) - final_loss(actions - eps * direction)) / (2 * eps)
    assert np.sum(g.actions * direction) == pytest.approx(fd, rel=0.1)


def test_contact_focus_draws_the_tool_to_dough_out_of_place():
    """With contact_focus the contact loss is lower above the pit's place than as far above dough that is in place."""
    env = make_unwrapped("DiffEnvs/Shape-v0", **{**TINY_DOUGH, "particle_count": 400}, contact_weight=1.0)
    env.reset(seed=3)
    state = env.get_state()
    top = state["particle_x"][:, 1].max()
    pit = state["carve_base"][[0, 2]]
    centre = state["particle_x"].mean(axis=0)[[0, 2]]
    elsewhere = centre - (pit - centre)  # as far from the centre, on the other side

    def contact(xz, focus):
        env.set_remedies(contact_focus=float(focus))
        placed = {**state, "tool_pos": np.array([[xz[0], top + 0.06, xz[1]]])}
        env.set_state(placed)
        return env.step(np.zeros(3))[4]["reward_contact"]

    assert contact(pit, True) > contact(elsewhere, True) + 1e-4
    assert abs(contact(pit, False) - contact(elsewhere, False)) < 0.2 * abs(contact(pit, False))
    assert env.remedies["contact_focus"] == 0.0


@pytest.mark.parametrize("checkpoint", [True, False])
def test_progress_reward_reads_the_previous_steps_loss(checkpoint):
    """A step reuses the loss its predecessor computed for its start state: the progress term must
    equal the loss decrease, at the first step (computed afresh), later steps and after a reset."""
    env = make_unwrapped("DiffEnvs/Move-v0", **TINY_DOUGH, checkpoint=checkpoint)
    weight = env.task.config.progress_weight
    for seed in (3, 4):  # the second reset starts a new episode from a new state
        _, info = env.reset(seed=seed)
        before = info["loss"]
        for action in pressing_actions(env, 3):
            _, _, _, _, info = env.step(action)
            assert info["reward_progress"] == pytest.approx(weight * (before - info["loss"]), rel=1e-6, abs=1e-12)
            before = info["loss"]


@pytest.mark.parametrize("env_id", DOUGH_IDS)
def test_step_loss_over_the_active_box_equals_the_whole_grid_loss(env_id):
    """A step takes the density loss over the blocks of its active region and the target's box only."""
    import warp as wp

    env = make_unwrapped(env_id, **SMALL[env_id])
    env.reset(seed=5)
    for action in pressing_actions(env, 3):
        _, _, _, _, info = env.step(action)
    whole = wp.zeros(1, dtype=wp.float64)
    env.task.loss_of(env.batch.trajectory.state(), whole)  # every block
    state = env.task._mpm_state(env.batch.trajectory.state())
    _, blocks = env.task._density_blocks(env.task.solver.active_region(state, 0.0))
    assert np.prod(blocks) < (env.task.grid_res // env.task.config.density_block) ** 3  # a real sub-box
    assert info["loss"] == pytest.approx(whole.numpy()[0], rel=1e-6)


@pytest.mark.parametrize("env_id", DOUGH_IDS)
def test_batched_resets_equal_one_world_resets(env_id):
    """A vector env's reset runs every world's settling and demonstration in one batched rollout
    (each world stopping after its own script): the states equal one-world resets exactly; a
    demonstrator smaller than the batch runs it in chunks, with the same results."""
    vec = gym.make_vec(env_id, num_envs=5, vectorization_mode="vector_entry_point", **SMALL[env_id])
    vec.reset(seed=21)
    batched = vec.unwrapped.get_state()
    single = make_unwrapped(env_id, **SMALL[env_id])
    for w in range(5):
        single.reset(seed=21 + w)
        for name, value in single.get_state().items():
            np.testing.assert_array_equal(batched[name][w], value, err_msg=f"{name} of world {w}")
    rng = np.random.default_rng(0)
    starts = []
    for length in (4, 0, 7):
        state = single.task.sample_state(np.random.default_rng(length))
        fields = {name: state[name] for name in ("particle_x", "particle_v", "particle_C", "particle_F")}
        starts.append((fields, state["tool_pos"], state["tool_rot"], rng.uniform(-1, 1, size=(length, single.task.action_dim))))
    pair = gym.make_vec(env_id, num_envs=2, vectorization_mode="vector_entry_point", **SMALL[env_id]).unwrapped.task
    chunked, alone = pair.demonstrate_many(starts), single.task.demonstrate_many(starts)  # chunks of 2 + 1; of 1 each
    assert set(pair._demonstrators) == {2} and set(single.task._demonstrators) == {1}
    np.testing.assert_array_equal(chunked[1]["particle_x"], starts[1][0]["particle_x"].astype(np.float32))  # no actions: unchanged
    assert np.abs(chunked[2]["particle_x"] - starts[2][0]["particle_x"]).max() > 1e-4  # moved
    for a, b in zip(chunked, alone):
        np.testing.assert_allclose(a["particle_x"], b["particle_x"], rtol=0, atol=1e-6)
