"""Loading the frozen base model (Stable Diffusion 1.x components) and T2I-Adapters.

The same code loads a hub checkpoint (e.g. a v1-5 pipeline + a TencentARC adapter), a local
directory, the built-in world, and the tiny models the tests build: diffusers/transformers
``from_pretrained`` with ``use_safetensors=True`` (never unpickling untrusted files). Incompatible
pairs fail at start with a message that names both sides.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDPMScheduler, T2IAdapter, UNet2DConditionModel
from transformers import AutoModel, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from posescene.errors import ModelLoadError


@dataclass
class FrozenBase:
    """The frozen parts of Stable Diffusion: VAE (E/De), U-Net (eps_theta), text encoder (tau)."""

    name: str
    vae: AutoencoderKL
    unet: UNet2DConditionModel
    text_encoder: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    noise_scheduler: DDPMScheduler

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def latent_scaling(self) -> float:
        return float(self.vae.config.scaling_factor)

    def freeze(self) -> FrozenBase:
        for module in (self.vae, self.unet, self.text_encoder):
            module.requires_grad_(False)
            module.eval()
        return self

    def to(self, device: torch.device | str) -> FrozenBase:
        """Move to ``device``. No dtype: load in the dtype you need (``load_base(..., dtype)``); diffusers warns
        on every ``.to(dtype=...)`` (also ``dtype=None``) because a cast skips its keep-in-float32 modules."""
        for module in (self.vae, self.unet, self.text_encoder):
            module.to(device)
        return self


def _where(name_or_path: str) -> str:
    return "local directory" if Path(name_or_path).exists() else "hub id (needs network or a local HF cache)"


def _missing_hint(name_or_path: str, what: str) -> str:
    return (
        f"could not load the {what} from {name_or_path!r} ({_where(name_or_path)}). "
        f"Point params.yaml model.{'base' if what == 'base model' else 'primary_adapter'} at a diffusers "
        "directory saved with save_pretrained (safetensors), or a hub id available offline."
    )


def load_base(name_or_path: str, dtype: torch.dtype = torch.float32) -> FrozenBase:
    """Load the components of a diffusers Stable Diffusion 1.x pipeline directory or hub id."""
    try:
        vae = AutoencoderKL.from_pretrained(name_or_path, subfolder="vae", use_safetensors=True, torch_dtype=dtype)
        unet = UNet2DConditionModel.from_pretrained(
            name_or_path, subfolder="unet", use_safetensors=True, torch_dtype=dtype
        )
        text_encoder = AutoModel.from_pretrained(  # transformers 5: `dtype` (`torch_dtype` is deprecated)
            name_or_path, subfolder="text_encoder", use_safetensors=True, dtype=dtype
        )
        tokenizer = AutoTokenizer.from_pretrained(name_or_path, subfolder="tokenizer")
        noise_scheduler = DDPMScheduler.from_pretrained(name_or_path, subfolder="scheduler")
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"{_missing_hint(name_or_path, 'base model')} Cause: {exc}") from exc
    hidden = getattr(text_encoder.config, "hidden_size", None)
    if hidden != unet.config.cross_attention_dim:
        raise ModelLoadError(
            f"{name_or_path}: text encoder width {hidden} != U-Net cross_attention_dim "
            f"{unet.config.cross_attention_dim}; the pipeline's components do not belong together."
        )
    return FrozenBase(str(name_or_path), vae, unet, text_encoder, tokenizer, noise_scheduler)


def load_adapter(name_or_path: str, dtype: torch.dtype = torch.float32) -> T2IAdapter:
    try:
        return T2IAdapter.from_pretrained(name_or_path, use_safetensors=True, torch_dtype=dtype)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"{_missing_hint(name_or_path, 'primary adapter')} Cause: {exc}") from exc


def adapter_channels(adapter: T2IAdapter) -> list[int]:
    return list(adapter.config.channels)


def check_compatible(base: FrozenBase, adapter: T2IAdapter, in_channels: int, resolution: int, where: str) -> None:
    """Fail early, naming both sides, if the adapter cannot drive this U-Net at this resolution."""
    unet_widths = list(base.unet.config.block_out_channels)
    widths = adapter_channels(adapter)
    if adapter.config.adapter_type not in ("full_adapter", "full_adapter_xl", "light_adapter"):
        raise ModelLoadError(f"{where}: unsupported adapter_type {adapter.config.adapter_type!r}")
    if widths != unet_widths:
        raise ModelLoadError(
            f"{where}: adapter channels {widths} != U-Net block widths {unet_widths} of {base.name}. "
            "Use an adapter trained for this base model (e.g. an SD-1.x T2I-Adapter for an SD-1.x pipeline)."
        )
    if adapter.config.in_channels != in_channels:
        raise ModelLoadError(
            f"{where}: adapter expects {adapter.config.in_channels} input channel(s) but params.yaml "
            f"model.adapter_in_channels is {in_channels}; set it to {adapter.config.in_channels}."
        )
    latent = resolution // base.vae_scale_factor
    if resolution % adapter.total_downscale_factor or latent * base.vae_scale_factor != resolution:
        raise ModelLoadError(
            f"{where}: model.resolution {resolution} must be a multiple of the adapter's total downscale "
            f"factor {adapter.total_downscale_factor} and of the VAE scale factor {base.vae_scale_factor}."
        )
    if adapter.config.downscale_factor != base.vae_scale_factor:
        raise ModelLoadError(
            f"{where}: adapter downscale_factor {adapter.config.downscale_factor} != VAE scale factor "
            f"{base.vae_scale_factor}: its first feature map would not match the latent resolution."
        )


@torch.no_grad()
def encode_prompts(base: FrozenBase, prompts: list[str], device: torch.device | str | None = None) -> torch.Tensor:
    """tau(y): the text encoder's last hidden states, exactly as diffusers' pipelines compute them (on ``device``,
    by default the text encoder's)."""
    device = device if device is not None else base.text_encoder.device
    tok = base.tokenizer(
        prompts, padding="max_length", max_length=base.tokenizer.model_max_length, truncation=True, return_tensors="pt"
    )
    mask = tok.attention_mask.to(device) if getattr(base.text_encoder.config, "use_attention_mask", False) else None
    return base.text_encoder(tok.input_ids.to(device), attention_mask=mask)[0]


@torch.no_grad()
def encode_images(base: FrozenBase, images: torch.Tensor) -> torch.Tensor:
    """VAE latents (distribution mean x scaling factor) of images in [-1, 1], (N, 3, H, W)."""
    dist = base.vae.encode(images.to(base.vae.device, base.vae.dtype)).latent_dist
    return dist.mean * base.latent_scaling


def prepare_adapter_input(maps: torch.Tensor, in_channels: int, invert: bool) -> torch.Tensor:
    """Gray lattice maps (N, 1, R, R) in [0, 1] -> the adapter's input convention.

    Our maps are black points on white (docs/method.md step 2); sketch/openpose adapters expect white on black
    (``invert``: 1 - x) and RGB-trained adapters expect 3 channels (the gray map repeated). Training,
    validation and the registered pyfunc model all go through this one function so they agree.
    """
    if invert:
        maps = 1.0 - maps
    if in_channels == 3 and maps.shape[1] == 1:
        maps = maps.repeat(1, 3, 1, 1)
    return maps
