"""Stage task cache keys: a hit means "same inputs, output intact" - never a skipped write."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

from tasks._cache import stage_cache_key


def _key(out_dir: Path, **params: Any) -> str:
    context: Any = SimpleNamespace(task=SimpleNamespace(name="stage"))
    return stage_cache_key(("out_dir",))(context, {"out_dir": str(out_dir), **params})


def test_a_missing_output_never_hits(tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert _key(out, n=1) != _key(out, n=1)  # e.g. a fresh clone after a run elsewhere with the same params


def test_same_intact_output_hits_and_any_change_misses(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "a.txt").write_text("1")
    first = _key(out, n=1)
    assert _key(out, n=1) == first
    assert _key(out, n=2) != first
    (out / "b.txt").write_text("2")
    assert _key(out, n=1) != first


def test_same_relative_output_in_another_checkout_misses(tmp_path: Path, monkeypatch) -> None:
    keys = []
    for checkout in ("one", "two"):
        root = tmp_path / checkout
        (root / "out").mkdir(parents=True)
        (root / "out" / "a.txt").write_text("same")
        monkeypatch.chdir(root)
        keys.append(_key(Path("out"), n=1))
    assert keys[0] != keys[1]
