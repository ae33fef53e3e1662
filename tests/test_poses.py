"""Stage 2 (poses): detectors, normalisation, the Parquet contract, incremental and parallel runs, the CLI."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from _params import stage_options
from PIL import Image

import posescene.data.poses as poses_mod
from posescene.config import PROJECT_PARAMS, default_params
from posescene.data.detectors import DetectorUnavailableError, PersonKeypoints, drop_duplicates, make_detector
from posescene.data.ingest import ingest_source
from posescene.data.poses import lattice_rows, read_lattices, run_poses
from posescene.errors import InputDataError
from posescene.topology import INDEX, KEYPOINT_NAMES, N_KEYPOINTS


@pytest.fixture(scope="module")
def synth_ingested(synth_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The conftest PoseScenes world (24 images with ground-truth keypoints), ingested once."""
    return _ingest(synth_dir, tmp_path_factory)


def _ingest(src: Path, factory: pytest.TempPathFactory) -> Path:
    out = factory.mktemp("ingest") / "ingested"
    ingest_source(src, out, **stage_options(ingest_source, "ingest"), progress=False)
    return out


def _subset_manifest(ingested: Path, n: int, name: str) -> Path:
    """A manifest file of the first ``n`` rows beside the full one (same images/ directory)."""
    table = pq.read_table(ingested / "manifest.parquet").slice(0, n)
    path = ingested / name
    pq.write_table(table, path)
    return path


def _key_rows(table) -> list[tuple]:
    return sorted(zip(table["image_id"].to_pylist(), table["person"].to_pylist(), strict=True))


# --------------------------------------------------------------------------------------------------
# Detectors


