"""Typed, frozen training configuration (loaded strictly from YAML).

Unknown keys and wrong types are rejected before training starts, naming the
key (see :mod:`engine.configs`). The resolved config travels with every
checkpoint and model bundle.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from engine import configs

FORMAT_VERSION = 1


# how standard-normal noise becomes a pose code at inference (training.models.wav2pix.PoseCodePrior, see
# training.trainer.pose_prior_for_run): a training face's code picked by its speech's likeness to the voice, per
# speaker, pooled with correlations, pooled marginals, or as it is
POSE_PRIORS = ("neighbours", "speaker", "copula", "quantile", "normal")


@dataclass(frozen=True)
class AudioConfig:
    """Speech input and preprocessing (Roldán 2018; Duarte et al. 2019).

    sample_rate: Hz. window_seconds: length of one conditioning window (s).
    preemphasis: coefficient of y[t] = x[t] - a*x[t-1] (0 disables).
    normalize: peak-normalise each window to [-1, 1] before the encoder.
    """

    sample_rate: int = 16000
    window_seconds: float = 1.0
    preemphasis: float = 0.95
    normalize: bool = True

    @property
    def window_samples(self) -> int:
        return int(round(self.sample_rate * self.window_seconds))


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of the wav2pix family (see :mod:`training.models.wav2pix`).

    front_end: 'raw' = SEGAN-discriminator-style strided 1-D convolutions on the
    waveform; 'mel' = log-mel spectrogram (n_fft/hop/n_mels in samples/bins).
    image_size: output side in pixels (64 or 128).
    g_channels: generator width at 4x4; it halves at each x2 upsampling down to ``g_min_channels``
    (e.g. 128 / 16 gives 128, 64, 32, 16, 16 channels at 4, 8, 16, 32, 64 px).
    d_twin_classifier: give the discriminator a second identity head trained on generated faces
    (TAC-GAN, Gong et al., "Twin Auxiliary Classifiers GAN", NeurIPS 2019); the generator's AC term then
    becomes CE(real-trained head) - CE(twin head), so identity cues that only fakes carry stop paying off.
    d_minibatch_std: group size of the discriminator's minibatch standard-deviation feature (Karras et al.,
    "Progressive Growing of GANs", ICLR 2018): before its last convolution the discriminator sees, as one more
    channel, the mean standard deviation of its features over groups of this many images of the same batch, so
    a generator whose images vary too little is told apart. 0 = off (the default, and every config before it).
    pose_code_dim: K > 0 makes the generator's first K noise inputs a pose code
    (:class:`training.landmarks.PoseCodes`: standardised within-identity principal components of dlib's
    68 landmarks of the real training faces, standard normal over them). During training the generator gets the
    code of the real face paired with each voice, and the discriminator adds a projection of the code to its score
    (``<W_p c, h>``, as the speech embedding's) and, with ``loss.pose_matching_weight``, scores real faces with
    another face's code as fake. The exported graph keeps its inputs: standard-normal noise, mapped inside the
    graph to the real faces' code distribution by the pose prior (``export --pose-prior``,
    :class:`training.models.wav2pix.PoseCodePrior`), draws the pose. 0 = off.
    appearance_code_dim: A > 0 (needs ``pose_code_dim`` > 0) makes the next A noise inputs an appearance code
    (:class:`training.appearance.AppearanceCodes`: standardised within-identity principal components of the real
    training faces' ``appearance_thumbnail`` px thumbnails: framing, lighting, colour). It extends the pose code:
    the generator gets the paired real face's code, the discriminator's code projection and
    ``loss.pose_matching_weight`` cover all K + A entries, and the pose prior draws them jointly. 0 = off.
    appearance_thumbnail: side of those thumbnails in pixels; must divide ``image_size``.
    """

    family: Literal["wav2pix"] = "wav2pix"
    front_end: Literal["raw", "mel"] = "mel"
    n_fft: int = 512
    hop: int = 160
    n_mels: int = 64
    embedding_dim: int = 128
    noise_dim: int = 128
    image_size: Literal[64, 128] = 64
    g_channels: int = 256
    g_min_channels: int = 16
    d_channels: int = 32
    encoder_channels: int = 128
    spectral_norm_g: bool = True
    d_twin_classifier: bool = False
    d_minibatch_std: int = 0
    pose_code_dim: int = 0
    appearance_code_dim: int = 0
    appearance_thumbnail: int = 16

    @property
    def code_dim(self) -> int:
        """Noise inputs read as a code: ``pose_code_dim + appearance_code_dim``."""
        return self.pose_code_dim + self.appearance_code_dim

    def __post_init__(self) -> None:
        if not 0 <= self.pose_code_dim <= self.noise_dim:
            raise ValueError(f"model.pose_code_dim: expected 0..noise_dim ({self.noise_dim}), got {self.pose_code_dim}")
        if self.appearance_code_dim < 0 or self.code_dim > self.noise_dim:
            raise ValueError(
                f"model.appearance_code_dim: expected 0..noise_dim - pose_code_dim "
                f"({self.noise_dim - self.pose_code_dim}), got {self.appearance_code_dim}"
            )
        if self.appearance_code_dim and not self.pose_code_dim:
            raise ValueError("model.appearance_code_dim > 0 needs model.pose_code_dim > 0 (it extends the pose code)")
        if self.appearance_thumbnail < 1 or self.image_size % self.appearance_thumbnail:
            raise ValueError(
                f"model.appearance_thumbnail: expected a divisor of image_size ({self.image_size}), "
                f"got {self.appearance_thumbnail}"
            )
        if self.d_minibatch_std < 0 or self.d_minibatch_std == 1:
            raise ValueError(
                f"model.d_minibatch_std: expected 0 (off) or a group size >= 2, got {self.d_minibatch_std}"
            )
        for name in ("g_channels", "g_min_channels", "d_channels", "encoder_channels", "embedding_dim", "noise_dim"):
            if getattr(self, name) < 1:
                raise ValueError(f"model.{name}: expected a positive number of channels, got {getattr(self, name)}")


