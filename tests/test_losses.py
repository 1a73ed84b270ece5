"""Adversarial losses and the mode-seeking regulariser."""

from __future__ import annotations

import pytest
import torch

from training import losses


def test_hinge_and_lsgan_optima():
    good_real, good_fake = torch.full((4,), 2.0), torch.full((4,), -2.0)
    assert losses.d_loss("hinge", good_real, [good_fake]) == 0
    assert losses.d_loss("lsgan", torch.ones(4), [torch.zeros(4), torch.zeros(4)]) == 0
    assert losses.g_loss("lsgan", torch.ones(4)) == 0
    assert losses.g_loss("hinge", torch.full((4,), 3.0)) == -3.0
    with pytest.raises(ValueError, match="loss.kind"):
        losses.d_loss("wgan", good_real, [good_fake])


def test_mode_seeking_penalises_ignored_noise():
    z1, z2 = torch.randn(8, 16), torch.randn(8, 16)
    same = torch.zeros(8, 3, 4, 4)
    different = torch.rand(8, 3, 4, 4)
    assert losses.mode_seeking(same, same, z1, z2) > 1e3
    assert losses.mode_seeking(same, different, z1, z2) < 10
