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
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.stats import norm

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


def bootstrap_weights(n_sets: int, n_poses: int, n_boot: int, seed: int) -> Weights:
    """Multinomial multiplicities for sets and poses, deterministic for ``seed``."""
    rng = np.random.default_rng([seed, 7])
    sets = rng.multinomial(n_sets, np.full(n_sets, 1.0 / n_sets), size=n_boot).astype(np.float64)
    poses = rng.multinomial(n_poses, np.full(n_poses, 1.0 / n_poses), size=n_boot).astype(np.float64)
    return Weights(np.vstack([np.ones(n_sets), sets]), np.vstack([np.ones(n_poses), poses]))


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
    from posescene.metrics import keypoint_ap

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


def normalised(raw: np.ndarray, chance: np.ndarray, ceiling: np.ndarray) -> np.ndarray:
    """(raw - chance) / (ceiling - chance) per replicate: 0 = chance, 1 = the judge on real images."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return (raw - chance) / (ceiling - chance)


def value_at(curve_x: np.ndarray, curve_y: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Per replicate: y of the curve (points in scale order, (K, B + 1)) at x = target (B + 1,).

    Linear between neighbouring points, first crossing in scale order. A target beyond the curve's range takes
    the y of its nearest end (its most or least faithful point): the curve never reaches that x, and an arm
    beyond the most faithful point with less drift than it dominates it (the comparison is conservative as long
    as drift grows with fidelity along the curve, which is what turning an adapter up does).
    """
    out = np.full(target.shape, np.nan)
    for b in range(target.size):
        x, y, t = curve_x[:, b], curve_y[:, b], target[b]
        ok = np.isfinite(x) & np.isfinite(y)
        if not np.isfinite(t) or ok.sum() < 2:
            continue
        for k in range(len(x) - 1):
            x0, x1 = x[k], x[k + 1]
            if not (ok[k] and ok[k + 1]) or (x0 - t) * (x1 - t) > 0:
                continue
            frac = 0.0 if x1 == x0 else (t - x0) / (x1 - x0)
            out[b] = y[k] + frac * (y[k + 1] - y[k])
            break
        else:
            end = (
                int(np.nanargmax(np.where(ok, x, -np.inf)))
                if t > np.nanmax(x[ok])
                else int(np.nanargmin(np.where(ok, x, np.inf)))
            )
            out[b] = y[end]
    return out


def minimal_detectable(se: float, confidence: float = CONFIDENCE, power: float = POWER) -> float:
    """The smallest true difference a two-sided test at ``confidence`` detects with ``power``, given its SE."""
    return float((norm.ppf(1 - (1 - confidence) / 2) + norm.ppf(power)) * se)


@dataclass(frozen=True)
class ArmSummary:
    adapter: str
    scale: float
    drift: Interval  # the headline drift (evaluate.promotion.metric)
    drift_ssim: Interval
    fidelity: Interval  # the headline fidelity measure, raw
    fidelity_norm: Interval  # normalised: 0 = chance, 1 = ceiling
    measures: dict[str, Interval]  # every fidelity measure, raw


@dataclass(frozen=True)
class Comparison:
    """An adapter at scale 1 against the primary (or another reference adapter) at scale 1 and on its curve."""

    name: str
    reference: str
    rel_fidelity: Interval  # (F - chance) / (F_ref - chance)
    drift_ratio: Interval  # drift / drift_ref
    delta_drift: Interval | None  # drift - the reference's curve at the same fidelity (None: no curve)
    delta_fidelity: Interval | None  # normalised fidelity - the reference curve's at the same drift
    mde_delta_drift: float  # minimal detectable |delta_drift| (80% power), in units of the reference's drift
    mde_rel_fidelity: float  # minimal detectable relative fidelity loss (80% power)


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


