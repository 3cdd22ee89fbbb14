"""The dough environments (single and native vector) and their documentation.

The docstrings are assembled from the tasks' own layout and defaults (observation ranges,
option defaults), so that they cannot disagree with the code.
"""

from __future__ import annotations

import numpy as np

from diffenvs.env import DiffEnv, DiffVectorEnv
from diffenvs.tasks.dough.compound import AssemblyTask, ChopsticksTask, RopeTask, TableTask
from diffenvs.tasks.dough.config import PRESETS, DoughConfig
from diffenvs.tasks.dough.kernels import OBS_PER_PARTICLE, OBS_PER_TOOL, TARGET_FIELDS, obs_dim
from diffenvs.tasks.dough.task import DoughTask
from diffenvs.tasks.dough.variants import MoveTask, PinchTask, RollingPinTask, ShapeTask, TorusTask, TripleMoveTask, WriterTask

_DEFAULTS = DoughConfig()


def _observation_table(task: type[DoughTask]) -> str:
    """The observation's index ranges for ``task`` at the default ``obs_particle_count``."""
    k, tools = _DEFAULTS.obs_particle_count, len(task.tool_shapes)
    rows = [(f"0-{3 * k - 1}", f"positions of {k} fixed particles (x, y, z each)", "domain units"),
            (f"{3 * k}-{OBS_PER_PARTICLE * k - 1}", "their velocities", "domain units/s")]
    base = OBS_PER_PARTICLE * k
    for t in range(tools):
        name = f"tool {t}" if tools > 1 else "tool"
        rows += [(f"{base}-{base + 2}", f"{name} position", "domain units"),
                 (f"{base + 3}-{base + OBS_PER_TOOL - 1}", f"{name} quaternion (x, y, z, w)", "-")]
        base += OBS_PER_TOOL
    labels = {"target_centre": "target box centre", "target_half": "target box half extents",
              "carve_base": "pit base (zeros: no pit)", "carve_size": "pit radius, height, 0 (zeros: no pit)"}
    for name in TARGET_FIELDS:
        rows.append((f"{base}-{base + 2}", labels[name], "domain units"))
        base += 3
    assert base == obs_dim(k, tools)
    lines = ["    | Num | Observation | Unit |", "    |-----|-------------|------|"]
    lines += [f"    | {num} | {text} | {unit} |" for num, text, unit in rows]
    return "\n".join(lines)


def _dough_shape(task: type[DoughTask]) -> str:
    """``A 0.3 x 0.1 x 0.3 box`` or ``Three 0.1 x 0.1 x 0.1 boxes, 0.2 apart,``."""
    size = " x ".join(f"{2 * h:g}" for h in task.blob_half)
    count = len(task.blob_offsets)
    if count == 1:
        return f"A {size} box"
    spacing = float(np.linalg.norm(task.blob_offsets[1] - task.blob_offsets[0]))
    return f"{['Two', 'Three', 'Four'][count - 2]} {size} boxes in a row, {spacing:g} apart,"


