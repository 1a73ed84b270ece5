"""``run.py generate`` (training.generate), the unseen-voices script and ``run.py evaluate`` end to end.

Uses a tiny randomly initialised bundle (the ``tiny_bundle`` fixture of conftest.py when present,
else one exported here with :func:`training.export.export_bundle`).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

import run
from engine.audio import find_audio_files, loudest_window
from engine.noise import file_noise
from training import generate as tg

REPO = Path(__file__).resolve().parent.parent
W2P = Path(os.environ.get("AVGAN_SHARED_DATA", REPO.parent / "shared" / "data")) / "wav2pix" / "train"


@pytest.fixture(scope="module")
def bundle(request, tmp_path_factory) -> Path:
    try:
        return Path(request.getfixturevalue("tiny_bundle"))
    except pytest.FixtureLookupError:
        pass
    import torch

    from tests.training_support import tiny_config_dict
    from training.config import config_from_dict
    from training.export import export_bundle
    from training.families.wav2pix.networks import build

    cfg = config_from_dict(tiny_config_dict())
    torch.manual_seed(0)
    net, _ = build(cfg.audio, cfg.model, 2)
    out = tmp_path_factory.mktemp("bundle") / "tiny"
    return export_bundle(
        net,
        cfg,
        ["jaimealtozano", "javiermuniz"],
        out,
        training_info={"command": "test", "data": [], "steps": 0},
        check=False,
    )


def cli(monkeypatch, *argv: str) -> int:
    monkeypatch.setattr(sys, "argv", ["run.py"])
    return run.main(list(argv))


def generate_cli(monkeypatch, audio: Path, out: Path, bundle: Path, *extra: str) -> int:
    return cli(monkeypatch, "generate", "--audio", str(audio), "--out", str(out), "--bundle", str(bundle), *extra)


def tone(seconds: float, rate: int, freq: float, channels: int = 1, seed: int = 0) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    x = 0.3 * np.sin(2 * np.pi * freq * t) + 0.05 * np.random.default_rng(seed).normal(size=t.size)
    return np.repeat(x[:, None], channels, axis=1).astype(np.float32)


@pytest.fixture()
def audio_tree(tmp_path) -> Path:
    root = tmp_path / "audio"
    (root / "sub" / "deeper").mkdir(parents=True)
    sf.write(root / "a.wav", tone(2.5, 22050, 220, channels=2), 22050)  # stereo, 22.05 kHz, long
    sf.write(root / "sub" / "b.flac", tone(0.4, 16000, 440), 16000)  # shorter than the window
    sf.write(root / "sub" / "deeper" / "c.ogg", tone(1.2, 48000, 330, seed=1), 48000)
    (root / "sub" / "broken.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunkjunk")
    (root / "notes.txt").write_text("not audio")
    return root


# ---------------------------------------------------------------------- pieces
def test_loudest_window_picks_loud_part_and_pads():
    x = np.zeros(48000, np.float32)
    x[30000:34000] = 0.5
    w = loudest_window(x, 16000)
    assert w.shape == (16000,) and w.dtype == np.float32 and np.abs(w).sum() == pytest.approx(0.5 * 4000)
    silent = np.arange(40000, dtype=np.float32) * 0  # ties -> centre window
    assert loudest_window(silent, 16000).shape == (16000,)
    short = np.ones(1000, np.float32)
    padded = loudest_window(short, 16000)
    assert padded.shape == (16000,) and padded[:1000].all() and not padded[1000:].any()


def test_file_noise_depends_on_seed_and_relative_path_only():
    a = file_noise(3, Path("sub/x.wav"), 8)
    assert a.dtype == np.float32 and a.shape == (8,)
    assert np.array_equal(a, file_noise(3, "sub/x.wav", 8))
    assert not np.array_equal(a, file_noise(4, "sub/x.wav", 8))
    assert not np.array_equal(a, file_noise(3, "sub/y.wav", 8))


def test_output_paths_mirror_and_disambiguate(tmp_path):
    rels = [Path("a.wav"), Path("a.flac"), Path("s/b.mp3")]
    assert tg.output_paths(rels, tmp_path) == [tmp_path / "a.wav", tmp_path / "a.flac", tmp_path / "s" / "b"]


def test_find_audio_files(audio_tree):
    rels = [r.as_posix() for _, r in find_audio_files(audio_tree)]
    assert rels == ["a.wav", "sub/b.flac", "sub/broken.wav", "sub/deeper/c.ogg"]
    assert find_audio_files(audio_tree / "a.wav") == [(audio_tree / "a.wav", Path("a.wav"))]
    from engine.errors import UserError

    with pytest.raises(UserError, match="no such file"):
        find_audio_files(audio_tree / "missing")


# ---------------------------------------------------------------------- command line
def test_generate_cli_mirrors_folders_is_deterministic_and_reports_failures(
    bundle, audio_tree, tmp_path, monkeypatch, capsys, caplog
):
    from PIL import Image

    out1, out2, out3 = tmp_path / "o1", tmp_path / "o2", tmp_path / "o3"
    assert generate_cli(monkeypatch, audio_tree, out1, bundle, "--seed", "5") == 1  # one corrupt file -> non-zero exit
    printed = capsys.readouterr().out
    assert "3 file(s)" in printed and "1 input(s) failed" in printed and "broken.wav" in printed
    assert any("broken.wav" in r.getMessage() for r in caplog.records)
    made = sorted(p.relative_to(out1).as_posix() for p in out1.rglob("*.png"))
    assert made == ["a.png", "sub/b.png", "sub/deeper/c.png"]
    img = np.asarray(Image.open(out1 / "a.png"))
    size = json.loads((bundle / "bundle.json").read_text())["outputs"]["image"]["shape"][2]
    assert img.shape == (size, size, 3) and img.dtype == np.uint8
    assert not list(out1.rglob("*.wav"))  # an image-only bundle writes no sound

    # same seed, an extra file processed first and one file fewer (other batch composition): identical images
    shutil.copytree(audio_tree, tmp_path / "audio2")
    (tmp_path / "audio2" / "sub" / "broken.wav").unlink()
    sf.write(tmp_path / "audio2" / "0first.wav", tone(1.0, 16000, 100), 16000)
    assert generate_cli(monkeypatch, tmp_path / "audio2", out2, bundle, "--seed", "5") == 0
    for rel in made:
        assert np.array_equal(np.asarray(Image.open(out1 / rel)), np.asarray(Image.open(out2 / rel))), rel

    # another seed: different images
    assert generate_cli(monkeypatch, audio_tree / "a.wav", out3, bundle, "--seed", "6") == 0
    assert not np.array_equal(np.asarray(Image.open(out1 / "a.png")), np.asarray(Image.open(out3 / "a.png")))


def test_generate_cli_user_errors(bundle, tmp_path, monkeypatch, capsys):
    assert generate_cli(monkeypatch, tmp_path / "nope", tmp_path / "o", bundle) == 2
    assert "no such file" in capsys.readouterr().err
    (tmp_path / "in").mkdir()
    sf.write(tmp_path / "in" / "x.wav", tone(1.0, 16000, 200), 16000)
    assert generate_cli(monkeypatch, tmp_path / "in", tmp_path / "o", tmp_path / "no-bundle") == 2
    assert "no-bundle" in capsys.readouterr().err


# ---------------------------------------------------------------------- unseen voices + evaluate
def _voices_module():
    spec = importlib.util.spec_from_file_location("make_unseen_voices", REPO / "scripts" / "make_unseen_voices.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng not installed")
def test_make_unseen_voices(tmp_path):
    paths = _voices_module().make_unseen_voices(tmp_path / "voices", count=3)
    assert len(paths) == 3
    for p in paths:
        data, rate = sf.read(p)
        assert rate == 16000 and data.ndim == 1 and 1.0 <= len(data) / rate <= 3.0
        assert 0.5 < np.abs(data).max() <= 0.91


@pytest.mark.skipif(not W2P.is_dir(), reason=f"real Wav2Pix data not found at {W2P} (set AVGAN_SHARED_DATA)")
def test_evaluate_cli_end_to_end(bundle, tmp_path, monkeypatch, capsys):
    """A small real subset (links, not copies) → metrics.json, samples.png and a table."""
    data = tmp_path / "data"
    for ident in ("jaimealtozano", "javiermuniz"):
        (data / ident).mkdir(parents=True)
        frames = sorted((W2P / ident).glob("cropped_face_frame_*.png"), key=lambda p: int(p.stem.rsplit("_", 1)[1]))
        for img in frames[:40]:
            n = img.stem.rsplit("_", 1)[1]
            (data / ident / img.name).symlink_to(img)
            (data / ident / f"preprocessed_frame_{n}.flac").symlink_to(W2P / ident / f"preprocessed_frame_{n}.flac")
    monkeypatch.setenv("AVGAN_CACHE", str(tmp_path / "cache"))
    voices = tmp_path / "voices"
    voices.mkdir()
    sf.write(voices / "v1.wav", tone(1.5, 16000, 180), 16000)
    sf.write(voices / "v2.flac", tone(2.0, 16000, 260, seed=2), 16000)
    out = tmp_path / "eval"
    args = ["evaluate", str(bundle), "--data", str(data), "--out", str(out), "--seeds", "2", "--max-pairs", "4"]
    assert cli(monkeypatch, *args, "--unseen-voices", str(voices), "--train-pairs", "6") == 0
    table = capsys.readouterr().out
    assert "face detection ratio" in table and "Fréchet" in table
    m1 = json.loads((out / "metrics.json").read_text())
    assert m1["n_generated"] == 2 * m1["split"]["n_val_pairs_evaluated"] == 8
    assert m1["split"]["n_val_pairs"] >= 4 and m1["n_real_val_faces"] >= 1
    assert m1["reference"]["detection_ratio"] >= 0.85  # real validation faces
    assert m1["unseen_voices"]["n_files"] == 2 and m1["unseen_voices"]["n_images"] == 4
    assert 0.0 <= m1["detection_ratio"] <= 1.0
    assert set(m1["diversity"]) == {"jaimealtozano", "javiermuniz"}
    assert m1["reference"]["identity_accuracy"] == 1.0 and m1["reference"]["frechet_distance_train_vs_val"] > 0
    # losing half the linear resolution moves real faces further from the training faces
    half = m1["reference"]["frechet_distance_train_vs_val_half_resolution"]
    assert half > m1["reference"]["frechet_distance_train_vs_val"] and "half resolution" in table
    fit = m1["train_fit"]
    assert fit["n_pairs"] == 6 and fit["frechet_distance"] > 0 and "training speech" in table
    assert abs(sum(fit["frechet_terms"].values()) - fit["frechet_distance"]) < 1e-9
    from PIL import Image

    sheet = np.asarray(Image.open(out / "samples.png"))
    size = json.loads((bundle / "bundle.json").read_text())["outputs"]["image"]["shape"][2]
    assert sheet.shape[1] > 3 * size and sheet.shape[0] >= 2 * size  # rows: voices; columns: real + 2 seeds
