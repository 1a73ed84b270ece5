"""Face-based evaluation of generated faces with dlib.

Measures, after Duarte et al., "Wav2Pix: Speech-conditioned Face Generation using Generative
Adversarial Networks" (ICASSP 2019), Sec. 4:

* **facial landmark detection ratio** — the fraction of images in which dlib's HOG frontal face
  detector (Dalal & Triggs 2005; King 2009) finds a face *and* the 68-point landmark model
  (Kazemi & Sullivan 2014, iBUG 300-W) fits inside the image;
* **identity accuracy** — generated faces whose 128-d dlib face embedding (ResNet-29 metric network,
  "dlib_face_recognition_resnet_model_v1", 99.38 % on LFW) is nearest to the centroid of the
  right identity's real faces;
* **Fréchet distance** between Gaussians fitted to two sets of face embeddings (the FID formula of
  Heusel et al. 2017, computed in the face-embedding space rather than Inception features);
* **diversity** — within each identity, the mean pairwise embedding distance of generated faces
  divided by that of real faces (1.0 = as varied as the real data, near 0 = mode collapse).

Model files come from the ``face-recognition-models`` wheel. Importing that package needs
``pkg_resources`` (often absent), so its folder is located with :func:`importlib.util.find_spec`
instead of importing it.

Small images (64 px) are upscaled before detection: the HOG detector's smallest face is about
80×80 px. See :class:`FaceAnalyzer` for the calibration on real data.
"""

from __future__ import annotations

import importlib.util
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np

from engine.errors import UserError

#: Files used from the face-recognition-models wheel.
LANDMARKS_68 = "shape_predictor_68_face_landmarks.dat"
RECOGNITION_RESNET = "dlib_face_recognition_resnet_model_v1.dat"
EMBEDDING_DIM = 128


class FaceModelsMissing(UserError, OSError):
    """dlib or the face-recognition-models files are not installed; the message says what to install."""


def models_dir() -> Path:
    """Folder holding the dlib model files of the ``face-recognition-models`` wheel.

    The package is located without importing it (its ``__init__`` imports ``pkg_resources``).

    Raises:
        FaceModelsMissing: the package or one of its model files is absent.
    """
    spec = importlib.util.find_spec("face_recognition_models")
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for loc in locations:
        folder = Path(loc) / "models"
        if (folder / LANDMARKS_68).is_file() and (folder / RECOGNITION_RESNET).is_file():
            return folder
    raise FaceModelsMissing(
        f"dlib face models not found ({LANDMARKS_68}, {RECOGNITION_RESNET}): pip install face-recognition-models"
    )


class FaceBox(NamedTuple):
    """A face box in the input image's pixel coordinates (floats; right/bottom exclusive-ish, dlib style)."""

    left: float
    top: float
    right: float
    bottom: float


@dataclass
class FaceAnalysis:
    """Result of :meth:`FaceAnalyzer.analyze` for N images.

    Attributes:
        boxes: N entries, a :class:`FaceBox` (input-image pixels) or ``None`` where no face was found.
        embeddings: float32 [N, 128] dlib face descriptors (unit-less; same-person threshold ≈ 0.6
            Euclidean), or ``None`` when embeddings were not requested.
        fallback: bool [N], True where no face was detected and the whole image was embedded instead.
        landmarks: float32 [N, 68, 2] (x, y) of the 68-point model (iBUG 300-W order) in input-image pixels,
            NaN where no face was detected.
    """

    boxes: list[FaceBox | None]
    embeddings: np.ndarray | None
    fallback: np.ndarray
    landmarks: np.ndarray | None = None

    @property
    def detected(self) -> np.ndarray:
        """bool [N]: a face was detected and its landmarks fitted."""
        return np.asarray([b is not None for b in self.boxes], dtype=bool)

    @property
    def detection_ratio(self) -> float:
        """Fraction of images with a detected face (0..1)."""
        return detection_ratio(self.boxes)

    @property
    def n_fallback(self) -> int:
        """How many embeddings were computed on the full-image box (no face detected)."""
        return int(self.fallback.sum())


