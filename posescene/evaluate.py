"""Stage ``evaluate``: scene drift across poses, pose fidelity, text alignment, and the promotion gate.

What is measured (METHOD.md "What better means"; the metric definitions are in :mod:`posescene.metrics`):

- Held-out prompts and poses: captions of held-out images (``data/pairs.parquet`` split ``heldout``;
  scene kinds from the ingest manifest), round-robin over scene kinds, and held-out pose lattices
  (``data/lattices``), preferring distinct actions so the pose set really moves the person.
- For every prompt x seed, one image per pose from the **same initial noise**, for every model
  (base, primary, secondary, optionally both and ablation adapters): same prompts, poses and seeds.
- Drift of a (prompt, seed) set = mean over its pose pairs of the distance outside the union of the
  set's person regions; the model's drift is the mean over sets with a percentile-bootstrap CI that
  resamples sets (the independent units). Pixel RMSE, 1 - SSIM, and LPIPS when local weights exist.
- Pose fidelity: PCK@alpha of the pose judge on each image against its conditioning keypoints, and
  the detection rate. The judge is the world's keypoint estimator for the built-in world (its ground
  truth tool), MediaPipe for real checkpoints (``evaluate.pose_judge``).
- Text alignment: the world's scene classifier (scene kind of the image = the caption's), and a CLIP
  score when ``evaluate.clip_model`` names a local CLIP directory.

Outputs in ``evaluate.out_dir`` (docs/architecture.md): ``metrics.json`` (DVC metrics, keys such as
``secondary.drift_rmse``), ``drift.csv``, ``fidelity.csv``, ``plots/``, ``grids/prompt_<k>.png`` and
``report.md``; all logged to one MLflow run.

The promotion gate (:func:`decide_promotion`) moves the registry alias ``champion`` to the version
aliased ``candidate`` only if its drift beats the primary adapter's (measured in this run) **and** the
current champion's (its drift stored as a version tag by an earlier evaluation) by the relative margin,
and its PCK is within the tolerance of the primary's. Requiring both drift comparisons is deliberate:
the champion's number comes from an earlier run, while the primary comparison is like for like.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
from PIL import Image, ImageDraw, ImageFont

from posescene import metrics
from posescene.config import EvaluateParams, Params
from posescene.errors import ConfigError, InputDataError, ModelLoadError
from posescene.generate import Job, ModelBank, ModelSpec, Pose, condition_maps, person_arrays, poses_from_lattice_rows
from posescene.generate import standard_spec as _standard_spec
from posescene.io import atomic_path, write_bytes_atomic, write_json_atomic, write_text_atomic

log = logging.getLogger(__name__)

MIN_POSE_POINTS = 8  # a held-out pose with fewer present points is too partial to judge fidelity on
CANDIDATE_ALIAS = "candidate"
CHAMPION_ALIAS = "champion"
TAG_PREFIX = "eval."

# --------------------------------------------------------------------------------------------------
# held-out prompts and poses


@dataclass(frozen=True)
class Prompt:
    """A held-out caption and what the judges expect of it."""

    prompt_id: int
    caption: str
    scene_kind: str | None
    image_id: str


@dataclass(frozen=True)
class HeldOut:
    prompts: list[Prompt]
    poses: list[Pose]
    beta: float


def _round_robin(items: list[Any], key: Callable[[Any], Any], n: int) -> list[Any]:
    """Up to ``n`` items, cycling over the groups of ``key`` in order of first appearance (diversity)."""
    groups: dict[Any, list[Any]] = {}
    for item in items:
        groups.setdefault(key(item), []).append(item)
    out: list[Any] = []
    queues = list(groups.values())
    while len(out) < n and any(queues):
        for q in queues:
            if q and len(out) < n:
                out.append(q.pop(0))
    return out


def select_heldout(
    pairs: pa.Table,
    manifest: pa.Table,
    lattices: pa.Table,
    n_prompts: int,
    n_poses: int,
    seed: int,
    beta: float,
) -> HeldOut:
    """Deterministic choice of held-out prompts and poses (see the module docstring)."""
    for table, cols, what in (
        (pairs, ("image_id", "caption", "split"), "pairs"),
        (manifest, ("image_id",), "manifest"),
        (lattices, ("image_id", "has_person", "x_norm", "y_norm", "width", "height"), "lattices"),
    ):
        missing = [c for c in cols if c not in table.column_names]
        if missing:
            raise InputDataError(f"{what} table lacks column(s) {missing}; see docs/architecture.md")
    held = pairs.filter(pc.equal(pairs.column("split"), "heldout")).select(["image_id", "caption"]).to_pylist()
    if not held:
        raise InputDataError("no held-out pairs (split == 'heldout'); raise pairs.heldout_fraction and rerun pairs")
    info = {
        r["image_id"]: r
        for r in manifest.select(
            [c for c in ("image_id", "scene_kind", "action") if c in manifest.column_names]
        ).to_pylist()
    }
    held_ids = {r["image_id"] for r in held}
    rng = np.random.default_rng([seed, 4])

    by_caption: dict[str, dict[str, Any]] = {}
    for r in sorted(held, key=lambda r: (r["caption"], r["image_id"])):
        by_caption.setdefault(r["caption"], r)
    captions = list(by_caption.values())
    captions = [captions[i] for i in rng.permutation(len(captions))]
    chosen = _round_robin(captions, lambda r: info.get(r["image_id"], {}).get("scene_kind"), n_prompts)
    if len(chosen) < n_prompts:
        log.warning("evaluate: only %d held-out captions for evaluate.n_prompts=%d", len(chosen), n_prompts)
    prompts = [
        Prompt(k, r["caption"], info.get(r["image_id"], {}).get("scene_kind"), r["image_id"])
        for k, r in enumerate(chosen)
    ]

    people = lattices.filter(pc.fill_null(lattices.column("has_person"), False)).to_pylist()
    rows = []
    for r in sorted(people, key=lambda r: (r["image_id"], r.get("person") or 0)):
        if r["image_id"] not in held_ids or r["x_norm"] is None:
            continue
        n_present = sum(x is not None and y is not None for x, y in zip(r["x_norm"], r["y_norm"], strict=True))
        if n_present >= MIN_POSE_POINTS:
            rows.append({**r, "action": info.get(r["image_id"], {}).get("action")})
    rows = [rows[i] for i in rng.permutation(len(rows))]
    pose_rows = _round_robin(rows, lambda r: r["action"], n_poses)
    if len(pose_rows) < 2:
        raise InputDataError(
            f"only {len(pose_rows)} held-out pose(s) with >= {MIN_POSE_POINTS} keypoints; drift needs at least 2"
        )
    if len(pose_rows) < n_poses:
        log.warning("evaluate: only %d held-out poses for evaluate.n_poses=%d", len(pose_rows), n_poses)
    return HeldOut(prompts, poses_from_lattice_rows(pose_rows), beta)


def load_heldout(params: Params) -> HeldOut:
    """Read pairs, manifest and lattices from the paths in ``params`` and select the held-out set."""
    from posescene.ingest import read_manifest
    from posescene.pairs import read_pairs
    from posescene.poses import read_lattices

    lattice_dir = Path(params.poses.out_dir)
    if not lattice_dir.exists():
        raise InputDataError(f"{lattice_dir}: no lattices. Run `posescene poses` (or `python -m flows.poses`) first.")
    lattices = read_lattices(lattice_dir)
    meta = lattices.schema.metadata or {}
    beta = float(meta[b"posescene.beta"]) if b"posescene.beta" in meta else params.poses.beta
    return select_heldout(
        read_pairs(params.pairs.out),
        read_manifest(params.ingest.out_dir),
        lattices,
        params.evaluate.n_prompts,
        params.evaluate.n_poses,
        params.seed,
        beta,
    )


# --------------------------------------------------------------------------------------------------
# judges


Persons = list[tuple[np.ndarray, np.ndarray | None]]


class PoseJudge(Protocol):
    """Keypoints of the people in generated images: per image a list of ((18, 2) pixels, (18,) scores)."""

    name: str

    def predict(self, images: np.ndarray) -> list[Persons]: ...


class SceneJudge(Protocol):
    """The scene kind of each generated image."""

    name: str

    def predict(self, images: np.ndarray) -> list[str]: ...


def _load_world_judge(path: Path, class_name: str, device: torch.device) -> Any:
    from posescene import judges

    if not (path / "config.json").exists():
        raise ModelLoadError(
            f"{path}: the built-in world's {class_name} is missing. It ships with the repo (models/world); "
            "restore it with git, or retrain the world: dvc unfreeze bootstrap && dvc repro bootstrap."
        )
    try:
        model = getattr(judges, class_name).from_pretrained(path, use_safetensors=True)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"{path}: could not load the {class_name}: {exc}") from exc
    return model.to(device).eval()


class WorldPoseJudge:
    """The world's keypoint estimator (``models/world/keypoint_estimator``): one person per image."""

    name = "world keypoint estimator"

    def __init__(self, path: str | Path, device: torch.device) -> None:
        self.model = _load_world_judge(Path(path), "KeypointEstimator", device)

    def predict(self, images: np.ndarray) -> list[Persons]:
        from posescene.judges import predict_keypoints

        xy, scores = predict_keypoints(self.model, images)
        return [[(xy[i], scores[i])] for i in range(len(images))]


