"""Every stage in dvc.yaml depends on the code it runs: the first-party modules its command imports.

A stage's ``cmd`` runs a flow module (``python -m flows.<name>``, the stage registry in ``flows/stages.py``);
the closure of the ``posescene``/``tasks``/``flows`` modules that module imports, at any depth, is read with
``ast``. Imports inside functions count: most of them are deliberately lazy (start-up speed), and a stage runs
them all the same. Imports under ``if TYPE_CHECKING:`` do not (they never run). A package ``__init__.py``
counts when it runs something (an import, a function or class); a docstring-only one does not.

Every file of the closure must be covered by the stage's ``deps`` (a file, or a directory above it), so an
edit to code a stage runs reruns it; and every first-party code dep must be run by the stage (a directory:
some file under it), so deps stay tight, except the few files a stage reads by path (``NOT_IMPORTED``).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("posescene", "tasks", "flows")  # first-party code

# Code deps a stage uses without importing them, each with its reason.
NOT_IMPORTED: dict[tuple[str, str], str] = {
    ("train", "posescene/serving/pyfunc_model.py"): (
        "the registered MLflow model's code, logged by path (models from code)"
    ),
}

_ENTRY = re.compile(r"\bpython\s+-m\s+([A-Za-z_][\w.]*)")


def module_file(module: str, root: Path) -> Path | None:
    """The file of dotted ``module`` under ``root`` (``a/b.py`` or ``a/b/__init__.py``), None if there is none."""
    base = root.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _dynamic_import(node: ast.AST) -> str | None:
    """The module of ``importlib.import_module("a.b")`` / ``__import__("a.b")`` with a literal name."""
    if not (isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant)):
        return None
    func = node.func
    called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
    value = node.args[0].value
    return value if called in ("import_module", "__import__") and isinstance(value, str) else None


def _import_nodes(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    """Every import at any depth (functions, methods, branches; ``import_module("x")`` with a literal name as
    ``import x``), except under ``if TYPE_CHECKING:``."""
    found: list[ast.Import | ast.ImportFrom] = []
    stack: list[ast.AST] = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.Import | ast.ImportFrom):
            found.append(node)
        elif (name := _dynamic_import(node)) is not None:
            found.append(ast.Import(names=[ast.alias(name=name)]))
        elif isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.extend(node.orelse)  # the body never runs
            continue
        stack.extend(ast.iter_child_nodes(node))
    return found


def imported_modules(path: Path, root: Path, packages: tuple[str, ...] = PACKAGES) -> set[str]:
    """Dotted names of the first-party modules that running ``path`` imports directly (its parents included)."""
    here = _module_name(path, root)
    package = here if path.name == "__init__.py" else here.rpartition(".")[0]
    names: set[str] = set()
    for node in _import_nodes(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
            continue
        if node.level:  # relative: from . import x / from ..a import b
            anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)] if package else []
            base = ".".join([*anchor, *([node.module] if node.module else [])])
        else:
            base = node.module or ""
        names.add(base)
        # ``from pkg import mod`` imports the submodule ``pkg.mod`` when there is one
        names.update(f"{base}.{alias.name}" for alias in node.names if module_file(f"{base}.{alias.name}", root))
    out: set[str] = set()
    for name in names:
        parts = name.split(".")
        if parts[0] not in packages:
            continue
        out.update(".".join(parts[: i + 1]) for i in range(len(parts)))  # importing a.b.c runs a and a.b first
    return out


def _is_literal(node: ast.expr | None) -> bool:
    try:
        ast.literal_eval(node)  # type: ignore[arg-type]
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return False
    return True


def _runs_something(init: Path) -> bool:
    """False for a package ``__init__.py`` of only a docstring and literal constants (``__version__ = "1"``)."""
    tree = ast.parse(init.read_text(encoding="utf-8"))
    return not all(
        isinstance(stmt, ast.Expr | ast.Assign | ast.AnnAssign) and _is_literal(stmt.value) for stmt in tree.body
    )


def import_closure(entries: list[str], root: Path, packages: tuple[str, ...] = PACKAGES) -> set[str]:
    """Repo-relative POSIX paths of every first-party file that running the ``entries`` modules imports."""
    seen: set[str] = set()
    files: set[str] = set()
    todo = [name for entry in entries for name in _entry_names(entry, packages)]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        path = module_file(name, root)
        if path is None:
            continue  # an attribute of a package, not a module (``from posescene import __version__``)
        if path.name != "__init__.py" or _runs_something(path):
            files.add(path.relative_to(root).as_posix())
        todo.extend(imported_modules(path, root, packages))
    return files


def _entry_names(module: str, packages: tuple[str, ...]) -> set[str]:
    """``module`` itself and its parent packages (``python -m a.b`` imports ``a`` and runs ``a/b.py``)."""
    parts = module.split(".")
    return {".".join(parts[: i + 1]) for i in range(len(parts))} if parts[0] in packages else set()


def covered(path: str, deps: list[str]) -> bool:
    """True when ``path`` is a dep or lies under a directory dep."""
    return any(path == dep or path.startswith(dep.rstrip("/") + "/") for dep in deps)


def entry_modules(cmd: str) -> list[str]:
    """The modules a stage command runs with ``python -m`` (``python -m flows.train && ...``: each of them)."""
    return _ENTRY.findall(cmd)


def missing_deps(entries: list[str], deps: list[str], root: Path, packages: tuple[str, ...] = PACKAGES) -> list[str]:
    """Files the entries import that no dep covers, sorted."""
    return sorted(path for path in import_closure(entries, root, packages) if not covered(path, deps))


def unused_code_deps(
    entries: list[str], deps: list[str], root: Path, packages: tuple[str, ...] = PACKAGES
) -> list[str]:
    """First-party code deps the entries never import: a file outside the closure, a directory with none of it."""
    closure = import_closure(entries, root, packages)
    unused = []
    for dep in deps:
        dep = dep.rstrip("/")
        if dep.split("/")[0] not in packages or "${" in dep:
            continue  # data, models, templated paths
        if not any(path == dep or path.startswith(dep + "/") for path in closure):
            unused.append(dep)
    return unused


# --------------------------------------------------------------------------------------------------
# The checker on a synthetic package


def _write(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


SYNTHETIC = {
    "flows/__init__.py": '"""docstring only: runs nothing"""\n',
    "flows/stage.py": (
        "from typing import TYPE_CHECKING\n"
        "import os\n"
        "from flows.helpers import run\n"
        "if TYPE_CHECKING:\n"
        "    from lib.typing_only import T\n"
        "def main():\n"
        "    from lib import lazy\n"  # a lazy import, a submodule named in from-import
        "    return lazy.go()\n"
        "def plugin():\n"
        "    import importlib\n"
        "    return importlib.import_module('lib.plugin')\n"
    ),
    "flows/helpers.py": "from . import sibling\ndef run():\n    import lib.deep.leaf\n",
    "flows/sibling.py": "X = 1\n",
    "lib/__init__.py": "from lib.core import VERSION\n",  # runs something: counts
    "lib/core.py": "VERSION = '1'\n",
    "lib/lazy.py": "def go():\n    from .core import VERSION\n    return VERSION\n",
    "lib/deep/__init__.py": "",
    "lib/deep/leaf.py": "import numpy\n",
    "lib/typing_only.py": "T = int\n",
    "lib/plugin.py": "",
    "lib/unused.py": "",
}
SYNTHETIC_PACKAGES = ("flows", "lib")


def test_the_closure_follows_lazy_relative_and_package_imports(tmp_path: Path) -> None:
    root = _write(tmp_path, SYNTHETIC)
    assert import_closure(["flows.stage"], root, SYNTHETIC_PACKAGES) == {
        "flows/stage.py",
        "flows/helpers.py",
        "flows/sibling.py",
        "lib/__init__.py",
        "lib/core.py",
        "lib/lazy.py",
        "lib/deep/leaf.py",
        "lib/plugin.py",
    }  # not: flows/__init__.py, lib/deep/__init__.py (run nothing), lib/typing_only.py, lib/unused.py


def test_an_import_without_a_dep_fails(tmp_path: Path) -> None:
    root = _write(tmp_path, SYNTHETIC)
    deps = ["flows/stage.py", "flows/helpers.py", "flows/sibling.py", "lib", "data/input"]
    assert missing_deps(["flows.stage"], deps, root, SYNTHETIC_PACKAGES) == []
    assert unused_code_deps(["flows.stage"], deps, root, SYNTHETIC_PACKAGES) == []

    # a new lazy import of a module outside the deps: reported
    (root / "flows/extra.py").write_text("")
    (root / "flows/helpers.py").write_text(SYNTHETIC["flows/helpers.py"] + "def more():\n    import flows.extra\n")
    assert missing_deps(["flows.stage"], deps, root, SYNTHETIC_PACKAGES) == ["flows/extra.py"]

    # a directory dep covers files under it only; a dep on code the stage never imports is reported
    tight = ["flows", "lib/core.py", "lib/lazy.py", "lib/__init__.py", "lib/plugin.py", "lib/unused.py", "lib/deep"]
    assert missing_deps(["flows.stage"], tight, root, SYNTHETIC_PACKAGES) == []
    assert unused_code_deps(["flows.stage"], tight, root, SYNTHETIC_PACKAGES) == ["lib/unused.py"]
    assert missing_deps(["flows.stage"], ["flows", "lib/deep"], root, SYNTHETIC_PACKAGES) == [
        "lib/__init__.py",
        "lib/core.py",
        "lib/lazy.py",
        "lib/plugin.py",
    ]


def test_entry_modules_of_a_command() -> None:
    assert entry_modules("python -m flows.train") == ["flows.train"]
    assert entry_modules("python -m flows.a --x 1 && python -m flows.b") == ["flows.a", "flows.b"]
    assert entry_modules("echo hi") == []


# --------------------------------------------------------------------------------------------------
# The project's dvc.yaml


def _stages() -> dict[str, dict]:
    return yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())["stages"]


def test_every_stage_runs_its_flow() -> None:
    # flows/stages.py: stage <name> is flows.<name>.<name>_flow (tests/test_layering.py: same stages as dvc.yaml)
    for name, stage in _stages().items():
        assert entry_modules(stage["cmd"]) == [f"flows.{name}"], f"{name}: cmd {stage['cmd']!r}"


@pytest.mark.parametrize("name", list(_stages()))
def test_stage_deps_cover_the_code_it_imports(name: str) -> None:
    stage = _stages()[name]
    entries, deps = entry_modules(stage["cmd"]), [str(d) for d in stage.get("deps", [])]
    missing = missing_deps(entries, deps, REPO_ROOT)
    assert not missing, f"dvc.yaml stage {name!r}: add to deps (its code imports them): {missing}"
    unused = [d for d in unused_code_deps(entries, deps, REPO_ROOT) if (name, d) not in NOT_IMPORTED]
    assert not unused, f"dvc.yaml stage {name!r}: deps on code it never imports: {unused}"
