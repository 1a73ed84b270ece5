"""The face super-resolution stage (family ``face_sr``): network, data split, training without a discriminator,
export, evaluation, the engine's :class:`engine.superres.SuperResolved`, and the shipped bundle's PSNR gain."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml

import run
from engine.bundle import BundleError, load_bundle
from engine.generator import Generator, to_uint8
from engine.superres import SuperResolutionError, SuperResolved
from tests.training_support import make_wav2pix_dataset
from training.families.face_sr.config import SRModelConfig
from training.families.face_sr.networks import FaceSRNet

ROOT = Path(__file__).resolve().parents[1]
W2P = Path(os.environ.get("AVGAN_SHARED_DATA", ROOT.parent / "shared" / "data")) / "wav2pix" / "train"
SHIPPED = ROOT / "presets" / "models" / "face-sr-4x"
DEFAULT = ROOT / "presets" / "models" / "wav2pix-64"


def cli(monkeypatch: pytest.MonkeyPatch, *argv: str) -> int:
    monkeypatch.setattr(sys, "argv", ["run.py"])
    return run.main(list(argv))


def test_network_starts_as_the_bilinear_upscale_and_is_fully_convolutional() -> None:
    torch.manual_seed(0)
    net = FaceSRNet(SRModelConfig(channels=8, blocks=2)).eval()
    for side in (16, 24):
        x = torch.rand(2, 3, side, side) * 2 - 1
        with torch.no_grad():
            out = net(x)
        assert out.shape == (2, 3, 4 * side, 4 * side)
        assert torch.equal(out, F.interpolate(x, scale_factor=4, mode="bilinear", align_corners=False))


def test_split_is_the_face_generators_split(tmp_path: Path) -> None:
    from training import families
    from training.config import config_from_dict
    from training.data import load_dataset, split_by_face

    root = make_wav2pix_dataset(tmp_path / "ds", identities=2, faces=10, snippets=2)
    ds = load_dataset([root], image_size=16, use_cache=False)
    _, val = split_by_face(ds, 0.2, seed=3)
    want = sorted({ds.face_hashes[f] for f in ds.face_index[val]})
    family = families.get("face_sr")
    cfg = config_from_dict({"family": "face_sr", "model": {"input_size": 16}, "train": {"val_fraction": 0.2, "seed": 3}})
    crops = family.load_data(cfg, [str(root)])
    split = family.split(cfg, crops)
    assert split.record["val_face_hashes"] == want and len(split.val) == len(want) == 4
    assert crops.low.shape == (20, 16, 16, 3) and crops.high.shape == (20, 64, 64, 3)
    assert np.array_equal(crops.low[0], ds.faces[ds.face_hashes.index(crops.hashes[0])])  # what the generator saw


@pytest.fixture(scope="module")
def sr_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(dataset folder, run folder) of a 4-step face_sr run at 64 -> 256 px on a tiny synthetic dataset."""
    tmp = tmp_path_factory.mktemp("face_sr")
    data = make_wav2pix_dataset(tmp / "data", identities=2, faces=6, snippets=2)
    config = tmp / "sr.yaml"
    config.write_text(yaml.safe_dump({
        "family": "face_sr", "model": {"input_size": 64, "channels": 4, "blocks": 1}, "data": {"patch": 16},
        "train": {"steps": 4, "batch_size": 2, "log_every": 2, "sample_every": 4, "checkpoint_every": 2,
                  "num_threads": 1, "val_fraction": 0.25},
    }))  # fmt: skip
    out = tmp / "run"
    assert run.main(["train", "--config", str(config), "--data", str(data), "--out", str(out)]) == 0
    return data, out


def test_trains_without_a_discriminator_resumes_and_logs_validation_psnr(sr_run, monkeypatch) -> None:
    from safetensors import safe_open

    data, out = sr_run
    ckpt = sorted((out / "checkpoints").glob("step-*.safetensors"))[-1]
    with safe_open(str(ckpt), framework="pt") as fh:
        keys, meta = list(fh.keys()), fh.metadata()
    assert any(k.startswith("G_ema.") for k in keys) and not any(k.startswith(("D.", "opt_d")) for k in keys)
    assert "opt_d_groups" not in meta
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [2, 4] and all(np.isfinite(r["val_psnr"]) for r in log)
    assert (out / "samples" / "step-0000004.png").is_file()
    assert cli(monkeypatch, "train", "--config", str(out / "config.yaml"), "--data", str(data), "--out", str(out),
               "--resume", "--steps", "6") == 0  # fmt: skip
    assert (out / "checkpoints" / "step-0000006.safetensors").is_file()


