"""Stage 1, ``ingest``: captions + images -> a validated manifest of 8-bit RGB PNGs.

Sources are an *imagefolder* (``metadata.jsonl`` or ``metadata.csv`` beside the images, the Hugging Face
convention: ``file_name`` + caption column ``text`` or ``caption``), or a Hugging Face ``datasets``
dataset (a local ``save_to_disk`` directory, or a hub id when there is network). The PoseScenes output of
``synth`` is an imagefolder whose extra fields (``scene_id``, ``scene_kind``, ``action``, ``keypoints``)
are carried into the manifest.

Every input either becomes a manifest row or a row of ``rejects.csv`` with a reason code: bad input
never crashes the stage and never disappears silently. Paths from the metadata that leave the dataset
root are rejected *before* anything is opened. Image size is checked from the header before decoding
(decompression bombs). Non-RGB images are converted, not rejected (alpha is composited on white,
16-bit is scaled to 8-bit, CMYK goes through its ICC profile when it has one).

The output directory (``manifest.parquet``, ``images/<image_id>.png``, ``rejects.csv``,
``report.json``; see docs/architecture.md) is written atomically as a whole: a failure part-way leaves
the previous output untouched.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import logging
import math
import os
import posixpath
import struct
import warnings
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image, ImageCms, ImageFile, ImageOps, UnidentifiedImageError
from tqdm.auto import tqdm

from posescene.errors import InputDataError
from posescene.io import atomic_path
from posescene.topology import N_KEYPOINTS

if TYPE_CHECKING:
    from posescene.config import Params

log = logging.getLogger(__name__)

SourceKind = Literal["imagefolder", "hf_dataset"]

METADATA_FILES = ("metadata.jsonl", "metadata.csv")
CAPTION_COLUMNS = ("text", "caption")  # the first one present and non-empty wins
WHITE = (255, 255, 255, 255)

# Reason codes of rejects.csv (the report counts by these).
REASONS: dict[str, str] = {
    "bad_metadata": "a metadata line/row cannot be parsed or lacks file_name / has malformed fields",
    "path_escapes_root": "file_name is absolute, contains '..', or resolves (symlink) outside the source root",
    "missing_file": "file_name does not exist",
    "not_in_metadata": "an image file in the source folder that no metadata row names (it has no caption)",
    "missing_caption": "no caption, or an empty one",
    "empty_file": "a zero-byte file",
    "not_an_image": "not an image format Pillow can identify",
    "corrupt": "the image header or data cannot be decoded (truncated, damaged)",
    "too_many_pixels": "width x height above ingest.max_pixels (decompression-bomb guard)",
    "too_small": "a side below ingest.min_side",
    "unsupported_mode": "a pixel mode that cannot be converted to RGB",
    "duplicate": "the same bytes as an image accepted earlier",
}

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
        ("synth_seed", pa.int64()),  # PoseScenes provenance (null for photos): disjointness checks
        ("scene_index", pa.int64()),
        ("gt_x", pa.list_(pa.float32())),
        ("gt_y", pa.list_(pa.float32())),
    ]
)
REJECT_COLUMNS = ("source_path", "reason", "detail")


@dataclass(frozen=True)
class Reject:
    source_path: str
    reason: str
    detail: str


@dataclass
class _Entry:
    """One candidate image: where its bytes are and the metadata fields that came with it."""

    source_path: str
    fields: dict[str, Any]
    file: Path | None = None  # already checked to lie inside the source root
    data: bytes | None = None  # embedded bytes (HF datasets)


@dataclass
class IngestReport:
    """Counts of one ingest run (``report.json``). ``seen == accepted + rejected_total``."""

    source: str
    source_kind: str
    seen: int = 0
    accepted: int = 0
    converted: int = 0
    converted_from: dict[str, int] = field(default_factory=dict)
    rejected: dict[str, int] = field(default_factory=dict)
    max_pixels: int = 0
    min_side: int = 0

    @property
    def rejected_total(self) -> int:
        return sum(self.rejected.values())

    def as_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "source_kind": self.source_kind,
            "seen": self.seen,
            "accepted": self.accepted,
            "converted": self.converted,
            "converted_from": dict(sorted(self.converted_from.items())),
            "rejected_total": self.rejected_total,
            "rejected": dict(sorted(self.rejected.items())),
            "max_pixels": self.max_pixels,
            "min_side": self.min_side,
        }


class _Rejected(Exception):
    """Internal control flow: this entry becomes a reject row with ``reason`` and ``detail``."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


