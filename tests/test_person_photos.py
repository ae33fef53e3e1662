"""Issue 28: people in real photographs (tests/data/photos, hand-labelled head boxes), found offline.

These pin what the default MediaPipe path finds on the committed set against the path before issue 28
(the whole-image PoseLandmarker at max_persons 4), on all photos and on the five held out from tuning.
Speed is not tested here: benchmarks/bench_person_recall.py
measures both side by side (benchmarks/results/person_recall.json).
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import REPO_ROOT

from posescene.config import default_params
from posescene.data.detectors import MediaPipeDetector, _eyes_in, face_roi, hide_heads, make_detector, roi_window
from posescene.data.poses import lattice_rows
from posescene.errors import ConfigError
from posescene.topology import INDEX

PHOTOS = REPO_ROOT / "tests" / "data" / "photos"


def _bench() -> Any:
    path = REPO_ROOT / "benchmarks" / "bench_person_recall.py"
    spec = importlib.util.spec_from_file_location("bench_person_recall", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


@pytest.fixture(scope="module")
def bench() -> Any:
    return _bench()


@pytest.fixture(scope="module")
def photo_set(bench) -> list[tuple[str, np.ndarray, dict[str, Any]]]:
    return bench.load_set(PHOTOS)


def _run(
    photo_set, bench, mask_heads: bool = True, **over: Any
) -> tuple[dict[str, Any], dict[str, list[dict[str, Any]]]]:
    """Score params.yaml's poses settings (``over`` replaces some) on the set: all photos, plus ``held_out``."""
    p = default_params().poses.model_dump() | over
    detector = make_detector(
        "mediapipe",
        None,
        min_detection_confidence=p["min_detection_confidence"],
        min_presence_confidence=p["min_presence_confidence"],
        max_persons=p["max_persons"],
        person_proposals=p["person_proposals"],
    )
    detector.mask_heads = mask_heads  # type: ignore[attr-defined]
    rows: dict[str, list[dict[str, Any]]] = {}
    try:
        for name, image, _ in photo_set:
            (persons,) = detector.detect([image])
            record = {"image_id": name, "width": image.shape[1], "height": image.shape[0]}
            rows[name] = lattice_rows(record, persons, "mediapipe", p["beta"], p["min_score"], p["max_persons"])
    finally:
        detector.close()
    labels = {name: label for name, _, label in photo_set}
    per_image = {name: bench.match_people(r, labels[name]) for name, r in rows.items()}
    held_out = {name: r for name, r in per_image.items() if bench.split_of(labels[name]) == "held_out"}
    return {**bench.score(per_image, labels), "held_out": bench.score(held_out, labels)}, rows


def test_the_photo_set_is_labelled_licensed_and_small():
    labels = json.loads((PHOTOS / "labels.json").read_text())
    readme = (PHOTOS / "README.md").read_text()
    files = sorted(p.name for p in PHOTOS.glob("*.jpg"))
    assert files == sorted(k for k in labels if not k.startswith("_"))
    for name in files:  # every photo has its source and licence row
        row = next(line for line in readme.splitlines() if line.startswith(f"| {name} |"))
        assert any(lic in row for lic in ("CC BY", "CC0", "public domain")), row
    assert sum((PHOTOS / f).stat().st_size for f in files) < 650_000
    kinds = {label["kind"] for label in labels.values() if isinstance(label, dict) and "kind" in label}
    assert kinds == {"crowd", "group", "upper", "single", "small", "nobody"}
    # five photos added after the method was frozen, never used to choose anything (see the set's README)
    held_out = {name: labels[name]["kind"] for name in files if labels[name].get("split") == "held_out"}
    assert len(held_out) == 5 and set(held_out.values()) == {"group", "small", "nobody"}
    assert all(labels[name].get("split", "tuning") in ("tuning", "held_out") for name in files)


@pytest.fixture(scope="module")
def default_run(photo_set, bench) -> tuple[dict[str, Any], dict[str, list[dict[str, Any]]]]:
    return _run(photo_set, bench)


def test_default_path_finds_the_people_today_missed(photo_set, bench, default_run):
    default, rows = default_run
    today, _ = _run(photo_set, bench, person_proposals=["landmarker"], max_persons=bench.TODAY_MAX_PERSONS)
    # measured on this set (benchmarks/results/person_recall.json), 17 photos: default 29/33 multi-person
    # (0.88), 18/19 upper body (0.95), no false person (1 before the whole-image pass proposed one person only);
    # today 14/33 and 11/19. The held-out five:
    # default 6/7 multi-person, 1/1 upper body, no false person; today 5/7. Issue 28's targets: 0.8 / 0.8 / 0.1.
    assert today["multi_person"]["found"] <= 15 and today["upper_body"]["found"] <= 12
    assert default["multi_person"]["recall"] >= 0.85 and default["upper_body"]["recall"] >= 0.9
    assert default["multi_person"]["found"] >= today["multi_person"]["found"] + 13
    assert default["false_people_per_image"] <= 0.1
    held_out = default["held_out"]
    assert held_out["multi_person"]["recall"] >= 0.8 and held_out["upper_body"]["recall"] >= 0.8
    assert held_out["false_people"] == 0
    for name in ("nobody_waiting_room.jpg", "nobody_storefront.jpg", "nobody_terrace.jpg"):
        assert [r["has_person"] for r in rows[name]] == [False]
    # every one of the six people cut at the thighs, where today's path found two
    assert sum(r["has_person"] for r in rows["group_six_meeting.jpg"]) >= 6


