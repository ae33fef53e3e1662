"""Stage 2, ``poses``: pose lattices (docs/method.md step 1) of every ingested image, into a Parquet dataset.

For each image of the manifest the detector (:mod:`posescene.data.detectors`) gives persons with 18 pixel
keypoints and scores. A point is *missing* (null in every list) when its score is below ``min_score``
or it lies outside the image; a person with no point left is dropped; an image with no person is one
row with ``has_person=false``. Present points are normalised with bias beta by
:func:`posescene.lattice.normalise` (x_hat = (x + beta w) / ((1 + 2 beta) w), likewise y).

Several people: every person the detector finds is kept, up to ``max_persons``, ordered by prominence
(the area of the box around the person's present points, as a fraction of the image; more prominent
first), so ``person`` 0 is the most prominent one, and each row says how prominent it is and how many
people its image has (``prominence``, ``n_persons``). The run counts the images where nobody was found
and warns about them: a detector that misses obvious people shows at once.

The output directory holds one ``part-<hash>.parquet`` per batch (columns and schema metadata in
docs/architecture.md). The work is:

- batched: :func:`process_batch` takes one :class:`BatchTask` (a plain, picklable value), runs the
  detector on its images and writes its part file atomically, so that it can run in this process, in
  a process pool (``workers``), or under any other map function (``run_poses(map_fn=...)``: a Dask
  ``client.map`` wrapper, for instance); each worker process builds its detector once;
- incremental: a rerun reads the image ids of the existing parts and processes only the others, so
  adding images, or rerunning after a crash, never recomputes or duplicates a row. Parts made with a
  different detector, weights, beta or min_score are cleared first (a warning says so), and rows of
  images no longer in the manifest are pruned.
- laid out as a fresh run lays it out: the manifest, in its order, cut into ``batch_size`` chunks, is the
  *canonical* batching; work is planned per canonical batch, and a batch whose rows ended up in several
  parts (a crash, a manifest that grew or shrank) is rewritten into its one canonical part from the rows
  already computed. So the directory's bytes depend only on the manifest and the settings, never on the
  history of runs, and DVC's hash of an incremental rerun equals a fresh clone's.

Part files are named by a hash of their image ids, so a batch that is recomputed overwrites itself.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import multiprocessing
import os
import shutil
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image
from tqdm.auto import tqdm

from posescene.data.detectors import Detector, ImageRecord, PersonKeypoints, check_detector, make_detector
from posescene.errors import InputDataError
from posescene.data.ingest import read_manifest
from posescene.io import atomic_path
from posescene.lattice import normalise
from posescene.topology import KEYPOINT_NAMES, N_KEYPOINTS

if TYPE_CHECKING:  # the library reads the settings off the object; workers never import the schema
    from posescene.config import Params, PosesParams

log = logging.getLogger(__name__)

PART_GLOB = "part-*.parquet"
DETECT_CHUNK = 8  # images decoded at once inside a batch: bounds memory for large photographs
_LIST = pa.list_(pa.float32())
LATTICE_SCHEMA = pa.schema(
    [
        ("image_id", pa.string()),
        ("person", pa.int32()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("detector", pa.string()),
        ("has_person", pa.bool_()),
        ("x", _LIST),
        ("y", _LIST),
        ("score", _LIST),
        ("x_norm", _LIST),
        ("y_norm", _LIST),
        ("prominence", pa.float32()),  # keypoint-box area / image area; null on has_person=false rows
        ("n_persons", pa.int32()),  # people kept in this image (0 on the has_person=false row)
    ]
)
# Columns added after the first lattices were written: read_lattices fills them with nulls for old parts.
OPTIONAL_COLUMNS = ("prominence", "n_persons")
META_TOPOLOGY = "posescene.topology"
META_BETA = "posescene.beta"
META_DETECTOR = "posescene.detector"
META_WEIGHTS = "posescene.weights"
META_MIN_SCORE = "posescene.min_score"
META_DETECTOR_OPTIONS = "posescene.detector_options"  # JSON: the detector's thresholds that change its output

MapFn = Callable[[Callable[["BatchTask"], "BatchResult"], Sequence["BatchTask"]], Iterable["BatchResult"]]
# Where the batches run, decided once by the caller (the poses flow): ``runner(manifest)`` is a context (a cluster
# while it is open) that yields :func:`run_poses` options (``map_fn``, ``batch_size``, ``progress``).
Runner = Callable[[str], AbstractContextManager[dict[str, Any]]]


@dataclass(frozen=True)
class DetectorSpec:
    """How to build a detector: a hashable value, so each worker process builds it once and caches it."""

    name: str
    weights: str | None
    device: str | None
    min_detection_confidence: float
    min_presence_confidence: float
    max_persons: int
    person_proposals: tuple[str, ...]  # mediapipe's proposals (poses.person_proposals), a tuple: hashable

    def options(self) -> dict[str, float | int | list[str]]:
        """The settings that change what this detector finds (stored with the lattices; a change restarts)."""
        if self.name == "groundtruth":
            return {}
        if self.name == "mediapipe":
            return {
                "max_persons": self.max_persons,
                "min_detection_confidence": self.min_detection_confidence,
                "min_presence_confidence": self.min_presence_confidence,
                "person_proposals": list(self.person_proposals),
            }
        return {"max_persons": self.max_persons}


@dataclass(frozen=True)
class BatchTask:
    """One batch: everything :func:`process_batch` needs, picklable (no open handles, no models)."""

    records: tuple[dict[str, Any], ...]  # manifest rows: image_id, path, width, height, gt_x, gt_y
    manifest_dir: str
    out_dir: str
    detector: DetectorSpec
    beta: float
    min_score: float


@dataclass(frozen=True)
class BatchResult:
    part: str
    images: int
    images_with_person: int
    persons: int
    seconds: float
    no_person: tuple[str, ...] = ()  # image ids where nobody was found


@dataclass
class PosesSummary:
    """What a run did (the flow publishes it; ``images_per_second`` counts processed images only)."""

    out_dir: str
    detector: str
    beta: float
    images_total: int = 0
    images_existing: int = 0
    images_processed: int = 0
    images_with_person: int = 0
    images_without_person: int = 0  # processed images where the detector found nobody (see the warning)
    no_person_examples: list[str] = field(default_factory=list)  # up to 10 of their image ids
    persons_found: int = 0
    parts_written: int = 0
    parts_merged: int = 0  # canonical parts rewritten from rows of earlier runs (no detection)
    pruned_images: int = 0
    restarted: bool = False
    restart_reason: str = ""
    seconds: float = 0.0
    images_per_second: float = 0.0
    warnings: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def schema_metadata(
    detector: str,
    beta: float,
    min_score: float,
    weights: str | None,
    options: dict[str, float | int | list[str]] | None = None,
) -> dict[str, str]:
    return {
        META_TOPOLOGY: json.dumps(list(KEYPOINT_NAMES)),
        META_BETA: repr(float(beta)),
        META_DETECTOR: detector,
        META_MIN_SCORE: repr(float(min_score)),
        META_WEIGHTS: weights or "",
        META_DETECTOR_OPTIONS: json.dumps(options or {}, sort_keys=True),
    }


# --------------------------------------------------------------------------------------------------
# One batch (runs in any process)

_DETECTORS: dict[DetectorSpec, Detector] = {}


def get_detector(spec: DetectorSpec) -> Detector:
    """The detector for ``spec``, built on first use in this process and kept (one per worker)."""
    detector = _DETECTORS.get(spec)
    if detector is None:
        detector = _DETECTORS[spec] = make_detector(
            spec.name,
            spec.weights,
            device=spec.device,
            min_detection_confidence=spec.min_detection_confidence,
            min_presence_confidence=spec.min_presence_confidence,
            max_persons=spec.max_persons,
            person_proposals=spec.person_proposals,
        )
    return detector


def _load_rgb(manifest_dir: Path, record: dict[str, Any]) -> np.ndarray:
    path = manifest_dir / record["path"]
    try:
        with Image.open(path) as im:
            arr = np.asarray(im.convert("RGB"))
    except (OSError, ValueError) as exc:
        raise InputDataError(f"{path}: cannot read an ingested image ({exc}); rerun ingest.") from None
    if arr.shape[:2] != (record["height"], record["width"]):
        raise InputDataError(
            f"{path}: size {arr.shape[1]}x{arr.shape[0]} differs from the manifest's "
            f"{record['width']}x{record['height']}; rerun ingest."
        )
    return arr


def _as_list(values: np.ndarray, present: np.ndarray) -> list[float | None]:
    return [float(v) if ok else None for v, ok in zip(values.tolist(), present.tolist(), strict=True)]


def _prominence(xy: np.ndarray, present: np.ndarray, w: int, h: int) -> float:
    """Area of the box around the present points as a fraction of the image (0 for a single point)."""
    pts = xy[present]
    return float(np.ptp(pts[:, 0]) * np.ptp(pts[:, 1]) / (w * h))


def lattice_rows(
    record: dict[str, Any],
    persons: Sequence[PersonKeypoints],
    detector: str,
    beta: float,
    min_score: float,
    max_persons: int | None = None,
) -> list[dict[str, Any]]:
    """Rows of one image: one per person with at least one present point, or one has_person=false row.

    Persons are ordered by prominence (most prominent first, ``person`` 0) and the first ``max_persons``
    kept (all with None).
    """
    w, h = int(record["width"]), int(record["height"])
    found: list[tuple[float, float, np.ndarray, np.ndarray, np.ndarray]] = []
    for person in persons:
        xy = np.asarray(person.xy, dtype=np.float64)
        score = np.asarray(person.score, dtype=np.float64)
        with np.errstate(invalid="ignore"):
            present = (
                np.isfinite(xy).all(axis=1)
                & np.isfinite(score)
                & (score >= min_score)
                & (xy[:, 0] >= 0)
                & (xy[:, 0] < w)
                & (xy[:, 1] >= 0)
                & (xy[:, 1] < h)
            )
        if present.any():
            found.append((_prominence(xy, present, w, h), float(score[present].sum()), xy, score, present))
    found.sort(key=lambda f: (-f[0], -f[1]))  # ties (single points) by total score
    found = found[:max_persons] if max_persons is not None else found
    rows = []
    for prominence, _, xy, score, present in found:
        x_norm, y_norm = normalise(xy[:, 0], xy[:, 1], w, h, beta)
        rows.append({
            "image_id": record["image_id"], "person": len(rows), "width": w, "height": h,
            "detector": detector, "has_person": True,
            "x": _as_list(xy[:, 0], present), "y": _as_list(xy[:, 1], present), "score": _as_list(score, present),
            "x_norm": _as_list(x_norm, present), "y_norm": _as_list(y_norm, present),
            "prominence": prominence, "n_persons": len(found),
        })  # fmt: skip
    if not rows:
        rows.append({
            "image_id": record["image_id"], "person": 0, "width": w, "height": h, "detector": detector,
            "has_person": False, "x": None, "y": None, "score": None, "x_norm": None, "y_norm": None,
            "prominence": None, "n_persons": 0,
        })  # fmt: skip
    return rows


def part_name(image_ids: Iterable[str]) -> str:
    """A part file's name from its image ids: recomputing the same batch overwrites, never duplicates."""
    digest = hashlib.sha256("\n".join(sorted(image_ids)).encode()).hexdigest()[:20]
    return f"part-{digest}.parquet"


