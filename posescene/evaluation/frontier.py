"""The drift-vs-fidelity frontier and its statistics: pure functions on measured arrays, no models.

The evaluation generates, for every *arm* (an adapter at one ``adapter_conditioning_scale``; scale 0 is the
base model), one image per (set, pose), where a set is one (prompt, initial noise). Everything here works on
what was measured from those images:

- ``drift[arm]``: (S, P, P) pairwise scene distances within each set (NaN on the diagonal);
- ``fidelity[arm]``: (S, P) the judge's score of each image against its conditioning pose;
- ``mismatched``: (S, P, P) the judge's score of the primary's image (s, p) against the *other* poses q of
  its set: the chance level (what a person in the wrong pose scores);
- ``real``: (P,) the judge's score of the real image each pose was taken from: the ceiling.

Uncertainty: a paired two-way cluster bootstrap. Each replicate draws multiplicities for the sets *and* for
the poses (both are samples: other prompts, other noises and other poses would give other numbers) and
recomputes every quantity from the same draw, so differences between arms are paired. ``scipy.stats.bootstrap``
resamples one axis of paired samples; two crossed random factors need the weights below.

Matched fidelity: the primary's arms trace a curve (fidelity, drift) as its scale goes from 0 to the top of
the grid; "turning the primary down" can reach any point on it. The secondary at scale 1 is compared with the
primary's curve at the same fidelity (``delta_drift`` < 0: less drift than the primary turned down to the same
fidelity), and at the same drift (``delta_fidelity`` > 0: more fidelity than the primary turned down to the
same drift). Interpolation is linear between neighbouring scales; the first crossing in scale order is used
(the lowest scale that reaches the target, i.e. the primary's best drift for it).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.stats import norm

from posescene.evaluation.metrics import keypoint_ap, normalised

CONFIDENCE = 0.95
POWER = 0.8


@dataclass(frozen=True)
class Interval:
    """A point estimate with a percentile-bootstrap confidence interval (and the bootstrap SE)."""

    value: float
    low: float
    high: float
    se: float

    def as_dict(self, prefix: str) -> dict[str, float]:
        return {prefix: self.value, f"{prefix}_low": self.low, f"{prefix}_high": self.high}


@dataclass(frozen=True)
class Weights:
    """Bootstrap multiplicities: row 0 is all ones (the point estimate), rows 1.. are replicates."""

    sets: np.ndarray  # (B + 1, S)
    poses: np.ndarray  # (B + 1, P)


def bootstrap_weights(
    n_sets: int, n_poses: int, n_boot: int, seed: int, prompts: Sequence[int] | None = None
) -> Weights:
    """Multinomial multiplicities for sets and poses, deterministic for ``seed``.

    ``prompts``: the prompt of each set. Sets of one prompt (its seeds) are not independent (two seeds of a
    prompt correlate ~0.8-0.9 in drift), so the sets are resampled in two stages: prompts, then the seeds of each
    drawn prompt (a set's weight is its prompt's multiplicity times its own within the prompt). Without
    ``prompts`` every set is its own prompt.
    """
    rng = np.random.default_rng([seed, 7])
    groups = np.arange(n_sets) if prompts is None else np.unique(np.asarray(prompts), return_inverse=True)[1]
    n_groups = int(groups.max()) + 1
    members = [np.flatnonzero(groups == g) for g in range(n_groups)]
    outer = rng.multinomial(n_groups, np.full(n_groups, 1.0 / n_groups), size=n_boot).astype(np.float64)
    sets = np.zeros((n_boot, n_sets))
    for g, idx in enumerate(members):
        if len(idx) == 1:
            sets[:, idx[0]] = outer[:, g]
        else:
            inner = rng.multinomial(len(idx), np.full(len(idx), 1.0 / len(idx)), size=n_boot)
            sets[:, idx] = outer[:, g, None] * inner
    poses = rng.multinomial(n_poses, np.full(n_poses, 1.0 / n_poses), size=n_boot).astype(np.float64)
    return Weights(np.vstack([np.ones(n_sets), sets]), np.vstack([np.ones(n_poses), poses]))


def set_mean(values: np.ndarray, w: Weights) -> np.ndarray:
    """(B + 1,) weighted mean of an (S,) array over sets (NaN skipped)."""
    v = np.where(np.isfinite(values), values, 0.0)
    ok = np.isfinite(values).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (w.sets @ v) / (w.sets @ ok)


def pair_mean(values: np.ndarray, w: Weights) -> np.ndarray:
    """(B + 1,) weighted mean of an (S, P, P) array over sets and ordered pose pairs p != q.

    Two copies of the same pose in a replicate are not a pair (their distance is the diagonal, undefined).
    """
    v = np.where(np.isfinite(values), values, 0.0)
    ok = np.isfinite(values).astype(np.float64)
    num = np.einsum("bs,bp,bq,spq->b", w.sets, w.poses, w.poses, v)
    den = np.einsum("bs,bp,bq,spq->b", w.sets, w.poses, w.poses, ok)
    with np.errstate(invalid="ignore", divide="ignore"):
        return num / den


def cell_mean(values: np.ndarray, w: Weights) -> np.ndarray:
    """(B + 1,) weighted mean of an (S, P) array over sets and poses (NaN cells skipped)."""
    v = np.where(np.isfinite(values), values, 0.0)
    ok = np.isfinite(values).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.einsum("bs,bp,sp->b", w.sets, w.poses, v) / np.einsum("bs,bp,sp->b", w.sets, w.poses, ok)


def pose_mean(values: np.ndarray, w: Weights) -> np.ndarray:
    """(B + 1,) weighted mean of a (P,) array over poses."""
    v = np.where(np.isfinite(values), values, 0.0)
    ok = np.isfinite(values).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (w.poses @ v) / (w.poses @ ok)


def ap_replicates(oks: np.ndarray, scores: np.ndarray, w: Weights) -> np.ndarray:
    """(B + 1,) keypoint AP per replicate of per-image OKS / detection scores shaped (S, P) or (S, P, P).

    AP ranks detections across images, so it is recomputed on every replicate's multiplicities rather than
    averaged per cell. In the (S, P, P) chance array the diagonal (an image against its own pose) is NaN.
    """
    if oks.ndim == 2:
        mult = np.einsum("bs,bp->bsp", w.sets, w.poses).reshape(len(w.sets), -1)
    else:
        mult = np.einsum("bs,bp,bq->bspq", w.sets, w.poses, w.poses).reshape(len(w.sets), -1)
    o, sc = oks.reshape(-1), scores.reshape(-1)
    return np.array([keypoint_ap(o, sc, m) for m in mult])


def interval(replicates: np.ndarray, confidence: float = CONFIDENCE) -> Interval:
    """Point estimate (row 0) and percentile CI of the finite replicates (NaN if fewer than 90% are finite)."""
    point, reps = float(replicates[0]), replicates[1:]
    finite = reps[np.isfinite(reps)]
    if not np.isfinite(point) or finite.size < 0.9 * reps.size or finite.size < 2:
        return Interval(point, float("nan"), float("nan"), float("nan"))
    tail = (1.0 - confidence) / 2.0 * 100.0
    low, high = np.percentile(finite, [tail, 100.0 - tail])
    return Interval(point, float(low), float(high), float(finite.std(ddof=1)))


def value_at(
    curve_x: np.ndarray,
    curve_y: np.ndarray,
    target: np.ndarray,
    knobs: Sequence[float] | None = None,
    *,
    clamp: bool = True,
) -> np.ndarray:
    """Per replicate: y of the curve (points in knob order, (K, B + 1)) at x = target (B + 1,).

    Monotone cubic interpolation (PCHIP) of x and y *along the knob* (``knobs``, strictly increasing; default
    0..K-1): each keeps the shape of its points between them (no overshoot, the concave start of a scale curve
    is not cut by a chord), and the curve is the path (x(k), y(k)). The first crossing in knob order is used
    (the smallest knob that reaches the target, i.e. the alternative's best drift for it). A target beyond the
    curve's range takes the y of its nearest end when ``clamp`` (the curve never reaches that x, and an arm beyond
    the most faithful point with less drift than it dominates it), else NaN.
    """
    from scipy.interpolate import PchipInterpolator

    k = len(curve_x)
    t = np.arange(k, dtype=np.float64) if knobs is None else np.asarray(knobs, dtype=np.float64)
    out = np.full(target.shape, np.nan)
    ok = np.isfinite(curve_x).all(axis=0) & np.isfinite(curve_y).all(axis=0) & np.isfinite(target)
    if k < 2 or not ok.any():
        return out
    dense = np.concatenate([np.linspace(t[i], t[i + 1], 33)[:-1] for i in range(k - 1)] + [t[-1:]])
    if k == 2:
        xs = np.interp(dense, t, np.arange(2))[:, None] * (curve_x[1] - curve_x[0])[None, ok] + curve_x[0][None, ok]
        ys = np.interp(dense, t, np.arange(2))[:, None] * (curve_y[1] - curve_y[0])[None, ok] + curve_y[0][None, ok]
    else:
        xs = PchipInterpolator(t, curve_x[:, ok], axis=0)(dense)
        ys = PchipInterpolator(t, curve_y[:, ok], axis=0)(dense)
    tgt = target[ok]
    side = xs - tgt[None, :]
    crosses = side[:-1] * side[1:] <= 0
    has = crosses.any(axis=0)
    first = np.argmax(crosses, axis=0)
    cols = np.arange(xs.shape[1])
    x0, x1 = xs[first, cols], xs[first + 1, cols]
    y0, y1 = ys[first, cols], ys[first + 1, cols]
    with np.errstate(invalid="ignore", divide="ignore"):
        frac = np.where(x1 == x0, 0.0, (tgt - x0) / (x1 - x0))
    found = y0 + frac * (y1 - y0)
    if clamp:
        high = tgt > xs.max(axis=0)
        end = np.where(high, np.argmax(xs, axis=0), np.argmin(xs, axis=0))
        found = np.where(has, found, ys[end, cols])
    else:
        found = np.where(has, found, np.nan)
    out[ok] = found
    return out


def envelope_at(
    curves: Mapping[str, tuple[np.ndarray, np.ndarray, Sequence[float]]],
    target: np.ndarray,
    fallback: str,
    *,
    lowest: bool = True,
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Per replicate, the lowest (``lowest``) or highest y of every curve that reaches x = target, and each curve's.

    ``curves``: name -> (x (K, B + 1), y (K, B + 1), knobs). The envelope of drift at matched fidelity is the
    lowest; of fidelity at matched drift, the highest. Where no curve reaches the target, ``fallback``'s curve
    clamped to its nearest end (as :func:`value_at`).
    """
    each = {name: value_at(x, y, target, knobs, clamp=False) for name, (x, y, knobs) in curves.items()}
    stack = np.stack(list(each.values()))
    reached = np.isfinite(stack).any(axis=0)
    filled = np.where(np.isfinite(stack), stack, np.inf if lowest else -np.inf)
    best = filled.min(axis=0) if lowest else filled.max(axis=0)
    x, y, knobs = curves[fallback]
    return np.where(reached, best, value_at(x, y, target, knobs)), each