def test_hiding_the_other_heads_finds_the_people_behind(photo_set, bench, default_run):
    """Without hiding, the landmark stage on a face's ROI reads the neighbour in front (the eye check drops it)."""
    masked, masked_rows = default_run
    unmasked, unmasked_rows = _run(photo_set, bench, mask_heads=False)
    # measured: 29 against 25 of the 33 multi-person people, the same false people
    assert masked["multi_person"]["found"] >= unmasked["multi_person"]["found"] + 3
    assert masked["false_people"] <= unmasked["false_people"]

    def found(rows: list[dict[str, Any]], name: str) -> list[bool]:
        label = next(label for n, _, label in photo_set if n == name)
        return bench.match_people(rows, label)["found"]

    # the man leaning over the seated woman: his ROI holds the helmeted man's head until it is hidden
    assert found(masked_rows["group_navy_clinic.jpg"], "group_navy_clinic.jpg") == [True, True, True]
    assert found(unmasked_rows["group_navy_clinic.jpg"], "group_navy_clinic.jpg")[1] is False


def test_hide_heads_paints_each_box_in_its_own_mean_colour():
    image = np.zeros((10, 12, 3), np.uint8)
    image[:, 6:] = 200
    out = hide_heads(image, [(4.0, -3.0, 8.0, 4.0), (20.0, 20.0, 30.0, 30.0)])  # clipped; the second is outside
    assert out[0, 4].tolist() == [100, 100, 100] and out[3, 7].tolist() == [100, 100, 100]
    assert out[4, 4].tolist() == [0, 0, 0] and out[4, 7].tolist() == [200, 200, 200]
    assert image[0, 4].tolist() == [0, 0, 0]  # the input is untouched


def test_an_upper_body_person_gets_a_lattice_with_null_legs(default_run):
    _, rows = default_run
    (astronaut,) = rows["upper_astronaut.jpg"]
    assert astronaut["has_person"] and astronaut["x"][INDEX["nose"]] is not None
    assert astronaut["x"][INDEX["r_shoulder"]] is not None and astronaut["x"][INDEX["l_shoulder"]] is not None
    for leg in ("r_knee", "l_knee", "r_ankle", "l_ankle"):  # out of frame: missing, as the lattice allows
        assert astronaut["x"][INDEX[leg]] is None and astronaut["x_norm"][INDEX[leg]] is None


def test_the_landmark_stage_on_a_face_roi_finds_that_face_s_person(photo_set):
    """A face's ROI (under the face, 9 face sides wide, past the frame for an upper body) gives its person."""
    image = next(img for name, img, _ in photo_set if name == "upper_astronaut.jpg")
    detector = MediaPipeDetector(0.5, 0.5, 4, proposals=("faces",))
    try:
        ((face, roi),) = detector.head_proposals(image)
        assert roi == face_roi(face) and roi[1] > face[3] and roi[1] + roi[2] / 2 > image.shape[0]
        person = detector._landmarks_in(image, roi)
        assert person is not None and _eyes_in(person, face)
        nose = person.xy[INDEX["nose"]]
        assert face[0] <= nose[0] <= face[2] and face[1] <= nose[1] <= face[3]
        assert detector._landmarks_in(np.zeros_like(image), roi) is None  # nobody there: no pose
        # the stage is given only its square's part of the image: the same person as from the whole frame
        detector.crop_rois = False
        whole = detector._landmarks_in(image, roi)
        assert whole is not None and np.nanmax(np.abs(whole.xy - person.xy)) < 2.0
    finally:
        detector.close()


def test_roi_window_is_the_roi_square_inside_the_frame():
    assert roi_window((50.0, 40.0, 20.0), 100, 80) == (38, 28, 62, 52)  # 2 px to spare each side
    assert roi_window((95.0, 75.0, 40.0), 100, 80) == (73, 53, 100, 80)  # clipped by the frame
    assert roi_window((-50.0, 40.0, 20.0), 100, 80) is None  # outside it


def test_with_faces_the_whole_image_pass_proposes_one_person():
    detector = MediaPipeDetector(0.5, 0.5, 16, proposals=("landmarker", "faces"))
    alone = MediaPipeDetector(0.5, 0.5, 4, proposals=("landmarker",))
    try:  # the most prominent person; the faces propose the others (benchmarks/bench_person_recall.py)
        assert detector.landmarker_persons == 1 and alone.landmarker_persons == 4
    finally:
        detector.close()
        alone.close()


def test_person_proposals_are_validated(tmp_path: Path):
    with pytest.raises(ConfigError, match="person_proposals"):
        default_params({"poses.person_proposals": ["yolo"]})
    with pytest.raises(ConfigError, match="person_proposals"):
        default_params({"poses.person_proposals": []})
    with pytest.raises(ConfigError, match="twice"):
        default_params({"poses.person_proposals": ["faces", "faces"]})
    with pytest.raises(ConfigError, match="person_proposals"):
        MediaPipeDetector(0.5, 0.5, 4, proposals=())
