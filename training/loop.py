"""The generic training loop, shared by every model family: ``run.py train``.

``python run.py train --config CONFIG.yaml --data DIR [--data DIR ...] --out RUN_DIR [--resume]
[--init-from CHECKPOINT|BUNDLE_DIR] [--device DEVICE] [--steps N] [--dry-run]``

The config names the family (``family: wav2pix``); the family (:mod:`training.families`) loads the data,
builds the networks and makes one training step (:class:`training.families.contract.Trainer`). This loop owns
what every family shares, after NVlabs' stylegan3 ``training_loop``:

* devices, and ``torchrun --nproc_per_node=N`` data parallelism: gradients are averaged across processes with
  ``torch.distributed`` all-reduce (gloo on CPU, NCCL on CUDA) in the manner of StyleGAN2-ADA's manual
  gradient sync, which keeps the alternating G/D steps simple; every process draws its own batches;
* bf16 autocast (``train.precision``), the generator's exponential moving average (Karras et al. 2018);
* resumable checkpoints, ``--resume``, ``--init-from`` (the family's hooks), the run folder
  (:mod:`training.runs`), the JSONL log, the loss plot, sample grids and the progress bar.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import json
import logging
import math
import os
import shlex
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from tqdm import tqdm

from engine import configs
from engine.errors import UserError
from training import families, runs
from training.config import load_config
from training.families.contract import TrainContext

log = logging.getLogger(__name__)


def dist_info() -> tuple[int, int, int]:
    """(rank, world_size, local_rank) from torchrun's environment (1 process when absent)."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_RANK", 0))


def all_reduce_grads(params: Sequence[torch.nn.Parameter], world: int) -> None:
    """Average the gradients of ``params`` over ``world`` processes (one flat all-reduce; no-op for 1)."""
    if world == 1:
        return
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= world
    offset = 0
    for g in grads:
        n = g.numel()
        g.copy_(flat[offset : offset + n].view_as(g))
        offset += n


@torch.no_grad()
def update_ema(ema: torch.nn.Module, net: torch.nn.Module, decay: float) -> None:
    """``ema <- decay * ema + (1 - decay) * net`` for parameters; buffers are copied (spectral-norm vectors)."""
    for pe, p in zip(ema.parameters(), net.parameters()):
        pe.lerp_(p, 1.0 - decay)
    for be, bn in zip(ema.buffers(), net.buffers()):
        be.copy_(bn)


def _resume(path: Path, G, G_ema, D, opt_g, opt_d, tc) -> int:
    """Load a checkpoint of this run into the modules and optimisers; returns its step."""
    tensors, meta = runs.read_checkpoint(path)
    try:
        step = runs.load_training_state(tensors, meta, G, G_ema, D, opt_g, opt_d)
    except RuntimeError as exc:
        raise UserError(f"{path}: does not match the config ({str(exc).splitlines()[0]})") from exc
    _config_hyperparameters(opt_g, opt_d, tc)
    return step


def _config_hyperparameters(opt_g, opt_d, tc) -> None:
    """Set the config's learning rates and betas on the optimisers (``opt_d`` may be None): a loaded optimiser
    state brings the saved ones, and the resumed or continued run's config must win."""
    for opt, lr in ((opt_g, tc.lr_g), (opt_d, tc.lr_d)):
        for group in opt.param_groups if opt is not None else ():
            group["lr"], group["betas"] = lr, tuple(tc.betas)