def process_batch(task: BatchTask) -> BatchResult:
    """Detect, threshold and normalise one batch and write its part file atomically.

    A plain top-level function of one picklable argument, so any map (this process, a process pool,
    Dask's ``client.map``) can run it. Deterministic failures (an unreadable ingested image, missing
    weights) raise; the parts already written stay valid, and a rerun continues after them.
    """
    start = time.perf_counter()
    detector = get_detector(task.detector)
    manifest_dir = Path(task.manifest_dir)
    rows: list[dict[str, Any]] = []
    for i in range(0, len(task.records), DETECT_CHUNK):
        chunk = task.records[i : i + DETECT_CHUNK]
        images = [_load_rgb(manifest_dir, r) if detector.needs_pixels else None for r in chunk]
        infos = [
            ImageRecord(r["image_id"], int(r["width"]), int(r["height"]), r.get("gt_x"), r.get("gt_y")) for r in chunk
        ]
        detections = detector.detect(images, infos)
        if len(detections) != len(chunk):
            raise RuntimeError(f"detector {detector.name} returned {len(detections)} results for {len(chunk)} images")
        for record, persons in zip(chunk, detections, strict=True):
            rows.extend(
                lattice_rows(record, persons, task.detector.name, task.beta, task.min_score, task.detector.max_persons)
            )
    meta = schema_metadata(
        task.detector.name, task.beta, task.min_score, task.detector.weights, task.detector.options()
    )
    table = pa.Table.from_pylist(rows, schema=LATTICE_SCHEMA).replace_schema_metadata(meta)
    name = part_name(r["image_id"] for r in task.records)
    with atomic_path(Path(task.out_dir) / name) as tmp:
        pq.write_table(table, tmp)
    with_person = {r["image_id"] for r in rows if r["has_person"]}
    return BatchResult(
        part=name,
        images=len(task.records),
        images_with_person=len(with_person),
        persons=sum(1 for r in rows if r["has_person"]),
        seconds=time.perf_counter() - start,
        no_person=tuple(r["image_id"] for r in rows if not r["has_person"]),
    )


