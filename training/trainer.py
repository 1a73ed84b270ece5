"""Training loop for the speech-conditioned GAN families.

``python run.py train --config CONFIG.yaml --data DIR [--data DIR ...] --out RUN_DIR [--resume]
[--init-from CHECKPOINT|BUNDLE_DIR]``

``--init-from`` starts a new run from another run's checkpoint whose generator may be narrower than the
config's (the family's ``widen_from``, Net2WiderNet): the step count, discriminator and its optimiser
state carry over, the generator's optimiser starts afresh. From a model bundle folder only the generator
carries over (:func:`init_from_bundle`); the discriminator and the step count start afresh, and
``train.d_warmup_steps`` lets the new discriminator train alone first.

Runs on CPU or CUDA and under ``torchrun --nproc_per_node=N`` (gradients are
averaged across processes with ``torch.distributed`` all-reduce — gloo on CPU,
NCCL on CUDA — in the manner of StyleGAN2-ADA's manual gradient sync, which
keeps the alternating G/D steps simple). Every run folder holds:

* ``config.yaml`` — the resolved config; ``command.txt`` — the exact command;
* ``split.json`` — the validation face hashes;
* ``checkpoints/step-NNNNNNN.safetensors`` — generator, EMA generator, discriminator and both optimiser
  states, with the config, format version, step and identities in the metadata (resumable);
* ``log.jsonl`` — one JSON record per logged step; ``loss.png`` — loss curves;
* ``samples/step-NNNNNNN.png`` — a grid for fixed validation voices (real face, then generated faces).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import logging
import math
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from tqdm import tqdm

from engine import configs
from engine.errors import UserError
from training import losses
from training.appearance import AppearanceCodes
from training.config import FORMAT_VERSION, POSE_PRIORS, Config, load_config
from training.data import PairDataset, load_dataset, split_by_face
from training.data.diffaugment import diff_augment
from training.landmarks import LandmarkPrior, LandmarkTeacher, PoseCodes, normalise_landmarks
from training.models import get_family
from training.models.wav2pix import NeighbourPosePrior, PoseCodePrior

log = logging.getLogger(__name__)
CKPT_DIR = "checkpoints"


# ----------------------------------------------------------------------------------------------- distributed
def _dist_info() -> tuple[int, int, int]:
    """(rank, world_size, local_rank) from torchrun's environment (1 process when absent)."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_RANK", 0))


def _all_reduce_grads(params: list[torch.nn.Parameter], world: int) -> None:
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


# ----------------------------------------------------------------------------------------------- checkpoints
def _flatten_optimizer(prefix: str, opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], str]:
    sd = opt.state_dict()
    tensors = {}
    for idx, state in sd["state"].items():
        for name, value in state.items():
            t = value if torch.is_tensor(value) else torch.tensor(value)
            tensors[f"{prefix}/{idx}/{name}"] = t.detach().cpu().contiguous()
    return tensors, json.dumps(sd["param_groups"])


def _unflatten_optimizer(prefix: str, tensors: dict[str, torch.Tensor], groups_json: str) -> dict[str, Any]:
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith(prefix + "/"):
            _, idx, name = key.split("/", 2)
            state.setdefault(int(idx), {})[name] = value
    return {"state": state, "param_groups": json.loads(groups_json)}


