"""The ``bootstrap`` stage: retrain the built-in world into ``bootstrap.out_dir`` (frozen in dvc.yaml)."""

from __future__ import annotations

from typing import Any

from prefect import flow

from flows.run_lock import exclusive
from posescene.config import load_params
from posescene.world.bootstrap import bootstrap
from tasks.stage import stage_task


@flow(name="bootstrap", log_prints=True)
@exclusive
def bootstrap_flow(
    params_path: str = "params.yaml", overrides: dict[str, Any] | None = None, resume: bool = False
) -> dict[str, Any]:
    """Train VAE, U-Net, primary adapter and judges; write bootstrap_metrics.json (see models/world/README.md).

    ``resume``: continue from the checkpoints in ``bootstrap.checkpoint_dir`` (``python -m flows.bootstrap
    --resume``; a stage checkpointed with other params is refused)."""
    params = load_params(params_path, overrides)
    return stage_task("bootstrap", bootstrap)(params, out_dir=params.bootstrap.out_dir, resume=resume)


if __name__ == "__main__":
    import sys

    bootstrap_flow(resume="--resume" in sys.argv[1:])
