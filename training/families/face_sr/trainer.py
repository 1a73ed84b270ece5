"""The face_sr training step: L1 loss between the network's upscale of a low-resolution patch and the
high-resolution patch (EDSR's loss, Lim et al. 2017), no discriminator."""

from __future__ import annotations

import numpy as np
import torch

from training.data.batches import Batches
from training.families.contract import TrainContext
from training.families.face_sr.data import psnr

VAL_FACES = 32
"""Validation faces whose PSNR is logged (evenly spaced; whole faces through the moving-average network)."""


def to_tensor(images: np.ndarray, device: torch.device | str = "cpu") -> torch.Tensor:
    """uint8 [B, H, W, 3] -> float32 [B, 3, H, W] in [-1, 1]."""
    x = torch.from_numpy(np.ascontiguousarray(images)).to(device).permute(0, 3, 1, 2).float()
    return x / 127.5 - 1.0


def to_images(x: torch.Tensor) -> np.ndarray:
    """float [B, 3, H, W] in [-1, 1] -> uint8 [B, H, W, 3] (rounded, clipped), as the engine shows it."""
    return ((x.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


@torch.no_grad()
def upscale(net: torch.nn.Module, low: np.ndarray, device: torch.device | str = "cpu", batch: int = 16) -> np.ndarray:
    """``net`` on uint8 [N, h, w, 3] faces -> uint8 [N, scale*h, scale*w, 3]."""
    parts = [to_images(net(to_tensor(low[i : i + batch], device))) for i in range(0, len(low), batch)]
    return np.concatenate(parts)


class FaceSRTrainer:
    """One Adam step of the network on ``train.batch_size`` random patches (``data.patch`` px at the low
    resolution, aligned at ``scale`` times that in the target), mirrored at random; every ``train.log_every`` steps
    the log also gets ``val_psnr`` (dB, moving-average network, whole faces, the first :data:`VAL_FACES` evenly
    spaced validation faces) and ``val_psnr_bicubic`` (OpenCV's bicubic upscale of the same faces)."""

    def __init__(self, ctx: TrainContext) -> None:
        import cv2

        self.ctx = ctx
        tc = ctx.cfg.train
        self.batches = Batches(ctx.split.train, tc.batch_size, tc.seed, ctx.rank, ctx.world)
        self.rng = np.random.default_rng([tc.seed, ctx.rank, ctx.step])
        self.scale = ctx.cfg.model.scale
        val = ctx.split.val
        self.val = (
            val[np.linspace(0, len(val) - 1, min(VAL_FACES, len(val))).round().astype(np.int64)] if len(val) else val
        )
        side = ctx.data.high.shape[1]
        self.val_bicubic = (
            float(
                np.mean(
                    [
                        psnr(cv2.resize(ctx.data.low[i], (side, side), interpolation=cv2.INTER_CUBIC), ctx.data.high[i])
                        for i in self.val
                    ]
                )  # fmt: skip
            )
            if len(self.val)
            else float("nan")
        )

    def _patches(self, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        data, s, p = self.ctx.data, self.scale, self.ctx.cfg.data.patch
        low, high = data.low[idx], data.high[idx]
        n, size = len(idx), low.shape[1]
        if p and p < size:
            ys, xs = self.rng.integers(0, size - p + 1, n), self.rng.integers(0, size - p + 1, n)
            low = np.stack([low[k, y : y + p, x : x + p] for k, (y, x) in enumerate(zip(ys, xs))])
            high = np.stack([high[k, y * s : (y + p) * s, x * s : (x + p) * s] for k, (y, x) in enumerate(zip(ys, xs))])
        if self.ctx.cfg.data.flip:
            flip = self.rng.random(n) < 0.5
            low[flip], high[flip] = low[flip][:, :, ::-1], high[flip][:, :, ::-1]
        return low, high

    def step(self, step: int, update_g: bool) -> dict[str, float]:
        ctx = self.ctx
        low, high = self._patches(self.batches.next())
        x, y = to_tensor(low, ctx.device), to_tensor(high, ctx.device)
        with ctx.autocast():
            out = ctx.G(x)
        loss = (out.float() - y).abs().mean()
        ctx.optimise(ctx.opt_g, loss, list(ctx.G.parameters()))
        value = float(loss.detach())
        stats = {"loss_g": value, "loss_l1": value}
        if (step + 1) % ctx.cfg.train.log_every == 0 and len(self.val):
            got = upscale(ctx.G_ema, ctx.data.low[self.val], ctx.device)
            stats["val_psnr"] = float(psnr(got, ctx.data.high[self.val]).mean())
            stats["val_psnr_bicubic"] = self.val_bicubic
        return stats

    def sample_grid(self) -> np.ndarray | None:
        """Rows of four validation faces: bicubic upscale, the network's (moving average), the real crop."""
        import cv2

        if not len(self.val):
            return None
        pick = self.val[:: max(1, len(self.val) // 4)][:4]
        data = self.ctx.data
        side = data.high.shape[1]
        sr = upscale(self.ctx.G_ema, data.low[pick], self.ctx.device)
        rows = [np.concatenate([cv2.resize(data.low[i], (side, side), interpolation=cv2.INTER_CUBIC), s, data.high[i]],
                               axis=1) for i, s in zip(pick, sr)]  # fmt: skip
        return np.concatenate(rows, axis=0)

    def on_checkpoint(self) -> None:
        """Nothing trains alongside."""
