"""MLS-MPM solver for elastoplastic dough manipulated by kinematic rigid tools."""

from __future__ import annotations

import dataclasses
import itertools
import math

import numpy as np
import warp as wp

from diffenvs.sim.mpm.kernels import (
    MPMParams,
    advance_tools,
    clear_grid_region,
    finish_bounds,
    g2p_gather,
    g2p_gather_adjoint,
    grid_update_adjoint_plain,
    init_extent,
    make_grid_update,
    p2g_adjoint,
    p2g_mass,
    p2g_mass_adjoint,
    p2g_scatter,
    p2g_scatter_series,
    particle_extent,
    plastic_projection,
    plastic_projection_series,
)
from diffenvs.sim.mpm.model import TOOL_TYPES, MPMModel
from diffenvs.sim.mpm.state import MPMControl, MPMGrid, MPMState
from diffenvs.warp_util import record_adjoint

_REGION_SERIALS = itertools.count()
RETURN_MAPPINGS = ("svd", "series")
"""The return mappings of :class:`SolverMPM.Config`."""
Box = tuple[tuple[int, int, int], tuple[int, int, int]]
"""A box of grid nodes: (origin, shape)."""


@dataclasses.dataclass
class ActiveRegion:
    """Where a solver step works (see :meth:`SolverMPM.active_region`).

    Attributes:
        bounds: Each world's region on the device, shape (world_count, 2), vec3i: the lowest and
            highest stencil base (its nodes are lo .. hi + 2). Stencils are clamped to it, and only
            its nodes are cleared, updated and read.
        box: A host-side box (origin, shape) holding every world's region, over which the grid
            kernels are launched and which the grids store compactly; ``None``: launch over the whole
            grid and let each thread skip the nodes outside its world's region (no host round trip:
            the CUDA path, which CUDA graphs can capture).
    """

    bounds: wp.array
    box: Box | None
    serial: int = dataclasses.field(default_factory=lambda: next(_REGION_SERIALS))
    """Tells regions apart (a new one per :meth:`SolverMPM.active_region` call) for the grid's clean mark."""


