"""Dough tasks with compound scenes: a fixed obstacle (``Rope``), pieces of several shapes (``Table``,
``Assembly``, whose pieces are handled in turn, one stage each) and coupled tools (``Chopsticks``).

Their scenes follow PlasticineLab's task files (``plb/envs/*.yml``: shapes, tools, action sizes); the
targets are our own, each the end state of a scripted demonstration run with the env's own steps.
"""

from __future__ import annotations

import math

import numpy as np
import warp as wp

from diffenvs.sim.mpm import ToolShape
from diffenvs.tasks.dough import kernels as K
from diffenvs.tasks.dough.targets import Demonstration, path_demo_actions, yaw_quat
from diffenvs.tasks.dough.task import DoughTask
from diffenvs.tasks.dough.variants import _heading, _TranslateTask

UPRIGHT = np.array([0.0, 0.0, math.sin(math.pi / 4), math.cos(math.pi / 4)])
"""Quaternion that turns a capsule's axis (local x) vertical."""


def _paths(starts: np.ndarray, legs: list[np.ndarray], step: float, rest: int = 3, ramp: int = 1) -> np.ndarray:
    """Actions (K, 3 T) that move T translating tools from ``starts`` (T, 3) along ``legs`` (each (T, 3):
    every tool's displacement in that leg) in step: a leg takes as many env steps as its longest
    displacement needs, so the tools start and end each leg together. ``ramp`` > 1: each leg's speed
    rises to full over ``ramp`` steps and falls again before its end (a held piece of dough then
    follows the tools instead of slipping out of their grip)."""
    actions = []
    for leg in legs:
        length = float(np.abs(leg).max())
        moves = 1
        while _profile(moves, ramp).sum() * step < length - 1e-9:
            moves += 1
        profile = _profile(moves, ramp)
        actions += [(leg * (p / (profile.sum() * step))).reshape(-1) for p in profile]
    return np.array(actions + [np.zeros(3 * len(starts))] * rest)


def _profile(moves: int, ramp: int) -> np.ndarray:
    """Relative speeds of a leg of ``moves`` steps: up to 1 over ``ramp`` steps, down over the last ``ramp``."""
    k = np.arange(moves)
    return np.minimum(1.0, np.minimum(k + 1, moves - k) / ramp)


class RopeTask(_TranslateTask):
    """Wind a rope of dough around a fixed pillar with two spheres (PlasticineLab's Rope)."""

    action_dim = 6
    tool_shapes = (ToolShape("sphere", (0.03, 0.0, 0.0)), ToolShape("sphere", (0.03, 0.0, 0.0)),
                   ToolShape("capsule", (0.05, 0.04, 0.0)))  # the pillar: radius 0.05, 0.18 high
    fixed_tools = 1
    blob_half = np.array([0.25, 0.03, 0.03])  # a 0.5 x 0.06 x 0.06 rope along x (PlasticineLab: 0.6 long)

    def sample_tools(self, rng, blob_centre):
        r = self.tool_shapes[0].size[0]
        behind = blob_centre[2] + self.blob_half[2] + r + rng.uniform(0.005, 0.015)
        spheres = [[blob_centre[0] + side * rng.uniform(0.14, 0.18), blob_centre[1], behind] for side in (-1.0, 1.0)]
        pillar_r, pillar_half = self.tool_shapes[2].size[:2]
        pillar = [blob_centre[0] + rng.uniform(-0.04, 0.04), self.model.floor_height + pillar_half + pillar_r,
                  blob_centre[2] - self.blob_half[2] - pillar_r - rng.uniform(0.005, 0.02)]
        return np.array([*spheres, pillar]), np.array([yaw_quat(0.0), yaw_quat(0.0), UPRIGHT])

    def sample_target(self, rng, blob_centre, particles, tool_pos, tool_rot):
        # Demonstration from the spheres' own start: both push their end of the rope forward past the
        # pillar by 0.02-0.05 (the rope's middle catches on it), then inward behind it by 30-50% of
        # their distance to it (at most 59 steps).
        pillar = tool_pos[2]
        forward = [np.array([0.0, 0.0, pillar[2] - rng.uniform(0.02, 0.05) - p[2]]) for p in tool_pos[:2]]
        inward = [np.array([(pillar[0] - p[0]) * rng.uniform(0.3, 0.5), 0.0, 0.0]) for p in tool_pos[:2]]
        actions = _paths(tool_pos[:2], [np.stack(forward), np.stack(inward)], self.config.tool_speed * self.frame_dt)
        return {"target_x": Demonstration(tool_pos, tool_rot, actions)}