def _dough_doc(summary: str, task: type[DoughTask], action_table: str, task_notes: str, history: str = "", *,
               steps: int = 50, scene: str | None = None) -> str:
    d = _DEFAULTS
    settle = task.default_settle_steps
    k, tools = d.obs_particle_count, len(task.tool_shapes)
    return f"""{summary}

    ## Description
    {scene or _dough_shape(task)} of elastoplastic dough (as PlasticineLab's task) rests on the floor of
    the unit cube and is simulated with 3-D MLS-MPM (Neo-Hookean elasticity, von Mises
    plasticity on the Hencky strain, float32; :class:`~diffenvs.sim.mpm.SolverMPM`). Kinematic
    rigid tools, driven by the action as velocities, shape it towards a target drawn from the
    seed. A target is a set of particles made of the dough's own particles (moved rigidly, or
    by a scripted demonstration run with the env's own steps and hard tools), so every target
    is reachable and reaching it gives zero loss and IoU 1.
{task_notes}
    ## Action Space
    ``Box(-1, 1, ({task.action_dim},), float32)``; finite values outside [-1, 1] are clipped,
    NaN or infinite values raise ``ValueError``.

{action_table}

    ## Observation Space
    ``Box(-inf, inf, ({obs_dim(k, tools)},), float32)`` with the default ``obs_particle_count``
    K = {k} (in general ``{OBS_PER_PARTICLE} K + {OBS_PER_TOOL} T + {3 * len(TARGET_FIELDS)}`` for T tools):

{_observation_table(task)}

    ## Rewards
    ``sdf_target`` is the signed distance to the target particles' bounding box (minus the pit,
    a vertical capsule, where the target has one); ``m_target`` is the target particles' grid
    mass. Task loss (``info["loss"]``): ``L = sdf_weight * mean_p max(sdf_target(x_p), 0) +
    density_weight * sum_blocks |m - m_target| / total mass`` over blocks of ``density_block``^3
    cells (defaults {d.sdf_weight:g}, {d.density_weight:g}, {d.density_block}). The reward is the sum of
    the terms (each reported as ``info["reward_<term>"]``):

    | term | value | weight (default) |
    |------|-------|------------------|
    | ``progress`` | ``L(s_t) - L(s_t+1)``: the return telescopes to ``L(s_0) - L(s_T)`` | ``progress_weight`` ({d.progress_weight:g}) |
    | ``contact`` | ``-sum_tools softmin_p(dist(tool, x_p))^2``, soft minimum with length scale ``contact_temperature`` ({d.contact_temperature:g}); with ``contact_focus`` over the dough outside the target only | ``contact_weight`` ({d.contact_weight:g}) |

    Metrics: ``info["iou"]``, the IoU of the grid cells occupied by dough and target (1 =
    reached), and the task's metric ``info["iou_incremental"]``: ``(IoU_t - IoU_0) / (1 -
    IoU_0)`` clipped to [0, 1], IoU_0 at the episode's start (``reset()`` reports ``iou``).

    ## Starting State
    The blob's centre is jittered by up to 0.03 horizontally; particles fill it as a randomly
    shifted Halton sequence, at rest, F = I; it first rests under gravity for ``settle_steps``
    env steps (default for this task: {settle}). Tools start near the dough, not touching it.
    A reset runs the target's scripted demonstration on a one-world copy of the task.

    ## Episode End
    Truncation after {steps} steps (``gym.make``'s ``max_episode_steps``). Termination only when the
    simulation diverges (a non-finite particle or one outside the domain): then
    ``info["diverged"] = True``, reward 0, ``info["loss"]`` NaN, metrics 0, and the last valid
    observation.

    ## Arguments
    Keyword arguments of ``gym.make`` (all of :class:`~diffenvs.tasks.dough.DoughConfig`), besides
    those of :class:`~diffenvs.env.DiffEnv` (``render_mode``, ``device``, ``differentiable``,
    ``checkpoint``, ``render_width``, ``render_height``):

    | argument | default | meaning |
    |----------|---------|---------|
    | ``preset`` | ``"{d.preset}"`` | ``"default"`` (grid {PRESETS["default"]["grid_res"]}^3, {PRESETS["default"]["particle_count"]:,} particles, {PRESETS["default"]["sim_substeps"]} substeps) or ``"paper"`` (grid {PRESETS["paper"]["grid_res"]}^3, {PRESETS["paper"]["particle_count"]:,} particles, {PRESETS["paper"]["sim_substeps"]} substeps: PlasticineLab's scale) |
    | ``grid_res``, ``particle_count``, ``sim_substeps``, ``frame_dt`` | the preset's | override the preset |
    | ``checkpoint`` | the preset's: {PRESETS["default"]["checkpoint"]} (default), {PRESETS["paper"]["checkpoint"]} (paper) | keep one state per env step and re-run its substeps in ``grad()`` (see :mod:`diffenvs.autodiff` for memory) |
    | ``contact_weight`` | {d.contact_weight:g} | weight of the contact loss (a remedy for "no contact, no gradient") |
    | ``contact_focus`` | None ({task.default_contact_focus} for this task) | the contact loss draws the tools to misplaced dough only |
    | ``tool_softness`` | None ({task.default_tool_softness:g} for this task) | influence radius of the tools [domain units] (a remedy; 0 = hard contact) |
    | ``tool_speed``, ``tool_yaw_rate`` | {d.tool_speed:g}, {d.tool_yaw_rate:g} | tool speed [units/s] and pin yaw rate [rad/s] at action 1 |
    | ``progress_weight``, ``sdf_weight``, ``density_weight``, ``density_block`` | {d.progress_weight:g}, {d.sdf_weight:g}, {d.density_weight:g}, {d.density_block} | reward and loss weights |
    | ``youngs_modulus``, ``poisson_ratio``, ``yield_stress`` | {d.youngs_modulus:g} Pa, {d.poisson_ratio:g}, {d.yield_stress:g} Pa | material |
    | ``tool_friction``, ``ground_friction`` | {d.tool_friction:g}, {d.ground_friction:g} | Coulomb friction |
    | ``return_mapping`` | ``"{d.return_mapping}"`` | the plasticity's return mapping: ``"series"`` or ``"svd"`` (the same map, dearer; the committed studies ran with it) |
    | ``obs_particle_count`` | {d.obs_particle_count} | observed particles K |
    | ``settle_steps`` | None ({settle} for this task) | steps the blob rests before the episode |

    ## Gradients
    ``env.unwrapped.grad()`` returns d(return)/d(actions), shape (T, {task.action_dim}), and d(return)/d(initial
    state) for every field of ``get_state()`` (particles, tools, target). A hard tool that never
    touches the dough gets exactly zero gradient; the remedies, each switchable between
    episodes with ``env.unwrapped.set_remedies(...)`` (for ablations and schedules), are
    ``contact_weight`` (the contact loss), ``softness`` (= ``tool_softness``) and
    ``contact_focus`` (1 or 0). ``diffenvs gradcheck --env ID`` checks the gradient against
    finite differences.

    ## Version History
    - v0: initial release; before its first published release the defaults became soft tools
      (``tool_softness``) and, for Shape, the focused contact loss (pass ``tool_softness=0`` and
      ``contact_focus=False`` for the earlier hard-tool dynamics).{history}
"""


