"""The wav2pix training step and the run-time state it needs (pose codes, the landmark CNN and its teacher).

:class:`GanStep` is one alternating discriminator + generator update; :class:`Wav2PixTrainer` draws the batches,
holds the state and makes the sample grids for the generic loop (:mod:`training.loop`).
"""

from __future__ import annotations

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
from training.data import PairDataset
from training.data.batches import Batches
from training.data.diffaugment import diff_augment
from training.families.contract import TrainContext
from training.families.wav2pix.config import Wav2PixConfig
from training.families.wav2pix.landmarks import (
    LANDMARK_FILE,
    LandmarkRegressor,
    LandmarkTeacher,
    PoseCodes,
    fit_landmark_regressor,
    load_landmarks,
    normalise_landmarks,
    save_landmarks,
)
from training.families.wav2pix.prior import POSE_CODES_FILE
from training.layers import to_uint8

log = logging.getLogger(__name__)


def wrong_indices(labels: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
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


def wrong_pose(codes: torch.Tensor, labels: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """For each item, the pose code [B, K] of another item of the same identity (a random shuffle of each
    identity's items in the batch, shifted by one); a standard-normal code where an identity has one item."""
    out = torch.randn(codes.shape, generator=gen).to(codes.device)
    for k in torch.unique(labels).tolist():
        idx = torch.nonzero(labels == k).flatten()
        if len(idx) >= 2:
            idx = idx[torch.randperm(len(idx), generator=gen)].to(codes.device)
            out[idx] = codes[idx.roll(1)]
    return out


class GanStep:
    """One alternating discriminator + generator update of the wav2pix GAN.

    Discriminator: hinge or LSGAN on (real image, right speech) against (fake image, right speech) and, when
    matching-aware, (real image, wrong speech) (Reed et al. 2016), plus, with a pose code, (real image, right
    speech, another face's code) weighted by ``loss.pose_matching_weight``, and the AC-GAN identity loss on real
    images (Odena et al. 2017); DiffAugment on every image it sees (Zhao et al. 2020).
    Generator + speech encoder: adversarial loss, the identity classifier's loss on fakes (``aux_weight_g``),
    identity classification of the speech embedding, the mode-seeking term (Mao et al. 2019) and, with
    ``loss.pose_code_weight``, the pose-code regression through the landmark CNN. Forward passes run under the
    context's autocast; losses are computed in float32; gradients are all-reduced before each optimiser step.

    Args:
        ctx: the loop's :class:`~training.families.contract.TrainContext` (modules, optimisers, all-reduce).
        regressor: the landmark CNN (needed when ``loss.pose_code_weight`` > 0 with a pose code).
        pose_codes: the pose code's fit (needed for the regression).

    Raises:
        ValueError: the pose-code regression without a regressor or a fit.
    """

    # the generator half's statistics (NaN in a discriminator-only step)
    G_STATS = ("loss_g", "loss_aux", "loss_speech_id", "loss_ms", "speech_id_acc", "loss_pose")

    def __init__(
        self, ctx: TrainContext, regressor: LandmarkRegressor | None = None, pose_codes: PoseCodes | None = None
    ) -> None:
        cfg: Wav2PixConfig = ctx.cfg
        self.ctx, self.cfg = ctx, cfg
        self.regress_pose = bool(cfg.model.pose_code_dim and cfg.loss.pose_code_weight > 0)
        if self.regress_pose and (regressor is None or pose_codes is None):
            raise ValueError("loss.pose_code_weight > 0 needs the landmark regressor and the pose codes' fit")
        self.regressor, self.pose_codes = regressor, pose_codes
        self.policy = cfg.augment.policy if cfg.augment.enabled else ()

    def _augment(self, x: torch.Tensor) -> torch.Tensor:
        return diff_augment(x, self.policy) if self.policy else x

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
    ) -> dict[str, float]:
        """Run one step (``update_g=False``: the discriminator's half only, as in ``train.d_warmup_steps``).

        Args:
            x_real: real faces float32 [B, 3, H, W] in [-1, 1]. y: identity labels int64 [B].
            feats: speech features [B, ...] from ``G.encoder.features_of``. wrong: int64 [B] index of a
                mismatched voice for each item.
            pose: with ``model.pose_code_dim`` = K, the real faces' pose codes float32 [B, K] (zeros where a face
                has none): the generator gets them as its first K noise inputs and the discriminator scores them.
                wrong_pose: [B, K] codes of other faces, scored with the real faces as fake; None skips that term.

        Returns:
            floats: loss_d, d_real, d_fake, d_wrong_pose (0 without it), and the generator's loss_g, loss_aux,
            loss_speech_id, loss_ms, speech_id_acc, loss_pose (NaN without ``update_g``).

        Raises:
            ValueError: ``pose`` missing or of the wrong width for ``model.pose_code_dim``.
        """
        cfg, ctx = self.cfg, self.ctx
        net, disc, aug = ctx.G, ctx.D, self._augment
        dev, b, z_dim = x_real.device, x_real.shape[0], cfg.model.noise_dim
        k_pose = cfg.model.pose_code_dim
        if (pose is None) != (k_pose == 0) or (pose is not None and pose.shape != (b, k_pose)):
            got = None if pose is None else tuple(pose.shape)
            raise ValueError(f"pose codes: model.pose_code_dim is {k_pose}, got pose {got} for a batch of {b}")
        # ---- discriminator: (real, right) vs (fake, right) and (real, wrong)
        disc.requires_grad_(True)
        with torch.no_grad(), ctx.autocast():
            e = net.encoder.encode_features(feats)
            x_fake = net.generator(e, self._noise(b, pose, dev))
        s_wrong_pose = None
        with ctx.autocast():
            s_real, cls_real = disc(aug(x_real), e, pose=pose)
            fakes = [disc(aug(x_fake), e, pose=pose)[0]]
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
        total_d = loss_d + cfg.loss.aux_weight * F.cross_entropy(cls_real, y)
        ctx.optimise(ctx.opt_d, total_d, list(disc.parameters()))
        d_stats = {
            "loss_d": loss_d.item(),
            "d_real": s_real.mean().item(),
            "d_fake": fakes[0].mean().item(),
            "d_wrong_pose": 0.0 if s_wrong_pose is None else s_wrong_pose.mean().item(),
        }
        if not update_g:
            return {**dict.fromkeys(self.G_STATS, float("nan")), **d_stats}

        # ---- generator (+ speech encoder)
        disc.requires_grad_(False)
        with ctx.autocast():
            e = net.encoder.encode_features(feats)
            z = self._noise(b, pose, dev)
            x_fake = net.generator(e, z)
            s_fake, cls_fake = disc(aug(x_fake), e, pose=pose)
            speech_logits = net.speech_classifier(e)
            loss_ms = torch.zeros((), device=dev)
            if cfg.loss.mode_seeking_weight > 0:
                h = max(1, b // 2)
                z2 = torch.randn(h, z_dim, device=dev)
                loss_ms = losses.mode_seeking(x_fake[:h].float(), net.generator(e[:h], z2).float(), z[:h], z2)
        s_fake, cls_fake, speech_logits = s_fake.float(), cls_fake.float(), speech_logits.float()
        loss_pose = torch.zeros((), device=dev)
        if self.regress_pose:
            assert self.regressor is not None and self.pose_codes is not None and pose is not None
            read = self.pose_codes.encode_normalised(self.regressor(x_fake.float()), y)
            loss_pose = (read - pose).square().mean()
        loss_g = losses.g_loss(cfg.loss.kind, s_fake)
        loss_aux = F.cross_entropy(cls_fake, y)
        loss_sid = F.cross_entropy(speech_logits, y)
        total = (
            loss_g
            + cfg.loss.aux_weight_g * loss_aux
            + cfg.loss.speech_id_weight * loss_sid
            + cfg.loss.mode_seeking_weight * loss_ms
            + cfg.loss.pose_code_weight * loss_pose
        )
        ctx.optimise(ctx.opt_g, total, list(net.parameters()))
        g_stats = {
            "loss_g": loss_g.item(),
            "loss_aux": loss_aux.item(),
            "loss_speech_id": loss_sid.item(),
            "loss_ms": loss_ms.item(),
            "speech_id_acc": float((speech_logits.argmax(1) == y).float().mean()),
            "loss_pose": loss_pose.item(),
        }
        return {**g_stats, **d_stats}


def fixed_val_voices(ds: PairDataset, val_idx: np.ndarray, n: int) -> np.ndarray:
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


def landmarks_for_run(
    out: Path, cfg: Wav2PixConfig, train_faces: np.ndarray, main: bool, barrier
) -> tuple[LandmarkRegressor, torch.Tensor]:
    """The run's landmark CNN and its real targets: read from ``out/landmark_prior.safetensors``, else built.

    Building runs dlib's face detector and 68-point landmark model on every training face (uint8 [F, S, S, 3];
    the validation split is never read), fits :class:`LandmarkRegressor` for ``loss.landmark_fit_steps`` and
    writes the file (rank 0; the others wait at ``barrier()`` and read it), so a resumed run uses the same one.

    Raises:
        UserError: too few training faces with detectable landmarks, or an unreadable file.
    """
    from training.face_metrics import FaceAnalyzer

    path = out / LANDMARK_FILE
    if main and not path.is_file():
        t0 = time.perf_counter()
        found = FaceAnalyzer().analyze(train_faces, embed=False)
        try:
            regressor, report = fit_landmark_regressor(
                train_faces, found.landmarks, steps=cfg.loss.landmark_fit_steps, seed=cfg.train.seed
            )
        except ValueError as err:
            raise UserError(f"loss.pose_code_weight > 0: cannot fit the landmark CNN: {err}") from err
        save_landmarks(path, regressor, torch.from_numpy(normalise_landmarks(found.landmarks)), report)
        log.info(
            "landmark CNN: %d of %d training faces with landmarks, fit RMSE %.3f inter-ocular distances, %.0f s",
            report["n_faces"], len(train_faces), report["train_rmse"], time.perf_counter() - t0,
        )  # fmt: skip
    barrier()
    try:
        regressor, targets = load_landmarks(path)
    except (OSError, KeyError, RuntimeError, SafetensorError) as err:
        raise UserError(f"{path}: cannot read the landmark CNN ({err}); delete it to rebuild") from err
    if targets is None:  # written without them: label the training faces again
        found = FaceAnalyzer().analyze(train_faces, embed=False)
        targets = torch.from_numpy(normalise_landmarks(found.landmarks))
    return regressor, targets


def pose_codes_for_run(
    out: Path, cfg: Wav2PixConfig, faces: np.ndarray, labels: np.ndarray, train_faces: np.ndarray, main: bool, barrier
) -> tuple[PoseCodes, np.ndarray]:
    """The pose code's fit and the codes float32 [F, K] of all F face crops (zero rows where unknown).

    Read from ``out/pose_codes.safetensors``, else built (rank 0; the others wait at ``barrier()`` and read it):
    dlib's face detector and 68-point landmark model run on the training faces only (``train_faces``: int indices
    into ``faces`` uint8 [F, S, S, 3]; ``labels`` int [F] identities), :class:`PoseCodes` is fitted to them and
    the file keeps the fit, the codes and the faces' identity labels, so a resumed run uses the same ones.
    Validation faces and training faces without landmarks get the zero code (the mean pose of their identity),
    which adds nothing to the discriminator's score.

    Raises:
        UserError: too few training faces with landmarks, or the file exists but cannot be read or was written
            for other faces or another code width.
    """
    from training.face_metrics import FaceAnalyzer

    path = out / POSE_CODES_FILE
    k = cfg.model.pose_code_dim
    if main and not path.is_file():
        t0 = time.perf_counter()
        found = FaceAnalyzer().analyze(faces[train_faces], embed=False)
        try:
            fit = PoseCodes.fit(found.landmarks, labels[train_faces], int(labels.max()) + 1, k)
        except ValueError as err:
            raise UserError(f"model.pose_code_dim > 0: cannot fit the pose code: {err}") from err
        codes = np.zeros((len(faces), k), np.float32)
        codes[train_faces] = np.nan_to_num(fit.encode(found.landmarks, labels[train_faces]), nan=0.0)
        n_found = int(found.detected.sum())
        meta = {"n_faces": str(len(faces)), "n_train_faces_with_landmarks": str(n_found)}
        tensors = {**fit.state_dict(), "labels": torch.from_numpy(labels.astype(np.int64))}
        save_file({**tensors, "codes": torch.from_numpy(codes)}, str(path), metadata=meta)
        log.info("pose code: %d components from %d of %d training faces with landmarks, %.0f s",
                 k, n_found, len(train_faces), time.perf_counter() - t0)  # fmt: skip
    barrier()
    codes, fit = read_pose_codes(path)
    if codes.shape != (len(faces), k) or fit.basis.shape[0] != k:
        raise UserError(f"{path}: codes {tuple(codes.shape)} for {len(faces)} faces and pose_code_dim {k}")
    return fit, codes


def read_pose_codes(path: Path) -> tuple[np.ndarray, PoseCodes]:
    """(codes float32 [F, K], fit) of a run's ``pose_codes.safetensors``.

    Raises:
        UserError: missing or unreadable (names the file).
    """
    try:
        tensors = load_file(str(path))
        return tensors["codes"].numpy(), PoseCodes.from_state_dict(tensors)
    except (OSError, KeyError, RuntimeError, SafetensorError) as err:
        raise UserError(f"{path}: cannot read the pose codes ({err}); delete it to rebuild") from err


class Wav2PixTrainer:
    """The wav2pix :class:`~training.families.contract.Trainer`: batches, run-time state, sample grids.

    Speech features of fixed-length windows are computed once (the front end has no parameters, so this is
    exact); longer clips get a random window per step. Every ``loss.landmark_teacher_every`` steps the landmark
    CNN's teacher takes a step on generated faces.
    """

    SAMPLE_VOICES, SAMPLE_SEEDS = 8, 4

    def __init__(self, ctx: TrainContext) -> None:
        cfg: Wav2PixConfig = ctx.cfg
        ds: PairDataset = ctx.data
        self.ctx, self.cfg, self.ds = ctx, cfg, ds
        dev, tc = ctx.device, cfg.train
        net = ctx.G
        self.window = cfg.audio.window_samples
        self.rng = np.random.default_rng([tc.seed, ctx.rank, ctx.step])
        self.feats_all = None
        if all(len(a) == self.window for a in ds.audio):
            with torch.no_grad():
                chunks = [
                    net.encoder.features_of(torch.from_numpy(ds.windows(range(i, min(i + 256, len(ds))), self.window)).to(dev))
                    for i in range(0, len(ds), 256)
                ]  # fmt: skip
            self.feats_all = torch.cat(chunks)
        self.images_all = torch.from_numpy(ds.faces).to(dev).permute(0, 3, 1, 2).float().div_(127.5).sub_(1.0)
        self.labels_all = torch.from_numpy(ds.labels).to(dev)
        self.face_index = torch.from_numpy(ds.face_index).to(dev)
        train_idx, val_idx = ctx.split.train, ctx.split.val
        self.batches = Batches(train_idx, tc.batch_size, tc.seed + ctx.step, ctx.rank, ctx.world)
        self.gen = torch.Generator().manual_seed(tc.seed * 1000 + ctx.rank + ctx.step)
        self.val_voices = fixed_val_voices(ds, val_idx if len(val_idx) else train_idx, self.SAMPLE_VOICES)
        self.val_audio = torch.from_numpy(ds.windows(self.val_voices, self.window)).to(dev)
        self.val_noise = torch.randn(
            self.SAMPLE_SEEDS, cfg.model.noise_dim, generator=torch.Generator().manual_seed(1234)
        ).to(dev)
        train_faces = np.unique(ds.face_index[train_idx])
        regressor = pose_fit = targets = None
        self.pose_all = None
        self.teacher: LandmarkTeacher | None = None
        if cfg.model.pose_code_dim:
            pose_fit, codes = pose_codes_for_run(
                ctx.run_dir, cfg, ds.faces, ds.face_labels, train_faces, ctx.main, ctx.barrier
            )
            self.pose_all = torch.from_numpy(codes).to(dev)
            if cfg.loss.pose_code_weight > 0:
                regressor, targets = landmarks_for_run(ctx.run_dir, cfg, ds.faces[train_faces], ctx.main, ctx.barrier)
                regressor.to(dev)
                if cfg.loss.landmark_teacher_every:
                    real = self.images_all[torch.from_numpy(train_faces).to(dev)]
                    try:
                        self.teacher = LandmarkTeacher(regressor, targets, real, seed=tc.seed + ctx.rank, world=ctx.world)
                    except ValueError as err:
                        raise UserError(f"loss.landmark_teacher_every > 0: {err} ({ctx.run_dir / LANDMARK_FILE})") from err
        self.targets = targets
        self.gan_step = GanStep(ctx, regressor, pose_fit)
        self.teacher_stats: dict[str, float] = {}

    def _features(self, idx: np.ndarray) -> torch.Tensor:
        dev = self.ctx.device
        if self.feats_all is not None:
            return self.feats_all[torch.from_numpy(idx).to(dev)]
        return self.ctx.G.encoder.features_of(torch.from_numpy(self.ds.windows(idx, self.window, self.rng)).to(dev))

    def step(self, step: int, update_g: bool) -> dict[str, float]:
        """One :class:`GanStep` on the next batch (and a teacher step when due)."""
        cfg, dev = self.cfg, self.ctx.device
        idx = self.batches.next()
        idx_t = torch.from_numpy(idx).to(dev)
        x_real = self.images_all[self.face_index[idx_t]]
        y = self.labels_all[idx_t]
        f = self._features(idx)
        wrong = wrong_indices(y.cpu(), self.gen).to(dev)
        pose = bad_pose = None
        if self.pose_all is not None:
            pose = self.pose_all[self.face_index[idx_t]]
            bad_pose = wrong_pose(pose, y.cpu(), self.gen) if cfg.loss.pose_matching_weight > 0 else None
        stats = self.gan_step(x_real, y, f, wrong, pose, bad_pose, update_g=update_g)
        if self.teacher is not None and step % cfg.loss.landmark_teacher_every == 0:
            net = self.ctx.G
            with torch.no_grad():
                n_t = min(cfg.loss.landmark_teacher_faces, len(idx))
                noise = torch.randn(n_t, cfg.model.noise_dim, device=dev)
                fakes = net.generator(net.encoder.encode_features(f[:n_t]), noise)
            self.teacher_stats = self.teacher.step(fakes)
        stats.update(self.teacher_stats)
        return stats

    def sample_grid(self) -> np.ndarray:
        """One row per fixed validation voice: its real face, then ``G_ema``'s faces for 4 fixed noise vectors."""
        ema, n = self.ctx.G_ema, len(self.val_voices)
        with torch.no_grad():
            fake = torch.stack([ema(self.val_audio, self.val_noise[k].expand(n, -1)) for k in range(self.SAMPLE_SEEDS)], 1)
        fakes = to_uint8(fake.flatten(0, 1)).reshape(n, self.SAMPLE_SEEDS, *fake.shape[-2:], 3)
        real = self.ds.images(self.val_voices)
        return np.concatenate([np.concatenate([real[i], *fakes[i]], axis=1) for i in range(n)], axis=0)

    def on_checkpoint(self) -> None:
        """Save the taught landmark CNN with each checkpoint, so a resumed run goes on with it."""
        if self.teacher is not None and self.ctx.main:
            save_landmarks(self.ctx.run_dir / LANDMARK_FILE, self.teacher.regressor, self.targets)
