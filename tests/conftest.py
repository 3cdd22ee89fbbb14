"""Shared fixtures and helpers of the test suite."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import warp as wp

import diffenvs
from diffenvs.registration import TINY_DOUGH  # noqa: F401  (re-exported to the tests)

wp.config.log_level = 30  # warnings and errors only (no init banner, no module-load lines)

ENV_IDS = [info.id for info in diffenvs.ENVS if info.variant_of is None]  # a variant registers a task again
DOUGH_IDS = [info.id for info in diffenvs.ENVS if info.entry_point.startswith("diffenvs.tasks.dough:") and info.variant_of is None]

SMALL = {info.id: info.small_kwargs for info in diffenvs.ENVS}
"""Per id, the registry's options of a tiny instance (empty where the default is small already)."""


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


@pytest.fixture(scope="session", autouse=True)
def sb3_log_dir(tmp_path_factory):
    """stable-baselines3's default logger makes a ``SB3-<date>`` folder in the system temp dir on every
    ``learn()`` (the tests that train SB3 models directly, as a user would, and rl-zoo3's subprocess):
    keep them in pytest's temp dir instead."""
    import os

    previous = os.environ.get("SB3_LOGDIR")
    os.environ["SB3_LOGDIR"] = str(tmp_path_factory.mktemp("sb3-logs"))
    yield
    if previous is None:
        os.environ.pop("SB3_LOGDIR", None)
    else:
        os.environ["SB3_LOGDIR"] = previous


@pytest.fixture
def cuda_device():
    if not wp.is_cuda_available():
        pytest.skip("needs a CUDA device")
    return "cuda"
