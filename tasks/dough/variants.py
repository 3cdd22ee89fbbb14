"""The dough tasks: their tools, how the action drives them, and how their targets are drawn."""

from __future__ import annotations

import math

import numpy as np
import warp as wp

from diffenvs.sim.mpm import ToolShape
from diffenvs.tasks.dough import kernels as K
from diffenvs.tasks.dough.config import BLOB_HALF
from diffenvs.tasks.dough.targets import Demonstration, path_demo_actions, press_demo_actions, rolling_demo_actions, yaw_quat
from diffenvs.tasks.dough.task import DoughTask


class RollingPinTask(DoughTask):
    """Flatten the dough into a thinner, wider sheet with a rolling pin."""

    action_dim = 3
    tool_shapes = (ToolShape("capsule", (0.03, 0.15, 0.0)),)

    def sample_tools(self, rng, blob_centre):
        r = self.tool_shapes[0].size[0]
        pos = blob_centre + np.array([rng.uniform(-0.03, 0.03), BLOB_HALF[1] + r + rng.uniform(0.005, 0.02), rng.uniform(-0.03, 0.03)])
        return pos[None], yaw_quat(rng.uniform(-0.3, 0.3))[None]

    def sample_target(self, rng, blob_centre, particles, tool_pos, tool_rot):
        # Demonstration from the pin's own start: press to the sheet's thickness, roll forward,
        # back past the start, and forward again to it (about 35 of the 50 steps).
        thickness = 2.0 * BLOB_HALF[1] * rng.uniform(0.5, 0.7)
        reach = rng.uniform(0.03, 0.05)
        step = self.config.tool_speed * self.frame_dt
        radius = self.tool_shapes[0].size[0]
        drop = float(tool_pos[0, 1] - (self.model.floor_height + thickness + radius))
        actions = rolling_demo_actions(drop, reach, step)
        return {"target_x": Demonstration(tool_pos, tool_rot, actions)}

    def apply_action(self, state_in, buffers):
        cfg = self.config
        wp.launch(
            K.prepare_step_rolling_pin, dim=self.world_count,
            inputs=[buffers.action, state_in["tool_rot"], cfg.tool_speed, cfg.tool_yaw_rate, self.tool_shapes[0].size[0]],
            outputs=[buffers.control.tool_vel, buffers.control.tool_omega],
            device=self.device,
        )


