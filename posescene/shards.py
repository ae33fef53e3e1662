"""The evaluation's unit of work: a batch of the sampler, kept by content key, shared by processes.

Batched kernels are not bit-identical across batch compositions, so an evaluation is only reproducible if the
batches' composition never depends on how many processes draw them or on where a killed run stopped.
:meth:`posescene.sampling.sampler.ModelBank.sample` therefore fixes the batch list from the whole job list (as one
process always did) and treats each batch as a unit:

- its **key** (:func:`batch_key`) is a hash of what decides its images: every row (prompt, seed, the pose's
  lattice and its conditioning map, the adapters' weights fingerprints and scales, the injection and its region)
  and the sampler's settings (steps, guidance, sampler, bf16, resolution, device kind, dtype, CPU threads, the
  models' fingerprints, torch/diffusers versions and the sampler's code). A changed setting changes the keys of
  exactly the batches whose images it changes;
- a finished batch's uint8 images go to the :class:`BatchStore` (``evaluate.store``) atomically, under its key;
  a later run reads the batches it finds instead of drawing them (a killed evaluation resumes, and ends with the
  same bytes as an uninterrupted one);
- with several processes (:class:`Shard`, from ``accelerate``'s ``PartialState`` under ``accelerate launch`` or
  ``torchrun``), rank r draws the missing batches i with i % N == r into the shared store; after a barrier rank 0
  reads every batch back and measures, the other ranks are done. The images are the ones one process draws.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from posescene.errors import ConfigError
from posescene.io import atomic_path

log = logging.getLogger(__name__)

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".ckpt")


def hash_weight_file(h: Any, path: Path, name: str) -> None:
    """Feed ``h`` one weights file by ``name``, size and its first and last MiB: cheap for GB checkpoints, and
    retrained weights differ there (shared with ``posescene.training.train``'s resume fingerprint)."""
    size = path.stat().st_size
    h.update(f"{name}:{size}".encode())
    with path.open("rb") as f:
        h.update(f.read(1 << 20))
        f.seek(max(size - (1 << 20), 0))
        h.update(f.read(1 << 20))


def weights_fingerprint(source: str | Path) -> str:
    """What identifies the weights at ``source``: every weights file of a local directory by path, size and its
    first and last MiB (cheap for GB checkpoints; retrained weights differ there, as ``posescene.training.train``'s
    resume fingerprint reads them), plus its JSON configs, wherever the directory is (a copy is the same weights); a hub
    id by its name."""
    h = hashlib.sha256()
    root = Path(source)
    if not root.exists():
        h.update(str(source).encode())
    elif root.is_dir():
        for path in sorted(p for p in root.rglob("*") if p.is_file()):
            rel = str(path.relative_to(root))
            if path.suffix in WEIGHT_SUFFIXES:
                hash_weight_file(h, path, rel)
            elif path.suffix == ".json":
                h.update(rel.encode() + path.read_bytes())
    elif root.is_file():
        h.update(root.read_bytes()[: 1 << 20])
    return h.hexdigest()[:32]


def digest(*parts: Any) -> str:
    """sha256 of ``parts`` (bytes as they are, numpy arrays by dtype, shape and bytes, anything else by repr)."""
    h = hashlib.sha256()
    for part in parts:
        if isinstance(part, bytes):
            h.update(part)
        elif isinstance(part, np.ndarray):
            h.update(f"{part.dtype}{part.shape}".encode() + np.ascontiguousarray(part).tobytes())
        else:
            h.update(repr(part).encode())
        h.update(b"\x00")
    return h.hexdigest()


class BatchStore:
    """Finished batches' images (uint8, (n, res, res, 3)) under their keys in ``root``, written atomically."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.npz"

    def has(self, key: str) -> bool:
        return self.path(key).is_file()

    def write(self, key: str, images: np.ndarray) -> None:
        buffer = io.BytesIO()
        np.savez_compressed(buffer, images=np.ascontiguousarray(images, dtype=np.uint8))
        with atomic_path(self.path(key)) as tmp:
            tmp.write_bytes(buffer.getvalue())

    def read(self, key: str, shape: tuple[int, ...]) -> np.ndarray | None:
        """The batch's images, or None when the entry is missing or unreadable (then it is drawn again)."""
        try:
            with np.load(self.path(key)) as data:
                images = data["images"]
        except (OSError, ValueError, KeyError, EOFError) as exc:
            if self.path(key).exists():
                log.warning("store entry %s is unreadable (%s): drawn again", self.path(key), exc)
            return None
        if images.shape != shape or images.dtype != np.uint8:
            log.warning("store entry %s has shape %s, expected %s: drawn again", self.path(key), images.shape, shape)
            return None
        return images


@dataclass
class Shard:
    """This process's place among the processes that draw one evaluation: rank ``rank`` of ``world``.

    ``state``: accelerate's ``PartialState`` when launched with several processes (its barrier and device)."""

    rank: int = 0
    world: int = 1
    state: Any = field(default=None, repr=False)

    @classmethod
    def from_env(cls) -> Shard:
        """One process unless a launcher (``accelerate launch``, ``torchrun``) started several (``WORLD_SIZE``)."""
        if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
            return cls()
        import torch
        from accelerate import PartialState

        # CPU ranks (gloo) when told so or when there is no GPU: accelerate would otherwise make each a group of one
        cpu = os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes") or not torch.cuda.is_available()
        state = PartialState(cpu=cpu)
        if state.num_processes <= 1:
            raise ConfigError(
                f"launched as one of {os.environ['WORLD_SIZE']} processes, but accelerate made this process a group "
                "of one (docs/operations.md, 'Sharded evaluation')"
            )
        return cls(int(state.process_index), int(state.num_processes), state)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def label(self) -> str:
        return f"rank {self.rank}/{self.world}" if self.world > 1 else ""

    def owns(self, index: int) -> bool:
        return index % self.world == self.rank

    def wait(self) -> None:
        if self.state is not None:
            self.state.wait_for_everyone()

    @contextlib.contextmanager
    def main_first(self) -> Iterator[None]:
        """Rank 0 runs the block first (one process creates what the others then only read)."""
        if self.state is None:
            yield
        else:
            with self.state.main_process_first():
                yield

    def device(self, configured: str) -> str:
        """``evaluate.device`` for this rank: every rank of a GPU launch on its own GPU."""
        if self.state is None or configured == "cpu" or self.state.device.type == "cpu":
            return configured
        return str(self.state.device)


class Progress:
    """Images drawn / total, images per second and time left for one rank: a tqdm bar when ``bar``, else (unless
    ``silent``) a line on stderr at most every ``every_s`` seconds and at the end (what a flow run, ``dvc repro`` or a
    log file of a long run shows; a Prefect flow with ``log_prints`` forwards it to the run's log)."""

    def __init__(
        self, total: int, *, stored: int, label: str, bar: bool, every_s: float = 60.0, silent: bool = False
    ) -> None:
        from tqdm.auto import tqdm

        self.total, self.stored, self.every_s = total, stored, every_s
        self.name = f"sample {label}".strip()
        self.done, self.start, self.last = 0, time.perf_counter(), time.perf_counter()
        self.bar = tqdm(total=total, desc=self.name, unit="img", disable=not bar)
        self.quiet = bar or silent  # silent: the lines go to the log only (a caller with its own progress)
        if stored or not total:
            self.say(f"{self.name}: {stored} images read from the store, {total} to draw")

    def say(self, line: str) -> None:
        log.info("%s", line)
        if not self.quiet:
            print(line, file=sys.stderr, flush=True)

    def update(self, n: int) -> None:
        self.done += n
        self.bar.update(n)
        now = time.perf_counter()
        if now - self.last >= self.every_s or self.done == self.total:
            self.last = now
            self.say(self.line())

    def line(self) -> str:
        elapsed = time.perf_counter() - self.start
        rate = self.done / elapsed if elapsed > 0 else 0.0
        left = (self.total - self.done) / rate if rate > 0 else float("nan")
        return (
            f"{self.name}: {self.done}/{self.total} images drawn ({self.stored} read from the store), "
            f"{rate:.2f} img/s, ~{left:.0f} s left"
        )

    def close(self) -> None:
        self.bar.close()
