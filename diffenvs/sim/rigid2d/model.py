"""Static description of the planar pusher/box scene."""

from __future__ import annotations

import dataclasses
import math


@dataclasses.dataclass(frozen=True)
class Rigid2DModel:
    """Physical constants of a round kinematic pusher and a free box on a table.

    The box is a rounded rectangle: an inner rectangle of half extents ``box_half_extents``
    minus ``box_corner_radius`` on each side, swept by a disk of ``box_corner_radius``. Its
    outer half extents are therefore exactly ``box_half_extents``; the rounding keeps the
    contact normal continuous around the corners.

    Attributes:
        box_half_extents: Half width and half height of the box [m].
        box_corner_radius: Radius of the rounded corners [m].
        box_mass: Mass of the box [kg].
        pusher_radius: Radius of the round pusher [m].
        table_friction: Coulomb friction coefficient between box and table [-].
        contact_friction: Coulomb friction coefficient between pusher and box [-].
        gravity: Gravitational acceleration, pressing the box onto the table [m/s^2].
    """

    box_half_extents: tuple[float, float] = (0.06, 0.04)
    box_corner_radius: float = 0.01
    box_mass: float = 0.5
    pusher_radius: float = 0.02
    table_friction: float = 0.4
    contact_friction: float = 0.3
    gravity: float = 9.81

    def __post_init__(self) -> None:
        hx, hy = self.box_half_extents
        if min(hx, hy) <= 0.0 or not 0.0 <= self.box_corner_radius < min(hx, hy):
            raise ValueError(
                f"box_half_extents {self.box_half_extents} must be positive and larger than "
                f"box_corner_radius {self.box_corner_radius}"
            )
        for name in ("box_mass", "pusher_radius", "gravity"):
            if not getattr(self, name) > 0.0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        for name in ("table_friction", "contact_friction"):
            if not getattr(self, name) >= 0.0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")

    @property
    def box_inertia(self) -> float:
        """Moment of inertia of the box about its centre, as a solid rectangle [kg m^2]."""
        hx, hy = self.box_half_extents
        return self.box_mass * (hx * hx + hy * hy) / 3.0

    @property
    def box_friction_radius(self) -> float:
        """Radius of the disk of equal area; the table's friction torque is that of this disk [m].

        A uniformly loaded disk of radius R resists spinning with a torque (2/3) mu m g R.
        """
        hx, hy = self.box_half_extents
        return (2.0 / 3.0) * math.sqrt(4.0 * hx * hy / math.pi)
