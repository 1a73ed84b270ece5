"""The face_sr evaluation: PSNR of the super-resolution against bicubic upscaling on the validation crops, and
(``--generated-by BUNDLE``) face detection on generated faces before and after it.

Validation faces: a run's recorded split (``split.json``), or for a bundle
:func:`training.data.dataset.validation_faces` with its config's ``train.val_fraction`` and ``train.seed`` (the
face generator's split, so these are faces neither network trained on). Each crop at ``input_size`` (64 px, the
loader's area downscale: what the generator learned to draw) is upscaled to the target size by the model and by
OpenCV's nearest, bilinear, bicubic and Lanczos-4 filters, and compared with the same crop decoded at the target
size. Figures: PSNR over RGB (all pixels) and on luma with a ``scale``-pixel border cut (the usual SR convention),
mean over faces, and the paired gain over bicubic with a 95 % confidence interval (normal approximation).

``--generated-by BUNDLE`` (a face generator such as ``presets/models/wav2pix-64``): the bundle generates
``--seeds`` faces per validation pair of its own face-level split (noise as ``run.py evaluate`` draws it), and
dlib's detector (:class:`training.face_metrics.FaceAnalyzer`, which upscales small images to 256 px with
Lanczos-4 first) scores them as they are, after bicubic upscaling to the target size, and after this model.

Writes ``metrics.json``, ``psnr.md`` (the table) and ``samples.jpg`` (rows: bicubic, this model, the real crop;
with ``--generated-by`` also generated faces: 64 px nearest, bicubic, this model) to ``--out``.
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
from training.families.face_sr.data import FaceCrops, load_crops, psnr, psnr_y

log = logging.getLogger(__name__)

FILTERS = {
    "nearest": "INTER_NEAREST",
    "bilinear": "INTER_LINEAR",
    "bicubic": "INTER_CUBIC",
    "lanczos": "INTER_LANCZOS4",
}
"""OpenCV upscaling baselines by name."""


def add_arguments(group: argparse._ArgumentGroup) -> None:
    """``--generated-by``."""
    group.add_argument(
        "--generated-by", type=Path, metavar="BUNDLE",
        help="face_sr: also generate faces from the validation speech with this face generator bundle and compare "
        "dlib's face detection ratio on them as they are, upscaled bicubic, and after the super-resolution",
    )  # fmt: skip


def upscale_cv2(images: np.ndarray, side: int, name: str) -> np.ndarray:
    """uint8 [N, h, w, 3] -> uint8 [N, side, side, 3] with OpenCV filter ``name`` (:data:`FILTERS`)."""
    import cv2

    flag = getattr(cv2, FILTERS[name])
    return np.stack([cv2.resize(im, (side, side), interpolation=flag) for im in images])


def super_resolve(model, images: np.ndarray, batch: int = 64) -> np.ndarray:
    """The model (a :class:`training.families.contract.Model`) on uint8 [N, h, w, 3] -> uint8 [N, H, W, 3]."""
    from engine.generator import to_uint8

    out = []
    for i in range(0, len(images), batch):
        x = images[i : i + batch].transpose(0, 3, 1, 2).astype(np.float32) / 127.5 - 1.0
        out.append(to_uint8(model.run(low_res=x)["image"]))
    return np.concatenate(out)


def validation_indices(model, crops: FaceCrops) -> tuple[np.ndarray, str]:
    """(validation face indices, where the split came from): a run's recorded hashes, else the config's split."""
    from training.data.dataset import validation_faces

    hashes = (model.split or {}).get("val_face_hashes")
    if hashes is not None:
        return np.flatnonzero(np.isin(np.asarray(crops.hashes), list(hashes))), "split.json"
    cfg = model.cfg.train
    return np.flatnonzero(validation_faces(crops.hashes, crops.labels, cfg.val_fraction, cfg.seed)), "the config"


def _summary(values: np.ndarray) -> dict[str, float]:
    return {"mean": float(values.mean()), "std": float(values.std(ddof=1)) if len(values) > 1 else 0.0,
            "median": float(np.median(values))}  # fmt: skip


def psnr_table(sr: np.ndarray, low: np.ndarray, high: np.ndarray, labels: np.ndarray, identities: list[str],
               scale: int) -> dict[str, Any]:  # fmt: skip
    """PSNR figures of ``sr`` (uint8 [N, H, W, 3]) and the OpenCV filters on ``low`` against ``high``."""
    side = high.shape[1]
    methods = {"model": sr, **{name: upscale_cv2(low, side, name) for name in FILTERS}}
    rgb = {name: psnr(img, high) for name, img in methods.items()}
    y = {name: psnr_y(img, high, border=scale) for name, img in methods.items()}
    gain = rgb["model"] - rgb["bicubic"]
    half = 1.96 * gain.std(ddof=1) / np.sqrt(len(gain)) if len(gain) > 1 else float("nan")
    per_identity = {
        ident: {
            "n_faces": int((labels == k).sum()),
            "psnr_model": float(rgb["model"][labels == k].mean()),
            "psnr_bicubic": float(rgb["bicubic"][labels == k].mean()),
            "gain_db": float(gain[labels == k].mean()),
        }  # fmt: skip
        for k, ident in enumerate(identities)
        if (labels == k).any()
    }
    return {
        "psnr_rgb_db": {name: _summary(v) for name, v in rgb.items()},
        "psnr_y_db": {name: _summary(v) for name, v in y.items()},
        "gain_over_bicubic_db": {
            "mean": float(gain.mean()),
            "ci95": [float(gain.mean() - half), float(gain.mean() + half)],
            "faces_better": float((gain > 0).mean()),
        },  # fmt: skip
        "per_identity": per_identity,
    }


def generated_detection(model, bundle: Path, data: list[str], seeds: int, seed: int, max_pairs: int,
                        side: int) -> tuple[dict[str, Any], np.ndarray, np.ndarray]:  # fmt: skip
    """Detection ratios of faces generated by ``bundle`` from its validation speech: as they are, bicubic, and after
    the model. Returns (figures, the generated uint8 [N, h, w, 3], the model's uint8 [N, H, W, 3])."""
    from engine.generator import Generator, to_uint8
    from training import face_metrics as fm
    from training.config import load_config
    from training.data import load_dataset, split_by_face
    from training.face_eval import seed_noise

    gen = Generator(bundle)
    try:
        if "audio" not in gen.bundle.inputs or "image" not in gen.bundle.outputs:
            raise UserError(f"--generated-by {bundle}: not an audio -> image bundle")
        cfg = load_config(bundle / "config.yaml")
        ds = load_dataset(data, gen.sample_rate, gen.image_size)
        _, val_idx = split_by_face(ds, cfg.train.val_fraction, cfg.train.seed)
        if len(val_idx) == 0:
            raise UserError(f"--generated-by {bundle}: no validation pairs in its split of {', '.join(data)}")
        if max_pairs and max_pairs < len(val_idx):
            val_idx = val_idx[np.linspace(0, len(val_idx) - 1, max_pairs).round().astype(np.int64)]
        audio = ds.windows(val_idx, gen.window_samples)
        floats = np.concatenate([
            np.concatenate([gen.run(audio=audio[i : i + 64], noise=noise[i : i + 64])["image"]
                            for i in range(0, len(audio), 64)])
            for noise in (seed_noise(seed, s, len(val_idx), gen.noise_dim) for s in range(seeds))
        ])  # fmt: skip
    finally:
        gen.close()
    faces = to_uint8(floats)
    upscaled = np.concatenate(
        [to_uint8(model.run(low_res=floats[i : i + 64])["image"]) for i in range(0, len(floats), 64)]
    )
    labels = np.tile(ds.labels[val_idx], seeds)
    analyzer = fm.FaceAnalyzer()
    log.info("detecting faces in %d generated images, three ways (~0.05 s each)", len(faces))
    detected = {
        "as_generated": analyzer.analyze(faces, embed=False).detected,
        "bicubic": analyzer.analyze(upscale_cv2(faces, side, "bicubic"), embed=False).detected,
        "model": analyzer.analyze(upscaled, embed=False).detected,
    }
    figures = {
        "bundle": str(bundle),
        "n_pairs": int(len(val_idx)),
        "seeds": seeds,
        "n_images": int(len(faces)),
        "detector": analyzer.settings(),
        "detection_ratio": {k: float(v.mean()) for k, v in detected.items()},
        "detection_ratio_per_identity": {
            ident: {k: float(v[labels == i].mean()) for k, v in detected.items()}
            for i, ident in enumerate(ds.identities)
            if (labels == i).any()
        },
        "lost_by_model": int((detected["as_generated"] & ~detected["model"]).sum()),
        "gained_by_model": int((~detected["as_generated"] & detected["model"]).sum()),
    }
    return figures, faces, upscaled


def format_markdown(metrics: dict[str, Any]) -> str:
    """The PSNR table (and the detection figures) as Markdown."""
    rgb, y = metrics["psnr_rgb_db"], metrics["psnr_y_db"]
    n, size = metrics["n_val_faces"], metrics["sizes"]
    lines = [
        f"PSNR on {n} validation face crops, {size['input']} -> {size['output']} px (mean over faces; luma with a "
        f"{metrics['scale']} px border cut)",
        "",
        "| upscaling | PSNR RGB (dB) | PSNR Y (dB) |",
        "| --- | ---: | ---: |",
    ]
    for name in ("model", *FILTERS):
        label = "face_sr (this model)" if name == "model" else f"{name} (OpenCV)"
        lines.append(f"| {label} | {rgb[name]['mean']:.2f} | {y[name]['mean']:.2f} |")
    g = metrics["gain_over_bicubic_db"]
    lines += ["", f"Gain over bicubic: {g['mean']:+.2f} dB RGB (95 % CI {g['ci95'][0]:+.2f} .. {g['ci95'][1]:+.2f}), "
              f"better on {100 * g['faces_better']:.1f} % of the faces."]  # fmt: skip
    for ident, v in metrics["per_identity"].items():
        lines.append(f"- {ident}: {v['n_faces']} faces, {v['psnr_model']:.2f} vs {v['psnr_bicubic']:.2f} dB "
                     f"({v['gain_db']:+.2f})")  # fmt: skip
    det = metrics.get("generated")
    if det:
        r = det["detection_ratio"]
        lines += [
            "",
            f"Face detection (dlib HOG) on {det['n_images']} faces generated by `{det['bundle']}` from "
            f"{det['n_pairs']} validation voices x {det['seeds']} seeds:",
            "",
            "| images | detection ratio |",
            "| --- | ---: |",
            f"| as generated ({size['input']} px; the detector upscales to 256 px, Lanczos) | {r['as_generated']:.4f} |",
            f"| bicubic to {size['output']} px | {r['bicubic']:.4f} |",
            f"| face_sr to {size['output']} px | {r['model']:.4f} |",
            "",
            f"Faces found as generated but not after face_sr: {det['lost_by_model']}; the other way: "
            f"{det['gained_by_model']}.",
        ]
    return "\n".join(lines) + "\n"


def _sheet(rows: list[list[np.ndarray]], side: int) -> np.ndarray:
    import cv2

    tiles = [[cv2.resize(im, (side, side), interpolation=cv2.INTER_NEAREST) if im.shape[0] != side else im
              for im in row] for row in rows]  # fmt: skip
    return np.concatenate([np.concatenate(row, axis=1) for row in tiles], axis=0)


def evaluate(model, args: argparse.Namespace) -> dict[str, Any]:
    """The face_sr evaluation (see the module docstring); returns the figures.

    Raises:
        UserError: no validation faces, or an unusable ``--generated-by`` bundle.
    """
    from training import runs

    started = time.perf_counter()
    cfg = model.cfg
    scale, size = int(cfg.model.scale), int(model.inputs["low_res"][2])
    crops = load_crops(args.data, size, scale)
    val, split_from = validation_indices(model, crops)
    if len(val) == 0:
        raise UserError(f"no validation faces (train.val_fraction={cfg.train.val_fraction})")
    if args.max_pairs and args.max_pairs < len(val):
        val = val[np.linspace(0, len(val) - 1, args.max_pairs).round().astype(np.int64)]
    low, high = crops.low[val], crops.high[val]
    sr = super_resolve(model, low)
    metrics: dict[str, Any] = {
        "n_val_faces": int(len(val)),
        "sizes": {"input": size, "output": int(high.shape[1])},
        "scale": scale,
        **psnr_table(sr, low, high, crops.labels[val], crops.identities, scale),
    }
    sheet_rows = [[upscale_cv2(low[i : i + 1], high.shape[1], "bicubic")[0], sr[i], high[i]]
                  for i in np.linspace(0, len(val) - 1, min(6, len(val))).round().astype(int)]  # fmt: skip
    bundle = getattr(args, "generated_by", None)
    if bundle is not None:
        metrics["generated"], faces, upscaled = generated_detection(
            model, Path(bundle), list(args.data), args.seeds, args.seed, args.max_pairs, int(high.shape[1])
        )
        for i in np.linspace(0, len(faces) - 1, min(6, len(faces))).round().astype(int):
            sheet_rows.append([faces[i], upscale_cv2(faces[i : i + 1], high.shape[1], "bicubic")[0], upscaled[i]])
    metrics.update({
        "model": {"target": str(args.target), "kind": model.kind,
                  **{k: v for k, v in model.info.items() if k not in ("command", "training")}},
        "data": [str(d) for d in args.data],
        "split": {"val_fraction": cfg.train.val_fraction, "seed": cfg.train.seed, "from": split_from},
        "total_seconds": round(time.perf_counter() - started, 2),
    })  # fmt: skip
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2, ensure_ascii=False) + "\n")
    table = format_markdown(metrics)
    (out / "psnr.md").write_text(table)
    runs.save_image(out / "samples.jpg", _sheet(sheet_rows, int(high.shape[1])))  # JPEG (quality 95): a photo sheet
    print(table)
    print(f"wrote {out / 'metrics.json'}, {out / 'psnr.md'} and {out / 'samples.jpg'}")
    return metrics
