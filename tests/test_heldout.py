"""Held-out sets: captions that do not contradict the poses, one noise per set, no leakage from training."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from posescene.errors import InputDataError
from posescene.evaluation import heldout as ho


def test_action_phrase_is_removed_from_the_caption():
    assert (
        ho.without_action("a person raising both arms on a beach at noon", "arms_up") == "a person on a beach at noon"
    )
    assert (
        ho.without_action("a person in a red shirt waving by a lake", "waving") == "a person in a red shirt by a lake"
    )
    # photos without an action, or an action the caption does not name, keep their caption
    assert ho.without_action("two people on a pier", None) == "two people on a pier"
    assert ho.without_action("a person sitting in a park", "waving") == "a person sitting in a park"


def test_every_set_has_its_own_noise():
    seeds = {ho.noise_seed(s, p) for s in range(3) for p in range(50)}
    assert len(seeds) == 150
    assert ho.noise_seed(1, 2) == ho.noise_seed(1, 2)


def test_overlap_with_the_worlds_training_scenes_is_refused(tmp_path: Path):
    record = {"generator": "posescene.synth", "seed": 0, "parts": {"unet": [[0, 1200]], "vae": [[0, 100]]}}
    (tmp_path / ho.TRAINING_DATA_FILE).write_text(json.dumps(record))
    training = ho.load_training_ranges(tmp_path)
    assert training == record
    # disjoint: other indices, another seed, or photos without provenance
    assert ho.check_disjoint([(0, 100_000), (1, 5), (None, None)], training, "eval") == 2
    with pytest.raises(InputDataError, match=r"unet \(trained on seed 0 scenes \[\[0, 1200\]\]\) saw \[5, 1199\]"):
        ho.check_disjoint([(0, 5), (0, 1199), (0, 100_000)], training, "eval")
    assert ho.load_training_ranges(tmp_path / "nowhere") is None
    (tmp_path / ho.TRAINING_DATA_FILE).write_text("[1, 2]")
    with pytest.raises(InputDataError, match="unreadable training record"):
        ho.load_training_ranges(tmp_path)
