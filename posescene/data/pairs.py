"""Stage 3 ``pairs``: the (A, B, y, Z_A, Z_B) five-tuples of docs/method.md step 1.

A *pose* is one lattice row with a person (``image_id``, ``person``). Poses are put into groups (the
strategy), and a pair is an **ordered** pair of poses of two different images of the same group with
different lattices: A goes through the frozen primary adapter and B through the trained secondary one,
so (P, Q) and (Q, P) are different training examples. Each pair yields two rows (docs/method.md: y is y_A
with image Z_A on the ``A`` row, y_B with Z_B on the ``B`` row).

Strategies (``pairs.strategy``; none is a silent fallback for another):

- ``scene`` (default, the patent's reading): the manifest's ``scene_id``; the same background with
  different poses. Fails with :class:`InputDataError` when the manifest has no scene ids.
- ``caption``: images whose captions are identical once the pose/action words (:data:`POSE_WORDS`)
  are removed. We chose exact matching of the normalised caption over a TF-IDF cosine threshold: it
  has no threshold to tune, is transitive (a threshold graph is not: A~B and B~C without A~C), and is
  stable when images are added. It groups images that *describe* the same scene; they need not show
  the same background.
- ``random``: images shuffled with the seed and cut into groups of :data:`RANDOM_GROUP_SIZE`, an
  ablation baseline with unrelated scenes in a pair.

Determinism and stability: a group's pairs depend only on (seed, group id, the group's poses), so adding
groups leaves the other groups' pairs alone. The held-out split is by group (all of a group's pairs are
in one split, so evaluation scenes are never trained on) and hash-based: a group is held out when
``sha256(seed:group_id)`` as a fraction of 2**64 is below ``heldout_fraction``, which does not move
when groups are added. Only for tiny data sets where the hash would leave a split empty (with at least
two groups), the group with the smallest (largest) hash is moved, so both splits always exist.
"""

from __future__ import annotations

import hashlib
import re
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from posescene.errors import InputDataError
from posescene.io import write_parquet_atomic
from posescene.topology import N_KEYPOINTS

if TYPE_CHECKING:
    from posescene.config import Params

STRATEGIES: tuple[str, ...] = ("scene", "caption", "random")
RANDOM_GROUP_SIZE = 8  # images per pseudo-group for strategy=random
SAME_POSE_TOL = 1e-3  # lattices closer than this (normalised units, every point) are the same pose
_ENUMERATE_LIMIT = 200_000  # groups with more candidate pairs than this are sampled by rejection

# Words that describe the person's pose or action, removed from captions by strategy=caption so that
# "a person running on a beach" and "a person sitting on a beach" fall into the same group.
POSE_WORDS: frozenset[str] = frozenset(
    """
    stand stands standing stood walk walks walking walked run runs running ran raise raises raising raised
    both arm arms hand hands up wave waves waving waved sit sits sitting sat seated jump jumps jumping
    jumped crouch crouches crouching crouched squat squats squatting kneel kneels kneeling knelt point
    points pointing pointed dance dances dancing danced lie lies lying lay pose poses posing posed
    stretch stretches stretching lean leans leaning bend bends bending kick kicks kicking climb climbs
    climbing
    """.split()
)

PAIRS_SCHEMA = pa.schema(
    [
        pa.field("pair_id", pa.string(), nullable=False),
        pa.field("row", pa.string(), nullable=False),
        pa.field("image_a", pa.string(), nullable=False),
        pa.field("image_b", pa.string(), nullable=False),
        pa.field("person_a", pa.int32(), nullable=False),
        pa.field("person_b", pa.int32(), nullable=False),
        pa.field("image_id", pa.string(), nullable=False),
        pa.field("caption", pa.string(), nullable=False),
        pa.field("group_id", pa.string(), nullable=False),
        pa.field("split", pa.string(), nullable=False),
    ]
)

_LATTICE_COLUMNS = ("image_id", "person", "has_person", "x_norm", "y_norm")
_MANIFEST_COLUMNS = ("image_id", "caption")


@dataclass(frozen=True)
class PairsSummary:
    """Counts for logs, the Prefect artifact and the CLI."""

    strategy: str
    seed: int
    poses: int  # lattice rows with a person that are in the manifest
    groups: int  # groups with at least one pair
    groups_heldout: int
    pairs: int
    pairs_heldout: int
    rows: int
    dropped_not_in_manifest: int  # lattice rows of images the manifest no longer has (stale lattices)
    dropped_no_group: int  # poses without a scene id (scene) or caption (caption)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class _Pose:
    image_id: str
    person: int
    caption: str
    group_key: str | None  # scene id or caption key; None: no group


