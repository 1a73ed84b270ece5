"""Noise fixed by a seed and a file's relative path: the same file and seed give the same face, whatever other
files are processed and in what order (``run.py generate``, ``evaluate --unseen-voices``, the rating station).

The per-call noise of :meth:`engine.generator.Generator.make_noise` is the other source of noise.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np


def file_seed(seed: int, relative: str | Path) -> int:
    """A 64-bit seed from ``seed`` and a relative path (POSIX form), independent of processing order."""
    key = f"{int(seed)}:{Path(relative).as_posix()}".encode()
    return int.from_bytes(hashlib.sha256(key).digest()[:8], "little")


def file_noise(seed: int, relative: str | Path, noise_dim: int) -> np.ndarray:
    """Standard normal noise float32 [noise_dim] for one file (numpy PCG64 seeded by :func:`file_seed`)."""
    rng = np.random.default_rng(file_seed(seed, relative))
    return rng.standard_normal(noise_dim, dtype=np.float32)
