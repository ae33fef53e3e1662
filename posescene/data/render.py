"""Stage 4 ``render``: grayscale lattice maps (docs/method.md step 2), and loading them at a model resolution.

Each lattice with a person is scaled to [0, u] x [0, u] with u = min(w, h) (pixel index
``floor(x_norm * u)``, clamped to u - 1 so that x_norm = 1 stays on the map). Lattice points are 0 and
every other pixel 255, one channel, u x u. Missing (null/NaN) points are never drawn, nor are points
outside [0, 1] (they are off the map; with beta > 0 every in-image point is inside).

Options (``render.radius``, ``render.limbs``) exist for compatibility with pretrained adapters: a point
is a disc of ``radius`` pixels (0: the single pixel, the patent's reading) and limbs are OpenPose
segments (:data:`posescene.topology.LIMBS`) of the same thickness, drawn only between present points.

Rendering is vectorised: the pixels to blacken are (points + limb samples) x (disc offsets), built by
broadcasting and set with one fancy-index assignment, so the cost is O(points x disc area), not
O(pixels). Maps are written atomically one file at a time; ``render.json`` in the output directory
records the parameters and a fingerprint of each map's lattice, so a rerun only renders maps that are
new or whose lattice changed, and re-renders everything when the parameters change.

Resizing never loses a point (single-pixel points vanish under bilinear resizing): downscaling is
min-pooling (``-adaptive_max_pool2d(-x)``; the adaptive windows cover every source pixel), upscaling
is nearest-neighbour (every source pixel is repeated at least once).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from PIL import Image
from tqdm.auto import tqdm

from posescene.errors import InputDataError
from posescene.io import write_json_atomic
from posescene.topology import LIMBS, N_KEYPOINTS

if TYPE_CHECKING:  # torch is imported where maps are loaded, so the render stage itself starts fast
    import torch

    from posescene.config import Params

RENDER_FORMAT_VERSION = 1  # bump when the drawing changes, so that incremental reruns redraw every map
STATE_FILE = "render.json"
_LATTICE_COLUMNS = ("image_id", "person", "width", "height", "has_person", "x_norm", "y_norm")


def map_path(out_dir: str | Path, image_id: str, person: int) -> Path:
    """Where the map of ``person`` in ``image_id`` lives: ``<image_id>.png`` for person 0."""
    name = f"{image_id}.png" if int(person) == 0 else f"{image_id}_{int(person)}.png"
    return Path(out_dir) / name


@lru_cache(maxsize=64)
def _disc_offsets(radius: int) -> np.ndarray:
    """(K, 2) integer (dy, dx) offsets of a disc of ``radius`` pixels (radius 0: just (0, 0))."""
    r = int(radius)
    dy, dx = np.mgrid[-r : r + 1, -r : r + 1]
    inside = dy**2 + dx**2 <= r * r
    offsets = np.stack([dy[inside], dx[inside]], axis=1).astype(np.int64)
    offsets.setflags(write=False)
    return offsets


def lattice_pixels(x_norm: np.ndarray, y_norm: np.ndarray, u: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel indices (row, col) of each point on a u x u map and a mask of the drawable points."""
    x = np.asarray(x_norm, dtype=np.float64).reshape(-1)
    y = np.asarray(y_norm, dtype=np.float64).reshape(-1)
    if x.shape != y.shape:
        raise ValueError(f"x_norm and y_norm differ in length: {x.shape} vs {y.shape}")
    present = np.isfinite(x) & np.isfinite(y) & (x >= 0) & (x <= 1) & (y >= 0) & (y <= 1)
    col = np.minimum(np.floor(np.where(present, x, 0) * u), u - 1).astype(np.int64)
    row = np.minimum(np.floor(np.where(present, y, 0) * u), u - 1).astype(np.int64)
    return np.stack([row, col], axis=1), present


