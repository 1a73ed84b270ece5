"""Dataset readers: Wav2Pix layout, capture layout, decoding, corrupt files, face-level split."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import av
import numpy as np
import pytest
import soundfile as sf

from datastore.capture_format import MANIFEST
from engine.audio import AudioDecodeError, load_audio
from engine.errors import UserError
from tests.training_support import make_wav2pix_dataset
from training.data import load_dataset, split_by_face
from training.data.diffaugment import diff_augment

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "wav2pix" / "train"


def test_wav2pix_layout_and_dedup(tmp_path):
    root = make_wav2pix_dataset(tmp_path / "ds", identities=2, faces=3, snippets=2)
    ds = load_dataset([root], image_size=32, use_cache=False)
    assert len(ds) == 12 and len(ds.faces) == 6 and ds.identities == ["person0", "person1"]
    assert ds.faces.shape == (6, 32, 32, 3) and ds.faces.dtype == np.uint8
    assert all(a.dtype == np.float32 and a.shape == (16000,) for a in ds.audio)
    assert not ds.skipped


def test_corrupt_and_empty_files_skipped_and_counted(tmp_path, caplog):
    root = make_wav2pix_dataset(tmp_path / "ds", identities=2, faces=2, snippets=2)
    (root / "person0" / "preprocessed_frame_0.flac").write_bytes(b"not audio at all" * 10)
    (root / "person1" / "cropped_face_frame_5.png").write_bytes(b"")
    with caplog.at_level(logging.WARNING):
        ds = load_dataset([root], image_size=32, use_cache=False)
    assert len(ds) == 6 and len(ds.skipped) == 2
    assert "preprocessed_frame_0.flac" in caplog.text and "cropped_face_frame_5.png" in caplog.text
    assert "2 files skipped" in ds.summary()


def test_missing_and_empty_folder_errors(tmp_path):
    with pytest.raises(UserError, match="not found"):
        load_dataset([tmp_path / "nope"], use_cache=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no speech/face pairs"):
        load_dataset([tmp_path / "empty"], use_cache=False)


def test_split_by_face_never_leaks(tmp_path):
    root = make_wav2pix_dataset(tmp_path / "ds", identities=2, faces=10, snippets=3)
    ds = load_dataset([root], image_size=16, use_cache=False)
    tr, va = split_by_face(ds, 0.2, seed=0)
    assert len(tr) + len(va) == len(ds)
    assert not set(ds.face_index[tr]) & set(ds.face_index[va])
    assert set(ds.labels[va]) == {0, 1}  # stratified: every identity is in validation
    tr2, va2 = split_by_face(ds, 0.2, seed=0)
    assert np.array_equal(va, va2)


def test_cache_round_trip(tmp_path):
    root = make_wav2pix_dataset(tmp_path / "ds", faces=2, snippets=1)
    a = load_dataset([root], image_size=16, cache_dir=tmp_path / "cache")
    b = load_dataset([root], image_size=16, cache_dir=tmp_path / "cache")
    assert list((tmp_path / "cache").glob("*.npz"))
    assert np.array_equal(a.faces, b.faces) and all(np.array_equal(x, y) for x, y in zip(a.audio, b.audio))


def _write_with_av(path: Path, audio: np.ndarray, rate: int, codec: str, layout: str = "stereo") -> None:
    with av.open(str(path), "w") as out:
        stream = out.add_stream(codec, rate=rate, layout=layout)
        frame = av.AudioFrame.from_ndarray(audio.astype(np.float32).reshape(1, -1), format="flt", layout=layout)
        frame.sample_rate = rate
        for packet in stream.encode(frame):
            out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)


@pytest.mark.parametrize("fmt", ["wav44k-stereo", "ogg", "mp3", "m4a"])
def test_any_format_rate_channels_to_16k_mono(tmp_path, fmt):
    rate = 44100
    t = np.arange(rate) / rate
    tone = 0.5 * np.sin(2 * np.pi * 440 * t)
    if fmt == "wav44k-stereo":
        path = tmp_path / "a.wav"
        sf.write(path, np.stack([tone, tone], 1), rate)
    elif fmt == "ogg":
        path = tmp_path / "a.ogg"
        sf.write(path, tone, rate, format="OGG", subtype="VORBIS")
    else:
        path = tmp_path / f"a.{fmt}"
        inter = np.stack([tone, tone], 1).reshape(-1)
        _write_with_av(path, inter, rate, "mp3" if fmt == "mp3" else "aac")
    audio = load_audio(path, 16000)
    assert audio.dtype == np.float32 and audio.ndim == 1
    assert abs(len(audio) - 16000) < 2000  # codecs add priming/padding
    spectrum = np.abs(np.fft.rfft(audio[2000:14000]))
    peak_hz = np.argmax(spectrum) * 16000 / 12000
    assert abs(peak_hz - 440) < 10


def test_audio_errors_name_file(tmp_path):
    with pytest.raises(AudioDecodeError, match="no such file"):
        load_audio(tmp_path / "x.wav")
    empty = tmp_path / "e.wav"
    empty.write_bytes(b"")
    with pytest.raises(AudioDecodeError, match=r"e\.wav.*empty"):
        load_audio(empty)
    junk = tmp_path / "j.mp3"
    junk.write_bytes(b"\x00garbage" * 100)
    with pytest.raises(AudioDecodeError, match=r"j\.mp3"):
        load_audio(junk)


def test_capture_layout(tmp_path):
    import cv2

    root = tmp_path / "cap"
    (root / "p01").mkdir(parents=True)
    lines = []
    for i in range(3):
        img = np.full((320, 320, 3), 30 * i, np.uint8)
        cv2.imwrite(str(root / "p01" / f"t{i}.face.png"), img)
        sf.write(root / "p01" / f"t{i}.wav", np.zeros(48000, np.float32) + 0.1, 48000, subtype="PCM_16")
        lines.append(
            json.dumps(
                {"take_id": f"t{i}", "participant": "p01", "image": f"p01/t{i}.face.png", "audio": f"p01/t{i}.wav"}
            )
        )
    (root / MANIFEST).write_text("\n".join(lines) + '\n{"take_id": "torn')  # torn last line after a crash
    ds = load_dataset([root], image_size=32, use_cache=False)
    assert ds.identities == ["p01"] and len(ds) == 3 and len(ds.audio[0]) == 16000


def test_windows_crop_and_pad(tmp_path):
    root = make_wav2pix_dataset(tmp_path / "ds", faces=1, snippets=1, seconds=1.5)
    ds = load_dataset([root], image_size=16, use_cache=False)
    rng = np.random.default_rng(0)
    w = ds.windows([0, 1], 16000, rng)
    assert w.shape == (2, 16000)
    assert ds.window(0, 30000).shape == (30000,)


def test_diffaugment_shapes_and_gradients():
    import torch

    x = (torch.rand(4, 3, 16, 16) * 2 - 1).requires_grad_(True)
    y = diff_augment(x, ["color", "translation", "cutout"])
    assert y.shape == x.shape
    y.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    with pytest.raises(KeyError, match="unknown 'flip'"):
        diff_augment(x, ["flip"])


@pytest.mark.skipif(not SHARED.is_dir(), reason="../shared/data/wav2pix/train not present")
def test_real_wav2pix_data():
    ds = load_dataset([SHARED], image_size=64)
    assert len(ds) == 5545 and len(ds.faces) == 1109 and ds.identities == ["jaimealtozano", "javiermuniz"]
    tr, va = split_by_face(ds, 0.1, seed=0)
    assert not set(ds.face_index[tr]) & set(ds.face_index[va])
