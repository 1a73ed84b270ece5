"""Head pose and expression from landmarks: the pose code and the landmark CNN that reads it off images.

Why: the speech -> face generator learned to turn its noise into lighting rather than into head pose and mouth
opening (see docs/DEFAULT_MODEL.md). The pose code gives pose a handle:

1. the 68 dlib landmarks (iBUG 300-W order) of every real *training* face are normalised (origin at the eye
   midpoint, unit = inter-ocular distance, so the framing drops out and yaw, roll and expression remain);
2. :class:`PoseCodes`: their within-identity principal components, standardised per identity, are the code the
   generator reads as its first noise inputs;
3. :class:`LandmarkRegressor`: a small CNN learns the landmarks from the 64 or 128 px images (mirrored copies
   double the data, random shifts and colour changes make it ignore framing and lighting), so that the pose code
   of a *generated* face can be read and regressed to the code it was given; :class:`LandmarkTeacher` keeps it
   honest while the generator trains (dlib relabels generated faces).

Only training faces are read (never the validation split), and only while training: bundles do not contain it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from training.face_metrics import eye_frame

log = logging.getLogger(__name__)

# Index of each point's mirror image in the 68-point iBUG 300-W scheme (left <-> right).
MIRROR_68: tuple[int, ...] = (
    *range(16, -1, -1),  # jaw 0..16
    *range(26, 21, -1),  # brows 17..21 <- 26..22
    *range(21, 16, -1),  # brows 22..26 <- 21..17
    27, 28, 29, 30,  # nose bridge
    35, 34, 33, 32, 31,  # nostrils
    45, 44, 43, 42, 47, 46,  # eye 36..41 <- other eye
    39, 38, 37, 36, 41, 40,  # eye 42..47
    54, 53, 52, 51, 50, 49, 48,  # outer lips 48..54
    59, 58, 57, 56, 55,  # outer lips 55..59
    64, 63, 62, 61, 60,  # inner lips 60..64
    67, 66, 65,  # inner lips 65..67
)  # fmt: skip


def normalise_landmarks(landmarks: np.ndarray | torch.Tensor) -> np.ndarray:
    """Landmarks relative to the eye midpoint in units of the inter-ocular distance.

    Args:
        landmarks: float [N, 68, 2] (x, y) in pixels (iBUG 300-W order); NaN rows stay NaN.

    Returns:
        float32 [N, 136]: (x, y) of each point, translation- and scale-free (yaw, roll, expression remain).

    Raises:
        ValueError: not [N, 68, 2].
    """
    p, _, _, mid, iod = eye_frame(np.asarray(landmarks))
    return ((p - mid[:, None, :]) / iod[:, None, None]).reshape(len(p), 136).astype(np.float32)


def mirror_landmarks(landmarks: np.ndarray, width: int) -> np.ndarray:
    """Landmarks of the horizontally mirrored image: x -> width - 1 - x, points relabelled left <-> right.

    Args:
        landmarks: float [N, 68, 2] in pixels of an image ``width`` pixels wide.
    """
    p = np.asarray(landmarks, np.float64)[:, list(MIRROR_68)].copy()
    p[..., 0] = width - 1 - p[..., 0]
    return p


class LandmarkRegressor(nn.Module):
    """Small CNN: face image float32 [B, 3, S, S] in [-1, 1] (S = 64 or 128) -> normalised landmarks [B, 136].

    Four stride-2 convolutions (32, 64, 128, 256 channels, LeakyReLU 0.2), global average pooling and a linear
    layer; about 0.4 M parameters.
    """

    def __init__(self) -> None:
        super().__init__()
        chans = (3, 32, 64, 128, 256)
        layers: list[nn.Module] = []
        for c_in, c_out in zip(chans[:-1], chans[1:]):
            layers += [nn.Conv2d(c_in, c_out, 4, 2, 1), nn.LeakyReLU(0.2)]
        self.features = nn.Sequential(*layers, nn.Conv2d(256, 256, 3, 1, 1), nn.LeakyReLU(0.2))
        self.head = nn.Linear(256, 136)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != 64:
            x = F.interpolate(x, size=(64, 64), mode="area")
        return self.head(self.features(x).mean(dim=(2, 3)))


def _as_input(faces: np.ndarray) -> torch.Tensor:
    """uint8 [N, S, S, 3] RGB -> float32 [N, 3, S, S] in [-1, 1], the generator's image range."""
    return torch.from_numpy(np.ascontiguousarray(faces)).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def _batched(fn, x: torch.Tensor, size: int = 256) -> torch.Tensor:
    """``fn`` over ``x`` in chunks of ``size`` along dim 0, concatenated (bounded memory for large N)."""
    return torch.cat([fn(x[i : i + size]) for i in range(0, len(x), size)])