def render_lattice(x_norm: np.ndarray, y_norm: np.ndarray, u: int, *, radius: int, limbs: bool) -> np.ndarray:
    """One lattice -> a (u, u) uint8 map: points (and limbs) 0, everything else 255.

    A pure function: the evaluation and the generator call it for arbitrary poses.
    """
    if u < 1:
        raise ValueError(f"map side u must be >= 1, got {u}")
    if radius < 0:
        raise ValueError(f"radius must be >= 0, got {radius}")
    pixels, present = lattice_pixels(x_norm, y_norm, u)
    parts = [pixels[present]]
    if limbs:
        if len(present) != N_KEYPOINTS:
            raise ValueError(f"limbs need the {N_KEYPOINTS}-point topology, got {len(present)} points")
        limb_idx = np.asarray(LIMBS, dtype=np.int64)
        limb_idx = limb_idx[present[limb_idx[:, 0]] & present[limb_idx[:, 1]]]
        if len(limb_idx):
            # a DDA line per limb: n = its longest axis in pixels, samples at t = k / n (k = 0..n), one per
            # pixel along that axis; all limbs' samples in one flat (ragged) array
            start = pixels[limb_idx[:, 0]]  # (S, 2)
            delta = pixels[limb_idx[:, 1]] - start
            n = np.abs(delta).max(axis=1)  # (S,)
            limb_of = np.repeat(np.arange(len(n)), n + 1)  # (sum(n + 1),)
            k = np.arange(len(limb_of)) - np.repeat(np.cumsum(n + 1) - (n + 1), n + 1)
            t = k / np.maximum(n, 1)[limb_of]
            parts.append(np.rint(start[limb_of] + delta[limb_of] * t[:, None]).astype(np.int64))
    canvas = np.full((u, u), 255, dtype=np.uint8)
    centres = np.concatenate(parts, axis=0)
    if len(centres):
        ink = (centres[:, None, :] + _disc_offsets(radius)[None, :, :]).reshape(-1, 2)
        ink = ink[((ink >= 0) & (ink < u)).all(axis=1)]
        canvas[ink[:, 0], ink[:, 1]] = 0
    return canvas


def resize_map(maps: torch.Tensor, resolution: int) -> torch.Tensor:
    """Resize (1, H, W) or (N, 1, H, W) maps in [0, 1] to ``resolution`` without losing a dark pixel."""
    import torch.nn.functional as F

    if resolution < 1:
        raise ValueError(f"resolution must be >= 1, got {resolution}")
    batched = maps.dim() == 4
    x = maps if batched else maps.unsqueeze(0)
    h, w = x.shape[-2:]
    if h < resolution or w < resolution:
        x = F.interpolate(x, size=(max(h, resolution), max(w, resolution)), mode="nearest")
    if tuple(x.shape[-2:]) != (resolution, resolution):
        x = -F.adaptive_max_pool2d(-x, (resolution, resolution))
    return x if batched else x.squeeze(0)


def map_tensor(array: np.ndarray, resolution: int | None = None) -> torch.Tensor:
    """A (u, u) uint8 map (e.g. from :func:`render_lattice`) -> (1, res, res) float in [0, 1]."""
    import torch

    t = torch.from_numpy(np.array(array, dtype=np.uint8, copy=True)).to(torch.float32).div_(255.0).unsqueeze(0)
    return t if resolution is None else resize_map(t, resolution)


def load_map(path: str | Path, resolution: int) -> torch.Tensor:
    """A map PNG -> (1, resolution, resolution) float tensor in [0, 1]; min-pooled so no point vanishes."""
    path = Path(path)
    try:
        with Image.open(path) as im:
            array = np.asarray(im.convert("L"))
    except FileNotFoundError:
        raise InputDataError(f"{path}: no such map. Run `posescene render` (or `python -m flows.render`).") from None
    return map_tensor(array, resolution)


def load_maps(paths: Sequence[str | Path], resolution: int) -> torch.Tensor:
    """Several maps -> (N, 1, resolution, resolution); maps of different sizes are fine."""
    import torch

    if not paths:
        return torch.empty((0, 1, resolution, resolution))
    return torch.stack([load_map(p, resolution) for p in paths])


