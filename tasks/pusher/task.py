"""The Pusher task: a round pusher moves a box to a target pose on a table (rigid 2-D, float64)."""

from __future__ import annotations

import dataclasses
import itertools
import math
from typing import Any, ClassVar

import numpy as np
import warp as wp

from diffenvs.config import from_dict
from diffenvs.sim.rigid2d import Rigid2DControl, Rigid2DModel, Rigid2DState, SolverRigid2D
from diffenvs.task import State, StepBuffers, Task
from diffenvs.tasks.pusher import kernels as K

STATE_FIELDS = ("pusher_pos", "box_pose", "box_vel", "target_pose")


@dataclasses.dataclass(frozen=True)
class PusherConfig:
    """Options of the Pusher task (keyword arguments of ``gym.make``).

    Attributes:
        frame_dt: Duration of one env step [s].
        sim_substeps: Solver substeps per env step; ``sim_dt = frame_dt / sim_substeps``.
        max_speed: Pusher speed at action magnitude 1 per axis [m/s].
        progress_weight: Weight of the loss decrease in the reward.
        proximity_weight: Weight of the pusher-box distance penalty (the contact loss) [1/m].
        ctrl_weight: Weight of the squared action penalty.
        orientation_weight: Weight of the heading error sin^2(theta - theta_target) in the loss [m].
        success_tolerance: Task loss that counts as success (the box-target distance when
            ``orientation_weight`` is 0) [m].
        escape_radius: A box or pusher farther than this from the origin ends the episode as diverged [m].
        box_mass: Mass of the box [kg].
        table_friction: Box-table Coulomb coefficient.
        contact_friction: Pusher-box Coulomb coefficient.
        contact_stiffness: Penalty stiffness of the contact [N/m].
        contact_softness: Width of the smooth onset of the contact force [m].
    """

    frame_dt: float = 0.05
    sim_substeps: int = 10
    max_speed: float = 0.5
    progress_weight: float = 1.0
    proximity_weight: float = 0.1
    ctrl_weight: float = 0.0
    orientation_weight: float = 0.0
    success_tolerance: float = 0.02
    escape_radius: float = 2.0
    # Physical and numerical defaults come from the solver's own model and config.
    box_mass: float = Rigid2DModel.box_mass
    table_friction: float = Rigid2DModel.table_friction
    contact_friction: float = Rigid2DModel.contact_friction
    contact_stiffness: float = SolverRigid2D.Config.contact_stiffness
    contact_softness: float = SolverRigid2D.Config.contact_softness

    def __post_init__(self) -> None:
        if self.sim_substeps < 1:
            raise ValueError(f"sim_substeps must be >= 1, got {self.sim_substeps}")
        for name in ("frame_dt", "max_speed", "success_tolerance", "escape_radius"):
            if not getattr(self, name) > 0.0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        for name in ("proximity_weight", "ctrl_weight", "orientation_weight"):
            if not getattr(self, name) >= 0.0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")


@dataclasses.dataclass
class PusherStepBuffers(StepBuffers):
    """Step buffers plus the pusher's control and the intermediate substep states."""

    scratch_fields: ClassVar[tuple[str, ...]] = ("control", "substates")

    control: Rigid2DControl = None
    substates: list[Rigid2DState] = dataclasses.field(default_factory=list)


