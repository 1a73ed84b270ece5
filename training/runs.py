"""Run folders and checkpoints: what ``run.py train`` writes, and reading it back.

A run folder holds:

* ``config.yaml`` — the resolved config (a resumed run with another config keeps the earlier one as
  ``config.until-step-N.yaml``); ``command.txt`` — the exact command(s), one per line;
* ``split.json`` — the data folders, labels and the family's split record (e.g. the validation face hashes);
* ``checkpoints/step-NNNNNNN.safetensors`` — generator side (``G.*``), its moving average (``G_ema.*``),
  discriminator (``D.*``) and both Adam states, with the config, format version, step and labels in the
  metadata (resumable; the newest ``train.keep_checkpoints`` are kept);
* ``log.jsonl`` — one JSON record per logged step; ``loss.png`` — the loss curves;
* ``samples/step-NNNNNNN.png`` — sample grids; and whatever run-time state the family keeps there.

This module imports no family and no export or evaluation code, so every command can use it.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from engine import configs
from engine.errors import UserError
from training.config import FORMAT_VERSION, config_from_dict, to_dict

log = logging.getLogger(__name__)

CKPT_DIR = "checkpoints"
SPLIT_FILE = "split.json"
LOG_FILE = "log.jsonl"
GENERATORS = ("ema", "raw")
"""Which generator weights of a checkpoint to use: the exponential moving average (``G_ema``, Karras et al.
2018) or the trained weights themselves (``G``)."""


# ----------------------------------------------------------------------------------------------- checkpoints
def _flatten_optimizer(prefix: str, opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], str]:
    sd = opt.state_dict()
    tensors = {}
    for idx, state in sd["state"].items():
        for name, value in state.items():
            t = value if torch.is_tensor(value) else torch.tensor(value)
            tensors[f"{prefix}/{idx}/{name}"] = t.detach().cpu().contiguous()
    return tensors, json.dumps(sd["param_groups"])


def unflatten_optimizer(prefix: str, tensors: dict[str, torch.Tensor], groups_json: str) -> dict[str, Any]:
    """An optimiser state dict from a checkpoint's ``{prefix}/{param}/{name}`` tensors and its group JSON."""
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith(prefix + "/"):
            _, idx, name = key.split("/", 2)
            state.setdefault(int(idx), {})[name] = value
    return {"state": state, "param_groups": json.loads(groups_json)}


def module_state(prefix: str, module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """``module``'s state dict with keys ``{prefix}.{name}``, on the CPU, contiguous."""
    return {f"{prefix}.{k}": v.detach().cpu().contiguous() for k, v in module.state_dict().items()}


def sub_state(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The tensors under ``{prefix}.`` with the prefix removed."""
    return {k[len(prefix) + 1 :]: v for k, v in tensors.items() if k.startswith(prefix + ".")}


def load_training_state(tensors: dict[str, torch.Tensor], meta: dict[str, str], G, G_ema, D, opt_g, opt_d) -> int:
    """Load a checkpoint's tensors and metadata (:func:`read_checkpoint`) into the generator, its moving average,
    the discriminator and both optimisers (``D`` / ``opt_d`` None: a family without a discriminator), strictly.
    The optimisers get the checkpoint's hyper-parameters too (callers set the config's). Returns its step.

    Raises:
        RuntimeError: a network whose tensors do not match the checkpoint's (torch's message names them).
    """
    G.load_state_dict(sub_state(tensors, "G"))
    G_ema.load_state_dict(sub_state(tensors, "G_ema"))
    if D is not None:
        D.load_state_dict(sub_state(tensors, "D"))
    opt_g.load_state_dict(unflatten_optimizer("opt_g", tensors, meta["opt_g_groups"]))
    if opt_d is not None:
        opt_d.load_state_dict(unflatten_optimizer("opt_d", tensors, meta["opt_d_groups"]))
    return int(meta["step"])


def save_checkpoint(
    path: Path,
    step: int,
    cfg: Any,
    labels: list[str],
    G: torch.nn.Module,
    G_ema: torch.nn.Module,
    D: torch.nn.Module | None,
    opt_g: torch.optim.Optimizer,
    opt_d: torch.optim.Optimizer | None,
) -> None:
    """Write a resumable safetensors checkpoint atomically (temp file + ``os.replace``). ``D`` and ``opt_d`` are
    ``None`` for a family trained without a discriminator (nothing of theirs is written)."""
    tensors = {**module_state("G", G), **module_state("G_ema", G_ema)}
    og, og_groups = _flatten_optimizer("opt_g", opt_g)
    tensors.update(og)
    meta = {
        "format_version": str(FORMAT_VERSION),
        "step": str(step),
        "config": json.dumps(to_dict(cfg)),
        "identities": json.dumps(labels),
        "opt_g_groups": og_groups,
    }
    if D is not None and opt_d is not None:
        tensors.update(module_state("D", D))
        od, meta["opt_d_groups"] = _flatten_optimizer("opt_d", opt_d)
        tensors.update(od)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    save_file(tensors, str(tmp), metadata=meta)
    os.replace(tmp, path)


def upgrade_checkpoint_meta(meta: dict[str, str], source: str = "<checkpoint>") -> dict[str, str]:
    """The one place where older checkpoint metadata is brought up to the current format (format 1 configs
    name their family under ``model.family``; :func:`training.config.upgrade_config_mapping` moves it).

    Raises:
        UserError: a format version newer than this code understands, or metadata without a config.
    """
    version = int(meta.get("format_version", "1"))
    if version > FORMAT_VERSION:
        raise UserError(f"{source}: checkpoint format_version {version} is newer than supported ({FORMAT_VERSION})")
    if "config" not in meta or "step" not in meta:
        raise UserError(f"{source}: not a training checkpoint (no config or step in its metadata)")
    return {**meta, "format_version": str(FORMAT_VERSION)}


def read_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(tensors, metadata) of a checkpoint. Raises UserError naming the file when unreadable."""
    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = dict(fh.metadata() or {})
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    except Exception as exc:
        raise UserError(f"{path}: cannot read checkpoint ({exc})") from exc
    return tensors, upgrade_checkpoint_meta(meta, str(path))


