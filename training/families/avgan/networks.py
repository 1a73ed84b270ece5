"""Networks of the avgan family: one generator with an image stream and a spectrogram stream, one discriminator
that judges the two together.

After Dillig, Felger, Père & Weiß (AVGAN, Furtwangen 2019) and its model, LMGAN (Chen et al., "Lip Movements
Generation at a Glance", ECCV 2018: two streams that share a latent and meet by concatenation):

* :class:`SpeechEncoder` — (``voice`` conditioning) raw speech [B, S] -> embedding [B, E]: peak normalisation,
  pre-emphasis and a log-mel spectrogram inside the graph (:mod:`training.layers`), 1-D convolutions with group
  norm, mean + max pooling over time, a linear map.
* :class:`AvganGenerator` — (noise [B, Z], embedding [B, E] or nothing) -> a shared two-layer latent trunk ->
  two upsampling streams (:class:`UpStream`, nearest x2 + 3x3 convolution + pixel norm + leaky ReLU, spectral
  normalisation, Miyato et al. 2018): an image in [-1, 1] (tanh) and a spectrogram image (channel 0 the
  standardised log-magnitude, linear; channel 1 the instantaneous frequency, tanh), the sound representation of
  :class:`training.families.avgan.spectral.SpectrogramCodec`, which it holds (its statistics are buffers).
* :class:`AvganDiscriminator` — an image stream and a spectrogram stream (:class:`DownStream`, spectral-normalised
  stride-2 convolutions, summed over positions), their features concatenated into a joint layer; score =
  ``psi(j) + <W e, j>`` (projection of the condition, Miyato & Koyama 2018, where there is one) and an identity
  classifier on ``j`` (AC-GAN, Odena et al. 2017). :meth:`AvganDiscriminator.joint` takes the two streams'
  features separately, so a real image can be scored with another item's real sound at no extra cost
  (matching-aware negatives, Reed et al. 2016). With ``model.latent_code`` each stream also has a label
  classifier (``image_code``, ``spec_code``), and the generator a categorical code in its latent
  (:meth:`AvganGenerator.code`); with ``model.stream_classifiers`` (voice models) the same classifiers learn the
  speaker.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from engine.configs import ConfigError
from training.config import AudioConfig
from training.families.avgan.config import AvganConfig, ModelConfig
from training.families.avgan.spectral import SpectrogramCodec
from training.families.wav2pix.config import ModelConfig as WavPixModelConfig
from training.layers import AudioPreprocess, LogMel, PixelNorm, channels, mel_encoder_body, sn


class SpeechEncoder(nn.Module):
    """Speech float32 [B, S] (samples in [-1, 1] at ``audio.sample_rate`` Hz) -> embedding float32 [B, E]."""

    def __init__(self, audio: AudioConfig, model: ModelConfig) -> None:
        super().__init__()
        self.preprocess = AudioPreprocess(audio)
        self.features = LogMel(model.n_fft, model.hop, model.n_mels, audio.sample_rate)
        c = model.encoder_channels
        self.body = mel_encoder_body(model.n_mels, c)
        self.proj = nn.Linear(4 * c, model.embedding_dim)

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        h = self.body(self.features(self.preprocess(audio)))
        return self.proj(torch.cat([h.mean(dim=2), h.amax(dim=2)], dim=1))


class UpStream(nn.Module):
    """One generator stream: trunk features [B, W] -> [B, out_channels, h0 * 2^n, w0 * 2^n] (no output activation),
    n = ``len(chans)``.

    A linear seed of ``chans[0]`` channels at (h0, w0), then ``len(chans) - 1`` blocks of nearest x2 upsampling,
    3x3 convolution, pixel norm and leaky ReLU, then a last nearest x2 upsampling, ``top_blocks`` blocks of 3x3
    convolution, pixel norm and leaky ReLU at full resolution (``chans[-1]`` channels), and a 3x3 convolution to
    ``out_channels``. Without a full-resolution block (on a CPU it dominates the cost) the output is drawn from
    features at half resolution: nothing finer than about two pixels, too coarse for a voice's harmonics.
    """

    def __init__(
        self, width: int, seed_hw: tuple[int, int], chans: list[int], out_channels: int, use_sn: bool,
        top_blocks: int = 0,
    ) -> None:  # fmt: skip
        super().__init__()
        self.seed_hw, self.c0 = seed_hw, chans[0]
        self.fc = sn(nn.Linear(width, chans[0] * seed_hw[0] * seed_hw[1]), use_sn)
        self.seed_norm = PixelNorm()
        blocks: list[nn.Module] = []
        for cin, cout in zip(chans[:-1], chans[1:]):
            blocks += [nn.Upsample(scale_factor=2, mode="nearest"), sn(nn.Conv2d(cin, cout, 3, padding=1), use_sn),
                       PixelNorm(), nn.LeakyReLU(0.2)]  # fmt: skip
        blocks.append(nn.Upsample(scale_factor=2, mode="nearest"))
        for _ in range(top_blocks):
            blocks += [sn(nn.Conv2d(chans[-1], chans[-1], 3, padding=1), use_sn), PixelNorm(), nn.LeakyReLU(0.2)]
        self.blocks = nn.Sequential(*blocks)
        self.out = nn.Conv2d(chans[-1], out_channels, 3, padding=1)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        x = self.fc(h).view(-1, self.c0, *self.seed_hw)
        return self.out(self.blocks(F.leaky_relu(self.seed_norm(x), 0.2)))


class UpStream1d(nn.Module):
    """``model.spec_stream: conv1d``: trunk features [B, W] -> spectrogram image [B, 2, K, T] drawn with the
    frequency bins as channels and convolutions over time only (as speech generators draw spectrogram frames,
    e.g. MelGAN, Kumar et al. 2019): a linear seed of ``chans[0]`` channels at T / 2^n frames, ``n = len(chans)``
    blocks of nearest x2 upsampling in time, a kernel-5 convolution, pixel norm and leaky ReLU, ``top_blocks``
    more at full length, and a kernel-5 convolution to 2K channels (log-magnitude bins, then IF bins). float32 in,
    float32 out, no output activation.

    Raises:
        ValueError: ``t`` is not a multiple of 2^n.
    """

    def __init__(self, width: int, k: int, t: int, chans: list[int], use_sn: bool, top_blocks: int = 0) -> None:
        super().__init__()
        n = len(chans)
        if t % (1 << n):
            raise ValueError(f"UpStream1d: {t} frames are not a multiple of 2^{n} (the stream's {n} x2 upsamplings)")
        self.k, self.c0, self.t0 = k, chans[0], t >> n
        self.fc = sn(nn.Linear(width, chans[0] * self.t0), use_sn)
        self.seed_norm = PixelNorm()
        blocks: list[nn.Module] = []
        for cin, cout in zip(chans, [*chans[1:], chans[-1]]):  # n upsampling blocks ...
            blocks += [nn.Upsample(scale_factor=2, mode="nearest"), sn(nn.Conv1d(cin, cout, 5, padding=2), use_sn),
                       PixelNorm(), nn.LeakyReLU(0.2)]  # fmt: skip
        for _ in range(top_blocks):  # ... then the full-length ones
            blocks += [sn(nn.Conv1d(chans[-1], chans[-1], 5, padding=2), use_sn), PixelNorm(), nn.LeakyReLU(0.2)]
        self.blocks = nn.Sequential(*blocks)
        self.out = nn.Conv1d(chans[-1], 2 * k, 5, padding=2)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        x = F.leaky_relu(self.seed_norm(self.fc(h).view(-1, self.c0, self.t0)), 0.2)
        y = self.out(self.blocks(x))
        return y.view(y.shape[0], 2, self.k, y.shape[2])


class DownStream1d(nn.Module):
    """``model.spec_stream: conv1d``: spectrogram image [B, 2, K, T] -> features [B, chans[-1]], the 2K bins as
    channels: spectral-normalised kernel-4 stride-2 convolutions over time with leaky ReLU (one per entry of
    ``chans``), a kernel-3 one, summed over time."""

    def __init__(self, k: int, chans: list[int]) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for cin, cout in zip([2 * k, *chans[:-1]], chans):
            layers += [spectral_norm(nn.Conv1d(cin, cout, 4, stride=2, padding=1)), nn.LeakyReLU(0.2)]
        layers += [spectral_norm(nn.Conv1d(chans[-1], chans[-1], 3, padding=1)), nn.LeakyReLU(0.2)]
        self.body = nn.Sequential(*layers)
        self.width = chans[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x.flatten(1, 2)).sum(dim=2)


def _stream_channels(cfg: ModelConfig, n_up: int) -> list[int]:
    """Widths of a stream with ``n_up`` x2 upsamplings: ``g_channels`` halving down to ``g_min_channels``."""
    return channels(cfg.g_channels, n_up - 1, cfg.g_min_channels)


def wav2pix_model_config(cfg: AvganConfig) -> WavPixModelConfig:
    """The :class:`training.families.wav2pix.config.ModelConfig` of a ``model.image_stream: wav2pix`` generator's
    speech encoder and image stream (what the wav2pix bundle it is taken from must have)."""
    m = cfg.model
    return WavPixModelConfig(
        front_end="mel", n_fft=m.n_fft, hop=m.hop, n_mels=m.n_mels, embedding_dim=m.embedding_dim,
        noise_dim=m.noise_dim, image_size=m.image_size, g_channels=m.image_g_channels or m.g_channels,
        g_min_channels=m.image_g_min_channels or m.g_min_channels, encoder_channels=m.encoder_channels,
        spectral_norm_g=m.spectral_norm_g, pose_code_dim=0,
    )  # fmt: skip


class AvganGenerator(nn.Module):
    """Everything the generator's optimiser trains: speech encoder and identity head (``voice`` only), trunk, the
    two streams, and the spectrogram codec (fixed buffers + the data's log-magnitude statistics).

    ``forward(noise [B, Z], embedding [B, E] or None)`` -> (image float32 [B, C, H, H] in [-1, 1], spectrogram
    float32 [B, 2, K, T]). :meth:`sound` decodes a spectrogram to a waveform [B, N].

    With ``model.image_stream: wav2pix`` the image stream is a wav2pix generator that reads the embedding and the
    noise themselves (the spectrogram stream reads the trunk of the same two); it, the speech encoder and the
    identity head are taken over from a wav2pix bundle (:meth:`training.families.avgan.Avgan.init_from_bundle`) and
    have ``requires_grad`` off.

    Raises:
        ValueError: ``voice`` conditioning without an embedding, or one given to an unconditional generator.
    """

    def __init__(self, cfg: AvganConfig, n_labels: int) -> None:
        super().__init__()
        m, s = cfg.model, cfg.spectrogram
        self.conditional = m.conditioning == "voice"
        self.noise_dim = m.noise_dim
        self.fixed_image_stream = m.image_stream == "wav2pix"
        self.codec = SpectrogramCodec(s.n_fft, s.hop, s.frames, cfg.audio.window_samples)
        if self.conditional:
            self.encoder: SpeechEncoder | None = SpeechEncoder(cfg.audio, m)
            self.speaker_head: nn.Linear | None = nn.Linear(m.embedding_dim, max(1, n_labels))
            in_dim = m.noise_dim + m.embedding_dim
        else:
            self.encoder = self.speaker_head = None
            in_dim = m.noise_dim
        self.n_codes = max(1, n_labels) if m.latent_code else 0
        if self.n_codes > m.noise_dim:
            raise ConfigError(
                f"model.noise_dim: model.latent_code takes the code from the first {self.n_codes} noise values (one per "
                f"label), so noise_dim must be >= {self.n_codes}; got {m.noise_dim}"
            )
        in_dim += self.n_codes
        use_sn = m.spectral_norm_g
        self.trunk = nn.Sequential(
            sn(nn.Linear(in_dim, m.trunk_width), use_sn), nn.LeakyReLU(0.2),
            sn(nn.Linear(m.trunk_width, m.trunk_width), use_sn), nn.LeakyReLU(0.2),
        )  # fmt: skip
        n_img = int(math.log2(m.image_size // 4))
        self.image: nn.Module
        if self.fixed_image_stream:
            from training.families.wav2pix.networks import Generator as Wav2PixImage

            self.image = Wav2PixImage(wav2pix_model_config(cfg))
            for part in (self.encoder, self.speaker_head, self.image):
                part.requires_grad_(False)  # taken over from a wav2pix bundle and kept (Avgan.init_from_bundle) ...
                part.train(False)  # ... with its spectral normalisation's vectors (see train())
        else:
            widths = channels(m.image_g_channels or m.g_channels, n_img - 1, m.image_g_min_channels or m.g_min_channels)
            self.image = UpStream(m.trunk_width, (4, 4), widths, m.image_channels, use_sn)
        _, k, t = self.codec.shape
        self.spec: nn.Module
        if m.spec_stream == "conv1d":
            self.spec = UpStream1d(m.trunk_width, k, t, _stream_channels(m, 5), use_sn, m.spec_top_blocks)
        else:
            self.spec = UpStream(m.trunk_width, (k // 16, t // 16), _stream_channels(m, 4), 2, use_sn, m.spec_top_blocks)

    def train(self, mode: bool = True) -> AvganGenerator:
        """As :meth:`torch.nn.Module.train`, but a fixed image stream, speech encoder and identity head stay in eval
        mode: in train mode spectral normalisation refines its power-iteration vectors at every forward pass, which
        would move the taken-over weights' normalisation."""
        super().train(mode)
        if self.fixed_image_stream:
            for part in (self.encoder, self.speaker_head, self.image):
                part.train(False)
        return self

    def forward(self, noise: torch.Tensor, embedding: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        if self.conditional != (embedding is not None):
            raise ValueError("AvganGenerator: a voice-conditioned generator needs an embedding, an unconditional one none")
        x = noise if embedding is None else torch.cat([noise, embedding], dim=1)
        if self.n_codes:
            x = torch.cat([x, self.code(noise)], dim=1)
        h = self.trunk(x)
        if self.fixed_image_stream:
            assert embedding is not None
            image = self.image(embedding, noise)  # the wav2pix generator: (embedding, noise) -> tanh image
        else:
            image = torch.tanh(self.image(h))
        spec = self.spec(h)
        return image, torch.stack([spec[:, 0], torch.tanh(spec[:, 1])], dim=1)

    def code(self, noise: torch.Tensor) -> torch.Tensor:
        """The latent code (``model.latent_code``) of noise [B, Z]: one-hot float32 [B, L] of the argmax of its first L
        values (L = the number of labels; the first maximum on ties, as :meth:`code_labels`). ONNX: ArgMax + Equal."""
        labels = torch.arange(self.n_codes, device=noise.device)
        return (labels == self.code_labels(noise)[:, None]).float()

    def code_labels(self, noise: torch.Tensor) -> torch.Tensor:
        """int64 [B]: the label index of each noise vector's code."""
        return noise[:, : self.n_codes].argmax(dim=1)

    def sound(self, spectrogram: torch.Tensor) -> torch.Tensor:
        """Waveform float32 [B, N] of spectrogram images [B, 2, K, T], clipped to [-1, 1]."""
        return self.codec.decode(spectrogram).clamp(-1.0, 1.0)


class DownStream(nn.Module):
    """One discriminator stream: [B, C, H, W] -> features [B, chans[-1]] (summed over positions).

    Spectral-normalised 4x4 stride-2 convolutions with leaky ReLU (one per entry of ``chans``), then a 3x3 one.
    """

    def __init__(self, in_channels: int, chans: list[int]) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for cin, cout in zip([in_channels, *chans[:-1]], chans):
            layers += [spectral_norm(nn.Conv2d(cin, cout, 4, stride=2, padding=1)), nn.LeakyReLU(0.2)]
        layers += [spectral_norm(nn.Conv2d(chans[-1], chans[-1], 3, padding=1)), nn.LeakyReLU(0.2)]
        self.body = nn.Sequential(*layers)
        self.width = chans[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x).sum(dim=(2, 3))


class AvganDiscriminator(nn.Module):
    """(image [B, C, H, H], spectrogram [B, 2, K, T], embedding [B, E] or None) -> (score [B], logits [B, L]).

    :meth:`image_features` / :meth:`spec_features` run the streams, :meth:`joint` concatenates their features,
    :meth:`score` and :attr:`classifier` read the joint features.
    """

    def __init__(self, cfg: AvganConfig, n_labels: int) -> None:
        super().__init__()
        m = cfg.model
        n_img = int(math.log2(m.image_size // 4))
        self.image = DownStream(m.image_channels, [m.d_channels * 2**i for i in range(n_img)])
        self.spec: nn.Module
        if m.spec_stream == "conv1d":
            c = m.spec_d_channels or m.d_channels
            self.spec = DownStream1d(cfg.spectrogram.n_fft // 2, [c, 2 * c, 4 * c, 4 * c])
        else:
            self.spec = DownStream(2, [(m.spec_d_channels or m.d_channels) * 2**i for i in range(4)])
        self.minibatch_std = m.minibatch_std
        extra = 2 if m.minibatch_std else 0
        self.fc = spectral_norm(nn.Linear(self.image.width + self.spec.width + extra, m.joint_width))
        self.psi = spectral_norm(nn.Linear(m.joint_width, 1))
        self.embed = spectral_norm(nn.Linear(m.embedding_dim, m.joint_width)) if m.conditioning == "voice" else None
        self.classifier = spectral_norm(nn.Linear(m.joint_width, max(1, n_labels)))
        # model.latent_code / model.stream_classifiers: one label classifier per stream, so each stream on its own
        # must name the label (the code's digit, the condition's speaker)
        self.image_code: nn.Module | None = None
        self.spec_code: nn.Module | None = None
        if m.latent_code or m.stream_classifiers:
            self.image_code = spectral_norm(nn.Linear(self.image.width, max(1, n_labels)))
            self.spec_code = spectral_norm(nn.Linear(self.spec.width, max(1, n_labels)))

    def image_features(self, image: torch.Tensor) -> torch.Tensor:
        return self.image(image)

    def spec_features(self, spec: torch.Tensor) -> torch.Tensor:
        return self.spec(spec)

    def joint(self, h_image: torch.Tensor, h_spec: torch.Tensor) -> torch.Tensor:
        """Joint features [B, J] of the two streams' features (concatenated; with ``model.minibatch_std`` also each
        stream's standard deviation over the batch, averaged over its features: ProGAN's minibatch standard
        deviation, Karras et al. 2018, so that a batch of near-identical samples looks fake)."""
        parts = [h_image, h_spec]
        if self.minibatch_std:
            b = h_image.shape[0]
            parts += [h.float().std(dim=0, unbiased=False).mean().to(h.dtype).expand(b, 1) for h in (h_image, h_spec)]
        return F.leaky_relu(self.fc(torch.cat(parts, dim=1)), 0.2)

    def score(self, j: torch.Tensor, embedding: torch.Tensor | None = None) -> torch.Tensor:
        """Score [B] of joint features [B, J] with the condition's embedding [B, E] (None: unconditional)."""
        s = self.psi(j).squeeze(1)
        if embedding is not None and self.embed is not None:
            s = s + (self.embed(embedding) * j).sum(dim=1)
        return s

    def forward(
        self, image: torch.Tensor, spec: torch.Tensor, embedding: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        j = self.joint(self.image_features(image), self.spec_features(spec))
        return self.score(j, embedding), self.classifier(j)


def build(cfg: AvganConfig, n_labels: int) -> tuple[AvganGenerator, AvganDiscriminator]:
    """Fresh (generator side, discriminator) for ``n_labels`` identities (speakers, digits)."""
    return AvganGenerator(cfg, n_labels), AvganDiscriminator(cfg, n_labels)
