"""Decode any common audio (or the audio track of a video) to mono float32.

Uses libsndfile (``soundfile``) for WAV/FLAC/OGG and falls back to PyAV (FFmpeg)
for everything else (MP3, M4A/AAC, MP4/MOV audio tracks). Resampling uses soxr
(VHQ). Output samples are float32 in [-1, 1].
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soxr

from engine.errors import UserError

#: extensions :func:`find_audio_files` treats as audio when searching a folder (lower case)
AUDIO_EXTENSIONS = (
    ".wav",
    ".flac",
    ".ogg",
    ".oga",
    ".opus",
    ".mp3",
    ".m4a",
    ".aac",
    ".aif",
    ".aiff",
    ".wma",
    ".webm",
)


class AudioDecodeError(UserError, ValueError):
    """An audio file could not be decoded; the message names the file and the problem."""


def resample(audio: np.ndarray, rate_in: int, rate_out: int) -> np.ndarray:
    """Resample mono float32 ``audio`` [samples] from ``rate_in`` Hz to ``rate_out`` Hz (soxr VHQ)."""
    if rate_in == rate_out:
        return np.ascontiguousarray(audio, dtype=np.float32)
    return soxr.resample(audio.astype(np.float32), rate_in, rate_out, quality="VHQ").astype(np.float32)


def _decode_soundfile(path: Path) -> tuple[np.ndarray, int]:
    import soundfile as sf

    data, rate = sf.read(str(path), dtype="float32", always_2d=True)
    return data.mean(axis=1), int(rate)


def _decode_av(path: Path) -> tuple[np.ndarray, int]:
    import av

    try:
        container = av.open(str(path))
    except (av.error.FFmpegError, OSError) as exc:
        raise AudioDecodeError(f"{path}: cannot open media ({exc})") from exc
    with container:
        if not container.streams.audio:
            raise AudioDecodeError(f"{path}: no audio track")
        stream = container.streams.audio[0]
        rate = int(stream.codec_context.sample_rate or stream.rate)
        resampler = av.AudioResampler(format="flt", layout="mono", rate=rate)
        chunks: list[np.ndarray] = []
        try:
            for frame in container.decode(stream):
                for out in resampler.resample(frame):
                    chunks.append(out.to_ndarray().reshape(-1))
            for out in resampler.resample(None):
                chunks.append(out.to_ndarray().reshape(-1))
        except av.error.FFmpegError as exc:
            raise AudioDecodeError(f"{path}: corrupt audio data ({exc})") from exc
    audio = np.concatenate(chunks).astype(np.float32) if chunks else np.zeros(0, np.float32)
    return audio, rate


def load_audio(path: str | Path, sample_rate: int = 16000) -> np.ndarray:
    """Decode ``path`` to mono float32 samples in [-1, 1] at ``sample_rate`` Hz.

    Multi-channel input is averaged to mono. Any rate is resampled with soxr.

    Args:
        path: an audio file (wav, flac, ogg, mp3, m4a, ...) or a video with an audio track.
        sample_rate: output rate in Hz.

    Returns:
        float32 array of shape [samples].

    Raises:
        AudioDecodeError: missing file, no audio track, corrupt data, or zero samples.
    """
    path = Path(path)
    if not path.is_file():
        raise AudioDecodeError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise AudioDecodeError(f"{path}: empty file (0 bytes)")
    try:
        audio, rate = _decode_soundfile(path)
    except AudioDecodeError:
        raise
    except Exception:  # libsndfile does not know the format or the file is damaged: try FFmpeg
        audio, rate = _decode_av(path)
    if audio.size == 0:
        raise AudioDecodeError(f"{path}: zero-length audio")
    if not np.all(np.isfinite(audio)):
        raise AudioDecodeError(f"{path}: audio contains NaN or infinite samples")
    return np.clip(resample(audio, rate, sample_rate), -1.0, 1.0)


def find_audio_files(path: str | Path) -> list[tuple[Path, Path]]:
    """Audio files under ``path`` as (file, path relative to the root) pairs, sorted by relative path.

    A file is taken as it is (whatever its extension; relative path = its name). A folder is searched
    recursively for :data:`AUDIO_EXTENSIONS` (case-insensitive); hidden files and folders are skipped.

    Raises:
        UserError: ``path`` does not exist, or the folder holds no audio file.
    """
    path = Path(path)
    if path.is_file():
        return [(path, Path(path.name))]
    if not path.is_dir():
        raise UserError(f"{path}: no such file or folder")
    found = []
    for f in path.rglob("*"):
        rel = f.relative_to(path)
        if any(part.startswith(".") for part in rel.parts):
            continue
        if f.suffix.lower() in AUDIO_EXTENSIONS and f.is_file():
            found.append((f, rel))
    if not found:
        raise UserError(f"{path}: no audio files found (looked for {', '.join(AUDIO_EXTENSIONS)})")
    return sorted(found, key=lambda fr: fr[1].as_posix())


def loudest_window(audio: np.ndarray, samples: int) -> np.ndarray:
    """The ``samples``-long window of ``audio`` with the most energy: float32 [samples].

    Energy is the sum of squared samples over the window, evaluated at every start offset. Ties
    (e.g. digital silence) go to the window nearest the centre. Audio shorter than ``samples`` is
    zero-padded at the end (as :meth:`training.data.dataset.PairDataset.window` does in training).

    Args:
        audio: float32 [n] mono samples in [-1, 1].
        samples: window length in samples (e.g. 16 000 for 1 s at 16 kHz).
    """
    audio = np.asarray(audio, np.float32).reshape(-1)
    n = len(audio)
    if n <= samples:
        return np.pad(audio, (0, samples - n)).astype(np.float32)
    csum = np.concatenate([[0.0], np.cumsum(audio.astype(np.float64) ** 2)])
    energy = csum[samples:] - csum[:-samples]  # [n - samples + 1]
    best = energy.max()
    candidates = np.flatnonzero(energy >= best - 1e-9 * max(best, 1.0))
    centre = (n - samples) / 2
    start = int(candidates[np.argmin(np.abs(candidates - centre))])
    return audio[start : start + samples].copy()
