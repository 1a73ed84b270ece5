"""A toy model family, defined outside ``training/``: proof that the family contract is enough.

``tone2colour``: a tone's pitch -> a flat colour patch. Data: ``DIR/<class>/*.wav`` (any rate, mono), and each class
has a fixed colour (:func:`class_colour`). The generator maps the log-mel spectrum of the tone (inside the graph, as
every family does) plus noise to a 16x16 RGB image; the discriminator scores (image, tone embedding) pairs with a
projection term. Everything here talks to the shared code only through :mod:`training.families.contract`.
"""

from __future__ import annotations

import argparse
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from engine.audio import load_audio
from engine.configs import ranged
from engine.errors import UserError
from training import losses
from training.config import AudioConfig, TrainConfig
from training.data.batches import Batches
from training.families.contract import Family, GraphSource, InferenceGraph, Split, TensorSpec, TrainContext
from training.layers import LogMel, to_uint8

SIZE = 16


def class_colour(name: str) -> np.ndarray:
    """The fixed colour of a class: RGB uint8 [3] from the name's hash."""
    return np.frombuffer(hashlib.sha1(name.encode()).digest()[:3], np.uint8).copy()


@dataclass(frozen=True)
class ToyModelConfig:
    """width: hidden units; noise_dim: noise inputs."""

    width: int = ranged(32, 4, 1024)
    noise_dim: int = ranged(4, 1, 64)


