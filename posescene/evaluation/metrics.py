"""Evaluation metrics (docs/method.md "What better means"): pure functions on arrays, no model loading.

Scene drift across poses
    For one prompt and seed, one image is generated per pose of a pose set from the same initial
    noise. Drift is the distance between two such images measured *outside* the person regions only,
    so a model that moves the person (what we asked for) but keeps the background is not penalised.
    The person region of a pose is its keypoints' bounding box grown on every side by
    ``margin x max(box width, box height)`` (at least ``min_pad`` pixels); the scene mask of a pose set
    is the complement of the **union over all poses of the set** (not per pair): every pair of the set
    is then compared on the same pixels, so pair distances of one set are directly comparable and
    their mean does not depend on which pair happened to have small persons.

Pose fidelity (every measure compares the judge's keypoints with the *conditioning* keypoints)
    - ``oks``: COCO's object keypoint similarity, exp(-d^2 / (2 s^2 k_i^2)) averaged over the conditioning
      pose's present points, with s^2 the area of its keypoint box and k_i COCO's per-keypoint constants
      (mapped onto the 18-point topology). Continuous in [0, 1]: the headline fidelity.
    - ``keypoint_ap``: COCO keypoint AP from OKS (detections ranked by score, 101-point interpolated
      precision, averaged over OKS thresholds 0.50:0.05:0.95), the measure pose-guided generation papers
      report (e.g. HumanSD).
    - ``pck@<a>box``: fraction of present points within ``a x max(w, h)`` of the conditioning pose's box
      (:func:`pck`, per image; :func:`batch_pck` pools the points of a batch, the world's judge measure).
    - ``keypoint_error``: mean distance of present points divided by ``max(w, h)`` of that box.
    A judge's miss (point absent or below ``min_score``) counts as a miss (OKS 0 for the point, error 1).

Normalised fidelity (:func:`normalised`): (raw - chance) / (ceiling - chance), 0 = chance, 1 = the judge on real
images. :func:`measure_fidelity` / :func:`measure_chance` score a whole evaluation's judged images.

Images are ``(H, W, 3)`` arrays, uint8 in [0, 255] or float in [0, 1]; distances are computed on
float images in [0, 1], so an RMSE of 0.1 means a tenth of the full pixel range.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from skimage.metrics import structural_similarity

from posescene.errors import InputDataError

# --------------------------------------------------------------------------------------------------
# images and masks


def to_float(image: np.ndarray) -> np.ndarray:
    """An image as float64 in [0, 1] with a channel axis: uint8 is divided by 255, floats are kept."""
    arr = np.asarray(image)
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim != 3:
        raise ValueError(f"expected an (H, W) or (H, W, C) image, got shape {arr.shape}")
    if arr.dtype == np.uint8:
        return arr.astype(np.float64) / 255.0
    return arr.astype(np.float64)


def person_box(
    keypoints: np.ndarray, shape: tuple[int, int], margin: float, min_pad: float = 2.0
) -> tuple[int, int, int, int] | None:
    """Pixel box ``(x0, y0, x1, y1)`` (end-exclusive) of a pose's keypoints, grown by the margin.

    ``keypoints`` is ``(K, 2)`` in pixels with NaN for missing points. The box is grown by
    ``margin x max(w, h)`` on every side (and at least ``min_pad`` px) because keypoints sit on the
    skeleton, while the drawn body (head, limb width) extends beyond it. ``None`` without points.
    """
    kp = np.asarray(keypoints, dtype=np.float64).reshape(-1, 2)
    ok = np.isfinite(kp).all(axis=1)
    if not ok.any():
        return None
    pts = kp[ok]
    x0, y0 = pts.min(axis=0)
    x1, y1 = pts.max(axis=0)
    pad = max(margin * max(x1 - x0, y1 - y0), min_pad)
    h, w = shape
    box = (
        max(int(math.floor(x0 - pad)), 0),
        max(int(math.floor(y0 - pad)), 0),
        min(int(math.ceil(x1 + pad)) + 1, w),
        min(int(math.ceil(y1 + pad)) + 1, h),
    )
    return box if box[0] < box[2] and box[1] < box[3] else None


def person_mask(poses: Sequence[np.ndarray], shape: tuple[int, int], margin: float, min_pad: float = 2.0) -> np.ndarray:
    """Boolean ``(H, W)`` mask, True inside the union of the person regions of ``poses``."""
    mask = np.zeros(shape, dtype=bool)
    for kp in poses:
        box = person_box(kp, shape, margin, min_pad)
        if box is not None:
            x0, y0, x1, y1 = box
            mask[y0:y1, x0:x1] = True
    return mask


def _scene_pixels(scene: np.ndarray, image: np.ndarray) -> np.ndarray:
    scene = np.asarray(scene, dtype=bool)
    if scene.shape != image.shape[:2]:
        raise ValueError(f"scene mask {scene.shape} does not match image {image.shape[:2]}")
    return scene


def masked_rmse(a: np.ndarray, b: np.ndarray, scene: np.ndarray) -> float:
    """Root mean squared pixel difference over the scene (True) pixels and all channels; NaN if empty."""
    fa, fb = to_float(a), to_float(b)
    scene = _scene_pixels(scene, fa)
    if not scene.any():
        return float("nan")
    diff = (fa - fb)[scene]
    return float(np.sqrt(np.mean(diff**2)))


def masked_one_minus_ssim(a: np.ndarray, b: np.ndarray, scene: np.ndarray) -> float:
    """1 - SSIM, the local SSIM map (skimage, ``full=True``) averaged over scene pixels and channels.

    The map is computed on the whole image (7x7 windows), then averaged over the mask only, so windows
    at the mask border see some person pixels; that blur is one window wide and the same for every
    model compared.
    """
    fa, fb = to_float(a), to_float(b)
    scene = _scene_pixels(scene, fa)
    if not scene.any():
        return float("nan")
    win = min(7, *fa.shape[:2])
    win = win if win % 2 else win - 1
    _, ssim_map = structural_similarity(fa, fb, channel_axis=-1, data_range=1.0, full=True, win_size=win)
    return float(1.0 - np.mean(ssim_map[scene]))


def composite_outside(a: np.ndarray, b: np.ndarray, scene: np.ndarray, fill: float = 0.5) -> tuple[np.ndarray, ...]:
    """Both images with the person region replaced by the same grey, for metrics that take no mask (LPIPS)."""
    fa, fb = to_float(a).copy(), to_float(b).copy()
    inside = ~_scene_pixels(scene, fa)
    fa[inside] = fill
    fb[inside] = fill
    return fa, fb


@dataclass(frozen=True)
class PairDrift:
    """Distances between images ``i`` and ``j`` of one pose set (same prompt, seed and noise)."""

    i: int
    j: int
    rmse: float
    one_minus_ssim: float
    perceptual: float | None = None


def pairwise_drift(
    images: Sequence[np.ndarray],
    scene: np.ndarray,
    perceptual: Callable[[np.ndarray, np.ndarray], float] | None = None,
) -> list[PairDrift]:
    """Distances outside the person regions for every unordered pair of a pose set's images."""
    out = []
    for i in range(len(images)):
        for j in range(i + 1, len(images)):
            a, b = images[i], images[j]
            p = None
            if perceptual is not None:
                ca, cb = composite_outside(a, b, scene)
                p = float(perceptual(ca, cb))
            out.append(PairDrift(i, j, masked_rmse(a, b, scene), masked_one_minus_ssim(a, b, scene), p))
    return out


