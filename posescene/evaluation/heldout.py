"""What the evaluation generates from: held-out prompts, poses, initial noises, and the real images of the poses.

- **Sets.** A set is one (prompt, seed): every pose and every arm of a set starts from the same initial noise,
  seeded by (seed, prompt) so no two sets share a noise. Prompts are captions of held-out images (split
  ``heldout`` of ``data/pairs.parquet``), round-robin over scene kinds. A caption names the action of *its*
  image ("a person raising both arms on a beach"), which would contradict every other pose of the set, so when
  the manifest names the action and the caption contains the built-in world's phrase for it, that phrase is
  removed ("a person on a beach").
- **Poses.** Held-out pose lattices with at least ``MIN_POSE_POINTS`` points, round-robin over actions (so the
  set really moves the person). Each keeps the image it came from: the judge on that real image is the
  ceiling of pose fidelity.
- **No leakage.** Scenes from the PoseScenes generator carry (``synth_seed``, ``scene_index``) in the
  manifest. :func:`check_disjoint` refuses held-out scenes that any part of the built-in world was trained on
  (``training_data.json`` beside the shipped weights), naming the ranges.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from posescene.errors import InputDataError
from posescene.sampling.pose import Pose, poses_from_lattice_rows

log = logging.getLogger(__name__)

MIN_POSE_POINTS = 8  # a held-out pose with fewer present points is too partial to judge fidelity on
TRAINING_DATA_FILE = "training_data.json"


@dataclass(frozen=True)
class Prompt:
    """A held-out caption (action phrase removed) and what the judges expect of it."""

    prompt_id: int
    caption: str
    scene_kind: str | None
    image_id: str


@dataclass(frozen=True)
class PoseSet:
    """One (prompt, seed): the unit the bootstrap resamples; ``noise_seed`` seeds its initial latent."""

    set_id: int
    prompt: Prompt
    seed: int
    noise_seed: int


@dataclass(frozen=True)
class HeldOut:
    sets: list[PoseSet]
    poses: list[Pose]
    pose_image_paths: list[Path]  # the real image each pose was detected on (for the ceiling)
    beta: float
    scenes: list[tuple[int | None, int | None]]  # (synth_seed, scene_index) of every image used
    prompt_image_paths: list[Path] = field(default_factory=list)  # each prompt's real image (scene judge ceiling)

    @property
    def prompts(self) -> list[Prompt]:
        return list({s.prompt.prompt_id: s.prompt for s in self.sets}.values())


def round_robin(items: list[Any], key: Callable[[Any], Any], n: int) -> list[Any]:
    """Up to ``n`` items, cycling over the groups of ``key`` in order of first appearance (diversity)."""
    groups: dict[Any, list[Any]] = {}
    for item in items:
        groups.setdefault(key(item), []).append(item)
    out: list[Any] = []
    queues = list(groups.values())
    while len(out) < n and any(queues):
        for q in queues:
            if q and len(out) < n:
                out.append(q.pop(0))
    return out


def without_action(caption: str, action: str | None) -> str:
    """The caption with the built-in world's phrase for ``action`` removed (unchanged if it is not there)."""
    from posescene.data.synth import ACTION_PHRASES

    phrase = ACTION_PHRASES.get(action or "")
    if not phrase:
        return caption
    return re.sub(r"\s+", " ", re.sub(rf"\b{re.escape(phrase)}\b", " ", caption)).strip()


def noise_seed(seed: int, prompt_id: int) -> int:
    """A distinct initial-noise seed per (seed, prompt): sets must not share noises."""
    return int(np.random.SeedSequence([int(seed), int(prompt_id), 11]).generate_state(1)[0])


