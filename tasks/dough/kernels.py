"""Warp kernels of the dough tasks' objective: action mapping, loss, contact loss, reward, IoU,
observation and divergence check. Every kernel takes all worlds at once (world index first)."""

from __future__ import annotations

import functools

import warp as wp

from diffenvs.sim.mpm.kernels import tool_sdf

TARGET_FIELDS = ("target_centre", "target_half", "carve_base", "carve_size")
"""Per-world target descriptors of the state, vec3 each: the target particles' bounding box
(centre, half extents) and the carved pit (base, (radius, height, 0); zeros for none)."""

OBS_PER_PARTICLE = wp.constant(6)
"""Observation entries per observed particle: position (3) and velocity (3)."""
OBS_PER_TOOL = wp.constant(7)
"""Observation entries per tool: position (3) and quaternion (x, y, z, w)."""
OBS_TARGET = 3 * len(TARGET_FIELDS)
"""Observation entries of the target: its four descriptors of :data:`TARGET_FIELDS`."""


def obs_dim(observed_particles: int, tool_count: int) -> int:
    """Length of a dough observation (layout: :func:`compute_obs_dough`)."""
    return OBS_PER_PARTICLE * observed_particles + OBS_PER_TOOL * tool_count + OBS_TARGET


@wp.kernel
def prepare_step_rolling_pin(
    action: wp.array2d(dtype=wp.float64),
    tool_rot: wp.array2d(dtype=wp.quat),
    speed: float,
    yaw_rate: float,
    radius: float,
    tool_vel: wp.array2d(dtype=wp.vec3),
    tool_omega: wp.array2d(dtype=wp.vec3),
):
    """Rolling pin: a[0] rolls across the pin's axis (translating and spinning without slip),
    a[1] turns it about the vertical, a[2] moves it vertically."""
    w = wp.tid()
    axis = wp.quat_rotate(tool_rot[w, 0], wp.vec3(1.0, 0.0, 0.0))
    axis_h = wp.vec3(axis[0], 0.0, axis[2])
    axis_h = axis_h / wp.sqrt(wp.dot(axis_h, axis_h) + 1.0e-12)
    up = wp.vec3(0.0, 1.0, 0.0)
    roll = wp.cross(axis_h, up)
    v_roll = roll * (float(action[w, 0]) * speed)
    tool_vel[w, 0] = v_roll + up * (float(action[w, 2]) * speed)
    tool_omega[w, 0] = wp.cross(up, v_roll) / radius + up * (float(action[w, 1]) * yaw_rate)


@wp.kernel
def prepare_step_translate(
    action: wp.array2d(dtype=wp.float64),
    speed: float,
    tool_vel: wp.array2d(dtype=wp.vec3),
    tool_omega: wp.array2d(dtype=wp.vec3),
):
    """Translating tools: a[3t:3t+3] is tool t's velocity / ``speed``."""
    w, t = wp.tid()
    tool_vel[w, t] = wp.vec3(float(action[w, 3 * t]), float(action[w, 3 * t + 1]), float(action[w, 3 * t + 2])) * speed
    tool_omega[w, t] = wp.vec3(0.0)


