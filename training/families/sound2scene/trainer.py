"""The sound2scene training: the audio encoder as a sound classifier first, then the GAN with it frozen.

:func:`fit_encoder` trains :class:`~training.families.sound2scene.networks.AudioEncoder` on random windows of the
training sounds (SpecAugment, random gain) for ``encoder.steps`` Adam(W) steps, a fixed schedule with no look at
the held-out sounds, then sets the class centroids. :class:`Sound2SceneTrainer` then embeds ``BANK`` jittered
windows of every training item once (the encoder no longer changes) and runs the GAN step (:meth:`step`) of Wan,
Chuang & Lee (ICASSP 2019): hinge loss, projection discriminator on the sound embedding, auxiliary classifier,
(real image, wrong-class sound) negatives, DiffAugment (Zhao et al. 2020), and for clips optionally pix2pix's L1
term towards the sound's own frame (``loss.l1_weight``).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from engine.errors import UserError
from training import losses
from training.data.batches import Batches
from training.data.diffaugment import diff_augment
from training.families.contract import TrainContext
from training.families.sound2scene.config import Sound2SceneConfig
from training.families.sound2scene.data import SceneDataset, SceneSplit, split
from training.families.sound2scene.networks import AudioEncoder, Sound2SceneGenerator, to_sphere
from training.layers import to_uint8

log = logging.getLogger(__name__)

ENCODER_FILE = "audio_encoder.safetensors"
"""The trained audio encoder and centroids in the run folder (a resumed or restarted run reads them)."""
ENCODER_REPORT = "audio_encoder.json"
BANK = 8
"""Jittered training windows embedded per item for the GAN."""


def spec_augment(
    feats: torch.Tensor, time_masks: int, freq_masks: int, fraction: float, gen: torch.Generator
) -> torch.Tensor:
    """SpecAugment's time and frequency masks (Park et al., Interspeech 2019) on log-mel features [B, M, T]: each
    example gets ``time_masks`` / ``freq_masks`` bands of up to ``fraction`` of the frames / bins set to its mean."""
    b, m, t = feats.shape
    out = feats.clone()
    mean = feats.mean(dim=(1, 2), keepdim=True)
    for axis, count, size in ((2, time_masks, t), (1, freq_masks, m)):
        width = max(1, int(fraction * size))
        for _ in range(count):
            w = torch.randint(0, width + 1, (b, 1, 1), generator=gen)
            start = (torch.rand(b, 1, 1, generator=gen) * (size - w + 1)).floor()
            pos = torch.arange(size).view(1, 1, -1) if axis == 2 else torch.arange(size).view(1, -1, 1)
            mask = ((pos >= start) & (pos < start + w)).to(feats.device)
            out = torch.where(mask, mean, out)
    return out


def class_centroids(embeddings: torch.Tensor, labels: torch.Tensor, n_classes: int) -> torch.Tensor:
    """float32 [C, E]: the mean embedding of each class (rows of ``embeddings`` [N, E] by ``labels`` [N]) put back
    on the sphere (:func:`to_sphere`); a class with no rows gets the mean of all."""
    out = torch.zeros(n_classes, embeddings.shape[1])
    overall = embeddings.mean(dim=0)
    for k in range(n_classes):
        rows = embeddings[labels == k]
        out[k] = rows.mean(dim=0) if len(rows) else overall
    return to_sphere(out)


@torch.no_grad()
def embed_windows(encoder: AudioEncoder, windows: np.ndarray, device: torch.device, batch: int = 256) -> torch.Tensor:
    """Embeddings float32 [N, E] of windows float32 [N, S] (encoder in eval mode, on ``device``)."""
    was = encoder.training
    encoder.eval()
    out = [
        encoder(torch.from_numpy(windows[i : i + batch]).to(device))[0].float() for i in range(0, len(windows), batch)
    ]
    encoder.train(was)
    return torch.cat(out) if out else torch.zeros(0, encoder.proj.out_features, device=device)


def fit_encoder(
    net: Sound2SceneGenerator,
    cfg: Sound2SceneConfig,
    ds: SceneDataset,
    parts: SceneSplit,
    device: torch.device,
    seed: int,
) -> dict:
    """Train ``net.encoder`` as a classifier of the training sounds, then set ``net.centroids``; returns a report.

    Batches are random windows (:meth:`SceneDataset.sound_windows`) of training sounds drawn class-balanced,
    randomly scaled by up to ``encoder.gain_db``; SpecAugment masks the log-mel features; AdamW with
    ``encoder.lr`` (cosine decay to 0) and ``encoder.weight_decay``. The report has the steps, the wall time,
    the last 100 steps' training accuracy and, for the record only (nothing is chosen by it), the accuracy on the
    held-out items' windows.
    """
    ec = cfg.encoder
    window = cfg.audio.window_samples
    enc = net.encoder
    rng = np.random.default_rng([seed, 0xE4C])
    gen = torch.Generator().manual_seed(seed)
    train_sounds = np.unique(ds.item_sound[parts.train_items])
    sound_label = np.zeros(len(ds.sounds), np.int64)
    sound_label[ds.item_sound] = ds.item_label
    per_class = [train_sounds[sound_label[train_sounds] == k] for k in range(len(ds.classes))]
    per_class = [p for p in per_class if len(p)]
    opt = torch.optim.AdamW(enc.parameters(), lr=ec.lr, weight_decay=ec.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 0.5 * (1 + np.cos(np.pi * min(s, ec.steps) / max(1, ec.steps)))
    )
    enc.train()
    started, recent = time.perf_counter(), []
    for _ in range(ec.steps):
        groups = rng.integers(len(per_class), size=ec.batch_size)
        chosen = np.asarray([per_class[g][rng.integers(len(per_class[g]))] for g in groups])
        audio = ds.sound_windows(chosen, window, rng)
        audio *= (10.0 ** (rng.uniform(-ec.gain_db, ec.gain_db, size=(len(chosen), 1)) / 20)).astype(np.float32)
        y = torch.from_numpy(sound_label[chosen]).to(device)
        with torch.no_grad():
            feats = enc.features(torch.from_numpy(np.clip(audio, -1, 1)).to(device))
        feats = spec_augment(feats.cpu(), ec.time_masks, ec.freq_masks, ec.mask_fraction, gen).to(device)
        logits = enc.classify(enc.embed_features(feats))
        loss = F.cross_entropy(logits, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        recent = (recent + [float((logits.argmax(1) == y).float().mean())])[-100:]
    enc.eval()
    train_items = parts.train_items
    e_train = embed_windows(enc, ds.windows(train_items, window), device).cpu()
    net.centroids.copy_(class_centroids(e_train, torch.from_numpy(ds.item_label[train_items]), len(ds.classes)))
    report = {
        "steps": ec.steps, "seconds": round(time.perf_counter() - started, 1),
        "train_accuracy_last_100_steps": round(float(np.mean(recent)), 4) if recent else None,
    }  # fmt: skip
    if len(parts.val_items):
        e_val = embed_windows(enc, ds.windows(parts.val_items, window), device)
        pred = enc.classify(e_val).argmax(1).cpu().numpy()
        report["val_accuracy_for_the_record"] = round(float((pred == ds.item_label[parts.val_items]).mean()), 4)
    return report


class Sound2SceneTrainer:
    """The sound2scene :class:`~training.families.contract.Trainer` (see the module docstring).

    On a fresh run it fits the encoder (rank 0, written to ``RUN_DIR/audio_encoder.safetensors`` with its report;
    the other ranks wait and read it); a resumed run has it in its checkpoint. The encoder is frozen from then
    on: with a few hundred clips the GAN's gradients would only fit it to the training scenes, and the embedding
    the discriminator projects on must not move under it.
    """

    SAMPLE_SEEDS = 4

    def __init__(self, ctx: TrainContext) -> None:
        cfg: Sound2SceneConfig = ctx.cfg
        ds: SceneDataset = ctx.data
        self.ctx, self.cfg, self.ds = ctx, cfg, ds
        dev = ctx.device
        self.parts = split(ds, cfg)
        net: Sound2SceneGenerator = ctx.G
        path = ctx.run_dir / ENCODER_FILE
        if ctx.step == 0:
            if ctx.main and not path.is_file():
                log.info("training the audio encoder: %d steps on %d training items", cfg.encoder.steps,
                         len(self.parts.train_items))  # fmt: skip
                report = fit_encoder(net, cfg, ds, self.parts, dev, cfg.train.seed)
                log.info("audio encoder: %s", report)
                state = {f"encoder.{k}": v for k, v in net.encoder.state_dict().items()}
                save_file({**state, "centroids": net.centroids.detach().cpu()}, str(path))
                (ctx.run_dir / ENCODER_REPORT).write_text(json.dumps(report, indent=1) + "\n")
            ctx.barrier()
            self._load_encoder(path)
        for module in (net, ctx.G_ema):
            module.encoder.eval().requires_grad_(False)
        ctx.G_ema.encoder.load_state_dict(net.encoder.state_dict())
        ctx.G_ema.centroids.copy_(net.centroids)
        self.centroids = net.centroids.detach().to(dev)
        if dev.type == "cpu":  # oneDNN's convolutions at few channels and high resolution: 3-6x faster in NHWC
            for module in (net.generator, ctx.D):
                module.to(memory_format=torch.channels_last)

        window = cfg.audio.window_samples
        rng = np.random.default_rng([cfg.train.seed, 0xBA4C])
        self.train_items = self.parts.train_items
        chunks = []
        for i in range(0, len(self.train_items), 64):
            part = self.train_items[i : i + 64]
            windows = np.stack([ds.windows(part, window, rng) for _ in range(BANK)], axis=1).reshape(-1, window)
            chunks.append(embed_windows(net.encoder, windows, dev).view(len(part), BANK, -1))
        self.bank = torch.cat(chunks)  # [N_train, BANK, E]
        self.position = np.full(len(ds), -1, np.int64)
        self.position[self.train_items] = np.arange(len(self.train_items))
        self.images = torch.from_numpy(ds.images).to(dev).permute(0, 3, 1, 2).float().div_(127.5).sub_(1.0)
        self.labels = torch.from_numpy(ds.item_label).to(dev)
        self.class_images = [self.parts.train_images[ds.image_labels[self.parts.train_images] == k]
                             for k in range(len(ds.classes))]  # fmt: skip
        self.class_items = [self.train_items[ds.item_label[self.train_items] == k] for k in range(len(ds.classes))]
        self.batches = Batches(self.train_items, cfg.train.batch_size, cfg.train.seed + ctx.step, ctx.rank, ctx.world)
        self.rng = np.random.default_rng([cfg.train.seed, ctx.rank, ctx.step])
        self.policy = cfg.augment.policy if cfg.augment.enabled else ()
        self.sample_items = self._sample_items()
        self.sample_audio = torch.from_numpy(ds.windows(self.sample_items, window)).to(dev)
        self.sample_noise = torch.randn(self.SAMPLE_SEEDS, cfg.model.noise_dim,
                                        generator=torch.Generator().manual_seed(1234)).to(dev)  # fmt: skip

    def _load_encoder(self, path: Path) -> None:
        try:
            tensors = load_file(str(path))
            net: Sound2SceneGenerator = self.ctx.G
            net.encoder.load_state_dict(
                {k[len("encoder.") :]: v for k, v in tensors.items() if k.startswith("encoder.")}
            )
            net.centroids.copy_(tensors["centroids"])
        except (OSError, KeyError, RuntimeError, SafetensorError) as err:
            raise UserError(f"{path}: cannot read the audio encoder ({err}); delete it to train it again") from err

    def _sample_items(self) -> np.ndarray:
        """One held-out item per class (a training item where a class has none held out), deterministic."""
        ds, parts = self.ds, self.parts
        chosen = []
        for k in range(len(ds.classes)):
            for pool in (parts.val_items, parts.train_items):
                members = pool[ds.item_label[pool] == k]
                if len(members):
                    chosen.append(int(members[len(members) // 2]))
                    break
        return np.asarray(chosen, np.int64)

    def _real_images(self, idx: np.ndarray) -> torch.Tensor:
        own = self.ds.item_image[idx]
        pick = own.copy()
        for row in np.flatnonzero(own < 0):
            pool = self.class_images[int(self.ds.item_label[idx[row]])]
            pick[row] = pool[self.rng.integers(len(pool))]
        return self.images[torch.from_numpy(pick).to(self.ctx.device)]

    def _wrong(self, y: np.ndarray) -> torch.Tensor:
        """Embeddings [B, E] of random training items of another class than each label in ``y``."""
        n = len(self.ds.classes)
        rows = []
        for label in y:
            others = [k for k in range(n) if k != label and len(self.class_items[k])] or [int(label)]
            k = others[self.rng.integers(len(others))]
            item = self.class_items[k][self.rng.integers(len(self.class_items[k]))]
            rows.append((self.position[item], self.rng.integers(BANK)))
        pos = torch.as_tensor(rows, dtype=torch.long, device=self.ctx.device)
        return self.bank[pos[:, 0], pos[:, 1]]

    def _augment(self, x: torch.Tensor) -> torch.Tensor:
        return diff_augment(x, self.policy) if self.policy else x

    def step(self, step: int, update_g: bool) -> dict[str, float]:
        """One discriminator update and, with ``update_g``, one generator update (see the module docstring)."""
        ctx, cfg, lc = self.ctx, self.cfg, self.cfg.loss
        dev, G, D, aug = ctx.device, ctx.G.generator, ctx.D, self._augment
        idx = self.batches.next()
        b = len(idx)
        y_np = self.ds.item_label[idx]
        y = torch.from_numpy(y_np).to(dev)
        pos = torch.from_numpy(self.position[idx]).to(dev)
        e = self.bank[pos, torch.from_numpy(self.rng.integers(BANK, size=b)).to(dev)]
        swap = torch.from_numpy(self.rng.random(b) < lc.centroid_fraction).to(dev)
        if lc.centroid_fraction > 0:
            e = torch.where(swap[:, None], self.centroids[y], e)
        x_real = self._real_images(idx)
        z = torch.randn(b, cfg.model.noise_dim, device=dev)

        D.requires_grad_(True)
        with torch.no_grad(), ctx.autocast():
            x_fake = G(z, e)
        with ctx.autocast():
            h_real = D.features(aug(x_real))
            s_real, cls_real = D.score(h_real, e), D.classifier(h_real)
            negatives = [D.score(D.features(aug(x_fake)), e)]
            if lc.matching_aware:
                negatives.append(D.score(h_real, self._wrong(y_np)))
        s_real, cls_real, negatives = s_real.float(), cls_real.float(), [s.float() for s in negatives]
        loss_d = losses.d_loss(lc.kind, s_real, negatives)
        loss_aux_d = F.cross_entropy(cls_real, y)
        ctx.optimise(ctx.opt_d, loss_d + lc.aux_weight * loss_aux_d, list(D.parameters()))
        stats = {
            "loss_d": loss_d.item(), "loss_aux_d": loss_aux_d.item(), "d_real": s_real.mean().item(),
            "d_fake": negatives[0].mean().item(), "d_wrong": negatives[-1].mean().item() if lc.matching_aware else 0.0,
            "d_acc_real": float((cls_real.argmax(1) == y).float().mean()),
        }  # fmt: skip
        if not update_g:
            return {**stats, **dict.fromkeys(("loss_g", "loss_aux_g", "loss_ms", "loss_l1"), float("nan"))}

        paired = torch.from_numpy(self.ds.item_image[idx] >= 0).to(dev) & ~swap
        if lc.l1_weight > 0 and lc.l1_candidates > 1 and bool(paired.any()):
            z = self._nearest_noise(G, z, e, x_real, paired, lc.l1_candidates)
        D.requires_grad_(False)
        with ctx.autocast():
            x_fake = G(z, e)
            s_fake, cls_fake = D(aug(x_fake), e)
            loss_ms = torch.zeros((), device=dev)
            if lc.mode_seeking_weight > 0:
                h = max(1, b // 2)
                z2 = torch.randn(h, cfg.model.noise_dim, device=dev)
                loss_ms = losses.mode_seeking(x_fake[:h].float(), G(z2, e[:h]).float(), z[:h], z2)
        s_fake, cls_fake = s_fake.float(), cls_fake.float()
        loss_g = losses.g_loss(lc.kind, s_fake)
        loss_aux_g = F.cross_entropy(cls_fake, y)
        loss_l1 = torch.zeros((), device=dev)
        if lc.l1_weight > 0 and bool(paired.any()):
            loss_l1 = (x_fake.float() - x_real)[paired].abs().mean()
        total = loss_g + lc.aux_weight_g * loss_aux_g + lc.mode_seeking_weight * loss_ms + lc.l1_weight * loss_l1
        ctx.optimise(ctx.opt_g, total, [p for p in ctx.G.parameters() if p.requires_grad])
        return {**stats, "loss_g": loss_g.item(), "loss_aux_g": loss_aux_g.item(), "loss_ms": loss_ms.item(),
                "loss_l1": loss_l1.item(),
                "g_acc_fake": float((cls_fake.argmax(1) == y).float().mean())}  # fmt: skip

    @torch.no_grad()
    def _nearest_noise(self, G, z: torch.Tensor, e: torch.Tensor, x_real: torch.Tensor, rows: torch.Tensor,
                       k: int) -> torch.Tensor:  # fmt: skip
        """``z`` [B, Z] with each of ``rows`` (bool [B]) replaced by the best of ``k`` noise draws (the first is its
        own): the one whose image under ``e`` is nearest (mean absolute difference) to ``x_real`` (conditional
        IMLE, Li, Zhang & Malik 2019)."""
        sel = torch.nonzero(rows).flatten()
        n, zd = len(sel), z.shape[1]
        cand = torch.cat([z[sel][None], torch.randn(k - 1, n, zd, device=z.device)]).flatten(0, 1)  # [k*n, Z]
        with self.ctx.autocast():
            images = G(cand, e[sel].repeat(k, 1)).float()
        dist = (images - x_real[sel].repeat(k, 1, 1, 1)).abs().mean(dim=(1, 2, 3)).view(k, n)
        best = dist.argmin(dim=0)
        out = z.clone()
        out[sel] = cand.view(k, n, zd)[best, torch.arange(n, device=z.device)]
        return out

    @torch.no_grad()
    def sample_grid(self) -> np.ndarray:
        """One row per class (a held-out item): its real image, then ``G_ema``'s images for 4 fixed noises."""
        ema, n = self.ctx.G_ema, len(self.sample_items)
        fakes = torch.stack(
            [ema(self.sample_audio, self.sample_noise[k].expand(n, -1)) for k in range(self.SAMPLE_SEEDS)], 1
        )
        tiles = to_uint8(fakes.flatten(0, 1)).reshape(n, self.SAMPLE_SEEDS, *fakes.shape[-2:], 3)
        real = self._real_images_fixed(self.sample_items)
        return np.concatenate([np.concatenate([real[i], *tiles[i]], axis=1) for i in range(n)], axis=0)

    def _real_images_fixed(self, idx: np.ndarray) -> np.ndarray:
        """uint8 [B, H, W, 3]: each item's own image, or the first held-out (else training) image of its class."""
        ds, parts = self.ds, self.parts
        out = []
        for i in idx:
            j = int(ds.item_image[i])
            if j < 0:
                label = ds.item_label[i]
                pool = parts.val_images[ds.image_labels[parts.val_images] == label]
                pool = pool if len(pool) else parts.train_images[ds.image_labels[parts.train_images] == label]
                j = int(pool[0])
            out.append(ds.images[j])
        return np.stack(out)

    def on_checkpoint(self) -> None:
        """Nothing trains beside the networks (the encoder file was written before the first step)."""
