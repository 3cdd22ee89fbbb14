"""Pusher: push a box across a table to a target pose with a round pusher.

:mod:`~diffenvs.tasks.pusher.task` holds the task (options, scene, sampler),
:mod:`~diffenvs.tasks.pusher.kernels` its objective's kernels and
:mod:`~diffenvs.tasks.pusher.envs` the Gymnasium envs with their documentation.
"""

from diffenvs.tasks.pusher.envs import PusherEnv, PusherVectorEnv
from diffenvs.tasks.pusher.task import PusherConfig, PusherStepBuffers, PusherTask

__all__ = ["PusherConfig", "PusherEnv", "PusherStepBuffers", "PusherTask", "PusherVectorEnv"]