class DetectorPoseJudge:
    """A ``posescene.detectors`` detector (MediaPipe for real checkpoints), run over the images in batches."""

    def __init__(self, name: str, weights: str | None, batch_size: int = 64) -> None:
        from posescene.generate import make_pose_detector

        self.name = name
        self.detector = make_pose_detector(name, weights)
        self.batch_size = batch_size

    def predict(self, images: np.ndarray) -> list[Persons]:
        out: list[Persons] = []
        for start in range(0, len(images), self.batch_size):
            batch = [np.ascontiguousarray(im) for im in images[start : start + self.batch_size]]
            out += [[person_arrays(p) for p in persons] for persons in self.detector.detect(batch)]
        return out


class WorldSceneJudge:
    """The world's scene classifier (``models/world/scene_classifier``)."""

    name = "world scene classifier"

    def __init__(self, path: str | Path, device: torch.device) -> None:
        self.model = _load_world_judge(Path(path), "SceneClassifier", device)

    def predict(self, images: np.ndarray) -> list[str]:
        from posescene.judges import predict_scene

        return predict_scene(self.model, images)


class ClipScorer:
    """CLIP score (100 x cosine of image and text embeddings) with a local ``transformers`` CLIP directory."""

    def __init__(self, path: str | Path, device: torch.device) -> None:
        from transformers import AutoProcessor, CLIPModel

        path = Path(path)
        if not path.exists():
            raise ModelLoadError(f"evaluate.clip_model {path}: no such directory (CLIP is never downloaded)")
        try:
            self.model = CLIPModel.from_pretrained(path, local_files_only=True).to(device).eval()
            self.processor = AutoProcessor.from_pretrained(path, local_files_only=True)
        except (OSError, ValueError) as exc:
            raise ModelLoadError(f"evaluate.clip_model {path}: not a loadable CLIP directory: {exc}") from exc
        self.device = device

    @torch.no_grad()
    def score(self, images: np.ndarray, captions: Sequence[str], batch_size: int = 64) -> np.ndarray:
        out = []
        for s in range(0, len(images), batch_size):
            batch = self.processor(
                text=list(captions[s : s + batch_size]),
                images=[Image.fromarray(im) for im in images[s : s + batch_size]],
                return_tensors="pt",
                padding=True,
                truncation=True,
            ).to(self.device)
            img = self.model.get_image_features(pixel_values=batch["pixel_values"])
            txt = self.model.get_text_features(input_ids=batch["input_ids"], attention_mask=batch.get("attention_mask"))
            img = img / img.norm(dim=-1, keepdim=True)
            txt = txt / txt.norm(dim=-1, keepdim=True)
            out.append((100.0 * (img * txt).sum(-1)).clamp(min=0).cpu().numpy())
        return np.concatenate(out) if out else np.zeros(0)


