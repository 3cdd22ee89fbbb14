"""The dough task: scene, loss, reward, observation and episode sampling shared by every dough task.

A :class:`DoughTask` is a box of dough on the floor of the unit cube, simulated with
:class:`~diffenvs.sim.mpm.SolverMPM`, and shaped by kinematic tools towards a target particle set.
Subclasses (:mod:`diffenvs.tasks.dough.variants`) choose the tools, the action mapping and how
the target is drawn.
"""

from __future__ import annotations

import abc
import dataclasses
from typing import Any, ClassVar

import numpy as np
import warp as wp

from diffenvs.config import from_dict
from diffenvs.sim.mpm import ActiveRegion, MPMControl, MPMGrid, MPMMaterial, MPMModel, MPMState, SolverMPM, ToolShape
from diffenvs.task import State, StepBuffers, Task
from diffenvs.tasks.dough import kernels as K
from diffenvs.tasks.dough.config import BLOB_HALF, PRESETS, DoughConfig
from diffenvs.tasks.dough.render import render_dough
from diffenvs.tasks.dough.targets import Demonstration, Demonstrators, piece_volumes, sample_blob, yaw_quat

TARGET_FIELDS = K.TARGET_FIELDS


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

    scratch_fields: ClassVar[tuple[str, ...]] = ("control", "region", "substates", "grids", "loss_in", "loss_out")
    tape_cleared_fields: ClassVar[tuple[str, ...]] = ("grids",)  # the solver clears their active region

    iou_counts: wp.array = None
    control: MPMControl = None
    region: wp.array = None  # each world's active region of the step (see SolverMPM.active_region)
    substates: list[MPMState] = dataclasses.field(default_factory=list)
    grids: list[MPMGrid] = dataclasses.field(default_factory=list)
    loss_in: LossScratch = None
    loss_out: LossScratch = None


