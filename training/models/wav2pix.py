"""Wav2Pix: speech-conditioned face generation.

After Duarte et al., "Wav2Pix: Speech-conditioned Face Generation using
Generative Adversarial Networks" (ICASSP 2019) and its predecessor by Roldán
(2018). Components:

* :class:`SpeechEncoder` — raw waveform → 128-d embedding through strided 1-D
  convolutions in the style of the SEGAN discriminator (Pascual et al. 2017),
  or (``front_end='mel'``) a log-mel front end computed inside the graph for
  speed. Amplitude normalisation and pre-emphasis are part of the module, so
  every backend that runs the exported graph computes the same features.
* :class:`Generator` — embedding + noise → image in [-1, 1], spectral
  normalisation (Miyato et al. 2018) and pixel-wise feature normalisation
  (Karras et al. 2018, batch-independent, so batch 1 equals batch 32).
* :class:`Discriminator` — spectral-normalised convolutions, projection of the
  speech embedding (Miyato & Koyama 2018) and an auxiliary identity classifier
  (Odena et al. 2017, AC-GAN). The trainer scores (real, right speech),
  (real, wrong speech) and (fake, right speech) (Reed et al. 2016).
* :class:`Wav2PixInference` — the exported graph: raw audio [B, S] float32 at
  16 kHz + noise [B, Z] → image [B, 3, H, W] float32 in [-1, 1].
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import spectral_norm

from training.config import AudioConfig, ModelConfig


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


class SpeechPreprocess(nn.Module):
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


class SpeechEncoder(nn.Module):
    """Speech → embedding.

    Input: float32 [B, S] raw samples in [-1, 1] at ``audio.sample_rate`` Hz.
    Output: float32 [B, embedding_dim].
    ``front_end='raw'``: SEGAN-discriminator-style strided 1-D convolutions
    (kernel 31) on the pre-emphasised waveform. ``front_end='mel'``: log-mel
    front end followed by 1-D convolutions over time. Both end in mean+max
    pooling over time and a linear projection.
    """

    def __init__(self, audio: AudioConfig, model: ModelConfig) -> None:
        super().__init__()
        self.preprocess = SpeechPreprocess(audio)
        c = model.encoder_channels
        act = nn.LeakyReLU(0.2)
        if model.front_end == "mel":
            self.features: nn.Module = LogMel(model.n_fft, model.hop, model.n_mels, audio.sample_rate)
            self.body = nn.Sequential(
                nn.Conv1d(model.n_mels, c, 5, stride=1, padding=2),
                nn.GroupNorm(8, c),
                act,
                nn.Conv1d(c, c, 5, stride=2, padding=2),
                nn.GroupNorm(8, c),
                act,
                nn.Conv1d(c, 2 * c, 5, stride=2, padding=2),
                nn.GroupNorm(8, 2 * c),
                act,
                nn.Conv1d(2 * c, 2 * c, 3, stride=2, padding=1),
                nn.GroupNorm(8, 2 * c),
                act,
            )
        else:
            self.features = nn.Identity()
            chans = [1, 16, 32, 64, c, c, 2 * c]
            strides = [4, 4, 4, 2, 2, 2]
            layers: list[nn.Module] = []
            for cin, cout, s in zip(chans[:-1], chans[1:], strides):
                layers += [nn.Conv1d(cin, cout, 31, stride=s, padding=15), nn.GroupNorm(min(8, cout), cout), act]
            self.body = nn.Sequential(*layers)
        self.raw = model.front_end == "raw"
        self.proj = nn.Linear(4 * c, model.embedding_dim)

    def features_of(self, audio: torch.Tensor) -> torch.Tensor:
        """Parameter-free features (preprocessing + log-mel): [B, n_mels, T] or [B, 1, S]."""
        x = self.preprocess(audio)
        return x.unsqueeze(1) if self.raw else self.features(x)

    def encode_features(self, feats: torch.Tensor) -> torch.Tensor:
        """Embedding [B, E] from :meth:`features_of` output."""
        h = self.body(feats)
        h = torch.cat([h.mean(dim=2), h.amax(dim=2)], dim=1)
        return self.proj(h)

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        return self.encode_features(self.features_of(audio))


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


def _sn(module: nn.Module, enabled: bool = True) -> nn.Module:
    return spectral_norm(module) if enabled else module


def _channels(base: int, n: int, floor: int = 16) -> list[int]:
    return [max(floor, base >> i) for i in range(n + 1)]


class Generator(nn.Module):
    """(embedding [B, E], noise [B, Z]) → image float32 [B, 3, H, W] in [-1, 1].

    A 4×4 seed from a linear layer, then log2(H/4) blocks of nearest ×2
    upsampling, 3×3 convolution, pixel norm and leaky ReLU; tanh output.
    """

    def __init__(self, model: ModelConfig) -> None:
        super().__init__()
        n_up = int(math.log2(model.image_size // 4))
        chans = _channels(model.g_channels, n_up, model.g_min_channels)
        sn = model.spectral_norm_g
        self.c0 = chans[0]
        self.seed_norm = PixelNorm()
        self.fc = _sn(nn.Linear(model.embedding_dim + model.noise_dim, 16 * chans[0]), sn)
        blocks: list[nn.Module] = []
        for cin, cout in zip(chans[:-1], chans[1:]):
            blocks += [
                nn.Upsample(scale_factor=2, mode="nearest"),
                _sn(nn.Conv2d(cin, cout, 3, padding=1), sn),
                PixelNorm(),
                nn.LeakyReLU(0.2),
            ]
        self.blocks = nn.Sequential(*blocks)
        self.to_rgb = nn.Conv2d(chans[-1], 3, 3, padding=1)

    def forward(self, embedding: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        h = self.fc(torch.cat([embedding, noise], dim=1)).view(-1, self.c0, 4, 4)
        h = F.leaky_relu(self.seed_norm(h), 0.2)
        return torch.tanh(self.to_rgb(self.blocks(h)))


def minibatch_std(x: torch.Tensor, group: int) -> torch.Tensor:
    """Append the minibatch standard-deviation channel (Karras et al., "Progressive Growing of GANs", ICLR 2018).

    The batch is split into groups of ``g`` images (``g`` = the largest divisor of B that is <= ``group``;
    image ``b`` belongs to group ``b % (B // g)``, as in ProGAN/StyleGAN2); per group, the standard deviation
    of every feature over its ``g`` images, averaged over channels and positions, is broadcast as one more
    channel to the group's images. Computed in float32 (bf16 autocast would lose the small differences).

    Args:
        x: features [B, C, H, W].
        group: the largest group size (>= 1).

    Returns:
        [B, C + 1, H, W], x's dtype; channel C is the group's standard deviation (>= 0).
    """
    b, c, h, w = x.shape
    g = max(d for d in range(1, min(group, b) + 1) if b % d == 0)
    y = x.float().reshape(g, b // g, c, h, w)
    std = (y - y.mean(dim=0)).square().mean(dim=0).add(1e-8).sqrt().mean(dim=(1, 2, 3))  # [B // g]
    return torch.cat([x, std.repeat(g).to(x.dtype).view(b, 1, 1, 1).expand(b, 1, h, w)], dim=1)


class Discriminator(nn.Module):
    """(image [B, 3, H, W], embedding [B, E]) → (score [B], identity logits [B, n_identities]).

    Spectral-normalised strided 4×4 convolutions; the score is
    ``psi(h) + <W e, h>`` (projection discriminator, Miyato & Koyama 2018);
    an auxiliary linear head classifies identity (AC-GAN, Odena et al. 2017). With
    ``model.d_twin_classifier`` a second identity head (:attr:`twin`) is trained on generated faces only
    (TAC-GAN, Gong et al. 2019); ``forward(..., twin=True)`` also returns its logits [B, n_identities].
    With ``model.d_minibatch_std`` = g the last convolution also sees :func:`minibatch_std` over groups of g
    images, so the scores of one call depend on the other images of its batch: score real and generated
    images in separate calls (the trainer does).
    With ``model.pose_code_dim`` = K > 0 the score gains ``<W_p c, h>`` for a pose code ``c`` [B, K + A]
    (:class:`training.landmarks.PoseCodes`, followed by the A = ``model.appearance_code_dim`` entries of
    :class:`training.appearance.AppearanceCodes`); ``W_p`` is an unnormalised linear map initialised to zero, so
    a discriminator grown from one without it (or with fewer code entries) scores exactly as before until
    training moves it.
    ``features`` and ``score`` split the forward pass so one image batch can be scored against several
    conditionings.
    """

    def __init__(self, model: ModelConfig, n_identities: int) -> None:
        super().__init__()
        n_down = int(math.log2(model.image_size // 4))
        chans = [3] + [model.d_channels * (2**i) for i in range(n_down)]
        layers: list[nn.Module] = []
        for cin, cout in zip(chans[:-1], chans[1:]):
            layers += [spectral_norm(nn.Conv2d(cin, cout, 4, stride=2, padding=1)), nn.LeakyReLU(0.2)]
        self.minibatch_std = int(model.d_minibatch_std)
        extra = 1 if self.minibatch_std else 0
        layers += [spectral_norm(nn.Conv2d(chans[-1] + extra, chans[-1], 3, padding=1)), nn.LeakyReLU(0.2)]
        self.body = nn.Sequential(*layers)
        width = chans[-1]
        self.psi = spectral_norm(nn.Linear(width, 1))
        self.embed = spectral_norm(nn.Linear(model.embedding_dim, width))
        self.classifier = spectral_norm(nn.Linear(width, max(1, n_identities)))
        self.twin = spectral_norm(nn.Linear(width, max(1, n_identities))) if model.d_twin_classifier else None
        self.pose_embed: nn.Linear | None = None
        if model.code_dim:
            self.pose_embed = nn.Linear(model.code_dim, width, bias=False)
            nn.init.zeros_(self.pose_embed.weight)

    def features(self, image: torch.Tensor) -> torch.Tensor:
        """Pooled features h [B, C] of images [B, 3, H, W] (what :meth:`score` and the heads read)."""
        h = self.body[:-2](image)
        if self.minibatch_std:
            h = minibatch_std(h, self.minibatch_std)
        return self.body[-2:](h).sum(dim=(2, 3))

    def score(self, h: torch.Tensor, embedding: torch.Tensor, pose: torch.Tensor | None = None) -> torch.Tensor:
        """Projection score [B] of features h [B, C] for speech embeddings [B, E] and pose codes [B, K] (or None).

        Raises:
            ValueError: a pose code given to a discriminator without the pose projection.
        """
        score = self.psi(h).squeeze(1) + (self.embed(embedding) * h).sum(dim=1)
        if pose is not None:
            if self.pose_embed is None:
                raise ValueError("this discriminator has no pose projection (model.pose_code_dim: 0)")
            score = score + (self.pose_embed(pose.to(h.dtype)) * h).sum(dim=1)
        return score

    def forward(
        self, image: torch.Tensor, embedding: torch.Tensor, twin: bool = False, pose: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, ...]:
        """(score [B], identity logits [B, K]) -- plus the twin head's logits [B, K] when ``twin``.

        ``pose``: pose codes float [B, pose_code_dim + appearance_code_dim] or None (no pose term).

        Raises:
            ValueError: ``twin`` asked of a discriminator built without the twin head, or ``pose`` of one
                without the pose projection.
        """
        h = self.features(image)
        score = self.score(h, embedding, pose)
        if not twin:
            return score, self.classifier(h)
        if self.twin is None:
            raise ValueError("this discriminator has no twin classifier (model.d_twin_classifier: false)")
        return score, self.classifier(h), self.twin(h)


class Wav2PixGenerator(nn.Module):
    """Speech encoder + generator + speech identity head: everything the G optimiser trains.

    forward(audio [B, S], noise [B, Z]) → image [B, 3, H, W] in [-1, 1].
    """

    def __init__(self, audio: AudioConfig, model: ModelConfig, n_identities: int) -> None:
        super().__init__()
        self.encoder = SpeechEncoder(audio, model)
        self.generator = Generator(model)
        self.speech_classifier = nn.Linear(model.embedding_dim, max(1, n_identities))

    def forward(self, audio: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        return self.generator(self.encoder(audio), noise)


class PoseCodePrior(nn.Module):
    """Standard-normal noise → a pose code with the training faces' own distribution, inside the graph.

    The pose code (:class:`training.landmarks.PoseCodes`) has mean 0 and standard deviation 1 per component and
    identity, but it is not normal, and its shape differs between identities: on the Wav2Pix faces yaw is skewed
    (most faces look ahead, turns go mostly one way; skew 3.1 for one speaker, 1.8 for the other, whose turns
    reach twice as far), and one speaker's yaw and mouth components correlate (r = -0.46). A standard-normal draw
    asks for turns no real face made. This module samples the real codes by the inverse-transform method inside
    a Gaussian copula (Nelsen, "An Introduction to Copulas", 2006, ch. 2.3):

    - ``u = L_i z``: the first K noise inputs ``z`` correlated by the Cholesky factor ``L_i`` of the normal
      scores' correlation of identity i (the identity matrix for a marginal-only prior);
    - ``c_i,k = F_i,k^-1(Phi(u_k))``: each component through the marginal quantile transform (``F_i,k``: the
      empirical distribution of component k of identity i's training codes; ``Phi``: the standard-normal CDF),
      piecewise linear between Q knots at ``z = linspace(-z_max, z_max, Q)`` and constant beyond them, so it is
      monotone and never leaves the range of the real codes;
    - ``c = sum_i w_i c_i``: with I > 1 identities, weighted by the speech identity posterior ``w`` float [B, I]
      (softmax of the speech identity head, :class:`Wav2PixInference` passes it). For a confident voice this is
      the speaker's own prior; for an unknown voice, per component, the 1-D Wasserstein barycentre of the
      identities' marginals (the weighted mean of their quantile functions; Agueh & Carlier, SIAM J. Math.
      Anal. 2011).

    Inputs K.. pass unchanged. Built from MatMul, ReLU, Min and sums, it exports to ONNX and TensorRT as it is.

    forward(noise float32 [B, Z], weights float32 [B, I] or None) → float32 [B, Z]. ``weights`` may be None
    only when I == 1.

    Buffers: ``z`` float32 [Q] knots (standard-normal units); ``values`` float32 [I, K, Q] code values there;
    ``mixing`` float32 [I, K, K] lower-triangular copula factors.

    Raises:
        ValueError: (constructor) values not [K, Q] / [I, K, Q] with Q >= 2, non-finite or decreasing along the
            knots, mixing of the wrong shape, z_max <= 0; (forward) weights missing or of the wrong shape.
    """

    def __init__(self, values: torch.Tensor, z_max: float = 3.0, mixing: torch.Tensor | None = None) -> None:
        super().__init__()
        values = torch.as_tensor(values, dtype=torch.float32)
        if values.ndim == 2:
            values = values[None]
        if values.ndim != 3 or values.shape[2] < 2:
            raise ValueError(f"values: expected float [K, Q>=2] or [I, K, Q>=2], got {list(values.shape)}")
        if not torch.isfinite(values).all() or (values.diff(dim=2) < 0).any():
            raise ValueError("values: expected finite codes, non-decreasing along the knots")
        if not z_max > 0:
            raise ValueError(f"z_max: expected > 0, got {z_max}")
        n_id, k, _ = values.shape
        if mixing is None:
            mixing = torch.eye(k).expand(n_id, k, k)
        mixing = torch.as_tensor(mixing, dtype=torch.float32).contiguous()
        if mixing.shape != (n_id, k, k) or not torch.isfinite(mixing).all():
            raise ValueError(f"mixing: expected finite float [{n_id}, {k}, {k}], got {list(mixing.shape)}")
        z = torch.linspace(-z_max, z_max, values.shape[2])
        self.register_buffer("z", z)
        self.register_buffer("values", values)
        self.register_buffer("mixing", mixing)
        # derived from the buffers above: in the graph as constants, not in the state dict
        self.register_buffer("width", z.diff(), persistent=False)
        self.register_buffer("slope", values.diff(dim=2) / z.diff(), persistent=False)
        # u[b, i*K + j] = sum_k z[b, k] mixing[i, j, k]: one MatMul for all identities
        self.register_buffer("mixing_t", mixing.permute(2, 0, 1).reshape(k, n_id * k), persistent=False)
        self.correlated = bool((mixing - torch.eye(k)).abs().max() > 0)
        self.conditional = False  # reads no speech embedding: ``embedding`` in forward is ignored

    @classmethod
    def from_codes(
        cls,
        codes: np.ndarray,
        labels: np.ndarray | None = None,
        knots: int = 49,
        z_max: float = 3.0,
        copula: bool = False,
        shrinkage: float = 20.0,
    ) -> PoseCodePrior:
        """The prior of real faces' pose codes float [N, K] (rows of training faces only).

        ``labels`` int [N] in 0..I-1 (the identities the speech identity head predicts) gives one prior per
        identity, each shrunk towards the pooled one with weight ``n_i / (n_i + shrinkage)`` (quantiles and
        correlations alike), so an identity with few faces borrows the others' shape; None gives one pooled
        prior. ``copula``: also keep the components' correlation (Gaussian copula of the normal scores, the
        ``Phi^-1`` of the codes' ranks); otherwise the components are drawn independently.

        Raises:
            ValueError: fewer than 2 codes (overall, or for any identity), non-finite codes, labels of another
                length or negative, ``knots`` < 2, or ``shrinkage`` < 0.
        """
        from statistics import NormalDist

        codes = np.asarray(codes, np.float64)
        if codes.ndim != 2 or len(codes) < 2 or not np.isfinite(codes).all():
            raise ValueError(f"codes: expected finite float [N>=2, K], got {list(codes.shape)}")
        if knots < 2:
            raise ValueError(f"knots: expected >= 2, got {knots}")
        if shrinkage < 0:
            raise ValueError(f"shrinkage: expected >= 0, got {shrinkage}")
        normal = NormalDist()
        probs = [normal.cdf(float(z)) for z in np.linspace(-z_max, z_max, knots)]

        def fit(c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            values = np.quantile(c, probs, axis=0).T  # [K, Q]
            if not copula or c.shape[1] == 1:
                return values, np.eye(c.shape[1])
            ranks = (np.argsort(np.argsort(c, axis=0), axis=0) + 0.5) / len(c)
            scores = np.vectorize(normal.inv_cdf)(ranks)
            return values, np.corrcoef(scores.T)

        pooled_values, pooled_corr = fit(codes)
        if labels is None:
            groups = [(pooled_values, pooled_corr)]
        else:
            labels = np.asarray(labels)
            if labels.shape != (len(codes),) or (labels < 0).any():
                raise ValueError(f"labels: expected int [{len(codes)}] >= 0, got {list(labels.shape)}")
            counts = np.bincount(labels)
            if (counts < 2).any():
                raise ValueError(f"labels: identities {np.flatnonzero(counts < 2).tolist()} have fewer than 2 codes")
            groups = []
            for i, n in enumerate(counts):
                values, corr = fit(codes[labels == i])
                w = n / (n + shrinkage)
                groups.append((w * values + (1 - w) * pooled_values, w * corr + (1 - w) * pooled_corr))
        values = np.stack([np.maximum.accumulate(v, axis=1) for v, _ in groups])
        # a tiny ridge keeps the factor defined for (near-)collinear components
        mixing = np.stack([np.linalg.cholesky(c + 1e-6 * np.eye(len(c))) for _, c in groups])
        mixing /= np.sqrt((mixing**2).sum(axis=2, keepdims=True))  # unit-variance rows: a correlation again
        return cls(torch.from_numpy(values.astype(np.float32)), z_max, torch.from_numpy(mixing.astype(np.float32)))

    @classmethod
    def from_state_dict(cls, state: dict[str, torch.Tensor]) -> PoseCodePrior:
        """Rebuild from :meth:`state_dict` (``z`` [Q], ``values`` [K, Q] or [I, K, Q], ``mixing`` [I, K, K]
        when saved; a state without it is the marginal-only prior of earlier bundles).

        Raises:
            ValueError: missing tensors, or knots that are not ``linspace(-z_max, z_max, Q)``.
        """
        if "z" not in state or "values" not in state:
            raise ValueError(f"pose prior: expected tensors 'z' and 'values', got {sorted(state)}")
        z = torch.as_tensor(state["z"], dtype=torch.float32)
        prior = cls(state["values"], float(z[-1]), state.get("mixing"))
        if prior.z.shape != z.shape or not torch.allclose(prior.z, z, atol=1e-6):
            raise ValueError("pose prior: knots 'z' are not evenly spaced over [-z_max, z_max]")
        return prior

    @property
    def code_dim(self) -> int:
        """K, the number of noise inputs mapped."""
        return int(self.values.shape[1])

    @property
    def n_identities(self) -> int:
        """I, the number of per-identity priors (1: one prior for every voice)."""
        return int(self.values.shape[0])

    @property
    def kind(self) -> str:
        """The bundle manifest's name for this prior (:data:`training.config.POSE_PRIORS`)."""
        if self.n_identities > 1:
            return "speaker"
        return "copula" if self.correlated else "quantile"

    def forward(
        self, noise: torch.Tensor, weights: torch.Tensor | None = None, embedding: torch.Tensor | None = None
    ) -> torch.Tensor:
        k, n_id = self.code_dim, self.n_identities
        if n_id > 1 and (weights is None or weights.shape != (noise.shape[0], n_id)):
            got = None if weights is None else list(weights.shape)
            raise ValueError(f"pose prior: expected identity weights [{noise.shape[0]}, {n_id}], got {got}")
        if self.correlated:
            u = (noise[:, :k] @ self.mixing_t).reshape(-1, n_id, k)
        else:  # no MatMul or copies in the graph where the factors are identities
            u = noise[:, None, :k] if n_id == 1 else noise[:, None, :k].expand(-1, n_id, k)
        steps = torch.minimum(F.relu(u[..., None] - self.z[:-1]), self.width)  # [B, I, K, Q-1]
        code = self.values[:, :, 0] + (steps * self.slope).sum(dim=-1)  # [B, I, K]
        code = code[:, 0] if n_id == 1 else (code * weights[:, :, None]).sum(dim=1)
        return torch.cat([code, noise[:, k:]], dim=1)


CANDIDATES = 128  # NeighbourPosePrior: rows the cheap expanded distance keeps for the exact one (at least 8 k)


class NeighbourPosePrior(nn.Module):
    """Speech → pose code by retrieval: the code of a training face whose speech sounded like this voice.

    Why: on the Wav2Pix data the voice says something about the pose. The speech embedding predicts the yaw
    component with held-out R^2 0.17-0.27 (the speakers turn towards and away from the microphone, and the
    room sound changes with it), so drawing the code independently of the voice, as :class:`PoseCodePrior` does,
    throws that away. This prior is a k-nearest-neighbour conditional density (Fix & Hodges 1951; as a sampler,
    the retrieval step of instance-conditioned generation, Casanova et al., "Instance-Conditioned GAN", NeurIPS
    2021): a bank holds the speech embeddings of the N training pairs and the codes of their faces; for a voice
    with embedding ``e`` the graph finds the k bank embeddings nearest to ``e`` (squared Euclidean distance)
    and takes the code of the j-th of them, ``j = floor(k * Phi(noise[:, 0]))`` (``Phi``: the standard-normal
    CDF), so standard-normal noise picks uniformly among the neighbours and a fixed seed gives a fixed pose.
    The codes drawn are real faces' codes, whole (pose and appearance entries together), and never leave their
    range whatever the voice.

    With a ``projection`` [E, D] and ``center`` [E] (:meth:`from_embeddings` keeps the principal components
    that hold all but 1e-5 of the bank's variance: 45 of 128 for the default model, whose speech embeddings
    are nearly low-rank, 8 components holding 99.8 %) the distances are taken in those D coordinates,
    ``(e - center) @ projection``, which keeps the neighbours and makes the bank smaller and the search
    cheaper. Without one the bank is centred on its mean and the projection is the identity.

    FP16 (TensorRT builds with FP16 where the GPU has it): the constructor divides the bank and the projection
    by the bank rows' RMS norm, so squared distances are O(1) (the default model's raw embeddings have norms
    near 570, squares near 3e5, beyond FP16's 65504: every distance overflowed to inf). The search has two stages:
    the expanded form ``|b|^2 - 2 e.b`` (one MatMul) keeps the M = max(128, 8k) nearest candidates, and their
    squared distances are then summed from the differences ``e - b``, because the expansion's cancellation in
    FP16 reorders near neighbours (FP16 emulated on CPU, default model, 555 validation voices: 99.6 % of the 16
    nearest kept, as by the exact distances to the whole bank; 98.9 % with M = 64; the expansion alone kept 77 %
    on a synthetic bank). In FP32 both stages find the neighbours the plain search finds; the exact one costs
    B x M x D products instead of B x N x D (side by side on ONNX Runtime CPU, the whole-bank exact search cost
    8 % more per call at batch 1 than the expansion alone; the two stages cost nothing measurable).

    Noise inputs 0..K-1 are replaced by the code (input 0 chose it); inputs K.. pass unchanged. Built from
    MatMul, Sub, ReduceSum, TopK, Erf, Floor, Gather and GatherElements, it exports to ONNX (opset 18) and
    TensorRT.

    forward(noise float32 [B, Z], weights ignored, embedding float32 [B, E]) → float32 [B, Z].

    Buffers: ``bank_embeddings`` float32 [N, D]; ``bank_codes`` float32 [N, K]; ``neighbours`` int64 [] (k);
    ``bank_projection`` float32 [E, D] (D = E, a scaled identity, without a projection), ``bank_center`` [E].

    Raises:
        ValueError: (constructor) mismatched or non-finite bank tensors, a projection of the wrong shape, or k
            outside 1..N; (forward) a missing embedding or one of another width.
    """

    conditional = True
    n_identities = 1
    kind = "neighbours"

    def __init__(
        self,
        bank_embeddings: torch.Tensor,
        bank_codes: torch.Tensor,
        neighbours: int = 16,
        projection: torch.Tensor | None = None,
        center: torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        emb = torch.as_tensor(bank_embeddings, dtype=torch.float32).contiguous()
        codes = torch.as_tensor(bank_codes, dtype=torch.float32).contiguous()
        if emb.ndim != 2 or codes.ndim != 2 or len(emb) != len(codes) or len(emb) == 0:
            raise ValueError(
                f"bank: expected embeddings [N, E] and codes [N, K], got {list(emb.shape)}, {list(codes.shape)}"
            )
        if not (torch.isfinite(emb).all() and torch.isfinite(codes).all()):
            raise ValueError("bank: expected finite embeddings and codes")
        k = int(neighbours)
        if not 1 <= k <= len(emb):
            raise ValueError(f"neighbours: expected 1..{len(emb)} (the bank's size), got {neighbours}")
        if projection is None:  # search the embeddings themselves, centred (distances do not change)
            center_ = emb.mean(dim=0) if center is None else torch.as_tensor(center, dtype=torch.float32)
            proj = torch.eye(emb.shape[1])
            emb = emb - center_
        else:
            proj = torch.as_tensor(projection, dtype=torch.float32).contiguous()
            center_ = torch.zeros(proj.shape[0]) if center is None else torch.as_tensor(center, dtype=torch.float32)
            if proj.ndim != 2 or proj.shape[1] != emb.shape[1] or center_.shape != (proj.shape[0],):
                raise ValueError(
                    f"projection: expected [E, {emb.shape[1]}] and center [E], got {list(proj.shape)}, "
                    f"{list(center_.shape)}"
                )
        # unit RMS norm of the bank's rows, folded into the projection: squared distances stay O(1), inside FP16's
        # range (speech embeddings of the default model have norms near 570, squares near 3e5 > 65504)
        scale = float(emb.square().sum(dim=1).mean().sqrt())
        if scale > 0 and abs(scale - 1.0) > 1e-3:
            emb, proj = emb / scale, proj / scale
        self.register_buffer("bank_embeddings", emb.contiguous())
        self.register_buffer("bank_codes", codes)
        self.register_buffer("neighbours", torch.tensor(k, dtype=torch.int64))
        self.register_buffer("bank_projection", proj.contiguous())
        self.register_buffer("bank_center", center_.contiguous())
        self.register_buffer("bank_sq", emb.square().sum(dim=1), persistent=False)  # ||b||^2 [N]
        self.k = k
        self.candidates = min(len(emb), max(8 * k, CANDIDATES))

    @classmethod
    def from_embeddings(
        cls, embeddings: torch.Tensor, codes: torch.Tensor, neighbours: int = 16, keep_variance: float = 1 - 1e-5
    ) -> NeighbourPosePrior:
        """A bank of speech embeddings float [N, E] and codes float [N, K], searched in the leading principal
        components of the embeddings that hold ``keep_variance`` of their variance (all E when that takes E).

        Raises:
            ValueError: as the constructor, or ``keep_variance`` outside (0, 1].
        """
        if not 0 < keep_variance <= 1:
            raise ValueError(f"keep_variance: expected in (0, 1], got {keep_variance}")
        emb = torch.as_tensor(embeddings, dtype=torch.float64)
        center = emb.mean(dim=0)
        _, sv, vt = torch.linalg.svd(emb - center, full_matrices=False)
        share = (sv**2).cumsum(0) / (sv**2).sum().clamp_min(1e-30)
        d = min(int((share < keep_variance).sum()) + 1, emb.shape[1])
        if d >= emb.shape[1]:
            return cls(embeddings, codes, neighbours)
        proj = vt[:d].T  # [E, D]
        return cls(((emb - center) @ proj).float(), codes, neighbours, proj.float(), center.float())

    @classmethod
    def from_state_dict(cls, state: dict[str, torch.Tensor]) -> NeighbourPosePrior:
        """Rebuild from :meth:`state_dict`. Raises ValueError on missing or invalid tensors."""
        missing = {"bank_embeddings", "bank_codes", "neighbours"} - set(state)
        if missing:
            raise ValueError(f"neighbour pose prior: missing tensors {sorted(missing)}")
        return cls(
            state["bank_embeddings"],
            state["bank_codes"],
            int(state["neighbours"]),
            state.get("bank_projection"),
            state.get("bank_center"),
        )

    @property
    def code_dim(self) -> int:
        """K, the number of noise inputs replaced."""
        return int(self.bank_codes.shape[1])

    @property
    def embedding_dim(self) -> int:
        """E, the speech embedding width the prior reads."""
        return int(self.bank_projection.shape[0])

    @property
    def projected(self) -> bool:
        """Whether the search runs in a subspace (D < E) of the speech embedding."""
        return int(self.bank_projection.shape[1]) < int(self.bank_projection.shape[0])

    def forward(
        self, noise: torch.Tensor, weights: torch.Tensor | None = None, embedding: torch.Tensor | None = None
    ) -> torch.Tensor:
        if embedding is None or embedding.shape != (noise.shape[0], self.embedding_dim):
            got = None if embedding is None else list(embedding.shape)
            raise ValueError(
                f"pose prior: expected speech embeddings [{noise.shape[0]}, {self.embedding_dim}], got {got}"
            )
        e = (embedding.to(self.bank_embeddings.dtype) - self.bank_center) @ self.bank_projection  # [B, D]
        # coarse: ||b||^2 - 2 e.b ranks like the squared distance (||e||^2 is constant per row), one MatMul
        coarse = self.bank_sq - 2.0 * (e @ self.bank_embeddings.T)  # [B, N]
        _, cand = torch.topk(coarse, self.candidates, dim=1, largest=False, sorted=False)  # [B, M]
        # exact: squared distances from the differences, which FP16 keeps (the expansion's cancellation does not)
        fine = (e[:, None, :] - self.bank_embeddings[cand]).square().sum(dim=2)  # [B, M]
        _, order = torch.topk(fine, self.k, dim=1, largest=False, sorted=True)  # [B, k]
        nearest = torch.gather(cand, 1, order)  # [B, k] bank rows, nearest first
        u = 0.5 * (1.0 + torch.erf(noise[:, :1] * 0.7071067811865476))  # Phi(z0) in [0, 1]
        j = torch.clamp(torch.floor(u * self.k), max=self.k - 1).long()  # [B, 1]
        pick = torch.gather(nearest, 1, j).squeeze(1)  # [B]
        code = self.bank_codes[pick]  # [B, K]
        return torch.cat([code, noise[:, self.code_dim :]], dim=1)


def pose_prior_from_state_dict(state: dict[str, torch.Tensor]) -> PoseCodePrior | NeighbourPosePrior:
    """A bundle's pose prior from its tensors: :class:`NeighbourPosePrior` when they hold a bank, else
    :class:`PoseCodePrior`. Raises ValueError on invalid tensors."""
    if "bank_codes" in state:
        return NeighbourPosePrior.from_state_dict(state)
    return PoseCodePrior.from_state_dict(state)


class Wav2PixInference(nn.Module):
    """The exported inference graph.

    Inputs: ``audio`` float32 [B, S] raw samples in [-1, 1] at the bundle's
    sample rate (S = window samples, 16 000 for 1 s at 16 kHz); ``noise``
    float32 [B, Z] standard normal. Output: ``image`` float32 [B, 3, H, W] in [-1, 1].

    ``truncation`` (psi) scales the noise inside the graph before the generator: the
    truncation trick (Brock et al., "Large Scale GAN Training for High Fidelity Natural
    Image Synthesis", ICLR 2019) trades variety for fidelity; 1.0 = no truncation. Callers
    always feed standard-normal noise; the bundle records psi.

    ``pose_prior`` (a :class:`PoseCodePrior`, for generators with ``model.pose_code_dim`` > 0) then maps the
    first K noise inputs to pose codes distributed like the training faces' codes; a per-identity prior
    (``n_identities`` > 1) is weighted by the speech identity head's softmax over the speech embedding, so the
    graph also holds ``net.speech_classifier``; a :class:`NeighbourPosePrior` reads the speech embedding and
    picks a training face's code with the first noise input.

    Raises:
        ValueError: psi outside (0, 2], a per-identity prior whose identities are not the speech identity
            head's, or a neighbour bank of another embedding width.
    """

    def __init__(
        self,
        net: Wav2PixGenerator,
        truncation: float = 1.0,
        pose_prior: PoseCodePrior | NeighbourPosePrior | None = None,
    ) -> None:
        super().__init__()
        if not 0.0 < truncation <= 2.0:
            raise ValueError(f"truncation: expected 0 < psi <= 2, got {truncation}")
        self.encoder = net.encoder
        self.generator = net.generator
        self.truncation = float(truncation)
        self.pose_prior = pose_prior
        self.speech_classifier = None
        if pose_prior is not None and pose_prior.n_identities > 1:
            n_id = net.speech_classifier.out_features
            if n_id != pose_prior.n_identities:
                raise ValueError(
                    f"pose prior: {pose_prior.n_identities} identity priors for a speech identity head of {n_id}"
                )
            self.speech_classifier = net.speech_classifier
        if pose_prior is not None and pose_prior.conditional:
            width = net.speech_classifier.in_features
            if pose_prior.embedding_dim != width:
                raise ValueError(
                    f"pose prior: a bank of {pose_prior.embedding_dim}-d speech embeddings for an encoder of {width}"
                )

    def forward(self, audio: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        if self.truncation != 1.0:
            noise = noise * self.truncation
        embedding = self.encoder(audio)
        if self.pose_prior is not None:
            weights = None
            if self.speech_classifier is not None:
                weights = torch.softmax(self.speech_classifier(embedding).float(), dim=1)
            noise = self.pose_prior(noise, weights, embedding)
        return self.generator(embedding, noise)


def _layer_chain(gen: Generator) -> list[nn.Module]:
    """The generator's weight layers in order: seed linear layer, block convolutions, to-RGB convolution."""
    return [gen.fc, *[m for m in gen.blocks if isinstance(m, nn.Conv2d)], gen.to_rgb]


def _stage_widths(gen: Generator) -> list[int]:
    """Feature channels after each layer of :func:`_layer_chain` except the last (seed, then each block)."""
    return [gen.c0] + [m.out_channels for m in gen.blocks if isinstance(m, nn.Conv2d)]


def _assign(layer: nn.Module, weight: torch.Tensor, bias: torch.Tensor) -> None:
    """Make ``layer`` compute ``(weight @ x + bias) / s`` for some s > 0 (s = 1 without spectral norm).

    With spectral normalisation the effective weight is ``original / sigma(original)``; storing ``weight``
    as the original, its exact top singular vectors as the power-iteration state and ``bias / sigma`` gives
    the stated output with s = sigma(weight). Every spectrally normalised generator layer is followed by a
    pixel norm, which is invariant to that positive scale.
    """
    if parametrize.is_parametrized(layer, "weight"):
        sn = layer.parametrizations.weight[0]
        u, s, vh = torch.linalg.svd(weight.reshape(weight.shape[0], -1).double(), full_matrices=False)
        layer.parametrizations.weight.original.copy_(weight)
        sn._u.copy_(u[:, 0].to(sn._u.dtype))
        sn._v.copy_(vh[0].to(sn._v.dtype))
        layer.bias.copy_(bias / s[0].to(bias.dtype))
    else:
        layer.weight.copy_(weight)
        layer.bias.copy_(bias)


@torch.no_grad()
def widen_from(new: Wav2PixGenerator, old: Wav2PixGenerator, noise_std: float = 0.01, seed: int = 0) -> None:
    """Initialise ``new`` from a trained ``old`` whose generator is narrower (Net2WiderNet).

    After Chen, Goodfellow & Shlens, "Net2Net: Accelerating Learning via Knowledge Transfer" (ICLR 2016):
    every generator stage whose width grows by an integer factor r repeats each old feature channel r
    times (channel j of the new stage copies old channel ``j % old_width``) and the next layer divides
    the weights that read those channels by r, so the widened generator computes the old function. The
    pixel norm after each convolution averages x² over channels, and r equal copies leave that mean
    unchanged, which is why the factor must be an integer. The copies' incoming weights get Gaussian
    noise of ``noise_std`` times that layer's weight standard deviation so that they train apart
    (``noise_std=0`` gives the old images to float rounding). Everything outside the generator's
    convolution chain (speech encoder, identity head) must have the same shapes and is copied. Where no
    stage grows, ``old``'s state (spectral-norm vectors included) is copied exactly and no noise is added.

    Args:
        new: freshly built model with the wider config, any mode; updated in place.
        old: the trained model (its spectral-norm state is read in eval mode, as at inference).
        noise_std: relative noise on the copies' incoming weights (>= 0).
        seed: seed of that noise (use the same for the trained weights and their moving average).

    Raises:
        ValueError: a stage that narrows or grows by a non-integer factor, a different number of
            stages, or any other parameter whose shape differs.
    """
    if noise_std < 0:
        raise ValueError(f"noise_std: expected >= 0, got {noise_std}")
    old_state, new_state = old.state_dict(), new.state_dict()
    if old_state.keys() == new_state.keys() and all(new_state[k].shape == v.shape for k, v in old_state.items()):
        new.load_state_dict(old_state)  # the same widths: the exact weights
        return
    was_training = old.training
    old.eval()
    try:
        w_old, w_new = _stage_widths(old.generator), _stage_widths(new.generator)
        if len(w_old) != len(w_new):
            raise ValueError(f"generator stages: checkpoint has {len(w_old)}, config has {len(w_new)}")
        maps, ratios = [], []
        for i, (a, b) in enumerate(zip(w_old, w_new)):
            if b < a or b % a:
                raise ValueError(f"generator stage {i}: {a} -> {b} channels; widening needs an integer factor >= 1")
            maps.append(torch.arange(b) % a)
            ratios.append(b // a)
        chain_old, chain_new = _layer_chain(old.generator), _layer_chain(new.generator)
        chain_ids = {id(m) for m in chain_new}
        # everything else: same shapes, copied
        prefixes = [n for n, m in new.named_modules() if id(m) in chain_ids]
        old_state = old.state_dict()
        for name, value in new.state_dict().items():
            if any(name.startswith(p + ".") for p in prefixes):
                continue
            if name not in old_state or old_state[name].shape != value.shape:
                got = tuple(old_state[name].shape) if name in old_state else "missing"
                raise ValueError(f"{name}: checkpoint has {got}, config needs {tuple(value.shape)}")
            value.copy_(old_state[name])
        gen = torch.Generator().manual_seed(seed)
        for i, (lo, ln) in enumerate(zip(chain_old, chain_new)):
            w, b = lo.weight.detach().clone(), lo.bias.detach().clone()
            if i > 0:  # input channels: the previous stage's copies share each old weight
                w = w[:, maps[i - 1]] / ratios[i - 1]
            if i < len(maps):  # output channels of stage i
                if i == 0:  # the seed layer's rows are (channel, 4x4 position)
                    k = w.shape[0] // w_old[0]
                    w = w.view(w_old[0], k, -1)[maps[0]].reshape(-1, w.shape[1])
                    b = b.view(w_old[0], k)[maps[0]].reshape(-1)
                    copies = (torch.arange(w_new[0]) >= w_old[0]).repeat_interleave(k)
                else:
                    w, b = w[maps[i]], b[maps[i]]
                    copies = torch.arange(w_new[i]) >= w_old[i]
                if noise_std > 0 and copies.any():
                    noise = torch.randn(w[copies].shape, generator=gen) * (noise_std * float(w.std()))
                    w[copies] += noise.to(w.dtype)
            _assign(ln, w.contiguous(), b.contiguous())
    finally:
        old.train(was_training)


def zero_extend(value: torch.Tensor, shape: torch.Size | tuple[int, ...]) -> torch.Tensor:
    """``value`` zero-padded at the end of its input dimension to ``shape`` (dim 1 of a weight, dim 0 of a vector).

    Raises:
        ValueError: the shapes differ anywhere else, or ``shape`` is smaller.
    """
    shape = tuple(shape)
    dim = 1 if value.ndim > 1 else 0
    same = [d for d in range(value.ndim) if d != dim]
    if len(shape) != value.ndim or any(shape[d] != value.shape[d] for d in same) or shape[dim] < value.shape[dim]:
        raise ValueError(f"cannot zero-extend {tuple(value.shape)} to {shape}")
    pad = list(shape)
    pad[dim] = shape[dim] - value.shape[dim]
    return torch.cat([value, value.new_zeros(pad)], dim=dim)


def discriminator_state_from(new: Discriminator, old_state: dict[str, torch.Tensor]) -> tuple[dict, list[str]]:
    """Another run's discriminator state for ``new``; returns (state, names of the zero-extended entries).

    Tensors of the same shape are taken as they are. Where ``new`` adds the minibatch standard-deviation
    channel (``model.d_minibatch_std``) that ``old_state`` lacks, its last convolution gets zero weights on
    that input channel and its spectral-norm vector ``v`` zeros there too (the flattened weight only gains zero
    columns, so sigma and ``u`` stay exact): the extended discriminator scores every batch exactly as the old one
    until training moves the new weights (Net2Net-style function-preserving growth, Chen et al., ICLR 2016).
    A pose projection (``model.pose_code_dim``) that ``old_state`` lacks keeps its zero initialisation (listed
    as extended), and one that gains code entries (``model.appearance_code_dim``) gets zero columns for them:
    both leave every score unchanged.

    Raises:
        ValueError: a tensor missing from ``old_state`` or of a shape that cannot be mapped (the message names it).
    """
    last = f"body.{len(new.body) - 2}."
    state, extended = {}, []
    for name, value in new.state_dict().items():
        if name not in old_state and name.startswith("pose_embed.") and new.pose_embed is not None:
            state[name] = value.detach().clone()
            extended.append(name)
            continue
        if name not in old_state:
            raise ValueError(f"{name}: missing from the checkpoint's discriminator")
        old = old_state[name]
        if old.shape == value.shape:
            state[name] = old
            continue
        if not ((new.minibatch_std and name.startswith(last)) or name == "pose_embed.weight"):
            raise ValueError(f"{name}: checkpoint has {tuple(old.shape)}, config needs {tuple(value.shape)}")
        try:
            state[name] = zero_extend(old, value.shape)
        except ValueError as exc:
            raise ValueError(f"{name}: {exc}") from exc
        extended.append(name)
    return state, extended


def build(audio: AudioConfig, model: ModelConfig, n_identities: int) -> tuple[Wav2PixGenerator, Discriminator]:
    """Build the trainable (generator side, discriminator) pair for ``n_identities`` identities."""
    return Wav2PixGenerator(audio, model, n_identities), Discriminator(model, n_identities)