class PusherTask(Task):
    """Batched Pusher task; see :class:`PusherEnv` for its documentation."""

    action_dim = 2
    obs_dim = int(K.OBS_DIM)
    reward_terms = ("progress", "proximity", "ctrl")
    remedy_options: ClassVar[dict[str, str]] = {"contact_weight": "proximity_weight", "softness": "contact_softness"}

    def __init__(self, world_count: int, device: wp.DeviceLike = None, **kwargs: Any):
        super().__init__(world_count, device)
        self.config = from_dict(PusherConfig, kwargs, where="Pusher")
        cfg = self.config
        self.model = Rigid2DModel(
            box_mass=cfg.box_mass, table_friction=cfg.table_friction, contact_friction=cfg.contact_friction
        )
        self.solver = SolverRigid2D(
            self.model, SolverRigid2D.Config(contact_stiffness=cfg.contact_stiffness, contact_softness=cfg.contact_softness)
        )
        hx, hy = self.model.box_half_extents
        rc = self.model.box_corner_radius
        self._geometry = wp.vec4d(hx - rc, hy - rc, rc, self.model.pusher_radius)
        self._weights = wp.vec4d(cfg.progress_weight, cfg.proximity_weight, cfg.ctrl_weight, cfg.orientation_weight)

    def get_remedies(self) -> dict[str, float]:
        return {"contact_weight": float(self._weights[1]), "softness": float(self.solver.params.contact_softness)}

    def remedy_minimum(self, name: str) -> float:
        return 1e-6 if name == "softness" else 0.0  # the penalty's quadratic ramp needs a width

    def apply_remedy(self, name: str, value: float) -> None:
        """``contact_weight`` is ``proximity_weight``; ``softness`` is ``contact_softness`` [m]."""
        if name == "contact_weight":
            self._weights[1] = value
        else:
            self.solver.params.contact_softness = wp.float64(value)

    @property
    def frame_dt(self) -> float:
        return self.config.frame_dt

    @property
    def sim_dt(self) -> float:
        return self.config.frame_dt / self.config.sim_substeps

    def state_layout(self) -> dict[str, tuple[tuple[int, ...], type]]:
        return {"pusher_pos": ((2,), np.float64), "box_pose": ((3,), np.float64),
                "box_vel": ((3,), np.float64), "target_pose": ((3,), np.float64)}

    def alloc_state(self, *, requires_grad: bool) -> State:
        sim = Rigid2DState.zeros(self.world_count, device=self.device, requires_grad=requires_grad)
        target = self.zeros(self.world_count, wp.vec3d, requires_grad=requires_grad)
        return {"pusher_pos": sim.pusher_pos, "box_pose": sim.box_pose, "box_vel": sim.box_vel, "target_pose": target}

    def alloc_step(self, *, requires_grad: bool, forward_only: bool = False) -> PusherStepBuffers:
        # forward_only is not needed: a Pusher step's substates are a few numbers per world
        state = self.alloc_state(requires_grad=requires_grad)
        n = self.world_count
        return PusherStepBuffers(
            **self.alloc_common(state, requires_grad=requires_grad),
            control=Rigid2DControl.zeros(n, device=self.device, requires_grad=requires_grad),
            substates=[
                Rigid2DState.zeros(n, device=self.device, requires_grad=requires_grad)
                for _ in range(self.config.sim_substeps - 1)
            ],
        )

    @staticmethod
    def _sim_state(state: State) -> Rigid2DState:
        return Rigid2DState(pusher_pos=state["pusher_pos"], box_pose=state["box_pose"], box_vel=state["box_vel"])

    def sample_state(self, rng: np.random.Generator, options: dict[str, Any] | None = None) -> dict[str, np.ndarray]:
        if options:
            raise ValueError(f"Pusher.reset() takes no options, got {sorted(options)}")
        box_xy = rng.uniform(-0.15, 0.15, size=2)
        box_theta = rng.uniform(-math.pi, math.pi)
        heading = rng.uniform(-math.pi, math.pi)
        distance = rng.uniform(0.15, 0.3)
        target_xy = box_xy + distance * np.array([math.cos(heading), math.sin(heading)])
        behind = heading + math.pi + rng.uniform(-math.pi / 3.0, math.pi / 3.0)
        pusher_xy = box_xy + rng.uniform(0.12, 0.2) * np.array([math.cos(behind), math.sin(behind)])
        return {
            "pusher_pos": pusher_xy,
            "box_pose": np.array([box_xy[0], box_xy[1], box_theta]),
            "box_vel": np.zeros(3),
            "target_pose": np.array([target_xy[0], target_xy[1], rng.uniform(-math.pi, math.pi)]),
        }

    def step(self, state_in: State, buffers: PusherStepBuffers, previous: PusherStepBuffers | None = None) -> None:
        n = self.world_count
        wp.launch(
            K.prepare_step_pusher, dim=n, inputs=[buffers.action, state_in["target_pose"], wp.float64(self.config.max_speed)],
            outputs=[buffers.control.pusher_vel, buffers.state["target_pose"]], device=self.device,
        )
        chain = [self._sim_state(state_in), *buffers.substates, self._sim_state(buffers.state)]
        for current, following in itertools.pairwise(chain):
            self.solver.step(current, following, buffers.control, self.sim_dt)
        out = buffers.state
        wp.launch(
            K.compute_reward_pusher, dim=n,
            inputs=[state_in["box_pose"], out["pusher_pos"], out["box_pose"], out["target_pose"], buffers.action,
                    self._geometry, self._weights],
            outputs=[buffers.loss, buffers.reward_terms, buffers.reward], device=self.device,
        )
        self.observe(out, buffers.obs)

    def check(self, buffers: PusherStepBuffers) -> None:
        out = buffers.state
        wp.launch(
            K.check_divergence_pusher, dim=self.world_count,
            inputs=[out["pusher_pos"], out["box_pose"], out["box_vel"], wp.float64(self.config.escape_radius)],
            outputs=[buffers.diverged], device=self.device,
        )

    def observe(self, state: State, obs_out: wp.array) -> None:
        wp.launch(
            K.compute_obs_pusher, dim=self.world_count,
            inputs=[state["pusher_pos"], state["box_pose"], state["box_vel"], state["target_pose"]],
            outputs=[obs_out], device=self.device,
        )

    def loss_of(self, state: State, loss_out: wp.array) -> None:
        wp.launch(
            K.compute_loss_pusher, dim=self.world_count,
            inputs=[state["box_pose"], state["target_pose"], wp.float64(self.config.orientation_weight)],
            outputs=[loss_out], device=self.device,
        )

    def success(self, loss: np.ndarray) -> np.ndarray:
        return np.asarray(loss) <= self.config.success_tolerance

    def render(self, state: dict[str, np.ndarray], *, width: int, height: int) -> np.ndarray:
        from diffenvs.render import Canvas

        canvas = Canvas(width, height, extent=0.5)
        hx, hy = self.model.box_half_extents
        rc = self.model.box_corner_radius
        canvas.rounded_box(state["target_pose"], (hx, hy), rc, color=(120, 200, 120), outline=0.004)
        canvas.rounded_box(state["box_pose"], (hx, hy), rc, color=(70, 110, 200))
        canvas.disk(state["pusher_pos"], self.model.pusher_radius, color=(220, 60, 50))
        return canvas.image
