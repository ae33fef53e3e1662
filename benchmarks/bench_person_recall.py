"""People found in real photographs: the MediaPipe paths side by side on the committed labelled set.

The set is ``tests/data/photos`` (freely licensed photographs, sources and licences in its README;
``labels.json`` holds a hand-drawn head box per person). Each variant is the poses stage's MediaPipe
detector with params.yaml's thresholds and a different ``poses.person_proposals`` / ``max_persons``:

- ``today``: the whole-image PoseLandmarker alone at ``max_persons: 4``, the path before issue 28 (the peer);
- ``default``: params.yaml's ``poses`` section as it stands;
- the alternatives: face proposals alone, HOG people proposals, all three, and ``today`` with the default's
  ``max_persons`` (to tell the cap from the proposals).

Each detection goes through :func:`posescene.data.poses.lattice_rows` (``min_score``, the frame, ``max_persons``)
as in the stage. A labelled person counts as found when a detection's nose or neck lies in the person's head
box (one detection per person); a detection that matches nobody, and no ``ignore`` box of a person too cut by
the frame to label, is a false person. Speed: the seconds of ``detect`` per image, every variant timed on
every image in turn in the same process (round-robin, after one untimed pass), reported as images/s and as
the ratio of each variant's time per image to ``today``'s (medians over the passes; ``*_per_pass``: the ratio
in each pass, its spread); the same for the process's CPU time (``cpu_vs_today``), which a machine shared with
other jobs disturbs less than the wall clock.

    python benchmarks/bench_person_recall.py [--repeats 3] [--out benchmarks/results/person_recall.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
PHOTOS = REPO / "tests" / "data" / "photos"
TODAY_MAX_PERSONS = 4  # params.yaml's max_persons before issue 28
MULTI_KINDS = ("crowd", "group")  # images with several labelled people
SETTINGS = ("person_proposals", "max_persons", "min_detection_confidence", "min_presence_confidence", "min_score",
            "mask_heads", "landmarker_persons", "crop_rois")  # fmt: skip
# the detector's own options (MediaPipeDetector keywords), not params.yaml's: None is the detector's choice
DETECTOR_OPTIONS = {"mask_heads": True, "landmarker_persons": None, "crop_rois": True}


def load_set(root: Path = PHOTOS) -> list[tuple[str, np.ndarray, dict[str, Any]]]:
    """(file name, RGB array, label) per labelled photo, in name order."""
    labels = json.loads((root / "labels.json").read_text())
    out = []
    for name in sorted(k for k in labels if not k.startswith("_")):
        with Image.open(root / name) as im:
            out.append((name, np.asarray(im.convert("RGB")), labels[name]))
    return out


def _in_box(point: tuple[float, float] | None, box: list[float]) -> bool:
    return point is not None and box[0] <= point[0] <= box[2] and box[1] <= point[1] <= box[3]


def _point(row: dict[str, Any], index: int) -> tuple[float, float] | None:
    x, y = row["x"][index], row["y"][index]
    return None if x is None or y is None else (x, y)


def match_people(rows: list[dict[str, Any]], label: dict[str, Any]) -> dict[str, Any]:
    """Which labelled people one image's lattice rows find, and how many rows are false people.

    A row finds the first labelled person not yet found whose head box holds its nose, else its neck.
    A row that finds nobody is false unless one of its present points lies in an ``ignore`` box.
    """
    from posescene.topology import INDEX

    people = label["people"]
    found = [False] * len(people)
    false = 0
    for row in (r for r in rows if r["has_person"]):
        nose, neck = _point(row, INDEX["nose"]), _point(row, INDEX["neck"])
        hit = next((i for i, p in enumerate(people) if not found[i] and _in_box(nose, p["head"])), None)
        if hit is None:
            hit = next((i for i, p in enumerate(people) if not found[i] and _in_box(neck, p["head"])), None)
        if hit is not None:
            found[hit] = True
            continue
        points = [(x, y) for x, y in zip(row["x"], row["y"], strict=True) if x is not None]
        if not any(_in_box(pt, box) for box in label.get("ignore", []) for pt in points):
            false += 1
    return {"found": found, "false": false}


def score(per_image: dict[str, dict[str, Any]], labels: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Recall on multi-person photos, on upper-body people, on all people; false people per image."""

    def recall(select: Any) -> dict[str, float | int]:
        hits = [f for name, r in per_image.items() for f, p in zip(r["found"], labels[name]["people"], strict=True)
                if select(labels[name], p)]  # fmt: skip
        return {"people": len(hits), "found": sum(hits), "recall": sum(hits) / len(hits) if hits else float("nan")}

    n_false = sum(r["false"] for r in per_image.values())
    return {
        "multi_person": recall(lambda img, p: img["kind"] in MULTI_KINDS),
        "upper_body": recall(lambda img, p: p["upper_body"]),
        "small": recall(lambda img, p: img["kind"] == "small"),
        "all": recall(lambda img, p: True),
        "false_people": n_false,
        "false_people_per_image": n_false / len(per_image),
    }


