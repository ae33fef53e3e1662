"""Issue 23: poses that go with scenes (synth.coupling) and the pull measures of posescene.evaluation.pull."""

import hashlib
import json

import numpy as np
import pytest

from posescene.data.synth import (
    POSES,
    SCENE_KINDS,
    SCENE_PHRASES,
    TYPICAL_ACTIONS,
    generate,
    is_typical,
    kinds_typical_of,
    render_scene,
    scene_specs,
    without_scene,
)
from posescene.evaluation import frontier as fr
from posescene.evaluation.pull import (
    masked_sq_error,
    mean_with_interval,
    outside_people,
    ratio_with_interval,
    typical_chance,
    typical_of_pose,
)
from posescene.world.data import make_data

# sha256 of the images and captions of scenes 100000..100007 (seed 0, 6 poses, 64 px) as the world drew them
# before synth.coupling existed (checked against that commit's synth.py): coupling 0 is that world, bit for bit
INDEPENDENT_WORLD_SHA256 = "df66038ddb96b64af7b48e3ac3a13f60d12a8a8dcd19d51c61a1a3bb79c79cac"


def test_the_typical_action_table_gives_pairs_and_covers_every_action():
    assert set(TYPICAL_ACTIONS) == set(SCENE_KINDS)
    assert all(len(set(actions)) >= 2 and set(actions) <= set(POSES) for actions in TYPICAL_ACTIONS.values())
    assert all(1 <= len(kinds_typical_of(a)) <= 2 for a in POSES)


def test_coupling_zero_is_the_independent_world_bit_for_bit():
    digest = hashlib.sha256()
    for spec in scene_specs(8, 0, 100_000):
        for image, _, caption in render_scene(spec, 6, 64, coupling=0.0):
            digest.update(np.asarray(image).tobytes())
            digest.update(caption.encode())
    assert digest.hexdigest() == INDEPENDENT_WORLD_SHA256


def test_full_coupling_draws_only_typical_actions_and_keeps_the_rest_of_the_scene():
    for spec in scene_specs(16, 3):
        coupled = render_scene(spec, 6, 64, coupling=1.0)
        independent = render_scene(spec, 6, 64, coupling=0.0)
        assert all(is_typical(spec.kind, person.action) for _, person, _ in coupled)
        assert {person.action for _, person, _ in coupled} == set(TYPICAL_ACTIONS[spec.kind])  # a pair per scene
        # same clothes and caption shape: only the actions changed
        assert coupled[0][1].shirt == independent[0][1].shirt


def test_partial_coupling_couples_that_share_of_scenes_and_scene_i_depends_only_on_seed_and_i():
    specs = scene_specs(400, 0)
    coupled = [all(is_typical(s.kind, p.action) for _, p, _ in render_scene(s, 3, 32, coupling=0.5)) for s in specs]
    # an independent scene can be all-typical by chance too (3 of 10 actions all in a 2-action row: never)
    assert 0.42 < np.mean(coupled) < 0.58
    later = scene_specs(10, 0, first_scene=395)
    assert [p.action for _, p, _ in render_scene(later[0], 3, 32, 0.5)] == [
        p.action for _, p, _ in render_scene(specs[395], 3, 32, 0.5)
    ]


def test_the_manifest_says_whether_each_action_is_typical(tmp_path):
    out = generate(tmp_path / "s", 8, 3, 32, seed=1, first_scene=0, coupling=0.5, progress=False)
    rows = [json.loads(line) for line in (out / "metadata.jsonl").read_text().splitlines()]
    assert all(r["typical_action"] == is_typical(r["scene_kind"], r["action"]) for r in rows)
    assert {r["typical_action"] for r in rows} == {True, False}