class DoughTask(Task):
    """Batched dough task; subclasses set the tools, the action mapping and the target."""

    reward_terms = ("progress", "contact")
    metric = "iou_incremental"
    metric_fields = ("iou_counts",)
    remedy_options: ClassVar[dict[str, str]] = {"contact_weight": "contact_weight", "softness": "tool_softness", "contact_focus": "contact_focus"}
    parallel_refill = True  # kernels dominate a step: a refill on a second thread overlaps the adjoints
    tool_shapes: ClassVar[tuple[ToolShape, ...]]
    default_settle_steps: ClassVar[int] = 0
    default_tool_softness: ClassVar[float] = 0.02
    default_contact_focus: ClassVar[bool] = False
    blob_half: ClassVar[np.ndarray] = BLOB_HALF  # half extents (3,) or (B, 3) of the starting pieces [domain units]
    blob_offsets: ClassVar[np.ndarray] = np.zeros((1, 3))  # offsets (B, 3) of the pieces from the dough's centre
    blob_balls: ClassVar[tuple[bool, ...]] = ()  # which pieces are balls (radius: their half[0]), not boxes
    fixed_tools: ClassVar[int] = 0  # the last tools stay put (obstacles): no action moves them, no contact loss
    max_stages: ClassVar[int] = 1  # the most pieces handled in turn (the ``stages`` option)

    def __init__(self, world_count: int, device: wp.DeviceLike = None, **kwargs: Any):
        super().__init__(world_count, device)
        self.config = cfg = from_dict(DoughConfig, kwargs, where=type(self).__name__.removesuffix("Task"))
        self.grid_res = cfg.resolved("grid_res")
        self.sim_substeps = cfg.resolved("sim_substeps")
        self.stages = 1 if cfg.stages is None else cfg.stages
        if self.stages > self.max_stages:
            raise ValueError(f"{type(self).__name__.removesuffix('Task')}: stages must lie in [1, {self.max_stages}], got {self.stages}")
        self.particle_count = cfg.resolved("particle_count") * (self.stages if cfg.particle_count is None else 1)  # per stage
        self.layout_pieces()
        blob_volume = float(piece_volumes(self.blob_half, len(self.blob_offsets), self.blob_balls).sum())
        softness = self.default_tool_softness if cfg.tool_softness is None else cfg.tool_softness
        tools = tuple(dataclasses.replace(t, friction=cfg.tool_friction, softness=softness) for t in self.tool_shapes)
        self.model = MPMModel(
            grid_res=self.grid_res,
            material=MPMMaterial(youngs_modulus=cfg.youngs_modulus, poisson_ratio=cfg.poisson_ratio, yield_stress=cfg.yield_stress),
            tools=tools,
            ground_friction=cfg.ground_friction,
            particle_volume=blob_volume / self.particle_count,
        )
        self.solver = SolverMPM(self.model, SolverMPM.Config(return_mapping=cfg.return_mapping), device=self.device)
        self.tool_count = len(tools)
        self.driven_tools = self.tool_count - self.fixed_tools
        self._contact_weight = cfg.contact_weight
        self._contact_focus = self.default_contact_focus if cfg.contact_focus is None else cfg.contact_focus
        self._softness = softness
        self.obs_dim = K.obs_dim(cfg.obs_particle_count, self.tool_count)
        self._observed = wp.array(
            np.linspace(0, self.particle_count - 1, cfg.obs_particle_count).astype(np.int32), dtype=int, device=self.device
        )
        self._total_mass = self.model.particle_mass * self.particle_count
        self._target_mass = self.zeros((world_count, *(self.grid_res,) * 3), wp.float32, requires_grad=False)
        self._target_nodes: tuple[np.ndarray, np.ndarray] | None = None
        self._eval = self._alloc_loss_scratch(requires_grad=False)
        self._demonstrators = Demonstrators()

    def layout_pieces(self) -> None:
        """Set ``blob_half``, ``blob_offsets`` and ``blob_balls`` for ``self.stages`` (tasks with stages)."""

    @property
    def replayable(self) -> bool:
        return not self.solver.host_box  # a host box sets launch sizes and grid views from the state

    @property
    def default_checkpoint(self) -> bool:
        return bool(PRESETS[self.config.preset]["checkpoint"])

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

    def alloc_step(self, *, requires_grad: bool, forward_only: bool = False) -> DoughStepBuffers:
        n, p, t = self.world_count, self.particle_count, self.tool_count
        if forward_only:  # one grid for every substep, two substates in turn: about a twentieth of the memory
            requires_grad = False
            pair = [MPMState.zeros(n, p, t, device=self.device, requires_grad=False) for _ in range(2)]
            substates = [pair[i % 2] for i in range(self.sim_substeps - 1)]
            grids = [self.solver.alloc_grid(n, requires_grad=False)] * self.sim_substeps
        else:
            substates = [MPMState.zeros(n, p, t, device=self.device, requires_grad=requires_grad) for _ in range(self.sim_substeps - 1)]
            grids = [self.solver.alloc_grid(n, requires_grad=requires_grad) for _ in range(self.sim_substeps)]
        return DoughStepBuffers(
            **self.alloc_common(self.alloc_state(requires_grad=requires_grad), requires_grad=requires_grad),
            iou_counts=self.zeros((n, 2), wp.float64, requires_grad=False),
            control=MPMControl.zeros(n, t, device=self.device, requires_grad=requires_grad),
            region=self.solver.alloc_bounds(n),
            substates=substates,
            grids=grids,
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

        Returns ``target_x``: the target as a particle set (P, 3) made from the dough's own
        particles (moved rigidly), or a :class:`Demonstration` whose end state it is (run for every
        resetting world at once), so
        that a state that reaches it has zero loss; optionally ``carve_base``, ``carve_size``
        (a pit cut out of the signed-distance box). The box itself (``target_centre``,
        ``target_half``) is the bounding box of ``target_x``.
        """

    @abc.abstractmethod
    def apply_action(self, state_in: State, buffers: DoughStepBuffers) -> None:
        """Launch the kernel that turns ``buffers.action`` into ``buffers.control``."""

    def sample_state(self, rng: np.random.Generator, options: dict[str, Any] | None = None) -> dict[str, np.ndarray]:
        return self.sample_states([rng], options)[0]

    def sample_states(self, rngs: list[np.random.Generator], options: dict[str, Any] | None = None) -> list[dict[str, np.ndarray]]:
        """One initial state per generator; the settling and the targets' demonstrations of all of them
        run as one batched rollout (each world's draws come from its own generator, in the order a
        one-world reset takes them, so a world's state depends on its seed alone)."""
        if options:
            raise ValueError(f"dough tasks' reset() takes no options, got {sorted(options)}")
        blobs = [sample_blob(rng, self.particle_count, dx=self.model.dx, floor=self.model.floor_height, half=self.blob_half,
                             offsets=self.blob_offsets, balls=self.blob_balls) for rng in rngs]
        particles = [fields for _, fields in blobs]
        settle = self.default_settle_steps if self.config.settle_steps is None else self.config.settle_steps
        if settle:
            away = np.tile([0.5, 0.9, 0.5], (self.tool_count, 1))  # tools far above the dough
            rest = np.tile(yaw_quat(0.0), (self.tool_count, 1))
            particles = self.demonstrate_many([(p, away, rest, np.zeros((settle, self.action_dim))) for p in particles])
        tools, targets = [], []
        for rng, (centre, _), fields in zip(rngs, blobs, particles):
            tools.append(self.sample_tools(rng, centre))
            targets.append({"carve_base": np.zeros(3), "carve_size": np.zeros(3),
                            **self.sample_target(rng, centre, fields, *tools[-1])})
        pending = [w for w, target in enumerate(targets) if isinstance(target["target_x"], Demonstration)]
        if pending:
            demos = [targets[w]["target_x"] for w in pending]
            runs = self.demonstrate_many([(particles[w], d.tool_pos, d.tool_rot, d.actions) for w, d in zip(pending, demos)])
            for w, run in zip(pending, runs):
                targets[w]["target_x"] = run["particle_x"]
        states = []
        for fields, (tool_pos, tool_rot), target in zip(particles, tools, targets):
            lo, hi = target["target_x"].min(axis=0), target["target_x"].max(axis=0)
            target["target_centre"], target["target_half"] = (lo + hi) / 2, (hi - lo) / 2
            states.append({**fields, "tool_pos": tool_pos, "tool_rot": tool_rot, **target})
        return states

    def demonstrate_many(
        self, starts: list[tuple[dict[str, np.ndarray], np.ndarray, np.ndarray, np.ndarray]]
    ) -> list[dict[str, np.ndarray]]:
        """Per start (particle fields, tool positions, tool quaternions, actions (K, action_dim)): the
        particle fields after this task's own env steps with those actions, run by copies of the task
        with hard tools and no contact loss (:class:`~diffenvs.tasks.dough.targets.Demonstrators`): the
        scripted demonstrations that let a blob settle and that make targets (so every target is
        reachable with the env's actions)."""
        return self._demonstrators.run(starts, self.world_count, lambda capacity: type(self)(capacity, device=self.device, **{
            **dataclasses.asdict(self.config), "tool_softness": 0.0, "contact_weight": 0.0, "contact_focus": False}))

    def prepare(self, state: State) -> None:
        """Rebuild the target's grid mass from each world's target particles (outside the tape), and
        (on the CPU) the box of nodes it occupies in any world (inclusive, host side)."""
        self.solver.scatter_mass(state["target_x"], self._target_mass)
        if not self.device.is_cpu:  # launches over every block: no host round trip (see SolverMPM.active_region)
            self._target_nodes = None
            return
        cells = np.floor(state["target_x"].numpy().reshape(-1, 3) / self.model.dx)
        if np.isfinite(cells).all():  # a stencil reaches from one cell below to two above
            self._target_nodes = (np.clip(cells.min(axis=0) - 1, 0, self.grid_res - 1).astype(int),
                                  np.clip(cells.max(axis=0) + 2, 0, self.grid_res - 1).astype(int))
        else:
            self._target_nodes = None

    def _density_blocks(self, region: ActiveRegion | None) -> tuple[wp.vec3i, tuple]:
        """Origin and shape of the box of density blocks that holds the target's mass and the dough's
        mass within the solver's active ``region`` (None, no host box or no target box: every block)."""
        block = self.config.density_block
        if region is None or region.box is None or self._target_nodes is None:
            return wp.vec3i(0, 0, 0), (self.grid_res // block,) * 3
        origin, shape = np.asarray(region.box[0]), np.asarray(region.box[1])
        lo = np.minimum(origin, self._target_nodes[0]) // block
        hi = np.maximum(origin + shape - 1, self._target_nodes[1]) // block
        return wp.vec3i(*(int(v) for v in lo)), tuple(int(v) for v in hi - lo + 1)

    # One step -------------------------------------------------------------------------------

    def step(self, state_in: State, buffers: DoughStepBuffers, previous: DoughStepBuffers | None = None) -> None:
        self.apply_action(state_in, buffers)
        wp.launch(
            K.carry_target, dim=self.world_count, inputs=[state_in[name] for name in TARGET_FIELDS],
            outputs=[buffers.state[name] for name in TARGET_FIELDS], device=self.device,
        )
        wp.launch(
            K.carry_target_points, dim=(self.world_count, self.particle_count), inputs=[state_in["target_x"]],
            outputs=[buffers.state["target_x"]], device=self.device,
        )
        chain = [self._mpm_state(state_in), *buffers.substates, self._mpm_state(buffers.state)]
        # The tools can drag dough at up to their surface speed: the pin's roll adds as much again.
        region = self.solver.active_region(chain[0], self.frame_dt, extra_speed=2.0 * self.config.tool_speed, out=buffers.region)
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
            K.compute_reward_dough, dim=self.world_count,
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
            K.check_divergence_dough, dim=(self.world_count, self.particle_count),
            inputs=[buffers.state["particle_x"], self.model.domain_size], outputs=[buffers.diverged], device=self.device,
        )
        buffers.iou_counts.zero_()
        wp.launch(
            K.count_iou, dim=(self.world_count, self.grid_res, self.grid_res),
            inputs=[buffers.loss_out.mass, self._target_mass, self.iou_threshold], outputs=[buffers.iou_counts],
            device=self.device,
        )

    def episode_start(self, state: State) -> dict[str, np.ndarray]:
        return {"iou": self.iou_of(state)}

    def step_metrics(self, host: dict[str, np.ndarray], start: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """``iou`` (occupied grid cells of dough and target) and ``iou_incremental``:
        ``(IoU_t - IoU_0) / (1 - IoU_0)`` clipped to [0, 1], IoU_0 at the episode's start."""
        counts = host["iou_counts"]
        iou = counts[:, 0] / np.maximum(counts[:, 1], 1.0)
        gain = (iou - start["iou"]) / np.maximum(1.0 - start["iou"], 1e-9)
        return {"iou": iou, "iou_incremental": np.clip(gain, 0.0, 1.0)}

    @property
    def iou_threshold(self) -> float:
        """Grid mass above which a cell counts as occupied: a tenth of a cell full of dough [kg]."""
        return 0.1 * self.model.material.density * self.model.dx**3

    def _evaluate(self, state: State, scratch: LossScratch, loss_out: wp.array, region: ActiveRegion | None = None) -> None:
        """Launch the loss of ``state`` into ``loss_out`` (its terms into ``scratch``); ``region``: a box of
        grid nodes that holds the dough's mass (the solver's active region), or None."""
        cfg = self.config
        n, p = self.world_count, self.particle_count
        for array in (scratch.sdf_sum, scratch.density_sum, scratch.contact_sum, scratch.contact_penalty):
            array.zero_()
        self.solver.scatter_mass(state["particle_x"], scratch.mass)
        origin, blocks = self._density_blocks(region)
        wp.launch(
            K.make_density_loss(cfg.density_block), dim=(n, *blocks),
            inputs=[scratch.mass, self._target_mass, 1.0 / self._total_mass, origin], outputs=[scratch.density_sum],
            device=self.device,
        )
        wp.launch(
            K.accumulate_loss_sdf, dim=(n, p), inputs=[state["particle_x"], *(state[name] for name in TARGET_FIELDS), 1.0 / p],
            outputs=[scratch.sdf_sum], device=self.device,
        )
        wp.launch(
            K.accumulate_contact, dim=(n, p, self.driven_tools),
            inputs=[state["particle_x"], state["tool_pos"], state["tool_rot"], self.solver.tool_kind, self.solver.tool_size,
                    cfg.contact_temperature, *(state[name] for name in TARGET_FIELDS), int(self._contact_focus)],
            outputs=[scratch.contact_sum], device=self.device,
        )
        wp.launch(
            K.compute_contact_penalty, dim=(n, self.driven_tools), inputs=[scratch.contact_sum, cfg.contact_temperature],
            outputs=[scratch.contact_penalty], device=self.device,
        )
        wp.launch(
            K.compute_loss_dough, dim=n, inputs=[scratch.sdf_sum, scratch.density_sum, cfg.sdf_weight, cfg.density_weight],
            outputs=[loss_out], device=self.device,
        )

    def observe(self, state: State, obs_out: wp.array) -> None:
        k = self.config.obs_particle_count
        wp.launch(
            K.compute_obs_dough, dim=(self.world_count, k + self.tool_count + 1),
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
            K.count_iou, dim=(self.world_count, self.grid_res, self.grid_res),
            inputs=[self._eval.mass, self._target_mass, self.iou_threshold], outputs=[counts], device=self.device,
        )
        c = counts.numpy()
        return c[:, 0] / np.maximum(c[:, 1], 1.0)

    # Rendering ------------------------------------------------------------------------------

    def render(self, state: dict[str, np.ndarray], *, width: int, height: int) -> np.ndarray:
        """Top view (x right, z up) beside a front view (x right, y up) of the unit domain."""
        return render_dough(self.model, state, width=width, height=height)
