"""Contact-point discovery: the transport, the placements, and the remedy inside Adam."""

from __future__ import annotations

import numpy as np
import pytest

from diffenvs.baselines.contact_discovery import _extent, approach_actions, placements, sinkhorn_images
from diffenvs.baselines.problem import Problem, ProblemConfig
from diffenvs.baselines.solver_config import GradientConfig, SolverConfig
from diffenvs.baselines.trajopt import optimize
from tests.conftest import SMALL, make_unwrapped


def test_sinkhorn_images_recover_a_shift_of_shuffled_points():
    rng = np.random.default_rng(0)
    x = rng.uniform(size=(400, 3)) * [0.3, 0.1, 0.3]
    shift = np.array([0.08, 0.0, -0.05])
    images = sinkhorn_images(x, x[rng.permutation(len(x))] + shift)
    assert np.abs(images - x - shift).mean() < 0.005 and np.abs(images - x - shift).max() < 0.03


@pytest.mark.parametrize("env_id", ["DiffEnvs/Move-v0", "DiffEnvs/Table-v0"])
def test_placements_are_clear_of_the_dough_and_behind_what_must_move(env_id):
    env = make_unwrapped(env_id, **SMALL[env_id])
    env.reset(seed=0)
    state = env.get_state()
    task = env.task
    places = placements(task, state)
    assert places.shape == (task.driven_tools, 3)
    for t, place in enumerate(places):
        reach = min(_extent(task.tool_shapes[t], state["tool_rot"][t], d) for d in np.eye(3))
        assert np.min(np.linalg.norm(state["particle_x"] - place, axis=1)) >= reach - 0.01
    actions = approach_actions(task, state, places, 20)
    assert actions.shape == (20, task.action_dim) and np.all(np.abs(actions) <= 1.0)
    assert not np.any(actions[10:]) and np.any(actions[:10])  # at most half the stage, then the gradient's


def test_adam_with_contact_discovery_places_each_stage_and_counts_its_executions():
    env_id = "DiffEnvs/Move-v0"
    problem = Problem(ProblemConfig(env_id=env_id, seed=0, horizon=8, env_kwargs=SMALL[env_id]))
    records = []
    config = SolverConfig(method="adam", iters=4, gradient=GradientConfig(contact_discovery=True, discovery_stages=2))
    result = optimize(problem, config, callback=lambda record, best: records.append(record))
    assert len(records) == 4
    # 4 iterations of a forward and a backward 8-step rollout, and one 4-step execution to the second stage
    assert result.budget["forward_steps"] + result.budget["backward_steps"] == 4 * 2 * 8
    assert result.budget["eval_steps"] == 4
    baseline = optimize(problem, SolverConfig(method="adam", iters=4))
    assert not np.array_equal(result.actions, baseline.actions)
    with pytest.raises(ValueError, match="contact_discovery: DiffEnvs/RollingPin-v0.s actions do not translate its tools"):
        rolling = Problem(ProblemConfig(env_id="DiffEnvs/RollingPin-v0", horizon=4, env_kwargs=SMALL["DiffEnvs/RollingPin-v0"]))
        optimize(rolling, config)
    with pytest.raises(ValueError, match="discovery_stages must be >= 1"):
        GradientConfig(contact_discovery=True, discovery_stages=0)


def test_a_lift_places_two_tools_on_either_side_of_the_piece():
    env = make_unwrapped("DiffEnvs/Assembly-v0", **SMALL["DiffEnvs/Assembly-v0"])
    env.reset(seed=0)
    state = env.get_state()
    x = state["particle_x"]
    ball = x[x[:, 0] < (x[:, 0].min() + x[:, 0].max()) / 2]
    places = placements(env.task, state)
    sides = np.sign(places[:, 2] - ball[:, 2].mean())
    assert sorted(sides) == [-1.0, 1.0]  # across the ball's way to its block (along x)
    assert np.all(np.abs(places[:, 0] - ball[:, 0].mean()) < 0.05)
