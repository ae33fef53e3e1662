"""Small manifest and lattice tables that follow the contracts of docs/architecture.md.

The pairs and render tests build their inputs with these instead of running ingest/poses, so they test
only their own stage (and stay fast).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from posescene.topology import KEYPOINT_NAMES, N_KEYPOINTS

POINTS = pa.list_(pa.float32())

MANIFEST_SCHEMA = pa.schema(
    [
        ("image_id", pa.string()),
        ("path", pa.string()),
        ("source_path", pa.string()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("caption", pa.string()),
        ("scene_id", pa.string()),
        ("scene_kind", pa.string()),
        ("action", pa.string()),
        ("gt_x", POINTS),
        ("gt_y", POINTS),
    ]
)

LATTICE_SCHEMA = pa.schema(
    [
        ("image_id", pa.string()),
        ("person", pa.int32()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("detector", pa.string()),
        ("has_person", pa.bool_()),
        ("x", POINTS),
        ("y", POINTS),
        ("score", POINTS),
        ("x_norm", POINTS),
        ("y_norm", POINTS),
    ]
)

LATTICE_META = {
    "posescene.topology": json.dumps(list(KEYPOINT_NAMES)),
    "posescene.beta": "0.05",
    "posescene.detector": "groundtruth",
    "posescene.weights": "",  # not in the contract, but written (and compared) by posescene.data.poses
    "posescene.min_score": "0.3",
}


def _nullable(values: np.ndarray) -> list[float | None]:
    return [None if not np.isfinite(v) else float(v) for v in values]


def image_id(scene: str, k: int) -> str:
    """A 16-hex image id (like ingest's sha256 prefix), stable for (scene, k)."""
    import hashlib

    return hashlib.sha256(f"{scene}/{k}".encode()).hexdigest()[:16]


def make_dataset(
    scenes: dict[str, int],
    *,
    width: int = 64,
    height: int = 64,
    seed: int = 0,
    beta: float = 0.05,
    no_person: Sequence[str] = (),
    scene_ids: bool = True,
    caption_fn: object = None,
) -> tuple[pa.Table, pa.Table]:
    """(manifest, lattices) for ``scenes`` (scene id -> image count), one random pose per image.

    ``no_person``: image ids whose lattice row has has_person=false. ``scene_ids=False`` writes null
    scene ids (a source without scene information). ``caption_fn(scene, k)`` overrides the captions.
    """
    rng = np.random.default_rng(seed)
    actions = ("standing", "running", "sitting", "waving", "jumping", "dancing", "walking", "pointing")
    m: dict[str, list] = {name: [] for name in MANIFEST_SCHEMA.names}
    lat: dict[str, list] = {name: [] for name in LATTICE_SCHEMA.names}
    for scene, count in scenes.items():
        for k in range(count):
            iid = image_id(scene, k)
            action = actions[k % len(actions)]
            caption = caption_fn(scene, k) if callable(caption_fn) else f"a person {action} in scene {scene}"
            x = rng.uniform(0, width, N_KEYPOINTS)
            y = rng.uniform(0, height, N_KEYPOINTS)
            x[rng.random(N_KEYPOINTS) < 0.15] = np.nan  # some missing points
            y[~np.isfinite(x)] = np.nan
            m["image_id"].append(iid)
            m["path"].append(f"images/{iid}.png")
            m["source_path"].append(f"images/{scene}_p{k}.png")
            m["width"].append(width)
            m["height"].append(height)
            m["caption"].append(caption)
            m["scene_id"].append(scene if scene_ids else None)
            m["scene_kind"].append(None)
            m["action"].append(action)
            m["gt_x"].append(_nullable(x))
            m["gt_y"].append(_nullable(y))
            has = iid not in no_person
            xn = (x + beta * width) / ((1 + 2 * beta) * width)
            yn = (y + beta * height) / ((1 + 2 * beta) * height)
            lat["image_id"].append(iid)
            lat["person"].append(0)
            lat["width"].append(width)
            lat["height"].append(height)
            lat["detector"].append("groundtruth")
            lat["has_person"].append(has)
            lat["x"].append(_nullable(x) if has else None)
            lat["y"].append(_nullable(y) if has else None)
            lat["score"].append(_nullable(np.where(np.isfinite(x), 1.0, np.nan)) if has else None)
            lat["x_norm"].append(_nullable(xn) if has else None)
            lat["y_norm"].append(_nullable(yn) if has else None)
    lattice_meta = dict(LATTICE_META, **{"posescene.beta": str(beta)})
    return (
        pa.table(m, schema=MANIFEST_SCHEMA),
        pa.table(lat, schema=LATTICE_SCHEMA.with_metadata(lattice_meta)),
    )


def lattice_row(
    iid: str,
    x_norm: Sequence[float | None],
    y_norm: Sequence[float | None],
    *,
    person: int = 0,
    w: int = 64,
    h: int = 64,
) -> dict:
    """One lattice row (a dict for ``pa.Table.from_pylist``) with given normalised points."""
    return {
        "image_id": iid,
        "person": person,
        "width": w,
        "height": h,
        "detector": "groundtruth",
        "has_person": True,
        "x": [None if v is None else v * w for v in x_norm],
        "y": [None if v is None else v * h for v in y_norm],
        "score": [None if v is None else 1.0 for v in x_norm],
        "x_norm": list(x_norm),
        "y_norm": list(y_norm),
    }


def lattice_table(rows: list[dict]) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=LATTICE_SCHEMA.with_metadata(LATTICE_META))


