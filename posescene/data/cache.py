"""Stage ``cache``: what is frozen is computed once, not per training step.

The VAE (E) and the text encoder (tau) never change during S-Ad training, so the VAE latent of every
image used by the pairs and the text state of every caption are computed here into ``data/cache/``:

- ``latents.safetensors``: image_id -> latent mean x scaling factor, (4, r/f, r/f) for f the VAE factor;
- ``text.safetensors``: sha1(caption) -> last hidden state (L, D);
- ``index.json``: the model and resolution they were made with (training refuses a stale cache), counts,
  shapes, and the caption of each text key.

Images are resized whole (no crop) to ``model.resolution`` square, so a keypoint at fraction (x/w, y/h) of
the image lands at the same fraction of the latent; that is what the training masks assume.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import torch
from PIL import Image, UnidentifiedImageError
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from posescene.devices import reproducible_math, resolve_device
from posescene.errors import InputDataError
from posescene.data.ingest import read_manifest
from posescene.io import atomic_path, write_json_atomic
from posescene.models import encode_images, encode_prompts, load_base
from posescene.data.pairs import read_pairs

if TYPE_CHECKING:
    from posescene.config import Params

INDEX_VERSION = 1


def caption_key(caption: str) -> str:
    """The text-cache key of a caption (captions can be long and contain any character)."""
    return hashlib.sha1(caption.encode("utf-8")).hexdigest()


def require_columns(table: pa.Table, columns: list[str], where: str | Path, fix: str) -> dict[str, list]:
    """The named columns as Python lists, failing with the file, the missing columns and the fix."""
    missing = [c for c in columns if c not in table.column_names]
    if missing:
        raise InputDataError(f"{where}: lacks column(s) {missing} (see docs/architecture.md). {fix}")
    return {c: table.column(c).to_pylist() for c in columns}


def load_image(path: Path, resolution: int) -> torch.Tensor:
    """An RGB image resized to resolution x resolution, as (3, r, r) in [-1, 1] (SD's VAE convention)."""
    try:
        with Image.open(path) as im:
            im = im.convert("RGB").resize((resolution, resolution), Image.Resampling.BICUBIC)
    except (OSError, UnidentifiedImageError) as exc:
        raise InputDataError(f"{path}: cannot read the image ({exc}). Rerun the ingest stage.") from exc
    arr = np.asarray(im, dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous()


def build_cache(
    pairs_path: str | Path,
    ingested_dir: str | Path,
    out_dir: str | Path,
    base: str,
    resolution: int,
    *,
    batch_size: int,
    threads: int,
    device: str,
    progress: bool = True,
) -> Path:
    """Encode every image and caption the pairs use with the frozen VAE and text encoder (atomic write).

    ``threads`` and ``device`` are pinned (params.yaml ``cache``): the same inputs give the same bytes on any
    machine with the same kind of CPU, whatever its core count (:func:`posescene.devices.reproducible_math`).
    """
    with reproducible_math(threads):
        fix_pairs = "Rerun the pairs stage (posescene pairs / dvc repro pairs)."
        pairs = require_columns(read_pairs(pairs_path), ["image_a", "image_b", "caption"], pairs_path, fix_pairs)
        ingested_dir = Path(ingested_dir)
        manifest_path = ingested_dir / "manifest.parquet"
        manifest = require_columns(read_manifest(manifest_path), ["image_id", "path"], manifest_path, "Rerun ingest.")
        image_ids = sorted(set(pairs["image_a"]) | set(pairs["image_b"]))
        captions = sorted(set(pairs["caption"]))
        if not image_ids:
            raise InputDataError(f"{pairs_path}: the pairs table is empty; nothing to cache. {fix_pairs}")
        where = dict(zip(manifest["image_id"], manifest["path"], strict=True))
        unknown = [i for i in image_ids if i not in where]
        if unknown:
            raise InputDataError(
                f"{pairs_path}: {len(unknown)} image id(s) are not in {ingested_dir}/manifest.parquet "
                f"(e.g. {unknown[:3]}); the pairs were made from another ingest. Rerun pairs."
            )
        torch_device = resolve_device(device)
        model = load_base(base).freeze().to(torch_device)

        latents: dict[str, torch.Tensor] = {}
        for start in tqdm(range(0, len(image_ids), batch_size), desc="cache latents", disable=not progress):
            ids = image_ids[start : start + batch_size]
            images = torch.stack([load_image(ingested_dir / where[i], resolution) for i in ids])
            for image_id, z in zip(ids, encode_images(model, images).float().cpu(), strict=True):
                latents[image_id] = z.contiguous()
        text: dict[str, torch.Tensor] = {}
        for start in tqdm(range(0, len(captions), batch_size), desc="cache text", disable=not progress):
            chunk = captions[start : start + batch_size]
            for caption, h in zip(chunk, encode_prompts(model, chunk, torch_device).float().cpu(), strict=True):
                text[caption_key(caption)] = h.contiguous()

        some_latent, some_text = next(iter(latents.values())), next(iter(text.values()))
        index = {
            "version": INDEX_VERSION,
            "base": str(base),
            "resolution": resolution,
            "scaling_factor": model.latent_scaling,
            "latent_shape": list(some_latent.shape),
            "text_shape": list(some_text.shape),
            "n_images": len(latents),
            "n_captions": len(text),
            "captions": {caption_key(c): c for c in captions},
            # what the bytes depend on besides the inputs: another CPU kind (AVX2 vs AVX-512) or CUDA rounds otherwise
            "numerics": {
                "device": torch_device.type,
                "threads": torch.get_num_threads(),
                "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            },
        }
        with atomic_path(out_dir) as tmp:
            tmp.mkdir()
            save_file(latents, str(tmp / "latents.safetensors"))
            save_file(text, str(tmp / "text.safetensors"))
            write_json_atomic(tmp / "index.json", index)
        return Path(out_dir)


@dataclass
class Cache:
    """The cache in memory: stacked tensors plus the row of each image id / caption."""

    latents: torch.Tensor  # (n_images, 4, l, l)
    text: torch.Tensor  # (n_captions, L, D)
    image_row: dict[str, int]
    caption_row: dict[str, int]
    index: dict


def load_cache(cache_dir: str | Path, base: str, resolution: int) -> Cache:
    """Load data/cache, refusing one built for another base model or resolution (a stale cache)."""
    cache_dir = Path(cache_dir)
    fix = "Run the cache stage (posescene cache / dvc repro cache)."
    index_path = cache_dir / "index.json"
    if not index_path.exists():
        raise InputDataError(f"{index_path}: no frozen-model cache. {fix}")
    try:
        index = json.loads(index_path.read_text())
        latents = load_file(str(cache_dir / "latents.safetensors"))
        text = load_file(str(cache_dir / "text.safetensors"))
    except (OSError, ValueError, json.JSONDecodeError) as exc:
        raise InputDataError(f"{cache_dir}: the cache is unreadable ({exc}). {fix}") from exc
    if index.get("base") != str(base) or index.get("resolution") != resolution:
        raise InputDataError(
            f"{cache_dir}: built for base {index.get('base')!r} at {index.get('resolution')} px, but params.yaml "
            f"has model.base {base!r} at {resolution} px. {fix}"
        )
    image_ids, keys = sorted(latents), sorted(text)
    return Cache(
        latents=torch.stack([latents[i] for i in image_ids]) if image_ids else torch.empty(0),
        text=torch.stack([text[k] for k in keys]) if keys else torch.empty(0),
        image_row={i: n for n, i in enumerate(image_ids)},
        caption_row={k: n for n, k in enumerate(keys)},
        index=index,
    )


def cache(params: Params, *, progress: bool = True) -> dict[str, Any]:
    """Stage ``cache``: latents and text states of what ``pairs.out`` uses into ``cache.out_dir`` (params.yaml);
    returns what its index records (base, resolution, counts, shapes)."""
    c = params.cache
    path = build_cache(
        params.pairs.out, params.ingest.out_dir, c.out_dir, params.model.base, params.model.resolution,
        batch_size=c.batch_size, threads=c.threads, device=c.device, progress=progress,
    )  # fmt: skip
    index = json.loads((Path(path) / "index.json").read_text())
    return {key: index[key] for key in ("base", "resolution", "n_images", "n_captions", "latent_shape", "text_shape")}