def checkpoint_config(meta: dict[str, str], source: str) -> Any:
    """The family config stored in a checkpoint's metadata (upgraded; strict).

    Raises:
        engine.configs.ConfigError: the stored config is invalid for this version.
    """
    return config_from_dict(json.loads(meta["config"]), source=f"{source} (metadata)")


def checkpoint_labels(meta: dict[str, str]) -> list[str]:
    """The class names a checkpoint was trained with (``identities`` in its metadata)."""
    return list(json.loads(meta["identities"]))


def latest_checkpoint(run_dir: Path) -> Path | None:
    """Newest ``checkpoints/step-*.safetensors`` in ``run_dir`` or None."""
    found = sorted((Path(run_dir) / CKPT_DIR).glob("step-*.safetensors"))
    return found[-1] if found else None


def prune_checkpoints(run_dir: Path, keep: int) -> None:
    """Delete all but the newest ``keep`` checkpoints of ``run_dir``."""
    for old in sorted((run_dir / CKPT_DIR).glob("step-*.safetensors"))[:-keep]:
        old.unlink()


def load_run(run_dir: str | Path, checkpoint: str | Path | None = None, generator: str = "ema"):
    """Load a generator of a run folder for inference or export.

    Args:
        run_dir: the run folder. checkpoint: a checkpoint file (default: the newest).
        generator: ``"ema"`` (the moving average, the default) or ``"raw"`` (the trained weights).

    Returns:
        (family, G, cfg, labels, info) — ``G`` the generator side in eval mode on the CPU; ``info`` has ``step``,
        ``checkpoint``, ``generator``, ``command`` and ``run_dir``.

    Raises:
        UserError: no run folder, no checkpoint, an unreadable checkpoint, or an unknown ``generator``.
    """
    from training import families

    if generator not in GENERATORS:
        raise UserError(f"generator: expected one of {', '.join(GENERATORS)}, got {generator!r}")
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"{run_dir}: run folder not found")
    path = Path(checkpoint) if checkpoint else latest_checkpoint(run_dir)
    if path is None:
        raise UserError(f"{run_dir}: no checkpoints in {run_dir / CKPT_DIR}")
    tensors, meta = read_checkpoint(path)
    cfg = checkpoint_config(meta, str(path))
    labels = checkpoint_labels(meta)
    family = families.get(cfg.family)
    G, _ = family.build(cfg, labels)
    try:
        G.load_state_dict(sub_state(tensors, "G_ema" if generator == "ema" else "G"))
    except RuntimeError as exc:
        raise UserError(f"{path}: the weights do not fit its config ({str(exc).splitlines()[0]})") from exc
    G.eval()
    command_file = run_dir / "command.txt"
    info = {
        "step": int(meta["step"]),
        "checkpoint": str(path),
        "generator": generator,
        "command": command_file.read_text().strip() if command_file.is_file() else "",
        "run_dir": str(run_dir),
    }
    return family, G, cfg, labels, info


