from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import task

from posescene import ingest
from posescene.config import IngestParams
from tasks._cache import stage_cache_key


def is_hub_source(params: IngestParams) -> bool:
    """A hub id (not a local path) for an hf_dataset source: the one case where ingest does network I/O."""
    return params.source_kind == "hf_dataset" and not Path(params.source).exists()


@task(name="ingest", cache_key_fn=stage_cache_key(("source", "out_dir")))
def ingest_task(params: IngestParams, source: str, out_dir: str) -> dict[str, Any]:
    """Validate and normalise the source into the manifest; returns report.json's counts.

    No retries by default: on local files every failure is deterministic (bad images are rejects, not
    errors). The flow adds retries only for a hub-id source, where the download can flake.
    """
    report = ingest.ingest(
        source, out_dir, source_kind=params.source_kind, max_pixels=params.max_pixels, min_side=params.min_side
    )
    return report.to_dict()
