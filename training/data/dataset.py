"""Speech ↔ face pair datasets: discovery, decoding, caching and the face-level split.

Readers:

* Wav2Pix layout (Duarte et al. 2019, "youtubers" data):
  ``<root>/<identity>/cropped_face_frame_<N>.<ext>`` with ``preprocessed_frame_<N>.<ext>``.
  Images are decoded by content (the ``.png`` files are really JPEG).
* AVGAN capture layout (:mod:`datastore.capture_format`): identities = participants.

Colour channel order is a property of each folder (:func:`datastore.images.channel_order`): Wav2Pix-layout
folders are read as the published crops are stored, red and blue swapped, and swapped back; capture datasets
are RGB; a folder's ``avgan-data.json`` (``{"channel_order": "rgb"}``) overrides either. Faces leave the
loader in true RGB order whatever the source.

Audio of any common format, rate and channel count is decoded to mono float32 at
the model rate (:func:`engine.audio.load_audio`). A corrupt or empty file is
skipped with a warning naming it and counted in :attr:`PairDataset.skipped`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from datastore import capture_format
from datastore.cache import default_cache_dir
from datastore.images import ChannelOrder, channel_order, decode_image
from engine.audio import AudioDecodeError, load_audio
from engine.errors import UserError

log = logging.getLogger(__name__)
AUDIO_EXTS = (".flac", ".wav", ".ogg", ".mp3", ".m4a", ".aac", ".opus")
IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
_W2P_IMAGE = re.compile(r"^cropped_face_frame_(\d+)$")
_CACHE_VERSION = 3  # 3: faces in true RGB order (channel order per folder)


@dataclass(frozen=True)
class PairSource:
    """One (image file, audio file, identity) pair found on disk, and how its image file stores colour
    (:data:`datastore.images.CHANNEL_ORDERS`)."""

    image: Path
    audio: Path
    identity: str
    channel_order: ChannelOrder = "rgb"


def _find_with_stem(folder: Path, stem: str, exts: Sequence[str]) -> Path | None:
    for ext in exts:
        p = folder / f"{stem}{ext}"
        if p.is_file():
            return p
    return None


def discover_pairs(root: str | Path) -> list[PairSource]:
    """List the pairs in one dataset folder (Wav2Pix or capture layout).

    Each pair carries the folder's channel order (:func:`datastore.images.channel_order`).

    Raises:
        UserError: the folder does not exist, holds no recognisable pairs, or has a bad ``avgan-data.json``.
    """
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"{root}: dataset folder not found")
    try:
        order = channel_order(root)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    if capture_format.is_capture_dataset(root):
        records, problems = capture_format.read_manifest(root)
        for problem in problems:
            log.warning("skipping manifest line: %s", problem)
        pairs = [PairSource(root / r.image, root / r.audio, r.participant, order) for r in records]
    else:
        pairs = []
        for ident_dir in sorted(p for p in root.iterdir() if p.is_dir()):
            for img in sorted(ident_dir.iterdir()):
                m = _W2P_IMAGE.match(img.stem)
                if not m or img.suffix.lower() not in IMAGE_EXTS:
                    continue
                audio = _find_with_stem(ident_dir, f"preprocessed_frame_{m.group(1)}", AUDIO_EXTS)
                if audio is None:
                    log.warning("%s: no matching preprocessed_frame_%s audio; skipped", img, m.group(1))
                    continue
                pairs.append(PairSource(img, audio, ident_dir.name, order))
    if not pairs:
        raise UserError(
            f"{root}: no speech/face pairs found (expected <identity>/cropped_face_frame_N.* + "
            f"preprocessed_frame_N.* or a capture {capture_format.MANIFEST})"
        )
    return pairs


@dataclass
class PairDataset:
    """Decoded pairs in memory.

    Attributes:
        faces: uint8 [F, H, W, 3] distinct face images (RGB).
        face_hashes: F content hashes (sha1 of the image file bytes).
        face_index: int64 [N] face of each pair.
        audio: N float32 arrays [samples] at ``sample_rate`` Hz, mono, in [-1, 1].
        labels: int64 [N] identity index of each pair.
        identities: identity names (index = label).
        skipped: one message per skipped file.
    """

    faces: np.ndarray
    face_hashes: list[str]
    face_index: np.ndarray
    audio: list[np.ndarray]
    labels: np.ndarray
    identities: list[str]
    sample_rate: int
    sources: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.audio)

    def images(self, indices: np.ndarray | Sequence[int]) -> np.ndarray:
        """Face images of the given pairs: uint8 [len(indices), H, W, 3]."""
        return self.faces[self.face_index[np.asarray(indices, dtype=np.int64)]]

    @property
    def face_labels(self) -> np.ndarray:
        """int64 [F]: the identity label of each distinct face (a face belongs to one identity folder)."""
        labels = np.zeros(len(self.faces), np.int64)
        labels[self.face_index] = self.labels
        return labels

    def window(self, i: int, samples: int, rng: np.random.Generator | None = None) -> np.ndarray:
        """A ``samples``-long window of pair ``i``: a random crop when longer (centre when ``rng`` is None),
        zero-padded at the end when shorter. float32 [samples]."""
        a = self.audio[i]
        if len(a) > samples:
            start = int(rng.integers(0, len(a) - samples + 1)) if rng is not None else (len(a) - samples) // 2
            return a[start : start + samples]
        if len(a) < samples:
            return np.pad(a, (0, samples - len(a)))
        return a

    def windows(self, indices: Sequence[int], samples: int, rng: np.random.Generator | None = None) -> np.ndarray:
        """Stacked :meth:`window` s: float32 [len(indices), samples]."""
        return np.stack([self.window(int(i), samples, rng) for i in indices]).astype(np.float32)

    def summary(self) -> str:
        """One line: pairs, distinct faces, identities, skipped files."""
        counts = ", ".join(f"{n}: {int((self.labels == k).sum())}" for k, n in enumerate(self.identities))
        return (
            f"{len(self)} pairs, {len(self.faces)} distinct faces, {len(self.identities)} identities ({counts}); "
            f"{len(self.skipped)} files skipped"
        )


def _cache_key(pairs: list[PairSource], sample_rate: int, image_size: int) -> str:
    h = hashlib.sha1(f"{_CACHE_VERSION}:{sample_rate}:{image_size}".encode())
    for p in pairs:
        for f in (p.image, p.audio):
            st = f.stat()
            h.update(f"{f.resolve()}:{st.st_size}:{st.st_mtime_ns}:{p.identity}:{p.channel_order}\n".encode())
    return h.hexdigest()[:20]


def load_dataset(
    dirs: Sequence[str | Path],
    sample_rate: int = 16000,
    image_size: int = 64,
    cache_dir: str | Path | None = None,
    use_cache: bool = True,
    workers: int = 4,
) -> PairDataset:
    """Discover, decode and (optionally) cache the pairs of one or more dataset folders.

    Identities with the same name in different folders are merged. Faces are RGB whatever the folder's channel
    order (see the module docstring). Decoded arrays are cached as ``.npz`` under ``cache_dir`` keyed by file
    names, sizes, mtimes, channel orders, rate and image size.

    Args:
        dirs: dataset folders (Wav2Pix or capture layout).
        sample_rate: audio rate in Hz after decoding.
        image_size: face side in pixels.

    Raises:
        UserError: a folder is missing or empty, or every pair failed to decode.
    """
    pairs = [p for d in dirs for p in discover_pairs(d)]
    cache_path = None
    if use_cache:
        cache_path = Path(cache_dir or default_cache_dir()) / f"pairs-{_cache_key(pairs, sample_rate, image_size)}.npz"
        if cache_path.is_file():
            try:
                return _load_cache(cache_path)
            except Exception as exc:  # a damaged cache is rebuilt, never trusted
                log.warning("%s: cache unreadable (%s); rebuilding", cache_path, exc)

    skipped: list[str] = []

    def decode(pair: PairSource) -> tuple[str, np.ndarray, np.ndarray] | None:
        try:
            data = pair.image.read_bytes()
            digest = hashlib.sha1(data).hexdigest()
            img = decode_image(data, image_size, str(pair.image), pair.channel_order)
            audio = load_audio(pair.audio, sample_rate)
            return digest, img, audio
        except (OSError, ValueError, AudioDecodeError) as exc:
            skipped.append(str(exc))
            log.warning("skipping pair: %s", exc)
            return None

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        decoded = list(pool.map(decode, pairs))

    identities = sorted({p.identity for p, d in zip(pairs, decoded) if d is not None})
    ident_index = {n: i for i, n in enumerate(identities)}
    hash_index: dict[str, int] = {}
    faces: list[np.ndarray] = []
    face_index, labels, audio, sources = [], [], [], []
    for pair, d in zip(pairs, decoded):
        if d is None:
            continue
        digest, img, wav = d
        if digest not in hash_index:
            hash_index[digest] = len(faces)
            faces.append(img)
        face_index.append(hash_index[digest])
        labels.append(ident_index[pair.identity])
        audio.append(wav)
        sources.append(str(pair.audio))
    if not audio:
        raise UserError(f"{', '.join(map(str, dirs))}: every pair failed to decode ({len(skipped)} skipped)")
    ds = PairDataset(
        faces=np.stack(faces),
        face_hashes=list(hash_index),
        face_index=np.asarray(face_index, np.int64),
        audio=audio,
        labels=np.asarray(labels, np.int64),
        identities=identities,
        sample_rate=sample_rate,
        sources=sources,
        skipped=skipped,
    )
    log.info("dataset: %s", ds.summary())
    if cache_path is not None:
        _save_cache(cache_path, ds)
    return ds


def _save_cache(path: Path, ds: PairDataset) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    lengths = np.asarray([len(a) for a in ds.audio], np.int64)
    meta = {
        "face_hashes": ds.face_hashes,
        "identities": ds.identities,
        "sample_rate": ds.sample_rate,
        "sources": ds.sources,
        "skipped": ds.skipped,
    }
    tmp = path.with_suffix(f".tmp{os.getpid()}.npz")
    np.savez(
        tmp,
        faces=ds.faces,
        face_index=ds.face_index,
        labels=ds.labels,
        audio=np.concatenate(ds.audio),
        lengths=lengths,
        meta=np.frombuffer(json.dumps(meta).encode(), np.uint8),
    )
    os.replace(tmp, path)


def _load_cache(path: Path) -> PairDataset:
    with np.load(path) as z:
        meta = json.loads(z["meta"].tobytes().decode())
        flat, lengths = z["audio"], z["lengths"]
        offsets = np.concatenate([[0], np.cumsum(lengths)])
        audio = [flat[offsets[i] : offsets[i + 1]] for i in range(len(lengths))]
        ds = PairDataset(
            faces=z["faces"],
            face_hashes=meta["face_hashes"],
            face_index=z["face_index"],
            audio=audio,
            labels=z["labels"],
            identities=meta["identities"],
            sample_rate=meta["sample_rate"],
            sources=meta["sources"],
            skipped=meta["skipped"],
        )
    log.info("dataset (cached %s): %s", path.name, ds.summary())
    return ds


def validation_faces(
    face_hashes: Sequence[str], face_labels: np.ndarray, val_fraction: float, seed: int = 0
) -> np.ndarray:
    """Which distinct faces are held out for validation: bool [F], stratified per label.

    Per label, the faces are ordered by ``sha1(f"{seed}:{hash}")`` and the first ``round(n * val_fraction)`` are
    validation faces: the choice depends only on the content hashes, the labels and ``seed`` (stable across
    machines, and the same for any loader that hashes the same files: :func:`split_by_face` and the face
    super-resolution family's).

    Args:
        face_hashes: F content hashes (sha1 of each image file's bytes). face_labels: int [F] label of each face.

    Raises:
        UserError: ``val_fraction`` outside [0, 1).
    """
    if not 0.0 <= val_fraction < 1.0:
        raise UserError(f"train.val_fraction: expected 0 <= value < 1, got {val_fraction}")
    face_labels = np.asarray(face_labels)
    is_val = np.zeros(len(face_hashes), bool)
    for label in np.unique(face_labels):
        members = [f for f in range(len(face_hashes)) if face_labels[f] == label]
        members.sort(key=lambda f: hashlib.sha1(f"{seed}:{face_hashes[f]}".encode()).hexdigest())
        is_val[members[: int(round(len(members) * val_fraction))]] = True
    return is_val


def split_by_face(ds: PairDataset, val_fraction: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Split pair indices into train/validation by *distinct face crop* (content hash), never by pair.

    All pairs that share a face image land on the same side, so validation faces are never seen in
    training. The assignment depends only on the hashes and ``seed`` (stable across machines).
    Stratified per identity so each identity keeps about ``val_fraction`` of its faces for validation
    (:func:`validation_faces`).

    Returns:
        (train_indices, val_indices): int64 arrays of pair indices.
    """
    is_val = validation_faces(ds.face_hashes, ds.face_labels, val_fraction, seed)[ds.face_index]
    return np.flatnonzero(~is_val), np.flatnonzero(is_val)
