"""The wav2pix evaluation: faces generated from validation speech, scored as Wav2Pix scores them.

For every validation pair (the face-level split the run recorded in ``split.json``, or for a bundle
:func:`training.data.split_by_face` with its config's ``train.val_fraction`` and ``train.seed``, so validation
faces were never trained on), the model generates ``--seeds`` images from the pair's speech window (centre
window, as in training's validation). They are scored with :mod:`training.face_eval` (detection ratio, identity
accuracy, Fréchet distance of dlib face embeddings with its real-vs-real references, diversity, pose spread) and:

* optionally (``--train-pairs N``), the Fréchet distance of faces generated from training speech to the real
  training faces (:func:`train_fit`): under- or over-fitting;
* optionally, the detection ratio for voices in no training data (``--unseen-voices DIR``, e.g. made by
  ``scripts/make_unseen_voices.py``).

Writes ``metrics.json`` and ``samples.png`` (per validation voice: the real face, then one generated face per
seed) to ``--out`` and prints a table. Deterministic for a given ``--seed``: the noise of seed index ``s`` for
validation pair ``j`` is row ``j`` of ``default_rng([seed, s])``. Real-face embeddings are cached under the data
cache (``$AVGAN_CACHE``), keyed by image content and the analyzer settings.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from engine.errors import UserError
from training import face_metrics as fm
from training.face_eval import (
    GenerateFn,
    RealFaceCache,
    evaluate_embeddings,
    format_table,
    generate_batched,
    nan_to_none,
    pick_sample_voices,
    save_sample_sheet,
    seed_noise,
)

log = logging.getLogger(__name__)


def add_arguments(group: argparse._ArgumentGroup) -> None:
    """``--unseen-voices`` and ``--train-pairs``."""
    group.add_argument(
        "--unseen-voices", type=Path, metavar="DIR",
        help="folder of audio by speakers in no training data (see scripts/make_unseen_voices.py)",
    )  # fmt: skip
    group.add_argument(
        "--train-pairs", type=int, default=0, metavar="N",
        help="also generate from N training pairs (evenly spaced, one seed) and report their Fréchet distance "
        "to the real training faces: the fit to the training data (default 0 = off)",
    )  # fmt: skip


def image_generator(model) -> GenerateFn:
    """``(audio float32 [B, S], noise float32 [B, Z]) -> uint8 [B, H, W, 3]`` of a :class:`training.evaluate.Model`."""
    from engine.generator import to_uint8

    return lambda audio, noise: to_uint8(model.run(audio=audio, noise=noise)["image"])


def train_fit(
    generate: GenerateFn,
    ds: Any,
    train_idx: np.ndarray,
    n_pairs: int,
    seed: int,
    window: int,
    noise_dim: int,
    analyzer: fm.FaceAnalyzer,
    train_emb: np.ndarray,
) -> dict[str, Any]:
    """Fréchet distance of faces generated from training speech to the real training faces.

    Generates one image (noise seed index 1000, so not the validation noise) for each of ``n_pairs`` evenly spaced
    training pairs. Next to the validation figure it tells under- from over-fitting: about as far as the
    validation faces means the generator does not reproduce even the faces it was trained on; much closer means
    it memorised them.

    Returns: ``{"n_pairs", "frechet_distance", "frechet_terms": {"mean", "covariance"}, "detection_ratio"}``.
    """
    idx = train_idx[np.linspace(0, len(train_idx) - 1, min(n_pairs, len(train_idx))).round().astype(np.int64)]
    images = generate_batched(generate, ds.windows(idx, window), seed_noise(seed, 1000, len(idx), noise_dim))
    result = analyzer.analyze(images)
    terms = fm.frechet_terms(result.embeddings, train_emb)
    return {
        "n_pairs": int(len(idx)),
        "frechet_distance": float(sum(terms)),
        "frechet_terms": {"mean": terms[0], "covariance": terms[1]},
        "detection_ratio": fm.detection_ratio(result.detected),
    }


def unseen_voice_images(
    generate: GenerateFn, folder: Path, sample_rate: int, window: int, noise_dim: int, seeds: int, seed: int
) -> tuple[np.ndarray, list[str], list[str]]:
    """Generate ``seeds`` images per audio file under ``folder`` (its loudest window, per-file noise).

    Returns:
        (uint8 [files * seeds, H, W, 3] ordered file-major, relative file names, failure messages).

    Raises:
        UserError: no decodable audio in ``folder``.
    """
    from engine.audio import AudioDecodeError, find_audio_files, load_audio, loudest_window
    from engine.noise import file_noise

    windows, noises, names, failed = [], [], [], []
    for path, rel in find_audio_files(folder):
        try:
            audio = load_audio(path, sample_rate)
        except (AudioDecodeError, OSError) as exc:
            log.warning("unseen voices: skipping %s: %s", path, exc)
            failed.append(str(exc))
            continue
        w = loudest_window(audio, window)
        for s in range(seeds):
            windows.append(w)
            noises.append(file_noise(seed * 1000003 + s, rel, noise_dim))
        names.append(rel.as_posix())
    if not windows:
        raise UserError(f"{folder}: no decodable audio for --unseen-voices")
    return generate_batched(generate, np.stack(windows), np.stack(noises)), names, failed


def validation_split(model, ds) -> tuple[np.ndarray, np.ndarray, str]:
    """(train pair indices, validation pair indices, where the split came from): a run's recorded split
    (``split.json``'s validation face hashes) wins; otherwise the config's face-level split."""
    from training.data import split_by_face

    cfg = model.cfg
    train_idx, val_idx = split_by_face(ds, cfg.train.val_fraction, cfg.train.seed)
    hashes = (model.split or {}).get("val_face_hashes")
    if hashes is None:
        return train_idx, val_idx, "recomputed from the config"
    is_val = np.isin(np.asarray(ds.face_hashes)[ds.face_index], list(hashes))
    recorded = np.flatnonzero(is_val)
    if not np.array_equal(recorded, val_idx):
        log.warning("the run's split.json differs from the recomputed split; using split.json")
    return np.flatnonzero(~is_val), recorded, "split.json"


def evaluate(model, args: argparse.Namespace) -> dict[str, Any]:
    """The face evaluation of a :class:`training.evaluate.Model` (see the module docstring); returns the figures.

    Raises:
        UserError: the data's faces are of another size, there are no validation pairs, or bad flags.
    """
    from datastore.cache import default_cache_dir
    from training.data import load_dataset

    n_train_pairs = int(getattr(args, "train_pairs", 0) or 0)
    if n_train_pairs < 0:
        raise UserError(f"--train-pairs: expected >= 0, got {n_train_pairs}")
    started = time.perf_counter()
    window, noise_dim = int(model.inputs["audio"][1]), int(model.inputs["noise"][1])
    image_size = int(model.outputs["image"][2])
    ds = load_dataset(args.data, model.sample_rate, image_size)
    train_idx, val_idx, split_from = validation_split(model, ds)
    if len(val_idx) == 0:
        raise UserError(
            f"no validation pairs (train.val_fraction={model.cfg.train.val_fraction}); evaluate needs the face-level "
            "split"
        )
    val_faces = np.unique(ds.face_index[val_idx])  # all validation faces, even with --max-pairs
    train_faces = np.unique(ds.face_index[train_idx])
    n_val_total = int(len(val_idx))
    if args.max_pairs and args.max_pairs < len(val_idx):
        val_idx = val_idx[np.linspace(0, len(val_idx) - 1, args.max_pairs).round().astype(np.int64)]
    unknown = sorted(set(ds.identities) - set(model.labels))
    if unknown:
        log.warning("identities not in the model's training set: %s", ", ".join(unknown))
    generate = image_generator(model)

    # generate: seeds x val pairs (seed-major)
    audio = ds.windows(val_idx, window)
    fakes = np.stack(
        [generate_batched(generate, audio, seed_noise(args.seed, s, len(val_idx), noise_dim)) for s in range(args.seeds)]
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
        gen.embeddings, gen.detected, gen_labels, val_emb, val_det, face_label[val_faces], ds.identities,
        train_emb, train_det, face_label[train_faces], val_half_emb, gen.landmarks, val_landmarks,
    )  # fmt: skip
    if n_train_pairs and len(train_idx):
        metrics["train_fit"] = train_fit(
            generate, ds, train_idx, n_train_pairs, args.seed, window, noise_dim, analyzer, train_emb
        )
    if getattr(args, "unseen_voices", None):
        images, names, failed = unseen_voice_images(
            generate, Path(args.unseen_voices), model.sample_rate, window, noise_dim, args.seeds, args.seed
        )
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
            "model": {"target": str(args.target), "kind": model.kind, **{k: v for k, v in model.info.items()
                                                                         if k != "command"}},  # fmt: skip
            "data": [str(d) for d in args.data],
            "split": {
                "val_fraction": model.cfg.train.val_fraction,
                "seed": model.cfg.train.seed,
                "from": split_from,
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
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    metrics = nan_to_none(metrics)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2, ensure_ascii=False) + "\n")
    rows = pick_sample_voices(ds.labels[val_idx], ds.face_index[val_idx])
    save_sample_sheet(
        out / "samples.png",
        ds.images(val_idx[rows]),
        fakes[:, rows].transpose(1, 0, 2, 3, 4),
        [ds.identities[ds.labels[val_idx[r]]] for r in rows],
    )
    print(format_table(metrics))
    print(f"wrote {out / 'metrics.json'} and {out / 'samples.png'}")
    return metrics