def test_sceneless_captions_leave_out_only_the_scene_phrase():
    caption = "a person in a red shirt running on a beach at noon"
    assert without_scene(caption, "beach") == "a person in a red shirt running at noon"
    with pytest.raises(ValueError, match="does not name the scene"):
        without_scene(caption, "forest")
    data = make_data(0, 20, 4, 32, 0, 0.05, 1, "t", coupling=1.0, sceneless_captions=0.5,
                     mismatched_captions=0.0, caption_actions=True)
    named = [any(p in c for p in SCENE_PHRASES.values()) for c in data.captions]
    assert 0.3 < 1 - np.mean(named) < 0.7
    assert all(is_typical(SCENE_KINDS[k], a) for k, a in zip(data.kinds, data.actions, strict=True))
    # the images do not depend on the caption policy
    same = make_data(0, 20, 4, 32, 0, 0.05, 1, "t", coupling=1.0, sceneless_captions=0.0,
                     mismatched_captions=0.0, caption_actions=True)
    assert np.array_equal(data.images, same.images)


def test_mismatched_captions_name_another_kind_and_no_action_when_asked():
    kw = dict(coupling=1.0, sceneless_captions=0.25, caption_actions=True)
    plain = make_data(0, 30, 4, 32, 0, 0.05, 1, "t", mismatched_captions=0.0, **kw)
    data = make_data(0, 30, 4, 32, 0, 0.05, 1, "t", mismatched_captions=0.5, **kw)
    # the scene-less captions are the same images' (one draw decides both slices)
    kinds = [SCENE_KINDS[k] for k in data.kinds]
    named = [[kd for kd, p in SCENE_PHRASES.items() if f" {p} " in c] for c in data.captions]
    sceneless = [not n for n in named]
    assert sceneless == [not any(f" {p} " in c for p in SCENE_PHRASES.values()) for c in plain.captions]
    wrong = [bool(n) and n[0] != k for n, k in zip(named, kinds, strict=True)]
    assert 0.3 < np.mean(wrong) < 0.7
    assert np.mean(wrong) + np.mean(sceneless) <= 1
    assert all(len(n) <= 1 for n in named)
    # the action phrase stays on the named captions unless caption_actions is off
    from posescene.data.synth import ACTION_PHRASES

    has_action = [ACTION_PHRASES[a] in c for c, a in zip(data.captions, data.actions, strict=True)]
    assert has_action == [not s for s in sceneless]
    bare = make_data(0, 30, 4, 32, 0, 0.05, 1, "t", mismatched_captions=0.5, coupling=1.0,
                     sceneless_captions=0.25, caption_actions=False)
    assert not any(ACTION_PHRASES[a] in c for c, a in zip(bare.captions, bare.actions, strict=True))
    assert np.array_equal(bare.images, data.images)


def test_a_pose_blind_judge_scores_chance_and_a_pose_reader_scores_one():
    rng = np.random.default_rng(0)
    actions = list(rng.choice(list(POSES), 4000))
    blind = rng.integers(0, len(SCENE_KINDS), len(actions))
    assert typical_of_pose(blind, actions).mean() == pytest.approx(typical_chance(actions), abs=0.02)
    reader = np.array([SCENE_KINDS.index(kinds_typical_of(a)[0]) for a in actions])
    assert typical_of_pose(reader, actions).all()


def test_drift_outside_the_people_ignores_the_people():
    side = 32
    kp_a = np.full((1, 18, 2), np.nan)
    kp_a[0, :2] = [[4, 4], [8, 10]]
    kp_b = np.full((1, 18, 2), np.nan)
    kp_b[0, :2] = [[20, 20], [24, 26]]
    mask = outside_people(kp_a, kp_b, side)
    assert not mask[0, 6, 6] and not mask[0, 22, 22] and mask[0, 30, 2]
    a = np.zeros((1, side, side, 3), np.uint8)
    b = a.copy()
    b[0, 4:11, 4:9] = 255  # a change on the first person only (rows y, columns x)
    sq, count = masked_sq_error(a, b, mask)
    assert sq[0] == 0 and count[0] == mask.sum()
    b[0, 30, 2] = 255
    assert masked_sq_error(a, b, mask)[0][0] == pytest.approx(1.0)


def test_intervals_resample_scenes_and_cover_the_estimate():
    scenes = np.repeat(np.arange(20), 4)
    values = np.repeat(np.arange(20) % 2, 4).astype(float)  # scene-level variation only
    mean, (lo, hi) = mean_with_interval(values, scenes, 0)
    assert lo < mean < hi and mean == 0.5
    num, den = np.ones(80), np.full(80, 4.0)
    ratio, (rlo, rhi) = ratio_with_interval(num, den, scenes, 0)
    assert ratio == rlo == rhi == 0.25


