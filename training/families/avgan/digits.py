"""The digit classifiers the avgan digits evaluation reads generated samples with.

Both are small CNNs trained here on the real *training* split of the data (MNIST drawings, FSDD recordings) and
scored on its held-out split (the drawings every n-th index, FSDD takes 0-4), the reference next to which the
generated samples' figures are read:

* :class:`DrawingClassifier` — a LeNet-5-sized CNN (LeCun et al. 1998) on 32x32 grey drawings;
* :class:`SpokenDigitClassifier` — a log-mel spectrogram (:class:`training.layers.LogMel`) and a small 2-D CNN on
  1 s of speech at 8 kHz (each recording at a random place in the window while training, centred for scoring).

Trained once per dataset and cached under the data cache (``$AVGAN_CACHE``), keyed by the data and this module's
:data:`VERSION`; about 3 minutes. The training is reproducible: the initial weights come from the seed and it runs on
one thread (version 1 started from whatever torch random state the process was in: two trainings differed, and
one model's agreement moved by 0.05 between them).

A third reader owes nothing to this project's data: :func:`recognise_digits`, CMU PocketSphinx (Huggins-Daines et
al. 2006; its US English acoustic model and dictionary ship inside the ``pocketsphinx`` wheel) with a grammar of
the ten words. A classifier trained here can be satisfied by sounds that are no words at all; a speech recogniser
hears words or nothing.
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

VERSION = 2


class DrawingClassifier(nn.Module):
    """uint8-range drawings float32 [B, 1, 32, 32] in [-1, 1] -> logits [B, 10]; :meth:`features` gives the
    128-d penultimate layer (the space of the drawings' Fréchet distance, as FID reads Inception's)."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Dropout(0.3), nn.Linear(64 * 16, 128), nn.ReLU(), nn.Linear(128, 10),
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    @torch.no_grad()
    def features(self, x: torch.Tensor, batch: int = 256) -> np.ndarray:
        """float32 [B, 128] penultimate activations (after ReLU) of drawings float32 [B, 1, 32, 32] in [-1, 1] (a CPU
        tensor, as :func:`drawings_to_tensor` gives). Leaves the module in eval mode, as :func:`predict` does."""
        self.eval()
        return torch.cat([self.body[:-1](x[i : i + batch]) for i in range(0, len(x), batch)]).numpy()


class SpokenDigitClassifier(nn.Module):
    """Speech float32 [B, S] at ``sample_rate`` Hz -> logits [B, 10] (log-mel, 40 bands, 2-D CNN)."""

    def __init__(self, sample_rate: int) -> None:
        super().__init__()
        self.mel = LogMel(256, 80, 40, sample_rate)
        self.body = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(), nn.AdaptiveAvgPool2d((2, 4)),
            nn.Flatten(), nn.Dropout(0.3), nn.Linear(64 * 8, 10),
        )  # fmt: skip

    def _front(self, audio: torch.Tensor) -> torch.Tensor:
        peak = audio.abs().amax(dim=1, keepdim=True).clamp_min(1e-3)
        m = self.mel(audio / peak)
        m = (m - m.mean(dim=(1, 2), keepdim=True)) / (m.std(dim=(1, 2), keepdim=True) + 1e-3)
        return m.unsqueeze(1)

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        return self.body(self._front(audio))

    @torch.no_grad()
    def features(self, audio: torch.Tensor, batch: int = 256) -> np.ndarray:
        """float32 [B, 512] penultimate activations of speech float32 [B, S] (a CPU tensor): the space of the sounds'
        Fréchet distance. Leaves the module in eval mode."""
        self.eval()
        return torch.cat([self.body[:-1](self._front(audio[i : i + batch])) for i in range(0, len(audio), batch)]).numpy()


DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