# --------------------------------------------------------------------------------------------------
# Runners


def _init_worker(threads: int) -> None:
    """Pool initializer: share the cores among the workers (before torch/TFLite read the settings)."""
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(threads)


def process_pool_map(workers: int) -> MapFn:
    """A map function over a spawn-context process pool of ``workers`` processes (results as completed).

    spawn, not fork: the detectors hold thread pools (TFLite, torch) that do not survive a fork. On the
    first failure the batches not yet started are cancelled and the error is raised.
    """

    def run(fn: Callable[[BatchTask], BatchResult], tasks: Sequence[BatchTask]) -> Iterator[BatchResult]:
        if not tasks:
            return
        n = max(1, min(workers, len(tasks)))
        threads = max(1, (os.cpu_count() or 1) // n)
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=n, mp_context=ctx, initializer=_init_worker, initargs=(threads,)) as ex:
            futures = [ex.submit(fn, task) for task in tasks]
            try:
                for future in as_completed(futures):
                    yield future.result()
            finally:
                for future in futures:
                    future.cancel()

    return run


def serial_map(fn: Callable[[BatchTask], BatchResult], tasks: Sequence[BatchTask]) -> Iterator[BatchResult]:
    """Run the batches one after another in this process."""
    for task in tasks:
        yield fn(task)