_TRANSLATE_ACTION = """    | Num | Action | Unit |
    |-----|--------|------|
    {rows}"""


def _translate_table(tools: int) -> str:
    rows = []
    for t in range(tools):
        name = f"sphere {t}" if tools > 1 else "tip"
        rows += [f"| {3 * t + c} | {name} velocity along {axis} / ``tool_speed`` | - |" for c, axis in enumerate("xyz")]
    return _TRANSLATE_ACTION.format(rows="\n    ".join(rows))


class RollingPinEnv(DiffEnv):
    __doc__ = _dough_doc(
        "Flatten dough into a target sheet with a rolling pin (capsule, radius 0.03, half length 0.15).",
        RollingPinTask,
        """    | Num | Action | Unit |
    |-----|--------|------|
    | 0 | roll across the pin's axis at ``tool_speed * a[0]`` (spinning without slip) | - |
    | 1 | yaw about the vertical at ``tool_yaw_rate * a[1]`` | - |
    | 2 | vertical velocity ``tool_speed * a[2]`` | - |""",
        """    Target: a demonstration from the pin's own start: press down to a thickness of 0.05-0.07
    (the blob is 0.1 high), roll forward 0.03-0.05, back twice as far, forward to the start
    (about 35 of the 50 steps).
""",
    )
    task_class = RollingPinTask


class MoveEnv(DiffEnv):
    __doc__ = _dough_doc(
        "Carry dough to a target place with two spheres (radius 0.04).",
        MoveTask, _translate_table(2),
        """    Target: the blob moved rigidly 0.05-0.12 horizontally in a random direction; the spheres
    start on either side of it.
""",
    )
    task_class = MoveTask


class ShapeEnv(DiffEnv):
    __doc__ = _dough_doc(
        "Press a pit into the dough with a spherical tool tip (radius 0.04).",
        ShapeTask, _translate_table(1),
        """    Target: a demonstration: the tip, started just above a place 0.03-0.08 from the blob's
    centre in a random direction, presses a pit 0.025-0.04 deep and lifts off again (the
    displaced dough stays where the press put it). The tool itself starts elsewhere: it has to
    find the place first.
""",
    )
    task_class = ShapeTask


