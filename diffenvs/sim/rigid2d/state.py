"""Time-varying arrays of the planar pusher/box scene, batched over worlds."""

from __future__ import annotations

import dataclasses

import warp as wp


@dataclasses.dataclass
class Rigid2DState:
    """State of ``world_count`` independent worlds (float64 throughout).

    Attributes:
        pusher_pos: Pusher centre, shape (world_count,), dtype vec2d [m].
        box_pose: Box centre and heading (x, y, theta), shape (world_count,), dtype vec3d [m, m, rad].
        box_vel: Box velocity (vx, vy, omega), shape (world_count,), dtype vec3d [m/s, m/s, rad/s].
    """

    pusher_pos: wp.array
    box_pose: wp.array
    box_vel: wp.array

    @classmethod
    def zeros(cls, world_count: int, *, device: wp.Device, requires_grad: bool) -> Rigid2DState:
        """Allocate a zero state for ``world_count`` worlds."""
        return cls(
            pusher_pos=wp.zeros(world_count, dtype=wp.vec2d, device=device, requires_grad=requires_grad),
            box_pose=wp.zeros(world_count, dtype=wp.vec3d, device=device, requires_grad=requires_grad),
            box_vel=wp.zeros(world_count, dtype=wp.vec3d, device=device, requires_grad=requires_grad),
        )


@dataclasses.dataclass
class Rigid2DControl:
    """Commands of ``world_count`` worlds.

    Attributes:
        pusher_vel: Commanded pusher velocity, shape (world_count,), dtype vec2d [m/s].
    """

    pusher_vel: wp.array

    @classmethod
    def zeros(cls, world_count: int, *, device: wp.Device, requires_grad: bool) -> Rigid2DControl:
        """Allocate a zero control for ``world_count`` worlds."""
        return cls(pusher_vel=wp.zeros(world_count, dtype=wp.vec2d, device=device, requires_grad=requires_grad))