# --------------------------------------------------------------------------------------------------
# The output directory


def _parts(out_dir: Path) -> list[Path]:
    return sorted(out_dir.glob(PART_GLOB))


def _remove_leftovers(out_dir: Path) -> None:
    """Temp dirs of part writes interrupted by a kill (atomic_path cleans up on exceptions, not on SIGKILL)."""
    for tmp in out_dir.glob(".part-*.tmp"):
        shutil.rmtree(tmp, ignore_errors=True)


def _mismatch(meta: dict[bytes, bytes], wanted: dict[str, str]) -> str:
    """Why a part made with ``meta`` cannot be extended under ``wanted`` ('' when it can)."""
    got = {k.decode(): v.decode() for k, v in (meta or {}).items()}
    diffs = []
    for key in (META_DETECTOR, META_WEIGHTS, META_BETA, META_MIN_SCORE, META_TOPOLOGY, META_DETECTOR_OPTIONS):
        old, new = got.get(key), wanted.get(key)  # lattices written before a key existed lack it
        if key in (META_BETA, META_MIN_SCORE) and old is not None:
            try:
                if math.isclose(float(old), float(new), rel_tol=0, abs_tol=1e-12):
                    continue
            except (TypeError, ValueError):  # one side missing or not a number: compare as text
                pass
        if old != new:
            diffs.append(f"{key.removeprefix('posescene.')} {old!r} -> {new!r}")
    return ", ".join(diffs)


def _scan_existing(out_dir: Path, wanted: dict[str, str]) -> tuple[dict[Path, list[str]], str]:
    """Image ids per existing part, or ({}, reason) after clearing parts made with other settings."""
    existing: dict[Path, list[str]] = {}
    for part in _parts(out_dir):
        try:
            meta = pq.read_schema(part).metadata
            ids = pq.read_table(part, columns=["image_id"]).column("image_id").to_pylist()
        except (OSError, pa.ArrowInvalid, KeyError) as exc:
            log.warning("poses: %s is unreadable (%s); removing it, its images will be redone", part, exc)
            part.unlink(missing_ok=True)
            continue
        reason = _mismatch(meta, wanted)
        if reason:
            for p in _parts(out_dir):
                p.unlink(missing_ok=True)
            return {}, reason
        existing[part] = ids
    return existing, ""