def write_lattice_dir(table: pa.Table, out_dir: Path, batch: int = 10) -> Path:
    """Write ``table`` as the poses stage does: a directory of ``part-*.parquet`` files."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for i, start in enumerate(range(0, max(table.num_rows, 1), batch)):
        pq.write_table(table.slice(start, batch), out_dir / f"part-{i:05d}.parquet")
    return out_dir


def world_params(world: dict[str, Any], resolution: int, cache_dir: Path | None = None) -> dict[str, Any]:
    """params.yaml overrides that point the model and every data stage at a :func:`tiny_trained_world`."""
    root = world["root"]
    return {
        "model.base": str(world["pipeline"]),
        "model.primary_adapter": str(world["adapter"]),
        "model.resolution": resolution,
        "ingest.out_dir": str(root / "ingested"),
        "poses.out_dir": str(root / "lattices"),
        "pairs.out": str(root / "pairs.parquet"),
        "render.out_dir": str(root / "maps"),
        "cache.out_dir": str(cache_dir or root / "cache"),
    }


def tiny_trained_world(root: Path, resolution: int = 32) -> dict[str, Any]:
    """Tiny models and a tiny PoseScenes set taken through every data stage and the cache: what ``train`` reads.

    Shared by the training tests (tests/test_train.py) and the DDP test (tests/test_ops_ddp.py).
    """
    from _params import stage_options

    from posescene.config import default_params
    from posescene.data.cache import build_cache
    from posescene.data.ingest import ingest_source
    from posescene.data.pairs import write_pairs
    from posescene.data.poses import run_poses
    from posescene.data.render import render_maps
    from posescene.data.synth import generate
    from posescene.world.architectures import build_tiny_models

    p = default_params()  # the stages' settings as params.yaml has them, but for the paths and sizes below
    pipeline, adapter = build_tiny_models(root / "models", seed=0)
    generate(
        root / "synth",
        n_scenes=4,
        poses_per_scene=3,
        size=resolution,
        seed=0,
        first_scene=0,
        coupling=0.0,
        progress=False,
    )
    ingest_source(root / "synth", root / "ingested", **stage_options(ingest_source, "ingest"), progress=False)
    run_poses(root / "ingested", root / "lattices", **stage_options(run_poses, "poses", detector="groundtruth"))
    write_pairs(root / "lattices", root / "pairs.parquet", root / "ingested", strategy=p.pairs.strategy,
                heldout_fraction=0.25, max_pairs_per_group=p.pairs.max_pairs_per_group, seed=0)  # fmt: skip
    render_maps(root / "lattices", root / "maps", radius=1, limbs=False, progress=False)
    build_cache(root / "pairs.parquet", root / "ingested", root / "cache", str(pipeline), resolution,
                **stage_options(build_cache, "cache", threads=1), progress=False)  # fmt: skip
    return {"root": root, "pipeline": pipeline, "adapter": adapter}
