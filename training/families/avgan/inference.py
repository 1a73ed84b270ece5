"""The avgan inference graphs (what a bundle's ``model.onnx`` holds): image and waveform from one latent.

* :class:`VoiceInference` — inputs ``audio`` float32 [B, S] (raw speech in [-1, 1] at the bundle's rate) and
  ``noise`` float32 [B, Z]; outputs ``image`` float32 [B, 3, H, W] in [-1, 1] and ``sound`` float32 [B, N] in
  [-1, 1] at the bundle's rate.
* :class:`NoiseInference` — input ``noise`` only (unconditional); the same outputs.

The speech encoder's features and the spectrogram inverse (:meth:`training.families.avgan.spectral.
SpectrogramCodec.decode`: IF -> phase by cumulative sum, inverse DFT, overlap-add, window-sum normalisation) are
inside, so every backend computes the same thing. Grey images (``model.image_channels: 1``) are repeated to RGB.
``truncation`` (psi) scales the noise inside the graph (Brock et al. 2019); callers feed standard-normal noise.
"""

from __future__ import annotations

import torch
from torch import nn

from training.families.avgan.networks import AvganGenerator


class _Graph(nn.Module):
    def __init__(self, G: AvganGenerator, truncation: float) -> None:
        super().__init__()
        if not 0.0 < truncation <= 2.0:
            raise ValueError(f"truncation: expected 0 < psi <= 2, got {truncation}")
        self.G = G
        self.truncation = float(truncation)

    def _outputs(self, noise: torch.Tensor, embedding: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        if self.truncation != 1.0:
            noise = noise * self.truncation
        image, spec = self.G(noise, embedding)
        if image.shape[1] == 1:
            image = image.expand(-1, 3, -1, -1)
        return image, self.G.sound(spec)


class VoiceInference(_Graph):
    """(audio [B, S], noise [B, Z]) -> (image [B, 3, H, W], sound [B, N])."""

    def forward(self, audio: torch.Tensor, noise: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        assert self.G.encoder is not None
        return self._outputs(noise, self.G.encoder(audio))


class NoiseInference(_Graph):
    """noise [B, Z] -> (image [B, 3, H, W], sound [B, N])."""

    def forward(self, noise: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self._outputs(noise, None)