def variants(poses: Any) -> dict[str, dict[str, Any]]:
    """name -> the detector settings that differ from params.yaml's ``poses`` section.

    ``mask_heads: False`` is the ROI stage without hiding the other heads (the path of commit f569c75).
    ``landmarker_persons``: how many people the whole-image PoseLandmarker proposes (the default: one with face
    proposals, as of issue 28's speed work; ``max_persons`` before). ``crop_rois: False`` gives the ROI stage the
    whole (copied, heads hidden) frame instead of its square's part. ``default_2dfda34`` is the default of commit
    2dfda34 (both changes undone), the other two ``default_*`` undo one each.
    """
    return {
        "today": {"person_proposals": ["landmarker"], "max_persons": TODAY_MAX_PERSONS},
        "default": {},
        "default_2dfda34": {"landmarker_persons": poses.max_persons, "crop_rois": False},
        "default_landmarker_16": {"landmarker_persons": poses.max_persons},
        "default_uncropped": {"crop_rois": False},
        "default_unmasked": {"mask_heads": False},
        "today_uncapped": {"person_proposals": ["landmarker"]},
        "faces_only": {"person_proposals": ["faces"]},
        "faces_only_unmasked": {"person_proposals": ["faces"], "mask_heads": False},
        "landmarker+hog": {"person_proposals": ["landmarker", "hog"]},
        "landmarker+faces+hog": {"person_proposals": ["landmarker", "faces", "hog"]},
    }


