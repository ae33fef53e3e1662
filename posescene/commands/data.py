"""Data-stage sub-commands: synth, ingest, poses, pairs, render."""

from __future__ import annotations

from pathlib import Path

import typer

from posescene.cli_app import app, fail
from posescene.errors import PosesceneError


@app.command()
def synth(
    out_dir: Path = typer.Argument(..., help="Directory to write the PoseScenes imagefolder into (replaced whole)."),
    n_scenes: int = typer.Option(120, help="Scene instances; each is rendered once per pose with the same background."),
    poses_per_scene: int = typer.Option(6, help="Images (different poses) per scene instance."),
    size: int = typer.Option(64, help="Square image side in pixels (64 for the built-in model, 512 for SD)."),
    seed: int = typer.Option(0, help="Seed; the same seed gives byte-identical output."),
) -> None:
    """Stage 0: generate the built-in PoseScenes world (images + metadata.jsonl with captions, keypoints)."""
    from posescene.synth import generate

    try:
        path = generate(out_dir, n_scenes, poses_per_scene, size, seed)
    except PosesceneError as exc:
        fail(exc)
    typer.echo(f"wrote {n_scenes * poses_per_scene} images to {path}")