def recognise_digits(sounds: np.ndarray, sample_rate: int, seed: int = 0) -> np.ndarray:
    """The digit word CMU PocketSphinx hears in each sound, with a JSGF grammar of exactly one of "zero" .. "nine".

    Args:
        sounds: float32 [B, S], samples in [-1, 1] at ``sample_rate`` Hz (one utterance each; non-finite samples
            count as silence; S = 0 hears nothing).
        sample_rate: Hz; resampled to the acoustic model's 16 kHz with soxr.
        seed: seed of the dither (Gaussian, 1e-3 of full scale, after peak normalisation to 0.9): the recogniser's
            feature normalisation fails on exact digital silence (FSDD's zero padding: it then hears nothing in
            half of the real recordings).

    Returns:
        int64 [B]: the digit, or -1 where the recogniser hears none.

    Raises:
        ImportError: ``pocketsphinx`` is not installed.
    """
    import os

    import soxr
    from pocketsphinx import Config, Decoder, get_model_path

    model = os.path.join(get_model_path(), "en-us")
    decoder = Decoder(Config(hmm=os.path.join(model, "en-us"), dict=os.path.join(model, "cmudict-en-us.dict"),
                             loglevel="FATAL"))  # fmt: skip
    decoder.add_jsgf_string("digits", "#JSGF V1.0;\ngrammar digits;\npublic <digit> = (" + " | ".join(DIGIT_WORDS) + ");\n")
    decoder.activate_search("digits")
    rng = np.random.default_rng(seed)
    out = np.full(len(sounds), -1, np.int64)
    for i, x in enumerate(np.asarray(sounds, np.float32)):
        if x.size == 0:
            continue
        x = np.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0)
        x = x / max(1e-6, float(np.abs(x).max())) * 0.9 + rng.normal(0.0, 1e-3, x.shape).astype(np.float32)
        if sample_rate != 16000:
            x = soxr.resample(x, sample_rate, 16000)
        decoder.start_utt()
        decoder.process_raw((np.clip(x, -1.0, 1.0) * 32767).astype(np.int16).tobytes(), full_utt=True)
        decoder.end_utt()
        hyp = decoder.hyp()
        words = hyp.hypstr.split() if hyp is not None else []
        if words and words[0] in DIGIT_WORDS:
            out[i] = DIGIT_WORDS.index(words[0])
    return out


