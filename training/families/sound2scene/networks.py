"""Networks of the sound2scene family: audio encoder (a sound classifier), generator, discriminator.

After Wan, Chuang & Lee, "Towards Audio to Scene Image Synthesis using Generative Adversarial Network" (ICASSP
2019), with a small log-mel encoder in place of SoundNet:

* :class:`AudioEncoder` — raw samples -> sound embedding e [B, E] on the sphere of radius sqrt(E) (so each
  component has unit RMS) and class logits [B, C]. Peak normalisation, pre-emphasis and the log-mel
  spectrogram are inside (:mod:`training.layers`), so every backend computes the same features.
* :class:`Generator` — (noise z, conditioning e) -> image in [-1, 1]: a 4x4 seed from ``[z, e]``, then x2
  upsampling blocks, each a spectrally normalised 4x4 transposed convolution of stride 2 (DCGAN's upsampling,
  Radford et al. 2016; 2-3x cheaper on a CPU than nearest upsampling + 3x3 convolution) followed by
  class-conditional normalisation (:class:`ConditionalNorm`) driven by e, and a leaky ReLU; a 3x3 convolution
  to RGB and tanh.
* :class:`Discriminator` — spectrally normalised strided convolutions; score ``psi(h) + <V e, h>`` (projection
  discriminator, Miyato & Koyama, ICLR 2018) and an auxiliary class head (AC-GAN, Odena et al., ICML 2017).
* :class:`Sound2SceneGenerator` — encoder + generator + the class centroids (mean training embedding per class):
  everything the generator's optimiser and the moving average hold.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from training.config import AudioConfig
from training.families.sound2scene.config import ModelConfig
from training.layers import AudioPreprocess, LogMel, PixelNorm, channels, mel_encoder_body


def to_sphere(e: torch.Tensor) -> torch.Tensor:
    """Scale each row of e [B, E] to norm sqrt(E) (unit RMS per component); a zero row stays zero."""
    return e * torch.rsqrt(e.pow(2).mean(dim=1, keepdim=True) + 1e-8)


class AudioEncoder(nn.Module):
    """Sound -> (embedding [B, E] on the sphere of radius sqrt(E), class logits [B, C]).

    Input: float32 [B, S] raw samples in [-1, 1] at ``audio.sample_rate`` Hz. Peak normalisation and pre-emphasis
    (:class:`training.layers.AudioPreprocess`), log-mel (:class:`training.layers.LogMel`, ``n_fft`` / ``hop`` /
    ``n_mels``), four 1-D convolutions over time (group norm, leaky ReLU; three of them stride 2), mean and max
    pooling over time, a linear projection to E, :func:`to_sphere`, and a linear class layer (dropout before it
    while training).
    """

    def __init__(self, audio: AudioConfig, model: ModelConfig, n_classes: int, dropout: float = 0.0) -> None:
        super().__init__()
        c = model.encoder_channels
        self.preprocess = AudioPreprocess(audio)
        self.mel = LogMel(model.n_fft, model.hop, model.n_mels, audio.sample_rate)
        self.body = mel_encoder_body(model.n_mels, c)
        self.proj = nn.Linear(4 * c, model.embedding_dim)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(model.embedding_dim, max(1, n_classes))

    def features(self, audio: torch.Tensor) -> torch.Tensor:
        """Log-mel features [B, n_mels, T] of audio [B, S] (no parameters: exact to precompute)."""
        return self.mel(self.preprocess(audio))

    def embed_features(self, feats: torch.Tensor) -> torch.Tensor:
        """Embedding [B, E] (radius sqrt(E)) of :meth:`features` output."""
        h = self.body(feats)
        return to_sphere(self.proj(torch.cat([h.mean(dim=2), h.amax(dim=2)], dim=1)))

    def classify(self, e: torch.Tensor) -> torch.Tensor:
        """Class logits [B, C] of embeddings [B, E]."""
        return self.classifier(self.dropout(e))

    def forward(self, audio: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        e = self.embed_features(self.features(audio))
        return e, self.classify(e)


class ConditionalNorm(nn.Module):
    """Class-conditional normalisation driven by the sound embedding: [B, C, H, W], e [B, E] -> [B, C, H, W].

    ``norm(x) * (1 + gamma(e)) + beta(e)``: the per-channel gain and bias of conditional batch normalisation
    (de Vries et al., NeurIPS 2017; Miyato & Koyama 2018) predicted by linear maps of the embedding, on top of a
    normalisation that uses no batch statistics, so the exported graph at batch 1 computes exactly what training
    computed: ``kind="pixel"``, pixel-wise feature normalisation (Karras et al., ICLR 2018), or ``"layer"``, one
    mean and variance per image over all channels and pixels (group normalisation with one group, Wu & He 2018).
    Pixel norm gives every pixel the same feature energy, which a layer of a few channels (the 64 px layers of a
    CPU-sized generator) can only spend on texture: the music model's first runs drew speckle everywhere with it.
    """

    def __init__(self, n_channels: int, embedding_dim: int, kind: str = "pixel") -> None:
        super().__init__()
        self.norm = PixelNorm() if kind == "pixel" else nn.GroupNorm(1, n_channels, affine=False)
        self.affine = nn.Linear(embedding_dim, 2 * n_channels)
        nn.init.zeros_(self.affine.weight)
        nn.init.zeros_(self.affine.bias)

    def forward(self, x: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        gamma, beta = self.affine(e).unsqueeze(-1).unsqueeze(-1).chunk(2, dim=1)
        return self.norm(x) * (1 + gamma) + beta


class Generator(nn.Module):
    """(noise z [B, Z], conditioning e [B, E]) -> image float32 [B, 3, H, W] in [-1, 1] (see the module docstring).

    Widths: ``g_channels`` at 4x4, halving per x2 block down to ``g_min_channels``.
    """

    def __init__(self, model: ModelConfig) -> None:
        super().__init__()
        n_up = int(math.log2(model.image_size // 4))
        chans = channels(model.g_channels, n_up, model.g_min_channels)
        self.c0 = chans[0]
        self.fc = spectral_norm(nn.Linear(model.noise_dim + model.embedding_dim, 16 * chans[0]))
        self.norm0 = ConditionalNorm(chans[0], model.embedding_dim, model.norm)
        self.convs = nn.ModuleList(
            spectral_norm(nn.ConvTranspose2d(a, b, 4, stride=2, padding=1)) for a, b in zip(chans[:-1], chans[1:])
        )
        self.norms = nn.ModuleList(ConditionalNorm(b, model.embedding_dim, model.norm) for b in chans[1:])
        self.to_rgb = nn.Conv2d(chans[-1], 3, 3, padding=1)

    def forward(self, z: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        h = self.fc(torch.cat([z, e], dim=1)).view(-1, self.c0, 4, 4)
        h = F.leaky_relu(self.norm0(h, e), 0.2)
        for conv, norm in zip(self.convs, self.norms):
            h = F.leaky_relu(norm(conv(h), e), 0.2)
        return torch.tanh(self.to_rgb(h))


class Discriminator(nn.Module):
    """(image [B, 3, H, W], embedding e [B, E]) -> (score [B], class logits [B, C]) (see the module docstring).

    Widths: ``d_channels`` after the first stride-2 convolution, doubling per stride-2 layer down to 4x4; the
    features h [B, W] are the sum over positions after a last 3x3 convolution. :meth:`features` and :meth:`score`
    split the pass so one image batch can be scored against several conditionings (matching-aware negatives).
    """

    def __init__(self, model: ModelConfig, n_classes: int) -> None:
        super().__init__()
        n_down = int(math.log2(model.image_size // 4))
        chans = [3] + [model.d_channels * 2**i for i in range(n_down)]
        layers: list[nn.Module] = []
        for a, b in zip(chans[:-1], chans[1:]):
            layers += [spectral_norm(nn.Conv2d(a, b, 4, stride=2, padding=1)), nn.LeakyReLU(0.2)]
        layers += [spectral_norm(nn.Conv2d(chans[-1], chans[-1], 3, padding=1)), nn.LeakyReLU(0.2)]
        self.body = nn.Sequential(*layers)
        width = chans[-1]
        self.psi = spectral_norm(nn.Linear(width, 1))
        self.embed = spectral_norm(nn.Linear(model.embedding_dim, width))
        self.classifier = spectral_norm(nn.Linear(width, max(1, n_classes)))

    def features(self, image: torch.Tensor) -> torch.Tensor:
        """Pooled features h [B, W] of images [B, 3, H, W]."""
        return self.body(image).sum(dim=(2, 3))

    def score(self, h: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        """Projection score [B] of features h [B, W] under embeddings e [B, E]."""
        return self.psi(h).squeeze(1) + (self.embed(e) * h).sum(dim=1)

    def forward(self, image: torch.Tensor, e: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.features(image)
        return self.score(h, e), self.classifier(h)


class Sound2SceneGenerator(nn.Module):
    """Audio encoder + generator + class centroids: the generator side the loop trains, averages and exports.

    ``centroids`` (buffer [C, E]): each class's mean training embedding, put back on the sphere
    (:func:`to_sphere`); set once the encoder is trained (:func:`training.families.sound2scene.trainer.fit_encoder`).
    ``forward(audio [B, S], noise [B, Z]) -> image [B, 3, H, W]`` follows the sound (the graph in
    :mod:`.inference` adds the class input).
    """

    def __init__(self, audio: AudioConfig, model: ModelConfig, n_classes: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.encoder = AudioEncoder(audio, model, n_classes, dropout)
        self.generator = Generator(model)
        self.register_buffer("centroids", torch.zeros(max(1, n_classes), model.embedding_dim))

    def mixture(self, weights: torch.Tensor) -> torch.Tensor:
        """Conditioning [B, E] of class weights [B, C] (>= 0, not all zero): their weighted centroid on the sphere."""
        return to_sphere(weights @ self.centroids)

    def forward(self, audio: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        e, _ = self.encoder(audio)
        return self.generator(noise, e)


def build(audio: AudioConfig, model: ModelConfig, n_classes: int, dropout: float = 0.0):
    """(:class:`Sound2SceneGenerator`, :class:`Discriminator`) for ``n_classes`` classes."""
    return Sound2SceneGenerator(audio, model, n_classes, dropout), Discriminator(model, n_classes)
