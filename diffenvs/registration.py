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
        vector_entry_point: ``module:Class`` of the native vector env.
        max_episode_steps: Truncation horizon applied by ``gym.make``.
        summary: One-line description (``diffenvs list``).
        kwargs: Default keyword arguments of ``gym.make``.
    """

    id: str
    entry_point: str
    vector_entry_point: str
    max_episode_steps: int
    summary: str
    kwargs: dict = dataclasses.field(default_factory=dict)


def _dough(task: str, summary: str) -> EnvInfo:
    """A dough task: 50-step episodes (``checkpoint`` follows the preset: see ``tasks/dough.py``)."""
    return EnvInfo(
        id=f"DiffEnvs/{task}-v0",
        entry_point=f"diffenvs.tasks.dough:{task}Env",
        vector_entry_point=f"diffenvs.tasks.dough:{task}VectorEnv",
        max_episode_steps=50,
        summary=summary,
    )


ENVS: tuple[EnvInfo, ...] = (
    EnvInfo(
        id="DiffEnvs/Pusher-v0",
        entry_point="diffenvs.tasks.pusher:PusherEnv",
        vector_entry_point="diffenvs.tasks.pusher:PusherVectorEnv",
        max_episode_steps=100,
        summary="Planar round pusher moves a box to a target pose (rigid penalty contact, 2-D action).",
    ),
    _dough("RollingPin", "Flatten MPM dough into a target sheet with a rolling pin (3-D action)."),
    _dough("Move", "Carry MPM dough to a target place with two spheres (6-D action)."),
    _dough("Shape", "Press a pit of a given place and depth into MPM dough with a spherical tool tip (3-D action)."),
)


def register_envs() -> None:
    """Register every env of :data:`ENVS` (idempotent)."""
    for info in ENVS:
        if info.id in gym.registry:
            continue
        gym.register(
            id=info.id, entry_point=info.entry_point, vector_entry_point=info.vector_entry_point,
            max_episode_steps=info.max_episode_steps, kwargs=dict(info.kwargs),
        )
