"""diffenvs: differentiable Gymnasium environments whose physics runs as NVIDIA Warp kernels.

Importing the package registers every environment with Gymnasium (no Warp device is touched
until an environment is built)::

    import gymnasium as gym
    import diffenvs

    env = gym.make("DiffEnvs/Pusher-v0")
"""

from __future__ import annotations

from diffenvs.registration import ENVS, register_envs

__version__ = "0.1.0"

register_envs()

__all__ = ["ENVS", "__version__", "register_envs"]
