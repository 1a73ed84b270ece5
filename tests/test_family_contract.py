"""The family contract is enough: a toy family defined in the test suite (tests/toy_family/, nothing of it under
training/) trains with ``run.py train``, exports with ``run.py export``, and runs through the engine and
``run.py render`` with no change outside its own folder."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import yaml

import run
from engine.generator import Generator
from tests.toy_family import FAMILY, class_colour
from training import families


@pytest.fixture()
def toy_registered():
    families.register(FAMILY)
    yield FAMILY
    families._REGISTRY.pop(FAMILY.name, None)


def _tones(root: Path) -> Path:
    """Two classes of 8 kHz tones (low, high), 10 files each."""
    rng = np.random.default_rng(0)
    for name, freq in (("low", 220.0), ("high", 1760.0)):
        (root / name).mkdir(parents=True)
        for i in range(10):
            t = np.arange(2000) / 8000
            x = 0.4 * np.sin(2 * np.pi * freq * (1 + 0.02 * i) * t) + 0.01 * rng.standard_normal(t.size)
            sf.write(root / name / f"{i}.wav", x.astype(np.float32), 8000)
    return root


def test_toy_family_trains_exports_and_renders_through_the_shared_code(toy_registered, tmp_path, monkeypatch):
    monkeypatch.setenv("AVGAN_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(sys, "argv", ["run.py"])
    data = _tones(tmp_path / "tones")
    config = tmp_path / "toy.yaml"
    config.write_text(yaml.safe_dump({
        "family": "tone2colour",
        "model": {"width": 16},
        "train": {"steps": 30, "batch_size": 8, "lr_g": 0.01, "lr_d": 0.002, "log_every": 10, "sample_every": 30,
                  "checkpoint_every": 30, "ema_start": 0, "ema_decay": 0.5, "num_threads": 1},
    }))  # fmt: skip
    run_dir = tmp_path / "run"
    assert run.main(["train", "--config", str(config), "--data", str(data), "--out", str(run_dir)]) == 0
    split = json.loads((run_dir / "split.json").read_text())
    assert split["family"] == "tone2colour" and split["rule"] == "every fifth file" and split["identities"] == ["high", "low"]
    assert (run_dir / "samples" / "step-0000030.png").is_file() and (run_dir / "loss.png").is_file()

    bundle = tmp_path / "bundle"
    assert run.main(["export", str(run_dir), "-o", str(bundle)]) == 0
    manifest = json.loads((bundle / "bundle.json").read_text())
    assert manifest["family"] == "tone2colour" and manifest["format_version"] == 2
    assert manifest["family_info"]["colours"]["low"] == class_colour("low").tolist()

    gen = Generator(bundle, backend="onnxruntime-cpu", warmup=False)
    assert (gen.window_samples, gen.image_size, gen.sample_rate) == (2000, 16, 8000)
    tone, _ = sf.read(data / "high" / "3.wav", dtype="float32")
    out = gen.generate(seed=0, audio=np.stack([tone, tone]))
    assert out["image"].shape == (2, 16, 16, 3) and out["image"].dtype == np.uint8

    # render a clip of tones with the toy bundle: the shared render path only reads the bundle's named outputs
    clip = np.concatenate([np.zeros(4000), np.tile(tone, 8), np.zeros(4000)]).astype(np.float32)
    sf.write(tmp_path / "clip.wav", clip, 8000)
    video = tmp_path / "clip.mp4"
    args = ["render", str(tmp_path / "clip.wav"), "-o", str(video), "--bundle", str(bundle), "--size", "128",
            "--fps", "10", "--gen-fps", "0"]  # fmt: skip
    assert run.main(args) == 0
    import av

    with av.open(str(video)) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(frames) >= 25 and frames[0].shape == (128, 128, 3)
    assert max(float(f.std()) for f in frames) > 0  # something was drawn