def _prune(existing: dict[Path, list[str]], keep: set[str]) -> int:
    """Rewrite (atomically) the parts holding images no longer in the manifest; return how many went."""
    pruned = 0
    for part, ids in list(existing.items()):
        stale = set(ids) - keep
        if not stale:
            continue
        table = pq.read_table(part)
        mask = pa.array([i in keep for i in table.column("image_id").to_pylist()])
        kept = table.filter(mask)
        pruned += len(stale)
        if kept.num_rows == 0:
            part.unlink()
            del existing[part]
        else:
            with atomic_path(part) as tmp:
                pq.write_table(kept, tmp)
            existing[part] = [i for i in ids if i in keep]
    return pruned


def _merge_into_canonical(out_dir: Path, batches: Sequence[Sequence[dict[str, Any]]], meta: dict[str, str]) -> int:
    """Rewrite every canonical batch that has no part of its own from the rows the other parts hold.

    A batch's rows are put in the order :func:`process_batch` writes them (records in manifest order, each
    image's persons as detected), so the part is the one a fresh run writes, byte for byte. Parts that are
    not canonical are removed once every canonical part is in place (a kill in between leaves repeated
    rows, which :func:`read_lattices` reads once and the next run merges again). Returns the parts written.
    """
    canonical = {part_name(r["image_id"] for r in batch): batch for batch in batches}
    strays = [p for p in _parts(out_dir) if p.name not in canonical]
    missing = [name for name in canonical if not (out_dir / name).exists()]
    if not strays:
        return 0
    rows_by_id: dict[str, list[dict[str, Any]]] = {}
    ids_of: dict[Path, set[str]] = {}
    for part in strays:  # each stray is read once
        rows = pq.read_table(part).to_pylist()
        ids_of[part] = {row["image_id"] for row in rows}
        for row in rows:
            rows_by_id.setdefault(row["image_id"], []).append(row)
    written = 0
    for name in missing:
        batch = canonical[name]
        if any(r["image_id"] not in rows_by_id for r in batch):
            continue  # not computed yet (a failed batch): the next run does it
        rows = [row for r in batch for row in rows_by_id[r["image_id"]]]
        table = pa.Table.from_pylist(rows, schema=LATTICE_SCHEMA).replace_schema_metadata(meta)
        with atomic_path(out_dir / name) as tmp:
            pq.write_table(table, tmp)
        written += 1
    covered = {r["image_id"] for name, batch in canonical.items() if (out_dir / name).exists() for r in batch}
    for part in strays:
        if ids_of[part] <= covered:
            part.unlink()
    return written


def _manifest_records(manifest: str | Path) -> tuple[list[dict[str, Any]], Path]:
    table = read_manifest(manifest)
    path = Path(manifest)
    manifest_dir = path if path.is_dir() else path.parent
    columns = [c for c in ("image_id", "path", "width", "height", "gt_x", "gt_y") if c in table.column_names]
    records = table.select(columns).to_pylist()
    seen: set[str] = set()
    unique = []
    for r in records:  # ingest never writes duplicates; a hand-made manifest might
        if r["image_id"] not in seen:
            seen.add(r["image_id"])
            unique.append(r)
    if len(unique) < len(records):
        log.warning("poses: the manifest lists %d image ids more than once; each is processed once",
                    len(records) - len(unique))  # fmt: skip
    return unique, manifest_dir