@pytest.fixture(scope="module")
def sr_bundle(sr_run, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("sr_bundle") / "sr"
    assert run.main(["export", str(sr_run[1]), "-o", str(out)]) == 0
    return out


def test_exported_bundle_runs_in_the_engine(sr_bundle: Path) -> None:
    bundle = load_bundle(sr_bundle)
    assert bundle.family == "face_sr" and bundle.sample_rate == 0 and bundle.window_samples == 0
    assert list(bundle.inputs) == ["low_res"] and bundle.inputs["low_res"].shape == (None, 3, 64, 64)
    assert bundle.outputs["image"].shape == (None, 3, 256, 256) and bundle.family_info["scale"] == 4
    x = np.random.default_rng(0).uniform(-1, 1, (2, 3, 64, 64)).astype(np.float32)
    outs = []
    for backend in ("onnxruntime-cpu", "torch-cpu"):
        gen = Generator(sr_bundle, backend=backend, fallback=False, max_batch=2)  # warm-up fills low_res
        outs.append(gen.run(low_res=x)["image"])
        gen.close()
    assert outs[0].shape == (2, 3, 256, 256) and np.abs(outs[0] - outs[1]).max() < 1e-4
    assert outs[0].min() >= -1 and outs[0].max() <= 1


def test_sample_rate_zero_only_for_bundles_without_sound(sr_bundle: Path, tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "b"
    shutil.copytree(sr_bundle, copy)
    manifest = json.loads((copy / "bundle.json").read_text())
    manifest["inputs"]["audio"] = {"shape": [None, 100], "fill": "required"}
    (copy / "bundle.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="key 'sample_rate' must be positive, got 0"):
        load_bundle(copy, verify=False)
    manifest["sample_rate"] = -1
    del manifest["inputs"]["audio"]
    (copy / "bundle.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="must be >= 0"):
        load_bundle(copy, verify=False)


def test_evaluate_reports_psnr_against_the_filters_and_detection_on_generated_faces(
    sr_run, sr_bundle: Path, tiny_bundle: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
    data, _ = sr_run
    out = tmp_path / "eval"
    assert cli(monkeypatch, "evaluate", str(sr_bundle), "--data", str(data), "--out", str(out), "--seeds", "1",
               "--max-pairs", "2", "--generated-by", str(tiny_bundle)) == 0  # fmt: skip
    m = json.loads((out / "metrics.json").read_text())
    assert m["n_val_faces"] == 2 and m["sizes"] == {"input": 64, "output": 256}
    assert set(m["psnr_rgb_db"]) == {"model", "nearest", "bilinear", "bicubic", "lanczos"}
    rgb = m["psnr_rgb_db"]
    # a 6-step model is still close to its bilinear start; nearest neighbour is worse than both on smooth discs
    assert abs(rgb["model"]["mean"] - rgb["bilinear"]["mean"]) < 3 and rgb["nearest"]["mean"] < rgb["bicubic"]["mean"]
    g = m["generated"]
    assert g["n_images"] == 2 and set(g["detection_ratio"]) == {"as_generated", "bicubic", "model"}
    table = (out / "psnr.md").read_text()
    assert "| face_sr (this model) |" in table and "Gain over bicubic" in table and "Face detection" in table
    assert "PSNR on 2 validation face crops" in capsys.readouterr().out
    assert (out / "samples.jpg").is_file()


def test_superresolved_upscales_single_faces_through_the_engine(tiny_bundle: Path, sr_bundle: Path) -> None:
    gen, up = Generator(tiny_bundle, max_batch=4), Generator(sr_bundle, max_batch=1)
    both = SuperResolved(gen, up, max_faces=1)
    try:
        assert both.image_size == 256 and both.sample_rate == gen.sample_rate and "+ sr" in both.backend_name
        audio = np.random.default_rng(1).uniform(-0.3, 0.3, (3, gen.window_samples)).astype(np.float32)
        noise = gen.make_noise(3, seed=2)
        one = both(audio[:1], noise=noise[:1])
        assert one.shape == (1, 256, 256, 3) and one.dtype == np.uint8
        floats = gen.run(audio=audio[:1], noise=noise[:1])["image"]
        assert np.array_equal(one, to_uint8(up.run(low_res=floats)["image"]))  # exactly the two stages
        assert both(audio, noise=noise).shape == (3, 64, 64, 3)  # the grid's batches pass as generated
    finally:
        both.close()


def test_a_stage_that_does_not_fit_is_refused_with_the_preset_key(
    tiny_bundle: Path, sr_run, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The engine refuses a stage of another size; live skips it with a warning (the base preset's face stage
    must not stop a 32 px digits bundle); a bundle that is no stage at all is a user error naming the key."""
    from installation.live import LiveConfig, LiveError, _super_resolved

    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"family": "face_sr", "model": {"input_size": 32, "channels": 4, "blocks": 0},
                                      "train": {"steps": 1, "batch_size": 2, "num_threads": 1}}))  # fmt: skip
    assert run.main(["train", "--config", str(config), "--data", str(sr_run[0]), "--out", str(tmp_path / "r")]) == 0
    assert run.main(["export", str(tmp_path / "r"), "-o", str(tmp_path / "sr32")]) == 0
    gen = Generator(tiny_bundle, warmup=False)
    with pytest.raises(SuperResolutionError, match=r"takes images \[3, 32, 32\], but .* makes \[3, 64, 64\]"):
        SuperResolved(gen, Generator(tmp_path / "sr32", warmup=False))
    plain = Generator(tiny_bundle, warmup=False)
    with caplog.at_level("WARNING", logger="installation.live"):
        assert _super_resolved(plain, LiveConfig(super_resolution=tmp_path / "sr32")) is plain
    assert "engine.super_resolution: skipped: " in caplog.text and "makes [3, 64, 64]" in caplog.text
    plain.close()
    with pytest.raises(LiveError, match=r"engine.super_resolution: .* \(set engine.super_resolution: '' to turn it off\)"):
        _super_resolved(Generator(tiny_bundle, warmup=False), LiveConfig(super_resolution=tiny_bundle))
    with pytest.raises(SuperResolutionError, match="not a super-resolution bundle"):
        SuperResolved(gen, gen)


@pytest.mark.skipif(not W2P.is_dir(), reason=f"real Wav2Pix data not found at {W2P} (set AVGAN_SHARED_DATA)")
def test_shipped_stage_beats_bicubic_by_a_decibel_on_the_validation_crops() -> None:
    """Issue 24's criterion, measured again through the engine: PSNR of the shipped stage against bicubic upscaling
    on the validation face crops (the default model's split), 64 -> 256 px."""
    import cv2

    from training.data.dataset import validation_faces
    from training.families.face_sr.data import load_crops, psnr

    crops = load_crops([str(W2P)], 64, 4)
    val = np.flatnonzero(validation_faces(crops.hashes, crops.labels, 0.1, 0))
    assert len(val) == 111
    gen = Generator(SHIPPED, backend="onnxruntime-cpu", max_batch=32)
    try:
        x = crops.low[val].transpose(0, 3, 1, 2).astype(np.float32) / 127.5 - 1
        sr = to_uint8(gen.run(low_res=x)["image"])
    finally:
        gen.close()
    bicubic = np.stack([cv2.resize(im, (256, 256), interpolation=cv2.INTER_CUBIC) for im in crops.low[val]])
    gain = psnr(sr, crops.high[val]) - psnr(bicubic, crops.high[val])
    assert gain.mean() >= 1.0, f"gain over bicubic {gain.mean():.2f} dB"
    for label in np.unique(crops.labels[val]):
        assert gain[crops.labels[val] == label].mean() >= 1.0


def test_gallery_preset_fits_the_face_and_runs_the_shipped_stage() -> None:
    from installation.live import config_from_preset
    from installation.presets import load_preset

    preset = load_preset("gallery")
    assert preset.scenes["portrait"]["fit"] == "fit" and preset.scenes["morph"]["fit"] == "fit"
    assert preset.engine.super_resolution_path == SHIPPED
    assert config_from_preset(preset).super_resolution == SHIPPED
    stage, default = load_bundle(SHIPPED), load_bundle(DEFAULT)
    assert stage.family == "face_sr" and stage.inputs["low_res"].item_shape == default.outputs["image"].item_shape
    assert stage.outputs["image"].item_shape == (3, 256, 256)
    off = load_preset("gallery", overrides={"engine": {"super_resolution": ""}})
    assert off.engine.super_resolution_path is None and config_from_preset(off).super_resolution is None