def minimal_detectable(se: float, confidence: float = CONFIDENCE, power: float = POWER) -> float:
    """The smallest true difference a two-sided test at ``confidence`` detects with ``power``, given its SE."""
    return float((norm.ppf(1 - (1 - confidence) / 2) + norm.ppf(power)) * se)


@dataclass(frozen=True)
class ArmSummary:
    adapter: str  # the arm's family: base, primary, secondary, mask, steps, both, inpaint, placebo, champion, ...
    scale: float  # the family's knob (scale; mask margin; steps fraction; both: the secondary's weight)
    drift: Interval  # the headline drift (evaluate.promotion.metric)
    drift_ssim: Interval
    fidelity: Interval  # the headline fidelity measure, raw
    fidelity_norm: Interval  # normalised: 0 = chance, 1 = ceiling
    measures: dict[str, Interval]  # every fidelity measure, raw
    extra: dict[str, Interval] = field(default_factory=dict)  # drift / new noise, per-pair drift, to-base, rings


@dataclass(frozen=True)
class Comparison:
    """A candidate against a reference: the primary's scale curve, the training-free alternatives' lower
    envelope, or the champion."""

    name: str
    reference: str
    rel_fidelity: Interval  # (F - chance) / (F_ref - chance), the reference at scale 1 (the primary for envelopes)
    drift_ratio: Interval  # drift / drift_ref
    delta_drift: Interval | None  # drift - the reference curve(s) at the same fidelity (None: no curve)
    delta_fidelity: Interval | None  # normalised fidelity - the reference curve(s)' at the same drift
    mde_delta_drift: float  # minimal detectable |delta_drift| (80% power), in units of the reference's drift
    mde_rel_fidelity: float  # minimal detectable relative fidelity loss (80% power)
    best_alternative: str | None = None  # the curve that is lowest at the candidate's fidelity (envelopes)
    reference_drift: float = float("nan")  # the reference arm's drift at scale 1 (point estimate)