def _augment(x: torch.Tensor, gen: torch.Generator, shift: int = 4) -> torch.Tensor:
    """Random integer shifts (up to ``shift`` px, edge-padded) and brightness / contrast / saturation changes."""
    b = x.shape[0]
    x = F.pad(x, (shift,) * 4, mode="replicate")
    dx, dy = torch.randint(0, 2 * shift + 1, (2, b), generator=gen).tolist()
    size = x.shape[-1] - 2 * shift
    x = torch.stack([x[i, :, dy[i] : dy[i] + size, dx[i] : dx[i] + size] for i in range(b)])
    u = torch.rand(b, 3, 1, 1, 1, generator=gen)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = (x - mean) * (0.6 + 0.8 * u[:, 0]) + mean + (u[:, 1] - 0.5) * 0.6
    grey = x.mean(dim=1, keepdim=True)
    x = (x - grey) * (2 * u[:, 2]) + grey
    return x.clamp(-1.5, 1.5)


def fit_landmark_regressor(
    faces: np.ndarray, landmarks: np.ndarray, steps: int = 3000, batch_size: int = 64, seed: int = 0
) -> tuple[LandmarkRegressor, dict[str, float]]:
    """Fit a :class:`LandmarkRegressor` to faces and their detected landmarks (mirrored copies added).

    Args:
        faces: uint8 [N, S, S, 3] RGB. landmarks: float [N, 68, 2] pixels; rows with NaN (no face) are dropped.
        steps: Adam steps (lr 1e-3, cosine-decayed); about a minute per 1000 steps on 2 CPU cores.

    Returns:
        (regressor in eval mode on the CPU, {"n_faces", "train_rmse"}), the RMSE in inter-ocular units
        over the last 10 % of steps.

    Raises:
        ValueError: fewer than 16 faces with landmarks, or mismatched shapes.
    """
    faces = np.asarray(faces)
    if faces.ndim != 4 or faces.shape[-1] != 3 or len(faces) != len(landmarks):
        raise ValueError(f"faces {faces.shape} and landmarks {np.shape(landmarks)}: expected [N,S,S,3] and [N,68,2]")
    ok = np.isfinite(np.asarray(landmarks)).all(axis=(1, 2))
    if ok.sum() < 16:
        raise ValueError(f"landmark CNN: only {int(ok.sum())} faces with landmarks (need at least 16)")
    img, lm = faces[ok], np.asarray(landmarks)[ok]
    img = np.concatenate([img, img[:, :, ::-1]])
    lm = np.concatenate([lm, mirror_landmarks(lm, faces.shape[2])])
    x_all = _as_input(img)
    y_all = torch.from_numpy(normalise_landmarks(lm))
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = LandmarkRegressor()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    errs: list[float] = []
    model.train()
    for step in range(steps):
        idx = torch.randint(0, len(x_all), (batch_size,), generator=gen)
        pred = model(_augment(x_all[idx], gen))
        loss = F.smooth_l1_loss(pred, y_all[idx], beta=0.05)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step >= steps * 0.9:
            errs.append(float((pred.detach() - y_all[idx]).square().mean().sqrt()))
    model.eval().requires_grad_(False)
    return model, {"n_faces": int(ok.sum()), "train_rmse": float(np.mean(errs))}