# --------------------------------------------------------------------------------------------------
# Paths: nothing outside the source root is ever opened.


def _check_relative_path(root: Path, name: Any) -> tuple[Path, str]:
    """Resolve metadata ``file_name`` inside ``root`` -> (resolved path, normalised relative path).

    Backslashes count as separators (metadata written on Windows), any ``..`` component and any
    absolute or drive path is refused outright, and the symlink-resolved target must stay under the
    resolved root. Only ``resolve()`` (no ``open``) touches the file system here.
    """
    if not isinstance(name, str) or not name.strip():
        raise _Rejected("bad_metadata", f"file_name missing or not a string (got {name!r})")
    if "\x00" in name:
        raise _Rejected("bad_metadata", "file_name contains a NUL byte")
    norm = name.replace("\\", "/")
    if norm.startswith("/") or PureWindowsPath(name).drive or PureWindowsPath(name).is_absolute():
        raise _Rejected("path_escapes_root", f"absolute path {name!r}; file_name must be relative to the root")
    parts = PurePosixPath(norm).parts
    if ".." in parts:
        raise _Rejected("path_escapes_root", f"{name!r} contains '..'; file_name must stay inside the root")
    rel = posixpath.normpath(norm)
    resolved = (root / rel).resolve()
    if not resolved.is_relative_to(root):
        raise _Rejected("path_escapes_root", f"{name!r} resolves outside the source root (to {resolved})")
    return resolved, rel


# --------------------------------------------------------------------------------------------------
# Metadata readers


def _clean_fields(fields: dict[str, Any]) -> dict[str, Any]:
    return {str(k).strip(): v for k, v in fields.items() if k is not None}


def _read_jsonl(path: Path) -> Iterator[tuple[int, dict[str, Any] | Reject]]:
    """(line number, fields or a bad_metadata reject) per non-blank line."""
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            problem = None
            try:
                obj = json.loads(raw.decode("utf-8"))
            except UnicodeDecodeError as exc:
                problem = f"not UTF-8 ({exc.reason})"
            except json.JSONDecodeError as exc:
                problem = f"invalid JSON ({exc.msg} at column {exc.colno})"
            else:
                if not isinstance(obj, dict):
                    problem = f"expected a JSON object, got {type(obj).__name__}"
            if problem:
                yield lineno, Reject(f"{path.name}:{lineno}", "bad_metadata", f"line {lineno}: {problem}")
            else:
                yield lineno, _clean_fields(obj)


def _read_csv(path: Path) -> Iterator[tuple[int, dict[str, Any] | Reject]]:
    """(line number, fields or a bad_metadata reject) per CSV record; a JSON ``keypoints`` cell is parsed."""
    with open(path, newline="", encoding="utf-8", errors="replace") as f:
        reader = csv.DictReader(f)
        header = reader.fieldnames or []
        while True:
            try:
                row = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                line = reader.line_num
                yield line, Reject(f"{path.name}:{line}", "bad_metadata", f"line {line}: unreadable CSV ({exc})")
                continue
            line = reader.line_num
            where = f"{path.name}:{line}"
            if None in row:  # more cells than header columns
                detail = f"line {line}: {len(header) + len(row[None])} fields, the header has {len(header)}"
                yield line, Reject(where, "bad_metadata", detail)
                continue
            fields = _clean_fields({k: v for k, v in row.items()})
            kp = fields.get("keypoints")
            if isinstance(kp, str):
                if not kp.strip():
                    fields["keypoints"] = None
                else:
                    try:
                        fields["keypoints"] = json.loads(kp)
                    except json.JSONDecodeError as exc:
                        yield line, Reject(where, "bad_metadata", f"line {line}: keypoints is not JSON ({exc.msg})")
                        continue
            yield line, fields