class FaceAnalyzer:
    """dlib face detection, 68-point landmarks and 128-d identity embeddings.

    Calibration on the 1 109 distinct real face crops of the Wav2Pix "youtubers" data (decoded and
    area-downscaled from 220 px by :func:`training.data.dataset.decode_image`, exactly as training sees
    them), fraction with a detected face:

    ======================================  ========
    64 px as is (detector window 80x80)     57.9 %
    64 px, detector ``upsample=1``          93.6 %
    upscaled to 128 px, Lanczos             97.8 %
    upscaled to 192 px, Lanczos             93.9 %
    upscaled to 256 px, Lanczos (default)   99.5 %
    upscaled to 256 px, bicubic             99.5 %
    upscaled to 256 px + ``upsample=1``     98.8 % (4x slower)
    upscaled to 320 px, Lanczos             98.3 %
    128 px crops upscaled to 256 px         99.5 %
    ======================================  ========

    The expectation for real 64 px faces was about 98 %. The ratio is not monotonic in the scale
    (the HOG pyramid steps by 1/1.2), so the default is the measured best: ``upscale_to=256``,
    Lanczos-4, no detector upsampling. Images already larger than ``upscale_to`` are used as they are.
    Noise, blurred noise and flat images score 0 %.

    Args:
        upscale_to: images whose longer side is below this many pixels are resized (aspect kept) so
            that it equals this, before detection, landmarks and embedding.
        upsample: dlib detector pyramid upsampling count (0 = none).
        interpolation: OpenCV resize method for the upscale: ``'lanczos'``, ``'cubic'`` or ``'linear'``.
        landmark_margin: landmarks may lie this fraction of the image side outside the image and the
            face still counts (a fit that runs far off the image counts as no face).
        models: folder with the dlib model files (default: :func:`models_dir`).

    Raises:
        FaceModelsMissing: dlib or the model files are not installed.
        ValueError: a bad ``interpolation`` or negative ``upsample``.
    """

    def __init__(
        self,
        upscale_to: int = 256,
        upsample: int = 0,
        interpolation: str = "lanczos",
        landmark_margin: float = 0.1,
        models: str | Path | None = None,
    ) -> None:
        try:
            import dlib
        except ImportError as exc:  # pragma: no cover - dlib-bin is a declared dependency
            raise FaceModelsMissing("dlib is not installed: pip install dlib-bin") from exc
        import cv2

        methods = {"lanczos": cv2.INTER_LANCZOS4, "cubic": cv2.INTER_CUBIC, "linear": cv2.INTER_LINEAR}
        if interpolation not in methods:
            raise ValueError(f"interpolation: expected one of {', '.join(methods)}, got {interpolation!r}")
        if upsample < 0:
            raise ValueError(f"upsample: expected >= 0, got {upsample}")
        folder = Path(models) if models is not None else models_dir()
        self.upscale_to = int(upscale_to)
        self.upsample = int(upsample)
        self.interpolation = interpolation
        self.landmark_margin = float(landmark_margin)
        self._interp = methods[interpolation]
        self._dlib = dlib
        self._detector = dlib.get_frontal_face_detector()
        self._landmarks = dlib.shape_predictor(str(folder / LANDMARKS_68))
        self._resnet = dlib.face_recognition_model_v1(str(folder / RECOGNITION_RESNET))
        #: fallbacks of the last :meth:`embed` call
        self.last_fallback_count = 0

    # ------------------------------------------------------------------ helpers
    def settings(self) -> dict:
        """The calibration settings, for ``metrics.json``."""
        return {
            "detector": "dlib HOG frontal face detector + 68-point landmarks",
            "upscale_to": self.upscale_to,
            "interpolation": self.interpolation,
            "detector_upsample": self.upsample,
            "landmark_margin": self.landmark_margin,
            "embedding": "dlib_face_recognition_resnet_model_v1 (128-d)",
        }

    def _prepare(self, image: np.ndarray) -> tuple[np.ndarray, float]:
        import cv2

        h, w = image.shape[:2]
        scale = 1.0
        if max(h, w) < self.upscale_to:
            scale = self.upscale_to / max(h, w)
            image = cv2.resize(image, (round(w * scale), round(h * scale)), interpolation=self._interp)
        return np.ascontiguousarray(image, dtype=np.uint8), scale

    def _find(self, image: np.ndarray):
        """(dlib rectangle, full_object_detection, landmarks float64 [68, 2] in ``image`` pixels) of the largest
        face with fitted landmarks, or None."""
        rects = self._detector(image, self.upsample)
        if len(rects) == 0:
            return None
        rect = max(rects, key=lambda r: r.width() * r.height())
        shape = self._landmarks(image, rect)
        if shape.num_parts != 68:
            return None
        pts = np.asarray([(shape.part(i).x, shape.part(i).y) for i in range(68)], dtype=np.float64)
        h, w = image.shape[:2]
        m = self.landmark_margin
        inside = (pts[:, 0] >= -m * w) & (pts[:, 0] <= (1 + m) * w) & (pts[:, 1] >= -m * h) & (pts[:, 1] <= (1 + m) * h)
        if not inside.all():
            return None
        return rect, shape, pts

    # ------------------------------------------------------------------ API
    def analyze(self, images: np.ndarray | Sequence[np.ndarray], embed: bool = True) -> FaceAnalysis:
        """Detect faces (and optionally embed them) in ``images``.

        Args:
            images: uint8 RGB, [N, H, W, 3] (or a sequence of [H, W, 3], or one [H, W, 3] image).
            embed: also compute 128-d embeddings; an image with no detected face is embedded on the
                full-image box with landmarks fitted there (``fallback`` True), so every image gets one.

        Returns:
            :class:`FaceAnalysis` with boxes in input pixel coordinates.

        Raises:
            ValueError: not uint8, or not RGB [H, W, 3] images.
        """
        batch = _as_batch(images)
        boxes: list[FaceBox | None] = []
        embeddings = np.zeros((len(batch), EMBEDDING_DIM), np.float32) if embed else None
        fallback = np.zeros(len(batch), bool)
        landmarks = np.full((len(batch), 68, 2), np.nan, np.float32)
        for i, raw in enumerate(batch):
            image, scale = self._prepare(raw)
            found = self._find(image)
            if found is None:
                boxes.append(None)
                fallback[i] = embed
            else:
                r, shape, pts = found
                boxes.append(FaceBox(r.left() / scale, r.top() / scale, r.right() / scale, r.bottom() / scale))
                landmarks[i] = pts / scale
            if embed:
                if found is None:
                    h, w = image.shape[:2]
                    shape = self._landmarks(image, self._dlib.rectangle(0, 0, w - 1, h - 1))
                # aligned 150x150 chip (padding 0.25) from the 68 landmarks, then the ResNet
                embeddings[i] = np.asarray(self._resnet.compute_face_descriptor(image, shape), np.float32)
        return FaceAnalysis(boxes=boxes, embeddings=embeddings, fallback=fallback, landmarks=landmarks)

    def detect(self, images: np.ndarray | Sequence[np.ndarray]) -> list[FaceBox | None]:
        """Face box per image, or ``None`` where the detector finds no face or the landmarks do not fit.

        Args:
            images: uint8 RGB [N, H, W, 3] (any size; small images are upscaled first).

        Returns:
            N :class:`FaceBox` (input-image pixels) or ``None``. Use :func:`detection_ratio` on it.

        Raises:
            ValueError: not uint8 RGB images.
        """
        return self.analyze(images, embed=False).boxes

    def embed(self, images: np.ndarray | Sequence[np.ndarray]) -> np.ndarray:
        """128-d dlib face embeddings, float32 [N, 128].

        Computed on the 68-landmark-aligned 150×150 face chip. Images with no detected face fall
        back to the full-image box; their count is stored in :attr:`last_fallback_count`
        (use :meth:`analyze` to get the per-image flags).

        Raises:
            ValueError: not uint8 RGB images.
        """
        result = self.analyze(images, embed=True)
        self.last_fallback_count = result.n_fallback
        assert result.embeddings is not None
        return result.embeddings


