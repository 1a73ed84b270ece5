"""Face evaluation shared by the face families (wav2pix, avgan): detection, identity, Fréchet distance, diversity.

After Duarte et al., "Wav2Pix", ICASSP 2019, Sec. 4: generated faces are scored with dlib
(:mod:`training.face_metrics`) and compared with the same figures for real faces:

* face (landmark) detection ratio — generated vs real validation faces;
* identity accuracy — nearest identity centroid (centroids from real *training* faces);
* Fréchet distance of face embeddings — generated vs real validation faces; reference: real training vs real
  validation faces (the floor a perfect model could reach at these sample sizes), and real training vs real
  validation faces at half their linear resolution (:func:`training.face_metrics.reduce_resolution`: the scale
  of a mild loss of detail);
* diversity ratio per identity — mean pairwise embedding distance, generated / real validation (faces with a
  detected face only; NaN when fewer than 2); the spread of head pose and mouth opening.

The core is :func:`evaluate_embeddings` / :func:`evaluate_images`, usable without any model.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from engine.errors import UserError
from training import face_metrics as fm

log = logging.getLogger(__name__)

SAMPLE_VOICES = 8
GenerateFn = Callable[[np.ndarray, np.ndarray], np.ndarray]


# ---------------------------------------------------------------------- metric core
def nan_to_none(value: Any) -> Any:
    """``value`` with every non-finite float (nested in dicts and lists) replaced by ``None``, for JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: nan_to_none(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [nan_to_none(v) for v in value]
    return value


def evaluate_embeddings(
    gen_emb: np.ndarray,
    gen_detected: np.ndarray,
    gen_labels: np.ndarray,
    val_emb: np.ndarray,
    val_detected: np.ndarray,
    val_labels: np.ndarray,
    identities: Sequence[str],
    train_emb: np.ndarray | None = None,
    train_detected: np.ndarray | None = None,
    train_labels: np.ndarray | None = None,
    val_half_emb: np.ndarray | None = None,
    gen_landmarks: np.ndarray | None = None,
    val_landmarks: np.ndarray | None = None,
) -> dict[str, Any]:
    """Face metrics from precomputed dlib embeddings / detection flags (see :func:`evaluate_images`).

    Args:
        gen_emb: float32 [G, 128] embeddings of generated faces; gen_detected: bool [G]; gen_labels: int [G]
            identity index (into ``identities``) of the speech each face was generated from.
        val_emb, val_detected, val_labels: the same for distinct real validation faces [V].
        identities: identity names; index = label.
        train_emb, train_detected, train_labels: distinct real training faces [T] (optional): they give the
            identity centroids and the real-vs-real Fréchet reference; without them centroids come from
            the validation faces (an optimistic reference).
        val_half_emb: float32 [V, 128] embeddings of the same validation faces at half their linear
            resolution (:func:`training.face_metrics.reduce_resolution`); with ``train_emb`` they give the
            reference ``frechet_distance_train_vs_val_half_resolution``, the scale of a mild loss of detail.
        gen_landmarks, val_landmarks: float32 [G, 68, 2] and [V, 68, 2] landmarks (NaN rows: no face); with
            both, ``pose`` compares the spread of head yaw, roll and mouth opening
            (:func:`training.face_metrics.pose_spread`), which the covariance term of the FD does not name, and
            ``pose_per_identity`` does so within each identity.

    Returns:
        A JSON-ready dict (NaN → ``None``); see :func:`format_table` for the keys shown.

    Raises:
        ValueError: empty sets or mismatched shapes.
    """
    k = len(identities)
    gen_labels, val_labels = np.asarray(gen_labels, np.int64), np.asarray(val_labels, np.int64)
    gen_detected, val_detected = np.asarray(gen_detected, bool), np.asarray(val_detected, bool)
    if len(gen_emb) == 0 or len(val_emb) == 0:
        raise ValueError("evaluate: need at least one generated and one real validation face")
    if train_emb is not None and len(train_emb):
        ref_emb, ref_det, ref_lab = np.asarray(train_emb), np.asarray(train_detected, bool), np.asarray(train_labels)
        centroid_source = "real training faces"
    else:
        ref_emb, ref_det, ref_lab = np.asarray(val_emb), val_detected, val_labels
        centroid_source = "real validation faces"
    # centroids from faces with a detected face where an identity has any, else from all of its faces
    use = ref_det.copy()
    for i in range(k):
        if not use[ref_lab == i].any():
            use[ref_lab == i] = True
    centroids = fm.identity_centroids(ref_emb[use], ref_lab[use], k)
    known = ~np.isnan(centroids).any(axis=1)
    gen_ok = known[gen_labels]

    def per_identity(values: np.ndarray, labels: np.ndarray) -> dict[str, float]:
        return {identities[i]: float(values[labels == i].mean()) for i in range(k) if (labels == i).any()}

    def accuracy(emb: np.ndarray, labels: np.ndarray) -> tuple[float, dict[str, float]]:
        ok = known[labels]
        if not ok.any():
            return float("nan"), {}
        dist = np.linalg.norm(emb[ok][:, None, :] - np.where(known[:, None], centroids, np.inf)[None], axis=2)
        hits = (dist.argmin(axis=1) == labels[ok]).astype(np.float64)
        return float(hits.mean()), per_identity(hits, labels[ok])

    gen_emb, val_emb = np.asarray(gen_emb), np.asarray(val_emb)
    gen_acc, gen_acc_per = accuracy(gen_emb, gen_labels)
    val_acc, val_acc_per = accuracy(val_emb, val_labels)

    def fd_per_identity(emb: np.ndarray, labels: np.ndarray) -> dict[str, float]:
        """Fréchet distance of each identity's ``emb`` to its real validation faces (identities with >= 2 of each)."""
        return {
            identities[i]: fm.frechet_distance(emb[labels == i], val_emb[val_labels == i])
            for i in range(k)
            if (labels == i).sum() >= 2 and (val_labels == i).sum() >= 2
        }

    fd_terms = fm.frechet_terms(gen_emb, val_emb) if len(gen_emb) >= 2 and len(val_emb) >= 2 else (math.nan, math.nan)
    fd = sum(fd_terms)
    fd_ref, fd_ref_per_identity = float("nan"), {}
    if train_emb is not None and len(train_emb) >= 2 and len(val_emb) >= 2:
        fd_ref = fm.frechet_distance(train_emb, val_emb)
        if train_labels is not None:
            fd_ref_per_identity = fd_per_identity(np.asarray(train_emb), np.asarray(train_labels))
    fd_ref_half = float("nan")
    if train_emb is not None and len(train_emb) >= 2 and val_half_emb is not None and len(val_half_emb) >= 2:
        fd_ref_half = fm.frechet_distance(train_emb, val_half_emb)
    # diversity of the faces the model makes: detected faces only (a fallback embedding of a non-face is not a face)
    div = fm.diversity(
        gen_emb[gen_detected], gen_labels[gen_detected], val_emb[val_detected], val_labels[val_detected], k
    )
    for i, d in div.items():
        d["n_generated_faces"] = int((gen_detected & (gen_labels == i)).sum())
    ratios = [d["ratio"] for d in div.values() if math.isfinite(d["ratio"])]
    metrics: dict[str, Any] = {
        "n_generated": int(len(gen_emb)),
        "n_real_val_faces": int(len(val_emb)),
        "n_real_train_faces": int(0 if train_emb is None else len(train_emb)),
        "identities": list(identities),
        "detection_ratio": fm.detection_ratio(gen_detected),
        "detection_ratio_per_identity": per_identity(gen_detected.astype(np.float64), gen_labels),
        "embedding_fallbacks": int((~gen_detected).sum()),
        "identity_accuracy": gen_acc,
        "identity_accuracy_per_identity": gen_acc_per,
        "identity_accuracy_chance": 1.0 / max(1, int(known.sum())),
        "identity_centroids_from": centroid_source,
        "identities_without_centroid": [identities[i] for i in range(k) if not known[i]],
        "n_generated_scored_for_identity": int(gen_ok.sum()),
        "frechet_distance": fd,
        "frechet_terms": {"mean": fd_terms[0], "covariance": fd_terms[1]},
        "frechet_distance_per_identity": fd_per_identity(gen_emb, gen_labels),
        "diversity_ratio": float(np.mean(ratios)) if ratios else float("nan"),
        "diversity": {identities[i]: d for i, d in div.items()},
        "reference": {
            "detection_ratio": fm.detection_ratio(val_detected),
            "identity_accuracy": val_acc,
            "identity_accuracy_per_identity": val_acc_per,
            "frechet_distance_train_vs_val": fd_ref,
            "frechet_distance_train_vs_val_per_identity": fd_ref_per_identity,
            "frechet_distance_train_vs_val_half_resolution": fd_ref_half,
        },
    }
    if gen_landmarks is not None and val_landmarks is not None:
        metrics["pose"] = fm.pose_spread(gen_landmarks, val_landmarks)
        # per identity too: the speakers' own spreads differ (Wav2Pix: yaw std 0.07 vs 0.16), so the pooled
        # figure can look right while each speaker varies wrongly
        metrics["pose_per_identity"] = {
            identities[i]: fm.pose_spread(gen_landmarks[gen_labels == i], val_landmarks[val_labels == i])
            for i in range(k)
            if (gen_labels == i).any() and (val_labels == i).any()
        }
    return nan_to_none(metrics)


def evaluate_images(
    gen_images: np.ndarray,
    gen_labels: np.ndarray,
    real_val_images: np.ndarray,
    real_val_labels: np.ndarray,
    identities: Sequence[str],
    real_train_images: np.ndarray | None = None,
    real_train_labels: np.ndarray | None = None,
    analyzer: fm.FaceAnalyzer | None = None,
) -> dict[str, Any]:
    """Face metrics of generated faces against real ones (Wav2Pix evaluation, Duarte et al. 2019).

    Args:
        gen_images: uint8 [G, H, W, 3] generated faces (RGB); gen_labels: int [G] identity of the speech.
        real_val_images: uint8 [V, H, W, 3] distinct real validation faces; real_val_labels: int [V].
        identities: identity names (index = label).
        real_train_images, real_train_labels: distinct real training faces (optional; centroids and the
            real-vs-real Fréchet reference).
        analyzer: a :class:`training.face_metrics.FaceAnalyzer` (default settings when None).

    Returns:
        dict with ``detection_ratio``, ``identity_accuracy``, ``frechet_distance``, ``diversity``,
        ``diversity_ratio``, ``reference`` (real-face figures), counts; JSON-ready.

    Raises:
        ValueError: bad image arrays or empty sets. FaceModelsMissing: dlib models absent.
    """
    analyzer = analyzer or fm.FaceAnalyzer()
    gen = analyzer.analyze(gen_images)
    val = analyzer.analyze(real_val_images)
    train = analyzer.analyze(real_train_images) if real_train_images is not None and len(real_train_images) else None
    return evaluate_embeddings(
        gen.embeddings,
        gen.detected,
        gen_labels,
        val.embeddings,
        val.detected,
        real_val_labels,
        identities,
        None if train is None else train.embeddings,
        None if train is None else train.detected,
        None if train is None else real_train_labels,
        gen_landmarks=gen.landmarks,
        val_landmarks=val.landmarks,
    )


def format_table(metrics: dict[str, Any]) -> str:
    """A plain-text table of the main figures: generated vs real reference."""

    def f(v: Any, digits: int = 3) -> str:
        return "-" if v is None else f"{v:.{digits}f}"

    ref = metrics.get("reference", {})
    rows = [
        ("metric", "generated", "real (reference)"),
        ("face detection ratio", f(metrics.get("detection_ratio")), f(ref.get("detection_ratio"))),
        (
            "identity accuracy (chance " + f(metrics.get("identity_accuracy_chance"), 2) + ")",
            f(metrics.get("identity_accuracy")),
            f(ref.get("identity_accuracy")),
        ),
        (
            "Fréchet distance to real val faces",
            f(metrics.get("frechet_distance"), 4),
            f(ref.get("frechet_distance_train_vs_val"), 4) + " (train vs val)",
        ),
    ]
    terms = metrics.get("frechet_terms") or {}
    if terms:
        rows.append(
            ("  mean term / covariance term", f"{f(terms.get('mean'), 4)} / {f(terms.get('covariance'), 4)}", "")
        )
    half = ref.get("frechet_distance_train_vs_val_half_resolution")
    if half is not None:
        rows.append(("  real val faces at half resolution", "", f(half, 4) + " (train vs val, 2x down and up)"))
    ref_fd = ref.get("frechet_distance_train_vs_val_per_identity") or {}
    for name, v in (metrics.get("frechet_distance_per_identity") or {}).items():
        rows.append((f"  Fréchet distance {name}", f(v, 4), f(ref_fd.get(name), 4) + " (train vs val)"))
    rows.append(("diversity ratio (mean)", f(metrics.get("diversity_ratio")), "1.000"))
    for name, d in (metrics.get("diversity") or {}).items():
        rows.append((f"  diversity {name}", f(d.get("generated")), f(d.get("real"))))
    for name, v in (metrics.get("detection_ratio_per_identity") or {}).items():
        rows.append((f"  detection {name}", f(v), ""))
    pose = metrics.get("pose") or {}
    if pose:
        rows.append(("pose / expression spread (std)", "generated", "real val (generated/real)"))
        for name, p in pose.items():
            rows.append(
                (f"  {name}", f(p.get("generated_std")), f"{f(p.get('real_std'))} ({f(p.get('std_ratio'), 2)})")
            )
        for ident, per in (metrics.get("pose_per_identity") or {}).items():
            for name, p in per.items():
                rows.append(
                    (
                        f"  {name} {ident}",
                        f(p.get("generated_std")),
                        f"{f(p.get('real_std'))} ({f(p.get('std_ratio'), 2)})",
                    )
                )
    fit = metrics.get("train_fit")
    if fit:
        rows.append(
            (
                f"Fréchet distance, training speech ({fit['n_pairs']} pairs)",
                f(fit.get("frechet_distance"), 4),
                "vs real training faces",
            )
        )
    unseen = metrics.get("unseen_voices")
    if unseen:
        rows.append((f"unseen voices detection ({unseen['n_files']} files)", f(unseen.get("detection_ratio")), ""))
    rows.append(
        (
            "generated images",
            str(metrics.get("n_generated")),
            f"{metrics.get('n_real_val_faces')} val / {metrics.get('n_real_train_faces')} train faces",
        )
    )
    w0 = max(len(r[0]) for r in rows)
    w1 = max(len(r[1]) for r in rows)
    lines = [f"{a:<{w0}}  {b:>{w1}}  {c}" for a, b, c in rows]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)


