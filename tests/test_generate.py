"""Generation on tiny models: determinism, shared initial noise across poses, every model mode, pose inputs."""

from __future__ import annotations

import json
import sys
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch
from _params import write_params
from diffusers import T2IAdapter

from posescene.errors import ConfigError, InputDataError, ModelLoadError
from posescene.sampling.maps import condition_maps
from posescene.sampling.pose import pose_from_pixels, poses_from_images, poses_from_json, poses_from_lattice_rows
from posescene.sampling.sampler import Job, ModelBank, ModelSpec, standard_spec
from posescene.world.architectures import build_tiny_models, tiny_architecture
from tests.conftest import REPO_ROOT

sys.path.insert(0, str(REPO_ROOT / "benchmarks"))  # the stock pipelines, the peer the sampler is compared with
from stock_pipelines import stock_images  # noqa: E402

RES = 32
BETA = 0.05


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Tiny models gain nothing from intra-op threads; on a busy 2-core machine OpenMP threads waiting for
    each other make every tiny kernel far slower (see tests/test_evaluate.py)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _pose(cx: float, seed: int, size: int = RES):
    rng = np.random.default_rng(seed)
    x = np.clip(cx + rng.normal(0, 3, 18), 1, size - 2)
    y = np.clip(np.linspace(size * 0.2, size * 0.9, 18) + rng.normal(0, 1, 18), 1, size - 2)
    return pose_from_pixels(x, y, size, size, BETA, label=f"pose{seed}")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny")
    pipeline, primary = build_tiny_models(root, seed=0)
    torch.manual_seed(1)
    secondary = root / "secondary"
    T2IAdapter(**tiny_architecture().adapter).save_pretrained(secondary, safe_serialization=True)
    return {"pipeline": pipeline, "primary": primary, "secondary": secondary}


@pytest.fixture(scope="module")
def bank(tiny: dict[str, Path]) -> ModelBank:
    return ModelBank(
        str(tiny["pipeline"]),
        {"primary": str(tiny["primary"]), "secondary": str(tiny["secondary"])},
        resolution=RES,
        device="cpu",
    )


MAPS = partial(condition_maps, resolution=RES, radius=1, limbs=False, in_channels=1, invert=False)
POSES = [_pose(10, 0), _pose(16, 1), _pose(22, 2)]


def _run(bank: ModelBank, name: str, jobs: list[Job], batch_size: int = 8) -> np.ndarray:
    return bank.generate(standard_spec(name), jobs, steps=3, guidance_scale=4.0, batch_size=batch_size, maps=MAPS,
                         progress=False)  # fmt: skip


def test_same_seed_same_images_and_seed_matters(bank: ModelBank):
    jobs = [Job("a person on a beach", 0, p) for p in POSES] + [Job("a person on a beach", 1, POSES[0])]
    a = _run(bank, "primary", jobs)
    b = _run(bank, "primary", jobs)
    assert a.shape == (4, RES, RES, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b)
    assert not np.array_equal(a[0], a[3])  # another seed, another image
    assert torch.equal(bank.initial_noise(5), bank.initial_noise(5))
    assert not torch.equal(bank.initial_noise(5), bank.initial_noise(6))


def test_same_initial_noise_across_poses(bank: ModelBank):
    jobs = [Job("a person in a forest", 3, p) for p in POSES]
    # the base model ignores the pose: with the same initial noise every pose gives the same image
    base = _run(bank, "base", jobs).astype(int)
    assert np.abs(base - base[0]).max() <= 1
    # with the adapter the pose is the only thing that changes the image
    primary = _run(bank, "primary", jobs).astype(int)
    assert np.abs(primary[1] - primary[0]).max() > 0


def test_job_alone_equals_job_in_a_batch(bank: ModelBank):
    jobs = [Job("a person in a park", s, POSES[s % 3]) for s in range(5)]
    batched = _run(bank, "secondary", jobs, batch_size=5).astype(int)
    alone = _run(bank, "secondary", jobs[2:3], batch_size=1).astype(int)
    assert np.abs(batched[2] - alone[0]).max() <= 2


