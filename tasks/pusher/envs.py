"""The Pusher environments (single and native vector) and their documentation."""

from __future__ import annotations

from diffenvs.env import DiffEnv, DiffVectorEnv
from diffenvs.tasks.pusher.task import PusherTask


class PusherEnv(DiffEnv):
    """Push a box to a target on a table with a round pusher, with analytic gradients.

    ## Description
    A planar table-top. A round pusher (radius 0.02 m) moves with the commanded velocity; a
    rounded box (0.12 m x 0.08 m, 0.5 kg) slides on the table with Coulomb friction and is moved
    only through penalty contact with the pusher. The goal is to bring the box's centre to the
    target (and, with ``orientation_weight > 0``, its heading to the target heading). The
    pusher starts away from the box and no action moves the box until the pusher touches it, so
    the task loss alone gives exactly zero gradient there ("no contact, no gradient"). As
    Gymnasium's own Pusher rewards the arm for nearing the object (``reward_near_weight``), the
    ``proximity`` term (``proximity_weight``, default 0.1) leads the pusher to the box; set it
    to 0 for the zero-gradient ablation.

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
      pusher's and the box's surfaces after the step [m] (the contact loss; default weight 0.1);
    - ``ctrl``: ``-ctrl_weight * |a|^2`` (default off).

    Each term is reported as ``info["reward_<term>"]``. The task's metric is
    ``info["loss_reduction"]``: ``1 - L(s_t) / L(s_0)`` (1 = box on the target, 0 = no progress).

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
    The options of :class:`~diffenvs.tasks.pusher.PusherConfig` as keyword arguments, plus those
    of :class:`~diffenvs.env.DiffEnv` (``render_mode``, ``device``, ``differentiable``,
    ``checkpoint``, ``render_width``, ``render_height``)::

        gym.make("DiffEnvs/Pusher-v0", proximity_weight=0.0, differentiable=True)

    | argument | default | meaning |
    |----------|---------|---------|
    | ``frame_dt``, ``sim_substeps`` | 0.05 s, 10 | env step and solver substeps |
    | ``max_speed`` | 0.5 m/s | pusher speed at action 1 per axis |
    | ``progress_weight``, ``proximity_weight``, ``ctrl_weight`` | 1, 0.1, 0 | reward weights |
    | ``orientation_weight`` | 0 | weight of the heading error in the loss [m] |
    | ``success_tolerance`` | 0.02 | task loss that counts as success |
    | ``escape_radius`` | 2 m | beyond it the episode ends as diverged |
    | ``box_mass``, ``table_friction``, ``contact_friction`` | the solver's | physics |
    | ``contact_stiffness``, ``contact_softness`` | the solver's | penalty contact |

    ## Gradients
    ``env.unwrapped.grad()`` returns d(return)/d(actions) of shape (T, 2) and
    d(return)/d(initial state) for the fields ``pusher_pos`` (2), ``box_pose`` (3),
    ``box_vel`` (3) and ``target_pose`` (3). The remedies can be changed between episodes:
    ``env.unwrapped.set_remedies(contact_weight=..., softness=...)`` sets ``proximity_weight``
    and ``contact_softness`` (> 0) of the episodes that start after it. ``diffenvs gradcheck
    --env DiffEnvs/Pusher-v0`` checks the gradient against finite differences.

    ## Version History
    - v0: initial release (``proximity_weight`` defaults to 0.1 since before the first release;
      it was 0, which left a newcomer's first gradient step at exactly zero).
    """

    task_class = PusherTask


class PusherVectorEnv(DiffVectorEnv):
    """``num_envs`` Pusher worlds in one batch (see :class:`PusherEnv` and :class:`~diffenvs.env.DiffVectorEnv`)."""

    task_class = PusherTask
