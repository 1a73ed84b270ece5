"""A landmark prior for the generator: the spread of head pose and expression of the real faces.

Why: the speech -> face generator learned to turn its noise into lighting rather than into head pose and mouth
opening (the default's yaw spread is 0.22 of the real faces', mouth opening 0.40; see the README's default-model
section), and the real training faces restricted to such a narrow yaw band alone sit 0.026 further (Fréchet
distance of dlib face embeddings) from the validation faces. This module gives the generator a differentiable
handle on that spread:

1. the 68 dlib landmarks (iBUG 300-W order) of every real *training* face are normalised (origin at the eye
   midpoint, unit = inter-ocular distance, so the framing drops out and yaw, roll and expression remain);
2. a small CNN (:class:`LandmarkRegressor`) learns them from the 64 or 128 px images (mirrored copies double the
   data, random shifts and colour changes make it ignore framing and lighting);
3. its outputs on the real training faces define a whitened principal-component space (:class:`LandmarkPrior`);
   the generator loss term asks each batch of generated faces to have the real faces' mean and per-component
   standard deviation there, identity by identity (moment matching, as in feature-matching GAN losses: Salimans et al., "Improved
   Techniques for Training GANs", NeurIPS 2016; with a frozen pretrained feature network, as in Sauer et al.,
   "Projected GANs Converge Faster", NeurIPS 2021).

The prior only reads training faces (never the validation split) and is used only while training: exported
bundles do not contain it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

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
        raise ValueError(f"landmark prior: only {int(ok.sum())} faces with landmarks (need at least 16)")
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


@dataclass
class LandmarkPrior:
    """Whitened principal components of predicted landmarks of real faces, and the moment-matching loss.

    The real faces' pose and expression differ between identities (in the Wav2Pix data one speaker's yaw
    spread is 0.07, the other's 0.16, and their mean roll differs by 6 degrees), so with identity targets the
    loss compares each identity's generated faces with that identity's real ones; pooled, the generator would
    be asked to make each speaker vary as much as both together.

    Attributes:
        regressor: frozen :class:`LandmarkRegressor`.
        mean: float32 [136] mean prediction on the real training faces.
        basis: float32 [K, 136] principal directions divided by their standard deviation (whitening), so the
            real faces have mean 0 and standard deviation 1 along each of the K components.
        identity_mean, identity_std: float32 [I, K] mean and standard deviation of each identity's real faces
            in the whitened space, or None (then the loss uses the pooled 0 and 1).
        real_targets: float32 [N, 136] normalised dlib landmarks of the real faces the regressor was fitted to
            (NaN rows: no face), kept for :class:`LandmarkTeacher`; None if unknown.
    """

    regressor: LandmarkRegressor
    mean: torch.Tensor
    basis: torch.Tensor
    identity_mean: torch.Tensor | None = None
    identity_std: torch.Tensor | None = None
    real_targets: torch.Tensor | None = None

    @classmethod
    def from_faces(cls, regressor: LandmarkRegressor, faces: np.ndarray, components: int = 8) -> LandmarkPrior:
        """Build the prior from the regressor's predictions on real faces uint8 [N, S, S, 3].

        Raises:
            ValueError: ``components`` outside 1..136 or more than N - 1.
        """
        if not 1 <= components <= min(136, len(faces) - 1):
            raise ValueError(f"loss.landmark_components: expected 1..{min(136, len(faces) - 1)}, got {components}")
        with torch.no_grad():
            pred = _batched(regressor, _as_input(faces)).double()
        mean = pred.mean(0)
        _, s, vt = torch.linalg.svd(pred - mean, full_matrices=False)
        std = s[:components] / np.sqrt(len(pred) - 1)
        return cls(regressor, mean.float(), (vt[:components] / std[:, None]).float())

    def with_identity_targets(self, faces: np.ndarray, labels: np.ndarray, n_identities: int) -> LandmarkPrior:
        """Set :attr:`identity_mean` / :attr:`identity_std` from real faces uint8 [N, S, S, 3] and their identity
        labels int [N] (0..n_identities-1). Returns self.

        Raises:
            ValueError: an identity with fewer than 2 faces, or mismatched lengths.
        """
        labels = np.asarray(labels)
        if len(labels) != len(faces):
            raise ValueError(f"labels: {len(labels)} for {len(faces)} faces")
        require_two_per_identity(labels, n_identities, "landmark prior", "faces")
        with torch.no_grad():
            c = _batched(self.coordinates, _as_input(faces).to(self.mean.device))
        lab = torch.from_numpy(labels).to(c.device)
        self.identity_mean = torch.stack([c[lab == k].mean(0) for k in range(n_identities)])
        self.identity_std = torch.stack([c[lab == k].std(0) for k in range(n_identities)])
        return self

    def to(self, device: torch.device | str) -> LandmarkPrior:
        """Move the regressor and tensors to ``device`` (returns self)."""
        self.regressor.to(device)
        self.mean, self.basis = self.mean.to(device), self.basis.to(device)
        if self.identity_mean is not None and self.identity_std is not None:
            self.identity_mean, self.identity_std = self.identity_mean.to(device), self.identity_std.to(device)
        return self

    def coordinates(self, images: torch.Tensor) -> torch.Tensor:
        """Whitened landmark coordinates float32 [B, K] of images float [B, 3, S, S] in [-1, 1] (differentiable)."""
        return (self.regressor(images.float()) - self.mean) @ self.basis.T

    def loss(self, images: torch.Tensor, labels: torch.Tensor | None = None, match: str = "moments") -> torch.Tensor:
        """Moment-matching loss of a batch of generated faces [B, 3, S, S] (B >= 2), float32 scalar.

        ``match='moments'``: sum over the K components of (mean - m)^2 + (std - s)^2 in the whitened space;
        ``match='spread'``: only max(0, s - std)^2, a one-sided push towards at least the real spread that
        leaves the mean pose to the discriminator. (m, s) are the real faces' moments: per identity when
        :attr:`identity_mean` is set and ``labels`` (int64 [B]) are given (identities with fewer than 2 faces in
        the batch are left out, the rest weighted by their share of the batch), else the pooled (0, 1).
        0 when the batch matches the real faces' moments.

        Raises:
            ValueError: unknown ``match``.
        """
        if match not in ("moments", "spread"):
            raise ValueError(f"loss.landmark_match: expected 'moments' or 'spread', got {match!r}")
        c = self.coordinates(images)

        def term(ck: torch.Tensor, m: torch.Tensor | float, s: torch.Tensor | float) -> torch.Tensor:
            if match == "spread":
                return F.relu(s - ck.std(0)).square().sum()
            return ((ck.mean(0) - m).square() + (ck.std(0) - s).square()).sum()

        if labels is None or self.identity_mean is None or self.identity_std is None:
            return term(c, 0.0, 1.0)
        total = c.new_zeros(())
        for k in torch.unique(labels).tolist():
            ck = c[labels == k]
            if len(ck) >= 2:
                total = total + term(ck, self.identity_mean[k], self.identity_std[k]) * (len(ck) / len(c))
        return total

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Flat tensors for safetensors (``regressor.*``, ``mean``, ``basis``, ``real_targets`` when known)."""
        sd = {f"regressor.{k}": v.detach().cpu().contiguous() for k, v in self.regressor.state_dict().items()}
        sd.update({"mean": self.mean.cpu().contiguous(), "basis": self.basis.cpu().contiguous()})
        if self.real_targets is not None:
            sd["real_targets"] = self.real_targets.cpu().contiguous()
        return sd

    @classmethod
    def from_state_dict(cls, tensors: dict[str, torch.Tensor]) -> LandmarkPrior:
        """Inverse of :meth:`state_dict`. Raises KeyError / RuntimeError on a mismatched file."""
        reg = LandmarkRegressor()
        reg.load_state_dict({k[len("regressor.") :]: v for k, v in tensors.items() if k.startswith("regressor.")})
        return cls(
            reg.eval().requires_grad_(False),
            tensors["mean"],
            tensors["basis"],
            real_targets=tensors.get("real_targets"),
        )


