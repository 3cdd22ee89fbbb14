"""Dough tasks: elastoplastic plasticine (MLS-MPM) shaped by rigid tools, with analytic gradients.

Every dough task shares the scene (a box of dough on the floor of the unit cube), the loss
(PlasticineLab's: signed distance of the particles to the target plus the L1 difference of the
dough's and the target's grid mass), the contact loss, the observation and the rendering. The
tasks differ in their tools, how the action drives them, and how the target is drawn.
"""

from __future__ import annotations

import abc
import dataclasses
import functools
import math
from typing import Any, ClassVar, Literal

import numpy as np
import warp as wp

from diffenvs.config import from_dict
from diffenvs.env import DiffEnv, DiffVectorEnv
from diffenvs.sim.mpm import MPMControl, MPMGrid, MPMMaterial, MPMModel, MPMState, SolverMPM, ToolShape
from diffenvs.sim.mpm.kernels import tool_sdf
from diffenvs.task import State, StepBuffers, Task

PRESETS: dict[str, dict[str, Any]] = {
    # Fast enough for CPU use and RL: a 32^3 grid and 1,000 particles. A recorded step takes about
    # 2 MB, so gradients record every substep (checkpointing would only add its re-run).
    "default": {"grid_res": 32, "particle_count": 1000, "sim_substeps": 10, "frame_dt": 2.0e-3, "checkpoint": False},
    # PlasticineLab's RollingPin scale: 64^3 grid, 10,000 particles, 19 substeps of 1e-4 s. A
    # recorded step takes about 25 MB, a checkpointed one 2 MB, at the same gradient speed on 2 cores.
    "paper": {"grid_res": 64, "particle_count": 10000, "sim_substeps": 19, "frame_dt": 1.9e-3, "checkpoint": True},
}
BLOB_HALF = np.array([0.15, 0.05, 0.15])  # PlasticineLab's 0.3 x 0.1 x 0.3 box of dough
TARGET_FIELDS = ("target_centre", "target_half", "carve_base", "carve_size")  # per world, vec3 each


def spatial_order(x: np.ndarray, dx: float) -> np.ndarray:
    """Permutation that sorts points by their grid cell in the grid's memory order (i, j, k).

    Particles of neighbouring cells then touch neighbouring grid nodes, so the stencil loops of
    the transfers (and their adjoints) read and write the grid in cache-friendly order; the
    Halton sequence itself jumps across the whole box from one point to the next.
    """
    cell = np.floor(np.asarray(x) / dx).astype(np.int64)
    return np.lexsort((cell[:, 2], cell[:, 1], cell[:, 0]))


def halton(count: int, *, shift: np.ndarray | None = None) -> np.ndarray:
    """``count`` points of the 3-D Halton sequence in [-1, 1]^3, optionally rotated by ``shift`` (mod 1).

    The dough box is filled with these low-discrepancy points rather than uniform random ones:
    its grid mass is smoother (targets are made of the dough's own particles, so the density
    loss has no sampling floor either way).
    """
    points = np.zeros((count, 3))
    for axis, base in enumerate((2, 3, 5)):
        index = np.arange(1, count + 1)
        scale = 1.0
        while np.any(index > 0):
            scale /= base
            points[:, axis] += scale * (index % base)
            index //= base
    if shift is not None:
        points = (points + shift) % 1.0
    return 2.0 * points - 1.0


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
        tool_softness: Influence radius of the tools [domain units]; 0 is hard contact.
        tool_friction: Coulomb friction between tools and dough.
        progress_weight: Weight of the loss decrease in the reward.
        contact_weight: Weight of the contact loss (squared soft-min distance between each tool
            and the dough) in the reward.
        contact_temperature: Length scale of the soft minimum of the contact loss [domain units].
        contact_focus: Take the contact loss's soft minimum over the dough that lies outside the
            target (weighted by that distance, in units of ``contact_temperature``, up to 1)
            instead of all the dough: the tools are drawn to the dough that still has to move.
        sdf_weight: Weight of the mean distance of the particles outside the target [1/unit].
        density_weight: Weight of the L1 grid-mass difference, relative to the total mass.
        density_block: The mass difference is taken over blocks of density_block^3 cells. A
            few particles per cell make grid mass noisy; blocks of 2^3 cells lower the loss's
            floor (two different samplings of the same shape) about threefold.
        youngs_modulus: Young's modulus of the dough [Pa].
        poisson_ratio: Poisson ratio of the dough.
        yield_stress: von Mises yield stress of the dough [Pa].
        ground_friction: Coulomb friction of the floor.
        obs_particle_count: Particles whose positions and velocities are observed.
        settle_steps: Env steps the fresh blob rests under gravity before an episode starts
            (its elastic bounce then no longer moves the loss); ``None``: the task's default
            (``Shape`` 30, whose pit is a small signal; the others 0).
    """

    preset: Literal["default", "paper"] = "default"
    grid_res: int | None = None
    particle_count: int | None = None
    sim_substeps: int | None = None
    frame_dt: float | None = None
    tool_speed: float = 3.0
    tool_yaw_rate: float = 10.0
    tool_softness: float = 0.0
    tool_friction: float = 0.9
    progress_weight: float = 1.0
    contact_weight: float = 0.0
    contact_temperature: float = 0.01
    contact_focus: bool = False
    sdf_weight: float = 10.0
    density_weight: float = 10.0
    density_block: int = 2
    youngs_modulus: float = MPMMaterial.youngs_modulus
    poisson_ratio: float = MPMMaterial.poisson_ratio
    yield_stress: float = MPMMaterial.yield_stress
    ground_friction: float = MPMModel.ground_friction
    obs_particle_count: int = 64
    settle_steps: int | None = None

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
        for name in ("tool_softness", "tool_friction", "contact_weight", "sdf_weight", "density_weight"):
            if not getattr(self, name) >= 0.0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.settle_steps is not None and self.settle_steps < 0:
            raise ValueError(f"settle_steps must be >= 0, got {self.settle_steps}")
        if not 1 <= self.obs_particle_count <= self.resolved("particle_count"):
            raise ValueError("obs_particle_count must lie in [1, particle_count]")

    def resolved(self, name: str) -> Any:
        """The value of a preset-backed option: the explicit one, else the preset's."""
        value = getattr(self, name)
        return PRESETS[self.preset][name] if value is None else value