@wp.kernel
def prepare_step_chopsticks(
    action: wp.array2d(dtype=wp.float64),
    tool_pos: wp.array2d(dtype=wp.vec3),
    speed: float,
    turn_rate: float,
    gap_speed: float,
    frame_dt: float,
    tool_vel: wp.array2d(dtype=wp.vec3),
    tool_omega: wp.array2d(dtype=wp.vec3),
):
    """Chopsticks (tools 0 and 1, one rigid pair): a[0:3] the pair's velocity / ``speed``, a[3:6] its
    angular velocity about its midpoint / ``turn_rate``, a[6] the rate of its gap / ``gap_speed``
    (positive opens). Each chopstick's velocity carries it along the chord of its turn over the
    step, so turning keeps the gap exactly (a tangent velocity would widen it step by step)."""
    w = wp.tid()
    p0 = tool_pos[w, 0]
    p1 = tool_pos[w, 1]
    centre = 0.5 * (p0 + p1)
    across = wp.normalize(p1 - p0)
    v = wp.vec3(float(action[w, 0]), float(action[w, 1]), float(action[w, 2])) * speed
    om = wp.vec3(float(action[w, 3]), float(action[w, 4]), float(action[w, 5])) * turn_rate
    opening = across * (0.5 * float(action[w, 6]) * gap_speed)
    chord0 = wp.cross(om, p0 - centre)
    chord1 = wp.cross(om, p1 - centre)
    rate = wp.length(om)
    if rate > 1.0e-9:
        turn = wp.quat_from_axis_angle(om / rate, rate * frame_dt)
        chord0 = (wp.quat_rotate(turn, p0 - centre) - (p0 - centre)) / frame_dt
        chord1 = (wp.quat_rotate(turn, p1 - centre) - (p1 - centre)) / frame_dt
    tool_vel[w, 0] = v + chord0 - opening
    tool_vel[w, 1] = v + chord1 + opening
    tool_omega[w, 0] = om
    tool_omega[w, 1] = om


@wp.kernel
def carry_target(
    target_centre_in: wp.array(dtype=wp.vec3),
    target_half_in: wp.array(dtype=wp.vec3),
    carve_base_in: wp.array(dtype=wp.vec3),
    carve_size_in: wp.array(dtype=wp.vec3),
    target_centre_out: wp.array(dtype=wp.vec3),
    target_half_out: wp.array(dtype=wp.vec3),
    carve_base_out: wp.array(dtype=wp.vec3),
    carve_size_out: wp.array(dtype=wp.vec3),
):
    """The target does not change during an episode: copy it into the next state."""
    w = wp.tid()
    target_centre_out[w] = target_centre_in[w]
    target_half_out[w] = target_half_in[w]
    carve_base_out[w] = carve_base_in[w]
    carve_size_out[w] = carve_size_in[w]


@wp.kernel
def carry_target_points(target_x_in: wp.array2d(dtype=wp.vec3), target_x_out: wp.array2d(dtype=wp.vec3)):
    """Copy the target's particle set into the next state."""
    w, p = wp.tid()
    target_x_out[w, p] = target_x_in[w, p]


@wp.func
def target_sdf(p: wp.vec3, centre: wp.vec3, half: wp.vec3, carve_base: wp.vec3, carve_size: wp.vec3) -> float:
    """Signed distance to the target: a box, minus a carved pit when ``carve_size[0]`` > 0.

    The pit is a vertical capsule (the volume a pressed sphere sweeps): radius ``carve_size[0]``,
    axis from ``carve_base`` up by ``carve_size[1]``.
    """
    d = tool_sdf(2, half, p - centre)
    if carve_size[0] > 0.0:
        q = p - carve_base
        h = wp.clamp(q[1], 0.0, carve_size[1])
        pit = wp.length(q - wp.vec3(0.0, h, 0.0)) - carve_size[0]
        d = wp.max(d, -pit)
    return d


@wp.kernel
def accumulate_loss_sdf(
    particle_x: wp.array2d(dtype=wp.vec3),
    target_centre: wp.array(dtype=wp.vec3),
    target_half: wp.array(dtype=wp.vec3),
    carve_base: wp.array(dtype=wp.vec3),
    carve_size: wp.array(dtype=wp.vec3),
    inv_count: float,
    sdf_sum: wp.array(dtype=float),
):
    """Mean distance of the particles outside the target."""
    w, p = wp.tid()
    d = target_sdf(particle_x[w, p], target_centre[w], target_half[w], carve_base[w], carve_size[w])
    wp.atomic_add(sdf_sum, w, wp.max(d, 0.0) * inv_count)