@dataclass(frozen=True)
class ToyConfig:
    family: Literal["tone2colour"] = "tone2colour"
    audio: AudioConfig = field(default_factory=lambda: AudioConfig(sample_rate=8000, window_seconds=0.25))
    model: ToyModelConfig = field(default_factory=ToyModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


@dataclass
class ToyData:
    audio: np.ndarray  # float32 [N, S]
    labels: np.ndarray  # int64 [N]
    classes: list[str]


class Encoder(nn.Module):
    """audio [B, S] -> embedding [B, 16]: log-mel frames averaged over time, then a linear map."""

    def __init__(self, cfg: ToyConfig) -> None:
        super().__init__()
        self.mel = LogMel(256, 64, 16, cfg.audio.sample_rate)
        self.proj = nn.Linear(16, 16)

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        return self.proj(self.mel(audio).mean(dim=2) / 10)


class ToyGenerator(nn.Module):
    """(audio [B, S], noise [B, Z]) -> image [B, 3, 16, 16] in [-1, 1]."""

    def __init__(self, cfg: ToyConfig) -> None:
        super().__init__()
        self.encoder = Encoder(cfg)
        w = cfg.model.width
        self.body = nn.Sequential(nn.Linear(16 + cfg.model.noise_dim, w), nn.LeakyReLU(0.2), nn.Linear(w, 3 * 4 * 4))

    def forward(self, audio: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        x = self.body(torch.cat([self.encoder(audio), noise], dim=1)).view(-1, 3, 4, 4)
        return torch.tanh(F.interpolate(x, size=(SIZE, SIZE), mode="nearest"))


class ToyDiscriminator(nn.Module):
    """(image [B, 3, 16, 16], embedding [B, 16]) -> score [B] (projection discriminator)."""

    def __init__(self, cfg: ToyConfig) -> None:
        super().__init__()
        w = cfg.model.width
        self.body = nn.Sequential(nn.Conv2d(3, w, 4, 4), nn.LeakyReLU(0.2), nn.Flatten(), nn.Linear(w * 16, w))
        self.psi, self.embed = nn.Linear(w, 1), nn.Linear(16, w)

    def forward(self, image: torch.Tensor, embedding: torch.Tensor) -> torch.Tensor:
        h = self.body(image)
        return self.psi(h).squeeze(1) + (self.embed(embedding) * h).sum(1)


class ToyTrainer:
    def __init__(self, ctx: TrainContext) -> None:
        self.ctx = ctx
        self.batches = Batches(ctx.split.train, ctx.cfg.train.batch_size, ctx.cfg.train.seed, ctx.rank, ctx.world)
        colours = np.stack([class_colour(c) for c in ctx.data.classes]).astype(np.float32) / 127.5 - 1
        self.colours = torch.from_numpy(colours)

    def step(self, step: int, update_g: bool) -> dict[str, float]:
        ctx, cfg = self.ctx, self.ctx.cfg
        idx = self.batches.next()
        audio = torch.from_numpy(ctx.data.audio[idx])
        real = self.colours[torch.from_numpy(ctx.data.labels[idx])][:, :, None, None].expand(-1, 3, SIZE, SIZE)
        noise = torch.randn(len(idx), cfg.model.noise_dim)
        with torch.no_grad():
            e = ctx.G.encoder(audio)
            fake = ctx.G(audio, noise)
        loss_d = losses.d_loss("hinge", ctx.D(real, e), [ctx.D(fake, e)])
        ctx.optimise(ctx.opt_d, loss_d, list(ctx.D.parameters()))
        loss_g = torch.tensor(float("nan"))
        if update_g:
            fake = ctx.G(audio, noise)
            loss_g = losses.g_loss("hinge", ctx.D(fake, ctx.G.encoder(audio))) + (fake - real).square().mean()
            ctx.optimise(ctx.opt_g, loss_g, list(ctx.G.parameters()))
        return {"loss_d": loss_d.item(), "loss_g": loss_g.item()}

    def sample_grid(self) -> np.ndarray:
        audio = torch.from_numpy(self.ctx.data.audio[:4])
        with torch.no_grad():
            images = self.ctx.G_ema(audio, torch.zeros(4, self.ctx.cfg.model.noise_dim))
        return np.concatenate(list(to_uint8(images)), axis=1)

    def on_checkpoint(self) -> None:
        pass


class Tone2Colour(Family):
    name = "tone2colour"
    config_type = ToyConfig

    def load_data(self, cfg: ToyConfig, data_dirs: Sequence[str]) -> ToyData:
        files = sorted((p.parent.name, p) for d in data_dirs for p in Path(d).glob("*/*.wav"))
        if not files:
            raise UserError(f"{list(data_dirs)}: no DIR/<class>/*.wav files")
        classes = sorted({c for c, _ in files})
        s = cfg.audio.window_samples
        audio = np.stack([np.resize(load_audio(p, cfg.audio.sample_rate), s) for _, p in files]).astype(np.float32)
        return ToyData(audio, np.asarray([classes.index(c) for c, _ in files], np.int64), classes)

    def split(self, cfg: ToyConfig, data: ToyData) -> Split:
        val = np.arange(len(data.labels)) % 5 == 4
        return Split(np.flatnonzero(~val), np.flatnonzero(val), {"rule": "every fifth file"})

    def labels(self, data: ToyData) -> list[str]:
        return list(data.classes)

    def build(self, cfg: ToyConfig, labels: Sequence[str]) -> tuple[nn.Module, nn.Module]:
        return ToyGenerator(cfg), ToyDiscriminator(cfg)

    def trainer(self, ctx: TrainContext) -> ToyTrainer:
        return ToyTrainer(ctx)

    def inference(
        self, cfg: ToyConfig, G: nn.Module, labels: Sequence[str], source: GraphSource, options: argparse.Namespace
    ) -> InferenceGraph:
        return InferenceGraph(
            module=G,
            inputs={
                "audio": TensorSpec((None, cfg.audio.window_samples), "a tone", fill="required"),
                "noise": TensorSpec((None, cfg.model.noise_dim), "standard normal", fill="normal"),
            },
            outputs={"image": TensorSpec((None, 3, SIZE, SIZE), "a flat colour in [-1, 1]")},
            sample_rate=cfg.audio.sample_rate,
            family_info={"colours": {c: class_colour(c).tolist() for c in labels}},
        )


FAMILY = Tone2Colour()