def test_all_model_modes(bank: ModelBank):
    jobs = [Job("a person by a lake", 0, POSES[1])]
    out = {name: _run(bank, name, jobs)[0].astype(int) for name in ("base", "primary", "secondary", "both")}
    for name, image in out.items():
        assert image.shape == (RES, RES, 3), name
    assert np.abs(out["primary"] - out["secondary"]).max() > 0
    assert np.abs(out["both"] - out["primary"]).max() > 0
    assert np.abs(out["base"] - out["primary"]).max() > 0
    # MultiAdapter weights (1, 0) reproduce the primary adapter alone
    only_primary = ModelSpec("mix", ("primary", "secondary"), (1.0, 0.0))
    mixed = bank.generate(only_primary, jobs, steps=3, guidance_scale=4.0, batch_size=1, maps=MAPS, progress=False)
    assert np.abs(mixed[0].astype(int) - out["primary"]).max() <= 1
    with pytest.raises(ModelLoadError, match="needs adapter"):
        bank.generate(ModelSpec("x", ("nope",)), jobs, steps=1, guidance_scale=1.0, batch_size=1, maps=MAPS)
    with pytest.raises(ValueError, match="unknown model"):
        standard_spec("tertiary")


def test_condition_maps_follow_the_training_renderer():
    pose = pose_from_pixels([20.0] + [None] * 17, [40.0] + [None] * 17, 64, 64, BETA)
    maps = condition_maps([pose], resolution=RES, radius=0, limbs=False, in_channels=1, invert=False)
    assert maps.shape == (1, 1, RES, RES)
    assert maps.min() == 0.0 and maps.max() == 1.0  # a single-pixel point survives 64 -> 32 (min-pooling)
    inv = condition_maps([pose], resolution=RES, radius=0, limbs=False, in_channels=3, invert=True)
    assert inv.shape == (1, 3, RES, RES) and torch.allclose(inv[:, :1], 1 - maps)


def test_pose_inputs_json_lattice_detector(tmp_path: Path):
    kp = [[10.0 + i, 5.0 + 2 * i] for i in range(17)] + [None]
    path = tmp_path / "pose.json"
    path.write_text(json.dumps({"width": 64, "height": 64, "keypoints": kp}))
    (pose,) = poses_from_json(path, BETA)
    assert pose.n_points == 17 and pose.side == 64
    # where the pose should appear in a generated 32 px image: the same place, scaled
    at = pose.keypoints_at(32, BETA)
    assert np.allclose(at[0], [5.0, 2.5]) and np.isnan(at[17]).all()
    path.write_text(json.dumps([{"width": 64, "height": 64, "keypoints": kp}] * 2))
    assert len(poses_from_json(path, BETA)) == 2
    path.write_text(json.dumps({"width": 64, "keypoints": kp}))
    with pytest.raises(InputDataError, match="needs 'width'"):
        poses_from_json(path, BETA)

    row = {"image_id": "abc", "person": 0, "width": 64, "height": 48, "has_person": True,
           "x_norm": list(pose.x_norm[:17]) + [None], "y_norm": list(pose.y_norm[:17]) + [None]}  # fmt: skip
    (from_row,) = poses_from_lattice_rows([row])
    assert from_row.side == 48 and from_row.label == "abc"
    with pytest.raises(InputDataError, match="no person"):
        poses_from_lattice_rows([{**row, "has_person": False}])

    class FakeDetector:
        def detect(self, images):
            xy = np.array(kp[:17] + [[0.0, 0.0]], dtype=np.float32)
            score = np.ones(18, dtype=np.float32)
            score[17] = 0.1
            return [[type("P", (), {"xy": xy, "score": score})()] for _ in images]

    (detected,) = poses_from_images([np.zeros((64, 64, 3), np.uint8)], FakeDetector(), BETA, min_score=0.3)
    assert np.allclose(detected.x_norm[:17], pose.x_norm[:17]) and np.isnan(detected.x_norm[17])


def test_identity_weights_missing_or_without_peft(bank: ModelBank, tmp_path: Path):
    with pytest.raises(ModelLoadError, match="no such file"):
        bank.load_identity(tmp_path / "missing.safetensors")
    lora = tmp_path / "identity.safetensors"
    lora.write_bytes(b"not really")
    try:
        import peft  # noqa: F401
    except ImportError:
        with pytest.raises(ModelLoadError, match="peft"):
            bank.load_identity(lora)
    else:  # with peft, a broken file is reported as such
        with pytest.raises(ModelLoadError, match="could not be loaded"):
            bank.load_identity(lora)


