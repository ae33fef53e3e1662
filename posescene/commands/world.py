"""CLI sub-commands for the world area: ``posescene bootstrap`` and ``posescene world``."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from posescene.cli_app import app, fail
from posescene.errors import PosesceneError


@app.command()
def bootstrap(
    out_dir: Path | None = typer.Option(None, help="Where to write the world (default: params bootstrap.out_dir)."),
    params: Path = typer.Option(Path("params.yaml"), help="params.yaml to read."),
    set_: list[str] | None = typer.Option(None, "--set", help="Override a param, e.g. --set bootstrap.unet_steps=100."),
    reuse: list[str] | None = typer.Option(
        None, help="Load this part from out_dir instead of training it (vae, judges, unet, adapter); repeatable."
    ),
    resume: bool = typer.Option(
        False, "--resume", help="Continue from the checkpoints in bootstrap.checkpoint_dir (finished stages load)."
    ),
    only: list[str] | None = typer.Option(
        None,
        help="Train only this stage (vae, decoder, judges, unet, adapter, joint); repeatable. Writes only "
        "checkpoints: run independent stages as separate processes, then assemble with --resume.",
    ),
    stop_early: bool = typer.Option(
        False,
        "--stop-early",
        help="With --resume: use the last checkpoint of unfinished stages as their result "
        "(a deadline; the metrics record where each stopped).",
    ),
    device: str | None = typer.Option(None, help="auto | cpu | cuda[:N] (default: bootstrap.device)."),
) -> None:
    """Train the built-in world (VAE, U-Net, primary adapter, judges) on PoseScenes and measure it."""
    from posescene.bootstrap import bootstrap as run_bootstrap
    from posescene.config import load_params, parse_set_option

    try:
        overrides = parse_set_option(set_)
        if device is not None:
            overrides["bootstrap.device"] = device
        p = load_params(params, overrides)
        metrics = run_bootstrap(
            p, out_dir=out_dir, reuse=reuse or (), resume=resume, only=only or (), stop_early=stop_early
        )
    except PosesceneError as exc:
        fail(exc)
    typer.echo(json.dumps(metrics, indent=1))


@app.command()
def world(
    params: Path = typer.Option(Path("params.yaml"), help="params.yaml to read."),
    set_: list[str] | None = typer.Option(None, "--set", help="Override a param, e.g. --set world.pipeline_dir=x."),
) -> None:
    """Assemble the standard diffusers pipeline directory from the shipped world weights (seconds)."""
    from posescene.config import load_params, parse_set_option
    from posescene.world import assemble_world_pipeline

    try:
        p = load_params(params, parse_set_option(set_))
        path = assemble_world_pipeline(p.world.shipped_dir, p.world.pipeline_dir)
    except PosesceneError as exc:
        fail(exc)
    typer.echo(f"assembled the world pipeline in {path}")
