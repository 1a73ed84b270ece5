"""Networks of the wav2pix family: speech encoder, generator, discriminator.

After Duarte et al., "Wav2Pix: Speech-conditioned Face Generation using Generative Adversarial Networks"
(ICASSP 2019) and its predecessor by Roldán (2018):

* :class:`SpeechEncoder` — raw waveform → embedding, through a log-mel front end inside the graph
  (``front_end='mel'``) or SEGAN-discriminator-style strided 1-D convolutions (``'raw'``, Pascual et al. 2017).
  Amplitude normalisation and pre-emphasis are part of the module, so every backend computes the same features.
* :class:`Generator` — embedding + noise → image in [-1, 1]; spectral normalisation (Miyato et al. 2018) and
  pixel-wise feature normalisation (Karras et al. 2018, batch-independent, so batch 1 equals batch 32).
* :class:`Discriminator` — spectral-normalised convolutions, projection of the speech embedding (Miyato &
  Koyama 2018) and of the pose code, and an auxiliary identity classifier (Odena et al. 2017, AC-GAN).
* :class:`Wav2PixGenerator` — encoder + generator + speech identity head: everything the generator's
  optimiser trains, and what the moving average copies.
* :func:`widen_from` — Net2WiderNet growth of a trained generator into a wider one.
* :func:`swap_red_blue` — exchange the generator's red and blue outputs (exactly) in place.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import spectral_norm

from training.config import AudioConfig
from training.families.wav2pix.config import ModelConfig
from training.layers import AudioPreprocess, LogMel, PixelNorm, channels, mel_encoder_body, sn


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
        self.preprocess = AudioPreprocess(audio)
        c = model.encoder_channels
        act = nn.LeakyReLU(0.2)
        if model.front_end == "mel":
            self.features: nn.Module = LogMel(model.n_fft, model.hop, model.n_mels, audio.sample_rate)
            self.body = mel_encoder_body(model.n_mels, c)
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


class Generator(nn.Module):
    """(embedding [B, E], noise [B, Z]) → image float32 [B, 3, H, W] in [-1, 1].

    A 4×4 seed from a linear layer, then log2(H/4) blocks of nearest ×2
    upsampling, 3×3 convolution, pixel norm and leaky ReLU; tanh output.
    """

    def __init__(self, model: ModelConfig) -> None:
        super().__init__()
        n_up = int(math.log2(model.image_size // 4))
        chans = channels(model.g_channels, n_up, model.g_min_channels)
        use_sn = model.spectral_norm_g
        self.c0 = chans[0]
        self.seed_norm = PixelNorm()
        self.fc = sn(nn.Linear(model.embedding_dim + model.noise_dim, 16 * chans[0]), use_sn)
        blocks: list[nn.Module] = []
        for cin, cout in zip(chans[:-1], chans[1:]):
            blocks += [
                nn.Upsample(scale_factor=2, mode="nearest"),
                sn(nn.Conv2d(cin, cout, 3, padding=1), use_sn),
                PixelNorm(),
                nn.LeakyReLU(0.2),
            ]
        self.blocks = nn.Sequential(*blocks)
        self.to_rgb = nn.Conv2d(chans[-1], 3, 3, padding=1)

    def forward(self, embedding: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        h = self.fc(torch.cat([embedding, noise], dim=1)).view(-1, self.c0, 4, 4)
        h = F.leaky_relu(self.seed_norm(h), 0.2)
        return torch.tanh(self.to_rgb(self.blocks(h)))


class Discriminator(nn.Module):
    """(image [B, 3, H, W], embedding [B, E], pose code [B, K] or None) → (score [B], identity logits [B, I]).

    Spectral-normalised strided 4×4 convolutions; the score is ``psi(h) + <W e, h>`` (projection discriminator,
    Miyato & Koyama 2018) plus ``<W_p c, h>`` for a pose code ``c`` when ``model.pose_code_dim`` = K > 0 (``W_p``
    is unnormalised and initialised to zero, so a discriminator grown from one without it scores exactly as
    before until training moves it); an auxiliary linear head classifies identity (AC-GAN, Odena et al. 2017).
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
        layers += [spectral_norm(nn.Conv2d(chans[-1], chans[-1], 3, padding=1)), nn.LeakyReLU(0.2)]
        self.body = nn.Sequential(*layers)
        width = chans[-1]
        self.psi = spectral_norm(nn.Linear(width, 1))
        self.embed = spectral_norm(nn.Linear(model.embedding_dim, width))
        self.classifier = spectral_norm(nn.Linear(width, max(1, n_identities)))
        self.pose_embed: nn.Linear | None = None
        if model.pose_code_dim:
            self.pose_embed = nn.Linear(model.pose_code_dim, width, bias=False)
            nn.init.zeros_(self.pose_embed.weight)

    def features(self, image: torch.Tensor) -> torch.Tensor:
        """Pooled features h [B, C] of images [B, 3, H, W] (what :meth:`score` and the classifier read)."""
        return self.body(image).sum(dim=(2, 3))

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
        self, image: torch.Tensor, embedding: torch.Tensor, pose: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(score [B], identity logits [B, I]) of images [B, 3, H, W], speech embeddings [B, E] and pose codes."""
        h = self.features(image)
        return self.score(h, embedding, pose), self.classifier(h)


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


@torch.no_grad()
def swap_red_blue(net: Wav2PixGenerator) -> Wav2PixGenerator:
    """Reverse the order of the generator's output channels in place (R, G, B <-> B, G, R): the to-RGB
    convolution's filters and biases are permuted, so the images are exactly those of before with red and blue
    exchanged (``tanh`` acts per channel). For generators trained on faces read with red and blue swapped (the
    Wav2Pix crops before the loader read each folder's channel order, ``datastore.images``). Returns ``net``."""
    conv = net.generator.to_rgb
    order = torch.tensor([2, 1, 0], device=conv.weight.device)
    conv.weight.copy_(conv.weight[order])
    conv.bias.copy_(conv.bias[order])
    return net


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


def discriminator_state_from(new: Discriminator, old_state: dict[str, torch.Tensor]) -> tuple[dict, list[str]]:
    """Another run's discriminator state for ``new``; returns (state, names of the entries that start afresh).

    Tensors of the same shape are taken as they are. A pose projection (``model.pose_code_dim``) that
    ``old_state`` lacks keeps its zero initialisation, which leaves every score unchanged (Net2Net-style
    function-preserving growth, Chen et al., ICLR 2016).

    Raises:
        ValueError: a tensor missing from ``old_state`` or of another shape (the message names it).
    """
    state, extended = {}, []
    for name, value in new.state_dict().items():
        if name not in old_state and name.startswith("pose_embed.") and new.pose_embed is not None:
            state[name] = value.detach().clone()
            extended.append(name)
            continue
        if name not in old_state:
            raise ValueError(f"{name}: missing from the checkpoint's discriminator")
        if old_state[name].shape != value.shape:
            raise ValueError(f"{name}: checkpoint has {tuple(old_state[name].shape)}, config needs {tuple(value.shape)}")
        state[name] = old_state[name]
    return state, extended


def build(audio: AudioConfig, model: ModelConfig, n_identities: int) -> tuple[Wav2PixGenerator, Discriminator]:
    """Build the trainable (generator side, discriminator) pair for ``n_identities`` identities."""
    return Wav2PixGenerator(audio, model, n_identities), Discriminator(model, n_identities)
