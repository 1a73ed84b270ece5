"""Calibrating the neighbours pose prior's bank on the training data: a code gain and a fidelity cut per identity.

The neighbours prior (:class:`training.families.wav2pix.prior.NeighbourPosePrior`) hands the generator the pose code
of a training face whose speech sounded like the voice. Two things go wrong with those codes on the default model,
and both differ between speakers (measured on the Wav2Pix data, 2026-11-22):

- the generator *under-renders* a code: regressing the code dlib measures on its faces on the code it was given
  gives slopes of 0.44 (yaw) to 0.77 for the first speaker and 0.70 to 0.81 for the second, so its faces turn
  less than the real ones (yaw spread 0.68 of the real faces');
- it cannot draw every code: the distance between a bank row's rendering (its own speech and code) and its real
  face grows with the code's size (correlation 0.4-0.5 with |yaw|), and for the second speaker, whose real head
  turns are the widest, the worst renderings are doubled or smeared faces.

So, per identity, this module picks a gain ``g`` for the bank's codes (``g > 1`` undoes the attenuation) and a
kept share ``q`` of the bank's rows (the ``q`` whose renderings are closest to their own real faces), choosing
the pair ``(g, q)`` whose renderings have the lowest Fréchet distance (:func:`training.face_metrics.frechet_distance`,
dlib face embeddings, as ``evaluate`` measures) to the identity's real training faces. The choice reads the
*training* split only (the bank is made of training pairs), so ``evaluate``'s validation figures stay validation
figures. It is a truncation trick (Brock et al., "Large Scale GAN Training for High Fidelity Natural Image
Synthesis", ICLR 2019: trade variety for fidelity where the generator is weak, the trade chosen by a Fréchet
distance) applied per instance of an instance-conditioned bank (Casanova et al., "Instance-Conditioned GAN",
NeurIPS 2021), with the gain as its counterpart where the generator is too timid.

Cost: one rendering and one dlib analysis per bank row and gain (about 0.13 s per image on a 2-core CPU, dlib
dominating: the default model's 4970 rows at two gains take about 20 min).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from training import face_metrics as fm
from training.families.wav2pix.prior import NeighbourPosePrior, speech_embeddings

log = logging.getLogger(__name__)

EmbedFn = Callable[[np.ndarray], np.ndarray]
"""uint8 images [N, H, W, 3] → float32 face embeddings [N, E] (dlib's 128-d descriptors by default)."""

DEFAULT_GAINS = (1.0, 1.3)
DEFAULT_SHARES = (1.0, 0.9, 0.8, 0.7, 0.6, 0.5)
CHUNK = 256  # bank rows rendered and embedded at a time


@dataclass
class BankCalibration:
    """What :func:`calibrate_bank` chose and why.

    Attributes:
        gain: per identity name, the factor applied to its rows' codes.
        kept_share: per identity name, the share of its rows kept (those rendered closest to their real faces).
        frechet: per identity name, the Fréchet distance of the chosen renderings to its real training faces,
            and ``frechet_uncalibrated`` the same for gain 1 with every row (the bank as it was).
        table: every candidate: ``{"identity", "gain", "share", "rows", "frechet_distance"}``.
        rows_total, rows_kept: bank rows before and after.
        seconds: wall time of the calibration.
    """

    gain: dict[str, float]
    kept_share: dict[str, float]
    frechet: dict[str, float]
    frechet_uncalibrated: dict[str, float]
    rows_total: int
    rows_kept: int
    seconds: float
    table: list[dict[str, Any]] = field(default_factory=list)

    def report(self) -> dict[str, Any]:
        """A JSON-ready summary for the bundle manifest (``pose_prior_fit.calibration``)."""
        return {
            "method": "per identity: code gain and kept share of the bank rows rendered closest to their real faces, "
            "chosen by Fréchet distance of the renderings to the identity's real training faces (dlib embeddings)",
            "gain": self.gain,
            "kept_share": self.kept_share,
            "frechet_distance_train": self.frechet,
            "frechet_distance_train_uncalibrated": self.frechet_uncalibrated,
            "rows_total": self.rows_total,
            "rows_kept": self.rows_kept,
            "seconds": round(self.seconds, 1),
            "candidates": self.table,
        }


def render_bank_rows(
    net: torch.nn.Module,
    codes: torch.Tensor,
    audio: np.ndarray,
    noise_dim: int,
    seed: int = 0,
    batch: int = 64,
) -> np.ndarray:
    """The generator's faces for bank rows: each row's own speech window with its code in the first K noise
    inputs and standard-normal noise (``seed``) in the rest.

    Args:
        net: a :class:`training.families.wav2pix.networks.Wav2PixGenerator` (``net(audio, noise)`` → [B, 3, H, W] in [-1, 1]).
        codes: float32 [N, K] codes (already scaled).
        audio: float32 [N, S] speech windows, raw samples in [-1, 1] at the model's sample rate.
        noise_dim: Z, the generator's noise inputs (``model.noise_dim``).

    Returns:
        uint8 [N, H, W, 3] RGB images.

    Raises:
        ValueError: ``codes`` and ``audio`` of different lengths, or more code entries than noise inputs.
    """
    from training.layers import to_uint8

    codes = torch.as_tensor(codes, dtype=torch.float32)
    if len(codes) != len(audio):
        raise ValueError(f"bank rendering: {len(codes)} codes for {len(audio)} speech windows")
    if codes.ndim != 2 or codes.shape[1] > noise_dim:
        raise ValueError(f"bank rendering: expected codes [N, K <= {noise_dim}], got {list(codes.shape)}")
    gen = torch.Generator().manual_seed(int(seed))
    out = []
    with torch.inference_mode():
        for i in range(0, len(codes), batch):
            c = codes[i : i + batch]
            noise = torch.randn(len(c), noise_dim, generator=gen)
            noise[:, : c.shape[1]] = c
            a = torch.from_numpy(np.ascontiguousarray(audio[i : i + batch], np.float32))
            out.append(to_uint8(net(a, noise)))
    if not out:
        return np.zeros((0, 1, 1, 3), np.uint8)
    return np.concatenate(out)


def choose_calibration(
    rendered: dict[float, np.ndarray],
    own_face: np.ndarray,
    row_labels: np.ndarray,
    real_embeddings: np.ndarray,
    real_labels: np.ndarray,
    identities: Sequence[str],
    shares: Sequence[float] = DEFAULT_SHARES,
    min_rows: int = 16,
) -> tuple[np.ndarray, np.ndarray, BankCalibration]:
    """Pick a gain and a kept share per identity from the embeddings of the bank's renderings.

    Args:
        rendered: gain → float32 [N, E] embeddings of the N rows rendered at that gain (must include 1.0).
        own_face: float32 [N, E] embeddings of each row's own real face.
        row_labels: int [N] identity of each row.
        real_embeddings, real_labels: float32 [F, E], int [F]: the real training faces (distinct) and identities.
        identities: names, index = label.
        shares: candidate kept shares in (0, 1].
        min_rows: fewest rows an identity keeps (a share that would keep fewer is skipped).

    Returns:
        ``(keep, row_gain, calibration)``: bool [N] rows kept, float32 [N] gain of each row, the
        :class:`BankCalibration` (``seconds`` 0; the caller sets it).

    Raises:
        ValueError: no gain 1.0 among ``rendered``, mismatched shapes, or a share outside (0, 1].
    """
    if 1.0 not in rendered:
        raise ValueError(f"bank calibration: expected gain 1.0 among the renderings, got {sorted(rendered)}")
    if any(not 0 < s <= 1 for s in shares):
        raise ValueError(f"bank calibration: kept shares must lie in (0, 1], got {list(shares)}")
    row_labels = np.asarray(row_labels)
    n = len(row_labels)
    for g, e in rendered.items():
        if len(e) != n or len(own_face) != n:
            raise ValueError(f"bank calibration: {len(e)} renderings at gain {g}, {len(own_face)} faces, {n} labels")
    keep = np.zeros(n, bool)
    row_gain = np.ones(n, np.float32)
    gains: dict[str, float] = {}
    kept: dict[str, float] = {}
    best_fd: dict[str, float] = {}
    base_fd: dict[str, float] = {}
    table: list[dict[str, Any]] = []
    for i, name in enumerate(identities):
        rows = np.flatnonzero(row_labels == i)
        real = real_embeddings[np.asarray(real_labels) == i]
        if len(rows) == 0:
            continue
        if len(real) < 2 or len(rows) < 2:  # nothing to compare with: keep the rows as they are
            keep[rows] = True
            gains[name], kept[name] = 1.0, 1.0
            continue
        best: tuple[float, float, float, np.ndarray] | None = None
        for g in sorted(rendered):
            emb = rendered[g][rows]
            dist = np.linalg.norm(emb - own_face[rows], axis=1)
            for s in sorted(set(shares), reverse=True):
                chosen = rows[dist <= np.quantile(dist, s)] if s < 1 else rows
                if len(chosen) < max(2, min(min_rows, len(rows))):
                    continue
                fd = fm.frechet_distance(rendered[g][chosen], real)
                table.append(
                    {"identity": name, "gain": g, "share": s, "rows": int(len(chosen)), "frechet_distance": fd}
                )
                if g == 1.0 and s == 1.0:
                    base_fd[name] = fd
                if math.isfinite(fd) and (best is None or fd < best[0]):
                    best = (fd, g, s, chosen)
        if best is None:
            keep[rows] = True
            gains[name], kept[name] = 1.0, 1.0
            continue
        fd, g, s, chosen = best
        keep[chosen] = True
        row_gain[rows] = g
        gains[name], kept[name], best_fd[name] = float(g), float(s), float(fd)
    cal = BankCalibration(
        gain=gains,
        kept_share=kept,
        frechet=best_fd,
        frechet_uncalibrated=base_fd,
        rows_total=n,
        rows_kept=int(keep.sum()),
        seconds=0.0,
        table=table,
    )
    return keep, row_gain, cal


def calibrated_prior(prior: NeighbourPosePrior, keep: np.ndarray, row_gain: np.ndarray) -> NeighbourPosePrior:
    """``prior`` with only the rows ``keep`` (bool [N]) and their codes multiplied by ``row_gain`` (float [N]);
    same k (capped at the rows kept), search space and centre.

    Raises:
        ValueError: masks of the wrong length or no row kept.
    """
    keep = np.asarray(keep, bool)
    n = int(prior.bank_codes.shape[0])
    if len(keep) != n or len(row_gain) != n:
        raise ValueError(f"bank calibration: masks for {len(keep)} / {len(row_gain)} rows, the bank has {n}")
    if not keep.any():
        raise ValueError("bank calibration: no bank row kept")
    idx = torch.from_numpy(np.flatnonzero(keep))
    codes = prior.bank_codes[idx] * torch.from_numpy(np.asarray(row_gain, np.float32))[idx, None]
    out = NeighbourPosePrior(
        prior.bank_embeddings[idx],
        codes,
        min(prior.k, len(idx)),
        prior.bank_projection,
        prior.bank_center,
    )
    out.fit_report = dict(getattr(prior, "fit_report", None) or {})
    return out


def calibrate_bank(
    net: torch.nn.Module,
    prior: NeighbourPosePrior,
    audio: np.ndarray,
    row_labels: np.ndarray,
    own_face: np.ndarray,
    real_embeddings: np.ndarray,
    real_labels: np.ndarray,
    identities: Sequence[str],
    embed: EmbedFn,
    noise_dim: int,
    gains: Sequence[float] = DEFAULT_GAINS,
    shares: Sequence[float] = DEFAULT_SHARES,
    seed: int = 0,
) -> tuple[NeighbourPosePrior, BankCalibration]:
    """Render every bank row at each gain, embed the faces, choose per identity (:func:`choose_calibration`) and
    return the calibrated prior (:func:`calibrated_prior`) with ``prior.fit_report["calibration"]`` set.

    Args:
        net: the generator whose bank it is (see :func:`render_bank_rows`).
        prior: the neighbours prior; row r of its bank is the training pair with speech ``audio[r]``.
        audio: float32 [N, S] each row's speech window; row_labels: int [N] its identity.
        own_face: float32 [N, E] embedding of each row's real face.
        real_embeddings, real_labels: the real training faces [F, E] and identities [F].
        identities: names, index = label.
        embed: images uint8 [N, H, W, 3] → embeddings float32 [N, E] (``FaceAnalyzer().analyze(x).embeddings``).
        noise_dim: Z, the generator's noise inputs.
        gains: candidate code gains (1.0 is always tried); shares: candidate kept shares.
        seed: noise seed of the renderings' other inputs (rows ``j..j+255`` use ``seed * 1000003 + j``).

    Raises:
        ValueError: as :func:`choose_calibration` and :func:`calibrated_prior`, or a bank of another size.
    """
    t0 = time.perf_counter()
    n = int(prior.bank_codes.shape[0])
    if not (len(audio) == len(row_labels) == len(own_face) == n):
        raise ValueError(
            f"bank calibration: the bank has {n} rows; got {len(audio)} speech windows, {len(row_labels)} labels, "
            f"{len(own_face)} face embeddings"
        )
    rendered: dict[float, np.ndarray] = {}
    for g in sorted({1.0, *map(float, gains)}):
        if not g > 0:
            raise ValueError(f"bank calibration: gains must be > 0, got {g}")
        t = time.perf_counter()
        parts = []
        with tqdm(total=n, desc=f"bank calibration, gain {g:.2f}", unit="row", dynamic_ncols=True) as bar:
            for j in range(0, n, CHUNK):  # rendered and embedded in chunks: memory stays flat, the bar moves
                images = render_bank_rows(net, prior.bank_codes[j : j + CHUNK] * g, audio[j : j + CHUNK], noise_dim,
                                          seed * 1_000_003 + j)  # fmt: skip
                parts.append(np.asarray(embed(images), np.float32))
                bar.update(len(images))
        rendered[g] = np.concatenate(parts)
        log.info("bank calibration: %d rows rendered and embedded at gain %.2f, %.0f s", n, g, time.perf_counter() - t)
    keep, row_gain, cal = choose_calibration(
        rendered, np.asarray(own_face, np.float32), row_labels, real_embeddings, real_labels, identities, shares
    )
    cal.seconds = time.perf_counter() - t0
    out = calibrated_prior(prior, keep, row_gain)
    out.fit_report = {**out.fit_report, "pairs": int(keep.sum()), "calibration": cal.report()}
    for name in cal.gain:
        log.info(
            "bank calibration: %s: gain %.2f, kept share %.2f, train FD %.4f (uncalibrated %.4f)",
            name,
            cal.gain[name],
            cal.kept_share[name],
            cal.frechet.get(name, float("nan")),
            cal.frechet_uncalibrated.get(name, float("nan")),
        )
    return out, cal


def match_bank_rows(
    prior: NeighbourPosePrior, embeddings: torch.Tensor, tolerance: float = 1e-2
) -> tuple[np.ndarray, float]:
    """Which of M candidate speech embeddings float [M, E] (a model's encoder on the training pairs) each bank
    row holds: int [N] candidate indices and the largest distance found (in the bank's unit-RMS coordinates).

    A bundle keeps its bank's embeddings but not the pairs they came from, so the pairs are found again by
    nearest neighbour; the bank built from those pairs matches to about 1e-3.

    Raises:
        ValueError: a bank row with no candidate within ``tolerance`` (other data, or another generator).
    """
    e = torch.as_tensor(embeddings, dtype=torch.float32)
    proj = (e - prior.bank_center) @ prior.bank_projection
    best = torch.empty(len(prior.bank_embeddings), dtype=torch.int64)
    dist = torch.empty(len(prior.bank_embeddings))
    for i in range(0, len(prior.bank_embeddings), 1024):
        d = torch.cdist(prior.bank_embeddings[i : i + 1024], proj)
        dist[i : i + 1024], best[i : i + 1024] = d.min(dim=1)
    worst = float(dist.max()) if len(dist) else 0.0
    if worst > tolerance:
        raise ValueError(
            f"bank calibration: {int((dist > tolerance).sum())} of {len(dist)} bank rows match no training pair "
            f"(distance up to {worst:.3g}, expected <= {tolerance}): is this the data the bank was built from?"
        )
    return best.numpy(), worst


def calibrate_on_data(
    net: torch.nn.Module,
    cfg: Any,
    prior: NeighbourPosePrior,
    identities: Sequence[str],
    data_dirs: Sequence[str],
    val_face_hashes: set[str] | None = None,
    gains: Sequence[float] = DEFAULT_GAINS,
    shares: Sequence[float] = DEFAULT_SHARES,
    seed: int = 0,
) -> tuple[NeighbourPosePrior, BankCalibration]:
    """:func:`calibrate_bank` for a model and the training data its bank was built from.

    Reads ``data_dirs`` (as ``train`` does), splits them by face as the run did (``val_face_hashes``, a run's
    ``split.json``, else ``cfg.train.val_fraction`` / ``cfg.train.seed``, as ``evaluate`` does for a bundle),
    finds each bank row's training pair (:func:`match_bank_rows`) and scores with dlib
    (:class:`training.face_metrics.FaceAnalyzer`; real faces through ``evaluate``'s cache).

    Raises:
        engine.errors.UserError: no data, identities the model does not know, bank rows that match no training
            pair, or dlib's models missing.
    """
    from datastore.cache import default_cache_dir
    from engine.errors import UserError
    from training.data import load_dataset, split_by_face
    from training.face_eval import RealFaceCache

    if not data_dirs:
        raise UserError("bank calibration: needs the training data (--data DIR) the bank was built from")
    ds = load_dataset([str(d) for d in data_dirs], cfg.audio.sample_rate, cfg.model.image_size)
    unknown = sorted(set(ds.identities) - set(identities))
    if unknown:
        raise UserError(f"bank calibration: {list(data_dirs)} holds identities the model does not know: {unknown}")
    to_model = np.asarray([list(identities).index(n) for n in ds.identities], np.int64)
    train_idx, _ = split_by_face(ds, cfg.train.val_fraction, cfg.train.seed)
    if val_face_hashes is not None:
        train_idx = np.flatnonzero(~np.isin(np.asarray(ds.face_hashes)[ds.face_index], list(val_face_hashes)))
    if len(train_idx) == 0:
        raise UserError(f"bank calibration: no training pairs in {list(data_dirs)}")
    try:
        match, worst = match_bank_rows(prior, speech_embeddings(net, ds, train_idx, cfg.audio.window_samples))
    except ValueError as err:
        raise UserError(str(err)) from err
    rows = train_idx[match]
    log.info("bank calibration: %d bank rows matched to training pairs (largest distance %.2g)", len(rows), worst)
    analyzer = fm.FaceAnalyzer()
    cache = RealFaceCache(analyzer, default_cache_dir())
    train_faces = np.unique(ds.face_index[train_idx])
    real = cache.analyze(ds.faces[train_faces])
    face_row = {int(f): j for j, f in enumerate(train_faces)}
    own = real.embeddings[[face_row[int(f)] for f in ds.face_index[rows]]]
    was_training = net.training
    net.eval()
    try:
        out, cal = calibrate_bank(
            net,
            prior,
            ds.windows(rows, cfg.audio.window_samples),
            to_model[ds.labels[rows]],
            own,
            real.embeddings,
            to_model[ds.face_labels[train_faces]],
            identities,
            lambda images: analyzer.analyze(images).embeddings,
            cfg.model.noise_dim,
            gains,
            shares,
            seed,
        )
    finally:
        net.train(was_training)
    return out, cal