def run_poses(
    manifest: str | Path,
    out_dir: str | Path,
    *,
    detector: str,
    weights: str | None,
    beta: float,
    min_score: float,
    min_detection_confidence: float,
    min_presence_confidence: float,
    max_persons: int,
    person_proposals: Sequence[str],
    batch_size: int,
    workers: int,
    device: str | None = None,
    map_fn: MapFn | None = None,
    progress: bool = True,
) -> PosesSummary:
    """Compute the lattices of every manifest image not yet in ``out_dir``; return what was done.

    ``manifest``: the ingest output directory or its ``manifest.parquet``. ``min_detection_confidence``,
    ``min_presence_confidence``: mediapipe's thresholds for a person box and its landmarks (lower finds
    more, less sure, people); ``max_persons``: people kept per image, most prominent first;
    ``person_proposals``: where mediapipe looks for people (:class:`posescene.data.detectors.MediaPipeDetector`:
    ``landmarker`` the whole image, ``faces`` body crops grown from faces, ``hog`` HOG people boxes).
    ``map_fn(process_batch, tasks)`` overrides the runner (default: this process for ``workers == 1``, else a
    spawn process pool); it must yield one :class:`BatchResult` per task, in any order.
    """
    if batch_size < 1 or workers < 1 or max_persons < 1:
        raise InputDataError(
            f"poses.batch_size ({batch_size}), poses.workers ({workers}) and poses.max_persons ({max_persons}) "
            "must be >= 1"
        )
    for key, value in (("min_detection_confidence", min_detection_confidence),
                       ("min_presence_confidence", min_presence_confidence)):  # fmt: skip
        if not 0.0 <= value <= 1.0:
            raise InputDataError(f"poses.{key} must be in [0, 1] (got {value})")
    if not 0.0 <= min_score <= 1.0 or not 0.0 <= beta:
        raise InputDataError(f"min_score must be in [0, 1] and beta >= 0 (got {min_score}, {beta})")
    start = time.perf_counter()
    records, manifest_dir = _manifest_records(manifest)
    if detector == "groundtruth" and records and not any(r.get("gt_x") is not None for r in records):
        raise InputDataError(
            f"{manifest}: no image has ground-truth keypoints, so the groundtruth detector would find no "
            "person. Use a pose model: --detector mediapipe (photographs), or openpose/dwpose with --weights."
        )
    check_detector(detector, weights)  # fail before any worker starts
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    _remove_leftovers(out_dir)
    summary = PosesSummary(out_dir=str(out_dir), detector=detector, beta=beta, images_total=len(records))
    spec = DetectorSpec(detector, weights, device, min_detection_confidence, min_presence_confidence, max_persons,
                        tuple(person_proposals))  # fmt: skip
    wanted = schema_metadata(detector, beta, min_score, weights, spec.options())
    existing, reason = _scan_existing(out_dir, wanted)
    if reason:
        summary.restarted, summary.restart_reason = True, reason
        msg = f"poses: existing lattices in {out_dir} were made with other settings ({reason}); starting over"
        log.warning(msg)
        summary.warnings.append(msg)
    manifest_ids = {r["image_id"] for r in records}
    summary.pruned_images = _prune(existing, manifest_ids)
    if summary.pruned_images:
        log.info("poses: removed the lattices of %d images no longer in the manifest", summary.pruned_images)
    done = {i for ids in existing.values() for i in ids}
    # One task per canonical batch with images still to do (only those images), so a fresh run's tasks are
    # the canonical parts themselves and a rerun's partial batches are merged afterwards.
    batches = [records[i : i + batch_size] for i in range(0, len(records), batch_size)]
    todo_batches = [[r for r in batch if r["image_id"] not in done] for batch in batches]
    summary.images_existing = len(records) - sum(len(b) for b in todo_batches)
    tasks = [
        BatchTask(
            records=tuple(todo),
            manifest_dir=str(manifest_dir),
            out_dir=str(out_dir),
            detector=spec,
            beta=beta,
            min_score=min_score,
        )
        for todo in todo_batches
        if todo
    ]
    n_todo = len(records) - summary.images_existing
    log.info("poses: %d images, %d already done, %d to do in %d batches", len(records), summary.images_existing,
             n_todo, len(tasks))  # fmt: skip
    runner = map_fn or (serial_map if workers == 1 else process_pool_map(workers))
    bar = tqdm(total=len(tasks), desc=f"poses ({detector})", unit="batch", disable=not progress)
    t0 = time.perf_counter()
    try:
        for result in runner(process_batch, tasks):
            summary.images_processed += result.images
            summary.images_with_person += result.images_with_person
            summary.images_without_person += len(result.no_person)
            summary.no_person_examples += list(result.no_person[: 10 - len(summary.no_person_examples)])
            summary.persons_found += result.persons
            summary.parts_written += 1
            elapsed = time.perf_counter() - t0
            bar.update(1)
            bar.set_postfix(img_s=f"{summary.images_processed / max(elapsed, 1e-9):.1f}")
    finally:
        bar.close()
    work = time.perf_counter() - t0
    summary.parts_merged = _merge_into_canonical(out_dir, batches, wanted)
    if summary.images_without_person:
        msg = (
            f"poses: no person found in {summary.images_without_person} of {summary.images_processed} images "
            f"(detector {detector}; e.g. {', '.join(summary.no_person_examples[:5])}). If they show people, lower "
            "poses.min_detection_confidence / poses.min_presence_confidence or try another poses.detector."
        )
        log.warning(msg)
        summary.warnings.append(msg)
    summary.seconds = time.perf_counter() - start
    summary.images_per_second = summary.images_processed / work if summary.images_processed and work > 0 else 0.0
    return summary


