"""Time-varying arrays of the MPM solver, batched over worlds (float32)."""

from __future__ import annotations

import dataclasses

import warp as wp

from diffenvs.warp_util import type_size_in_bytes


@dataclasses.dataclass
class MPMState:
    """Particles and tools of ``world_count`` worlds.

    Attributes:
        particle_x: Positions, shape (world_count, particle_count), vec3 [domain units].
        particle_v: Velocities, shape (world_count, particle_count), vec3 [domain units/s].
        particle_C: APIC affine velocity matrices, shape (world_count, particle_count), mat33 [1/s].
        particle_F: Elastic deformation gradients, shape (world_count, particle_count), mat33 [-].
        tool_pos: Tool origins, shape (world_count, tool_count), vec3 [domain units].
        tool_rot: Tool orientations, shape (world_count, tool_count), quat [-].
    """

    particle_x: wp.array
    particle_v: wp.array
    particle_C: wp.array
    particle_F: wp.array
    tool_pos: wp.array
    tool_rot: wp.array

    @classmethod
    def zeros(cls, world_count: int, particle_count: int, tool_count: int, *, device, requires_grad: bool) -> MPMState:
        """Allocate a zero state (F and rotations are zero too: fill them before use)."""
        shape_p = (world_count, particle_count)
        shape_t = (world_count, max(tool_count, 1))
        return cls(
            particle_x=wp.zeros(shape_p, dtype=wp.vec3, device=device, requires_grad=requires_grad),
            particle_v=wp.zeros(shape_p, dtype=wp.vec3, device=device, requires_grad=requires_grad),
            particle_C=wp.zeros(shape_p, dtype=wp.mat33, device=device, requires_grad=requires_grad),
            particle_F=wp.zeros(shape_p, dtype=wp.mat33, device=device, requires_grad=requires_grad),
            tool_pos=wp.zeros(shape_t, dtype=wp.vec3, device=device, requires_grad=requires_grad),
            tool_rot=wp.zeros(shape_t, dtype=wp.quat, device=device, requires_grad=requires_grad),
        )


@dataclasses.dataclass
class MPMControl:
    """Tool velocities of ``world_count`` worlds (kinematic velocity control).

    Attributes:
        tool_vel: Linear velocities, shape (world_count, tool_count), vec3 [domain units/s].
        tool_omega: Angular velocities in the world frame, shape (world_count, tool_count), vec3 [rad/s].
    """

    tool_vel: wp.array
    tool_omega: wp.array

    @classmethod
    def zeros(cls, world_count: int, tool_count: int, *, device, requires_grad: bool) -> MPMControl:
        shape_t = (world_count, max(tool_count, 1))
        return cls(
            tool_vel=wp.zeros(shape_t, dtype=wp.vec3, device=device, requires_grad=requires_grad),
            tool_omega=wp.zeros(shape_t, dtype=wp.vec3, device=device, requires_grad=requires_grad),
        )


@dataclasses.dataclass
class MPMGrid:
    """Background grid of one substep (scratch: recomputed, never part of a snapshot).

    Attributes:
        mv: Momentum, shape (world_count, R, R, R), vec3 [kg domain units/s].
        m: Mass, shape (world_count, R, R, R), float32 [kg].
        v: Velocity after forces and boundary conditions, shape (world_count, R, R, R), vec3.
    """

    mv: wp.array
    m: wp.array
    v: wp.array

    @classmethod
    def empty(cls, world_count: int, grid_res: int, *, device, requires_grad: bool) -> MPMGrid:
        """A grid whose values (and gradients) are undefined until a solver step clears the box it uses.

        A step touches only its active region (see ``SolverMPM.step``), so on the CPU most of an
        uninitialised grid's pages are never touched and cost no resident memory: at the paper
        preset a step uses about 4% of the 64^3 nodes.
        """
        shape = (world_count, grid_res, grid_res, grid_res)

        def empty(dtype) -> wp.array:
            array = wp.empty(shape, dtype=dtype, device=device)
            if requires_grad:  # wp.empty(requires_grad=True) would zero-fill, and so touch, the gradient
                array.grad = wp.empty(shape, dtype=dtype, device=device)
                array.requires_grad = True
            return array

        return cls(mv=empty(wp.vec3), m=empty(wp.float32), v=empty(wp.vec3))

    def region(self, origin: tuple[int, int, int], shape: tuple[int, int, int]) -> MPMGrid:
        """Views of this grid (and its gradients) that store the box ``origin`` + [0, ``shape``) compactly.

        Node (w, i, j, k) of the box lives at element ((i - o_i) * s_j + (j - o_j)) * s_k + (k - o_k)
        of world w's block: kernels index the views with the usual global node indices, but the
        box occupies one contiguous run of memory per world instead of a slab of whole grid rows.
        On the CPU only touched pages are resident, so a step's grid costs the size of its box (at
        the paper preset about 10,000 nodes of the 262,144, a quarter of the pages a slab would
        touch): this is what keeps a not-checkpointed episode's grids small.

        Only nodes inside the box may be read or written through the views (the solver clamps
        stencils to it). The last box's views are cached; they stay valid while this grid lives.
        """
        key = (tuple(int(v) for v in origin), tuple(int(v) for v in shape))
        cached = self.__dict__.get("_region_views")  # not a field: array walks must not see the views
        if cached is not None and cached[0] == key:
            return cached[1]
        (oi, oj, ok), (si, sj, sk) = key
        if min(oi, oj, ok) < 0 or min(si, sj, sk) < 1 or any(o + n > r for o, n, r in zip(key[0], key[1], self.m.shape[1:])):
            raise ValueError(f"box {key} does not lie inside the grid of shape {self.m.shape[1:]}")

        def view(array: wp.array) -> wp.array:
            item = type_size_in_bytes(array.dtype)
            offset = ((oi * sj + oj) * sk + ok) * item  # of the box's first node's global index
            compact = wp.array(
                ptr=array.ptr - offset, dtype=array.dtype, shape=(array.shape[0], oi + si, oj + sj, ok + sk),
                strides=(array.strides[0], sj * sk * item, sk * item, item), device=array.device,
            )
            compact._base = array  # keeps the memory alive
            if array.grad is not None:
                compact.grad = view(array.grad)
            return compact

        views = MPMGrid(mv=view(self.mv), m=view(self.m), v=view(self.v))
        self.__dict__["_region_views"] = (key, views)
        return views