# ----------------------------------------------------------------------------------------------- run folder
def record_provenance(out: Path, cfg: Any, command: str, resumed_from: Path | None) -> None:
    """Write ``config.yaml`` and ``command.txt``; on resume keep the history.

    A resumed run appends its command to ``command.txt`` (one command per line, in order) and, when its
    config differs from the one in the folder, keeps the earlier one as ``config.until-step-N.yaml``.
    """
    cfg_path, cmd_path = out / "config.yaml", out / "command.txt"
    if resumed_from is not None and cfg_path.is_file():
        step = int(resumed_from.stem.split("-")[-1])
        previous = cfg_path.read_text(encoding="utf-8")
        configs.dump(cfg, cfg_path)
        if cfg_path.read_text(encoding="utf-8") != previous:
            (out / f"config.until-step-{step}.yaml").write_text(previous, encoding="utf-8")
        if command:
            with cmd_path.open("a", encoding="utf-8") as fh:
                fh.write(command + "\n")
        return
    configs.dump(cfg, cfg_path)
    if command:
        cmd_path.write_text(command + "\n", encoding="utf-8")


def read_split(run_dir: Path) -> dict[str, Any] | None:
    """The run's ``split.json`` (None when absent or unreadable, with a warning for the latter)."""
    path = Path(run_dir) / SPLIT_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        log.warning("%s: unreadable (%s)", path, exc)
        return None
    return data if isinstance(data, dict) else None


def set_aside_log_after(log_path: Path, step: int) -> None:
    """On resume from ``step``: records of later steps belong to a continuation that was discarded (its
    checkpoints were never resumed from); move them to ``log.discarded-after-step-N.jsonl`` so ``log.jsonl``
    tells the story of the weights in the run, step by step, without duplicates."""
    lines = log_path.read_text(encoding="utf-8").splitlines(keepends=True)
    keep, later = [], []
    for line in lines:
        try:
            s = int(json.loads(line).get("step", 0))
        except (ValueError, AttributeError, TypeError):
            keep.append(line)  # not ours to judge
            continue
        (later if s > step else keep).append(line)
    if not later:
        return
    aside = log_path.with_name(f"log.discarded-after-step-{step}.jsonl")
    with aside.open("a", encoding="utf-8") as fh:
        fh.writelines(later)
    tmp = log_path.with_suffix(".jsonl.tmp")
    tmp.write_text("".join(keep), encoding="utf-8")
    os.replace(tmp, log_path)
    log.info("resume at step %d: %d log records of later steps moved to %s", step, len(later), aside.name)


def wall_time_from_log(path: Path, until_step: int | None = None) -> float | None:
    """Seconds between the first and last ``time`` stamps of a training log (JSON lines), or ``None``; with
    ``until_step``, the last stamp of a record at or before that step (a checkpoint exported while the run goes on,
    or one from before its end)."""
    if not path.is_file():
        return None
    stamps: list[float] = []
    try:
        with open(path, encoding="utf-8") as fh:
            for line in fh:
                try:
                    record = json.loads(line)
                    t, step = record.get("time"), record.get("step")
                except (json.JSONDecodeError, AttributeError):
                    continue
                if until_step is not None and isinstance(step, int) and step > until_step:
                    continue
                if isinstance(t, (int, float)):
                    stamps.append(float(t))
    except OSError:
        return None
    return max(stamps) - min(stamps) if len(stamps) >= 2 else None


def save_loss_plot(log_path: Path, out: Path) -> None:
    """Plot every ``loss_*`` series of ``log.jsonl`` to ``out`` (matplotlib, Agg); nothing before the first record
    (a sample grid can come before the first log line when ``sample_every < log_every``)."""
    if not log_path.exists():
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = [json.loads(line) for line in log_path.read_text().splitlines() if line.strip()]
    if not records:
        return
    keys = [k for k in records[-1] if k.startswith("loss_")]
    fig, ax = plt.subplots(figsize=(8, 4), dpi=100)
    steps = [r["step"] for r in records]
    for k in keys:
        ax.plot(steps, [r.get(k, float("nan")) for r in records], label=k)
    ax.set_xlabel("generator step")
    ax.set_ylabel("loss")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)


def save_image(path: Path, image: np.ndarray) -> None:
    """Write uint8 [H, W, 3] RGB as PNG, or JPEG (quality 95) for a ``.jpg`` path (creating folders)."""
    import cv2

    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), image[:, :, ::-1]):
        raise UserError(f"{path}: cannot write image")
