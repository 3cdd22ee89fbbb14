"""Contact-point discovery: where each tool should touch the dough, from optimal transport to the target.

A remedy of the gradient methods for tasks whose tools must find the dough first or let go of one
piece and find the next (after CPDeform, Li et al., ICLR 2022). At the start of each stage:

1. an entropic optimal-transport plan between the dough's particles and the target's (uniform
   weights, squared distances) gives each particle a destination, its barycentric image;
2. the particles that have the farthest to go (the top fifth by distance, and at least half the
   largest distance: the transport's own noise stays out) are split into one cluster per tool
   (k-means), each with the mean direction its particles must move;
3. each tool is placed behind its cluster along that direction (backing off until clear of all the
   dough, ready to push; for a press, above it), tools matched to clusters by least total travel;
   when two tools must make the dough rise (a lift: the mean move rises by more than 0.15 of its
   length; transport reshuffles a lifted piece with what it lands on, so it shows less than the
   true rise), they are placed on either side of it instead, across the move's horizontal part (a
   grip: no push lifts dough);
4. the stage's first actions are a path there (straight, or over the dough when the straight line
   runs through it); gradient descent then optimizes the whole sequence from that start.

The transport is a log-domain Sinkhorn of our own (about 30 lines of NumPy, epsilon scaling) rather
than the POT package: one more dependency for one function, and the plan is only a placement
heuristic (the gradient refines it), so its exactness matters less than that it runs anywhere.
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import numpy as np

MAX_POINTS = 500
"""Particles subsampled (evenly by index) per side of the transport problem."""


def logsumexp(values: np.ndarray, axis: int, keepdims: bool = False) -> np.ndarray:
    """log(sum(exp(values))) along ``axis``, without overflow (NumPy only: the core install has no SciPy)."""
    top = np.max(values, axis=axis, keepdims=True)
    out = top + np.log(np.sum(np.exp(values - top), axis=axis, keepdims=True))
    return out if keepdims else np.squeeze(out, axis=axis)


def sinkhorn_images(source: np.ndarray, target: np.ndarray, *, epsilon: float = 4e-4, iters: int = 10) -> np.ndarray:
    """Barycentric images (N, 3) of ``source`` (N, 3) under the entropic optimal-transport plan to
    ``target`` (M, 3), uniform weights, squared-distance cost; ``epsilon`` is reached by halving
    from the largest cost (epsilon scaling), ``iters`` iterations per scale, in the log domain."""
    source, target = np.asarray(source, dtype=np.float64), np.asarray(target, dtype=np.float64)
    cost = ((source[:, None, :] - target[None, :, :]) ** 2).sum(axis=2)
    log_a, log_b = -math.log(len(source)), -math.log(len(target))
    f, g = np.zeros(len(source)), np.zeros(len(target))
    eps = max(float(cost.max()), epsilon)
    while True:
        for _ in range(iters):
            f = -eps * logsumexp((g[None, :] - cost) / eps + log_b, axis=1)
            g = -eps * logsumexp((f[:, None] - cost) / eps + log_a, axis=0)
        if eps <= epsilon:
            break
        eps = max(eps / 2.0, epsilon)
    log_plan = (f[:, None] + g[None, :] - cost) / eps + log_b
    plan = np.exp(log_plan - logsumexp(log_plan, axis=1, keepdims=True))
    return plan @ target


def _kmeans(points: np.ndarray, k: int, iters: int = 20) -> np.ndarray:
    """Labels of a k-means clustering, started from farthest-point seeds (deterministic)."""
    centres = [points[0]]
    for _ in range(1, k):
        distance = np.min([((points - c) ** 2).sum(axis=1) for c in centres], axis=0)
        centres.append(points[int(np.argmax(distance))])
    centres = np.array(centres)
    for _ in range(iters):
        labels = np.argmin(((points[:, None] - centres[None]) ** 2).sum(axis=2), axis=1)
        centres = np.array([points[labels == j].mean(axis=0) if np.any(labels == j) else centres[j] for j in range(k)])
    return np.argmin(((points[:, None] - centres[None]) ** 2).sum(axis=2), axis=1)


def _extent(shape: Any, rot: np.ndarray, direction: np.ndarray) -> float:
    """How far a tool reaches from its centre along ``direction`` (a unit vector)."""
    kind, size = shape.kind, shape.size
    if kind == "sphere":
        return size[0]
    x, y, z, w = rot
    axis_x = np.array([1 - 2 * (y * y + z * z), 2 * (x * y + z * w), 2 * (x * z - y * w)])  # local x in the world
    axis_y = np.array([2 * (x * y - z * w), 1 - 2 * (x * x + z * z), 2 * (y * z + x * w)])  # local y in the world
    if kind == "capsule":
        return size[0] + size[1] * abs(float(axis_x @ direction))
    if kind == "torus":
        return size[1] + size[0] * math.sqrt(max(0.0, 1.0 - float(axis_y @ direction) ** 2))
    return float(np.linalg.norm(size))


def placements(task: Any, state: dict[str, np.ndarray], *, margin: float = 0.005) -> np.ndarray:
    """Where each driven tool of ``task`` should start the stage from ``state`` (a single-world
    ``get_state()``): the steps 1-3 of the module docstring. Returns (T, 3) positions."""
    x, target = np.asarray(state["particle_x"], dtype=np.float64), np.asarray(state["target_x"], dtype=np.float64)
    stride = max(1, math.ceil(len(x) / MAX_POINTS))
    sample = np.arange(0, len(x), stride)
    moves = sinkhorn_images(x[sample], target[sample]) - x[sample]
    distance = np.linalg.norm(moves, axis=1)
    chosen = distance >= max(float(np.quantile(distance, 0.8)), 0.5 * float(distance.max()))
    far, far_moves = sample[chosen], moves[chosen]
    tools = task.driven_tools
    rots = np.asarray(state["tool_rot"], dtype=np.float64)
    overall = far_moves.mean(axis=0) / max(float(np.linalg.norm(far_moves.mean(axis=0))), 1e-12)
    if tools == 2 and overall[1] > 0.15:  # the dough must rise (no push lifts it): a grip, a tool on either side
        centre = x[far].mean(axis=0)
        across = np.array([-overall[2], 0.0, overall[0]])
        across = across / np.linalg.norm(across) if np.linalg.norm(across) > 1e-6 else np.array([1.0, 0.0, 0.0])
        width = float(np.max(np.abs((x[far] - centre) @ across)))
        spots = [(centre + side * across * width, -side * across) for side in (1.0, -1.0)]  # (surface point, push)
    else:
        labels = _kmeans(x[far], tools) if len(far) >= tools else np.zeros(len(far), dtype=int)
        spots = []
        for j in range(tools):
            points, shift = x[far][labels == j], far_moves[labels == j]
            if not len(points):
                points, shift = x[far], far_moves
            direction = shift.mean(axis=0)
            direction = direction / max(np.linalg.norm(direction), 1e-12)
            centre = points.mean(axis=0)
            behind = float(np.max((centre - points) @ direction, initial=0.0))  # the cluster's depth against the push
            spots.append((centre - direction * behind, direction))
    start = np.asarray(state["tool_pos"], dtype=np.float64)[:tools]
    best, best_cost, best_order = None, math.inf, ()
    for order in itertools.permutations(range(len(spots)), tools):
        places = np.array([spots[j][0] - spots[j][1] * (_extent(task.tool_shapes[t], rots[t], spots[j][1]) + margin)
                           for t, j in enumerate(order)])
        cost = float(np.linalg.norm(places - start, axis=1).sum())
        if cost < best_cost:
            best, best_cost, best_order = places, cost, order
    floor = task.model.floor_height
    lowest = np.array([_extent(task.tool_shapes[t], rots[t], np.array([0.0, -1.0, 0.0])) for t in range(tools)])
    best[:, 1] = np.maximum(best[:, 1], floor + lowest)  # never into the floor
    for t, j in enumerate(best_order):  # back off against the push until clear of all the dough, not just the cluster
        reach = _extent(task.tool_shapes[t], rots[t], -spots[j][1]) + margin
        for _ in range(60):
            if np.min(np.linalg.norm(x[::2] - best[t], axis=1)) >= reach:
                break
            best[t] -= 0.005 * spots[j][1]
            best[t, 1] = max(best[t, 1], floor + lowest[t])
    return best


def approach_actions(task: Any, state: dict[str, np.ndarray], places: np.ndarray, steps: int) -> np.ndarray:
    """Actions (steps, action_dim) that carry each driven tool from where ``state`` has it towards
    ``places``: straight, or up over the dough, across and down when the straight line passes within
    the tool's reach of a particle; the tools move together, the slowest setting the pace; cut off
    after half the ``steps`` (a path longer than that ends on the way), zeros after."""
    step = task.config.tool_speed * task.frame_dt
    x = np.asarray(state["particle_x"], dtype=np.float64)
    tools = task.driven_tools
    start = np.asarray(state["tool_pos"], dtype=np.float64)[:tools]
    rots = np.asarray(state["tool_rot"], dtype=np.float64)
    reach = np.array([_extent(task.tool_shapes[t], rots[t], np.array([0.0, -1.0, 0.0])) for t in range(tools)])
    if getattr(task, "rigid_pair", False):  # one rigid pair (Chopsticks): its midpoint to the places' midpoint
        start, places, reach, tools = start.mean(axis=0, keepdims=True), places.mean(axis=0, keepdims=True), reach.max(keepdims=True), 1
    paths = []
    for t in range(tools):
        line = start[t] + np.linspace(0.0, 1.0, 16)[:, None] * (places[t] - start[t])
        blocked = np.min(np.linalg.norm(line[:, None] - x[None, ::4], axis=2)) < reach[t]
        if blocked:
            high = max(float(x[:, 1].max()) + reach[t] + 0.02, start[t][1], places[t][1])
            paths.append([np.array([start[t][0], high, start[t][2]]), np.array([places[t][0], high, places[t][2]]), places[t]])
        else:
            paths.append([places[t]])
    legs = max(len(p) for p in paths)
    paths = [[p[0]] * (legs - len(p)) + p if len(p) < legs else p for p in paths]  # pad: the first leg repeats
    actions, here = [], start.copy()
    for leg in range(legs):
        goal = np.array([paths[t][leg] for t in range(tools)])
        delta = goal - here
        moves = max(1, math.ceil(float(np.abs(delta).max()) / step - 1e-9))
        actions += [(delta / (moves * step)).reshape(-1)] * moves
        here = goal
    out = np.zeros((steps, task.action_dim))
    used = min(steps // 2, len(actions))  # at most half the stage: the rest is left to the gradient
    out[:used, : 3 * tools] = np.clip(np.array(actions[:used]), -1.0, 1.0)
    return out


def check_task(task: Any, env_id: str) -> None:
    """Raise a ``ValueError`` unless ``task``'s first actions translate its tools (3 per driven tool,
    or 3 for a rigid pair's midpoint)."""
    if not (getattr(task, "translating", False) or getattr(task, "rigid_pair", False)):
        raise ValueError(f"solver.gradient.contact_discovery: {env_id}'s actions do not translate its tools "
                         "(contact discovery places translating tools, or a rigid pair: every dough task but RollingPin)")


__all__ = ["approach_actions", "check_task", "placements", "sinkhorn_images"]
