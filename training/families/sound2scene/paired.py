"""Importer: a folder of labelled sounds paired by class with a folder (or IDX file) of labelled images.

Sounds (first ``--data`` folder), either layout:

* ``DIR/<class>_<speaker>_<take>.<audio>`` (the Free Spoken Digit Dataset's naming, e.g. ``7_theo_12.wav``): class,
  speaker and take come from the name, so the split can hold out takes and speakers;
* ``DIR/<class>/<file>.<audio>``: the class is the folder (no speaker or take: nothing is held out by take).

Images (second ``--data`` folder), either layout:

* one IDX pair (LeCun's MNIST format, optionally gzipped): ``*images-idx3-ubyte[.gz]`` (uint8 [N, rows, cols]) and
  ``*labels-idx1-ubyte[.gz]`` (uint8 [N]); class names are the labels as text (``"0"`` ... ``"9"``);
* ``DIR/<class>/<file>.<png|jpg|...>`` (decoded by content).

Sounds and images pair by class name; classes that only one side has are left out with a warning. Every sound is
one item, its window taken whole (:meth:`~training.families.sound2scene.data.SceneDataset.window`). Grey images
become 3 equal channels; every image is resized to the model's size. An undecodable or silent sound (RMS below
:data:`~training.families.sound2scene.data.SILENCE_DBFS`) or an undecodable image is skipped with a warning naming
the file.

``../shared/data/fsdd/recordings`` (2 500 spoken digits, 5 speakers x 10 digits x 50 takes, 8 kHz) with
``../shared/data/mnist`` (the 10 000 MNIST test images) is the real test.
"""

from __future__ import annotations

import gzip
import logging
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from datastore.images import decode_image
from engine.audio import AUDIO_EXTENSIONS, AudioDecodeError, load_audio
from engine.errors import UserError
from training.families.sound2scene.data import SILENCE_DBFS, SceneDataset, natural_key, resize_image, rms_dbfs

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif", ".tif", ".tiff")
FSDD_NAME = re.compile(r"^(?P<label>[^_]+)_(?P<speaker>.+)_(?P<take>\d+)$")
"""``<class>_<speaker>_<take>``: the Free Spoken Digit Dataset's file names."""


def find_sounds(root: str | Path) -> list[tuple[str, str, int, Path]]:
    """(class, speaker, take, file) of every sound under ``root`` in either layout (speaker "" and take -1 for the
    folder layout), sorted naturally.

    Raises:
        UserError: not a folder, no sounds, or both layouts mixed.
    """
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"{root}: sound folder not found")
    top = [
        f for f in root.iterdir() if f.is_file() and f.suffix.lower() in AUDIO_EXTENSIONS and not f.name.startswith(".")
    ]
    sub = [d for d in root.iterdir() if d.is_dir() and not d.name.startswith(".")]
    if top and sub:
        raise UserError(f"{root}: holds both sound files and class folders; use one layout")
    out: list[tuple[str, str, int, Path]] = []
    if top:
        for f in top:
            m = FSDD_NAME.match(f.stem)
            if m is None:
                raise UserError(f"{f}: expected a name <class>_<speaker>_<take> (e.g. 7_theo_12.wav) or class folders")
            out.append((m["label"], m["speaker"], int(m["take"]), f))
    else:
        for d in sub:
            out.extend((d.name, "", -1, f) for f in d.iterdir()
                       if f.is_file() and f.suffix.lower() in AUDIO_EXTENSIONS and not f.name.startswith("."))  # fmt: skip
    if not out:
        raise UserError(f"{root}: no sounds found (looked for {', '.join(AUDIO_EXTENSIONS)})")
    return sorted(out, key=lambda r: (natural_key(r[0]), natural_key(r[1]), r[2], r[3].name))


def _open(path: Path):
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


def read_idx(path: str | Path) -> np.ndarray:
    """An IDX array (LeCun et al.'s MNIST format; ``.gz`` read through gzip): uint8 data only.

    The header is 2 zero bytes, a type byte (0x08 = uint8), the number of dimensions, then one big-endian int32
    per dimension.

    Raises:
        UserError: not an IDX file of uint8, or truncated (names the file).
    """
    path = Path(path)
    try:
        with _open(path) as fh:
            data = fh.read()
    except (OSError, EOFError) as exc:
        raise UserError(f"{path}: cannot read ({exc})") from exc
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise UserError(f"{path}: not an IDX file of unsigned bytes (magic {data[:4].hex()})")
    ndim = data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise UserError(f"{path}: IDX header of {ndim} dimensions is truncated ({len(data)} bytes)")
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    size = int(np.prod(shape)) if shape else 0
    if len(data) != header + size:
        raise UserError(f"{path}: {len(data) - header} data bytes for shape {shape} (truncated or not IDX)")
    return np.frombuffer(data, np.uint8, offset=header).reshape(shape)


def find_idx_pair(root: Path) -> tuple[Path, Path] | None:
    """(images file, labels file) of the one IDX pair in ``root``, or None when it has none.

    Raises:
        UserError: more than one images or labels file.
    """
    images = sorted(root.glob("*images-idx3-ubyte*"))
    labels = sorted(root.glob("*labels-idx1-ubyte*"))
    if not images and not labels:
        return None
    if len(images) != 1 or len(labels) != 1:
        raise UserError(f"{root}: expected one *images-idx3-ubyte[.gz] and one *labels-idx1-ubyte[.gz], got "
                        f"{[p.name for p in images]} and {[p.name for p in labels]}")  # fmt: skip
    return images[0], labels[0]


