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
    from posescene.config import load_params, parse_set_option
    from posescene.world.bootstrap import bootstrap as run_bootstrap

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
    from posescene.world.pipeline import world as run_world

    try:
        summary = run_world(load_params(params, parse_set_option(set_)))
    except PosesceneError as exc:
        fail(exc)
    typer.echo(f"assembled the world pipeline in {summary.pipeline_dir}")


@app.command("measure-worlds")
def measure_worlds(
    worlds: list[Path] = typer.Argument(..., help="World folders to measure on the same scenes (e.g. models/world)."),
    out: Path = typer.Option(Path("reports/worlds/pull.json"), help="Where to write every world's metrics."),
    first_scene: int | None = typer.Option(
        None, help="First held-out PoseScenes scene (default: where the first world was measured, its training record)."
    ),
    n_scenes: int | None = typer.Option(None, help="Number of held-out scenes (default: as the first world's)."),
    params: Path = typer.Option(Path("params.yaml"), help="params.yaml to read (bootstrap.eval_* settings)."),
) -> None:
    """Measure worlds side by side on the same held-out scenes: quality and the pose's pull on the scene."""
    from posescene.config import load_params
    from posescene.errors import ConfigError
    from posescene.evaluation.heldout import load_training_ranges
    from posescene.io import write_json_atomic
    from posescene.world.measure import measure_world

    try:
        p = load_params(params)
        if first_scene is None or n_scenes is None:
            record = load_training_ranges(worlds[0]) or {}
            start, stop = (record.get("measured_on") or [[None, None]])[0]
            if start is None:
                raise ConfigError(f"{worlds[0]}: no measured_on in its training record; pass --first-scene")
            first_scene = start if first_scene is None else first_scene
            n_scenes = stop - start if n_scenes is None else n_scenes
        result = {str(w): measure_world(w, p, first_scene, n_scenes) for w in worlds}
    except PosesceneError as exc:
        fail(exc)
    write_json_atomic(out, result)
    keys = [k for k in next(iter(result.values())) if k.startswith("pull_") and not k.endswith("_ci95")]
    for key in keys:
        typer.echo(f"{key:36s} " + "  ".join(f"{str(w)}: {m.get(key)!s:.6}" for w, m in result.items()))