@dataclass(frozen=True)
class RenderSummary:
    """Counts and timing for logs, the Prefect artifact and the CLI."""

    maps: int  # lattice rows with a person (maps the directory should hold)
    rendered: int
    skipped: int  # already up to date
    seconds: float
    radius: int
    limbs: bool

    @property
    def maps_per_second(self) -> float:
        return self.rendered / self.seconds if self.seconds > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "maps_per_second": round(self.maps_per_second, 1)}


def _fingerprint(u: int, x: np.ndarray, y: np.ndarray) -> str:
    """What a map depends on besides the render params: its side and its lattice (NaN made canonical)."""
    h = hashlib.sha1(str(int(u)).encode())
    for values in (x, y):
        h.update(np.nan_to_num(np.asarray(values, dtype=np.float32), nan=-1.0).tobytes())
    return h.hexdigest()[:16]


def _write_png_atomic(path: Path, array: np.ndarray) -> None:
    """Encode a map and rename it into place: atomic like :mod:`posescene.io`, without its per-call temp
    directory (mkdtemp + rmtree cost ~25x the encoding of a small map)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        Image.fromarray(array).save(tmp, format="PNG", compress_level=1)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _read_state(out_dir: Path) -> dict[str, Any]:
    try:
        state = json.loads((out_dir / STATE_FILE).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}
    return state if isinstance(state, dict) else {}


def render_maps(
    lattices: pa.Table | str | Path,
    out_dir: str | Path,
    *,
    radius: int,
    limbs: bool,
    progress: bool = True,
) -> RenderSummary:
    """Render one map per lattice row with a person into ``out_dir`` (incremental, see module doc)."""
    if isinstance(lattices, str | Path):
        from posescene.data.poses import read_lattices

        lattices = read_lattices(lattices)
    missing = [c for c in _LATTICE_COLUMNS if c not in lattices.column_names]
    if missing:
        raise InputDataError(f"lattice table lacks column(s) {', '.join(missing)}; see docs/architecture.md")
    people = lattices.filter(pc.fill_null(lattices.column("has_person"), False)).select(list(_LATTICE_COLUMNS))

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    params = {"radius": int(radius), "limbs": bool(limbs), "version": RENDER_FORMAT_VERSION}
    state = _read_state(out_dir)
    done: dict[str, str] = state.get("maps", {}) if state.get("params") == params else {}
    new_done: dict[str, str] = {}
    rendered = skipped = 0
    start = time.perf_counter()
    rows = people.to_pylist()
    for row in tqdm(rows, desc="render maps", unit="map", disable=not progress):
        if row["x_norm"] is None or row["y_norm"] is None:
            raise InputDataError(f"lattice of {row['image_id']} person {row['person']}: has_person but null lists")
        u = min(int(row["width"]), int(row["height"]))
        x = np.array(row["x_norm"], dtype=np.float64)  # None (missing) -> NaN
        y = np.array(row["y_norm"], dtype=np.float64)
        path = map_path(out_dir, row["image_id"], row["person"])
        fp = _fingerprint(u, x, y)
        new_done[path.name] = fp
        if done.get(path.name) == fp and path.is_file():
            skipped += 1
            continue
        _write_png_atomic(path, render_lattice(x, y, u, radius=radius, limbs=limbs))
        rendered += 1
    seconds = time.perf_counter() - start
    if rendered or state != {"params": params, "maps": new_done}:
        write_json_atomic(out_dir / STATE_FILE, {"params": params, "maps": new_done})
    return RenderSummary(
        maps=len(rows), rendered=rendered, skipped=skipped, seconds=seconds, radius=int(radius), limbs=bool(limbs)
    )


def render(params: Params, *, progress: bool = True) -> RenderSummary:
    """Stage ``render``: the maps of every lattice in ``poses.out_dir`` into ``render.out_dir`` (params.yaml)."""
    r = params.render
    return render_maps(params.poses.out_dir, r.out_dir, radius=r.radius, limbs=r.limbs, progress=progress)
