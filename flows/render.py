from __future__ import annotations

from typing import Any

from prefect import flow
from prefect.artifacts import create_markdown_artifact

from flows.pairs import summary_markdown
from flows.run_lock import exclusive
from posescene.config import load_params
from posescene.data.render import render
from tasks.stage import stage_task


@flow(name="render", log_prints=True)
@exclusive
def render_flow(params_path: str = "params.yaml", overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Stage 4: one grayscale map per lattice with a person (docs/method.md step 2)."""
    params = load_params(params_path, overrides)
    summary = stage_task("render", render)(params)
    print(
        f"render: {summary['rendered']} maps rendered, {summary['skipped']} up to date "
        f"({summary['maps_per_second']} maps/s) -> {params.render.out_dir}"
    )
    create_markdown_artifact(
        markdown=summary_markdown("render", summary),
        key="render-summary",
        description="posescene render: maps rendered/skipped",
    )
    return summary


if __name__ == "__main__":
    render_flow()
