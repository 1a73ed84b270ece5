"""The face super-resolution network: a small EDSR/ESPCN-style convolutional network.

After Lim et al., "Enhanced Deep Residual Networks for Single Image Super-Resolution" (EDSR, CVPRW 2017:
residual blocks without batch normalisation, a global skip over the body) and Shi et al., "Real-Time Single
Image and Video Super-Resolution Using an Efficient Sub-Pixel Convolutional Neural Network" (ESPCN, CVPR 2016:
all convolutions at the low resolution, one sub-pixel convolution -- ``PixelShuffle`` -- to the output size).
The network predicts the difference to a bilinear upscale of its input (residual learning, as VDSR, Kim et al.
CVPR 2016); bilinear because ONNX Runtime's cubic ``Resize`` alone took ~30 ms for 64 -> 256 px on 2 CPU cores,
bilinear 0.6 ms.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from training.families.face_sr.config import SRModelConfig


class ResidualBlock(nn.Module):
    """``x + conv(relu(conv(x)))`` (3x3 convolutions, ``channels`` wide; EDSR's block without the scaling)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.relu(self.conv1(x)))


class FaceSRNet(nn.Module):
    """image float32 [B, 3, h, w] in [-1, 1] -> float32 [B, 3, scale*h, scale*w] (about [-1, 1]; not clipped).

    Fully convolutional: any input size works; it is trained on ``data.patch`` crops and exported for
    ``model.input_size``.
    """

    def __init__(self, cfg: SRModelConfig) -> None:
        super().__init__()
        c, s = cfg.channels, cfg.scale
        self.scale = s
        self.head = nn.Conv2d(3, c, 3, padding=1)
        self.body = nn.Sequential(*[ResidualBlock(c) for _ in range(cfg.blocks)])
        self.body_out = nn.Conv2d(c, c, 3, padding=1)
        self.upsample = nn.Sequential(nn.Conv2d(c, 3 * s * s, 3, padding=1), nn.PixelShuffle(s))
        nn.init.zeros_(self.upsample[0].weight)  # starts as the bilinear upscale exactly
        nn.init.zeros_(self.upsample[0].bias)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        h = self.head(image)
        h = h + self.body_out(self.body(h))
        base = F.interpolate(image, scale_factor=self.scale, mode="bilinear", align_corners=False)
        return base + self.upsample(h)