# Kernels of the dough tasks ---------------------------------------------------------------------


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
        base = 6 * k + 7 * t
        p = tool_pos[w, t]
        q = tool_rot[w, t]
        for c in range(3):
            obs[w, base + c] = p[c]
        for c in range(4):
            obs[w, base + 3 + c] = q[c]
    else:
        base = 6 * k + 7 * tools
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


# Task -------------------------------------------------------------------------------------------


@dataclasses.dataclass
class LossScratch:
    """Arrays of one evaluation of the dough loss (recomputed, never part of a snapshot)."""

    mass: wp.array
    sdf_sum: wp.array
    density_sum: wp.array
    contact_sum: wp.array
    contact_penalty: wp.array
    loss: wp.array


@dataclasses.dataclass
class DoughStepBuffers(StepBuffers):
    """Step buffers plus the tools' control, substep states, grids and loss scratch."""

    scratch_fields: ClassVar[tuple[str, ...]] = ("control", "substates", "grids", "loss_in", "loss_out")
    tape_cleared_fields: ClassVar[tuple[str, ...]] = ("grids",)  # the solver clears their active region

    iou_counts: wp.array = None
    control: MPMControl = None
    substates: list[MPMState] = dataclasses.field(default_factory=list)
    grids: list[MPMGrid] = dataclasses.field(default_factory=list)
    loss_in: LossScratch = None
    loss_out: LossScratch = None


