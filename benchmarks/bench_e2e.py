"""Wall clock of the default pipeline, stage by stage, from nothing: what ``dvc repro`` costs end to end.

The stages of ``flows/stages.py`` that ``dvc repro`` runs (bootstrap is frozen: not timed), in pipeline order,
each as ``dvc repro --force --single-item <stage>`` (``--runner dvc``: the stage's command plus DVC's hashing
and caching of its outputs) or as the stage's own ``cmd`` from dvc.yaml (``--runner cmd``: the command alone),
in a scratch ``git clone`` of this repository's HEAD (uncommitted changes are not in it), so that this checkout's
data, checkpoints, MLflow store (MLFLOW_TRACKING_URI is dropped; ``python -m`` imports the clone's code) and DVC
cache are never touched and every stage starts cold. The clone uses this checkout's ``.venv`` by path (its
``bin`` first on PATH: the stages' ``python`` and ``dvc``); nothing is installed.
``--until STAGE`` stops after that stage (the clone starts empty, so every earlier stage runs, and is timed,
to make its inputs). Each stage's output goes to ``<scratch>/logs/<stage>.log``; the first failing stage stops
the run (the later ones need its outputs) and is recorded.

The JSON (``--out``): seconds per stage, the total, the machine's CPU count and load average at start and end
(a loaded machine is slower: compare runs only at similar load), the commit, the command. Prefect: by default
without a server (PREFECT_API_URL dropped, PREFECT_HOME in the scratch directory): each stage starts Prefect's
temporary server, as a plain ``dvc repro`` on a fresh machine does, and never waits for this checkout's runs.
``--prefect-server`` keeps PREFECT_API_URL: the stages then also take the server's ``ops.concurrency_limit``
slot (flows/run_lock.py), so they wait while another posescene run holds it.

    python benchmarks/bench_e2e.py --out benchmarks/results/e2e.json [--until cache] [--runner cmd]
    python benchmarks/bench_e2e.py --dry-run     # the plan only: nothing cloned, nothing run
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # flows.stages: the stage list (no Prefect import)
from flows.stages import PIPELINE_STAGES  # noqa: E402
from posescene.io import write_json_atomic  # noqa: E402


def stage_commands(dvc_yaml: Path = REPO / "dvc.yaml") -> dict[str, str]:
    """Stage name -> its ``cmd`` in dvc.yaml."""
    return {name: str(stage["cmd"]) for name, stage in yaml.safe_load(dvc_yaml.read_text())["stages"].items()}


def plan(stages: list[str], runner: str, venv_bin: Path) -> list[tuple[str, list[str]]]:
    """(stage, argv) to run in the clone, in order; ``runner``: dvc (repro of one stage) or cmd (its command)."""
    commands = stage_commands()
    missing = [s for s in stages if s not in commands]
    if missing:
        raise SystemExit(f"dvc.yaml has no stage(s) {missing}")
    if runner == "dvc":
        return [(s, [str(venv_bin / "dvc"), "repro", "--force", "--single-item", s]) for s in stages]
    return [(s, ["bash", "-c", commands[s]]) for s in stages]


def git(*args: str, cwd: Path = REPO) -> str:
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=True).stdout.strip()


def stage_env(venv_bin: Path, scratch: Path, prefect_server: bool) -> dict[str, str]:
    """This environment with the venv's bin first on PATH (the stages' ``python`` and ``dvc``), without
    MLFLOW_TRACKING_URI (the clone's runs go to its own embedded store, never to this checkout's registry) and,
    unless ``prefect_server``, without PREFECT_API_URL and with its own PREFECT_HOME."""
    dropped = {"MLFLOW_TRACKING_URI"} | (set() if prefect_server else {"PREFECT_API_URL"})
    env = {k: v for k, v in os.environ.items() if k not in dropped}
    if not prefect_server:
        env["PREFECT_HOME"] = str(scratch / "prefect")
    return {
        **env,
        "PATH": f"{venv_bin}{os.pathsep}{env.get('PATH', '')}",
        "VIRTUAL_ENV": str(venv_bin.parent),
        "DVC_NO_ANALYTICS": "1",
    }


def print_plan(
    steps: list[tuple[str, list[str]]], scratch: str, out: Path, venv_bin: Path, prefect_server: bool
) -> None:
    commands = stage_commands()
    dirty = git("status", "--porcelain", "--untracked-files=no")
    print(f"clone:   git clone --quiet {REPO} {scratch}/repo   (HEAD {git('rev-parse', '--short', 'HEAD')})")
    print(f"logs:    {scratch}/logs/<stage>.log")
    if dirty:
        print("         note: uncommitted changes in this checkout are not in the clone")
    print(f"env:     PATH={venv_bin}:$PATH (this checkout's venv; nothing installed), MLFLOW_TRACKING_URI unset")
    if prefect_server:
        print(f"prefect: PREFECT_API_URL={os.environ.get('PREFECT_API_URL', '(not set: temporary server)')}")
    else:
        print(f"prefect: no server (PREFECT_API_URL unset, PREFECT_HOME={scratch}/prefect): temporary server per stage")
    for i, (stage, argv) in enumerate(steps, 1):
        print(f"{i:>2}. {stage:<9} {shlex.join(argv)}   [dvc.yaml cmd: {commands[stage]}]")
    print(f"out:     {out}  (stage -> seconds, total, cpus, load average at start/end, commit)")


def run_stage(argv: list[str], cwd: Path, env: dict[str, str], log: Path) -> tuple[float, int]:
    """Wall seconds and exit status of one stage, its stdout and stderr into ``log``."""
    with log.open("w") as fh:
        start = time.perf_counter()
        proc = subprocess.run(argv, cwd=cwd, env=env, stdout=fh, stderr=subprocess.STDOUT, check=False)
        return time.perf_counter() - start, proc.returncode


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks/results/e2e.json")
    parser.add_argument("--until", choices=PIPELINE_STAGES, default=PIPELINE_STAGES[-1], help="the last stage run")
    parser.add_argument("--runner", choices=("dvc", "cmd"), default="dvc")
    parser.add_argument("--scratch", type=Path, default=None, help="parent of the clone (default: a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the clone (outputs, logs) after the run")
    parser.add_argument("--prefect-server", action="store_true", help="keep PREFECT_API_URL (see above)")
    parser.add_argument("--dry-run", action="store_true", help="print the plan; clone and run nothing")
    parser.add_argument("--note", default="")
    args = parser.parse_args()
    order = list(PIPELINE_STAGES[: PIPELINE_STAGES.index(args.until) + 1])
    venv_bin = Path(sys.executable).parent
    steps = plan(order, args.runner, venv_bin)
    if args.dry_run:
        scratch = f"{args.scratch or tempfile.gettempdir()}/posescene-e2e-<random>"
        print_plan(steps, scratch, args.out, venv_bin, args.prefect_server)
        return

    load_start = os.getloadavg()
    if args.scratch:
        args.scratch.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="posescene-e2e-", dir=args.scratch))
    clone, logs = scratch / "repo", scratch / "logs"
    logs.mkdir()
    result: dict[str, Any] = {"stages": {}, "runner": args.runner, "prefect_server": args.prefect_server,
                              "failed": None}  # fmt: skip
    try:
        start = time.perf_counter()
        subprocess.run(["git", "clone", "--quiet", str(REPO), str(clone)], check=True)
        result["clone_s"] = round(time.perf_counter() - start, 2)
        env = stage_env(venv_bin, scratch, args.prefect_server)
        for stage, argv in steps:
            seconds, status = run_stage(argv, clone, env, logs / f"{stage}.log")
            result["stages"][stage] = round(seconds, 2)
            print(f"{stage:>9}: {seconds:8.1f} s" + ("" if status == 0 else f"  FAILED (exit {status})"), flush=True)
            if status != 0:
                result["failed"] = stage
                tail = (logs / f"{stage}.log").read_text(errors="replace")[-3000:]
                print(f"--- {logs / stage}.log (tail) ---\n{tail}", file=sys.stderr)
                break
        result["total_s"] = round(sum(result["stages"].values()), 2)
        result.update({
            "cpus": os.cpu_count(),
            "load_average_1_5_15": {"start": [round(x, 2) for x in load_start],
                                    "end": [round(x, 2) for x in os.getloadavg()]},
            "commit": git("rev-parse", "--short", "HEAD", cwd=clone),
            "command": "python " + " ".join(sys.argv),
            "python": platform.python_version(),
            "note": args.note,
        })  # fmt: skip
        write_json_atomic(args.out, result)
        print(f"total {result['total_s']:.1f} s -> {args.out}")
    finally:
        if args.keep:
            print(f"kept: {scratch}")
        else:
            shutil.rmtree(scratch, ignore_errors=True)
    if result["failed"]:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