class _TranslateTask(DoughTask):
    """Tools that translate with the velocity the action gives them (3 action entries per driven tool;
    fixed tools stay put)."""

    translating = True  # contact discovery may place these tools (diffenvs.baselines.contact_discovery)

    def apply_action(self, state_in, buffers):
        wp.launch(
            K.prepare_step_translate, dim=(self.world_count, self.driven_tools),
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
        return pos, np.tile(yaw_quat(0.0), (2, 1))

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
        return pos[None], yaw_quat(0.0)[None]

    default_settle_steps = 30
    default_tool_softness = 0.01  # with the focused contact loss: plain Adam's first experiment beats random search
    default_contact_focus = True

    def sample_target(self, rng, blob_centre, particles, tool_pos, tool_rot):
        heading = rng.uniform(-math.pi, math.pi)
        place = blob_centre + rng.uniform(0.03, 0.08) * np.array([math.cos(heading), 0.0, math.sin(heading)])
        depth = rng.uniform(0.025, 0.04)
        radius = self.tool_shapes[0].size[0]
        top = float(particles["particle_x"][:, 1].max())
        start = np.array([place[0], top + radius + 0.005, place[2]])
        bottom = np.array([place[0], top - depth + radius, place[2]])
        # Demonstration: from just above the place, down to the pit's depth, back up, at rest.
        actions = press_demo_actions(start[1] - bottom[1], self.config.tool_speed * self.frame_dt)
        return {"carve_base": bottom, "carve_size": np.array([radius, start[1] - bottom[1], 0.0]),
                "target_x": Demonstration(start[None], tool_rot, actions)}


def _above_dough(rng: np.random.Generator, blob_centre: np.ndarray, blob_half: np.ndarray, reach_below: float,
                 jitter: float) -> np.ndarray:
    """A tool's centre above the dough: horizontally within ``jitter`` of the dough's centre, its lowest
    point (``reach_below`` under its centre) 0.005-0.015 above the dough's top."""
    offset = rng.uniform(-jitter, jitter, size=2)
    return blob_centre + np.array([offset[0], blob_half[1] + reach_below + rng.uniform(0.005, 0.015), offset[1]])


def _heading(rng: np.random.Generator) -> np.ndarray:
    """A horizontal unit vector of a uniformly random heading."""
    angle = rng.uniform(-math.pi, math.pi)
    return np.array([math.cos(angle), 0.0, math.sin(angle)])


class PinchTask(_TranslateTask):
    """Pinch a cube of dough into a target pattern of two dents with one sphere (PlasticineLab's Pinch)."""

    action_dim = 3
    tool_shapes = (ToolShape("sphere", (0.04, 0.0, 0.0)),)
    blob_half = np.array([0.1, 0.1, 0.1])  # PlasticineLab's 0.2^3 cube

    def sample_tools(self, rng, blob_centre):
        pos = _above_dough(rng, blob_centre, self.blob_half, self.tool_shapes[0].size[0], 0.04)
        return pos[None], yaw_quat(0.0)[None]

    def sample_target(self, rng, blob_centre, particles, tool_pos, tool_rot):
        # Demonstration from the sphere's own start: a dent 0.02-0.03 deep straight below it, then,
        # lifted clear of the dough, a second dent 0.04-0.07 away in a random direction (inside the
        # cube's top); at most 45 of the 50 steps.
        start = tool_pos[0]
        top = float(particles["particle_x"][:, 1].max())
        radius = self.tool_shapes[0].size[0]
        depths = rng.uniform(0.02, 0.03, size=2)
        above = top + radius + 0.005
        second = start + rng.uniform(0.04, 0.07) * _heading(rng)
        limit = self.blob_half[0] - 0.02
        second[[0, 2]] = np.clip(second[[0, 2]], blob_centre[[0, 2]] - limit, blob_centre[[0, 2]] + limit)
        first_bottom = np.array([start[0], top - depths[0] + radius, start[2]])
        second_top = np.array([second[0], above, second[2]])
        second_bottom = np.array([second[0], top - depths[1] + radius, second[2]])
        waypoints = [first_bottom, np.array([start[0], above, start[2]]), second_top, second_bottom, second_top]
        actions = path_demo_actions(start, waypoints, self.config.tool_speed * self.frame_dt)
        return {"target_x": Demonstration(tool_pos, tool_rot, actions)}


class WriterTask(_TranslateTask):
    """Carve a stroke into a slab of dough with a vertical capsule stylus (PlasticineLab's Writer)."""

    action_dim = 3
    tool_shapes = (ToolShape("capsule", (0.03, 0.03, 0.0)),)  # radius 0.03, half length 0.03: PlasticineLab's r, h
    default_tool_softness = 0.01

    def sample_tools(self, rng, blob_centre):
        r, half = self.tool_shapes[0].size[:2]
        pos = _above_dough(rng, blob_centre, self.blob_half, half + r, 0.05)
        upright = np.array([0.0, 0.0, math.sin(math.pi / 4), math.cos(math.pi / 4)])  # its axis (local x) vertical
        return pos[None], upright[None]

    def sample_target(self, rng, blob_centre, particles, tool_pos, tool_rot):
        # Demonstration from the stylus's own start: down into the slab by 0.02-0.035, a stroke of
        # 0.05-0.09 in a random direction, and with probability 1/2 a second one at a right angle
        # (an L) of 0.03-0.05, then up and clear of the dough; at most 46 of the 50 steps.
        start = tool_pos[0]
        r, half = self.tool_shapes[0].size[:2]
        top = float(particles["particle_x"][:, 1].max())
        tip = top - rng.uniform(0.02, 0.035)
        down = np.array([start[0], tip + half + r, start[2]])
        heading = _heading(rng)
        corner = down + rng.uniform(0.05, 0.09) * heading
        waypoints = [down, corner]
        if rng.uniform() < 0.5:
            turn = np.array([-heading[2], 0.0, heading[0]]) * (1.0 if rng.uniform() < 0.5 else -1.0)
            waypoints.append(corner + rng.uniform(0.03, 0.05) * turn)
        limit = self.blob_half[[0, 2]] - 0.03
        for point in waypoints:
            point[[0, 2]] = np.clip(point[[0, 2]], blob_centre[[0, 2]] - limit, blob_centre[[0, 2]] + limit)
        waypoints.append(np.array([waypoints[-1][0], start[1], waypoints[-1][2]]))
        actions = path_demo_actions(start, waypoints, self.config.tool_speed * self.frame_dt)
        return {"target_x": Demonstration(tool_pos, tool_rot, actions)}


class TripleMoveTask(_TranslateTask):
    """Carry three pieces of dough, each to its own target place, with three pairs of spheres
    (PlasticineLab's TripleMove); with ``stages`` k, k pieces carried in turn by one pair."""

    action_dim = 18
    tool_shapes = tuple(ToolShape("sphere", (0.03, 0.0, 0.0)) for _ in range(6))
    blob_half = np.array([0.05, 0.05, 0.05])  # PlasticineLab's 0.1^3 cubes, 0.2 apart
    blob_offsets = np.array([[-0.2, 0.0, 0.0], [0.0, 0.0, 0.0], [0.2, 0.0, 0.0]])
    max_stages = 3
    stages_default = None  # without the option every piece has its own pair, all at once: not a number of stages
    stage_steps = 80  # env steps per stage of the ids with stages (a carry, then 0.2 along the row to the next piece)

    def layout_pieces(self):
        if self.config.stages is None:  # PlasticineLab's: every piece has its own pair, all act at once
            return
        # In turn: k of the row's pieces (the preset's particles each), one pair of spheres for all of them
        self.blob_offsets = np.array([[0.2 * (i - (self.stages - 1) / 2), 0.0, 0.0] for i in range(self.stages)])
        self.tool_shapes = type(self).tool_shapes[:2]
        self.action_dim = 6

    def sample_tools(self, rng, blob_centre):
        r = self.tool_shapes[0].size[0]
        if self.config.stages is not None:  # the one pair, on either side (across the row) of the first piece
            gap = self.blob_half[2] + r + rng.uniform(0.005, 0.015)
            first = blob_centre + self.blob_offsets[0]
            pos = [first - [0.0, 0.0, gap], first + [0.0, 0.0, gap]]
        else:
            pos = []
            for offset in self.blob_offsets:
                gap = self.blob_half[0] + r + rng.uniform(0.005, 0.015)
                pos += [blob_centre + offset - [gap, 0.0, 0.0], blob_centre + offset + [gap, 0.0, 0.0]]
        return np.array(pos), np.tile(yaw_quat(0.0), (len(pos), 1))

    def sample_target(self, rng, blob_centre, particles, tool_pos, tool_rot):
        # Each piece slides rigidly across the row by its own 0.04-0.1 (either way) and along it by
        # up to 0.02: the pieces never meet, and each pair of spheres has its own piece to carry.
        x = particles["particle_x"]
        piece = np.argmin(np.abs(x[:, 0, None] - (blob_centre[0] + self.blob_offsets[:, 0])[None]), axis=1)
        shifts = np.stack([np.array([rng.uniform(-0.02, 0.02), 0.0, rng.choice([-1.0, 1.0]) * rng.uniform(0.04, 0.1)])
                           for _ in self.blob_offsets])
        return {"target_x": x + shifts[piece]}


class TorusTask(_TranslateTask):
    """Stamp a ring into a slab of dough with a torus (PlasticineLab's Torus)."""

    action_dim = 3
    tool_shapes = (ToolShape("torus", (0.05, 0.03, 0.0)),)  # ring radius 0.05, tube 0.03: PlasticineLab's tx, ty
    # The stamp must find its place first: with the focused contact loss and a wider influence plain
    # Adam's first experiment ends above random search's metric on every seed (results/first_hour/torus.json).
    default_tool_softness = 0.02
    default_contact_focus = True

    def sample_tools(self, rng, blob_centre):
        pos = _above_dough(rng, blob_centre, self.blob_half, self.tool_shapes[0].size[1], 0.04)
        return pos[None], yaw_quat(0.0)[None]

    def sample_target(self, rng, blob_centre, particles, tool_pos, tool_rot):
        # Demonstration from the stamp's own start: 0.02-0.05 across in a random direction, down
        # until the ring is 0.015-0.03 deep in the slab, and back up (at most 31 of the 50 steps).
        start = tool_pos[0]
        r = self.tool_shapes[0].size[1]
        top = float(particles["particle_x"][:, 1].max())
        place = start + rng.uniform(0.02, 0.05) * _heading(rng)
        bottom = np.array([place[0], top - rng.uniform(0.015, 0.03) + r, place[2]])
        actions = path_demo_actions(start, [place, bottom, place], self.config.tool_speed * self.frame_dt)
        return {"target_x": Demonstration(tool_pos, tool_rot, actions)}
