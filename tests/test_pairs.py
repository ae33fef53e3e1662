"""Stage 3 ``pairs``: the five-tuples, built from contract-shaped tables (tests/_tables.py)."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from _tables import image_id, lattice_row, lattice_table, make_dataset, write_lattice_dir

from posescene.config import PROJECT_PARAMS
from posescene.data.pairs import PAIRS_SCHEMA, RANDOM_GROUP_SIZE, build_pairs, caption_scene_key
from posescene.errors import InputDataError

SCENES = {f"s{i:03d}": 6 for i in range(10)}


@pytest.fixture(scope="module")
def dataset() -> tuple[pa.Table, pa.Table]:
    return make_dataset(SCENES)


def _rows(table: pa.Table) -> list[dict]:
    return table.to_pylist()


def test_two_rows_per_pair_with_a_b_semantics(dataset):
    manifest, lattices = dataset
    table, summary = build_pairs(lattices, manifest, "scene", 0.2, 30, seed=0)
    assert table.schema.remove_metadata() == PAIRS_SCHEMA
    captions = dict(zip(manifest["image_id"].to_pylist(), manifest["caption"].to_pylist(), strict=True))
    by_pair: dict[str, list[dict]] = {}
    for row in _rows(table):
        by_pair.setdefault(row["pair_id"], []).append(row)
    assert len(by_pair) == summary.pairs and table.num_rows == summary.rows == 2 * summary.pairs
    for rows in by_pair.values():
        assert sorted(r["row"] for r in rows) == ["A", "B"]
        a, b = sorted(rows, key=lambda r: r["row"])
        assert (a["image_a"], a["image_b"]) == (b["image_a"], b["image_b"])
        assert a["image_id"] == a["image_a"] and b["image_id"] == b["image_b"]
        assert a["caption"] == captions[a["image_a"]] and b["caption"] == captions[b["image_b"]]
        assert a["image_a"] != a["image_b"]
        assert a["group_id"] == b["group_id"] and a["split"] == b["split"]


def test_scene_pairs_share_the_scene_and_differ_in_pose(dataset):
    manifest, lattices = dataset
    table, _ = build_pairs(lattices, manifest, "scene", 0.2, 30, seed=0)
    scene = dict(zip(manifest["image_id"].to_pylist(), manifest["scene_id"].to_pylist(), strict=True))
    lat = {r["image_id"]: r for r in lattices.to_pylist()}
    for row in _rows(table):
        assert scene[row["image_a"]] == scene[row["image_b"]] == row["group_id"]
        xa = np.array(lat[row["image_a"]]["x_norm"], dtype=float)
        xb = np.array(lat[row["image_b"]]["x_norm"], dtype=float)
        assert not np.allclose(xa, xb, equal_nan=True)
    # 6 images per scene: all 6 * 5 ordered pairs (cap 30), both orientations
    assert Counter(table.filter(pc.equal(table["row"], "A"))["group_id"].to_pylist()) == {s: 30 for s in SCENES}


def test_identical_lattices_and_no_person_rows_are_not_paired():
    manifest, lattices = make_dataset({"s0": 3}, no_person=[image_id("s0", 2)])
    rows = lattices.to_pylist()
    dup = dict(rows[0], image_id="dup00000000000000")
    m_rows = manifest.to_pylist()
    m_rows.append(dict(m_rows[0], image_id="dup00000000000000"))
    manifest = pa.Table.from_pylist(m_rows, schema=manifest.schema)
    lattices = pa.Table.from_pylist([*rows, dup], schema=lattices.schema)
    table, summary = build_pairs(lattices, manifest, "scene", 0.0, 30, seed=0)
    pairs = {(r["image_a"], r["image_b"]) for r in _rows(table)}
    assert image_id("s0", 2) not in {i for p in pairs for i in p}
    assert (image_id("s0", 0), "dup00000000000000") not in pairs
    assert pairs == {
        (image_id("s0", 0), image_id("s0", 1)),
        (image_id("s0", 1), image_id("s0", 0)),
        ("dup00000000000000", image_id("s0", 1)),
        (image_id("s0", 1), "dup00000000000000"),
    }
    assert summary.poses == 3


def test_multi_person_images_pair_across_images_only():
    x = [0.1 + 0.01 * i for i in range(18)]
    rows = [
        lattice_row("img0", x, x, person=0),
        lattice_row("img0", [v + 0.2 for v in x], x, person=1),
        lattice_row("img1", x, [v + 0.1 for v in x], person=0),
    ]
    manifest, _ = make_dataset({"s": 1})
    m = manifest.to_pylist()[0]
    manifest = pa.Table.from_pylist(
        [dict(m, image_id="img0", caption="c0"), dict(m, image_id="img1", caption="c1")], schema=manifest.schema
    )
    table, _ = build_pairs(lattice_table(rows), manifest, "scene", 0.0, 30, seed=0)
    a_rows = [r for r in _rows(table) if r["row"] == "A"]
    assert {(r["image_a"], r["person_a"], r["image_b"], r["person_b"]) for r in a_rows} == {
        ("img0", 0, "img1", 0),
        ("img0", 1, "img1", 0),
        ("img1", 0, "img0", 0),
        ("img1", 0, "img0", 1),
    }
    assert table.schema.field("person_a").type == pa.int32()


def test_heldout_split_by_group_never_mixes_and_is_stable():
    scenes = {f"g{i:04d}": 3 for i in range(200)}
    manifest, lattices = make_dataset(scenes)
    table, summary = build_pairs(lattices, manifest, "scene", 0.2, 30, seed=3)
    split_of: dict[str, set[str]] = {}
    for row in _rows(table):
        split_of.setdefault(row["group_id"], set()).add(row["split"])
    assert all(len(s) == 1 for s in split_of.values())
    heldout = {g for g, s in split_of.items() if s == {"heldout"}}
    assert 0.1 < len(heldout) / len(split_of) < 0.3
    assert summary.groups_heldout == len(heldout)
    # image-level: no image is in both splits
    train_imgs = {r["image_id"] for r in _rows(table) if r["split"] == "train"}
    assert train_imgs.isdisjoint({r["image_id"] for r in _rows(table) if r["split"] == "heldout"})

    # adding groups leaves the existing groups' split and pairs unchanged
    more = dict(scenes, **{f"h{i:04d}": 3 for i in range(50)})
    manifest2, lattices2 = make_dataset(more)
    table2, _ = build_pairs(lattices2, manifest2, "scene", 0.2, 30, seed=3)
    old = {(r["pair_id"], r["row"], r["split"]) for r in _rows(table)}
    new = {(r["pair_id"], r["row"], r["split"]) for r in _rows(table2) if r["group_id"].startswith("g")}
    assert old == new


def test_tiny_data_still_has_both_splits():
    manifest, lattices = make_dataset({"a": 2, "b": 2})
    for seed in range(5):
        table, summary = build_pairs(lattices, manifest, "scene", 0.2, 30, seed=seed)
        assert set(table["split"].to_pylist()) == {"train", "heldout"}
        assert summary.groups_heldout == 1
    table, _ = build_pairs(lattices, manifest, "scene", 0.0, 30, seed=0)
    assert set(table["split"].to_pylist()) == {"train"}


def test_deterministic_for_a_seed_and_cap_sampling(dataset):
    manifest, lattices = dataset
    t1, _ = build_pairs(lattices, manifest, "scene", 0.2, 7, seed=11)
    t2, _ = build_pairs(
        lattices.take(np.random.default_rng(0).permutation(lattices.num_rows)), manifest, "scene", 0.2, 7, 11
    )
    assert t1.equals(t2, check_metadata=True)  # input order does not matter either
    t3, _ = build_pairs(lattices, manifest, "scene", 0.2, 7, seed=12)
    assert not t1.equals(t3)
    per_group = Counter(t1.filter(pc.equal(t1["row"], "A"))["group_id"].to_pylist())
    assert set(per_group.values()) == {7}
    assert t1.schema.metadata[b"posescene.strategy"] == b"scene"
    assert t1.schema.metadata[b"posescene.seed"] == b"11"


def test_no_scene_ids_is_a_clear_error():
    manifest, lattices = make_dataset({"a": 3, "b": 3}, scene_ids=False)
    with pytest.raises(InputDataError, match="--strategy caption.*--strategy random"):
        build_pairs(lattices, manifest, "scene", 0.2, 30, seed=0)
    with pytest.raises(InputDataError, match="no scene_id column"):
        build_pairs(lattices, manifest.drop_columns(["scene_id"]), "scene", 0.2, 30, seed=0)
    # the other strategies work on the same data
    assert build_pairs(lattices, manifest, "caption", 0.2, 30, seed=0)[0].num_rows > 0
    assert build_pairs(lattices, manifest, "random", 0.2, 30, seed=0)[0].num_rows > 0


def test_caption_key_removes_pose_words():
    assert caption_scene_key("A person running on a beach at sunset.") == "a person on a beach at sunset"
    assert caption_scene_key("a person raising both arms on a beach at sunset") == "a person on a beach at sunset"
    assert caption_scene_key("Sitting") == ""


def test_caption_strategy_groups_by_caption_without_pose_words():
    actions = ("running", "sitting", "waving", "raising both arms")

    def caption(scene: str, k: int) -> str:
        place = "on a beach" if scene in ("s0", "s1") else "in a forest"
        return f"a person {actions[k % 4]} {place} at night"

    manifest, lattices = make_dataset({"s0": 2, "s1": 2, "s2": 3}, scene_ids=False, caption_fn=caption)
    table, summary = build_pairs(lattices, manifest, "caption", 0.0, 30, seed=0)
    assert summary.groups == 2  # beach (s0 + s1, 4 images) and forest (s2, 3 images)
    groups = Counter(table.filter(pc.equal(table["row"], "A"))["group_id"].to_pylist())
    assert sorted(groups.values()) == [3 * 2, 4 * 3]
    key = {r["image_id"]: caption_scene_key(r["caption"]) for r in _rows(table)}
    for row in _rows(table):
        assert key[row["image_a"]] == key[row["image_b"]]
    assert table.schema.metadata[b"posescene.strategy"] == b"caption"


def test_random_strategy_groups_are_small_and_deterministic(dataset):
    manifest, lattices = dataset
    t1, summary = build_pairs(lattices, manifest, "random", 0.2, 30, seed=5)
    t2, _ = build_pairs(lattices, manifest, "random", 0.2, 30, seed=5)
    assert t1.equals(t2, check_metadata=True)
    images_per_group: dict[str, set[str]] = {}
    for row in _rows(t1):
        images_per_group.setdefault(row["group_id"], set()).add(row["image_id"])
    assert all(2 <= len(v) <= RANDOM_GROUP_SIZE for v in images_per_group.values())
    assert summary.groups == -(-60 // RANDOM_GROUP_SIZE)
    assert "heldout" in t1["split"].to_pylist()


def test_stale_lattices_are_dropped_and_counted():
    manifest, lattices = make_dataset({"a": 3, "b": 3})
    _, extra = make_dataset({"gone": 2}, seed=9)
    table, summary = build_pairs(pa.concat_tables([lattices, extra]), manifest, "scene", 0.0, 30, seed=0)
    assert summary.dropped_not_in_manifest == 2
    assert "gone" not in table["group_id"].to_pylist()


def test_unknown_strategy_and_no_pairs_are_errors():
    manifest, lattices = make_dataset({"a": 1, "b": 1})
    with pytest.raises(InputDataError, match="unknown pairs strategy"):
        build_pairs(lattices, manifest, "nearest", 0.2, 30, seed=0)
    with pytest.raises(InputDataError, match="no pairs"):
        build_pairs(lattices, manifest, "scene", 0.2, 30, seed=0)


def test_write_pairs_and_cli(tmp_path, dataset):
    pytest.importorskip("posescene.data.poses", reason="stage 2 (posescene/data/poses.py) not written yet")
    from typer.testing import CliRunner

    from posescene.cli import app

    manifest, lattices = dataset
    (tmp_path / "ingested").mkdir()
    pq.write_table(manifest, tmp_path / "ingested" / "manifest.parquet")
    lattice_dir = write_lattice_dir(lattices, tmp_path / "lattices")
    out = tmp_path / "pairs.parquet"
    paths = ["--params", str(PROJECT_PARAMS), "--set", f"poses.out_dir={lattice_dir}", "--set", f"pairs.out={out}"]
    result = CliRunner().invoke(app, ["pairs", *paths, "--set", f"ingest.out_dir={tmp_path / 'ingested'}",
                                      "--set", "seed=4"])  # fmt: skip
    assert result.exit_code == 0, result.output
    written = pq.read_table(out)
    expected, _ = build_pairs(lattices, manifest, "scene", 0.2, 30, seed=4)
    assert written.equals(expected, check_metadata=True)
    assert "300 pairs (600 rows) in 10 groups" in result.output

    bad = CliRunner().invoke(app, ["pairs", *paths, "--set", f"ingest.out_dir={tmp_path / 'missing'}"])
    assert bad.exit_code == 2 and "posescene ingest" in bad.output
