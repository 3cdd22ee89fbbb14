"""MLS-MPM solver for elastoplastic dough manipulated by kinematic rigid tools."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import warp as wp

from diffenvs.sim.mpm.kernels import (
    MPMParams,
    advance_tools,
    clear_grid_region,
    g2p_gather,
    g2p_gather_adjoint,
    grid_update_adjoint_plain,
    make_grid_update,
    p2g_adjoint,
    p2g_mass,
    p2g_mass_adjoint,
    p2g_scatter,
    plastic_projection,
)
from diffenvs.sim.mpm.model import TOOL_TYPES, MPMModel
from diffenvs.sim.mpm.state import MPMControl, MPMGrid, MPMState
from diffenvs.warp_util import record_adjoint


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
        """

        empty_node_fraction: float = 1.0e-4

        def __post_init__(self) -> None:
            if not 0.0 <= self.empty_node_fraction < 1.0:
                raise ValueError(f"empty_node_fraction must lie in [0, 1), got {self.empty_node_fraction}")

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

    def active_region(self, state: MPMState, duration: float, extra_speed: float = 0.0) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
        """Grid box (origin, shape) that every particle's stencil stays inside for ``duration`` [s].

        The particles' bounding box over all worlds, grown by the distance a particle can travel
        in ``duration`` at its current speed plus ``extra_speed`` (e.g. the tools' speed) and by
        the stencil's reach. Reads the particles back to the host (once per call).
        """
        res = self.model.grid_res
        x = state.particle_x.numpy().reshape(-1, 3).astype(np.float64)
        v = state.particle_v.numpy().reshape(-1, 3).astype(np.float64)
        speed = float(np.sqrt((v**2).sum(axis=1)).max(initial=0.0))
        margin = (speed + extra_speed) * duration / self.model.dx + 2.0
        if not (np.isfinite(x).all() and np.isfinite(margin)) or margin > res:
            return (0, 0, 0), (res, res, res)  # a diverging state: the whole grid
        lo = np.clip(np.floor(x.min(axis=0) / self.model.dx - margin), 0, res - 1).astype(int)
        hi = np.clip(np.ceil(x.max(axis=0) / self.model.dx + margin), 0, res - 1).astype(int)
        return tuple(int(v) for v in lo), tuple(int(v) for v in hi - lo + 1)

    def _scatter(self, state_in: MPMState, state_out: MPMState, grid: MPMGrid, dt: float,
                 bounds: tuple[wp.vec3i, wp.vec3i] | None = None) -> None:
        """Particle-to-grid transfer, differentiated by the hand-written :func:`p2g_adjoint` (stencil, stress,
        elastic trial) and, for yielding particles only, the generated adjoint of :func:`plastic_projection`."""
        worlds, particles = state_in.particle_x.shape
        lo, hi = bounds or self._stencil_bounds(None)
        inputs = [state_in.particle_x, state_in.particle_v, state_in.particle_C, state_in.particle_F]
        wp.launch(
            p2g_scatter, dim=(worlds, particles), inputs=[*inputs, self.params, dt, lo, hi],
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
                inputs=[*inputs, state_out.particle_F, self.params, dt, lo, hi, grid.mv.grad, grid.m.grad,
                        state_out.particle_F.grad],
                outputs=[*(a.grad for a in inputs), count, index, scratch["adj_projected"]], device=self.device,
            )
            # On the CPU a launch is synchronous, so the count is known for free: launch over the
            # yielding particles only (often none or a few percent). On a GPU, over all of them.
            threads = int(count.numpy()[0]) if self.device.is_cpu else worlds * particles
            if threads:
                wp.launch(
                    plastic_projection, dim=threads,
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
                     dim: tuple[int, ...]) -> None:
        """Grid update (gravity, tools, walls) of the box ``dim`` = (worlds, *shape) at ``origin``, differentiated
        by the hand-written :func:`grid_update_adjoint_plain` where no tool or wall acts and by Warp's adjoint,
        over a list of the other nodes, where one does."""
        tools = [state_in.tool_pos, state_in.tool_rot, control.tool_vel, control.tool_omega]
        count, index = self._node_list(grid)
        inputs = [grid.mv, grid.m, *tools, self.tool_kind, self.tool_size, self.tool_friction, self.tool_softness,
                  self.params, dt, origin, count, index]
        wp.launch(self._grid_update, dim=dim, inputs=[*inputs, 0], outputs=[grid.v], device=self.device, record_tape=False)
        if not grid.v.requires_grad:
            return

        def backward() -> None:
            count.zero_()
            wp.launch(
                grid_update_adjoint_plain, dim=dim,
                inputs=[grid.mv, grid.m, state_in.tool_pos, state_in.tool_rot, self.tool_kind, self.tool_size,
                        self.tool_softness, self.tool_count, self.params, origin, grid.v.grad],
                outputs=[grid.mv.grad, grid.m.grad, count, index], device=self.device,
            )
            # As for the plastic projection: on the CPU only the listed nodes, on a GPU all of them.
            threads = int(count.numpy()[0]) if self.device.is_cpu else math.prod(dim)
            if threads:
                adj_inputs = [grid.mv.grad, grid.m.grad, *(a.grad for a in tools), None, None, None, None, MPMParams(),
                              0.0, wp.vec3i(0, 0, 0), None, None, 0]
                wp.launch(self._grid_update, dim=(1, threads, 1, 1), inputs=[*inputs, 1], outputs=[grid.v],
                          adj_inputs=adj_inputs, adj_outputs=[grid.v.grad], adjoint=True, device=self.device)

        record_adjoint(backward, [grid.mv, grid.m, *tools, grid.v])

    def _node_list(self, grid: MPMGrid) -> tuple[wp.array, wp.array]:
        """Count and flat indices of the grid nodes left to the grid update's generated adjoint (shared scratch)."""
        if self._nodes is None or self._nodes[1].shape[0] != grid.m.size:
            self._nodes = (wp.zeros(1, dtype=wp.int32, device=self.device),
                           wp.zeros(grid.m.size, dtype=wp.int32, device=self.device))
        return self._nodes

    def _gather(self, state_in: MPMState, state_out: MPMState, grid: MPMGrid, dt: float,
                bounds: tuple[wp.vec3i, wp.vec3i] | None = None) -> None:
        """Grid-to-particle transfer, differentiated by the hand-written :func:`g2p_gather_adjoint`."""
        worlds, particles = state_in.particle_x.shape
        lo, hi = bounds or self._stencil_bounds(None)
        outputs = [state_out.particle_x, state_out.particle_v, state_out.particle_C]
        wp.launch(
            g2p_gather, dim=(worlds, particles), inputs=[state_in.particle_x, grid.v, self.params, dt, lo, hi],
            outputs=outputs, device=self.device, record_tape=False,
        )
        if not (state_in.particle_x.requires_grad and grid.v.requires_grad):
            return

        def backward() -> None:
            wp.launch(
                g2p_gather_adjoint, dim=(worlds, particles),
                inputs=[state_in.particle_x, grid.v, self.params, dt, lo, hi, *(a.grad for a in outputs)],
                outputs=[state_in.particle_x.grad, grid.v.grad], device=self.device,
            )

        record_adjoint(backward, [state_in.particle_x, grid.v, *outputs])

    def step(
        self, state_in: MPMState, state_out: MPMState, control: MPMControl, dt: float, grid: MPMGrid,
        region: tuple[tuple[int, int, int], tuple[int, int, int]] | None = None,
    ) -> None:
        """Advance all worlds by ``dt`` [s] from ``state_in`` into ``state_out`` using ``grid`` as scratch.

        ``region`` (origin, shape) limits the step to a box of grid nodes that holds every
        particle's stencil (see :meth:`active_region`); default: the whole grid. Only that box is
        cleared, updated and read (stencils are clamped to it), and in the backward pass only its
        gradients are cleared: a step at the paper preset touches about 4% of a 64^3 grid.
        """
        worlds = state_in.particle_x.shape[0]
        res = self.model.grid_res
        shape = region[1] if region is not None else (res, res, res)
        bounds = self._stencil_bounds(region)  # raises for a bad region
        if region is not None:
            grid = grid.region(*region)  # the box stored compactly
        rows = (worlds, shape[0], shape[1])
        wp.launch(clear_grid_region, dim=rows, inputs=[bounds[0], shape[2]], outputs=[grid.mv, grid.m, grid.v],
                  device=self.device, record_tape=False)
        self._scatter(state_in, state_out, grid, dt, bounds)
        self._update_grid(state_in, control, grid, dt, bounds[0], (worlds, *shape))
        self._gather(state_in, state_out, grid, dt, bounds)
        wp.launch(
            advance_tools, dim=state_in.tool_pos.shape,
            inputs=[state_in.tool_pos, state_in.tool_rot, control.tool_vel, control.tool_omega, dt],
            outputs=[state_out.tool_pos, state_out.tool_rot], device=self.device,
        )
        if grid.v.requires_grad:
            # Recorded last, so it runs first in the backward pass: the grid's gradients start from
            # zero in the box, the only nodes this step's adjoints read or write.
            def clear_adjoints() -> None:
                wp.launch(clear_grid_region, dim=rows, inputs=[bounds[0], shape[2]],
                          outputs=[grid.mv.grad, grid.m.grad, grid.v.grad], device=self.device)

            record_adjoint(clear_adjoints, [grid.mv, grid.m, grid.v])

    def _stencil_bounds(self, region: tuple[tuple[int, int, int], tuple[int, int, int]] | None) -> tuple[wp.vec3i, wp.vec3i]:
        """Lowest and highest stencil base inside ``region`` (origin, shape); None: the whole grid."""
        res = self.model.grid_res
        if region is None:
            return wp.vec3i(0, 0, 0), wp.vec3i(res - 3, res - 3, res - 3)
        origin, shape = region
        if any(o < 0 or s < 3 or o + s > res for o, s in zip(origin, shape)):
            raise ValueError(f"region {region} must lie inside the {res}^3 grid and span at least 3 nodes per axis")
        return wp.vec3i(*origin), wp.vec3i(*(o + s - 3 for o, s in zip(origin, shape)))