def _image_extensions() -> set[str]:
    Image.init()
    return {ext.lower() for ext in Image.registered_extensions()}


def _imagefolder_entries(root: Path) -> tuple[list[_Entry | Reject], str]:
    """All candidates of an imagefolder, plus image files that no metadata row names."""
    if not root.exists():
        raise InputDataError(f"{root}: source directory does not exist. Set ingest.source to an imagefolder directory.")
    if not root.is_dir():
        raise InputDataError(
            f"{root}: not a directory. An imagefolder source is a directory with images and metadata.jsonl."
        )
    found = [name for name in METADATA_FILES if (root / name).is_file()]
    if not found:
        raise InputDataError(
            f"{root}: no metadata.jsonl or metadata.csv in this directory. Add metadata.jsonl with one JSON "
            'object per image, e.g. {"file_name": "images/001.jpg", "text": "a person dancing in a park"} '
            "(or metadata.csv with columns file_name,text); for a saved Hugging Face dataset use "
            "--source-kind hf_dataset."
        )
    if len(found) > 1:
        raise InputDataError(f"{root}: both metadata.jsonl and metadata.csv exist; keep exactly one.")
    meta = root / found[0]
    reader = _read_jsonl if meta.suffix == ".jsonl" else _read_csv
    root_resolved = root.resolve()
    items: list[_Entry | Reject] = []
    listed: set[str] = set()
    for lineno, fields in reader(meta):
        if isinstance(fields, Reject):
            items.append(fields)
            continue
        name = fields.get("file_name")
        source_path = name if isinstance(name, str) and name.strip() else f"{meta.name}:{lineno}"
        if isinstance(name, str):  # named by a row, even a rejected one: not "unlisted" as well
            listed.add(posixpath.normpath(name.replace("\\", "/")))
        try:
            resolved, rel = _check_relative_path(root_resolved, name)
        except _Rejected as rej:
            detail = rej.detail if rej.reason != "bad_metadata" else f"line {lineno}: {rej.detail}"
            items.append(Reject(source_path, rej.reason, detail))
            continue
        listed.add(rel)
        items.append(_Entry(source_path=rel, fields=fields, file=resolved))
    items.extend(_unlisted_images(root, listed, meta.name))
    return items, meta.name


def _unlisted_images(root: Path, listed: set[str], meta_name: str) -> list[Reject]:
    """Image files under ``root`` that no metadata row names: rejected, so that none vanishes unnoticed."""
    exts = _image_extensions()
    out = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if Path(name).suffix.lower() not in exts:
                continue
            rel = Path(dirpath, name).relative_to(root).as_posix()
            if rel not in listed:
                detail = f"no row of {meta_name} names this file, so it has no caption"
                out.append(Reject(rel, "not_in_metadata", detail))
    return out