@dataclass(frozen=True)
class HeadToHead:
    """A candidate against one training-free arm *as drawn* (no curve, no matching): the paired differences.

    The matched-fidelity comparison reads an alternative's curve at the candidate's fidelity; where the candidate
    is more faithful than every point of a curve (the mask's ends at the primary at scale 1), that curve drops out
    and the envelope is whatever curve still reaches, so Δdrift can be large against a reference that is not the
    closest arm. This says how the candidate stands against each arm itself: less or more drift, more or less
    pose, with the same prompt-clustered bootstrap.
    """

    candidate: str
    arm: str
    delta_drift: Interval  # candidate - arm, drift
    delta_fidelity: Interval  # candidate - arm, normalised fidelity

    def sentence(self) -> str:
        def side(i: Interval, less: str, more: str) -> str:
            return less if i.high < 0 else more if i.low > 0 else "the same (CI across 0)"

        return (f"drift {side(self.delta_drift, 'less', 'more')}, "
                f"pose fidelity {side(self.delta_fidelity, 'less', 'more')}")  # fmt: skip


@dataclass(frozen=True)
class Frontier:
    measure: str
    chance: dict[str, Interval]
    ceiling: dict[str, Interval]
    arms: dict[str, ArmSummary]
    comparisons: dict[str, Comparison]
    primary_norm: Interval  # the primary's normalised fidelity at scale 1 (gate check: above chance)
    n_sets: int
    n_poses: int
    n_boot: int
    n_prompts: int = 0
    new_noise: Interval | None = None  # the base model's drift between two noises of one prompt: "a new scene"
    curves: dict[str, list[str]] = field(default_factory=dict)  # each family's arms in knob order
    scene: dict[str, Interval] = field(default_factory=dict)  # text-scene agreement's chance and ceiling
    head_to_head: dict[str, HeadToHead] = field(default_factory=dict)  # "<candidate>_vs_<arm key>"