# --------------------------------------------------------------------------------------------------
# pose fidelity


def pck_threshold(target: np.ndarray, alpha: float) -> float:
    """``alpha x max(w, h)`` of the bounding box of the target's present keypoints (NaN if < 2 points)."""
    kp = np.asarray(target, dtype=np.float64).reshape(-1, 2)
    ok = np.isfinite(kp).all(axis=1)
    if ok.sum() < 2:
        return float("nan")
    span = kp[ok].max(axis=0) - kp[ok].min(axis=0)
    size = float(span.max())
    return alpha * size if size > 0 else float("nan")


def pck(
    predicted: np.ndarray,
    scores: np.ndarray | None,
    target: np.ndarray,
    alpha: float = 0.1,
    min_score: float = 0.0,
) -> float:
    """Fraction of the target's present keypoints predicted within the PCK threshold (NaN if unscorable).

    ``predicted``/``target`` are ``(K, 2)`` pixels (NaN = missing); a prediction with a score below
    ``min_score`` counts as missing, i.e. as a miss.
    """
    pred = np.asarray(predicted, dtype=np.float64).reshape(-1, 2)
    tgt = np.asarray(target, dtype=np.float64).reshape(-1, 2)
    thr = pck_threshold(tgt, alpha)
    if not np.isfinite(thr):
        return float("nan")
    present = np.isfinite(tgt).all(axis=1)
    found = np.isfinite(pred).all(axis=1)
    if scores is not None:
        found &= np.asarray(scores, dtype=np.float64).reshape(-1) >= min_score
    dist = np.linalg.norm(np.where(found[:, None], pred, 0.0) - np.where(present[:, None], tgt, 0.0), axis=1)
    hits = present & found & (dist <= thr)
    return float(hits.sum() / present.sum())


