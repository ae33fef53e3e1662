"""Stage 4 ``render``: grayscale maps (docs/method.md step 2) and loss-free resizing."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from _tables import lattice_row, lattice_table, make_dataset, write_lattice_dir
from PIL import Image

from posescene.config import PROJECT_PARAMS
from posescene.data.render import (
    STATE_FILE,
    load_map,
    load_maps,
    map_path,
    map_tensor,
    render_lattice,
    render_maps,
    resize_map,
)
from posescene.topology import INDEX, LIMBS, N_KEYPOINTS


def _points(rng: np.random.Generator, n: int = N_KEYPOINTS, missing: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    x, y = rng.uniform(0, 1, n), rng.uniform(0, 1, n)
    gone = rng.random(n) < missing
    x[gone] = np.nan
    y[gone] = np.nan
    return x, y


def _reference(x: np.ndarray, y: np.ndarray, u: int, radius: int, limbs: bool) -> np.ndarray:
    """A slow, obviously-correct renderer (loops over points and limb samples) to check the vectorised one."""
    canvas = np.full((u, u), 255, np.uint8)
    centres = []
    ok = [np.isfinite(a) and np.isfinite(b) and 0 <= a <= 1 and 0 <= b <= 1 for a, b in zip(x, y, strict=True)]
    pix = [
        (min(math.floor(b * u), u - 1), min(math.floor(a * u), u - 1)) if k else None
        for a, b, k in zip(x, y, ok, strict=True)
    ]
    centres += [p for p in pix if p is not None]
    if limbs:
        for i, j in LIMBS:
            if pix[i] is None or pix[j] is None:
                continue
            (r0, c0), (r1, c1) = pix[i], pix[j]
            n = max(abs(r1 - r0), abs(c1 - c0))
            for k in range(n + 1):
                t = k / max(n, 1)
                centres.append((int(np.rint(r0 + (r1 - r0) * t)), int(np.rint(c0 + (c1 - c0) * t))))
    for r, c in centres:
        for dr in range(-radius, radius + 1):
            for dc in range(-radius, radius + 1):
                if dr * dr + dc * dc <= radius * radius and 0 <= r + dr < u and 0 <= c + dc < u:
                    canvas[r + dr, c + dc] = 0
    return canvas


def test_points_are_zero_everything_else_255():
    x = np.full(N_KEYPOINTS, np.nan)
    y = np.full(N_KEYPOINTS, np.nan)
    x[:3], y[:3] = [0.0, 0.5, 0.999], [0.0, 0.25, 1.0]
    m = render_lattice(x, y, 8, radius=0, limbs=False)
    assert m.shape == (8, 8) and m.dtype == np.uint8
    assert set(np.unique(m)) == {0, 255}
    assert {tuple(p) for p in np.argwhere(m == 0)} == {(0, 0), (2, 4), (7, 7)}  # (row, col) = floor(y*u), floor(x*u)


def test_missing_and_off_map_points_are_never_drawn():
    x = np.array([0.5, np.nan, 0.2, 1.5, -0.1] + [np.nan] * 13)
    y = np.array([0.5, 0.3, np.nan, 0.5, 0.5] + [np.nan] * 13)
    m = render_lattice(x, y, 16, radius=0, limbs=True)
    assert np.argwhere(m == 0).tolist() == [[8, 8]]
    assert (render_lattice(np.full(18, np.nan), np.full(18, np.nan), 16, radius=3, limbs=True) == 255).all()


@pytest.mark.parametrize(("radius", "pixels"), [(0, 1), (1, 5), (2, 13), (3, 29)])
def test_radius_draws_a_disc(radius, pixels):
    x = np.full(18, np.nan)
    y = np.full(18, np.nan)
    x[0] = y[0] = 0.5
    m = render_lattice(x, y, 32, radius=radius, limbs=False)
    assert int((m == 0).sum()) == pixels
    assert m[16, 16] == 0 and m[16, 16 + radius] == 0 and m[16, 17 + radius] == 255


def test_limbs_join_present_points_only():
    x = np.full(18, np.nan)
    y = np.full(18, np.nan)
    neck, r_sh, l_sh = INDEX["neck"], INDEX["r_shoulder"], INDEX["l_shoulder"]
    x[neck], y[neck] = 0.5, 0.5
    x[r_sh], y[r_sh] = 0.1, 0.5
    x[l_sh], y[l_sh] = np.nan, np.nan
    m = render_lattice(x, y, 40, radius=0, limbs=True)
    # a horizontal line from col 4 to col 20 on row 20, nothing else
    assert (m[20, 4:21] == 0).all()
    assert int((m == 0).sum()) == 17
    assert (render_lattice(x, y, 40, radius=0, limbs=False) == 0).sum() == 2


@pytest.mark.parametrize("seed", range(6))
def test_vectorised_matches_reference(seed):
    rng = np.random.default_rng(seed)
    x, y = _points(rng, missing=0.3)
    u = int(rng.integers(8, 96))
    radius = int(rng.integers(0, 4))
    limbs = bool(seed % 2)
    assert np.array_equal(render_lattice(x, y, u, radius=radius, limbs=limbs), _reference(x, y, u, radius, limbs))


def test_vectorised_rendering_equals_the_per_pixel_reading():
    """The benchmark's per-pixel reference (docs/method.md step 2, literally) and render_lattice agree."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from bench_render import render_reference

    rng = np.random.default_rng(1)
    for radius in (0, 1, 2):
        x, y = _points(rng, missing=0.2)
        assert np.array_equal(render_lattice(x, y, 48, radius=radius, limbs=False), render_reference(x, y, 48, radius))


