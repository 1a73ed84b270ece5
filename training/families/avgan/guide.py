"""A robust spoken-digit classifier that guides the avgan digits generator's sound (``loss.guide_weight``).

The discriminator's own label classifier on the spectrogram stream is trained with the GAN, and the generator learns
sounds it names without being the word (docs/AVGAN.md: 93 % named by it, 63 % by the evaluation's classifier,
words heard by PocketSphinx in a few per cent): adversarial examples, the weakness of AC-GAN-style label losses. A
classifier trained to resist adversarial examples has input gradients that point at the features a person reads
(Tsipras et al., ICLR 2019; Santurkar et al., NeurIPS 2019: image synthesis with a single robust classifier), so
pulling a generated sound towards its code through such a classifier has to add speech, not noise that fools it.

:class:`SoundGuide`: its own front end (log-mel, 64 bands, n_fft 256, hop 64, each utterance standardised) and a
small 2-D CNN; another architecture and front end than the evaluation's :class:`~.digits.SpokenDigitClassifier`.
Trained by projected gradient descent adversarial training (Madry et al., ICLR 2018): every batch is replaced by
its worst case within an L-infinity ball of radius ``epsilon`` around the standardised log-mel (``steps`` PGD
steps), on the training recordings only (FSDD takes >= ``data.val_takes``), each at a random place in the window and
a random gain. Cached under ``$AVGAN_CACHE`` like the evaluation's classifiers; a few minutes on one thread.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from training.layers import LogMel

log = logging.getLogger(__name__)

GUIDE_VERSION = 1


class SoundGuide(nn.Module):
    """Speech float32 [B, S] in [-1, 1] at ``sample_rate`` Hz -> logits float32 [B, 10].

    :meth:`front` gives the standardised log-mel float32 [B, 1, 64, T] (T = 1 + (S - 256) // 64) that the
    adversarial training perturbs; :meth:`body` reads it.
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


def pgd(model: SoundGuide, m: torch.Tensor, y: torch.Tensor, epsilon: float, steps: int,
        gen: torch.Generator) -> torch.Tensor:  # fmt: skip
    """The worst case of standardised log-mels ``m`` [B, 1, F, T] for labels ``y`` int64 [B] within an L-infinity
    ball of radius ``epsilon`` (standard deviations): ``steps`` signed-gradient steps of 2.5 epsilon / steps from a
    random start (Madry et al. 2018). Returns a detached tensor like ``m``."""
    delta = (torch.rand(m.shape, generator=gen) * 2 - 1) * epsilon
    for _ in range(steps):
        delta.requires_grad_(True)
        loss = F.cross_entropy(model.body(m + delta), y)
        (grad,) = torch.autograd.grad(loss, delta)
        delta = (delta.detach() + 2.5 * epsilon / steps * grad.sign()).clamp(-epsilon, epsilon)
    return (m + delta).detach()


def fit_guide(model: SoundGuide, clips: list[np.ndarray], labels: np.ndarray, window: int, epsilon: float,
              steps: int, epochs: int, seed: int) -> None:  # fmt: skip
    """Adversarial training of ``model`` on recordings ``clips`` (float32 [n_i]) with digit ``labels`` int64 [N],
    each placed at a random offset in ``window`` samples at a gain of 0.3-1 (one thread, seeded; leaves the
    caller's torch random state and thread count as they were)."""
    from training.families.avgan.data import place

    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            gen = np.random.default_rng(seed)
            tgen = torch.Generator().manual_seed(seed)
            opt = torch.optim.Adam(model.parameters(), lr=1e-3)
            n_batches = max(1, len(clips) // 64)
            sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs * n_batches)
            for _ in range(epochs):
                order = gen.permutation(len(clips))
                for i in range(0, len(order) - 63, 64):
                    idx = order[i : i + 64]
                    x = np.stack([place(clips[j] * float(gen.uniform(0.3, 1.0)), window,
                                        int(gen.integers(0, max(1, window - len(clips[j]) + 1)))) for j in idx])  # fmt: skip
                    y = torch.from_numpy(labels[idx])
                    with torch.no_grad():
                        m = model.front(torch.from_numpy(x))
                    model.eval()  # the attack sees the running statistics, as the generator will
                    m_adv = pgd(model, m, y, epsilon, steps, tgen) if epsilon > 0 else m
                    model.train()
                    loss = F.cross_entropy(model.body(m_adv), y)
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
                    sched.step()
    finally:
        torch.set_num_threads(threads)
    model.eval()


def guide_for(data, val_takes: int, epsilon: float, cache_dir: Path | None, seed: int = 0, steps: int = 2,
              epochs: int = 12) -> tuple[SoundGuide, dict]:  # fmt: skip
    """The robust guide for a :class:`~training.families.avgan.data.DigitData` (trained on its recordings of takes
    >= ``val_takes``, or read from the cache), frozen, and a report: clean and attacked accuracy on the held-out
    takes (each recording centred; attack: 10 PGD steps at ``epsilon``).

    Raises:
        ValueError: ``epsilon`` is negative or not finite.
    """
    from safetensors.torch import load_file, save_file

    from training.families.avgan.data import place

    if not np.isfinite(epsilon) or epsilon < 0:
        raise ValueError(f"loss.guide_epsilon: expected a finite value >= 0, got {epsilon}")
    train = np.flatnonzero(data.takes >= val_takes)
    held = np.flatnonzero(data.takes < val_takes)
    key = hashlib.sha1(json.dumps([GUIDE_VERSION, seed, float(epsilon), steps, epochs, val_takes, data.sample_rate,
                                   data.window, len(data.clips), [float(c[:64].sum()) for c in data.clips[:50]]])
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
        log.info("training the robust sound guide (epsilon %.2f) on %d recordings", epsilon, len(train))
        fit_guide(model, [data.clips[i] for i in train], data.labels[train], data.window, epsilon, steps, epochs, seed)
        seconds = time.perf_counter() - started
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    model.eval().requires_grad_(False)
    report: dict = {"epsilon": epsilon, "train_items": int(len(train)), "held_out_items": int(len(held)),
                    "training_seconds": round(seconds, 1), "cache": None if path is None else str(path)}  # fmt: skip
    if len(held):
        x = torch.from_numpy(np.stack([place(data.clips[i], data.window) for i in held]))
        y = torch.from_numpy(data.labels[held])
        with torch.no_grad():
            m = model.front(x)
            report["held_out_accuracy"] = float((model.body(m).argmax(1) == y).float().mean())
        if epsilon > 0:
            with torch.enable_grad():
                m_adv = pgd(model, m, y, epsilon, 10, torch.Generator().manual_seed(seed))
            with torch.no_grad():
                report["held_out_attacked_accuracy"] = float((model.body(m_adv).argmax(1) == y).float().mean())
    return model, report
