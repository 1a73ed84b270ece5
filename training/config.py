"""Training configuration: the sections every model family shares, and loading a family's config from YAML.

A training config is one frozen dataclass per family (``training/families/<name>/config.py``), nanoGPT-style:
a top-level ``family`` key names the family, and sections hold the rest. The sections defined here are shared:

* :class:`AudioConfig` — the conditioning audio (sample rate, window, pre-emphasis);
* :class:`AugmentConfig` — DiffAugment on the images the discriminator sees;
* :class:`TrainConfig` — the schedule the generic loop (:mod:`training.loop`) owns.

Loading is strict (:mod:`engine.configs`): an unknown key, a wrong type, a NaN or infinite number or a value
outside its declared range is one :class:`engine.configs.ConfigError` naming the file, the key, the value and
the allowed range, before anything starts. The resolved config travels with every checkpoint and bundle.
Configs written before the family split (``model.family`` instead of a top-level ``family``, and options that
were removed) go through :func:`upgrade_config_mapping`, the one upgrade path.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from engine import configs
from engine.configs import ConfigError, ranged

FORMAT_VERSION = 2
"""Checkpoint format: 2 = one config per family with a top-level ``family`` key (1: ``model.family``)."""

DEFAULT_FAMILY = "wav2pix"


@dataclass(frozen=True)
class AudioConfig:
    """Conditioning audio and its preprocessing (Roldán 2018; Duarte et al. 2019).

    sample_rate: Hz. window_seconds: length of one conditioning window (s).
    preemphasis: coefficient a of y[t] = x[t] - a*x[t-1] (0 disables).
    normalize: peak-normalise each window to [-1, 1] before the encoder.
    """

    sample_rate: int = ranged(16000, 1000, 192000, "Hz")
    window_seconds: float = ranged(1.0, 0.05, 10.0, "s")
    preemphasis: float = ranged(0.95, 0.0, 0.999)
    normalize: bool = True

    @property
    def window_samples(self) -> int:
        """Samples per conditioning window."""
        return int(round(self.sample_rate * self.window_seconds))


@dataclass(frozen=True)
class AugmentConfig:
    """DiffAugment (Zhao et al., "Differentiable Augmentation for Data-Efficient GAN Training", NeurIPS 2020)
    applied, in this order, to every real and generated image the discriminator sees."""

    enabled: bool = True
    policy: tuple[Literal["color", "translation", "cutout"], ...] = ("color", "translation")


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation schedule, owned by the generic loop. Step counts are generator steps; batch is per process.

    lr_g / lr_d: Adam learning rates of the generator and the discriminator; betas: Adam's (beta1, beta2).
    ema_decay: decay of the generator's exponential moving average (Karras et al. 2018), updated from
    ``ema_start`` on (a plain copy before). val_fraction: share of the data held out for validation (split by
    the family: by face crop, by clip, by speaker).
    precision: 'bf16' runs forward passes under torch.autocast (bfloat16; weights, optimiser state and the EMA
    stay float32). Whether it pays depends on the machine: on recent GPUs it does; on CPU the training step was
    1.48x faster on an AMD EPYC VM and 0.79x as fast on an Intel Xeon VM with AVX512-BF16 (``run.py bench
    --only train`` measures both).
    num_threads: torch intra-op threads per process (0 = torch's default).
    d_warmup_steps: the run's first N steps (counted from step 0) update only the discriminator; the generator's
    weights and their moving average stay as they are. For runs started from a model bundle (``train
    --init-from BUNDLE_DIR``), which carries no discriminator (0 = off).
    keep_checkpoints: how many of the newest checkpoints the run folder keeps.
    """

    steps: int = ranged(20000, 1, None)
    batch_size: int = ranged(32, 1, 65536)
    lr_g: float = ranged(1e-4, 1e-9, 1.0)
    lr_d: float = ranged(1e-4, 1e-9, 1.0)
    betas: tuple[float, float] = ranged((0.0, 0.99), 0.0, 0.9999)
    ema_decay: float = ranged(0.999, 0.0, 1.0)
    ema_start: int = ranged(500, 0, None)
    seed: int = ranged(0, 0, None)
    val_fraction: float = ranged(0.1, 0.0, 0.9)
    sample_every: int = ranged(500, 1, None)
    checkpoint_every: int = ranged(1000, 1, None)
    log_every: int = ranged(50, 1, None)
    num_threads: int = ranged(0, 0, 1024)
    precision: Literal["fp32", "bf16"] = "fp32"
    d_warmup_steps: int = ranged(0, 0, None)
    keep_checkpoints: int = ranged(3, 1, None)