def _as_batch(images: np.ndarray | Sequence[np.ndarray]) -> list[np.ndarray]:
    if isinstance(images, np.ndarray) and images.ndim == 3:
        images = images[None]
    out = []
    for i, img in enumerate(images):
        img = np.asarray(img)
        if img.dtype != np.uint8:
            raise ValueError(f"images[{i}]: expected uint8 RGB, got dtype {img.dtype}")
        if img.ndim != 3 or img.shape[2] != 3:
            raise ValueError(f"images[{i}]: expected shape [H, W, 3], got {list(img.shape)}")
        out.append(img)
    return out


# ---------------------------------------------------------------------- metrics
def detection_ratio(detections: Sequence[FaceBox | None | bool] | np.ndarray) -> float:
    """Facial landmark detection ratio (Duarte et al. 2019): fraction of images with a face, 0..1.

    Args:
        detections: the output of :meth:`FaceAnalyzer.detect` (boxes or ``None``) or booleans.

    Raises:
        ValueError: empty input.
    """
    if len(detections) == 0:
        raise ValueError("detection_ratio: no images")
    hits = [bool(d) if isinstance(d, bool | np.bool_) else d is not None for d in detections]
    return float(np.mean(hits))


def identity_centroids(embeddings: np.ndarray, labels: np.ndarray, n_identities: int) -> np.ndarray:
    """Mean embedding per identity: float32 [n_identities, D]; NaN rows for identities with no sample.

    Args:
        embeddings: float [N, D] face embeddings (real faces).
        labels: int [N] identity index in ``[0, n_identities)``.

    Raises:
        ValueError: shape mismatch or a label out of range.
    """
    embeddings = np.asarray(embeddings, np.float64)
    labels = np.asarray(labels, np.int64)
    if embeddings.ndim != 2 or len(labels) != len(embeddings):
        raise ValueError(f"identity_centroids: embeddings {list(embeddings.shape)} vs labels {list(labels.shape)}")
    if len(labels) and (labels.min() < 0 or labels.max() >= n_identities):
        raise ValueError(f"identity_centroids: labels must lie in [0, {n_identities})")
    out = np.full((n_identities, embeddings.shape[1]), np.nan)
    for k in range(n_identities):
        if (labels == k).any():
            out[k] = embeddings[labels == k].mean(axis=0)
    return out.astype(np.float32)


