"""Prefect task of the ``cache`` stage: frozen VAE latents and text states, computed once."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from prefect import task

from posescene.cache import build_cache
from tasks._cache import stage_cache_key


@task(name="cache", cache_key_fn=stage_cache_key(("pairs_path", "ingested_dir", "base", "out_dir")))
def cache_task(
    pairs_path: str,
    ingested_dir: str,
    base: str,
    out_dir: str,
    resolution: int,
    batch_size: int,
    threads: int,
    device: str,
) -> dict[str, Any]:
    """Encode every paired image and caption; local deterministic work, so no retries.

    Only what changes the cache goes in (so the Prefect cache key ignores unrelated params).
    """
    path = build_cache(
        pairs_path, ingested_dir, out_dir, base, resolution, batch_size=batch_size, threads=threads, device=device
    )
    index = json.loads((Path(path) / "index.json").read_text())
    return {key: index[key] for key in ("base", "resolution", "n_images", "n_captions", "latent_shape", "text_shape")}
