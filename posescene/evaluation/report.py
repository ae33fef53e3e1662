"""The evaluation's outputs: ``metrics.json`` (DVC metrics, the decision first), CSVs, the frontier figure,
pose x arm grids and ``report.md`` (the verdict in words on its first line)."""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from posescene.config import Params
from posescene.evaluation.frontier import ENVELOPE, Comparison, Interval
from posescene.evaluation.promotion import CHAMPION_ALIAS, GateRules, gate_power
from posescene.evaluation.result import EvaluationResult
from posescene.io import atomic_path, write_bytes_atomic, write_json_atomic, write_text_atomic
from posescene.sampling.maps import condition_maps
from posescene.sampling.pose import Pose

ADAPTER_COLOURS = {
    "primary": "#4477aa", "secondary": "#ee6677", "champion": "#228833", "mask": "#66ccee", "masked": "#009988",
    "steps": "#aa3377", "both": "#ccbb44", "inpaint": "#222222", "placebo": "#bbbbbb",
}  # fmt: skip
KNOB_NAMES = {"mask": "margin", "steps": "fraction of steps", "both": "secondary weight", "inpaint": "margin"}


def _num(v: float) -> float | None:
    return round(float(v), 6) if isinstance(v, int | float) and math.isfinite(v) else None


def _interval(i: Interval | None, prefix: str) -> dict[str, float | None]:
    if i is None:
        return {prefix: None, f"{prefix}_low": None, f"{prefix}_high": None}
    return {k: _num(v) for k, v in i.as_dict(prefix).items()}


def metrics_json(result: EvaluationResult, params: Params) -> dict[str, Any]:
    """The DVC metrics file. Key order is what ``dvc metrics show`` / ``dvc exp show`` display first: the
    verdict and the gate, then chance/ceiling, then every arm, then the run."""
    f = result.frontier
    comp = f.comparisons.get("secondary")
    best = f.comparisons.get(f"secondary_vs_{ENVELOPE}")
    verdict: dict[str, Any] = {"text": result.verdict, "gate": result.promotion.status}
    if best is not None:
        verdict["best_alternative"] = best.best_alternative
        verdict |= _interval(best.delta_drift, "delta_drift_vs_alternatives")
        verdict |= _interval(best.delta_fidelity, "delta_fidelity_vs_alternatives")
    verdict["gate_power"] = _num(gate_power(f, _rules(params)))
    if comp is not None:
        verdict |= _interval(comp.delta_drift, "delta_drift_matched")
        verdict |= _interval(comp.delta_fidelity, "delta_fidelity_matched")
        verdict |= _interval(comp.rel_fidelity, "rel_fidelity")
        verdict |= _interval(comp.drift_ratio, "drift_ratio")
        verdict["mde_delta_drift_rel"] = _num(comp.mde_delta_drift)
        verdict["mde_rel_fidelity"] = _num(comp.mde_rel_fidelity)
    gate = {
        c.name.replace(" ", "_"): {"pass": int(c.passed), "bound": _num(c.bound), "limit": _num(c.limit)}
        for c in result.decision.checks
    }
    comparisons = {
        name: {
            "reference": c.reference,
            **_interval(c.delta_drift, "delta_drift_matched"),
            **_interval(c.delta_fidelity, "delta_fidelity_matched"),
            **_interval(c.rel_fidelity, "rel_fidelity"),
            **_interval(c.drift_ratio, "drift_ratio"),
        }
        for name, c in f.comparisons.items()
        if name != "secondary"  # the secondary's is the verdict above
    }
    arms: dict[str, Any] = {}
    for key, a in f.arms.items():
        arms[key] = {
            **_interval(a.drift, "drift"),
            **_interval(a.fidelity_norm, "fidelity_norm"),
            **_interval(a.fidelity, f"{f.measure}"),
            "drift_ssim": _num(a.drift_ssim.value),
            **{m: _num(v.value) for m, v in a.measures.items() if m != f.measure},
            **{name: _num(v.value) for name, v in a.extra.items()},
        }
    return {
        "verdict": verdict,
        "gate": gate,
        "fidelity": {
            "measure": f.measure,
            **_interval(f.chance[f.measure], "chance"),
            **_interval(f.ceiling[f.measure], "ceiling"),
            **{f"chance_{m}": _num(v.value) for m, v in f.chance.items() if m != f.measure},
            **{f"ceiling_{m}": _num(v.value) for m, v in f.ceiling.items() if m != f.measure},
        },
        "comparisons": comparisons,
        "head_to_head": {
            name: {**_interval(h.delta_drift, "delta_drift"), **_interval(h.delta_fidelity, "delta_fidelity")}
            for name, h in f.head_to_head.items()
        },
        "arms": arms,
        "new_noise_drift": _interval(f.new_noise, "drift"),
        "text_scene_agreement": {name: _num(i.value) for name, i in f.scene.items()},
        "run": {
            "n_prompts": f.n_prompts,
            "n_sets": f.n_sets,
            "n_poses": f.n_poses,
            "n_arms": len(result.arms),
            "n_images": int(np.prod(result.images.shape[:3])),
            "scene_fraction": _num(result.scene_fraction),
        },
    }


