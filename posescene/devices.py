"""Which torch device a stage runs on (one resolver for every stage), and the numerics it pins."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import torch

from posescene.errors import ConfigError


def resolve_device(device: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; anything else is passed to torch."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        chosen = torch.device(device)
    except RuntimeError as exc:
        raise ConfigError(f"device {device!r}: not a torch device ({exc}); use auto, cpu, cuda or cuda:N") from None
    if chosen.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r}: CUDA is not available on this machine; use auto or cpu")
    return chosen


def cpu_threads(threads: int) -> int:
    """``threads`` from params.yaml (0: every core) as a torch intra-op thread count."""
    return threads or os.cpu_count() or 1


@contextlib.contextmanager
def reproducible_math(threads: int) -> Iterator[None]:
    """Pin what would make a stage's bytes depend on the machine rather than on its inputs, and restore it after.

    - torch's intra-op threads: oneDNN's 1x1 convolutions (and so the VAE's and U-Net's outputs) sum in an
      order that depends on the thread count, so it comes from params.yaml, not from the machine's cores;
    - torch's deterministic algorithms (strict on CPU; on CUDA cuBLAS needs ``CUBLAS_WORKSPACE_CONFIG``,
      set here when unset, before the stage's first cuBLAS call).

    What stays machine-dependent is the CPU's instruction set: oneDNN and ATen pick AVX-512 or AVX2 kernels,
    and their sums round differently (docs/operations.md, "Reproducible outputs").
    """
    saved = (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled(),
             torch.is_deterministic_algorithms_warn_only_enabled())  # fmt: skip
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.set_num_threads(cpu_threads(threads))
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.set_num_threads(saved[0])
        torch.use_deterministic_algorithms(saved[1], warn_only=saved[2])
