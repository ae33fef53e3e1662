"""Data-stage sub-commands: synth, ingest, poses, pairs, render."""

from __future__ import annotations

from pathlib import Path

import typer

from posescene.cli_app import app, fail
from posescene.errors import ConfigError, PosesceneError


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


@app.command()
def ingest(
    source: str = typer.Argument(
        ...,
        help="An imagefolder directory (images + metadata.jsonl or metadata.csv with file_name and text/caption), "
        "a directory saved with datasets' save_to_disk, or a Hugging Face hub dataset id (needs network).",
    ),
    out_dir: Path = typer.Argument(
        ..., help="Output directory (replaced whole, atomically): manifest.parquet, images/, rejects.csv, report.json."
    ),
    source_kind: str = typer.Option(
        "imagefolder", help="'imagefolder' (a folder with metadata) or 'hf_dataset' (save_to_disk dir or hub id)."
    ),
    max_pixels: int = typer.Option(
        89_478_485, min=1, help="Reject images with more pixels than this, read from the header before decoding."
    ),
    min_side: int = typer.Option(16, min=1, help="Reject images whose width or height is below this."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
) -> None:
    """Stage 1: validate captioned images into a manifest of 8-bit RGB PNGs (bad inputs go to rejects.csv).

    Corrupt, empty, non-image, oversized, too small, uncaptioned and duplicate images, and metadata paths
    leaving the source folder, are rejected with a reason; CMYK, 16-bit, alpha, palette and grayscale
    images are converted to RGB (alpha on white).
    """
    from posescene.ingest import ingest as run_ingest

    try:
        if source_kind not in ("imagefolder", "hf_dataset"):
            raise ConfigError(f"--source-kind {source_kind!r}: choose 'imagefolder' or 'hf_dataset'")
        report = run_ingest(
            source, out_dir, source_kind=source_kind, max_pixels=max_pixels, min_side=min_side, progress=progress
        )
    except PosesceneError as exc:
        fail(exc)
    rejected = ", ".join(f"{reason} {n}" for reason, n in sorted(report.rejected.items())) or "none"
    typer.echo(
        f"{report.accepted} of {report.seen} images accepted ({report.converted} converted to RGB) into {out_dir}; "
        f"rejected: {rejected}" + (f" (see {out_dir / 'rejects.csv'})" if report.rejected_total else "")
    )


@app.command()
def poses(
    manifest: Path = typer.Argument(..., help="The ingest output directory (data/ingested) or its manifest.parquet."),
    out_dir: Path = typer.Argument(
        ..., help="Lattice dataset directory (part-*.parquet); existing lattices are kept and extended."
    ),
    detector: str = typer.Option(
        "groundtruth",
        help="Pose model: 'mediapipe' (photographs; bundled weights, offline), 'openpose' or 'dwpose' "
        "(controlnet_aux; need --weights), or 'groundtruth' (keypoints shipped with the source, e.g. PoseScenes).",
    ),
    weights: str | None = typer.Option(
        None,
        help="openpose/dwpose weights: a local directory (e.g. holding body_pose_model.pth) or a hub id "
        "such as lllyasviel/Annotators (needs network or the HF cache). Never downloaded by default.",
    ),
    beta: float = typer.Option(
        0.05, min=0.0, max=1.0, help="Normalisation bias: x_hat = (x + beta w) / ((1 + 2 beta) w) (METHOD.md step 1)."
    ),
    min_score: float = typer.Option(
        0.3, min=0.0, max=1.0, help="Keypoints with a lower confidence are missing (null)."
    ),
    min_detection_confidence: float = typer.Option(
        0.5, min=0.0, max=1.0, help="mediapipe: confidence a person box needs (lower finds more, less sure, people)."
    ),
    min_presence_confidence: float = typer.Option(
        0.5, min=0.0, max=1.0, help="mediapipe: presence score the landmarks of a found box need."
    ),
    max_persons: int = typer.Option(4, min=1, help="People kept per image, most prominent first."),
    batch_size: int = typer.Option(64, min=1, help="Images per batch (and per part file)."),
    workers: int = typer.Option(1, min=1, help="Processes running batches in parallel (each loads the model once)."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
) -> None:
    """Stage 2: detect 18-point pose lattices (OpenPose order) of every ingested image into Parquet.

    Incremental: images already in OUT_DIR are skipped, so a rerun after adding images or after a crash
    only does the rest; lattices made with another detector or beta are replaced (with a warning).
    """
    from posescene.poses import run_poses

    try:
        summary = run_poses(
            manifest,
            out_dir,
            detector=detector,
            weights=weights,
            beta=beta,
            min_score=min_score,
            min_detection_confidence=min_detection_confidence,
            min_presence_confidence=min_presence_confidence,
            max_persons=max_persons,
            batch_size=batch_size,
            workers=workers,
            progress=progress,
        )
    except PosesceneError as exc:
        fail(exc)
    for warning in summary.warnings:
        typer.secho(f"warning: {warning}", fg=typer.colors.YELLOW, err=True)
    typer.echo(
        f"{summary.images_processed} images processed ({summary.images_existing} already done), "
        f"{summary.persons_found} persons in {summary.images_with_person} images, "
        f"no person found in {summary.images_without_person}, "
        f"{summary.images_per_second:.1f} images/s -> {out_dir}"
    )


@app.command()
def pairs(
    lattice: Path = typer.Argument(..., help="Lattice dataset directory written by `posescene poses` (data/lattices)."),
    out: Path = typer.Argument(..., help="Pairs Parquet file to write (atomically), e.g. data/pairs.parquet."),
    manifest: Path = typer.Option(
        Path("data/ingested/manifest.parquet"),
        help="Ingest manifest: captions (y) and scene ids of the images the lattices were detected on.",
    ),
    strategy: str = typer.Option(
        "scene",
        help="How images are grouped into pairs: 'scene' (same scene id, the method's default), 'caption' "
        "(captions equal once the pose/action words are removed) or 'random' (seeded random groups, a baseline).",
    ),
    heldout_fraction: float = typer.Option(
        0.2, help="Fraction of groups held out for evaluation; a group's pairs are never split."
    ),
    max_pairs_per_group: int = typer.Option(30, help="Cap on (ordered) pairs per group, sampled with the seed."),
    seed: int = typer.Option(0, help="Seed for pair sampling and the held-out split; same seed, same file."),
) -> None:
    """Stage 3: build the (A, B, y, Z_A, Z_B) training pairs; each pair of images yields two rows (y_A, y_B)."""
    from posescene.pairs import write_pairs

    try:
        summary = write_pairs(lattice, out, manifest, strategy, heldout_fraction, max_pairs_per_group, seed)
    except PosesceneError as exc:
        fail(exc)
    typer.echo(
        f"wrote {summary.pairs} pairs ({summary.rows} rows) in {summary.groups} groups to {out}; "
        f"held out: {summary.pairs_heldout} pairs in {summary.groups_heldout} groups"
    )


@app.command()
def render(
    lattice: Path = typer.Argument(..., help="Lattice dataset directory written by `posescene poses` (data/lattices)."),
    out_dir: Path = typer.Argument(..., help="Directory for the maps (<image_id>.png, <image_id>_<person>.png)."),
    radius: int = typer.Option(
        1, min=0, max=64, help="Point radius in map pixels; 0 draws single pixels (the patent's reading)."
    ),
    limbs: bool = typer.Option(
        False, "--limbs/--no-limbs", help="Also draw OpenPose-style limbs (for pretrained openpose adapters)."
    ),
) -> None:
    """Stage 4: render each lattice as a u x u grayscale map (u = min(w, h); points 0, else 255).

    Incremental: maps whose lattice and parameters are unchanged (recorded in OUT_DIR/render.json) are kept.
    """
    from posescene.render import render_maps

    try:
        summary = render_maps(lattice, out_dir, radius=radius, limbs=limbs)
    except PosesceneError as exc:
        fail(exc)
    typer.echo(
        f"{summary.rendered} maps rendered, {summary.skipped} up to date, in {out_dir} "
        f"({summary.maps_per_second:.0f} maps/s)"
    )
