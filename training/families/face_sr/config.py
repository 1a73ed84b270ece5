"""The face_sr family's config: 4x face super-resolution (64 -> 256 px) trained on real face crops.

The defaults are the shipped ``presets/models/face-sr-4x`` recipe (``presets/training/face-sr-4x.yaml``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from engine.configs import ranged
from training.config import TrainConfig


@dataclass(frozen=True)
class SRModelConfig:
    """Architecture (:class:`training.families.face_sr.networks.FaceSRNet`).

    input_size: side of the low-resolution input, px (the face generator's image size); the output is
    ``scale`` times larger. channels: feature width at the input resolution. blocks: residual blocks (two 3x3
    convolutions each, EDSR-style without batch norm).
    """

    input_size: int = ranged(64, 8, 1024, "px")
    scale: Literal[2, 4] = 4
    channels: int = ranged(24, 4, 256)
    blocks: int = ranged(4, 0, 64)


@dataclass(frozen=True)
class SRDataConfig:
    """Training crops.

    patch: side of the random low-resolution training patch, px (the high-resolution patch is ``scale`` times
    larger; 0 = whole faces). flip: mirror half of the patches left-right.
    """

    patch: int = ranged(32, 0, 1024, "px")
    flip: bool = True


@dataclass(frozen=True)
class FaceSRConfig:
    """Resolved face_sr training config: what ``run.py train --config`` reads when ``family: face_sr``.

    ``train`` is the shared schedule; Adam's betas default to (0.9, 0.999) here (a pixel loss, no adversary),
    ``lr_d`` is unused.
    """

    family: Literal["face_sr"] = "face_sr"
    model: SRModelConfig = field(default_factory=SRModelConfig)
    data: SRDataConfig = field(default_factory=SRDataConfig)
    train: TrainConfig = field(
        default_factory=lambda: TrainConfig(steps=6000, batch_size=16, lr_g=5e-4, betas=(0.9, 0.999), ema_start=0)
    )
