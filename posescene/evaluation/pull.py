"""The pose's pull on the scene (issue 23): does a pose adapter move the scene away from what the text says?

A primary adapter trained where poses go with scenes (crouching in snow, sitting indoors) can learn to
predict the scene from the pose. Three readings show it, each with its chance level and its reference:

- **text-scene agreement on atypical pairs**: the caption names a scene the pose is *not* typical of; the
  share of images the scene judge puts in the caption's kind (base model: the ceiling; 1/kinds: chance),
  and the judge's mean probability of the caption's kind;
- **the pose decides the kind**: with a caption that names no scene, the share of images judged as a kind
  typical of the pose (chance: the share of kinds typical of it, what a pose-blind model gets);
- **pose-induced drift**: the same caption and noise with another pose, RMSE outside both people's boxes,
  in units of a new noise (the base model with another seed, on the same pixels).

Intervals resample *scenes* (the poses of one scene share its background, caption and person), like every
interval of the world's metrics. Pure numpy: the images come from whoever draws them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from posescene.data.synth import POSES, SCENE_KINDS, kinds_typical_of

POSE_NAMES = frozenset(POSES)

# pixels added around each person's keypoint box before "outside the people" starts (at 64 px: a limb's width)
BOX_MARGIN_FRACTION = 0.06


def atypical_cells(kinds: Sequence[str | None], actions: Sequence[str | None]) -> np.ndarray | None:
    """(S, P) bool: set ``s`` (its caption names ``kinds[s]``) with pose ``p`` (``actions[p]``) is an
    atypical pair, the pose typical of no scene of that kind. None when a kind or an action is unknown (real
    photos carry neither, so no pair can be called atypical)."""
    if any(k not in SCENE_KINDS for k in kinds) or any(a not in POSE_NAMES for a in actions):
        return None
    return np.array([[k not in kinds_typical_of(a) for a in actions] for k in kinds])


def pose_typical_cells(judged: np.ndarray, actions: Sequence[str]) -> np.ndarray:
    """(S, P) bool: the judged kind of set ``s``'s image of pose ``p`` is one the pose is typical of (the pose
    pulled the scene its way when the caption names another); ``judged`` (S, P) kind names."""
    typical = [kinds_typical_of(a) for a in actions]
    return np.array([[k in typical[p] for p, k in enumerate(row)] for row in judged])


def caption_kind_probability(probs: np.ndarray, kinds: np.ndarray) -> np.ndarray:
    """Per image, the judge's probability of the caption's kind: ``probs`` (N, K), ``kinds`` (N,) indices."""
    return probs[np.arange(len(kinds)), kinds]


def typical_of_pose(judged: np.ndarray, actions: Sequence[str]) -> np.ndarray:
    """Per image, whether the judged kind (indices into ``SCENE_KINDS``) is typical of the image's action."""
    return np.array([SCENE_KINDS[j] in kinds_typical_of(a) for j, a in zip(judged, actions, strict=True)])


def typical_chance(actions: Sequence[str]) -> float:
    """What a model that ignores the pose gets on :func:`typical_of_pose`: the mean share of typical kinds."""
    return float(np.mean([len(kinds_typical_of(a)) / len(SCENE_KINDS) for a in actions]))


def outside_people(keypoints_a: np.ndarray, keypoints_b: np.ndarray, side: int) -> np.ndarray:
    """(N, side, side) bool: pixels outside both people's keypoint boxes, each grown by ``BOX_MARGIN_FRACTION``."""
    yy, xx = np.mgrid[0:side, 0:side]
    out = np.ones((len(keypoints_a), side, side), dtype=bool)
    margin = BOX_MARGIN_FRACTION * side
    for kps in (keypoints_a, keypoints_b):
        for i, kp in enumerate(kps):
            pts = kp[~np.isnan(kp).any(-1)]
            if not len(pts):
                continue
            x0, y0 = pts.min(0) - margin
            x1, y1 = pts.max(0) + margin
            out[i] &= ~((xx >= x0) & (xx <= x1) & (yy >= y0) & (yy <= y1))
    return out


def masked_sq_error(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per image, the summed squared error over ``mask`` (uint8 images as [0, 1]) and the masked pixel count."""
    d = (a.astype(np.float64) - b.astype(np.float64)) / 255.0
    sq = (d**2).mean(-1)
    return (sq * mask).sum((1, 2)), mask.sum((1, 2)).astype(np.float64)


def scene_interval(
    statistic: Callable[[np.ndarray], float], scenes: np.ndarray, seed: int, n_boot: int = 2000
) -> list[float]:
    """95% percentile interval of ``statistic(rows)`` resampling scenes with replacement."""
    rng = np.random.default_rng(seed)
    groups = [np.flatnonzero(scenes == s) for s in np.unique(scenes)]
    values = [
        statistic(np.concatenate([groups[j] for j in rng.integers(0, len(groups), len(groups))])) for _ in range(n_boot)
    ]
    lo, hi = np.percentile(values, [2.5, 97.5])
    return [float(lo), float(hi)]


def mean_with_interval(values: np.ndarray, scenes: np.ndarray, seed: int) -> tuple[float, list[float]]:
    """The mean of per-image ``values`` and its scene-resampled 95% interval."""
    values = np.asarray(values, dtype=np.float64)
    return float(values.mean()), scene_interval(lambda r: float(values[r].mean()), scenes, seed)


def ratio_with_interval(num: np.ndarray, den: np.ndarray, scenes: np.ndarray, seed: int) -> tuple[float, list[float]]:
    """sum(num) / sum(den) and its scene-resampled interval (a ratio of means: one noisy image cannot dominate)."""
    num, den = np.asarray(num, np.float64), np.asarray(den, np.float64)
    return float(num.sum() / den.sum()), scene_interval(lambda r: float(num[r].sum() / den[r].sum()), scenes, seed)