@dataclass(frozen=True)
class LossConfig:
    """Adversarial objective and auxiliary weights.

    kind: 'lsgan' (Mao et al. 2017, as in Wav2Pix) or 'hinge' (Lim & Ye 2017;
    Wan, Chuang & Lee 2018). matching_aware: add the (real image, wrong speech)
    term (Reed et al. 2016). aux_weight: AC-GAN identity loss (Odena et al.
    2017) in the discriminator (trained on real faces). aux_weight_g: weight of the same classifier's
    loss on fakes in the generator step (None: aux_weight). Because the classifier never sees fakes, a
    large aux_weight_g lets the generator satisfy it with adversarial-example cues instead of identity;
    0 leaves identity to the projection and matching-aware terms.
    speech_id_weight: identity classification of the speech embedding.
    mode_seeking_weight: mode-seeking regulariser (Mao et al., "Mode Seeking Generative Adversarial
    Networks for Diverse Image Synthesis", CVPR 2019): penalises 1 / (|G(c,z1) - G(c,z2)| / |z1 - z2|),
    so the noise changes the face (pose, expression) instead of being ignored. 0 disables.
    r1_gamma: weight of the R1 gradient penalty on real images, (gamma / 2) * E ||grad_x D(x, e)||^2
    (Mescheder, Geiger & Nowozin, "Which Training Methods for GANs do actually Converge?", ICML 2018);
    the gradient is taken at the augmented real image, as in StyleGAN2-ADA. 0 disables.
    r1_interval: lazy regularisation (Karras et al., StyleGAN2, CVPR 2020): the penalty is computed every
    r1_interval discriminator steps and scaled by r1_interval.
    landmark_weight: weight of the landmark prior (:mod:`training.landmarks`): each batch of generated faces
    should have the real training faces' mean and spread of head pose and expression, measured by a small CNN
    fitted to dlib's 68 landmarks of the training faces before training starts. 0 disables.
    landmark_components: whitened principal components of the normalised landmarks that the prior matches.
    landmark_match: 'moments' asks for each identity's mean and spread there; 'spread' only penalises a spread
    below the real one (one-sided), leaving the mean pose to the discriminator.
    landmark_fit_steps: Adam steps that fit the landmark CNN (about a minute per 1000 on 2 CPU cores).
    landmark_teacher_every: every this many steps dlib labels ``landmark_teacher_faces`` generated faces and
    the landmark CNN takes a step on them and as many real faces (:class:`training.landmarks.LandmarkTeacher`),
    so the generator cannot fool a frozen network; 0 keeps it frozen.
    pose_matching_weight: with ``model.pose_code_dim`` > 0, weight of one more discriminator negative, (real image,
    right speech, another real face's pose code of the same identity): a matching-aware term for the pose code
    (Reed et al. 2016), added to the discriminator loss outside the average over the other negatives. 0 disables.
    pose_code_weight: with ``model.pose_code_dim`` > 0, weight of a pose-code regression in the generator loss:
    the landmark CNN of the landmark prior (built as for ``landmark_weight``; keep it honest with
    ``landmark_teacher_every``) reads each generated face, its reading is mapped into pose-code units, and the
    mean squared difference to the code the generator was given is penalised. 0 disables.
    appearance_code_weight: with ``model.appearance_code_dim`` > 0, weight of the appearance-code regression in
    the generator loss: the mean squared difference between the appearance code the generator was given and
    the one read off its image (:meth:`training.appearance.AppearanceCodes.encode_images`). 0 disables.
    """

    kind: Literal["lsgan", "hinge"] = "hinge"
    matching_aware: bool = True
    aux_weight: float = 1.0
    aux_weight_g: float | None = None
    speech_id_weight: float = 1.0
    mode_seeking_weight: float = 0.0
    r1_gamma: float = 0.0
    r1_interval: int = 16
    landmark_weight: float = 0.0
    landmark_components: int = 8
    landmark_match: Literal["moments", "spread"] = "moments"
    landmark_fit_steps: int = 3000
    landmark_teacher_every: int = 0
    landmark_teacher_faces: int = 16
    pose_matching_weight: float = 0.5
    pose_code_weight: float = 0.0
    appearance_code_weight: float = 0.0

    def __post_init__(self) -> None:
        if self.pose_code_weight < 0:
            raise ValueError(f"loss.pose_code_weight: expected >= 0, got {self.pose_code_weight}")
        if self.appearance_code_weight < 0:
            raise ValueError(f"loss.appearance_code_weight: expected >= 0, got {self.appearance_code_weight}")
        if self.pose_matching_weight < 0:
            raise ValueError(f"loss.pose_matching_weight: expected >= 0, got {self.pose_matching_weight}")
        if self.r1_gamma < 0:
            raise ValueError(f"loss.r1_gamma: expected >= 0, got {self.r1_gamma}")
        if self.r1_interval < 1:
            raise ValueError(f"loss.r1_interval: expected >= 1, got {self.r1_interval}")
        if self.landmark_weight < 0:
            raise ValueError(f"loss.landmark_weight: expected >= 0, got {self.landmark_weight}")
        if not 1 <= self.landmark_components <= 136:
            raise ValueError(f"loss.landmark_components: expected 1..136, got {self.landmark_components}")
        if self.landmark_teacher_every < 0 or self.landmark_teacher_faces < 1:
            raise ValueError(
                "loss.landmark_teacher_every / landmark_teacher_faces: expected >= 0 / >= 1, got "
                f"{self.landmark_teacher_every} / {self.landmark_teacher_faces}"
            )
        if self.landmark_fit_steps < 1:
            raise ValueError(f"loss.landmark_fit_steps: expected >= 1, got {self.landmark_fit_steps}")