def generate_batched(generate: GenerateFn, audio: np.ndarray, noise: np.ndarray, batch: int = 64) -> np.ndarray:
    """``generate`` over ``audio`` [N, S] / ``noise`` [N, Z] in chunks of ``batch``: uint8 [N, H, W, 3]."""
    return np.concatenate(
        [np.asarray(generate(audio[i : i + batch], noise[i : i + batch])) for i in range(0, len(audio), batch)]
    )


def seed_noise(seed: int, seed_index: int, n: int, noise_dim: int) -> np.ndarray:
    """Noise float32 [n, noise_dim] for seed index ``seed_index``: ``default_rng([seed, seed_index])``."""
    return np.random.default_rng([int(seed), int(seed_index)]).standard_normal((n, noise_dim), dtype=np.float32)


# ---------------------------------------------------------------------- real-face cache
class RealFaces(NamedTuple):
    """What :class:`RealFaceCache` knows of N real faces.

    Attributes:
        embeddings: float32 [N, 128] dlib descriptors. detected: bool [N].
        landmarks: float32 [N, 68, 2] in image pixels, NaN where no face was detected.
    """

    embeddings: np.ndarray
    detected: np.ndarray
    landmarks: np.ndarray


class RealFaceCache:
    """Embeddings, detection flags and landmarks of real faces, cached by image content and analyzer settings.

    One ``.npz`` per (analyzer settings, image size, cache format) under ``cache_dir``; rows keyed by the sha1
    of the decoded image bytes.
    """

    FORMAT = 2  # 2: with landmarks

    def __init__(self, analyzer: fm.FaceAnalyzer, cache_dir: Path | None) -> None:
        self.analyzer = analyzer
        self.cache_dir = cache_dir

    def _path(self, image_size: int) -> Path | None:
        if self.cache_dir is None:
            return None
        key = [self.analyzer.settings(), image_size, self.FORMAT]
        digest = hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()
        return self.cache_dir / f"face-embeddings-{digest[:16]}.npz"

    def analyze(self, images: np.ndarray) -> RealFaces:
        """:class:`RealFaces` of uint8 [N, H, W, 3] images (analysed once, then read from the cache)."""
        images = np.asarray(images)
        keys = [hashlib.sha1(np.ascontiguousarray(im).tobytes()).hexdigest() for im in images]
        path = self._path(images.shape[1]) if len(images) else None
        stored: dict[str, tuple[np.ndarray, bool, np.ndarray]] = {}
        if path is not None and path.is_file():
            try:
                with np.load(path) as z:
                    stored = {
                        str(k): (e, bool(d), m)
                        for k, e, d, m in zip(z["keys"], z["embeddings"], z["detected"], z["landmarks"])
                    }
            except Exception as exc:  # a damaged cache is rebuilt
                log.warning("%s: unreadable face cache (%s); rebuilding", path, exc)
        missing = [i for i, k in enumerate(keys) if k not in stored]
        if missing:
            result = self.analyzer.analyze(images[missing])
            for j, i in enumerate(missing):
                stored[keys[i]] = (result.embeddings[j], bool(result.detected[j]), result.landmarks[j])
            if path is not None:
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = path.with_suffix(".tmp.npz")
                np.savez(
                    tmp,
                    keys=np.asarray(list(stored)),
                    embeddings=np.stack([v[0] for v in stored.values()]),
                    detected=np.asarray([v[1] for v in stored.values()]),
                    landmarks=np.stack([v[2] for v in stored.values()]),
                )
                tmp.replace(path)
        if not keys:
            return RealFaces(np.zeros((0, 128), np.float32), np.zeros(0, bool), np.zeros((0, 68, 2), np.float32))
        return RealFaces(
            np.stack([stored[k][0] for k in keys]).astype(np.float32),
            np.asarray([stored[k][1] for k in keys], bool),
            np.stack([stored[k][2] for k in keys]).astype(np.float32),
        )


