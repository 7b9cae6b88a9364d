"""Segmentation scores: mean IoU over classes, and how well class boundaries are placed."""

from __future__ import annotations

import numpy as np


def confusion(predicted: np.ndarray, truth: np.ndarray, classes: int) -> np.ndarray:
    """(classes, classes) counts: row = true class, column = predicted class."""
    index = truth.reshape(-1) * classes + predicted.reshape(-1)
    return np.bincount(index, minlength=classes * classes).reshape(classes, classes)


def iou_per_class(matrix: np.ndarray) -> np.ndarray:
    """Intersection over union of every class (NaN for a class absent from both)."""
    hits = np.diag(matrix).astype(np.float64)
    union = matrix.sum(0) + matrix.sum(1) - hits
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, hits / union, np.nan)


def boundaries(labels: np.ndarray) -> np.ndarray:
    """Pixels whose right or lower neighbour has another class, (..., H, W) bool."""
    edge = np.zeros(labels.shape, dtype=bool)
    edge[..., :, :-1] |= labels[..., :, 1:] != labels[..., :, :-1]
    edge[..., :-1, :] |= labels[..., 1:, :] != labels[..., :-1, :]
    return edge


def _dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    """Grow a (..., H, W) mask by ``radius`` pixels (a square neighbourhood)."""
    out = mask.copy()
    height, width = mask.shape[-2:]
    for dy in range(-radius, radius + 1):
        for dx in range(-radius, radius + 1):
            shifted = np.zeros_like(mask)
            shifted[..., max(0, dy) : height + min(0, dy), max(0, dx) : width + min(0, dx)] = mask[
                ..., max(0, -dy) : height + min(0, -dy), max(0, -dx) : width + min(0, -dx)
            ]
            out |= shifted
    return out


def boundary_f_score(predicted: np.ndarray, truth: np.ndarray, tolerance: int = 1) -> float:
    """F-score of predicted class boundaries against the true ones: a boundary pixel counts
    as matched when the other map has a boundary within ``tolerance`` pixels."""
    mine, theirs = boundaries(predicted), boundaries(truth)
    precision = (mine & _dilate(theirs, tolerance)).sum() / max(mine.sum(), 1)
    recall = (theirs & _dilate(mine, tolerance)).sum() / max(theirs.sum(), 1)
    return float(2 * precision * recall / max(precision + recall, 1e-12))


def near_boundary_accuracy(predicted: np.ndarray, truth: np.ndarray, width: int = 2) -> float:
    """Share of pixels within ``width`` pixels of a true boundary that are classed right."""
    band = _dilate(boundaries(truth), width)
    return float((predicted[band] == truth[band]).mean())


def scores(predicted: np.ndarray, truth: np.ndarray, classes: int) -> dict[str, float]:
    """mIoU, pixel accuracy, boundary F-score and near-boundary accuracy, all in [0, 1]."""
    matrix = confusion(predicted, truth, classes)
    return {
        "miou": float(np.nanmean(iou_per_class(matrix))),
        "pixel_accuracy": float(np.diag(matrix).sum() / matrix.sum()),
        "boundary_f": boundary_f_score(predicted, truth),
        "near_boundary_accuracy": near_boundary_accuracy(predicted, truth),
    }
