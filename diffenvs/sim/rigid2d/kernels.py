"""Warp kernels and functions of the planar pusher/box solver (float64, one thread per world)."""

from __future__ import annotations

import warp as wp


@wp.struct
class Rigid2DParams:
    """Constants of one solver, gathered for the kernels (SI units, see Rigid2DModel/Config)."""

    box_inner: wp.vec2d
    corner_radius: wp.float64
    pusher_radius: wp.float64
    box_mass: wp.float64
    box_inertia: wp.float64
    table_mu_g: wp.float64
    friction_radius: wp.float64
    contact_mu: wp.float64
    contact_stiffness: wp.float64
    contact_damping: wp.float64
    contact_softness: wp.float64
    friction_velocity: wp.float64
    geometry_eps: wp.float64


@wp.func
def rotate2d(v: wp.vec2d, c: wp.float64, s: wp.float64) -> wp.vec2d:
    """Rotate ``v`` by the angle whose cosine and sine are ``c`` and ``s``."""
    return wp.vec2d(c * v[0] - s * v[1], s * v[0] + c * v[1])


@wp.func
def box_offset_local(p_local: wp.vec2d, box_inner: wp.vec2d) -> wp.vec2d:
    """Offset of ``p_local`` from its closest point on the box's inner rectangle (zero inside it)."""
    cx = wp.clamp(p_local[0], -box_inner[0], box_inner[0])
    cy = wp.clamp(p_local[1], -box_inner[1], box_inner[1])
    return wp.vec2d(p_local[0] - cx, p_local[1] - cy)


@wp.func
def smooth_length(v: wp.vec2d, eps: wp.float64) -> wp.float64:
    """|v| regularised as sqrt(|v|^2 + eps^2): differentiable at v = 0."""
    return wp.sqrt(wp.dot(v, v) + eps * eps)


@wp.func
def pusher_box_gap(
    pusher_pos: wp.vec2d, box_pose: wp.vec3d, box_inner: wp.vec2d, corner_radius: wp.float64,
    pusher_radius: wp.float64, eps: wp.float64,
) -> wp.float64:
    """Signed distance between the pusher's and the box's surfaces [m] (negative: overlap)."""
    c = wp.cos(box_pose[2])
    s = wp.sin(box_pose[2])
    rel = pusher_pos - wp.vec2d(box_pose[0], box_pose[1])
    p_local = rotate2d(rel, c, -s)
    delta = box_offset_local(p_local, box_inner)
    return smooth_length(delta, eps) - corner_radius - pusher_radius


@wp.func
def contact_ramp(pen: wp.float64, softness: wp.float64) -> wp.float64:
    """Penalty profile: 0 without overlap, quadratic over ``softness``, then linear (C1)."""
    if pen <= wp.float64(0.0):
        return wp.float64(0.0)
    if pen < softness:
        return pen * pen / (wp.float64(2.0) * softness)
    return pen - wp.float64(0.5) * softness


@wp.kernel
def integrate_pusher_box(
    pusher_pos_in: wp.array(dtype=wp.vec2d),
    box_pose_in: wp.array(dtype=wp.vec3d),
    box_vel_in: wp.array(dtype=wp.vec3d),
    pusher_vel: wp.array(dtype=wp.vec2d),
    params: Rigid2DParams,
    dt: wp.float64,
    pusher_pos_out: wp.array(dtype=wp.vec2d),
    box_pose_out: wp.array(dtype=wp.vec3d),
    box_vel_out: wp.array(dtype=wp.vec3d),
):
    """Advance every world by ``dt``: penalty contact, regularised friction, semi-implicit Euler."""
    w = wp.tid()
    zero = wp.float64(0.0)
    one = wp.float64(1.0)
    p = pusher_pos_in[w]
    u = pusher_vel[w]
    pose = box_pose_in[w]
    vel = box_vel_in[w]
    centre = wp.vec2d(pose[0], pose[1])
    v = wp.vec2d(vel[0], vel[1])
    omega = vel[2]
    c = wp.cos(pose[2])
    s = wp.sin(pose[2])

    # Contact geometry in the box frame: closest point on the rounded rectangle.
    p_local = rotate2d(p - centre, c, -s)
    delta = box_offset_local(p_local, params.box_inner)
    dist = smooth_length(delta, params.geometry_eps)
    n_local = delta / dist
    pen = params.corner_radius + params.pusher_radius - dist
    n = rotate2d(n_local, c, s)  # from box towards pusher
    r = rotate2d(p_local - delta + n_local * params.corner_radius, c, s)  # contact point - centre

    # Normal force: elastic ramp plus damping that fades in with the overlap.
    v_point = v + wp.vec2d(-omega * r[1], omega * r[0])
    v_rel = u - v_point
    vn = wp.dot(v_rel, n)
    fade = wp.clamp(pen / params.contact_softness, zero, one)
    fn = params.contact_stiffness * contact_ramp(pen, params.contact_softness) - params.contact_damping * fade * vn
    fn = wp.max(fn, zero)
    # Regularised Coulomb friction drags the box along the pusher's tangential motion.
    vt = v_rel - n * vn
    ft = vt * (params.contact_mu * fn / smooth_length(vt, params.friction_velocity))
    force = ft - n * fn
    torque = r[0] * force[1] - r[1] * force[0]

    # Explicit contact impulse, then table friction as a linearly implicit drag (stable for any dt).
    v_star = v + force * (dt / params.box_mass)
    omega_star = omega + torque * dt / params.box_inertia
    drag = dt * params.table_mu_g / smooth_length(v, params.friction_velocity)
    v_new = v_star / (one + drag)
    spin = omega * params.friction_radius
    spin_drag = (
        dt * params.table_mu_g * params.box_mass * params.friction_radius * params.friction_radius
        / (params.box_inertia * wp.sqrt(spin * spin + params.friction_velocity * params.friction_velocity))
    )
    omega_new = omega_star / (one + spin_drag)

    pusher_pos_out[w] = p + u * dt
    box_vel_out[w] = wp.vec3d(v_new[0], v_new[1], omega_new)
    box_pose_out[w] = wp.vec3d(pose[0] + dt * v_new[0], pose[1] + dt * v_new[1], pose[2] + dt * omega_new)