def load_lpips(path: str | Path, device: torch.device) -> Callable[[np.ndarray, np.ndarray], float]:
    """A perceptual distance from a local TorchScript file (``torch.jit.save`` of an LPIPS module).

    The module is called as ``f(x, y)`` with (1, 3, H, W) images in [-1, 1] (LPIPS's convention) and
    returns the distance (any shape, averaged). TorchScript keeps the file self-contained: no backbone
    weights are fetched at load time, and nothing is ever downloaded.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"evaluate.lpips_weights {path}: no such file (LPIPS weights are never downloaded)")
    try:
        module = torch.jit.load(str(path), map_location=device).eval()
    except (RuntimeError, ValueError) as exc:
        raise ModelLoadError(f"evaluate.lpips_weights {path}: not a TorchScript LPIPS module: {exc}") from exc

    def distance(a: np.ndarray, b: np.ndarray) -> float:
        ta = torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)).permute(2, 0, 1)[None] * 2 - 1
        tb = torch.from_numpy(np.ascontiguousarray(b, dtype=np.float32)).permute(2, 0, 1)[None] * 2 - 1
        with torch.no_grad():
            return float(module(ta.to(device), tb.to(device)).float().mean())

    return distance


def is_builtin_world(params: Params) -> bool:
    """True when the base model is the assembled built-in world (then its judges apply)."""
    return Path(params.model.base).resolve() == Path(params.world.pipeline_dir).resolve()


def make_judges(params: Params, device: torch.device, notices: list[str]) -> tuple[PoseJudge | None, SceneJudge | None]:
    """The pose and scene judges ``evaluate.pose_judge`` / ``scene_judge`` ask for ("auto": by base model)."""
    ev = params.evaluate
    world = is_builtin_world(params)
    shipped = Path(params.world.shipped_dir)
    pose_choice = ("world" if world else "mediapipe") if ev.pose_judge == "auto" else ev.pose_judge
    scene_choice = ("world" if world else "none") if ev.scene_judge == "auto" else ev.scene_judge
    pose: PoseJudge | None = None
    if pose_choice == "world":
        pose = WorldPoseJudge(shipped / "keypoint_estimator", device)
    elif pose_choice != "none":
        pose = DetectorPoseJudge(pose_choice, ev.pose_judge_weights)
    else:
        notices.append("pose fidelity not measured (evaluate.pose_judge: none)")
    scene: SceneJudge | None = None
    if scene_choice == "world":
        scene = WorldSceneJudge(shipped / "scene_classifier", device)
    elif ev.clip_model is None:
        notices.append("scene accuracy not measured: no scene judge for this base model and no evaluate.clip_model")
    return pose, scene


# --------------------------------------------------------------------------------------------------
# the run


@dataclass
class ModelResult:
    """Everything measured for one model."""

    name: str
    images: np.ndarray  # (N, res, res, 3) uint8, job order: prompt, seed, pose
    seconds: float
    drift_rows: list[dict[str, Any]] = field(default_factory=list)
    fidelity_rows: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, float] = field(default_factory=dict)


@dataclass
class Promotion:
    """The gate's outcome: ``promoted`` | ``rejected`` | ``no_candidate`` | ``not_evaluated``."""

    status: str
    reasons: list[str]
    candidate_version: str | None = None
    candidate_run_id: str | None = None
    champion_before: str | None = None

    @property
    def promoted(self) -> bool:
        return self.status == "promoted"

    def as_metrics(self) -> dict[str, Any]:
        return {
            "promoted": int(self.promoted),
            "status": self.status,
            "candidate_version": self.candidate_version,
            "reason": "; ".join(self.reasons),
        }


@dataclass
class EvaluationResult:
    models: dict[str, ModelResult]
    heldout: HeldOut
    promotion: Promotion
    notices: list[str]
    out_dir: Path
    mlflow_run_id: str | None
    tracking_uri: str
    seconds: float

    @property
    def metrics(self) -> dict[str, Any]:
        return metrics_json(self)


def model_specs(params: Params) -> tuple[list[ModelSpec], dict[str, str]]:
    """The models to compare and the adapter directories the bank must load for them."""
    ev = params.evaluate
    specs = [_standard_spec(name, ev.both_weights) for name in dict.fromkeys(ev.models)]
    adapters: dict[str, str] = {}
    secondary = str(Path(params.train.out_dir) / "secondary_adapter")
    for spec in specs:
        for key in spec.adapters:
            adapters[key] = params.model.primary_adapter if key == "primary" else secondary
    for run in ev.ablations:
        if run.name in {s.name for s in specs}:
            raise ConfigError(f"evaluate.ablations: name {run.name!r} is already a model; choose another name")
        key = f"ablation:{run.name}"
        adapters[key] = run.adapter
        specs.append(ModelSpec(run.name, (key,), (1.0,)))
    for key, path in adapters.items():
        if key != "primary" and not Path(path).exists():
            what = "the secondary adapter" if key == "secondary" else f"ablation adapter {key.split(':', 1)[1]!r}"
            raise ModelLoadError(f"{path}: {what} does not exist. Train it first (`python -m flows.train`).")
    return specs, adapters


def _jobs(heldout: HeldOut, seeds: Sequence[int]) -> tuple[list[Job], list[tuple[int, int, int]]]:
    jobs, index = [], []
    for prompt in heldout.prompts:
        for seed in seeds:
            for j, pose in enumerate(heldout.poses):
                jobs.append(Job(prompt.caption, int(seed), pose))
                index.append((prompt.prompt_id, int(seed), j))
    return jobs, index


