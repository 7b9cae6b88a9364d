"""Scenes generated on the fly: coloured discs, squares and triangles on textured ground.

A pixel's class is the shape it belongs to. Colours overlap between classes, so telling a
square from a disc takes the shape's context, not one pixel: the coarse features of the
decoder carry that, and the upsampler has to put the class boundaries back in place.
"""

from __future__ import annotations

import numpy as np

CLASSES = ("background", "disc", "square", "triangle")
# Mean RGB of each object class; every object draws its own colour around it.
CLASS_COLOURS = np.array([[0.85, 0.35, 0.30], [0.30, 0.70, 0.40], [0.35, 0.45, 0.85]])
COLOUR_JITTER = 0.12
PIXEL_NOISE = 0.06


def _inside(kind: int, dy: np.ndarray, dx: np.ndarray, radius: float, angle: float) -> np.ndarray:
    """Pixels of a shape centred at (0, 0) with the given size and rotation."""
    u = np.cos(angle) * dx + np.sin(angle) * dy
    v = -np.sin(angle) * dx + np.cos(angle) * dy
    if kind == 1:  # disc
        return u * u + v * v <= radius * radius
    if kind == 2:  # square
        half = 0.8 * radius
        return (np.abs(u) <= half) & (np.abs(v) <= half)
    # equilateral triangle: inside three half-planes
    inside = np.ones_like(u, dtype=bool)
    for corner in range(3):
        theta = angle + 2 * np.pi * corner / 3
        inside &= np.cos(theta) * dx + np.sin(theta) * dy <= radius / 2
    return inside


def make_scene(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """One scene: image (3, size, size) float32 in [0, 1] and labels (size, size) int64."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    # ground: a smooth random gradient plus blotches, in the objects' colour range
    base = rng.uniform(0.3, 0.6, size=3)
    slope = rng.normal(0, 0.15, size=(3, 2))
    image = base[:, None, None] + (slope[:, :1, None] * yy + slope[:, 1:, None] * xx) / size
    blotches = rng.normal(0, 0.1, size=(3, size // 8, size // 8))
    image += np.kron(blotches, np.ones((8, 8)))[:, :size, :size]
    labels = np.zeros((size, size), dtype=np.int64)
    for _ in range(rng.integers(3, 7)):
        kind = int(rng.integers(1, len(CLASSES)))
        radius = rng.uniform(0.08, 0.2) * size
        centre = rng.uniform(0.1 * size, 0.9 * size, size=2)
        mask = _inside(kind, yy - centre[0], xx - centre[1], radius, rng.uniform(0, 2 * np.pi))
        colour = CLASS_COLOURS[kind - 1] + rng.normal(0, COLOUR_JITTER, size=3)
        image[:, mask] = colour[:, None]
        labels[mask] = kind
    image += rng.normal(0, PIXEL_NOISE, size=image.shape)
    return np.clip(image, 0, 1).astype(np.float32), labels


def make_scenes(count: int, size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``count`` scenes from one seed: images (count, 3, size, size), labels (count, size, size)."""
    rng = np.random.default_rng(seed)
    pairs = [make_scene(rng, size) for _ in range(count)]
    return np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])
