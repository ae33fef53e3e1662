"""Prefect task of the ``world`` stage: assemble the standard SD pipeline dir from the shipped weights."""

from __future__ import annotations

from prefect import task

from posescene.world.architectures import assemble_world_pipeline
from tasks._cache import stage_cache_key


@task(name="world", cache_key_fn=stage_cache_key(("shipped_dir", "pipeline_dir")))
def world_task(shipped_dir: str, pipeline_dir: str) -> str:
    """Cheap and deterministic (a copy + re-save), so no retries: a failure is a missing file or a bug."""
    return str(assemble_world_pipeline(shipped_dir, pipeline_dir))
