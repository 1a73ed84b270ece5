"""The sound2scene evaluation: images generated from held-out sounds, judged by a classifier trained here on real images.

No Inception weights ship, so every figure comes from :class:`ImageClassifier`, a small CNN trained on the *real
training images* of the split (cached under ``$AVGAN_CACHE``, keyed by those images and the settings):

* **GAN-test accuracy** (Shmelkov, Schmid & Alahari, "How good is my GAN?", ECCV 2018): the classifier's accuracy
  on images generated from the held-out sounds (``--seeds`` noises each), labelled with the sound's class, next to
  the same classifier's accuracy on the real held-out images (for clips: the held-out clips' own frames). Near
  chance (1 / classes) means the images do not show the sound's class; near the real accuracy, that they do as
  well as real pictures. It also rewards memorised training images, which the Fréchet distance below does not.
* **pinned-class accuracy**: the same on images made with the ``class`` input one-hot (the operator's pin).
* **audio encoder accuracy** on the held-out sounds (the bundle's ``class_probabilities`` output).
* **Fréchet distance** (Heusel et al. 2017's formula, :func:`training.face_metrics.frechet_terms`) of the
  classifier's penultimate features, generated vs real held-out images, next to the same distance of the real
  training images to the real held-out images (the floor for data this size).
* **within-class diversity**: per class, the mean pairwise feature distance of the generated images divided by
  that of the real held-out images (1 = as varied as the real data, 0 = one image per class).
* **volume test** (Wan, Chuang & Lee 2019): the same held-out sound at -20, -10 and 0 dB gain with the same
  noise; the mean absolute difference (8-bit levels) of each image from the image of silence.
* a **sample sheet** PNG: per class, two real held-out images, then images generated from four held-out sounds.

Writes ``metrics.json`` and ``samples.png`` to ``--out`` and prints a table. Deterministic for a given ``--seed``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from engine.errors import UserError

log = logging.getLogger(__name__)

GAINS_DB = (-20.0, -10.0, 0.0)
CLASSIFIER_VERSION = 1


def add_arguments(group: argparse._ArgumentGroup) -> None:
    """``--classifier-steps`` and ``--volume-items``."""
    group.add_argument(
        "--classifier-steps", type=int, default=1500, metavar="N",
        help="sound2scene: training steps of the real-image classifier the metrics use (cached; default 1500)",
    )  # fmt: skip
    group.add_argument(
        "--volume-items", type=int, default=64, metavar="N",
        help="sound2scene: held-out sounds in the volume test (evenly spaced; default 64)",
    )  # fmt: skip


# ----------------------------------------------------------------------------------------------- classifier
class ImageClassifier(nn.Module):
    """Real-image classifier: uint8-range images -> (class logits [B, C], penultimate features [B, 4w]).

    Input float32 [B, 3, H, W] in [-1, 1] (H a multiple of 8). Three stages of two 3x3 convolutions (batch norm,
    leaky ReLU; the second of each with stride 2), widths w, 2w, 4w, global average pooling (the features), dropout
    and a linear class layer.
    """

    def __init__(self, n_classes: int, width: int = 16) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        cin = 3
        for c in (width, 2 * width, 4 * width):
            for stride in (1, 2):
                layers += [nn.Conv2d(cin, c, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(c),
                           nn.LeakyReLU(0.2)]  # fmt: skip
                cin = c
        self.body = nn.Sequential(*layers)
        self.dropout = nn.Dropout(0.3)
        self.head = nn.Linear(cin, n_classes)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.body(x).mean(dim=(2, 3))
        return self.head(self.dropout(h)), h


def _to_tensor(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def _augment(x: torch.Tensor, flip: bool, gen: torch.Generator) -> torch.Tensor:
    """Random shift (up to 1/8 of the side, black padding), brightness/contrast, and left-right flips when ``flip``."""
    b, _, h, w = x.shape
    pad = max(1, h // 8)
    padded = F.pad(x, [pad] * 4, value=-1.0)
    dy = torch.randint(0, 2 * pad + 1, (b, 1, 1), generator=gen)
    dx = torch.randint(0, 2 * pad + 1, (b, 1, 1), generator=gen)
    rows = (torch.arange(h).view(1, h, 1) + dy).expand(b, h, w)
    cols = (torch.arange(w).view(1, 1, w) + dx).expand(b, h, w)
    out = padded.permute(0, 2, 3, 1)[torch.arange(b).view(b, 1, 1), rows, cols].permute(0, 3, 1, 2)
    gain = 1.0 + 0.4 * (torch.rand(b, 1, 1, 1, generator=gen) - 0.5)
    bias = 0.3 * (torch.rand(b, 1, 1, 1, generator=gen) - 0.5)
    out = (out * gain + bias).clamp(-1, 1)
    if flip:
        mirror = torch.rand(b, generator=gen) < 0.5
        out[mirror] = out[mirror].flip(3)
    return out


def train_classifier(
    images: np.ndarray, labels: np.ndarray, n_classes: int, steps: int, flip: bool, seed: int = 0, batch: int = 32
) -> ImageClassifier:
    """Train :class:`ImageClassifier` on uint8 [N, H, W, 3] ``images`` with int ``labels`` [N]: class-balanced
    batches, :func:`_augment`, AdamW (lr 2e-3, weight decay 5e-4, cosine decay), ``steps`` steps. Eval mode on return."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    net = ImageClassifier(n_classes).to(memory_format=torch.channels_last)  # oneDNN is fastest in NHWC on a CPU
    x_all, y_all = _to_tensor(images), torch.from_numpy(labels.astype(np.int64))
    per_class = [np.flatnonzero(labels == k) for k in range(n_classes)]
    per_class = [p for p in per_class if len(p)]
    opt = torch.optim.AdamW(net.parameters(), lr=2e-3, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, steps) / max(1, steps)))
    )
    net.train()
    for _ in tqdm(range(steps), desc="real-image classifier", unit="step", dynamic_ncols=True, leave=False):
        groups = rng.integers(len(per_class), size=batch)
        idx = torch.from_numpy(np.asarray([per_class[g][rng.integers(len(per_class[g]))] for g in groups]))
        logits, _ = net(_augment(x_all[idx], flip, gen).contiguous(memory_format=torch.channels_last))
        loss = F.cross_entropy(logits, y_all[idx], label_smoothing=0.1)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    return net.eval()