def caption_scene_key(caption: str) -> str:
    """A caption with its pose/action words and punctuation removed, lower-cased: the caption group key."""
    words = re.findall(r"[a-z0-9']+", caption.lower())
    return " ".join(w for w in words if w not in POSE_WORDS)


def _stable_fraction(seed: int, key: str) -> float:
    """A number in [0, 1) that depends only on (seed, key): survives adding or removing other keys."""
    digest = hashlib.sha256(f"{seed}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def _stable_int(key: str) -> int:
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big")


def _pair_id(a: _Pose, b: _Pose) -> str:
    return hashlib.sha1(f"{a.image_id}:{a.person}|{b.image_id}:{b.person}".encode()).hexdigest()[:16]


def _require_columns(table: pa.Table, columns: tuple[str, ...], what: str) -> None:
    missing = [c for c in columns if c not in table.column_names]
    if missing:
        raise InputDataError(
            f"{what} lacks column(s) {', '.join(missing)} (has: {', '.join(table.column_names)}); "
            "see docs/architecture.md for the contract and rerun the stage that writes it."
        )


def _lattice_matrix(column: pa.ChunkedArray, what: str) -> np.ndarray:
    """A list<float> column of 18-point lattices -> (n, 18) float64 with NaN for missing points."""
    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if len(array) == 0:
        return np.zeros((0, N_KEYPOINTS))
    if array.null_count:
        raise InputDataError(f"{what}: a row with has_person=true has a null lattice list")
    lengths = np.asarray(array.value_lengths())
    if not np.all(lengths == N_KEYPOINTS):
        raise InputDataError(f"{what}: lattices must have {N_KEYPOINTS} points, found lengths {sorted(set(lengths))}")
    flat = array.flatten().to_numpy(zero_copy_only=False).astype(np.float64)
    return flat.reshape(-1, N_KEYPOINTS)


def _same_pose(ax: np.ndarray, ay: np.ndarray, bx: np.ndarray, by: np.ndarray) -> bool:
    """Same set of present points, each within :data:`SAME_POSE_TOL`: not a valid (A, B) pair."""
    pa_, pb = np.isfinite(ax) & np.isfinite(ay), np.isfinite(bx) & np.isfinite(by)
    if not np.array_equal(pa_, pb):
        return False
    if not pa_.any():
        return True
    return bool(
        np.all(np.abs(ax[pa_] - bx[pa_]) <= SAME_POSE_TOL) and np.all(np.abs(ay[pa_] - by[pa_]) <= SAME_POSE_TOL)
    )


def _group_pairs(
    members: list[int], poses: list[_Pose], xs: np.ndarray, ys: np.ndarray, cap: int, rng: np.random.Generator
) -> list[tuple[int, int]]:
    """Up to ``cap`` ordered (A, B) pose index pairs of one group, sampled uniformly without replacement.

    Candidates are walked in a seeded random order and invalid ones (same image, same pose) skipped;
    huge groups (caption strategy on big data) are sampled by rejection instead of being enumerated.
    """
    n = len(members)
    total = n * (n - 1)
    if total == 0:
        return []

    def decode(k: int) -> tuple[int, int]:
        i, r = divmod(k, n - 1)
        return members[i], members[r + (r >= i)]

    def valid(a: int, b: int) -> bool:
        return poses[a].image_id != poses[b].image_id and not _same_pose(xs[a], ys[a], xs[b], ys[b])

    chosen: list[tuple[int, int]] = []
    if total <= _ENUMERATE_LIMIT:
        for k in rng.permutation(total):
            a, b = decode(int(k))
            if valid(a, b):
                chosen.append((a, b))
                if len(chosen) == cap:
                    break
    else:
        seen: set[int] = set()
        for _ in range(50 * cap):
            k = int(rng.integers(total))
            if k in seen:
                continue
            seen.add(k)
            a, b = decode(k)
            if valid(a, b):
                chosen.append((a, b))
                if len(chosen) == cap:
                    break
    return sorted(chosen, key=lambda ab: (poses[ab[0]].image_id, poses[ab[0]].person, poses[ab[1]].image_id))


def _assign_splits(group_ids: list[str], heldout_fraction: float, seed: int) -> dict[str, str]:
    """Hash-based held-out assignment by group; both splits non-empty when possible (see module doc)."""
    u = {g: _stable_fraction(seed, g) for g in group_ids}
    split = {g: "heldout" if u[g] < heldout_fraction else "train" for g in group_ids}
    if heldout_fraction > 0 and len(group_ids) >= 2:
        if "heldout" not in split.values():
            split[min(group_ids, key=u.__getitem__)] = "heldout"
        if "train" not in split.values():
            split[max(group_ids, key=u.__getitem__)] = "train"
    return split


def build_pairs(
    lattices: pa.Table,
    manifest: pa.Table,
    strategy: str,
    heldout_fraction: float,
    max_pairs_per_group: int,
    seed: int,
) -> tuple[pa.Table, PairsSummary]:
    """Build the pairs table (contract in docs/architecture.md) from lattice and manifest tables."""
    if strategy not in STRATEGIES:
        raise InputDataError(f"unknown pairs strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}")
    if not 0 <= heldout_fraction < 1:
        raise InputDataError(f"heldout_fraction must be in [0, 1), got {heldout_fraction}")
    if max_pairs_per_group < 1:
        raise InputDataError(f"max_pairs_per_group must be >= 1, got {max_pairs_per_group}")
    _require_columns(lattices, _LATTICE_COLUMNS, "lattice table")
    _require_columns(manifest, _MANIFEST_COLUMNS, "manifest")

    # the manifest: image id -> (caption, scene id)
    m_ids = manifest.column("image_id").to_pylist()
    m_caps = manifest.column("caption").to_pylist()
    has_scene_col = "scene_id" in manifest.column_names
    m_scenes = manifest.column("scene_id").to_pylist() if has_scene_col else [None] * len(m_ids)
    info = {i: (c, s) for i, c, s in zip(m_ids, m_caps, m_scenes, strict=True)}

    # poses: lattice rows with a person, deduplicated on (image_id, person), in a canonical order
    people = lattices.filter(pc.fill_null(lattices.column("has_person"), False))
    ids = people.column("image_id").to_pylist()
    persons = people.column("person").to_pylist()
    xs_all = _lattice_matrix(people.column("x_norm"), "lattice x_norm")
    ys_all = _lattice_matrix(people.column("y_norm"), "lattice y_norm")
    latest: dict[tuple[str, int], int] = {}
    for row, key in enumerate(zip(ids, persons, strict=True)):
        latest[(str(key[0]), int(key[1]))] = row
    order = sorted(latest)
    dropped_not_in_manifest = sum(1 for image_id, _ in order if image_id not in info)
    order = [k for k in order if k[0] in info]
    if not order:
        raise InputDataError(
            "no lattice row with a person matches an image of the manifest "
            f"({len(latest)} poses, {len(info)} manifest images): are the lattices from this manifest?"
        )
    rows = [latest[k] for k in order]
    xs, ys = xs_all[rows], ys_all[rows]

    if strategy == "scene":
        keys = [info[image_id][1] for image_id, _ in order]
        if all(k is None for k in keys):
            raise InputDataError(
                "strategy 'scene' needs scene ids, but the manifest has "
                + ("no scene_id column" if not has_scene_col else "no scene_id for any image with a person")
                + ". Use --strategy caption (group images whose captions match apart from the pose words) "
                "or --strategy random (pairs.strategy in params.yaml)."
            )
        group_keys: list[str | None] = [None if k is None else str(k) for k in keys]
    elif strategy == "caption":
        group_keys = []
        for image_id, _ in order:
            key = caption_scene_key(info[image_id][0] or "")
            # a caption of nothing but pose words says nothing about the scene: no group
            group_keys.append("c" + hashlib.sha1(key.encode()).hexdigest()[:12] if key else None)
    else:  # random: seeded shuffle of the images, cut into fixed-size pseudo-groups
        images = sorted({image_id for image_id, _ in order})
        perm = np.random.default_rng([seed, 7]).permutation(len(images))  # 7: a stream of its own
        shuffled = [images[i] for i in perm]
        bucket = {image_id: f"r{k // RANDOM_GROUP_SIZE:05d}" for k, image_id in enumerate(shuffled)}
        group_keys = [bucket[image_id] for image_id, _ in order]

    poses = [
        _Pose(image_id, person, info[image_id][0] or "", gk)
        for (image_id, person), gk in zip(order, group_keys, strict=True)
    ]
    dropped_no_group = sum(1 for p in poses if p.group_key is None)
    groups: dict[str, list[int]] = defaultdict(list)
    for idx, pose in enumerate(poses):
        if pose.group_key is not None:
            groups[pose.group_key].append(idx)

    pairs_by_group: dict[str, list[tuple[int, int]]] = {}
    for group_id in sorted(groups):
        rng = np.random.default_rng([seed, _stable_int(group_id) % 2**63])
        chosen = _group_pairs(groups[group_id], poses, xs, ys, max_pairs_per_group, rng)
        if chosen:
            pairs_by_group[group_id] = chosen
    if not pairs_by_group:
        raise InputDataError(
            f"no pairs: {len(poses)} poses in {len(groups)} groups (strategy {strategy!r}), but no group has two "
            "images with a person and different poses. Check the scene ids/captions or use another strategy."
        )
    split = _assign_splits(sorted(pairs_by_group), heldout_fraction, seed)

    cols: dict[str, list[Any]] = {name: [] for name in PAIRS_SCHEMA.names}
    for group_id, chosen in pairs_by_group.items():
        for a, b in chosen:
            pa_, pb = poses[a], poses[b]
            pid = _pair_id(pa_, pb)
            for row, pose in (("A", pa_), ("B", pb)):
                cols["pair_id"].append(pid)
                cols["row"].append(row)
                cols["image_a"].append(pa_.image_id)
                cols["image_b"].append(pb.image_id)
                cols["person_a"].append(pa_.person)
                cols["person_b"].append(pb.person)
                cols["image_id"].append(pose.image_id)
                cols["caption"].append(pose.caption)
                cols["group_id"].append(group_id)
                cols["split"].append(split[group_id])
    metadata = {
        "posescene.strategy": strategy,
        "posescene.seed": str(seed),
        "posescene.heldout_fraction": repr(heldout_fraction),
        "posescene.max_pairs_per_group": str(max_pairs_per_group),
    }
    table = pa.table(cols, schema=PAIRS_SCHEMA.with_metadata(metadata))
    n_pairs = sum(len(c) for c in pairs_by_group.values())
    heldout_groups = [g for g in pairs_by_group if split[g] == "heldout"]
    summary = PairsSummary(
        strategy=strategy,
        seed=seed,
        poses=len(poses),
        groups=len(pairs_by_group),
        groups_heldout=len(heldout_groups),
        pairs=n_pairs,
        pairs_heldout=sum(len(pairs_by_group[g]) for g in heldout_groups),
        rows=table.num_rows,
        dropped_not_in_manifest=dropped_not_in_manifest,
        dropped_no_group=dropped_no_group,
    )
    return table, summary


def write_pairs(
    lattice_dir: str | Path,
    out: str | Path,
    manifest_path: str | Path,
    strategy: str,
    heldout_fraction: float,
    max_pairs_per_group: int,
    seed: int,
) -> PairsSummary:
    """Read the lattices and the manifest (a ``manifest.parquet`` or its directory), write ``out`` atomically."""
    from posescene.data.ingest import read_manifest  # the stages' own readers; imported here so that
    from posescene.data.poses import read_lattices  # build_pairs works without the detector stack

    table, summary = build_pairs(
        read_lattices(lattice_dir), read_manifest(manifest_path), strategy, heldout_fraction, max_pairs_per_group, seed
    )
    write_parquet_atomic(out, table)
    return summary


def read_pairs(path: str | Path, split: str | None = None) -> pa.Table:
    """The pairs table, optionally one split (``"train"`` or ``"heldout"``)."""
    path = Path(path)
    if not path.is_file():
        raise InputDataError(f"{path}: no pairs file. Run `posescene pairs` (or `python -m flows.pairs`) first.")
    table = pq.read_table(path)
    if split is not None:
        table = table.filter(pc.equal(table.column("split"), split))
    return table


def pairs(params: Params, *, progress: bool = True) -> PairsSummary:
    """Stage ``pairs``: the pairs table ``pairs.out`` from the lattices and the ingested manifest (params.yaml)."""
    del progress  # one pass over two tables: nothing to show
    p = params.pairs
    return write_pairs(
        params.poses.out_dir,
        p.out,
        Path(params.ingest.out_dir) / "manifest.parquet",
        strategy=p.strategy,
        heldout_fraction=p.heldout_fraction,
        max_pairs_per_group=p.max_pairs_per_group,
        seed=params.seed,
    )
