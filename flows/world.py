"""The ``world`` stage: shipped world weights + packaged MiniLM -> a standard diffusers pipeline dir."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from prefect import flow

from flows._ops import exclusive
from posescene.config import load_params
from posescene.io import write_json_atomic
from tasks.world import world_task


@flow(name="world", log_prints=True)
@exclusive
def world_flow(params_path: str = "params.yaml", overrides: dict[str, Any] | None = None) -> str:
    """Assemble ``world.pipeline_dir`` from ``world.shipped_dir`` (seconds)."""
    params = load_params(params_path, overrides)
    pipeline_dir = world_task(params.world.shipped_dir, params.world.pipeline_dir)
    # The world's measured quality (bootstrap) beside the evaluation's metrics: `dvc metrics show` lists both.
    quality = Path(params.world.shipped_dir) / "bootstrap_metrics.json"
    if quality.exists():
        write_json_atomic(Path(params.evaluate.out_dir) / "bootstrap_metrics.json", json.loads(quality.read_text()))
    return pipeline_dir


if __name__ == "__main__":
    world_flow()