def batch_pck(
    pred: np.ndarray, target: np.ndarray, threshold: float, reference: str = "image", image_side: float = 64.0
) -> float:
    """PCK pooled over a batch of poses: the fraction of all visible target points, (N, K, 2), predicted within
    ``threshold`` x a reference length (no scores: every predicted point counts; the world's judge measures).

    ``reference="image"``: the image side; ``"bbox"``: the larger side of the target person's keypoint box
    (stricter for small people). Missing target points (NaN) are ignored.
    """
    pred = np.asarray(pred, dtype=np.float64)
    target = np.asarray(target, dtype=np.float64)
    visible = ~np.isnan(target).any(-1)
    if reference == "bbox":
        lo = np.nanmin(np.where(visible[..., None], target, np.nan), axis=1)
        hi = np.nanmax(np.where(visible[..., None], target, np.nan), axis=1)
        ref = np.maximum((hi - lo).max(-1), 1.0)[:, None]
    elif reference == "image":
        ref = np.full(visible.shape, image_side)[:, :1]
    else:
        raise InputDataError(f"PCK reference must be 'image' or 'bbox', got {reference!r}")
    dist = np.linalg.norm(np.nan_to_num(pred - target), axis=-1)
    hits = (dist <= threshold * ref) & visible
    return float(hits.sum() / max(visible.sum(), 1))


def nanmean(values: Sequence[float]) -> float:
    """Mean ignoring NaN (NaN when nothing is left), without numpy's empty-slice warning."""
    v = np.asarray([x for x in values if x is not None], dtype=np.float64)
    v = v[np.isfinite(v)]
    return float(v.mean()) if v.size else float("nan")


# --------------------------------------------------------------------------------------------------
# keypoint similarity (COCO OKS / AP)

# COCO's per-keypoint constants (sigmas) on the 18-point order of posescene.topology; the neck has no
# COCO keypoint and takes the shoulders' constant.
OKS_SIGMAS = np.array(
    [0.026, 0.079, 0.079, 0.072, 0.062, 0.079, 0.072, 0.062, 0.107, 0.087, 0.089, 0.107, 0.087, 0.089,
     0.025, 0.025, 0.035, 0.035]
)  # fmt: skip
# the 13 body points (neck, shoulders, arms, hips, legs): the face's 5 points have COCO constants so small that
# at 64 px their s·k is ~1 px, so their OKS is mostly the judge's noise; ``oks_body`` leaves them out
BODY_POINTS = np.arange(1, 14)
OKS_THRESHOLDS = np.round(np.arange(0.5, 0.951, 0.05), 2)
PCK_ALPHAS = (0.05, 0.1, 0.2)
# every per-image measure of :func:`fidelity_scores`, in the evaluation's column order
MEASURES = ("oks_body", "oks", "keypoint_error", *(f"pck@{alpha:g}box" for alpha in PCK_ALPHAS))


