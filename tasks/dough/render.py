"""Drawing a dough state: a top view beside a front view."""

from __future__ import annotations

import itertools

import numpy as np

from diffenvs.render import Canvas
from diffenvs.sim.mpm import MPMModel


def render_dough(model: MPMModel, state: dict[str, np.ndarray], *, width: int, height: int) -> np.ndarray:
    """One world's ``state`` as an RGB image (height, width, 3): top view (x right, z up) beside a
    front view (x right, y up) of the middle of the unit domain, with target box, pit and tools."""
    panels = []
    x = state["particle_x"]
    shade = np.clip((x[:, 1] - model.floor_height) / 0.15, 0.0, 1.0)[:, None]
    colors = ((1 - shade) * np.array([150, 80, 40]) + shade * np.array([250, 190, 120])).astype(np.uint8)
    # The views frame the middle of the domain, where the dough and the tools work.
    for axes, view_centre in (((0, 2), np.array([0.5, 0.5])), ((0, 1), np.array([0.5, 0.25]))):
        canvas = Canvas(max(width // 2, 8), height, extent=0.3)
        centre, half = state["target_centre"], state["target_half"]
        canvas.rectangle(centre[list(axes)] - view_centre, half[list(axes)], color=(60, 170, 90), outline=0.004)
        if state["carve_size"][0] > 0:  # the pit: a vertical capsule
            base = state["carve_base"][list(axes)] - view_centre
            top = base + (np.array([0.0, state["carve_size"][1]]) if axes == (0, 1) else 0.0)
            canvas.segment(base, top, state["carve_size"][0], color=(200, 60, 60))
        order = np.argsort(x[:, 1] if axes == (0, 2) else -x[:, 2])
        canvas.points(x[order][:, list(axes)] - view_centre, colors[order], radius_px=2)
        for tool, pos, rot in zip(model.tools, state["tool_pos"], state["tool_rot"]):
            if tool.kind == "torus":  # the ring as segments of the tube's radius
                angles = np.linspace(0.0, 2 * np.pi, 25)
                ring = [pos + rotate(rot, tool.size[0] * np.array([np.cos(a), 0.0, np.sin(a)])) for a in angles]
                for a, b in itertools.pairwise(ring):
                    canvas.segment(a[list(axes)] - view_centre, b[list(axes)] - view_centre, tool.size[1], color=(90, 100, 120))
                continue
            axis = rotate(rot, np.array([1.0, 0.0, 0.0])) * (tool.size[1] if tool.kind == "capsule" else 0.0)
            a, b = (pos - axis)[list(axes)] - view_centre, (pos + axis)[list(axes)] - view_centre
            canvas.segment(a, b, tool.size[0], color=(90, 100, 120))
        panels.append(canvas.image)
    return np.concatenate(panels, axis=1)


def rotate(q: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Rotate ``v`` by the unit quaternion ``q`` = (x, y, z, w)."""
    u, s = q[:3], q[3]
    return 2.0 * (u @ v) * u + (s * s - u @ u) * v + 2.0 * s * np.cross(u, v)
