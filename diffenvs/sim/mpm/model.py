"""Static description of an MPM scene: domain, grid, material, particles and tool shapes.

Units follow PlasticineLab's conventions: lengths in domain units (the domain is the cube
``[0, domain_size]^3``), time in seconds, stresses in Pa for a material of the given density.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

TOOL_TYPES = {"sphere": 0, "capsule": 1, "box": 2, "torus": 3}


@dataclasses.dataclass(frozen=True)
class MPMMaterial:
    """Elastoplastic material (plasticine-like).

    Attributes:
        youngs_modulus: Young's modulus E [Pa].
        poisson_ratio: Poisson ratio nu [-], in [0, 0.5).
        yield_stress: von Mises yield stress on the Hencky strain [Pa].
        density: Mass density [kg / domain unit^3].
    """

    youngs_modulus: float = 5000.0
    poisson_ratio: float = 0.2
    yield_stress: float = 50.0
    density: float = 1.0

    def __post_init__(self) -> None:
        if not self.youngs_modulus > 0.0:
            raise ValueError(f"youngs_modulus must be > 0, got {self.youngs_modulus}")
        if not 0.0 <= self.poisson_ratio < 0.5:
            raise ValueError(f"poisson_ratio must lie in [0, 0.5), got {self.poisson_ratio}")
        if not self.yield_stress > 0.0 or not self.density > 0.0:
            raise ValueError("yield_stress and density must be > 0")

    @property
    def mu(self) -> float:
        """First Lame parameter's partner, the shear modulus [Pa]."""
        return self.youngs_modulus / (2.0 * (1.0 + self.poisson_ratio))

    @property
    def lam(self) -> float:
        """Lame's first parameter [Pa]."""
        e, nu = self.youngs_modulus, self.poisson_ratio
        return e * nu / ((1.0 + nu) * (1.0 - 2.0 * nu))


@dataclasses.dataclass(frozen=True)
class ToolShape:
    """A rigid tool described by a signed distance function in its own frame.

    Attributes:
        kind: ``"sphere"`` (size[0] = radius), ``"capsule"`` (size[0] = radius, size[1] = half
            length along the tool's local x axis), ``"box"`` (size = half extents), or ``"torus"``
            (size[0] = radius of the ring about the local y axis, size[1] = radius of the tube).
        size: Shape parameters [domain units], see ``kind``.
        friction: Coulomb friction coefficient between tool and dough.
        softness: Influence radius [domain units]. 0: hard contact (only grid nodes inside the
            tool are affected). > 0: nodes within this distance of the surface are blended
            towards the tool's velocity with a weight falling linearly from 1 to 0, so the tool
            acts on (and gets gradients from) dough it does not quite touch.
    """

    kind: Literal["sphere", "capsule", "box", "torus"]
    size: tuple[float, float, float]
    friction: float = 0.9
    softness: float = 0.0

    def __post_init__(self) -> None:
        if self.kind not in TOOL_TYPES:
            raise ValueError(f"tool kind must be one of {sorted(TOOL_TYPES)}, got {self.kind!r}")
        used = {"sphere": 1, "capsule": 2, "torus": 2}.get(self.kind, 3)
        if len(self.size) != 3 or min(self.size[:used]) <= 0 or (self.kind == "torus" and self.size[1] >= self.size[0]):
            raise ValueError(f"tool size {self.size} is invalid for a {self.kind}")
        if self.friction < 0.0 or self.softness < 0.0:
            raise ValueError("tool friction and softness must be >= 0")


@dataclasses.dataclass(frozen=True)
class MPMModel:
    """Grid, material and tools of an MPM scene.

    Attributes:
        grid_res: Cells per axis of the background grid.
        domain_size: Edge length of the cubic domain [domain units].
        material: The dough's material.
        tools: Rigid tools, in the order of the tool arrays.
        gravity: Gravity vector [domain units / s^2] (PlasticineLab: 30 downwards).
        ground_friction: Coulomb friction of the floor.
        boundary_cells: Cells at each wall inside which the walls act.
        particle_volume: Rest volume of one particle [domain units^3]; ``None``: 8 particles
            per cell, (dx/2)^3. Set it to the body's volume divided by its particle count.
    """

    grid_res: int = 32
    domain_size: float = 1.0
    material: MPMMaterial = MPMMaterial()
    tools: tuple[ToolShape, ...] = ()
    gravity: tuple[float, float, float] = (0.0, -30.0, 0.0)
    ground_friction: float = 1.5
    boundary_cells: int = 3
    particle_volume: float | None = None

    def __post_init__(self) -> None:
        if self.grid_res < 2 * self.boundary_cells + 3:
            raise ValueError(f"grid_res {self.grid_res} is too small for {self.boundary_cells} boundary cells")
        if not self.domain_size > 0.0:
            raise ValueError(f"domain_size must be > 0, got {self.domain_size}")
        if self.particle_volume is not None and not self.particle_volume > 0.0:
            raise ValueError(f"particle_volume must be > 0, got {self.particle_volume}")

    @property
    def dx(self) -> float:
        """Grid spacing [domain units]."""
        return self.domain_size / self.grid_res

    @property
    def rest_particle_volume(self) -> float:
        """Rest volume of a particle [domain units^3] (see ``particle_volume``)."""
        return (0.5 * self.dx) ** 3 if self.particle_volume is None else self.particle_volume

    @property
    def particle_mass(self) -> float:
        """Mass of a particle [kg]."""
        return self.rest_particle_volume * self.material.density

    @property
    def floor_height(self) -> float:
        """Height of the floor: the top of the bottom boundary cells [domain units]."""
        return self.boundary_cells * self.dx
