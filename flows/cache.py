"""The ``cache`` stage: VAE latents of every paired image and text states of every caption (data/cache)."""

from __future__ import annotations

from typing import Any

from prefect import flow
from prefect.artifacts import create_markdown_artifact

from flows.pairs import summary_markdown
from flows.run_lock import exclusive
from posescene.config import load_params
from posescene.data.cache import cache
from tasks.stage import stage_task


@flow(name="cache", log_prints=True)
@exclusive
def cache_flow(params_path: str = "params.yaml", overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run the frozen VAE and text encoder once over what the pairs use, so training never does."""
    params = load_params(params_path, overrides)
    summary = stage_task("cache", cache)(params)
    print(
        f"cache: {summary['n_images']} image latents {summary['latent_shape']}, {summary['n_captions']} text states "
        f"{summary['text_shape']} -> {params.cache.out_dir}"
    )
    create_markdown_artifact(
        markdown=summary_markdown("cache", summary),
        key="cache-summary",
        description="posescene cache: what was encoded",
    )
    return summary


if __name__ == "__main__":
    cache_flow()
