"""Start-up cost of a DVC stage: interpreter, imports, and Prefect's flow-run machinery, per stage module.

Every DVC stage is a fresh ``python -m flows.<stage>``: it pays the interpreter, the imports of its flow
module (Prefect, the task's library code) and a flow run (engine start, API calls, one task run) before any
work. Measured here, each in fresh subprocesses (median of ``--repeats``):

- ``python``: ``python -c pass`` (the interpreter);
- ``import_prefect``: ``python -c "import prefect"`` (the floor of every flow module);
- ``import_flows.<stage>``: ``python -c "import flows.<stage>"`` for every stage of flows/stages.py, and
  which heavy libraries (torch, diffusers, transformers, mlflow, ...) that import pulls in;
- ``empty_flow_run`` (``--flow-run``): a flow with one empty task, run in a fresh process, minus its
  imports: what the flow-run machinery itself costs (against ``PREFECT_API_URL`` when set, else Prefect's
  temporary server, which a DVC stage started without a server pays as well).

``--label before|after`` stores one measurement under that label in ``benchmarks/results/startup.json``
(the other label is kept), so a change is recorded next to the state before it, with the command.

    python benchmarks/bench_startup.py --label after [--repeats 5] [--flow-run]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # flows.stages: the stage list (no Prefect import)
from flows.stages import REGISTRY  # noqa: E402
from posescene.io import write_json_atomic  # noqa: E402

HEAVY = ("torch", "diffusers", "transformers", "accelerate", "mlflow", "scipy", "pandas", "sklearn",
         "matplotlib", "mediapipe", "distributed", "PIL", "pyarrow")  # fmt: skip
EMPTY_FLOW = """
import time
t0 = time.perf_counter()
from prefect import flow, task
t1 = time.perf_counter()

@task
def nothing() -> int:
    return 1

@flow
def empty() -> int:
    return nothing()

empty()
print(t1 - t0, time.perf_counter() - t1)
"""


def run_python(code: str, env: dict[str, str] | None = None) -> tuple[float, str]:
    """Wall seconds of a fresh ``python -c code`` (cwd: the repository, as DVC runs stages) and its stdout."""
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env or os.environ.copy(),
                          capture_output=True, text=True, check=False)  # fmt: skip
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"python -c {code!r} failed:\n{proc.stderr[-2000:]}")
    return wall, proc.stdout


def median_wall(code: str, repeats: int) -> float:
    return round(statistics.median(run_python(code)[0] for _ in range(repeats)), 3)


def heavy_modules(module: str) -> list[str]:
    probe = f"import sys, {module}; print(','.join(h for h in {HEAVY!r} if h in sys.modules))"
    return [m for m in run_python(probe)[1].strip().split(",") if m]


def flow_run_overhead(repeats: int) -> dict[str, float]:
    """Seconds of an empty one-task flow run in a fresh process, beyond importing Prefect."""
    env = {**os.environ, "PREFECT_LOGGING_LEVEL": "WARNING"}
    runs = []
    for _ in range(repeats):
        wall, out = run_python(EMPTY_FLOW, env)
        imports, flow_run = (float(x) for x in out.split()[-2:])
        runs.append((wall, imports, flow_run))
    return {
        "wall_s": round(statistics.median(r[0] for r in runs), 3),
        "import_s": round(statistics.median(r[1] for r in runs), 3),
        "flow_run_s": round(statistics.median(r[2] for r in runs), 3),
        "server": "PREFECT_API_URL" if os.environ.get("PREFECT_API_URL") else "temporary (ephemeral) server",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--label", default="after", help="stored under this key (before | after)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--flow-run", action="store_true", help="also time an empty flow run (needs a server)")
    parser.add_argument("--note", default="")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks/results/startup.json")
    args = parser.parse_args()
    load_before = os.getloadavg()

    result: dict[str, Any] = {
        "python_s": median_wall("pass", args.repeats),
        "import_prefect_s": median_wall("import prefect", args.repeats),
        "stages": {},
    }
    for stage in REGISTRY:
        module = f"flows.{stage.name}"
        result["stages"][stage.name] = {
            "import_s": median_wall(f"import {module}", args.repeats),
            "data_stage": stage.data,
            "heavy_imports": heavy_modules(module),
        }
        print(f"{module:>16}: {result['stages'][stage.name]['import_s']:.2f} s  "
              f"{' '.join(result['stages'][stage.name]['heavy_imports'])}")  # fmt: skip
    if args.flow_run:
        result["empty_flow_run"] = flow_run_overhead(args.repeats)
        print(f"empty flow run: {result['empty_flow_run']}")
    result.update({
        "load_average_1_5_15": {"before": [round(x, 2) for x in load_before],
                                "after": [round(x, 2) for x in os.getloadavg()]},
        "repeats": args.repeats,
        "command": "python " + " ".join(sys.argv),
        "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                                 text=True, check=False).stdout.strip(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "note": args.note,
    })  # fmt: skip
    print(f"python {result['python_s']} s, import prefect {result['import_prefect_s']} s")
    existing: dict[str, Any] = json.loads(args.out.read_text()) if args.out.exists() else {}
    existing[args.label] = result
    write_json_atomic(args.out, existing)
    print(f"-> {args.out} [{args.label}]")


if __name__ == "__main__":
    main()
