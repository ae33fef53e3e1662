"""The ``synth`` stage: the built-in PoseScenes world (images + captions) into ``synth.out_dir``."""

from __future__ import annotations

from typing import Any

from prefect import flow

from flows.run_lock import exclusive
from posescene.config import load_params
from posescene.data.synth import synth
from tasks.stage import stage_task


@flow(name="synth", log_prints=True)
@exclusive
def synth_flow(params_path: str = "params.yaml", overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Stage 0: the built-in PoseScenes world."""
    params = load_params(params_path, overrides)
    summary = stage_task("synth", synth)(params)
    print(f"synth: {summary['images']} images of {summary['scenes']} scenes -> {summary['out_dir']}")
    return summary


if __name__ == "__main__":
    synth_flow()