# ---------------------------------------------------------------------- sample sheet
def pick_sample_voices(labels: np.ndarray, face_index: np.ndarray, n: int = SAMPLE_VOICES) -> np.ndarray:
    """Up to ``n`` positions in ``labels`` with distinct faces, alternating identities, evenly spread; deterministic."""
    per_label = {int(k): np.flatnonzero(labels == k) for k in np.unique(labels)}
    queues = {}
    for k, items in per_label.items():
        seen: set[int] = set()
        distinct: list[int] = []
        for i in items:
            if int(face_index[i]) not in seen:
                seen.add(int(face_index[i]))
                distinct.append(int(i))
        want = max(1, math.ceil(n / len(per_label)))
        step = max(1, len(distinct) // want)
        queues[k] = distinct[::step]
    chosen: list[int] = []
    while len(chosen) < n and any(queues.values()):
        for k in sorted(queues):
            if queues[k] and len(chosen) < n:
                chosen.append(queues[k].pop(0))
    return np.asarray(chosen, np.int64)


def save_sample_sheet(path: Path, real: np.ndarray, fake: np.ndarray, row_labels: Sequence[str], pad: int = 2) -> None:
    """PNG sheet: per row the real face then the generated ones; a label strip on the left.

    Args:
        real: uint8 [V, H, W, 3]; fake: uint8 [V, K, H, W, 3]; row_labels: V strings (identity names).

    Raises:
        UserError: the file cannot be written.
    """
    import cv2

    v, k, h, w = fake.shape[:4]
    label_w = 120
    sheet = np.full((v * (h + pad) + pad, label_w + (k + 1) * (w + pad) + pad, 3), 255, np.uint8)
    for r in range(v):
        y = pad + r * (h + pad)
        cv2.putText(
            sheet,
            str(row_labels[r])[:16],
            (4, y + h // 2 + 4),
            cv2.FONT_HERSHEY_SIMPLEX,
            0.38,
            (0, 0, 0),
            1,
            cv2.LINE_AA,
        )
        tiles = [real[r], *fake[r]]
        for c, tile in enumerate(tiles):
            x = label_w + pad + c * (w + pad)
            sheet[y : y + h, x : x + w] = tile
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), sheet[:, :, ::-1]):
        raise UserError(f"{path}: cannot write image")


