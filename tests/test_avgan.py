"""The avgan family: the sound representation's round trip on real speech, a few training steps of each mode,
export with both outputs checked across backends, generate, the generated voice in ``render --sound``, and the
agreement metric telling a mismatched model from a matched one. Real data is read in place (tiny slices linked
into temporary folders); tests that need it skip with the reason when ``../shared/data`` is absent."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

import run
from training.families.avgan.spectral import SpectrogramCodec, log_spectral_distance, snr_db

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
W2P = DATA / "wav2pix" / "train"
FSDD = DATA / "fsdd" / "recordings"
MNIST = DATA / "mnist"
needs_w2p = pytest.mark.skipif(not W2P.is_dir(), reason=f"{W2P} absent (the Wav2Pix pairs)")
needs_digits = pytest.mark.skipif(not (FSDD.is_dir() and MNIST.is_dir()), reason=f"{FSDD} or {MNIST} absent")

DEMO = Path(__file__).resolve().parents[1] / "presets" / "demo" / "demo_speech.flac"


def _link_pairs(dst: Path, per_identity: int) -> Path:
    """A Wav2Pix-layout folder of symlinks to the first ``per_identity`` pairs of each identity (read in place)."""
    for ident in sorted(p for p in W2P.iterdir() if p.is_dir()):
        (dst / ident.name).mkdir(parents=True)
        for img in sorted(ident.glob("cropped_face_frame_*"))[:per_identity]:
            n = img.stem.rsplit("_", 1)[1]
            audio = next(ident.glob(f"preprocessed_frame_{n}.*"))
            (dst / ident.name / img.name).symlink_to(img)
            (dst / ident.name / audio.name).symlink_to(audio)
    return dst


def _link_fsdd(dst: Path, per_digit: int) -> Path:
    (dst / "recordings").mkdir(parents=True)
    for d in range(10):
        for f in sorted(FSDD.glob(f"{d}_*.wav"))[:per_digit]:
            (dst / "recordings" / f.name).symlink_to(f)
    return dst


# ------------------------------------------------------------------------------------ sound representation
@needs_w2p
def test_spectrogram_round_trip_on_real_speech_is_close() -> None:
    from engine.audio import load_audio

    files = sorted(W2P.glob("*/preprocessed_frame_*"))[:: 1500][:4]
    clips = torch.from_numpy(np.stack([load_audio(f, 16000)[:16000] for f in files]))
    codec = SpectrogramCodec(512, 256, 64, 16000)
    codec.fit_statistics(clips)
    image = codec.encode(clips)
    assert image.shape == (4, 2, 256, 64)
    assert float(image[:, 1].abs().max()) <= 1.0  # IF / pi
    back = codec.decode(image).numpy()
    for a, b in zip(clips.numpy(), back):
        assert log_spectral_distance(a, b) < 1.0  # dB (measured 0.33-0.53)
        assert snr_db(a, b) > 40.0  # dB (measured 50-56): only the dropped Nyquist bin and float32 rounding


@needs_digits
def test_spectrogram_round_trip_on_spoken_digits_at_8k() -> None:
    from engine.audio import load_audio
    from training.families.avgan.data import place

    clips = np.stack([place(load_audio(f, 8000), 8000) for f in sorted(FSDD.glob("*_theo_1*.wav"))[:4]])
    codec = SpectrogramCodec(256, 128, 64, 8000)
    back = codec.decode(codec.encode(torch.from_numpy(clips))).numpy()
    for a, b in zip(clips, back):
        assert log_spectral_distance(a, b, 256, 64) < 1.0 and snr_db(a, b) > 40.0


@needs_digits
def test_pocketsphinx_hears_real_spoken_digits_and_no_word_in_silence() -> None:
    """The digits evaluation's independent listener: take 0 of every FSDD speaker and digit."""
    from engine.audio import load_audio
    from training.families.avgan.digits import recognise_digits

    files = sorted(FSDD.glob("*_0.wav"))
    labels = np.array([int(f.name.split("_")[0]) for f in files])
    clips = [load_audio(f, 8000) for f in files]
    sounds = np.stack([np.pad(c[:8000], (0, max(0, 8000 - len(c)))) for c in clips]).astype(np.float32)
    words = recognise_digits(sounds, 8000)
    assert words.shape == (len(files),) and words.dtype == np.int64
    assert np.mean(words == labels) > 0.6  # measured 0.78 (take 0 of the five speakers; 0.76 on takes 0-4)
    silence = np.zeros((2, 8000), np.float32)
    assert (recognise_digits(silence, 8000) == -1).all()


