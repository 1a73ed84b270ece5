"""The decoded-dataset cache: where it lives, and removing a participant's decoded copies from it.

:func:`training.data.dataset.load_dataset` writes ``pairs-<key>.npz`` files under :func:`default_cache_dir`;
each holds a JSON ``meta`` array whose ``sources`` lists the audio files it decoded. The capture store's
``delete_participant`` calls :func:`purge_caches`, so a withdrawal also removes the decoded faces and sound.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

PAIRS_GLOB = "pairs-*.npz"
"""File names of decoded-pairs caches in :func:`default_cache_dir`."""


def default_cache_dir() -> Path:
    """``$AVGAN_CACHE`` or ``~/.cache/avgan``."""
    return Path(os.environ.get("AVGAN_CACHE", Path.home() / ".cache" / "avgan"))


def purge_caches(folder: str | Path, cache_dir: str | Path | None = None) -> list[Path]:
    """Remove every decoded-pairs cache (``pairs-*.npz``) that holds audio from under ``folder``.

    Used when a participant withdraws (``run.py dataset delete``): the cache keeps decoded faces and sound, so it
    must go with the files. Unreadable cache files are removed too (they would be rebuilt anyway).

    Args:
        folder: a participant's folder (or any folder); matched against the cached source paths, resolved.
        cache_dir: cache folder (default :func:`default_cache_dir`).

    Returns:
        The cache files removed.
    """
    prefix = str(Path(folder).resolve()) + os.sep
    removed: list[Path] = []
    for path in sorted(Path(cache_dir or default_cache_dir()).glob(PAIRS_GLOB)):
        try:
            with np.load(path) as z:
                sources = json.loads(z["meta"].tobytes().decode())["sources"]
            hit = any(str(Path(s).resolve()).startswith(prefix) for s in sources)
        except Exception:  # noqa: BLE001 - unreadable: cannot prove it is clean
            hit = True
        if hit:
            try:
                path.unlink()
                removed.append(path)
            except FileNotFoundError:
                pass
    return removed