def identity_accuracy(gen_emb: np.ndarray, gen_labels: np.ndarray, centroids: np.ndarray) -> float:
    """Fraction of faces whose embedding is nearest (Euclidean) to the centroid of their own identity.

    Args:
        gen_emb: float [N, D] embeddings of generated (or real, for a reference) faces.
        gen_labels: int [N] identity the face was conditioned on (speech of that identity).
        centroids: float [K, D] from :func:`identity_centroids` on real faces; NaN rows are never nearest.

    Returns:
        accuracy in 0..1 (chance is 1/K for K identities).

    Raises:
        ValueError: empty input, shape mismatch, or a label without a centroid.
    """
    gen_emb = np.asarray(gen_emb, np.float64)
    gen_labels = np.asarray(gen_labels, np.int64)
    centroids = np.asarray(centroids, np.float64)
    if len(gen_emb) == 0:
        raise ValueError("identity_accuracy: no faces")
    if (
        gen_emb.ndim != 2
        or centroids.ndim != 2
        or gen_emb.shape[1] != centroids.shape[1]
        or len(gen_labels) != len(gen_emb)
    ):
        raise ValueError(
            f"identity_accuracy: embeddings {list(gen_emb.shape)}, labels {list(gen_labels.shape)}, "
            f"centroids {list(centroids.shape)} do not match"
        )
    if gen_labels.min() < 0 or gen_labels.max() >= len(centroids) or np.isnan(centroids[np.unique(gen_labels)]).any():
        raise ValueError("identity_accuracy: a label has no centroid (no real faces of that identity)")
    dist = np.linalg.norm(gen_emb[:, None, :] - centroids[None, :, :], axis=2)
    dist[:, np.isnan(centroids).any(axis=1)] = np.inf
    return float(np.mean(dist.argmin(axis=1) == gen_labels))


def frechet_distance(emb_a: np.ndarray, emb_b: np.ndarray, eps: float = 1e-6) -> float:
    """Fréchet distance between Gaussians fitted to two embedding sets; the sum of :func:`frechet_terms`."""
    mean_term, cov_term = frechet_terms(emb_a, emb_b, eps)
    return max(mean_term + cov_term, 0.0)