def select_heldout(
    pairs: pa.Table,
    manifest: pa.Table,
    lattices: pa.Table,
    *,
    n_prompts: int,
    seeds: Sequence[int],
    n_poses: int,
    seed: int,
    beta: float,
    image_root: Path,
) -> HeldOut:
    """Deterministic choice of held-out sets and poses (see the module docstring)."""
    for table, cols, what in (
        (pairs, ("image_id", "caption", "split"), "pairs"),
        (manifest, ("image_id",), "manifest"),
        (lattices, ("image_id", "has_person", "x_norm", "y_norm", "width", "height"), "lattices"),
    ):
        missing = [c for c in cols if c not in table.column_names]
        if missing:
            raise InputDataError(f"{what} table lacks column(s) {missing}; see docs/architecture.md")
    held = pairs.filter(pc.equal(pairs.column("split"), "heldout")).select(["image_id", "caption"]).to_pylist()
    if not held:
        raise InputDataError("no held-out pairs (split == 'heldout'); raise pairs.heldout_fraction and rerun pairs")
    wanted = ("image_id", "path", "scene_kind", "action", "synth_seed", "scene_index")
    info = {r["image_id"]: r for r in manifest.select([c for c in wanted if c in manifest.column_names]).to_pylist()}
    held_ids = {r["image_id"] for r in held}
    rng = np.random.default_rng([seed, 4])

    by_caption: dict[str, dict[str, Any]] = {}
    for r in sorted(held, key=lambda r: (r["caption"], r["image_id"])):
        caption = without_action(r["caption"], info.get(r["image_id"], {}).get("action"))
        by_caption.setdefault(caption, {**r, "caption": caption})
    captions = list(by_caption.values())
    captions = [captions[i] for i in rng.permutation(len(captions))]
    chosen = round_robin(captions, lambda r: info.get(r["image_id"], {}).get("scene_kind"), n_prompts)
    if len(chosen) < n_prompts:
        log.warning("evaluate: only %d distinct held-out captions for evaluate.n_prompts=%d", len(chosen), n_prompts)
    prompts = [
        Prompt(k, r["caption"], info.get(r["image_id"], {}).get("scene_kind"), r["image_id"])
        for k, r in enumerate(chosen)
    ]
    sets = [
        PoseSet(len(seeds) * p.prompt_id + j, p, int(s), noise_seed(int(s), p.prompt_id))
        for p in prompts
        for j, s in enumerate(seeds)
    ]

    people = lattices.filter(pc.fill_null(lattices.column("has_person"), False)).to_pylist()
    rows = []
    for r in sorted(people, key=lambda r: (r["image_id"], r.get("person") or 0)):
        if r["image_id"] not in held_ids or r["x_norm"] is None:
            continue
        n_present = sum(x is not None and y is not None for x, y in zip(r["x_norm"], r["y_norm"], strict=True))
        if n_present >= MIN_POSE_POINTS:
            rows.append({**r, "action": info.get(r["image_id"], {}).get("action")})
    rows = [rows[i] for i in rng.permutation(len(rows))]
    pose_rows = round_robin(rows, lambda r: r["action"], n_poses)
    if len(pose_rows) < 2:
        raise InputDataError(
            f"only {len(pose_rows)} held-out pose(s) with >= {MIN_POSE_POINTS} keypoints; drift needs at least 2"
        )
    if len(pose_rows) < n_poses:
        log.warning("evaluate: only %d held-out poses for evaluate.n_poses=%d", len(pose_rows), n_poses)
    paths = [image_root / str(info.get(r["image_id"], {}).get("path", "")) for r in pose_rows]
    used = [p.image_id for p in prompts] + [r["image_id"] for r in pose_rows]
    scenes = [(info.get(i, {}).get("synth_seed"), info.get(i, {}).get("scene_index")) for i in used]
    prompt_paths = [image_root / str(info.get(p.image_id, {}).get("path", "")) for p in prompts]
    return HeldOut(sets, poses_from_lattice_rows(pose_rows), paths, beta, scenes, prompt_paths)


def load_training_ranges(world_dir: str | Path) -> dict[str, Any] | None:
    """``training_data.json`` of a shipped world (None when the world does not record it)."""
    path = Path(world_dir) / TRAINING_DATA_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
        if not isinstance(data, dict) or not isinstance(data.get("parts"), dict):
            raise ValueError("expected an object with 'generator', 'seed' and 'parts'")
    except (OSError, ValueError) as exc:
        raise InputDataError(f"{path}: unreadable training record ({exc}); restore it from git") from exc
    return data


def check_disjoint(scenes: Sequence[tuple[int | None, int | None]], training: dict[str, Any], where: str) -> int:
    """Refuse scenes any part of the world was trained on; returns how many scenes were checked.

    ``scenes``: (synth_seed, scene_index) pairs (None for images without PoseScenes provenance, not checked).
    """
    seed = int(training.get("seed", 0))
    overlaps: dict[str, set[int]] = {}
    checked = 0
    for synth_seed, index in scenes:
        if synth_seed is None or index is None:
            continue
        checked += 1
        if int(synth_seed) != seed:
            continue
        for part, ranges in training["parts"].items():
            if any(int(lo) <= int(index) < int(hi) for lo, hi in ranges):
                overlaps.setdefault(part, set()).add(int(index))
    if overlaps:
        detail = "; ".join(
            f"{part} (trained on seed {seed} scenes {training['parts'][part]}) saw {sorted(idx)[:5]}"
            + ("..." if len(idx) > 5 else "")
            for part, idx in sorted(overlaps.items())
        )
        raise InputDataError(
            f"{where}: the evaluation scenes overlap the built-in world's training data: {detail}. "
            "Generate evaluation data from scenes the world never saw: set synth.first_scene above every "
            "trained range (params.yaml) and rerun the pipeline."
        )
    return checked
