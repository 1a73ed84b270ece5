"""Data of the avgan family: face + voice pairs, and spoken digits + drawn digits.

* ``faces`` (:class:`FaceData`): the face + speech pairs of the Wav2Pix layout or capture datasets (the booth's
  320 px face + 1 s WAV is AVGAN's own format), read by :func:`training.data.load_dataset` (faces at the model's
  size, audio at its rate) and split by distinct face crop (:func:`training.data.split_by_face`). Label =
  identity. A training item is a pair: its face and its 1 s snippet are the real (image, sound); the condition
  (``voice`` models) is *another* snippet of the same identity, so the discriminator cannot tell a real pair by
  the condition being its own sound.
* ``digits`` (:class:`DigitData`): Free Spoken Digit Dataset recordings (``{digit}_{speaker}_{take}.wav``, 8 kHz,
  0.3-0.9 s each) and MNIST drawings (IDX files), paired by digit: a training item is a recording; its image is a
  random training drawing of the same digit. Label = digit. Validation: FSDD takes ``0 .. data.val_takes - 1``
  (takes 0-4 are FSDD's own test split) and every ``round(1 / train.val_fraction)``-th drawing.

Real sounds are peak-normalised to :data:`PEAK` before they become spectrograms, so loudness is not something the
generator has to learn (the exported graph's sound is in [-1, 1]).
"""

from __future__ import annotations

import gzip
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engine.errors import UserError

log = logging.getLogger(__name__)

PEAK = 0.9
"""Peak level real training sounds are normalised to."""
_FSDD_NAME = re.compile(r"^(\d)_([A-Za-z]+)_(\d+)$")


def normalise_peak(audio: np.ndarray, peak: float = PEAK) -> np.ndarray:
    """float32 [B, N] with each row scaled to ``peak`` absolute maximum (rows quieter than 1e-4 are left alone)."""
    audio = np.asarray(audio, np.float32)
    m = np.abs(audio).max(axis=1, keepdims=True)
    return np.where(m > 1e-4, audio * (peak / np.maximum(m, 1e-4)), audio).astype(np.float32)


def place(clip: np.ndarray, samples: int, offset: int | None = None) -> np.ndarray:
    """``clip`` float [n] in a ``samples``-long zero window: centred (``offset`` None) or starting at ``offset``
    (clipped to the window); a longer clip is cut to its centre."""
    out = np.zeros(samples, np.float32)
    if len(clip) >= samples:
        start = (len(clip) - samples) // 2
        return np.asarray(clip[start : start + samples], np.float32)
    room = samples - len(clip)
    start = room // 2 if offset is None else int(min(max(offset, 0), room))
    out[start : start + len(clip)] = clip
    return out


