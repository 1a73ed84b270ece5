"""``run.py evaluate``: face-based evaluation of a model bundle or a run folder.

For every validation pair (the face-level split of :func:`training.data.split_by_face` with the
model's own ``train.val_fraction`` and ``train.seed``, so validation faces were never trained on),
the model generates ``--seeds`` images from the pair's speech window (centre window, as in
training's validation). The images are scored with :mod:`training.face_metrics` (after Duarte et
al., "Wav2Pix", ICASSP 2019, Sec. 4) and compared with the same figures for real faces:

* face (landmark) detection ratio — generated vs real validation faces;
* identity accuracy — nearest identity centroid (centroids from real *training* faces);
* Fréchet distance of face embeddings — generated vs real validation faces; reference: real
  training vs real validation faces (the floor a perfect model could reach at these sample sizes),
  and real training vs real validation faces at half their linear resolution
  (:func:`training.face_metrics.reduce_resolution`: the scale of a mild loss of detail);
* diversity ratio per identity — mean pairwise embedding distance, generated / real validation
  (faces with a detected face only; NaN when fewer than 2);
* optionally (``--train-pairs N``), the Fréchet distance of faces generated from training speech to the
  real training faces (:func:`train_fit`): under- or over-fitting;
* optionally, the detection ratio for voices in no training data (``--unseen-voices DIR``, e.g.
  made by ``scripts/make_unseen_voices.py``).

Writes ``metrics.json`` and ``samples.png`` (per validation voice: the real face, then one generated
face per seed) to ``--out`` and prints a table. Deterministic for a given ``--seed``: the noise of
seed index ``s`` for validation pair ``j`` is row ``j`` of ``default_rng([seed, s])``. Real-face
embeddings are cached under the data cache (``$AVGAN_CACHE``), keyed by image content and the
analyzer settings.

The core is :func:`evaluate_images` / :func:`evaluate_embeddings`, usable without any model.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from engine.errors import UserError
from training import face_metrics as fm
from training.config import POSE_PRIORS

log = logging.getLogger(__name__)

SAMPLE_VOICES = 8
GenerateFn = Callable[[np.ndarray, np.ndarray], np.ndarray]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``run.py evaluate``."""
    parser.add_argument(
        "target",
        metavar="BUNDLE_OR_RUN",
        type=Path,
        nargs="?",
        help="a model bundle or a training run folder (optional with --ratings)",
    )
    parser.add_argument(
        "--data",
        action="append",
        metavar="DIR",
        help="dataset folder the model was trained on (repeat for several; required with BUNDLE_OR_RUN)",
    )
    parser.add_argument(
        "--ratings",
        action="append",
        type=Path,
        metavar="RATINGS.jsonl",
        help="rating-station file(s) (run.py rate): mean opinion score with a 95 %% CI per model (repeatable)",
    )
    parser.add_argument(
        "--json",
        type=Path,
        metavar="OUT",
        help="with --ratings: write the opinion-score report here (default out/eval/ratings.json)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        metavar="EVAL_DIR",
        help="output folder (default: RUN/eval for a run, out/eval/<bundle name> for a bundle)",
    )
    parser.add_argument("--seeds", type=int, default=4, help="generated images per validation pair (default 4)")
    parser.add_argument("--seed", type=int, default=0, help="base noise seed (default 0)")
    parser.add_argument(
        "--unseen-voices",
        type=Path,
        metavar="DIR",
        help="folder of audio by speakers in no training data (see scripts/make_unseen_voices.py)",
    )
    parser.add_argument(
        "--max-pairs",
        type=int,
        default=0,
        help="evaluate at most this many validation pairs, evenly spaced (default 0 = all)",
    )
    parser.add_argument(
        "--train-pairs",
        type=int,
        default=0,
        metavar="N",
        help="also generate from N training pairs (evenly spaced, one seed) and report their Fréchet distance "
        "to the real training faces: the fit to the training data (default 0 = off)",
    )
    parser.add_argument("--backend", default="auto", help="engine backend for a bundle (default auto)")
    parser.add_argument("--device", default="auto", help="torch device for a run folder: auto, cpu, cuda")
    parser.add_argument("--checkpoint", type=Path, help="for a run folder: this checkpoint instead of the newest")
    parser.add_argument(
        "--generator",
        choices=("ema", "raw"),
        default="ema",
        help="for a run folder: the moving-average weights (default) or the trained weights",
    )
    parser.add_argument(
        "--pose-prior",
        choices=POSE_PRIORS,
        default="quantile",
        help="for a run folder whose generator reads a pose code: draw codes from the training faces' "
        "(neighbours: the code of a training pair whose speech is near the voice's; quantile, the default, as "
        "export does: marginals; copula: with correlations; speaker: per training speaker, weighted by the speech "
        "identity head) or standard normal (normal)",
    )