def _stage_options(p: PosesParams) -> dict[str, Any]:
    """The ``poses`` section as :func:`run_poses` keywords: one place maps it onto the call."""
    return {
        "detector": p.detector,
        "weights": p.weights,
        "beta": p.beta,
        "min_score": p.min_score,
        "min_detection_confidence": p.min_detection_confidence,
        "min_presence_confidence": p.min_presence_confidence,
        "max_persons": p.max_persons,
        "person_proposals": p.person_proposals,
        "batch_size": p.batch_size,
        "workers": p.workers,
    }


def poses(params: Params, *, progress: bool = True, runner: Runner | None = None) -> PosesSummary:
    """Stage ``poses``: the lattices of every image of ``ingest.out_dir`` not yet in ``poses.out_dir`` (params.yaml).

    ``runner``: where the batches run, decided once by the caller: None for the library's own (this process, or a
    process pool of ``poses.workers``), else ``runner(manifest)``, a context that yields the :func:`run_poses`
    options of another engine (``flows._dask.dask_runner``); they replace the section's (``batch_size``).
    """
    p, manifest = params.poses, params.ingest.out_dir
    options = {**_stage_options(p), "progress": progress}
    if runner is None:
        return run_poses(manifest, p.out_dir, **options)
    with runner(manifest) as engine:
        return run_poses(manifest, p.out_dir, **{**options, **engine})


def read_lattices(path: str | Path) -> pa.Table:
    """All lattice rows of a poses output directory, sorted by (image_id, person), with its schema metadata.

    An empty directory gives an empty table with the lattice schema. Rows repeated across parts (only
    possible if part files were copied by hand) are kept once, with a warning.
    """
    path = Path(path)
    if not path.is_dir():
        raise InputDataError(f"{path}: no lattice directory. Run `posescene poses` (or python -m flows.poses) first.")
    parts = _parts(path)
    if not parts:
        return LATTICE_SCHEMA.empty_table()
    tables = []
    meta: dict[bytes, bytes] | None = None
    for part in parts:
        try:
            table = pq.read_table(part)
        except (OSError, pa.ArrowInvalid) as exc:
            raise InputDataError(f"{part}: unreadable lattice part ({exc}); rerun the poses stage.") from None
        if meta is None:
            meta = table.schema.metadata
        else:
            reason = _mismatch(table.schema.metadata, {k.decode(): v.decode() for k, v in meta.items()})
            if reason:
                raise InputDataError(f"{path}: parts made with different settings ({reason}); rerun the poses stage.")
        for name in OPTIONAL_COLUMNS:  # parts written before the column existed
            if name not in table.column_names:
                table = table.append_column(name, pa.nulls(table.num_rows, LATTICE_SCHEMA.field(name).type))
        tables.append(table.select(LATTICE_SCHEMA.names).cast(LATTICE_SCHEMA))
    table = pa.concat_tables(tables).sort_by([("image_id", "ascending"), ("person", "ascending")])
    keys = list(zip(table.column("image_id").to_pylist(), table.column("person").to_pylist(), strict=True))
    if len(set(keys)) < len(keys):
        seen: set[tuple[str, int]] = set()
        keep = []
        for key in keys:
            keep.append(key not in seen)
            seen.add(key)
        log.warning("read_lattices: %s holds %d repeated rows; keeping the first", path, keep.count(False))
        table = table.filter(pa.array(keep))
    return table.replace_schema_metadata(meta)


def lattice_arrays(table: pa.Table, column: str) -> np.ndarray:
    """A list column as an (n, 18) float array with NaN for missing points (and for has_person=false rows)."""
    out = np.full((table.num_rows, N_KEYPOINTS), np.nan, dtype=np.float32)
    for i, values in enumerate(table.column(column).to_pylist()):
        if values is not None:
            out[i] = [np.nan if v is None else v for v in values]
    return out