class TableTask(_TranslateTask):
    """Push one leg of a four-legged dough table to a new place with a sphere (PlasticineLab's Table)."""

    action_dim = 3
    tool_shapes = (ToolShape("sphere", (0.04, 0.0, 0.0)),)
    legs = np.array([[-0.075, 0.0, -0.075], [-0.075, 0.0, 0.075], [0.075, 0.0, -0.075], [0.075, 0.0, 0.075]])
    blob_half = np.array([[0.02, 0.05, 0.02]] * 4 + [[0.1, 0.025, 0.1]])  # PlasticineLab's legs and top
    blob_offsets = np.concatenate([legs, [[0.0, 0.1, 0.0]]])  # the top rests on the legs

    def sample_tools(self, rng, blob_centre):
        r = self.tool_shapes[0].size[0]
        pos = np.array([blob_centre[0] + rng.uniform(-0.02, 0.02), self.model.floor_height + r + 0.005,
                        blob_centre[2] + rng.uniform(-0.02, 0.02)])
        return pos[None], yaw_quat(0.0)[None]

    def sample_target(self, rng, blob_centre, particles, tool_pos, tool_rot):
        # Demonstration from the sphere's own start under the top: to one leg (drawn from the four),
        # and on by 0.03-0.06 in a direction within 0.4 rad of straight outward.
        start = tool_pos[0]
        leg = blob_centre + self.legs[rng.integers(len(self.legs))]
        angle = math.atan2(leg[2] - blob_centre[2], leg[0] - blob_centre[0]) + rng.uniform(-0.4, 0.4)
        out = np.array([math.cos(angle), 0.0, math.sin(angle)])
        reach = self.tool_shapes[0].size[0] + self.blob_half[0][0]
        touch = np.array([leg[0], start[1], leg[2]]) - reach * out
        actions = path_demo_actions(start, [touch, touch + rng.uniform(0.03, 0.06) * out], self.config.tool_speed * self.frame_dt)
        return {"target_x": Demonstration(tool_pos, tool_rot, actions)}


class AssemblyTask(_TranslateTask):
    """Pick up a ball of dough with two spheres and place it on a block of dough (PlasticineLab's
    Assembly); with ``stages`` k, k balls, each onto its own block, in turn."""

    action_dim = 6
    tool_shapes = (ToolShape("sphere", (0.04, 0.0, 0.0)), ToolShape("sphere", (0.04, 0.0, 0.0)))
    max_stages = 3
    ball, block, row = 0.05, 0.05, 0.22  # ball radius, block half size, distance of the rows (along z)
    grip = 0.025  # how far each sphere squeezes into the ball
    hold = 0.05  # while it is held, the spheres press in by this fraction of the way

    def layout_pieces(self):
        rows = (np.arange(self.stages) - (self.stages - 1) / 2) * self.row
        self.blob_offsets = np.array([[x, 0.0, z] for z in rows for x in (-0.1, 0.1)])  # ball, then block, per row
        self.blob_half = np.array([[self.ball] * 3, [self.block] * 3] * self.stages)
        self.blob_balls = (True, False) * self.stages

    def _beside(self, ball: np.ndarray) -> np.ndarray:
        gap = self.ball + self.tool_shapes[0].size[0] + 0.01
        return np.stack([ball - [0.0, 0.0, gap], ball + [0.0, 0.0, gap]])

    def sample_tools(self, rng, blob_centre):
        ball = np.array([blob_centre[0] - 0.1, self.model.floor_height + self.ball, blob_centre[2] + self.blob_offsets[0][2]])
        return self._beside(ball) + [rng.uniform(-0.01, 0.01), 0.0, 0.0], np.tile(yaw_quat(0.0), (2, 1))

    def sample_target(self, rng, blob_centre, particles, tool_pos, tool_rot):
        # Demonstration, ball after ball: from beside the ball, squeeze, lift above its block, carry,
        # lower onto it (each leg speeding up and slowing down, the spheres pressing in by a twentieth
        # of the way), let go and rise; then, clear of the dough, to the next ball.
        inward = np.array([[0.0, 0.0, 1.0], [0.0, 0.0, -1.0]])
        lift = 2 * self.block + 0.07

        def held(move: np.ndarray) -> np.ndarray:
            return np.tile(move, (2, 1)) + inward * (self.hold * float(np.abs(move).max()))

        here, legs = tool_pos, []
        for stage in range(self.stages):
            ball = np.array([blob_centre[0] - 0.1, self.model.floor_height + self.ball, blob_centre[2] + self.blob_offsets[2 * stage][2]])
            beside = self._beside(ball)
            if stage:  # over the placed balls (their tops 2 block + 2 ball above the floor) to the next
                high = self.model.floor_height + 2 * (self.block + self.ball) + self.tool_shapes[0].size[0] + 0.02
                legs += [np.tile([0.0, high - here[0][1], 0.0], (2, 1)), (beside - here) * [1, 0, 1],
                         np.tile([0.0, beside[0][1] - high, 0.0], (2, 1))]
                here = beside
            shift = np.array([0.2 + rng.uniform(-0.01, 0.01), 0.0, rng.uniform(-0.01, 0.01)])
            legs += [inward * (here[1, 2] - here[0, 2] - 2 * (self.ball + self.tool_shapes[0].size[0] - self.grip)) / 2,
                     held(np.array([0.0, lift, 0.0])), held(shift), held(np.array([0.0, -0.065, 0.0]))]
            gripped = here + sum(legs[-4:])
            legs += [-inward * 0.04, np.tile([0.0, 0.04, 0.0], (2, 1))]
            here = gripped - inward * 0.04 + [0.0, 0.04, 0.0]
        actions = _paths(tool_pos, legs, self.config.tool_speed * self.frame_dt, ramp=4)
        return {"target_x": Demonstration(tool_pos, tool_rot, actions)}