@pytest.mark.e2e  # two tiny bootstraps (~40 s here)
def test_a_coupled_world_continues_a_world_keeps_its_judges_and_records_its_policy(tmp_path):
    import torch
    from diffusers import T2IAdapter

    from posescene.config import load_params
    from posescene.evaluation.judges import SceneClassifier
    from posescene.world.bootstrap import bootstrap
    from tests.conftest import REPO_ROOT
    from tests.test_world import TINY

    independent = TINY | {"bootstrap.joint_steps": 0, "bootstrap.decoder_steps": 0, "bootstrap.checkpoint_dir": "",
                          "bootstrap.extra_scenes": 0}  # fmt: skip
    first = tmp_path / "independent"
    bootstrap(load_params(REPO_ROOT / "params.yaml", independent), out_dir=first, log_mlflow=False)
    coupled = TINY | {"bootstrap.init_from": str(first), "bootstrap.coupling": 1.0,
                      "bootstrap.sceneless_captions": 0.5, "bootstrap.mismatched_captions": 0.25,
                      "bootstrap.caption_policy_rows": "adapter", "bootstrap.judge_steps": 0,
                      "bootstrap.decoder_steps": 0,
                      "bootstrap.extra_first_scene": 200, "bootstrap.checkpoint_dir": "",
                      "bootstrap.n_heldout": 6, "bootstrap.poses_per_scene": 3}  # fmt: skip
    second = tmp_path / "coupled"
    metrics = bootstrap(load_params(REPO_ROOT / "params.yaml", coupled), out_dir=second, log_mlflow=False)

    record = json.loads((second / "training_data.json").read_text())
    assert record["coupling"] == 1.0 and record["sceneless_captions"] == 0.5
    assert record["mismatched_captions"] == 0.25 and record["caption_policy_rows"] == "adapter"
    assert record["continued_from"] == str(first)
    # judge_steps 0: the judges are the first world's, unchanged
    a = SceneClassifier.from_pretrained(first / "scene_classifier", torch_dtype=torch.float32).state_dict()
    b = SceneClassifier.from_pretrained(second / "scene_classifier", torch_dtype=torch.float32).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert "judges" not in metrics["stages"]
    # the joint stage trained the adapter: it is not the first world's any more
    pa = T2IAdapter.from_pretrained(first / "primary_adapter", torch_dtype=torch.float32).state_dict()
    pb = T2IAdapter.from_pretrained(second / "primary_adapter", torch_dtype=torch.float32).state_dict()
    assert any(not torch.equal(pa[k], pb[k]) for k in pa)
    # the pull is measured on the held-out atypical images, with its references
    assert metrics["pull_images"] > 0
    for key in ("pull_base_scene_acc_atypical", "pull_primary_scene_acc_atypical", "pull_prob_drop",
                "pull_primary_typical_sceneless", "pull_chance_typical", "pull_drift_ratio"):  # fmt: skip
        assert np.isfinite(metrics[key]), key
    assert metrics["pull_chance_scene_acc"] == 1 / len(SCENE_KINDS)
    assert "pull_drift_ratio" in metrics["targets"]
    assert "coupling 1" in (second / "README.md").read_text()