def _hf_entries(source: str) -> tuple[Iterator[_Entry | Reject], int]:
    """Candidates of a Hugging Face dataset (local ``save_to_disk`` dir, or a hub id with network).

    The image column is read with ``decode=False`` so that the stage sees the original bytes: the image
    id is their hash, and decoding goes through the same guarded path as files.
    """
    import datasets

    path = Path(source)
    if path.exists():
        if not path.is_dir():
            raise InputDataError(f"{source}: not a directory; a saved dataset is a save_to_disk directory.")
        try:
            obj = datasets.load_from_disk(str(path))
        except FileNotFoundError as exc:
            raise InputDataError(
                f"{source}: not a dataset saved with Dataset.save_to_disk ({exc}). For a folder of images with "
                "metadata.jsonl use --source-kind imagefolder."
            ) from None
        root = path.resolve()
    else:
        try:
            obj = datasets.load_dataset(source)
        except (OSError, ValueError) as exc:  # DatasetNotFoundError, ConnectionError, offline mode
            raise InputDataError(
                f"{source}: no such local directory, and loading it as a Hugging Face hub dataset failed "
                f"({type(exc).__name__}: {exc}). Check the path, or the hub id and network (HF_HUB_OFFLINE)."
            ) from None
        root = Path(datasets.config.HF_DATASETS_CACHE).resolve()
    splits: list[tuple[str | None, Any]]
    if isinstance(obj, datasets.DatasetDict):
        splits = sorted(obj.items())
    else:
        splits = [(None, obj)]
    prepared = []
    for split, ds in splits:
        image_col = next((k for k, f in ds.features.items() if isinstance(f, datasets.Image)), None)
        if image_col is None:
            raise InputDataError(
                f"{source}{'/' + split if split else ''}: no column of type datasets.Image "
                f"(columns: {list(ds.features)}). Cast the image column with ds.cast_column(name, datasets.Image())."
            )
        if not any(c in ds.features for c in CAPTION_COLUMNS):
            raise InputDataError(
                f"{source}{'/' + split if split else ''}: no caption column (one of {list(CAPTION_COLUMNS)}); "
                f"columns are {list(ds.features)}. Rename the caption column to 'text'."
            )
        prepared.append((split, ds.cast_column(image_col, datasets.Image(decode=False)), image_col))

    def entries() -> Iterator[_Entry | Reject]:
        for split, ds, image_col in prepared:
            for i, row in enumerate(ds):
                source_path = f"{split}#{i}" if split else f"#{i}"
                image = row.pop(image_col) or {}
                data, file = image.get("bytes"), image.get("path")
                if data is not None:
                    yield _Entry(source_path=source_path, fields=row, data=data)
                elif file:
                    resolved = Path(file).resolve()
                    if not resolved.is_relative_to(root):
                        yield Reject(source_path, "path_escapes_root", f"image path {file!r} is outside {root}")
                    else:
                        yield _Entry(source_path=source_path, fields=row, file=resolved)
                else:
                    yield Reject(source_path, "missing_file", "the image cell has neither bytes nor a path")

    return entries(), sum(len(ds) for _, ds, _ in prepared)


# --------------------------------------------------------------------------------------------------
# Fields


def _caption(fields: dict[str, Any]) -> str:
    for col in CAPTION_COLUMNS:
        value = fields.get(col)
        if isinstance(value, str) and value.strip():
            return value.strip()
    present = [c for c in CAPTION_COLUMNS if c in fields]
    if not present:
        raise _Rejected("missing_caption", f"no caption field ({' or '.join(CAPTION_COLUMNS)})")
    raise _Rejected("missing_caption", f"empty or non-text caption in {present[0]!r}")


def _optional_str(fields: dict[str, Any], key: str) -> str | None:
    value = fields.get(key)
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    value = str(value).strip()
    return value or None


def _optional_int(fields: dict[str, Any], key: str) -> int | None:
    value = fields.get(key)
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        return None  # provenance is optional; a malformed value only disables the disjointness check