def _vector_doc(single: type[DiffEnv]) -> str:
    return (f"``num_envs`` {single.task_class.__name__.removesuffix('Task')} worlds in one batch: see "
            f":class:`{single.__name__}` for the task and :class:`~diffenvs.env.DiffVectorEnv` for batching.")


class PinchEnv(DiffEnv):
    __doc__ = _dough_doc(
        "Pinch a cube of dough into a target pattern of dents with one sphere (radius 0.04).",
        PinchTask, _translate_table(1),
        """    Target: a demonstration from the sphere's own start: a dent 0.02-0.03 deep straight below
    it, then, lifted clear of the dough, a second dent 0.04-0.07 away in a random direction (at
    most 45 of the 50 steps). Two stages: the sphere has to let go of the first dent and find the
    second.
""",
    )
    task_class = PinchTask


class WriterEnv(DiffEnv):
    __doc__ = _dough_doc(
        "Carve a stroke into a slab of dough with a vertical capsule stylus (radius 0.03, half length 0.03).",
        WriterTask, _translate_table(1).replace("tip velocity", "stylus velocity"),
        """    Target: a demonstration from the stylus's own start: down into the slab by 0.02-0.035, a
    stroke of 0.05-0.09 in a random direction and, for half the seeds, a second one at a right
    angle (an L) of 0.03-0.05, then up and clear of the dough (at most 46 of the 50 steps).
""",
    )
    task_class = WriterTask


class TripleMoveEnv(DiffEnv):
    __doc__ = _dough_doc(
        "Carry three pieces of dough, each to its own target place, with three pairs of spheres (radius 0.03).",
        TripleMoveTask, _translate_table(6),
        """    Target: each piece moved rigidly across the row by its own 0.04-0.1 (either way) and along
    it by up to 0.02; spheres 0 and 1 start on either side of the first piece, 2 and 3 of the
    second, 4 and 5 of the third.

    With ``stages`` k (1-3; registered as ``DiffEnvs/TripleMove1-v0``, ``TripleMove2-v0`` and
    ``TripleMove3-v0``, 80 steps per stage) one pair of spheres carries k of the row's pieces in
    turn: a 6-D action (the table's first two rows), the pair starting either side (across the
    row) of the first piece, the preset's particles per piece. Each piece must be let go of before
    the pair finds the next, 0.2 along the row: the axis of the stages study.
""",
    )
    task_class = TripleMoveTask


class TorusEnv(DiffEnv):
    __doc__ = _dough_doc(
        "Stamp a ring into a slab of dough with a torus (ring radius 0.05, tube radius 0.03, axis vertical).",
        TorusTask, _translate_table(1).replace("tip velocity", "torus velocity"),
        """    Target: a demonstration from the stamp's own start: 0.02-0.05 across in a random
    direction, down until the ring is 0.015-0.03 deep in the slab, and back up (at most 31 of
    the 50 steps).
""",
    )
    task_class = TorusTask


class RopeEnv(DiffEnv):
    __doc__ = _dough_doc(
        "Wind a rope of dough around a fixed pillar with two spheres (radius 0.03).",
        RopeTask, _translate_table(2),
        """    Target: a demonstration from the spheres' own start behind the rope, near its ends: both
    push forward until they are 0.02-0.05 past the pillar (a vertical capsule of radius 0.05 in
    front of the rope's middle, tool 2: observed, never moved, no contact loss), the rope's middle
    catching on it, then inward behind it by 30-50% of their distance to it (at most 59 of the 60
    steps). The rope has to go around an obstacle that a straight pull runs into.
""",
        steps=60,
    )
    task_class = RopeTask


class TableEnv(DiffEnv):
    __doc__ = _dough_doc(
        "Push one leg of a four-legged dough table to a new place with a sphere (radius 0.04).",
        TableTask, _translate_table(1).replace("tip velocity", "sphere velocity"),
        """    Target: a demonstration from the sphere's own start under the table's top: to one of the
    four legs (drawn from the seed) and on by 0.03-0.06, within 0.4 rad of straight outward (at
    most 21 of the 50 steps). The sphere has to find the right leg under the top first.
""",
        scene="A table (a 0.2 x 0.05 x 0.2 top on four 0.04 x 0.1 x 0.04 legs, 0.15 apart)",
    )
    task_class = TableTask