@needs_digits
def test_heard_sound_is_what_the_bundle_outputs() -> None:
    """``loss.heard_sound``: a real clip's spectrogram is heard as itself; one that decodes past full scale is heard
    clipped (quieter than its image says, as the bundle's clipped output is); gradients stay finite through silence."""
    from engine.audio import load_audio
    from training.config import AudioConfig
    from training.families.avgan.config import AvganConfig, ModelConfig, SpectrogramConfig
    from training.families.avgan.data import place
    from training.families.avgan.networks import AvganGenerator
    from training.families.avgan.trainer import heard

    cfg = AvganConfig(spectrogram=SpectrogramConfig(n_fft=256, hop=128, frames=64),
                      audio=AudioConfig(sample_rate=8000, window_seconds=1.0),
                      model=ModelConfig(conditioning="none", image_size=32, image_channels=1))  # fmt: skip
    G = AvganGenerator(cfg, 10)
    clips = np.stack([place(load_audio(f, 8000), 8000) for f in sorted(FSDD.glob("*_theo_1*.wav"))[:4]])
    clips = 0.9 * clips / np.abs(clips).max(axis=1, keepdims=True)
    G.codec.fit_statistics(torch.from_numpy(clips))
    image = G.codec.encode(torch.from_numpy(clips))
    as_heard = heard(G, image)
    assert as_heard.shape == image.shape and torch.equal(as_heard[:, 1], image[:, 1])
    assert float((as_heard[:, 0] - image[:, 0]).abs().mean()) < 0.01  # standard deviations of the log-magnitude
    loud = image.clone()
    loud[:, 0] += 2.0  # x e^(2 std): about +40 dB, far past full scale
    speech = image[:, 0] > 0
    assert float((loud[:, 0] - heard(G, loud)[:, 0])[speech].mean()) > 0.5  # clipped: heard quieter than drawn
    silence = torch.full((2, 2, 128, 64), -20.0, requires_grad=True)  # decodes to exact zeros
    heard(G, silence).sum().backward()
    assert torch.isfinite(silence.grad).all()


def test_minibatch_std_tells_a_collapsed_batch_from_a_diverse_one() -> None:
    """``model.minibatch_std``: the same sample scores differently in a batch of copies than in a varied batch."""
    from training.config import config_from_dict
    from training.families.avgan.networks import build

    def gap(minibatch_std: bool) -> float:
        cfg = config_from_dict({"family": "avgan", "data": {"kind": "digits"},
                                "audio": {"sample_rate": 8000, "window_seconds": 1.0},
                                "spectrogram": {"n_fft": 256, "hop": 128, "frames": 64},
                                "model": {"conditioning": "none", "image_size": 32, "image_channels": 1, **TINY_MODEL,
                                          "minibatch_std": minibatch_std}})  # fmt: skip
        torch.manual_seed(0)
        G, D = build(cfg, 10)
        D.eval()  # spectral norm's power iteration would change the weights between calls
        with torch.no_grad():
            image, spec = G(torch.randn(8, 8))
            varied = D.joint(D.image_features(image), D.spec_features(spec))
            one_i, one_s = image[:1].expand(8, -1, -1, -1), spec[:1].expand(8, -1, -1, -1)
            copies = D.joint(D.image_features(one_i), D.spec_features(one_s))
        assert torch.allclose(copies[0], copies[1])
        return float((varied[0] - copies[0]).abs().max())

    assert gap(False) == 0.0  # without it, a sample's features do not depend on its batch
    assert gap(True) > 1e-4


def test_latent_code_is_for_unconditional_models_only() -> None:
    from engine.configs import ConfigError
    from training.config import config_from_dict

    with pytest.raises(ConfigError, match="latent_code"):
        config_from_dict({"family": "avgan", "model": {"conditioning": "voice", "latent_code": True}})
    with pytest.raises(ConfigError, match="stream_classifiers"):
        config_from_dict({"family": "avgan", "model": {"conditioning": "none", "stream_classifiers": True}})
    with pytest.raises(ConfigError, match="model.stream_scores.*removed"):  # a rejected experiment's config
        config_from_dict({"family": "avgan", "model": {"stream_scores": "patch"}})
    with pytest.raises(ConfigError, match="model.content_encoder.*removed"):
        config_from_dict({"family": "avgan", "model": {"content_encoder": True}})
    for off in ("none", False):  # "off" in both of its spellings (a bool at commit 5ce0256) still loads
        config_from_dict({"family": "avgan", "model": {"stream_scores": off}})