def _state(prefix: str, module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {f"{prefix}.{k}": v.detach().cpu().contiguous() for k, v in module.state_dict().items()}


def save_checkpoint(path: Path, step: int, cfg: Config, identities: list[str], net, ema, disc, opt_g, opt_d) -> None:
    """Write a resumable safetensors checkpoint atomically (temp file + ``os.replace``)."""
    tensors = {**_state("G", net), **_state("G_ema", ema), **_state("D", disc)}
    og, og_groups = _flatten_optimizer("opt_g", opt_g)
    od, od_groups = _flatten_optimizer("opt_d", opt_d)
    tensors.update(og)
    tensors.update(od)
    meta = {
        "format_version": str(FORMAT_VERSION),
        "step": str(step),
        "config": json.dumps(configs.to_mapping(cfg)),
        "identities": json.dumps(identities),
        "opt_g_groups": og_groups,
        "opt_d_groups": od_groups,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    save_file(tensors, str(tmp), metadata=meta)
    os.replace(tmp, path)


def upgrade_checkpoint_meta(meta: dict[str, str]) -> dict[str, str]:
    """The one place where older checkpoint metadata is brought up to the current format.

    Raises:
        UserError: a format version newer than this code understands.
    """
    version = int(meta.get("format_version", "1"))
    if version > FORMAT_VERSION:
        raise UserError(f"checkpoint format_version {version} is newer than supported ({FORMAT_VERSION})")
    return meta


def read_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(tensors, metadata) of a checkpoint. Raises UserError naming the file when unreadable."""
    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = dict(fh.metadata() or {})
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    except Exception as exc:
        raise UserError(f"{path}: cannot read checkpoint ({exc})") from exc
    return tensors, upgrade_checkpoint_meta(meta)


def _sub(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix) + 1 :]: v for k, v in tensors.items() if k.startswith(prefix + ".")}


def latest_checkpoint(run_dir: Path) -> Path | None:
    """Newest ``checkpoints/step-*.safetensors`` in ``run_dir`` or None."""
    found = sorted((run_dir / CKPT_DIR).glob("step-*.safetensors"))
    return found[-1] if found else None


GENERATORS = ("ema", "raw")
"""Which generator weights of a checkpoint to use: the exponential moving average (``G_ema``, Karras et al.
2018) or the trained weights themselves (``G``)."""


def load_run(run_dir: str | Path, checkpoint: str | Path | None = None, generator: str = "ema"):
    """Load a generator of a run folder for inference/export.

    Args:
        run_dir: the run folder. checkpoint: a checkpoint file (default: the newest).
        generator: ``"ema"`` (the moving average, the default) or ``"raw"`` (the trained weights). The average
            is usually smoother; when the generator's identity mapping keeps moving during training, it can
            blend identities, and the raw weights are the better model (see the README, "Default model").

    Returns:
        (net, cfg, identities, info) — ``net`` in eval mode on CPU; ``info`` has ``step``, ``checkpoint``,
        ``generator`` and ``command``.

    Raises:
        UserError: no run folder, no checkpoint, an unreadable checkpoint, or an unknown ``generator``.
    """
    if generator not in GENERATORS:
        raise UserError(f"generator: expected one of {', '.join(GENERATORS)}, got {generator!r}")
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"{run_dir}: run folder not found")
    path = Path(checkpoint) if checkpoint else latest_checkpoint(run_dir)
    if path is None:
        raise UserError(f"{run_dir}: no checkpoints in {run_dir / CKPT_DIR}")
    tensors, meta = read_checkpoint(path)
    cfg = configs.from_mapping(Config, json.loads(meta["config"]), source=f"{path} (metadata)")
    identities = json.loads(meta["identities"])
    net, _ = get_family(cfg.model.family).build(cfg.audio, cfg.model, len(identities))
    net.load_state_dict(_sub(tensors, "G_ema" if generator == "ema" else "G"))
    net.eval()
    command_file = run_dir / "command.txt"
    info = {
        "step": int(meta["step"]),
        "checkpoint": str(path),
        "generator": generator,
        "command": command_file.read_text().strip() if command_file.is_file() else "",
        "run_dir": str(run_dir),
    }
    return net, cfg, identities, info


# ----------------------------------------------------------------------------------------------- plots
def save_sample_grid(path: Path, real: np.ndarray, fake: np.ndarray) -> None:
    """Grid PNG: one row per voice, the real face then its generated faces.

    Args:
        real: uint8 [V, H, W, 3]. fake: uint8 [V, K, H, W, 3].
    """
    import cv2

    v, k = fake.shape[:2]
    rows = [np.concatenate([real[i], *fake[i]], axis=1) for i in range(v)]
    grid = np.concatenate(rows, axis=0)
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), grid[:, :, ::-1])


def _set_aside_log_after(log_path: Path, step: int) -> None:
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


def save_loss_plot(log_path: Path, out: Path) -> None:
    """Plot the loss curves of ``log.jsonl`` to ``out`` (matplotlib, Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = [json.loads(line) for line in log_path.read_text().splitlines() if line.strip()]
    if not records:
        return
    keys = [k for k in ("loss_d", "loss_g", "loss_aux", "loss_speech_id", "loss_ms") if k in records[0]]
    fig, ax = plt.subplots(figsize=(8, 4), dpi=100)
    steps = [r["step"] for r in records]
    for k in keys:
        ax.plot(steps, [r[k] for r in records], label=k)
    ax.set_xlabel("generator step")
    ax.set_ylabel("loss")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """float [B, 3, H, W] in [-1, 1] → uint8 [B, H, W, 3]."""
    x = ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).cpu().numpy()


# ----------------------------------------------------------------------------------------------- training
class _Batches:
    """Per-process epoch permutations of the training indices (disjoint shards across ranks)."""

    def __init__(self, indices: np.ndarray, batch: int, seed: int, rank: int, world: int) -> None:
        self.indices, self.batch, self.seed, self.rank, self.world = indices, batch, seed, rank, world
        self.epoch, self.pos, self.order = -1, 0, np.zeros(0, np.int64)

    def next(self) -> np.ndarray:
        if self.pos + self.batch > len(self.order):
            self.epoch += 1
            perm = np.random.default_rng([self.seed, self.epoch]).permutation(self.indices)
            self.order = perm[self.rank :: self.world]
            self.pos = 0
        out = self.order[self.pos : self.pos + self.batch]
        self.pos += self.batch
        return out


def _wrong_indices(labels: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """For each item, the index of another item in the batch, of a different identity where one exists."""
    b = labels.shape[0]
    perm = torch.randperm(b, generator=gen)
    wrong = perm.clone()
    for i in range(b):
        if labels[wrong[i]] == labels[i]:
            others = torch.nonzero(labels != labels[i]).flatten()
            if len(others):
                wrong[i] = others[torch.randint(len(others), (1,), generator=gen)]
            else:
                wrong[i] = (i + 1) % b
    return wrong


class GanStep:
    """One alternating discriminator + generator update of a conditional GAN family (the whole training step).

    Discriminator: LSGAN or hinge on (real image, right speech) against (fake image, right speech) and, when
    matching-aware, (real image, wrong speech) (Reed et al. 2016), plus the AC-GAN identity loss on real images
    (Odena et al. 2017); DiffAugment on every image the discriminator sees (Zhao et al. 2020); with
    ``loss.r1_gamma`` the lazy R1 penalty on augmented real images (Mescheder et al. 2018; Karras et al. 2020),
    computed in float32.
    Generator + speech encoder: adversarial loss, AC-GAN identity loss on fakes, identity classification of the
    speech embedding, the mode-seeking term (Mao et al. 2019) and, with ``loss.landmark_weight``, the landmark
    prior's moment matching (:mod:`training.landmarks`, computed in float32). Under ``precision='bf16'`` forward passes run
    in autocast; losses are computed in float32. With ``world > 1`` gradients are all-reduced before each step.
    """

    # the generator half's statistics (NaN in a discriminator-only step)
    G_STATS = ("loss_g", "loss_aux", "loss_twin", "loss_speech_id", "loss_ms", "speech_id_acc", "loss_landmark",
               "loss_pose", "loss_appearance")  # fmt: skip

    def __init__(
        self,
        cfg: Config,
        net: torch.nn.Module,
        disc: torch.nn.Module,
        opt_g: torch.optim.Optimizer,
        opt_d: torch.optim.Optimizer,
        world: int = 1,
        landmark_prior: LandmarkPrior | None = None,
        pose_codes: PoseCodes | None = None,
        appearance_codes: AppearanceCodes | None = None,
    ) -> None:
        self.cfg, self.net, self.disc, self.opt_g, self.opt_d, self.world = cfg, net, disc, opt_g, opt_d, world
        if cfg.loss.landmark_weight > 0 and landmark_prior is None:
            raise ValueError("loss.landmark_weight > 0 needs a landmark_prior")
        if cfg.loss.pose_code_weight > 0 and (landmark_prior is None or pose_codes is None):
            raise ValueError("loss.pose_code_weight > 0 needs a landmark_prior and the pose codes' fit")
        if cfg.loss.appearance_code_weight > 0 and appearance_codes is None:
            raise ValueError("loss.appearance_code_weight > 0 needs the appearance codes' fit")
        self.landmark_prior, self.pose_codes, self.appearance_codes = landmark_prior, pose_codes, appearance_codes
        self.policy = cfg.augment.policy if cfg.augment.enabled else ()
        self.g_params, self.d_params = list(net.parameters()), list(disc.parameters())
        self.d_steps = 0
        self.last_r1 = 0.0

    def r1_penalty(self, x_real: torch.Tensor, e: torch.Tensor, pose: torch.Tensor | None = None) -> torch.Tensor:
        """Mean over the batch of ||grad_x D(aug(x), e, c)||^2 (float32 scalar, differentiable in D's weights).

        x_real: float32 [B, 3, H, W] in [-1, 1]; e: speech embeddings [B, E] and pose: codes [B, K] or None
        (neither differentiated).
        """
        x = self._augment(x_real).detach().float().requires_grad_(True)
        score = self.disc(x, e.detach().float(), pose=pose)[0]
        (grad,) = torch.autograd.grad(score.sum(), x, create_graph=True)
        return grad.square().sum(dim=(1, 2, 3)).mean()

    def _augment(self, x: torch.Tensor) -> torch.Tensor:
        return diff_augment(x, self.policy) if self.policy else x

    def _autocast(self, device: torch.device) -> torch.autocast:
        return torch.autocast(device.type, dtype=torch.bfloat16, enabled=self.cfg.train.precision == "bf16")

    def _noise(self, b: int, pose: torch.Tensor | None, dev: torch.device) -> torch.Tensor:
        """Standard-normal noise [b, Z] whose first K entries are the pose codes [b, K] when given."""
        z = torch.randn(b, self.cfg.model.noise_dim, device=dev)
        if pose is not None:
            z[:, : pose.shape[1]] = pose
        return z

    def __call__(
        self,
        x_real: torch.Tensor,
        y: torch.Tensor,
        feats: torch.Tensor,
        wrong: torch.Tensor,
        pose: torch.Tensor | None = None,
        wrong_pose: torch.Tensor | None = None,
        update_g: bool = True,
    ) -> dict:
        """Run one step (``update_g=False``: the discriminator's half only, as in ``train.d_warmup_steps``).

        Args:
            x_real: real faces float32 [B, 3, H, W] in [-1, 1]. y: identity labels int64 [B].
            feats: speech features [B, ...] from ``net.encoder.features_of``. wrong: int64 [B] index of a
                mismatched voice for each item.
            pose: with ``model.pose_code_dim`` = K, the real faces' pose codes float32 [B, K + A] (zeros where a
                face has none), followed by their A = ``model.appearance_code_dim`` appearance codes: the generator
                gets them as its first K + A noise inputs and the discriminator scores them with every image.
                wrong_pose: [B, K + A] codes of other faces, scored with the real faces as fake
                (``loss.pose_matching_weight``); None skips that term.

        Returns:
            floats: loss_d, loss_g, loss_aux, loss_twin (0 without the twin head), loss_speech_id, loss_ms, d_real,
            d_fake, speech_id_acc, r1 (the last computed mean squared gradient norm; 0 when off), loss_landmark
            (0 when off), and with a pose code d_wrong_pose (mean score of the wrong-pose pairs; 0 without them) and
            loss_pose (the pose-code regression; 0 when off) and loss_appearance (the appearance-code regression;
            0 when off). Without ``update_g`` the generator's terms are NaN (not computed).

        Raises:
            ValueError: ``pose`` missing or of the wrong width for ``model.pose_code_dim + appearance_code_dim``.
        """
        cfg, net, disc, aug = self.cfg, self.net, self.disc, self._augment
        dev, b, z_dim = x_real.device, x_real.shape[0], cfg.model.noise_dim
        k_pose, k_code = cfg.model.pose_code_dim, cfg.model.code_dim
        if (pose is None) != (k_pose == 0) or (pose is not None and pose.shape != (b, k_code)):
            got = None if pose is None else tuple(pose.shape)
            raise ValueError(
                f"pose codes: model.pose_code_dim + appearance_code_dim is {k_code}, got pose {got} for a batch of {b}"
            )
        # ---- discriminator: (real, right) vs (fake, right) and (real, wrong)
        disc.requires_grad_(True)
        with torch.no_grad(), self._autocast(dev):
            e = net.encoder.encode_features(feats)
            x_fake = net.generator(e, self._noise(b, pose, dev))
        twin = cfg.model.d_twin_classifier
        s_wrong_pose = None
        with self._autocast(dev):
            s_real, cls_real = disc(aug(x_real), e, pose=pose)
            out_fake = disc(aug(x_fake), e, twin=True, pose=pose) if twin else disc(aug(x_fake), e, pose=pose)
            fakes = [out_fake[0]]
            use_wrong_pose = wrong_pose is not None and cfg.loss.pose_matching_weight > 0
            if cfg.loss.matching_aware or use_wrong_pose:
                h_real = disc.features(aug(x_real))
                if cfg.loss.matching_aware:
                    fakes.append(disc.score(h_real, e[wrong], pose))
                if use_wrong_pose:
                    s_wrong_pose = disc.score(h_real, e, wrong_pose).float()
        s_real, cls_real, fakes = s_real.float(), cls_real.float(), [s.float() for s in fakes]
        loss_d = losses.d_loss(cfg.loss.kind, s_real, fakes)
        if s_wrong_pose is not None:
            loss_d = loss_d + cfg.loss.pose_matching_weight * losses.d_negative(cfg.loss.kind, s_wrong_pose)
        loss_aux_d = F.cross_entropy(cls_real, y)
        if twin:  # TAC-GAN: the twin head learns the identity of generated faces
            loss_aux_d = loss_aux_d + F.cross_entropy(out_fake[2].float(), y)
        total_d = loss_d + cfg.loss.aux_weight * loss_aux_d
        if cfg.loss.r1_gamma > 0 and self.d_steps % cfg.loss.r1_interval == 0:
            r1 = self.r1_penalty(x_real, e, pose)
            total_d = total_d + 0.5 * cfg.loss.r1_gamma * cfg.loss.r1_interval * r1
            self.last_r1 = r1.item()
        self.d_steps += 1
        self.opt_d.zero_grad(set_to_none=True)
        total_d.backward()
        _all_reduce_grads(self.d_params, self.world)
        self.opt_d.step()
        d_stats = {
            "loss_d": loss_d.item(),
            "d_real": s_real.mean().item(),
            "d_fake": fakes[0].mean().item(),
            "r1": self.last_r1,
            "d_wrong_pose": 0.0 if s_wrong_pose is None else s_wrong_pose.mean().item(),
        }
        if not update_g:
            return {**dict.fromkeys(self.G_STATS, float("nan")), **d_stats}

        # ---- generator (+ speech encoder)
        disc.requires_grad_(False)
        with self._autocast(dev):
            e = net.encoder.encode_features(feats)
            z = self._noise(b, pose, dev)
            x_fake = net.generator(e, z)
            out_fake = disc(aug(x_fake), e, twin=True, pose=pose) if twin else disc(aug(x_fake), e, pose=pose)
            s_fake, cls_fake = out_fake[0], out_fake[1]
            speech_logits = net.speech_classifier(e)
            loss_ms = torch.zeros((), device=dev)
            if cfg.loss.mode_seeking_weight > 0:
                h = max(1, b // 2)
                z2 = torch.randn(h, z_dim, device=dev)
                loss_ms = losses.mode_seeking(x_fake[:h].float(), net.generator(e[:h], z2).float(), z[:h], z2)
        s_fake, cls_fake, speech_logits = s_fake.float(), cls_fake.float(), speech_logits.float()
        loss_lm = torch.zeros((), device=dev)
        if self.landmark_prior is not None and cfg.loss.landmark_weight > 0:
            loss_lm = self.landmark_prior.loss(x_fake.float(), y, cfg.loss.landmark_match)
        loss_pose = torch.zeros((), device=dev)
        if pose is not None and cfg.loss.pose_code_weight > 0:
            assert self.landmark_prior is not None and self.pose_codes is not None
            read = self.pose_codes.encode_normalised(self.landmark_prior.regressor(x_fake.float()), y)
            loss_pose = (read - pose[:, :k_pose]).square().mean()
        loss_app = torch.zeros((), device=dev)
        if pose is not None and cfg.loss.appearance_code_weight > 0:
            assert self.appearance_codes is not None
            loss_app = (self.appearance_codes.encode_images(x_fake.float(), y) - pose[:, k_pose:]).square().mean()
        loss_g = losses.g_loss(cfg.loss.kind, s_fake)
        loss_aux = F.cross_entropy(cls_fake, y)
        loss_twin = F.cross_entropy(out_fake[2].float(), y) if twin else torch.zeros((), device=dev)
        loss_sid = F.cross_entropy(speech_logits, y)
        self.opt_g.zero_grad(set_to_none=True)
        aux_g = cfg.loss.aux_weight if cfg.loss.aux_weight_g is None else cfg.loss.aux_weight_g
        total = (
            loss_g
            + aux_g * (loss_aux - loss_twin)  # TAC-GAN: minus the twin head's loss (0 without the twin)
            + cfg.loss.speech_id_weight * loss_sid
            + cfg.loss.mode_seeking_weight * loss_ms
            + cfg.loss.landmark_weight * loss_lm
            + cfg.loss.pose_code_weight * loss_pose
            + cfg.loss.appearance_code_weight * loss_app
        )
        total.backward()
        _all_reduce_grads(self.g_params, self.world)
        self.opt_g.step()
        g_stats = {
            "loss_g": loss_g.item(),
            "loss_aux": loss_aux.item(),
            "loss_twin": loss_twin.item(),
            "loss_speech_id": loss_sid.item(),
            "loss_ms": loss_ms.item(),
            "speech_id_acc": float((speech_logits.argmax(1) == y).float().mean()),
            "loss_landmark": loss_lm.item(),
            "loss_pose": loss_pose.item(),
            "loss_appearance": loss_app.item(),
        }
        return {**g_stats, **d_stats}


def _fixed_val_voices(ds: PairDataset, val_idx: np.ndarray, n: int) -> np.ndarray:
    """``n`` validation pairs with distinct faces, alternating identities, deterministic."""
    chosen: list[int] = []
    seen_faces: set[int] = set()
    per_label = {k: [i for i in val_idx if ds.labels[i] == k] for k in range(len(ds.identities))}
    cursors = dict.fromkeys(per_label, 0)
    while len(chosen) < n and any(cursors[k] < len(v) for k, v in per_label.items()):
        for k, items in per_label.items():
            while cursors[k] < len(items):
                i = items[cursors[k]]
                cursors[k] += 7
                if ds.face_index[i] not in seen_faces:
                    seen_faces.add(int(ds.face_index[i]))
                    chosen.append(int(i))
                    break
            if len(chosen) >= n:
                break
    return np.asarray(chosen, np.int64)


def _record_provenance(out: Path, cfg: Config, command: str, resumed_from: Path | None) -> None:
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


LANDMARK_PRIOR_FILE = "landmark_prior.safetensors"


def landmark_prior_for_run(out: Path, cfg: Config, train_faces: np.ndarray, main: bool, world: int) -> LandmarkPrior:
    """The run's landmark prior: read from ``out/landmark_prior.safetensors``, else built from the training faces.

    Building runs dlib's face detector and 68-point landmark model on every training face (uint8 [F, S, S, 3];
    the validation split is never read), fits :class:`training.landmarks.LandmarkRegressor` for
    ``loss.landmark_fit_steps`` and writes the file (rank 0; other ranks wait and read it), so a resumed run
    uses the same prior.

    Raises:
        UserError: too few training faces with detectable landmarks, or the file exists but cannot be read.
    """
    from safetensors.torch import load_file

    from training.face_metrics import FaceAnalyzer
    from training.landmarks import fit_landmark_regressor

    path = out / LANDMARK_PRIOR_FILE
    if main and not path.is_file():
        t0 = time.perf_counter()
        found = FaceAnalyzer().analyze(train_faces, embed=False)
        try:
            regressor, report = fit_landmark_regressor(
                train_faces, found.landmarks, steps=cfg.loss.landmark_fit_steps, seed=cfg.train.seed
            )
            prior = LandmarkPrior.from_faces(regressor, train_faces, cfg.loss.landmark_components)
        except ValueError as err:
            raise UserError(
                f"loss.landmark_weight or pose_code_weight > 0: cannot build the landmark prior: {err}"
            ) from err
        prior.real_targets = torch.from_numpy(normalise_landmarks(found.landmarks))
        save_file(prior.state_dict(), str(path), metadata={k: str(v) for k, v in report.items()})
        log.info(
            "landmark prior: %d of %d training faces with landmarks, fit RMSE %.3f inter-ocular distances, %.0f s",
            report["n_faces"], len(train_faces), report["train_rmse"], time.perf_counter() - t0,
        )  # fmt: skip
    if world > 1:
        dist.barrier()
    try:
        prior = LandmarkPrior.from_state_dict(load_file(str(path)))
    except (OSError, KeyError, RuntimeError, SafetensorError) as err:
        raise UserError(f"{path}: cannot read the landmark prior ({err}); delete it to rebuild") from err
    if cfg.loss.landmark_teacher_every and prior.real_targets is None:  # a prior written before the teacher
        prior.real_targets = torch.from_numpy(
            normalise_landmarks(FaceAnalyzer().analyze(train_faces, embed=False).landmarks)
        )
    return prior


POSE_CODES_FILE = "pose_codes.safetensors"


def pose_codes_for_run(
    out: Path, cfg: Config, faces: np.ndarray, labels: np.ndarray, train_faces: np.ndarray, main: bool, world: int
) -> tuple[PoseCodes, AppearanceCodes | None, np.ndarray]:
    """The pose code's fit, the appearance code's fit (None without ``model.appearance_code_dim``) and the codes
    float32 [F, K + A] of all F face crops (K = ``model.pose_code_dim`` pose entries, zero where unknown, then
    A = ``model.appearance_code_dim`` appearance entries, zero for validation faces).

    Read from ``out/pose_codes.safetensors``, else built (rank 0; other ranks wait and read it): dlib's face
    detector and 68-point landmark model run on the training faces only (``train_faces``: int indices into
    ``faces`` uint8 [F, S, S, 3]; ``labels`` int [F] identities), :class:`training.landmarks.PoseCodes` is fitted
    to them and the file keeps the fit, the codes and the faces' identity labels (``labels`` int64 [F], for the
    per-speaker pose prior), so a resumed run uses the same ones. Validation faces and
    training faces without landmarks get the zero pose code (the mean pose of their identity), which adds
    nothing to the discriminator's score. With ``model.appearance_code_dim`` > 0,
    :class:`training.appearance.AppearanceCodes` is fitted to the training faces too and its entries follow;
    a file written without them (a run branched from one without the appearance code) gains them in place.

    Raises:
        UserError: too few training faces with landmarks, or the file exists but cannot be read or was written
            for other faces or code widths.
    """
    from safetensors.torch import load_file

    from training.face_metrics import FaceAnalyzer

    path = out / POSE_CODES_FILE
    k, a = cfg.model.pose_code_dim, cfg.model.appearance_code_dim

    def appearance() -> tuple[dict[str, torch.Tensor], np.ndarray]:
        try:
            fit = AppearanceCodes.fit(
                faces[train_faces], labels[train_faces], int(labels.max()) + 1, a, cfg.model.appearance_thumbnail
            )
        except ValueError as err:
            raise UserError(f"model.appearance_code_dim > 0: cannot fit the appearance code: {err}") from err
        codes = np.zeros((len(faces), a), np.float32)
        codes[train_faces] = fit.encode(faces[train_faces], labels[train_faces])
        log.info("appearance code: %d components of %d px thumbnails from %d training faces",
                 a, cfg.model.appearance_thumbnail, len(train_faces))  # fmt: skip
        return fit.state_dict(), codes

    if main and not path.is_file():
        t0 = time.perf_counter()
        found = FaceAnalyzer().analyze(faces[train_faces], embed=False)
        try:
            fit = PoseCodes.fit(found.landmarks, labels[train_faces], int(labels.max()) + 1, k)
        except ValueError as err:
            raise UserError(f"model.pose_code_dim > 0: cannot fit the pose code: {err}") from err
        codes = np.zeros((len(faces), k), np.float32)
        got = fit.encode(found.landmarks, labels[train_faces])
        codes[train_faces] = np.nan_to_num(got, nan=0.0)
        n_found = int(found.detected.sum())
        meta = {"n_faces": str(len(faces)), "n_train_faces_with_landmarks": str(n_found)}
        tensors = {**fit.state_dict(), "labels": torch.from_numpy(labels.astype(np.int64))}
        if a:
            app_state, app_codes = appearance()
            tensors.update(app_state)
            codes = np.concatenate([codes, app_codes], axis=1)
        save_file({**tensors, "codes": torch.from_numpy(codes)}, str(path), metadata=meta)
        log.info(
            "pose code: %d components from %d of %d training faces with landmarks, %.0f s",
            k, n_found, len(train_faces), time.perf_counter() - t0,
        )  # fmt: skip
    elif main and a:
        try:
            with safe_open(str(path), "pt") as fh:
                meta = fh.metadata() or {}
            tensors = load_file(str(path))
        except (OSError, RuntimeError, SafetensorError) as err:
            raise UserError(f"{path}: cannot read the pose codes ({err}); delete it to rebuild") from err
        if "appearance.basis" not in tensors and "codes" in tensors and tensors["codes"].shape == (len(faces), k):
            app_state, app_codes = appearance()
            codes = np.concatenate([tensors["codes"].numpy(), app_codes], axis=1)
            save_file({**tensors, **app_state, "codes": torch.from_numpy(codes)}, str(path), metadata=meta)
    if world > 1:
        dist.barrier()
    app_fit = None
    try:
        tensors = load_file(str(path))
        codes, fit = tensors["codes"].numpy(), PoseCodes.from_state_dict(tensors)
        if a:
            app_fit = AppearanceCodes.from_state_dict(tensors)
    except (OSError, KeyError, RuntimeError, SafetensorError) as err:
        raise UserError(f"{path}: cannot read the pose codes ({err}); delete it to rebuild") from err
    if (
        codes.shape != (len(faces), k + a)
        or fit.basis.shape[0] != k
        or (app_fit is not None and app_fit.basis.shape[0] != a)
    ):
        raise UserError(
            f"{path}: codes {tuple(codes.shape)} for {len(faces)} faces, pose_code_dim {k} and appearance_code_dim {a}"
        )
    return fit, app_fit, codes


def pose_prior_for_run(
    run_dir: str | Path, cfg: Config, kind: str = "quantile", net: torch.nn.Module | None = None
) -> PoseCodePrior | NeighbourPosePrior | None:
    """The inference-time pose prior of a run folder whose generator reads a pose code, else ``None``.

    Built from the non-zero rows of ``RUN_DIR/pose_codes.safetensors`` (the training faces with landmarks) as a
    :class:`training.models.wav2pix.PoseCodePrior`. ``kind`` (:data:`training.config.POSE_PRIORS`):

    - ``"neighbours"``: a :class:`training.models.wav2pix.NeighbourPosePrior`: the code of one of the
      :data:`NEIGHBOURS` training pairs whose speech embeddings (by ``net``, the generator side being exported or
      evaluated) are nearest to the voice's; reads the training data named in ``RUN_DIR/split.json`` and keeps
      the bank's figures in ``prior.fit_report``;
    - ``"speaker"``: one Gaussian-copula prior per training identity (their ``labels``), weighted in the graph by
      the speech identity head's posterior for the voice: each speaker's own poses and their correlations;
    - ``"copula"``: one prior for all faces, marginals and correlations;
    - ``"quantile"``: one prior for all faces, marginals only;
    - ``"normal"`` (or ``model.pose_code_dim`` 0): ``None``, the standard-normal code the generator saw as noise.

    Raises:
        UserError: an unknown ``kind``; a pose-code run whose ``pose_codes.safetensors`` is missing or unreadable,
            or, for ``"speaker"``, has no ``labels`` (written by runs from 2026-11-22 on); for ``"neighbours"``,
            no ``net``, or training data that is missing or no longer matches the codes.
    """
    from safetensors.torch import load_file

    if kind not in POSE_PRIORS:
        raise UserError(f"pose prior: expected one of {', '.join(POSE_PRIORS)}, got {kind!r}")
    if kind == "normal" or not cfg.model.pose_code_dim:
        return None
    path = Path(run_dir) / POSE_CODES_FILE
    try:
        tensors = load_file(str(path))
        codes = tensors["codes"].numpy()
    except (OSError, KeyError, RuntimeError, SafetensorError) as err:
        raise UserError(f"{path}: cannot read the pose codes for the {kind} pose prior ({err}); "
                        "pass --pose-prior normal to draw standard-normal codes") from err  # fmt: skip
    if codes.ndim != 2 or codes.shape[1] != cfg.model.code_dim:
        raise UserError(f"{path}: codes {tuple(codes.shape)}, the generator reads {cfg.model.code_dim} code entries "
                        "(model.pose_code_dim + appearance_code_dim)")  # fmt: skip
    labels = None
    if kind == "speaker":
        if "labels" not in tensors:
            raise UserError(f"{path}: no face identity 'labels' for the speaker pose prior (written before they "
                            "were kept); pass --pose-prior copula or quantile")  # fmt: skip
        labels = tensors["labels"].numpy()
        if labels.shape != (len(codes),):
            raise UserError(f"{path}: labels {tuple(labels.shape)} for {len(codes)} codes")
    # validation faces and training faces without landmarks have zero pose codes
    known = np.any(codes[:, : cfg.model.pose_code_dim] != 0, axis=1)
    if kind == "neighbours":
        return _neighbour_pose_prior(Path(run_dir), cfg, codes, known, net)
    try:
        return PoseCodePrior.from_codes(
            codes[known], None if labels is None else labels[known], copula=kind in ("speaker", "copula")
        )
    except ValueError as err:
        raise UserError(f"{path}: {err}") from err


NEIGHBOURS = 16  # the neighbours prior's k (FD within one seed's noise for k = 5 to 20 on the default model)


def speech_embeddings(net: torch.nn.Module, ds: PairDataset, indices: np.ndarray, window_samples: int) -> torch.Tensor:
    """``net.encoder``'s speech embeddings float32 [N, E] of pairs ``indices`` [N] of ``ds`` (one deterministic
    window of ``window_samples`` samples each, in batches of 256, on the CPU) in eval mode; ``net``'s mode is
    restored after."""
    was_training = net.training
    net.eval()
    try:
        with torch.no_grad():
            return torch.cat([
                net.encoder(torch.from_numpy(ds.windows(indices[i : i + 256], window_samples))).float()
                for i in range(0, len(indices), 256)
            ])  # fmt: skip
    finally:
        net.train(was_training)


def _neighbour_pose_prior(
    run_dir: Path, cfg: Config, codes: np.ndarray, known: np.ndarray, net: torch.nn.Module | None
) -> NeighbourPosePrior:
    """:func:`pose_prior_for_run`'s ``"neighbours"`` prior: a bank of ``net``'s speech embeddings of the training
    pairs (one deterministic window per pair) and their faces' full codes (pose and appearance entries)."""
    if net is None:
        raise UserError("pose prior neighbours: needs the generator whose speech embeddings fill the bank")
    split_path = run_dir / "split.json"
    try:
        data = json.loads(split_path.read_text())["data"]
    except (OSError, ValueError, KeyError) as err:
        raise UserError(
            f"{split_path}: cannot read the training data folders for the neighbours pose prior ({err})"
        ) from err
    t0 = time.perf_counter()
    ds = load_dataset([str(d) for d in data], cfg.audio.sample_rate, cfg.model.image_size)
    if len(ds.faces) != len(codes):
        raise UserError(f"{run_dir / POSE_CODES_FILE}: {len(codes)} codes, but {data} now has {len(ds.faces)} faces")
    train_idx, _ = split_by_face(ds, cfg.train.val_fraction, cfg.train.seed)
    train_idx = train_idx[known[ds.face_index[train_idx]]]
    if len(train_idx) == 0:
        raise UserError(f"{run_dir / POSE_CODES_FILE}: no training pairs with a known pose code for the bank")
    emb = speech_embeddings(net, ds, train_idx, cfg.audio.window_samples)
    faces = ds.face_index[train_idx]
    k = min(NEIGHBOURS, len(train_idx))
    prior = NeighbourPosePrior.from_embeddings(emb.cpu(), torch.from_numpy(codes[faces]), k)
    prior.fit_report = {
        "pairs": len(train_idx),
        "faces": len(np.unique(faces)),
        "neighbours": k,
        "search_dims": int(prior.bank_embeddings.shape[1]),
    }
    log.info("neighbours pose prior: %d training pairs of %d faces, k = %d, searched in %d dimensions, %.0f s",
             len(train_idx), len(np.unique(faces)), k, prior.bank_embeddings.shape[1], time.perf_counter() - t0)  # fmt: skip
    return prior


def _wrong_pose(codes: torch.Tensor, labels: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """For each item, the pose code [B, K] of another item of the same identity (a random shuffle of each
    identity's items in the batch, shifted by one); a standard-normal code where an identity has one item."""
    out = torch.randn(codes.shape, generator=gen).to(codes.device)
    for k in torch.unique(labels).tolist():
        idx = torch.nonzero(labels == k).flatten()
        if len(idx) >= 2:
            idx = idx[torch.randperm(len(idx), generator=gen)].to(codes.device)
            out[idx] = codes[idx.roll(1)]
    return out


def train(
    cfg: Config,
    data_dirs: list[str],
    out_dir: str | Path,
    resume: bool = False,
    device: str = "auto",
    command: str = "",
    init_from: str | Path | None = None,
) -> Path:
    """Train a model family on ``data_dirs`` into ``out_dir``. Returns the last checkpoint path.

    ``init_from``: a checkpoint of another run to start from (see :func:`init_from_checkpoint`), or a model
    bundle folder whose generator to fine-tune (see :func:`init_from_bundle`); ignored when ``resume`` finds a
    checkpoint in ``out_dir`` (the run then simply continues).

    Raises:
        UserError: bad data folders, an existing run folder without ``resume``, or a broken or
            incompatible checkpoint.
    """
    rank, world, local_rank = _dist_info()
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        device = f"cuda:{local_rank}"
        torch.cuda.set_device(local_rank)
    dev = torch.device(device)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    if cfg.train.num_threads:
        torch.set_num_threads(cfg.train.num_threads)
    main = rank == 0
    out = Path(out_dir)
    ckpt_dir = out / CKPT_DIR
    last = latest_checkpoint(out) if out.exists() else None
    if out.exists() and last is not None and not resume:
        raise UserError(f"{out}: run folder already has checkpoints; pass --resume to continue or choose --out")
    if main:
        out.mkdir(parents=True, exist_ok=True)
        _record_provenance(out, cfg, command, resumed_from=last if resume else None)

    tc = cfg.train
    torch.manual_seed(tc.seed + rank)
    ds = load_dataset(data_dirs, cfg.audio.sample_rate, cfg.model.image_size)
    train_idx, val_idx = split_by_face(ds, tc.val_fraction, tc.seed)
    if main:
        (out / "split.json").write_text(
            json.dumps(
                {
                    "val_fraction": tc.val_fraction,
                    "seed": tc.seed,
                    "data": [str(d) for d in data_dirs],
                    "identities": ds.identities,
                    "n_train_pairs": int(len(train_idx)),
                    "n_val_pairs": int(len(val_idx)),
                    "val_face_hashes": sorted({ds.face_hashes[f] for f in ds.face_index[val_idx]}),
                    "skipped": ds.skipped,
                },
                indent=1,
            )
        )
    n_id = len(ds.identities)
    family = get_family(cfg.model.family)
    net, disc = family.build(cfg.audio, cfg.model, n_id)
    net.to(dev)
    disc.to(dev)
    ema = copy.deepcopy(net).eval().requires_grad_(False)
    opt_g = torch.optim.Adam(net.parameters(), lr=tc.lr_g, betas=tc.betas)
    opt_d = torch.optim.Adam(disc.parameters(), lr=tc.lr_d, betas=tc.betas)
    step = 0
    if resume and last is not None:
        tensors, meta = read_checkpoint(last)
        net.load_state_dict(_sub(tensors, "G"))
        ema.load_state_dict(_sub(tensors, "G_ema"))
        missing, unexpected = disc.load_state_dict(_sub(tensors, "D"), strict=False)
        new_heads = sorted({k.split(".")[0] for k in missing})
        if unexpected or any(h != "twin" for h in new_heads):
            raise UserError(
                f"{last}: discriminator does not match the config (missing {sorted(missing)[:4]}, "
                f"unexpected {sorted(unexpected)[:4]})"
            )
        opt_g.load_state_dict(_unflatten_optimizer("opt_g", tensors, meta["opt_g_groups"]))
        if new_heads:  # a fine-tune that adds the TAC-GAN twin head: D's Adam state starts afresh
            log.info("resume: new discriminator head(s) %s initialised; discriminator optimiser state reset", new_heads)
        else:
            opt_d.load_state_dict(_unflatten_optimizer("opt_d", tensors, meta["opt_d_groups"]))
        # load_state_dict restores the saved hyper-parameters; the resumed run's config must win.
        for opt, lr in ((opt_g, tc.lr_g), (opt_d, tc.lr_d)):
            for group in opt.param_groups:
                group["lr"], group["betas"] = lr, tuple(tc.betas)
        step = int(meta["step"])
        if main:
            log.info("resumed from %s at step %d", last, step)
    elif init_from is not None and Path(init_from).is_dir():
        init_from_bundle(Path(init_from), cfg, ds.identities, net, ema, seed=tc.seed)
        if main:
            log.info("initialised the generator from the bundle %s; new discriminator; step 0", init_from)
    elif init_from is not None:
        step = init_from_checkpoint(Path(init_from), cfg, ds.identities, net, ema, disc, opt_d, seed=tc.seed)
        if main:
            log.info("initialised from %s at step %d", init_from, step)
    if world > 1:  # identical start on every rank
        for module in (net, disc, ema):
            for t in list(module.parameters()) + list(module.buffers()):
                dist.broadcast(t.data, 0)

    window = cfg.audio.window_samples
    rng = np.random.default_rng([tc.seed, rank, step])
    fixed_len = all(len(a) == window for a in ds.audio)
    feats_all = None
    if tc.cache_features and fixed_len:
        # The front end has no parameters, so its output can be computed once per clip (exact).
        with torch.no_grad():
            chunks = [
                net.encoder.features_of(torch.from_numpy(ds.windows(range(i, min(i + 256, len(ds))), window)).to(dev))
                for i in range(0, len(ds), 256)
            ]
        feats_all = torch.cat(chunks)
    images_all = torch.from_numpy(ds.faces).to(dev).permute(0, 3, 1, 2).float().div_(127.5).sub_(1.0)
    labels_all = torch.from_numpy(ds.labels).to(dev)
    face_index = torch.from_numpy(ds.face_index).to(dev)
    batches = _Batches(train_idx, tc.batch_size, tc.seed + step, rank, world)
    gen = torch.Generator().manual_seed(tc.seed * 1000 + rank + step)

    val_voices = _fixed_val_voices(ds, val_idx if len(val_idx) else train_idx, 8)
    val_audio = torch.from_numpy(ds.windows(val_voices, window)).to(dev)
    val_noise = torch.randn(4, cfg.model.noise_dim, generator=torch.Generator().manual_seed(1234)).to(dev)
    prior = None
    train_faces = np.unique(ds.face_index[train_idx])
    if cfg.loss.landmark_weight > 0 or cfg.loss.pose_code_weight > 0:
        prior = landmark_prior_for_run(out, cfg, ds.faces[train_faces], main, world).to(dev)
        prior.with_identity_targets(ds.faces[train_faces], ds.face_labels[train_faces], n_id)
    teacher = None
    if prior is not None and cfg.loss.landmark_teacher_every:
        try:
            teacher = LandmarkTeacher(
                prior, images_all[torch.from_numpy(train_faces).to(dev)], seed=tc.seed + rank, world=world
            )
        except ValueError as err:
            raise UserError(f"loss.landmark_teacher_every > 0: {err} ({out / LANDMARK_PRIOR_FILE})") from err
    pose_all = pose_fit = app_fit = None
    if cfg.model.pose_code_dim:
        pose_fit, app_fit, codes = pose_codes_for_run(out, cfg, ds.faces, ds.face_labels, train_faces, main, world)
        pose_all = torch.from_numpy(codes).to(dev)
    gan_step = GanStep(
        cfg, net, disc, opt_g, opt_d, world, landmark_prior=prior, pose_codes=pose_fit, appearance_codes=app_fit
    )
    teacher_stats: dict[str, float] = {}

    def features(idx: np.ndarray) -> torch.Tensor:
        if feats_all is not None:
            return feats_all[torch.from_numpy(idx).to(dev)]
        return net.encoder.features_of(torch.from_numpy(ds.windows(idx, window, rng)).to(dev))

    log_path = out / "log.jsonl"
    if main and step and log_path.is_file():
        _set_aside_log_after(log_path, step)
    bar = tqdm(total=tc.steps, initial=step, desc="train", unit="step", disable=not main, dynamic_ncols=True)
    t_last, imgs_since = time.perf_counter(), 0
    last_path = last
    while step < tc.steps:
        idx = batches.next()
        idx_t = torch.from_numpy(idx).to(dev)
        x_real = images_all[face_index[idx_t]]
        y = labels_all[idx_t]
        f = features(idx)
        b = len(idx)
        wrong = _wrong_indices(y.cpu(), gen).to(dev)

        pose = wrong_pose = None
        if pose_all is not None:
            pose = pose_all[face_index[idx_t]]
            wrong_pose = _wrong_pose(pose, y.cpu(), gen) if cfg.loss.pose_matching_weight > 0 else None
        stats = gan_step(x_real, y, f, wrong, pose, wrong_pose, update_g=step >= tc.d_warmup_steps)
        if teacher is not None and step % cfg.loss.landmark_teacher_every == 0:
            with torch.no_grad():
                n_t = min(cfg.loss.landmark_teacher_faces, b)
                fakes_t = net.generator(
                    net.encoder.encode_features(f[:n_t]), torch.randn(n_t, cfg.model.noise_dim, device=dev)
                )
            teacher_stats = teacher.step(fakes_t)
        stats.update(teacher_stats)

        # ---- EMA of the generator side (Karras et al. 2018)
        step += 1
        with torch.no_grad():
            decay = tc.ema_decay if step > tc.ema_start else 0.0
            for pe, p in zip(ema.parameters(), net.parameters()):
                pe.lerp_(p, 1.0 - decay)
            for be, bn in zip(ema.buffers(), net.buffers()):
                be.copy_(bn)
        imgs_since += b * world
        bar.update(1)

        if main and (step % tc.log_every == 0 or step == tc.steps):
            now = time.perf_counter()
            rec = {
                "step": step,
                "time": time.time(),
                **stats,
                "images_per_s": imgs_since / max(now - t_last, 1e-9),
            }
            t_last, imgs_since = now, 0
            with log_path.open("a") as fh:
                fh.write(json.dumps(rec) + "\n")
            bar.set_postfix(d=f"{rec['loss_d']:.3f}", g=f"{rec['loss_g']:.3f}", ips=f"{rec['images_per_s']:.0f}")
        if main and (step % tc.sample_every == 0 or step == tc.steps):
            with torch.no_grad():
                fake = torch.stack([ema(val_audio, val_noise[k].expand(len(val_voices), -1)) for k in range(4)], 1)
            save_sample_grid(
                out / "samples" / f"step-{step:07d}.png",
                ds.images(val_voices),
                to_uint8(fake.flatten(0, 1)).reshape(len(val_voices), 4, *fake.shape[-2:], 3),
            )
            save_loss_plot(log_path, out / "loss.png")
        if step % tc.checkpoint_every == 0 or step == tc.steps:
            if main:
                last_path = ckpt_dir / f"step-{step:07d}.safetensors"
                save_checkpoint(last_path, step, cfg, ds.identities, net, ema, disc, opt_g, opt_d)
                if teacher is not None and prior is not None:  # the taught regressor goes on with a resume
                    save_file(prior.state_dict(), str(out / LANDMARK_PRIOR_FILE))
                for old in sorted(ckpt_dir.glob("step-*.safetensors"))[:-3]:
                    old.unlink()
            if world > 1:
                dist.barrier()
        if not (math.isfinite(stats["loss_d"]) and (math.isfinite(stats["loss_g"]) or step <= tc.d_warmup_steps)):
            raise RuntimeError(f"training diverged at step {step} (loss_d={stats['loss_d']}, loss_g={stats['loss_g']})")
    bar.close()
    if world > 1:
        dist.barrier()
        dist.destroy_process_group()
    return last_path if last_path is not None else ckpt_dir


def init_from_bundle(
    path: Path, cfg: Config, identities: list[str], net: torch.nn.Module, ema: torch.nn.Module, seed: int = 0
) -> None:
    """Start a run from a model bundle's generator (``generator.safetensors``: the exported, usually EMA,
    weights of the speech encoder, generator and speech identity head), for fine-tuning a shipped model on
    the same or new data.

    Both the trained and the moving-average generator get the bundle's weights through the family's
    ``widen_from`` (exact at the same widths; widened where the config asks for more channels). A bundle carries no discriminator and no
    optimiser state: the discriminator starts from its initialisation (give it ``train.d_warmup_steps`` to
    catch up) and the run starts at step 0. The bundle's pose prior is not used for training (the run fits
    its own pose codes; ``export`` builds the prior again).

    Data with other identities than the bundle's (a capture session's visitors, with or without the bundle's
    own data): everything is taken over except the speech identity head (``speech_classifier``, one output per
    identity), which starts from its initialisation, with a warning that names both lists.

    Raises:
        UserError: not a readable wav2pix bundle, or shapes that cannot be mapped (the message names the tensor).
    """
    from training.export import load_bundle_source

    old, old_cfg, old_ids, _, _ = load_bundle_source(path)
    if old_cfg.model.family != cfg.model.family:
        raise UserError(f"{path}: cannot initialise a {cfg.model.family} model from a {old_cfg.model.family} one")
    if list(old_ids) != list(identities):
        log.warning(
            "%s: trained on identities %s, the data has %s; the speech identity head starts afresh",
            path, list(old_ids), list(identities),
        )  # fmt: skip
        old.speech_classifier = copy.deepcopy(net.speech_classifier).to(next(old.parameters()).device)
    family = get_family(cfg.model.family)
    for name, target in (("G", net), ("G_ema", ema)):
        try:
            family.widen_from(target, old.to(next(target.parameters()).device), seed=seed)
        except ValueError as exc:
            raise UserError(f"{path}: {name}: {exc}") from exc


def init_from_checkpoint(
    path: Path,
    cfg: Config,
    identities: list[str],
    net: torch.nn.Module,
    ema: torch.nn.Module,
    disc: torch.nn.Module,
    opt_d: torch.optim.Optimizer,
    seed: int = 0,
) -> int:
    """Load another run's checkpoint into freshly built modules, widening the generator where the config
    asks for more channels; returns the checkpoint's step.

    The trained and moving-average generators are each widened with the family's ``widen_from``
    (the same noise seed for both); the discriminator and its Adam state must match the config, except for
    what the family's ``discriminator_state_from`` can grow exactly (wav2pix: the minibatch-std channel and
    the pose projection; new parameters registered last start with empty Adam state).
    The generator's Adam state is not carried over (its shapes change).

    Raises:
        UserError: unreadable checkpoint, other identities, a family without ``widen_from``, or shapes
            that cannot be mapped (the message names the tensor).
    """
    tensors, meta = read_checkpoint(path)
    old_cfg = configs.from_mapping(Config, json.loads(meta["config"]), source=f"{path} (metadata)")
    old_ids = json.loads(meta["identities"])
    if old_ids != list(identities):
        raise UserError(f"{path}: trained on identities {old_ids}, the data has {list(identities)}")
    family = get_family(cfg.model.family)
    if old_cfg.model.family != cfg.model.family or not hasattr(family, "widen_from"):
        raise UserError(f"{path}: cannot initialise a {cfg.model.family} model from a {old_cfg.model.family} one")
    for prefix, target in (("G", net), ("G_ema", ema)):
        old, _ = family.build(old_cfg.audio, old_cfg.model, len(old_ids))
        old.load_state_dict(_sub(tensors, prefix))
        try:
            family.widen_from(target, old.to(next(target.parameters()).device), seed=seed)
        except ValueError as exc:
            raise UserError(f"{path}: {prefix}: {exc}") from exc
    d_state, extended = _sub(tensors, "D"), []
    if hasattr(family, "discriminator_state_from"):
        try:
            d_state, extended = family.discriminator_state_from(disc, d_state)
        except ValueError as exc:
            raise UserError(f"{path}: discriminator does not match the config ({exc})") from exc
    try:
        disc.load_state_dict(d_state)
    except RuntimeError as exc:
        raise UserError(
            f"{path}: discriminator does not match the config ({str(exc).splitlines()[-1].strip()})"
        ) from exc
    opt_state = _unflatten_optimizer("opt_d", tensors, meta["opt_d_groups"])
    n_params, group = len(list(disc.parameters())), opt_state["param_groups"][0]
    new_params = [n for n, _ in disc.named_parameters()][len(group["params"]) :]
    if new_params and all(n in extended for n in new_params):  # heads added last (the pose projection)
        group["params"] = list(range(n_params))  # their Adam state starts empty
    for index, (name, param) in enumerate(disc.named_parameters()):  # Adam moments of zero-extended weights
        moments = opt_state["state"].get(index, {})
        for key in ("exp_avg", "exp_avg_sq"):
            if key in moments and moments[key].shape != param.shape:
                if name not in extended:
                    raise UserError(f"{path}: discriminator Adam state of {name} does not match the config")
                moments[key] = family.zero_extend(moments[key], param.shape)
    opt_d.load_state_dict(opt_state)
    for group in opt_d.param_groups:
        group["lr"], group["betas"] = cfg.train.lr_d, tuple(cfg.train.betas)
    return int(meta["step"])


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``run.py train``."""
    parser.add_argument("--config", help="training config YAML (defaults when omitted)")
    parser.add_argument(
        "--data",
        action="append",
        required=True,
        metavar="DIR",
        help="dataset folder (Wav2Pix or capture layout); repeat for several",
    )
    parser.add_argument("--out", required=True, metavar="RUN_DIR", help="run folder")
    parser.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in RUN_DIR")
    parser.add_argument(
        "--init-from",
        metavar="CHECKPOINT|BUNDLE_DIR",
        help="start a new run from another run's checkpoint, or from a model bundle's generator (with a new "
        "discriminator, from step 0; see train.d_warmup_steps); a narrower generator is widened (Net2WiderNet)",
    )
    parser.add_argument("--device", default="auto", help="cpu, cuda or auto (default)")
    parser.add_argument(
        "--steps",
        type=int,
        default=None,
        metavar="N",
        help="override train.steps (train until generator step N; the resolved config records it)",
    )
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
