"""Presets and options of the dough tasks."""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

import numpy as np

from diffenvs.sim.mpm import MPMMaterial, MPMModel

PRESETS: dict[str, dict[str, Any]] = {
    # Fast enough for CPU use and RL: a 32^3 grid and 1,000 particles. A recorded step is small
    # (see the README's memory figures), so gradients record every substep by default.
    "default": {"grid_res": 32, "particle_count": 1000, "sim_substeps": 10, "frame_dt": 2.0e-3, "checkpoint": False},
    # PlasticineLab's RollingPin scale: 64^3 grid, 10,000 particles, 19 substeps of 1e-4 s. A
    # recorded step is about ten times a checkpointed one, at about the same gradient speed.
    "paper": {"grid_res": 64, "particle_count": 10000, "sim_substeps": 19, "frame_dt": 1.9e-3, "checkpoint": True},
}
"""Named problem sizes: ``grid_res``, ``particle_count``, ``sim_substeps``, ``frame_dt`` [s] and
whether a differentiable env checkpoints by default (``checkpoint``)."""

BLOB_HALF = np.array([0.15, 0.05, 0.15])
"""Half extents of the dough's starting box: PlasticineLab's 0.3 x 0.1 x 0.3 [domain units]."""


@dataclasses.dataclass(frozen=True)
class DoughConfig:
    """Options of the dough tasks (keyword arguments of ``gym.make``).

    Attributes:
        preset: ``"default"`` (32^3 grid, 1,000 particles, 10 substeps of 0.2 ms) or ``"paper"``
            (64^3, 10,000 particles, 19 substeps of 0.1 ms, PlasticineLab's scale).
        grid_res: Grid cells per axis (overrides the preset).
        particle_count: Dough particles (overrides the preset).
        sim_substeps: Solver substeps per env step (overrides the preset).
        frame_dt: Duration of one env step [s] (overrides the preset).
        tool_speed: Tool speed at action magnitude 1 [domain units/s].
        tool_yaw_rate: Yaw rate of a rolling pin at action magnitude 1 [rad/s].
        tool_softness: Influence radius of the tools [domain units]; 0 is hard contact (the
            ablation). ``None``: the task's default (RollingPin and Move 0.02, Shape 0.01: soft
            tools give a plain gradient method a first step that works; the demonstrations that
            make targets always use hard tools).
        tool_friction: Coulomb friction between tools and dough.
        progress_weight: Weight of the loss decrease in the reward.
        contact_weight: Weight of the contact loss (squared soft-min distance between each tool
            and the dough) in the reward: on by default so that a first gradient step from a
            tool that does not touch the dough is not exactly zero; 0 for the ablation.
        contact_temperature: Length scale of the soft minimum of the contact loss [domain units].
        contact_focus: Take the contact loss's soft minimum over the dough that lies outside the
            target (weighted by that distance, in units of ``contact_temperature``, up to 1)
            instead of all the dough: the tools are drawn to the dough that still has to move.
            ``None``: the task's default (on for Shape, whose press must first find its place).
        sdf_weight: Weight of the mean distance of the particles outside the target [1/unit].
        density_weight: Weight of the L1 grid-mass difference, relative to the total mass.
        density_block: The mass difference is taken over blocks of density_block^3 cells. A
            few particles per cell make grid mass noisy; blocks of 2^3 cells lower the loss's
            floor (two different samplings of the same shape) about threefold.
        youngs_modulus: Young's modulus of the dough [Pa].
        poisson_ratio: Poisson ratio of the dough.
        yield_stress: von Mises yield stress of the dough [Pa].
        ground_friction: Coulomb friction of the floor.
        return_mapping: How the plasticity's return mapping finds a yielding particle's Hencky
            strain: ``"series"`` (the default: matrix log and exp series near the identity, the SVD
            beyond) or ``"svd"`` (Warp's ``svd3``: the same mapping, about three times dearer per
            yielding particle and further from float64; the studies in ``results/`` ran with it
            and their configs pin it). See ``SolverMPM.Config``.
        obs_particle_count: Particles whose positions and velocities are observed.
        settle_steps: Env steps the fresh blob rests under gravity before an episode starts
            (its elastic bounce then no longer moves the loss); ``None``: the task's default
            (``Shape`` 30, whose pit is a small signal; the others 0).
        stages: Pieces of dough the tools handle in turn, one stage each (``Assembly``: 1-3; the
            other tasks have one stage); ``None``: 1. The episode length grows with it: pass
            ``max_episode_steps`` = stages x the id's to ``gym.make``.
    """

    preset: Literal["default", "paper"] = "default"
    grid_res: int | None = None
    particle_count: int | None = None
    sim_substeps: int | None = None
    frame_dt: float | None = None
    tool_speed: float = 3.0
    tool_yaw_rate: float = 10.0
    tool_softness: float | None = None
    tool_friction: float = 0.9
    progress_weight: float = 1.0
    contact_weight: float = 10.0
    contact_temperature: float = 0.01
    contact_focus: bool | None = None
    sdf_weight: float = 10.0
    density_weight: float = 10.0
    density_block: int = 2
    youngs_modulus: float = MPMMaterial.youngs_modulus
    poisson_ratio: float = MPMMaterial.poisson_ratio
    yield_stress: float = MPMMaterial.yield_stress
    ground_friction: float = MPMModel.ground_friction
    return_mapping: Literal["svd", "series"] = "series"
    obs_particle_count: int = 64
    settle_steps: int | None = None
    stages: int | None = None

    def __post_init__(self) -> None:
        for name in ("grid_res", "particle_count", "sim_substeps"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if self.grid_res is not None and self.grid_res < 16:
            raise ValueError(f"grid_res must be >= 16 to hold the dough, got {self.grid_res}")
        if self.density_block < 1 or self.resolved("grid_res") % self.density_block:
            raise ValueError(f"density_block {self.density_block} must be >= 1 and divide grid_res {self.resolved('grid_res')}")
        for name in ("tool_speed", "tool_yaw_rate", "contact_temperature"):
            if not getattr(self, name) > 0.0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.tool_softness is not None and not self.tool_softness >= 0.0:
            raise ValueError(f"tool_softness must be >= 0, got {self.tool_softness}")
        for name in ("tool_friction", "contact_weight", "sdf_weight", "density_weight"):
            if not getattr(self, name) >= 0.0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.stages is not None and self.stages < 1:
            raise ValueError(f"stages must be >= 1, got {self.stages}")
        if self.settle_steps is not None and self.settle_steps < 0:
            raise ValueError(f"settle_steps must be >= 0, got {self.settle_steps}")
        if not 1 <= self.obs_particle_count <= self.resolved("particle_count"):
            raise ValueError("obs_particle_count must lie in [1, particle_count]")

    def resolved(self, name: str) -> Any:
        """The value of a preset-backed option: the explicit one, else the preset's."""
        value = getattr(self, name)
        return PRESETS[self.preset][name] if value is None else value

