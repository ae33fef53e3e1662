from __future__ import annotations

from typing import Any

from prefect import task

from posescene import pairs
from posescene.config import PairsParams
from tasks._cache import stage_cache_key


@task(name="pairs", cache_key_fn=stage_cache_key(("lattice_dir", "manifest", "out")))
def pairs_task(params: PairsParams, seed: int, lattice_dir: str, manifest: str, out: str) -> dict[str, Any]:
    """Build the (A, B, y, Z_A, Z_B) pairs table; deterministic local file work, so no retries."""
    summary = pairs.write_pairs(
        lattice_dir,
        out,
        manifest,
        strategy=params.strategy,
        heldout_fraction=params.heldout_fraction,
        max_pairs_per_group=params.max_pairs_per_group,
        seed=seed,
    )
    return summary.as_dict()
