"""Speaker embeddings of sounds, for the avgan evaluation: Resemblyzer's voice encoder.

Resemblyzer (Resemble AI, Apache-2.0; the GE2E speaker encoder of Wan et al., "Generalized End-to-End Loss for
Speaker Verification", ICASSP 2018, as used by Jia et al. 2018) maps speech to a 256-d, L2-normalised embedding.
Its weights ship inside the wheel (``resemblyzer/pretrained.pt``), so nothing is downloaded at run time.

:func:`embed` follows ``VoiceEncoder.embed_utterance`` exactly (``preprocess_wav``: resampling to 16 kHz, volume
normalisation to -30 dBFS and trimming of long silences by webrtcvad; 1.6 s partial utterances at 1.3 per second,
their embeddings averaged and re-normalised), but runs the partials of many sounds through the encoder in one
batch. A sound in which the VAD finds (almost) no speech would be trimmed to nothing; it is embedded untrimmed
instead and flagged (``voiced`` False), which is the sound-side analogue of a face not being detected.

Real-voice embeddings are cached under the data cache (``$AVGAN_CACHE``), keyed by the samples' content.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path
from typing import NamedTuple

import numpy as np

log = logging.getLogger(__name__)

RATE = 16000
"""Hz Resemblyzer works at."""
MIN_VOICED = 0.2
"""A sound whose VAD-trimmed length is below this share of the original counts as unvoiced."""


class VoiceEmbeddings(NamedTuple):
    """embeddings: float32 [N, 256] (L2-normalised). voiced: bool [N], the VAD found speech (see the module)."""

    embeddings: np.ndarray
    voiced: np.ndarray


class VoiceEncoderMissing(RuntimeError):
    """resemblyzer (or librosa / webrtcvad, which it imports) is not installed; the message says how to install."""


_ENCODER = None


def _encoder():
    global _ENCODER
    if _ENCODER is None:
        try:
            import torch
            from resemblyzer import VoiceEncoder
        except ImportError as exc:
            raise VoiceEncoderMissing(
                f"the voice evaluation needs resemblyzer ({exc}); run scripts/setup.sh (it installs resemblyzer "
                "--no-deps with librosa and webrtcvad-wheels)"
            ) from exc
        _ENCODER = VoiceEncoder("cpu", verbose=False)
        _ENCODER.eval()
        torch.set_grad_enabled(True)  # VoiceEncoder leaves the global switch alone; keep it that way
    return _ENCODER


def embed(sounds: np.ndarray | list[np.ndarray], sample_rate: int, batch: int = 64) -> VoiceEmbeddings:
    """Resemblyzer embeddings of sounds (float32 [N, S] or a list of [S_i], samples in [-1, 1] at ``sample_rate``).

    Raises:
        VoiceEncoderMissing: resemblyzer is not installed.
    """
    import torch
    from resemblyzer import preprocess_wav, wav_to_mel_spectrogram
    from resemblyzer.hparams import partials_n_frames

    encoder = _encoder()
    partials: list[np.ndarray] = []
    owner: list[int] = []
    voiced = np.zeros(len(sounds), bool)
    for i, sound in enumerate(sounds):
        x = np.asarray(sound, np.float32)
        wav = preprocess_wav(x, sample_rate)
        full = len(x) * RATE / sample_rate
        voiced[i] = len(wav) >= MIN_VOICED * full
        if not voiced[i]:
            import soxr
            from resemblyzer import normalize_volume

            wav = normalize_volume(soxr.resample(x, sample_rate, RATE).astype(np.float32), -30, increase_only=True)
        wav_slices, mel_slices = encoder.compute_partial_slices(len(wav), 1.3, 0.75)
        if wav_slices[-1].stop >= len(wav):
            wav = np.pad(wav, (0, wav_slices[-1].stop - len(wav)))
        mel = wav_to_mel_spectrogram(wav)
        for s in mel_slices:
            part = mel[s]
            if len(part) < partials_n_frames:
                part = np.pad(part, ((0, partials_n_frames - len(part)), (0, 0)))
            partials.append(part)
            owner.append(i)
    out = np.zeros((len(sounds), 256), np.float32)
    if partials:
        chunks = []
        with torch.inference_mode():
            for k in range(0, len(partials), batch):
                chunks.append(encoder(torch.from_numpy(np.stack(partials[k : k + batch]))).numpy())
        parts = np.concatenate(chunks)
        np.add.at(out, np.asarray(owner), parts)
        out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
    return VoiceEmbeddings(out.astype(np.float32), voiced)


def embed_cached(sounds: np.ndarray, sample_rate: int, cache_dir: Path | None) -> VoiceEmbeddings:
    """:func:`embed` of real sounds float32 [N, S], cached per sound (sha1 of its samples and rate) in one
    ``.npz`` under ``cache_dir`` (None: no cache)."""
    sounds = np.asarray(sounds, np.float32)
    keys = [hashlib.sha1(np.ascontiguousarray(s).tobytes() + str(sample_rate).encode()).hexdigest() for s in sounds]
    path = None if cache_dir is None else Path(cache_dir) / "voice-embeddings-resemblyzer-v1.npz"
    stored: dict[str, tuple[np.ndarray, bool]] = {}
    if path is not None and path.is_file():
        try:
            with np.load(path) as z:
                stored = {str(k): (e, bool(v)) for k, e, v in zip(z["keys"], z["embeddings"], z["voiced"])}
        except Exception as exc:  # a damaged cache is rebuilt
            log.warning("%s: unreadable voice cache (%s); rebuilding", path, exc)
    missing = [i for i, k in enumerate(keys) if k not in stored]
    if missing:
        log.info("embedding %d real voices with resemblyzer (~0.05 s each on CPU)", len(missing))
        found = embed(sounds[missing], sample_rate)
        for j, i in enumerate(missing):
            stored[keys[i]] = (found.embeddings[j], bool(found.voiced[j]))
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".tmp{os.getpid()}.npz")
            np.savez(tmp, keys=np.asarray(list(stored)), embeddings=np.stack([v[0] for v in stored.values()]),
                     voiced=np.asarray([v[1] for v in stored.values()]))  # fmt: skip
            tmp.replace(path)
    if not keys:
        return VoiceEmbeddings(np.zeros((0, 256), np.float32), np.zeros(0, bool))
    return VoiceEmbeddings(np.stack([stored[k][0] for k in keys]), np.asarray([stored[k][1] for k in keys]))


def nearest_centroid(embeddings: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """int64 [N]: index of the centroid [K, D] with the highest cosine similarity to each embedding [N, D]
    (rows of NaN centroids never win)."""
    c = np.nan_to_num(centroids / np.maximum(np.linalg.norm(centroids, axis=1, keepdims=True), 1e-12), nan=0.0)
    sims = embeddings @ c.T
    sims[:, np.isnan(centroids).any(axis=1)] = -np.inf
    return sims.argmax(axis=1).astype(np.int64)


def centroids(embeddings: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    """float32 [k, D]: the mean embedding of each label (NaN rows for labels without embeddings)."""
    out = np.full((k, embeddings.shape[1]), np.nan, np.float32)
    for i in range(k):
        if (labels == i).any():
            out[i] = embeddings[labels == i].mean(axis=0)
    return out
