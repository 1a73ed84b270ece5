"""The avgan family's config: one generator for a face (or a drawing) and its voice, from one latent.

Two data kinds (``data.kind``): ``faces`` (face + speech pairs: the Wav2Pix layout or capture datasets, as the
wav2pix family reads them) and ``digits`` (FSDD spoken digits + MNIST drawings, paired by digit). Two conditioning
modes (``model.conditioning``): ``none`` (the original AVGAN: noise -> image + sound) and ``voice`` (the visitor's
speech, through an in-graph speech encoder, + noise -> an image and a voice of the same person).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from engine.configs import ranged
from training.config import AudioConfig, AugmentConfig, TrainConfig


@dataclass(frozen=True)
class DataConfig:
    """What the ``--data`` folders are.

    kind: ``faces`` = speech/face pair folders (Wav2Pix layout or capture datasets; split by distinct face crop,
    :func:`training.data.split_by_face`); ``digits`` = an FSDD folder (``recordings/{digit}_{speaker}_{take}.wav``
    or the recordings themselves) and an MNIST folder (``t10k-images-idx3-ubyte.gz`` + labels), paired by digit;
    FSDD takes ``0 .. val_takes - 1`` and every ``1 / val_fraction``-th drawing are held out for validation
    (takes 0-4: FSDD's own test split).
    val_takes: FSDD takes per speaker and digit held out (digits only).
    """

    kind: Literal["faces", "digits"] = "faces"
    val_takes: int = ranged(5, 0, 49)


@dataclass(frozen=True)
class SpectrogramConfig:
    """The sound representation (:mod:`training.families.avgan.spectral`): STFT with a Hann window of ``n_fft``
    samples and ``hop`` samples advance, ``frames`` frames; the image is (2, n_fft / 2, frames). ``(frames - 1) *
    hop`` must cover the clip (``audio.window_samples``). ``frames`` and ``n_fft / 2`` must be multiples of 16
    (four x2 upsampling stages from the seed)."""

    n_fft: int = ranged(512, 16, 8192, "samples")
    hop: int = ranged(256, 1, 4096, "samples")
    frames: int = ranged(64, 16, 4096)


@dataclass(frozen=True)
class ModelConfig:
    """Architecture (:mod:`training.families.avgan.networks`).

    conditioning: ``none`` (noise only) or ``voice`` (speech -> in-graph log-mel encoder -> embedding; the
    embedding joins the noise at the generator's input and is projected into the discriminator's score).
    image_size: side of the image in px (32 or 64); image_channels: 3 (RGB) or 1 (grey, e.g. MNIST; the exported
    graph repeats it to RGB).
    noise_dim: latent size. trunk_width: width of the shared two-layer latent trunk both streams start from.
    g_channels: width of each generator stream at its seed; it halves at every x2 upsampling down to
    ``g_min_channels``. d_channels: width of each discriminator stream's first layer; it doubles at every
    stride-2 layer. joint_width: width of the discriminator's joint layer over the concatenated streams.
    n_fft / hop / n_mels / encoder_channels / embedding_dim: the speech encoder (``voice`` only).
    spectral_norm_g: spectral normalisation on the generator's weights (the discriminator always has it).
    spec_top_blocks: 3x3 convolution blocks at the spectrogram stream's full resolution, before its output layer
    (:class:`~training.families.avgan.networks.UpStream`); 0 draws the spectrogram from half-resolution features,
    which cannot draw a voice's harmonics (3-6 bins apart at n_fft 256 and 8 kHz).
    minibatch_std: the discriminator's joint layer also reads each stream's feature spread over the batch
    (:meth:`~training.families.avgan.networks.AvganDiscriminator.joint`): a generator that makes one drawing or one
    sound per code is told apart from real batches.
    latent_code: ``none`` conditioning only: a categorical part of the latent over the data's labels (InfoGAN,
    Chen et al. 2016, tied to the labels as in semi-supervised InfoGAN, Spurr et al. 2017): the code is the
    argmax of the first L noise values (L labels; uniform over them for standard-normal noise), one-hot, joined to
    the noise. The model stays unconditional (noise in, image + sound out); in training, a classifier on each of
    the discriminator's streams learns the labels of real items and the generator is trained so that *both* its
    streams are classified as its code (``loss.code_weight``): image and sound name the same label.
    image_stream: ``avgan`` (the image stream above, trained with the rest) or ``wav2pix`` (``voice`` models, 64 px
    RGB faces): the image stream is a wav2pix generator (:class:`training.families.wav2pix.networks.Generator`,
    reading the speech embedding and the noise directly, ``image_g_channels`` wide) and the speech encoder a
    wav2pix one, both taken over from a wav2pix bundle with ``train --init-from BUNDLE`` and kept fixed: the
    training then trains the shared trunk and the spectrogram stream against the joint discriminator
    (``loss.speech_id_weight`` has no effect: the encoder and its identity head are fixed). The face and the voice
    still come from one latent (the same noise and embedding feed both streams).
    image_g_channels / image_g_min_channels: the image stream's widths (0: ``g_channels`` / ``g_min_channels``).
    spec_stream: ``conv2d`` (the spectrogram as an image: 3x3 convolutions over frequency and time, in the generator
    and the discriminator) or ``conv1d`` (the frequency bins as channels, convolutions over time only; the
    generator's widths ``g_channels`` halving to ``g_min_channels`` over five stages, the discriminator's
    ``spec_d_channels`` x 1, 2, 4, 4). spec_d_channels: the discriminator's spectrogram stream width (0:
    ``d_channels``).
    stream_classifiers: ``voice`` conditioning only: the same per-stream label classifiers, for the speaker: each of
    the discriminator's streams learns the speaker of real faces and of real voices, and the generator is trained
    so that its face and its voice are each classified as the condition's speaker (``loss.code_weight``; the
    generator-side AC-GAN term, Odena et al. 2017, per stream). Without it only the joint score's projection of
    the condition ties the two streams to the speaker.
    """

    conditioning: Literal["none", "voice"] = "voice"
    image_size: Literal[32, 64] = 64
    image_channels: Literal[1, 3] = 3
    noise_dim: int = ranged(64, 1, 4096)
    trunk_width: int = ranged(256, 8, 8192)
    g_channels: int = ranged(128, 8, 4096)
    g_min_channels: int = ranged(16, 4, 4096)
    d_channels: int = ranged(16, 4, 4096)
    joint_width: int = ranged(256, 8, 8192)
    n_fft: int = ranged(512, 16, 8192, "samples")
    hop: int = ranged(160, 1, 8192, "samples")
    n_mels: int = ranged(64, 8, 512)
    encoder_channels: int = ranged(64, 8, 4096)
    embedding_dim: int = ranged(64, 1, 4096)
    spectral_norm_g: bool = True
    spec_top_blocks: int = ranged(0, 0, 4)
    minibatch_std: bool = False
    latent_code: bool = False
    stream_classifiers: bool = False
    image_stream: Literal["avgan", "wav2pix"] = "avgan"
    image_g_channels: int = ranged(0, 0, 4096)
    image_g_min_channels: int = ranged(0, 0, 4096)
    spec_stream: Literal["conv2d", "conv1d"] = "conv2d"
    spec_d_channels: int = ranged(0, 0, 4096)

    def __post_init__(self) -> None:
        if self.image_stream == "wav2pix" and (self.conditioning != "voice" or self.image_size != 64
                                               or self.image_channels != 3):  # fmt: skip
            raise ValueError("model.image_stream: wav2pix needs conditioning: voice, image_size: 64, image_channels: 3 "
                             f"(a wav2pix bundle's faces); got {self.conditioning}, {self.image_size}, "
                             f"{self.image_channels}")  # fmt: skip
        if self.latent_code and self.conditioning != "none":
            raise ValueError("model.latent_code: only for conditioning: none (a voice model's identity comes from the voice)")
        if self.stream_classifiers and self.conditioning != "voice":
            raise ValueError("model.stream_classifiers: only for conditioning: voice (unconditional models: model.latent_code)")
        if self.encoder_channels % 8:
            raise ValueError(f"model.encoder_channels: expected a multiple of 8, got {self.encoder_channels}")


@dataclass(frozen=True)
class LossConfig:
    """Objective.

    kind: ``hinge`` (Lim & Ye 2017) or ``lsgan`` (Mao et al. 2017).
    mismatch_weight: weight of the matching-aware negative (Reed et al. 2016) that makes the two streams belong
    together: a real image scored with a real sound of another identity (another speaker, another digit) is fake.
    wrong_condition_weight: ``voice`` only: a real (image, sound) scored with the speech embedding of another
    identity is fake (Wav2Pix's matching-aware term).
    aux_weight: AC-GAN identity classification (Odena et al. 2017) of the discriminator's joint features of real
    pairs. speech_id_weight: ``voice`` only: identity classification of the speech embedding (trains the
    encoder). mode_seeking_weight: mode-seeking term on both streams (Mao et al., CVPR 2019); 0 disables.
    code_weight: ``model.latent_code`` / ``model.stream_classifiers`` only: weight of the per-stream label
    classification (real items, for the discriminator) and of the code's or the condition's label (generated items,
    for the generator).
    heard_sound: the discriminator's spectrogram stream judges a generated sound as the bundle outputs it: the
    generator's spectrogram image decoded to a waveform, clipped to [-1, 1] and analysed again (the log-magnitude
    channel; the IF channel stays the generator's), not the image itself. A spectrogram image is not the STFT of
    any signal in general, and one that decodes past full scale is clipped in the bundle: without this the
    discriminator never sees either. Real sounds take the same decode-and-analyse path.
    guide_weight: ``model.latent_code`` with digits data only: weight of the generator's loss that a frozen
    spoken-digit classifier (:mod:`training.families.avgan.guide`, trained on the training recordings) names its
    sound's code (cross-entropy); 0 disables.
    """

    kind: Literal["hinge", "lsgan"] = "hinge"
    mismatch_weight: float = ranged(1.0, 0.0, 100.0)
    wrong_condition_weight: float = ranged(1.0, 0.0, 100.0)
    aux_weight: float = ranged(1.0, 0.0, 100.0)
    speech_id_weight: float = ranged(1.0, 0.0, 100.0)
    mode_seeking_weight: float = ranged(0.1, 0.0, 100.0)
    code_weight: float = ranged(1.0, 0.0, 100.0)
    heard_sound: bool = False
    guide_weight: float = ranged(0.0, 0.0, 100.0)


@dataclass(frozen=True)
class AvganConfig:
    """Resolved avgan training config: what ``run.py train --config`` reads when ``family: avgan``."""

    family: Literal["avgan"] = "avgan"
    data: DataConfig = field(default_factory=DataConfig)
    audio: AudioConfig = field(default_factory=AudioConfig)
    spectrogram: SpectrogramConfig = field(default_factory=SpectrogramConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        s, n = self.spectrogram, self.audio.window_samples
        if (s.frames - 1) * s.hop < n:
            raise ValueError(
                f"spectrogram: frames {s.frames} x hop {s.hop} do not cover audio.window_samples {n}; "
                f"need frames >= {-(-n // s.hop) + 1}"
            )
        if s.frames % 16 or (s.n_fft // 2) % 16:
            raise ValueError(f"spectrogram: frames ({s.frames}) and n_fft/2 ({s.n_fft // 2}) must be multiples of 16")
        if self.model.spec_stream == "conv1d" and s.frames % 32:
            raise ValueError(f"spectrogram.frames: model.spec_stream: conv1d upsamples its seed five times (x32); frames must "
                             f"be a multiple of 32, got {s.frames}")  # fmt: skip
        if s.hop > s.n_fft // 2:
            raise ValueError(f"spectrogram.hop: expected at most n_fft/2 = {s.n_fft // 2}, got {s.hop}")