# ---------------------------------------------------------------------------------------------- upgrade
#: options removed from the code (most when it was split into families, 2026-12), with the value that means "off"
#: (a tuple: each of them does). A config that sets one of them to that value (or leaves it out) loads; any other
#: value is refused by name. The runs that used them are recorded in docs/EXPERIMENTS.md, docs/AVGAN.md and
#: presets/training/rejected/ (git history has the code).
REMOVED_OPTIONS: dict[str, dict[str, Any]] = {
    "model": {
        "family": None,  # moved to the top level
        "d_twin_classifier": False,
        "d_minibatch_std": 0,
        "appearance_code_dim": 0,
        "appearance_thumbnail": None,
        # avgan digits experiments (docs/AVGAN.md, "Tried for the sound, not kept")
        "code_projection": False,  # avgan, 2026-12-03
        "code_fake_class": False,  # avgan, 2026-12-03
        "code_head": "pooled",  # avgan, 2026-12-03 (second session)
        "stream_scores": ("none", False),  # avgan, 2026-12-04 (faces voices; docs/AVGAN.md); a bool at 5ce0256
        "content_encoder": False,  # avgan, 2026-12-04 (faces voices; docs/AVGAN.md)
    },
    "loss": {
        "r1_gamma": 0.0,
        "r1_interval": None,
        "landmark_weight": 0.0,
        "landmark_components": None,
        "landmark_match": None,
        "appearance_code_weight": 0.0,
        "reconstruction_weight": None,  # avgan model.content_encoder, 2026-12-04
        "kl_weight": None,  # avgan model.content_encoder, 2026-12-04
        # avgan digits, conditional IMLE on the sound (docs/AVGAN.md, "Tried for the sound"), 2026-12-05
        "imle_weight": 0.0,
        "imle_samples": None,
        "imle_max_shift": None,
        "imle_cepstrum": None,
        # avgan digits, the sound guide trained adversarially (docs/AVGAN.md), 2026-12-05
        "guide_epsilon": 0.0,
    },
    "train": {"cache_features": None},
    "data": {"sound_placement": "random"},  # avgan, 2026-12-03
    "augment": {"spectrogram": []},  # avgan, 2026-12-03 (second session)
}


def upgrade_config_mapping(data: dict[str, Any], source: str = "<config>") -> dict[str, Any]:
    """Bring a config mapping of any earlier layout to the current one (the single upgrade path).

    * ``model.family`` moves to the top-level ``family`` key (default ``wav2pix``);
    * options in :data:`REMOVED_OPTIONS` are dropped when they are off (their "off" value, or ``None`` where any
      value is harmless), and refused otherwise.

    Raises:
        ConfigError: a removed option that is switched on (names the file, key and value), or two different
            family names.
    """
    data = {k: (dict(v) if isinstance(v, dict) else v) for k, v in (data or {}).items()}
    model = data.get("model")
    if isinstance(model, dict) and "family" in model:
        inner = model["family"]
        if "family" in data and data["family"] != inner:
            raise ConfigError(f"{source}: key 'model.family': {inner!r} disagrees with 'family': {data['family']!r}")
        data.setdefault("family", inner)
    for section, options in REMOVED_OPTIONS.items():
        values = data.get(section)
        if not isinstance(values, dict):
            continue
        for name, off in options.items():
            if name not in values:
                continue
            value = values.pop(name)
            offs = off if isinstance(off, tuple) else (off,)
            if off is not None and value not in offs and name != "family":
                raise ConfigError(
                    f"{source}: key '{section}.{name}': {value!r}: this option was removed (it never improved the "
                    f"shipped model; see docs/EXPERIMENTS.md or docs/AVGAN.md); only "
                    f"{' or '.join(repr(o) for o in offs)} is accepted"
                )
    return data


def family_of(data: dict[str, Any], source: str = "<config>") -> str:
    """The family named by an (upgraded) config mapping; :data:`DEFAULT_FAMILY` when it names none.

    Raises:
        ConfigError: ``family`` is not a string.
    """
    name = data.get("family", DEFAULT_FAMILY)
    if not isinstance(name, str):
        raise ConfigError(f"{source}: key 'family': expected a family name, got {name!r}")
    return name


def config_from_dict(data: dict[str, Any] | None, source: str = "<config>") -> Any:
    """The family config dataclass of a plain mapping (strict; see the module docstring).

    Raises:
        ConfigError: an unknown family (lists the known ones), or any invalid key or value.
    """
    from training import families

    data = upgrade_config_mapping(dict(data or {}), source)
    name = family_of(data, source)
    try:
        family = families.get(name)
    except KeyError as exc:
        raise ConfigError(f"{source}: key 'family': {exc.args[0]}") from None
    data["family"] = name
    return configs.from_mapping(family.config_type, data, source=source)


def load_config(path: str | Path | None, family: str = DEFAULT_FAMILY) -> Any:
    """Load a family config from YAML (``None``: the defaults of ``family``).

    Raises:
        ConfigError: unreadable file, unknown family, key or type, a NaN or out-of-range value.
    """
    if path is None:
        return config_from_dict({"family": family}, source="<defaults>")
    return config_from_dict(configs.load_yaml(path), source=str(path))


def to_dict(cfg: Any) -> dict[str, Any]:
    """A config as plain dicts (for YAML, JSON, checkpoint metadata)."""
    return configs.to_mapping(cfg)