def arm_key(adapter: str, scale: float) -> str:
    """A metrics key for an arm: ``base``, ``primary_s100``, ``secondary_s25`` (no dots: DVC flattens on them)."""
    return "base" if scale == 0 else f"{adapter}_s{round(scale * 100)}"


def headline_drift(metric: str, rmse: np.ndarray, one_minus_ssim: np.ndarray) -> np.ndarray:
    """The drift the frontier and the promotion gate read (``evaluate.promotion.metric``): RMSE or 1-SSIM."""
    if metric == "drift_rmse":
        return rmse
    if metric == "drift_ssim":
        return one_minus_ssim
    raise ValueError(f"unknown drift metric {metric!r}; choose drift_rmse or drift_ssim")


def comparison_key(adapter: str, reference: str) -> str:
    """``secondary`` for a comparison with the primary, ``secondary_vs_champion`` otherwise."""
    return adapter if reference == "primary" else f"{adapter}_vs_{reference}"


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
) -> Frontier:
    """All numbers of the frontier with paired two-way bootstrap CIs.

    ``arms``: (adapter, scale) in generation order, keyed by :func:`arm_key` in the mappings; the base model
    is ("base", 0) and belongs to every adapter's curve as its scale-0 point. ``compare``: (adapter, reference)
    pairs compared at scale 1 (the reference's curve is its arms in scale order, base first), keyed by
    :func:`comparison_key`.
    ``fidelity[arm][m]`` is (S, P) for every measure m; ``mismatched[m]`` (S, P, P); ``real[m]`` (P,).
    ``ap``: optional per-image (OKS, detection score) arrays for keypoint AP: ``{"arms": {key: (oks, score)},
    "chance": (oks, score), "real": (oks, score)}`` with the shapes above.
    """
    first = drift[arm_key(*arms[0])]
    n_sets, n_poses = first.shape[0], first.shape[1]
    w = bootstrap_weights(n_sets, n_poses, n_boot, seed)
    measures = list(mismatched)
    chance = {m: pair_mean(mismatched[m], w) for m in measures}
    ceiling = {m: pose_mean(real[m], w) for m in measures}
    if ap is not None:
        chance["keypoint_ap"] = ap_replicates(*ap["chance"], w)
        real_oks, real_score = ap["real"]
        one_set = Weights(np.ones((len(w.sets), 1)), w.poses)  # real images depend on the pose only
        ceiling["keypoint_ap"] = ap_replicates(real_oks[None, :], real_score[None, :], one_set)

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
        summaries[key] = ArmSummary(
            adapter,
            scale,
            interval(r["drift"]),
            interval(r["ssim"]),
            interval(r["fid"]),
            interval(r["norm"]),
            {m: interval(v) for m, v in raw.items()},
        )

    def curve(adapter: str) -> list[str]:
        """The adapter's arms in scale order, base first; empty unless at least two scales > 0 were measured."""
        own = sorted((s, arm_key(a, s)) for a, s in arms if a == adapter and s > 0)
        if len(own) < 2:
            return []
        return (["base"] if "base" in reps else []) + [k for _, k in own]

    comparisons: dict[str, Comparison] = {}
    for adapter, reference in compare:
        a, ref = reps.get(arm_key(adapter, 1.0)), reps.get(arm_key(reference, 1.0))
        if a is None or ref is None:
            continue
        c = chance[measure]
        with np.errstate(invalid="ignore", divide="ignore"):
            rel = (a["fid"] - c) / (ref["fid"] - c)
            ratio = a["drift"] / ref["drift"]
        ref_curve = curve(reference)
        delta_drift = delta_fid = None
        if len(ref_curve) >= 2:
            xs = np.stack([reps[k]["norm"] for k in ref_curve])
            ys = np.stack([reps[k]["drift"] for k in ref_curve])
            delta_drift = interval(a["drift"] - value_at(xs, ys, a["norm"]))
            delta_fid = interval(a["norm"] - value_at(ys, xs, a["drift"]))
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
        )
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
    )
