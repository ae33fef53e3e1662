"""``posescene generate`` as a library call: prompts x seeds x poses x models -> PNGs, grids and index.json.

The CLI only parses options into a :class:`GenerateRequest`; everything else (collecting poses from JSON,
images or the lattices dataset, choosing the models, rendering maps with the training renderer, sampling
and writing the output directory atomically) lives here, so it is callable and testable without Typer.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
from PIL import Image

from posescene.config import Params
from posescene.data.detectors import make_detector
from posescene.data.poses import read_lattices
from posescene.errors import ConfigError, InputDataError
from posescene.evaluation.report import make_grid
from posescene.io import atomic_path, write_json_atomic
from posescene.sampling.maps import condition_maps
from posescene.sampling.pose import Pose, poses_from_images, poses_from_json, poses_from_lattice_rows
from posescene.sampling.sampler import STANDARD_MODELS, Job, ModelBank, ModelSpec, standard_spec


@dataclass(frozen=True)
class PoseSources:
    """Where the poses come from; every source is optional, their poses are concatenated in this order."""

    json_files: Sequence[Path] = ()  # keypoints JSON ({width, height, keypoints} or a list of them)
    images: Sequence[Path] = ()  # images whose most confident person gives the pose
    image_ids: Sequence[str] = ()  # image ids of rows in the lattices dataset
    lattices: Path | None = None  # the lattices dataset (None: params poses.out_dir)
    detector: str = "mediapipe"  # detector for ``images``


@dataclass(frozen=True)
class GenerateRequest:
    """What to generate. Sampler settings left ``None`` come from the params (``evaluate.*``)."""

    out_dir: Path
    prompts: Sequence[str]
    seeds: Sequence[int] = (0,)
    models: Sequence[str] = ("primary",)  # base | primary | secondary | both | an adapter directory
    poses: PoseSources = field(default_factory=PoseSources)
    secondary: Path | None = None  # None: <train.out_dir>/secondary_adapter
    both_weights: tuple[float, float] = (0.5, 0.5)  # MultiAdapter weights of primary, secondary for ``both``
    identity: Path | None = None  # LoRA / DreamBooth-style weights (local)
    identity_scale: float = 1.0
    steps: int | None = None
    guidance: float | None = None
    batch_size: int | None = None
    device: str | None = None


@dataclass(frozen=True)
class GenerateResult:
    out_dir: Path
    images: int
    models: int
    jobs: int

    def summary(self) -> str:
        return f"wrote {self.images} images ({self.models} model(s) x {self.jobs} jobs) to {self.out_dir}"


def _read_rgb(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except OSError as exc:
        raise InputDataError(f"{path}: not a readable image ({exc})") from None


def collect_poses(sources: PoseSources, params: Params) -> list[Pose]:
    """Every pose the sources name, normalised with ``poses.beta`` as the lattices stage does."""
    beta = params.poses.beta
    poses: list[Pose] = []
    for path in sources.json_files:
        poses += poses_from_json(path, beta)
    if sources.images:
        detector = make_detector(
            sources.detector,
            params.poses.weights,
            min_detection_confidence=params.poses.min_detection_confidence,
            min_presence_confidence=params.poses.min_presence_confidence,
            max_persons=params.poses.max_persons,
        )  # the poses stage's thresholds: a pose image is read as the lattices are
        try:
            arrays = [_read_rgb(path) for path in sources.images]
            labels = [path.stem for path in sources.images]
            poses += poses_from_images(arrays, detector, beta, params.poses.min_score, labels)
        finally:
            close = getattr(detector, "close", None)
            if close:  # mediapipe holds native resources until closed
                close()
    if sources.image_ids:
        table = read_lattices(sources.lattices or Path(params.poses.out_dir))
        for image_id in sources.image_ids:
            rows = table.filter(pc.equal(table.column("image_id"), image_id)).to_pylist()
            rows = [r for r in rows if r.get("has_person")]
            if not rows:
                raise InputDataError(f"image id {image_id}: no lattice row with a person")
            poses += poses_from_lattice_rows(rows[:1])
    return poses


def model_specs(request: GenerateRequest, params: Params) -> tuple[list[ModelSpec], dict[str, str]]:
    """The requested models (duplicates dropped) and the adapter directories they need, by key."""
    specs: list[ModelSpec] = []
    adapters: dict[str, str] = {}
    for name in dict.fromkeys(request.models):
        if name in STANDARD_MODELS:
            spec = standard_spec(name, request.both_weights)
        elif Path(name).exists():
            spec = ModelSpec(Path(name).name, (name,), (1.0,))
            adapters[name] = name
        else:
            raise ConfigError(f"model {name!r}: choose from {', '.join(STANDARD_MODELS)} or an adapter directory")
        specs.append(spec)
        for key in spec.adapters:
            if key == "primary":
                adapters[key] = params.model.primary_adapter
            elif key == "secondary":
                adapters[key] = str(request.secondary or Path(params.train.out_dir) / "secondary_adapter")
    return specs, adapters


def generate_images(request: GenerateRequest, params: Params, progress: bool = True) -> GenerateResult:
    """Generate every (prompt, seed, pose) job with every model into ``request.out_dir`` (replaced atomically).

    Writes ``<model>/p<k>_s<seed>_pose<j>.png``, one grid per (prompt, seed) (rows: models, columns: poses)
    and ``index.json``. Every pose and model of one (prompt, seed) starts from the same initial noise.
    """
    if not request.prompts:
        raise ConfigError("generate: give at least one prompt")
    poses = collect_poses(request.poses, params)
    specs, adapters = model_specs(request, params)
    if any(s.uses_pose for s in specs) and not poses:
        raise ConfigError("adapter models need a pose: pass --pose-json, --pose-image or --image-id")

    bank = ModelBank(
        params.model.base,
        adapters,
        resolution=params.model.resolution,
        in_channels=params.model.adapter_in_channels,
        device=request.device or params.evaluate.device,
        identity=str(request.identity) if request.identity else None,
        identity_scale=request.identity_scale,
    )
    maps = partial(
        condition_maps,
        resolution=params.model.resolution,
        radius=params.render.radius,
        limbs=params.render.limbs,
        in_channels=params.model.adapter_in_channels,
        invert=params.model.adapter_invert,
    )
    seeds = list(request.seeds)
    pose_list: list[Pose | None] = list(poses) or [None]
    jobs = [Job(text, s, pose) for text in request.prompts for s in seeds for pose in pose_list]
    records = []
    with atomic_path(request.out_dir) as tmp:
        tmp.mkdir(parents=True)
        outputs: dict[str, np.ndarray] = {}
        for spec in specs:
            images = bank.generate(
                spec,
                jobs,
                steps=request.steps or params.evaluate.steps,
                guidance_scale=params.evaluate.guidance_scale if request.guidance is None else request.guidance,
                batch_size=request.batch_size or params.evaluate.batch_size,
                maps=maps,
                progress=progress,
            )
            outputs[spec.name] = images
            (tmp / spec.name).mkdir()
            for n, (job, image) in enumerate(zip(jobs, images, strict=True)):
                k, rest = divmod(n, len(seeds) * len(pose_list))
                j = rest % len(pose_list)
                name = f"{spec.name}/p{k}_s{job.seed}_pose{j}.png"
                Image.fromarray(image).save(tmp / name)
                records.append(
                    {"file": name, "model": spec.name, "prompt": job.prompt, "seed": job.seed, "pose": j,
                     "pose_label": job.pose.label if job.pose else None}
                )  # fmt: skip
        per = len(pose_list)
        labels = [q.label if q else "-" for q in pose_list]
        for k, text in enumerate(request.prompts):
            for si, s in enumerate(seeds):
                start = (k * len(seeds) + si) * per
                rows = [(name, list(images[start : start + per])) for name, images in outputs.items()]
                make_grid(rows, labels, title=f"{text} (seed {s})").save(tmp / f"grid_p{k}_s{s}.png")
        write_json_atomic(tmp / "index.json", records)
    return GenerateResult(Path(request.out_dir), len(records), len(specs), len(jobs))