def run_json(result: EvaluationResult) -> dict[str, Any]:
    """``run.json``: what only this run has (times, speed, the MLflow run and registry version). It is kept out of
    metrics.json and report.md, DVC outputs that must have the same bytes whenever the same code reruns."""
    return {
        "seconds": round(result.seconds, 1),
        "generation_seconds": round(result.generation_seconds, 1),
        "images_per_s": _num(result.images_per_s),
        "mlflow_run_id": result.mlflow_run_id,
        "tracking_uri": result.tracking_uri,
        "candidate_version": result.promotion.candidate_version,
        "champion_before": result.promotion.champion_before,
    }


def _csv(rows: Sequence[Mapping[str, Any]]) -> str:
    columns: dict[str, None] = {}
    for row in rows:
        columns.update(dict.fromkeys(row))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
    return buf.getvalue()


def _rules(params: Params) -> GateRules:
    pr = params.evaluate.promotion
    return GateRules(pr.fidelity_floor, pr.drift_margin, pr.min_primary_fidelity)


def frontier_rows(result: EvaluationResult) -> list[dict[str, Any]]:
    """One row per arm of every curve (a family's arms in knob order, from the base model; the ``mask`` and
    ``steps`` curves end at the primary at scale 1, the ``masked`` curve passes through the mask's arm), and single
    arms (inpainting bound, placebo, ``both``) as points: the plot's data, ``plots/frontier/<family>.csv``."""
    f = result.frontier
    rows = []
    families = list(dict.fromkeys(a for a, _ in result.arms if a != "base"))
    for family in families:
        keys = f.curves.get(family) or [k for k, a in f.arms.items() if a.adapter == family]
        for key in keys:
            arm = f.arms[key]
            rows.append({
                "adapter": family, "arm": key, "scale": arm.scale, "fidelity_norm": arm.fidelity_norm.value,
                "fidelity_norm_low": arm.fidelity_norm.low, "fidelity_norm_high": arm.fidelity_norm.high,
                "drift": arm.drift.value, "drift_low": arm.drift.low, "drift_high": arm.drift.high,
            })  # fmt: skip
    return rows


def _errors(rows: Sequence[Mapping[str, Any]], key: str) -> np.ndarray:
    """(2, N) distances from the value to its CI ends, for matplotlib's errorbar."""
    return np.abs(np.array([[r[key] - r[f"{key}_low"], r[f"{key}_high"] - r[key]] for r in rows], dtype=float).T)