class DoughTask(Task):
    """Batched dough task; subclasses set the tools, the action mapping and the target."""

    reward_terms = ("progress", "contact")
    parallel_refill = True  # (a checkpointed grad() at the paper preset: 1.17 s -> 0.81 s over 10 steps)
    tool_shapes: ClassVar[tuple[ToolShape, ...]]
    default_settle_steps: ClassVar[int] = 0

    def __init__(self, world_count: int, device: wp.context.Devicelike = None, **kwargs: Any):
        super().__init__(world_count, device)
        self.config = cfg = from_dict(DoughConfig, kwargs, where=type(self).__name__.removesuffix("Task"))
        self.grid_res = cfg.resolved("grid_res")
        self.particle_count = cfg.resolved("particle_count")
        self.sim_substeps = cfg.resolved("sim_substeps")
        blob_volume = float(np.prod(2 * BLOB_HALF))
        tools = tuple(dataclasses.replace(t, friction=cfg.tool_friction, softness=cfg.tool_softness) for t in self.tool_shapes)
        self.model = MPMModel(
            grid_res=self.grid_res,
            material=MPMMaterial(youngs_modulus=cfg.youngs_modulus, poisson_ratio=cfg.poisson_ratio, yield_stress=cfg.yield_stress),
            tools=tools,
            ground_friction=cfg.ground_friction,
            particle_volume=blob_volume / self.particle_count,
        )
        self.solver = SolverMPM(self.model, device=self.device)
        self.tool_count = len(tools)
        self._contact_weight = cfg.contact_weight
        self._contact_focus = cfg.contact_focus
        self._softness = cfg.tool_softness
        self.obs_dim = 6 * cfg.obs_particle_count + 7 * self.tool_count + 12
        self._observed = wp.array(
            np.linspace(0, self.particle_count - 1, cfg.obs_particle_count).astype(np.int32), dtype=int, device=self.device
        )
        self._total_mass = self.model.particle_mass * self.particle_count
        self._target_mass = self.zeros((world_count, *(self.grid_res,) * 3), wp.float32, requires_grad=False)
        self._target_nodes: tuple[np.ndarray, np.ndarray] | None = None
        self._eval = self._alloc_loss_scratch(requires_grad=False)

    # Layout and allocation ------------------------------------------------------------------

    @property
    def frame_dt(self) -> float:
        return self.config.resolved("frame_dt")

    @property
    def sim_dt(self) -> float:
        return self.frame_dt / self.sim_substeps

    def state_layout(self) -> dict[str, tuple[tuple[int, ...], type]]:
        p, t = self.particle_count, self.tool_count
        return {
            "particle_x": ((p, 3), np.float32), "particle_v": ((p, 3), np.float32),
            "particle_C": ((p, 3, 3), np.float32), "particle_F": ((p, 3, 3), np.float32),
            "tool_pos": ((t, 3), np.float32), "tool_rot": ((t, 4), np.float32),
            "target_centre": ((3,), np.float32), "target_half": ((3,), np.float32),
            "carve_base": ((3,), np.float32), "carve_size": ((3,), np.float32), "target_x": ((p, 3), np.float32),
        }

    def _mpm_state(self, state: State) -> MPMState:
        return MPMState(**{name: state[name] for name in ("particle_x", "particle_v", "particle_C", "particle_F", "tool_pos", "tool_rot")})

    def alloc_state(self, *, requires_grad: bool) -> State:
        sim = MPMState.zeros(self.world_count, self.particle_count, self.tool_count, device=self.device, requires_grad=requires_grad)
        state = dict(vars(sim))
        for name in TARGET_FIELDS:
            state[name] = self.zeros(self.world_count, wp.vec3, requires_grad=requires_grad)
        state["target_x"] = self.zeros((self.world_count, self.particle_count), wp.vec3, requires_grad=requires_grad)
        return state

    def _alloc_loss_scratch(self, *, requires_grad: bool) -> LossScratch:
        n = self.world_count
        # The mass grid is zeroed by every evaluation: allocated uninitialised, a recorded step's
        # loss_in (used at an episode's start only) costs no resident memory.
        mass = wp.empty((n, *(self.grid_res,) * 3), dtype=wp.float32, device=self.device)
        if requires_grad:
            mass.grad = self.zeros(mass.shape, wp.float32, requires_grad=False)
        return LossScratch(
            mass=mass,
            sdf_sum=self.zeros(n, wp.float32, requires_grad=requires_grad),
            density_sum=self.zeros(n, wp.float32, requires_grad=requires_grad),
            contact_sum=self.zeros((n, self.tool_count), wp.float32, requires_grad=requires_grad),
            contact_penalty=self.zeros(n, wp.float32, requires_grad=requires_grad),
            loss=self.zeros(n, wp.float64, requires_grad=requires_grad),
        )

    def alloc_step(self, *, requires_grad: bool) -> DoughStepBuffers:
        n, p, t = self.world_count, self.particle_count, self.tool_count
        return DoughStepBuffers(
            **self.alloc_common(self.alloc_state(requires_grad=requires_grad), requires_grad=requires_grad),
            iou_counts=self.zeros((n, 2), wp.float64, requires_grad=False),
            control=MPMControl.zeros(n, t, device=self.device, requires_grad=requires_grad),
            substates=[
                MPMState.zeros(n, p, t, device=self.device, requires_grad=requires_grad) for _ in range(self.sim_substeps - 1)
            ],
            grids=[self.solver.alloc_grid(n, requires_grad=requires_grad) for _ in range(self.sim_substeps)],
            loss_in=self._alloc_loss_scratch(requires_grad=requires_grad),
            loss_out=self._alloc_loss_scratch(requires_grad=requires_grad),
        )

    # Episodes -------------------------------------------------------------------------------

    @abc.abstractmethod
    def sample_tools(self, rng: np.random.Generator, blob_centre: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Initial tool positions (T, 3) and quaternions (T, 4) for a blob at ``blob_centre``."""

    @abc.abstractmethod
    def sample_target(
        self, rng: np.random.Generator, blob_centre: np.ndarray, particles: dict[str, np.ndarray],
        tool_pos: np.ndarray, tool_rot: np.ndarray,
    ) -> dict[str, np.ndarray]:
        """Target for the blob ``particles`` (its particle fields, centred at ``blob_centre``) and
        the tools' start poses.

        Returns ``target_x`` (P, 3): the target as a particle set made from the dough's own
        particles (moved rigidly, or by a scripted demonstration with :meth:`demonstrate`), so
        that a state that reaches it has zero loss; optionally ``carve_base``, ``carve_size``
        (a pit cut out of the signed-distance box). The box itself (``target_centre``,
        ``target_half``) is the bounding box of ``target_x``.
        """

    @abc.abstractmethod
    def apply_action(self, state_in: State, buffers: DoughStepBuffers) -> None:
        """Launch the kernel that turns ``buffers.action`` into ``buffers.control``."""

    def sample_state(self, rng: np.random.Generator, options: dict[str, Any] | None = None) -> dict[str, np.ndarray]:
        if options:
            raise ValueError(f"dough tasks' reset() takes no options, got {sorted(options)}")
        floor = self.model.floor_height
        centre = np.array([0.5 + rng.uniform(-0.03, 0.03), floor + BLOB_HALF[1], 0.5 + rng.uniform(-0.03, 0.03)])
        x = centre + halton(self.particle_count, shift=rng.uniform(size=3)) * BLOB_HALF
        x = x[spatial_order(x, self.model.dx)]
        particles = {
            "particle_x": x, "particle_v": np.zeros_like(x), "particle_C": np.zeros((self.particle_count, 3, 3)),
            "particle_F": np.broadcast_to(np.eye(3), (self.particle_count, 3, 3)).copy(),
        }
        settle = self.default_settle_steps if self.config.settle_steps is None else self.config.settle_steps
        if settle:
            away = np.tile([0.5, 0.9, 0.5], (self.tool_count, 1))  # tools far above the dough
            rest = np.tile(_yaw_quat(0.0), (self.tool_count, 1))
            particles = self.demonstrate(particles, away, rest, np.zeros((settle, self.action_dim)))
        tool_pos, tool_rot = self.sample_tools(rng, centre)
        target = {"carve_base": np.zeros(3), "carve_size": np.zeros(3),
                  **self.sample_target(rng, centre, particles, tool_pos, tool_rot)}
        lo, hi = target["target_x"].min(axis=0), target["target_x"].max(axis=0)
        target["target_centre"], target["target_half"] = (lo + hi) / 2, (hi - lo) / 2
        return {**particles, "tool_pos": tool_pos, "tool_rot": tool_rot, **target}

    def demonstrate(
        self, particles: dict[str, np.ndarray], tool_pos: np.ndarray, tool_rot: np.ndarray, actions: np.ndarray
    ) -> dict[str, np.ndarray]:
        """One world's particle fields after this task's own env steps with ``actions`` (K, action_dim).

        Runs a private one-world copy of the task with hard tools and no contact loss, outside
        any tape, from the given particles and tool poses: the scripted demonstrations that let a
        blob settle and that make targets (so every target is reachable with the env's actions).
        """
        from diffenvs.env import WorldBatch

        # Built per call and dropped after it: its step buffers (grids of every substep) would
        # otherwise stay allocated beside the episode's (about 0.3 GB at the paper preset).
        kwargs = {**dataclasses.asdict(self.config), "tool_softness": 0.0, "contact_weight": 0.0, "contact_focus": False}
        demo = WorldBatch(type(self)(1, device=self.device, **kwargs), differentiable=False)
        state = {**particles, "tool_pos": tool_pos, "tool_rot": tool_rot, "target_x": particles["particle_x"],
                 **{name: np.zeros(3) for name in TARGET_FIELDS}}
        demo.reset({name: np.asarray(value)[None] for name, value in state.items()})
        for action in actions:
            demo.step(np.clip(np.asarray(action, dtype=np.float64), -1.0, 1.0)[None])
        final = demo.get_state()
        return {name: final[name][0].astype(np.float64) for name in particles}

    def prepare(self, state: State) -> None:
        """Rebuild the target's grid mass from each world's target particles (outside the tape), and
        the box of nodes it occupies in any world (inclusive, host side)."""
        self.solver.scatter_mass(state["target_x"], self._target_mass)
        cells = np.floor(state["target_x"].numpy().reshape(-1, 3) / self.model.dx)
        if np.isfinite(cells).all():  # a stencil reaches from one cell below to two above
            self._target_nodes = (np.clip(cells.min(axis=0) - 1, 0, self.grid_res - 1).astype(int),
                                  np.clip(cells.max(axis=0) + 2, 0, self.grid_res - 1).astype(int))
        else:
            self._target_nodes = None

    def _density_blocks(self, region: tuple[tuple[int, int, int], tuple[int, int, int]] | None) -> tuple[wp.vec3i, tuple]:
        """Origin and shape of the box of density blocks that holds the target's mass and the dough's
        mass within the solver's active ``region`` (None, or no target box: every block)."""
        block = self.config.density_block
        if region is None or self._target_nodes is None:
            return wp.vec3i(0, 0, 0), (self.grid_res // block,) * 3
        origin, shape = np.asarray(region[0]), np.asarray(region[1])
        lo = np.minimum(origin, self._target_nodes[0]) // block
        hi = np.maximum(origin + shape - 1, self._target_nodes[1]) // block
        return wp.vec3i(*(int(v) for v in lo)), tuple(int(v) for v in hi - lo + 1)

    # One step -------------------------------------------------------------------------------

    def step(self, state_in: State, buffers: DoughStepBuffers, previous: DoughStepBuffers | None = None) -> None:
        self.apply_action(state_in, buffers)
        wp.launch(
            carry_target, dim=self.world_count, inputs=[state_in[name] for name in TARGET_FIELDS],
            outputs=[buffers.state[name] for name in TARGET_FIELDS], device=self.device,
        )
        wp.launch(
            carry_target_points, dim=(self.world_count, self.particle_count), inputs=[state_in["target_x"]],
            outputs=[buffers.state["target_x"]], device=self.device,
        )
        chain = [self._mpm_state(state_in), *buffers.substates, self._mpm_state(buffers.state)]
        # The tools can drag dough at up to their surface speed: the pin's roll adds as much again.
        region = self.solver.active_region(chain[0], self.frame_dt, extra_speed=2.0 * self.config.tool_speed)
        for current, following, grid in zip(chain[:-1], chain[1:], buffers.grids):
            self.solver.step(current, following, buffers.control, self.sim_dt, grid, region)
        if previous is None:
            self._evaluate(state_in, buffers.loss_in, buffers.loss_in.loss, region)
            loss_in = buffers.loss_in.loss
        else:
            loss_in = previous.loss  # the same value; the loss is half of a step's cost outside the solver
        self._evaluate(buffers.state, buffers.loss_out, buffers.loss, region)
        cfg = self.config
        wp.launch(
            compute_reward_dough, dim=self.world_count,
            inputs=[loss_in, buffers.loss, buffers.loss_out.contact_penalty,
                    cfg.progress_weight, self._contact_weight],
            outputs=[buffers.reward_terms, buffers.reward], device=self.device,
        )
        self.observe(buffers.state, buffers.obs)

    def get_remedies(self) -> dict[str, float]:
        return {"contact_weight": self._contact_weight, "softness": self._softness, "contact_focus": float(self._contact_focus)}

    def apply_remedy(self, name: str, value: float) -> None:
        if name == "contact_weight":
            self._contact_weight = value
        elif name == "contact_focus":
            self._contact_focus = value > 0.0
        else:
            self.solver.set_tool_softness([value] * self.tool_count)
            self._softness = value

    def check(self, buffers: DoughStepBuffers) -> None:
        buffers.diverged.zero_()
        wp.launch(
            check_divergence_dough, dim=(self.world_count, self.particle_count),
            inputs=[buffers.state["particle_x"], self.model.domain_size], outputs=[buffers.diverged], device=self.device,
        )
        buffers.iou_counts.zero_()
        wp.launch(
            count_iou, dim=(self.world_count, self.grid_res, self.grid_res),
            inputs=[buffers.loss_out.mass, self._target_mass, self.iou_threshold], outputs=[buffers.iou_counts],
            device=self.device,
        )

    def step_metrics(self, buffers: DoughStepBuffers) -> dict[str, np.ndarray]:
        counts = buffers.iou_counts.numpy()
        return {"iou": counts[:, 0] / np.maximum(counts[:, 1], 1.0)}

    @property
    def iou_threshold(self) -> float:
        """Grid mass above which a cell counts as occupied: a tenth of a cell full of dough [kg]."""
        return 0.1 * self.model.material.density * self.model.dx**3

    def _evaluate(self, state: State, scratch: LossScratch, loss_out: wp.array,
                  region: tuple[tuple[int, int, int], tuple[int, int, int]] | None = None) -> None:
        """Launch the loss of ``state`` into ``loss_out`` (its terms into ``scratch``); ``region``: a box of
        grid nodes that holds the dough's mass (the solver's active region), or None."""
        cfg = self.config
        n, p = self.world_count, self.particle_count
        for array in (scratch.sdf_sum, scratch.density_sum, scratch.contact_sum, scratch.contact_penalty):
            array.zero_()
        self.solver.scatter_mass(state["particle_x"], scratch.mass)
        origin, blocks = self._density_blocks(region)
        wp.launch(
            make_density_loss(cfg.density_block), dim=(n, *blocks),
            inputs=[scratch.mass, self._target_mass, 1.0 / self._total_mass, origin], outputs=[scratch.density_sum],
            device=self.device,
        )
        wp.launch(
            accumulate_loss_sdf, dim=(n, p), inputs=[state["particle_x"], *(state[name] for name in TARGET_FIELDS), 1.0 / p],
            outputs=[scratch.sdf_sum], device=self.device,
        )
        wp.launch(
            accumulate_contact, dim=(n, p, self.tool_count),
            inputs=[state["particle_x"], state["tool_pos"], state["tool_rot"], self.solver.tool_kind, self.solver.tool_size,
                    cfg.contact_temperature, *(state[name] for name in TARGET_FIELDS), int(self._contact_focus)],
            outputs=[scratch.contact_sum], device=self.device,
        )
        wp.launch(
            compute_contact_penalty, dim=(n, self.tool_count), inputs=[scratch.contact_sum, cfg.contact_temperature],
            outputs=[scratch.contact_penalty], device=self.device,
        )
        wp.launch(
            compute_loss_dough, dim=n, inputs=[scratch.sdf_sum, scratch.density_sum, cfg.sdf_weight, cfg.density_weight],
            outputs=[loss_out], device=self.device,
        )

    def observe(self, state: State, obs_out: wp.array) -> None:
        k = self.config.obs_particle_count
        wp.launch(
            compute_obs_dough, dim=(self.world_count, k + self.tool_count + 1),
            inputs=[state["particle_x"], state["particle_v"], state["tool_pos"], state["tool_rot"],
                    *(state[name] for name in TARGET_FIELDS), self._observed],
            outputs=[obs_out], device=self.device,
        )

    def loss_of(self, state: State, loss_out: wp.array) -> None:
        self._evaluate(state, self._eval, loss_out)

    def iou_of(self, state: State) -> np.ndarray:
        """IoU of the occupied grid cells of dough and target, per world."""
        counts = self.zeros((self.world_count, 2), wp.float64, requires_grad=False)
        self.solver.scatter_mass(state["particle_x"], self._eval.mass)
        wp.launch(
            count_iou, dim=(self.world_count, self.grid_res, self.grid_res),
            inputs=[self._eval.mass, self._target_mass, self.iou_threshold], outputs=[counts], device=self.device,
        )
        c = counts.numpy()
        return c[:, 0] / np.maximum(c[:, 1], 1.0)

    # Rendering ------------------------------------------------------------------------------

    def render(self, state: dict[str, np.ndarray], *, width: int, height: int) -> np.ndarray:
        """Top view (x right, z up) beside a front view (x right, y up) of the unit domain."""
        from diffenvs.render import Canvas

        panels = []
        x = state["particle_x"]
        shade = np.clip((x[:, 1] - self.model.floor_height) / 0.15, 0.0, 1.0)[:, None]
        colors = ((1 - shade) * np.array([150, 80, 40]) + shade * np.array([250, 190, 120])).astype(np.uint8)
        # The views frame the middle of the domain, where the dough and the tools work.
        for axes, view_centre in (((0, 2), np.array([0.5, 0.5])), ((0, 1), np.array([0.5, 0.25]))):
            canvas = Canvas(max(width // 2, 8), height, extent=0.3)
            centre, half = state["target_centre"], state["target_half"]
            canvas.rectangle(centre[list(axes)] - view_centre, half[list(axes)], color=(60, 170, 90), outline=0.004)
            if state["carve_size"][0] > 0:  # the pit: a vertical capsule
                base = state["carve_base"][list(axes)] - view_centre
                top = base + (np.array([0.0, state["carve_size"][1]]) if axes == (0, 1) else 0.0)
                canvas.segment(base, top, state["carve_size"][0], color=(200, 60, 60))
            order = np.argsort(x[:, 1] if axes == (0, 2) else -x[:, 2])
            canvas.points(x[order][:, list(axes)] - view_centre, colors[order], radius_px=2)
            for tool, pos, rot in zip(self.model.tools, state["tool_pos"], state["tool_rot"]):
                axis = _rotate(rot, np.array([1.0, 0.0, 0.0])) * (tool.size[1] if tool.kind == "capsule" else 0.0)
                a, b = (pos - axis)[list(axes)] - view_centre, (pos + axis)[list(axes)] - view_centre
                canvas.segment(a, b, tool.size[0], color=(90, 100, 120))
            panels.append(canvas.image)
        return np.concatenate(panels, axis=1)


def _rotate(q: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Rotate ``v`` by the unit quaternion ``q`` = (x, y, z, w) (for drawing)."""
    u, s = q[:3], q[3]
    return 2.0 * (u @ v) * u + (s * s - u @ u) * v + 2.0 * s * np.cross(u, v)


def _yaw_quat(angle: float) -> np.ndarray:
    return np.array([0.0, math.sin(angle / 2), 0.0, math.cos(angle / 2)])


class RollingPinTask(DoughTask):
    """Flatten the dough into a thinner, wider sheet with a rolling pin."""

    action_dim = 3
    tool_shapes = (ToolShape("capsule", (0.03, 0.15, 0.0)),)

    def sample_tools(self, rng, blob_centre):
        r = self.tool_shapes[0].size[0]
        pos = blob_centre + np.array([rng.uniform(-0.03, 0.03), BLOB_HALF[1] + r + rng.uniform(0.005, 0.02), rng.uniform(-0.03, 0.03)])
        return pos[None], _yaw_quat(rng.uniform(-0.3, 0.3))[None]

    def sample_target(self, rng, blob_centre, particles, tool_pos, tool_rot):
        # Demonstration from the pin's own start: press to the sheet's thickness, roll forward,
        # back past the start, and forward again to it (about 35 of the 50 steps).
        thickness = 2.0 * BLOB_HALF[1] * rng.uniform(0.5, 0.7)
        reach = rng.uniform(0.03, 0.05)
        step = self.config.tool_speed * self.frame_dt
        radius = self.tool_shapes[0].size[0]
        drop = float(tool_pos[0, 1] - (self.model.floor_height + thickness + radius))
        actions = [[0.0, 0.0, -1.0]] * int(drop // step) + [[0.0, 0.0, -(drop % step) / step]]
        rolls = round(reach / step)
        actions += [[1.0, 0.0, 0.0]] * rolls + [[-1.0, 0.0, 0.0]] * (2 * rolls) + [[1.0, 0.0, 0.0]] * rolls
        return {"target_x": self.demonstrate(particles, tool_pos, tool_rot, np.array(actions))["particle_x"]}

    def apply_action(self, state_in, buffers):
        cfg = self.config
        wp.launch(
            prepare_step_rolling_pin, dim=self.world_count,
            inputs=[buffers.action, state_in["tool_rot"], cfg.tool_speed, cfg.tool_yaw_rate, self.tool_shapes[0].size[0]],
            outputs=[buffers.control.tool_vel, buffers.control.tool_omega],
            device=self.device,
        )


class _TranslateTask(DoughTask):
    """Tools that translate with the velocity the action gives them (3 action entries per tool)."""

    def apply_action(self, state_in, buffers):
        wp.launch(
            prepare_step_translate, dim=(self.world_count, self.tool_count),
            inputs=[buffers.action, self.config.tool_speed],
            outputs=[buffers.control.tool_vel, buffers.control.tool_omega],
            device=self.device,
        )


class MoveTask(_TranslateTask):
    """Carry the dough to a target place with two spherical manipulators."""

    action_dim = 6
    tool_shapes = (ToolShape("sphere", (0.04, 0.0, 0.0)), ToolShape("sphere", (0.04, 0.0, 0.0)))

    def sample_tools(self, rng, blob_centre):
        r = self.tool_shapes[0].size[0]
        offset = BLOB_HALF[0] + r + rng.uniform(0.005, 0.02)
        pos = np.stack([blob_centre - [offset, 0.0, 0.0], blob_centre + [offset, 0.0, 0.0]])
        return pos, np.tile(_yaw_quat(0.0), (2, 1))

    def sample_target(self, rng, blob_centre, particles, tool_pos, tool_rot):
        heading = rng.uniform(-math.pi, math.pi)
        shift = rng.uniform(0.05, 0.12) * np.array([math.cos(heading), 0.0, math.sin(heading)])
        return {"target_x": particles["particle_x"] + shift}


class ShapeTask(_TranslateTask):
    """Press a pit of a given place and size into the dough's top with a spherical tool tip."""

    action_dim = 3
    tool_shapes = (ToolShape("sphere", (0.04, 0.0, 0.0)),)

    def sample_tools(self, rng, blob_centre):
        r = self.tool_shapes[0].size[0]
        pos = blob_centre + np.array([rng.uniform(-0.05, 0.05), BLOB_HALF[1] + r + rng.uniform(0.005, 0.02), rng.uniform(-0.05, 0.05)])
        return pos[None], _yaw_quat(0.0)[None]

    default_settle_steps = 30

    def sample_target(self, rng, blob_centre, particles, tool_pos, tool_rot):
        heading = rng.uniform(-math.pi, math.pi)
        place = blob_centre + rng.uniform(0.03, 0.08) * np.array([math.cos(heading), 0.0, math.sin(heading)])
        depth = rng.uniform(0.025, 0.04)
        radius = self.tool_shapes[0].size[0]
        top = float(particles["particle_x"][:, 1].max())
        start = np.array([place[0], top + radius + 0.005, place[2]])
        bottom = np.array([place[0], top - depth + radius, place[2]])
        # Demonstration: from just above the place, down to the pit's depth, back up, at rest.
        step = self.config.tool_speed * self.frame_dt
        moves = max(1, math.ceil((start[1] - bottom[1]) / step))
        speed = (start[1] - bottom[1]) / (moves * step)
        actions = [[0.0, -speed, 0.0]] * moves + [[0.0, speed, 0.0]] * moves + [[0.0, 0.0, 0.0]] * 3
        pressed = self.demonstrate(particles, start[None], tool_rot, np.array(actions))
        return {"carve_base": bottom, "carve_size": np.array([radius, start[1] - bottom[1], 0.0]),
                "target_x": pressed["particle_x"]}



_DOUGH_DOC = """
    ## Description
    A box of elastoplastic dough (PlasticineLab's 0.3 x 0.1 x 0.3 block) rests on the floor of
    the unit cube and is simulated with 3-D MLS-MPM (Neo-Hookean elasticity, von Mises
    plasticity; :class:`~diffenvs.sim.mpm.SolverMPM`). Kinematic rigid tools, driven by the
    action as velocities, shape it towards a target drawn from the seed. A target is a set of
    particles: the dough's own particles moved rigidly (``Move``) or by a scripted
    demonstration run with the env's own steps and hard tools (``RollingPin``, ``Shape``), so
    every target is reachable and reaching it gives zero loss. A hard tool that
    does not touch the dough has exactly zero gradient: ``contact_weight`` (a contact loss) and
    ``tool_softness`` (an influence radius) are the two remedies, each switchable.

    ## Observation Space
    ``Box(-inf, inf, (6 K + 7 T + 12,), float32)`` with K = ``obs_particle_count`` (64) and T
    tools: positions of K fixed particles (K x 3), their velocities (K x 3), each tool's position
    (3) and quaternion (x, y, z, w), the target box's centre (3) and half extents (3), and the
    pit's base (3) and size (radius, height, 0) (zeros for targets without a pit).

    ## Rewards
    ``sdf_target`` is the signed distance to the target particles' bounding box, minus (for
    ``Shape``) the pit, a vertical capsule; ``m_target`` is the target particles' grid mass.
    Task loss ``L = sdf_weight * mean_p max(sdf_target(x_p), 0) + density_weight * sum_blocks
    |m - m_target| / total mass`` over blocks of ``density_block``^3 cells (``info["loss"]``). Reward terms (``info["reward_<term>"]``):

    - ``progress``: ``progress_weight * (L(s_t) - L(s_{t+1}))`` (the return telescopes);
    - ``contact``: ``-contact_weight * sum_tools softmin_p(dist(tool, x_p))^2``, the soft minimum
      taken with length scale ``contact_temperature`` (default weight 0); with ``contact_focus``
      over the dough outside the target only (each particle weighted by how far outside).

    ``info["iou"]``: IoU of the grid cells occupied by dough and target (1 = reached);
    ``info["iou_incremental"]``: ``(IoU_t - IoU_0) / (1 - IoU_0)`` clipped to [0, 1].

    ## Starting State
    The blob's centre is jittered by up to 0.03 horizontally; particles fill it as a randomly
    shifted Halton sequence, at rest, F = I; with ``settle_steps`` (``Shape``: 30) it first rests
    under gravity. Tools start near the dough, not touching it. A reset runs the scripted
    demonstration of the target (``RollingPin`` about 45 one-world steps, ``Shape`` about 50
    with its settling: 0.2-0.4 s at the default preset, a few seconds at the paper preset).

    ## Episode End
    Truncation after 50 steps (``gym.make``). Termination only when the simulation diverges
    (a non-finite particle or one outside the domain): ``info["diverged"] = True``.

    ## Arguments
    The options of :class:`DoughConfig` (``preset="default"`` or ``"paper"``, ``grid_res``,
    ``particle_count``, ``sim_substeps``, ``frame_dt``, weights, material, tool options) and of
    :class:`~diffenvs.env.DiffEnv`. ``checkpoint`` defaults to the preset's choice: ``False`` at the
    default preset (every substep recorded: about 2 MB per env step and world), ``True`` at the
    paper preset, where ``grad()`` keeps one state per env step (particles and tools: 96 bytes
    per particle plus its gradient, about 2 MB) and re-runs each step's substeps before
    differentiating it (on the CPU on a second thread, in parallel with the adjoints); a recorded
    paper-scale step would take about 25 MB.
    The remedies can be changed between episodes with ``env.set_remedies(contact_weight=...,
    softness=..., contact_focus=...)`` (``softness`` is ``tool_softness``; ``contact_focus`` 1 or
    0), e.g. to anneal from soft to hard tools.

    ## Version History
    - v0: initial release.
"""


def preset_checkpoint(checkpoint: bool | None, task_kwargs: dict[str, Any]) -> bool:
    """``checkpoint``, or where it is None the choice of the preset in ``task_kwargs`` (see :data:`PRESETS`)."""
    if checkpoint is not None:
        return bool(checkpoint)
    preset = task_kwargs.get("preset", "default")
    return bool(PRESETS[preset]["checkpoint"]) if preset in PRESETS else False  # (a bad preset raises in the task)


class DoughEnv(DiffEnv):
    """Base of the dough envs: adds ``info["iou_incremental"]``; ``checkpoint=None`` (the default)
    takes the preset's choice: recorded at the default preset, checkpointed at the paper preset."""

    task: DoughTask

    def __init__(self, render_mode: str | None = None, *, checkpoint: bool | None = None, **kwargs: Any):
        super().__init__(render_mode, checkpoint=preset_checkpoint(checkpoint, kwargs), **kwargs)

    def _restart(self, state):
        obs, info = super()._restart(state)
        self._iou0 = float(self.task.iou_of(self.batch.trajectory.initial)[0])
        info["iou"] = self._iou0
        return obs, info

    def __getstate__(self):
        return {**super().__getstate__(), "iou0": getattr(self, "_iou0", None)}

    def __setstate__(self, saved):
        super().__setstate__(saved)
        if saved["iou0"] is not None:
            self._iou0 = saved["iou0"]  # the episode's start, not the restored state

    def step(self, action):
        obs, reward, terminated, truncated, info = super().step(action)
        if not info["diverged"]:
            gain = (info["iou"] - self._iou0) / max(1.0 - self._iou0, 1e-9)
            info["iou_incremental"] = float(np.clip(gain, 0.0, 1.0))
        else:
            info["iou"] = info["iou_incremental"] = 0.0
        return obs, reward, terminated, truncated, info


class RollingPinEnv(DoughEnv):
    __doc__ = """Flatten dough into a target sheet with a rolling pin (capsule, radius 0.03, half length 0.15).

    ## Action Space
    ``Box(-1, 1, (3,), float32)``, clipped: a[0] rolls the pin across its axis at
    ``tool_speed * a[0]`` (it spins without slipping), a[1] yaws it at ``tool_yaw_rate * a[1]``,
    a[2] moves it vertically at ``tool_speed * a[2]``.
    The target is a demonstration from the pin's start: press down to a thickness of 0.05-0.07
    (the blob is 0.1 high), roll forward 0.03-0.05, back twice as far, forward to the start.
""" + _DOUGH_DOC
    task_class = RollingPinTask


class MoveEnv(DoughEnv):
    __doc__ = """Carry dough to a target place with two spheres (radius 0.04).

    ## Action Space
    ``Box(-1, 1, (6,), float32)``, clipped: the velocity of each sphere, ``tool_speed * a[3t:3t+3]``.
    The target is the blob moved 0.05-0.12 horizontally in a random direction.
""" + _DOUGH_DOC
    task_class = MoveTask


class ShapeEnv(DoughEnv):
    __doc__ = """Press a pit into the dough with a spherical tool tip (radius 0.04).

    ## Action Space
    ``Box(-1, 1, (3,), float32)``, clipped: the tip's velocity, ``tool_speed * a``.
    The target is a demonstration: the tip, started just above a place 0.03-0.08 from the
    blob's centre in a random direction, presses a pit 0.025-0.04 deep and lifts off again (the
    displaced dough stays where the press put it). The tool itself starts elsewhere: it has to
    find the place first.
""" + _DOUGH_DOC
    task_class = ShapeTask


class DoughVectorEnv(DiffVectorEnv):
    """Base of the dough vector envs: adds ``info["iou_incremental"]`` per world; ``checkpoint``
    as for :class:`DoughEnv`."""

    task: DoughTask

    def __init__(self, num_envs: int = 1, *, checkpoint: bool | None = None, **kwargs: Any):
        super().__init__(num_envs, checkpoint=preset_checkpoint(checkpoint, kwargs), **kwargs)

    def _new_episodes(self, worlds: np.ndarray) -> None:
        iou = self.task.iou_of(self.batch.trajectory.state())
        self._iou0 = np.where(worlds, iou, getattr(self, "_iou0", iou))

    def _extend_info(self, info: dict[str, Any], diverged: np.ndarray) -> None:
        gain = (info["iou"] - self._iou0) / np.maximum(1.0 - self._iou0, 1e-9)
        info["iou_incremental"] = np.where(diverged, 0.0, np.clip(gain, 0.0, 1.0))


class RollingPinVectorEnv(DoughVectorEnv):
    """``num_envs`` RollingPin worlds in one batch (see :class:`RollingPinEnv`)."""

    task_class = RollingPinTask


class MoveVectorEnv(DoughVectorEnv):
    """``num_envs`` Move worlds in one batch (see :class:`MoveEnv`)."""

    task_class = MoveTask


class ShapeVectorEnv(DoughVectorEnv):
    """``num_envs`` Shape worlds in one batch (see :class:`ShapeEnv`)."""

    task_class = ShapeTask
