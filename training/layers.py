"""Building blocks every family's networks share: the audio front end inside the graph, pixel norm, spectral norm.

Feature extraction is part of each exported graph (fixed convolutions, no torchaudio), so every backend that
runs a bundle computes the same features from raw samples:

* :class:`AudioPreprocess` — peak normalisation and pre-emphasis (Roldán 2018; Duarte et al. 2019);
* :class:`LogMel` — log-mel spectrogram as a strided convolution with a windowed DFT basis;
* :func:`mel_filterbank` — the HTK-style triangular filterbank it uses.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from training.config import AudioConfig


def mel_filterbank(
    n_fft: int, n_mels: int, sample_rate: int, fmin: float = 0.0, fmax: float | None = None
) -> np.ndarray:
    """HTK-style triangular mel filterbank, float32 [n_mels, n_fft // 2 + 1] (Slaney-normalised area)."""
    fmax = fmax or sample_rate / 2

    def hz_to_mel(f: np.ndarray | float) -> np.ndarray:
        return 2595.0 * np.log10(1.0 + np.asarray(f) / 700.0)

    def mel_to_hz(m: np.ndarray) -> np.ndarray:
        return 700.0 * (10.0 ** (m / 2595.0) - 1.0)

    freqs = np.linspace(0, sample_rate / 2, n_fft // 2 + 1)
    edges = mel_to_hz(np.linspace(hz_to_mel(fmin), hz_to_mel(fmax), n_mels + 2))
    lower, centre, upper = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    up = (freqs[None, :] - lower) / (centre - lower)
    down = (upper - freqs[None, :]) / (upper - centre)
    bank = np.maximum(0.0, np.minimum(up, down))
    bank *= 2.0 / (upper - lower)
    return bank.astype(np.float32)


class AudioPreprocess(nn.Module):
    """Amplitude normalisation and pre-emphasis, inside the graph.

    Input: float32 [B, S] samples in [-1, 1]. Output: float32 [B, S].
    Peak normalisation divides by max(|x|) (floor 1e-3 so near-silence is not
    blown up into noise); pre-emphasis is y[t] = x[t] - a * x[t-1] (Roldán 2018).
    """

    def __init__(self, cfg: AudioConfig) -> None:
        super().__init__()
        self.normalize = cfg.normalize
        self.preemphasis = float(cfg.preemphasis)

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        x = audio
        if self.normalize:
            peak = x.abs().amax(dim=1, keepdim=True).clamp_min(1e-3)
            x = x / peak
        if self.preemphasis:
            x = torch.cat([x[:, :1], x[:, 1:] - self.preemphasis * x[:, :-1]], dim=1)
        return x


class LogMel(nn.Module):
    """Log-mel spectrogram as fixed convolutions (ONNX/TensorRT friendly).

    STFT with a periodic Hann window of ``n_fft`` samples and hop ``hop``
    samples, implemented as a strided conv1d with a windowed DFT basis; power
    spectrum → mel filterbank → log(· + 1e-6).
    Input: float32 [B, S]. Output: float32 [B, n_mels, 1 + (S - n_fft) // hop]
    (no centre padding).
    """

    def __init__(self, n_fft: int, hop: int, n_mels: int, sample_rate: int) -> None:
        super().__init__()
        self.hop = hop
        n = torch.arange(n_fft, dtype=torch.float64)
        window = 0.5 - 0.5 * torch.cos(2 * math.pi * n / n_fft)
        k = torch.arange(n_fft // 2 + 1, dtype=torch.float64)[:, None]
        phase = 2 * math.pi * k * n[None, :] / n_fft
        basis = torch.cat([torch.cos(phase) * window, -torch.sin(phase) * window], dim=0)
        self.register_buffer("basis", basis.float().unsqueeze(1), persistent=False)
        self.register_buffer("mel", torch.from_numpy(mel_filterbank(n_fft, n_mels, sample_rate)), persistent=False)
        self.n_bins = n_fft // 2 + 1

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        spec = F.conv1d(audio.unsqueeze(1), self.basis, stride=self.hop)  # [B, 2K, T]
        real, imag = spec[:, : self.n_bins], spec[:, self.n_bins :]
        power = real * real + imag * imag
        mel = torch.matmul(self.mel, power)  # [B, n_mels, T]
        return torch.log(mel + 1e-6)


def mel_encoder_body(n_mels: int, c: int) -> nn.Sequential:
    """The speech/sound encoders' 1-D convolution stack over log-mel frames: [B, n_mels, T] -> [B, 2c, ~T/8].

    Four convolutions (kernel 5, 5, 5, 3; stride 1, 2, 2, 2), each followed by GroupNorm(8) and leaky ReLU
    (0.2). Shared by the wav2pix, sound2scene and avgan audio encoders; its module indices (``body.0`` ...
    ``body.11``) are the keys of their saved weights.
    """
    act = nn.LeakyReLU(0.2)
    return nn.Sequential(
        nn.Conv1d(n_mels, c, 5, padding=2), nn.GroupNorm(8, c), act,
        nn.Conv1d(c, c, 5, stride=2, padding=2), nn.GroupNorm(8, c), act,
        nn.Conv1d(c, 2 * c, 5, stride=2, padding=2), nn.GroupNorm(8, 2 * c), act,
        nn.Conv1d(2 * c, 2 * c, 3, stride=2, padding=1), nn.GroupNorm(8, 2 * c), act,
    )  # fmt: skip


class PixelNorm(nn.Module):
    """Per-pixel feature vector normalisation (Karras et al. 2018). [B, C, H, W] → same.

    ``x / sqrt(mean_c(x²) + 1e-8)``. The epsilon is a 1-element tensor rather than a Python float:
    the ONNX exporter's optimiser (onnxscript 0.7) removes ``Add(x, c)`` for any scalar ``c`` within
    1e-8 of zero as an "add zero", which turned an all-zero pixel into NaN in the exported graph;
    its no-op rules match scalars only (``tests/test_export.py`` guards this).
    """

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("eps", torch.full((1,), 1e-8), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(dim=1, keepdim=True) + self.eps)


def sn(module: nn.Module, enabled: bool = True) -> nn.Module:
    """``module`` with spectral normalisation of its weight (Miyato et al., ICLR 2018) when ``enabled``."""
    return spectral_norm(module) if enabled else module


def channels(base: int, n: int, floor: int = 16) -> list[int]:
    """Widths of n + 1 stages that halve from ``base`` down to ``floor``: ``[max(floor, base >> i)]``."""
    return [max(floor, base >> i) for i in range(n + 1)]


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """float [B, 3, H, W] in [-1, 1] → uint8 [B, H, W, 3]: ``round((x + 1) * 127.5)`` clipped to [0, 255]."""
    x = ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).cpu().numpy()
