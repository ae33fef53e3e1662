from __future__ import annotations

from typing import Any

from prefect import task

from posescene import render
from posescene.config import RenderParams
from tasks._cache import stage_cache_key


@task(name="render", cache_key_fn=stage_cache_key(("lattice_dir", "out_dir")))
def render_task(params: RenderParams, lattice_dir: str, out_dir: str) -> dict[str, Any]:
    """Render the grayscale maps (incremental by itself via render.json; local file work, so no retries)."""
    summary = render.render_maps(lattice_dir, out_dir, radius=params.radius, limbs=params.limbs)
    return summary.as_dict()