def test_codec_refuses_frames_that_do_not_cover_the_clip() -> None:
    with pytest.raises(ValueError, match="raise spectrogram.frames"):
        SpectrogramCodec(512, 256, 32, 16000)
    from engine.configs import ConfigError
    from training.config import config_from_dict

    with pytest.raises(ConfigError, match="spectrogram"):
        config_from_dict({"family": "avgan", "spectrogram": {"n_fft": 512, "hop": 256, "frames": 48}})
    with pytest.raises(ConfigError, match="multiple of 32"):  # the stream over time upsamples x32
        config_from_dict({"family": "avgan", "spectrogram": {"n_fft": 512, "hop": 256, "frames": 80},
                          "model": {"spec_stream": "conv1d"}})  # fmt: skip
    with pytest.raises(ConfigError, match="image_stream: wav2pix needs conditioning: voice"):
        config_from_dict({"family": "avgan", "model": {"conditioning": "none", "image_stream": "wav2pix"}})


# ------------------------------------------------------------------------------------ training and export
TINY_MODEL = {"noise_dim": 8, "trunk_width": 32, "g_channels": 16, "g_min_channels": 8, "d_channels": 8,
              "joint_width": 32, "encoder_channels": 16, "embedding_dim": 8}  # fmt: skip
TINY_TRAIN = {"steps": 3, "batch_size": 4, "log_every": 1, "sample_every": 3, "checkpoint_every": 3, "ema_start": 0,
              "num_threads": 1, "val_fraction": 0.2}  # fmt: skip