def _measure_drift(
    result: ModelResult,
    heldout: HeldOut,
    seeds: Sequence[int],
    scene: np.ndarray,
    perceptual: Callable[[np.ndarray, np.ndarray], float] | None,
) -> dict[str, list[float]]:
    """Per (prompt, seed) set: pairwise drift rows, and the set means (the bootstrap units)."""
    n_poses = len(heldout.poses)
    units: dict[str, list[float]] = {"rmse": [], "one_minus_ssim": [], "lpips": []}
    k = 0
    for prompt in heldout.prompts:
        for seed in seeds:
            images = list(result.images[k : k + n_poses])
            k += n_poses
            pairs = metrics.pairwise_drift(images, scene, perceptual)
            for p in pairs:
                row = {
                    "model": result.name,
                    "prompt_id": prompt.prompt_id,
                    "seed": seed,
                    "pose_i": p.i,
                    "pose_j": p.j,
                    "rmse": p.rmse,
                    "one_minus_ssim": p.one_minus_ssim,
                }
                if perceptual is not None:
                    row["lpips"] = p.perceptual
                result.drift_rows.append(row)
            units["rmse"].append(metrics.nanmean([p.rmse for p in pairs]))
            units["one_minus_ssim"].append(metrics.nanmean([p.one_minus_ssim for p in pairs]))
            if perceptual is not None:
                units["lpips"].append(metrics.nanmean([p.perceptual or math.nan for p in pairs]))
    return units


def _measure_fidelity(
    result: ModelResult,
    index: Sequence[tuple[int, int, int]],
    heldout: HeldOut,
    ev: EvaluateParams,
    resolution: int,
    pose_judge: PoseJudge | None,
    scene_judge: SceneJudge | None,
    clip: ClipScorer | None,
) -> None:
    prompts = {p.prompt_id: p for p in heldout.prompts}
    targets = [pose.keypoints_at(resolution, heldout.beta) for pose in heldout.poses]
    persons = pose_judge.predict(result.images) if pose_judge is not None else None
    scenes = scene_judge.predict(result.images) if scene_judge is not None else None
    clip_scores = clip.score(result.images, [prompts[pid].caption for pid, _, _ in index]) if clip is not None else None
    for n, (pid, seed, j) in enumerate(index):
        row: dict[str, Any] = {
            "model": result.name,
            "prompt_id": pid,
            "seed": seed,
            "pose_i": j,
            "pose": heldout.poses[j].label,
        }
        if persons is not None:
            best, value = metrics.best_match(persons[n], targets[j], ev.pck_alpha, ev.min_score)
            kp, sc = persons[n][best] if best >= 0 else (None, None)
            row["pck"] = value
            row["detected"] = int(metrics.is_detected(sc, kp, ev.min_score, ev.min_points))
        if scenes is not None:
            row["scene_expected"] = prompts[pid].scene_kind
            row["scene_predicted"] = scenes[n]
            row["scene_match"] = None if prompts[pid].scene_kind is None else int(scenes[n] == prompts[pid].scene_kind)
        if clip_scores is not None:
            row["clip_score"] = float(clip_scores[n])
        result.fidelity_rows.append(row)


def _summarise(
    result: ModelResult, units: Mapping[str, list[float]], ev: EvaluateParams, seed: int, scene_fraction: float
) -> None:
    s: dict[str, float] = {}
    for key, name in (("rmse", "drift_rmse"), ("one_minus_ssim", "drift_ssim"), ("lpips", "drift_lpips")):
        if not units.get(key):
            continue
        est = metrics.bootstrap_ci(units[key], ev.bootstrap_samples, seed)
        s[name] = est.mean
        s[f"{name}_ci_low"] = est.low
        s[f"{name}_ci_high"] = est.high
    rows = result.fidelity_rows
    if rows and "pck" in rows[0]:
        s["pck"] = metrics.nanmean([r["pck"] for r in rows])
        s["detection_rate"] = metrics.nanmean([r["detected"] for r in rows])
    if rows and "scene_match" in rows[0]:
        s["scene_accuracy"] = metrics.scene_accuracy(
            [r["scene_predicted"] for r in rows], [r["scene_expected"] for r in rows]
        )
    if rows and "clip_score" in rows[0]:
        s["clip_score"] = metrics.nanmean([r["clip_score"] for r in rows])
    s["images_per_s"] = len(result.images) / result.seconds if result.seconds > 0 else math.nan
    s["n_images"] = float(len(result.images))
    s["scene_fraction"] = scene_fraction
    result.summary = s


