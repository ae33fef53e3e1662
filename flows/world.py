"""The ``world`` stage: shipped world weights + packaged MiniLM -> a standard diffusers pipeline dir."""

from __future__ import annotations

from typing import Any

from prefect import flow

from flows.run_lock import exclusive
from posescene.config import load_params
from posescene.world.pipeline import world
from tasks.stage import stage_task


@flow(name="world", log_prints=True)
@exclusive
def world_flow(params_path: str = "params.yaml", overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Assemble ``world.pipeline_dir`` from ``world.shipped_dir`` (seconds)."""
    params = load_params(params_path, overrides)
    # The shipped world's measured quality stays in models/world/bootstrap_metrics.json (constant across
    # experiments, so not a metric of this pipeline): `dvc metrics show models/world/bootstrap_metrics.json`.
    summary = stage_task("world", world)(params)
    print(f"world: {summary['shipped_dir']} -> {summary['pipeline_dir']}")
    return summary


if __name__ == "__main__":
    world_flow()
