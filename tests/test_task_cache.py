"""Stage task cache keys: a hit means "same inputs, output intact" - never a skipped write."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

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


def test_a_stage_task_keys_on_its_params_and_files(tmp_path: Path) -> None:
    """The generic stage task's key (tasks/stage.py): the registry's params values and path fingerprints."""
    from posescene.config import default_params
    from tasks._cache import params_cache_key

    out = tmp_path / "maps"
    out.mkdir()
    (out / "a.png").write_text("1")
    context: Any = SimpleNamespace(task=SimpleNamespace(name="render"))
    key = params_cache_key(("render",), ("render.out_dir",))

    def of(**overrides: Any) -> str:
        return key(context, {"params": default_params({"render.out_dir": str(out), **overrides})})

    first = of()
    assert of() == first
    assert of(**{"train.steps": 7}) == first  # another stage's setting does not touch this one's result
    assert of(**{"render.radius": 3}) != first
    (out / "b.png").write_text("2")
    assert of() != first
    assert of(**{"render.out_dir": str(tmp_path / "nowhere")}) != of(**{"render.out_dir": str(tmp_path / "nowhere")})


def test_a_stage_task_runs_the_registry_entry_point() -> None:
    from posescene.data.pairs import pairs
    from posescene.data.render import render
    from tasks.stage import stage_task

    assert stage_task("render", render).name == "render"
    with pytest.raises(ValueError, match="posescene.data.render:render"):
        stage_task("render", pairs)


def test_every_stage_has_one_entry_point_of_the_contract() -> None:
    """Each registry stage names ``<module>:<stage>``, defined as ``<stage>(params, *, progress, ...)`` (read, not run:
    importing the world's and training's modules costs seconds)."""
    import ast

    from posescene.stages import REGISTRY

    root = Path(__file__).resolve().parents[1]
    for stage in REGISTRY:
        module, _, name = stage.task.entry.partition(":")
        assert name == stage.name, stage.task.entry
        tree = ast.parse((root / (module.replace(".", "/") + ".py")).read_text(encoding="utf-8"))
        (fn,) = [node for node in tree.body if isinstance(node, ast.FunctionDef) and node.name == name]
        assert [a.arg for a in fn.args.args] == ["params"], stage.name
        assert "progress" in [a.arg for a in fn.args.kwonlyargs], stage.name


def test_a_cluster_run_of_poses_is_never_cached(tmp_path: Path) -> None:
    from posescene.config import default_params
    from posescene.stages import BY_NAME
    from tasks.stage import _cache_key

    key = _cache_key(BY_NAME["poses"].task)
    assert key is not None
    (tmp_path / "a.txt").write_text("1")
    params = default_params({"ingest.out_dir": str(tmp_path), "poses.out_dir": str(tmp_path)})
    context: Any = SimpleNamespace(task=SimpleNamespace(name="poses"))
    assert key(context, {"params": params, "options": {"runner": lambda manifest: None}}) is None
    local = key(context, {"params": params, "options": {"runner": None}})
    assert local is not None and local == key(context, {"params": params, "options": {"runner": None}})


def test_ingest_retries_only_a_hub_download(tmp_path: Path) -> None:
    from posescene.config import default_params
    from posescene.data.ingest import ingest
    from tasks.stage import stage_task

    local = default_params({"ingest.source": str(tmp_path)})
    hub = default_params({"ingest.source_kind": "hf_dataset", "ingest.source": "someone/some-dataset"})
    assert stage_task("ingest", ingest, local).retries == 0
    assert stage_task("ingest", ingest).retries == 0
    on_hub = stage_task("ingest", ingest, hub)
    assert on_hub.retries == 2 and on_hub.retry_delay_seconds == 30
