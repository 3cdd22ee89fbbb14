"""Dough scenes and targets: the starting blob, and scripted demonstrations that make targets.

A demonstration runs a task's own steps (hard tools, no contact loss) on the low-level rollout
helper :func:`diffenvs.task.rollout`, outside any tape, so every target is a state that the env's
actions can reach.
"""

from __future__ import annotations

import dataclasses
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


def sample_blob(rng: np.random.Generator, particle_count: int, *, dx: float, floor: float,
                half: np.ndarray = BLOB_HALF, offsets: np.ndarray | None = None) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The starting dough on the floor: a box of half extents ``half`` (default :data:`BLOB_HALF`), or
    one such box at each horizontal offset of ``offsets`` (B, 3) from the centre (the particles split
    evenly, the first boxes taking the remainder). The centre lies within 0.03 of the domain's middle;
    each box is filled with a randomly shifted Halton sequence, at rest, F = I; the particles are
    sorted by grid cell (cell size ``dx``). Returns the centre and the particle fields."""
    half = np.asarray(half, dtype=np.float64)
    offsets = np.zeros((1, 3)) if offsets is None else np.asarray(offsets, dtype=np.float64).reshape(-1, 3)
    centre = np.array([0.5 + rng.uniform(-0.03, 0.03), floor + half[1], 0.5 + rng.uniform(-0.03, 0.03)])
    counts = [particle_count // len(offsets) + (b < particle_count % len(offsets)) for b in range(len(offsets))]
    x = np.concatenate([centre + offset + halton(count, shift=rng.uniform(size=3)) * half
                        for offset, count in zip(offsets, counts)])
    x = x[spatial_order(x, dx)]
    return centre, {
        "particle_x": x, "particle_v": np.zeros_like(x), "particle_C": np.zeros((particle_count, 3, 3)),
        "particle_F": np.broadcast_to(np.eye(3), (particle_count, 3, 3)).copy(),
    }


@dataclasses.dataclass(frozen=True)
class Demonstration:
    """A scripted run from the world's blob: the tools' start poses (T, 3) and (T, 4), and the
    actions (K, action_dim); a target made from it is the dough's particle positions after it."""

    tool_pos: np.ndarray
    tool_rot: np.ndarray
    actions: np.ndarray


class Demonstrator:
    """Runs scripted action sequences of up to ``task.world_count`` worlds at once on a task (hard
    tools, no contact loss): one batched rollout, each world stopping after its own sequence."""

    def __init__(self, task: Task):
        self.task = task

    def run(self, starts: list[tuple[dict[str, np.ndarray], np.ndarray, np.ndarray, np.ndarray]]) -> list[dict[str, np.ndarray]]:
        """Per start (particle fields, tool positions (T, 3), tool quaternions (T, 4), actions (K, action_dim)):
        the particle fields (float64) after its actions."""
        n = self.task.world_count
        if not 0 < len(starts) <= n:
            raise ValueError(f"a demonstrator of {n} worlds runs 1 to {n} sequences, got {len(starts)}")
        padded = starts + [starts[0]] * (n - len(starts))  # spare worlds copy the first start and stay put
        steps = np.array([len(s[3]) for s in starts] + [0] * (n - len(starts)))
        horizon = int(steps.max(initial=0))
        actions = np.zeros((horizon, n, self.task.action_dim))
        for w, (_, _, _, sequence) in enumerate(starts):
            actions[: len(sequence), w] = np.asarray(sequence, dtype=np.float64).reshape(len(sequence), self.task.action_dim)
        fields = starts[0][0].keys()
        state = {name: np.stack([s[0][name] for s in padded]) for name in fields}
        state.update(tool_pos=np.stack([s[1] for s in padded]), tool_rot=np.stack([s[2] for s in padded]),
                     target_x=state["particle_x"], **{name: np.zeros((n, 3)) for name in TARGET_FIELDS})
        final = rollout(self.task, state, actions, steps)
        return [{name: final[name][w].astype(np.float64) for name in fields} for w in range(len(starts))]


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


def path_demo_actions(start: np.ndarray, waypoints: list[np.ndarray], step: float, rest: int = 3) -> np.ndarray:
    """A translating tool's demonstration: straight from ``start`` through each waypoint in turn at
    full speed (the last step of a leg slower, to land on it), then ``rest`` steps at rest.
    ``step``: the distance of one env step at action 1 [domain units]. Actions (K, 3)."""
    actions, here = [], np.asarray(start, dtype=np.float64)
    for point in waypoints:
        leg = np.asarray(point, dtype=np.float64) - here
        moves = max(1, math.ceil(float(np.abs(leg).max()) / step - 1e-9))
        actions += [leg / (moves * step)] * moves
        here = np.asarray(point, dtype=np.float64)
    return np.array(actions + [np.zeros(3)] * rest)
