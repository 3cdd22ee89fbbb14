"""Registration of the diffenvs environments with Gymnasium."""

from __future__ import annotations

import dataclasses

import gymnasium as gym


@dataclasses.dataclass(frozen=True)
class EnvInfo:
    """One registered environment.

    Attributes:
        id: Gymnasium id, ``DiffEnvs/<Task>-v<N>``.
        entry_point: ``module:Class`` of the single env.
        max_episode_steps: Truncation horizon applied by ``gym.make``.
        summary: One-line description (``diffenvs list``).
    """

    id: str
    entry_point: str
    max_episode_steps: int
    summary: str


ENVS: tuple[EnvInfo, ...] = (
    EnvInfo(
        id="DiffEnvs/Pusher-v0",
        entry_point="diffenvs.tasks.pusher:PusherEnv",
        max_episode_steps=100,
        summary="Planar round pusher moves a box to a target pose (rigid penalty contact, 2-D action).",
    ),
)


def register_envs() -> None:
    """Register every env of :data:`ENVS` (idempotent)."""
    for info in ENVS:
        if info.id in gym.registry:
            continue
        gym.register(id=info.id, entry_point=info.entry_point, max_episode_steps=info.max_episode_steps)
