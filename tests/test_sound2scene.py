"""The sound2scene family: both importers on tiny real slices of the shared data, a few-step training and export
per data type (ONNX Runtime against torch, the class input), and the evaluation shown to discriminate.

Slices are symbolic links into ``../shared/data`` made in a temporary folder (nothing is copied); tests that need
the data skip, saying why, when it is absent.
"""

from __future__ import annotations

import json
import logging
import sys
from argparse import Namespace
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import yaml

import run
from engine.audio import loudest_window
from engine.errors import UserError
from training.config import load_config
from training.families.contract import Model
from training.families.sound2scene import FAMILY
from training.families.sound2scene.clips import load_clips, sample_times
from training.families.sound2scene.data import split
from training.families.sound2scene.paired import load_paired, read_idx

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
MUSIC, FSDD, MNIST = DATA / "music", DATA / "fsdd" / "recordings", DATA / "mnist"
SILENT_CLIP = MUSIC / "erhu" / "Us9dxgfBfeo_82.97.mp4"  # its audio track is digital silence

needs_music = pytest.mark.skipif(
    not MUSIC.is_dir(), reason=f"{MUSIC} absent (MUSIC clips, see ../shared/data/README.md)"
)
needs_digits = pytest.mark.skipif(not (FSDD.is_dir() and MNIST.is_dir()),
                                  reason=f"{FSDD} or {MNIST} absent (see ../shared/data/README.md)")  # fmt: skip


@pytest.fixture(autouse=True)
def _cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AVGAN_CACHE", str(tmp_path / "cache"))


def music_slice(root: Path, per_class: int = 2, classes: tuple[str, ...] = ("accordion", "cello", "flute")) -> Path:
    """``root/<class>/<clip>.mp4`` links to the first ``per_class`` MUSIC clips of ``classes``."""
    for name in classes:
        (root / name).mkdir(parents=True)
        for clip in sorted((MUSIC / name).glob("*.mp4"))[:per_class]:
            (root / name / clip.name).symlink_to(clip)
    return root


def digits_slice(root: Path, digits: int = 3, speakers: tuple[str, ...] = ("george", "theo"), takes: int = 8) -> Path:
    """``root/<digit>_<speaker>_<take>.wav`` links to FSDD recordings."""
    root.mkdir(parents=True)
    for d in range(digits):
        for s in speakers:
            for t in range(takes):
                (root / f"{d}_{s}_{t}.wav").symlink_to(FSDD / f"{d}_{s}_{t}.wav")
    return root


def tiny_config(path: Path, importer: str, **sections: dict) -> Path:
    """A tiny sound2scene config (32 px, a few steps) written to ``path``."""
    cfg = {
        "family": "sound2scene",
        "audio": {"sample_rate": 8000, "window_seconds": 0.5},
        "data": {"importer": importer, "frame_rate": 1.0, "max_images_per_class": 40},
        "model": {"n_fft": 256, "hop": 128, "n_mels": 16, "encoder_channels": 8, "embedding_dim": 8, "noise_dim": 4,
                  "image_size": 32, "g_channels": 16, "g_min_channels": 4, "d_channels": 4},
        "encoder": {"steps": 5, "batch_size": 8},
        "train": {"steps": 3, "batch_size": 4, "log_every": 1, "sample_every": 3, "checkpoint_every": 3,
                  "ema_start": 0, "num_threads": 1, "val_fraction": 0.5},
    }  # fmt: skip
    for key, value in sections.items():
        cfg[key] = {**cfg.get(key, {}), **value}
    path.write_text(yaml.safe_dump(cfg))
    return path


# -- importers -----------------------------------------------------------------------------------------------------
def test_sample_times_keep_whole_windows() -> None:
    assert sample_times(5.944, 1.0, 1.0).tolist() == [1.0, 2.0, 3.0, 4.0, 5.0]
    assert sample_times(5.944, 2.0, 1.0).tolist() == [0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0, 4.5, 5.0]
    assert sample_times(0.5, 1.0, 1.0).tolist() == []