class AssemblyEnv(DiffEnv):
    __doc__ = _dough_doc(
        "Pick up a ball of dough with two spheres (radius 0.04) and place it on a block of dough; "
        "with ``stages`` k, k balls in turn.",
        AssemblyTask, _translate_table(2),
        """    Target: a demonstration from the spheres' own start beside the ball (radius 0.05): squeeze
    it, lift it above its block (a 0.1 cube 0.2 away), carry it over, lower it, let go and rise;
    with ``stages`` k (1-3; ``DiffEnvs/Assembly2-v0`` and ``DiffEnvs/Assembly3-v0`` register 2 and 3), k rows of a
    ball and a block 0.22 apart, handled in turn, the spheres passing over the placed balls to the
    next (the preset's particles per stage; at most 116, 325 and 532 steps). A multi-stage task: a
    grasp has to hold, and each ball must be let go of before the next one is found.
""",
        steps=180,
        scene="A ball of radius 0.05 and a 0.1 x 0.1 x 0.1 block 0.2 apart (per stage)",
    )
    task_class = AssemblyTask


class ChopsticksEnv(DiffEnv):
    __doc__ = _dough_doc(
        "Grip a rope of dough with a pair of capsule chopsticks and move it into a target pose (7-D action).",
        ChopsticksTask,
        """    | Num | Action | Unit |
    |-----|--------|------|
    | 0-2 | velocity of the pair along x, y, z / ``tool_speed`` | - |
    | 3-5 | angular velocity of the pair about its midpoint (x, y, z) / ``tool_yaw_rate`` | - |
    | 6 | rate of the gap between the chopsticks / ``tool_speed`` (positive opens) | - |""",
        """    The chopsticks are two parallel vertical capsules (radius 0.015, half length 0.1) moved as
    one rigid pair. Target: a demonstration from their own start above the rope's middle: down
    to 0.005 above the floor, close until each squeezes 0.005 into the rope, drag it 0.04-0.08 in
    a random direction while turning by 0.1-0.25 rad either way, open and lift (at most 46 of the
    50 steps).
""",
    )
    task_class = ChopsticksTask


def _vector_env(single: type[DiffEnv]) -> type[DiffVectorEnv]:
    """The native vector env of a single dough env (the same task, batched)."""
    name = single.__name__.removesuffix("Env") + "VectorEnv"
    return type(name, (DiffVectorEnv,), {"__doc__": _vector_doc(single), "task_class": single.task_class,
                                         "__module__": __name__, "__qualname__": name})


RollingPinVectorEnv = _vector_env(RollingPinEnv)
MoveVectorEnv = _vector_env(MoveEnv)
ShapeVectorEnv = _vector_env(ShapeEnv)
PinchVectorEnv = _vector_env(PinchEnv)
WriterVectorEnv = _vector_env(WriterEnv)
TripleMoveVectorEnv = _vector_env(TripleMoveEnv)
TorusVectorEnv = _vector_env(TorusEnv)
RopeVectorEnv = _vector_env(RopeEnv)
TableVectorEnv = _vector_env(TableEnv)
AssemblyVectorEnv = _vector_env(AssemblyEnv)
ChopsticksVectorEnv = _vector_env(ChopsticksEnv)


__all__ = [
    "AssemblyEnv",
    "AssemblyVectorEnv",
    "ChopsticksEnv",
    "ChopsticksVectorEnv",
    "MoveEnv",
    "MoveVectorEnv",
    "PinchEnv",
    "PinchVectorEnv",
    "RollingPinEnv",
    "RollingPinVectorEnv",
    "RopeEnv",
    "RopeVectorEnv",
    "ShapeEnv",
    "ShapeVectorEnv",
    "TableEnv",
    "TableVectorEnv",
    "TorusEnv",
    "TorusVectorEnv",
    "TripleMoveEnv",
    "TripleMoveVectorEnv",
    "WriterEnv",
    "WriterVectorEnv",
]
