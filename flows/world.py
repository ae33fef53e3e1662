"""The ``world`` stage: shipped world weights + packaged MiniLM -> a standard diffusers pipeline dir."""

from __future__ import annotations

from typing import Any

from prefect import flow

from flows.run_lock import exclusive
from posescene.config import load_params
from tasks.world import world_task


@flow(name="world", log_prints=True)
@exclusive
def world_flow(params_path: str = "params.yaml", overrides: dict[str, Any] | None = None) -> str:
    """Assemble ``world.pipeline_dir`` from ``world.shipped_dir`` (seconds)."""
    params = load_params(params_path, overrides)
    # The shipped world's measured quality stays in models/world/bootstrap_metrics.json (constant across
    # experiments, so not a metric of this pipeline): `dvc metrics show models/world/bootstrap_metrics.json`.
    return world_task(params.world.shipped_dir, params.world.pipeline_dir)


if __name__ == "__main__":
    world_flow()
