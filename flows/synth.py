from __future__ import annotations

from typing import Any

from prefect import flow

from flows.run_lock import exclusive
from posescene.config import load_params
from tasks.synth import synth_task


@flow(name="synth", log_prints=True)
@exclusive
def synth_flow(params_path: str = "params.yaml", overrides: dict[str, Any] | None = None) -> str:
    """Stage 0: the built-in PoseScenes world."""
    params = load_params(params_path, overrides)
    return synth_task(params.synth, params.seed, params.synth.out_dir)


if __name__ == "__main__":
    synth_flow()
