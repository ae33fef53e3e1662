"""The world's shipped parts: one folder each in diffusers layout (fp16 safetensors), and the record of the scenes
each part was trained on (``training_data.json``, read by the evaluation to keep its scenes disjoint)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL, T2IAdapter, UNet2DConditionModel
from diffusers.models.modeling_utils import ModelMixin

from posescene.errors import ModelLoadError
from posescene.evaluation.heldout import TRAINING_DATA_FILE, load_training_ranges
from posescene.evaluation.judges import KeypointEstimator, SceneClassifier
from posescene.io import atomic_path

# the parts ``--reuse`` can load from out_dir instead of training them ("judges": both judges)
PARTS = ("vae", "judges", "unet", "adapter")
# the shipped folders, in the order they are written, and the class each one loads as
SHIPPED: dict[str, type[ModelMixin]] = {
    "vae": AutoencoderKL,
    "scene_classifier": SceneClassifier,
    "keypoint_estimator": KeypointEstimator,
    "unet": UNet2DConditionModel,
    "primary_adapter": T2IAdapter,
}


def save_part(model: ModelMixin, path: Path) -> None:
    """fp16 safetensors (half the bytes in git); loaders pass torch_dtype=float32 and upcast."""
    half = copy.deepcopy(model).to(torch.float16)
    with atomic_path(path) as tmp:
        half.save_pretrained(tmp, safe_serialization=True)


def load_part(world: Path, name: str, device: torch.device) -> Any:
    """Shipped part ``name`` of ``world`` (fp16 on disk) as fp32 on ``device``, where every stage that uses it runs."""
    path = world / name
    if not (path / "config.json").exists():
        raise ModelLoadError(f"{path}: not found; train it (leave it out of --reuse) or restore models/world")
    return SHIPPED[name].from_pretrained(path, use_safetensors=True, torch_dtype=torch.float32).eval().to(device)


def read_training_data(world: Path) -> dict[str, Any]:
    """The world's ``training_data.json``, validated; a world without one cannot be measured or continued."""
    record = load_training_ranges(world)
    if record is None:
        raise ModelLoadError(
            f"{world / TRAINING_DATA_FILE}: missing; a world to measure or continue from must record the scenes "
            "each part trained on (restore it from git, or rebuild the world with `posescene bootstrap`)"
        )
    return record