def test_incompatible_adapter_fails_early(tiny: dict[str, Path]):
    with pytest.raises(ModelLoadError, match="input channel"):
        ModelBank(str(tiny["pipeline"]), {"primary": str(tiny["primary"])}, resolution=RES, in_channels=3, device="cpu")


def test_generate_cli(tiny: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from typer.testing import CliRunner

    from posescene.cli import app

    kp = [[8.0 + i, 4.0 + 1.5 * i] for i in range(18)]
    (tmp_path / "pose.json").write_text(json.dumps([{"width": 32, "height": 32, "keypoints": kp}] * 2))
    write_params(tmp_path / "params.yaml", {})  # the project's params; the model comes in by --set
    monkeypatch.chdir(tmp_path)
    args = ["generate", "out", "-p", "a person on a beach", "--pose-json", "pose.json", "--seed", "0",
            "--model", "base", "--model", "primary", "--steps", "2", "--no-progress", "--device", "cpu",
            "--set", f"model.base={tiny['pipeline']}", "--set", f"model.primary_adapter={tiny['primary']}",
            "--set", "model.resolution=32"]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    index = json.loads((tmp_path / "out" / "index.json").read_text())
    assert len(index) == 4 and (tmp_path / "out" / "primary" / "p0_s0_pose1.png").exists()
    assert (tmp_path / "out" / "grid_p0_s0.png").exists()
    bad = CliRunner().invoke(app, [*args[:6], "--identity", "nowhere.safetensors", *args[6:]])
    assert bad.exit_code == 2 and "identity weights" in bad.output


def test_batched_arm_sampler_equals_the_stock_pipelines(bank: ModelBank):
    """``ModelBank.sample`` batches rows of different adapters and scales in one U-Net call; each row must be
    the image the stock diffusers pipeline draws for that adapter and scale (up to batched float rounding)."""
    from posescene.sampling.sampler import ArmJob

    prompt = "a person on a beach"
    arms = [(None, 0.0), ("primary", 0.5), ("primary", 1.0), ("secondary", 1.0)]
    jobs = [ArmJob(prompt, 7, POSES[1], a, s) for a, s in arms]
    batched = bank.sample(
        jobs, steps=3, guidance_scale=4.0, batch_size=4, maps=MAPS, sampler="ddim", bf16=False, progress=False
    )
    for row, (adapter, scale) in enumerate(arms):
        spec = ModelSpec("base") if adapter is None else ModelSpec(adapter, (adapter,), (scale,))
        stock = stock_images(bank, spec, [Job(prompt, 7, POSES[1])], steps=3, guidance_scale=4.0, batch_size=1,
                             maps=MAPS)  # fmt: skip
        assert np.abs(stock[0].astype(int) - batched[row].astype(int)).max() <= 1, (adapter, scale)
    # the scale matters (the pose is drawn) and scale 0 of an adapter is the base model exactly
    assert not np.array_equal(batched[1], batched[2])
    zero = bank.sample([ArmJob(prompt, 7, POSES[1], "primary", 0.0)], steps=3, guidance_scale=4.0, batch_size=1,
                       maps=MAPS, sampler="ddim", bf16=False, progress=False)  # fmt: skip
    assert np.array_equal(zero[0], batched[0])
    with pytest.raises(ConfigError, match="sampler"):
        bank.sample(
            jobs[:1], steps=3, guidance_scale=4.0, batch_size=1, maps=MAPS, sampler="euler", bf16=False, progress=False
        )


def test_base_rows_are_drawn_once_per_prompt_and_seed(bank: ModelBank):
    """The base model ignores the pose: its rows for several poses of one set are computed once and copied, and
    equal the base row drawn alone; adapter rows (scale > 0) stay one per pose."""
    from posescene.sampling.sampler import ArmJob

    prompt = "a person on a beach"
    arms = ((None, 0.0), ("primary", 0.0), ("primary", 1.0))
    jobs = [ArmJob(prompt, 7, pose, a, s) for pose in POSES[:2] for a, s in arms]
    rows: list[int] = []
    hook = bank.base.unet.register_forward_pre_hook(lambda _module, args: rows.append(args[0].shape[0]))
    kw = dict(steps=2, guidance_scale=4.0, batch_size=8, maps=MAPS, sampler="ddim", bf16=False, progress=False)
    try:
        images = bank.sample(jobs, **kw)
    finally:
        hook.remove()
    assert sum(rows) == 2 * 2 * 3  # 2 steps x (uncond + cond) x 3 distinct rows: one base + two primary@1, not six
    base_rows = [0, 1, 3, 4]
    assert all(np.array_equal(images[i], images[0]) for i in base_rows)
    assert not np.array_equal(images[2], images[5])  # the pose is drawn by the adapter rows
    alone = bank.sample([ArmJob(prompt, 7, None, None, 0.0)], **kw)
    assert np.abs(alone[0].astype(int) - images[0].astype(int)).max() <= 1


def test_generate_images_library_call(tiny: dict[str, Path], tmp_path: Path):
    """The CLI's work as a plain function: a request in, the output directory and its index out."""
    from posescene.config import default_params
    from posescene.serving.generate_images import GenerateRequest, PoseSources, generate_images

    kp = [[8.0 + i, 4.0 + 1.5 * i] for i in range(18)]
    (tmp_path / "pose.json").write_text(json.dumps({"width": 32, "height": 32, "keypoints": kp}))
    params = default_params({"model.base": str(tiny["pipeline"]), "model.primary_adapter": str(tiny["primary"]),
                             "model.resolution": RES, "evaluate.device": "cpu"})  # fmt: skip
    request = GenerateRequest(
        out_dir=tmp_path / "out",
        prompts=["a person on a beach", "a person in a forest"],
        seeds=[0, 1],
        models=["primary", "secondary", "primary"],  # a repeated model is generated once
        poses=PoseSources(json_files=[tmp_path / "pose.json"]),
        secondary=tiny["secondary"],
        steps=2,
    )
    result = generate_images(request, params, progress=False)
    index = json.loads((tmp_path / "out" / "index.json").read_text())
    assert (result.images, result.models, result.jobs) == (8, 2, 4) == (len(index), 2, 4)
    assert {r["file"] for r in index} >= {"secondary/p1_s1_pose0.png", "primary/p0_s0_pose0.png"}
    assert sorted(p.name for p in (tmp_path / "out").glob("grid_*.png")) == [
        "grid_p0_s0.png", "grid_p0_s1.png", "grid_p1_s0.png", "grid_p1_s1.png"]  # fmt: skip

    with pytest.raises(ConfigError, match="need a pose"):
        generate_images(GenerateRequest(tmp_path / "o2", ["a beach"], models=["primary"]), params, progress=False)
    with pytest.raises(ConfigError, match="'nowhere'"):
        generate_images(GenerateRequest(tmp_path / "o3", ["a beach"], models=["nowhere"]), params, progress=False)
    assert not (tmp_path / "o2").exists() and not (tmp_path / "o3").exists()


def _region_fn(fill: bool | None = None):
    """A person region for the sampler: all True / all False, or a box in the left half (fill None)."""

    def region(pose, margin: float) -> np.ndarray:  # noqa: ARG001 - the sampler's signature
        if fill is not None:
            return np.full((RES, RES), fill)
        out = np.zeros((RES, RES), dtype=bool)
        out[4:28, 2:14] = True
        return out

    return region


def _arms(bank: ModelBank, jobs: list, region=None, **kw) -> np.ndarray:
    opts = dict(steps=3, guidance_scale=4.0, batch_size=8, maps=MAPS, sampler="dpmsolver", bf16=False, progress=False)
    return bank.sample(jobs, region=region, **{**opts, **kw}).astype(int)


def test_every_injection_reduces_to_an_existing_arm_at_its_trivial_setting(bank: ModelBank):
    """The alternatives are arms of one sampler; at their trivial knob each must be an arm we already trust:
    a mask covering the image is the scale arm, a steps fraction of 1 is the scale arm and 0 the base model,
    a mask of nothing is the base model; the ``both`` arm is the stock MultiAdapter pipeline."""
    from posescene.sampling.sampler import ArmJob, Injection

    prompt, pose = "a person on a beach", POSES[1]
    base, scale = ArmJob(prompt, 7, pose, None, 0.0), ArmJob(prompt, 7, pose, "primary", 1.0)
    jobs = [
        base,
        scale,
        ArmJob(prompt, 7, pose, "primary", 1.0, Injection("steps", 1.0)),
        ArmJob(prompt, 7, pose, "primary", 1.0, Injection("steps", 0.0)),
        ArmJob(prompt, 7, pose, "primary", 1.0, Injection("steps", 0.5)),
    ]
    out = _arms(bank, jobs)
    assert np.array_equal(out[2], out[1]) and np.array_equal(out[3], out[0])
    assert not np.array_equal(out[4], out[1]) and not np.array_equal(out[4], out[0])  # half the steps is neither

    mask = [ArmJob(prompt, 7, pose, "primary", 1.0, Injection("mask", 0.1))]
    assert np.array_equal(_arms(bank, [base, scale, *mask], _region_fn(True))[2], out[1])
    assert np.abs(_arms(bank, [base, *mask], _region_fn(False))[1] - out[0]).max() <= 1
    half = _arms(bank, [base, scale, *mask], _region_fn())
    assert not np.array_equal(half[2], out[1]) and not np.array_equal(half[2], out[0])
    with pytest.raises(ConfigError, match="region"):
        _arms(bank, mask)
    with pytest.raises(ConfigError, match="fraction"):
        Injection("steps", 1.5)

    both = ArmJob(prompt, 7, pose, "primary", 1.0, added=(("secondary", 0.5),))
    stock = stock_images(bank, ModelSpec("both", ("primary", "secondary"), (1.0, 0.5)), [Job(prompt, 7, pose)],
                         steps=3, guidance_scale=4.0, batch_size=1, maps=MAPS)  # fmt: skip
    drawn = bank.sample([both], steps=3, guidance_scale=4.0, batch_size=1, maps=MAPS, sampler="ddim", bf16=False,
                        progress=False)  # fmt: skip
    assert np.abs(stock[0].astype(int) - drawn[0].astype(int)).max() <= 1


def test_inpaint_bound_keeps_the_base_latent_outside_the_person_region(bank: ModelBank):
    """Latent blending: outside the region the image is the base model's (up to the decoder's reach across the
    region's border), inside it the adapter draws the pose; a region covering the image is the scale arm."""
    from posescene.sampling.sampler import ArmJob, Injection

    prompt, pose = "a person in a forest", POSES[0]
    jobs = [
        ArmJob(prompt, 3, pose, None, 0.0),
        ArmJob(prompt, 3, pose, "primary", 1.0),
        ArmJob(prompt, 3, pose, "primary", 1.0, Injection("inpaint", 0.0)),
    ]
    out = _arms(bank, jobs, _region_fn())
    far = np.zeros((RES, RES), dtype=bool)
    far[:, 22:] = True  # two latent cells away from the region's right edge (x < 14)
    gap_inpaint = np.abs(out[2] - out[0])[far].mean()
    gap_scale = np.abs(out[1] - out[0])[far].mean()
    assert gap_inpaint < 0.2 * gap_scale, (gap_inpaint, gap_scale)  # 0.14 here: the tiny decoder reaches far
    assert np.abs(out[2] - out[0])[4:28, 2:14].mean() > 0  # inside, the pose is drawn
    whole = _arms(bank, jobs, _region_fn(True))
    assert np.array_equal(whole[2], whole[1])


def _store_jobs() -> list:
    """Two sets x three poses x five arms (base, primary at two scales, secondary, the inpainting bound)."""
    from posescene.sampling.sampler import ArmJob, Injection

    jobs = []
    for prompt, seed in (("a person on a beach", 7), ("a person in a forest", 3)):
        for pose in POSES:
            jobs += [ArmJob(prompt, seed, pose, None, 0.0), ArmJob(prompt, seed, pose, "primary", 0.5),
                     ArmJob(prompt, seed, pose, "primary", 1.0), ArmJob(prompt, seed, pose, "secondary", 1.0),
                     ArmJob(prompt, seed, pose, "primary", 1.0, Injection("inpaint", 0.0))]  # fmt: skip
    return jobs


STORE_KW = dict(steps=2, guidance_scale=4.0, batch_size=4, maps=MAPS, sampler="dpmsolver", bf16=False,
                region=_region_fn(), progress=False)  # fmt: skip


def _unet_rows(bank: ModelBank, fn) -> tuple[object, int]:
    """(fn(), rows the U-Net ran) where each row is one (un)conditioned latent of one step."""
    rows: list[int] = []
    hook = bank.base.unet.register_forward_pre_hook(lambda _module, args: rows.append(args[0].shape[0]))
    try:
        return fn(), sum(rows)
    finally:
        hook.remove()


def test_a_store_gives_the_same_bytes_and_a_killed_run_resumes_without_redrawing(bank: ModelBank, tmp_path: Path):
    """The sampler's unit of work is a batch (posescene.shards): kept by content key in a store, a batch is the
    same bytes with or without the store, a run killed after k batches resumes with the rest only and ends with
    the bytes of an uninterrupted run, and a complete store draws nothing."""
    from posescene.sampling.sampler import distinct_rows
    from posescene.shards import BatchStore

    jobs = _store_jobs()
    reference = bank.sample(jobs, **STORE_KW)
    distinct, _ = distinct_rows(jobs)
    n_batches = -(-len(distinct) // 4)  # 2 sets x (1 base + 3 poses x 4 adapter rows) = 26 rows: 7 batches
    assert (len(distinct), n_batches) == (26, 7)

    class Killed(Exception):
        pass

    class DiesAfter(BatchStore):
        """A store whose process is killed after ``k`` batches are written."""

        def __init__(self, root: Path, k: int) -> None:
            super().__init__(root)
            self.k = k

        def write(self, key: str, images: np.ndarray) -> None:
            if self.k == 0:
                raise Killed
            super().write(key, images)
            self.k -= 1

    with pytest.raises(Killed):
        bank.sample(jobs, store=DiesAfter(tmp_path / "store", 3), **STORE_KW)
    assert len(list((tmp_path / "store").rglob("*.npz"))) == 3
    assert not list((tmp_path / "store").rglob("*.tmp"))  # atomic: no half-written entry
    resumed, rows = _unet_rows(bank, lambda: bank.sample(jobs, store=BatchStore(tmp_path / "store"), **STORE_KW))
    assert np.array_equal(resumed, reference)
    # only the 4 missing batches (14 rows: batches 3-5 of 4, batch 6 of 2) and the base trajectories their
    # inpaint rows follow (one chunk of both sets: 2 rows), each row x 2 steps x (uncond + cond)
    assert rows == (4 + 4 + 4 + 2 + 2) * 2 * 2
    assert len(list((tmp_path / "store").rglob("*.npz"))) == n_batches
    again, rows = _unet_rows(bank, lambda: bank.sample(jobs, store=BatchStore(tmp_path / "store"), **STORE_KW))
    assert rows == 0 and np.array_equal(again, reference)
    fresh = bank.sample(jobs, store=BatchStore(tmp_path / "fresh"), **STORE_KW)
    assert np.array_equal(fresh, reference)


def test_a_changed_setting_invalidates_only_the_batches_it_changes(bank: ModelBank, tmp_path: Path):
    from posescene.sampling.sampler import ArmJob, distinct_rows
    from posescene.shards import BatchStore

    jobs = _store_jobs()
    batches = [(distinct_rows(jobs)[0])[i : i + 4] for i in range(0, 26, 4)]
    keys = dict(steps=2, guidance_scale=4.0, sampler="dpmsolver", bf16=False, maps=MAPS, region=_region_fn())
    before = bank.batch_keys(batches, **keys)
    assert len(set(before)) == len(before) and before == bank.batch_keys(batches, **keys)
    # one row's scale: only its batch
    changed = [list(b) for b in batches]
    j = changed[2][1]
    changed[2][1] = ArmJob(j.prompt, j.seed, j.pose, j.adapter, 0.75)
    after = bank.batch_keys(changed, **keys)
    assert [a != b for a, b in zip(before, after, strict=True)] == [k == 2 for k in range(7)]
    # a base row does not read its pose: another pose object gives the same key
    moved = [list(b) for b in batches]
    base = moved[0][0]
    assert base.is_base
    moved[0][0] = ArmJob(base.prompt, base.seed, POSES[2], None, 0.0)
    assert bank.batch_keys(moved, **keys) == before
    # a sampler setting: every batch
    assert not set(bank.batch_keys(batches, **{**keys, "guidance_scale": 3.0})) & set(before)
    # drawn: a run after the one-row change draws exactly that batch
    store = BatchStore(tmp_path / "store")
    bank.sample(jobs, store=store, **STORE_KW)
    edited = list(jobs)
    k = next(i for i, x in enumerate(jobs) if x is j)
    edited[k] = changed[2][1]
    out, rows = _unet_rows(bank, lambda: bank.sample(edited, store=store, **STORE_KW))
    assert rows == (4 + 2) * 2 * 2  # its 4 rows, and the base trajectories of its inpaint row's chunk (2 rows)
    assert np.array_equal(out, bank.sample(edited, **STORE_KW))
