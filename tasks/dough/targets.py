"""Dough scenes and targets: the starting blob, and scripted demonstrations that make targets.

A demonstration runs a task's own steps (hard tools, no contact loss) on the low-level rollout
helper :func:`diffenvs.task.rollout`, outside any tape, so every target is a state that the env's
actions can reach.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

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


def piece_volumes(half: np.ndarray, count: int, balls: tuple[bool, ...] = ()) -> np.ndarray:
    """Volumes of ``count`` pieces of dough: boxes of half extents ``half`` ((3,) for all, or (B, 3)),
    or balls of radius ``half[b][0]`` where ``balls[b]``."""
    halves = np.broadcast_to(np.asarray(half, dtype=np.float64), (count, 3))
    return np.array([4.0 / 3.0 * math.pi * h[0] ** 3 if b < len(balls) and balls[b] else float(np.prod(2 * h))
                     for b, h in enumerate(halves)])


def sample_blob(rng: np.random.Generator, particle_count: int, *, dx: float, floor: float,
                half: np.ndarray = BLOB_HALF, offsets: np.ndarray | None = None,
                balls: tuple[bool, ...] = ()) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The starting dough on the floor: a box of half extents ``half`` (default :data:`BLOB_HALF`), or
    one piece at each offset of ``offsets`` (B, 3) from the centre, each a box of half extents
    ``half`` ((3,) for every piece, or (B, 3)) resting on the floor (an offset's height lifts it, e.g.
    a table's top onto its legs), or a ball of radius ``half[b][0]`` where ``balls[b]``. The
    particles split in proportion to the pieces' volumes (the first pieces take the remainder), so
    the density is uniform. The centre lies within 0.03 of the domain's middle, at the first piece's
    half height; each piece is filled with a randomly shifted Halton sequence, at rest, F = I; the
    particles are sorted by grid cell (cell size ``dx``). Returns the centre and the particle fields."""
    offsets = np.zeros((1, 3)) if offsets is None else np.asarray(offsets, dtype=np.float64).reshape(-1, 3)
    halves = np.broadcast_to(np.asarray(half, dtype=np.float64), offsets.shape)
    centre = np.array([0.5 + rng.uniform(-0.03, 0.03), floor + halves[0][1], 0.5 + rng.uniform(-0.03, 0.03)])
    volumes = piece_volumes(halves, len(offsets), balls)
    counts = np.floor(particle_count * volumes / volumes.sum() + 1e-9).astype(int)
    counts[: particle_count - counts.sum()] += 1
    pieces = []
    for b, (offset, h, count) in enumerate(zip(offsets, halves, counts)):
        base = np.array([centre[0], floor + h[1], centre[2]]) + offset
        shift = rng.uniform(size=3)
        if b < len(balls) and balls[b]:  # the first points of the sequence that fall inside the ball
            points = halton(int(2.2 * count) + 16, shift=shift)
            points = points[np.einsum("ij,ij->i", points, points) <= 1.0][:count]
        else:
            points = halton(int(count), shift=shift)
        pieces.append(base + points * h)
    x = np.concatenate(pieces)
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


class Demonstrators(dict):
    """A task's demonstrators, one per power-of-two world count (built on first use and kept)."""

    def run(self, starts: list[tuple[dict[str, np.ndarray], np.ndarray, np.ndarray, np.ndarray]], world_count: int,
            make_task: Callable[[int], Task]) -> list[dict[str, np.ndarray]]:
        """:meth:`Demonstrator.run` for any number of ``starts``: in chunks of the smallest power of two
        that holds them (at most ``world_count``), on tasks built by ``make_task(worlds)``."""
        capacity = min(1 << max(len(starts) - 1, 0).bit_length(), max(world_count, 1))
        if capacity not in self:
            self[capacity] = Demonstrator(make_task(capacity))
        runs = []
        for first in range(0, len(starts), capacity):
            runs += self[capacity].run(starts[first : first + capacity])
        return runs


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