def write_frontier_plot(result: EvaluationResult, path: Path, metric: str) -> None:
    """Drift (y) against normalised fidelity (x) per adapter as its scale grows, with 95% CIs both ways."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = frontier_rows(result)
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for adapter in dict.fromkeys(r["adapter"] for r in rows):
        pts = [r for r in rows if r["adapter"] == adapter]
        x = np.array([r["fidelity_norm"] for r in pts])
        y = np.array([r["drift"] for r in pts])
        xerr, yerr = _errors(pts, "fidelity_norm"), _errors(pts, "drift")
        colour = ADAPTER_COLOURS.get(adapter, "#999933")
        style = "*" if adapter == "inpaint" else "-o" if len(pts) > 1 else "D"
        label = {"inpaint": "inpainting bound", "placebo": "placebo (primary off-grid)"}.get(adapter, adapter)
        ax.errorbar(x, y, xerr=np.nan_to_num(xerr), yerr=np.nan_to_num(yerr), fmt=style, color=colour, label=label,
                    capsize=2, lw=1.5, ms=6 if style != "-o" else 4, alpha=0.9)  # fmt: skip
        for r in pts:
            borrowed = (adapter in ("mask", "steps") and r["arm"].startswith("primary")) or (
                adapter == "masked" and r["arm"].startswith("mask_")  # the mask's arm: the masked curve's scale 1
            )
            if r["arm"] == "base" or borrowed:
                continue
            ax.annotate(f"{r['scale']:g}", (r["fidelity_norm"], r["drift"]), fontsize=7, xytext=(3, 3),
                        textcoords="offset points", color=colour)  # fmt: skip
    ax.axvline(0.0, color="#999999", ls=":", lw=1)
    ax.axvline(1.0, color="#999999", ls="--", lw=1)
    ax.text(0.0, ax.get_ylim()[1], " chance", fontsize=7, va="top", color="#666666")
    ax.text(1.0, ax.get_ylim()[1], " judge on real images", fontsize=7, va="top", color="#666666")
    ax.set_xlabel(f"pose fidelity ({result.frontier.measure}, normalised: 0 = chance, 1 = ceiling)")
    ax.set_ylabel(f"scene drift ({metric}; lower is better)")
    ax.set_title("drift vs fidelity as each arm's knob grows (labels: scale, margin, fraction), 95% CIs",
                 fontsize=9)  # fmt: skip
    ax.legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    write_bytes_atomic(path, buf.getvalue())


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # pragma: no cover - Pillow without FreeType
        return ImageFont.load_default()


def make_grid(
    rows: Sequence[tuple[str, Sequence[np.ndarray]]],
    column_labels: Sequence[str],
    header: Sequence[np.ndarray] | None = None,
    title: str = "",
    cell: int = 128,
) -> Image.Image:
    """A labelled image grid: one row per model, one column per pose (optional header row of pose maps)."""
    n_cols = max(len(images) for _, images in rows)
    font = _font(12)
    label_w, top = 100, 36 if title else 18
    all_rows = ([("pose map", header)] if header is not None else []) + list(rows)
    grid = Image.new("RGB", (label_w + n_cols * cell, top + len(all_rows) * (cell + 4)), "white")
    draw = ImageDraw.Draw(grid)
    if title:
        draw.text((4, 2), title[:130], fill="black", font=font)
    for c, label in enumerate(column_labels):
        draw.text((label_w + c * cell + 4, top - 16), str(label)[:18], fill="black", font=font)
    for r, (label, images) in enumerate(all_rows):
        y = top + r * (cell + 4)
        draw.text((4, y + cell // 2 - 6), label[:16], fill="black", font=font)
        for c, image in enumerate(images):
            tile = Image.fromarray(np.asarray(image)).convert("RGB").resize((cell, cell), Image.Resampling.NEAREST)
            grid.paste(tile, (label_w + c * cell, y))
    return grid


def pose_label(pose: Pose) -> str:
    action = pose.meta.get("action") if pose.meta else None
    return str(action or pose.label)


def write_grids(result: EvaluationResult, params: Params, grid_dir: Path, max_sets: int = 4) -> list[Path]:
    """One grid per set (first ``max_sets``): rows = arms, columns = poses, header = the pose maps."""
    h = result.heldout
    res = params.model.resolution
    maps = condition_maps(h.poses, res, params.render.radius, params.render.limbs, 1, False)
    header = [np.repeat((m[0].numpy() * 255).astype(np.uint8)[..., None], 3, axis=-1) for m in maps]
    labels = [pose_label(p) for p in h.poses]
    paths = []
    with atomic_path(grid_dir) as tmp:
        tmp.mkdir(parents=True)
        for s, pose_set in enumerate(h.sets[:max_sets]):
            rows = [(key, list(result.images[s, :, a])) for a, key in enumerate(result.arm_keys)]
            title = f"set {pose_set.set_id} (seed {pose_set.seed}): {pose_set.prompt.caption}"
            make_grid(rows, labels, header, title, cell=max(96, res)).save(tmp / f"set_{pose_set.set_id}.png")
            paths.append(grid_dir / f"set_{pose_set.set_id}.png")
    return paths


def _fmt(i: Interval | None, digits: int = 3, signed: bool = False) -> str:
    if i is None or not math.isfinite(i.value):
        return "–"
    spec = f"+.{digits}f" if signed else f".{digits}f"
    if not (math.isfinite(i.low) and math.isfinite(i.high)):
        return f"{i.value:{spec}}"
    return f"{i.value:{spec}} [{i.low:{spec}}, {i.high:{spec}}]"


def placebo_sentence(own: Comparison | None, against_all: Comparison | None, scale: float | None) -> str:
    """The matched-fidelity test's false-positive check, in words ('' without a placebo arm).

    The placebo is the primary at an off-grid scale, so against its *own* scale curve it must come out not
    distinguishable (a difference there is the interpolation's bias). Against the alternatives it is simply the
    primary: worse than a mask is the right answer, and only a "better" would be a false positive.
    """
    if own is None or own.delta_drift is None:
        return ""
    d = own.delta_drift
    text = (
        f"**Placebo** (the primary at scale {scale:g}, off the grid, compared like a candidate): against its own "
        f"scale curve Δdrift {_fmt(d, 4, True)}: "
        + ("not distinguishable, as it must be (the matched-fidelity test's false-positive check)."
           if d.low <= 0 <= d.high else "**distinguishable: the matched-fidelity test is biased on this run; read "
           "the verdict with care.**")
    )  # fmt: skip
    if against_all is not None and against_all.delta_drift is not None:
        a = against_all.delta_drift
        text += f" Against the alternatives {_fmt(a, 4, True)}: " + (
            "**better than them: the envelope is biased on this run; read the verdict with care.**"
            if a.high < 0
            else "not better, as it must be (it is the primary)."
        )
    return text


def report_markdown(result: EvaluationResult, params: Params, grids: Sequence[Path]) -> str:
    """The human report: verdict first, then the frontier figure, the gate, the table, the design and power."""
    ev = params.evaluate
    f = result.frontier
    comp = f.comparisons.get("secondary")
    p = result.promotion
    status = {
        "promoted": f"**Promoted**: the `candidate` of `{params.mlflow.registered_model}` is now `{CHAMPION_ALIAS}` "
        "(versions: run.json).",
        "rejected": f"**Not promoted**: the version aliased `candidate` stays `candidate`; `{CHAMPION_ALIAS}` "
        "unchanged.",
        "not_evaluated": "**Not evaluated**: no alias moved.",
        "no_candidate": "**No candidate** in the registry: nothing to promote; no alias changed.",
    }[p.status]
    power = gate_power(f, _rules(params))
    best = f.comparisons.get(f"secondary_vs_{ENVELOPE}")
    lines = [
        "# posescene evaluation: scene drift across poses at matched pose fidelity",
        "",
        f"**Verdict: {result.verdict}**",
        "",
        status,
        "",
        "![drift vs fidelity frontier](plots/frontier.png)",
        "",
        "## Against every alternative a user already has",
        "",
        "The training-free alternatives are the primary adapter with one knob each: its scale "
        "(`adapter_conditioning_scale`), its features masked to the pose's person region grown by a margin "
        "(`mask`), its features during the first fraction of the denoising steps only (`steps`). Their lower "
        "envelope at matched fidelity is the reference (`alternatives`); each curve is interpolated monotonically "
        "(PCHIP) along its knob. Δdrift < 0: less drift than the best alternative at the same pose fidelity.",
        "",
        "| candidate | reference | Δdrift at matched fidelity | Δ normalised fidelity at matched drift | "
        "relative above-chance fidelity | drift ratio | best alternative there |",
        "|---|---|---|---|---|---|---|",
    ]
    for c in f.comparisons.values():
        lines.append(
            f"| {c.name} | {c.reference} | {_fmt(c.delta_drift, 4, True)} | {_fmt(c.delta_fidelity, 3, True)} | "
            f"{_fmt(c.rel_fidelity)} | {_fmt(c.drift_ratio)} | {c.best_alternative or '–'} |"
        )
    lines.append("")
    if f.head_to_head:
        lines += [
            "**Head to head** (the candidate against each training-free arm as drawn, paired, no matching: where the "
            "candidate is more faithful than every point of a curve, that curve drops out of the matched comparison "
            "above, and this table says how close the nearest arm still is):",
            "",
            "| candidate | arm | Δdrift | Δ normalised fidelity | in words |",
            "|---|---|---|---|---|",
            *(f"| {h.candidate} | {h.arm} | {_fmt(h.delta_drift, 4, True)} | {_fmt(h.delta_fidelity, 3, True)} | "
              f"{h.sentence()} |" for h in f.head_to_head.values()),
            "",
        ]  # fmt: skip
    placebo = placebo_sentence(
        f.comparisons.get("placebo"), f.comparisons.get(f"placebo_vs_{ENVELOPE}"), ev.alternatives.placebo_scale
    )
    if placebo:
        lines += [placebo, ""]
    if f.new_noise is not None:
        lines += [
            "## How large (drift in units of a new noise)",
            "",
            f"A new noise (the base model, same prompt, another seed) changes the scene by {_fmt(f.new_noise, 4)} "
            'RMSE outside the person regions: that is "a new scene". Each arm\'s pose-induced drift as a share of it, '
            "its drift on each pair's own scene (outside the two poses' regions only), and its distance to the base "
            "image of its noise (the scene the text asked for), overall and by distance from its own person box:",
            "",
            "| arm | drift / new noise | drift, per-pair mask | to base | in the box | 0-8 px | 8-16 px | > 16 px | "
            "text-scene agreement | on typical pairs | on atypical pairs | pulled to the pose's kind |",
            "|---|---|---:|---:|---:|---:|---:|---:|---|---|---|---|",
        ]
        for key, arm in f.arms.items():
            e = arm.extra
            cells = [e.get(n) for n in ("drift_pair_mask", "to_base", "to_base_box", "to_base_near", "to_base_mid",
                                       "to_base_far")]  # fmt: skip
            lines.append(
                f"| {key} | {_fmt(e.get('drift_vs_new_noise'), 2)} | "
                + " | ".join("–" if c is None or not math.isfinite(c.value) else f"{c.value:.4f}" for c in cells)
                + f" | {_fmt(e.get('scene_agreement'), 2)} | {_fmt(e.get('scene_agreement_typical'), 2)}"
                + f" | {_fmt(e.get('scene_agreement_atypical'), 2)} | {_fmt(e.get('scene_pulled_atypical'), 2)} |"
            )
        lines.append("")
        if f.scene:
            lines += [
                f"Text-scene agreement (the scene judge reads the kind the caption names): chance "
                f"{_fmt(f.scene.get('chance'), 2)} (the judge's kind for a base image against other prompts' "
                "captions), "
                f"ceiling {_fmt(f.scene.get('ceiling'), 2)} (the judge on each prompt's real image). Where the data's "
                "poses say nothing about the scene (`synth.coupling` 0) it stays near the ceiling for every arm; where "
                "poses go with scenes, an adapter that learned the coupling lowers it on the atypical pairs.",
                "",
            ]
        if "pull_atypical" in f.scene:
            lines += [
                "**The pose's pull on the scene.** On the *atypical* pairs (the caption names a scene kind the pose is "
                "not typical of, `posescene.data.synth.TYPICAL_ACTIONS`), the primary at scale 1 loses "
                f"{_fmt(f.scene['pull_atypical'], 2)} of text-scene agreement against the base model on the same "
                "sets, poses and noise (paired; 95% CI over prompts). Above 0: the pose pulls the scene away from the "
                "caption, the failure the secondary adapter exists to remove; each arm's columns above say how much of "
                "it is left, and how often the judge reads a kind the pose is typical of instead (the pull itself; "
                "a pose-blind model gets the share of kinds typical of the pose, about 0.2).",
                "",
            ]
    lines += [
        "## Gate (every check on the pessimistic end of its 95% CI)",
        "",
        *[f"- {line}" for line in p.lines],
        "",
        f"Power of the gate: a candidate that keeps all of the primary's above-chance fidelity and drifts 30% less "
        f"than the alternatives passes every check with probability {power:.0%} in this design (from this run's "
        "standard errors; `posescene.evaluation.promotion.gate_power`).",
        "",
        f"## Arms ({len(result.heldout.prompts)} prompts, {f.n_sets} sets x {f.n_poses} poses each; 95% CIs: paired "
        f"bootstrap over prompts, seeds nested in prompts, and poses, {f.n_boot} replicates)",
        "",
        f"Fidelity measure `{f.measure}`; normalised = (raw - chance) / (ceiling - chance). Chance "
        f"{_fmt(f.chance[f.measure])} = the judge on the primary's images scored against the *other* poses of their "
        f"set; ceiling {_fmt(f.ceiling[f.measure])} = the judge on the real images the poses come from.",
        "",
        f"| arm | knob | drift ({ev.promotion.metric}) | drift 1-SSIM | {f.measure} | normalised fidelity | "
        "OKS (18 points) | PCK@0.1 box |",
        "|---|---:|---|---:|---|---|---:|---:|",
    ]
    for key, a in f.arms.items():
        lines.append(
            f"| {key} | {a.scale:g} | {_fmt(a.drift, 4)} | {a.drift_ssim.value:.4f} | {_fmt(a.fidelity)} | "
            f"{_fmt(a.fidelity_norm)} | {a.measures['oks'].value:.3f} | "
            f"{a.measures['pck@0.1box'].value:.3f} |"
        )
    lines += [
        f"| chance | – | – | – | {_fmt(f.chance[f.measure])} | 0 | {f.chance['oks'].value:.3f} | "
        f"{f.chance['pck@0.1box'].value:.3f} |",
        f"| ceiling (real images) | – | – | – | {_fmt(f.ceiling[f.measure])} | 1 | "
        f"{f.ceiling['oks'].value:.3f} | {f.ceiling['pck@0.1box'].value:.3f} |",
        "",
    ]
    if "keypoint_ap" in f.chance:
        lines += [
            "Keypoint AP (COCO, from OKS): "
            + ", ".join(f"{k} {a.measures['keypoint_ap'].value:.3f}" for k, a in f.arms.items())
            + f"; chance {f.chance['keypoint_ap'].value:.3f}, ceiling {f.ceiling['keypoint_ap'].value:.3f}.",
            "",
        ]
    if comp is not None:
        ref = best or comp
        lines += [
            "### Power",
            "",
            f"With {len(result.heldout.prompts)} prompts x {f.n_poses} poses, the smallest Δdrift this run detects "
            f"with 80% power at the 5% level is {ref.mde_delta_drift:.0%} of the primary's drift against "
            f"`{ref.reference}` (target: 20%), and the smallest relative fidelity loss {ref.mde_rel_fidelity:.1%} "
            "(target: 5%) (1.96 + 0.84 = 2.8 bootstrap SEs). "
            + (
                "Both targets are met."
                if ref.mde_delta_drift <= 0.2 and ref.mde_rel_fidelity <= 0.05
                else "Where a target is missed, more prompts and poses shrink the SE (more seeds of the same "
                "prompts barely do): see README for the full-power configuration."
            ),
            "",
        ]
    lines += [
        "## Design",
        "",
        f"- {len(result.heldout.prompts)} held-out prompts x {len(ev.seeds)} seed(s) = {f.n_sets} sets; each set has "
        "its "
        f"own initial noise, and every pose and arm of a set starts from it. Captions name no action (the action "
        "phrase of the source image is removed), so no pose contradicts the prompt.",
        f"- {f.n_poses} held-out poses, distinct actions where the data has them; adapter_conditioning_scale grid "
        f"{list(ev.scales)} (scale 0 = the base model); alternatives {ev.alternatives.model_dump()}; {ev.steps} "
        f"{ev.sampler} steps, guidance {ev.guidance_scale}, {params.model.resolution} px.",
        f"- Drift: mean over pose pairs of the distance outside the union of the set's person regions (keypoint boxes "
        f"grown by {ev.mask_margin:.0%} of their larger side; the scene is {result.scene_fraction:.0%} of the image).",
        f"- Held-out scenes checked against the world's training record: {result.checked_scenes} scene(s) with "
        "PoseScenes provenance, none trained on.",
        f"- {len(result.arms)} arms x {int(np.prod(result.images.shape[:2]))} images = "
        f"{int(np.prod(result.images.shape[:3]))} images (time, speed, MLflow run and registry version: `run.json`).",
    ]
    if result.notices:
        lines += ["", "## Notices", ""] + [f"- {n}" for n in result.notices]
    lines += ["", "## Pose x arm grids (first sets)", ""]
    for path in grids:
        lines += [f"![{path.stem}]({path.relative_to(result.out_dir).as_posix()})", ""]
    return "\n".join(lines) + "\n"


def write_outputs(result: EvaluationResult, params: Params) -> dict[str, Any]:
    """Everything under ``evaluate.out_dir``, each file written atomically; returns the metrics dict."""
    out = result.out_dir
    write_text_atomic(out / "drift.csv", _csv(result.drift_rows))
    write_text_atomic(out / "fidelity.csv", _csv(result.fidelity_rows))
    rows = frontier_rows(result)
    with atomic_path(out / "plots" / "frontier") as tmp:  # one CSV per adapter: DVC's plot draws one line each
        tmp.mkdir(parents=True)
        for adapter in dict.fromkeys(r["adapter"] for r in rows):
            (tmp / f"{adapter}.csv").write_text(_csv([r for r in rows if r["adapter"] == adapter]))
    write_frontier_plot(result, out / "plots" / "frontier.png", params.evaluate.promotion.metric)
    grids = write_grids(result, params, out / "grids")
    write_text_atomic(out / "report.md", report_markdown(result, params, grids))
    metrics = metrics_json(result, params)
    write_json_atomic(out / "metrics.json", metrics, sort_keys=False)
    write_json_atomic(out / "run.json", run_json(result), sort_keys=False)
    return metrics


def summary_markdown(metrics: Mapping[str, Any]) -> str:
    """Markdown of a ``metrics.json`` dict (the Prefect artifact and the CLI): verdict, gate, arms."""
    v = metrics.get("verdict", {})
    lines = [f"**{v.get('text')}**", "", f"Gate: **{v.get('gate')}**", ""]
    for name, check in metrics.get("gate", {}).items():
        lines.append(f"- {'PASS' if check.get('pass') else 'FAIL'} {name}: bound {check.get('bound')} vs "
                     f"limit {check.get('limit')}")  # fmt: skip
    lines += ["", "| arm | drift | normalised fidelity |", "|---|---:|---:|"]
    for name, arm in metrics.get("arms", {}).items():
        lines.append(f"| {name} | {arm.get('drift')} | {arm.get('fidelity_norm')} |")
    return "\n".join(lines) + "\n"


__all__ = ["make_grid", "metrics_json", "run_json", "summary_markdown", "write_outputs"]