@torch.no_grad()
def classify(net: ImageClassifier, images: np.ndarray, batch: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """(predicted labels int64 [N], penultimate features float32 [N, F]) of uint8 images [N, H, W, 3]."""
    preds, feats = [], []
    for i in range(0, len(images), batch):
        logits, h = net(_to_tensor(images[i : i + batch]))
        preds.append(logits.argmax(1).numpy())
        feats.append(h.numpy())
    if not preds:
        return np.zeros(0, np.int64), np.zeros((0, net.head.in_features), np.float32)
    return np.concatenate(preds), np.concatenate(feats).astype(np.float32)


def cached_classifier(
    images: np.ndarray, labels: np.ndarray, n_classes: int, steps: int, flip: bool, cache_dir: Path | None
) -> tuple[ImageClassifier, dict[str, Any]]:
    """:func:`train_classifier`, read from / written to ``cache_dir`` under a key of the images, labels and settings.

    Returns (classifier, {"cache": the cache file's name or None, "cached": bool, "seconds": training time or 0}).
    """
    from safetensors.torch import load_file, save_file

    digest = hashlib.sha1()
    digest.update(json.dumps([CLASSIFIER_VERSION, n_classes, steps, flip, list(images.shape)]).encode())
    digest.update(np.ascontiguousarray(images).tobytes())
    digest.update(labels.astype(np.int64).tobytes())
    path = None if cache_dir is None else cache_dir / f"sound2scene-classifier-{digest.hexdigest()[:16]}.safetensors"
    if path is not None and path.is_file():
        try:
            net = ImageClassifier(n_classes)
            net.load_state_dict(load_file(str(path)))
            return net.eval(), {"cache": path.name, "cached": True, "seconds": 0.0}
        except Exception as exc:  # noqa: BLE001 - a damaged cache entry is trained again
            log.warning("%s: unreadable classifier cache (%s); training again", path, exc)
    started = time.perf_counter()
    log.info("training the real-image classifier: %d steps on %d images", steps, len(images))
    net = train_classifier(images, labels, n_classes, steps, flip)
    seconds = time.perf_counter() - started
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(tmp))
        tmp.replace(path)
    return net, {"cache": None if path is None else path.name, "cached": False, "seconds": round(seconds, 1)}


