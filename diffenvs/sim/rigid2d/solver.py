"""Solver of the planar pusher/box scene."""

from __future__ import annotations

import dataclasses

import warp as wp

from diffenvs.sim.rigid2d.kernels import Rigid2DParams, integrate_pusher_box
from diffenvs.sim.rigid2d.model import Rigid2DModel
from diffenvs.sim.rigid2d.state import Rigid2DControl, Rigid2DState


class SolverRigid2D:
    """Penalty-contact solver for a kinematic round pusher and a free box on a table.

    Contact is a C1 penalty: zero force without overlap, a quadratic ramp over
    ``contact_softness``, then linear with ``contact_stiffness``; a damping term fades in
    with the overlap. Friction (pusher-box and box-table) is Coulomb friction regularised
    below ``friction_velocity``, so a resting box creeps at most at that speed under a load
    smaller than its static friction. Table friction is integrated linearly implicitly and is
    stable for any time step; the contact spring needs ``sim_dt < sqrt(box_mass /
    contact_stiffness)`` (16 ms with the defaults).

    The state is float64 so that gradients agree with finite differences to many digits.
    ``step`` writes ``state_out`` and never modifies ``state_in``, as Warp's tape requires.
    """

    @dataclasses.dataclass(frozen=True)
    class Config:
        """Numerical parameters of the solver.

        Attributes:
            contact_stiffness: Penalty stiffness of pusher-box contact [N/m].
            contact_damping: Normal damping once the overlap exceeds the softness [N s/m].
            contact_softness: Width of the quadratic part of the penalty [m]; larger is smoother.
            friction_velocity: Slip speed below which friction is regularised (viscous) [m/s].
            geometry_eps: Regularisation length of distances and normals [m].
        """

        contact_stiffness: float = 2000.0
        contact_damping: float = 20.0
        contact_softness: float = 0.002
        friction_velocity: float = 0.01
        geometry_eps: float = 1e-6

        def __post_init__(self) -> None:
            for field in dataclasses.fields(self):
                value = getattr(self, field.name)
                if not value > 0.0:
                    raise ValueError(f"SolverRigid2D.Config.{field.name} must be > 0, got {value}")

    def __init__(self, model: Rigid2DModel, config: Config | None = None):
        self.model = model
        self.config = config or SolverRigid2D.Config()
        f64 = wp.float64
        params = Rigid2DParams()
        hx, hy = model.box_half_extents
        params.box_inner = wp.vec2d(hx - model.box_corner_radius, hy - model.box_corner_radius)
        params.corner_radius = f64(model.box_corner_radius)
        params.pusher_radius = f64(model.pusher_radius)
        params.box_mass = f64(model.box_mass)
        params.box_inertia = f64(model.box_inertia)
        params.table_mu_g = f64(model.table_friction * model.gravity)
        params.friction_radius = f64(model.box_friction_radius)
        params.contact_mu = f64(model.contact_friction)
        params.contact_stiffness = f64(self.config.contact_stiffness)
        params.contact_damping = f64(self.config.contact_damping)
        params.contact_softness = f64(self.config.contact_softness)
        params.friction_velocity = f64(self.config.friction_velocity)
        params.geometry_eps = f64(self.config.geometry_eps)
        self.params = params

    def step(self, state_in: Rigid2DState, state_out: Rigid2DState, control: Rigid2DControl, dt: float) -> None:
        """Advance all worlds of ``state_in`` by ``dt`` [s] into ``state_out``."""
        wp.launch(
            integrate_pusher_box,
            dim=state_in.pusher_pos.shape[0],
            inputs=[state_in.pusher_pos, state_in.box_pose, state_in.box_vel, control.pusher_vel, self.params, wp.float64(dt)],
            outputs=[state_out.pusher_pos, state_out.box_pose, state_out.box_vel],
            device=state_in.pusher_pos.device,
        )
