"""The sound2scene inference graph: raw sound (or a class mixture) + noise -> scene image (a bundle's model.onnx)."""

from __future__ import annotations

import torch
from torch import nn

from training.families.sound2scene.networks import Sound2SceneGenerator, to_sphere


class Sound2SceneInference(nn.Module):
    """The exported graph.

    Inputs: ``audio`` float32 [B, S] raw samples in [-1, 1] at the bundle's sample rate; ``noise`` float32 [B, Z]
    standard normal; ``class`` float32 [B, C] class weights (index = the bundle's ``labels``). Outputs: ``image``
    float32 [B, 3, H, W] in [-1, 1]; ``class_probabilities`` float32 [B, C], the audio encoder's softmax for
    ``audio`` (what the model hears, whatever ``class`` pins; the evaluation's audio accuracy reads it).

    A row of ``class`` that is all zeros (the engine's fill when the caller leaves it out) follows the sound: the
    generator is conditioned on the audio encoder's embedding of ``audio``. Otherwise the row's weights (negative
    ones count as 0) mix the class centroids (each class's mean training embedding) and the result, put back on
    the sphere the embeddings live on, replaces the sound: one-hot pins a class, ``[0.5, 0.5, 0, ...]`` blends
    two. The audio is still read (the graph has one shape), but does not change a pinned image.
    """

    def __init__(self, net: Sound2SceneGenerator) -> None:
        super().__init__()
        self.encoder = net.encoder
        self.generator = net.generator
        self.register_buffer("centroids", net.centroids.detach().clone())

    def forward(
        self, audio: torch.Tensor, noise: torch.Tensor, klass: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        heard = self.encoder.embed_features(self.encoder.features(audio))
        weights = klass.clamp_min(0.0)
        pinned = to_sphere(weights @ self.centroids)
        e = torch.where(weights.sum(dim=1, keepdim=True) > 0, pinned, heard)
        return self.generator(noise, e), torch.softmax(self.encoder.classifier(heard), dim=1)


def example_inputs(window: int, noise_dim: int, n_classes: int):
    """``(batch, torch.Generator) -> (audio, noise, class)`` for tracing and the export's self-check: even rows follow
    the sound (class all zero), odd rows pin class ``row % C`` (one-hot), so both paths are traced and checked."""

    def make(batch: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        audio = (torch.rand(batch, window, generator=gen) * 2 - 1) * 0.5
        noise = torch.randn(batch, noise_dim, generator=gen)
        klass = torch.zeros(batch, n_classes)
        for row in range(1, batch, 2):
            klass[row, row % n_classes] = 1.0
        return audio, noise, klass

    return make
