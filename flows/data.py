"""The data half of the pipeline: synth -> ingest -> poses -> pairs -> render, as subflows.

``flows/pipeline.py`` runs every stage (training and evaluation too); this flow stops once the training
data (pairs + maps) exist, e.g. to prepare data on a CPU machine before training elsewhere.
"""

from __future__ import annotations

from typing import Any

from prefect import flow

from flows._ops import exclusive
from flows.ingest import ingest_flow
from flows.pairs import pairs_flow
from flows.poses import poses_flow
from flows.render import render_flow
from flows.synth import synth_flow

DATA_STAGES = ("synth", "ingest", "poses", "pairs", "render")


@flow(name="data", log_prints=True)
@exclusive
def data_flow(params_path: str = "params.yaml", overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run the data stages in order (each one its own subflow run) and return each stage's result."""
    stages = (synth_flow, ingest_flow, poses_flow, pairs_flow, render_flow)
    return {
        name: stage(params_path=params_path, overrides=overrides)
        for name, stage in zip(DATA_STAGES, stages, strict=True)
    }


if __name__ == "__main__":
    data_flow()
