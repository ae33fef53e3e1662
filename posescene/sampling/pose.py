"""Conditioning poses: a :class:`Pose` (a lattice with its map side) and every way to read one: pixel keypoints,
a keypoints JSON file, rows of the poses stage's lattices, or a detector run over images."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from posescene.errors import InputDataError
from posescene.lattice import denormalise, normalise
from posescene.topology import N_KEYPOINTS


@dataclass(frozen=True)
class Pose:
    """One conditioning pose as a lattice: normalised points (NaN = missing) and its map side u.

    ``side`` is min(w, h) of the image the pose comes from: training draws a lattice's map at that side
    and min-pools it to the model resolution, and so does generation, so a point radius means the same.
    """

    x_norm: np.ndarray
    y_norm: np.ndarray
    side: int
    label: str = ""
    meta: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        x = np.asarray(self.x_norm, dtype=np.float64).reshape(-1)
        y = np.asarray(self.y_norm, dtype=np.float64).reshape(-1)
        if x.shape != (N_KEYPOINTS,) or y.shape != (N_KEYPOINTS,):
            raise InputDataError(f"pose {self.label!r}: expected {N_KEYPOINTS} points, got {x.size} / {y.size}")
        object.__setattr__(self, "x_norm", x)
        object.__setattr__(self, "y_norm", y)

    @property
    def n_points(self) -> int:
        return int((np.isfinite(self.x_norm) & np.isfinite(self.y_norm)).sum())

    def keypoints_at(self, resolution: int, beta: float) -> np.ndarray:
        """(18, 2) pixel positions where the pose should appear in a generated ``resolution``² image.

        The lattice un-normalised at (resolution, resolution): a training image is resized whole to the
        model resolution, so its keypoints move with it.
        """
        x, y = denormalise(self.x_norm, self.y_norm, resolution, resolution, beta)
        return np.stack([x, y], axis=1)


def pose_from_pixels(
    x: Sequence[float | None], y: Sequence[float | None], width: int, height: int, beta: float, label: str = ""
) -> Pose:
    """A pose from pixel keypoints (``None``/NaN = missing) of a ``width`` x ``height`` image."""
    xs = np.array([np.nan if v is None else v for v in x], dtype=np.float64)
    ys = np.array([np.nan if v is None else v for v in y], dtype=np.float64)
    missing = ~(np.isfinite(xs) & np.isfinite(ys))
    xs[missing] = np.nan
    ys[missing] = np.nan
    xn, yn = normalise(xs, ys, width, height, beta)
    return Pose(xn, yn, side=min(int(width), int(height)), label=label)


def poses_from_json(path: str | Path, beta: float) -> list[Pose]:
    """Poses from a keypoints JSON file.

    Accepted: ``{"width": W, "height": H, "keypoints": [[x, y] | null, ... 18]}``, a list of such
    objects, or ``{"poses": [...]}``; coordinates in pixels of a W x H image, 18-point order of
    :mod:`posescene.topology`.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise InputDataError(f"{path}: no such keypoints file") from None
    except json.JSONDecodeError as exc:
        raise InputDataError(f"{path}: not valid JSON ({exc})") from None
    items = data.get("poses", [data]) if isinstance(data, dict) else data
    if not isinstance(items, list) or not items:
        raise InputDataError(f"{path}: expected a pose object or a non-empty list of them")
    poses = []
    for k, item in enumerate(items):
        where = f"{path} pose {k}"
        if not isinstance(item, dict) or not {"width", "height", "keypoints"} <= set(item):
            raise InputDataError(f"{where}: needs 'width', 'height' and 'keypoints' (18 [x, y] or null)")
        kps = item["keypoints"]
        if not isinstance(kps, list) or len(kps) != N_KEYPOINTS:
            raise InputDataError(f"{where}: 'keypoints' must list {N_KEYPOINTS} points, got {len(kps)}")
        xs: list[float | None] = []
        ys: list[float | None] = []
        for p in kps:
            if p is None:
                xs.append(None)
                ys.append(None)
            elif isinstance(p, list | tuple) and len(p) >= 2:
                xs.append(None if p[0] is None else float(p[0]))
                ys.append(None if p[1] is None else float(p[1]))
            else:
                raise InputDataError(f"{where}: each keypoint is [x, y] or null, got {p!r}")
        poses.append(pose_from_pixels(xs, ys, int(item["width"]), int(item["height"]), beta, item.get("label", "")))
    return poses


def poses_from_lattice_rows(rows: Sequence[Mapping[str, Any]]) -> list[Pose]:
    """Poses from lattice rows (``data/lattices`` contract: x_norm, y_norm, width, height, image_id)."""
    poses = []
    for row in rows:
        if not row.get("has_person", True) or row.get("x_norm") is None:
            raise InputDataError(f"lattice row of {row.get('image_id')!r} has no person")
        x = [np.nan if v is None else v for v in row["x_norm"]]
        y = [np.nan if v is None else v for v in row["y_norm"]]
        side = min(int(row["width"]), int(row["height"]))
        label = str(row.get("image_id", ""))
        if int(row.get("person", 0) or 0):
            label += f"_{int(row['person'])}"
        meta = {k: row[k] for k in ("image_id", "person", "action") if k in row}
        poses.append(Pose(np.asarray(x), np.asarray(y), side, label, meta))
    return poses


def person_arrays(person: Any) -> tuple[np.ndarray, np.ndarray | None]:
    """A detector's person -> ((18, 2) pixels, (18,) scores or None).

    Accepts the shapes detectors return: a ``(keypoints, scores)`` tuple, an object with
    ``keypoints``/``scores`` (or ``xy``/``score``) attributes, or a dict with those keys.
    """
    if isinstance(person, Mapping):
        kp = person.get("keypoints", person.get("xy"))
        sc = person.get("scores", person.get("score"))
    elif isinstance(person, tuple | list) and len(person) == 2:
        kp, sc = person
    else:
        kp = getattr(person, "keypoints", getattr(person, "xy", None))
        sc = getattr(person, "scores", getattr(person, "score", None))
    if kp is None:
        raise InputDataError(f"cannot read keypoints from a detector result of type {type(person).__name__}")
    kp = np.asarray(kp, dtype=np.float64).reshape(-1, 2)
    return kp, None if sc is None else np.asarray(sc, dtype=np.float64).reshape(-1)


def poses_from_images(
    images: Sequence[np.ndarray], detector: Any, beta: float, min_score: float, labels: Sequence[str] | None = None
) -> list[Pose]:
    """Run a detector (``.detect(list of RGB uint8) -> per image list of persons``) and keep each image's
    most confident person as a pose (points below ``min_score`` missing)."""
    results = detector.detect([np.asarray(im, dtype=np.uint8) for im in images])
    poses = []
    for k, (image, persons) in enumerate(zip(images, results, strict=True)):
        label = labels[k] if labels else f"image{k}"
        if not persons:
            raise InputDataError(f"{label}: the pose detector found no person")
        arrays = [person_arrays(p) for p in persons]
        kp, sc = max(arrays, key=lambda a: -1.0 if a[1] is None else float(np.nanmean(a[1])))
        kp = kp.copy()
        if sc is not None:
            kp[sc < min_score] = np.nan
        h, w = np.asarray(image).shape[:2]
        poses.append(pose_from_pixels(kp[:, 0], kp[:, 1], w, h, beta, label))
    return poses
