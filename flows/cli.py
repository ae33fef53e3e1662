"""The ``posescene`` console command: the library's sub-commands plus the orchestration ones.

The library CLI (``posescene.cli``: one sub-command per stage, ``python -m posescene.cli`` under a
launcher) knows nothing of Prefect. The operations that do — ``serve`` (Prefect deployments) and
``lock-status`` (the run lock the flows take) — live here, in the orchestration layer, and this app
combines both so that users keep one command: ``posescene serve``, ``posescene lock-status``,
``posescene train``, ... (``[project.scripts]`` in pyproject.toml). ``python -m flows`` runs the same app.

See docs/operations.md for the server, the schedule, triggering runs and the lock.
"""

from __future__ import annotations

import os
import urllib.error
import urllib.request
from pathlib import Path

import typer

from posescene.cli import app as library_app
from posescene.cli_app import fail
from posescene.errors import ConfigError, PosesceneError

app = typer.Typer(
    help=library_app.info.help,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
# The library's stage commands, unchanged (Typer keeps them as a list of registrations).
app.registered_commands.extend(library_app.registered_commands)
app.registered_groups.extend(library_app.registered_groups)


def check_server(api_url: str) -> None:
    """Fail early (not on the first poll) when the Prefect API is not reachable."""
    try:
        urllib.request.urlopen(api_url.rstrip("/") + "/health", timeout=5).read()
    except (urllib.error.URLError, OSError) as exc:
        raise ConfigError(
            f"no Prefect server answers at {api_url} ({exc}). Start one with "
            "`prefect server start --host 127.0.0.1 --port 4200` and export PREFECT_API_URL=http://127.0.0.1:4200/api"
        ) from None


@app.command()
def serve(
    params: Path = typer.Option(Path("params.yaml"), "--params", help="params.yaml the deployments default to."),
    stage: list[str] = typer.Option(
        None, "--stage", help="Serve only these stage deployments (repeatable); default: every stage."
    ),
    pipeline: bool = typer.Option(True, "--pipeline/--no-pipeline", help="Serve the pipeline/nightly deployment."),
    schedule: bool = typer.Option(True, "--schedule/--no-schedule", help="Attach the nightly cron schedule."),
    cron: str = typer.Option(None, help="Cron expression replacing ops.pipeline_cron (e.g. '*/30 * * * *')."),
    limit: int = typer.Option(None, help="At most this many flow runs at once in this process (default: no cap)."),
    api_url: str = typer.Option(
        None, envvar="PREFECT_API_URL", help="Prefect API URL, e.g. http://127.0.0.1:4200/api (or PREFECT_API_URL)."
    ),
) -> None:
    """Serve the Prefect deployments (pipeline/nightly on ops.pipeline_cron, <stage>/on-demand) until Ctrl-C.

    Flow runs start as subprocesses in the current directory, which should be the project root.
    """
    try:
        if not api_url:
            raise ConfigError(
                "PREFECT_API_URL is not set: `posescene serve` registers deployments with a Prefect server. "
                "Start one (`prefect server start`) and export PREFECT_API_URL=http://127.0.0.1:4200/api, "
                "or pass --api-url."
            )
        check_server(api_url)
        os.environ["PREFECT_API_URL"] = api_url  # flow-run subprocesses inherit it
        # Imported here: Prefect's import costs seconds, which the other commands should not pay.
        from prefect.settings import PREFECT_API_URL, temporary_settings

        from flows.deployments import serve as serve_deployments

        with temporary_settings({PREFECT_API_URL: api_url}):
            serve_deployments(str(params), stage or None, pipeline, schedule, cron, limit)
    except PosesceneError as exc:
        fail(exc)


@app.command("lock-status")
def lock_status(
    params: Path = typer.Option(Path("params.yaml"), "--params", help="params.yaml naming ops.lock_path."),
) -> None:
    """Say whether a posescene run holds the run lock (ops.lock_path), and which one since when."""
    from filelock import FileLock, Timeout

    from posescene.config import load_params
    from posescene.locking import read_holder

    try:
        lock_path = Path(load_params(params).ops.lock_path)
    except PosesceneError as exc:
        fail(exc)
    if not lock_path.exists():
        typer.echo(f"free: {lock_path} (never taken)")
        return
    probe = FileLock(lock_path, thread_local=False, is_singleton=False)
    try:
        probe.acquire(timeout=0)
    except Timeout:
        holder = read_holder(lock_path)
        typer.echo(f"held: {lock_path} by {holder.describe() if holder else 'an unknown process'}")
        raise typer.Exit(code=1) from None
    probe.release()
    typer.echo(f"free: {lock_path}")


def main() -> None:
    """Entry point of the ``posescene`` console script and ``python -m flows``."""
    app(prog_name="posescene")


if __name__ == "__main__":  # pragma: no cover
    main()
