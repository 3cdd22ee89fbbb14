"""Captured and replayed steps (CUDA graphs; on the CPU a re-run stands in for the replay) equal
launched ones: rewards, observations and gradients, forward-only, recorded and checkpointed, across
episodes on the same buffers and after a change of remedies."""

from __future__ import annotations

import numpy as np
import pytest

from tests.conftest import ENV_IDS, SMALL, make_unwrapped

KINDS = ("forward", "recorded", "checkpointed")


def _episodes(env_id: str, kind: str, device: str, mode: str | None):
    env = make_unwrapped(env_id, device=device, differentiable=kind != "forward", checkpoint=kind == "checkpointed",
                         **SMALL[env_id])
    if hasattr(env.task, "solver") and hasattr(env.task.solver, "host_box"):
        env.task.solver.host_box = False  # CUDA's path: no host-side box (the replay needs it on the CPU)
    env.batch.trajectory.set_replay_mode(mode)
    replays = env.batch.trajectory.replays
    actions = np.random.default_rng(0).uniform(-1, 1, size=(4, 3, *env.action_space.shape))
    results = []
    for episode, chunk in enumerate(actions):
        env.reset(seed=episode)
        if episode == 3:  # the captured launches hold the old remedy values: they must be dropped
            name, value = next(iter(env.remedies.items()))
            env.set_remedies(**{name: value + 0.5})
        steps = [env.step(action) for action in chunk]
        rewards = np.array([s[1] for s in steps])
        obs = np.stack([s[0] for s in steps])
        grad = env.grad().actions if kind != "forward" else np.zeros(1)
        results.append((rewards, obs, grad))
    return results, replays


def _check(env_id: str, kind: str, device: str, mode: str) -> None:
    launched, _ = _episodes(env_id, kind, device, None)
    replayed, replays = _episodes(env_id, kind, device, mode)
    assert replays.captures > 0 and replays.replays > 0  # episode 1 captured, episode 2 replayed
    assert np.abs(launched[2][0]).max() > 0
    # The CPU is deterministic; on a GPU atomic adds sum in any order, so two launched runs differ
    # in float32 rounding too (the dough's rewards are differences of losses: ~1e-4 relative).
    exact = device == "cpu"
    for (r0, o0, g0), (r1, o1, g1) in zip(launched, replayed):
        np.testing.assert_allclose(r1, r0, rtol=1e-5 if exact else 2e-3, atol=1e-9 if exact else 1e-5)
        np.testing.assert_allclose(o1, o0, rtol=1e-5, atol=1e-6 if exact else 1e-4)
        if exact:
            np.testing.assert_allclose(g1, g0, rtol=1e-4, atol=1e-8 + 1e-4 * np.abs(g0).max())
        elif np.abs(g0).max() > 0:
            cosine = np.sum(g0 * g1) / (np.linalg.norm(g0) * np.linalg.norm(g1))
            assert cosine > 0.999 and np.linalg.norm(g1) == pytest.approx(np.linalg.norm(g0), rel=1e-2)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("env_id", ENV_IDS)
def test_rerun_replays_equal_launched_steps(env_id, kind):
    """On the CPU: the tape captured with a step serves the step's later replays."""
    _check(env_id, kind, "cpu", "rerun")


@pytest.mark.cuda
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("env_id", ENV_IDS)
def test_cuda_graph_replays_equal_launched_steps(cuda_device, env_id, kind):
    """On CUDA: steps, divergence checks, refills and backward passes replayed as CUDA graphs."""
    _check(env_id, kind, cuda_device, "graph")


def test_replay_modes_are_checked():
    import warp as wp

    from diffenvs.autodiff import Replays

    env = make_unwrapped(ENV_IDS[-1], **SMALL[ENV_IDS[-1]])
    if hasattr(env.task, "solver") and hasattr(env.task.solver, "host_box"):
        with pytest.raises(ValueError, match="host_box"):  # a host box makes the CPU's launches depend on the state
            env.batch.trajectory.set_replay_mode("rerun")
    with pytest.raises(ValueError, match="replay mode"):
        Replays(wp.get_device("cpu"), "sometimes")
    with pytest.raises(ValueError, match="CUDA"):
        Replays(wp.get_device("cpu"), "graph")