# ----------------------------------------------------------------------------------------------- figures
def frechet(a: np.ndarray, b: np.ndarray) -> dict[str, float] | None:
    """Fréchet distance of two feature sets [N, F] (None with fewer than 2 rows in either)."""
    from training.face_metrics import frechet_terms

    if len(a) < 2 or len(b) < 2:
        return None
    mean, cov = frechet_terms(a, b)
    return {"distance": mean + cov, "mean_term": mean, "covariance_term": cov, "n_a": int(len(a)), "n_b": int(len(b))}


def mean_pairwise(features: np.ndarray) -> float | None:
    """Mean Euclidean distance over all pairs of rows of ``features`` [N, F] (None below 2 rows)."""
    if len(features) < 2:
        return None
    x = features.astype(np.float64)
    sq = np.sum(x * x, axis=1)
    d = np.sqrt(np.maximum(sq[:, None] + sq[None, :] - 2 * x @ x.T, 0.0))
    n = len(x)
    return float(d.sum() / (n * (n - 1)))


def diversity(gen_feats: np.ndarray, gen_labels: np.ndarray, real_feats: np.ndarray, real_labels: np.ndarray,
              classes: list[str]) -> dict[str, Any]:  # fmt: skip
    """Within-class diversity: per class ``mean_pairwise(generated) / mean_pairwise(real)``, and their mean."""
    per_class = {}
    for k, name in enumerate(classes):
        g, r = mean_pairwise(gen_feats[gen_labels == k]), mean_pairwise(real_feats[real_labels == k])
        if g is not None and r:
            per_class[name] = g / r
    return {"mean_ratio": float(np.mean(list(per_class.values()))) if per_class else None, "per_class": per_class}


def seed_noise(seed: int, index: int, n: int, noise_dim: int) -> np.ndarray:
    """Noise float32 [n, noise_dim] for seed index ``index``: ``default_rng([seed, index])``."""
    return np.random.default_rng([int(seed), int(index)]).standard_normal((n, noise_dim), dtype=np.float32)