class LandmarkTeacher:
    """Keeps the landmark regressor honest on generated faces while the generator trains.

    A frozen regressor can be fooled: the generator learns image features that move its output without
    turning the head (measured: after 2000 steps against a frozen prior the regressor's yaw on generated faces
    correlated 0.07 with dlib's, against 0.81 at the start). Every call, dlib's detector and 68-point model
    label a few generated faces (those where it finds a face) and the regressor takes one Adam step on them
    together with as many real training faces, so its reading of generated faces follows dlib's.

    Args:
        regressor: the :class:`LandmarkRegressor`, updated in place.
        real_targets: float32 [N, 136] normalised dlib landmarks of ``real_faces`` (NaN rows: no face).
        real_faces: float32 [N, 3, S, S] in [-1, 1], the training faces the regressor was fitted to.
        lr: Adam learning rate. seed: which real faces are drawn. world: processes under torchrun; the
            regressor's gradients are averaged across them so every rank keeps the same regressor.

    Raises:
        ValueError: ``real_targets`` do not match ``real_faces``, or none of them has landmarks.
    """

    def __init__(
        self,
        regressor: LandmarkRegressor,
        real_targets: torch.Tensor,
        real_faces: torch.Tensor,
        lr: float = 1e-4,
        seed: int = 0,
        world: int = 1,
    ) -> None:
        if len(real_targets) != len(real_faces):
            raise ValueError(f"landmark teacher: {len(real_targets)} targets for {len(real_faces)} real faces")
        from training.face_metrics import FaceAnalyzer

        self.regressor, self.analyzer = regressor, FaceAnalyzer()
        ok = torch.isfinite(real_targets).all(dim=1)
        if not ok.any():
            raise ValueError("landmark teacher: none of the real faces has landmarks")
        self.real_faces, self.real_targets = real_faces[ok], real_targets[ok].to(real_faces.device)
        self.opt = torch.optim.Adam(regressor.parameters(), lr=lr)
        self.gen = torch.Generator().manual_seed(seed)
        self.world = world

    def step(self, fakes: torch.Tensor) -> dict[str, float]:
        """Label ``fakes`` (float [n, 3, S, S] in [-1, 1]) with dlib and take one regressor step.

        Returns:
            {"teacher_detected": share of fakes with a face, "teacher_fake_rmse": the regressor's error on
            them before the step (inter-ocular units; NaN when none), "teacher_loss"}.
        """
        fakes = fakes.detach().float()
        images = ((fakes.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
        found = self.analyzer.analyze(images, embed=False)
        ok = torch.from_numpy(found.detected)
        reg = self.regressor
        n = len(fakes)
        idx = torch.randint(0, len(self.real_faces), (n,), generator=self.gen).to(self.real_faces.device)
        x, y = [self.real_faces[idx]], [self.real_targets[idx]]
        rmse = float("nan")
        if ok.any():
            target = torch.from_numpy(normalise_landmarks(found.landmarks[found.detected])).to(fakes.device)
            with torch.no_grad():
                rmse = float((reg(fakes[ok.to(fakes.device)]) - target).square().mean().sqrt())
            x.append(fakes[ok.to(fakes.device)])
            y.append(target)
        reg.requires_grad_(True)
        loss = F.smooth_l1_loss(reg(torch.cat(x)), torch.cat(y), beta=0.05)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        if self.world > 1:
            import torch.distributed as dist

            for p in reg.parameters():
                if p.grad is not None:
                    dist.all_reduce(p.grad)
                    p.grad /= self.world
        self.opt.step()
        reg.requires_grad_(False)
        return {
            "teacher_detected": float(ok.float().mean()),
            "teacher_fake_rmse": rmse,
            "teacher_loss": float(loss.detach()),
        }


def require_two_per_identity(labels: np.ndarray, n_identities: int, what: str, items: str) -> None:
    """Check that each of the identities 0..n_identities-1 has at least 2 entries in ``labels`` int [N].

    Raises:
        ValueError: ``"{what}: identities [...] have fewer than 2 {items}"``.
    """
    counts = np.bincount(np.asarray(labels), minlength=n_identities)
    if (counts < 2).any():
        raise ValueError(f"{what}: identities {np.flatnonzero(counts < 2).tolist()} have fewer than 2 {items}")


def within_identity_pca(
    x: np.ndarray, labels: np.ndarray, n_identities: int, components: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Principal components of features within identities: (mean float32 [I, D], basis float32 [K, D], std
    float32 [I, K]) of features float [N, D] with identity labels int [N] in 0..I-1 (every identity present).

    Each identity's mean is removed, the K leading principal directions of the pooled residuals are kept
    (orthonormal rows), and ``std`` is each identity's standard deviation along them (>= 1e-6), so
    ``((x - mean[label]) @ basis.T) / std[label]`` has mean 0 and standard deviation 1 per identity and component.
    """
    x = np.asarray(x, np.float64)
    mean = np.stack([x[labels == k].mean(0) for k in range(n_identities)])
    resid = x - mean[labels]
    _, _, vt = np.linalg.svd(resid, full_matrices=False)
    basis = vt[:components]
    proj = resid @ basis.T
    std = np.stack([np.maximum(proj[labels == k].std(0, ddof=1), 1e-6) for k in range(n_identities)])
    mean_t, basis_t, std_t = (torch.from_numpy(a).float() for a in (mean, basis, std))
    return mean_t, basis_t, std_t


@dataclass
class PoseCodes:
    """The pose code: within-identity, per-identity standardised principal components of normalised landmarks.

    Each real face's dlib landmarks (normalised by :func:`normalise_landmarks`) minus its identity's mean
    landmarks are projected on the K leading principal directions of those residuals (pooled over the
    identities) and divided by the identity's standard deviation along each direction. Every identity's real
    faces then have mean 0 and standard deviation 1 along each component, so a standard-normal vector is a
    plausible pose and expression for any identity (on the Wav2Pix training faces the first component follows
    yaw, correlation 0.92; the second roll, 0.71; mouth opening spreads over the third to fifth; six components
    hold 95 % of the residual variance). With ``model.pose_code_dim`` = K the generator reads its first K noise
    inputs as this code and the discriminator checks it by projection (Miyato & Koyama, "cGANs with Projection
    Discriminator", ICLR 2018), so callers that feed standard-normal noise draw poses from the real faces'
    spread; the exported graph draws real faces' codes instead (:class:`training.families.wav2pix.prior.NeighbourPosePrior`).

    Attributes:
        mean: float32 [I, 136] each identity's mean normalised landmarks.
        basis: float32 [K, 136] orthonormal principal directions of the within-identity residuals.
        std: float32 [I, K] each identity's standard deviation along them (>= 1e-6).
    """

    mean: torch.Tensor
    basis: torch.Tensor
    std: torch.Tensor

    @classmethod
    def fit(cls, landmarks: np.ndarray, labels: np.ndarray, n_identities: int, components: int) -> PoseCodes:
        """Fit the code to real faces' landmarks float [N, 68, 2] (pixels; NaN rows: no face) and identity
        labels int [N] in 0..n_identities-1.

        Raises:
            ValueError: mismatched lengths, an identity with fewer than 2 faces with landmarks, or
                ``components`` outside 1..min(136, faces - identities).
        """
        labels = np.asarray(labels)
        if len(labels) != len(landmarks):
            raise ValueError(f"pose code: {len(labels)} labels for {len(landmarks)} landmark sets")
        lm = normalise_landmarks(landmarks).astype(np.float64)
        ok = np.isfinite(lm).all(axis=1)
        require_two_per_identity(labels[ok], n_identities, "pose code", "faces with landmarks")
        if not 1 <= components <= min(136, int(ok.sum()) - n_identities):
            raise ValueError(
                f"model.pose_code_dim: expected 1..{min(136, int(ok.sum()) - n_identities)}, got {components}"
            )
        return cls(*within_identity_pca(lm[ok], labels[ok], n_identities, components))

    def encode(self, landmarks: np.ndarray, labels: np.ndarray) -> np.ndarray:
        """Pose codes float32 [N, K] of landmarks float [N, 68, 2] (pixels) of faces of identities int [N];
        NaN rows where a face has no landmarks."""
        lm = torch.from_numpy(normalise_landmarks(landmarks))
        return self.encode_normalised(lm, torch.from_numpy(np.asarray(labels, np.int64))).numpy()

    def encode_normalised(self, landmarks: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Differentiable pose codes [B, K] of normalised landmarks [B, 136] (e.g. a :class:`LandmarkRegressor`'s
        output) of faces of identities int64 [B]; float32, on the landmarks' device."""
        dev = landmarks.device
        mean, basis, std = self.mean.to(dev), self.basis.to(dev), self.std.to(dev)
        return ((landmarks.float() - mean[labels]) @ basis.T) / std[labels]

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Flat tensors for safetensors: ``mean``, ``basis``, ``std``."""
        return {k: getattr(self, k).detach().cpu().contiguous() for k in ("mean", "basis", "std")}

    @classmethod
    def from_state_dict(cls, tensors: dict[str, torch.Tensor]) -> PoseCodes:
        """Inverse of :meth:`state_dict`. Raises KeyError on a file without those tensors."""
        return cls(tensors["mean"], tensors["basis"], tensors["std"])


LANDMARK_FILE = "landmark_prior.safetensors"
"""The run folder's landmark regressor (``regressor.*``) and its real targets (``real_targets``)."""


def save_landmarks(path: Path, regressor: LandmarkRegressor, real_targets: torch.Tensor, meta: dict | None = None) -> None:
    """Write the regressor and the normalised landmarks float32 [N, 136] of the faces it was fitted to."""
    from safetensors.torch import save_file

    tensors = {f"regressor.{k}": v.detach().cpu().contiguous() for k, v in regressor.state_dict().items()}
    tensors["real_targets"] = real_targets.detach().cpu().float().contiguous()
    save_file(tensors, str(path), metadata={k: str(v) for k, v in (meta or {}).items()})


def load_landmarks(path: Path) -> tuple[LandmarkRegressor, torch.Tensor | None]:
    """(regressor in eval mode, frozen; real targets or None) from :func:`save_landmarks`'s file (files written
    before 2026-12 also hold a whitening for a removed loss, which is ignored).

    Raises:
        OSError, KeyError, RuntimeError, safetensors.SafetensorError: an unreadable or mismatched file.
    """
    from safetensors.torch import load_file

    tensors = load_file(str(path))
    reg = LandmarkRegressor()
    reg.load_state_dict({k[len("regressor.") :]: v for k, v in tensors.items() if k.startswith("regressor.")})
    return reg.eval().requires_grad_(False), tensors.get("real_targets")