def _keypoints(fields: dict[str, Any]) -> tuple[list[float | None] | None, list[float | None] | None]:
    """``{"x": [18 floats|null], "y": [...]}`` (pixels) -> two lists with None for missing points."""
    kp = fields.get("keypoints")
    if kp is None:
        return None, None
    expected = f'keypoints must be {{"x": [{N_KEYPOINTS} numbers|null], "y": [...]}} in pixels'
    if not isinstance(kp, dict) or not isinstance(kp.get("x"), list) or not isinstance(kp.get("y"), list):
        raise _Rejected("bad_metadata", expected)
    out = []
    for axis in ("x", "y"):
        values = kp[axis]
        if len(values) != N_KEYPOINTS:
            raise _Rejected("bad_metadata", f"{expected}; keypoints.{axis} has {len(values)} values")
        clean: list[float | None] = []
        for v in values:
            if v is None:
                clean.append(None)
            elif isinstance(v, int | float) and not isinstance(v, bool):
                clean.append(None if not math.isfinite(v) else float(v))
            else:
                raise _Rejected("bad_metadata", f"{expected}; keypoints.{axis} holds {v!r}")
        out.append(clean)
    # a point is present only when both coordinates are
    xs, ys = out
    for i in range(N_KEYPOINTS):
        if xs[i] is None or ys[i] is None:
            xs[i] = ys[i] = None
    return xs, ys


# --------------------------------------------------------------------------------------------------
# Pixels


@contextlib.contextmanager
def _pillow_guard(max_pixels: int) -> Iterator[None]:
    """Make Pillow refuse images above ``max_pixels`` and truncated data, then restore its globals.

    Pillow warns above ``MAX_IMAGE_PIXELS`` and raises above twice that; turning the warning into an
    error makes the limit exact. Truncated files must fail rather than decode as partly grey.
    """
    old_max, old_trunc = Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES
    Image.MAX_IMAGE_PIXELS = max_pixels
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            warnings.filterwarnings("ignore", message="Palette images with Transparency")
            yield
    finally:
        Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES = old_max, old_trunc


def _to_8bit(im: Image.Image) -> Image.Image:
    """16/32-bit integer and float single-channel images -> 'L', scaled rather than clipped.

    Pillow's own ``convert`` clips 'I;16' at 255, which turns most 16-bit photographs white.
    """
    arr = np.asarray(im)
    if im.mode == "F":
        arr = arr.astype(np.float64)
        finite = arr[np.isfinite(arr)]
        top = float(finite.max()) if finite.size else 0.0
        scale = 255.0 if top <= 1.0 else 1.0  # [0, 1] floats, else assume 8-bit range
        arr = np.nan_to_num(arr * scale, nan=0.0)
    elif im.mode.startswith("I;16"):
        arr = arr.astype(np.float64) / 257.0
    else:  # 'I' (32-bit): 16-bit data in practice (older Pillow opens 16-bit PNG as 'I')
        arr = arr.astype(np.float64)
        if arr.max(initial=0) > 255:
            arr = arr / 257.0
    return Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), mode="L")


