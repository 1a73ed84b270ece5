"""Training throughput: steps/s and images/s of the real training step, fp32 vs bf16, side by side.

Times :class:`training.families.wav2pix.trainer.GanStep` (the wav2pix trainer's own step: discriminator on (real, right),
(fake, right), (real, wrong) + generator with AC, speech-identity and mode-seeking terms, DiffAugment)
for the model of ``--train-config``, on random tensors of the config's shapes, after two warm-up steps.
The two precisions alternate step by step in one process, so both see the same machine load.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Any

import torch

DEFAULT_CONFIG = Path("presets/training/wav2pix-64d.yaml")


def add_arguments(parser: argparse._ArgumentGroup) -> None:
    """Options of the training benchmark."""
    parser.add_argument("--train-config", type=Path, default=DEFAULT_CONFIG, help="training config to time")
    parser.add_argument("--train-steps", type=int, default=10, help="timed training steps per precision")
    parser.add_argument("--train-threads", type=int, default=0, help="torch threads (0: the config's)")


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    """One row per precision: step time p50 (ms), steps/s, images/s; bf16 also gets its speed-up over fp32."""
    import contextlib

    import numpy as np

    from training import families
    from training.config import load_config
    from training.families.contract import Split, TrainContext
    from training.families.wav2pix.trainer import GanStep

    cfg = load_config(args.train_config)
    threads = args.train_threads or cfg.train.num_threads or torch.get_num_threads()
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    net, disc = families.get(cfg.family).build(cfg, ["a", "b"])
    opt_g = torch.optim.Adam(net.parameters(), lr=1e-4)
    opt_d = torch.optim.Adam(disc.parameters(), lr=1e-4)

    def context(precision: str) -> TrainContext:
        def autocast() -> contextlib.AbstractContextManager:
            return torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16")

        return TrainContext(
            cfg=cfg, run_dir=Path("."), device=torch.device("cpu"), rank=0, world=1, G=net, D=disc, G_ema=net,
            opt_g=opt_g, opt_d=opt_d, data=None, split=Split(np.zeros(0, np.int64), np.zeros(0, np.int64)),
            labels=["a", "b"], step=0, all_reduce=lambda p: None, autocast=autocast, barrier=lambda: None,
        )  # fmt: skip

    b = cfg.train.batch_size
    with torch.no_grad():
        feats = net.encoder.features_of(torch.randn(b, cfg.audio.window_samples) * 0.1)
    images = torch.rand(b, 3, cfg.model.image_size, cfg.model.image_size) * 2 - 1
    labels = torch.arange(b) % 2
    wrong = torch.roll(torch.arange(b), 1)
    steps = {p: GanStep(context(p)) for p in ("fp32", "bf16")}
    times: dict[str, list[float]] = {p: [] for p in steps}
    for _ in range(2):
        for step in steps.values():
            step(images, labels, feats, wrong)
    for _ in range(args.train_steps):
        for p, step in steps.items():
            t0 = time.perf_counter()
            step(images, labels, feats, wrong)
            times[p].append(time.perf_counter() - t0)
    rows = []
    for p, ts in times.items():
        med = statistics.median(ts)
        rows.append(
            {
                "benchmark": "train",
                "config": str(args.train_config),
                "precision": p,
                "threads": threads,
                "batch": b,
                "step_ms_p50": round(1000 * med, 1),
                "steps_per_s": round(1 / med, 2),
                "images_per_s": round(b / med, 1),
            }
        )
    rows[1]["speedup_vs_fp32"] = round(rows[0]["step_ms_p50"] / rows[1]["step_ms_p50"], 2)
    return rows