# ----------------------------------------------------------------------------------------------- faces
class FaceData:
    """Face + speech pairs (a :class:`training.data.PairDataset`) with what the avgan trainer asks of a dataset.

    Attributes:
        pairs: the :class:`training.data.PairDataset`. labels: int64 [N] identity per pair. names: identities.
        window: samples per clip.
    """

    kind = "faces"

    def __init__(self, pairs, window: int) -> None:
        self.pairs, self.window = pairs, int(window)
        self.labels = np.asarray(pairs.labels, np.int64)
        self.names = list(pairs.identities)

    def __len__(self) -> int:
        return len(self.labels)

    def sounds(self, idx: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
        """float32 [B, window] real clips of items ``idx`` (centre window, or a random one with ``rng``)."""
        return self.pairs.windows(idx, self.window, rng)

    def images(self, idx: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
        """uint8 [B, H, W, 3] the faces of items ``idx``."""
        return self.pairs.images(idx)

    def split(self, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray, dict]:
        """(train items, validation items, record) by distinct face crop."""
        from training.data import split_by_face

        train, val = split_by_face(self.pairs, val_fraction, seed)
        hashes = sorted({self.pairs.face_hashes[f] for f in self.pairs.face_index[val]})
        return train, val, {"val_face_hashes": hashes, "skipped": list(self.pairs.skipped)}


# ----------------------------------------------------------------------------------------------- digits
def read_idx(path: Path) -> np.ndarray:
    """An IDX file (gzip or plain; LeCun et al.'s MNIST format) as a numpy array (uint8 data only).

    Raises:
        UserError: unreadable, or not a uint8 IDX file (names the file).
    """
    try:
        raw = gzip.open(path).read() if path.suffix == ".gz" else path.read_bytes()
    except OSError as exc:
        raise UserError(f"{path}: cannot read ({exc})") from exc
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise UserError(f"{path}: not a uint8 IDX file (magic {raw[:4].hex()})")
    dims = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(dims))
    data = np.frombuffer(raw, np.uint8, offset=4 + 4 * dims)
    if data.size != int(np.prod(shape)):
        raise UserError(f"{path}: {data.size} bytes of data for shape {shape}")
    return data.reshape(shape)


@dataclass
class DigitData:
    """Spoken digits (FSDD) and drawn digits (MNIST), paired by digit.

    Attributes:
        clips: float32 arrays [n_i] at ``sample_rate`` Hz, one per recording (the spoken word, 0.3-0.9 s).
        labels: int64 [N] digit of each recording; speakers: N names; takes: int64 [N].
        drawings: uint8 [M, S, S] (MNIST, padded from 28 to 32 px and resized to S); drawing_labels: int64 [M].
        drawing_val: bool [M], held-out drawings. window: samples per clip. names: "0" .. "9".
    """

    clips: list[np.ndarray]
    labels: np.ndarray
    speakers: list[str]
    takes: np.ndarray
    drawings: np.ndarray
    drawing_labels: np.ndarray
    drawing_val: np.ndarray
    window: int
    sample_rate: int
    sources: tuple[str, ...] = ()

    kind = "digits"

    @property
    def names(self) -> list[str]:
        return [str(d) for d in range(10)]

    def __len__(self) -> int:
        return len(self.clips)

    def sounds(self, idx: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
        """float32 [B, window]: each recording centred in the window (at a random offset with ``rng``)."""
        out = []
        for i in np.asarray(idx, np.int64):
            clip = self.clips[int(i)]
            offset = None if rng is None else int(rng.integers(0, max(1, self.window - len(clip) + 1)))
            out.append(place(clip, self.window, offset))
        return np.stack(out) if out else np.zeros((0, self.window), np.float32)

    def images(self, idx: np.ndarray, rng: np.random.Generator | None = None, held_out: bool = False) -> np.ndarray:
        """uint8 [B, S, S, 1]: a drawing of each item's digit, from the training drawings (``held_out``: from the
        validation ones); random with ``rng``, else the first of that digit."""
        pool = self.drawing_val if held_out else ~self.drawing_val
        out = []
        for i in np.asarray(idx, np.int64):
            candidates = np.flatnonzero(pool & (self.drawing_labels == self.labels[int(i)]))
            j = candidates[int(rng.integers(len(candidates)))] if rng is not None else candidates[0]
            out.append(self.drawings[j])
        return np.stack(out)[..., None] if out else np.zeros((0, *self.drawings.shape[1:], 1), np.uint8)

    def split(self, val_fraction: float, seed: int, val_takes: int = 5) -> tuple[np.ndarray, np.ndarray, dict]:
        """(train recordings, validation recordings, record): validation = takes below ``val_takes``."""
        val = self.takes < val_takes
        record = {"rule": f"FSDD takes 0-{val_takes - 1} (its test split) and every drawing with index % "
                  f"{_stride(val_fraction)} == 0 are held out", "n_val_drawings": int(self.drawing_val.sum())}  # fmt: skip
        return np.flatnonzero(~val), np.flatnonzero(val), record


def _stride(val_fraction: float) -> int:
    return max(2, round(1.0 / val_fraction)) if val_fraction > 0 else 0


def _find(dirs: Sequence[str | Path], pattern: str) -> list[Path]:
    found: list[Path] = []
    for d in dirs:
        d = Path(d)
        found += sorted(d.glob(pattern)) + sorted(d.glob("recordings/" + pattern))
    return found


def load_digits(dirs: Sequence[str | Path], sample_rate: int, window: int, image_size: int, val_fraction: float) -> DigitData:
    """FSDD recordings and MNIST drawings from the ``--data`` folders (in either order).

    Raises:
        UserError: a folder is missing, or no FSDD recordings or no MNIST files are found among them.
    """
    from engine.audio import load_audio

    for d in dirs:
        if not Path(d).is_dir():
            raise UserError(f"{d}: dataset folder not found")
    wavs = [p for p in _find(dirs, "*.wav") if _FSDD_NAME.match(p.stem)]
    images = [p for d in dirs for p in sorted(Path(d).glob("*images-idx3-ubyte*"))]
    labels = [p for d in dirs for p in sorted(Path(d).glob("*labels-idx1-ubyte*"))]
    if not wavs:
        raise UserError(f"{list(map(str, dirs))}: no FSDD recordings ({{digit}}_{{speaker}}_{{take}}.wav) found")
    if not images or not labels:
        raise UserError(f"{list(map(str, dirs))}: no MNIST files (*images-idx3-ubyte[.gz], *labels-idx1-ubyte[.gz])")
    clips, digit, speakers, takes = [], [], [], []
    for p in wavs:
        m = _FSDD_NAME.match(p.stem)
        assert m is not None
        clips.append(load_audio(p, sample_rate))
        digit.append(int(m.group(1)))
        speakers.append(m.group(2))
        takes.append(int(m.group(3)))
    drawings = read_idx(images[0])
    drawing_labels = read_idx(labels[0]).astype(np.int64)
    if drawings.ndim != 3 or len(drawings) != len(drawing_labels):
        raise UserError(f"{images[0]}: expected [M, 28, 28] drawings matching {labels[0]}")
    drawings = np.pad(drawings, ((0, 0), (2, 2), (2, 2)))  # 28 -> 32 px, as LeNet-5 reads MNIST
    if image_size != drawings.shape[1]:
        import cv2

        drawings = np.stack([cv2.resize(d, (image_size, image_size), interpolation=cv2.INTER_LINEAR) for d in drawings])
    stride = _stride(val_fraction)
    drawing_val = (np.arange(len(drawings)) % stride == 0) if stride else np.zeros(len(drawings), bool)
    data = DigitData(
        clips=clips, labels=np.asarray(digit, np.int64), speakers=speakers, takes=np.asarray(takes, np.int64),
        drawings=drawings, drawing_labels=drawing_labels, drawing_val=drawing_val, window=window,
        sample_rate=sample_rate, sources=tuple(str(d) for d in dirs),
    )  # fmt: skip
    log.info("digits: %d recordings (%d speakers), %d drawings (%d held out)", len(clips), len(set(speakers)),
             len(drawings), int(drawing_val.sum()))  # fmt: skip
    return data
