"""The avgan training step: one discriminator and one generator update on (image, sound) pairs.

Discriminator (hinge or LSGAN; DiffAugment on the image stream, Zhao et al. 2020): real (image, sound) pairs are
real; the negatives, averaged with their weights, are: fake (image, sound) pairs of the generator (weight 1) and,
weighted by ``loss.mismatch_weight``, a real image
with the real sound of another item of another identity (another speaker, another digit) is fake, so that the
discriminator learns that image and sound must belong together (matching-aware negatives, Reed et al. 2016). For
``voice`` models the condition's embedding is projected into the score and a real pair with another identity's
condition is fake too (``loss.wrong_condition_weight``). An AC-GAN classifier on the joint features of real pairs
learns the identity (``loss.aux_weight``).

Generator: the adversarial loss on its pairs, the speech encoder's identity classification
(``loss.speech_id_weight``, ``voice`` only), the mode-seeking term on both streams (Mao et al. 2019) and, with
``loss.guide_weight`` (digits), a frozen spoken-digit classifier naming its sound's code
(:mod:`training.families.avgan.guide`).

``model.latent_code`` (semi-supervised InfoGAN, Spurr et al. 2017; AC-GAN's per-class loss, Odena et al. 2017):
the discriminator's per-stream classifiers learn the labels of real images and real sounds, and the generator is
trained so that each of its streams is classified as the code in its latent (``loss.code_weight``). With
``model.stream_classifiers`` (``voice`` models) the same per-stream classifiers learn the speaker, and the
generator's face and voice must each be classified as the condition's speaker.

``loss.heard_sound``: the discriminator's spectrogram stream sees every sound, real and generated, as it is heard
from a bundle (:func:`heard`: decoded, clipped to [-1, 1], analysed again), not the generator's spectrogram image.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from training import losses
from training.data.batches import Batches
from training.data.diffaugment import diff_augment
from training.families.avgan.config import AvganConfig
from training.families.avgan.data import normalise_peak
from training.families.contract import TrainContext

if TYPE_CHECKING:
    from training.families.avgan.networks import AvganGenerator

log = logging.getLogger(__name__)


def wrong_indices(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """For each item, the index of another item in the batch with a different label (the next one where every
    label is the same). int64 [B]."""
    b = len(labels)
    out = np.empty(b, np.int64)
    for i in range(b):
        others = np.flatnonzero(labels != labels[i])
        out[i] = others[rng.integers(len(others))] if len(others) else (i + 1) % b
    return out


def heard(G: AvganGenerator, spec: torch.Tensor) -> torch.Tensor:
    """``loss.heard_sound``: spectrogram images [B, 2, K, T] as the bundle's sound output is heard: decoded, clipped
    to [-1, 1] (:meth:`AvganGenerator.sound`) and analysed again; channel 0 the standardised log-magnitude of that
    waveform (:meth:`SpectrogramCodec.log_magnitude`, differentiable also through exact silence), channel 1 the
    image's own IF. Real items take the same path, so that the float rounding of the synthesis, which lifts a real
    clip's exact digital silence, is no cue either."""
    return torch.stack([G.codec.log_magnitude(G.sound(spec)), spec[:, 1]], dim=1)


def real_term(kind: str, scores: torch.Tensor) -> torch.Tensor:
    """The discriminator's loss on scores [B] that should be high: mean relu(1 - s) (hinge) or mean (s - 1)^2."""
    return F.relu(1.0 - scores).mean() if kind == "hinge" else ((scores - 1.0) ** 2).mean()


def to_tensor(images: np.ndarray, device: torch.device) -> torch.Tensor:
    """uint8 [B, H, W, C] -> float32 [B, C, H, W] in [-1, 1]."""
    return torch.from_numpy(np.ascontiguousarray(images)).to(device).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def spectrogram_tiles(spec: torch.Tensor, size: int) -> np.ndarray:
    """uint8 [B, size, size, 3] grey pictures of the log-magnitude channel of spectrogram images [B, 2, K, T]
    (low frequencies at the bottom; -3 .. 3 standard deviations map to black .. white)."""
    import cv2

    logmag = spec[:, 0].detach().float().cpu().numpy()
    grey = np.clip((logmag + 3.0) / 6.0 * 255.0, 0, 255).astype(np.uint8)[:, ::-1]
    tiles = [cv2.resize(np.ascontiguousarray(g), (size, size), interpolation=cv2.INTER_AREA) for g in grey]
    return np.repeat(np.stack(tiles)[..., None], 3, axis=3)


