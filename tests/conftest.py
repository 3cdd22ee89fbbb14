"""Shared fixtures and helpers of the test suite."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import warp as wp

import diffenvs

wp.config.log_level = 30  # warnings and errors only (no init banner, no module-load lines)

ENV_IDS = [info.id for info in diffenvs.ENVS]
DOUGH_IDS = [env_id for env_id in ENV_IDS if env_id != "DiffEnvs/Pusher-v0"]

# A tiny dough configuration for gradient tests: 24^3 grid (fine enough for the tools), 200 particles, 4 substeps.
TINY_DOUGH = {"grid_res": 24, "particle_count": 200, "sim_substeps": 4, "obs_particle_count": 8}
SMALL = {env_id: TINY_DOUGH for env_id in DOUGH_IDS}


def make_unwrapped(env_id: str, **kwargs):
    """The bare env behind ``gym.make`` (no wrappers)."""
    return gym.make(env_id, **kwargs).unwrapped


def replay(env, state: dict[str, np.ndarray], actions: np.ndarray, objective: str = "return") -> float:
    """Objective of replaying ``actions`` from ``state`` with ``env`` (no gradient involved)."""
    env.set_state(state)
    total = 0.0
    info = {}
    for action in actions:
        _, reward, terminated, _, info = env.step(action)
        assert not terminated, "replay diverged"
        total += reward
    return total if objective == "return" else info["loss"]


@pytest.fixture
def cuda_device():
    if not wp.is_cuda_available():
        pytest.skip("needs a CUDA device")
    return "cuda"
