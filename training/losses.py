"""Adversarial losses for conditional GANs.

* LSGAN (Mao et al., ICCV 2017), as used by Wav2Pix: least squares on scores, targets 1 (real) / 0 (fake).
* Hinge (Lim & Ye 2017; Miyato et al. 2018), as used by Wan, Chuang & Lee (ICASSP 2019).

Scores are float32 [B]; losses are scalars.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def d_loss(kind: str, real: torch.Tensor, fakes: list[torch.Tensor]) -> torch.Tensor:
    """Discriminator loss: ``real`` scores should be high, each tensor in ``fakes`` low (averaged).

    With matching-aware training ``fakes`` holds (real image, wrong speech) and (fake image, right speech)
    scores (Reed et al. 2016).
    """
    negatives = sum(d_negative(kind, f) for f in fakes) / len(fakes)  # raises on an unknown kind
    if kind == "hinge":
        return F.relu(1.0 - real).mean() + negatives
    return ((real - 1.0) ** 2).mean() + negatives


def d_negative(kind: str, scores: torch.Tensor) -> torch.Tensor:
    """The discriminator's loss on one batch of scores [B] that should be low: mean relu(1 + s) (hinge) or
    mean s^2 (LSGAN).

    Raises:
        ValueError: unknown ``kind``.
    """
    if kind == "hinge":
        return F.relu(1.0 + scores).mean()
    if kind == "lsgan":
        return (scores**2).mean()
    raise ValueError(f"loss.kind: unknown '{kind}' (expected lsgan or hinge)")


def g_loss(kind: str, fake: torch.Tensor) -> torch.Tensor:
    """Generator loss on the scores of its (fake image, right speech) pairs."""
    if kind == "hinge":
        return -fake.mean()
    if kind == "lsgan":
        return ((fake - 1.0) ** 2).mean()
    raise ValueError(f"loss.kind: unknown '{kind}' (expected lsgan or hinge)")


def mode_seeking(
    x1: torch.Tensor, x2: torch.Tensor, z1: torch.Tensor, z2: torch.Tensor, eps: float = 1e-5
) -> torch.Tensor:
    """Mode-seeking regulariser (Mao et al., CVPR 2019): ``1 / (mean|x1 - x2| / mean|z1 - z2| + eps)``.

    Args:
        x1, x2: images [B, 3, H, W] generated from the same conditioning with noises ``z1``, ``z2`` [B, Z].
    """
    d_img = (x1 - x2).abs().mean(dim=(1, 2, 3))
    d_z = (z1 - z2).abs().mean(dim=1)
    return (1.0 / (d_img / d_z + eps)).mean()
