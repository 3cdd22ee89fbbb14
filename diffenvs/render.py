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
        self.extent = extent

    def _paint(self, signed_distance: np.ndarray, color: tuple[int, int, int], outline: float | None) -> None:
        if outline is None:
            alpha = np.clip(0.5 - signed_distance / self._pixel, 0.0, 1.0)
        else:
            alpha = np.clip(0.5 - (np.abs(signed_distance + outline / 2) - outline / 2) / self._pixel, 0.0, 1.0)
        alpha = alpha[..., None]
        self.image[:] = (self.image * (1.0 - alpha) + np.asarray(color) * alpha).astype(np.uint8)

    def to_pixels(self, xy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Pixel rows and columns of plane points ``xy`` (N, 2), clipped to the image."""
        height, width = self.image.shape[:2]
        extent = self.extent
        cols = np.clip(((xy[:, 0] + extent) / (2 * extent) * width).astype(int), 0, width - 1)
        rows = np.clip(((extent - xy[:, 1]) / (2 * extent) * height).astype(int), 0, height - 1)
        return rows, cols

    def points(self, xy: np.ndarray, colors: np.ndarray, *, radius_px: int = 1) -> None:
        """Splat points ``xy`` (N, 2) with RGB ``colors`` (N, 3); later points cover earlier ones."""
        rows, cols = self.to_pixels(xy)
        height, width = self.image.shape[:2]
        for dr in range(-radius_px + 1, radius_px):
            for dc in range(-radius_px + 1, radius_px):
                self.image[np.clip(rows + dr, 0, height - 1), np.clip(cols + dc, 0, width - 1)] = colors

    def segment(self, a: np.ndarray, b: np.ndarray, radius: float, *, color: tuple[int, int, int],
                outline: float | None = None) -> None:
        """Draw the set of points within ``radius`` of the segment ``a``-``b`` (a disk when a = b)."""
        ab = np.asarray(b, float) - np.asarray(a, float)
        px, py = self._x - a[0], self._y - a[1]
        t = np.clip((px * ab[0] + py * ab[1]) / max(float(ab @ ab), 1e-12), 0.0, 1.0)
        d = np.hypot(px - t * ab[0], py - t * ab[1]) - radius
        self._paint(d, color, outline)

    def rectangle(self, centre: np.ndarray, half_extents: np.ndarray, *, color: tuple[int, int, int],
                  outline: float | None = None) -> None:
        """Draw an axis-aligned rectangle."""
        self.rounded_box(np.array([centre[0], centre[1], 0.0]), (half_extents[0], half_extents[1]), 0.0,
                         color=color, outline=outline)

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
