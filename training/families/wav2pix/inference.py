"""The wav2pix inference graph: raw speech + noise -> face, everything inside (what a bundle's model.onnx holds)."""

from __future__ import annotations

import torch
from torch import nn

from training.families.wav2pix.networks import Wav2PixGenerator
from training.families.wav2pix.prior import NeighbourPosePrior


class Wav2PixInference(nn.Module):
    """The exported graph.

    Inputs: ``audio`` float32 [B, S] raw samples in [-1, 1] at the bundle's sample rate (S = window samples,
    16 000 for 1 s at 16 kHz); ``noise`` float32 [B, Z] standard normal. Output: ``image`` float32 [B, 3, H, W]
    in [-1, 1].

    ``truncation`` (psi) scales the noise inside the graph before the generator: the truncation trick (Brock et
    al., "Large Scale GAN Training for High Fidelity Natural Image Synthesis", ICLR 2019) trades variety for
    fidelity; 1.0 = no truncation. Callers always feed standard-normal noise; the bundle records psi.

    ``pose_prior`` (for generators with ``model.pose_code_dim`` > 0) then replaces the first K noise inputs with a
    training face's pose code chosen by the speech embedding (:class:`NeighbourPosePrior`); without it the
    generator reads standard-normal noise as its code.

    Raises:
        ValueError: psi outside (0, 2], or a neighbour bank of another embedding width.
    """

    def __init__(
        self, net: Wav2PixGenerator, truncation: float = 1.0, pose_prior: NeighbourPosePrior | None = None
    ) -> None:
        super().__init__()
        if not 0.0 < truncation <= 2.0:
            raise ValueError(f"truncation: expected 0 < psi <= 2, got {truncation}")
        self.encoder = net.encoder
        self.generator = net.generator
        self.truncation = float(truncation)
        self.pose_prior = pose_prior
        width = net.speech_classifier.in_features
        if pose_prior is not None and pose_prior.embedding_dim != width:
            raise ValueError(
                f"pose prior: a bank of {pose_prior.embedding_dim}-d speech embeddings for an encoder of {width}"
            )

    def forward(self, audio: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        if self.truncation != 1.0:
            noise = noise * self.truncation
        embedding = self.encoder(audio)
        if self.pose_prior is not None:
            noise = self.pose_prior(noise, embedding)
        return self.generator(embedding, noise)
