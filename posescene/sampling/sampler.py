"""The one sampler: prompt(s) + pose(s) + seed -> images (the patent's "any scene + any person + any pose").

Every image the library draws comes from :meth:`ModelBank.sample`: the evaluation's arms, training's validation
grid (:meth:`ModelBank.from_components` over the models being trained), the built-in world's measures
(:mod:`posescene.world.measure`), ``posescene generate`` and the served model (:meth:`ModelBank.generate`, one
model's rows). Models: the base model alone, the primary adapter, the
secondary adapter, several adapters summed with weights (``both``, as diffusers' ``MultiAdapter``), any other
adapter directory (ablations), each with an :class:`Injection` (how its features enter the U-Net); optional identity
weights (LoRA / DreamBooth-style, diffusers' ``load_lora_weights``). A :class:`ModelBank` loads the base model and
every adapter **once**, so comparing four models costs one model load and the memory of one U-Net.

Determinism and comparability: the initial latent noise of a job depends only on its seed. It is drawn
on the CPU from ``torch.Generator().manual_seed(seed)`` for every (prompt, seed) job, so (a) every pose and every
model of one (prompt, seed) starts from the *same* noise (the premise of the scene-drift metric: any difference
comes from the pose conditioning), (b) a seed gives the same image on CPU and GPU up to kernel arithmetic, and (c) a
(prompt, seed) job gives the same image whether it is generated alone or inside an evaluation batch (up to float
reassociation of batched kernels). DDIM with eta = 0 adds no further noise. ``tests/test_generate.py`` pins the
equality with diffusers' stock pipelines.

Poses come from :mod:`posescene.sampling.pose`, their conditioning maps from :mod:`posescene.sampling.maps`.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, StableDiffusionPipeline, T2IAdapter

from posescene.devices import resolve_device
from posescene.errors import ConfigError, InputDataError, ModelLoadError
from posescene.models import FrozenBase, check_compatible, encode_prompts, load_adapter, load_base
from posescene.sampling.pose import Pose
from posescene.shards import BatchStore, Progress, Shard, digest, weights_fingerprint

STANDARD_MODELS = ("base", "primary", "secondary", "both")


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

    ``pose`` is what the sampler's ``maps`` turns into the adapter's input: a :class:`Pose`, or any hashable key
    of maps the caller rendered itself (training's validation grid: the index of a map it loaded).
    ``adapter`` is a key of the bank's adapters (None: the base model) and ``scale`` its
    ``adapter_conditioning_scale`` (0 is the base model too). ``added``: further (adapter, scale) whose
    features are summed with it (``MultiAdapter``'s weighted sum: the ``both`` arm). ``injection``: how the
    summed features enter the U-Net (:class:`Injection`).
    """

    prompt: str
    seed: int
    pose: Pose | Hashable | None
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
        on = resolve_device(device)
        frozen = load_base(base, dtype).freeze()
        for module in (frozen.vae, frozen.unet, frozen.text_encoder):
            module.to(on)  # dtype was set at load: .to(dtype=None) would warn for every module
        try:
            scheduler = DDIMScheduler.from_pretrained(base, subfolder="scheduler")
        except (OSError, ValueError) as exc:
            raise ModelLoadError(f"{base}: no scheduler config for DDIM sampling ({exc})") from exc
        loaded: dict[str, T2IAdapter] = {}
        for key, path in adapters.items():
            adapter = load_adapter(path, dtype)
            check_compatible(frozen, adapter, in_channels, int(resolution), where=f"{key} adapter {path}")
            adapter.requires_grad_(False).eval().to(on)
            loaded[key] = adapter
        self._setup(frozen, loaded, scheduler, resolution=resolution, device=on, dtype=dtype)
        self.sources.update({"base": str(base), **{k: str(v) for k, v in adapters.items()}})
        if identity:
            self.load_identity(identity, identity_scale)

    @classmethod
    def from_components(
        cls,
        base: FrozenBase,
        adapters: Mapping[str, torch.nn.Module],
        *,
        resolution: int,
        device: torch.device,
        dtype: torch.dtype = torch.float32,
    ) -> ModelBank:
        """A bank over models already in memory (training's validation grid: the frozen base and the adapters being
        trained), sampling with DDIM from the base's noise-scheduler config. It has no weights files, so no
        ``store`` (whose keys fingerprint them)."""
        bank = cls.__new__(cls)
        scheduler = DDIMScheduler.from_config(base.noise_scheduler.config)
        bank._setup(base, dict(adapters), scheduler, resolution=resolution, device=device, dtype=dtype)
        return bank

    def _setup(
        self,
        base: FrozenBase,
        adapters: dict[str, Any],
        scheduler: DDIMScheduler,
        *,
        resolution: int,
        device: torch.device,
        dtype: torch.dtype,
    ) -> None:
        self.device = device
        self.dtype = dtype
        self.resolution = int(resolution)
        self.base = base
        self.scheduler = scheduler
        self.adapters = adapters
        self.sources: dict[str, str] = {}
        self._fingerprints: dict[str, str] = {}
        self._text: dict[str, torch.Tensor] = {}
        self.cross_attention_kwargs: dict[str, float] | None = None

    # identity weights -----------------------------------------------------------------------------

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
        b = self.base
        pipe = StableDiffusionPipeline(  # only diffusers' LoRA loader: it writes into the shared U-Net / text encoder
            vae=b.vae, text_encoder=b.text_encoder, tokenizer=b.tokenizer, unet=b.unet, scheduler=self.scheduler,
            safety_checker=None, feature_extractor=None, requires_safety_checker=False,
        )  # fmt: skip
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
        """Images (N, res, res, 3) uint8 for ``jobs`` drawn by one model, in order: :meth:`sample`'s rows for
        ``spec`` (its adapters summed with their weights, as diffusers' ``MultiAdapter``) with DDIM, the stock
        pipelines' scheduler.

        ``maps`` turns poses into adapter inputs (:func:`posescene.sampling.maps.condition_maps` with the run's
        render params); it is required when ``spec`` uses an adapter.
        """
        if spec.uses_pose and maps is None:
            raise ValueError(f"model {spec.name!r} is conditioned on poses: pass maps=")
        if spec.uses_pose and any(j.pose is None for j in jobs):
            raise InputDataError(f"model {spec.name!r} needs a pose for every job")
        missing = [a for a in spec.adapters if a not in self.adapters]
        if missing:
            raise ModelLoadError(f"model {spec.name!r} needs adapter(s) {missing}; loaded: {sorted(self.adapters)}")
        weights = list(spec.weights) or [1.0] * len(spec.adapters)
        terms = list(zip(spec.adapters, weights, strict=True))
        rows = [
            ArmJob(j.prompt, j.seed, j.pose, terms[0][0], float(terms[0][1]), added=tuple(terms[1:]))
            if terms
            else ArmJob(j.prompt, j.seed, None, None, 0.0)
            for j in jobs
        ]
        drawn = self.sample(rows, steps=steps, guidance_scale=guidance_scale, batch_size=batch_size,
                            maps=maps or _no_maps, sampler="ddim", bf16=False, progress=progress or None)  # fmt: skip
        assert drawn is not None  # one process
        return drawn

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
        progress: bool | None = True,
        store: BatchStore | None = None,
        shard: Shard | None = None,
        noise: Callable[[int], torch.Tensor] | None = None,
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

        ``progress``: a tqdm bar (True), a line on stderr every minute and at the end (False), or nothing but the log
        (None: a caller with progress of its own, such as training's validation grid).

        ``store``: finished batches are written there under their key (:meth:`batch_keys`) and batches found there
        are read instead of drawn (a killed run resumes). ``shard``: this process draws only the batches it owns
        (i % world == rank) into the store; after a barrier rank 0 returns every image and the other ranks None.
        The batches are the same in every case (the whole job list in chunks of ``batch_size``), so the images are
        the same bytes with or without a store, resumed or not, in one process or several (:mod:`posescene.shards`).

        ``noise(seed)``: the (1, C, h, w) initial latent of a job's seed instead of :meth:`initial_noise`, for a
        caller whose noise streams are its own (the world's measures draw a batch's noise from one generator, as
        diffusers' pipelines do). A store's keys do not cover it, so it takes no store.
        """
        if noise is not None and store is not None:
            raise ConfigError("a sampler with its own initial noise has no store keys for it: pass one or the other")
        initial_noise = noise or self.initial_noise
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
        if store is not None and "base" not in self.sources:
            raise ConfigError("a bank made from models in memory has no weights files to key a store by")
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
                        cond = maps([j.pose]).to(self.device, self.adapters[adapter].dtype)  # type: ignore[list-item]
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
            latents = torch.cat([initial_noise(j.seed) for j in batch]).to(self.device, self.dtype)
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
                with torch.autocast(self.device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext():
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
                       label=shard.label, bar=bool(progress), silent=progress is None)  # fmt: skip
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


def _no_maps(poses: Sequence[Pose]) -> torch.Tensor:
    raise ValueError("this model draws no pose: no maps")
