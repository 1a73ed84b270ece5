"""The sound2scene dataset type both importers fill, its windows and its split.

A :class:`SceneDataset` holds decoded sounds (one mono float32 array per clip or sound file), decoded images
(uint8 at the model's size) and *items*: one conditioning sound window each, with its class and either its own
image (a video frame: :mod:`.clips`) or none (paired by class with any image of its class: :mod:`.paired`).

:func:`split` holds out whole clips (``clips``: per class, never by frame) or takes and speakers (``paired``:
FSDD's takes 0-4 convention), plus a share of each class's images for ``paired``; the same call on the same
data and config gives the same split, so evaluation of a bundle recomputes exactly the run's split.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from engine.audio import loudest_window
from engine.errors import UserError

log = logging.getLogger(__name__)

SILENCE_DBFS = -60.0
"""A sound whose RMS level is below this (dBFS) is taken as silent and skipped."""


def natural_key(name: str) -> list[Any]:
    """Sort key that orders digits numerically: ``"2" < "10"``, ``"a2" < "a10"``."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def rms_dbfs(x: np.ndarray) -> float:
    """RMS level of float samples ``x`` [n] in dBFS (-120 for silence or an empty array)."""
    if x.size == 0:
        return -120.0
    return float(10.0 * np.log10(float(np.mean(np.square(x, dtype=np.float64))) + 1e-12))


@dataclass
class SceneDataset:
    """Decoded sounds, images and the items that pair them (see the module docstring).

    Attributes:
        importer: ``"clips"`` or ``"paired"``. classes: class names (index = label). sample_rate: Hz of ``sounds``.
        sounds: float32 [n_i] mono samples in [-1, 1] per clip or sound file. sound_names: their paths, relative
            to the ``--data`` folder (``class/clip.mp4``, ``7_theo_12.wav``).
        images: uint8 [M, H, W, 3] RGB at the model's size. image_labels: int64 [M]. image_groups: [M] what an
            image belongs to for the split (the clip's name; for ``paired`` the image's own index).
        item_sound: int64 [N] index into ``sounds``. item_centre: int64 [N] centre sample of the item's window,
            or -1 for "the whole (short) sound". item_label: int64 [N]. item_image: int64 [N] the item's own
            image, or -1 (any image of its class). item_group: [N] the clip or speaker. item_take: int64 [N] the
            take number (-1: none).
        jitter: training windows move by up to this many samples around ``item_centre`` (clips: half the
            sampling period, so a window stays by its frame).
        skipped: ``"file: reason"`` for every source left out (corrupt, silent, no track, no class partner).
        sources: every file read (for the record).
    """

    importer: str
    classes: list[str]
    sample_rate: int
    sounds: list[np.ndarray]
    sound_names: list[str]
    images: np.ndarray
    image_labels: np.ndarray
    image_groups: list[str]
    item_sound: np.ndarray
    item_centre: np.ndarray
    item_label: np.ndarray
    item_image: np.ndarray
    item_group: list[str]
    item_take: np.ndarray
    jitter: int = 0
    skipped: list[str] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return int(len(self.item_label))

    def window(self, i: int, samples: int, rng: np.random.Generator | None = None) -> np.ndarray:
        """The conditioning window float32 [samples] of item ``i``.

        Without ``rng`` (evaluation, sample grids): centred on the item's time (zero-padded outside the sound), or
        for a whole short sound its loudest window as ``run.py generate`` takes it (:func:`engine.audio.loudest_window`:
        a shorter sound starts the window). With ``rng`` (training): the centre moves by up to :attr:`jitter`
        samples; a whole sound lands at a random offset in the window (a longer one: a random crop).
        """
        audio = self.sounds[int(self.item_sound[i])]
        centre = int(self.item_centre[i])
        if centre < 0:
            if rng is None:
                return loudest_window(audio, samples)
            out = np.zeros(samples, np.float32)
            if len(audio) <= samples:
                start = int(rng.integers(0, samples - len(audio) + 1))
                out[start : start + len(audio)] = audio
            else:
                start = int(rng.integers(0, len(audio) - samples + 1))
                out[:] = audio[start : start + samples]
            return out
        if rng is not None and self.jitter:
            centre += int(rng.integers(-self.jitter, self.jitter + 1))
        start = centre - samples // 2
        out = np.zeros(samples, np.float32)
        lo, hi = max(0, start), min(len(audio), start + samples)
        if hi > lo:
            out[lo - start : hi - start] = audio[lo:hi]
        return out

    def windows(
        self, idx: Sequence[int] | np.ndarray, samples: int, rng: np.random.Generator | None = None
    ) -> np.ndarray:
        """float32 [len(idx), samples]: :meth:`window` of each item."""
        return (
            np.stack([self.window(int(i), samples, rng) for i in idx])
            if len(idx)
            else np.zeros((0, samples), np.float32)
        )

    def sound_windows(self, sound_idx: np.ndarray, samples: int, rng: np.random.Generator) -> np.ndarray:
        """float32 [B, samples]: a random window (anywhere) of each sound in ``sound_idx`` (the encoder's training);
        a short sound lands at a random offset."""
        out = np.zeros((len(sound_idx), samples), np.float32)
        for row, s in enumerate(sound_idx):
            audio = self.sounds[int(s)]
            if len(audio) <= samples:
                start = int(rng.integers(0, samples - len(audio) + 1))
                out[row, start : start + len(audio)] = audio
            else:
                start = int(rng.integers(0, len(audio) - samples + 1))
                out[row] = audio[start : start + samples]
        return out