def split_of(label: dict[str, Any]) -> str:
    """``tuning`` (the photos the method was designed and tuned on) or ``held_out`` (added after it was frozen)."""
    return str(label.get("split", "tuning"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3, help="timed passes over the set per variant")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "person_recall.json")
    args = ap.parse_args()

    from posescene.config import default_params
    from posescene.data.detectors import MediaPipeDetector, check_detector
    from posescene.data.poses import lattice_rows
    from posescene.io import write_json_atomic

    poses = default_params().poses
    photos = load_set()
    labels = {name: label for name, _, label in photos}
    settings = {name: {**poses.model_dump(), **DETECTOR_OPTIONS, **over} for name, over in variants(poses).items()}
    check_detector("mediapipe")
    detectors = {}
    for name, s in settings.items():  # what make_detector("mediapipe", ...) builds, with the detector's options
        detectors[name] = MediaPipeDetector(
            s["min_detection_confidence"],
            s["min_presence_confidence"],
            s["max_persons"],
            s["person_proposals"],
            **{k: s[k] for k in DETECTOR_OPTIONS},
        )
    seconds: dict[str, list[float]] = {name: [] for name in detectors}
    cpu: dict[str, list[float]] = {name: [] for name in detectors}
    detections: dict[str, dict[str, Any]] = {name: {} for name in detectors}
    for rep in range(args.repeats + 1):  # pass 0 warms every model up and is not timed
        totals = dict.fromkeys(detectors, 0.0)
        cpu_totals = dict.fromkeys(detectors, 0.0)
        for file_name, image, _ in photos:
            for name, detector in detectors.items():  # round-robin: every variant sees the same machine state
                t0, c0 = time.perf_counter(), time.process_time()
                (persons,) = detector.detect([image])
                totals[name] += time.perf_counter() - t0
                cpu_totals[name] += time.process_time() - c0
                if rep == 0:
                    h, w = image.shape[:2]
                    record = {"image_id": file_name, "width": w, "height": h}
                    cap = settings[name]["max_persons"]
                    rows = lattice_rows(record, persons, "mediapipe", poses.beta, poses.min_score, cap)
                    detections[name][file_name] = rows
        if rep:
            for name in detectors:
                seconds[name].append(totals[name])
                cpu[name].append(cpu_totals[name])
    for detector in detectors.values():
        detector.close()

    results: dict[str, Any] = {}
    for name in detectors:
        per_image = {f: match_people(rows, labels[f]) for f, rows in detections[name].items()}
        s_per_image = statistics.median(seconds[name]) / len(photos)
        held_out = {f: r for f, r in per_image.items() if split_of(labels[f]) == "held_out"}
        tuning = {f: r for f, r in per_image.items() if split_of(labels[f]) == "tuning"}
        results[name] = {
            "settings": {k: settings[name][k] for k in SETTINGS},
            **score(per_image, labels),
            "tuning": score(tuning, labels),
            "held_out": score(held_out, labels) if held_out else None,
            "per_image": {f: {"found": sum(r["found"]), "people": len(r["found"]), "false": r["false"]}
                          for f, r in per_image.items()},  # fmt: skip
            "seconds_per_image": s_per_image,
            "images_per_s": 1.0 / s_per_image,
            "cpu_seconds_per_image": statistics.median(cpu[name]) / len(photos),
        }
    today, today_cpu = results["today"]["seconds_per_image"], results["today"]["cpu_seconds_per_image"]
    for name, r in results.items():
        r["time_vs_today"] = r["seconds_per_image"] / today
        r["cpu_vs_today"] = r["cpu_seconds_per_image"] / today_cpu
        # the same ratios pass by pass (each pass times every variant on every image in turn): their spread
        r["time_vs_today_per_pass"] = [a / b for a, b in zip(seconds[name], seconds["today"], strict=True)]
        r["cpu_vs_today_per_pass"] = [a / b for a, b in zip(cpu[name], cpu["today"], strict=True)]
    out = {
        "benchmark": "bench_person_recall",
        "photos": len(photos),
        "held_out_photos": sorted(f for f in labels if split_of(labels[f]) == "held_out"),
        "people": sum(len(label["people"]) for label in labels.values()),
        "repeats": args.repeats,
        "targets": {"multi_person_recall": 0.8, "upper_body_recall": 0.8, "false_people_per_image": 0.1,
                    "time_vs_today": 2.0},  # fmt: skip
        "variants": results,
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": sys.version.split()[0],
                    "omp_num_threads": os.environ.get("OMP_NUM_THREADS")},  # fmt: skip
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
    }
    write_json_atomic(args.out, out)

    def line(r: dict[str, Any]) -> str:
        multi, upper = r["multi_person"], r["upper_body"]
        return (f"multi {multi['found']:2d}/{multi['people']} ({multi['recall']:.2f})"
                f"  upper {upper['found']:2d}/{upper['people']} ({upper['recall']:.2f})"
                f"  small {r['small']['found']}/{r['small']['people']}"
                f"  false/img {r['false_people_per_image']:.2f}")  # fmt: skip

    for name, r in results.items():
        wall, cpu_ = r["time_vs_today_per_pass"], r["cpu_vs_today_per_pass"]
        print(f"{name:22s} all: {line(r)}  {r['images_per_s']:.1f} img/s  "
              f"x{r['time_vs_today']:.2f} today's time ({min(wall):.2f}-{max(wall):.2f} by pass; "
              f"CPU x{r['cpu_vs_today']:.2f}, {min(cpu_):.2f}-{max(cpu_):.2f})")  # fmt: skip
        if r["held_out"] is not None:
            print(f"{'':22s} held out: {line(r['held_out'])}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
