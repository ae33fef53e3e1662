"""The data half of the pipeline: synth -> ingest -> poses -> pairs -> render, as subflows.

``flows/pipeline.py`` runs every stage (training and evaluation too); this flow stops once the training
data (pairs + maps) exist, e.g. to prepare data on a CPU machine before training elsewhere.
"""

from __future__ import annotations

from typing import Any

from prefect import flow

from flows.run_lock import exclusive
from flows.stages import DATA_STAGES, stage_flow

__all__ = ["DATA_STAGES", "data_flow"]


@flow(name="data", log_prints=True)
@exclusive
def data_flow(params_path: str = "params.yaml", overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run the data stages (``flows.stages.DATA_STAGES``) in order, each its own subflow run; return their results."""
    return {name: stage_flow(name)(params_path=params_path, overrides=overrides) for name in DATA_STAGES}


if __name__ == "__main__":
    data_flow()
