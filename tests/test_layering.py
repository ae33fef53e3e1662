"""The layers stay apart: ``posescene/`` (the library) never imports the orchestration layer.

``tasks/`` wrap library calls, ``flows/`` compose tasks; the library must run without Prefect (the CLI
under ``torchrun``, the MLflow pyfunc in a scoring server, other people's code). Imports inside functions
count too: they are how a library module would reach up unnoticed. Inside the library, the phase folders
(``data/``, ``world/``, ``training/``, ``evaluation/``, ``serving/``, ``sampling/``) sit on the shared core at the top
level, which imports none of them, and the data stages import no later phase. Also checked here: the stage registry
(``flows/stages.py``) and ``dvc.yaml`` list the same stages, in the same order, with the same outputs.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
LIBRARY = REPO_ROOT / "posescene"
FORBIDDEN = ("prefect", "flows", "tasks")  # prefect also covers prefect_dask & co. (same prefix rule below)


def _is_forbidden(module: str) -> bool:
    top = module.split(".")[0]
    return top in FORBIDDEN or top.startswith("prefect_")


def forbidden_imports(source: str, filename: str = "<source>") -> list[str]:
    """``"line: module"`` for every import of the orchestration layer anywhere in ``source``.

    Covers ``import x``, ``from x import y`` at any depth (functions, methods, ``if TYPE_CHECKING``) and
    ``importlib.import_module("x")`` / ``__import__("x")`` with a literal name.
    """
    found: list[str] = []
    for node in ast.walk(ast.parse(source, filename=filename)):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            func = node.func
            called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if called in ("import_module", "__import__") and isinstance(node.args[0].value, str):
                names = [node.args[0].value]
        found += [f"{node.lineno}: {name}" for name in names if _is_forbidden(name)]
    return found


def test_the_checker_sees_imports_at_every_depth() -> None:
    source = (
        "import os\n"
        "from posescene.io import write_json_atomic\n"
        "def f():\n"
        "    from prefect.settings import PREFECT_API_URL\n"
        "    import flows.deployments\n"
        "class C:\n"
        "    def m(self):\n"
        "        import importlib\n"
        "        importlib.import_module('tasks.train')\n"
        "        __import__('prefect_dask')\n"
    )
    assert forbidden_imports(source) == [
        "4: prefect.settings",
        "5: flows.deployments",
        "9: tasks.train",
        "10: prefect_dask",
    ]
    assert forbidden_imports("from . import flows\nimport prefecture_codes\nimport tasksched\n") == []


def test_library_imports_no_orchestration() -> None:
    modules = sorted(LIBRARY.rglob("*.py"))
    assert len(modules) > 20, f"found only {len(modules)} modules under {LIBRARY}"
    offenders = {
        str(path.relative_to(REPO_ROOT)): hits
        for path in modules
        if (hits := forbidden_imports(path.read_text(encoding="utf-8"), str(path)))
    }
    assert not offenders, (
        f"posescene/ must not import {FORBIDDEN} (orchestration lives in flows/ and tasks/): {offenders}. "
        "Move the code that needs them to flows/ (e.g. a command in flows/cli.py)."
    )


PHASES = ("data", "world", "training", "evaluation", "serving", "sampling", "commands")


def posescene_imports(source: str, filename: str = "<source>") -> set[str]:
    """The ``posescene`` modules ``source`` imports, at any depth (absolute imports; the library uses no others)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(source, filename=filename)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return {name for name in found if name.split(".")[0] == "posescene"}


def _phases_imported(path: Path) -> set[str]:
    return {
        name.split(".")[1]
        for name in posescene_imports(path.read_text(encoding="utf-8"), str(path))
        if len(name.split(".")) > 1 and name.split(".")[1] in PHASES
    }


def test_the_phase_folders_exist() -> None:
    assert all((LIBRARY / phase / "__init__.py").is_file() for phase in PHASES)


def test_the_core_imports_no_phase() -> None:
    """Top-level modules are what every phase shares; only the CLI entry point reaches down (to its commands)."""
    offenders = {
        path.name: hits
        for path in sorted(LIBRARY.glob("*.py"))
        if (hits := _phases_imported(path) - ({"commands"} if path.name == "cli.py" else set()))
    }
    assert not offenders, f"posescene/*.py is the shared core and must not import the phase folders: {offenders}"


def test_the_data_stages_import_no_later_phase() -> None:
    offenders = {
        str(path.relative_to(REPO_ROOT)): hits
        for path in sorted((LIBRARY / "data").rglob("*.py"))
        if (hits := _phases_imported(path) - {"data"})
    }
    assert not offenders, f"posescene/data/ runs first and must import only itself and the core: {offenders}"


def test_orchestration_commands_live_in_flows() -> None:
    """`posescene serve`/`lock-status` come from flows/cli.py; the library CLI has only the stage commands."""
    from flows.cli import app as full_app
    from posescene.cli import app as library_app

    def names(app: object) -> set[str]:
        return {c.name or c.callback.__name__.replace("_", "-") for c in app.registered_commands}  # type: ignore[attr-defined]

    library, full = names(library_app), names(full_app)
    assert {"serve", "lock-status"}.isdisjoint(library)
    assert full == library | {"serve", "lock-status"}


def _dvc_outputs(stage: dict) -> set[str]:
    out: set[str] = set()
    for key in ("outs", "metrics", "plots"):
        for entry in stage.get(key, []):
            out.add(next(iter(entry)) if isinstance(entry, dict) else str(entry))
    return out


def test_stage_registry_matches_dvc_yaml() -> None:
    from flows.stages import DATA_STAGES, PIPELINE_STAGES, REGISTRY

    stages = yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())["stages"]
    assert [s.name for s in REGISTRY] == list(stages), "flows/stages.py REGISTRY and dvc.yaml: different stages/order"
    for stage in REGISTRY:
        spec = stages[stage.name]
        assert spec["cmd"] == f"python -m flows.{stage.name}", f"dvc.yaml {stage.name}.cmd"
        assert bool(spec.get("frozen")) == (not stage.pipeline), f"dvc.yaml {stage.name}.frozen vs Stage.pipeline"
        declared = _dvc_outputs(spec)
        assert set(stage.outputs) == declared, (
            f"stage {stage.name}: flows/stages.py lists {sorted(stage.outputs)}, dvc.yaml declares {sorted(declared)}; "
            "update the one that is out of date"
        )
    assert PIPELINE_STAGES[: len(DATA_STAGES)] == DATA_STAGES  # the data half is a prefix of the pipeline


@pytest.mark.parametrize("name", ["synth", "evaluate"])
def test_stage_flow_resolves(name: str) -> None:
    from flows.stages import stage_flow

    assert stage_flow(name).name == name
    with pytest.raises(ValueError, match="unknown stage"):
        stage_flow("nope")


def test_operations_doc_lists_the_registry() -> None:
    """docs/operations.md's stage table is the registry, row for row (names, order, what each does)."""
    from flows.stages import REGISTRY

    doc = (REPO_ROOT / "docs" / "operations.md").read_text(encoding="utf-8")
    table = doc.split("| stage | writes | does |", 1)[1].split("\n\n", 1)[0]
    rows = [line.split("|")[1:-1] for line in table.strip().splitlines()[1:]]
    documented = [(cells[0].strip(), cells[2].strip().replace("`", "")) for cells in rows]
    expected = [(stage.name, stage.summary) for stage in REGISTRY]
    assert documented == expected, "docs/operations.md's stage table differs from flows/stages.py REGISTRY"
