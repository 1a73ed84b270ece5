"""The avgan evaluation (``run.py evaluate``): does the model make images and sounds, and do they belong together?

**faces** (``data.kind: faces``), on the validation pairs (the run's recorded face-level split, or
:func:`training.data.split_by_face` with the config's ``train.val_fraction`` / ``train.seed`` for a bundle):

* faces, as the wav2pix evaluation scores them (:mod:`training.face_eval`: dlib detection ratio, identity accuracy
  against identity centroids of the real training faces, Fréchet distance of face embeddings with its
  real-vs-real references);
* voices: Resemblyzer speaker embeddings (:mod:`.voices`) of the generated sounds; speaker identity = nearest
  real-speaker centroid (cosine; centroids from real *training* clips), its accuracy; the share of sounds in which
  webrtcvad finds speech; the Fréchet distance of the embeddings, generated vs real validation clips, next to real
  training vs real validation clips;
* **agreement**: the share of samples whose face identity (dlib, nearest face centroid) and voice identity
  (Resemblyzer, nearest voice centroid) are the same person (``agreement``), and the share where both are the
  identity of the condition (``agreement_correct``, conditioned models), next to ``agreement_if_independent``: what
  the face and voice identities' frequencies alone give (a model whose every face and voice reads as one person
  agrees fully without anything belonging together).

Conditioned models generate ``--seeds`` samples per validation pair from its speech (noise of seed index ``s`` =
``default_rng([seed, s])`` rows); unconditional ones the same number from noise alone.

**digits** (``data.kind: digits``): ``--samples`` unconditional samples (noise ``default_rng([seed, 0])``); a
drawing classifier and a spoken-digit classifier (:mod:`.digits`, trained on the real training split and scored on
the held-out drawings and FSDD test takes, the reference) read each image and sound: the share classified with
confidence >= 0.9, and the share whose image and sound name the same digit (chance 0.1 for uniform digits; next to
it ``agreement_if_independent``, what the two digit frequencies alone give). A listener trained on nothing here,
CMU PocketSphinx with a grammar of the ten digit words (:func:`.digits.recognise_digits`), gives the share of
sounds in which it hears a digit word at all (``sound_recognised``) and the share where that word is the image's
digit (``agreement_recogniser``), next to the same on real held-out pairs. The drawings' Fréchet distance
(``image_frechet_distance``) in the drawing classifier's 128-d penultimate features, to the held-out drawings,
next to that of training drawings: shapes the classifier names but no one draws show there; the same for the sounds
(``sound_frechet_distance``, the spoken-digit classifier's 512-d penultimate features, to the held-out recordings,
next to training recordings): it rises when all the sounds of a digit are alike. For models with a
latent code (``model.latent_code``), the share of images and of sounds classified as their noise's code
(``image_names_code``, ``sound_names_code``): which stream misses when the two disagree.

Writes ``metrics.json``, ``samples.png`` (faces: per row the real face, then one generated face per seed; digits:
generated drawings captioned with both classifiers' digits), ``samples-generated.png`` (faces: the generated ones
only), ``spectrograms.png`` (digits: per digit, real held-out recordings next to generated sounds; faces: per sheet
row, the row's real clip next to the generated voices) and
``samples/*.wav`` (the sheet's sounds; faces: ``rowJ-NAME-real.wav`` is the row's real clip) to ``--out``
and prints a table.
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
from training.face_eval import nan_to_none, pick_sample_voices, save_sample_sheet, seed_noise

log = logging.getLogger(__name__)

CONFIDENT = 0.9
"""A classifier probability at or above this counts as a confident reading."""


def add_arguments(group: argparse._ArgumentGroup) -> None:
    """``--samples`` and ``--voice-train-clips``."""
    group.add_argument(
        "--samples", type=int, default=1000, metavar="N",
        help="avgan digits: unconditional samples to generate and classify (default 1000)",
    )  # fmt: skip
    group.add_argument(
        "--exclude-selection", type=str, default="", metavar="N[,N...]",
        help="avgan faces: leave out the validation pairs that --max-pairs N picks, for each N (the pairs a checkpoint "
        "was selected on), so the figures come from validation pairs the selection never saw",
    )  # fmt: skip
    group.add_argument(
        "--voice-train-clips", type=int, default=600, metavar="N",
        help="avgan faces: real training clips (evenly spaced) whose Resemblyzer embeddings give the speaker "
        "centroids and the Fréchet reference (default 600; cached)",
    )  # fmt: skip


def selection_pairs(n_val: int, spec: str) -> np.ndarray:
    """Positions (int64, sorted, unique) among ``n_val`` validation pairs that ``--max-pairs N`` picks for each N in
    ``spec`` ("60,200"; "" = none): evenly spaced, as :func:`evaluate_faces` picks them.

    Raises:
        UserError: ``spec`` is not a comma-separated list of positive integers.
    """
    if not spec:
        return np.zeros(0, np.int64)
    try:
        counts = [int(t) for t in spec.split(",")]
    except ValueError:
        counts = [0]
    if any(c <= 0 for c in counts):
        raise UserError(f"--exclude-selection {spec!r}: expected positive pair counts such as 60,200")
    return np.unique(np.concatenate([evenly_spaced(n_val, c) for c in counts]))


def evenly_spaced(n: int, k: int) -> np.ndarray:
    """int64 positions of ``k`` items spread evenly over ``n`` (first and last included; all ``n`` when k >= n):
    the pairs ``--max-pairs k`` evaluates."""
    return np.linspace(0, n - 1, k).round().astype(np.int64) if k < n else np.arange(n, dtype=np.int64)


def run_batched(model, n: int, batch: int = 64, **inputs: np.ndarray) -> dict[str, np.ndarray]:
    """``model.run`` over ``n`` items in chunks of ``batch``; float32 outputs by name."""
    parts = [model.run(**{k: v[i : i + batch] for k, v in inputs.items()}) for i in range(0, n, batch)]
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def save_image(path: Path, image: np.ndarray) -> None:
    """PNG of uint8 [H, W, 3] RGB."""
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path)


def write_wav(path: Path, sound: np.ndarray, rate: int) -> None:
    """16-bit PCM WAV of float samples [N] in [-1, 1]."""
    import soundfile as sf

    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), np.clip(sound, -1, 1), rate, subtype="PCM_16")


def evaluate(model, args: argparse.Namespace) -> dict[str, Any]:
    """Evaluate a :class:`training.families.contract.Model` of the avgan family; returns the figures.

    Raises:
        UserError: bad data or arguments, no validation items.
    """
    if "sound" not in model.outputs or "image" not in model.outputs:
        raise UserError(f"{model.name}: an avgan model has image and sound outputs, this one {list(model.outputs)}")
    kind = model.cfg.data.kind
    started = time.perf_counter()
    metrics = evaluate_digits(model, args) if kind == "digits" else evaluate_faces(model, args)
    metrics["model"] = {"target": str(args.target), "kind": model.kind,
                        **{k: v for k, v in model.info.items() if k != "command"}}  # fmt: skip
    metrics["data"] = [str(d) for d in args.data]
    metrics["total_seconds"] = round(time.perf_counter() - started, 1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    metrics = nan_to_none(json.loads(json.dumps(metrics, default=float)))
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2, ensure_ascii=False) + "\n")
    print(format_table(metrics))
    print(f"wrote {out / 'metrics.json'}, {out / 'samples.png'} and {out / 'samples'}/*.wav")
    return metrics


# ----------------------------------------------------------------------------------------------- faces
def face_split(model, pairs) -> tuple[np.ndarray, np.ndarray, str]:
    """(train pairs, validation pairs, source): the run's recorded validation faces, else the config's split."""
    from training.data import split_by_face

    cfg = model.cfg
    train_idx, val_idx = split_by_face(pairs, cfg.train.val_fraction, cfg.train.seed)
    hashes = (model.split or {}).get("val_face_hashes")
    if hashes is None:
        return train_idx, val_idx, "recomputed from the config"
    is_val = np.isin(np.asarray(pairs.face_hashes)[pairs.face_index], list(hashes))
    return np.flatnonzero(~is_val), np.flatnonzero(is_val), "split.json"


def _frechet_terms(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """:func:`training.face_metrics.frechet_terms` (mean term, covariance term) of feature sets float [N, F] and
    [M, F], or NaNs (with a warning) where it raises ``ValueError`` (fewer than 2 rows, non-finite values)."""
    from training import face_metrics as fm

    try:
        return fm.frechet_terms(a, b)
    except ValueError as exc:
        log.warning("Fréchet distance not defined here (%d and %d samples of %d-d): %s", len(a), len(b),
                    a.shape[1], exc)  # fmt: skip
        return float("nan"), float("nan")


def independent_agreement(a: np.ndarray, b: np.ndarray, k: int) -> float:
    """The agreement two label sequences (int [G] each, labels < k) would have by chance alone, given how often each
    names each label: ``sum_i P(a = i) P(b = i)``. A model whose outputs all read as one class scores high on
    agreement without its image and sound belonging together; this is the figure to read agreement against."""
    if len(a) == 0:
        return float("nan")
    pa, pb = np.bincount(a, minlength=k) / len(a), np.bincount(b, minlength=k) / len(b)
    return float((pa * pb).sum())


def agreement_figures(face_pred: np.ndarray, voice_pred: np.ndarray, labels: np.ndarray | None) -> dict[str, Any]:
    """Agreement of per-sample face and voice identities (int [G] each; ``labels`` int [G] the condition's
    identity, or None): ``agreement`` = share with face == voice, ``agreement_correct`` = share with both ==
    label (None without labels)."""
    agree = face_pred == voice_pred
    k = int(max(face_pred.max(initial=0), voice_pred.max(initial=0))) + 1
    out: dict[str, Any] = {"agreement": float(agree.mean()) if len(agree) else float("nan"), "agreement_correct": None,
                           "agreement_if_independent": independent_agreement(face_pred, voice_pred, k)}
    if labels is not None and len(agree):
        out["agreement_correct"] = float((agree & (face_pred == labels)).mean())
    return out


def face_identities(gen_emb: np.ndarray, train_emb: np.ndarray, train_det: np.ndarray, train_labels: np.ndarray,
                    k: int) -> np.ndarray:
    """int64 [G]: nearest identity centroid (Euclidean, dlib face embeddings) of each generated face; centroids
    from the detected real training faces (all of an identity's faces where none is detected)."""
    from training import face_metrics as fm

    use = train_det.copy()
    for i in range(k):
        if not use[train_labels == i].any():
            use[train_labels == i] = True
    cent = fm.identity_centroids(train_emb[use], train_labels[use], k)
    dist = np.linalg.norm(gen_emb[:, None, :] - np.where(np.isnan(cent), np.inf, cent)[None], axis=2)
    return dist.argmin(axis=1).astype(np.int64)


def evaluate_faces(model, args: argparse.Namespace) -> dict[str, Any]:
    """The faces evaluation (see the module docstring)."""
    from datastore.cache import default_cache_dir
    from engine.generator import to_uint8
    from training import face_metrics as fm
    from training.data import load_dataset
    from training.face_eval import RealFaceCache, evaluate_embeddings
    from training.families.avgan import voices

    cfg, rate = model.cfg, model.sample_rate
    window = int(model.outputs["sound"][1])
    size = int(model.outputs["image"][2])
    conditional = "audio" in model.inputs
    noise_dim = int(model.inputs["noise"][1])
    pairs = load_dataset(args.data, rate, size)
    train_idx, val_idx, split_from = face_split(model, pairs)
    if len(val_idx) == 0:
        raise UserError(f"no validation pairs (train.val_fraction={cfg.train.val_fraction})")
    n_val_total = len(val_idx)
    excluded = selection_pairs(n_val_total, getattr(args, "exclude_selection", ""))
    val_idx = np.delete(val_idx, excluded)
    if len(val_idx) == 0:
        raise UserError(f"--exclude-selection {args.exclude_selection}: no validation pairs left of {n_val_total}")
    if args.max_pairs:
        val_idx = val_idx[evenly_spaced(len(val_idx), args.max_pairs)]
    k = len(pairs.identities)
    labels = pairs.labels[val_idx]
    t0 = time.perf_counter()
    images, sounds = [], []
    for s in range(args.seeds):
        noise = seed_noise(args.seed, s, len(val_idx), noise_dim)
        inputs = {"noise": noise}
        if conditional:
            inputs["audio"] = pairs.windows(val_idx, int(model.inputs["audio"][1]))
        out = run_batched(model, len(val_idx), **inputs)
        images.append(to_uint8(out["image"]))
        sounds.append(out["sound"])
    fakes = np.stack(images)  # [seeds, P, H, W, 3]
    gen_images = fakes.reshape(-1, *fakes.shape[2:])
    gen_sounds = np.concatenate(sounds)
    gen_labels = np.tile(labels, args.seeds)
    gen_seconds = time.perf_counter() - t0

    # faces
    analyzer = fm.FaceAnalyzer()
    log.info("scoring %d generated faces with dlib", len(gen_images))
    gen = analyzer.analyze(gen_images)
    cache = RealFaceCache(analyzer, default_cache_dir())
    val_faces, train_faces = np.unique(pairs.face_index[val_idx]), np.unique(pairs.face_index[train_idx])
    face_label = pairs.face_labels
    val_r, train_r = cache.analyze(pairs.faces[val_faces]), cache.analyze(pairs.faces[train_faces])
    face_pred = face_identities(gen.embeddings, train_r.embeddings, train_r.detected, face_label[train_faces], k)
    faces = evaluate_embeddings(
        gen.embeddings, gen.detected, gen_labels if conditional else face_pred, val_r.embeddings, val_r.detected,
        face_label[val_faces], pairs.identities, train_r.embeddings, train_r.detected, face_label[train_faces],
    )  # fmt: skip
    if not conditional:
        faces["identity_accuracy"] = None  # no condition: nothing to be right about

    # voices
    log.info("embedding %d generated sounds with resemblyzer", len(gen_sounds))
    gen_v = voices.embed(gen_sounds, rate)
    n_tr = min(len(train_idx), max(2, int(getattr(args, "voice_train_clips", 600))))
    tr_pick = train_idx[np.linspace(0, len(train_idx) - 1, n_tr).round().astype(np.int64)]
    train_v = voices.embed_cached(pairs.windows(tr_pick, window), rate, default_cache_dir())
    val_v = voices.embed_cached(pairs.windows(val_idx, window), rate, default_cache_dir())
    cent = voices.centroids(train_v.embeddings, pairs.labels[tr_pick], k)
    voice_pred = voices.nearest_centroid(gen_v.embeddings, cent)
    val_pred = voices.nearest_centroid(val_v.embeddings, cent)
    v_terms = _frechet_terms(gen_v.embeddings, val_v.embeddings)
    voice = {
        "speaker_accuracy": float((voice_pred == gen_labels).mean()) if conditional else None,
        "speaker_accuracy_per_identity": {pairs.identities[i]: float((voice_pred[gen_labels == i] == i).mean())
                                          for i in range(k) if conditional and (gen_labels == i).any()},
        "speaker_share": {pairs.identities[i]: float((voice_pred == i).mean()) for i in range(k)},
        "voiced_ratio": float(gen_v.voiced.mean()),
        "frechet_distance": float(sum(v_terms)),
        "frechet_terms": {"mean": v_terms[0], "covariance": v_terms[1]},
        "reference": {
            "speaker_accuracy": float((val_pred == labels).mean()),
            "voiced_ratio": float(val_v.voiced.mean()),
            "frechet_distance_train_vs_val": float(sum(_frechet_terms(train_v.embeddings, val_v.embeddings))),
            "n_train_clips": int(n_tr),
            "n_val_clips": int(len(val_idx)),
        },
        "embedding": "resemblyzer 0.1.4 (GE2E, 256-d), speaker = nearest training-clip centroid by cosine",
    }
    both = agreement_figures(face_pred, voice_pred, gen_labels if conditional else None)
    both["agreement_detected_faces"] = float((face_pred == voice_pred)[gen.detected].mean()) if gen.detected.any() else None

    # sample sheet and its sounds
    out = Path(args.out)
    rows = pick_sample_voices(labels, pairs.face_index[val_idx])
    save_sample_sheet(out / "samples.png", pairs.images(val_idx[rows]), fakes[:, rows].transpose(1, 0, 2, 3, 4),
                      [pairs.identities[labels[r]] for r in rows])  # fmt: skip
    # the same rows without the real faces (a figure that holds no dataset material)
    grid = fakes[:, rows].transpose(1, 0, 2, 3, 4)  # [rows, seeds, H, W, 3]
    save_image(out / "samples-generated.png", np.concatenate([np.concatenate(list(r), axis=1) for r in grid], axis=0))
    seed_sounds = np.stack(sounds)  # [seeds, P, N]
    real_rows, gen_rows = [], []
    for j, r in enumerate(rows):
        name = pairs.identities[labels[r]]
        real_clip = pairs.windows([val_idx[r]], window)[0]
        write_wav(out / "samples" / f"row{j}-{name}-real.wav", real_clip, rate)
        for s in range(args.seeds):
            write_wav(out / "samples" / f"row{j}-{name}-seed{s}.wav", seed_sounds[s, r], rate)
        real_rows.append([real_clip])
        gen_rows.append([seed_sounds[s, r] for s in range(args.seeds)])
    save_spectrogram_sheet(out / "spectrograms.png", real_rows, gen_rows, rate,
                           [pairs.identities[labels[r]] for r in rows], "generated from the real clip, per seed")
    return {
        "kind": "faces",
        "conditioning": "voice" if conditional else "none",
        "faces": faces,
        "voices": voice,
        **both,
        "n_generated": int(len(gen_images)),
        "split": {"val_fraction": cfg.train.val_fraction, "seed": cfg.train.seed, "from": split_from,
                  "n_val_pairs": int(n_val_total), "n_val_pairs_evaluated": int(len(val_idx)),
                  "excluded_for_selection": getattr(args, "exclude_selection", "") or None},  # fmt: skip
        "seeds": args.seeds,
        "seed": args.seed,
        "generation_seconds": round(gen_seconds, 1),
    }


# ----------------------------------------------------------------------------------------------- digits
def evaluate_digits(model, args: argparse.Namespace) -> dict[str, Any]:
    """The digits evaluation (see the module docstring).

    Raises:
        UserError: ``--samples`` below 1, or data that :func:`.data.load_digits` refuses.
    """
    from datastore.cache import default_cache_dir
    from engine.generator import to_uint8
    from training.families.avgan.data import load_digits, place
    from training.families.avgan.digits import classifiers_for, drawings_to_tensor, predict, recognise_digits

    cfg, rate = model.cfg, model.sample_rate
    window = int(model.outputs["sound"][1])
    n = int(getattr(args, "samples", 1000))
    if n < 1:
        raise UserError(f"--samples: expected >= 1, got {n}")
    data = load_digits(args.data, rate, window, 32, cfg.train.val_fraction)
    drawing, spoken, report = classifiers_for(data, default_cache_dir())
    noise_dim = int(model.inputs["noise"][1])
    t0 = time.perf_counter()
    inputs = {"noise": seed_noise(args.seed, 0, n, noise_dim)}
    conditioned_labels = None
    if "audio" in model.inputs:  # a voice-conditioned digits model: held-out recordings as the condition
        held = np.flatnonzero(data.takes < cfg.data.val_takes)
        pick = held[np.arange(n) % len(held)]
        inputs["audio"] = np.stack([place(data.clips[i], int(model.inputs["audio"][1])) for i in pick])
        conditioned_labels = data.labels[pick]
    out = run_batched(model, n, **inputs)
    gen_seconds = time.perf_counter() - t0
    images = to_uint8(out["image"])
    import torch

    x_img = drawings_to_tensor(images)
    p_img = predict(drawing, x_img)
    p_snd = predict(spoken, torch.from_numpy(np.ascontiguousarray(out["sound"], np.float32)))
    d_img, d_snd = p_img.argmax(1), p_snd.argmax(1)
    c_img, c_snd = p_img.max(1) >= CONFIDENT, p_snd.max(1) >= CONFIDENT
    agree = d_img == d_snd
    # the ceiling: real held-out drawings paired with real held-out recordings of the same digit
    held = np.flatnonzero(data.takes < cfg.data.val_takes)
    real_img = data.images(held, np.random.default_rng(0), held_out=True)
    real_snd = np.stack([place(data.clips[i], window) for i in held])
    r_img, r_snd = predict(drawing, drawings_to_tensor(real_img[..., 0])), predict(spoken, torch.from_numpy(real_snd))
    # Fréchet distance of the drawings in the drawing classifier's feature space: the n generated drawings vs the
    # held-out ones, next to n training drawings (evenly spaced) vs the same held-out ones: the estimate depends on
    # the set sizes, so both sides use the same
    val_d, train_d = np.flatnonzero(data.drawing_val), np.flatnonzero(~data.drawing_val)
    train_d = train_d[np.linspace(0, len(train_d) - 1, min(len(train_d), n)).astype(int)]
    f_val = drawing.features(drawings_to_tensor(data.drawings[val_d]))
    fd_gen = _frechet_terms(drawing.features(x_img), f_val)
    fd_ref = _frechet_terms(drawing.features(drawings_to_tensor(data.drawings[train_d])), f_val)
    # the same for the sounds, in the spoken-digit classifier's feature space: n generated sounds vs the held-out
    # recordings, next to n training recordings (evenly spaced, centred) vs the same; it rises when the sounds of a
    # digit are all alike
    train_r = np.flatnonzero(data.takes >= cfg.data.val_takes)
    train_r = train_r[np.linspace(0, len(train_r) - 1, min(len(train_r), n)).astype(int)]
    s_val = spoken.features(torch.from_numpy(real_snd))
    sfd_gen = _frechet_terms(spoken.features(torch.from_numpy(np.ascontiguousarray(out["sound"], np.float32))), s_val)
    sfd_ref = _frechet_terms(spoken.features(torch.from_numpy(np.stack([place(data.clips[i], window) for i in train_r]))),
                             s_val)  # fmt: skip
    log.info("PocketSphinx listening to %d generated and %d real sounds", n, len(held))
    w_gen, w_real = recognise_digits(out["sound"], rate, args.seed), recognise_digits(real_snd, rate, args.seed)
    metrics: dict[str, Any] = {
        "kind": "digits",
        "n_samples": n,
        "image_confident": float(c_img.mean()),
        "sound_confident": float(c_snd.mean()),
        "agreement": float(agree.mean()),
        "agreement_confident": float((agree & c_img & c_snd).mean()),
        "agreement_chance": 0.1,
        # what the two classifiers' digit frequencies alone give if image and sound were independent
        "agreement_if_independent": independent_agreement(d_img, d_snd, 10),
        "image_frechet_distance": sum(fd_gen),
        "sound_frechet_distance": sum(sfd_gen),
        "image_digits": np.bincount(d_img, minlength=10).tolist(),
        "sound_digits": np.bincount(d_snd, minlength=10).tolist(),
        # an independent listener (digits.recognise_digits): does it hear a digit word, and the image's digit?
        "sound_recognised": float((w_gen >= 0).mean()),
        "agreement_recogniser": float((w_gen == d_img).mean()),
        "recogniser_digits": np.bincount(w_gen[w_gen >= 0], minlength=10).tolist(),
        "reference": {
            **report,
            "real_pairs_agreement": float((r_img.argmax(1) == r_snd.argmax(1)).mean()),
            "real_image_confident": float((r_img.max(1) >= CONFIDENT).mean()),
            "real_sound_confident": float((r_snd.max(1) >= CONFIDENT).mean()),
            "image_frechet_distance_train_vs_val": sum(fd_ref),
            "sound_frechet_distance_train_vs_val": sum(sfd_ref),
            "real_sound_recognised": float((w_real >= 0).mean()),
            "recogniser_accuracy": float((w_real == data.labels[held]).mean()),
            "real_pairs_agreement_recogniser": float((w_real == r_img.argmax(1)).mean()),
            "n_real_pairs": int(len(held)),
        },
        "seed": args.seed,
        "generation_seconds": round(gen_seconds, 1),
    }
    if cfg.model.latent_code:  # the code: argmax of the first 10 noise values (AvganGenerator.code_labels)
        code = inputs["noise"][:, :10].argmax(axis=1)
        metrics["image_names_code"] = float((d_img == code).mean())
        metrics["sound_names_code"] = float((d_snd == code).mean())
    if conditioned_labels is not None:
        metrics["image_accuracy"] = float((d_img == conditioned_labels).mean())
        metrics["sound_accuracy"] = float((d_snd == conditioned_labels).mean())
    outdir = Path(args.out)
    save_digit_sheet(outdir / "samples.png", images[:60], d_img[:60], d_snd[:60])
    real_rows = [[real_snd[j] for j in np.flatnonzero(data.labels[held] == k)[:2]] for k in range(10)]
    gen_rows = [[out["sound"][j] for j in np.flatnonzero(d_img == k)[:4]] for k in range(10)]
    save_spectrogram_sheet(outdir / "spectrograms.png", real_rows, gen_rows, rate)
    for i in range(min(12, n)):
        write_wav(outdir / "samples" / f"sample{i:02d}-image{d_img[i]}-sound{d_snd[i]}.wav", out["sound"][i], rate)
    return metrics


def save_digit_sheet(path: Path, images: np.ndarray, d_img: np.ndarray, d_snd: np.ndarray, cols: int = 10) -> None:
    """PNG sheet of generated drawings uint8 [G, H, W, 3], each captioned ``image digit / sound digit`` (green
    when they agree, red when not), 3x enlarged."""
    import cv2

    g, h, w = images.shape[:3]
    scale, cap = 3, 14
    rows = -(-g // cols)
    sheet = np.full((rows * (h * scale + cap + 4), cols * (w * scale + 4), 3), 255, np.uint8)
    for i in range(g):
        y, x = (i // cols) * (h * scale + cap + 4), (i % cols) * (w * scale + 4)
        sheet[y : y + h * scale, x : x + w * scale] = cv2.resize(images[i], (w * scale, h * scale),
                                                                interpolation=cv2.INTER_NEAREST)  # fmt: skip
        colour = (0, 140, 0) if d_img[i] == d_snd[i] else (200, 0, 0)
        cv2.putText(sheet, f"{d_img[i]} / {d_snd[i]}", (x + 4, y + h * scale + cap - 2), cv2.FONT_HERSHEY_SIMPLEX,
                    0.4, colour, 1, cv2.LINE_AA)  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), sheet[:, :, ::-1]):
        raise UserError(f"{path}: cannot write image")


def log_spectrogram_picture(sound: np.ndarray, rate: int, height: int = 96) -> np.ndarray:
    """uint8 [height, frames] picture of the log-magnitude spectrogram of ``sound`` (float [S], samples at ``rate``
    Hz; :func:`scipy.signal.stft` with a Hann window of 32 ms, hop 8 ms; the loudest bin white, 80 dB below it
    black, low frequencies at the bottom), after peak normalisation. An empty sound gives an all-black picture 1
    frame wide."""
    import cv2
    from scipy.signal import stft

    if len(sound) == 0:
        return np.zeros((height, 1), np.uint8)
    n_fft, hop = int(0.032 * rate), int(0.008 * rate)
    x = np.asarray(sound, np.float64)
    _, _, spec = stft(x / max(1e-9, float(np.abs(x).max())), fs=rate, window="hann", nperseg=n_fft,
                      noverlap=n_fft - hop)  # fmt: skip
    db = 20 * np.log10(np.abs(spec) + 1e-9)
    pic = (np.clip((db - db.max() + 80.0) / 80.0, 0, 1) * 255).astype(np.uint8)[::-1]
    return cv2.resize(pic, (pic.shape[1], height), interpolation=cv2.INTER_AREA)


def save_spectrogram_sheet(path: Path, real: list[list[np.ndarray]], generated: list[list[np.ndarray]],
                           rate: int, row_labels: list[str] | None = None,
                           generated_title: str = "generated (rows: the drawing's digit)") -> None:  # fmt: skip
    """Grey PNG sheet, one row per digit (or per sample-sheet voice): the spectrograms
    (:func:`log_spectrogram_picture`) of real recordings (left, ``real[k]``), then of generated sounds
    (``generated[k]``: whose drawing reads as the digit, or the row's voices per seed);
    float32 waveforms [S] at ``rate`` Hz, any lengths (each cell is as wide as the longest). Empty places stay grey.
    ``row_labels``: each row's caption (default its index); ``generated_title``: the generated columns' heading.

    Raises:
        UserError: the file cannot be written.
    """
    import cv2

    sounds = [x for row in list(real) + list(generated) for x in row]
    n_real, n_gen = max((len(r) for r in real), default=0), max((len(g) for g in generated), default=0)
    h, gap = 96, 4
    w = max((log_spectrogram_picture(x, rate, h).shape[1] for x in sounds), default=1)
    labels = row_labels if row_labels is not None else [str(k) for k in range(len(real))]
    label_w = 24 if max((len(t) for t in labels), default=1) <= 2 else 8 * max(len(t) for t in labels) + 8
    sheet = np.full((len(real) * (h + gap) + 20, label_w + (n_real + n_gen) * (w + gap) + gap), 128, np.uint8)
    cv2.putText(sheet, "real", (label_w, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.45, 255, 1, cv2.LINE_AA)
    cv2.putText(sheet, generated_title, (label_w + n_real * (w + gap) + gap, 14),
                cv2.FONT_HERSHEY_SIMPLEX, 0.45, 255, 1, cv2.LINE_AA)  # fmt: skip
    for k, (rr, gg) in enumerate(zip(real, generated)):
        y = 20 + k * (h + gap)
        cv2.putText(sheet, labels[k], (6, y + h // 2 + 5), cv2.FONT_HERSHEY_SIMPLEX, 0.5, 255, 1, cv2.LINE_AA)
        for c, snd in [(c, s) for c, s in enumerate(rr)] + [(n_real + c, s) for c, s in enumerate(gg)]:
            x = label_w + c * (w + gap) + (gap if c >= n_real else 0)
            pic = log_spectrogram_picture(snd, rate, h)
            sheet[y : y + h, x : x + pic.shape[1]] = pic[:, : sheet.shape[1] - x]
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), sheet):
        raise UserError(f"{path}: cannot write image")


# ----------------------------------------------------------------------------------------------- table
def format_table(m: dict[str, Any]) -> str:
    """A plain-text table of the main figures, generated next to the real reference."""

    def f(v: Any, d: int = 3) -> str:
        return "-" if v is None else f"{v:.{d}f}"

    if m.get("kind") == "digits":
        ref = m["reference"]
        rows = [
            ("metric", "generated", "real (reference)"),
            ("image classified with confidence >= 0.9", f(m["image_confident"]), f(ref["real_image_confident"])),
            ("sound classified with confidence >= 0.9", f(m["sound_confident"]), f(ref["real_sound_confident"])),
            ("image and sound name the same digit (chance 0.1)", f(m["agreement"]), f(ref["real_pairs_agreement"])),
            ("  ... both confident and the same", f(m["agreement_confident"]), ""),
            ("  ... expected from the digit frequencies alone", f(m.get("agreement_if_independent")), ""),
            ("image / sound classified as the latent code", f"{f(m.get('image_names_code'))} / "
             f"{f(m.get('sound_names_code'))}", ""),
            ("drawings' Fréchet distance to held-out drawings", f(m.get("image_frechet_distance")),
             f(ref.get("image_frechet_distance_train_vs_val")) + " (train vs held-out)"),
            ("sounds' Fréchet distance to held-out recordings", f(m.get("sound_frechet_distance")),
             f(ref.get("sound_frechet_distance_train_vs_val")) + " (train vs held-out)"),
            ("sound heard as a digit word (PocketSphinx)", f(m.get("sound_recognised")),
             f(ref.get("real_sound_recognised"))),
            ("  ... the image's digit", f(m.get("agreement_recogniser")),
             f(ref.get("real_pairs_agreement_recogniser"))),
            ("drawing classifier, held-out accuracy", "", f(ref["drawing_classifier"]["held_out_accuracy"])),
            ("spoken-digit classifier, held-out accuracy", "", f(ref["spoken_digit_classifier"]["held_out_accuracy"])),
            ("PocketSphinx, held-out accuracy", "", f(ref.get("recogniser_accuracy"))),
            ("image digits 0-9", " ".join(map(str, m["image_digits"])), ""),
            ("sound digits 0-9", " ".join(map(str, m["sound_digits"])), ""),
        ]
    else:
        fa, vo = m["faces"], m["voices"]
        fr, vr = fa.get("reference", {}), vo["reference"]
        rows = [
            ("metric", "generated", "real (reference)"),
            ("face detection ratio", f(fa.get("detection_ratio")), f(fr.get("detection_ratio"))),
            ("face identity accuracy", f(fa.get("identity_accuracy")), f(fr.get("identity_accuracy"))),
            ("face Fréchet distance to real val faces", f(fa.get("frechet_distance"), 4),
             f(fr.get("frechet_distance_train_vs_val"), 4) + " (train vs val)"),
            ("voice speaker accuracy (resemblyzer)", f(vo.get("speaker_accuracy")), f(vr.get("speaker_accuracy"))),
            ("voiced ratio (webrtcvad)", f(vo.get("voiced_ratio")), f(vr.get("voiced_ratio"))),
            ("voice-embedding Fréchet distance to real val clips", f(vo.get("frechet_distance"), 4),
             f(vr.get("frechet_distance_train_vs_val"), 4) + " (train vs val)"),
            ("face-voice agreement (same person)", f(m.get("agreement")), ""),
            ("  ... and the condition's identity", f(m.get("agreement_correct")), ""),
            ("  ... expected from the identity frequencies alone", f(m.get("agreement_if_independent")), ""),
            ("generated samples", str(m.get("n_generated")), ""),
        ]  # fmt: skip
    w0 = max(len(r[0]) for r in rows)
    w1 = max(len(r[1]) for r in rows)
    lines = [f"{a:<{w0}}  {b:>{w1}}  {c}" for a, b, c in rows]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)
