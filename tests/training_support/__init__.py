"""Helpers for training tests: tiny synthetic datasets in the Wav2Pix layout."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import soundfile as sf

TINY_MODEL = {
    "g_channels": 32,
    "g_min_channels": 16,
    "d_channels": 8,
    "encoder_channels": 16,
    "embedding_dim": 16,
    "noise_dim": 8,
    "pose_code_dim": 0,
}


def make_wav2pix_dataset(
    root: Path, identities: int = 2, faces: int = 4, snippets: int = 2, rate: int = 16000, seconds: float = 1.0
) -> Path:
    """Write a tiny dataset in the Wav2Pix layout: JPEG bytes named .png, FLAC speech-like tones.

    Each identity gets its own colour and pitch, so identity is learnable. Returns ``root``.
    """
    rng = np.random.default_rng(0)
    n = 0
    for k in range(identities):
        d = root / f"person{k}"
        d.mkdir(parents=True, exist_ok=True)
        for f in range(faces):
            img = np.full((96, 96, 3), 40 + 80 * k, np.uint8)
            cv2.circle(img, (48 + 3 * f, 48), 30, (200, 160 - 30 * k, 120 + f * 10), -1)
            ok, jpeg = cv2.imencode(".jpg", img)
            assert ok
            for _ in range(snippets):
                (d / f"cropped_face_frame_{n}.png").write_bytes(jpeg.tobytes())
                t = np.arange(int(rate * seconds)) / rate
                wav = 0.3 * np.sin(2 * np.pi * (150 + 100 * k) * t) + 0.01 * rng.standard_normal(t.size)
                sf.write(d / f"preprocessed_frame_{n}.flac", wav.astype(np.float32), rate, subtype="PCM_16")
                n += 1
    return root


def tiny_config_dict(steps: int = 4, **train: object) -> dict:
    """A config mapping for a fast CPU run."""
    t = {
        "steps": steps,
        "batch_size": 4,
        "sample_every": 2,
        "checkpoint_every": 2,
        "log_every": 1,
        "ema_start": 1,
        "num_threads": 1,
        "val_fraction": 0.25,
    }
    t.update(train)
    return {"family": "wav2pix", "model": dict(TINY_MODEL), "train": t}


def step_context(cfg, net, disc):
    """A :class:`training.families.contract.TrainContext` for unit tests of one training step (one CPU process,
    Adam on both networks, no data)."""
    import contextlib

    import torch

    from training.families.contract import Split, TrainContext

    return TrainContext(
        cfg=cfg, run_dir=Path("."), device=torch.device("cpu"), rank=0, world=1, G=net, D=disc, G_ema=net,
        opt_g=torch.optim.Adam(net.parameters()), opt_d=torch.optim.Adam(disc.parameters()), data=None,
        split=Split(np.zeros(0, np.int64), np.zeros(0, np.int64)), labels=[], step=0, all_reduce=lambda p: None,
        autocast=contextlib.nullcontext, barrier=lambda: None,
    )  # fmt: skip
