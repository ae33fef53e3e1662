"""The stages' trainers: what each stage trains, on which batches, with which loss (the loop is
:func:`posescene.world.loop.train_loop`).

- ``vae``: :func:`train_vae` from scratch; ``decoder``: :func:`finetune_decoder`, the decoder only (the latent
  space stays);
- ``judges``: :func:`train_judges`, the scene classifier and the keypoint estimator on real images and VAE
  reconstructions;
- ``unet``: :func:`train_unet` from scratch; ``adapter``: :func:`train_adapter` with the U-Net frozen;
  ``joint``: :func:`train_joint`, both together with adapter dropout.

Every batch is drawn on the CPU from the step's generator, so every device trains on the same batches.
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, T2IAdapter, UNet2DConditionModel
from tqdm.auto import tqdm

from posescene.config import BootstrapParams
from posescene.evaluation.judges import KeypointEstimator, SceneClassifier, heatmap_targets, to_unit
from posescene.io import atomic_path
from posescene.world.architectures import Architecture, training_scheduler
from posescene.world.data import WorldData
from posescene.world.loop import Checkpoints, autocast, train_loop


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
        with autocast(bp, "vae", device):
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
        with autocast(bp, "decoder", device):
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
        with atomic_path(path) as tmp:
            torch.save({"mean": mean, "std": std}, tmp)
    return mean, std


@torch.no_grad()
def vae_decode(vae: AutoencoderKL, latents: torch.Tensor, batch_size: int = 128, desc: str = "decode") -> np.ndarray:
    """Unscaled latents -> uint8 images (N, H, W, 3)."""
    out = []
    for i in tqdm(range(0, len(latents), batch_size), desc=desc, unit="batch"):
        x = vae.decode(latents[i : i + batch_size].to(vae.device)).sample
        out.append(((x.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).cpu().numpy())
    return np.concatenate(out)


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
        with autocast(bp, "judges", device):
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
def diffusion_batch(
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
        zt, t, states, noise = diffusion_batch(latents, text, text_idx, idx, bp.caption_dropout, gen, device)
        with autocast(bp, "unet", device):
            pred = unet(zt, t, states).sample
        return diffusion_loss(pred, noise, t, bp.min_snr_gamma), {}

    groups = [{"params": list(unet.parameters()), "lr": bp.unet_lr}]
    train_loop("unet", bp.unet_steps, {"unet": unet}, groups, min(200, bp.unet_steps // 10 + 1), step_fn, bp, seed,
               ckpt, weight_decay=bp.weight_decay, ema_decay=bp.ema_decay)  # fmt: skip
    return unet.eval()


def adapter_features(
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
        zt, t, states, noise = diffusion_batch(latents, text, text_idx, idx, bp.caption_dropout, gen, device)
        with autocast(bp, "adapter", device):
            features = adapter_features(adapter, maps, idx)
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
    *, base_text_idx: torch.Tensor | None,
) -> tuple[UNet2DConditionModel, T2IAdapter]:  # fmt: skip
    """U-Net and primary adapter fine-tuned *together*: the U-Net learns to use the pose features. The adapter
    is dropped on ``bootstrap.adapter_dropout`` of the rows (zero features), so the bare U-Net (the base
    model) keeps working; captions are dropped as before for classifier-free guidance. With ``base_text_idx``
    the rows without the adapter read each image's true caption instead (``caption_policy_rows: adapter``: a
    base model trained on captions that name the place, an adapter on web captions that often do not)."""
    unet.requires_grad_(True)
    adapter.requires_grad_(True)

    def step_fn(step: int, gen: torch.Generator) -> tuple[torch.Tensor, dict[str, float]]:
        idx = _rows(len(latents), bp.batch_size, gen)
        zt, t, states, noise = diffusion_batch(latents, text, text_idx, idx, bp.caption_dropout, gen, device)
        keep = torch.rand(len(idx), generator=gen) >= bp.adapter_dropout
        if base_text_idx is not None:  # drawn after keep, so the batches are those of the default policy
            dropped = (states == text[0].to(device)).flatten(1).all(dim=1).cpu()
            own = ~keep & ~dropped
            states = states.clone()
            states[own.to(device)] = text[base_text_idx[idx[own]]].to(device)
        with autocast(bp, "joint", device):
            features = adapter_features(adapter, maps, idx, keep)
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