class LandmarkTeacher:
    """Keeps the prior's regressor honest on generated faces while the generator trains.

    A frozen regressor can be fooled: the generator learns image features that move its output without
    turning the head (measured: after 2000 steps against a frozen prior the regressor's yaw on generated faces
    correlated 0.07 with dlib's, against 0.81 at the start). Every call, dlib's detector and 68-point model
    label a few generated faces (those where it finds a face) and the regressor takes one Adam step on them
    together with as many real training faces, so its reading of generated faces follows dlib's.

    Args:
        prior: the :class:`LandmarkPrior` whose regressor is updated in place; needs ``real_targets``.
        real_faces: float32 [N, 3, S, S] in [-1, 1], the faces behind ``prior.real_targets`` (same order).
        lr: Adam learning rate. seed: which real faces are drawn. world: processes under torchrun; the
            regressor's gradients are averaged across them so every rank keeps the same regressor.

    Raises:
        ValueError: the prior has no ``real_targets`` or they do not match ``real_faces``.
    """

    def __init__(
        self, prior: LandmarkPrior, real_faces: torch.Tensor, lr: float = 1e-4, seed: int = 0, world: int = 1
    ) -> None:
        if prior.real_targets is None or len(prior.real_targets) != len(real_faces):
            raise ValueError("landmark teacher: the prior's real_targets must match the real faces")
        from training.face_metrics import FaceAnalyzer

        self.prior, self.analyzer = prior, FaceAnalyzer()
        ok = torch.isfinite(prior.real_targets).all(dim=1)
        if not ok.any():
            raise ValueError("landmark teacher: none of the real faces has landmarks")
        self.real_faces, self.real_targets = real_faces[ok], prior.real_targets[ok].to(real_faces.device)
        self.opt = torch.optim.Adam(prior.regressor.parameters(), lr=lr)
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
        reg = self.prior.regressor
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
    spread (their exact distribution with the pose prior, :class:`training.models.wav2pix.PoseCodePrior`).

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