@functools.cache
def make_density_loss(block: int) -> wp.Kernel:
    """Kernel adding each block's |dough mass - target mass| / total mass, over blocks of ``block``^3 cells.

    One thread per block sums its cells (the loop unrolled, so Warp's adjoint of it is exact):
    no atomics per cell, and an eighth of the threads of a per-cell launch at ``block`` = 2.
    Launched over a box of blocks from ``origin``: blocks where both masses are zero add nothing.
    """

    @wp.kernel(module="unique")
    def accumulate_loss_density(
        grid_m: wp.array4d(dtype=float),
        target_m: wp.array4d(dtype=float),
        inv_total_mass: float,
        origin: wp.vec3i,
        density_sum: wp.array(dtype=float),
    ):
        w, ri, rj, rk = wp.tid()
        bi = origin[0] + ri
        bj = origin[1] + rj
        bk = origin[2] + rk
        diff = float(0.0)  # noqa: UP018  (a Warp variable reassigned below)
        for i in range(wp.static(block)):
            for j in range(wp.static(block)):
                for k in range(wp.static(block)):
                    ci = bi * wp.static(block) + i
                    cj = bj * wp.static(block) + j
                    ck = bk * wp.static(block) + k
                    diff = diff + (grid_m[w, ci, cj, ck] - target_m[w, ci, cj, ck])
        if diff != 0.0:  # most blocks hold neither mass: no atomic add to the world's one sum (contended on a GPU)
            wp.atomic_add(density_sum, w, wp.abs(diff) * inv_total_mass)

    return accumulate_loss_density


@wp.kernel
def accumulate_contact(
    particle_x: wp.array2d(dtype=wp.vec3),
    tool_pos: wp.array2d(dtype=wp.vec3),
    tool_rot: wp.array2d(dtype=wp.quat),
    tool_kind: wp.array(dtype=int),
    tool_size: wp.array(dtype=wp.vec3),
    temperature: float,
    target_centre: wp.array(dtype=wp.vec3),
    target_half: wp.array(dtype=wp.vec3),
    carve_base: wp.array(dtype=wp.vec3),
    carve_size: wp.array(dtype=wp.vec3),
    focus: int,
    contact_sum: wp.array2d(dtype=float),
):
    """Sum of weight * exp(-d / temperature) over particles, d their distance to each tool
    (clamped to [0, 1]); the weight is 1, or with ``focus`` the particle's distance outside the
    target in units of ``temperature`` (at most 1, at least 1e-3)."""
    w, p, t = wp.tid()
    x = particle_x[w, p]
    local = wp.quat_rotate_inv(tool_rot[w, t], x - tool_pos[w, t])
    d = wp.clamp(tool_sdf(tool_kind[t], tool_size[t], local), 0.0, 1.0)
    weight = float(1.0)  # noqa: UP018  (a Warp variable reassigned below)
    if focus != 0:
        outside = target_sdf(x, target_centre[w], target_half[w], carve_base[w], carve_size[w])
        weight = wp.clamp(outside / temperature, 1.0e-3, 1.0)
    wp.atomic_add(contact_sum, w, t, weight * wp.exp(-d / temperature))


@wp.kernel
def compute_contact_penalty(
    contact_sum: wp.array2d(dtype=float),
    temperature: float,
    contact_penalty: wp.array(dtype=float),
):
    """Squared soft minimum, -temperature * log(sum), of each tool's distance to the dough, summed over tools."""
    w, t = wp.tid()
    d = wp.max(-temperature * wp.log(contact_sum[w, t] + 1.0e-30), 0.0)
    wp.atomic_add(contact_penalty, w, d * d)


@wp.kernel
def compute_loss_dough(
    sdf_sum: wp.array(dtype=float),
    density_sum: wp.array(dtype=float),
    sdf_weight: float,
    density_weight: float,
    loss: wp.array(dtype=wp.float64),
):
    w = wp.tid()
    loss[w] = wp.float64(sdf_weight * sdf_sum[w] + density_weight * density_sum[w])


