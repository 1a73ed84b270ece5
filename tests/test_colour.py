"""Colour channel order as a property of a data source, and the shipped default drawing skin as skin.

The published Wav2Pix crops are stored with red and blue swapped (``../shared/data/README.md``: face-centre mean
R 139 / G 135 / B 182). The loader reads each folder's channel order (:mod:`datastore.images`: Wav2Pix layout
swapped, capture datasets RGB, ``avgan-data.json`` overrides) and hands out true RGB; the default bundle's graph
exchanges the red and blue outputs of its weights, which were trained on the swapped crops.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import cv2
import numpy as np
import pytest

from datastore.capture_format import MANIFEST
from datastore.images import DECLARATION_FILE, channel_order, decode_image
from engine.errors import UserError
from tests.training_support import make_wav2pix_dataset
from training.data import load_dataset, split_by_face

ROOT = Path(__file__).resolve().parents[1]
W2P = Path(os.environ.get("AVGAN_SHARED_DATA", ROOT.parent / "shared" / "data")) / "wav2pix" / "train"
BUNDLE = ROOT / "presets" / "models" / "wav2pix-64"


def centre_red_minus_blue(images: np.ndarray) -> float:
    """Mean R - B over the central third (rows and columns) of uint8 RGB [N, H, W, 3] faces."""
    h, w = images.shape[1:3]
    centre = images[:, h // 3 : 2 * h // 3, w // 3 : 2 * w // 3].astype(np.float64)
    return float((centre[..., 0] - centre[..., 2]).mean())


def _jpeg(bgr: np.ndarray) -> bytes:
    ok, data = cv2.imencode(".png", bgr)
    assert ok
    return data.tobytes()


def test_decode_image_undoes_a_stored_swap() -> None:
    bgr = np.zeros((8, 8, 3), np.uint8)
    bgr[..., 2] = 200  # OpenCV order: a red image
    data = _jpeg(bgr)
    assert decode_image(data, 8, "x.png")[..., 0].min() == 200  # an ordinary file: red stays red
    stored_swapped = decode_image(data, 8, "x.png", "bgr")  # a file whose red is really blue
    assert stored_swapped[..., 2].min() == 200 and stored_swapped[..., 0].max() == 0
    with pytest.raises(ValueError, match="x.png: channel order must be one of rgb, bgr"):
        decode_image(data, 8, "x.png", "grb")  # type: ignore[arg-type]


def test_channel_order_by_layout_and_declaration(tmp_path: Path) -> None:
    w2p = make_wav2pix_dataset(tmp_path / "w2p", identities=1, faces=1, snippets=1)
    assert channel_order(w2p) == "bgr"  # the Wav2Pix layout: as the published crops are stored
    capture = tmp_path / "capture"
    capture.mkdir()
    (capture / MANIFEST).write_text("")
    assert channel_order(capture) == "rgb"  # the booth writes ordinary images
    (w2p / DECLARATION_FILE).write_text(json.dumps({"channel_order": "rgb"}))
    assert channel_order(w2p) == "rgb"  # a folder of one's own in the Wav2Pix layout declares it
    (capture / DECLARATION_FILE).write_text(json.dumps({"channel_order": "bgr"}))
    assert channel_order(capture) == "bgr"
    for text, match in (('{"channel_order": "RGB"}', "key 'channel_order': expected one of rgb, bgr, got 'RGB'"),
                        ('{"order": "rgb"}', "unknown key 'order'"), ("[1]", "expected a JSON object"),
                        ("{", "cannot read")):  # fmt: skip
        (w2p / DECLARATION_FILE).write_text(text)
        with pytest.raises(ValueError, match=f"{DECLARATION_FILE}: .*{match}".replace("[", r"\[")):
            channel_order(w2p)
        with pytest.raises(UserError, match=DECLARATION_FILE):  # the loader: a one-line user error
            load_dataset([w2p], image_size=8, use_cache=False)


def test_loader_hands_out_rgb_whatever_the_folder_stores(tmp_path: Path) -> None:
    swapped = make_wav2pix_dataset(tmp_path / "swapped", identities=1, faces=2, snippets=1)
    plain = make_wav2pix_dataset(tmp_path / "plain", identities=1, faces=2, snippets=1)
    (plain / DECLARATION_FILE).write_text(json.dumps({"channel_order": "rgb"}))
    cache = tmp_path / "cache"
    a = load_dataset([swapped], image_size=16, cache_dir=cache)
    b = load_dataset([plain], image_size=16, cache_dir=cache)
    assert np.array_equal(a.faces, b.faces[..., ::-1])  # the same files, read in the two orders
    assert len(list(cache.glob("pairs-*.npz"))) == 2  # the order is part of the cache key
    (plain / DECLARATION_FILE).write_text(json.dumps({"channel_order": "bgr"}))
    assert np.array_equal(load_dataset([plain], image_size=16, cache_dir=cache).faces, a.faces)


@pytest.mark.skipif(not W2P.is_dir(), reason=f"real Wav2Pix data not found at {W2P} (set AVGAN_SHARED_DATA)")
def test_real_faces_and_default_model_draw_skin_redder_than_blue() -> None:
    """The check of issue 24: mean R - B over the central third of the faces > 0, per speaker, for the real
    validation faces as loaded and for faces the default bundle generates from their speech."""
    from engine.generator import Generator

    ds = load_dataset([W2P], 16000, 64)
    _, val = split_by_face(ds, 0.1, 0)
    gen = Generator(BUNDLE, backend="onnxruntime-cpu", warmup=False)
    try:
        for label, name in enumerate(ds.identities):
            pairs = val[ds.labels[val] == label][:24]
            real = ds.images(pairs)
            fake = gen(ds.windows(pairs, gen.window_samples), seed=label)
            assert centre_red_minus_blue(real) > 10, name
            assert centre_red_minus_blue(fake) > 10, name
            # as the weights draw them (red and blue swapped back): what every picture showed before the fix
            assert centre_red_minus_blue(fake[..., ::-1]) < -10, name
    finally:
        gen.close()


@pytest.mark.slow  # three exports (~20 s); tests/test_default_bundle.py checks the shipped swap by default
def test_swap_red_blue_export_is_exact_kept_on_reexport_and_undone_for_fine_tuning(tiny_bundle, tiny_model,
                                                                                    tmp_path: Path) -> None:  # fmt: skip
    """``export --swap-red-blue`` (a model trained on red and blue swapped) exchanges the graph's red and blue
    outputs exactly; the weights file keeps the weights as trained; a bundle exported again keeps the setting
    unless told otherwise; a fine-tuning run started from such a bundle gets weights that draw RGB."""
    import torch

    import run
    from engine.generator import Generator
    from tests.conftest import TINY_IDENTITIES
    from tests.training_support import step_context
    from training.export import bake_parametrizations
    from training.families import get
    from training.families.wav2pix.inference import Wav2PixInference
    from training.families.wav2pix.networks import build

    def images(bundle: Path) -> np.ndarray:
        gen = Generator(bundle, backend="onnxruntime-cpu", warmup=False)
        rng = np.random.default_rng(0)
        out = gen.run(audio=rng.uniform(-0.3, 0.3, (2, gen.window_samples)).astype(np.float32), seed=1)["image"]
        gen.close()
        return out

    swapped, kept, undone = tmp_path / "swapped", tmp_path / "kept", tmp_path / "undone"
    assert run.main(["export", str(tiny_bundle), "-o", str(swapped), "--swap-red-blue"]) == 0
    assert run.main(["export", str(swapped), "-o", str(kept)]) == 0
    assert run.main(["export", str(kept), "-o", str(undone), "--no-swap-red-blue"]) == 0
    plain = images(tiny_bundle)
    assert np.abs(images(swapped) - plain[:, ::-1]).max() <= 1e-5
    assert np.abs(images(kept) - plain[:, ::-1]).max() <= 1e-5
    assert np.abs(images(undone) - plain).max() <= 1e-5
    assert [json.loads((b / "bundle.json").read_text())["family_info"]["swap_red_blue"]
            for b in (tiny_bundle, swapped, kept, undone)] == [False, True, True, False]  # fmt: skip
    assert (swapped / "generator.safetensors").read_bytes() == (tiny_bundle / "generator.safetensors").read_bytes()

    cfg = tiny_model.cfg
    net, disc = build(cfg.audio, cfg.model, len(TINY_IDENTITIES))
    ctx = step_context(cfg, net, disc)
    ctx.labels = list(TINY_IDENTITIES)
    get("wav2pix").init_from_bundle(ctx, swapped)
    rng = np.random.default_rng(0)
    audio = torch.from_numpy(rng.uniform(-0.3, 0.3, (2, cfg.audio.window_samples)).astype(np.float32))
    noise = torch.from_numpy(np.random.default_rng(1).standard_normal((2, cfg.model.noise_dim), dtype=np.float32))
    with torch.inference_mode():
        tuned = Wav2PixInference(bake_parametrizations(ctx.G)).eval()(audio, noise).numpy()
        source = tiny_model.eager()(audio, noise).numpy()
    assert np.abs(tuned - source[:, ::-1]).max() <= 1e-4  # the fine-tune starts from weights that draw RGB
