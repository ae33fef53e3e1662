"""The ``pipeline-summary`` Markdown artifact: one row per stage (state, seconds, result) and MLflow links."""

from __future__ import annotations

from typing import Any

from flows._log import run_logger
from flows.mlflow_links import mlflow_links
from posescene.config import Params


def _short(value: Any, limit: int = 120) -> str:
    text = str(value).replace("|", "\\|").replace("\n", " ")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def pipeline_summary_markdown(
    params: Params, timings: dict[str, tuple[str, float]], results: dict[str, Any], error: BaseException | None = None
) -> str:
    """The summary as Markdown: the failure (if any), the stage table and the tracking links."""
    rows = ["| stage | state | seconds | result |", "|---|---|---:|---|"]
    for stage, (state, seconds) in timings.items():
        rows.append(f"| {stage} | {state} | {seconds:.1f} | {_short(results.get(stage, ''))} |")
    parts = ["# posescene pipeline", ""]
    if error is not None:
        parts += [f"**Failed:** `{_short(repr(error), 300)}`", ""]
    parts += rows + ["", "## Tracking", ""]
    try:
        parts += mlflow_links(params, results)
    except Exception as exc:  # noqa: BLE001 - the summary must go out even when MLflow is down
        parts.append(f"- MLflow not reachable: {_short(exc)}")
    return "\n".join(parts) + "\n"


def publish_pipeline_summary(
    params: Params, timings: dict[str, tuple[str, float]], results: dict[str, Any], error: BaseException | None = None
) -> str:
    """Create the ``pipeline-summary`` Markdown artifact; returns the Markdown."""
    markdown = pipeline_summary_markdown(params, timings, results, error)
    try:
        from prefect.artifacts import create_markdown_artifact

        create_markdown_artifact(markdown=markdown, key="pipeline-summary", description="posescene pipeline summary")
    except Exception as exc:  # noqa: BLE001 - outside a run (or server trouble) the summary is only logged
        run_logger().warning(f"could not create the pipeline-summary artifact: {exc}")
    return markdown
