from __future__ import annotations

from typing import Any

from prefect import flow
from prefect.artifacts import create_markdown_artifact

from flows.run_lock import exclusive
from posescene.config import load_params
from posescene.data.ingest import ingest
from tasks.stage import stage_task


def ingest_markdown(report: dict[str, Any]) -> str:
    """The flow's artifact: images in, accepted, converted, rejected by reason."""
    lines = [
        f"# ingest: {report['source']} ({report['source_kind']})",
        "",
        "| | images |",
        "|---|---:|",
        f"| seen | {report['seen']} |",
        f"| accepted | {report['accepted']} |",
        f"| converted to RGB | {report['converted']} |",
        f"| rejected | {report['rejected_total']} |",
    ]
    lines += [f"| rejected: {reason} | {n} |" for reason, n in report["rejected"].items()]
    if report["converted_from"]:
        lines += ["", "Converted from: " + ", ".join(f"{m} ({n})" for m, n in report["converted_from"].items())]
    return "\n".join(lines) + "\n"


@flow(name="ingest", log_prints=True)
@exclusive
def ingest_flow(params_path: str = "params.yaml", overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Stage 1: captions + images -> manifest.parquet, images/, rejects.csv, report.json."""
    params = load_params(params_path, overrides)
    p = params.ingest
    report = stage_task("ingest", ingest, params)(params)  # params: a hub source is retried (posescene/stages.py)
    print(
        f"ingest: {report['seen']} seen, {report['accepted']} accepted ({report['converted']} converted), "
        f"{report['rejected_total']} rejected {report['rejected']} -> {p.out_dir}"
    )
    create_markdown_artifact(
        markdown=ingest_markdown(report), key="ingest-report", description="posescene ingest: accepted/rejected"
    )
    return report


if __name__ == "__main__":
    ingest_flow()