def evaluate(
    params: Params,
    *,
    pose_judge: PoseJudge | None | str = "params",
    scene_judge: SceneJudge | None | str = "params",
    progress: bool = True,
) -> EvaluationResult:
    """Run the whole stage: generate, measure, gate, write ``evaluate.out_dir`` and log to MLflow.

    ``pose_judge`` / ``scene_judge``: ``"params"`` builds them from params (the normal case); tests and
    notebooks may pass their own objects (or ``None`` to skip).

    Everything that can fail for a bad configuration or a missing input (adapters, held-out data, base
    model, judges, CLIP/LPIPS files, the tracking store) is checked *before* the first image is generated,
    so a mistake costs seconds, not a whole generation run.
    """
    start = time.perf_counter()
    ev = params.evaluate
    notices: list[str] = []
    specs, adapter_dirs = model_specs(params)
    heldout = load_heldout(params)
    res = params.model.resolution

    bank = ModelBank(
        params.model.base,
        adapter_dirs,
        resolution=res,
        in_channels=params.model.adapter_in_channels,
        device=ev.device,
    )
    pose: PoseJudge | None = None if pose_judge == "params" else pose_judge  # type: ignore[assignment]
    scene_j: SceneJudge | None = None if scene_judge == "params" else scene_judge  # type: ignore[assignment]
    if pose_judge == "params" or scene_judge == "params":
        made_pose, made_scene = make_judges(params, bank.device, notices)
        pose = made_pose if pose_judge == "params" else pose
        scene_j = made_scene if scene_judge == "params" else scene_j
    clip = ClipScorer(ev.clip_model, bank.device) if ev.clip_model else None
    if clip is None:
        notices.append("CLIP score skipped: evaluate.clip_model is not set (CLIP weights are never downloaded)")
    perceptual = load_lpips(ev.lpips_weights, bank.device) if ev.lpips_weights else None
    if perceptual is None:
        notices.append("LPIPS drift skipped: evaluate.lpips_weights is not set (LPIPS weights are never downloaded)")

    targets = [p.keypoints_at(res, heldout.beta) for p in heldout.poses]
    scene = ~metrics.person_mask(targets, (res, res), ev.mask_margin)
    scene_fraction = float(scene.mean())
    if not scene.any():
        raise ConfigError(
            f"the union of the {len(heldout.poses)} held-out person regions covers the whole image, so there is no "
            "scene left to measure drift on; lower evaluate.n_poses or evaluate.mask_margin"
        )
    if scene_fraction < 0.2:
        notices.append(
            f"the scene outside the union of the person regions is only {scene_fraction:.0%} of the image; "
            "drift is measured on few pixels (lower evaluate.n_poses or evaluate.mask_margin)"
        )

    uri = tracking_uri(params)
    client, run_id = _start_mlflow_run(params, uri)
    try:
        maps = partial(
            condition_maps,
            resolution=res,
            radius=params.render.radius,
            limbs=params.render.limbs,
            in_channels=params.model.adapter_in_channels,
            invert=params.model.adapter_invert,
        )
        jobs, index = _jobs(heldout, ev.seeds)
        results: dict[str, ModelResult] = {}
        for spec in specs:
            # warm-up (one image, one step) so that one-off kernel/allocator set-up is not billed to a model
            bank.generate(
                spec, jobs[:1], steps=1, guidance_scale=ev.guidance_scale, batch_size=1, maps=maps, progress=False
            )
            t0 = time.perf_counter()
            images = bank.generate(
                spec,
                jobs,
                steps=ev.steps,
                guidance_scale=ev.guidance_scale,
                batch_size=ev.batch_size,
                maps=maps,
                progress=progress,
            )
            results[spec.name] = ModelResult(spec.name, images, time.perf_counter() - t0)
            log.info("evaluate: %s: %d images in %.1f s", spec.name, len(images), results[spec.name].seconds)

        for result in results.values():
            units = _measure_drift(result, heldout, ev.seeds, scene, perceptual)
            _measure_fidelity(result, index, heldout, ev, res, pose, scene_j, clip)
            _summarise(result, units, ev, params.seed, scene_fraction)
        for notice in notices:
            log.warning("evaluate: %s", notice)

        promotion = run_promotion_gate(
            client, params, {n: r.summary for n, r in results.items()}, run_id=run_id, train_dir=params.train.out_dir
        )
        result = EvaluationResult(
            results, heldout, promotion, notices, Path(ev.out_dir), run_id, uri, time.perf_counter() - start
        )
        write_outputs(result, params)
        _finish_mlflow_run(client, run_id, result, params)
    except BaseException:
        client.set_terminated(run_id, status="FAILED")
        raise
    return result


# --------------------------------------------------------------------------------------------------
# MLflow and the promotion gate


def tracking_uri(params: Params) -> str:
    """The tracking/registry URI training registers into (:func:`posescene.tracking.resolve_tracking_uri`)."""
    from posescene.tracking import resolve_tracking_uri

    return resolve_tracking_uri(params.mlflow.tracking_uri)


def _client(uri: str) -> Any:
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def _experiment_id(client: Any, name: str, uri: str) -> str:
    from posescene.tracking import artifact_location

    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return str(exp.experiment_id)
    # artifacts beside the SQLite store (as training does), never the cwd-relative ./mlruns default
    return str(client.create_experiment(name, artifact_location=artifact_location(uri, name)))


def _start_mlflow_run(params: Params, uri: str) -> tuple[Any, str]:
    """A new MLflow run for this evaluation (started before generating, so a bad tracking URI fails early)."""
    from mlflow.exceptions import MlflowException

    try:
        client = _client(uri)
        run = client.create_run(
            _experiment_id(client, params.mlflow.experiment, uri),
            run_name="evaluate",
            tags={"posescene.stage": "evaluate"},
        )
    except (MlflowException, OSError) as exc:  # OSError: a SQLite store whose directory cannot be created
        raise ConfigError(
            f"MLflow tracking at {uri!r} is unusable ({exc}). Fix mlflow.tracking_uri in params.yaml or "
            "MLFLOW_TRACKING_URI, or set both to null/unset for the embedded store (sqlite:///mlflow.db)."
        ) from exc
    return client, run.info.run_id


def _flat_params(params: Params) -> dict[str, str]:
    out: dict[str, str] = {}
    for section in ("evaluate", "model", "render"):
        for key, value in getattr(params, section).model_dump(mode="json").items():
            out[f"{section}.{key}"] = json.dumps(value) if isinstance(value, dict | list) else str(value)
    return out