# ---------------------------------------------------------------------- metric core
def _nan_to_none(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _nan_to_none(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_nan_to_none(v) for v in value]
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
    return _nan_to_none(metrics)


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


# ---------------------------------------------------------------------- model wiring
@dataclass
class ImageSource:
    """A model to evaluate: ``generate(audio float32 [B, S], noise float32 [B, Z]) -> uint8 [B, H, W, 3]``."""

    name: str
    kind: str  # "bundle" | "run"
    generate: GenerateFn
    sample_rate: int
    window_samples: int
    noise_dim: int
    image_size: int
    identities: list[str]
    val_fraction: float
    split_seed: int
    info: dict[str, Any] = field(default_factory=dict)
    val_face_hashes: set[str] | None = None  # a run's recorded split (split.json), used when present


def open_source(
    target: Path,
    backend: str = "auto",
    device: str = "auto",
    checkpoint: Path | None = None,
    generator: str = "ema",
    pose_prior: str = "quantile",
) -> ImageSource:
    """Open a model bundle (``bundle.json`` present; via :class:`engine.generator.Generator`) or a run
    folder (via :func:`training.trainer.load_run`; ``generator``: "ema" or "raw" weights; ``pose_prior``:
    how a pose-code generator's noise becomes its code, as in the bundle ``export`` would write, see
    :func:`training.trainer.pose_prior_for_run`; a bundle carries its own).

    Raises:
        UserError: neither a bundle nor a run folder, or it cannot be loaded.
    """
    target = Path(target)
    if not target.exists():
        raise UserError(f"{target}: no such bundle or run folder")
    if (target / "bundle.json").is_file():
        from engine.generator import Generator
        from training.config import Config, load_config

        gen = Generator(target, backend=backend)
        cfg = load_config(target / "config.yaml") if (target / "config.yaml").is_file() else Config()
        return ImageSource(
            name=target.name,
            kind="bundle",
            generate=lambda a, n: gen(a, noise=n),
            sample_rate=gen.sample_rate,
            window_samples=gen.window_samples,
            noise_dim=gen.noise_dim,
            image_size=gen.image_size,
            identities=list(gen.identities),
            val_fraction=cfg.train.val_fraction,
            split_seed=cfg.train.seed,
            info={
                "bundle": str(target),
                "backend": gen.backend_name,
                "training": gen.bundle.manifest.get("training", {}),
            },
        )
    import torch

    from training.models.wav2pix import Wav2PixInference
    from training.trainer import load_run, pose_prior_for_run, to_uint8

    net, cfg, identities, info = load_run(target, checkpoint, generator)
    prior = pose_prior_for_run(target, cfg, pose_prior, net)
    info = {**info, "pose_prior": "normal" if prior is None else prior.kind}
    dev = torch.device(
        "cuda" if device == "auto" and torch.cuda.is_available() else ("cpu" if device == "auto" else device)
    )
    net = net.to(dev).eval()
    model = net if prior is None else Wav2PixInference(net, 1.0, prior.to(dev)).eval()

    def generate(audio: np.ndarray, noise: np.ndarray) -> np.ndarray:
        out = []
        with torch.inference_mode():
            for i in range(0, len(audio), 64):
                a = torch.from_numpy(np.ascontiguousarray(audio[i : i + 64], np.float32)).to(dev)
                n = torch.from_numpy(np.ascontiguousarray(noise[i : i + 64], np.float32)).to(dev)
                out.append(to_uint8(model(a, n)))
        return np.concatenate(out)

    val_hashes = None
    split_file = target / "split.json"
    if split_file.is_file():
        try:
            val_hashes = set(json.loads(split_file.read_text())["val_face_hashes"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("%s: unreadable (%s); recomputing the split from the config", split_file, exc)
    return ImageSource(
        name=target.name,
        kind="run",
        val_face_hashes=val_hashes,
        generate=generate,
        sample_rate=cfg.audio.sample_rate,
        window_samples=cfg.audio.window_samples,
        noise_dim=cfg.model.noise_dim,
        image_size=cfg.model.image_size,
        identities=list(identities),
        val_fraction=cfg.train.val_fraction,
        split_seed=cfg.train.seed,
        info={**info, "device": str(dev)},
    )


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


# ---------------------------------------------------------------------- command
def train_fit(
    source: ImageSource,
    ds: Any,
    train_idx: np.ndarray,
    n_pairs: int,
    seed: int,
    analyzer: fm.FaceAnalyzer,
    train_emb: np.ndarray,
) -> dict[str, Any]:
    """Fréchet distance of faces generated from training speech to the real training faces.

    Generates one image (noise seed index 1000, so not the validation noise) for each of ``n_pairs``
    evenly spaced training pairs. Next to the validation figure it tells under- from over-fitting:
    about as far as the validation faces means the generator does not reproduce even the faces it was
    trained on; much closer means it memorised them.

    Returns: ``{"n_pairs", "frechet_distance", "frechet_terms": {"mean", "covariance"}, "detection_ratio"}``.
    """
    idx = train_idx[np.linspace(0, len(train_idx) - 1, min(n_pairs, len(train_idx))).round().astype(np.int64)]
    audio = ds.windows(idx, source.window_samples)
    images = generate_batched(source.generate, audio, seed_noise(seed, 1000, len(idx), source.noise_dim))
    result = analyzer.analyze(images)
    terms = fm.frechet_terms(result.embeddings, train_emb)
    return {
        "n_pairs": int(len(idx)),
        "frechet_distance": float(sum(terms)),
        "frechet_terms": {"mean": terms[0], "covariance": terms[1]},
        "detection_ratio": fm.detection_ratio(result.detected),
    }


def _default_out(target: Path, kind: str) -> Path:
    return target / "eval" if kind == "run" else Path("out") / "eval" / target.name


def unseen_voice_images(
    source: ImageSource, folder: Path, seeds: int, seed: int
) -> tuple[np.ndarray, list[str], list[str]]:
    """Generate ``seeds`` images per audio file under ``folder``.

    Returns:
        (uint8 [files * seeds, H, W, 3] ordered file-major, relative file names, failure messages).
    """
    from engine.audio import AudioDecodeError, find_audio_files, load_audio, loudest_window
    from engine.noise import file_noise

    windows, noises, names, failed = [], [], [], []
    for path, rel in find_audio_files(folder):
        try:
            audio = load_audio(path, source.sample_rate)
        except (AudioDecodeError, OSError) as exc:
            log.warning("unseen voices: skipping %s: %s", path, exc)
            failed.append(str(exc))
            continue
        w = loudest_window(audio, source.window_samples)
        for s in range(seeds):
            windows.append(w)
            noises.append(file_noise(seed * 1000003 + s, rel, source.noise_dim))
        names.append(rel.as_posix())
    if not windows:
        raise UserError(f"{folder}: no decodable audio for --unseen-voices")
    images = generate_batched(source.generate, np.stack(windows), np.stack(noises))
    return images, names, failed


def ratings_main(paths: list[Path], json_out: Path | None) -> int:
    """``evaluate --ratings``: mean opinion score per model (:mod:`training.ratings`); prints a table, writes JSON."""
    from training import ratings

    data = ratings.report(paths)
    out = json_out or Path("out") / "eval" / "ratings.json"
    ratings.write_json(out, data)
    print(ratings.format_table(data["models"], data["confidence"]))
    invalid = f"; {data['n_invalid_lines']} invalid lines skipped" if data["n_invalid_lines"] else ""
    print(f"{data['n_ratings']} ratings from {len(paths)} file(s){invalid}; wrote {out}")
    return 0


def main(args: argparse.Namespace) -> int:
    """Run ``evaluate``; returns 0. With ``--ratings`` (and no BUNDLE_OR_RUN) only the opinion-score report."""
    ratings_files = getattr(args, "ratings", None)
    if args.target is None:
        if ratings_files:
            return ratings_main(ratings_files, getattr(args, "json", None))
        raise UserError("evaluate: give a BUNDLE_OR_RUN (with --data DIR) or --ratings RATINGS.jsonl")
    if not args.data:
        raise UserError(f"evaluate {args.target}: --data DIR is required (the dataset the model was trained on)")
    if ratings_files:
        ratings_main(ratings_files, getattr(args, "json", None))
    return _evaluate_model(args)


def _evaluate_model(args: argparse.Namespace) -> int:
    """The face-based evaluation of a bundle or run folder (see the module docstring); returns 0."""
    from training.data import load_dataset, split_by_face
    from training.data.dataset import default_cache_dir

    if args.seeds < 1:
        raise UserError(f"--seeds: expected >= 1, got {args.seeds}")
    n_train_pairs = int(getattr(args, "train_pairs", 0) or 0)
    if n_train_pairs < 0:
        raise UserError(f"--train-pairs: expected >= 0, got {n_train_pairs}")
    started = time.perf_counter()
    source = open_source(
        args.target,
        args.backend,
        args.device,
        args.checkpoint,
        getattr(args, "generator", "ema"),
        getattr(args, "pose_prior", "quantile"),
    )
    out = Path(args.out) if args.out else _default_out(Path(args.target), source.kind)
    ds = load_dataset(args.data, source.sample_rate, source.image_size)
    if ds.faces.shape[1] != source.image_size:
        raise UserError(f"dataset images are {ds.faces.shape[1]} px, model makes {source.image_size} px")
    train_idx, val_idx = split_by_face(ds, source.val_fraction, source.split_seed)
    if source.val_face_hashes is not None:  # the run's recorded split wins
        is_val = np.isin(np.asarray(ds.face_hashes)[ds.face_index], list(source.val_face_hashes))
        recorded = np.flatnonzero(is_val)
        if not np.array_equal(recorded, val_idx):
            log.warning("the run's split.json differs from the recomputed split; using split.json")
        train_idx, val_idx = np.flatnonzero(~is_val), recorded
    if len(val_idx) == 0:
        raise UserError(
            f"no validation pairs (train.val_fraction={source.val_fraction}); evaluate needs the face-level split"
        )
    val_faces = np.unique(ds.face_index[val_idx])  # all validation faces, even with --max-pairs
    train_faces = np.unique(ds.face_index[train_idx])
    n_val_total = int(len(val_idx))
    if args.max_pairs and args.max_pairs < len(val_idx):
        val_idx = val_idx[np.linspace(0, len(val_idx) - 1, args.max_pairs).round().astype(np.int64)]
    unknown = sorted(set(ds.identities) - set(source.identities))
    if unknown:
        log.warning("identities not in the model's training set: %s", ", ".join(unknown))

    # generate: seeds x val pairs (seed-major)
    audio = ds.windows(val_idx, source.window_samples)
    fakes = np.stack(
        [
            generate_batched(source.generate, audio, seed_noise(args.seed, s, len(val_idx), source.noise_dim))
            for s in range(args.seeds)
        ]
    )  # [seeds, P, H, W, 3]
    gen_images = fakes.reshape(-1, *fakes.shape[2:])
    gen_labels = np.tile(ds.labels[val_idx], args.seeds)
    gen_time = time.perf_counter() - started

    analyzer = fm.FaceAnalyzer()
    log.info("scoring %d generated images with dlib (~0.1 s each on CPU)", len(gen_images))
    gen = analyzer.analyze(gen_images)
    cache = RealFaceCache(analyzer, default_cache_dir())
    face_label = ds.face_labels
    val_emb, val_det, val_landmarks = cache.analyze(ds.faces[val_faces])
    train_emb, train_det, _ = cache.analyze(ds.faces[train_faces])
    val_half_emb = cache.analyze(fm.reduce_resolution(ds.faces[val_faces], 2)).embeddings
    metrics = evaluate_embeddings(
        gen.embeddings,
        gen.detected,
        gen_labels,
        val_emb,
        val_det,
        face_label[val_faces],
        ds.identities,
        train_emb,
        train_det,
        face_label[train_faces],
        val_half_emb,
        gen.landmarks,
        val_landmarks,
    )
    if n_train_pairs and len(train_idx):
        metrics["train_fit"] = train_fit(source, ds, train_idx, n_train_pairs, args.seed, analyzer, train_emb)
    if args.unseen_voices:
        images, names, failed = unseen_voice_images(source, Path(args.unseen_voices), args.seeds, args.seed)
        det = analyzer.analyze(images, embed=False).detected
        metrics["unseen_voices"] = {
            "folder": str(args.unseen_voices),
            "n_files": len(names),
            "n_images": int(len(images)),
            "detection_ratio": fm.detection_ratio(det),
            "failed": failed,
            "per_file": {n: float(det[i * args.seeds : (i + 1) * args.seeds].mean()) for i, n in enumerate(names)},
        }
    metrics.update(
        {
            "model": {
                "target": str(args.target),
                "kind": source.kind,
                **{k: v for k, v in source.info.items() if k != "command"},
            },
            "data": [str(d) for d in args.data],
            "split": {
                "val_fraction": source.val_fraction,
                "seed": source.split_seed,
                "from": "split.json" if source.val_face_hashes is not None else "recomputed from the config",
                "n_val_pairs": n_val_total,
                "n_val_pairs_evaluated": int(len(val_idx)),
            },
            "seeds": args.seeds,
            "seed": args.seed,
            "analyzer": analyzer.settings(),
            "generation_seconds": round(gen_time, 2),
            "total_seconds": round(time.perf_counter() - started, 2),
        }
    )
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(_nan_to_none(metrics), indent=2, ensure_ascii=False) + "\n")
    rows = pick_sample_voices(ds.labels[val_idx], ds.face_index[val_idx])
    save_sample_sheet(
        out / "samples.png",
        ds.images(val_idx[rows]),
        fakes[:, rows].transpose(1, 0, 2, 3, 4),
        [ds.identities[ds.labels[val_idx[r]]] for r in rows],
    )
    print(format_table(metrics))
    print(f"wrote {out / 'metrics.json'} and {out / 'samples.png'}")
    return 0