def train(
    cfg: Any,
    data_dirs: list[str],
    out_dir: str | Path,
    resume: bool = False,
    device: str = "auto",
    command: str = "",
    init_from: str | Path | None = None,
) -> Path:
    """Train the family ``cfg.family`` on ``data_dirs`` into ``out_dir``. Returns the last checkpoint path.

    ``init_from``: a checkpoint of another run to start from, or a model bundle folder whose generator to
    fine-tune (the family's :meth:`~training.families.contract.Family.init_from_checkpoint` /
    :meth:`~training.families.contract.Family.init_from_bundle`); ignored when ``resume`` finds a checkpoint
    in ``out_dir`` (the run then simply continues).

    Raises:
        UserError: bad data folders, an existing run folder without ``resume``, a broken or incompatible
            checkpoint, or a family that cannot start from ``init_from``.
        RuntimeError: the losses became non-finite (names the step).
    """
    family = families.get(cfg.family)
    rank, world, local_rank = dist_info()
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        device = f"cuda:{local_rank}"
        torch.cuda.set_device(local_rank)
    dev = torch.device(device)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    tc = cfg.train
    if tc.num_threads:
        torch.set_num_threads(tc.num_threads)
    main = rank == 0
    out = Path(out_dir)
    ckpt_dir = out / runs.CKPT_DIR
    last = runs.latest_checkpoint(out) if out.exists() else None
    if out.exists() and last is not None and not resume:
        raise UserError(f"{out}: run folder already has checkpoints; pass --resume to continue or choose --out")
    if main:
        out.mkdir(parents=True, exist_ok=True)
        runs.record_provenance(out, cfg, command, resumed_from=last if resume else None)

    torch.manual_seed(tc.seed + rank)
    data = family.load_data(cfg, data_dirs)
    split = family.split(cfg, data)
    labels = family.labels(data)
    if main:
        record = {
            "family": family.name,
            "val_fraction": tc.val_fraction,
            "seed": tc.seed,
            "data": [str(d) for d in data_dirs],
            "identities": labels,
            "n_train": int(len(split.train)),
            "n_val": int(len(split.val)),
            **split.record,
        }
        (out / runs.SPLIT_FILE).write_text(json.dumps(record, indent=1))
    G, D = family.build(cfg, labels)  # D is None for a family trained without a discriminator
    G.to(dev)
    G_ema = copy.deepcopy(G).eval().requires_grad_(False)
    opt_g = torch.optim.Adam(G.parameters(), lr=tc.lr_g, betas=tc.betas)
    opt_d = None if D is None else torch.optim.Adam(D.to(dev).parameters(), lr=tc.lr_d, betas=tc.betas)

    def barrier() -> None:
        if world > 1:
            dist.barrier()

    def autocast() -> contextlib.AbstractContextManager:
        return torch.autocast(dev.type, dtype=torch.bfloat16, enabled=tc.precision == "bf16")

    ctx = TrainContext(
        cfg=cfg, run_dir=out, device=dev, rank=rank, world=world, G=G, D=D, G_ema=G_ema, opt_g=opt_g, opt_d=opt_d,
        data=data, split=split, labels=labels, step=0, all_reduce=lambda p: all_reduce_grads(p, world),
        autocast=autocast, barrier=barrier,
    )  # fmt: skip
    if resume and last is not None:
        ctx.step = _resume(last, G, G_ema, D, opt_g, opt_d, tc)
        if main:
            log.info("resumed from %s at step %d", last, ctx.step)
    elif init_from is not None and Path(init_from).is_dir():
        family.init_from_bundle(ctx, Path(init_from))
        if main:
            log.info("initialised the generator from the bundle %s; new discriminator; step 0", init_from)
    elif init_from is not None:
        tensors, meta = runs.read_checkpoint(Path(init_from))
        ctx.step = family.init_from_checkpoint(ctx, tensors, meta)
        _config_hyperparameters(opt_g, opt_d, tc)
        if main:
            log.info("initialised from %s at step %d", init_from, ctx.step)
    if world > 1:  # identical start on every rank
        for module in (m for m in (G, D, G_ema) if m is not None):
            for t in list(module.parameters()) + list(module.buffers()):
                dist.broadcast(t.data, 0)

    trainer = family.trainer(ctx)
    step = ctx.step
    log_path = out / runs.LOG_FILE
    if main and step and log_path.is_file():
        runs.set_aside_log_after(log_path, step)
    bar = tqdm(total=tc.steps, initial=step, desc="train", unit="step", disable=not main, dynamic_ncols=True)
    t_last, imgs_since = time.perf_counter(), 0
    last_path = last
    while step < tc.steps:
        warm = step < tc.d_warmup_steps
        stats = trainer.step(step, update_g=not warm)
        step += 1
        update_ema(G_ema, G, tc.ema_decay if step > tc.ema_start else 0.0)
        imgs_since += tc.batch_size * world
        bar.update(1)
        if main and (step % tc.log_every == 0 or step == tc.steps):
            now = time.perf_counter()
            rec = {"step": step, "time": time.time(), **stats, "images_per_s": imgs_since / max(now - t_last, 1e-9)}
            t_last, imgs_since = now, 0
            with log_path.open("a") as fh:
                fh.write(json.dumps(rec) + "\n")
            bar.set_postfix(d=f"{rec.get('loss_d', math.nan):.3f}", g=f"{rec['loss_g']:.3f}",
                            ips=f"{rec['images_per_s']:.0f}")  # fmt: skip
        if main and (step % tc.sample_every == 0 or step == tc.steps):
            grid = trainer.sample_grid()
            if grid is not None:
                runs.save_image(out / "samples" / f"step-{step:07d}.png", grid)
            runs.save_loss_plot(log_path, out / "loss.png")
        if step % tc.checkpoint_every == 0 or step == tc.steps:
            if main:
                last_path = ckpt_dir / f"step-{step:07d}.safetensors"
                runs.save_checkpoint(last_path, step, cfg, labels, G, G_ema, D, opt_g, opt_d)
                runs.prune_checkpoints(out, tc.keep_checkpoints)
            trainer.on_checkpoint()
            barrier()
        loss_d = stats.get("loss_d", 0.0)  # absent: a family without a discriminator
        if not (math.isfinite(loss_d) and (math.isfinite(stats["loss_g"]) or warm)):
            raise RuntimeError(f"training diverged at step {step} (loss_d={loss_d}, loss_g={stats['loss_g']})")
    bar.close()
    if world > 1:
        dist.barrier()
        dist.destroy_process_group()
    return last_path if last_path is not None else ckpt_dir