def to_rgb(im: Image.Image) -> Image.Image:
    """Any Pillow image -> 8-bit RGB: alpha composited on white, 16-bit scaled, CMYK via its ICC profile."""
    mode = im.mode
    if mode == "RGB":
        return im
    if mode in ("RGBA", "LA", "La", "RGBa", "PA") or (mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", im.size, WHITE), rgba).convert("RGB")
    if mode in ("I", "F") or mode.startswith("I;16"):
        return _to_8bit(im).convert("RGB")
    if mode == "CMYK" and im.info.get("icc_profile"):
        try:
            src = ImageCms.ImageCmsProfile(io.BytesIO(im.info["icc_profile"]))
            return ImageCms.profileToProfile(im, src, ImageCms.createProfile("sRGB"), outputMode="RGB")
        except (ImageCms.PyCMSError, OSError, ValueError) as exc:
            log.debug("CMYK ICC conversion failed (%s); using Pillow's plain conversion", exc)
    return im.convert("RGB")


def _decode(data: bytes, max_pixels: int, min_side: int) -> tuple[Image.Image, str | None]:
    """Bytes -> (RGB image, original mode if converted). Raises _Rejected for every bad case."""
    with _pillow_guard(max_pixels):
        try:
            im = Image.open(io.BytesIO(data))
        except UnidentifiedImageError:
            raise _Rejected("not_an_image", "Pillow cannot identify an image format in this file") from None
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise _Rejected("too_many_pixels", f"{exc}") from None
        except (OSError, SyntaxError, ValueError, EOFError, struct.error) as exc:
            raise _Rejected("corrupt", f"cannot read the header: {exc}") from None
        w, h = im.size
        if w * h > max_pixels:  # from the header, before any pixel is decoded
            raise _Rejected("too_many_pixels", f"{w}x{h} = {w * h} pixels > max_pixels {max_pixels}")
        if min(w, h) < min_side:
            raise _Rejected("too_small", f"{w}x{h}: a side is below min_side {min_side}")
        try:
            im.load()
            im = ImageOps.exif_transpose(im)  # photographs: store upright, as they are displayed
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise _Rejected("too_many_pixels", f"{exc}") from None
        except (OSError, SyntaxError, ValueError, EOFError, struct.error, IndexError, TypeError) as exc:
            raise _Rejected("corrupt", f"cannot decode the pixels: {exc}") from None
        mode = im.mode
        try:
            rgb = to_rgb(im)
        except (ValueError, OSError) as exc:
            raise _Rejected("unsupported_mode", f"cannot convert mode {mode!r} to RGB: {exc}") from None
    return rgb, (None if mode == "RGB" else mode)


# --------------------------------------------------------------------------------------------------
# The stage


def _read_bytes(entry: _Entry) -> bytes:
    if entry.data is not None:
        data = bytes(entry.data)
    else:
        assert entry.file is not None
        if not entry.file.exists():
            raise _Rejected("missing_file", "no such file")
        if not entry.file.is_file():
            raise _Rejected("not_an_image", "not a regular file (a directory or device)")
        try:
            data = entry.file.read_bytes()
        except OSError as exc:
            raise _Rejected("missing_file", f"cannot read: {exc.strerror or exc}") from None
    if not data:
        raise _Rejected("empty_file", "zero bytes")
    return data


def image_id_for(data: bytes) -> str:
    """The stable id of an image: the first 16 hex digits of the sha256 of its source bytes."""
    return hashlib.sha256(data).hexdigest()[:16]


def ingest(params: Params, *, progress: bool = True) -> IngestReport:
    """Stage ``ingest``: ``ingest.source`` validated into the manifest ``ingest.out_dir`` (params.yaml)."""
    p = params.ingest
    return ingest_source(
        p.source, p.out_dir, source_kind=p.source_kind, max_pixels=p.max_pixels, min_side=p.min_side, progress=progress
    )


def is_hub_source(params: Params) -> bool:
    """A hub id (not a local path) for an hf_dataset source: the one case where ingest does network I/O."""
    return params.ingest.source_kind == "hf_dataset" and not Path(params.ingest.source).exists()


def ingest_source(
    source: str | Path,
    out_dir: str | Path,
    *,
    source_kind: SourceKind,
    max_pixels: int,
    min_side: int,
    progress: bool = True,
) -> IngestReport:
    """Validate and normalise a captioned image source into ``out_dir`` (replaced atomically, whole).

    Raises :class:`InputDataError` only when the source as a whole is unusable (missing directory, no
    metadata file, no image/caption column); individual bad images become rows of ``rejects.csv``.
    """
    if source_kind not in ("imagefolder", "hf_dataset"):
        raise InputDataError(f"source_kind {source_kind!r}: choose 'imagefolder' or 'hf_dataset'")
    if max_pixels < 1 or min_side < 1:
        raise InputDataError(f"max_pixels ({max_pixels}) and min_side ({min_side}) must be >= 1")
    out_dir = Path(out_dir)
    report = IngestReport(source=str(source), source_kind=source_kind, max_pixels=max_pixels, min_side=min_side)
    items: Any
    if source_kind == "imagefolder":
        items, _ = _imagefolder_entries(Path(source))
        total = len(items)
    else:
        items, total = _hf_entries(str(source))

    rows: list[dict[str, Any]] = []
    rejects: list[Reject] = []
    accepted_ids: dict[str, str] = {}  # image_id -> source_path of the first accepted copy
    failed_ids: dict[str, _Rejected] = {}  # the same bytes fail the same way: decode once
    with atomic_path(out_dir) as tmp:
        (tmp / "images").mkdir(parents=True)
        for item in tqdm(items, total=total, desc="ingest", unit="img", disable=not progress):
            report.seen += 1
            if isinstance(item, Reject):
                rejects.append(item)
                continue
            try:
                caption = _caption(item.fields)
                gt_x, gt_y = _keypoints(item.fields)
                data = _read_bytes(item)
                image_id = image_id_for(data)
                if image_id in accepted_ids:
                    raise _Rejected("duplicate", f"same bytes as {accepted_ids[image_id]} (image_id {image_id})")
                if image_id in failed_ids:
                    raise failed_ids[image_id]
                try:
                    rgb, converted_from = _decode(data, max_pixels, min_side)
                except _Rejected as rej:
                    failed_ids[image_id] = rej
                    raise
            except _Rejected as rej:
                rejects.append(Reject(item.source_path, rej.reason, rej.detail))
                continue
            rel = f"images/{image_id}.png"
            rgb.save(tmp / rel, format="PNG")
            accepted_ids[image_id] = item.source_path
            if converted_from is not None:
                report.converted += 1
                report.converted_from[converted_from] = report.converted_from.get(converted_from, 0) + 1
            rows.append({
                "image_id": image_id,
                "path": rel,
                "source_path": item.source_path,
                "width": rgb.width,
                "height": rgb.height,
                "caption": caption,
                "scene_id": _optional_str(item.fields, "scene_id"),
                "scene_kind": _optional_str(item.fields, "scene_kind"),
                "action": _optional_str(item.fields, "action"),
                "synth_seed": _optional_int(item.fields, "synth_seed"),
                "scene_index": _optional_int(item.fields, "scene_index"),
                "gt_x": gt_x,
                "gt_y": gt_y,
            })  # fmt: skip
        report.accepted = len(rows)
        report.rejected = dict(Counter(r.reason for r in rejects))
        table = pa.Table.from_pylist(rows, schema=MANIFEST_SCHEMA).replace_schema_metadata(
            {"posescene.source": str(source), "posescene.source_kind": source_kind}
        )
        pq.write_table(table, tmp / "manifest.parquet")
        with open(tmp / "rejects.csv", "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(REJECT_COLUMNS)
            writer.writerows((r.source_path, r.reason, r.detail) for r in rejects)
        (tmp / "report.json").write_text(json.dumps(report.as_dict(), indent=2) + "\n")
    if report.accepted == 0:
        log.warning("ingest: no image of %s was accepted; see %s", source, out_dir / "rejects.csv")
    elif rejects:
        log.info("ingest: %d rejected (%s); see %s", len(rejects), report.rejected, out_dir / "rejects.csv")
    return report


def read_manifest(path: str | Path) -> pa.Table:
    """The manifest of an ingest output (its directory or ``manifest.parquet`` itself)."""
    path = Path(path)
    file = path / "manifest.parquet" if path.is_dir() else path
    if not file.is_file():
        raise InputDataError(f"{file}: no manifest. Run `posescene ingest` (or `python -m flows.ingest`) first.")
    try:
        table = pq.read_table(file)
    except (OSError, pa.ArrowInvalid) as exc:
        raise InputDataError(f"{file}: not a readable Parquet manifest ({exc}). Rerun ingest.") from None
    missing = [c for c in ("image_id", "path", "width", "height") if c not in table.column_names]
    if missing:
        raise InputDataError(f"{file}: manifest lacks columns {missing}. Rerun ingest with this version.")
    return table
