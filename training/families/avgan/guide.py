"""A frozen spoken-digit classifier that guides the avgan digits generator's sound (``loss.guide_weight``).

The discriminator's own label classifier on the spectrogram stream learns with the GAN, and the generator learned
sounds that it names without being the word (docs/AVGAN.md: in an earlier run it named 93 % of the sounds as their
code, the evaluation's classifier 63 %; for the model shipped before the guide, PocketSphinx heard the drawing's digit
in 4 %): adversarial examples of a classifier that keeps changing, the weakness of AC-GAN-style label losses. The guide is trained once, on real recordings only, and then fixed: the
generator is pulled towards sounds that a classifier of real speech names as the code (the idea of classifier
guidance, Dhariwal & Nichol, NeurIPS 2021, as a generator loss). With it the shipped model's sounds are named as
their code by every reader tried, also one trained on recordings the generator never saw, and PocketSphinx hears
the drawing's digit about five times as often (docs/AVGAN.md).

:class:`SoundGuide`: its own front end (log-mel, 64 bands, n_fft 256, hop 64, each utterance standardised) and a
small 2-D CNN, another architecture and front end than the evaluation's :class:`~.digits.SpokenDigitClassifier`;
trained on the training recordings only (FSDD takes >= ``data.val_takes``), each at a random place in the window
and a random gain. Cached under ``$AVGAN_CACHE`` like the evaluation's classifiers; about 80 s on two threads.
(Tried and not kept: the same classifier trained adversarially, Madry et al. 2018; its generator's sounds were all
alike. Code in commit 7703aa3.)
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from training.families.avgan.digits import _fit, sound_batches
from training.layers import LogMel

log = logging.getLogger(__name__)

GUIDE_VERSION = 2


class SoundGuide(nn.Module):
    """Speech float32 [B, S] in [-1, 1] at ``sample_rate`` Hz -> logits float32 [B, 10].

    :meth:`front` gives the standardised log-mel float32 [B, 1, 64, T] (T = 1 + (S - 256) // 64); :meth:`body`
    reads it.
    """

    def __init__(self, sample_rate: int) -> None:
        super().__init__()
        self.mel = LogMel(256, 64, 64, sample_rate)
        self.body = nn.Sequential(
            nn.Conv2d(1, 16, 3, stride=2, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
            nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(64, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(), nn.AdaptiveAvgPool2d((2, 4)),
            nn.Flatten(), nn.Linear(64 * 8, 10),
        )  # fmt: skip

    def front(self, audio: torch.Tensor) -> torch.Tensor:
        m = self.mel(audio)
        m = (m - m.mean(dim=(1, 2), keepdim=True)) / (m.std(dim=(1, 2), keepdim=True) + 1e-3)
        return m.unsqueeze(1)

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        return self.body(self.front(audio))


def guide_for(data, val_takes: int, cache_dir: Path | None, seed: int = 0, epochs: int = 12) -> tuple[SoundGuide, dict]:
    """The guide for a :class:`~training.families.avgan.data.DigitData`: trained on its recordings of takes >=
    ``val_takes`` (or read from the cache under ``cache_dir``; None: not cached), frozen (eval mode, no gradients
    for its weights), and a report: its accuracy on the held-out takes (each recording centred in the window).

    Raises:
        ValueError: no training recordings (every take held out).
    """
    from safetensors.torch import load_file, save_file

    from training.families.avgan.data import place

    train = np.flatnonzero(data.takes >= val_takes)
    held = np.flatnonzero(data.takes < val_takes)
    if not len(train):
        raise ValueError(
            f"data.val_takes: {val_takes} holds out every recording; the sound guide needs some to learn from"
        )
    key = hashlib.sha1(json.dumps([GUIDE_VERSION, seed, epochs, val_takes, data.sample_rate, data.window,
                                   len(data.clips), [float(c[:64].sum()) for c in data.clips[:50]]])
                       .encode()).hexdigest()[:16]  # fmt: skip
    path = None if cache_dir is None else Path(cache_dir) / f"avgan-digit-guide-{key}.safetensors"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = SoundGuide(data.sample_rate)
    seconds = 0.0
    if path is not None and path.is_file():
        model.load_state_dict(load_file(str(path)))
    else:
        started = time.perf_counter()
        log.info("training the sound guide on %d recordings", len(train))
        # the evaluation's training loop and batches (digits._fit, sound_batches), on two threads
        _fit(model, train, data.labels[train], sound_batches(data, train), epochs, seed, threads=2)
        seconds = time.perf_counter() - started
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    model.eval().requires_grad_(False)
    report: dict = {"train_items": int(len(train)), "held_out_items": int(len(held)),
                    "training_seconds": round(seconds, 1), "cache": None if path is None else str(path)}  # fmt: skip
    if len(held):
        x = torch.from_numpy(np.stack([place(data.clips[i], data.window) for i in held]))
        with torch.no_grad():
            report["held_out_accuracy"] = float(
                (model(x).argmax(1) == torch.from_numpy(data.labels[held])).float().mean()
            )
    return model, report