@pytest.fixture(scope="module")
def photo_ingested(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real photograph of a person (skimage's astronaut) and a blank image, ingested."""
    from skimage import data

    src = tmp_path_factory.mktemp("photos")
    Image.fromarray(data.astronaut()).save(src / "astronaut.png")
    Image.new("RGB", (256, 256), (128, 128, 128)).save(src / "blank.png")
    rows = [
        {"file_name": "astronaut.png", "text": "an astronaut in front of a flag"},
        {"file_name": "blank.png", "text": "an empty grey wall"},
    ]
    (src / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return _ingest(src, tmp_path_factory)


def test_mediapipe_keypoints_land_on_the_person(photo_ingested, tmp_path, caplog):
    with caplog.at_level("WARNING", logger="posescene.data.poses"):
        summary = run_poses(
            photo_ingested,
            tmp_path / "lat",
            **stage_options(run_poses, "poses", detector="mediapipe", beta=0.05),
            progress=False,
        )
    assert summary.images_processed == 2 and summary.persons_found == 1
    # the blank image is counted and named, so a detector that misses people shows at once
    assert summary.images_without_person == 1 and len(summary.no_person_examples) == 1
    assert "no person found in 1 of 2 images" in caplog.text and "min_detection_confidence" in caplog.text
    table = read_lattices(tmp_path / "lat")
    manifest = {r["source_path"]: r["image_id"] for r in pq.read_table(photo_ingested / "manifest.parquet").to_pylist()}
    rows = {r["image_id"]: r for r in table.to_pylist()}
    blank = rows[manifest["blank.png"]]
    assert blank["has_person"] is False and blank["x"] is None and blank["x_norm"] is None
    assert blank["prominence"] is None and blank["n_persons"] == 0
    assert summary.no_person_examples == [blank["image_id"]]
    person = rows[manifest["astronaut.png"]]
    assert person["has_person"] and person["person"] == 0 and (person["width"], person["height"]) == (512, 512)
    assert person["n_persons"] == 1 and 0.15 < person["prominence"] < 1.0  # upper body: a large share of the photo

    def pt(name: str) -> tuple[float, float]:
        i = INDEX[name]
        assert person["x"][i] is not None, f"{name} missing"
        return person["x"][i], person["y"][i]

    nose, neck, r_sh, l_sh = pt("nose"), pt("neck"), pt("r_shoulder"), pt("l_shoulder")
    assert 150 < nose[0] < 300 and 50 < nose[1] < 200  # on the face
    assert pt("r_eye")[1] < nose[1] < neck[1] and pt("l_eye")[1] < nose[1]  # eyes above the nose above the neck
    assert r_sh[0] < nose[0] < l_sh[0]  # facing the camera: her right shoulder is on the image's left
    assert min(r_sh[1], l_sh[1]) > nose[1] + 40
    np.testing.assert_allclose(neck, ((r_sh[0] + l_sh[0]) / 2, (r_sh[1] + l_sh[1]) / 2), atol=1e-3)
    s = person["score"]
    assert s[INDEX["neck"]] == pytest.approx(min(s[INDEX["r_shoulder"]], s[INDEX["l_shoulder"]]))
    assert all(v is None or v >= 0.3 for v in s)  # below min_score means missing
    assert table.schema.metadata[b"posescene.detector"] == b"mediapipe"


def test_groundtruth_detector_and_the_lattice_contract(synth_ingested, tmp_path):
    run_poses(
        synth_ingested,
        tmp_path / "lat",
        **stage_options(run_poses, "poses", detector="groundtruth", beta=0.1, batch_size=5),
        progress=False,
    )
    table = read_lattices(tmp_path / "lat")
    manifest = {r["image_id"]: r for r in pq.read_table(synth_ingested / "manifest.parquet").to_pylist()}
    assert table.num_rows == len(manifest) == 24 and len(list((tmp_path / "lat").glob("part-*.parquet"))) == 5
    meta = table.schema.metadata
    assert json.loads(meta[b"posescene.topology"]) == list(KEYPOINT_NAMES)
    assert float(meta[b"posescene.beta"]) == 0.1 and meta[b"posescene.detector"] == b"groundtruth"
    assert [f.name for f in table.schema] == [
        "image_id", "person", "width", "height", "detector", "has_person", "x", "y", "score", "x_norm", "y_norm",
        "prominence", "n_persons",
    ]  # fmt: skip
    for row in table.to_pylist():
        gt = manifest[row["image_id"]]
        assert row["has_person"] and row["person"] == 0 and row["detector"] == "groundtruth"
        for i in range(N_KEYPOINTS):
            x, y = gt["gt_x"][i], gt["gt_y"][i]
            if x is None:
                assert row["x"][i] is row["x_norm"][i] is row["score"][i] is None
                continue
            assert (row["x"][i], row["y"][i], row["score"][i]) == (pytest.approx(x), pytest.approx(y), 1.0)
            # docs/method.md step 1: x_hat = (x + beta w) / ((1 + 2 beta) w)
            w, h, beta = row["width"], row["height"], 0.1
            assert row["x_norm"][i] == pytest.approx((x + beta * w) / ((1 + 2 * beta) * w), abs=1e-6)
            assert row["y_norm"][i] == pytest.approx((y + beta * h) / ((1 + 2 * beta) * h), abs=1e-6)
            assert 0 < row["x_norm"][i] < 1 and 0 < row["y_norm"][i] < 1


@pytest.fixture(scope="module")
def people_ingested(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Real photographs shipped by scikit-image: the cameraman (one person, standing, grayscale) and a
    two-person picture made of the astronaut photo and a smaller mirrored copy beside it."""
    from skimage import data

    src = tmp_path_factory.mktemp("people")
    Image.fromarray(data.camera()).convert("RGB").save(src / "cameraman.png")
    astronaut = data.astronaut()
    small = Image.fromarray(astronaut[:, ::-1]).resize((384, 384))
    pair = Image.new("RGB", (512 + 64 + 384, 512), (128, 128, 128))
    pair.paste(Image.fromarray(astronaut), (0, 0))
    pair.paste(small, (576, 64))
    pair.save(src / "two_people.png")
    rows = [
        {"file_name": "cameraman.png", "text": "a man filming with a camera on a tripod in a field"},
        {"file_name": "two_people.png", "text": "two astronauts in front of a flag"},
    ]
    (src / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return _ingest(src, tmp_path_factory)


def _by_source(ingested: Path) -> dict[str, str]:
    return {r["source_path"]: r["image_id"] for r in pq.read_table(ingested / "manifest.parquet").to_pylist()}


def _point(row: dict, name: str) -> tuple[float, float] | None:
    i = INDEX[name]
    return None if row["x"][i] is None else (row["x"][i], row["y"][i])


def test_mediapipe_finds_the_standing_cameraman_and_both_people(people_ingested, tmp_path):
    summary = run_poses(
        people_ingested, tmp_path / "lat", **stage_options(run_poses, "poses", detector="mediapipe"), progress=False
    )
    assert (summary.images_processed, summary.images_without_person, summary.persons_found) == (2, 0, 3)
    ids = _by_source(people_ingested)
    rows = read_lattices(tmp_path / "lat").to_pylist()

    (man,) = [r for r in rows if r["image_id"] == ids["cameraman.png"]]
    nose = _point(man, "nose")
    assert nose is not None and 200 < nose[0] < 300 and 100 < nose[1] < 220  # on his face, behind the camera
    hips = [p for p in (_point(man, "r_hip"), _point(man, "l_hip")) if p is not None]
    assert hips and all(nose[1] + 100 < hip[1] for hip in hips)  # nose well above the hips
    ankles = [p for p in (_point(man, "r_ankle"), _point(man, "l_ankle")) if p is not None]
    assert all(ankle[1] > max(hip[1] for hip in hips) for ankle in ankles)

    pair = sorted((r for r in rows if r["image_id"] == ids["two_people.png"]), key=lambda r: r["person"])
    assert [r["person"] for r in pair] == [0, 1] and all(r["n_persons"] == 2 for r in pair)
    big, small = pair
    assert big["prominence"] > small["prominence"] > 0  # person 0 is the most prominent
    assert _point(big, "nose")[0] < 512 < 576 < _point(small, "nose")[0]  # each on its own photo
    for person in pair:
        nose, neck = _point(person, "nose"), _point(person, "neck")
        assert nose is not None and neck is not None and nose[1] < neck[1]
        assert all(v is None or v >= 0.3 for v in person["score"])


def test_detector_thresholds_are_params(people_ingested, tmp_path):
    """max_persons keeps the most prominent; a stricter detection confidence finds nobody; each change restarts."""
    out = tmp_path / "lat"
    summary = run_poses(
        people_ingested, out, **stage_options(run_poses, "poses", detector="mediapipe", max_persons=1), progress=False
    )
    assert summary.persons_found == 2 and summary.images_with_person == 2
    ids = _by_source(people_ingested)
    (only,) = [r for r in read_lattices(out).to_pylist() if r["image_id"] == ids["two_people.png"]]
    assert only["n_persons"] == 1 and _point(only, "nose")[0] < 512  # the larger astronaut
    options = json.loads(read_lattices(out).schema.metadata[b"posescene.detector_options"])
    assert options == {"max_persons": 1, "min_detection_confidence": 0.5, "min_presence_confidence": 0.5,
                       "person_proposals": ["landmarker", "faces"]}  # fmt: skip

    summary = run_poses(
        people_ingested,
        out,
        **stage_options(run_poses, "poses", detector="mediapipe", min_detection_confidence=1.0),
        progress=False,
    )
    assert summary.restarted and "detector_options" in summary.restart_reason
    assert summary.images_without_person == 2 and summary.persons_found == 0
    with pytest.raises(InputDataError, match="min_presence_confidence"):
        run_poses(
            people_ingested,
            out,
            **stage_options(run_poses, "poses", detector="mediapipe", min_presence_confidence=1.5),
            progress=False,
        )


def test_duplicates_and_parts_of_a_person_are_dropped():
    def person(x0: float, y0: float, size: float, conf: float) -> PersonKeypoints:
        xy = np.stack([np.linspace(x0, x0 + size, N_KEYPOINTS), np.linspace(y0, y0 + size, N_KEYPOINTS)], 1)
        return PersonKeypoints(xy.astype(np.float32), np.full(N_KEYPOINTS, conf, np.float32))

    whole, part, beside = person(100, 100, 100, 0.9), person(130, 150, 60, 0.5), person(260, 100, 100, 0.8)
    kept = drop_duplicates([part, beside, whole])
    assert kept == [whole, beside]  # the part lies inside the surer whole; the person beside stays


def test_most_prominent_person_first_and_max_persons():
    small_xy = np.tile(np.array([[30.0, 10.0]], np.float32), (N_KEYPOINTS, 1))
    small_xy[1] = (34.0, 14.0)
    big_xy = np.tile(np.array([[2.0, 2.0]], np.float32), (N_KEYPOINTS, 1))
    big_xy[1] = (20.0, 25.0)
    ones = np.ones(N_KEYPOINTS, np.float32)
    record = {"image_id": "abc", "width": 40, "height": 30}
    rows = lattice_rows(record, [PersonKeypoints(small_xy, ones), PersonKeypoints(big_xy, ones)], "openpose", 0.05, 0.3)
    assert [(r["person"], r["x"][1], r["n_persons"]) for r in rows] == [(0, 20.0, 2), (1, 34.0, 2)]
    assert rows[0]["prominence"] == pytest.approx(18 * 23 / (40 * 30)) and rows[1]["prominence"] == pytest.approx(
        16 / 1200
    )
    (only,) = lattice_rows(record, [PersonKeypoints(small_xy, ones), PersonKeypoints(big_xy, ones)], "openpose",
                           0.05, 0.3, max_persons=1)  # fmt: skip
    assert only["x"][1] == 20.0 and only["n_persons"] == 1


def test_threshold_bounds_and_people_without_points():
    xy = np.tile(np.array([[10.0, 20.0]], dtype=np.float32), (N_KEYPOINTS, 1))
    score = np.full(N_KEYPOINTS, 0.9, dtype=np.float32)
    score[0], score[1] = 0.29, 0.3  # below / exactly at min_score
    xy[2] = (-1.0, 5.0)  # outside the image
    xy[3] = (np.nan, np.nan)
    ghost = PersonKeypoints(xy, np.zeros(N_KEYPOINTS, dtype=np.float32))  # nothing confident: dropped
    record = {"image_id": "abc", "width": 40, "height": 30}
    rows = lattice_rows(record, [ghost, PersonKeypoints(xy, score)], "mediapipe", 0.05, 0.3)
    assert len(rows) == 1 and rows[0]["person"] == 0
    row = rows[0]
    assert row["x"][0] is None and row["score"][0] is None
    assert row["x"][1] == 10.0 and row["score"][1] == pytest.approx(0.3)
    assert row["x"][2] is None and row["x_norm"][3] is None and row["x"][4] == 10.0
    assert row["x_norm"][4] == pytest.approx((10 + 0.05 * 40) / (1.1 * 40))
    (empty,) = lattice_rows(record, [ghost], "mediapipe", 0.05, 0.3)
    assert empty["has_person"] is False and empty["x"] is None


def test_missing_weights_are_a_clear_error(tmp_path, monkeypatch):
    thresholds = stage_options(make_detector, "poses")  # MediaPipe's, from params.yaml
    with pytest.raises(DetectorUnavailableError, match=r"does not exist.*body_pose_model\.pth"):
        make_detector("openpose", str(tmp_path / "no-such-dir"), **thresholds)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DetectorUnavailableError, match=r"has no body_pose_model\.pth.*lllyasviel/Annotators"):
        make_detector("openpose", str(tmp_path / "empty"), **thresholds)
    with pytest.raises(DetectorUnavailableError, match="no weights given"):
        make_detector("openpose", None, **thresholds)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DetectorUnavailableError, match="HF_HUB_OFFLINE"):
        make_detector("openpose", "posescene-test/no-such-annotators", **thresholds)
    with pytest.raises(DetectorUnavailableError, match=r"dw-ll_ucoco_384\.pth"):
        make_detector("dwpose", str(tmp_path / "empty"), **thresholds)
    with pytest.raises(DetectorUnavailableError, match="bundled"):
        make_detector("mediapipe", str(tmp_path / "empty"), **thresholds)


def test_run_fails_before_work_on_missing_weights_or_ground_truth(photo_ingested, tmp_path):
    with pytest.raises(DetectorUnavailableError):
        run_poses(
            photo_ingested,
            tmp_path / "lat",
            **stage_options(run_poses, "poses", detector="openpose", weights=str(tmp_path / "x")),
            progress=False,
        )
    with pytest.raises(InputDataError, match="no image has ground-truth keypoints.*mediapipe"):
        run_poses(
            photo_ingested,
            tmp_path / "lat",
            **stage_options(run_poses, "poses", detector="groundtruth"),
            progress=False,
        )
    assert list((tmp_path / "lat").glob("part-*")) == []


# --------------------------------------------------------------------------------------------------
# Incremental, crash-safe, parallel


def _files(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.iterdir())}


def test_incremental_rerun_adds_only_new_images(synth_ingested, tmp_path):
    out = tmp_path / "lat"
    options = stage_options(run_poses, "poses", batch_size=4)
    first = run_poses(_subset_manifest(synth_ingested, 10, "first10.parquet"), out, **options, progress=False)
    assert (first.images_processed, first.images_existing, first.parts_written) == (10, 0, 3)
    parts_before = {p.name: p.stat().st_mtime_ns for p in out.glob("part-*.parquet")}
    second = run_poses(synth_ingested, out, **options, progress=False)
    assert (second.images_processed, second.images_existing) == (14, 10)
    # the two full batches are untouched; the third (8-9 of 8-11) was merged with the new 10-11 into one part
    assert second.parts_merged == 1
    assert sum((out / name).exists() and (out / name).stat().st_mtime_ns == mtime
               for name, mtime in parts_before.items()) == 2  # fmt: skip
    third = run_poses(synth_ingested, out, **options, progress=False)
    assert (third.images_processed, third.images_existing, third.parts_written, third.parts_merged) == (0, 24, 0, 0)
    table = read_lattices(out)
    keys = _key_rows(table)
    assert len(keys) == len(set(keys)) == 24
    # the manifest shrinks: lattices of images it no longer has are pruned
    fourth = run_poses(_subset_manifest(synth_ingested, 6, "first6.parquet"), out, **options, progress=False)
    assert fourth.pruned_images == 18 and read_lattices(out).num_rows == 6


def test_an_incremental_directory_is_byte_identical_to_a_fresh_one(synth_ingested, tmp_path):
    """DVC hashes the directory: what a rerun leaves must not depend on the runs before it (issue 26)."""
    options = stage_options(run_poses, "poses", batch_size=4)
    table = pq.read_table(synth_ingested / "manifest.parquet")
    later = synth_ingested / "later.parquet"  # images 3..20: some gone, some new, in the same order
    pq.write_table(table.slice(3, 18), later)
    history = tmp_path / "history"
    run_poses(_subset_manifest(synth_ingested, 10, "first10b.parquet"), history, **options, progress=False)
    run_poses(synth_ingested, history, **options, progress=False)
    summary = run_poses(later, history, **options, progress=False)
    assert summary.pruned_images == 6 and summary.images_processed == 0 and summary.parts_merged > 0
    fresh = tmp_path / "fresh"
    run_poses(later, fresh, **options, progress=False)
    assert _files(history) == _files(fresh)


def test_crash_midway_then_rerun_completes_without_duplicates(synth_ingested, tmp_path, monkeypatch):
    out = tmp_path / "lat"
    real, calls = poses_mod.process_batch, []

    def crashing(task):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("worker died")
        return real(task)

    monkeypatch.setattr(poses_mod, "process_batch", crashing)
    with pytest.raises(RuntimeError, match="worker died"):
        run_poses(synth_ingested, out, **stage_options(run_poses, "poses", batch_size=5), progress=False)
    assert len(list(out.glob("part-*.parquet"))) == 2  # the two finished batches are kept
    (out / ".part-0000.parquet.abc.tmp").mkdir()  # what a SIGKILL during a write leaves behind
    monkeypatch.setattr(poses_mod, "process_batch", real)
    summary = run_poses(synth_ingested, out, **stage_options(run_poses, "poses", batch_size=5), progress=False)
    assert (summary.images_existing, summary.images_processed) == (10, 14)
    keys = _key_rows(read_lattices(out))
    assert len(keys) == len(set(keys)) == 24
    assert not list(out.glob(".part-*"))


def test_other_beta_or_detector_starts_over(synth_ingested, tmp_path, caplog):
    out = tmp_path / "lat"
    run_poses(synth_ingested, out, **stage_options(run_poses, "poses", beta=0.05, batch_size=8), progress=False)
    with caplog.at_level("WARNING", logger="posescene.data.poses"):
        summary = run_poses(
            synth_ingested, out, **stage_options(run_poses, "poses", beta=0.2, batch_size=8), progress=False
        )
    assert summary.restarted and "beta" in summary.restart_reason and summary.images_processed == 24
    assert "starting over" in caplog.text
    table = read_lattices(out)
    assert table.num_rows == 24 and float(table.schema.metadata[b"posescene.beta"]) == 0.2
    row = table.to_pylist()[0]
    assert row["x_norm"][1] == pytest.approx((row["x"][1] + 0.2 * 64) / (1.4 * 64), abs=1e-6)


def test_two_workers_give_the_same_table_as_one(synth_ingested, tmp_path):
    one = run_poses(
        synth_ingested, tmp_path / "one", **stage_options(run_poses, "poses", batch_size=6, workers=1), progress=False
    )
    two = run_poses(
        synth_ingested, tmp_path / "two", **stage_options(run_poses, "poses", batch_size=6, workers=2), progress=False
    )
    assert one.parts_written == two.parts_written == 4
    assert read_lattices(tmp_path / "one").equals(read_lattices(tmp_path / "two"), check_metadata=True)
    assert sorted(p.name for p in (tmp_path / "one").iterdir()) == sorted(p.name for p in (tmp_path / "two").iterdir())


def test_map_fn_runs_every_batch(synth_ingested, tmp_path):
    seen = []

    def my_map(fn, tasks):  # what a Dask client.map wrapper would do
        seen.extend(tasks)
        return [fn(t) for t in reversed(tasks)]

    summary = run_poses(
        synth_ingested,
        tmp_path / "lat",
        **stage_options(run_poses, "poses", batch_size=10),
        map_fn=my_map,
        progress=False,
    )
    assert len(seen) == 3 and summary.images_processed == 24
    assert read_lattices(tmp_path / "lat").num_rows == 24


def test_the_stage_maps_the_poses_section_onto_the_call(monkeypatch):
    """``poses(params)`` runs ``run_poses`` on ingest.out_dir with every poses setting; a runner's options win."""
    from contextlib import contextmanager

    calls = []
    monkeypatch.setattr(poses_mod, "run_poses", lambda manifest, out, **kw: calls.append((manifest, out, kw)))
    params = default_params({"ingest.out_dir": "m", "poses.out_dir": "o"})
    opened = []

    @contextmanager
    def runner(manifest):
        opened.append(manifest)
        yield {"batch_size": 3, "progress": False, "map_fn": "cluster"}

    poses_mod.poses(params)
    poses_mod.poses(params, progress=False, runner=runner)
    # every required keyword, as params.yaml sets it
    assert calls[0] == ("m", "o", {**stage_options(run_poses, "poses"), "progress": True})
    assert calls[1][2] == {**stage_options(run_poses, "poses", batch_size=3), "progress": False, "map_fn": "cluster"}
    assert opened == ["m"]


def test_read_lattices_edges(tmp_path):
    with pytest.raises(InputDataError, match="no lattice directory"):
        read_lattices(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    assert read_lattices(tmp_path / "empty").num_rows == 0


# --------------------------------------------------------------------------------------------------
# CLI


def test_cli_ingest_then_poses(synth_dir, tmp_path):
    from typer.testing import CliRunner

    from posescene.cli import app

    runner = CliRunner()
    ingested, lattices = tmp_path / "ingested", tmp_path / "lat"
    paths = ["--params", str(PROJECT_PARAMS), "--set", f"ingest.source={synth_dir}", "--set",
             f"ingest.out_dir={ingested}", "--set", f"poses.out_dir={lattices}"]  # fmt: skip
    result = runner.invoke(app, ["ingest", *paths, "--set", "ingest.min_side=16", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "24 of 24 images accepted" in result.output
    result = runner.invoke(
        app, ["poses", *paths, "--set", "poses.beta=0.1", "--set", "poses.batch_size=10", "--no-progress"]
    )
    assert result.exit_code == 0, result.output
    assert "24 images processed" in result.output and "24 persons" in result.output
    assert math.isclose(float(read_lattices(lattices).schema.metadata[b"posescene.beta"]), 0.1)

    (tmp_path / "bare").mkdir()
    result = runner.invoke(app, ["ingest", *paths, "--set", f"ingest.source={tmp_path / 'bare'}",
                                 "--set", f"ingest.out_dir={tmp_path / 'o2'}"])  # fmt: skip
    assert result.exit_code == 2 and "no metadata.jsonl" in result.output
    result = runner.invoke(app, ["poses", *paths, "--set", "poses.detector=openpose", "--set", "poses.weights=nope/"])
    assert result.exit_code == 2 and "error:" in result.output and "body_pose_model.pth" in result.output
    result = runner.invoke(app, ["poses", *paths, "--set", "poses.beta=2"])  # the schema's range, before any work
    assert result.exit_code == 2 and "poses.beta" in result.output
