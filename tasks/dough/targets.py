"""Dough scenes and targets: the starting blob, and scripted demonstrations that make targets.

A demonstration runs a task's own steps (hard tools, no contact loss) on the low-level rollout
helper :func:`diffenvs.task.rollout`, outside any tape, so every target is a state that the env's
actions can reach.
"""

from __future__ import annotations

import math

import numpy as np

from diffenvs.task import Task, rollout
from diffenvs.tasks.dough.config import BLOB_HALF
from diffenvs.tasks.dough.kernels import TARGET_FIELDS


def spatial_order(x: np.ndarray, dx: float) -> np.ndarray:
    """Permutation that sorts points by their grid cell in the grid's memory order (i, j, k).

    Particles of neighbouring cells then touch neighbouring grid nodes, so the stencil loops of
    the transfers (and their adjoints) read and write the grid in cache-friendly order; the
    Halton sequence itself jumps across the whole box from one point to the next.
    """
    cell = np.floor(np.asarray(x) / dx).astype(np.int64)
    return np.lexsort((cell[:, 2], cell[:, 1], cell[:, 0]))


def halton(count: int, *, shift: np.ndarray | None = None) -> np.ndarray:
    """``count`` points of the 3-D Halton sequence in [-1, 1]^3, optionally rotated by ``shift`` (mod 1).

    The dough box is filled with these low-discrepancy points rather than uniform random ones:
    its grid mass is smoother (targets are made of the dough's own particles, so the density
    loss has no sampling floor either way).
    """
    points = np.zeros((count, 3))
    for axis, base in enumerate((2, 3, 5)):
        index = np.arange(1, count + 1)
        scale = 1.0
        while np.any(index > 0):
            scale /= base
            points[:, axis] += scale * (index % base)
            index //= base
    if shift is not None:
        points = (points + shift) % 1.0
    return 2.0 * points - 1.0


def yaw_quat(angle: float) -> np.ndarray:
    """Quaternion (x, y, z, w) of a rotation by ``angle`` [rad] about the vertical axis."""
    return np.array([0.0, math.sin(angle / 2), 0.0, math.cos(angle / 2)])


def sample_blob(rng: np.random.Generator, particle_count: int, *, dx: float, floor: float) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The starting box of dough (:data:`BLOB_HALF`) on the floor, centred within 0.03 of the domain's
    middle, filled with a randomly shifted Halton sequence, at rest, F = I; sorted by grid cell
    (cell size ``dx``). Returns its centre and its particle fields."""
    centre = np.array([0.5 + rng.uniform(-0.03, 0.03), floor + BLOB_HALF[1], 0.5 + rng.uniform(-0.03, 0.03)])
    x = centre + halton(particle_count, shift=rng.uniform(size=3)) * BLOB_HALF
    x = x[spatial_order(x, dx)]
    return centre, {
        "particle_x": x, "particle_v": np.zeros_like(x), "particle_C": np.zeros((particle_count, 3, 3)),
        "particle_F": np.broadcast_to(np.eye(3), (particle_count, 3, 3)).copy(),
    }


class Demonstrator:
    """Runs scripted action sequences on a one-world task (hard tools, no contact loss)."""

    def __init__(self, task: Task):
        if task.world_count != 1:
            raise ValueError(f"a demonstrator runs one world, got {task.world_count}")
        self.task = task

    def run(
        self, particles: dict[str, np.ndarray], tool_pos: np.ndarray, tool_rot: np.ndarray, actions: np.ndarray
    ) -> dict[str, np.ndarray]:
        """The particle fields (float64) after ``actions`` (K, action_dim) from ``particles`` and the tools' poses."""
        state = {**particles, "tool_pos": tool_pos, "tool_rot": tool_rot, "target_x": particles["particle_x"],
                 **{name: np.zeros(3) for name in TARGET_FIELDS}}
        batched = {name: np.asarray(value)[None] for name, value in state.items()}
        final = rollout(self.task, batched, np.asarray(actions, dtype=np.float64).reshape(len(actions), 1, -1))
        return {name: final[name][0].astype(np.float64) for name in particles}


def rolling_demo_actions(drop: float, reach: float, step: float) -> np.ndarray:
    """A rolling pin's demonstration: down by ``drop``, roll forward by ``reach``, back twice as far,
    forward to the start (``step``: the distance of one env step at action 1) [domain units]."""
    actions = [[0.0, 0.0, -1.0]] * int(drop // step) + [[0.0, 0.0, -(drop % step) / step]]
    rolls = round(reach / step)
    actions += [[1.0, 0.0, 0.0]] * rolls + [[-1.0, 0.0, 0.0]] * (2 * rolls) + [[1.0, 0.0, 0.0]] * rolls
    return np.array(actions)


def press_demo_actions(depth: float, step: float, rest: int = 3) -> np.ndarray:
    """A press's demonstration: down by ``depth`` at constant speed, back up, ``rest`` steps at rest."""
    moves = max(1, math.ceil(depth / step))
    speed = depth / (moves * step)
    return np.array([[0.0, -speed, 0.0]] * moves + [[0.0, speed, 0.0]] * moves + [[0.0, 0.0, 0.0]] * rest)
