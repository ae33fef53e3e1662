"""Generation: prompt(s) + pose(s) + seed -> images (the patent's "any scene + any person + any pose").

Models: the base model alone (``StableDiffusionPipeline``), the primary adapter, the secondary adapter,
both (diffusers ``MultiAdapter`` with per-adapter weights), or any other adapter directory (ablations);
optional identity weights (LoRA / DreamBooth-style, ``pipe.load_lora_weights``). A :class:`ModelBank`
loads the base model and every adapter **once** and builds all pipelines from the same component
objects, so comparing four models costs one model load and the memory of one U-Net.

Determinism and comparability: the initial latent noise of a job depends only on its seed. It is drawn
on the CPU from ``torch.Generator().manual_seed(seed)`` for every (prompt, seed) job and passed to the
pipeline as ``latents=``, so (a) every pose and every model of one (prompt, seed) starts from the
*same* noise (the premise of the scene-drift metric: any difference comes from the pose conditioning),
(b) a seed gives the same image on CPU and GPU up to kernel arithmetic, and (c) a (prompt, seed) job
gives the same image whether it is generated alone or inside an evaluation batch (up to float
reassociation of batched kernels). DDIM with eta = 0 adds no further noise.

Conditioning maps are rendered exactly as for training: :func:`posescene.render.render_lattice` at the
pose's own map side u = min(w, h) with ``render.radius`` / ``render.limbs``, resized to the model
resolution with :func:`posescene.render.map_tensor` (min-pooling: no point vanishes), then put in the
adapter's input convention by :func:`posescene.models.prepare_adapter_input` (``model.adapter_invert``,
``model.adapter_in_channels``), the function training uses.
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    MultiAdapter,
    StableDiffusionAdapterPipeline,
    StableDiffusionPipeline,
    T2IAdapter,
)
from diffusers.pipelines.pipeline_utils import DiffusionPipeline
from tqdm.auto import tqdm

from posescene.devices import resolve_device
from posescene.errors import ConfigError, DetectorUnavailableError, InputDataError, ModelLoadError
from posescene.lattice import denormalise, normalise
from posescene.models import (
    FrozenBase,
    check_compatible,
    encode_prompts,
    load_adapter,
    load_base,
    prepare_adapter_input,
)
from posescene.shards import BatchStore, Progress, Shard, digest, weights_fingerprint
from posescene.topology import N_KEYPOINTS

STANDARD_MODELS = ("base", "primary", "secondary", "both")

# --------------------------------------------------------------------------------------------------
# poses


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


def make_pose_detector(
    name: str,
    weights: str | None,
    *,
    min_detection_confidence: float,
    min_presence_confidence: float,
    max_persons: int,
) -> Any:
    """The pose detector of ``posescene.detectors`` (ingest/poses stage), with a clear error if absent.

    The thresholds are MediaPipe's (``poses.*`` in params.yaml, as the poses stage reads the lattices).
    """
    try:
        from posescene.detectors import make_detector
    except ImportError as exc:
        raise DetectorUnavailableError(f"pose detector {name!r}: posescene.detectors is not available ({exc})") from exc
    return make_detector(
        name,
        weights,
        min_detection_confidence=min_detection_confidence,
        min_presence_confidence=min_presence_confidence,
        max_persons=max_persons,
    )


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


# --------------------------------------------------------------------------------------------------
# conditioning maps


def condition_maps(
    poses: Sequence[Pose], resolution: int, radius: int, limbs: bool, in_channels: int, invert: bool
) -> torch.Tensor:
    """Adapter inputs (N, in_channels, res, res) in [0, 1], rendered as for training (module docstring)."""
    from posescene.render import map_tensor, render_lattice

    maps = []
    for pose in poses:
        array = render_lattice(pose.x_norm, pose.y_norm, pose.side, radius=radius, limbs=limbs)
        t = map_tensor(array, resolution)
        maps.append(t)
    return prepare_adapter_input(torch.stack(maps), in_channels, invert).contiguous()


# --------------------------------------------------------------------------------------------------
# models


@dataclass(frozen=True)
class ModelSpec:
    """What generates: no adapter (base), one adapter, or several mixed by ``MultiAdapter`` weights."""

    name: str
    adapters: tuple[str, ...] = ()
    weights: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        if self.weights and len(self.weights) != len(self.adapters):
            raise ValueError(f"model {self.name!r}: {len(self.adapters)} adapters but {len(self.weights)} weights")

    @property
    def uses_pose(self) -> bool:
        return bool(self.adapters)


def standard_spec(name: str, both_weights: Sequence[float] = (0.5, 0.5)) -> ModelSpec:
    """``base`` | ``primary`` | ``secondary`` | ``both`` -> its spec (adapter keys in the :class:`ModelBank`)."""
    if name == "base":
        return ModelSpec("base")
    if name in ("primary", "secondary"):
        return ModelSpec(name, (name,), (1.0,))
    if name == "both":
        return ModelSpec("both", ("primary", "secondary"), tuple(float(w) for w in both_weights))
    raise ValueError(f"unknown model {name!r}; choose from {STANDARD_MODELS} or name an adapter directory")


SAMPLERS = ("ddim", "dpmsolver")
INJECTIONS = ("scale", "mask", "steps", "inpaint")


@dataclass(frozen=True)
class Injection:
    """How an arm's adapter features enter the U-Net: the training-free knobs a user already has.

    - ``scale``: the features times the arm's scale at every step (diffusers' ``adapter_conditioning_scale``);
      ``knob`` is unused.
    - ``mask``: the features times the pose's own person region grown by ``knob`` (a fraction of the side, as
      ``evaluate.mask_margin``), area-resized to every feature level: sd-webui-controlnet's
      ``effective_region_mask``, which diffusers lacks. A region covering the image is ``scale`` exactly.
    - ``steps``: the features added only during the first ``knob`` fraction of the denoising steps: the original
      T2I-Adapter's ``cond_tau`` (diffusers' SDXL ``adapter_conditioning_factor``). 1 is ``scale``, 0 the base.
    - ``inpaint``: the features as ``scale``, and outside the pose's person region (grown by ``knob``) the latent
      is replaced by the base model's latent of the same noise after every step (latent blending). Its drift
      outside the person regions is ~0 by construction: a bound to report, not a competitor.
    """

    kind: str = "scale"
    knob: float = 1.0

    def __post_init__(self) -> None:
        if self.kind not in INJECTIONS:
            raise ConfigError(f"injection {self.kind!r}: choose one of {', '.join(INJECTIONS)}")
        if self.kind == "steps" and not 0.0 <= self.knob <= 1.0:
            raise ConfigError(f"steps injection: the fraction of steps must be in [0, 1], got {self.knob}")
        if self.kind in ("mask", "inpaint") and self.knob < 0:
            raise ConfigError(f"{self.kind} injection: the region margin must be >= 0, got {self.knob}")

    @property
    def uses_region(self) -> bool:
        return self.kind in ("mask", "inpaint")


SCALE = Injection()


@dataclass(frozen=True)
class ArmJob:
    """One image of an evaluation: a prompt, an initial-noise seed, a pose, and the arm that draws it.

    ``adapter`` is a key of the bank's adapters (None: the base model) and ``scale`` its
    ``adapter_conditioning_scale`` (0 is the base model too). ``added``: further (adapter, scale) whose
    features are summed with it (``MultiAdapter``'s weighted sum: the ``both`` arm). ``injection``: how the
    summed features enter the U-Net (:class:`Injection`).
    """

    prompt: str
    seed: int
    pose: Pose | None
    adapter: str | None
    scale: float
    injection: Injection = SCALE
    added: tuple[tuple[str, float], ...] = ()

    @property
    def terms(self) -> list[tuple[str, float]]:
        """The (adapter, scale) whose features this row adds, zero scales left out."""
        own = [(self.adapter, self.scale)] if self.adapter is not None else []
        return [(a, float(s)) for a, s in [*own, *self.added] if s != 0]

    @property
    def is_base(self) -> bool:
        """The base model: no features at all (an inpaint row still follows the base outside the region)."""
        return not self.terms or (self.injection.kind == "steps" and self.injection.knob == 0)


def distinct_rows(jobs: Sequence[ArmJob]) -> tuple[list[ArmJob], np.ndarray]:
    """The jobs that need drawing, and for every job the index of its image among them.

    A base row (no adapter, or scale 0) does not depend on the pose, so the base rows of one (prompt, seed)
    are one image; every adapter row is its own.
    """
    slot: dict[tuple[object, ...], int] = {}
    unique: list[ArmJob] = []
    where = np.empty(len(jobs), dtype=np.int64)
    for i, job in enumerate(jobs):
        key = (job.prompt, job.seed) if job.is_base else ("row", i)
        if key not in slot:
            slot[key] = len(unique)
            unique.append(job)
        where[i] = slot[key]
    return unique, where


@dataclass(frozen=True)
class Job:
    """One image to generate: a prompt, a seed (-> its initial noise) and a pose (ignored by ``base``)."""

    prompt: str
    seed: int
    pose: Pose | None = None


class ModelBank:
    """The base model and the adapters, loaded once; pipelines for any :class:`ModelSpec` share them."""

    def __init__(
        self,
        base: str,
        adapters: Mapping[str, str],
        *,
        resolution: int,
        in_channels: int = 1,
        device: str,
        dtype: torch.dtype = torch.float32,
        identity: str | None = None,
        identity_scale: float = 1.0,
    ) -> None:
        self.device = resolve_device(device)
        self.dtype = dtype
        self.resolution = int(resolution)
        self.sources: dict[str, str] = {"base": str(base), **{k: str(v) for k, v in adapters.items()}}
        self._fingerprints: dict[str, str] = {}
        self.base: FrozenBase = load_base(base, dtype).freeze()
        for module in (self.base.vae, self.base.unet, self.base.text_encoder):
            module.to(self.device)  # dtype was set at load: .to(dtype=None) would warn for every module
        try:
            self.scheduler = DDIMScheduler.from_pretrained(base, subfolder="scheduler")
        except (OSError, ValueError) as exc:
            raise ModelLoadError(f"{base}: no scheduler config for DDIM sampling ({exc})") from exc
        self.adapters: dict[str, T2IAdapter] = {}
        for key, path in adapters.items():
            adapter = load_adapter(path, dtype)
            check_compatible(self.base, adapter, in_channels, self.resolution, where=f"{key} adapter {path}")
            adapter.requires_grad_(False).eval().to(self.device)
            self.adapters[key] = adapter
        self._pipelines: dict[tuple[tuple[str, ...], int], DiffusionPipeline] = {}
        self._text: dict[str, torch.Tensor] = {}
        self.cross_attention_kwargs: dict[str, float] | None = None
        if identity:
            self.load_identity(identity, identity_scale)

    # pipelines ------------------------------------------------------------------------------------

    def _components(self) -> dict[str, Any]:
        b = self.base
        return dict(
            vae=b.vae,
            text_encoder=b.text_encoder,
            tokenizer=b.tokenizer,
            unet=b.unet,
            scheduler=self.scheduler,
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )

    def pipeline(self, spec: ModelSpec) -> DiffusionPipeline:
        """The diffusers pipeline for ``spec`` (built once, from the shared components)."""
        key = (spec.adapters, len(spec.adapters))
        if key in self._pipelines:
            return self._pipelines[key]
        missing = [a for a in spec.adapters if a not in self.adapters]
        if missing:
            raise ModelLoadError(f"model {spec.name!r} needs adapter(s) {missing}; loaded: {sorted(self.adapters)}")
        if not spec.adapters:
            pipe: DiffusionPipeline = StableDiffusionPipeline(**self._components())
        else:
            parts = [self.adapters[a] for a in spec.adapters]
            adapter = parts[0] if len(parts) == 1 else MultiAdapter(parts)
            pipe = StableDiffusionAdapterPipeline(adapter=adapter, **self._components())
        pipe.set_progress_bar_config(disable=True)
        self._pipelines[key] = pipe
        return pipe

    def load_identity(self, path: str | Path, scale: float = 1.0) -> None:
        """Identity weights (LoRA / DreamBooth-style, a local file or directory) into the shared U-Net and
        text encoder, so every model of this bank generates the same person."""
        path = Path(path)
        if not path.exists():
            raise ModelLoadError(
                f"identity weights {path}: no such file or directory. Pass a local LoRA file (.safetensors) or a "
                "directory saved with save_lora_weights (identity weights are never downloaded)."
            )
        if importlib.util.find_spec("peft") is None:
            raise ModelLoadError(
                f"identity weights {path}: diffusers loads LoRA weights through the peft package, which is not "
                "installed. Install it (pip install peft) or run without identity weights."
            )
        pipe = self.pipeline(ModelSpec("base"))
        try:
            if path.is_file():
                pipe.load_lora_weights(str(path.parent), weight_name=path.name)
            else:
                pipe.load_lora_weights(str(path))
        except (OSError, ValueError, KeyError, RuntimeError) as exc:
            raise ModelLoadError(f"identity weights {path}: could not be loaded into {self.base.name}: {exc}") from exc
        self.cross_attention_kwargs = {"scale": float(scale)}
        self.sources["identity"] = str(path)

    # inputs ---------------------------------------------------------------------------------------

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        side = self.resolution // self.base.vae_scale_factor
        return (int(self.base.unet.config.in_channels), side, side)

    def initial_noise(self, seed: int) -> torch.Tensor:
        """(1, C, h, w) latent noise for ``seed``: drawn on the CPU so CPU and GPU runs start alike."""
        g = torch.Generator("cpu").manual_seed(int(seed))
        return torch.randn((1, *self.latent_shape), generator=g, dtype=torch.float32)

    def text(self, prompts: Sequence[str]) -> torch.Tensor:
        """tau(y) per prompt (cached: an evaluation repeats each prompt for every pose and model)."""
        todo = [p for p in dict.fromkeys(prompts) if p not in self._text]
        if todo:
            with torch.inference_mode():
                states = encode_prompts(self.base, list(todo), device=self.device).to(self.dtype)
            self._text.update(zip(todo, states, strict=True))
        return torch.stack([self._text[p] for p in prompts])

    # sampling -------------------------------------------------------------------------------------

    def generate(
        self,
        spec: ModelSpec,
        jobs: Sequence[Job],
        *,
        steps: int,
        guidance_scale: float,
        batch_size: int,
        maps: Callable[[Sequence[Pose]], torch.Tensor] | None = None,
        progress: bool = True,
    ) -> np.ndarray:
        """Images (N, res, res, 3) uint8 for ``jobs``, in order, ``batch_size`` at a time.

        ``maps`` turns poses into adapter inputs (:func:`condition_maps` with the run's render params);
        it is required when ``spec`` uses an adapter.
        """
        if spec.uses_pose and maps is None:
            raise ValueError(f"model {spec.name!r} is conditioned on poses: pass maps=")
        if spec.uses_pose and any(j.pose is None for j in jobs):
            raise InputDataError(f"model {spec.name!r} needs a pose for every job")
        pipe = self.pipeline(spec)
        negative = self.text([""])
        out = np.empty((len(jobs), self.resolution, self.resolution, 3), dtype=np.uint8)
        bar = tqdm(total=len(jobs), desc=f"generate {spec.name}", unit="img", disable=not progress)
        with torch.inference_mode():
            for start in range(0, len(jobs), batch_size):
                batch = jobs[start : start + batch_size]
                n = len(batch)
                kwargs: dict[str, Any] = dict(
                    prompt_embeds=self.text([j.prompt for j in batch]),
                    negative_prompt_embeds=negative.expand(n, -1, -1),
                    latents=torch.cat([self.initial_noise(j.seed) for j in batch]).to(self.device, self.dtype),
                    num_inference_steps=steps,
                    guidance_scale=guidance_scale,
                    height=self.resolution,
                    width=self.resolution,
                    output_type="np",
                    cross_attention_kwargs=self.cross_attention_kwargs,
                )
                if spec.uses_pose:
                    assert maps is not None
                    cond = maps([j.pose for j in batch if j.pose is not None]).to(self.device, self.dtype)
                    weights = list(spec.weights) or [1.0] * len(spec.adapters)
                    if len(spec.adapters) == 1:
                        kwargs.update(image=cond, adapter_conditioning_scale=weights[0])
                    else:
                        kwargs.update(image=[cond] * len(spec.adapters), adapter_conditioning_scale=weights)
                images = pipe(**kwargs).images
                out[start : start + n] = np.clip(np.rint(np.asarray(images) * 255.0), 0, 255).astype(np.uint8)
                bar.update(n)
        bar.close()
        return out

    # batched sampling across adapters and scales ---------------------------------------------------

    def sampling_scheduler(self, sampler: str) -> DDIMScheduler | DPMSolverMultistepScheduler:
        """A fresh scheduler of kind ``sampler`` from the base model's scheduler config."""
        if sampler == "ddim":
            return DDIMScheduler.from_config(self.scheduler.config)
        if sampler == "dpmsolver":
            return DPMSolverMultistepScheduler.from_config(self.scheduler.config, algorithm_type="dpmsolver++")
        raise ConfigError(f"sampler {sampler!r}: choose one of {', '.join(SAMPLERS)}")

    def sample(
        self,
        jobs: Sequence[ArmJob],
        *,
        steps: int,
        guidance_scale: float,
        batch_size: int,
        maps: Callable[[Sequence[Pose]], torch.Tensor],
        sampler: str,
        bf16: bool,
        region: Callable[[Pose, float], np.ndarray] | None = None,
        progress: bool = True,
        store: BatchStore | None = None,
        shard: Shard | None = None,
    ) -> np.ndarray | None:
        """Images (N, res, res, 3) uint8 for ``jobs``, batching rows of *different* arms in one U-Net call.

        The same computation as ``StableDiffusionAdapterPipeline`` (classifier-free guidance with the adapter's
        features on both halves, the scheduler's own steps, the VAE decode and [0, 1] clamp), written out so
        that one U-Net call serves every arm: an arm only changes the features added to the encoder (and, for
        ``inpaint``, the latent outside the person region), and a base row adds zeros, which is the base model
        exactly. Adapter features are computed once per (adapter, pose). ``tests/test_generate.py`` pins the
        equality with the stock pipeline and the trivial settings of every :class:`Injection` (a region that
        covers the image = ``scale``; steps fraction 1 = ``scale``, 0 = the base model).

        ``region(pose, margin)``: the (res, res) boolean person region of a pose grown by ``margin`` (needed by
        ``mask`` and ``inpaint`` arms). Base rows do not depend on the pose: those of one (prompt, seed) are
        drawn once and copied, so an evaluation's base arm costs one image per set, not one per pose.

        ``bf16``: the U-Net runs under bf16 autocast (the scheduler, the adapters and the VAE decode stay fp32):
        for GPUs. On this project's reference CPU (avx512_bf16) it was bit-reproducible but *slower* at 64 px
        (0.82x; ``benchmarks/results/sampling.json``), so ``evaluate.bf16`` is off there.

        ``store``: finished batches are written there under their key (:meth:`batch_keys`) and batches found there
        are read instead of drawn (a killed run resumes). ``shard``: this process draws only the batches it owns
        (i % world == rank) into the store; after a barrier rank 0 returns every image and the other ranks None.
        The batches are the same in every case (the whole job list in chunks of ``batch_size``), so the images are
        the same bytes with or without a store, resumed or not, in one process or several (:mod:`posescene.shards`).
        """
        jobs, where = distinct_rows(jobs)
        for j in jobs:
            if j.is_base:
                continue
            if j.pose is None:
                raise InputDataError("an adapter arm needs a pose for every job")
            if j.injection.uses_region and region is None:
                raise ConfigError(f"{j.injection.kind} arms need the person region of each pose: pass region=")
            for adapter, _ in j.terms:
                if adapter not in self.adapters:
                    raise ModelLoadError(f"adapter {adapter!r} is not loaded; loaded: {sorted(self.adapters)}")
        shard = shard or Shard()
        if shard.world > 1 and store is None:
            raise ConfigError("sampling with several processes needs a store the ranks share (evaluate.store)")
        unet, vae = self.base.unet, self.base.vae
        cfg = guidance_scale > 1.0
        features: dict[tuple[str, int], list[torch.Tensor]] = {}
        regions: dict[tuple[int, float, tuple[int, ...], str], torch.Tensor] = {}
        pose_ids: dict[int, int] = {}
        out = np.empty((len(jobs), self.resolution, self.resolution, 3), dtype=np.uint8)

        def pose_key(pose: Pose | None) -> int:
            return pose_ids.setdefault(id(pose), len(pose_ids))

        def region_at(j: ArmJob, size: tuple[int, int], how: str) -> torch.Tensor:
            """(1, h, w) person region of the row's pose at a feature or latent size: ``area`` gives the covered
            fraction of each cell (soft feature masks), ``max`` marks any cell the region touches (inpainting
            keeps the base only where no person pixel falls)."""
            assert region is not None and j.pose is not None
            key = (pose_key(j.pose), j.injection.knob, size, how)
            if key not in regions:
                full = torch.from_numpy(np.asarray(region(j.pose, j.injection.knob), dtype=np.float32))[None, None]
                small = (
                    torch.nn.functional.interpolate(full, size=size, mode="area")
                    if how == "area"
                    else torch.nn.functional.adaptive_max_pool2d(full, size)
                )
                regions[key] = small[0].to(self.device, self.dtype)
            return regions[key]

        def residuals(batch: Sequence[ArmJob]) -> list[torch.Tensor] | None:
            """Per level, (n, C, h, w): every row's summed adapter features (masked for ``mask`` arms)."""
            if all(j.is_base for j in batch):
                return None
            levels: list[torch.Tensor] | None = None
            for row, j in enumerate(batch):
                if j.is_base:
                    continue
                for adapter, scale in j.terms:
                    key = (adapter, pose_key(j.pose))
                    if key not in features:
                        cond = maps([j.pose]).to(self.device, self.dtype)  # type: ignore[list-item]
                        features[key] = [f[0] for f in self.adapters[adapter](cond)]
                    feats = features[key]
                    if levels is None:
                        levels = [torch.zeros((len(batch), *f.shape), device=f.device, dtype=f.dtype) for f in feats]
                    for level, f in zip(levels, feats, strict=True):
                        level[row] += f * scale
                if j.injection.kind == "mask":
                    assert levels is not None
                    for level in levels:
                        level[row] *= region_at(j, tuple(level.shape[-2:]), "area")
            return levels

        def denoise(
            batch: Sequence[ArmJob], anchors: Mapping[tuple[str, int], list[torch.Tensor]]
        ) -> list[torch.Tensor]:
            """The latents after every step (the last is the result) for one batch of rows."""
            n = len(batch)
            cond = self.text([j.prompt for j in batch]).to(self.device, self.dtype)
            text = torch.cat([negative.expand(n, -1, -1).to(cond), cond]) if cfg else cond
            res = residuals(batch)
            if res is not None and cfg:
                res = [torch.cat([r, r]) for r in res]
            # ``steps`` rows add their features for the first round(fraction x steps) steps only
            active = [steps if j.injection.kind != "steps" else round(j.injection.knob * steps) for j in batch]
            blend = [(row, j) for row, j in enumerate(batch) if j.injection.kind == "inpaint" and not j.is_base]
            inside = {row: region_at(j, tuple(self.latent_shape[1:]), "max") for row, j in blend}
            scheduler = self.sampling_scheduler(sampler)
            scheduler.set_timesteps(steps, device=self.device)
            latents = torch.cat([self.initial_noise(j.seed) for j in batch]).to(self.device, self.dtype)
            latents = latents * scheduler.init_noise_sigma
            trajectory = []
            for k, t in enumerate(scheduler.timesteps):
                inp = torch.cat([latents, latents]) if cfg else latents
                inp = scheduler.scale_model_input(inp, t)
                step_res = res
                if res is not None and min(active) <= k:
                    gate = torch.tensor([float(k < a) for a in active], device=self.device, dtype=self.dtype)
                    gate = torch.cat([gate, gate]) if cfg else gate
                    step_res = [r * gate.view(-1, 1, 1, 1) for r in res]
                with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=bf16):
                    eps = unet(
                        inp,
                        t,
                        encoder_hidden_states=text,
                        down_intrablock_additional_residuals=None
                        if step_res is None
                        else [r.clone() for r in step_res],
                        cross_attention_kwargs=self.cross_attention_kwargs,
                    ).sample
                eps = eps.to(latents.dtype)
                if cfg:
                    uncond, conditioned = eps.chunk(2)
                    eps = uncond + guidance_scale * (conditioned - uncond)
                latents = scheduler.step(eps, t, latents).prev_sample
                for row, j in blend:  # outside the person region, the base model's latent of this step
                    base = anchors[(j.prompt, j.seed)][k]
                    latents[row] = inside[row] * latents[row] + (1 - inside[row]) * base
                trajectory.append(latents)
            return trajectory

        def decode(latents: torch.Tensor) -> np.ndarray:
            image = vae.decode(latents / vae.config.scaling_factor).sample
            image = (image.float() / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy()
            return np.clip(np.rint(image * 255.0), 0, 255).astype(np.uint8)

        # The batches, fixed from the whole job list as one process draws them (batched kernels round by batch
        # composition): the inpaint rows' base trajectories in chunks of the distinct (prompt, seed), then the rows.
        wanted = list(
            dict.fromkeys((j.prompt, j.seed) for j in jobs if j.injection.kind == "inpaint" and not j.is_base)
        )
        chunks = [wanted[start : start + batch_size] for start in range(0, len(wanted), batch_size)]
        chunk_of = {ps: c for c, chunk in enumerate(chunks) for ps in chunk}
        batches = [jobs[start : start + batch_size] for start in range(0, len(jobs), batch_size)]
        # The text states as one process encodes them (the encoder batches each run of new prompts): the negative,
        # then every chunk's and batch's new prompts in order, whichever batches this process draws or reads.
        negative = self.text([""])
        for chunk in chunks:
            self.text([p for p, _ in chunk])
        for batch in batches:
            self.text([j.prompt for j in batch])
        keys = (
            self.batch_keys(batches, steps=steps, guidance_scale=guidance_scale, sampler=sampler, bf16=bf16,
                            maps=maps, region=region)
            if store is not None else []
        )  # fmt: skip
        anchors: dict[tuple[str, int], list[torch.Tensor]] = {}

        def draw(batch: Sequence[ArmJob]) -> np.ndarray:
            """One batch's images; first the base trajectories of the chunks its inpaint rows follow."""
            needed = {chunk_of[(j.prompt, j.seed)] for j in batch if (j.prompt, j.seed) in chunk_of}
            for c in sorted(needed):
                if chunks[c][0] in anchors:
                    continue
                base_rows = [ArmJob(p, s, None, None, 0.0) for p, s in chunks[c]]
                trajectory = denoise(base_rows, anchors)
                for row, j in enumerate(base_rows):
                    anchors[(j.prompt, j.seed)] = [lat[row].clone() for lat in trajectory]
            return decode(denoise(batch, anchors)[-1])

        shape = (self.resolution, self.resolution, 3)
        drawn: dict[int, np.ndarray] = {}
        mine = [i for i in range(len(batches)) if shard.owns(i)]
        todo = [i for i in mine if store is None or not store.has(keys[i])]
        size = {i: len(batch) for i, batch in enumerate(batches)}
        bar = Progress(sum(size[i] for i in todo), stored=sum(size[i] for i in mine) - sum(size[i] for i in todo),
                       label=shard.label, bar=progress)  # fmt: skip
        with torch.inference_mode():
            for i in todo:
                images = draw(batches[i])
                if store is not None:
                    store.write(keys[i], images)
                if shard.world == 1:
                    drawn[i] = images
                bar.update(size[i])
        bar.close()
        if shard.world > 1:
            shard.wait()  # every rank's batches are in the store
            if not shard.is_main:
                return None
        out = np.empty((len(jobs), *shape), dtype=np.uint8)
        start = 0
        for i, batch in enumerate(batches):
            images = drawn.get(i)
            if images is None and store is not None:
                images = store.read(keys[i], (len(batch), *shape))
            if images is None:  # an unreadable store entry: drawn here, as its owner would have
                with torch.inference_mode():
                    images = draw(batch)
                if store is not None:
                    store.write(keys[i], images)
            out[start : start + len(batch)] = images
            start += len(batch)
        return out[where]

    def fingerprint(self, name: str) -> str:
        """The weights fingerprint of ``base``, an adapter key or ``identity`` (computed once)."""
        if name not in self._fingerprints:
            self._fingerprints[name] = weights_fingerprint(self.sources[name])
        return self._fingerprints[name]

    def batch_keys(
        self,
        batches: Sequence[Sequence[ArmJob]],
        *,
        steps: int,
        guidance_scale: float,
        sampler: str,
        bf16: bool,
        maps: Callable[[Sequence[Pose]], torch.Tensor],
        region: Callable[[Pose, float], np.ndarray] | None,
    ) -> list[str]:
        """Per batch, a key of everything that decides its images (:mod:`posescene.shards`): its rows in order
        (prompt, seed; for adapter rows the pose's lattice, its conditioning map, each adapter's weights and scale,
        the injection and, for region injections, the region) and the sampler's settings. A base row's pose is
        left out: the base model does not read it."""
        import diffusers

        settings = digest(
            "posescene.sample/1", steps, float(guidance_scale), sampler, bool(bf16), self.resolution, str(self.dtype),
            # the images depend on the kernels: the GPU's kind, or the CPU's torch thread count (oneDNN)
            torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else torch.get_num_threads(),
            self.fingerprint("base"), self.fingerprint("identity") if "identity" in self.sources else None,
            self.cross_attention_kwargs, json.dumps(self.scheduler.config, sort_keys=True, default=str),
            torch.__version__, diffusers.__version__, Path(__file__).read_bytes(),
        )  # fmt: skip
        pose_digests: dict[int, str] = {}
        region_digests: dict[tuple[int, float], str] = {}

        def pose_digest(pose: Pose) -> str:
            if id(pose) not in pose_digests:
                cond = maps([pose]).float().cpu().numpy()
                pose_digests[id(pose)] = digest(pose.x_norm, pose.y_norm, pose.side, cond)
            return pose_digests[id(pose)]

        def region_digest(pose: Pose, margin: float) -> str:
            if (id(pose), margin) not in region_digests:
                assert region is not None
                region_digests[(id(pose), margin)] = digest(np.asarray(region(pose, margin), dtype=bool))
            return region_digests[(id(pose), margin)]

        def row(j: ArmJob) -> tuple[object, ...]:
            if j.is_base:
                return ("base", j.prompt, int(j.seed))
            assert j.pose is not None
            terms = tuple((self.fingerprint(a), s) for a, s in j.terms)
            where = region_digest(j.pose, j.injection.knob) if j.injection.uses_region else None
            return (j.prompt, int(j.seed), pose_digest(j.pose), terms, j.injection.kind, j.injection.knob, where)

        return [digest(settings, *(row(j) for j in batch)) for batch in batches]