def image_tiles(images: torch.Tensor) -> np.ndarray:
    """uint8 [B, H, W, 3] of images [B, C, H, W] in [-1, 1] (grey repeated to RGB)."""
    x = ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    return np.repeat(x, 3, axis=3) if x.shape[3] == 1 else x


class AvganTrainer:
    """The avgan :class:`~training.families.contract.Trainer` (see the module docstring)."""

    SAMPLE_ROWS, SAMPLE_SEEDS = 6, 3

    def __init__(self, ctx: TrainContext) -> None:
        cfg: AvganConfig = ctx.cfg
        self.ctx, self.cfg, self.data = ctx, cfg, ctx.data
        tc = cfg.train
        self.rng = np.random.default_rng([tc.seed, ctx.rank, ctx.step])
        self.batches = Batches(ctx.split.train, tc.batch_size, tc.seed + ctx.step, ctx.rank, ctx.world)
        self.policy = cfg.augment.policy if cfg.augment.enabled else ()
        if cfg.model.image_stream == "wav2pix" and ctx.step == 0 and not getattr(ctx.G, "image_stream_from", None):
            from engine.errors import UserError

            raise UserError("model.image_stream: wav2pix takes the image stream and the speech encoder from a wav2pix "
                            "bundle: start the run with --init-from BUNDLE (e.g. presets/models/wav2pix-64)")  # fmt: skip
        labels = self.data.labels
        self.by_label = {int(k): ctx.split.train[labels[ctx.split.train] == k] for k in np.unique(labels)}
        if ctx.step == 0:  # the log-magnitude statistics: part of the generator's state from here on
            pick = ctx.split.train[np.linspace(0, len(ctx.split.train) - 1, min(1024, len(ctx.split.train))).astype(int)]
            clips = torch.from_numpy(normalise_peak(self.data.sounds(pick)))
            for g in (ctx.G, ctx.G_ema):
                g.codec.fit_statistics(clips)
        self.guide = None
        if cfg.loss.guide_weight > 0:
            from engine.errors import UserError

            if not ctx.G.n_codes or getattr(self.data, "kind", "") != "digits":
                raise UserError("loss.guide_weight: the spoken-digit guide needs digits data and model.latent_code: true")
            from datastore.cache import default_cache_dir
            from training.families.avgan.guide import guide_for

            self.guide, report = guide_for(self.data, cfg.data.val_takes, default_cache_dir())
            self.guide.to(ctx.device)
            log.info("sound guide: %s", report)
        pool = ctx.split.val if len(ctx.split.val) else ctx.split.train
        self.sample_items = self._sample_items(pool)
        gen = torch.Generator().manual_seed(1234)
        self.sample_noise = torch.randn(self.SAMPLE_SEEDS, cfg.model.noise_dim, generator=gen).to(ctx.device)

    def _sample_items(self, pool: np.ndarray) -> np.ndarray:
        """Up to SAMPLE_ROWS items of ``pool``, cycling through the labels (deterministic)."""
        labels = self.data.labels[pool]
        per = [pool[labels == k] for k in np.unique(labels)]
        out: list[int] = []
        i = 0
        while len(out) < self.SAMPLE_ROWS and any(i * 7 < len(p) for p in per):
            out += [int(p[i * 7]) for p in per if i * 7 < len(p)]
            i += 1
        return np.asarray(out[: self.SAMPLE_ROWS], np.int64)

    def _condition(self, idx: np.ndarray) -> torch.Tensor | None:
        """Condition audio float32 [B, S]: for each item, another training clip of the same identity (voice)."""
        if self.cfg.model.conditioning != "voice":
            return None
        other = []
        for i in idx:
            pool = self.by_label.get(int(self.data.labels[i]))
            other.append(int(pool[self.rng.integers(len(pool))]) if pool is not None and len(pool) else int(i))
        return torch.from_numpy(self.data.sounds(np.asarray(other), self.rng)).to(self.ctx.device)

    def _as_judged(self, spec: torch.Tensor) -> torch.Tensor:
        """What the discriminator's spectrogram stream sees of spectrogram images [B, 2, K, T]: :func:`heard` with
        ``loss.heard_sound``, else the images themselves."""
        return heard(self.ctx.G, spec) if self.cfg.loss.heard_sound else spec

    def _augment(self, x: torch.Tensor) -> torch.Tensor:
        return diff_augment(x, self.policy) if self.policy else x

    def step(self, step: int, update_g: bool) -> dict[str, float]:
        """One discriminator update and (``update_g``) one generator update on the next batch."""
        ctx, cfg, data = self.ctx, self.cfg, self.data
        G, D, dev = ctx.G, ctx.D, ctx.device
        lc = cfg.loss
        idx = self.batches.next()
        b = len(idx)
        y_np = data.labels[idx]
        y = torch.from_numpy(y_np).to(dev)
        x_img = to_tensor(data.images(idx, self.rng), dev)
        with torch.no_grad():
            x_spec = G.codec.encode(torch.from_numpy(normalise_peak(data.sounds(idx, self.rng))).to(dev))
            x_spec = self._as_judged(x_spec)  # real sounds take the same path as the generated ones
        cond_audio = self._condition(idx)
        wrong = torch.from_numpy(wrong_indices(y_np, self.rng)).to(dev)
        aug = self._augment

        # ---- discriminator
        D.requires_grad_(True)
        with torch.no_grad(), ctx.autocast():
            e = G.encoder(cond_audio) if cond_audio is not None else None
            f_img, f_spec = G(torch.randn(b, cfg.model.noise_dim, device=dev), e)
        with ctx.autocast():
            h_img_r, h_spec_r = D.image_features(aug(x_img)), D.spec_features(x_spec)
            j_real = D.joint(h_img_r, h_spec_r)
            s_real = D.score(j_real, e)
            s_fake = D.score(D.joint(D.image_features(aug(f_img)), D.spec_features(self._as_judged(f_spec))), e)
            logits = D.classifier(j_real)
            s_mis = D.score(D.joint(h_img_r, h_spec_r[wrong]), e) if lc.mismatch_weight > 0 else None
            s_wc = D.score(j_real, e[wrong]) if e is not None and lc.wrong_condition_weight > 0 else None
        s_real, s_fake, logits = s_real.float(), s_fake.float(), logits.float()
        # negatives averaged with their weights (GAN-CLS, Reed et al. 2016: (fake + wrong) / 2), so that the real
        # pairs weigh as much as all negatives together; adding them instead drove every score down and the
        # generator collapsed to one sample (the first digits run, step 500-1000)
        negatives = [(1.0, s_fake)]
        if s_mis is not None:
            negatives.append((lc.mismatch_weight, s_mis.float()))
        if s_wc is not None:
            negatives.append((lc.wrong_condition_weight, s_wc.float()))
        total_w = sum(w for w, _ in negatives)
        loss_d = real_term(lc.kind, s_real) + sum(w * losses.d_negative(lc.kind, s) for w, s in negatives) / total_w
        loss_aux = F.cross_entropy(logits, y)
        loss_code_d = torch.zeros((), device=dev)
        if D.image_code is not None and D.spec_code is not None:
            img_logits, spec_logits = D.image_code(h_img_r).float(), D.spec_code(h_spec_r).float()
            loss_code_d = 0.5 * (F.cross_entropy(img_logits, y) + F.cross_entropy(spec_logits, y))
        ctx.optimise(ctx.opt_d, loss_d + lc.aux_weight * loss_aux + lc.code_weight * loss_code_d, list(D.parameters()))
        stats = {
            "loss_d": loss_d.item(),
            "d_real": s_real.mean().item(),
            "d_fake": s_fake.mean().item(),
            "d_mismatch": float("nan") if s_mis is None else s_mis.float().mean().item(),
            "loss_aux": loss_aux.item(),
            "aux_acc": float((logits.argmax(1) == y).float().mean()),
            "loss_code_d": loss_code_d.item(),
        }
        if not update_g:
            return {**stats, "loss_g": float("nan"), "loss_speech_id": float("nan"), "loss_ms": float("nan"),
                    "loss_code_g": float("nan"), "loss_guide": float("nan")}  # fmt: skip

        # ---- generator (+ speech encoder)
        D.requires_grad_(False)
        with ctx.autocast():
            e = G.encoder(cond_audio) if cond_audio is not None else None
            z = torch.randn(b, cfg.model.noise_dim, device=dev)
            f_img, f_spec = G(z, e)
            h_img_g, h_spec_g = D.image_features(aug(f_img)), D.spec_features(self._as_judged(f_spec))
            s_g = D.score(D.joint(h_img_g, h_spec_g), e).float()
            loss_code_g = torch.zeros((), device=dev)
            if D.image_code is not None and D.spec_code is not None:
                c = G.code_labels(z) if G.n_codes else y  # the code's label, or the condition's speaker
                loss_code_g = 0.5 * (F.cross_entropy(D.image_code(h_img_g).float(), c)
                                     + F.cross_entropy(D.spec_code(h_spec_g).float(), c))  # fmt: skip
            loss_guide = torch.zeros((), device=dev)
            if self.guide is not None:
                with torch.autocast(dev.type, enabled=False):  # the guide reads in float32, as it was trained
                    loss_guide = F.cross_entropy(self.guide(G.sound(f_spec.float())), G.code_labels(z))
            loss_ms = torch.zeros((), device=dev)
            if lc.mode_seeking_weight > 0:
                h = max(1, b // 2)
                z2 = torch.randn(h, cfg.model.noise_dim, device=dev)
                i2, s2 = G(z2, None if e is None else e[:h])
                loss_ms = 0.5 * (losses.mode_seeking(f_img[:h].float(), i2.float(), z[:h], z2)
                                 + losses.mode_seeking(f_spec[:h].float(), s2.float(), z[:h], z2))  # fmt: skip
        loss_g = losses.g_loss(lc.kind, s_g)
        loss_sid = torch.zeros((), device=dev)
        if e is not None and G.speaker_head is not None:
            loss_sid = F.cross_entropy(G.speaker_head(e.float()), y)
        total = (loss_g + lc.speech_id_weight * loss_sid + lc.mode_seeking_weight * loss_ms + lc.code_weight * loss_code_g
                 + lc.guide_weight * loss_guide)
        ctx.optimise(ctx.opt_g, total, list(G.parameters()))
        return {**stats, "loss_g": loss_g.item(), "loss_speech_id": loss_sid.item(), "loss_ms": loss_ms.item(),
                "loss_code_g": loss_code_g.item(), "loss_guide": loss_guide.item()}  # fmt: skip

    @torch.no_grad()
    def sample_grid(self) -> np.ndarray:
        """One row per fixed validation item: its real image and spectrogram, then ``G_ema``'s image and spectrogram
        for SAMPLE_SEEDS fixed noise vectors (the item's speech as the condition, for ``voice`` models)."""
        ema, dev, items = self.ctx.G_ema, self.ctx.device, self.sample_items
        n = len(items)
        real_img = to_tensor(self.data.images(items), dev)
        real_spec = ema.codec.encode(torch.from_numpy(normalise_peak(self.data.sounds(items))).to(dev))
        e = ema.encoder(torch.from_numpy(self.data.sounds(items)).to(dev)) if ema.encoder is not None else None
        size = real_img.shape[-1]
        cols = [image_tiles(real_img), spectrogram_tiles(real_spec, size)]
        for k in range(self.SAMPLE_SEEDS):
            img, spec = ema(self.sample_noise[k].expand(n, -1), e)
            cols += [image_tiles(img), spectrogram_tiles(spec, size)]
        return np.concatenate([np.concatenate([c[r] for c in cols], axis=1) for r in range(n)], axis=0)

    def on_checkpoint(self) -> None:
        pass
