from __future__ import annotations

from typing import Any

from prefect import flow
from prefect.artifacts import create_markdown_artifact

from flows.run_lock import exclusive
from posescene.config import load_params
from posescene.data.pairs import pairs
from tasks.stage import stage_task


def summary_markdown(title: str, summary: dict[str, Any]) -> str:
    """A two-column Markdown table of a stage summary, for the flow's artifact."""
    rows = "\n".join(f"| {key} | {value} |" for key, value in summary.items())
    return f"# {title}\n\n| | |\n|---|---:|\n{rows}\n"


@flow(name="pairs", log_prints=True)
@exclusive
def pairs_flow(params_path: str = "params.yaml", overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Stage 3: the (A, B, y, Z_A, Z_B) five-tuples from the manifest and the lattices."""
    params = load_params(params_path, overrides)
    summary = stage_task("pairs", pairs)(params)
    print(
        f"pairs: {summary['pairs']} pairs ({summary['rows']} rows) in {summary['groups']} groups, "
        f"{summary['pairs_heldout']} pairs held out -> {params.pairs.out}"
    )
    create_markdown_artifact(
        markdown=summary_markdown(f"pairs ({summary['strategy']})", summary),
        key="pairs-summary",
        description="posescene pairs: counts per split",
    )
    return summary


if __name__ == "__main__":
    pairs_flow()
