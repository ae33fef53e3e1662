"""Re-decide a finished evaluation with the current statistics, from its CSVs, without drawing an image again.

An evaluation's ``drift.csv`` (per arm, set and pose pair) and ``fidelity.csv`` (per arm, set and pose) hold
everything the matched-fidelity comparison needs: the chance level and the ceiling are shared by every arm, so
matching at equal *normalised* fidelity is matching at equal raw fidelity, and Δdrift does not depend on them.
They are taken from the run's ``metrics.json`` as constants (their own uncertainty is left out, so relative
fidelity's CI is slightly narrow; Δdrift's is not affected).

What changes against the run's own report is only the statistics (:mod:`posescene.evaluation.frontier`): the
bootstrap over prompts with seeds nested in them, and the monotone interpolation along the scale. Alternatives
the run did not draw (mask, steps) cannot be added here.
"""

from __future__ import annotations

import csv
import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from posescene.errors import InputDataError
from posescene.evaluation import frontier as fr
from posescene.io import write_json_atomic


def parse_arm_key(key: str) -> tuple[str, float]:
    """``base`` -> ("base", 0); ``fixed-distill-18_8_s100`` -> ("fixed-distill-18_8", 1.0)."""
    if key == "base":
        return "base", 0.0
    family, sep, knob = key.rpartition("_s")
    if not sep or not knob.isdigit():
        raise InputDataError(f"arm {key!r}: expected <adapter>_s<scale x 100> (restat handles scale sweeps only)")
    return family, int(knob) / 100


def _read(path: Path, columns: tuple[str, ...]) -> list[dict[str, str]]:
    if not path.is_file():
        raise InputDataError(f"{path}: missing; restat needs an evaluation's drift.csv, fidelity.csv, metrics.json")
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in columns if c not in (reader.fieldnames or [])]
        if missing:
            raise InputDataError(f"{path}: no column(s) {missing}; is this an evaluation's own CSV (evaluate.out_dir)?")
        rows = list(reader)
    if not rows:
        raise InputDataError(f"{path}: no rows; the evaluation that wrote it did not finish. Rerun it.")
    return rows


def restat(run_dir: Path, *, seeds_per_prompt: int, n_boot: int, seed: int) -> dict[str, Any]:
    """Every adapter at scale 1 against the primary's scale curve, with the current statistics; writes
    ``restat.json`` beside the run's files and returns it."""
    try:
        fidelity_info = json.loads((run_dir / "metrics.json").read_text())["fidelity"]
        measure = fidelity_info["measure"]
        chance, ceiling = float(fidelity_info["chance"]), float(fidelity_info["ceiling"])
    except (OSError, json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise InputDataError(
            f"{run_dir}/metrics.json: missing or without fidelity.measure/chance/ceiling ({exc!r}); restat reads the "
            "run's chance level and ceiling there"
        ) from None
    fid_rows = _read(run_dir / "fidelity.csv", ("arm", "set", "pose", measure))
    drift_rows = _read(run_dir / "drift.csv", ("arm", "set", "pose_i", "pose_j", "rmse"))
    keys = list(dict.fromkeys(r["arm"] for r in fid_rows))
    sets = sorted({int(r["set"]) for r in fid_rows})
    poses = sorted({int(r["pose"]) for r in fid_rows})
    if len(sets) % seeds_per_prompt:
        raise InputDataError(
            f"{run_dir}: {len(sets)} sets are not a whole number of prompts x {seeds_per_prompt} seeds"
        )
    s_index, p_index = {s: i for i, s in enumerate(sets)}, {p: i for i, p in enumerate(poses)}
    fidelity: dict[str, dict[str, np.ndarray]] = defaultdict(
        lambda: {measure: np.full((len(sets), len(poses)), np.nan)}
    )
    for r in fid_rows:
        fidelity[r["arm"]][measure][s_index[int(r["set"])], p_index[int(r["pose"])]] = float(r[measure])
    drift = {k: np.full((len(sets), len(poses), len(poses)), np.nan) for k in keys}
    for r in drift_rows:
        i, j, s = p_index[int(r["pose_i"])], p_index[int(r["pose_j"])], s_index[int(r["set"])]
        drift[r["arm"]][s, i, j] = drift[r["arm"]][s, j, i] = float(r["rmse"])
    arms = [parse_arm_key(k) for k in keys]
    mismatched = np.full((len(sets), len(poses), len(poses)), chance)
    mismatched[:, np.arange(len(poses)), np.arange(len(poses))] = np.nan
    families = [a for a in dict.fromkeys(f for f, _ in arms) if a not in ("base", "primary")]
    frontier = fr.summarise(
        drift=drift, drift_ssim=drift, fidelity=dict(fidelity), mismatched={measure: mismatched},
        real={measure: np.full(len(poses), ceiling)}, arms=arms, measure=measure,
        compare=[(a, "primary") for a in families], n_boot=n_boot, seed=seed,
        prompts=[s // seeds_per_prompt for s in sets],
    )  # fmt: skip
    out: dict[str, Any] = {
        "source": str(run_dir),
        "statistics": "bootstrap over prompts (seeds nested) and poses; PCHIP along the scale",
        "n_prompts": frontier.n_prompts,
        "n_sets": frontier.n_sets,
        "n_poses": frontier.n_poses,
        "n_boot": n_boot,
        "comparisons": {},
    }
    for name, c in frontier.comparisons.items():
        d = c.delta_drift
        out["comparisons"][name] = {
            "delta_drift_matched": None if d is None else [round(d.value, 6), round(d.low, 6), round(d.high, 6)],
            "rel_fidelity": [
                round(c.rel_fidelity.value, 4),
                round(c.rel_fidelity.low, 4),
                round(c.rel_fidelity.high, 4),
            ],
            "drift_ratio": [round(c.drift_ratio.value, 4), round(c.drift_ratio.low, 4), round(c.drift_ratio.high, 4)],
            "mde_delta_drift_rel": round(c.mde_delta_drift, 4),
            "verdict": "not distinguishable"
            if d is None or d.low <= 0 <= d.high
            else "better"
            if d.high < 0
            else "worse",
        }
    write_json_atomic(run_dir / "restat.json", out, sort_keys=False)
    return out


__all__ = ["parse_arm_key", "restat"]
