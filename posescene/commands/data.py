"""Data-stage sub-commands: synth, ingest, poses, pairs, render.

Like every other command they read ``--params`` (default ./params.yaml) with ``--set key=value`` overrides:
paths and settings come from the stage's params section, so a command has no defaults of its own.
"""

from __future__ import annotations

from pathlib import Path

import typer

from posescene.cli_app import app, fail
from posescene.config import Params, load_params, parse_set_option
from posescene.errors import PosesceneError

PARAMS_HELP = "params.yaml to read (the stage's section gives paths and settings)."
PROGRESS_HELP = "Show a progress bar."


def _params(path: Path, items: list[str] | None) -> Params:
    try:
        return load_params(path, parse_set_option(items))
    except PosesceneError as exc:
        fail(exc)


@app.command()
def synth(
    params: Path = typer.Option(Path("params.yaml"), help=PARAMS_HELP),
    set_: list[str] | None = typer.Option(None, "--set", help="Override a param, e.g. --set synth.n_scenes=10."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help=PROGRESS_HELP),
) -> None:
    """Stage 0: generate the built-in PoseScenes world into synth.out_dir (images + metadata.jsonl).

    synth.n_scenes scene instances from index synth.first_scene, each rendered with synth.poses_per_scene
    poses on the same background, synth.size pixels square; the same seed gives byte-identical output.
    """
    from posescene.data.synth import synth as run_synth

    try:
        summary = run_synth(_params(params, set_), progress=progress)
    except PosesceneError as exc:
        fail(exc)
    typer.echo(f"wrote {summary.images} images to {summary.out_dir}")


@app.command()
def ingest(
    params: Path = typer.Option(Path("params.yaml"), help=PARAMS_HELP),
    set_: list[str] | None = typer.Option(
        None, "--set", help="Override a param, e.g. --set ingest.source=/path/to/photos."
    ),
    progress: bool = typer.Option(True, "--progress/--no-progress", help=PROGRESS_HELP),
) -> None:
    """Stage 1: validate ingest.source's captioned images into ingest.out_dir (bad inputs go to rejects.csv).

    ingest.source: an imagefolder directory (images + metadata.jsonl or metadata.csv with file_name and
    text/caption), a directory saved with datasets' save_to_disk, or a hub dataset id (needs network), per
    ingest.source_kind. Corrupt, empty, non-image, oversized (ingest.max_pixels, read from the header), too
    small (ingest.min_side), uncaptioned and duplicate images, and metadata paths leaving the source folder,
    are rejected with a reason; CMYK, 16-bit, alpha, palette and grayscale images are converted to RGB.
    """
    from posescene.data.ingest import ingest as run_ingest

    all_params = _params(params, set_)
    out_dir = Path(all_params.ingest.out_dir)
    try:
        report = run_ingest(all_params, progress=progress)
    except PosesceneError as exc:
        fail(exc)
    rejected = ", ".join(f"{reason} {n}" for reason, n in sorted(report.rejected.items())) or "none"
    typer.echo(
        f"{report.accepted} of {report.seen} images accepted ({report.converted} converted to RGB) into {out_dir}; "
        f"rejected: {rejected}" + (f" (see {out_dir / 'rejects.csv'})" if report.rejected_total else "")
    )


@app.command()
def poses(
    params: Path = typer.Option(Path("params.yaml"), help=PARAMS_HELP),
    set_: list[str] | None = typer.Option(None, "--set", help="Override a param, e.g. --set poses.detector=mediapipe."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help=PROGRESS_HELP),
) -> None:
    """Stage 2: 18-point pose lattices (OpenPose order) of every image in ingest.out_dir into poses.out_dir.

    poses.detector: mediapipe (photographs; bundled weights, offline), openpose or dwpose (controlnet_aux,
    need poses.weights) or groundtruth (keypoints shipped with the source, e.g. PoseScenes). Incremental:
    images already in poses.out_dir are skipped, so a rerun after adding images or a crash only does the
    rest; lattices made with another detector or beta are replaced (with a warning). Runs locally with
    poses.workers processes (the Dask runner is the flow's: python -m flows.poses).
    """
    from posescene.data.poses import poses as run_poses

    all_params = _params(params, set_)
    p = all_params.poses
    try:
        summary = run_poses(all_params, progress=progress)
    except PosesceneError as exc:
        fail(exc)
    for warning in summary.warnings:
        typer.secho(f"warning: {warning}", fg=typer.colors.YELLOW, err=True)
    typer.echo(
        f"{summary.images_processed} images processed ({summary.images_existing} already done), "
        f"{summary.persons_found} persons in {summary.images_with_person} images, "
        f"no person found in {summary.images_without_person}, "
        f"{summary.images_per_second:.1f} images/s -> {p.out_dir}"
    )


@app.command()
def pairs(
    params: Path = typer.Option(Path("params.yaml"), help=PARAMS_HELP),
    set_: list[str] | None = typer.Option(None, "--set", help="Override a param, e.g. --set pairs.strategy=caption."),
) -> None:
    """Stage 3: the (A, B, y, Z_A, Z_B) training pairs from poses.out_dir and ingest.out_dir into pairs.out.

    pairs.strategy groups images: scene (same scene id, the method's default), caption (captions equal once
    pose/action words are removed) or random (a seeded baseline); pairs.heldout_fraction of the groups are
    held out whole; at most pairs.max_pairs_per_group ordered pairs per group; each pair yields two rows.
    """
    from posescene.data.pairs import pairs as run_pairs

    all_params = _params(params, set_)
    p = all_params.pairs
    try:
        summary = run_pairs(all_params)
    except PosesceneError as exc:
        fail(exc)
    typer.echo(
        f"wrote {summary.pairs} pairs ({summary.rows} rows) in {summary.groups} groups to {p.out}; "
        f"held out: {summary.pairs_heldout} pairs in {summary.groups_heldout} groups"
    )


@app.command()
def render(
    params: Path = typer.Option(Path("params.yaml"), help=PARAMS_HELP),
    set_: list[str] | None = typer.Option(None, "--set", help="Override a param, e.g. --set render.radius=0."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help=PROGRESS_HELP),
) -> None:
    """Stage 4: render each lattice of poses.out_dir as a u x u grayscale map into render.out_dir.

    u = min(w, h); points (render.radius; 0 = single pixels, the patent's reading) and, with render.limbs,
    OpenPose-style limbs are 0, the rest 255. Incremental: maps whose lattice and parameters are unchanged
    (recorded in render.json) are kept.
    """
    from posescene.data.render import render as run_render

    all_params = _params(params, set_)
    p = all_params.render
    try:
        summary = run_render(all_params, progress=progress)
    except PosesceneError as exc:
        fail(exc)
    typer.echo(
        f"{summary.rendered} maps rendered, {summary.skipped} up to date, in {p.out_dir} "
        f"({summary.maps_per_second:.0f} maps/s)"
    )