@pytest.mark.parametrize("seed", range(10))
def test_downscale_512_to_64_never_loses_a_single_pixel_point(seed):
    rng = np.random.default_rng(seed)
    x, y = _points(rng, missing=0.2)
    m = render_lattice(x, y, 512, radius=0, limbs=False)
    small = map_tensor(m, 64)
    assert small.shape == (1, 64, 64) and small.dtype == torch.float32
    assert set(small.unique().tolist()) <= {0.0, 1.0}
    for r, c in np.argwhere(m == 0):
        assert small[0, r * 64 // 512, c * 64 // 512] == 0.0
    # nothing dark appears where there was no point
    assert int((small == 0).sum()) == len({(r * 64 // 512, c * 64 // 512) for r, c in np.argwhere(m == 0)})
    # bilinear would lose them: the reason for min-pooling
    bilinear = torch.nn.functional.interpolate(map_tensor(m)[None], size=(64, 64), mode="bilinear")
    assert int((bilinear == 0).sum()) < int((small == 0).sum())


@pytest.mark.parametrize(("u", "res"), [(512, 64), (300, 64), (64, 64), (50, 64), (64, 200), (97, 13)])
def test_load_map_keeps_every_point_at_any_ratio(tmp_path, u, res):
    rng = np.random.default_rng(u + res)
    x, y = _points(rng)
    m = render_lattice(x, y, u, radius=0, limbs=False)
    path = tmp_path / "m.png"
    Image.fromarray(m).save(path)
    t = load_map(path, res)
    assert t.shape == (1, res, res) and float(t.min()) == 0.0 and float(t.max()) == 1.0
    # every point's footprint in the resized map contains a 0
    for r, c in np.argwhere(m == 0):
        r0, r1 = (r * res) // u, -(-((r + 1) * res) // u)
        c0, c1 = (c * res) // u, -(-((c + 1) * res) // u)
        assert (t[0, r0 : max(r1, r0 + 1), c0 : max(c1, c0 + 1)] == 0).any()


def test_load_maps_batches_mixed_sizes(tmp_path):
    paths = []
    for i, u in enumerate((64, 128, 40)):
        p = tmp_path / f"{i}.png"
        Image.fromarray(render_lattice(*_points(np.random.default_rng(i)), u, radius=0, limbs=False)).save(p)
        paths.append(p)
    batch = load_maps(paths, 32)
    assert batch.shape == (3, 1, 32, 32)
    assert torch.equal(batch[1], load_map(paths[1], 32))
    assert load_maps([], 32).shape == (0, 1, 32, 32)
    assert resize_map(batch, 16).shape == (3, 1, 16, 16)


def test_map_path():
    assert map_path("d", "abc", 0).name == "abc.png"
    assert map_path("d", "abc", 2).name == "abc_2.png"


def test_render_maps_non_square_and_naming(tmp_path):
    x = [0.5] + [None] * 17
    rows = [
        lattice_row("wide", x, x, w=100, h=60),
        lattice_row("tall", x, x, w=30, h=80),
        lattice_row("tall", [0.1] + [None] * 17, x, person=1, w=30, h=80),
        dict(lattice_row("empty", x, x), has_person=False, x=None, y=None, score=None, x_norm=None, y_norm=None),
    ]
    summary = render_maps(lattice_table(rows), tmp_path, radius=0, limbs=False, progress=False)
    assert summary.maps == summary.rendered == 3
    assert Image.open(tmp_path / "wide.png").size == (60, 60)
    assert Image.open(tmp_path / "tall.png").size == (30, 30)
    assert Image.open(tmp_path / "tall_1.png").mode == "L"
    assert not (tmp_path / "empty.png").exists()
    m = np.asarray(Image.open(tmp_path / "wide.png"))
    assert np.argwhere(m == 0).tolist() == [[30, 30]]


def test_render_maps_is_incremental(tmp_path):
    manifest, lattices = make_dataset({"a": 3, "b": 2})
    out = tmp_path / "maps"
    first = render_maps(lattices, out, radius=1, limbs=False, progress=False)
    assert (first.rendered, first.skipped) == (5, 0)
    state = json.loads((out / STATE_FILE).read_text())
    assert state["params"]["radius"] == 1 and len(state["maps"]) == 5
    mtime = (out / STATE_FILE).stat().st_mtime_ns
    again = render_maps(lattices, out, radius=1, limbs=False, progress=False)
    assert (again.rendered, again.skipped) == (0, 5)
    assert (out / STATE_FILE).stat().st_mtime_ns == mtime  # nothing rewritten: fingerprints stay put
    # a deleted map and a changed lattice are redrawn, the rest kept
    iid = lattices["image_id"][0].as_py()
    map_path(out, iid, 0).unlink()
    rows = lattices.to_pylist()
    rows[1]["x_norm"] = [0.5] * 18
    changed = render_maps(lattice_table(rows), out, radius=1, limbs=False, progress=False)
    assert (changed.rendered, changed.skipped) == (2, 3)
    # new parameters: everything again
    assert render_maps(lattice_table(rows), out, radius=2, limbs=False, progress=False).rendered == 5


def test_render_cli(tmp_path):
    pytest.importorskip("posescene.data.poses", reason="stage 2 (posescene/data/poses.py) not written yet")
    from typer.testing import CliRunner

    from posescene.cli import app

    _, lattices = make_dataset({"a": 3})
    lattice_dir = write_lattice_dir(lattices, tmp_path / "lattices", batch=2)
    args = ["render", "--params", str(PROJECT_PARAMS), "--set", f"poses.out_dir={lattice_dir}",
            "--set", f"render.out_dir={tmp_path / 'maps'}", "--set", "render.radius=0",
            "--set", "render.limbs=true"]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "3 maps rendered" in result.output
    assert len(list((tmp_path / "maps").glob("*.png"))) == 3
    assert json.loads((tmp_path / "maps" / STATE_FILE).read_text())["params"]["limbs"] is True
