"""Small numpy rasteriser for the planar tasks' ``rgb_array`` frames."""

from __future__ import annotations

import numpy as np


class Canvas:
    """An RGB image of the square ``[-extent, extent]^2`` [m] of the plane, y pointing up.

    Args:
        width: Image width [px].
        height: Image height [px].
        extent: Half size of the shown square [m].
        background: RGB colour of the table.
    """

    def __init__(self, width: int, height: int, *, extent: float, background: tuple[int, int, int] = (235, 230, 220)):
        if width < 8 or height < 8:
            raise ValueError(f"render size must be at least 8x8 px, got {width}x{height}")
        self.image = np.empty((height, width, 3), dtype=np.uint8)
        self.image[:] = background
        xs = (np.arange(width) + 0.5) / width * 2.0 * extent - extent
        ys = extent - (np.arange(height) + 0.5) / height * 2.0 * extent
        self._x, self._y = np.meshgrid(xs, ys)
        self._pixel = 2.0 * extent / min(width, height)

    def _paint(self, signed_distance: np.ndarray, color: tuple[int, int, int], outline: float | None) -> None:
        if outline is None:
            alpha = np.clip(0.5 - signed_distance / self._pixel, 0.0, 1.0)
        else:
            alpha = np.clip(0.5 - (np.abs(signed_distance + outline / 2) - outline / 2) / self._pixel, 0.0, 1.0)
        alpha = alpha[..., None]
        self.image[:] = (self.image * (1.0 - alpha) + np.asarray(color) * alpha).astype(np.uint8)

    def disk(self, centre: np.ndarray, radius: float, *, color: tuple[int, int, int], outline: float | None = None) -> None:
        """Draw a filled (or outlined, ``outline`` wide [m]) disk."""
        d = np.hypot(self._x - centre[0], self._y - centre[1]) - radius
        self._paint(d, color, outline)

    def rounded_box(self, pose: np.ndarray, half_extents: tuple[float, float], corner_radius: float, *,
                    color: tuple[int, int, int], outline: float | None = None) -> None:
        """Draw a rounded rectangle at ``pose`` = (x, y, theta)."""
        c, s = np.cos(pose[2]), np.sin(pose[2])
        dx, dy = self._x - pose[0], self._y - pose[1]
        lx, ly = c * dx + s * dy, -s * dx + c * dy
        qx = np.abs(lx) - (half_extents[0] - corner_radius)
        qy = np.abs(ly) - (half_extents[1] - corner_radius)
        outside = np.hypot(np.maximum(qx, 0.0), np.maximum(qy, 0.0))
        d = outside + np.minimum(np.maximum(qx, qy), 0.0) - corner_radius
        self._paint(d, color, outline)