def flat_metrics(models: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    """``{"secondary.drift_rmse": ...}`` for finite numbers only (MLflow and DVC key style)."""
    return {
        f"{name}.{key}": float(value)
        for name, summary in models.items()
        for key, value in summary.items()
        if isinstance(value, int | float) and math.isfinite(value)
    }


def _finish_mlflow_run(client: Any, run_id: str, result: EvaluationResult, params: Params) -> None:
    from mlflow.entities import Metric, Param

    now = int(time.time() * 1000)
    flat = flat_metrics({n: r.summary for n, r in result.models.items()})
    flat["promotion.promoted"] = float(result.promotion.promoted)
    client.log_batch(
        run_id,
        metrics=[Metric(k, v, now, 0) for k, v in flat.items()],
        params=[Param(k, v[:6000]) for k, v in _flat_params(params).items()],
    )
    client.set_tag(run_id, "posescene.promotion", result.promotion.status)
    client.log_artifacts(run_id, str(result.out_dir))
    client.set_terminated(run_id, status="FINISHED")


def decide_promotion(
    candidate: Mapping[str, float],
    primary: Mapping[str, float],
    champion: Mapping[str, float] | None,
    metric: str,
    drift_margin: float,
    fidelity_tolerance: float,
    champion_label: str = "champion",
) -> tuple[bool, list[str]]:
    """Pure gate: (promote?, one reason per check, each saying pass/fail with the numbers)."""
    reasons: list[str] = []
    ok = True

    def beats(name: str, reference: float | None) -> None:
        nonlocal ok
        cand = candidate.get(metric, math.nan)
        if reference is None or not math.isfinite(reference):
            return
        limit = reference * (1.0 - drift_margin)
        passed = math.isfinite(cand) and cand < limit
        change = (cand - reference) / reference * 100 if reference else math.nan
        reasons.append(
            f"{'PASS' if passed else 'FAIL'} drift: {metric} {cand:.4f} vs {name} {reference:.4f} "
            f"({change:+.1f}%; needs < {limit:.4f}, margin {drift_margin:.0%})"
        )
        ok &= passed

    beats("primary", primary.get(metric))
    if not math.isfinite(primary.get(metric, math.nan)):
        reasons.append(f"FAIL drift: the primary adapter's {metric} was not measured")
        ok = False
    if champion is not None:
        beats(champion_label, champion.get(metric))
    cand_pck, prim_pck = candidate.get("pck", math.nan), primary.get("pck", math.nan)
    if not (math.isfinite(cand_pck) and math.isfinite(prim_pck)):
        reasons.append("FAIL fidelity: pose fidelity (PCK) was not measured, so it cannot be checked")
        ok = False
    else:
        passed = cand_pck >= prim_pck - fidelity_tolerance
        reasons.append(
            f"{'PASS' if passed else 'FAIL'} fidelity: PCK {cand_pck:.3f} vs primary {prim_pck:.3f} "
            f"(allowed drop {fidelity_tolerance:.3f})"
        )
        ok &= passed
    return ok, reasons


def _version_metrics(version: Any) -> dict[str, float]:
    out = {}
    for key, value in (version.tags or {}).items():
        if key.startswith(TAG_PREFIX):
            try:
                out[key[len(TAG_PREFIX) :]] = float(value)
            except ValueError:
                continue
    return out


def _trained_run_id(train_dir: str | Path) -> str | None:
    """The MLflow run id the training stage recorded in ``build/train/run.json`` (or metrics.json), if any."""
    for name in ("run.json", "metrics.json"):
        try:
            data = json.loads((Path(train_dir) / name).read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if isinstance(data, dict):
            for key in ("mlflow_run_id", "run_id"):
                if isinstance(data.get(key), str):
                    return data[key]
    return None


def run_promotion_gate(
    client: Any,
    params: Params,
    summaries: Mapping[str, Mapping[str, float]],
    *,
    run_id: str | None = None,
    train_dir: str | Path | None = None,
) -> Promotion:
    """Tag the registered ``candidate`` with this evaluation and move ``champion`` to it if it passes."""
    from mlflow.exceptions import MlflowException

    name = params.mlflow.registered_model
    promo = params.evaluate.promotion
    try:
        candidate = client.get_model_version_by_alias(name, CANDIDATE_ALIAS)
    except MlflowException:
        return Promotion(
            "no_candidate",
            [f"the registry has no version of {name!r} aliased {CANDIDATE_ALIAS!r} (was training run without "
             "MLflow?); no alias changed"],
        )  # fmt: skip
    try:
        champion = client.get_model_version_by_alias(name, CHAMPION_ALIAS)
    except MlflowException:
        champion = None
    version = str(candidate.version)
    champion_before = None if champion is None else str(champion.version)
    if "secondary" not in summaries or "primary" not in summaries:
        return Promotion(
            "not_evaluated",
            ["evaluate.models must include primary and secondary for the gate; no alias changed"],
            version,
            candidate.run_id,
            champion_before,
        )
    cand = summaries["secondary"]
    for key, value in cand.items():
        if isinstance(value, float) and math.isfinite(value):
            client.set_model_version_tag(name, version, f"{TAG_PREFIX}{key}", f"{value:.6g}")
    if run_id:
        client.set_model_version_tag(name, version, f"{TAG_PREFIX}run_id", run_id)
    reference = None
    if champion is not None and str(champion.version) != version:
        reference = _version_metrics(champion)
        if promo.metric not in reference:
            reference = None  # a champion never evaluated by this stage: nothing to compare with
    promote, reasons = decide_promotion(
        cand,
        summaries["primary"],
        reference,
        promo.metric,
        promo.drift_margin,
        promo.fidelity_tolerance,
        champion_label=f"champion v{champion_before}",
    )
    trained = _trained_run_id(train_dir) if train_dir else None
    if trained and candidate.run_id and trained != candidate.run_id:
        promote = False
        reasons.append(
            f"FAIL identity: the candidate v{version} comes from run {candidate.run_id}, but the adapter evaluated "
            f"here was trained in run {trained}"
        )
    status = "promoted" if promote else "rejected"
    client.set_model_version_tag(name, version, f"{TAG_PREFIX}decision", status)
    if promote:
        client.set_registered_model_alias(name, CHAMPION_ALIAS, version)
    return Promotion(status, reasons, version, candidate.run_id, champion_before)


# --------------------------------------------------------------------------------------------------
# outputs


def metrics_json(result: EvaluationResult) -> dict[str, Any]:
    """The DVC metrics file: one flat-ish section per model, plus the promotion decision."""

    def clean(v: float) -> float | None:
        return round(float(v), 6) if isinstance(v, int | float) and math.isfinite(v) else None

    out: dict[str, Any] = {n: {k: clean(v) for k, v in r.summary.items()} for n, r in result.models.items()}
    out["promotion"] = result.promotion.as_metrics()
    n_images = sum(len(r.images) for r in result.models.values())
    generation_s = sum(r.seconds for r in result.models.values())
    out["run"] = {
        "n_prompts": len(result.heldout.prompts),
        "n_poses": len(result.heldout.poses),
        "n_images": n_images,
        # generation throughput over all models (warm-up excluded); the judges and metrics are in seconds
        "images_per_s": round(n_images / generation_s, 3) if generation_s > 0 else None,
        "seconds": round(result.seconds, 1),
        "mlflow_run_id": result.mlflow_run_id,
    }
    return out


def _csv(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
    return buf.getvalue()


def _columns(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    cols: dict[str, None] = {}
    for row in rows:
        cols.update(dict.fromkeys(row))
    return list(cols)


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
    label_w, top = 90, 36 if title else 18
    all_rows = ([("pose map", header)] if header is not None else []) + list(rows)
    grid = Image.new("RGB", (label_w + n_cols * cell, top + len(all_rows) * (cell + 4)), "white")
    draw = ImageDraw.Draw(grid)
    if title:
        draw.text((4, 2), title[:110], fill="black", font=font)
    for c, label in enumerate(column_labels):
        draw.text((label_w + c * cell + 4, top - 16), str(label)[:18], fill="black", font=font)
    for r, (label, images) in enumerate(all_rows):
        y = top + r * (cell + 4)
        draw.text((4, y + cell // 2 - 6), label[:14], fill="black", font=font)
        for c, image in enumerate(images):
            tile = Image.fromarray(np.asarray(image)).convert("RGB").resize((cell, cell), Image.Resampling.NEAREST)
            grid.paste(tile, (label_w + c * cell, y))
    return grid


def _pose_label(pose: Pose) -> str:
    action = pose.meta.get("action") if pose.meta else None
    return str(action or pose.label)


def _write_grids(result: EvaluationResult, params: Params, grid_dir: Path) -> list[Path]:
    heldout = result.heldout
    n_poses, n_seeds = len(heldout.poses), len(params.evaluate.seeds)
    res = params.model.resolution
    maps = condition_maps(heldout.poses, res, params.render.radius, params.render.limbs, 1, False)
    header = [np.repeat((m[0].numpy() * 255).astype(np.uint8)[..., None], 3, axis=-1) for m in maps]
    labels = [_pose_label(p) for p in heldout.poses]
    paths = []
    with atomic_path(grid_dir) as tmp:
        tmp.mkdir(parents=True)
        for prompt in heldout.prompts:
            start = prompt.prompt_id * n_seeds * n_poses  # the first seed of this prompt
            rows = [(name, list(r.images[start : start + n_poses])) for name, r in result.models.items()]
            title = f"prompt {prompt.prompt_id} (seed {params.evaluate.seeds[0]}): {prompt.caption}"
            make_grid(rows, labels, header, title, cell=max(128, res)).save(tmp / f"prompt_{prompt.prompt_id}.png")
            paths.append(grid_dir / f"prompt_{prompt.prompt_id}.png")
    return paths


def _write_plot(result: EvaluationResult, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(result.models)
    panels = [
        ("drift_rmse", "drift: pixel RMSE (lower is better)"),
        ("drift_ssim", "drift: 1 - SSIM (lower is better)"),
    ]
    if any("pck" in r.summary for r in result.models.values()):
        panels.append(("pck", "pose fidelity: PCK (higher is better)"))
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.4))
    for ax, (key, label) in zip(np.atleast_1d(axes), panels, strict=True):
        values = np.array([result.models[n].summary.get(key, np.nan) for n in names])
        lo = np.array([result.models[n].summary.get(f"{key}_ci_low", np.nan) for n in names])
        hi = np.array([result.models[n].summary.get(f"{key}_ci_high", np.nan) for n in names])
        err = None
        if np.isfinite(lo).all() and np.isfinite(hi).all():
            err = np.vstack([values - lo, hi - values]).clip(min=0)
        colors = (["#999999", "#4477aa", "#ee6677", "#228833"] + ["#ccbb44"] * len(names))[: len(names)]
        ax.bar(names, np.nan_to_num(values), yerr=err, capsize=4, color=colors)
        ax.set_title(label, fontsize=9)
        ax.tick_params(axis="x", labelrotation=20, labelsize=8)
    fig.suptitle("scene drift across poses (95% bootstrap CI) and pose fidelity", fontsize=10)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    write_bytes_atomic(path, buf.getvalue())


def _fmt(v: Any, digits: int = 4) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    return f"{v:.{digits}f}" if isinstance(v, float) else str(v)


def report_markdown(result: EvaluationResult, params: Params, grids: Sequence[Path]) -> str:
    """The human summary: setup, metric table with CIs, the promotion decision and why, the grids."""
    ev = params.evaluate
    h = result.heldout
    lines = [
        "# posescene evaluation: scene drift across poses",
        "",
        f"{len(h.prompts)} held-out prompt(s) x {len(ev.seeds)} seed(s) x {len(h.poses)} held-out poses per model "
        f"({ev.steps} DDIM steps, guidance {ev.guidance_scale}, {params.model.resolution} px); every pose and "
        "every model of a (prompt, seed) starts from the same initial noise. Base model: "
        f"`{params.model.base}`.",
        "",
        "## Metrics",
        "",
        f"| model | drift RMSE [95% CI] | drift 1-SSIM [95% CI] | PCK@{ev.pck_alpha} | detection | scene acc. "
        "| images/s |",
        "|---|---|---|---:|---:|---:|---:|",
    ]
    for name, r in result.models.items():
        s = r.summary
        lines.append(
            f"| {name} | {_fmt(s.get('drift_rmse'))} [{_fmt(s.get('drift_rmse_ci_low'))}, "
            f"{_fmt(s.get('drift_rmse_ci_high'))}] | {_fmt(s.get('drift_ssim'))} [{_fmt(s.get('drift_ssim_ci_low'))}, "
            f"{_fmt(s.get('drift_ssim_ci_high'))}] | {_fmt(s.get('pck'), 3)} | {_fmt(s.get('detection_rate'), 3)} | "
            f"{_fmt(s.get('scene_accuracy', s.get('clip_score')), 3)} | {_fmt(s.get('images_per_s'), 2)} |"
        )
    if any("drift_lpips" in r.summary for r in result.models.values()):
        lines += ["", "LPIPS drift: " + ", ".join(
            f"{n} {_fmt(r.summary.get('drift_lpips'))}" for n, r in result.models.items()
        )]  # fmt: skip
    p = result.promotion
    verdict = {
        "promoted": f"**Promoted**: version {p.candidate_version} of `{params.mlflow.registered_model}` is now "
        f"`{CHAMPION_ALIAS}` (was {p.champion_before or 'none'}).",
        "rejected": f"**Not promoted**: version {p.candidate_version} stays `{CANDIDATE_ALIAS}`; `{CHAMPION_ALIAS}` "
        f"unchanged ({p.champion_before or 'none'}).",
        "no_candidate": "**No candidate**: nothing to promote; no alias changed.",
        "not_evaluated": "**Not evaluated**: the gate needs the primary and secondary models; no alias changed.",
    }[p.status]
    lines += ["", "## Promotion", "", verdict, ""]
    lines += [f"- {reason}" for reason in p.reasons]
    lines += [
        "",
        f"Gate: `{ev.promotion.metric}` lower than the primary adapter's and the current champion's by a relative "
        f"margin of {ev.promotion.drift_margin:.0%}, and PCK no more than {ev.promotion.fidelity_tolerance} below "
        "the primary's.",
        "",
        "## Definitions",
        "",
        f"- Drift: mean pairwise distance between the images of one (prompt, seed) set, outside the union of the "
        f"set's person regions (keypoint boxes grown by {ev.mask_margin:.0%} of their larger side; the scene is "
        f"{next(iter(result.models.values())).summary.get('scene_fraction', math.nan):.0%} of the image). "
        f"CI: percentile bootstrap over sets ({ev.bootstrap_samples} resamples).",
        f"- PCK@{ev.pck_alpha}: a conditioning keypoint is found when the judge places it within {ev.pck_alpha} x "
        "the larger side of the conditioning pose's box; detection: at least "
        f"{ev.min_points} points with score >= {ev.min_score}.",
        "",
        "![drift by model](plots/drift.png)",
    ]
    if result.notices:
        lines += ["", "## Notices", ""] + [f"- {n}" for n in result.notices]
    if result.mlflow_run_id:
        lines += ["", f"MLflow run `{result.mlflow_run_id}` at `{result.tracking_uri}`."]
    lines += ["", "## Pose x model grids", ""]
    for prompt, path in zip(h.prompts, grids, strict=True):
        lines += [f"**prompt {prompt.prompt_id}** ({prompt.scene_kind or 'unknown scene'}): {prompt.caption}", ""]
        lines += [f"![prompt {prompt.prompt_id}]({path.relative_to(result.out_dir).as_posix()})", ""]
    return "\n".join(lines) + "\n"


def write_outputs(result: EvaluationResult, params: Params) -> None:
    """Everything under ``evaluate.out_dir``, each file written atomically."""
    out = result.out_dir
    drift_rows = [row for r in result.models.values() for row in r.drift_rows]
    fid_rows = [row for r in result.models.values() for row in r.fidelity_rows]
    write_text_atomic(out / "drift.csv", _csv(drift_rows, _columns(drift_rows)))
    write_text_atomic(out / "fidelity.csv", _csv(fid_rows, _columns(fid_rows)))
    plot_rows = []
    for name, r in result.models.items():
        s = r.summary
        plot_rows.append({
            "model": name,
            "drift_rmse": s.get("drift_rmse"), "ci_low": s.get("drift_rmse_ci_low"),
            "ci_high": s.get("drift_rmse_ci_high"), "drift_ssim": s.get("drift_ssim"),
            "pck": s.get("pck"), "detection_rate": s.get("detection_rate"),
        })  # fmt: skip
    write_text_atomic(out / "plots" / "drift_by_model.csv", _csv(plot_rows, _columns(plot_rows)))
    _write_plot(result, out / "plots" / "drift.png")
    grids = _write_grids(result, params, out / "grids")
    write_text_atomic(out / "report.md", report_markdown(result, params, grids))
    write_json_atomic(out / "metrics.json", metrics_json(result))


def summary_markdown(summary: Mapping[str, Any]) -> str:
    """Markdown table of a ``metrics.json``-style dict (for the Prefect artifact and the CLI)."""
    models = {k: v for k, v in summary.items() if k not in ("promotion", "run") and isinstance(v, dict)}
    cols = ["drift_rmse", "drift_ssim", "pck", "detection_rate", "scene_accuracy", "images_per_s"]
    lines = ["| model | " + " | ".join(cols) + " |", "|---|" + "---:|" * len(cols)]
    for name, s in models.items():
        lines.append(f"| {name} | " + " | ".join(_fmt(s.get(c)) for c in cols) + " |")
    promo = summary.get("promotion", {})
    lines += ["", f"Promotion: **{promo.get('status')}** (candidate version {promo.get('candidate_version')})"]
    if promo.get("reason"):
        lines += ["", promo["reason"]]
    return "\n".join(lines) + "\n"


__all__ = [
    "ClipScorer",
    "EvaluationResult",
    "HeldOut",
    "Promotion",
    "Prompt",
    "decide_promotion",
    "evaluate",
    "flat_metrics",
    "load_heldout",
    "make_grid",
    "run_promotion_gate",
    "select_heldout",
    "summary_markdown",
    "tracking_uri",
]
