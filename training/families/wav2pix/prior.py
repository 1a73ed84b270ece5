"""The neighbours pose prior: a training face's pose code, picked by how alike the voices sound, inside the graph.

:class:`NeighbourPosePrior` is the shipped default model's pose prior; :func:`neighbour_prior_for_run` builds its
bank from a run, and :mod:`training.families.wav2pix.bank_calibration` calibrates it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from engine.errors import UserError
from training.data import PairDataset, load_dataset, split_by_face
from training.families.wav2pix.config import Wav2PixConfig

log = logging.getLogger(__name__)

POSE_CODES_FILE = "pose_codes.safetensors"
"""The run folder's pose codes of every face (``codes`` [F, K]), their fit and the faces' identity labels."""

CANDIDATES = 128  # NeighbourPosePrior: rows the cheap expanded distance keeps for the exact one (at least 8 k)


class NeighbourPosePrior(nn.Module):
    """Speech → pose code by retrieval: the code of a training face whose speech sounded like this voice.

    Why: on the Wav2Pix data the voice says something about the pose. The speech embedding predicts the yaw
    component with held-out R^2 0.17-0.27 (the speakers turn towards and away from the microphone, and the
    room sound changes with it), so drawing the code independently of the voice throws that away. This prior is a
    k-nearest-neighbour conditional density (Fix & Hodges 1951; as a sampler,
    the retrieval step of instance-conditioned generation, Casanova et al., "Instance-Conditioned GAN", NeurIPS
    2021): a bank holds the speech embeddings of the N training pairs and the codes of their faces; for a voice
    with embedding ``e`` the graph finds the k bank embeddings nearest to ``e`` (squared Euclidean distance)
    and takes the code of the j-th of them, ``j = floor(k * Phi(noise[:, 0]))`` (``Phi``: the standard-normal
    CDF), so standard-normal noise picks uniformly among the neighbours and a fixed seed gives a fixed pose.
    The codes drawn are real faces' codes and never leave their range whatever the voice.

    With a ``projection`` [E, D] and ``center`` [E] (:meth:`from_embeddings` keeps the principal components
    that hold all but 1e-5 of the bank's variance: 45 of 128 for the default model, whose speech embeddings
    are nearly low-rank, 8 components holding 99.8 %) the distances are taken in those D coordinates,
    ``(e - center) @ projection``, which keeps the neighbours and makes the bank smaller and the search
    cheaper. Without one the bank is centred on its mean and the projection is the identity.

    FP16 (TensorRT builds with FP16 where the GPU has it): the constructor divides the bank and the projection
    by the bank rows' RMS norm, so squared distances are O(1) (the default model's raw embeddings have norms
    near 570, squares near 3e5, beyond FP16's 65504: every distance overflowed to inf). The search has two stages:
    the expanded form ``|b|^2 - 2 e.b`` (one MatMul) keeps the M = max(128, 8k) nearest candidates, and their
    squared distances are then summed from the differences ``e - b``, because the expansion's cancellation in
    FP16 reorders near neighbours (FP16 emulated on CPU, default model, 555 validation voices: 99.6 % of the 16
    nearest kept, as by the exact distances to the whole bank; 98.9 % with M = 64; the expansion alone kept 77 %
    on a synthetic bank). In FP32 both stages find the neighbours the plain search finds; the exact one costs
    B x M x D products instead of B x N x D (side by side on ONNX Runtime CPU, the whole-bank exact search cost
    8 % more per call at batch 1 than the expansion alone; the two stages cost nothing measurable).

    Noise inputs 0..K-1 are replaced by the code (input 0 chose it); inputs K.. pass unchanged. Built from
    MatMul, Sub, ReduceSum, TopK, Erf, Floor, Gather and GatherElements, it exports to ONNX (opset 18) and
    TensorRT.

    forward(noise float32 [B, Z], embedding float32 [B, E]) → float32 [B, Z].

    Buffers: ``bank_embeddings`` float32 [N, D]; ``bank_codes`` float32 [N, K]; ``neighbours`` int64 [] (k);
    ``bank_projection`` float32 [E, D] (D = E, a scaled identity, without a projection), ``bank_center`` [E].

    Raises:
        ValueError: (constructor) mismatched or non-finite bank tensors, a projection of the wrong shape, or k
            outside 1..N; (forward) a missing embedding or one of another width.
    """

    kind = "neighbours"

    def __init__(
        self,
        bank_embeddings: torch.Tensor,
        bank_codes: torch.Tensor,
        neighbours: int = 16,
        projection: torch.Tensor | None = None,
        center: torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        emb = torch.as_tensor(bank_embeddings, dtype=torch.float32).contiguous()
        codes = torch.as_tensor(bank_codes, dtype=torch.float32).contiguous()
        if emb.ndim != 2 or codes.ndim != 2 or len(emb) != len(codes) or len(emb) == 0:
            raise ValueError(
                f"bank: expected embeddings [N, E] and codes [N, K], got {list(emb.shape)}, {list(codes.shape)}"
            )
        if not (torch.isfinite(emb).all() and torch.isfinite(codes).all()):
            raise ValueError("bank: expected finite embeddings and codes")
        k = int(neighbours)
        if not 1 <= k <= len(emb):
            raise ValueError(f"neighbours: expected 1..{len(emb)} (the bank's size), got {neighbours}")
        if projection is None:  # search the embeddings themselves, centred (distances do not change)
            center_ = emb.mean(dim=0) if center is None else torch.as_tensor(center, dtype=torch.float32)
            proj = torch.eye(emb.shape[1])
            emb = emb - center_
        else:
            proj = torch.as_tensor(projection, dtype=torch.float32).contiguous()
            center_ = torch.zeros(proj.shape[0]) if center is None else torch.as_tensor(center, dtype=torch.float32)
            if proj.ndim != 2 or proj.shape[1] != emb.shape[1] or center_.shape != (proj.shape[0],):
                raise ValueError(
                    f"projection: expected [E, {emb.shape[1]}] and center [E], got {list(proj.shape)}, "
                    f"{list(center_.shape)}"
                )
        # unit RMS norm of the bank's rows, folded into the projection: squared distances stay O(1), inside FP16's
        # range (speech embeddings of the default model have norms near 570, squares near 3e5 > 65504)
        scale = float(emb.square().sum(dim=1).mean().sqrt())
        if scale > 0 and abs(scale - 1.0) > 1e-3:
            emb, proj = emb / scale, proj / scale
        self.register_buffer("bank_embeddings", emb.contiguous())
        self.register_buffer("bank_codes", codes)
        self.register_buffer("neighbours", torch.tensor(k, dtype=torch.int64))
        self.register_buffer("bank_projection", proj.contiguous())
        self.register_buffer("bank_center", center_.contiguous())
        self.register_buffer("bank_sq", emb.square().sum(dim=1), persistent=False)  # ||b||^2 [N]
        self.k = k
        self.candidates = min(len(emb), max(8 * k, CANDIDATES))
        self.fit_report: dict | None = None  # the bank's figures for the manifest (pairs, faces, calibration)

    @classmethod
    def from_embeddings(
        cls, embeddings: torch.Tensor, codes: torch.Tensor, neighbours: int = 16, keep_variance: float = 1 - 1e-5
    ) -> NeighbourPosePrior:
        """A bank of speech embeddings float [N, E] and codes float [N, K], searched in the leading principal
        components of the embeddings that hold ``keep_variance`` of their variance (all E when that takes E).

        Raises:
            ValueError: as the constructor, or ``keep_variance`` outside (0, 1].
        """
        if not 0 < keep_variance <= 1:
            raise ValueError(f"keep_variance: expected in (0, 1], got {keep_variance}")
        emb = torch.as_tensor(embeddings, dtype=torch.float64)
        center = emb.mean(dim=0)
        _, sv, vt = torch.linalg.svd(emb - center, full_matrices=False)
        share = (sv**2).cumsum(0) / (sv**2).sum().clamp_min(1e-30)
        d = min(int((share < keep_variance).sum()) + 1, emb.shape[1])
        if d >= emb.shape[1]:
            return cls(embeddings, codes, neighbours)
        proj = vt[:d].T  # [E, D]
        return cls(((emb - center) @ proj).float(), codes, neighbours, proj.float(), center.float())

    @classmethod
    def from_state_dict(cls, state: dict[str, torch.Tensor]) -> NeighbourPosePrior:
        """Rebuild from :meth:`state_dict`. Raises ValueError on missing or invalid tensors."""
        missing = {"bank_embeddings", "bank_codes", "neighbours"} - set(state)
        if missing:
            raise ValueError(f"neighbour pose prior: missing tensors {sorted(missing)}")
        return cls(
            state["bank_embeddings"],
            state["bank_codes"],
            int(state["neighbours"]),
            state.get("bank_projection"),
            state.get("bank_center"),
        )

    @property
    def code_dim(self) -> int:
        """K, the number of noise inputs replaced."""
        return int(self.bank_codes.shape[1])

    @property
    def embedding_dim(self) -> int:
        """E, the speech embedding width the prior reads."""
        return int(self.bank_projection.shape[0])

    @property
    def projected(self) -> bool:
        """Whether the search runs in a subspace (D < E) of the speech embedding."""
        return int(self.bank_projection.shape[1]) < int(self.bank_projection.shape[0])

    def forward(self, noise: torch.Tensor, embedding: torch.Tensor) -> torch.Tensor:
        if embedding.shape != (noise.shape[0], self.embedding_dim):
            raise ValueError(
                f"pose prior: expected speech embeddings [{noise.shape[0]}, {self.embedding_dim}], "
                f"got {list(embedding.shape)}"
            )
        e = (embedding.to(self.bank_embeddings.dtype) - self.bank_center) @ self.bank_projection  # [B, D]
        # coarse: ||b||^2 - 2 e.b ranks like the squared distance (||e||^2 is constant per row), one MatMul
        coarse = self.bank_sq - 2.0 * (e @ self.bank_embeddings.T)  # [B, N]
        _, cand = torch.topk(coarse, self.candidates, dim=1, largest=False, sorted=False)  # [B, M]
        # exact: squared distances from the differences, which FP16 keeps (the expansion's cancellation does not)
        fine = (e[:, None, :] - self.bank_embeddings[cand]).square().sum(dim=2)  # [B, M]
        _, order = torch.topk(fine, self.k, dim=1, largest=False, sorted=True)  # [B, k]
        nearest = torch.gather(cand, 1, order)  # [B, k] bank rows, nearest first
        u = 0.5 * (1.0 + torch.erf(noise[:, :1] * 0.7071067811865476))  # Phi(z0) in [0, 1]
        j = torch.clamp(torch.floor(u * self.k), max=self.k - 1).long()  # [B, 1]
        pick = torch.gather(nearest, 1, j).squeeze(1)  # [B]
        code = self.bank_codes[pick]  # [B, K]
        return torch.cat([code, noise[:, self.code_dim :]], dim=1)


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


def neighbour_prior_for_run(
    run_dir: Path, cfg: Wav2PixConfig, codes: np.ndarray, net: torch.nn.Module, data: Sequence[str]
) -> NeighbourPosePrior:
    """The neighbours prior of a run folder: a bank of ``net``'s speech embeddings of the training pairs (one
    deterministic window per pair) and their faces' pose codes float [F, K] (``codes``: every face of ``data``,
    zero rows for validation faces and training faces without landmarks, which stay out of the bank).

    Raises:
        UserError: no data, data that no longer matches the codes, or no training pair with a pose code.
    """
    if not data:
        raise UserError(f"{run_dir}: the neighbours pose prior needs the run's training data (split.json's 'data')")
    known = np.any(codes != 0, axis=1)
    t0 = time.perf_counter()
    ds = load_dataset([str(d) for d in data], cfg.audio.sample_rate, cfg.model.image_size)
    if len(ds.faces) != len(codes):
        raise UserError(f"{run_dir / POSE_CODES_FILE}: {len(codes)} codes, but {list(data)} now has {len(ds.faces)} faces")
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