def _frontier_with_atypical_agreement(base: float, primary: float) -> fr.Frontier:
    """A base arm and the primary at 1 whose text-scene agreement on atypical cells is ``base`` / ``primary``
    (per set: a share of the atypical cells agree), typical cells NaN-masked as the evaluation does."""
    rng = np.random.default_rng(0)
    n_sets, n_poses = 16, 4
    atypical = rng.random((n_sets, n_poses)) < 0.75
    atypical[:, 0] = True

    def cells(rate: float) -> np.ndarray:
        agree = (rng.random((n_sets, n_poses)) < rate).astype(float)
        return np.where(atypical, agree, np.nan)

    def pairs(v: float) -> np.ndarray:
        d = np.full((n_sets, n_poses, n_poses), v)
        d[:, np.arange(n_poses), np.arange(n_poses)] = np.nan
        return d

    arms = [("base", 0.0), ("primary", 1.0)]
    keys = [fr.arm_key(a, s) for a, s in arms]
    fid = {k: {"oks": np.full((n_sets, n_poses), 0.2 + 0.5 * i)} for i, k in enumerate(keys)}
    mismatched = {"oks": np.full((n_sets, n_poses, n_poses), 0.2)}
    return fr.summarise(
        drift={k: pairs(0.01 * i) for i, k in enumerate(keys)},
        drift_ssim={k: pairs(0.1 * i) for i, k in enumerate(keys)},
        fidelity=fid, mismatched=mismatched, real={"oks": np.full(n_poses, 0.9)}, arms=arms, measure="oks",
        compare=[], n_boot=400, seed=0,
        extra={k: {"scene_agreement_atypical": cells(rate)} for k, rate in zip(keys, (base, primary), strict=True)},
    )  # fmt: skip


def test_the_evaluation_reports_the_pull_on_atypical_pairs_with_its_interval():
    from posescene.evaluation.pull import atypical_cells

    pulled = _frontier_with_atypical_agreement(base=0.98, primary=0.4).scene["pull_atypical"]
    assert 0.45 < pulled.value < 0.7 and pulled.low > 0.3
    # the trivial case: an adapter that does not pull loses nothing, and the interval says so
    kept = _frontier_with_atypical_agreement(base=0.98, primary=0.98).scene["pull_atypical"]
    assert kept.low < 0 < kept.high or abs(kept.value) < 0.05
    cells = atypical_cells(["snowy_mountains", "indoor_room"], ["jumping", "sitting", None])
    assert cells is None  # a pose without an action (a real photo) makes no pair atypical
    cells = atypical_cells(["snowy_mountains", "indoor_room"], ["jumping", "sitting"])
    assert cells.tolist() == [[False, True], [True, False]]


def test_a_null_primary_adapter_is_the_worlds_own_so_one_param_switches_the_world():
    from posescene.config import default_params

    own = default_params({"model.primary_adapter": None, "world.shipped_dir": "models/world_coupled"})
    assert own.model.primary_adapter == "models/world_coupled/primary_adapter"
    named = default_params({"model.primary_adapter": "some/adapter", "world.shipped_dir": "models/world_coupled"})
    assert named.model.primary_adapter == "some/adapter"  # an explicit adapter is never replaced


def test_pose_typical_cells_read_the_pull():
    from posescene.evaluation.pull import pose_typical_cells

    kind, (action, *_) = next(iter(TYPICAL_ACTIONS.items()))
    other = next(k for k in SCENE_KINDS if k not in kinds_typical_of(action))
    cells = pose_typical_cells(np.array([[kind, other]], dtype=object), [action, action])
    assert cells.tolist() == [[True, False]]


def test_a_null_synth_coupling_is_the_worlds_so_the_same_param_switches_the_data(tmp_path):
    from posescene.config import default_params
    from posescene.data.synth import data_coupling
    from posescene.errors import ConfigError

    coupled, independent = tmp_path / "coupled", tmp_path / "independent"
    for world, record in ((coupled, {"coupling": 1.0}), (independent, {})):
        world.mkdir()
        (world / "training_data.json").write_text(json.dumps({"parts": {}, **record}))
    assert data_coupling(default_params({"synth.coupling": None, "world.shipped_dir": str(coupled)})) == 1.0
    # a world that records no coupling trained on independent scenes
    assert data_coupling(default_params({"synth.coupling": None, "world.shipped_dir": str(independent)})) == 0.0
    assert data_coupling(default_params({"synth.coupling": 0.5, "world.shipped_dir": str(coupled)})) == 0.5
    # only the synth stage needs the record: params parse without it, the stage names the file and the fix
    nowhere = default_params({"synth.coupling": None, "world.shipped_dir": str(tmp_path / "nowhere")})
    with pytest.raises(ConfigError, match="training_data.json, which is missing"):
        data_coupling(nowhere)