# ----------------------------------------------------------------------------------------------- CLI
def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``run.py train``."""
    parser.add_argument("--config", help="training config YAML; its 'family' key names the model family "
                        "(default: the wav2pix defaults)")  # fmt: skip
    parser.add_argument(
        "--data", action="append", required=True, metavar="DIR", help="dataset folder; repeat for several"
    )
    parser.add_argument("--out", required=True, metavar="RUN_DIR", help="run folder")
    parser.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in RUN_DIR")
    parser.add_argument(
        "--init-from",
        metavar="CHECKPOINT|BUNDLE_DIR",
        help="start a new run from another run's checkpoint, or from a model bundle's generator (new "
        "discriminator, from step 0; see train.d_warmup_steps); what carries over is the family's choice",
    )
    parser.add_argument("--device", default="auto", help="cpu, cuda or auto (default)")
    parser.add_argument(
        "--steps", type=int, default=None, metavar="N",
        help="override train.steps (train until generator step N; the resolved config records it)",
    )  # fmt: skip
    parser.add_argument("--dry-run", action="store_true", help="print the resolved config and exit")


def main(args: argparse.Namespace) -> int:
    """Entry point of ``run.py train``."""
    cfg = load_config(args.config)
    if args.steps is not None:
        if args.steps <= 0:
            raise UserError(f"--steps: expected a positive number of generator steps, got {args.steps}")
        cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, steps=args.steps))
    if args.dry_run:
        import yaml

        print(yaml.safe_dump(configs.to_mapping(cfg), sort_keys=False))
        return 0
    command = shlex.join([os.path.basename(sys.executable), "run.py", *sys.argv[1:]])
    if os.environ.get("WORLD_SIZE", "1") != "1":
        command = f"torchrun --nproc_per_node={os.environ['WORLD_SIZE']} " + shlex.join(["run.py", *sys.argv[1:]])
    init_from = getattr(args, "init_from", None)
    if init_from is not None and not (
        Path(init_from).is_file() or (Path(init_from).is_dir() and (Path(init_from) / "bundle.json").is_file())
    ):
        raise UserError(f"--init-from {init_from}: neither a checkpoint file nor a model bundle folder (bundle.json)")
    train(cfg, args.data, args.out, resume=args.resume, device=args.device, command=command, init_from=init_from)
    return 0