def _found(
    predicted: np.ndarray | None, scores: np.ndarray | None, min_score: float, k: int
) -> tuple[np.ndarray, np.ndarray]:
    if predicted is None:
        return np.full((k, 2), np.nan), np.zeros(k, dtype=bool)
    pred = np.asarray(predicted, dtype=np.float64).reshape(-1, 2)
    found = np.isfinite(pred).all(axis=1)
    if scores is not None:
        found &= np.asarray(scores, dtype=np.float64).reshape(-1) >= min_score
    return pred, found


def oks(
    predicted: np.ndarray | None,
    scores: np.ndarray | None,
    target: np.ndarray,
    min_score: float = 0.0,
    points: np.ndarray | None = None,
) -> float:
    """COCO object keypoint similarity of a prediction against the target pose (NaN if unscorable).

    The scale s^2 is the area of the target's keypoint box (COCO uses the segment area, which a pose has
    not); a missing or unconfident predicted point contributes 0. ``points``: average over these indices only
    (e.g. :data:`BODY_POINTS`); the box is always the whole pose's.
    """
    tgt = np.asarray(target, dtype=np.float64).reshape(-1, 2)
    present = np.isfinite(tgt).all(axis=1)
    counted = present.copy()
    if points is not None:
        counted[:] = False
        counted[points] = present[points]
        if not counted.any():
            return float("nan")
    if present.sum() < 2:
        return float("nan")
    span = tgt[present].max(axis=0) - tgt[present].min(axis=0)
    area = float(max(span[0], 1.0) * max(span[1], 1.0))
    pred, found = _found(predicted, scores, min_score, len(tgt))
    d2 = np.where(found & present, ((np.nan_to_num(pred) - np.nan_to_num(tgt)) ** 2).sum(axis=1), np.inf)
    k2 = (2 * OKS_SIGMAS[: len(tgt)]) ** 2
    sim = np.exp(-d2 / (2.0 * area * k2))
    return float(sim[counted].mean())


def keypoint_error(
    predicted: np.ndarray | None, scores: np.ndarray | None, target: np.ndarray, min_score: float = 0.0
) -> float:
    """Mean distance of the target's present points, in units of the target box's larger side; a miss is 1."""
    tgt = np.asarray(target, dtype=np.float64).reshape(-1, 2)
    present = np.isfinite(tgt).all(axis=1)
    size = pck_threshold(tgt, 1.0)
    if not np.isfinite(size):
        return float("nan")
    pred, found = _found(predicted, scores, min_score, len(tgt))
    dist = np.linalg.norm(np.nan_to_num(pred) - np.nan_to_num(tgt), axis=1) / size
    err = np.where(found, np.minimum(dist, 1.0), 1.0)
    return float(err[present].mean())


def keypoint_ap(oks_values: Sequence[float], scores: Sequence[float], weights: Sequence[float] | None = None) -> float:
    """COCO keypoint AP of one detection per image (its OKS against the image's one target, and its score).

    Detections are ranked by score; at each OKS threshold a detection is a true positive when its OKS
    reaches it; precision is interpolated at 101 recall points; the result is averaged over thresholds.
    Images whose target could not be scored are left out; an image without a detection has OKS 0.
    ``weights``: multiplicities (a bootstrap replicate), as if image i appeared ``weights[i]`` times.
    """
    o = np.asarray(oks_values, dtype=np.float64)
    sc = np.asarray(scores, dtype=np.float64)
    w = np.ones_like(o) if weights is None else np.asarray(weights, dtype=np.float64)
    keep = np.isfinite(o) & (w > 0)
    o, sc, w = o[keep], np.nan_to_num(sc[keep], nan=0.0), w[keep]
    if o.size == 0:
        return float("nan")
    order = np.argsort(-sc, kind="stable")
    o, w = o[order], w[order]
    total = w.sum()
    recall_points = np.linspace(0.0, 1.0, 101)
    aps = []
    for thr in OKS_THRESHOLDS:
        hit = o >= thr
        tp = np.cumsum(w * hit)
        fp = np.cumsum(w * ~hit)
        recall = tp / total
        precision = tp / np.maximum(tp + fp, 1e-12)
        precision = np.maximum.accumulate(precision[::-1])[::-1]  # COCO's monotone envelope
        idx = np.searchsorted(recall, recall_points, side="left")
        aps.append(float(np.where(idx < len(precision), precision[np.minimum(idx, len(precision) - 1)], 0.0).mean()))
    return float(np.mean(aps))