class ChopsticksTask(DoughTask):
    """Grip a rope of dough with a pair of capsule chopsticks and move it into a target pose
    (PlasticineLab's Chopsticks: position, rotation and gap, a 7-D action)."""

    action_dim = 7
    tool_shapes = (ToolShape("capsule", (0.015, 0.1, 0.0)), ToolShape("capsule", (0.015, 0.1, 0.0)))
    blob_half = np.array([0.02, 0.02, 0.2])  # a 0.04 x 0.04 x 0.4 rope along z (PlasticineLab: 0.6 long)
    gap_speed = 1.0  # rate of the gap at action 1, as a fraction of tool_speed
    rigid_pair = True  # contact discovery moves the pair's midpoint (diffenvs.baselines.contact_discovery)

    def sample_tools(self, rng, blob_centre):
        r, half = self.tool_shapes[0].size[:2]
        gap = self.blob_half[0] + r + rng.uniform(0.01, 0.02)
        centre = blob_centre + [0.0, self.blob_half[1] + half + r + rng.uniform(0.005, 0.015), rng.uniform(-0.05, 0.05)]
        return np.stack([centre - [gap, 0.0, 0.0], centre + [gap, 0.0, 0.0]]), np.stack([UPRIGHT, UPRIGHT])

    def sample_target(self, rng, blob_centre, particles, tool_pos, tool_rot):
        # Demonstration from the chopsticks' own start: down until their tips are 0.005 above the
        # floor, grip (the gap closes until each squeezes 0.005 into the rope), then drag the rope
        # 0.04-0.08 in a random direction while turning by 0.1-0.25 rad either way, open and lift
        # (at most 49 of the 50 steps).
        cfg = self.config
        step = cfg.tool_speed * self.frame_dt
        r, half = self.tool_shapes[0].size[:2]
        drop = float(tool_pos[0, 1] - (self.model.floor_height + 0.005 + half + r))
        clearance = float(tool_pos[1, 0] - tool_pos[0, 0]) / 2 - r - self.blob_half[0]
        grip = math.ceil(2 * (clearance + 0.005) / (self.gap_speed * step))
        drag = rng.uniform(0.04, 0.08) * _heading(rng)
        turn = rng.choice([-1.0, 1.0]) * rng.uniform(0.1, 0.25)
        moves = max(math.ceil(np.abs(drag).max() / step), math.ceil(abs(turn) / (cfg.tool_yaw_rate * self.frame_dt)))
        turn_rate = turn / (moves * cfg.tool_yaw_rate * self.frame_dt)
        actions = [[0.0, -1.0, 0, 0, 0, 0, 0]] * int(drop // step) + [[0.0, -(drop % step) / step, 0, 0, 0, 0, 0]]
        actions += [[0, 0, 0, 0, 0, 0, -1.0]] * grip
        actions += [[*(drag / (moves * step)), 0.0, turn_rate, 0.0, 0.0]] * moves
        actions += [[0, 0, 0, 0, 0, 0, 1.0]] * grip + [[0.0, 1.0, 0, 0, 0, 0, 0]] * 4 + [[0.0] * 7] * 3
        return {"target_x": Demonstration(tool_pos, tool_rot, np.array(actions, dtype=np.float64))}

    def apply_action(self, state_in, buffers):
        cfg = self.config
        wp.launch(
            K.prepare_step_chopsticks, dim=self.world_count,
            inputs=[buffers.action, state_in["tool_pos"], cfg.tool_speed, cfg.tool_yaw_rate, self.gap_speed * cfg.tool_speed,
                    self.frame_dt],
            outputs=[buffers.control.tool_vel, buffers.control.tool_omega],
            device=self.device,
        )
