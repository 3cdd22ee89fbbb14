"""The compound dough tasks: a fixed obstacle (Rope), pieces of several shapes (Table, Assembly and its
stages), coupled tools (Chopsticks), and the scenes and demonstrations that make their targets."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

import diffenvs
from diffenvs.tasks.dough import AssemblyTask, MoveTask, RopeTask, TableTask
from diffenvs.tasks.dough.targets import piece_volumes, sample_blob
from tests.conftest import SMALL, make_unwrapped


def test_pieces_share_the_particles_by_volume_and_balls_are_round():
    half = np.array([[0.05, 0.05, 0.05], [0.05, 0.05, 0.05], [0.02, 0.05, 0.02]])
    offsets = np.array([[-0.15, 0.0, 0.0], [0.0, 0.0, 0.0], [0.15, 0.0, 0.0]])
    volumes = piece_volumes(half, 3, (True, False, False))
    centre, fields = sample_blob(np.random.default_rng(0), 2000, dx=1 / 32, floor=0.1, half=half, offsets=offsets,
                                 balls=(True, False, False))
    x = fields["particle_x"]
    piece = np.argmin(np.abs(x[:, 0, None] - (centre[0] + offsets[:, 0])[None]), axis=1)
    np.testing.assert_allclose(np.bincount(piece) / 2000, volumes / volumes.sum(), atol=1e-3)
    ball_centre = np.array([centre[0] - 0.15, 0.1 + 0.05, centre[2]])
    assert np.linalg.norm(x[piece == 0] - ball_centre, axis=1).max() <= 0.05 + 1e-9
    assert np.all(x[:, 1] >= 0.1 - 1e-9)  # every piece rests on the floor


def test_the_pillar_stays_put_and_takes_no_part_in_the_contact_loss():
    env = make_unwrapped("DiffEnvs/Rope-v0", **SMALL["DiffEnvs/Rope-v0"])
    env.reset(seed=0)
    state = env.get_state()
    pillar = state["tool_pos"][2].copy()
    for _ in range(3):
        env.step(env.action_space.sample())
    np.testing.assert_array_equal(env.get_state()["tool_pos"][2], pillar)

    def contact_term(pillar_pos):
        moved = {key: value.copy() for key, value in state.items()}
        moved["tool_pos"][2] = pillar_pos
        env.set_state(moved)
        return env.step(np.zeros(6))[4]["reward_contact"]

    assert contact_term(pillar) == contact_term(pillar + [0.0, 0.3, 0.0])  # the pillar far above the dough


def test_the_rope_target_winds_around_the_pillar():
    task = RopeTask(1, device="cpu")
    state = task.sample_state(np.random.default_rng(0))
    pillar, x = state["tool_pos"][2], state["target_x"]
    beyond = x[:, 2] < pillar[2]  # past the pillar's centre, seen from where the rope started
    assert np.any(beyond & (x[:, 0] < pillar[0] - 0.05)) and np.any(beyond & (x[:, 0] > pillar[0] + 0.05))
    middle = np.abs(x[:, 0] - pillar[0]) < 0.03
    assert x[middle, 2].min() > pillar[2]  # the middle caught on the pillar


def test_the_table_target_moves_one_leg():
    task = TableTask(1, device="cpu")
    state = task.sample_state(np.random.default_rng(1))
    start, target = state["particle_x"], state["target_x"]
    legs = start[:, 1] < task.model.floor_height + 0.09
    quadrant = 2 * (start[:, 0] > np.median(start[:, 0])) + (start[:, 2] > np.median(start[:, 2]))
    moved = [np.linalg.norm(target[legs & (quadrant == q)] - start[legs & (quadrant == q)], axis=1).mean() for q in range(4)]
    assert max(moved) > 0.025 and sorted(moved)[-2] < 0.015


@pytest.mark.parametrize("stages", [1, 2])
def test_assembly_places_each_ball_on_its_block(stages):
    task = AssemblyTask(1, device="cpu", stages=stages)
    assert task.particle_count == 1000 * stages and len(task.blob_offsets) == 2 * stages
    state = task.sample_state(np.random.default_rng(0))
    start, target = state["particle_x"], state["target_x"]
    middle = (start[:, 0].min() + start[:, 0].max()) / 2
    for offset in task.blob_offsets[::2]:  # the balls
        ball = (start[:, 0] < middle) & (np.abs(start[:, 2] - (start[:, 2].min() + start[:, 2].max()) / 2 - offset[2]) < 0.08)
        rise = target[ball, 1].mean() - start[ball, 1].mean()
        shift = target[ball, 0].mean() - start[ball, 0].mean()
        assert 0.08 < rise < 0.13 and 0.15 < shift < 0.25  # on top of its block, 2 ball radii up, 0.2 across


def test_stages_are_checked_and_registered_as_variants():
    with pytest.raises(ValueError, match=r"stages must lie in \[1, 3\], got 4"):
        AssemblyTask(1, device="cpu", stages=4)
    with pytest.raises(ValueError, match=r"Move: stages must lie in \[1, 1\]"):
        MoveTask(1, device="cpu", stages=2)
    with pytest.raises(ValueError, match="stages must be >= 1"):
        AssemblyTask(1, device="cpu", stages=0)
    infos = {info.id: info for info in diffenvs.ENVS}
    for k in (2, 3):
        spec = gym.spec(f"DiffEnvs/Assembly{k}-v0")
        assert spec.kwargs == {"stages": k} and spec.max_episode_steps == 180 * k
        assert infos[spec.id].variant_of == "DiffEnvs/Assembly-v0"
    env = make_unwrapped("DiffEnvs/Assembly2-v0", **SMALL["DiffEnvs/Assembly-v0"])
    assert env.task.stages == 2 and env.task.particle_count == 200  # an explicit particle_count is the total


@pytest.mark.parametrize("stages", [1, 3])
def test_triplemove_in_turn_has_one_pair_for_its_pieces(stages):
    """TripleMove{k}-v0: k of the row's pieces (the preset's particles each), one pair of spheres (6-D
    action) starting either side of the first piece, each piece's target its own rigid shift across
    the row; TripleMove-v0 keeps its three pairs."""
    env = gym.make(f"DiffEnvs/TripleMove{stages}-v0", **SMALL["DiffEnvs/TripleMove-v0"])
    assert env.spec.max_episode_steps == 80 * stages and gym.spec(f"DiffEnvs/TripleMove{stages}-v0").kwargs == {"stages": stages}
    task = env.unwrapped.task
    assert env.action_space.shape == (6,) and task.tool_count == 2 and len(task.blob_offsets) == stages
    env.reset(seed=3)
    state = env.unwrapped.get_state()
    x, target, tools = state["particle_x"], state["target_x"], state["tool_pos"]
    first = x[:, 0] < x[:, 0].min() + 0.11
    assert tools[:, 0] == pytest.approx([x[first, 0].mean()] * 2, abs=0.01)  # beside the first piece, across the row
    assert tools[0, 2] < x[first, 2].min() and tools[1, 2] > x[first, 2].max()
    for i in range(stages):
        piece = np.abs(x[:, 0] - (x[:, 0].min() + 0.05 + 0.2 * i)) < 0.06
        shift = target[piece] - x[piece]
        np.testing.assert_allclose(shift, np.broadcast_to(shift[0], shift.shape), atol=1e-6)  # rigid
        assert 0.04 <= abs(shift[0, 2]) <= 0.1 and abs(shift[0, 0]) <= 0.02
    env.reset(seed=0)
    for _ in range(3):
        env.step(np.array([0.0, 0.0, 1.0, 0.0, 0.0, -1.0]))  # squeeze the first piece
    grads = env.unwrapped.grad().actions
    assert grads.shape == (3, 6) and np.all(np.isfinite(grads)) and np.abs(grads).max() > 0
    full = make_unwrapped("DiffEnvs/TripleMove-v0", **SMALL["DiffEnvs/TripleMove-v0"])
    assert full.action_space.shape == (18,) and full.task.tool_count == 6


def test_chopsticks_move_as_one_rigid_pair():
    env = make_unwrapped("DiffEnvs/Chopsticks-v0", **SMALL["DiffEnvs/Chopsticks-v0"])
    env.reset(seed=0)
    cfg, dt = env.task.config, env.task.frame_dt
    state = env.get_state()
    state["tool_pos"][:, 1] += 0.2  # clear of the dough
    env.set_state(state)
    start = env.get_state()["tool_pos"]
    for _ in range(5):
        env.step(np.array([0, 0, 0, 0, 1.0, 0, 0]))  # turn about the vertical
    turned = env.get_state()["tool_pos"]
    np.testing.assert_allclose(turned.mean(axis=0), start.mean(axis=0), atol=2e-4)
    np.testing.assert_allclose(np.linalg.norm(turned[1] - turned[0]), np.linalg.norm(start[1] - start[0]), rtol=1e-5)
    angle = lambda p: np.arctan2(p[1, 2] - p[0, 2], p[1, 0] - p[0, 0])
    assert abs(angle(start) - angle(turned)) == pytest.approx(5 * cfg.tool_yaw_rate * dt, rel=2e-2)
    env.step(np.array([0, 0, 0, 0, 0, 0, 1.0]))  # open
    opened = env.get_state()["tool_pos"]
    gap = np.linalg.norm(opened[1] - opened[0]) - np.linalg.norm(turned[1] - turned[0])
    assert gap == pytest.approx(env.task.gap_speed * cfg.tool_speed * dt, rel=1e-2)