def frechet_terms(emb_a: np.ndarray, emb_b: np.ndarray, eps: float = 1e-6) -> tuple[float, float]:
    """Fréchet distance between Gaussians fitted to two embedding sets (Heusel et al. 2017, FID formula).

    ``|mu_a - mu_b|^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2))`` with unbiased covariances, returned as its two
    terms: (mean term ``|mu_a - mu_b|^2``, covariance term ``Tr(...)``); a large mean term says the sets sit
    in different places, a large covariance term that they spread differently. The matrix
    square root is :func:`scipy.linalg.sqrtm`; when it is singular or not finite, ``eps * I`` is added
    to both covariances (as in pytorch-fid); a small imaginary part from numerical error is dropped.
    Units: squared embedding distance (dlib embeddings: same person ≈ distance < 0.6). Note the
    estimate is biased upwards for small sets (it is not 0 for two samples of one distribution).

    Args:
        emb_a, emb_b: float [Na, D], [Nb, D] with Na, Nb >= 2.

    Returns:
        (mean term, covariance term), each >= 0 (tiny negative rounding is clipped to 0).

    Raises:
        ValueError: fewer than 2 rows, dimension mismatch, non-finite input, or a large imaginary part.
    """
    from scipy import linalg

    a = np.asarray(emb_a, np.float64)
    b = np.asarray(emb_b, np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(
            f"frechet_distance: expected [N, D] arrays of equal D, got {list(a.shape)} and {list(b.shape)}"
        )
    if len(a) < 2 or len(b) < 2:
        raise ValueError(f"frechet_distance: need at least 2 samples per set, got {len(a)} and {len(b)}")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise ValueError("frechet_distance: embeddings contain NaN or infinity")
    mu_a, mu_b = a.mean(axis=0), b.mean(axis=0)
    cov_a, cov_b = np.atleast_2d(np.cov(a, rowvar=False)), np.atleast_2d(np.cov(b, rowvar=False))
    with warnings.catch_warnings():  # near-singular products: checked and handled below
        warnings.simplefilter("ignore", RuntimeWarning)
        covmean = linalg.sqrtm(cov_a @ cov_b)
    if not np.isfinite(covmean).all():
        offset = np.eye(len(cov_a)) * eps
        covmean = linalg.sqrtm((cov_a + offset) @ (cov_b + offset))
    if np.iscomplexobj(covmean):
        imag = np.abs(covmean.imag).max()
        scale = max(1.0, np.abs(covmean.real).max())
        if imag > 1e-3 * scale:
            raise ValueError(f"frechet_distance: matrix square root has a large imaginary component ({imag:.3g})")
        covmean = covmean.real
    diff = mu_a - mu_b
    cov_term = float(np.trace(cov_a) + np.trace(cov_b) - 2.0 * np.trace(covmean))
    return max(float(diff @ diff), 0.0), max(cov_term, 0.0)


POSE_STATISTICS: tuple[str, ...] = ("yaw", "roll_deg", "mouth_open")
"""The keys of :func:`pose_statistics`."""


def eye_frame(landmarks: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The eye-based frame of 68-point landmarks (iBUG 300-W order), shared by pose and normalisation.

    Args:
        landmarks: float [N, 68, 2] (x, y) in pixels; NaN rows stay NaN.

    Returns:
        (points float64 [N, 68, 2], left eye centre [N, 2] (mean of points 36-41), right eye centre [N, 2]
        (42-47), eye midpoint [N, 2], inter-ocular distance [N] in pixels, NaN where it is 0).

    Raises:
        ValueError: not [N, 68, 2].
    """
    p = np.asarray(landmarks, np.float64)
    if p.ndim != 3 or p.shape[1:] != (68, 2):
        raise ValueError(f"landmarks: expected [N, 68, 2], got {p.shape}")
    left, right = p[:, 36:42].mean(axis=1), p[:, 42:48].mean(axis=1)
    d = np.linalg.norm(right - left, axis=1)
    return p, left, right, (left + right) / 2, np.where(d > 0, d, np.nan)


def pose_statistics(landmarks: np.ndarray) -> dict[str, np.ndarray]:
    """Head pose and expression proxies from 68-point landmarks (iBUG 300-W order, as dlib's model).

    With the eye centres ``l``, ``r`` (means of points 36-41 and 42-47) and the inter-ocular distance
    ``d = |r - l|``:

    * ``yaw``: horizontal offset of the nose tip (point 30) from the eye midpoint, divided by ``d``
      (0 for a frontal face; about +-0.15 is the spread of the Wav2Pix validation faces), unitless;
    * ``roll_deg``: angle of the eye line, degrees (positive: the right-hand eye in the image is lower);
    * ``mouth_open``: distance between the inner lips (points 62 and 66) divided by ``d``, unitless.

    These are 2-D proxies (no 3-D head model): enough to compare the spread of generated faces with real
    ones, which is what the evaluation uses them for.

    Args:
        landmarks: float [N, 68, 2] (x, y) in pixels; rows of NaN (no face) give NaN.

    Returns:
        {name: float64 [N]} for the names in :data:`POSE_STATISTICS`.

    Raises:
        ValueError: not [N, 68, 2].
    """
    p, left, right, mid, d = eye_frame(landmarks)
    return {
        "yaw": (p[:, 30, 0] - mid[:, 0]) / d,
        "roll_deg": np.degrees(np.arctan2(right[:, 1] - left[:, 1], right[:, 0] - left[:, 0])),
        "mouth_open": np.linalg.norm(p[:, 66] - p[:, 62], axis=1) / d,
    }


def pose_spread(generated: np.ndarray, real: np.ndarray) -> dict[str, dict[str, float]]:
    """Mean and standard deviation of each :func:`pose_statistics` proxy, generated vs real faces.

    Args:
        generated, real: landmarks float [N, 68, 2] (NaN rows, no face, are left out).

    Returns:
        {name: {"generated_mean", "generated_std", "real_mean", "real_std", "std_ratio"}} with
        ``std_ratio`` = generated std / real std (1 = as varied as the real faces; NaN where undefined).
    """
    gen, ref = pose_statistics(generated), pose_statistics(real)
    out: dict[str, dict[str, float]] = {}
    for name in POSE_STATISTICS:
        g, r = gen[name][np.isfinite(gen[name])], ref[name][np.isfinite(ref[name])]
        g_std = float(g.std()) if len(g) >= 2 else float("nan")
        r_std = float(r.std()) if len(r) >= 2 else float("nan")
        out[name] = {
            "generated_mean": float(g.mean()) if len(g) else float("nan"),
            "generated_std": g_std,
            "real_mean": float(r.mean()) if len(r) else float("nan"),
            "real_std": r_std,
            "std_ratio": g_std / r_std if r_std > 0 else float("nan"),
        }
    return out


def reduce_resolution(images: np.ndarray, factor: int = 2) -> np.ndarray:
    """Images at 1/``factor`` of their linear resolution, same size: uint8 [N, H, W, 3] → uint8 [N, H, W, 3].

    Area-averaged down to (H/factor, W/factor) pixels, bilinear back up (OpenCV ``INTER_AREA`` /
    ``INTER_LINEAR``). ``evaluate`` scores real validation faces treated this way to calibrate the
    Fréchet distance: how far a known, mild loss of detail moves real faces.

    Raises:
        ValueError: ``factor`` < 1 or images that are not [N, H, W, 3] uint8.
    """
    import cv2

    images = np.asarray(images)
    if factor < 1:
        raise ValueError(f"factor: expected >= 1, got {factor}")
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        raise ValueError(f"images: expected uint8 [N, H, W, 3], got {images.dtype} {list(images.shape)}")
    n, h, w, _ = images.shape
    small = (max(1, w // factor), max(1, h // factor))
    out = [
        cv2.resize(cv2.resize(im, small, interpolation=cv2.INTER_AREA), (w, h), interpolation=cv2.INTER_LINEAR)
        for im in images
    ]
    return np.stack(out) if out else images.copy()


def mean_pairwise_distance(embeddings: np.ndarray) -> float:
    """Mean Euclidean distance over all unordered pairs of rows of float [N, D] (N >= 2), else NaN."""
    e = np.asarray(embeddings, np.float64)
    if len(e) < 2:
        return float("nan")
    sq = (e * e).sum(axis=1)
    d2 = np.maximum(sq[:, None] + sq[None, :] - 2.0 * e @ e.T, 0.0)
    iu = np.triu_indices(len(e), k=1)
    return float(np.sqrt(d2[iu]).mean())


def diversity(
    gen_emb: np.ndarray, gen_labels: np.ndarray, real_emb: np.ndarray, real_labels: np.ndarray, n_identities: int
) -> dict[int, dict[str, float]]:
    """Within-identity diversity of generated faces relative to real ones.

    For each identity k: mean pairwise embedding distance among generated faces of k, the same among
    real faces of k, and their ratio (1.0 = as varied as the real faces; near 0 = mode collapse).
    Identities with fewer than 2 generated or real faces get NaN.

    Args:
        gen_emb, real_emb: float [N, D] embeddings. gen_labels, real_labels: int [N] identity indices.

    Returns:
        ``{k: {"generated": float, "real": float, "ratio": float}}`` for k in range(n_identities).
    """
    gen_emb, real_emb = np.asarray(gen_emb), np.asarray(real_emb)
    gen_labels, real_labels = np.asarray(gen_labels), np.asarray(real_labels)
    out: dict[int, dict[str, float]] = {}
    for k in range(n_identities):
        g = mean_pairwise_distance(gen_emb[gen_labels == k])
        r = mean_pairwise_distance(real_emb[real_labels == k])
        ratio = g / r if np.isfinite(g) and np.isfinite(r) and r > 0 else float("nan")
        out[k] = {"generated": g, "real": r, "ratio": ratio}
    return out
