"""Face crops for super-resolution: every distinct face image of the dataset folders at two sizes.

The low-resolution crop is exactly what the face generator was trained to produce (the loader's area
downscaling of the real crop to ``input_size``, :func:`datastore.images.decode_image`); the high-resolution
target is the same crop at ``scale * input_size`` (the Wav2Pix crops are 220 px, so 256 px targets are a mild
cubic upscale of them). Colour channel order follows the folder (:func:`datastore.images.channel_order`).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from datastore.images import decode_image
from engine.errors import UserError

log = logging.getLogger(__name__)


@dataclass
class FaceCrops:
    """Distinct face crops at two sizes.

    Attributes:
        low: uint8 [F, s, s, 3] RGB at ``input_size``. high: uint8 [F, S, S, 3] RGB at ``scale * input_size``.
        hashes: F content hashes (sha1 of the image file bytes, as :class:`training.data.PairDataset` keeps them).
        labels: int64 [F] identity of each face. identities: the names (index = label).
        files: F image file paths. skipped: one message per unreadable file.
    """

    low: np.ndarray
    high: np.ndarray
    hashes: list[str]
    labels: np.ndarray
    identities: list[str]
    files: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.low)


def load_crops(dirs: Sequence[str], input_size: int, scale: int, workers: int = 4) -> FaceCrops:
    """Decode every distinct face image (by content hash) of the dataset folders (Wav2Pix or capture layout).

    Raises:
        UserError: a folder is missing or has no pairs (:func:`training.data.dataset.discover_pairs`), or no
            image could be decoded.
    """
    from training.data.dataset import discover_pairs

    pairs = [p for d in dirs for p in discover_pairs(d)]
    seen: dict[str, tuple] = {}
    skipped: list[str] = []
    for pair in pairs:
        try:
            data = pair.image.read_bytes()
        except OSError as exc:
            skipped.append(f"{pair.image}: {exc}")
            continue
        digest = hashlib.sha1(data).hexdigest()
        seen.setdefault(digest, (pair, data))

    def decode(item: tuple) -> tuple[np.ndarray, np.ndarray] | None:
        pair, data = item
        try:
            low = decode_image(data, input_size, str(pair.image), pair.channel_order)
            high = decode_image(data, input_size * scale, str(pair.image), pair.channel_order)
        except ValueError as exc:
            skipped.append(str(exc))
            log.warning("skipping face: %s", exc)
            return None
        return low, high

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        decoded = list(pool.map(decode, seen.values()))
    keep = [(h, item, d) for (h, item), d in zip(seen.items(), decoded) if d is not None]
    if not keep:
        raise UserError(f"{', '.join(map(str, dirs))}: no face image could be decoded ({len(skipped)} skipped)")
    identities = sorted({item[0].identity for _, item, _ in keep})
    index = {name: i for i, name in enumerate(identities)}
    crops = FaceCrops(
        low=np.stack([d[0] for _, _, d in keep]),
        high=np.stack([d[1] for _, _, d in keep]),
        hashes=[h for h, _, _ in keep],
        labels=np.asarray([index[item[0].identity] for _, item, _ in keep], np.int64),
        identities=identities,
        files=[str(item[0].image) for _, item, _ in keep],
        skipped=skipped,
    )
    log.info("face crops: %d distinct faces, %d identities, %d skipped", len(crops), len(identities), len(skipped))
    return crops


def psnr(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Peak signal-to-noise ratio per image, dB: ``10 log10(255^2 / MSE)`` over all pixels and channels of uint8
    [N, H, W, 3] (or [H, W, 3]) images ``a`` and ``b`` (identical images: inf). float64 [N] (or a scalar)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    axes = tuple(range(a.ndim - 3, a.ndim))
    mse = ((a - b) ** 2).mean(axis=axes)
    with np.errstate(divide="ignore"):
        return 10.0 * np.log10(255.0**2 / mse)


def luma(images: np.ndarray) -> np.ndarray:
    """ITU-R BT.601 luma Y (16..235) of uint8 RGB [..., 3], float64 [...]: the channel SR papers report PSNR on."""
    x = np.asarray(images, np.float64)
    return 16.0 + (65.481 * x[..., 0] + 128.553 * x[..., 1] + 24.966 * x[..., 2]) / 255.0


def psnr_y(a: np.ndarray, b: np.ndarray, border: int = 0) -> np.ndarray:
    """PSNR on luma (:func:`luma`) per image, dB, ignoring ``border`` px at each edge (SR convention: the scale)."""
    ya, yb = luma(a), luma(b)
    if border:
        ya, yb = ya[..., border:-border, border:-border], yb[..., border:-border, border:-border]
    mse = ((ya - yb) ** 2).mean(axis=(-2, -1))
    with np.errstate(divide="ignore"):
        return 10.0 * np.log10(255.0**2 / mse)