class SolverMPM:
    """Moving-least-squares MPM (Hu et al. 2018) with quadratic B-splines and APIC transfer.

    One :meth:`step` is: particle-to-grid scatter (with the elastic trial deformation, the von
    Mises return mapping and Neo-Hookean stress), grid update (gravity, tools, walls, floor),
    grid-to-particle gather and advection, and the kinematic advance of the tools. All worlds
    of a batch go through the same launches.

    Neo-Hookean elasticity needs no SVD; the SVD is used only by the plastic projection and
    only differentiated where a particle yields, so gradients are exact for dough at rest.
    """

    @dataclasses.dataclass(frozen=True)
    class Config:
        """Numerical parameters.

        Attributes:
            empty_node_fraction: A grid node whose mass is below this fraction of one particle's
                mass counts as empty. Nodes at the edge of a stencil can get weights of 1e-20;
                v = p / m is harmless there, but its adjoint, -p / m^2, overflows to inf.
            return_mapping: How the von Mises return mapping finds the Hencky strain of a particle
                that the cheap elastic bound does not settle: ``"series"`` (the default: matrix logarithm
                and exponential series near the identity, the SVD beyond; see
                :func:`~diffenvs.sim.mpm.kernels.von_mises_project_series`) or ``"svd"`` (Warp's
                ``svd3`` for every such particle: the same map, about three times dearer per
                yielding particle and less accurate where two stretches meet; the studies in
                ``results/`` ran with it and their configs pin it).
        """

        empty_node_fraction: float = 1.0e-4
        return_mapping: str = "series"

        def __post_init__(self) -> None:
            if not 0.0 <= self.empty_node_fraction < 1.0:
                raise ValueError(f"empty_node_fraction must lie in [0, 1), got {self.empty_node_fraction}")
            if self.return_mapping not in RETURN_MAPPINGS:
                raise ValueError(f"return_mapping must be one of {list(RETURN_MAPPINGS)}, got {self.return_mapping!r}")

    def __init__(self, model: MPMModel, config: Config | None = None, *, device=None):
        self.model = model
        self.config = config or SolverMPM.Config()
        self.device = wp.get_device(device)
        mat = model.material
        params = MPMParams()
        params.dx = model.dx
        params.inv_dx = 1.0 / model.dx
        params.grid_res = model.grid_res
        params.boundary_cells = model.boundary_cells
        params.particle_volume = model.rest_particle_volume
        params.particle_mass = model.particle_mass
        params.mu = mat.mu
        params.lam = mat.lam
        params.yield_stress = mat.yield_stress
        params.gravity = wp.vec3(*model.gravity)
        params.ground_friction = model.ground_friction
        params.min_node_mass = self.config.empty_node_fraction * model.particle_mass
        series = self.config.return_mapping == "series"
        self._p2g_scatter = p2g_scatter_series if series else p2g_scatter
        self._plastic_projection = plastic_projection_series if series else plastic_projection
        self.params = params
        tools = model.tools
        self.tool_count = len(tools)
        n = max(self.tool_count, 1)
        self.tool_kind = wp.array([TOOL_TYPES[t.kind] for t in tools] or [0], dtype=int, device=self.device)
        self.tool_size = wp.array(np.array([t.size for t in tools] or [(0.0, 0.0, 0.0)], dtype=np.float32), dtype=wp.vec3, device=self.device)
        self.tool_friction = wp.array([t.friction for t in tools] or [0.0], dtype=float, device=self.device)
        self.tool_softness = wp.array([t.softness for t in tools] or [0.0], dtype=float, device=self.device)
        assert self.tool_kind.shape[0] == n
        self._grid_update = make_grid_update(self.tool_count)
        self._unit_weights: wp.array | None = None
        self._scratch: dict[str, wp.array] = {}
        self._scratch_key: tuple[int, int] | None = None
        self._nodes: tuple[wp.array, wp.array] | None = None
        self._whole: dict[int, ActiveRegion] = {}  # whole-grid regions, per world count
        self._extent: dict[int, tuple[wp.array, wp.array, wp.array]] = {}  # active_region's scratch, per world count
        self.host_box = self.device.is_cpu
        """Whether :meth:`active_region` reads the worlds' box back by default (on the CPU, where that
        is free and the compact box saves work and memory); without it a step's launches depend on
        device data alone, so they can be captured and replayed."""

    def set_tool_softness(self, softness: list[float] | np.ndarray) -> None:
        """Change the tools' influence radii (e.g. to anneal from soft to hard)."""
        values = np.asarray(softness, dtype=np.float32).reshape(-1)
        if values.shape != (self.tool_count,) or np.any(values < 0):
            raise ValueError(f"softness needs {self.tool_count} values >= 0, got {softness}")
        self.tool_softness.assign(values)

    def alloc_grid(self, world_count: int, *, requires_grad: bool) -> MPMGrid:
        """Scratch grid of one substep, uninitialised: :meth:`step` clears the box it uses (and the
        box's gradients in the backward pass)."""
        return MPMGrid.empty(world_count, self.model.grid_res, device=self.device, requires_grad=requires_grad)

    def scatter_mass(self, particle_x: wp.array, grid_m: wp.array, weights: wp.array | None = None) -> None:
        """Write the grid mass of the particle set ``particle_x`` (world_count, count) into ``grid_m``.

        ``weights`` (same shape, default 1) scales each particle's mass (0 leaves it out).
        """
        if weights is None:
            if self._unit_weights is None or self._unit_weights.shape != particle_x.shape:
                self._unit_weights = wp.ones(particle_x.shape, dtype=float, device=self.device)
            weights = self._unit_weights
        grid_m.zero_()
        wp.launch(p2g_mass, dim=particle_x.shape, inputs=[particle_x, weights, self.params], outputs=[grid_m],
                  device=self.device, record_tape=False)
        if not (particle_x.requires_grad and grid_m.requires_grad):
            return

        def backward() -> None:  # the hand-written adjoint: a gather, where Warp's is a replayed scatter
            with_weight_grad = int(weights.grad is not None)
            wp.launch(
                p2g_mass_adjoint, dim=particle_x.shape, inputs=[particle_x, weights, self.params, grid_m.grad, with_weight_grad],
                outputs=[particle_x.grad, weights.grad if with_weight_grad else weights], device=self.device,
            )

        record_adjoint(backward, [particle_x, weights, grid_m])

    def active_region(self, state: MPMState, duration: float, extra_speed: float = 0.0, *,
                      out: wp.array | None = None, host_box: bool | None = None) -> ActiveRegion:
        """The grid region each world's particle stencils stay inside for ``duration`` [s].

        Per world: its particles' bounding box, grown by the distance a particle can travel in
        ``duration`` at the world's top particle speed plus ``extra_speed`` (e.g. the tools' speed)
        and by the stencil's reach; the whole grid for a world with a non-finite particle. Computed
        on the device into ``out`` ((world_count, 2) vec3i; default: a new array). With
        ``host_box`` (default: on the CPU, where reading back is free) the box holding every
        world's region is read back for the launches; without it the step needs no host round trip.
        """
        worlds = state.particle_x.shape[0]
        if out is None:
            out = self.alloc_bounds(worlds)
        cells, speed, bad = self._extent_scratch(worlds)
        wp.launch(init_extent, dim=worlds, outputs=[cells, speed, bad], device=self.device, record_tape=False)
        wp.launch(particle_extent, dim=state.particle_x.shape,
                  inputs=[state.particle_x, state.particle_v, self.params.inv_dx, cells, speed],
                  outputs=[cells, speed, bad], device=self.device, record_tape=False)
        wp.launch(finish_bounds, dim=worlds, inputs=[cells, speed, bad, duration / self.model.dx, extra_speed,
                                                      self.model.grid_res], outputs=[out], device=self.device, record_tape=False)
        if not (self.host_box if host_box is None else host_box):
            return ActiveRegion(out, None)
        b = out.numpy()
        lo, hi = b[:, 0].min(axis=0), b[:, 1].max(axis=0) + 2
        return ActiveRegion(out, (tuple(int(v) for v in lo), tuple(int(v) for v in hi - lo + 1)))

    def alloc_bounds(self, world_count: int) -> wp.array:
        """An array for :meth:`active_region`'s per-world bounds."""
        return wp.zeros((world_count, 2), dtype=wp.vec3i, device=self.device)

    def whole_grid(self, world_count: int) -> ActiveRegion:
        """The region of a step over the whole grid (cached)."""
        cached = self._whole.get(world_count)
        if cached is None:
            top = self.model.grid_res - 3
            bounds = np.zeros((world_count, 2, 3), dtype=np.int32)
            bounds[:, 1] = top
            cached = self._whole[world_count] = ActiveRegion(wp.array(bounds, dtype=wp.vec3i, device=self.device), None)
        return cached

    def region_of_box(self, world_count: int, box: Box) -> ActiveRegion:
        """The same region ``box`` (origin, shape: at least 3 nodes per axis) in every world."""
        res = self.model.grid_res
        origin, shape = box
        if any(o < 0 or n < 3 or o + n > res for o, n in zip(origin, shape)):
            raise ValueError(f"region {box} must lie inside the {res}^3 grid and span at least 3 nodes per axis")
        bounds = np.zeros((world_count, 2, 3), dtype=np.int32)
        bounds[:, 0] = origin
        bounds[:, 1] = np.add(origin, shape) - 3
        return ActiveRegion(wp.array(bounds, dtype=wp.vec3i, device=self.device), (tuple(origin), tuple(shape)))

    def _extent_scratch(self, worlds: int) -> tuple[wp.array, wp.array, wp.array]:
        if worlds not in self._extent:
            self._extent[worlds] = (wp.zeros((worlds, 6), dtype=wp.int32, device=self.device),
                                    wp.zeros(worlds, dtype=float, device=self.device),
                                    wp.zeros(worlds, dtype=wp.int32, device=self.device))
        return self._extent[worlds]

    def _scatter(self, state_in: MPMState, state_out: MPMState, grid: MPMGrid, dt: float, bounds: wp.array) -> None:
        """Particle-to-grid transfer, differentiated by the hand-written :func:`p2g_adjoint` (stencil, stress,
        elastic trial) and, for yielding particles only, the generated adjoint of :func:`plastic_projection`."""
        worlds, particles = state_in.particle_x.shape
        inputs = [state_in.particle_x, state_in.particle_v, state_in.particle_C, state_in.particle_F]
        wp.launch(
            self._p2g_scatter, dim=(worlds, particles), inputs=[*inputs, self.params, dt, bounds],
            outputs=[state_out.particle_F, grid.mv, grid.m], device=self.device, record_tape=False,
        )
        if not (state_in.particle_x.requires_grad and grid.mv.requires_grad):
            return

        def backward() -> None:
            scratch = self._particle_scratch(worlds, particles)
            count, index = scratch["yield_count"], scratch["yield_index"]
            count.zero_()
            wp.launch(
                p2g_adjoint, dim=(worlds, particles),
                inputs=[*inputs, state_out.particle_F, self.params, dt, bounds, grid.mv.grad, grid.m.grad,
                        state_out.particle_F.grad],
                outputs=[*(a.grad for a in inputs), count, index, scratch["adj_projected"]], device=self.device,
            )
            # On the CPU a launch is synchronous, so the count is known for free: launch over the
            # yielding particles only (often none or a few percent). On a GPU, over all of them.
            threads = int(count.numpy()[0]) if self.device.is_cpu else worlds * particles
            if threads:
                wp.launch(
                    self._plastic_projection, dim=threads,
                    inputs=[count, index, state_in.particle_C, state_in.particle_F, self.params, dt],
                    outputs=[scratch["projected"]],
                    adj_inputs=[None, None, state_in.particle_C.grad, state_in.particle_F.grad, MPMParams(), 0.0],
                    adj_outputs=[scratch["adj_projected"]], adjoint=True, device=self.device,
                )

        record_adjoint(backward, [*inputs, state_out.particle_F, grid.mv, grid.m])

    def _particle_scratch(self, worlds: int, particles: int) -> dict[str, wp.array]:
        """Per-particle arrays of the p2g backward pass, reused by every substep (they run one at a time)."""
        key = (worlds, particles)
        if self._scratch_key != key:
            def zeros(dtype):
                return wp.zeros((worlds, particles), dtype=dtype, device=self.device)

            self._scratch = {"yield_count": wp.zeros(1, dtype=wp.int32, device=self.device),
                             "yield_index": wp.zeros(worlds * particles, dtype=wp.int32, device=self.device),
                             "projected": zeros(wp.mat33), "adj_projected": zeros(wp.mat33)}
            self._scratch_key = key
        return self._scratch

    def _update_grid(self, state_in: MPMState, control: MPMControl, grid: MPMGrid, dt: float, origin: wp.vec3i,
                     dim: tuple[int, ...], bounds: wp.array, consume: bool = False) -> None:
        """Grid update (gravity, tools, walls) of the worlds' regions ``bounds`` inside the box ``dim`` =
        (worlds, *shape) at ``origin``, differentiated
        by the hand-written :func:`grid_update_adjoint_plain` where no tool or wall acts and by Warp's adjoint,
        over a list of the other nodes, where one does."""
        tools = [state_in.tool_pos, state_in.tool_rot, control.tool_vel, control.tool_omega]
        count, index = self._node_list(grid)
        inputs = [grid.mv, grid.m, *tools, self.tool_kind, self.tool_size, self.tool_friction, self.tool_softness,
                  self.params, dt, origin, bounds, count, index]
        wp.launch(self._grid_update, dim=dim, inputs=[*inputs, 2 if consume else 0], outputs=[grid.v, grid.mv, grid.m],
                  device=self.device, record_tape=False)
        if not grid.v.requires_grad:
            return

        def backward() -> None:
            count.zero_()
            wp.launch(
                grid_update_adjoint_plain, dim=dim,
                inputs=[grid.mv, grid.m, state_in.tool_pos, state_in.tool_rot, self.tool_kind, self.tool_size,
                        self.tool_softness, self.tool_count, self.params, origin, bounds, grid.v.grad],
                outputs=[grid.mv.grad, grid.m.grad, count, index], device=self.device,
            )
            # As for the plastic projection: on the CPU only the listed nodes, on a GPU all of them.
            threads = int(count.numpy()[0]) if self.device.is_cpu else math.prod(dim)
            if threads:
                adj_inputs = [grid.mv.grad, grid.m.grad, *(a.grad for a in tools), None, None, None, None, MPMParams(),
                              0.0, wp.vec3i(0, 0, 0), None, None, None, 0]
                wp.launch(self._grid_update, dim=(1, threads, 1, 1), inputs=[*inputs, 1], outputs=[grid.v, grid.mv, grid.m],
                          adj_inputs=adj_inputs, adj_outputs=[grid.v.grad, None, None], adjoint=True, device=self.device)

        record_adjoint(backward, [grid.mv, grid.m, *tools, grid.v])

    def _node_list(self, grid: MPMGrid) -> tuple[wp.array, wp.array]:
        """Count and flat indices of the grid nodes left to the grid update's generated adjoint (shared scratch)."""
        if self._nodes is None or self._nodes[1].shape[0] != grid.m.size:
            self._nodes = (wp.zeros(1, dtype=wp.int32, device=self.device),
                           wp.zeros(grid.m.size, dtype=wp.int32, device=self.device))
        return self._nodes

    def _gather(self, state_in: MPMState, state_out: MPMState, grid: MPMGrid, dt: float, bounds: wp.array) -> None:
        """Grid-to-particle transfer, differentiated by the hand-written :func:`g2p_gather_adjoint`."""
        worlds, particles = state_in.particle_x.shape
        outputs = [state_out.particle_x, state_out.particle_v, state_out.particle_C]
        wp.launch(
            g2p_gather, dim=(worlds, particles), inputs=[state_in.particle_x, grid.v, self.params, dt, bounds],
            outputs=outputs, device=self.device, record_tape=False,
        )
        if not (state_in.particle_x.requires_grad and grid.v.requires_grad):
            return

        def backward() -> None:
            wp.launch(
                g2p_gather_adjoint, dim=(worlds, particles),
                inputs=[state_in.particle_x, grid.v, self.params, dt, bounds, *(a.grad for a in outputs)],
                outputs=[state_in.particle_x.grad, grid.v.grad], device=self.device,
            )

        record_adjoint(backward, [state_in.particle_x, grid.v, *outputs])

    def step(
        self, state_in: MPMState, state_out: MPMState, control: MPMControl, dt: float, grid: MPMGrid,
        region: ActiveRegion | Box | None = None,
    ) -> None:
        """Advance all worlds by ``dt`` [s] from ``state_in`` into ``state_out`` using ``grid`` as scratch.

        ``region`` limits the step to each world's region of grid nodes that holds every particle's
        stencil (see :meth:`active_region`; a box (origin, shape) means that box in every world);
        default: the whole grid. Only the region is cleared, updated and read (stencils are clamped
        to it), and in the backward pass only its gradients are cleared: a step at the paper preset
        touches about 4% of a 64^3 grid. With a host-side box the grid stores it compactly.
        """
        worlds = state_in.particle_x.shape[0]
        if region is None:
            region = self.whole_grid(worlds)
        elif not isinstance(region, ActiveRegion):
            region = self.region_of_box(worlds, region)  # raises for a bad box
        res = self.model.grid_res
        origin, shape = region.box if region.box is not None else ((0, 0, 0), (res, res, res))
        # Not differentiated, the grid update consumes the region's momentum and mass (leaves them
        # zero): the next substep over the same region skips the clear (the grid keeps the mark).
        storage, consume = grid, not grid.v.requires_grad
        if region.box is not None:
            grid = grid.region(origin, shape)  # the box stored compactly
        bounds, origin = region.bounds, wp.vec3i(*origin)
        rows = (worlds, shape[0], shape[1])
        if not (consume and storage.__dict__.get("_consumed") == region.serial):
            wp.launch(clear_grid_region, dim=rows, inputs=[origin, shape[2], bounds, 0], outputs=[grid.mv, grid.m, grid.v],
                      device=self.device, record_tape=False)
        storage.__dict__["_consumed"] = region.serial if consume else None  # not a field: array walks must not see it
        self._scatter(state_in, state_out, grid, dt, bounds)
        self._update_grid(state_in, control, grid, dt, origin, (worlds, *shape), bounds, consume)
        self._gather(state_in, state_out, grid, dt, bounds)
        wp.launch(
            advance_tools, dim=state_in.tool_pos.shape,
            inputs=[state_in.tool_pos, state_in.tool_rot, control.tool_vel, control.tool_omega, dt],
            outputs=[state_out.tool_pos, state_out.tool_rot], device=self.device,
        )
        if grid.v.requires_grad:
            # Recorded last, so it runs first in the backward pass: the grid's gradients start from
            # zero in the region, the only nodes this step's adjoints read or write.
            def clear_adjoints() -> None:
                wp.launch(clear_grid_region, dim=rows, inputs=[origin, shape[2], bounds, 1],
                          outputs=[grid.mv.grad, grid.m.grad, grid.v.grad], device=self.device)

            record_adjoint(clear_adjoints, [grid.mv, grid.m, grid.v])