# the knob's letter in an arm's key; families not listed are adapters swept over their scale ("s")
KNOB_LETTER = {"mask": "m", "steps": "f", "both": "w", "inpaint": "m", "placebo": "s"}
# the alternatives a user has without training; their lower envelope is the reference of every trained adapter
TRAINING_FREE = ("primary", "mask", "masked", "steps")
ENVELOPE = "alternatives"


def arm_key(adapter: str, scale: float) -> str:
    """A metrics key for an arm: ``base``, ``primary_s100``, ``mask_m15``, ``steps_f50`` (no dots: DVC flattens
    on them). An adapter at scale 0 is the base model."""
    if adapter == "base" or (adapter not in KNOB_LETTER and scale == 0):
        return "base"
    return f"{adapter}_{KNOB_LETTER.get(adapter, 's')}{round(scale * 100)}"


def headline_drift(metric: str, rmse: np.ndarray, one_minus_ssim: np.ndarray) -> np.ndarray:
    """The drift the frontier and the promotion gate read (``evaluate.promotion.metric``): RMSE or 1-SSIM."""
    if metric == "drift_rmse":
        return rmse
    if metric == "drift_ssim":
        return one_minus_ssim
    raise ValueError(f"unknown drift metric {metric!r}; choose drift_rmse or drift_ssim")