@dataclass(frozen=True)
class AugmentConfig:
    """DiffAugment (Zhao et al., NeurIPS 2020) applied to real and fake images seen by D."""

    enabled: bool = True
    policy: tuple[str, ...] = ("color", "translation", "cutout")


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation schedule. Step counts are generator steps; batch is per process.

    precision: 'bf16' runs forward passes under torch.autocast (bfloat16; weights, optimiser state and
    the EMA stay float32). Whether it pays depends on the machine: on recent GPUs it does; on CPU the
    training step was 1.48x faster on an AMD EPYC VM and 0.79x as fast on an Intel Xeon VM with AVX512-BF16
    (``run.py bench --only train`` measures both).
    num_threads: torch intra-op threads per process (0 = torch's default).
    d_warmup_steps: the run's first N steps (counted from step 0) update only the discriminator; the generator's
    weights and their moving average stay as they are (its spectral norms' power iterations go on). For runs
    started from a model bundle (``train --init-from BUNDLE_DIR``), which carries no discriminator: a fresh one
    first learns to score the trained generator's faces before the generator follows its gradients (0 = off).
    """

    steps: int = 20000
    batch_size: int = 32
    lr_g: float = 2e-4
    lr_d: float = 2e-4
    betas: tuple[float, float] = (0.5, 0.999)
    ema_decay: float = 0.999
    ema_start: int = 500
    seed: int = 0
    val_fraction: float = 0.1
    sample_every: int = 500
    checkpoint_every: int = 1000
    log_every: int = 50
    num_threads: int = 0
    cache_features: bool = True
    precision: Literal["fp32", "bf16"] = "fp32"
    d_warmup_steps: int = 0

    def __post_init__(self) -> None:
        if self.d_warmup_steps < 0:
            raise ValueError(f"train.d_warmup_steps: expected >= 0, got {self.d_warmup_steps}")


@dataclass(frozen=True)
class Config:
    """Resolved training configuration: what `run.py train --config` reads."""

    audio: AudioConfig = field(default_factory=AudioConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        if self.loss.pose_code_weight > 0 and not self.model.pose_code_dim:
            raise ValueError("loss.pose_code_weight > 0 needs model.pose_code_dim > 0 (the code it regresses)")
        if self.loss.appearance_code_weight > 0 and not self.model.appearance_code_dim:
            raise ValueError(
                "loss.appearance_code_weight > 0 needs model.appearance_code_dim > 0 (the code it regresses)"
            )


def load_config(path: str | Path | None) -> Config:
    """Load a :class:`Config` from YAML (``None`` gives the defaults).

    Raises:
        engine.configs.ConfigError: unknown key, wrong type, unreadable file.
    """
    if path is None:
        return Config()
    return configs.load(Config, path)


def config_from_dict(data: dict, source: str = "<config>") -> Config:
    """Build a :class:`Config` from a plain mapping (strict)."""
    return configs.from_mapping(Config, data, source=source)
