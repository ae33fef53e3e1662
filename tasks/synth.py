from __future__ import annotations

from pathlib import Path

from prefect import task

from posescene import synth
from posescene.config import SynthParams
from tasks._cache import stage_cache_key


@task(name="synth", cache_key_fn=stage_cache_key(("out_dir",)))
def synth_task(params: SynthParams, seed: int, out_dir: str) -> str:
    """Generate the PoseScenes imagefolder (deterministic, so no retries: a failure is a bug)."""
    synth.generate(
        out_dir, params.n_scenes, params.poses_per_scene, params.size, seed,
        first_scene=params.first_scene, coupling=params.coupling,
    )
    return str(Path(out_dir))