@wp.kernel
def compute_reward_dough(
    loss_before: wp.array(dtype=wp.float64),
    loss_after: wp.array(dtype=wp.float64),
    contact_penalty: wp.array(dtype=float),
    progress_weight: float,
    contact_weight: float,
    reward_terms: wp.array2d(dtype=wp.float64),
    reward: wp.array(dtype=wp.float64),
):
    w = wp.tid()
    progress = wp.float64(progress_weight) * (loss_before[w] - loss_after[w])
    contact = wp.float64(-contact_weight * contact_penalty[w])
    reward_terms[w, 0] = progress
    reward_terms[w, 1] = contact
    reward[w] = progress + contact


@wp.kernel(enable_backward=False)
def count_iou(
    grid_m: wp.array4d(dtype=float),
    target_m: wp.array4d(dtype=float),
    threshold: float,
    counts: wp.array2d(dtype=wp.float64),
):
    """Intersection and union of the occupied cells of dough and target, one thread per column of cells."""
    w, i, j = wp.tid()
    both = int(0)  # noqa: UP018, RUF046  (Warp variables incremented below)
    either = int(0)  # noqa: UP018, RUF046
    for k in range(grid_m.shape[3]):
        a = grid_m[w, i, j, k] > threshold
        b = target_m[w, i, j, k] > threshold
        if a and b:
            both += 1
        if a or b:
            either += 1
    if either > 0:
        wp.atomic_add(counts, w, 0, wp.float64(both))
        wp.atomic_add(counts, w, 1, wp.float64(either))


@wp.kernel
def compute_obs_dough(
    particle_x: wp.array2d(dtype=wp.vec3),
    particle_v: wp.array2d(dtype=wp.vec3),
    tool_pos: wp.array2d(dtype=wp.vec3),
    tool_rot: wp.array2d(dtype=wp.quat),
    target_centre: wp.array(dtype=wp.vec3),
    target_half: wp.array(dtype=wp.vec3),
    carve_base: wp.array(dtype=wp.vec3),
    carve_size: wp.array(dtype=wp.vec3),
    observed: wp.array(dtype=int),
    obs: wp.array2d(dtype=wp.float32),
):
    """Row layout: K observed particles' positions, then their velocities, then each tool's
    position and quaternion (x, y, z, w), then the target's centre and half extents, then the
    carved pit's base and size (zeros when nothing is carved)."""
    w, i = wp.tid()
    k = observed.shape[0]
    tools = tool_pos.shape[1]
    if i < k:
        x = particle_x[w, observed[i]]
        v = particle_v[w, observed[i]]
        for c in range(3):
            obs[w, 3 * i + c] = x[c]
            obs[w, 3 * k + 3 * i + c] = v[c]
    elif i < k + tools:
        t = i - k
        base = OBS_PER_PARTICLE * k + OBS_PER_TOOL * t
        p = tool_pos[w, t]
        q = tool_rot[w, t]
        for c in range(3):
            obs[w, base + c] = p[c]
        for c in range(4):
            obs[w, base + 3 + c] = q[c]
    else:
        base = OBS_PER_PARTICLE * k + OBS_PER_TOOL * tools
        for c in range(3):
            obs[w, base + c] = target_centre[w][c]
            obs[w, base + 3 + c] = target_half[w][c]
            obs[w, base + 6 + c] = carve_base[w][c]
            obs[w, base + 9 + c] = carve_size[w][c]


@wp.kernel
def check_divergence_dough(
    particle_x: wp.array2d(dtype=wp.vec3),
    domain_size: float,
    diverged: wp.array(dtype=wp.int32),
):
    w, p = wp.tid()
    x = particle_x[w, p]
    inside = wp.min(x[0], wp.min(x[1], x[2])) >= 0.0 and wp.max(x[0], wp.max(x[1], x[2])) <= domain_size
    if not (wp.isfinite(x) and inside):
        wp.atomic_max(diverged, w, 1)

