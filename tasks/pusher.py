"""Pusher: push a box across a table to a target pose with a round pusher."""

from __future__ import annotations

import dataclasses
import itertools
import math
from typing import Any, ClassVar

import numpy as np
import warp as wp

from diffenvs.config import from_dict
from diffenvs.env import DiffEnv, DiffVectorEnv
from diffenvs.sim.rigid2d import Rigid2DControl, Rigid2DModel, Rigid2DState, SolverRigid2D
from diffenvs.sim.rigid2d.kernels import pusher_box_gap
from diffenvs.task import State, StepBuffers, Task

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
    proximity_weight: float = 0.0
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
        length=17, dtype=wp.float64,
    )
    for i in range(17):
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


@dataclasses.dataclass
class PusherStepBuffers(StepBuffers):
    """Step buffers plus the pusher's control and the intermediate substep states."""

    scratch_fields: ClassVar[tuple[str, ...]] = ("control", "substates")

    control: Rigid2DControl = None
    substates: list[Rigid2DState] = dataclasses.field(default_factory=list)


class PusherTask(Task):
    """Batched Pusher task; see :class:`PusherEnv` for its documentation."""

    action_dim = 2
    obs_dim = 17
    reward_terms = ("progress", "proximity", "ctrl")

    def __init__(self, world_count: int, device: wp.context.Devicelike = None, **kwargs: Any):
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

    def alloc_step(self, *, requires_grad: bool) -> PusherStepBuffers:
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
            prepare_step_pusher, dim=n, inputs=[buffers.action, state_in["target_pose"], wp.float64(self.config.max_speed)],
            outputs=[buffers.control.pusher_vel, buffers.state["target_pose"]], device=self.device,
        )
        chain = [self._sim_state(state_in), *buffers.substates, self._sim_state(buffers.state)]
        for current, following in itertools.pairwise(chain):
            self.solver.step(current, following, buffers.control, self.sim_dt)
        out = buffers.state
        wp.launch(
            compute_reward_pusher, dim=n,
            inputs=[state_in["box_pose"], out["pusher_pos"], out["box_pose"], out["target_pose"], buffers.action,
                    self._geometry, self._weights],
            outputs=[buffers.loss, buffers.reward_terms, buffers.reward], device=self.device,
        )
        self.observe(out, buffers.obs)

    def check(self, buffers: PusherStepBuffers) -> None:
        out = buffers.state
        wp.launch(
            check_divergence_pusher, dim=self.world_count,
            inputs=[out["pusher_pos"], out["box_pose"], out["box_vel"], wp.float64(self.config.escape_radius)],
            outputs=[buffers.diverged], device=self.device,
        )

    def observe(self, state: State, obs_out: wp.array) -> None:
        wp.launch(
            compute_obs_pusher, dim=self.world_count,
            inputs=[state["pusher_pos"], state["box_pose"], state["box_vel"], state["target_pose"]],
            outputs=[obs_out], device=self.device,
        )

    def loss_of(self, state: State, loss_out: wp.array) -> None:
        wp.launch(
            compute_loss_pusher, dim=self.world_count,
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


class PusherEnv(DiffEnv):
    """Push a box to a target on a table with a round pusher, with analytic gradients.

    ## Description
    A planar table-top. A round pusher (radius 0.02 m) moves with the commanded velocity; a
    rounded box (0.12 m x 0.08 m, 0.5 kg) slides on the table with Coulomb friction and is moved
    only through penalty contact with the pusher. The goal is to bring the box's centre to the
    target (and, with ``orientation_weight > 0``, its heading to the target heading). The
    pusher starts away from the box, so no action has any effect on the box until contact: with
    the default weights the gradient of the return is exactly zero until the pusher touches the
    box. Switch on ``proximity_weight`` to get a gradient that leads the pusher to the box.

    Physics: float64 semi-implicit Euler with ``sim_substeps`` substeps per step (see
    :class:`~diffenvs.sim.rigid2d.SolverRigid2D`).

    ## Action Space
    ``Box(-1, 1, (2,), float32)``; out-of-range values are clipped.

    | Num | Action                                   | Unit               |
    |-----|------------------------------------------|--------------------|
    | 0   | pusher velocity along x / ``max_speed``  | dimensionless      |
    | 1   | pusher velocity along y / ``max_speed``  | dimensionless      |

    ## Observation Space
    ``Box(-inf, inf, (17,), float32)``:

    | Num   | Observation                         | Unit       |
    |-------|-------------------------------------|------------|
    | 0-1   | pusher position x, y                | m          |
    | 2-3   | box position x, y                   | m          |
    | 4-5   | cos, sin of the box heading         | -          |
    | 6-8   | box velocity vx, vy, omega          | m/s, rad/s |
    | 9-10  | target position x, y                | m          |
    | 11-12 | cos, sin of the target heading      | -          |
    | 13-14 | box position - pusher position      | m          |
    | 15-16 | target position - box position      | m          |

    ## Rewards
    The task loss is ``L(s) = |box_xy - target_xy| + orientation_weight * sin^2(theta - theta_target)``
    (``info["loss"]``). The reward of a step is the sum of:

    - ``progress``: ``progress_weight * (L(s_t) - L(s_{t+1}))``; the return of this term
      telescopes to ``progress_weight * (L(s_0) - L(s_T))``;
    - ``proximity``: ``-proximity_weight * max(gap, 0)`` with ``gap`` the distance between the
      pusher's and the box's surfaces after the step (the contact loss, default off);
    - ``ctrl``: ``-ctrl_weight * |a|^2`` (default off).

    Each term is reported as ``info["reward_<term>"]``.

    ## Starting State
    Box centre uniform in [-0.15, 0.15]^2 m, heading uniform; target at 0.15-0.3 m from the box
    in a uniform direction, target heading uniform; pusher 0.12-0.2 m from the box centre, within
    60 degrees of the side opposite the target (never in contact); all velocities zero.

    ## Episode End
    Truncation after 100 steps (5 s) through ``gym.make``'s ``max_episode_steps``. Termination
    only when the simulation diverges (non-finite state, or box or pusher farther than
    ``escape_radius`` from the origin): then ``info["diverged"] = True``, reward 0, and the
    last valid observation is returned. ``info["is_success"]``: task loss at most
    ``success_tolerance`` (with the default weights: box centre within 0.02 m of the target).

    ## Arguments
    The options of :class:`PusherConfig` as keyword arguments, plus those of
    :class:`~diffenvs.env.DiffEnv` (``render_mode``, ``device``, ``differentiable``,
    ``render_width``, ``render_height``)::

        gym.make("DiffEnvs/Pusher-v0", proximity_weight=1.0, differentiable=True)

    ## Gradients
    ``env.unwrapped.grad()`` returns d(return)/d(actions) of shape (T, 2) and
    d(return)/d(initial state) for the fields ``pusher_pos`` (2), ``box_pose`` (3),
    ``box_vel`` (3) and ``target_pose`` (3). The remedies can be changed between episodes:
    ``env.unwrapped.set_remedies(contact_weight=..., softness=...)`` sets ``proximity_weight``
    and ``contact_softness`` (> 0) of the episodes that start after it.

    ## Version History
    - v0: initial release.
    """

    task_class = PusherTask


class PusherVectorEnv(DiffVectorEnv):
    """``num_envs`` Pusher worlds in one batch (see :class:`PusherEnv` and :class:`~diffenvs.env.DiffVectorEnv`)."""

    task_class = PusherTask