def load_images(root: str | Path, image_size: int) -> tuple[list[str], np.ndarray, list[str]]:
    """(class name per image, uint8 [M, size, size, 3], skipped) of an image folder (IDX pair or class folders).

    Raises:
        UserError: no images, or an IDX pair whose counts disagree.
    """
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"{root}: image folder not found")
    pair = find_idx_pair(root)
    skipped: list[str] = []
    if pair is not None:
        images, labels = read_idx(pair[0]), read_idx(pair[1])
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise UserError(f"{root}: IDX images {images.shape} and labels {labels.shape} do not match")
        resized = np.stack([resize_image(im, image_size) for im in images]) if len(images) else None
        if resized is None:
            raise UserError(f"{pair[0]}: no images")
        return [str(int(v)) for v in labels], resized, skipped
    names, out = [], []
    for d in sorted(
        (p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")), key=lambda p: natural_key(p.name)
    ):
        for f in sorted(d.iterdir(), key=lambda p: natural_key(p.name)):
            if not f.is_file() or f.suffix.lower() not in IMAGE_EXTENSIONS or f.name.startswith("."):
                continue
            try:
                image = decode_image(f.read_bytes(), image_size, str(f))
            except (OSError, ValueError) as exc:
                log.warning("skipping image %s", exc)
                skipped.append(str(exc))
                continue
            names.append(d.name)
            out.append(image)
    if not out:
        raise UserError(f"{root}: no images (expected an IDX pair or DIR/<class>/<image>)")
    return names, np.stack(out), skipped


def load_paired(data_dirs: Sequence[str | Path], sample_rate: int, image_size: int,
                max_images_per_class: int = 0, seed: int = 0) -> SceneDataset:  # fmt: skip
    """The :class:`SceneDataset` of a sound folder and an image folder paired by class (see the module docstring).

    Args:
        data_dirs: exactly two folders: sounds, then images.
        sample_rate: Hz of the decoded sounds. image_size: side of the images, px.
        max_images_per_class: keep at most this many images per class (0: all), chosen by a permutation seeded by
            ``seed``.

    Raises:
        UserError: not two folders, either side empty, or no class on both sides.
    """
    if len(data_dirs) != 2:
        raise UserError(
            f"data.importer paired: expected two --data folders (sounds, then images), got {len(data_dirs)}"
        )
    sound_root, image_root = Path(data_dirs[0]), Path(data_dirs[1])
    sounds_found = find_sounds(sound_root)
    image_names, images, skipped = load_images(image_root, image_size)
    sound_classes = {c for c, _, _, _ in sounds_found}
    classes = sorted(sound_classes & set(image_names), key=natural_key)
    if not classes:
        raise UserError(f"{sound_root} and {image_root} share no class (sounds: {sorted(sound_classes)[:10]}, "
                        f"images: {sorted(set(image_names))[:10]})")  # fmt: skip
    for side, names in (("sounds", sound_classes), ("images", set(image_names))):
        alone = sorted(names - set(classes), key=natural_key)
        if alone:
            log.warning("classes only the %s have, left out: %s", side, ", ".join(alone))
    labels = np.asarray([classes.index(n) if n in classes else -1 for n in image_names], np.int64)
    keep = np.flatnonzero(labels >= 0)
    if max_images_per_class:
        rng = np.random.default_rng([int(seed), 0x1A6E])
        keep = np.sort(np.concatenate([
            rng.permutation(np.flatnonzero(labels == k))[:max_images_per_class] for k in range(len(classes))
        ]))  # fmt: skip
    sounds, sound_names, item_label, item_group, item_take = [], [], [], [], []
    for name, speaker, take, f in sounds_found:
        if name not in classes:
            continue
        try:
            audio = load_audio(f, sample_rate)
        except (AudioDecodeError, OSError) as exc:
            log.warning("skipping sound %s", exc)
            skipped.append(str(exc))
            continue
        level = rms_dbfs(audio)
        if level < SILENCE_DBFS:
            msg = f"{f}: silent ({level:.1f} dBFS RMS, below {SILENCE_DBFS:g})"
            log.warning("skipping sound %s", msg)
            skipped.append(msg)
            continue
        sounds.append(audio.astype(np.float32))
        sound_names.append(f.relative_to(sound_root).as_posix())
        item_label.append(classes.index(name))
        item_group.append(speaker)
        item_take.append(take)
    if not sounds:
        raise UserError(f"{sound_root}: no usable sound ({len(skipped)} skipped)")
    n = len(sounds)
    ds = SceneDataset(
        importer="paired", classes=classes, sample_rate=int(sample_rate), sounds=sounds, sound_names=sound_names,
        images=np.ascontiguousarray(images[keep]), image_labels=labels[keep],
        image_groups=[str(i) for i in keep.tolist()],
        item_sound=np.arange(n, dtype=np.int64), item_centre=np.full(n, -1, np.int64),
        item_label=np.asarray(item_label, np.int64), item_image=np.full(n, -1, np.int64), item_group=item_group,
        item_take=np.asarray(item_take, np.int64), skipped=skipped,
        sources=[str(sound_root), str(image_root)],
    )  # fmt: skip
    log.info("paired: %d sounds, %d images, %d classes (%d skipped)", n, len(keep), len(classes), len(skipped))
    return ds
