"""Pose lattices: keypoints normalised with bias beta (docs/method.md step 1, the default reading).

x_hat = (x + beta * b_w) / ((1 + 2 beta) * b_w), y_hat likewise with b_h, so every in-image point
lands strictly inside [0, 1] with a margin of beta / (1 + 2 beta).
"""

from __future__ import annotations

import numpy as np


def normalise(x: np.ndarray, y: np.ndarray, width: int, height: int, beta: float) -> tuple[np.ndarray, np.ndarray]:
    """Pixel coordinates -> lattice coordinates. NaN (missing) stays NaN."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    return (x + beta * width) / ((1 + 2 * beta) * width), (y + beta * height) / ((1 + 2 * beta) * height)


def denormalise(
    x_norm: np.ndarray, y_norm: np.ndarray, width: int, height: int, beta: float
) -> tuple[np.ndarray, np.ndarray]:
    """Inverse of :func:`normalise`."""
    x_norm = np.asarray(x_norm, dtype=np.float64)
    y_norm = np.asarray(y_norm, dtype=np.float64)
    return x_norm * (1 + 2 * beta) * width - beta * width, y_norm * (1 + 2 * beta) * height - beta * height