def save_sheet(path: Path, rows: list[tuple[str, list[np.ndarray], list[np.ndarray]]], tile: int) -> None:
    """PNG: one row per class: its name, real images, a gap, generated images; tiles scaled to ``tile`` px.

    Raises:
        UserError: the file cannot be written.
    """
    import cv2

    pad, label_w, gap = 3, 130, 12
    n_real = max(len(r) for _, r, _ in rows)
    n_fake = max(len(f) for _, _, f in rows)
    width = label_w + (n_real + n_fake) * (tile + pad) + gap + pad
    height = pad + len(rows) * (tile + pad) + 18
    sheet = np.full((height, width, 3), 255, np.uint8)
    cv2.putText(sheet, "real (held out)", (label_w + pad, 13), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
    x_fake = label_w + pad + n_real * (tile + pad) + gap
    cv2.putText(sheet, "generated from held-out sounds", (x_fake, 13), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1,
                cv2.LINE_AA)  # fmt: skip
    for r, (name, real, fake) in enumerate(rows):
        y = 18 + pad + r * (tile + pad)
        cv2.putText(sheet, name[:18], (4, y + tile // 2 + 4), cv2.FONT_HERSHEY_SIMPLEX, 0.42, (0, 0, 0), 1, cv2.LINE_AA)
        for c, im in enumerate(real):
            x = label_w + pad + c * (tile + pad)
            sheet[y : y + tile, x : x + tile] = cv2.resize(im, (tile, tile), interpolation=cv2.INTER_NEAREST)
        for c, im in enumerate(fake):
            x = x_fake + c * (tile + pad)
            sheet[y : y + tile, x : x + tile] = cv2.resize(im, (tile, tile), interpolation=cv2.INTER_NEAREST)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), sheet[:, :, ::-1]):
        raise UserError(f"{path}: cannot write image")


def _nan_to_none(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _nan_to_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_nan_to_none(v) for v in value]
    return value


def format_table(m: dict[str, Any]) -> str:
    """The figures as an aligned text table."""

    def f(v: Any, digits: int = 3) -> str:
        return "n/a" if v is None else (f"{v:.{digits}f}" if isinstance(v, float) else str(v))

    chance = 1.0 / m["n_classes"]
    fd, fd_ref = m.get("frechet_distance") or {}, m.get("frechet_distance_real_train_vs_val") or {}
    vol = m["volume_test"]["mean_abs_change_vs_silence"]
    rows = [
        ("figure", "value", "reference"),
        ("GAN-test accuracy (held-out sounds)", f(m["gan_test_accuracy"]),
         f"real held-out images {f(m['real_val_accuracy'])}; chance {chance:.3f}"),
        ("  ratio to the real accuracy", f(m["gan_test_ratio"]), ""),
        ("pinned-class accuracy", f(m["pinned_class_accuracy"]), "class input one-hot"),
        ("audio encoder accuracy (held-out sounds)", f(m["audio_accuracy"]), f"chance {chance:.3f}"),
        ("Fréchet distance, generated vs real held out", f(fd.get("distance"), 2),
         f"real train vs real held out {f(fd_ref.get('distance'), 2)}"),
        ("within-class diversity, generated / real", f(m["diversity"]["mean_ratio"]), "1 = as varied as real"),
        ("volume test: change vs silence (8-bit)", " / ".join(f(vol.get(f"{g:g} dB"), 1) for g in GAINS_DB),
         " / ".join(f"{g:g} dB" for g in GAINS_DB)),
        ("generated images", str(m["n_generated"]), f"{m['n_val_items']} held-out sounds x {m['seeds']} seeds; "
         f"{m['n_real_val_images']} real held-out images"),
    ]  # fmt: skip
    w0, w1 = max(len(r[0]) for r in rows), max(len(r[1]) for r in rows)
    lines = [f"{a:<{w0}}  {b:>{w1}}  {c}" for a, b, c in rows]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------- evaluate
def evaluate(model, args: argparse.Namespace) -> dict[str, Any]:
    """The scene evaluation of a :class:`training.families.contract.Model` (see the module docstring).

    Raises:
        UserError: the data's classes differ from the model's, no held-out sounds or images, or bad flags.
    """
    from datastore.cache import default_cache_dir
    from engine.generator import to_uint8
    from training.families.sound2scene.data import split

    started = time.perf_counter()
    steps = int(getattr(args, "classifier_steps", 1500))
    n_volume = int(getattr(args, "volume_items", 64))
    if steps < 1 or n_volume < 0:
        raise UserError(f"--classifier-steps must be >= 1 and --volume-items >= 0, got {steps} and {n_volume}")
    cfg = model.cfg
    ds = model.family.load_data(cfg, [str(d) for d in args.data])
    if list(ds.classes) != list(model.labels):
        raise UserError(
            f"{', '.join(map(str, args.data))}: classes {ds.classes} differ from the model's {model.labels}"
        )
    size = int(model.outputs["image"][2])
    if ds.images.shape[1] != size:
        raise UserError(f"the data decodes to {ds.images.shape[1]} px for a model of {size} px")
    parts = split(ds, cfg)
    recorded = (model.split or {}).get("val_clips")
    if recorded is not None and recorded != parts.record.get("val_clips"):
        log.warning(
            "the run's split.json lists other held-out clips than the recomputed split; using the recomputed one"
        )
    val_items, val_images = parts.val_items, parts.val_images
    if not len(val_items) or not len(val_images):
        raise UserError(f"no held-out sounds ({len(val_items)}) or images ({len(val_images)}) to evaluate on")
    n_val_total = int(len(val_items))
    if args.max_pairs and args.max_pairs < len(val_items):
        val_items = val_items[np.linspace(0, len(val_items) - 1, args.max_pairs).round().astype(np.int64)]
    window, noise_dim = int(model.inputs["audio"][1]), int(model.inputs["noise"][1])
    n_classes = len(ds.classes)
    labels = ds.item_label[val_items]

    # real-image classifier, trained on the real training images
    flip = ds.importer == "clips"
    net, clf_info = cached_classifier(ds.images[parts.train_images], ds.image_labels[parts.train_images], n_classes,
                                      steps, flip, default_cache_dir())  # fmt: skip
    real_pred, real_feats = classify(net, ds.images[val_images])
    real_labels = ds.image_labels[val_images]
    real_acc = float((real_pred == real_labels).mean())
    _, train_feats = classify(net, ds.images[parts.train_images])

    # generated from held-out sounds
    audio = ds.windows(val_items, window)
    zeros = np.zeros((len(val_items), n_classes), np.float32)
    gen_images, probs = [], None
    t0 = time.perf_counter()
    for s in range(args.seeds):
        out = model.run(audio=audio, noise=seed_noise(args.seed, s, len(val_items), noise_dim), **{"class": zeros})
        gen_images.append(to_uint8(out["image"]))
        if probs is None and "class_probabilities" in out:
            probs = out["class_probabilities"]
    generation_s = time.perf_counter() - t0
    fakes = np.stack(gen_images)  # [seeds, N, H, W, 3]
    flat = fakes.reshape(-1, *fakes.shape[2:])
    flat_labels = np.tile(labels, args.seeds)
    gen_pred, gen_feats = classify(net, flat)
    gan_test = float((gen_pred == flat_labels).mean())
    per_class = {name: float((gen_pred[flat_labels == k] == k).mean()) for k, name in enumerate(ds.classes)
                 if np.any(flat_labels == k)}  # fmt: skip
    audio_acc = None if probs is None else float((probs.argmax(1) == labels).mean())

    # pinned classes: one-hot class input, the same held-out sounds, seed index 100
    pin_labels = np.arange(len(val_items)) % n_classes
    onehot = np.eye(n_classes, dtype=np.float32)[pin_labels]
    pinned = to_uint8(model.run(audio=audio, noise=seed_noise(args.seed, 100, len(val_items), noise_dim),
                                **{"class": onehot})["image"])  # fmt: skip
    pinned_acc = float((classify(net, pinned)[0] == pin_labels).mean())

    # volume test: gains and silence with the same noise
    vol_idx = val_items[np.linspace(0, len(val_items) - 1, min(n_volume, len(val_items))).round().astype(np.int64)]
    volume: dict[str, Any] = {"n_sounds": int(len(vol_idx)), "mean_abs_change_vs_silence": {}}
    if len(vol_idx):
        vol_audio = ds.windows(vol_idx, window)
        noise = seed_noise(args.seed, 200, len(vol_idx), noise_dim)
        zeros_v = np.zeros((len(vol_idx), n_classes), np.float32)

        def image_of(x: np.ndarray) -> np.ndarray:
            return to_uint8(model.run(audio=x, noise=noise, **{"class": zeros_v})["image"]).astype(np.float32)

        silence = image_of(np.zeros_like(vol_audio))
        for g in GAINS_DB:
            scaled = np.clip(vol_audio * 10 ** (g / 20), -1, 1).astype(np.float32)
            volume["mean_abs_change_vs_silence"][f"{g:g} dB"] = float(np.abs(image_of(scaled) - silence).mean())

    metrics: dict[str, Any] = {
        "n_classes": n_classes,
        "classes": list(ds.classes),
        "gan_test_accuracy": gan_test,
        "gan_test_accuracy_per_class": per_class,
        "real_val_accuracy": real_acc,
        "gan_test_ratio": gan_test / real_acc if real_acc > 0 else None,
        "pinned_class_accuracy": pinned_acc,
        "audio_accuracy": audio_acc,
        "frechet_distance": frechet(gen_feats, real_feats),
        "frechet_distance_real_train_vs_val": frechet(train_feats, real_feats),
        "diversity": diversity(gen_feats, flat_labels, real_feats, real_labels, ds.classes),
        "volume_test": volume,
        "n_generated": int(len(flat)),
        "n_val_items": int(len(val_items)),
        "n_val_items_total": n_val_total,
        "n_real_val_images": int(len(val_images)),
        "n_real_train_images": int(len(parts.train_images)),
        "seeds": args.seeds,
        "seed": args.seed,
        "classifier": {"steps": steps, "train_images": int(len(parts.train_images)), "flip": flip, **clf_info},
        "split": parts.record,
        "model": {
            "target": str(getattr(args, "target", model.name)),
            "kind": model.kind,
            **{k: v for k, v in model.info.items() if k not in ("command", "training")},
        },  # fmt: skip
        "data": [str(d) for d in args.data],
        "generation_seconds": round(generation_s, 2),
        "total_seconds": round(time.perf_counter() - started, 2),
    }
    metrics = _nan_to_none(metrics)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    rows = []
    for k, name in enumerate(ds.classes):
        real = [ds.images[j] for j in val_images[real_labels == k][:2]]
        members = np.flatnonzero(labels == k)
        chosen = (
            members[np.linspace(0, len(members) - 1, min(4, len(members))).round().astype(np.int64)]
            if len(members)
            else []
        )
        rows.append((name, real, [fakes[0, j] for j in chosen]))
    save_sheet(out / "samples.png", rows, tile=max(64, size))
    print(format_table(metrics))
    print(f"wrote {out / 'metrics.json'} and {out / 'samples.png'}")
    return metrics
