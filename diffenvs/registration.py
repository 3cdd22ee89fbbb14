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
        small_kwargs: Options of a tiny instance of the env (few particles, few substeps) for
            tests and quick checks, e.g. the registry-wide finite-difference test.
        fd_rtol: Relative difference at which ``grad()`` and central differences count as
            agreeing (``diffenvs gradcheck``): the simulation's float precision decides it.
        variant_of: The id this one registers with other ``kwargs`` (as Gymnasium's
            ``FrozenLake8x8``), or None; the registry-wide tests check each task once, on its
            first id.
    """

    id: str
    entry_point: str
    vector_entry_point: str
    max_episode_steps: int
    summary: str
    kwargs: dict = dataclasses.field(default_factory=dict)
    small_kwargs: dict = dataclasses.field(default_factory=dict)
    fd_rtol: float = 1e-4
    variant_of: str | None = None


TINY_DOUGH = {"grid_res": 24, "particle_count": 200, "sim_substeps": 4, "obs_particle_count": 8}
"""A tiny dough instance: a 24^3 grid (fine enough for the tools), 200 particles, 4 substeps."""


def _dough(task: str, summary: str, steps: int = 50, *, name: str | None = None, kwargs: dict | None = None,
           small: dict | None = None) -> EnvInfo:
    """A dough task: ``steps``-step episodes (50 unless the task needs more), float32 (``checkpoint``
    follows the preset); ``name`` and ``kwargs``: a variant of the task's id; ``small``: options added
    to :data:`TINY_DOUGH` for its tiny instance."""
    return EnvInfo(
        id=f"DiffEnvs/{name or task}-v0",
        entry_point=f"diffenvs.tasks.dough:{task}Env",
        vector_entry_point=f"diffenvs.tasks.dough:{task}VectorEnv",
        max_episode_steps=steps,
        summary=summary,
        kwargs=dict(kwargs or {}),
        small_kwargs={**TINY_DOUGH, **(small or {})},
        fd_rtol=5e-2,
        variant_of=f"DiffEnvs/{task}-v0" if name else None,
    )


ENVS: tuple[EnvInfo, ...] = (
    EnvInfo(
        id="DiffEnvs/Pusher-v0",
        entry_point="diffenvs.tasks.pusher:PusherEnv",
        vector_entry_point="diffenvs.tasks.pusher:PusherVectorEnv",
        max_episode_steps=100,
        summary="Planar round pusher moves a box to a target pose (rigid penalty contact, 2-D action).",
        fd_rtol=1e-4,
    ),
    _dough("RollingPin", "Flatten MPM dough into a target sheet with a rolling pin (3-D action)."),
    _dough("Move", "Carry MPM dough to a target place with two spheres (6-D action)."),
    _dough("Shape", "Press a pit of a given place and depth into MPM dough with a spherical tool tip (3-D action)."),
    _dough("Pinch", "Pinch a cube of MPM dough into a pattern of two dents with one sphere (3-D action, two stages)."),
    _dough("Writer", "Carve a stroke into a slab of MPM dough with a vertical capsule stylus (3-D action)."),
    _dough("TripleMove", "Carry three pieces of MPM dough to their own targets with three pairs of spheres (18-D action)."),
    *(_dough("TripleMove", f"TripleMove's {what} carried in turn by one pair of spheres (6-D action, {k} stage{'s' * (k > 1)}).",
             80 * k, name=f"TripleMove{k}", kwargs={"stages": k})
      for k, what in ((1, "first piece"), (2, "first two pieces"), (3, "three pieces"))),
    _dough("Torus", "Stamp a ring into a slab of MPM dough with a torus (3-D action)."),
    _dough("Rope", "Wind an MPM dough rope around a fixed pillar with two spheres (6-D action).", 60),
    _dough("Table", "Push one leg of an MPM dough table to a new place with a sphere (3-D action)."),
    _dough("Chopsticks", "Grip an MPM dough rope with capsule chopsticks and move it to a target pose (7-D action)."),
    _dough("Assembly", "Pick up an MPM dough ball with two spheres and place it on a block (6-D action, multi-stage).", 180,
           small={"tool_speed": 6.0}),  # half the steps of the demonstration that every reset runs
    _dough("Assembly", "Assembly with two balls, each onto its own block, in turn (6-D action, two stages).", 360,
           name="Assembly2", kwargs={"stages": 2}),
    _dough("Assembly", "Assembly with three balls, each onto its own block, in turn (6-D action, three stages).", 540,
           name="Assembly3", kwargs={"stages": 3}),
)


def env_info(env_id: str) -> EnvInfo:
    """The :class:`EnvInfo` of a registered id.

    Raises:
        ValueError: an id that is not one of diffenvs'.
    """
    for info in ENVS:
        if info.id == env_id:
            return info
    raise ValueError(f"{env_id!r} is not a diffenvs id; the ids are {[info.id for info in ENVS]}")


def task_name(env_id: str) -> str:
    """The task of an env id as Gymnasium's registry parses it: ``DiffEnvs/RollingPin-v0`` -> ``RollingPin``.

    Names run directories, report sections and tuning folders; every caller uses this one rule.

    Raises:
        ValueError: a string that is not an env id.
    """
    from gymnasium.envs.registration import parse_env_id
    from gymnasium.error import Error

    try:
        return parse_env_id(env_id)[1]
    except Error as error:
        raise ValueError(f"{env_id!r} is not an env id ({error})") from None


def metric_name(env_id: str) -> str:
    """The ``info`` key of a diffenvs id's task metric (its task class's ``metric``), without building an env."""
    from gymnasium.envs.registration import load_env_creator

    return load_env_creator(env_info(env_id).entry_point).task_class.metric


def stages_axis(env_id: str, env_kwargs: dict | None = None) -> tuple[str, int] | None:
    """An id's place on the stages axis: its family and how many pieces its tools handle in turn.

    ``env_kwargs`` (a study's options for the id) override the registry's. ``None`` for an id whose
    task has no ``stages`` option, and for TripleMove without one (three pairs acting at once is
    not one stage). ``DiffEnvs/Assembly-v0`` -> ``("Assembly", 1)``, ``Assembly3-v0`` -> ``("Assembly", 3)``.
    """
    from gymnasium.envs.registration import load_env_creator

    task_class = load_env_creator(env_info(env_id).entry_point).task_class
    if getattr(task_class, "max_stages", 1) == 1:  # the task has no ``stages`` option
        return None
    option = {**env_info(env_id).kwargs, **(env_kwargs or {})}.get("stages")
    stages = getattr(task_class, "stages_default", 1) if option is None else option  # a task's ``stages_default``: without the option
    return None if stages is None else (task_class.__name__.removesuffix("Task"), stages)


def register_envs() -> None:
    """Register every env of :data:`ENVS` (idempotent)."""
    for info in ENVS:
        if info.id in gym.registry:
            continue
        gym.register(
            id=info.id, entry_point=info.entry_point, vector_entry_point=info.vector_entry_point,
            max_episode_steps=info.max_episode_steps, kwargs=dict(info.kwargs),
        )
