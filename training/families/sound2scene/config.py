"""The sound2scene family's config: sound -> scene image (Wan, Chuang & Lee, "Towards Audio to Scene Image Synthesis
using Generative Adversarial Network", ICASSP 2019; Kang & Kymn, "Hearing is Seeing", 2017).

Sections: ``audio`` (shared :class:`training.config.AudioConfig`), ``data`` (which importer reads the folders and
how the split is made), ``model`` (audio encoder, generator, discriminator), ``encoder`` (the audio encoder's
training as a classifier before the GAN), ``loss``, ``augment`` (DiffAugment) and ``train`` (the generic loop's
schedule). The shipped recipes are ``presets/training/sound2scene-digits.yaml`` and
``presets/training/sound2scene-music.yaml``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from engine.configs import ranged
from training.config import AudioConfig, AugmentConfig, TrainConfig


@dataclass(frozen=True)
class DataConfig:
    """How ``--data`` folders are read and split (:mod:`training.families.sound2scene.data`).

    importer: ``clips`` = one or more folders of labelled video clips, ``DIR/<class>/<clip>.<ext>`` (any format
    PyAV reads, with an audio and a video track; :mod:`.clips`); ``paired`` = exactly two folders, labelled sounds
    then labelled images, paired by class name (:mod:`.paired`).
    frame_rate: ``clips``: sample times per second of clip; each time gives one item, the video frame shown at that
    time with the ``audio.window_seconds`` of sound centred on it (times whose window would leave the audio are
    not used).
    val_fraction (``train.val_fraction``) and seed (``train.seed``) choose the held-out clips: ``clips`` splits by
    clip within each class, never by frame.
    test_takes: ``paired``: sounds named ``<class>_<speaker>_<take>`` with take < ``test_takes`` are held out
    (FSDD's own convention puts takes 0-4 in its test split; 0: none by take).
    val_speakers: ``paired``: speakers whose every sound is held out (the split by speaker).
    image_val_fraction: ``paired``: share of each class's images held out (evenly spaced after a seeded shuffle).
    max_images_per_class: ``paired``: use at most this many images per class (0: all), after the shuffle.
    """

    importer: Literal["clips", "paired"] = "clips"
    frame_rate: float = ranged(1.0, 0.05, 30.0, "Hz")
    test_takes: int = ranged(5, 0, 1000)
    val_speakers: tuple[str, ...] = ()
    image_val_fraction: float = ranged(0.2, 0.0, 0.9)
    max_images_per_class: int = ranged(0, 0, None)


@dataclass(frozen=True)
class ModelConfig:
    """Architecture (:mod:`training.families.sound2scene.networks`).

    n_fft / hop: the log-mel front end's STFT (samples); n_mels: mel bins. encoder_channels: width of the audio
    encoder's 1-D convolutions (a multiple of 8). embedding_dim: the sound embedding E (unit-RMS, on the sphere of
    radius sqrt(E)). noise_dim: Z. image_size: output side, px.
    g_channels: generator width at 4x4; it halves at each x2 upsampling down to ``g_min_channels``.
    d_channels: discriminator width at its first (highest-resolution) layer; it doubles at each /2.
    norm: the generator's normalisation under the conditional gain and bias
    (:class:`~training.families.sound2scene.networks.ConditionalNorm`): ``pixel`` or ``layer``.
    """

    n_fft: int = ranged(512, 16, 8192, "samples")
    hop: int = ranged(128, 1, 8192, "samples")
    n_mels: int = ranged(64, 8, 512)
    encoder_channels: int = ranged(64, 8, 4096)
    embedding_dim: int = ranged(64, 2, 4096)
    noise_dim: int = ranged(64, 1, 4096)
    image_size: Literal[32, 64, 128] = 64
    g_channels: int = ranged(128, 1, 4096)
    g_min_channels: int = ranged(8, 1, 4096)
    d_channels: int = ranged(32, 1, 4096)
    norm: Literal["pixel", "layer"] = "pixel"

    def __post_init__(self) -> None:
        if self.encoder_channels % 8:
            raise ValueError(f"model.encoder_channels: expected a multiple of 8, got {self.encoder_channels}")
        if self.hop > self.n_fft:
            raise ValueError(f"model.hop: expected at most n_fft ({self.n_fft}), got {self.hop}")


@dataclass(frozen=True)
class EncoderConfig:
    """The audio encoder's training as a sound classifier on the training sounds, before the GAN (the role of the
    pretrained SoundNet in Wan et al.); afterwards it is frozen (see :mod:`training.families.sound2scene`).

    steps / batch_size / lr / weight_decay: its Adam(W) schedule (fixed length: no selection on held-out sounds).
    dropout: on the embedding, before the class layer (training only).
    time_masks / freq_masks: SpecAugment (Park et al., Interspeech 2019) masks per example, each up to
    ``mask_fraction`` of the time frames / mel bins.
    gain_db: random gain in [-gain_db, +gain_db] dB per example (the front end peak-normalises, so this mostly
    exercises its floor and the quantisation).
    """

    steps: int = ranged(1500, 0, None)
    batch_size: int = ranged(64, 1, 65536)
    lr: float = ranged(1e-3, 1e-7, 1.0)
    weight_decay: float = ranged(1e-4, 0.0, 1.0)
    dropout: float = ranged(0.2, 0.0, 0.9)
    time_masks: int = ranged(2, 0, 16)
    freq_masks: int = ranged(2, 0, 16)
    mask_fraction: float = ranged(0.15, 0.0, 0.5)
    gain_db: float = ranged(6.0, 0.0, 40.0, "dB")


@dataclass(frozen=True)
class LossConfig:
    """The GAN objective (Wan, Chuang & Lee 2019).

    kind: ``hinge`` (Lim & Ye 2017) or ``lsgan``. matching_aware: add (real image, a wrong class's sound) as a
    negative (Reed et al. 2016; Kang & Kymn's mismatched pairs). aux_weight: the discriminator's auxiliary class
    loss on real images (AC-GAN, Odena et al. 2017); aux_weight_g: the same classifier's loss on generated images in
    the generator step. centroid_fraction: share of each batch whose conditioning is replaced by the class's mean
    sound embedding (what an operator's pinned class feeds the graph), so that path is trained too.
    mode_seeking_weight: the mode-seeking term (Mao et al., CVPR 2019) so the noise changes the image; 0 = off.
    l1_weight: for items that have their own image (a clip's frame), the mean absolute difference between the
    generated image and that frame in the generator step (pix2pix's L1 term, Isola et al., CVPR 2017): with a few
    hundred frames the adversarial terms alone drew texture without layout on the CPU budget. Rows whose
    conditioning was swapped for a class centroid are left out. 0 = off.
    l1_candidates: K > 1 draws K noise vectors per such item and applies the L1 term (and the step) to the one
    whose image is already nearest to the frame (conditional IMLE, Li, Zhang & Malik, ICCV 2019): the sound says
    which class, the noise which of its scenes, instead of the L1 term pulling every noise to the class's mean
    frame (a sound embedding barely tells one clip of an instrument from another).
    """

    kind: Literal["hinge", "lsgan"] = "hinge"
    matching_aware: bool = True
    aux_weight: float = ranged(1.0, 0.0, 100.0)
    aux_weight_g: float = ranged(0.5, 0.0, 100.0)
    centroid_fraction: float = ranged(0.25, 0.0, 1.0)
    mode_seeking_weight: float = ranged(0.0, 0.0, 100.0)
    l1_weight: float = ranged(0.0, 0.0, 1000.0)
    l1_candidates: int = ranged(1, 1, 64)


@dataclass(frozen=True)
class Sound2SceneConfig:
    """Resolved sound2scene training config: what ``run.py train --config`` reads when ``family: sound2scene``.

    A section left out takes its class defaults (a section given in part: the rest of that class's defaults), so
    the shipped recipes spell every section out.
    """

    family: Literal["sound2scene"] = "sound2scene"
    audio: AudioConfig = field(default_factory=AudioConfig)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