def _train_export(tmp_path: Path, config: dict, data: list[Path], monkeypatch) -> Path:
    monkeypatch.setenv("AVGAN_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(sys, "argv", ["run.py"])
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    run_dir, bundle = tmp_path / "run", tmp_path / "bundle"
    args = ["train", "--config", str(path), "--out", str(run_dir)]
    for d in data:
        args += ["--data", str(d)]
    assert run.main(args) == 0
    log = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    assert len(log) == 3 and all(np.isfinite(r["loss_d"]) and np.isfinite(r["loss_g"]) for r in log)
    assert (run_dir / "samples" / "step-0000003.png").is_file()
    assert run.main(["export", str(run_dir), "-o", str(bundle)]) == 0  # self-check: ORT and torch vs eager
    return bundle


def _backends_agree(bundle: Path, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    from engine.generator import Generator

    ort = Generator(bundle, backend="onnxruntime-cpu", fallback=False, warmup=False, max_batch=4)
    pt = Generator(bundle, backend="torch-cpu", fallback=False, warmup=False, max_batch=4)
    a, b = ort.run(**inputs), pt.run(**inputs)
    assert set(a) == {"image", "sound"}
    for name in a:
        assert np.abs(a[name] - b[name]).max() < 1e-3, name
    return a


@pytest.fixture(scope="module")
def faces_bundle(tmp_path_factory) -> Path:
    """A voice-conditioned avgan bundle trained for 3 steps on 24 real Wav2Pix pairs (shared by the tests below)."""
    if not W2P.is_dir():
        pytest.skip(f"{W2P} absent (the Wav2Pix pairs)")
    tmp_path = tmp_path_factory.mktemp("avgan-faces")
    data = _link_pairs(tmp_path / "pairs", 12)
    model = {"conditioning": "voice", "stream_classifiers": True, "minibatch_std": True, **TINY_MODEL}
    cfg = {"family": "avgan", "data": {"kind": "faces"}, "model": model, "train": TINY_TRAIN}
    with pytest.MonkeyPatch.context() as monkeypatch:
        bundle = _train_export(tmp_path, cfg, [data], monkeypatch)
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    # the per-stream speaker classifiers train: the discriminator's on real items, the generator's on its own
    assert all(r["loss_code_d"] > 0 and r["loss_code_g"] > 0 for r in log)
    return bundle


@needs_w2p
def test_voice_conditioned_faces_train_export_and_run(faces_bundle) -> None:
    bundle = faces_bundle
    manifest = json.loads((bundle / "bundle.json").read_text())
    assert manifest["family"] == "avgan" and list(manifest["inputs"]) == ["audio", "noise"]
    assert manifest["outputs"]["sound"]["shape"] == [None, 16000] and manifest["sample_rate"] == 16000
    assert manifest["family_info"]["conditioning"] == "voice"
    rng = np.random.default_rng(0)
    out = _backends_agree(bundle, {"audio": (0.3 * rng.standard_normal((3, 16000))).astype(np.float32),
                                   "noise": rng.standard_normal((3, 8)).astype(np.float32)})  # fmt: skip
    assert out["image"].shape == (3, 3, 64, 64) and out["sound"].shape == (3, 16000)
    assert np.abs(out["sound"]).max() <= 1.0 and np.abs(out["sound"]).max() > 0


@needs_w2p
def test_init_from_continues_a_checkpoint_under_a_new_config(faces_bundle, monkeypatch, capsys) -> None:
    """``--init-from`` a checkpoint of the faces run above with a lower learning rate and other loss weights: the
    run continues at its step and exports; a checkpoint of other networks is refused by name."""
    base = faces_bundle.parent
    ckpt = base / "run" / "checkpoints" / "step-0000003.safetensors"
    model = {"conditioning": "voice", "stream_classifiers": True, "minibatch_std": True, **TINY_MODEL}
    cfg = {"family": "avgan", "data": {"kind": "faces"}, "model": model, "loss": {"code_weight": 0.5},
           "train": {**TINY_TRAIN, "steps": 5, "lr_g": 5e-5, "lr_d": 5e-5}}  # fmt: skip
    path = base / "config-continue.yaml"
    path.write_text(yaml.safe_dump(cfg))
    monkeypatch.setenv("AVGAN_CACHE", str(base / "cache"))
    monkeypatch.setattr(sys, "argv", ["run.py"])
    out = base / "run-continue"
    assert run.main(["train", "--config", str(path), "--data", str(base / "pairs"), "--out", str(out),
                     "--init-from", str(ckpt)]) == 0  # fmt: skip
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [4, 5] and all(np.isfinite(r["loss_g"]) for r in log)
    from training import runs as runs_mod

    tensors, meta = runs_mod.read_checkpoint(out / "checkpoints" / "step-0000005.safetensors")
    old, _ = runs_mod.read_checkpoint(ckpt)
    for name in ("opt_g", "opt_d"):
        assert json.loads(meta[f"{name}_groups"])[0]["lr"] == 5e-5  # the new config's learning rate ...
        assert float(tensors[f"{name}/0/step"]) == float(old[f"{name}/0/step"]) + 2  # ... on the carried Adam state
    assert torch.equal(tensors["G_ema.codec.mean"], old["G_ema.codec.mean"])  # the statistics came with it
    bundle = base / "bundle-continue"
    assert run.main(["export", str(out), "-o", str(bundle)]) == 0
    path.write_text(yaml.safe_dump({**cfg, "model": {**model, "d_channels": 16}}))
    assert run.main(["train", "--config", str(path), "--data", str(base / "pairs"), "--out", str(base / "run-wide"),
                     "--init-from", str(ckpt)]) != 0  # fmt: skip
    err = capsys.readouterr().err
    assert "do not match the config" in err and "size mismatch for image" in err


def test_exclude_selection_leaves_out_the_pairs_max_pairs_picks() -> None:
    from engine.errors import UserError
    from training.families.avgan.evaluate import selection_pairs

    out = selection_pairs(555, "60,200")
    assert set(np.linspace(0, 554, 60).round().astype(int)) <= set(out.tolist())
    assert set(np.linspace(0, 554, 200).round().astype(int)) <= set(out.tolist()) and len(out) == len(set(out.tolist()))
    assert len(selection_pairs(555, "")) == 0 and len(selection_pairs(10, "60")) == 10
    with pytest.raises(UserError, match="positive pair counts"):
        selection_pairs(555, "60,x")


W2P_BUNDLE = Path(__file__).resolve().parents[1] / "presets" / "models" / "wav2pix-64"


@needs_w2p
def test_wav2pix_image_stream_is_taken_over_and_kept(tmp_path, monkeypatch, capsys) -> None:
    """``model.image_stream: wav2pix`` with ``--init-from`` the shipped wav2pix bundle, and the spectrogram stream
    over time (``model.spec_stream: conv1d``), as the shipped faces model: 3 steps train the voice side only, and
    the exported bundle's faces are the wav2pix generator's own (eager, colour put back in order) for the same
    speech and noise; a start without the bundle, or with another validation split, is refused by name."""
    from training.export import load_bundle_source
    from training.families.wav2pix.networks import swap_red_blue

    data = _link_pairs(tmp_path / "pairs", 12)
    model = {"conditioning": "voice", "stream_classifiers": True, "minibatch_std": True, **TINY_MODEL,
             "noise_dim": 128, "embedding_dim": 128, "encoder_channels": 128, "image_stream": "wav2pix",
             "image_g_channels": 128, "image_g_min_channels": 32, "spec_stream": "conv1d", "spec_top_blocks": 1,
             "spec_d_channels": 8}  # fmt: skip
    cfg = {"family": "avgan", "data": {"kind": "faces"}, "model": model, "train": {**TINY_TRAIN, "val_fraction": 0.1}}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    monkeypatch.setenv("AVGAN_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(sys, "argv", ["run.py"])
    base = ["train", "--config", str(path), "--data", str(data)]
    assert run.main([*base, "--out", str(tmp_path / "alone")]) != 0
    assert "start the run with --init-from BUNDLE" in capsys.readouterr().err
    run_dir, bundle = tmp_path / "run", tmp_path / "bundle"
    assert run.main([*base, "--out", str(run_dir), "--init-from", str(W2P_BUNDLE)]) == 0
    from training import runs as runs_mod

    first, _ = runs_mod.read_checkpoint(run_dir / "checkpoints" / "step-0000003.safetensors")
    assert run.main(["export", str(run_dir), "-o", str(bundle)]) == 0
    source = load_bundle_source(W2P_BUNDLE)
    net = swap_red_blue(source.G)
    rng = np.random.default_rng(0)
    audio = np.stack([_first_clip(ident) for ident in ("jaimealtozano", "javiermuniz")] * 2).astype(np.float32)
    noise = rng.standard_normal((4, 128)).astype(np.float32)
    out = _backends_agree(bundle, {"audio": audio, "noise": noise})
    with torch.no_grad():
        a, z = torch.from_numpy(audio), torch.from_numpy(noise)
        want = net.generator(net.encoder(a), z).numpy()
    assert np.abs(out["image"] - want).max() < 1e-3  # the bundle's faces are the wav2pix generator's
    assert out["sound"].shape == (4, 16000) and np.abs(out["sound"]).max() > 0
    w2p = {k: v for k, v in net.state_dict().items()}
    assert torch.equal(first["G.image.fc.parametrizations.weight.original"],
                       w2p["generator.fc.parametrizations.weight.original"])  # fmt: skip
    assert torch.equal(first["G.encoder.proj.weight"], w2p["encoder.proj.weight"])
    for key in ("image.fc.parametrizations.weight.0._u", "image.blocks.1.parametrizations.weight.0._v"):
        # kept in eval mode: spectral normalisation's power iteration does not move the taken-over weights
        assert torch.equal(first[f"G.{key}"], w2p[key.replace("image.", "generator.", 1)])
        assert torch.equal(first[f"G_ema.{key}"], w2p[key.replace("image.", "generator.", 1)])
    log = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    assert all(np.isfinite(r["loss_g"]) and r["loss_code_g"] > 0 for r in log)
    path.write_text(yaml.safe_dump({**cfg, "train": {**TINY_TRAIN, "val_fraction": 0.2}}))
    assert run.main([*base, "--out", str(tmp_path / "other-split"), "--init-from", str(W2P_BUNDLE)]) != 0
    assert "train.val_fraction" in capsys.readouterr().err


def _first_clip(identity: str) -> np.ndarray:
    import soundfile as sf

    clip, rate = sf.read(sorted((W2P / identity).glob("preprocessed_frame_*"))[0], dtype="float32")
    assert rate == 16000
    return clip[:16000]


@needs_digits
def test_unconditional_digits_train_export_and_generate_count(tmp_path, monkeypatch) -> None:
    fsdd = _link_fsdd(tmp_path / "fsdd", 8)
    cfg = {"family": "avgan", "data": {"kind": "digits", "val_takes": 1},
           "audio": {"sample_rate": 8000, "window_seconds": 1.0},
           "spectrogram": {"n_fft": 256, "hop": 128, "frames": 64},
           "model": {"conditioning": "none", "image_size": 32, "image_channels": 1, **TINY_MODEL, "noise_dim": 16,
                     "latent_code": True, "spec_top_blocks": 1, "minibatch_std": True},
           "loss": {"heard_sound": True, "guide_weight": 1.0}, "train": TINY_TRAIN}  # fmt: skip
    bundle = _train_export(tmp_path, cfg, [fsdd, MNIST], monkeypatch)
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert all(np.isfinite(r["loss_code_d"]) and np.isfinite(r["loss_code_g"]) for r in log)
    assert all(0 < r["loss_guide"] < 10 for r in log)  # the sound guide was trained (and cached) and reads the sounds
    assert len(list((tmp_path / "cache").glob("avgan-digit-guide-*.safetensors"))) == 1
    manifest = json.loads((bundle / "bundle.json").read_text())
    assert list(manifest["inputs"]) == ["noise"] and manifest["sample_rate"] == 8000
    noise = np.random.default_rng(1).standard_normal((2, 16)).astype(np.float32)
    # the second row: the first row with two of its ten code values swapped (same values, another digit's code)
    noise[1] = noise[0]
    top, other = int(noise[0, :10].argmax()), int(noise[0, :10].argmin())
    noise[1, [top, other]] = noise[0, [other, top]]
    out = _backends_agree(bundle, {"noise": noise})
    assert out["image"].shape == (2, 3, 32, 32) and out["sound"].shape == (2, 8000)
    assert np.abs(out["image"][0] - out["image"][1]).max() > 1e-4  # the code reaches the image ...
    assert np.abs(out["sound"][0] - out["sound"][1]).max() > 1e-4  # ... and the sound
    assert np.array_equal(out["image"][:, 0], out["image"][:, 2])  # grey, repeated to RGB
    import soundfile as sf

    gen_dir = tmp_path / "generated"
    assert run.main(["generate", "--bundle", str(bundle), "--count", "3", "--out", str(gen_dir)]) == 0
    wav, rate = sf.read(gen_dir / "sample-0002.wav")
    assert rate == 8000 and wav.shape == (8000,) and (gen_dir / "sample-0002.png").is_file()

    # live with a bundle that has no audio input: the microphone still drives the gate, every request succeeds
    from engine.audio import load_audio
    from installation.audio_in import FileInput
    from installation.live import LiveConfig, LiveLoop

    speech = np.tile(load_audio(DEMO, 16000), 2)
    cfg = LiveConfig(bundle=bundle, fullscreen=False, width=160, height=90, vsync=False, fps=30.0, duration_s=2.5)
    report = LiveLoop(cfg, audio_input=FileInput(speech, 16000, loop=False)).run()
    assert report["frame_errors"] == 0 and report["generator"]["calls"] >= 2


# ------------------------------------------------------------------------------------ render --sound
@needs_w2p
def test_render_sound_contains_the_generated_voice(faces_bundle, tmp_path, monkeypatch) -> None:
    import av
    import soundfile as sf
    import soxr

    from engine.audio import load_audio
    from engine.generator import Generator
    from installation.render import render
    from installation.sound import SoundSettings

    bundle = faces_bundle
    speech = np.concatenate([load_audio(f, 16000) for f in sorted(W2P.glob("*/preprocessed_frame_*"))[:2]])
    clip = np.concatenate([np.zeros(4000, np.float32), speech, np.zeros(40000, np.float32)])
    source = tmp_path / "voice.wav"
    sf.write(source, clip, 16000)
    gen = Generator(bundle, backend="onnxruntime-cpu", max_batch=8)
    captured: list = []
    import installation.voice_stage as vs

    original = vs.plan_voice_actions

    def spy(*args, **kwargs):
        actions = original(*args, **kwargs)
        captured.extend(actions)
        return actions

    monkeypatch.setattr("installation.render.plan_voice_actions", spy)
    out = tmp_path / "out.mp4"
    render(source, out, generator=gen, size=64, fps=25, batch=8, progress=False,
           sound=SoundSettings(mix=0.0), sound_mix=1.0)  # fmt: skip
    answers = [a for a in captured if a[1] == "answer"]
    assert answers, "the speech ends inside the clip: the installation answers"
    t_answer, _, voice, rate = answers[-1]
    with av.open(str(out)) as container:
        stream = container.streams.audio[0]
        audio = np.concatenate([f.to_ndarray().reshape(-1, f.samples).mean(axis=0) for f in container.decode(stream)])
        out_rate = stream.rate
    expected = soxr.resample(voice, rate, out_rate).astype(np.float32)
    start = int(t_answer * out_rate)
    seg = audio[start : start + int(0.3 * out_rate) + len(expected)]

    def best_corr(x: np.ndarray, ref: np.ndarray) -> float:
        best = 0.0
        for lag in range(0, len(x) - len(ref), 32):
            w = x[lag : lag + len(ref)]
            best = max(best, float(np.dot(w, ref) / (np.linalg.norm(w) * np.linalg.norm(ref) + 1e-9)))
        return best

    other = gen.generate(audio=speech[None, :16000], noise=np.full((1, 8), 3.0, np.float32))["sound"][0]
    matched = best_corr(seg, expected)
    assert matched > 0.5, matched  # the generated voice is in the video's audio track (AAC-coded)
    assert best_corr(seg, soxr.resample(other, rate, out_rate).astype(np.float32)) < matched - 0.2


@needs_w2p
def test_live_answers_in_the_generated_voice_when_the_visitor_stops(faces_bundle, tmp_path) -> None:
    from dataclasses import replace

    from engine.audio import load_audio
    from installation.audio_in import FileInput
    from installation.live import LiveConfig, LiveLoop

    class RecordingSound:
        """installation.sound.SoundEngine-shaped: records the voice actions."""

        def __init__(self) -> None:
            self.answers: list[tuple[np.ndarray, int]] = []
            self.loops = 0

        def feed(self, samples, rate) -> None:
            pass

        def set_state(self, level, pitch_hz=0.0, identity=None) -> None:
            pass

        def set_param(self, name, value) -> None:
            pass

        def answer(self, samples, rate) -> None:
            self.answers.append((np.asarray(samples), rate))

        def play_generated(self, samples, rate) -> None:
            self.loops += 1

        def stop(self) -> None:
            pass

    speech = np.concatenate([load_audio(f, 16000) for f in sorted(W2P.glob("*/preprocessed_frame_*"))[:2]])
    clip = np.concatenate([np.zeros(3200, np.float32), speech, np.zeros(24000, np.float32)])
    cfg = replace(LiveConfig(bundle=faces_bundle, fullscreen=False, width=160, height=90, vsync=False, fps=30.0,
                             duration_s=3.6), params={"sound/answer": "answer"})  # fmt: skip
    sound = RecordingSound()
    loop = LiveLoop(cfg, audio_input=FileInput(clip, 16000, loop=False), sound=sound)
    assert loop.voice is not None  # the bundle has a sound output
    report = loop.run()
    assert report["frame_errors"] == 0 and report["generator"]["calls"] >= 2
    assert len(sound.answers) >= 1 and sound.loops == 0
    voice, rate = sound.answers[0]
    assert rate == 16000 and voice.shape == (16000,) and voice.dtype == np.float32 and np.abs(voice).max() > 0


# ------------------------------------------------------------------------------------ the agreement metric
class _RealPairs:
    """A stand-in model that 'generates' real data: for each validation clip the face of its own identity (matched)
    or of the other identity (mismatched), and the clip itself as the voice."""

    def __init__(self, pairs, mismatched: bool) -> None:
        self.pairs, self.mismatched = pairs, mismatched
        self.by_audio = {np.ascontiguousarray(pairs.windows([i], 16000)[0]).tobytes(): i for i in range(len(pairs))}

    def run(self, audio: np.ndarray, noise: np.ndarray) -> dict[str, np.ndarray]:
        images = []
        for a in audio:
            i = self.by_audio[np.ascontiguousarray(a).tobytes()]
            label = self.pairs.labels[i]
            if self.mismatched:
                label = 1 - label
            j = np.flatnonzero(self.pairs.labels == label)[0]
            images.append(self.pairs.images([j])[0])
        image = np.stack(images).astype(np.float32).transpose(0, 3, 1, 2) / 127.5 - 1.0
        return {"image": image, "sound": np.asarray(audio, np.float32)}


@pytest.mark.slow  # dlib + Resemblyzer on real pairs, twice (~25 s)
@needs_w2p
@pytest.mark.parametrize("mismatched", [False, True])
def test_agreement_is_high_for_matched_and_low_for_mismatched_pairs(tmp_path, monkeypatch, mismatched) -> None:
    pytest.importorskip("resemblyzer")
    from training.config import config_from_dict
    from training.data import load_dataset
    from training.families import get
    from training.families.avgan.evaluate import evaluate
    from training.families.contract import Model

    monkeypatch.setenv("AVGAN_CACHE", str(tmp_path / "cache"))
    data = _link_pairs(tmp_path / "pairs", 25)
    cfg = config_from_dict({"family": "avgan", "train": {"val_fraction": 0.4}})
    pairs = load_dataset([data], 16000, 64)
    stand_in = _RealPairs(pairs, mismatched)
    model = Model(name="stand-in", kind="bundle", family=get("avgan"), cfg=cfg, labels=list(pairs.identities),
                  sample_rate=16000, inputs={"audio": (None, 16000), "noise": (None, 64)},
                  outputs={"image": (None, 3, 64, 64), "sound": (None, 16000)}, run=stand_in.run)  # fmt: skip
    args = argparse.Namespace(data=[str(data)], out=tmp_path / "eval", seeds=1, seed=0, max_pairs=0, target="x",
                              voice_train_clips=40)  # fmt: skip
    m = evaluate(model, args)
    assert m["voices"]["speaker_accuracy"] > 0.9  # the voices are the real ones
    if mismatched:
        assert m["agreement"] < 0.2 and m["faces"]["identity_accuracy"] < 0.2
    else:
        assert m["agreement"] > 0.8 and m["agreement_correct"] > 0.8
    assert (tmp_path / "eval" / "samples.png").is_file() and list((tmp_path / "eval" / "samples").glob("*.wav"))
    import cv2

    sheet = cv2.imread(str(tmp_path / "eval" / "spectrograms.png"), cv2.IMREAD_GRAYSCALE)
    assert sheet is not None and sheet.shape[0] > 96 and sheet.std() > 10  # real and generated spectrograms drawn


@needs_digits
def test_digit_classifiers_start_from_their_seed_whatever_ran_before(monkeypatch) -> None:
    """The evaluation's classifiers are retrained wherever their cache is absent: their initial weights must come
    from their seed, not from the torch random state the process happens to be in (which made two trainings
    differ, and the agreement of one model move by 0.05 between them)."""
    from training.families.avgan import digits
    from training.families.avgan.data import load_digits

    monkeypatch.setattr(digits, "_fit", lambda *a, **k: None)  # the initial weights only
    data = load_digits([FSDD.parent, MNIST], 8000, 8000, 32, 0.1)
    states = []
    with torch.random.fork_rng(devices=[]):  # the other tests' random state is left as it was
        for before in (1, 2):
            torch.manual_seed(before)
            torch.randn(before * 7)
            drawing, spoken, _ = digits.classifiers_for(data, None)
            states.append({**drawing.state_dict(), **{f"s.{k}": v for k, v in spoken.state_dict().items()}})
    assert states[0].keys() == states[1].keys()
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])


def test_sound_guide_trains_the_same_whatever_ran_before_and_is_frozen(tmp_path) -> None:
    """The guide (loss.guide_weight) is part of a recipe: trained again where its cache is absent, it must come out
    the same; the generator's loss must not train it."""
    from types import SimpleNamespace

    from training.families.avgan.guide import guide_for

    rng = np.random.default_rng(0)
    clips = [rng.standard_normal(int(rng.integers(2000, 6000))).astype(np.float32) * 0.1 for _ in range(80)]
    data = SimpleNamespace(clips=clips, labels=np.arange(80) % 10, takes=np.arange(80) // 10, window=8000, sample_rate=8000)
    states = []
    with torch.random.fork_rng(devices=[]):
        for before in (1, 2):
            torch.manual_seed(before)
            guide, report = guide_for(data, 1, None, epochs=2)
            states.append(guide.state_dict())
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])
    assert report["train_items"] == 70 and report["held_out_items"] == 10
    assert not any(p.requires_grad for p in guide.parameters()) and not guide.training
    guide_for(data, 1, tmp_path, epochs=2)
    assert len(list(tmp_path.glob("avgan-digit-guide-*.safetensors"))) == 1
    with pytest.raises(ValueError, match="val_takes"):
        guide_for(data, 8, None)