@needs_music
def test_clip_importer_on_real_music_clips(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = music_slice(tmp_path / "clips")
    (root / "erhu").mkdir()
    (root / "erhu" / SILENT_CLIP.name).symlink_to(SILENT_CLIP)
    (root / "erhu" / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 not really a video")
    with caplog.at_level(logging.WARNING):
        ds = load_clips([root], 11025, 32, 1.0, 1.0)
    assert ds.classes == ["accordion", "cello", "flute"]  # erhu had no usable clip
    assert len(ds.sounds) == 6 and ds.images.shape == (18, 32, 32, 3)  # 3 frames per clip (0, 3 and 6 s)
    assert len(ds) == 30  # 5 sample times per clip at 1 Hz with 1 s windows
    first = np.flatnonzero(ds.item_sound == 0)
    assert ds.item_centre[first].tolist() == [11025 * k for k in range(1, 6)]
    assert ds.item_image[first].tolist() == [0, 0, 0, 1, 1]  # frames at 0, 3.003 and 6.006 s; audio 5.94 s
    assert len(ds.skipped) == 2 and any("silent" in s and SILENT_CLIP.name in s for s in ds.skipped)
    assert any("broken.mp4" in s for s in ds.skipped)
    assert "broken.mp4" in caplog.text and SILENT_CLIP.name in caplog.text
    w = ds.window(int(first[0]), 11025)
    np.testing.assert_array_equal(w, ds.sounds[0][11025 - 5512 : 11025 - 5512 + 11025])
    assert float(ds.images.std()) > 10  # real pictures, not blank frames

    cfg = load_config(tiny_config(tmp_path / "c.yaml", "clips"))
    parts = split(ds, cfg)
    val_clips = {ds.item_group[i] for i in parts.val_items}
    train_clips = {ds.item_group[i] for i in parts.train_items}
    assert val_clips and not (val_clips & train_clips)  # by clip, never by frame
    assert {ds.image_groups[i] for i in parts.val_images} == val_clips
    assert len(val_clips) == 3 and sorted(parts.record["val_clips"]) == sorted(val_clips)  # one of 2 per class
    again = load_clips([root], 11025, 32, 1.0, 1.0)  # from the cache
    np.testing.assert_array_equal(again.images, ds.images)
    assert again.skipped == ds.skipped and split(again, cfg).record == parts.record


def test_clip_importer_errors(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="clip folder not found"):
        load_clips([tmp_path / "nope"], 8000, 32, 1.0, 1.0)
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no clips found"):
        load_clips([tmp_path / "empty"], 8000, 32, 1.0, 1.0)
    (tmp_path / "bad" / "cls").mkdir(parents=True)
    (tmp_path / "bad" / "cls" / "x.mp4").write_bytes(b"garbage")
    with pytest.raises(UserError, match="no usable clip.*x.mp4"):
        load_clips([tmp_path / "bad"], 8000, 32, 1.0, 1.0, cache=False)


@needs_digits
def test_paired_importer_on_real_fsdd_and_mnist(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    sounds = digits_slice(tmp_path / "fsdd")
    with caplog.at_level(logging.WARNING):
        ds = load_paired([sounds, MNIST], 8000, 32)
    assert ds.classes == ["0", "1", "2"]  # the digits both sides have
    assert "classes only the images have" in caplog.text
    assert len(ds) == 48 and ds.images.shape[1:] == (32, 32, 3)
    assert set(ds.image_labels.tolist()) == {0, 1, 2} and len(ds.images) == int(np.isin(read_idx(
        next(MNIST.glob("*labels*"))), [0, 1, 2]).sum())  # fmt: skip
    assert set(ds.item_group) == {"george", "theo"} and ds.item_take.max() == 7
    i = ds.sound_names.index("1_theo_3.wav")
    audio, rate = sf.read(FSDD / "1_theo_3.wav", dtype="float32")
    assert rate == 8000 and ds.item_label[i] == 1
    np.testing.assert_allclose(ds.window(i, 8000), loudest_window(audio, 8000), atol=1e-4)  # as `generate` takes it
    w = ds.window(i, 8000, np.random.default_rng(0))
    assert w.shape == (8000,) and np.count_nonzero(w) >= len(audio) - 10  # the whole word, somewhere in the window

    cfg = load_config(tiny_config(tmp_path / "c.yaml", "paired", data={"image_val_fraction": 0.25}))
    parts = split(ds, cfg)
    assert set(ds.item_take[parts.val_items].tolist()) == {0, 1, 2, 3, 4}  # FSDD's own test takes
    assert set(ds.item_take[parts.train_items].tolist()) == {5, 6, 7}
    for k in range(3):
        n = int((ds.image_labels == k).sum())
        assert int((ds.image_labels[parts.val_images] == k).sum()) == round(0.25 * n)
    by_speaker = load_config(
        tiny_config(tmp_path / "s.yaml", "paired", data={"test_takes": 0, "val_speakers": ["theo"]})
    )
    parts = split(ds, by_speaker)
    assert {ds.item_group[i] for i in parts.val_items} == {"theo"}
    with pytest.raises(UserError, match="val_speakers.*nobody"):
        split(ds, load_config(tiny_config(tmp_path / "n.yaml", "paired", data={"val_speakers": ["nobody"]})))


def test_paired_importer_class_folders_and_errors(tmp_path: Path) -> None:
    import cv2

    rng = np.random.default_rng(0)
    for name in ("low", "high"):
        (tmp_path / "snd" / name).mkdir(parents=True)
        (tmp_path / "img" / name).mkdir(parents=True)
        for k in range(3):
            tone = 0.3 * np.sin(2 * np.pi * (200 if name == "low" else 2000) * np.arange(4000) / 8000)
            sf.write(tmp_path / "snd" / name / f"{k}.wav", tone.astype(np.float32), 8000)
            cv2.imwrite(str(tmp_path / "img" / name / f"{k}.png"), rng.integers(0, 255, (40, 50, 3), np.uint8))
    sf.write(tmp_path / "snd" / "low" / "quiet.wav", np.zeros(4000, np.float32), 8000)
    (tmp_path / "img" / "low" / "bad.png").write_bytes(b"not an image")
    ds = load_paired([tmp_path / "snd", tmp_path / "img"], 8000, 32)
    assert ds.classes == ["high", "low"] and len(ds) == 6 and ds.images.shape == (6, 32, 32, 3)
    assert (ds.item_take == -1).all() and any("quiet.wav" in s for s in ds.skipped)
    assert any("bad.png" in s for s in ds.skipped)
    with pytest.raises(UserError, match="expected two --data folders"):
        load_paired([tmp_path / "snd"], 8000, 32)
    (tmp_path / "idx").mkdir()
    (tmp_path / "idx" / "t-images-idx3-ubyte").write_bytes(bytes([0, 0, 8, 3] + [0, 0, 0, 2] * 3) + b"\x01")
    (tmp_path / "idx" / "t-labels-idx1-ubyte").write_bytes(bytes([0, 0, 8, 1, 0, 0, 0, 2, 1, 2]))
    with pytest.raises(UserError, match="t-images-idx3-ubyte: 1 data bytes for shape"):
        load_paired([tmp_path / "snd", tmp_path / "idx"], 8000, 32)
    (tmp_path / "flat").mkdir()
    sf.write(tmp_path / "flat" / "hello.wav", np.zeros(100, np.float32), 8000)
    with pytest.raises(UserError, match="hello.wav: expected a name <class>_<speaker>_<take>"):
        load_paired([tmp_path / "flat", tmp_path / "img"], 8000, 32)


# -- training, export, engine ----------------------------------------------------------------------------------------
def _train_and_export(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, config: Path, data: list[Path]) -> Path:
    monkeypatch.setattr(sys, "argv", ["run.py"])
    run_dir, bundle = tmp_path / "run", tmp_path / "bundle"
    args = ["train", "--config", str(config), "--out", str(run_dir)]
    for d in data:
        args += ["--data", str(d)]
    assert run.main(args) == 0
    assert (run_dir / "audio_encoder.safetensors").is_file() and (run_dir / "samples" / "step-0000003.png").is_file()
    report = json.loads((run_dir / "audio_encoder.json").read_text())
    assert report["steps"] == 5 and "val_accuracy_for_the_record" in report
    assert run.main(["export", str(run_dir), "-o", str(bundle)]) == 0  # includes the ORT / torch self-check
    return bundle


def _check_bundle(bundle: Path, n_classes: int) -> None:
    from engine.generator import Generator

    manifest = json.loads((bundle / "bundle.json").read_text())
    assert manifest["family"] == "sound2scene" and manifest["family_info"]["gate"] == "sound"
    assert list(manifest["inputs"]) == ["audio", "noise", "class"]
    assert manifest["inputs"]["class"]["fill"] == "zeros" and manifest["inputs"]["class"]["shape"] == [None, n_classes]
    assert list(manifest["outputs"]) == ["image", "class_probabilities"]
    ort = Generator(bundle, backend="onnxruntime-cpu", warmup=False)
    pt = Generator(bundle, backend="torch-cpu", warmup=False)
    rng = np.random.default_rng(0)
    audio = (0.3 * rng.standard_normal((4, ort.window_samples))).astype(np.float32)
    noise = ort.make_noise(4, seed=1)
    pins = np.zeros((4, n_classes), np.float32)
    pins[2, 0] = pins[3, 1] = 1.0  # rows 0-1 follow the sound, rows 2-3 pin classes 0 and 1
    a = ort.run(audio=audio, noise=noise, **{"class": pins})
    b = pt.run(audio=audio, noise=noise, **{"class": pins})
    for name in ("image", "class_probabilities"):
        assert np.abs(a[name] - b[name]).max() < 1e-3, name  # ONNX Runtime agrees with torch
    np.testing.assert_allclose(a["class_probabilities"].sum(1), 1.0, atol=1e-5)
    left_out = ort.run(audio=audio, noise=noise)  # the engine fills `class` with zeros: follow the sound
    np.testing.assert_allclose(left_out["image"][:2], a["image"][:2], atol=1e-6)
    other = ort.run(audio=audio[::-1].copy(), noise=noise, **{"class": pins})
    assert np.abs(other["image"][:2] - a["image"][:2]).max() > 1e-4  # following: the sound matters
    np.testing.assert_allclose(other["image"][2:], a["image"][2:], atol=1e-5)  # pinned: it does not


@needs_digits
def test_digits_trains_exports_and_generates(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sounds = digits_slice(tmp_path / "fsdd", digits=2, takes=6)
    config = tiny_config(tmp_path / "digits.yaml", "paired")
    bundle = _train_and_export(tmp_path, monkeypatch, config, [sounds, MNIST])
    _check_bundle(bundle, 2)
    out = tmp_path / "generated"
    assert run.main(["generate", "--audio", str(sounds), "--bundle", str(bundle), "--out", str(out)]) == 0
    pngs = sorted(out.glob("*.png"))
    assert len(pngs) == 24 and pngs[0].name == "0_george_0.png"  # one PNG per sound, named after it


@pytest.mark.slow  # decodes MUSIC clips and trains (~15 s); the digits test covers train/export/generate by default
@needs_music
def test_music_trains_and_exports(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    clips = music_slice(tmp_path / "clips", per_class=2, classes=("cello", "xylophone"))
    config = tiny_config(tmp_path / "music.yaml", "clips", audio={"sample_rate": 11025, "window_seconds": 1.0},
                         model={"image_size": 64, "n_fft": 512})  # fmt: skip
    bundle = _train_and_export(tmp_path, monkeypatch, config, [clips])
    _check_bundle(bundle, 2)
    split_record = json.loads((tmp_path / "run" / "split.json").read_text())
    assert split_record["rule"] == "by clip, within each class" and len(split_record["val_clips"]) == 2


# -- evaluation ------------------------------------------------------------------------------------------------------
def _stand_in_model(cfg, ds, parts, right: bool) -> Model:
    """A model that answers every sound with a real held-out image: of the sound's own class (``right``) or of a
    random class (a deliberately wrong model). It reads the class of a window from a table of the held-out windows."""
    window = cfg.audio.window_samples
    table = {ds.window(int(i), window).tobytes(): int(ds.item_label[i]) for i in parts.val_items}
    rng = np.random.default_rng(0)
    by_class = [parts.val_images[ds.image_labels[parts.val_images] == k] for k in range(len(ds.classes))]

    def run_model(audio: np.ndarray, noise: np.ndarray, **inputs: np.ndarray) -> dict[str, np.ndarray]:
        pinned = inputs["class"].argmax(1)
        labels = []
        for row, a in enumerate(audio):
            if inputs["class"][row].sum() > 0:
                labels.append(int(pinned[row]) if right else int(rng.integers(len(ds.classes))))
            else:
                heard = table.get(np.ascontiguousarray(a).tobytes(), 0)
                labels.append(heard if right else int(rng.integers(len(ds.classes))))
        images = np.stack([ds.images[by_class[k][rng.integers(len(by_class[k]))]] for k in labels])
        probs = np.eye(len(ds.classes), dtype=np.float32)[labels]
        return {"image": images.transpose(0, 3, 1, 2).astype(np.float32) / 127.5 - 1.0, "class_probabilities": probs}

    size = cfg.model.image_size
    return Model(name="stand-in", kind="bundle", family=FAMILY, cfg=cfg, labels=list(ds.classes),
                 sample_rate=cfg.audio.sample_rate,
                 inputs={"audio": (None, window), "noise": (None, cfg.model.noise_dim), "class": (None, len(ds.classes))},
                 outputs={"image": (None, 3, size, size), "class_probabilities": (None, len(ds.classes))},
                 run=run_model)  # fmt: skip


@needs_digits
def test_evaluation_tells_a_right_model_from_a_wrong_one(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    sounds = digits_slice(tmp_path / "fsdd", digits=5, speakers=("george", "jackson"), takes=7)
    cfg = load_config(tiny_config(tmp_path / "c.yaml", "paired", data={"max_images_per_class": 80}))
    ds = FAMILY.load_data(cfg, [str(sounds), str(MNIST)])
    parts = split(ds, cfg)
    figures = {}
    for right in (True, False):
        args = Namespace(data=[sounds, MNIST], out=tmp_path / f"eval-{right}", seeds=2, seed=0, max_pairs=0,
                         classifier_steps=100, volume_items=8, target="stand-in")  # fmt: skip
        figures[right] = FAMILY.evaluate(_stand_in_model(cfg, ds, parts, right), args)
    good, bad = figures[True], figures[False]
    assert good["real_val_accuracy"] >= 0.85  # the classifier trained here reads real held-out digits
    assert good["gan_test_accuracy"] >= 0.8 and good["audio_accuracy"] == 1.0 and good["pinned_class_accuracy"] >= 0.8
    assert bad["gan_test_accuracy"] <= 0.35 and bad["pinned_class_accuracy"] <= 0.35  # chance is 0.2
    assert bad["audio_accuracy"] <= 0.4
    assert good["classifier"]["cached"] is False and bad["classifier"]["cached"] is True  # trained once
    assert good["frechet_distance"]["distance"] < 0.5 * max(bad["frechet_distance"]["distance"], 1e-9) or (
        good["frechet_distance"]["distance"] < 5.0)  # fmt: skip
    assert set(good["volume_test"]["mean_abs_change_vs_silence"]) == {"-20 dB", "-10 dB", "0 dB"}
    assert 0.5 <= good["diversity"]["mean_ratio"] <= 1.5
    saved = json.loads((tmp_path / "eval-True" / "metrics.json").read_text())
    assert saved["gan_test_accuracy"] == good["gan_test_accuracy"]
    import cv2

    sheet = cv2.imread(str(tmp_path / "eval-True" / "samples.png"))
    assert sheet is not None and sheet.shape[0] >= 5 * 64 and float(sheet.std()) > 20
    assert "GAN-test accuracy" in capsys.readouterr().out
