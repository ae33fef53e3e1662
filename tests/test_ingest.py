"""Stage 1 (ingest): every kind of bad input is a reject row with a reason, good images always land."""

from __future__ import annotations

import csv
import io
import json
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from _params import stage_options
from PIL import Image

from posescene.data.ingest import MANIFEST_SCHEMA, image_id_for, ingest_source
from posescene.errors import InputDataError
from posescene.topology import N_KEYPOINTS


def _png(size: tuple[int, int] = (32, 24), color: tuple[int, int, int] = (10, 120, 200), mode: str = "RGB") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, color).save(buf, format="PNG")
    return buf.getvalue()


def _noise_png(seed: int, size: tuple[int, int] = (40, 30)) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def _bomb_png(width: int = 100_000, height: int = 100_000) -> bytes:
    """A tiny file whose PNG header claims width x height pixels (decoding it would need ~30 GB)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(b"\x00")) + _chunk(b"IEND", b"")


def _folder(root: Path, files: dict[str, bytes], rows: list[dict | str]) -> Path:
    """An imagefolder: ``files`` (relative path -> bytes) and metadata.jsonl rows (a str is a raw line)."""
    root.mkdir(parents=True, exist_ok=True)
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    lines = [row if isinstance(row, str) else json.dumps(row) for row in rows]
    (root / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    return root


def _rejects(out: Path) -> dict[str, tuple[str, str]]:
    with open(out / "rejects.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    return {r["source_path"]: (r["reason"], r["detail"]) for r in rows}


def _manifest(out: Path) -> list[dict]:
    return pq.read_table(out / "manifest.parquet").to_pylist()


def test_synth_round_trip_keeps_scene_ids_and_keypoints(synth_dir, tmp_path):
    out = tmp_path / "ingested"
    report = ingest_source(synth_dir, out, **stage_options(ingest_source, "ingest"), progress=False)
    meta = {r["file_name"]: r for r in map(json.loads, (synth_dir / "metadata.jsonl").read_text().splitlines())}
    rows = _manifest(out)
    assert report.accepted == len(rows) == len(meta) == 24 and report.rejected_total == 0
    assert pq.read_schema(out / "manifest.parquet").remove_metadata() == MANIFEST_SCHEMA
    for row in rows:
        src = meta[row["source_path"]]
        assert row["image_id"] == image_id_for((synth_dir / src["file_name"]).read_bytes())
        assert row["path"] == f"images/{row['image_id']}.png"
        assert (row["caption"], row["scene_id"], row["scene_kind"], row["action"]) == (
            src["text"], src["scene_id"], src["scene_kind"], src["action"],
        )  # fmt: skip
        for axis in ("x", "y"):
            got, want = row[f"gt_{axis}"], src["keypoints"][axis]
            assert len(got) == N_KEYPOINTS
            assert [g is None for g in got] == [w is None for w in want]
            np.testing.assert_allclose([g for g in got if g is not None], [w for w in want if w is not None], atol=1e-3)
        with Image.open(out / row["path"]) as im:
            assert (im.format, im.mode, im.size) == ("PNG", "RGB", (row["width"], row["height"]))
            # pixel-identical to the source (already RGB)
            assert np.array_equal(np.asarray(im), np.asarray(Image.open(synth_dir / row["source_path"])))
    report_json = json.loads((out / "report.json").read_text())
    assert report_json["seen"] == report_json["accepted"] == 24 and report_json["rejected"] == {}


def test_every_bad_input_is_a_reject_with_its_reason(tmp_path, monkeypatch):
    outside = tmp_path / "outside.png"
    outside.write_bytes(_noise_png(99))
    good = _noise_png(1)
    good_png = _png()
    files = {
        "img/good.png": good,
        "img/good2.png": good_png,
        "img/dup.png": good,
        "img/truncated.png": _noise_png(2)[:150],
        "img/empty.png": b"",
        "img/text.png": b"this is not an image\n" * 20,
        "img/bomb.png": _bomb_png(),
        "img/tiny.png": _png((8, 30)),
        "img/nocap.png": _noise_png(3),
        "img/blankcap.png": _noise_png(4),
        "img/unlisted.png": _noise_png(5),
        "img/badkp.png": _noise_png(6),
        "notes.txt": b"not an image and not listed: ignored",
    }
    root = _folder(
        tmp_path / "src",
        files,
        [
            {"file_name": "img/good.png", "text": "a person standing in a park"},
            {"file_name": "img/good2.png", "caption": "  a person sitting by a lake  "},
            {"file_name": "img/dup.png", "text": "the same bytes again"},
            {"file_name": "img/truncated.png", "text": "x"},
            {"file_name": "img/empty.png", "text": "x"},
            {"file_name": "img/text.png", "text": "x"},
            {"file_name": "img/bomb.png", "text": "x"},
            {"file_name": "img/tiny.png", "text": "x"},
            {"file_name": "img/nocap.png"},
            {"file_name": "img/blankcap.png", "text": "   "},
            {"file_name": "img/missing.png", "text": "x"},
            {"file_name": "../outside.png", "text": "x"},
            {"file_name": str(outside), "text": "x"},
            {"file_name": "img/link.png", "text": "x"},
            {"file_name": "img/badkp.png", "text": "x", "keypoints": {"x": [1.0, 2.0], "y": [1.0, 2.0]}},
            '{"file_name": "img/broken.png", "text": ',
            {"text": "no file name"},
        ],
    )
    os.symlink(outside, root / "img" / "link.png")
    opened: list[Path] = []
    real_read_bytes = Path.read_bytes

    def spy(self: Path) -> bytes:
        opened.append(self.resolve())
        return real_read_bytes(self)

    monkeypatch.setattr(Path, "read_bytes", spy)
    out = tmp_path / "out"
    report = ingest_source(root, out, **stage_options(ingest_source, "ingest", min_side=16), progress=False)

    assert outside.resolve() not in opened, "a path outside the root was opened"
    rejects = _rejects(out)
    expected = {
        "img/dup.png": "duplicate",
        "img/truncated.png": "corrupt",
        "img/empty.png": "empty_file",
        "img/text.png": "not_an_image",
        "img/bomb.png": "too_many_pixels",
        "img/tiny.png": "too_small",
        "img/nocap.png": "missing_caption",
        "img/blankcap.png": "missing_caption",
        "img/missing.png": "missing_file",
        "../outside.png": "path_escapes_root",
        str(outside): "path_escapes_root",
        "img/link.png": "path_escapes_root",
        "img/unlisted.png": "not_in_metadata",
        "img/badkp.png": "bad_metadata",
        "metadata.jsonl:16": "bad_metadata",
        "metadata.jsonl:17": "bad_metadata",
    }
    assert {k: v[0] for k, v in rejects.items()} == expected
    assert "line 16" in rejects["metadata.jsonl:16"][1] and "JSON" in rejects["metadata.jsonl:16"][1]
    assert "img/good.png" in rejects["img/dup.png"][1]
    # the good images still land
    rows = {r["source_path"]: r for r in _manifest(out)}
    assert set(rows) == {"img/good.png", "img/good2.png"}
    assert rows["img/good2.png"]["caption"] == "a person sitting by a lake"
    assert rows["img/good.png"]["gt_x"] is None and rows["img/good.png"]["scene_id"] is None
    assert sorted(p.name for p in (out / "images").iterdir()) == sorted(f"{r['image_id']}.png" for r in rows.values())
    counts = json.loads((out / "report.json").read_text())
    assert counts["seen"] == len(expected) + 2 == counts["accepted"] + counts["rejected_total"]
    assert counts["rejected"]["path_escapes_root"] == 3 and report.rejected["missing_caption"] == 2


def test_pixel_limit_is_exact_and_read_from_the_header(tmp_path):
    root = _folder(
        tmp_path / "src",
        {"at.png": _png((100, 50)), "over.png": _png((101, 50), color=(1, 2, 3))},
        [{"file_name": "at.png", "text": "at the limit"}, {"file_name": "over.png", "text": "one column more"}],
    )
    ingest_source(root, tmp_path / "out", **stage_options(ingest_source, "ingest", max_pixels=5000), progress=False)
    assert [r["source_path"] for r in _manifest(tmp_path / "out")] == ["at.png"]
    reason, detail = _rejects(tmp_path / "out")["over.png"]
    assert reason == "too_many_pixels" and "5050" in detail
    assert Image.MAX_IMAGE_PIXELS == 89_478_485  # the stage restores Pillow's global


def _encoded(im: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def test_modes_are_converted_to_rgb_not_rejected(tmp_path):
    rgba = Image.new("RGBA", (20, 20), (255, 0, 0, 255))
    rgba.putpixel((0, 0), (0, 0, 0, 0))  # fully transparent -> white
    i16 = Image.fromarray(np.full((20, 20), 65535, dtype=np.uint16))
    i16.putpixel((0, 0), 32896)  # 32896 / 257 = 128
    palette = Image.new("P", (20, 20), 3)
    palette.putpalette([0, 0, 0, 10, 10, 10, 20, 20, 20, 200, 100, 50] + [0] * 756)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated 90 degrees: stored 40x20, displayed 20x40
    images = {
        "cmyk.jpg": _encoded(Image.new("CMYK", (20, 20), (0, 255, 255, 0)), "JPEG", quality=95),
        "cmyk.tif": _encoded(Image.new("CMYK", (20, 20), (0, 0, 0, 0)), "TIFF"),
        "i16.png": _encoded(i16, "PNG"),
        "rgba.png": _encoded(rgba, "PNG"),
        "la.png": _encoded(Image.new("LA", (20, 20), (100, 0)), "PNG"),
        "p.png": _encoded(palette, "PNG"),
        "l.png": _encoded(Image.new("L", (20, 20), 77), "PNG"),
        "one.png": _encoded(Image.new("1", (20, 20), 1), "PNG"),
        "exif.jpg": _encoded(Image.new("RGB", (40, 20), (0, 200, 0)), "JPEG", exif=exif),
    }
    root = _folder(tmp_path / "src", images, [{"file_name": n, "text": f"image {n}"} for n in images])
    report = ingest_source(root, tmp_path / "out", **stage_options(ingest_source, "ingest"), progress=False)
    assert report.rejected_total == 0 and report.accepted == len(images)
    assert report.converted == 8 and report.converted_from["CMYK"] == 2 and report.converted_from["I;16"] == 1
    rows = {r["source_path"]: r for r in _manifest(tmp_path / "out")}

    def pixels(name: str) -> np.ndarray:
        with Image.open(tmp_path / "out" / rows[name]["path"]) as im:
            assert im.mode == "RGB"
            return np.asarray(im)

    assert tuple(pixels("rgba.png")[0, 0]) == (255, 255, 255) and tuple(pixels("rgba.png")[5, 5]) == (255, 0, 0)
    assert tuple(pixels("la.png")[3, 3]) == (255, 255, 255)  # alpha 0 everywhere
    assert tuple(pixels("i16.png")[0, 0]) == (128, 128, 128) and tuple(pixels("i16.png")[5, 5]) == (255, 255, 255)
    assert tuple(pixels("p.png")[2, 2]) == (200, 100, 50)
    assert tuple(pixels("l.png")[2, 2]) == (77, 77, 77)
    assert tuple(pixels("cmyk.tif")[2, 2]) == (255, 255, 255)
    r, g, b = pixels("cmyk.jpg")[10, 10].astype(int)
    assert r > 200 and g < 60 and b < 60  # C=0 M=255 Y=255 K=0 is red
    assert (rows["exif.jpg"]["width"], rows["exif.jpg"]["height"]) == (20, 40)


def test_metadata_csv_variant(tmp_path):
    root = tmp_path / "src"
    root.mkdir()
    (root / "a.png").write_bytes(_noise_png(1))
    (root / "b.png").write_bytes(_noise_png(2))
    kp = json.dumps({"x": [5.0] + [None] * 17, "y": [6.0] + [None] * 17})
    with open(root / "metadata.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["file_name", "caption", "scene_id", "keypoints"])
        w.writerow(["a.png", "a person waving", "s1", kp])
        w.writerow(["b.png", "a person running", "s1", "", "an extra cell"])
    ingest_source(root, tmp_path / "out", **stage_options(ingest_source, "ingest"), progress=False)
    (row,) = _manifest(tmp_path / "out")
    assert (row["source_path"], row["caption"], row["scene_id"]) == ("a.png", "a person waving", "s1")
    assert row["gt_x"][:2] == [5.0, None] and row["gt_y"][0] == 6.0
    reason, detail = _rejects(tmp_path / "out")["metadata.csv:3"]
    assert reason == "bad_metadata" and "line 3" in detail


def test_hf_dataset_saved_to_disk(tmp_path):
    import datasets

    images = [_noise_png(1), _png(mode="RGBA", color=(0, 0, 0, 0)), _noise_png(1), _noise_png(3)]
    ds = datasets.Dataset.from_dict(
        {
            "image": [{"bytes": b, "path": None} for b in images],
            "text": ["a person jumping", "transparent", "duplicate of row 0", ""],
            "scene_id": ["a", "a", "b", "b"],
        },
        features=datasets.Features(
            {"image": datasets.Image(), "text": datasets.Value("string"), "scene_id": datasets.Value("string")}
        ),
    )
    ds.save_to_disk(str(tmp_path / "ds"))
    report = ingest_source(
        tmp_path / "ds",
        tmp_path / "out",
        **stage_options(ingest_source, "ingest", source_kind="hf_dataset"),
        progress=False,
    )
    rows = _manifest(tmp_path / "out")
    assert [(r["source_path"], r["scene_id"]) for r in rows] == [("#0", "a"), ("#1", "a")]
    assert rows[0]["image_id"] == image_id_for(images[0])
    assert report.converted_from == {"RGBA": 1}
    assert {k: v[0] for k, v in _rejects(tmp_path / "out").items()} == {"#2": "duplicate", "#3": "missing_caption"}


def test_hf_dataset_hub_id_offline_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(InputDataError, match="no-such-user/no-such-dataset"):
        ingest_source(
            "no-such-user/no-such-dataset",
            tmp_path / "out",
            **stage_options(ingest_source, "ingest", source_kind="hf_dataset"),
            progress=False,
        )
    assert not (tmp_path / "out").exists()


def test_source_without_metadata_names_the_directory_and_the_fix(tmp_path):
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "a.png").write_bytes(_png())
    with pytest.raises(InputDataError, match=r"photos: no metadata\.jsonl.*file_name.*text"):
        ingest_source(tmp_path / "photos", tmp_path / "out", **stage_options(ingest_source, "ingest"), progress=False)
    with pytest.raises(InputDataError, match="does not exist"):
        ingest_source(tmp_path / "nowhere", tmp_path / "out", **stage_options(ingest_source, "ingest"), progress=False)


def test_failure_midway_keeps_the_previous_output(tmp_path, monkeypatch):
    import posescene.data.ingest as ingest_mod

    files = {f"{i}.png": _noise_png(i) for i in range(4)}
    root = _folder(tmp_path / "src", files, [{"file_name": n, "text": "a person"} for n in files])
    out = tmp_path / "out"
    ingest_source(root, out, **stage_options(ingest_source, "ingest"), progress=False)
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}

    (root / "9.png").write_bytes(_noise_png(9))
    with open(root / "metadata.jsonl", "a") as f:
        f.write(json.dumps({"file_name": "9.png", "text": "new"}) + "\n")
    real, calls = ingest_mod._decode, []

    def flaky(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("disk on fire")
        return real(*args, **kwargs)

    monkeypatch.setattr(ingest_mod, "_decode", flaky)
    with pytest.raises(RuntimeError, match="disk on fire"):
        ingest_source(root, out, **stage_options(ingest_source, "ingest"), progress=False)
    after = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert after == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".out")] == []  # no temp dir left
