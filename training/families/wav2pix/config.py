"""The wav2pix family's config: speech -> face (Duarte et al., "Wav2Pix", ICASSP 2019).

The defaults are the shipped default model's recipe (``presets/models/wav2pix-64``, its last training phase,
``presets/training/wav2pix-64v.yaml``, except the schedule): a log-mel speech encoder, a 64 px generator
128 -> 32 channels wide with spectral normalisation, a projection discriminator with an identity classifier,
hinge loss with matching-aware negatives, the mode-seeking term, and a 6-component pose code regressed
through a dlib-taught landmark CNN. ``scripts/make_default_model.sh`` replays the whole eight-phase recipe.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from engine.configs import ranged
from training.config import AudioConfig, AugmentConfig, TrainConfig


@dataclass(frozen=True)
class ModelConfig:
    """Architecture (see :mod:`training.families.wav2pix.networks`).

    front_end: 'mel' = log-mel spectrogram inside the graph (n_fft / hop in samples, n_mels bins), then 1-D
    convolutions; 'raw' = SEGAN-discriminator-style strided 1-D convolutions on the waveform (Pascual et al.
    2017, as in Wav2Pix). image_size: output side in pixels.
    g_channels: generator width at 4x4; it halves at each x2 upsampling down to ``g_min_channels``
    (128 / 32 gives 128, 64, 32, 32, 32 channels at 4, 8, 16, 32, 64 px).
    encoder_channels: speech encoder width (a multiple of 8: it uses 8 group-norm groups).
    pose_code_dim: K > 0 makes the generator's first K noise inputs a pose code
    (:class:`training.families.wav2pix.landmarks.PoseCodes`: standardised within-identity principal components
    of dlib's 68 landmarks of the real training faces). In training the generator gets the code of the real face
    paired with each voice, and the discriminator adds a projection of the code to its score; the exported graph
    keeps standard-normal noise as its input and draws the code with the neighbours prior
    (:class:`training.families.wav2pix.prior.NeighbourPosePrior`). 0 = off.
    """

    front_end: Literal["raw", "mel"] = "mel"
    n_fft: int = ranged(512, 16, 8192, "samples")
    hop: int = ranged(160, 1, 8192, "samples")
    n_mels: int = ranged(64, 8, 512)
    embedding_dim: int = ranged(128, 1, 4096)
    noise_dim: int = ranged(128, 1, 4096)
    image_size: Literal[64, 128] = 64
    g_channels: int = ranged(128, 1, 4096)
    g_min_channels: int = ranged(32, 1, 4096)
    d_channels: int = ranged(32, 1, 4096)
    encoder_channels: int = ranged(128, 8, 4096)
    spectral_norm_g: bool = True
    pose_code_dim: int = ranged(6, 0, 136)

    def __post_init__(self) -> None:
        if self.pose_code_dim > self.noise_dim:
            raise ValueError(f"model.pose_code_dim: expected 0..noise_dim ({self.noise_dim}), got {self.pose_code_dim}")
        if self.encoder_channels % 8:
            raise ValueError(f"model.encoder_channels: expected a multiple of 8, got {self.encoder_channels}")


@dataclass(frozen=True)
class LossConfig:
    """Adversarial objective and auxiliary weights.

    kind: 'hinge' (Lim & Ye 2017; Wan, Chuang & Lee 2018) or 'lsgan' (Mao et al. 2017, as in Wav2Pix).
    matching_aware: add the (real image, wrong speech) negative (Reed et al. 2016).
    aux_weight: AC-GAN identity loss (Odena et al. 2017) of the discriminator's classifier on real faces;
    aux_weight_g: the same classifier's loss on generated faces in the generator step. The classifier never sees
    fakes, so a large aux_weight_g lets the generator satisfy it with adversarial-example cues; 0 (the shipped
    choice) leaves identity to the projection and matching-aware terms.
    speech_id_weight: identity classification of the speech embedding (trains the encoder).
    mode_seeking_weight: mode-seeking regulariser (Mao et al., "Mode Seeking Generative Adversarial Networks for
    Diverse Image Synthesis", CVPR 2019), so the noise changes the face instead of being ignored. 0 disables.
    The pose terms and the landmark CNN apply only with ``model.pose_code_dim`` > 0.
    pose_matching_weight: with a pose code, weight of one more discriminator negative (real image, right speech,
    another real face's pose code of the same identity): matching-aware for the pose code. 0 disables.
    pose_code_weight: with a pose code, weight of its regression in the generator loss: a landmark CNN reads
    each generated face, its reading in pose-code units should equal the code given. 0 disables.
    landmark_fit_steps: Adam steps that fit the landmark CNN to dlib's landmarks of the training faces before
    training (about a minute per 1000 on 2 CPU cores).
    landmark_teacher_every: every this many steps dlib labels ``landmark_teacher_faces`` generated faces and the
    landmark CNN takes a step on them and as many real faces, so the generator cannot fool a frozen network;
    0 keeps it frozen.
    """

    kind: Literal["lsgan", "hinge"] = "hinge"
    matching_aware: bool = True
    aux_weight: float = ranged(1.0, 0.0, 100.0)
    aux_weight_g: float = ranged(0.0, 0.0, 100.0)
    speech_id_weight: float = ranged(1.0, 0.0, 100.0)
    mode_seeking_weight: float = ranged(0.25, 0.0, 100.0)
    pose_matching_weight: float = ranged(0.5, 0.0, 100.0)
    pose_code_weight: float = ranged(1.0, 0.0, 100.0)
    landmark_fit_steps: int = ranged(3000, 1, None)
    landmark_teacher_every: int = ranged(2, 0, None)
    landmark_teacher_faces: int = ranged(16, 1, 4096)


@dataclass(frozen=True)
class Wav2PixConfig:
    """Resolved wav2pix training config: what ``run.py train --config`` reads when ``family: wav2pix``."""

    family: Literal["wav2pix"] = "wav2pix"
    audio: AudioConfig = field(default_factory=AudioConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
