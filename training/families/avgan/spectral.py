"""The avgan sound representation: log-magnitude and instantaneous-frequency spectrogram images, and the inverse.

After Engel et al., "GANSynth: Adversarial Neural Audio Synthesis" (ICLR 2019): a one-second sound is the
short-time Fourier transform (STFT) of ``window_samples`` samples, kept as two image channels over
(frequency bin, frame):

* channel 0, **log-magnitude** ``log(|X| + eps)``, standardised per frequency bin with the training data's mean
  and standard deviation (buffers of :class:`SpectrogramCodec`, so the exported graph carries them);
* channel 1, **instantaneous frequency** (IF): the phase difference between successive frames, demodulated by
  the bin's own advance ``2 pi k hop / n_fft`` and wrapped to [-pi, pi), divided by pi, so in [-1, 1]; frame 0
  holds its wrapped phase / pi. (GANSynth's IF is the same difference without the demodulation; removing the
  bin's advance makes a steady partial near bin k read ~0 instead of a value that alternates with k's parity,
  which is an easier image for a convolutional generator. Both invert exactly.)

The frequency axis is linear: bins 0 .. n_fft/2 - 1 (the Nyquist bin is dropped, so the image height is
n_fft/2, a power of two). GANSynth's mel-scaled variant ("IF-Mel") is not implemented: its inverse is a
pseudo-inverse, so the round trip would no longer be exact.

The inverse (:meth:`SpectrogramCodec.decode`) is part of every exported graph: IF -> phase by a cumulative sum
over frames (plus the demodulation term), magnitude and phase -> real and imaginary parts, inverse DFT of each
frame times a Hann synthesis window (one transposed convolution with a fixed basis), overlap-add, division by the
summed analysis x synthesis window (window-sum normalisation, Griffin & Lim 1984, eq. 6), and a crop to the
``window_samples`` samples the analysis covered. Only ``exp``, ``cos``, ``sin``, ``CumSum`` and ``ConvTranspose``
appear, so ONNX Runtime and TensorRT run it as the generator's last layers.

Framing: frame ``t`` (0 .. frames - 1) covers samples ``[t hop - n_fft/2, t hop + n_fft/2)`` of the clip, zero
outside it ("centred" frames, zero padding); ``(frames - 1) hop >= window_samples`` is required so that the
frames cover the whole clip.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

LOG_EPS = 1e-5
"""Added to the magnitude before the log (the floor of an all-zero frame: log(1e-5) = -11.5)."""


def hann(n: int) -> torch.Tensor:
    """Periodic Hann window, float64 [n]."""
    i = torch.arange(n, dtype=torch.float64)
    return 0.5 - 0.5 * torch.cos(2 * math.pi * i / n)


def wrap(phase: torch.Tensor) -> torch.Tensor:
    """Phase wrapped to [-pi, pi)."""
    return torch.remainder(phase + math.pi, 2 * math.pi) - math.pi


class SpectrogramCodec(nn.Module):
    """STFT analysis to (normalised log-magnitude, IF) images and the exact inverse (see the module docstring).

    Args:
        n_fft: frame length in samples (a power of two); the image has ``n_fft // 2`` frequency rows.
        hop: frame advance in samples (at most ``n_fft // 2``: the Hann windows must overlap for the
            window-sum normalisation to be well conditioned).
        frames: number of frames (image columns).
        window_samples: samples of the clip (N); ``(frames - 1) * hop >= window_samples``.

    Buffers: ``mean`` and ``std`` float32 [n_fft // 2], per-bin statistics of the log-magnitude (defaults 0 and 1;
    :meth:`fit_statistics` sets them from real clips). They are saved in the state dict.

    Raises:
        ValueError: sizes that do not fit (the message says which).
    """

    def __init__(self, n_fft: int, hop: int, frames: int, window_samples: int) -> None:
        super().__init__()
        if n_fft < 16 or n_fft & (n_fft - 1):
            raise ValueError(f"spectrogram.n_fft: expected a power of two >= 16, got {n_fft}")
        if not 1 <= hop <= n_fft // 2:
            raise ValueError(f"spectrogram.hop: expected 1..n_fft/2 = {n_fft // 2} samples, got {hop}")
        if (frames - 1) * hop < window_samples:
            raise ValueError(
                f"spectrogram: {frames} frames x hop {hop} cover {(frames - 1) * hop} samples, fewer than the clip's "
                f"{window_samples}; raise spectrogram.frames to >= {math.ceil(window_samples / hop) + 1}"
            )
        self.n_fft, self.hop, self.frames, self.window_samples = int(n_fft), int(hop), int(frames), int(window_samples)
        self.bins = n_fft // 2
        k = torch.arange(self.bins, dtype=torch.float64)
        n = torch.arange(n_fft, dtype=torch.float64)
        angle = 2 * math.pi * k[:, None] * n[None, :] / n_fft  # [K, n_fft]
        window = hann(n_fft)
        analysis = torch.cat([torch.cos(angle) * window, -torch.sin(angle) * window])  # real, imag rows
        scale = torch.full((self.bins, 1), 2.0 / n_fft, dtype=torch.float64)
        scale[0] = 1.0 / n_fft
        synthesis = torch.cat([scale * torch.cos(angle) * window, -scale * torch.sin(angle) * window])
        self.register_buffer("analysis", analysis.float().unsqueeze(1), persistent=False)  # [2K, 1, n_fft]
        self.register_buffer("synthesis", synthesis.float().unsqueeze(1), persistent=False)  # [2K, 1, n_fft]
        length = (frames - 1) * hop + n_fft
        env = torch.zeros(length, dtype=torch.float64)
        for t in range(frames):
            env[t * hop : t * hop + n_fft] += window * window
        half = n_fft // 2
        inv_env = 1.0 / env[half : half + window_samples].clamp_min(1e-3)
        self.register_buffer("inv_envelope", inv_env.float(), persistent=False)  # [N]
        # the bins' own phase advance over t frames, 2 pi k hop t / n_fft, reduced mod 2 pi in float64
        t = torch.arange(frames, dtype=torch.float64)
        advance = torch.remainder(2 * math.pi * k[:, None] * hop * t[None, :] / n_fft, 2 * math.pi)
        self.register_buffer("advance", advance.float(), persistent=False)  # [K, T]
        self.register_buffer("step", (2 * math.pi * k * hop / n_fft).float()[:, None], persistent=False)  # [K, 1]
        self.register_buffer("mean", torch.zeros(self.bins))
        self.register_buffer("std", torch.ones(self.bins))

    @property
    def shape(self) -> tuple[int, int, int]:
        """(channels, height, width) of a spectrogram image: (2, n_fft // 2, frames)."""
        return 2, self.bins, self.frames

    # -- analysis ------------------------------------------------------------------------------------------
    def stft(self, audio: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Real and imaginary parts float32 [B, K, T] of ``audio`` float32 [B, N] (N = window_samples)."""
        if audio.dim() != 2 or audio.shape[1] != self.window_samples:
            raise ValueError(f"stft: expected audio [B, {self.window_samples}], got {tuple(audio.shape)}")
        half = self.n_fft // 2
        length = (self.frames - 1) * self.hop + self.n_fft
        x = F.pad(audio, (half, length - half - self.window_samples))
        spec = F.conv1d(x.unsqueeze(1), self.analysis, stride=self.hop)  # [B, 2K, T]
        return spec[:, : self.bins], spec[:, self.bins :]

    @staticmethod
    def _log_abs(real: torch.Tensor, imag: torch.Tensor) -> torch.Tensor:
        """``log(|X| + eps)``; the square root has a 1e-20 floor (1e-10 in |X|, five orders below ``LOG_EPS``), so
        that its gradient stays finite through exact digital silence."""
        return torch.log(torch.sqrt(real * real + imag * imag + 1e-20) + LOG_EPS)

    def log_magnitude(self, audio: torch.Tensor) -> torch.Tensor:
        """Standardised log-magnitude float32 [B, K, T] of audio float32 [B, N]: channel 0 of :meth:`encode`,
        without the phase (differentiable, also through silence)."""
        real, imag = self.stft(audio)
        return (self._log_abs(real, imag) - self.mean[:, None]) / self.std[:, None]

    def log_magnitude_and_if(self, audio: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Unnormalised ``log(|X| + eps)`` and IF (in [-1, 1]), each float32 [B, K, T], of audio [B, N]."""
        real, imag = self.stft(audio)
        logmag = self._log_abs(real, imag)
        phase = torch.atan2(imag, real)
        diff = phase[:, :, 1:] - phase[:, :, :-1] - self.step
        inst = torch.cat([wrap(phase[:, :, :1]), wrap(diff)], dim=2) / math.pi
        return logmag, inst.clamp(-1.0, 1.0)

    def encode(self, audio: torch.Tensor) -> torch.Tensor:
        """Spectrogram image float32 [B, 2, K, T] of audio float32 [B, N]: standardised log-magnitude, IF."""
        logmag, inst = self.log_magnitude_and_if(audio)
        logmag = (logmag - self.mean[:, None]) / self.std[:, None]
        return torch.stack([logmag, inst], dim=1)

    @torch.no_grad()
    def fit_statistics(self, audio: torch.Tensor, batch: int = 256) -> None:
        """Set ``mean`` / ``std`` to the per-bin mean and standard deviation of the log-magnitude of ``audio``
        float32 [M, N] (real training clips; std floored at 0.1)."""
        total = torch.zeros(self.bins, dtype=torch.float64)
        square = torch.zeros(self.bins, dtype=torch.float64)
        count = 0
        for i in range(0, len(audio), batch):
            logmag, _ = self.log_magnitude_and_if(audio[i : i + batch].to(self.analysis.device))
            lm = logmag.double().cpu()
            total += lm.sum(dim=(0, 2))
            square += (lm * lm).sum(dim=(0, 2))
            count += lm.shape[0] * lm.shape[2]
        mean = total / count
        std = (square / count - mean * mean).clamp_min(0).sqrt().clamp_min(0.1)
        self.mean.copy_(mean.float())
        self.std.copy_(std.float())

    # -- synthesis -----------------------------------------------------------------------------------------
    def decode(self, image: torch.Tensor) -> torch.Tensor:
        """Waveform float32 [B, N] of a spectrogram image float32 [B, 2, K, T] (the inverse of :meth:`encode`).

        Not clipped: a generated image may decode to samples outside [-1, 1] (the exported graph clips).
        """
        logmag = image[:, 0] * self.std[:, None] + self.mean[:, None]
        magnitude = (torch.exp(logmag) - LOG_EPS).clamp_min(0.0)
        phase = torch.cumsum(image[:, 1], dim=2) * math.pi + self.advance
        spec = torch.cat([magnitude * torch.cos(phase), magnitude * torch.sin(phase)], dim=1)  # [B, 2K, T]
        frames = F.conv_transpose1d(spec, self.synthesis, stride=self.hop)  # [B, 1, (T-1) hop + n_fft]
        half = self.n_fft // 2
        return frames[:, 0, half : half + self.window_samples] * self.inv_envelope


def log_spectral_distance(a: np.ndarray, b: np.ndarray, n_fft: int = 512, hop: int = 128, floor_db: float = -80.0) -> float:
    """Log-spectral distance in dB between two equally long signals float [N] (Gray & Markel 1976):
    the RMS over frequency of the difference of their power spectra in dB, averaged over Hann frames.
    Powers below ``floor_db`` relative to the louder signal's peak are raised to it (silence does not dominate)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    window = np.hanning(n_fft + 1)[:-1]
    starts = range(0, max(1, len(a) - n_fft + 1), hop)
    pa = np.stack([np.abs(np.fft.rfft(a[s : s + n_fft] * window)) ** 2 for s in starts])
    pb = np.stack([np.abs(np.fft.rfft(b[s : s + n_fft] * window)) ** 2 for s in starts])
    ref = max(pa.max(), pb.max(), 1e-20)
    da = 10 * np.log10(np.maximum(pa, ref * 10 ** (floor_db / 10)))
    db = 10 * np.log10(np.maximum(pb, ref * 10 ** (floor_db / 10)))
    return float(np.sqrt(((da - db) ** 2).mean(axis=1)).mean())


def snr_db(reference: np.ndarray, estimate: np.ndarray) -> float:
    """Signal-to-noise ratio in dB of ``estimate`` against ``reference`` (both float [N])."""
    reference, estimate = np.asarray(reference, np.float64), np.asarray(estimate, np.float64)
    noise = float(((reference - estimate) ** 2).sum())
    return float(10 * np.log10(float((reference**2).sum()) / max(noise, 1e-30)))