@dataclass(frozen=True)
class SceneSplit:
    """Items and images of the training and the held-out (validation) part.

    Attributes:
        train_items, val_items: int64 indices into the items. train_images, val_images: int64 indices into the
        images. record: JSON-able facts for ``split.json``.
    """

    train_items: np.ndarray
    val_items: np.ndarray
    train_images: np.ndarray
    val_images: np.ndarray
    record: dict[str, Any]


def split(ds: SceneDataset, cfg: Any) -> SceneSplit:
    """The split of ``ds`` under config ``cfg`` (:class:`~training.families.sound2scene.config.Sound2SceneConfig`).

    ``clips``: within each class, ``round(train.val_fraction * clips)`` clips (at least one where the class has two
    or more; none where it has one) chosen by a permutation seeded by ``train.seed`` are held out, with all their
    items and frames. ``paired``: items with take < ``data.test_takes`` or of a speaker in ``data.val_speakers``
    are held out; of each class's images, ``round(data.image_val_fraction * n)`` (after a shuffle seeded by
    ``train.seed``) are held out.

    Raises:
        UserError: nothing left to train on, or a ``val_speakers`` name that is not in the data.
    """
    rng = np.random.default_rng([int(cfg.train.seed), 0x5C3E])
    groups = np.asarray(ds.item_group, dtype=object)
    if ds.importer == "clips":
        val_groups: set[str] = set()
        for k in range(len(ds.classes)):
            clips = sorted({g for g, lab in zip(ds.image_groups, ds.image_labels) if lab == k}, key=natural_key)
            n_val = round(cfg.train.val_fraction * len(clips))
            if cfg.train.val_fraction > 0 and len(clips) >= 2:
                n_val = min(max(1, n_val), len(clips) - 1)
            elif len(clips) < 2:
                n_val = 0
            order = rng.permutation(len(clips))
            val_groups.update(clips[j] for j in order[:n_val])
        is_val_item = np.asarray([g in val_groups for g in groups], bool)
        is_val_image = np.asarray([g in val_groups for g in ds.image_groups], bool)
        record = {"rule": "by clip, within each class", "val_clips": sorted(val_groups, key=natural_key)}
    else:
        speakers = set(groups.tolist())
        unknown = sorted(set(cfg.data.val_speakers) - speakers)
        if unknown:
            raise UserError(f"data.val_speakers: {unknown} not in the data (speakers: {sorted(speakers)})")
        is_val_item = (ds.item_take >= 0) & (ds.item_take < cfg.data.test_takes)
        is_val_item |= np.isin(groups, list(cfg.data.val_speakers))
        is_val_image = np.zeros(len(ds.image_labels), bool)
        for k in range(len(ds.classes)):
            members = np.flatnonzero(ds.image_labels == k)
            order = members[rng.permutation(len(members))]
            n_val = round(cfg.data.image_val_fraction * len(members))
            is_val_image[order[len(members) - n_val :]] = True
        record = {
            "rule": f"sounds: takes < {cfg.data.test_takes} and speakers {list(cfg.data.val_speakers)} held out; "
            f"images: {cfg.data.image_val_fraction:g} of each class",
        }
    out = SceneSplit(
        np.flatnonzero(~is_val_item), np.flatnonzero(is_val_item),
        np.flatnonzero(~is_val_image), np.flatnonzero(is_val_image), record,
    )  # fmt: skip
    if not len(out.train_items) or not len(out.train_images):
        raise UserError(f"the split leaves nothing to train on ({len(out.train_items)} sound items, "
                        f"{len(out.train_images)} images); check train.val_fraction and data.*")  # fmt: skip
    train_labels = set(ds.item_label[out.train_items].tolist()) & set(ds.image_labels[out.train_images].tolist())
    missing = [ds.classes[k] for k in range(len(ds.classes)) if k not in train_labels]
    if missing:
        log.warning("classes with no training sounds or images: %s", ", ".join(missing))
    out.record.update({
        "n_train_items": int(len(out.train_items)), "n_val_items": int(len(out.val_items)),
        "n_train_images": int(len(out.train_images)), "n_val_images": int(len(out.val_images)),
        "skipped": list(ds.skipped),
    })  # fmt: skip
    return out


def resize_image(image: np.ndarray, size: int) -> np.ndarray:
    """uint8 [h, w, 3] (or [h, w] grey) -> uint8 [size, size, 3]: the centre square, resized (area filter when
    shrinking, bilinear when enlarging)."""
    import cv2

    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    h, w = image.shape[:2]
    side = min(h, w)
    y, x = (h - side) // 2, (w - side) // 2
    square = image[y : y + side, x : x + side]
    if side == size:
        return np.ascontiguousarray(square)
    interpolation = cv2.INTER_AREA if side > size else cv2.INTER_LINEAR
    return cv2.resize(square, (size, size), interpolation=interpolation)