def comparison_key(adapter: str, reference: str) -> str:
    """``secondary`` for a comparison with the primary, ``secondary_vs_alternatives``, ``secondary_vs_champion``."""
    return adapter if reference == "primary" else f"{adapter}_vs_{reference}"


def family_curve(family: str, arms: Sequence[tuple[str, float]]) -> tuple[list[str], list[float]]:
    """A family's arms in knob order with the knob positions PCHIP interpolates along (empty: no curve).

    An adapter's scale curve starts at the base model (scale 0) and needs two scales > 0. ``steps`` is the
    primary at scale 1 with a fraction of the steps between 0 (the base model) and 1 (the primary at scale 1), so
    its curve runs from one to the other. ``mask`` runs from its smallest margin to the primary at scale 1 (a
    region covering the image); it does not start at the base model, because no margin reaches between an empty
    region and the person's own box: a chord there would claim points no mask draws. ``masked`` is that smallest
    margin's mask along the primary's scale, from the base model (scale 0) through the mask's own arm (scale 1)
    to scales above 1, where the mask alone cannot go.
    """
    keys = {arm_key(a, s) for a, s in arms}
    own = sorted((s, arm_key(a, s)) for a, s in arms if a == family and arm_key(a, s) != "base")
    top = arm_key("primary", 1.0)
    if family == "steps":
        if not own or "base" not in keys or top not in keys:
            return [], []
        return ["base", *(k for _, k in own), top], [0.0, *(s for s, _ in own), 1.0]
    if family == "mask":
        if not own or top not in keys:
            return [], []
        chain = [*(k for _, k in own), top]
        return chain, [float(k) for k in range(len(chain))]
    if family == "masked":  # the mask at its smallest margin along the primary's scale: its scale-1 point is that arm
        margins = sorted(k for a, k in arms if a == "mask")
        if not own or not margins or "base" not in keys:
            return [], []
        points = sorted([*own, (1.0, arm_key("mask", margins[0]))])
        return ["base", *(k for _, k in points)], [0.0, *(s for s, _ in points)]
    if family in KNOB_LETTER or len(own) < 2:
        return [], []
    start = ["base"] if "base" in keys else []
    return start + [k for _, k in own], [0.0] * len(start) + [s for s, _ in own]