def fidelity_scores(
    predicted: np.ndarray | None, scores: np.ndarray | None, target: np.ndarray, min_score: float
) -> dict[str, float]:
    """Every per-image fidelity measure of one prediction against one target (see the module docstring)."""
    out = {
        "oks_body": oks(predicted, scores, target, min_score, BODY_POINTS),
        "oks": oks(predicted, scores, target, min_score),
        "keypoint_error": keypoint_error(predicted, scores, target, min_score),
    }
    for alpha in PCK_ALPHAS:
        out[f"pck@{alpha:g}box"] = pck(predicted, scores, target, alpha, min_score) if predicted is not None else 0.0
    return out


def best_person(
    persons: Sequence[tuple[np.ndarray, np.ndarray | None]], target: np.ndarray, min_score: float
) -> tuple[np.ndarray | None, np.ndarray | None]:
    """The detected person with the highest OKS against the target (``(None, None)`` if nobody was found).

    A generated image may contain extra people; fidelity asks whether *the* conditioned person is there.
    """
    best: tuple[np.ndarray | None, np.ndarray | None] = (None, None)
    best_value = -1.0
    for kp, sc in persons:
        value = oks(kp, sc, target, min_score)
        if np.isfinite(value) and value > best_value:
            best, best_value = (kp, sc), value
    return best


def detection_score(scores: np.ndarray | None, keypoints: np.ndarray | None) -> float:
    """A detection's confidence for AP ranking: the mean keypoint score (1 when the judge gives none)."""
    if keypoints is None:
        return 0.0
    if scores is None:
        return 1.0
    return float(np.nanmean(np.asarray(scores, dtype=np.float64)))


def normalised(raw: np.ndarray, chance: np.ndarray, ceiling: np.ndarray) -> np.ndarray:
    """(raw - chance) / (ceiling - chance) per replicate: 0 = chance, 1 = the judge on real images."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return (raw - chance) / (ceiling - chance)


# --------------------------------------------------------------------------------------------------
# an evaluation's images: persons the pose judge found, (S, P) object arrays of [(keypoints, scores), ...]


def measure_fidelity(
    persons: np.ndarray, targets: Sequence[np.ndarray], min_score: float
) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """Per image (S, P): every measure against its own pose, plus (OKS, detection score) for AP."""
    n_sets, n_poses = persons.shape
    values = {m: np.full((n_sets, n_poses), np.nan) for m in MEASURES}
    oks, score = np.full((n_sets, n_poses), np.nan), np.zeros((n_sets, n_poses))
    for s in range(n_sets):
        for p in range(n_poses):
            kp, sc = best_person(persons[s, p], targets[p], min_score)
            for m, v in fidelity_scores(kp, sc, targets[p], min_score).items():
                values[m][s, p] = v
            oks[s, p], score[s, p] = values["oks"][s, p], detection_score(sc, kp)
    return values, oks, score


def measure_chance(
    persons: np.ndarray, targets: Sequence[np.ndarray], min_score: float
) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """(S, P, P): each image scored against every *other* pose of its set (the diagonal is NaN)."""
    n_sets, n_poses = persons.shape
    values = {m: np.full((n_sets, n_poses, n_poses), np.nan) for m in MEASURES}
    oks, score = np.full((n_sets, n_poses, n_poses), np.nan), np.zeros((n_sets, n_poses, n_poses))
    for s in range(n_sets):
        for p in range(n_poses):
            for q in range(n_poses):
                if p == q:
                    continue
                kp, sc = best_person(persons[s, p], targets[q], min_score)
                for m, v in fidelity_scores(kp, sc, targets[q], min_score).items():
                    values[m][s, p, q] = v
                oks[s, p, q], score[s, p, q] = values["oks"][s, p, q], detection_score(sc, kp)
    return values, oks, score
