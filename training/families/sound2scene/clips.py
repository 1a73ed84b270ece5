"""Importer: a folder of labelled video clips, ``DIR/<class>/<clip>.<any format PyAV reads>``.

Each clip is decoded once with PyAV: its first audio track to mono at the model's rate
(:func:`engine.audio.load_audio`) and every frame of its first video track (centre square, resized to the model's
size). Sample times ``t = k / data.frame_rate`` (k = 0, 1, ...) whose ``audio.window_seconds`` window, centred on
``t``, lies inside the clip's audio each give one item: the frame shown at ``t`` (the last one whose timestamp is
at or before ``t``) with that window. A clip that cannot be decoded, has no audio or video track, or whose audio
is silent (RMS below :data:`~training.families.sound2scene.data.SILENCE_DBFS`) is skipped with a warning naming
the file. Decoded clips are cached under ``$AVGAN_CACHE`` (keyed by path, size, modification time and settings).

``../shared/data/music`` (MUSIC clips, 11 instruments, 3 frames at 0, 3 and 6 s and 5.9 s of 11 025 Hz audio
each) is the real test: at 1 Hz and 1 s windows each clip gives 5 items, 3 on its first frame and 2 on its
second (its third frame, at 6.0 s, is past the end of its audio).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from datastore.cache import default_cache_dir
from engine.audio import AudioDecodeError, load_audio
from engine.errors import UserError
from training.families.sound2scene.data import SILENCE_DBFS, SceneDataset, natural_key, resize_image, rms_dbfs

log = logging.getLogger(__name__)

CACHE_VERSION = 1


def find_clips(root: str | Path) -> list[tuple[str, Path]]:
    """(class name, file) of every clip ``root/<class>/<file>`` (hidden files and folders skipped), sorted.

    Raises:
        UserError: ``root`` is not a folder or holds no class folder with files.
    """
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"{root}: clip folder not found (expected DIR/<class>/<clip>.mp4)")
    found = []
    for class_dir in sorted((p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")),
                            key=lambda p: natural_key(p.name)):  # fmt: skip
        for f in sorted(class_dir.iterdir(), key=lambda p: natural_key(p.name)):
            if f.is_file() and not f.name.startswith("."):
                found.append((class_dir.name, f))
    if not found:
        raise UserError(f"{root}: no clips found (expected DIR/<class>/<clip>.<ext>, one folder per class)")
    return found


def decode_frames(path: Path, size: int) -> tuple[np.ndarray, np.ndarray]:
    """(times float64 [F] in s, frames uint8 [F, size, size, 3]) of the first video track of ``path``.

    Raises:
        AudioDecodeError: no video track, or the track cannot be decoded (names the file).
    """
    import av

    try:
        container = av.open(str(path))
    except (av.error.FFmpegError, OSError) as exc:
        raise AudioDecodeError(f"{path}: cannot open media ({exc})") from exc
    times: list[float] = []
    frames = []
    with container:
        if not container.streams.video:
            raise AudioDecodeError(f"{path}: no video track")
        rate = float(container.streams.video[0].average_rate or 1)
        try:
            for frame in container.decode(video=0):
                times.append(float(frame.time) if frame.time is not None else len(times) / rate)
                frames.append(resize_image(frame.to_ndarray(format="rgb24"), size))
        except av.error.FFmpegError as exc:
            raise AudioDecodeError(f"{path}: corrupt video data ({exc})") from exc
    if not frames:
        raise AudioDecodeError(f"{path}: the video track has no frames")
    order = np.argsort(times, kind="stable")
    return np.asarray(times, np.float64)[order], np.stack(frames)[order]


def sample_times(duration_s: float, rate_hz: float, window_s: float) -> np.ndarray:
    """float64 [T]: ``k / rate_hz`` (k >= 0) for which ``[t - window_s / 2, t + window_s / 2]`` lies in
    ``[0, duration_s]``."""
    k = np.arange(int(np.floor(duration_s * rate_hz + 1e-9)) + 1)
    t = k / rate_hz
    keep = (t - window_s / 2 >= -1e-9) & (t + window_s / 2 <= duration_s + 1e-9)
    return t[keep]


def _cache_path(files: Sequence[Path], settings: dict) -> Path:
    parts = [json.dumps(settings, sort_keys=True)]
    for f in files:
        st = f.stat()
        parts.append(f"{f.resolve()}|{st.st_size}|{st.st_mtime_ns}")
    digest = hashlib.sha1("\n".join(parts).encode()).hexdigest()[:16]
    return default_cache_dir() / f"sound2scene-clips-{digest}.npz"


def load_clips(
    roots: Sequence[str | Path],
    sample_rate: int,
    image_size: int,
    frame_rate: float,
    window_s: float,
    cache: bool = True,
) -> SceneDataset:
    """The :class:`SceneDataset` of one or more clip folders (see the module docstring).

    Args:
        roots: folders ``DIR/<class>/<clip>``; classes of the same name in several folders merge.
        sample_rate: Hz of the decoded audio. image_size: side of the decoded frames, px.
        frame_rate: sample times per second (Hz). window_s: the conditioning window, s.
        cache: read and write the decoded clips under ``$AVGAN_CACHE``.

    Raises:
        UserError: a folder is missing or empty, or no clip could be used (the message lists why).
    """
    found = [(name, f, Path(root)) for root in roots for name, f in find_clips(root)]
    settings = {"v": CACHE_VERSION, "rate": int(sample_rate), "size": int(image_size), "fps": float(frame_rate),
                "window": float(window_s)}  # fmt: skip
    path = _cache_path([f for _, f, _ in found], settings)
    if cache and path.is_file():
        try:
            return _read_cache(path)
        except Exception as exc:  # noqa: BLE001 - a damaged cache is rebuilt
            log.warning("%s: unreadable clip cache (%s); decoding again", path, exc)
    classes = sorted({name for name, _, _ in found}, key=natural_key)
    sounds, sound_names, images, image_labels, image_groups = [], [], [], [], []
    items: list[tuple[int, int, int, int, str]] = []  # sound, centre, label, image, group
    skipped: list[str] = []
    window = int(round(window_s * sample_rate))
    for name, f, root in found:
        rel = f.relative_to(root).as_posix()
        try:
            audio = load_audio(f, sample_rate)
            times, frames = decode_frames(f, image_size)
        except (AudioDecodeError, OSError) as exc:
            log.warning("skipping clip %s", exc)
            skipped.append(str(exc))
            continue
        level = rms_dbfs(audio)
        if level < SILENCE_DBFS:
            msg = f"{f}: silent audio ({level:.1f} dBFS RMS, below {SILENCE_DBFS:g})"
            log.warning("skipping clip %s", msg)
            skipped.append(msg)
            continue
        t_items = sample_times(len(audio) / sample_rate, frame_rate, window / sample_rate)
        usable = [(t, int(np.searchsorted(times, t + 1e-6, side="right")) - 1) for t in t_items]
        usable = [(t, j) for t, j in usable if j >= 0]
        if not usable:
            msg = f"{f}: no sample time with a frame and a whole {window_s:g} s window"
            log.warning("skipping clip %s", msg)
            skipped.append(msg)
            continue
        label, s = classes.index(name), len(sounds)
        sounds.append(audio.astype(np.float32))
        sound_names.append(rel)
        first = len(images)
        images.extend(frames)
        image_labels.extend([label] * len(frames))
        image_groups.extend([rel] * len(frames))
        items.extend((s, int(round(t * sample_rate)), label, first + j, rel) for t, j in usable)
    if not items:
        raise UserError(f"{', '.join(str(r) for r in roots)}: no usable clip ({len(skipped)} skipped: "
                        f"{'; '.join(skipped[:3])})")  # fmt: skip
    used = sorted({classes[lab] for _, _, lab, _, _ in items}, key=natural_key)
    remap = {classes.index(c): k for k, c in enumerate(used)}
    ds = SceneDataset(
        importer="clips", classes=used, sample_rate=int(sample_rate), sounds=sounds, sound_names=sound_names,
        images=np.stack(images), image_labels=np.asarray([remap[lab] for lab in image_labels], np.int64),
        image_groups=image_groups,
        item_sound=np.asarray([it[0] for it in items], np.int64),
        item_centre=np.asarray([it[1] for it in items], np.int64),
        item_label=np.asarray([remap[it[2]] for it in items], np.int64),
        item_image=np.asarray([it[3] for it in items], np.int64),
        item_group=[it[4] for it in items], item_take=np.full(len(items), -1, np.int64),
        jitter=int(sample_rate / frame_rate / 2), skipped=skipped, sources=[str(f) for _, f, _ in found],
    )  # fmt: skip
    log.info("clips: %d of %d clips, %d classes, %d items, %d frames (%d skipped)",
             len(sounds), len(found), len(used), len(ds), len(ds.images), len(skipped))  # fmt: skip
    if cache:
        _write_cache(path, ds)
    return ds


def _write_cache(path: Path, ds: SceneDataset) -> None:
    lengths = np.asarray([len(s) for s in ds.sounds], np.int64)
    meta = {"classes": ds.classes, "sample_rate": ds.sample_rate, "sound_names": ds.sound_names,
            "image_groups": ds.image_groups, "item_group": ds.item_group, "jitter": ds.jitter,
            "skipped": ds.skipped, "sources": ds.sources}  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez(
        tmp, meta=np.frombuffer(json.dumps(meta).encode(), np.uint8), audio=np.concatenate(ds.sounds),
        lengths=lengths, images=ds.images, image_labels=ds.image_labels, item_sound=ds.item_sound,
        item_centre=ds.item_centre, item_label=ds.item_label, item_image=ds.item_image,
    )  # fmt: skip
    tmp.replace(path)


def _read_cache(path: Path) -> SceneDataset:
    with np.load(path) as z:
        meta = json.loads(z["meta"].tobytes().decode())
        bounds = np.concatenate([[0], np.cumsum(z["lengths"])])
        audio = z["audio"]
        sounds = [audio[a:b].copy() for a, b in zip(bounds[:-1], bounds[1:])]
        n = len(z["item_label"])
        return SceneDataset(
            importer="clips", classes=meta["classes"], sample_rate=meta["sample_rate"], sounds=sounds,
            sound_names=meta["sound_names"], images=z["images"], image_labels=z["image_labels"],
            image_groups=meta["image_groups"], item_sound=z["item_sound"], item_centre=z["item_centre"],
            item_label=z["item_label"], item_image=z["item_image"], item_group=meta["item_group"],
            item_take=np.full(n, -1, np.int64), jitter=meta["jitter"], skipped=meta["skipped"],
            sources=meta["sources"],
        )  # fmt: skip