def summarise(
    *,
    drift: Mapping[str, np.ndarray],
    drift_ssim: Mapping[str, np.ndarray],
    fidelity: Mapping[str, Mapping[str, np.ndarray]],
    mismatched: Mapping[str, np.ndarray],
    real: Mapping[str, np.ndarray],
    arms: Sequence[tuple[str, float]],
    measure: str,
    compare: Sequence[tuple[str, str]],
    n_boot: int,
    seed: int,
    ap: Mapping[str, Any] | None = None,
    prompts: Sequence[int] | None = None,
    new_noise: np.ndarray | None = None,
    extra: Mapping[str, Mapping[str, np.ndarray]] | None = None,
    scene: Mapping[str, np.ndarray] | None = None,
) -> Frontier:
    """All numbers of the frontier with paired, prompt-clustered bootstrap CIs.

    ``arms``: (family, knob) in generation order, keyed by :func:`arm_key` in the mappings; the base model
    is ("base", 0) and belongs to every curve as its first point. ``compare``: (candidate, reference) pairs,
    keyed by :func:`comparison_key`; the candidate is its arm at knob 1 (or its family's only arm: the placebo);
    the reference is ``primary`` (its scale curve), ``alternatives`` (the lower envelope of the
    :data:`TRAINING_FREE` curves; ratios against the primary at scale 1) or another adapter (``champion``).
    ``fidelity[arm][m]`` is (S, P) for every measure m; ``mismatched[m]`` (S, P, P); ``real[m]`` (P,).
    ``ap``: optional per-image (OKS, detection score) arrays for keypoint AP: ``{"arms": {key: (oks, score)},
    "chance": (oks, score), "real": (oks, score)}`` with the shapes above. ``prompts``: each set's prompt (the
    bootstrap's outer unit). ``new_noise``: (S,) the base model's drift between the set's noise and another noise
    of its prompt. ``extra[arm][name]``: further per-image (S, P) or per-pair (S, P, P) measures (drift, the
    scene judge's agreement with the caption). ``scene``: per-set (S,) ``chance`` and ``ceiling`` of that agreement.
    """
    first = drift[arm_key(*arms[0])]
    n_sets, n_poses = first.shape[0], first.shape[1]
    w = bootstrap_weights(n_sets, n_poses, n_boot, seed, prompts)
    measures = list(mismatched)
    chance = {m: pair_mean(mismatched[m], w) for m in measures}
    ceiling = {m: pose_mean(real[m], w) for m in measures}
    if ap is not None:
        chance["keypoint_ap"] = ap_replicates(*ap["chance"], w)
        real_oks, real_score = ap["real"]
        one_set = Weights(np.ones((len(w.sets), 1)), w.poses)  # real images depend on the pose only
        ceiling["keypoint_ap"] = ap_replicates(real_oks[None, :], real_score[None, :], one_set)
    noise = set_mean(new_noise, w) if new_noise is not None else None

    reps: dict[str, dict[str, np.ndarray]] = {}
    summaries: dict[str, ArmSummary] = {}
    for adapter, scale in arms:
        key = arm_key(adapter, scale)
        raw = {m: cell_mean(fidelity[key][m], w) for m in measures}
        if ap is not None:
            raw["keypoint_ap"] = ap_replicates(*ap["arms"][key], w)
        r = {"drift": pair_mean(drift[key], w), "ssim": pair_mean(drift_ssim[key], w), "fid": raw[measure]}
        r["norm"] = normalised(raw[measure], chance[measure], ceiling[measure])
        reps[key] = r
        more: dict[str, Interval] = {}
        if noise is not None:
            with np.errstate(invalid="ignore", divide="ignore"):
                more["drift_vs_new_noise"] = interval(r["drift"] / noise)
        for name, values in (extra or {}).get(key, {}).items():
            more[name] = interval(pair_mean(values, w) if values.ndim == 3 else cell_mean(values, w))
        summaries[key] = ArmSummary(
            adapter,
            scale,
            interval(r["drift"]),
            interval(r["ssim"]),
            interval(r["fid"]),
            interval(r["norm"]),
            {m: interval(v) for m, v in raw.items()},
            more,
        )

    curves = {fam: family_curve(fam, arms) for fam in dict.fromkeys(a for a, _ in arms)}
    curves = {fam: c for fam, c in curves.items() if c[0]}

    def stacked(family: str) -> tuple[np.ndarray, np.ndarray, list[float]]:
        keys, knobs = curves[family]
        return np.stack([reps[k]["norm"] for k in keys]), np.stack([reps[k]["drift"] for k in keys]), knobs

    free = [f for f in TRAINING_FREE if f in curves]
    comparisons: dict[str, Comparison] = {}
    for adapter, reference in compare:
        own = [arm_key(a, s) for a, s in arms if a == adapter]
        cand = arm_key(adapter, 1.0) if arm_key(adapter, 1.0) in reps else (own[0] if len(own) == 1 else None)
        ref_arm = arm_key("primary" if reference == ENVELOPE else reference, 1.0)
        a, ref = reps.get(cand) if cand else None, reps.get(ref_arm)
        if a is None or ref is None:
            continue
        c = chance[measure]
        with np.errstate(invalid="ignore", divide="ignore"):
            rel = (a["fid"] - c) / (ref["fid"] - c)
            ratio = a["drift"] / ref["drift"]
        delta_drift = delta_fid = None
        best: str | None = None
        if reference == ENVELOPE and "primary" in free:
            by_fid = {f: stacked(f) for f in free}
            low, each = envelope_at(by_fid, a["norm"], "primary")
            delta_drift = interval(a["drift"] - low)
            at_point = {f: v[0] for f, v in each.items() if np.isfinite(v[0])}
            best = min(at_point, key=lambda f: at_point[f]) if at_point else "primary"
            by_drift = {f: (y, x, knobs) for f, (x, y, knobs) in by_fid.items()}
            high, _ = envelope_at(by_drift, a["drift"], "primary", lowest=False)
            delta_fid = interval(a["norm"] - high)
        elif reference in curves:
            xs, ys, knobs = stacked(reference)
            delta_drift = interval(a["drift"] - value_at(xs, ys, a["norm"], knobs))
            delta_fid = interval(a["norm"] - value_at(ys, xs, a["drift"], knobs))
        rel_i = interval(rel)
        ref_drift = float(ref["drift"][0])
        mde_drift = (
            minimal_detectable(delta_drift.se) / ref_drift
            if delta_drift is not None and np.isfinite(delta_drift.se) and ref_drift > 0
            else float("nan")
        )
        comparisons[comparison_key(adapter, reference)] = Comparison(
            adapter,
            reference,
            rel_i,
            interval(ratio),
            delta_drift,
            delta_fid,
            mde_drift,
            minimal_detectable(rel_i.se) if np.isfinite(rel_i.se) else float("nan"),
            best,
            ref_drift,
        )
    head_to_head: dict[str, HeadToHead] = {}
    drawn_free = [arm_key(a, k) for a, k in arms if a in ("mask", "masked", "steps")] + [arm_key("primary", 1.0)]
    for adapter, reference in compare:
        cand = arm_key(adapter, 1.0)
        if reference != ENVELOPE or cand not in reps:
            continue
        for other in (k for k in drawn_free if k in reps):
            head_to_head[f"{cand}_vs_{other}"] = HeadToHead(
                cand,
                other,
                interval(reps[cand]["drift"] - reps[other]["drift"]),
                interval(reps[cand]["norm"] - reps[other]["norm"]),
            )
    scene_summary = {name: interval(set_mean(v, w)) for name, v in (scene or {}).items()}
    # the pose's pull (issue 23): how much text-scene agreement on atypical pairs the primary loses against the
    # base model on the same sets, poses and noise (paired, so the interval is the difference's)
    atypical = {k: (extra or {}).get(k, {}).get("scene_agreement_atypical") for k in ("base", arm_key("primary", 1.0))}
    if all(v is not None for v in atypical.values()):
        base_agree, primary_agree = (cell_mean(v, w) for v in atypical.values())
        scene_summary["pull_atypical"] = interval(base_agree - primary_agree)
    pulled = {k: (extra or {}).get(k, {}).get("scene_pulled_atypical") for k in ("base", arm_key("primary", 1.0))}
    if all(v is not None for v in pulled.values()):  # how much more often the judge reads the pose's kind
        base_pulled, primary_pulled = (cell_mean(v, w) for v in pulled.values())
        scene_summary["pulled_to_pose_atypical"] = interval(primary_pulled - base_pulled)
    primary = reps.get(arm_key("primary", 1.0))
    primary_norm = interval(primary["norm"]) if primary is not None else Interval(*(float("nan"),) * 4)
    return Frontier(
        measure,
        {m: interval(v) for m, v in chance.items()},
        {m: interval(v) for m, v in ceiling.items()},
        summaries,
        comparisons,
        primary_norm,
        n_sets,
        n_poses,
        n_boot,
        len(set(prompts)) if prompts is not None else n_sets,
        interval(noise) if noise is not None else None,
        {fam: keys for fam, (keys, _) in curves.items()},
        scene_summary,
        head_to_head,
    )