@pytest.mark.slow  # trains the two digit classifiers (about 3 min, one thread), PocketSphinx on 600 sounds
@needs_digits
def test_digits_agreement_is_high_for_matched_and_low_for_mismatched_pairs(tmp_path, monkeypatch) -> None:
    """A stand-in 'generator' of real held-out data: for sample i, a real held-out drawing of digit i % 10 and a
    real held-out recording of the same digit (matched) or of the next one (mismatched)."""
    from training.config import config_from_dict
    from training.families import get
    from training.families.avgan.data import load_digits, place
    from training.families.avgan.evaluate import evaluate
    from training.families.contract import Model

    monkeypatch.setenv("AVGAN_CACHE", str(tmp_path / "cache"))
    cfg = config_from_dict({"family": "avgan", "data": {"kind": "digits"},
                            "audio": {"sample_rate": 8000, "window_seconds": 1.0},
                            "spectrogram": {"n_fft": 256, "hop": 128, "frames": 64},
                            "model": {"conditioning": "none", "image_size": 32, "image_channels": 1}})  # fmt: skip
    data = load_digits([FSDD.parent, MNIST], 8000, 8000, 32, cfg.train.val_fraction)
    held_snd = np.flatnonzero(data.takes < 5)
    held_img = np.flatnonzero(data.drawing_val)
    figures = {}
    for mismatched in (False, True):

        served = [0]  # samples so far (the evaluation calls in chunks)

        def stand_in(noise: np.ndarray, shift: int = int(mismatched), served: list[int] = served) -> dict[str, np.ndarray]:
            images, sounds = [], []
            for i in range(served[0], served[0] + len(noise)):
                d = i % 10
                images.append(data.drawings[held_img[data.drawing_labels[held_img] == d][i // 10]])
                snd = held_snd[data.labels[held_snd] == (d + shift) % 10]
                sounds.append(place(data.clips[snd[(i // 10) % len(snd)]], 8000))
            served[0] += len(noise)
            image = np.repeat(np.stack(images)[:, None].astype(np.float32) / 127.5 - 1.0, 3, axis=1)
            return {"image": image, "sound": np.stack(sounds).astype(np.float32)}

        model = Model(name="stand-in", kind="bundle", family=get("avgan"), cfg=cfg, labels=data.names,
                      sample_rate=8000, inputs={"noise": (None, 16)},
                      outputs={"image": (None, 3, 32, 32), "sound": (None, 8000)}, run=stand_in)  # fmt: skip
        args = argparse.Namespace(data=[str(FSDD.parent), str(MNIST)], out=tmp_path / f"eval-{mismatched}",
                                  samples=300, seed=0, target="x")  # fmt: skip
        figures[mismatched] = evaluate(model, args)
    right, wrong = figures[False], figures[True]
    assert right["agreement"] > 0.8 and wrong["agreement"] < 0.2
    assert right["agreement_recogniser"] > 0.6 and wrong["agreement_recogniser"] < 0.2
    assert right["sound_recognised"] > 0.9  # real speech: PocketSphinx hears a digit word
    # real drawings: Fréchet distance near the train-vs-held-out reference, not far above it
    assert right["image_frechet_distance"] < 3 * right["reference"]["image_frechet_distance_train_vs_val"]
    # the held-out recordings themselves: nearer to the held-out set than the training recordings are
    assert right["sound_frechet_distance"] < right["reference"]["sound_frechet_distance_train_vs_val"]
