"""Warp kernels of the Pusher's objective: action mapping, loss, reward, observation, divergence."""

from __future__ import annotations

import warp as wp

from diffenvs.sim.rigid2d.kernels import pusher_box_gap

OBS_DIM = wp.constant(17)
"""Length of a Pusher observation (layout: :class:`~diffenvs.tasks.pusher.PusherEnv`)."""


@wp.func
def pusher_task_loss(box_pose: wp.vec3d, target_pose: wp.vec3d, orientation_weight: wp.float64) -> wp.float64:
    """Distance of the box to the target [m] plus the weighted heading error sin^2(dtheta)."""
    dx = box_pose[0] - target_pose[0]
    dy = box_pose[1] - target_pose[1]
    eps = wp.float64(1.0e-4)
    s = wp.sin(box_pose[2] - target_pose[2])
    return wp.sqrt(dx * dx + dy * dy + eps * eps) - eps + orientation_weight * s * s


@wp.kernel
def prepare_step_pusher(
    action: wp.array2d(dtype=wp.float64),
    target_in: wp.array(dtype=wp.vec3d),
    max_speed: wp.float64,
    pusher_vel: wp.array(dtype=wp.vec2d),
    target_out: wp.array(dtype=wp.vec3d),
):
    """Map actions to pusher velocities and carry the target into the next state."""
    w = wp.tid()
    pusher_vel[w] = wp.vec2d(action[w, 0], action[w, 1]) * max_speed
    target_out[w] = target_in[w]


@wp.kernel
def compute_reward_pusher(
    box_pose_in: wp.array(dtype=wp.vec3d),
    pusher_pos_out: wp.array(dtype=wp.vec2d),
    box_pose_out: wp.array(dtype=wp.vec3d),
    target_pose: wp.array(dtype=wp.vec3d),
    action: wp.array2d(dtype=wp.float64),
    geometry: wp.vec4d,
    weights: wp.vec4d,
    loss_out: wp.array(dtype=wp.float64),
    reward_terms: wp.array2d(dtype=wp.float64),
    reward: wp.array(dtype=wp.float64),
):
    """Reward terms (progress, proximity, ctrl) of one step; ``geometry`` = (inner_x, inner_y, corner, pusher radius)."""
    w = wp.tid()
    loss_before = pusher_task_loss(box_pose_in[w], target_pose[w], weights[3])
    loss_after = pusher_task_loss(box_pose_out[w], target_pose[w], weights[3])
    gap = pusher_box_gap(
        pusher_pos_out[w], box_pose_out[w], wp.vec2d(geometry[0], geometry[1]), geometry[2], geometry[3], wp.float64(1.0e-6)
    )
    progress = weights[0] * (loss_before - loss_after)
    proximity = -weights[1] * wp.max(gap, wp.float64(0.0))
    ctrl = -weights[2] * (action[w, 0] * action[w, 0] + action[w, 1] * action[w, 1])
    loss_out[w] = loss_after
    reward_terms[w, 0] = progress
    reward_terms[w, 1] = proximity
    reward_terms[w, 2] = ctrl
    reward[w] = progress + proximity + ctrl


@wp.kernel
def compute_loss_pusher(
    box_pose: wp.array(dtype=wp.vec3d),
    target_pose: wp.array(dtype=wp.vec3d),
    orientation_weight: wp.float64,
    loss_out: wp.array(dtype=wp.float64),
):
    w = wp.tid()
    loss_out[w] = pusher_task_loss(box_pose[w], target_pose[w], orientation_weight)


@wp.kernel
def compute_obs_pusher(
    pusher_pos: wp.array(dtype=wp.vec2d),
    box_pose: wp.array(dtype=wp.vec3d),
    box_vel: wp.array(dtype=wp.vec3d),
    target_pose: wp.array(dtype=wp.vec3d),
    obs: wp.array2d(dtype=wp.float32),
):
    """Observation layout: see PusherEnv's docstring."""
    w = wp.tid()
    p = pusher_pos[w]
    b = box_pose[w]
    v = box_vel[w]
    t = target_pose[w]
    values = wp.vector(
        p[0], p[1], b[0], b[1], wp.cos(b[2]), wp.sin(b[2]), v[0], v[1], v[2],
        t[0], t[1], wp.cos(t[2]), wp.sin(t[2]), b[0] - p[0], b[1] - p[1], t[0] - b[0], t[1] - b[1],
        length=OBS_DIM, dtype=wp.float64,
    )
    for i in range(OBS_DIM):
        obs[w, i] = wp.float32(values[i])


@wp.kernel
def check_divergence_pusher(
    pusher_pos: wp.array(dtype=wp.vec2d),
    box_pose: wp.array(dtype=wp.vec3d),
    box_vel: wp.array(dtype=wp.vec3d),
    escape_radius: wp.float64,
    diverged: wp.array(dtype=wp.int32),
):
    w = wp.tid()
    p = pusher_pos[w]
    b = box_pose[w]
    v = box_vel[w]
    finite = wp.isfinite(p) and wp.isfinite(b) and wp.isfinite(v)
    r2 = escape_radius * escape_radius
    inside = wp.dot(p, p) <= r2 and b[0] * b[0] + b[1] * b[1] <= r2
    diverged[w] = wp.where(finite and inside, 0, 1)
