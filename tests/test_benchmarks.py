"""Smoke tests of the benchmarks: they run (tiny sizes, one repeat) and write the JSON keys reports rely on.

Nothing here checks a timing (benchmarks compare side by side in one run; timed unit tests only measure
the machine's load). bench_gpu.py must stay runnable without a GPU, so that the one run on a lent device
is not its first.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from conftest import REPO_ROOT

BENCH = REPO_ROOT / "benchmarks"


def _run(script: str, *args: str) -> str:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, str(BENCH / script), *args], cwd=REPO_ROOT, env=env, capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_bench_gpu_tiny_on_cpu(tmp_path: Path) -> None:
    out = tmp_path / "gpu_cpu.json"
    _run("bench_gpu.py", "--size", "tiny", "--device", "cpu", "--threads", "1", "--repeats", "1", "--warmup", "0",
         "--sample-steps", "2", "--sample-repeats", "1", "--out", str(out))  # fmt: skip
    result = json.loads(out.read_text())
    assert {"device", "device_name", "dtype", "resolution", "batch", "training", "evaluation", "expectation",
            "command"} <= set(result)  # fmt: skip
    assert result["device"] == "cpu" and result["dtype"] == "bf16" and result["batch"] == 8
    assert set(result["training"]) == {"off", "on"}  # gradient checkpointing both ways
    for mode in result["training"].values():
        for variant in ("plain", "floor_1", "floor_2", "two_branch_whole", "two_branch_distill"):
            assert mode[variant]["samples_per_s"] > 0
        assert set(mode["ratios"]) == {
            "two_branch_whole_vs_plain_throughput", "two_branch_distill_vs_plain_throughput",
            "two_branch_whole_vs_floor_time", "two_branch_distill_vs_floor_time",
        }  # fmt: skip
    assert result["evaluation"]["images_per_s"] > 0 and result["evaluation"]["steps"] == 2


def test_bench_gpu_names_its_device() -> None:
    sys.path.insert(0, str(BENCH))
    try:
        from bench_gpu import device_slug, sd15_vae_config
    finally:
        sys.path.remove(str(BENCH))
    import torch

    assert device_slug(torch.device("cpu")) == "cpu"
    assert sd15_vae_config()["block_out_channels"] == [128, 256, 512, 512]


def test_bench_train_step_tiny_states_the_floor(tmp_path: Path) -> None:
    out = tmp_path / "train_step.json"
    stdout = _run("bench_train_step.py", "--size", "tiny", "--threads", "1", "--repeats", "1", "--warmup", "0",
                  "--out", str(out))  # fmt: skip
    result = json.loads(out.read_text())["tiny"]
    assert "no-grad" in result["floor"] and "floor_2" in result["floor"]
    assert set(result["gradient_checkpointing"]) == {"off", "on"}
    for mode in result["gradient_checkpointing"].values():
        assert mode["readings"]["whole"]["floor"] == "floor_1"
        assert mode["readings"]["distill"]["floor"] == "floor_2"
        assert {"vs_floor", "vs_plain", "at_floor"} <= set(mode["readings"]["distill"])
    assert "floor_2 (plain + 2 no-grad forward)" in stdout


def test_bench_world_step_times_each_variant_against_bf16(tmp_path: Path) -> None:
    out = tmp_path / "world_step.json"
    _run("bench_world_step.py", "--stage", "joint", "--threads", "1", "--batch", "4", "--repeats", "1", "--warmup",
         "0", "--out", str(out))  # fmt: skip
    result = json.loads(out.read_text())
    assert result["stage"] == "joint" and result["batch"] == 4 and result["threads"] == 1
    assert set(result["s_per_step_median"]) == {"bf16", "fp32", "bf16_channels_last", "fp32_channels_last"}
    assert result["speedup_vs_bf16"]["bf16"] == 1.0 and all(v > 0 for v in result["s_per_step_median"].values())
    assert result["command"].startswith("python benchmarks/bench_world_step.py --stage joint")


def test_bench_e2e_dry_run_prints_the_pipeline_plan(tmp_path: Path) -> None:
    from flows.stages import PIPELINE_STAGES

    out = tmp_path / "e2e.json"
    stdout = _run("bench_e2e.py", "--dry-run", "--out", str(out))
    steps = [line.split()[1] for line in stdout.splitlines() if line[:3].strip().rstrip(".").isdigit()]
    assert steps == list(PIPELINE_STAGES)  # every stage dvc repro runs, in order (bootstrap is frozen)
    assert "dvc repro --force --single-item evaluate" in stdout and "git clone" in stdout
    assert not out.exists()  # nothing run, nothing written
    cmd = _run("bench_e2e.py", "--dry-run", "--runner", "cmd", "--until", "pairs", "--out", str(out))
    assert "python -m flows.pairs" in cmd and "flows.render" not in cmd


def test_text_encoder_pack_unpacks_to_the_same_lookups(tmp_path: Path) -> None:
    """The fp16 pack that carries MiniLM to a lent GPU: unpacked, every kept word piece's row is the packed one,
    every other row is zero (never looked up), and the other tensors come back as fp32 of the packed values."""
    import torch
    from safetensors.torch import load_file, save_file

    sys.path.insert(0, str(BENCH / "gpu_bootstrap"))
    try:
        from pack_text_encoder import TOKENIZER_FILES, WORD, unpack
    finally:
        sys.path.remove(str(BENCH / "gpu_bootstrap"))
    packed_dir = tmp_path / "pack"
    packed_dir.mkdir()
    rows = torch.randn(3, 4).half()
    layer = torch.randn(4, 4).half()
    save_file({WORD + ".rows": rows, WORD + ".ids": torch.tensor([0, 5, 9]), WORD + ".shape": torch.tensor([10, 4]),
               "encoder.layer.0.weight": layer}, packed_dir / "packed.safetensors")  # fmt: skip
    for name in TOKENIZER_FILES:
        (packed_dir / name).write_text("{}")
    model = unpack(packed_dir, tmp_path / "site")
    weights = load_file(model / "model.safetensors")
    word = weights[WORD]
    assert word.dtype == torch.float32 and word.shape == (10, 4)
    assert torch.equal(word[[0, 5, 9]], rows.float()) and not word[[1, 2, 3, 4, 6, 7, 8]].any()
    assert torch.equal(weights["encoder.layer.0.weight"], layer.float())
    assert (model.parent / "__init__.py").exists() and all((model / n).exists() for n in TOKENIZER_FILES)


def test_assemble_refuses_a_folder_without_the_device_runs_files(tmp_path: Path) -> None:
    """assemble.py re-joins a GPU run's checkpoint: a wrong folder stops before anything is written."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, str(BENCH / "gpu_bootstrap" / "assemble.py"), str(tmp_path), "never_written"],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode != 0
    assert "no gpu_summary.json or joint.pt.part-*" in proc.stderr and "files_at" in proc.stderr
    assert not (REPO_ROOT / "checkpoints" / "never_written").exists()