def drawings_to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 [B, H, W] or [B, H, W, C] (grey or RGB, any size) -> float32 [B, 1, 32, 32] in [-1, 1]."""
    x = np.asarray(images)
    if x.ndim == 4:
        x = x.astype(np.float32).mean(axis=3)
    t = torch.from_numpy(np.ascontiguousarray(x, np.float32)).unsqueeze(1) / 127.5 - 1.0
    if t.shape[-1] != 32:
        t = F.interpolate(t, size=(32, 32), mode="bilinear", align_corners=False, antialias=True)
    return t


def _fit(model: nn.Module, x: np.ndarray, y: np.ndarray, make_batch, epochs: int, seed: int, threads: int = 1) -> None:
    """Train a classifier: Adam at 1e-3 on a cosine schedule, batches of 64 items of ``x`` (all of them where fewer)
    made by ``make_batch(idx, numpy_generator)``, labels int64 ``y``; seeded, on a fixed number of ``threads`` (the
    same weights whatever the machine's core count: reduction order). The caller's torch random state and thread
    count are left as they were."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with torch.random.fork_rng(devices=[]):
            _fit_seeded(model, x, y, make_batch, epochs, seed)
    finally:
        torch.set_num_threads(before)


def _fit_seeded(model: nn.Module, x: np.ndarray, y: np.ndarray, make_batch, epochs: int, seed: int) -> None:
    gen = np.random.default_rng(seed)
    torch.manual_seed(seed)
    size = min(64, len(x))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs * max(1, len(x) // size))
    model.train()
    for _ in range(epochs):
        order = gen.permutation(len(x))
        for i in range(0, len(order) - size + 1, size):
            idx = order[i : i + size]
            loss = F.cross_entropy(model(make_batch(idx, gen)), torch.from_numpy(y[idx]))
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    model.eval()


def sound_batches(data, items: np.ndarray):
    """A ``make_batch`` for :func:`_fit` over recordings ``items`` (indices into ``data.clips``): for positions
    ``idx`` into ``items``, float32 [len(idx), data.window], each recording at a random gain of 0.3-1 and a random
    place in the window."""
    from training.families.avgan.data import place

    def batch(idx: np.ndarray, gen: np.random.Generator) -> torch.Tensor:
        out = []
        for i in items[idx]:
            clip = data.clips[int(i)] * float(gen.uniform(0.3, 1.0))
            out.append(place(clip, data.window, int(gen.integers(0, max(1, data.window - len(clip) + 1)))))
        return torch.from_numpy(np.stack(out))

    return batch


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, batch: int = 256) -> np.ndarray:
    """Class probabilities float32 [B, 10] of inputs ``x`` (a tensor the model takes)."""
    model.eval()
    return torch.cat([F.softmax(model(x[i : i + batch]), dim=1) for i in range(0, len(x), batch)]).numpy()


def classifiers_for(data, cache_dir: Path | None, seed: int = 0) -> tuple[DrawingClassifier, SpokenDigitClassifier, dict]:
    """The two classifiers for a :class:`training.families.avgan.data.DigitData` (trained, or read from the cache),
    and a report: their accuracy on the held-out drawings and recordings.

    The split is the data's own (:meth:`DigitData.split` with FSDD takes 0-4 and its held-out drawings).
    """
    from safetensors.torch import load_file, save_file

    from training.families.avgan.data import place

    val_rec = data.takes < 5
    key = hashlib.sha1(json.dumps([VERSION, seed, data.sample_rate, data.window, len(data.clips),
                                   int(data.drawing_val.sum()), data.drawings.shape[1],
                                   [float(c[:64].sum()) for c in data.clips[:50]]]).encode()).hexdigest()[:16]  # fmt: skip
    path = None if cache_dir is None else Path(cache_dir) / f"avgan-digit-classifiers-{key}.safetensors"
    with torch.random.fork_rng(devices=[]):  # the initial weights from ``seed``, not from whatever ran before in the process
        torch.manual_seed(seed)
        drawing, spoken = DrawingClassifier(), SpokenDigitClassifier(data.sample_rate)
    images_all = drawings_to_tensor(data.drawings)
    sounds_val = torch.from_numpy(np.stack([place(data.clips[i], data.window) for i in np.flatnonzero(val_rec)]))
    if path is not None and path.is_file():
        state = load_file(str(path))
        drawing.load_state_dict({k[8:]: v for k, v in state.items() if k.startswith("drawing.")})
        spoken.load_state_dict({k[7:]: v for k, v in state.items() if k.startswith("spoken.")})
        seconds = 0.0
    else:
        started = time.perf_counter()
        train_d = np.flatnonzero(~data.drawing_val)
        log.info("training the digit classifiers on %d drawings and %d recordings", len(train_d), int((~val_rec).sum()))

        def drawing_batch(idx: np.ndarray, gen: np.random.Generator) -> torch.Tensor:
            x = images_all[train_d[idx]]
            shift = gen.integers(-2, 3, size=2)
            return torch.roll(x, shifts=(int(shift[0]), int(shift[1])), dims=(2, 3))

        _fit(drawing, train_d, data.drawing_labels[train_d], drawing_batch, epochs=3, seed=seed)
        train_r = np.flatnonzero(~val_rec)
        _fit(spoken, train_r, data.labels[train_r], sound_batches(data, train_r), epochs=25, seed=seed)
        seconds = time.perf_counter() - started
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            state = {f"drawing.{k}": v.contiguous() for k, v in drawing.state_dict().items()}
            state.update({f"spoken.{k}": v.contiguous() for k, v in spoken.state_dict().items()})
            save_file(state, str(path))
    val_d = np.flatnonzero(data.drawing_val)
    p_draw = predict(drawing, images_all[val_d])
    p_spoken = predict(spoken, sounds_val)
    report = {
        "drawing_classifier": {"train_items": int((~data.drawing_val).sum()), "held_out_items": int(len(val_d)),
                               "held_out_accuracy": float((p_draw.argmax(1) == data.drawing_labels[val_d]).mean())},
        "spoken_digit_classifier": {"train_items": int((~val_rec).sum()), "held_out_items": int(val_rec.sum()),
                                    "held_out_accuracy": float((p_spoken.argmax(1) == data.labels[val_rec]).mean())},
        "training_seconds": round(seconds, 1),
        "cache": None if path is None else str(path),
    }  # fmt: skip
    return drawing, spoken, report
