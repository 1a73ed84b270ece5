"""A scene bundle in the runtime: the sound-activity gate it declares, the ``scene_class`` pin over OSC in the live
loop, and ``run.py render`` with it. The runtime reads the bundle's inputs and manifest, never its family.

Uses the shipped ``presets/models/sound2scene-music`` bundle; MUSIC clips where a test needs real music (skipped,
saying why, when ``../shared/data/music`` is absent).
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf

from engine.audio import load_audio
from engine.generator import Generator
from installation.live import LiveConfig, LiveLoop
from installation.scene_class import parse_class_weights
from installation.vad import SOUND_GATE, VadParams, declared_gate, detect, gate_params

ROOT = Path(__file__).resolve().parents[1]
MUSIC_BUNDLE = ROOT / "presets" / "models" / "sound2scene-music"
MUSIC = ROOT.parent / "shared" / "data" / "music"
needs_music = pytest.mark.skipif(
    not MUSIC.is_dir(), reason=f"{MUSIC} absent (MUSIC clips, see ../shared/data/README.md)"
)
LABELS = ("accordion", "cello", "flute")


# -- scene_class ----------------------------------------------------------------------------------------------------
def test_scene_class_values() -> None:
    assert parse_class_weights("", LABELS) is None and parse_class_weights(" Sound ", LABELS) is None
    np.testing.assert_array_equal(parse_class_weights("cello", LABELS), [0, 1, 0])
    np.testing.assert_array_equal(parse_class_weights("CELLO", LABELS), [0, 1, 0])
    np.testing.assert_array_equal(parse_class_weights("2", LABELS), [0, 0, 1])  # an index
    np.testing.assert_allclose(parse_class_weights("cello:0.7 flute:0.3", LABELS), [0, 0.7, 0.3], atol=1e-6)
    np.testing.assert_allclose(parse_class_weights("cello:3,accordion", LABELS), [0.25, 0.75, 0], atol=1e-6)
    np.testing.assert_array_equal(parse_class_weights("1", ("0", "1", "2")), [0, 1, 0])  # a name before an index
    for bad, message in (("banjo", "unknown class 'banjo'.*accordion, cello, flute"), ("cello:x", "not a number"),
                         ("cello:-1", ">= 0"), ("cello:0", "every weight is 0"), ("7", "unknown class '7'")):  # fmt: skip
        with pytest.raises(ValueError, match=message):
            parse_class_weights(bad, LABELS)


# -- the gate a bundle declares --------------------------------------------------------------------------------------
def test_declared_gate(caplog: pytest.LogCaptureFixture) -> None:
    assert declared_gate(None) == "voice" and declared_gate({}) == "voice"
    assert declared_gate({"gate": "sound"}) == "sound"
    with caplog.at_level(logging.WARNING):
        assert declared_gate({"gate": "whistle"}) == "voice"
    assert "whistle" in caplog.text
    base = VadParams(on_min_db=-40.0, off_min_db=-45.0)
    sound = gate_params("sound", base)
    assert gate_params("voice", base) is base
    assert (sound.on_min_db, sound.off_min_db) == (-40.0, -45.0)  # vad/threshold_db still applies
    assert all(getattr(sound, k) == v for k, v in SOUND_GATE.items())
    with pytest.raises(ValueError, match="voice, sound"):
        gate_params("whistle", base)
    assert Generator(MUSIC_BUNDLE, backend="onnxruntime-cpu", warmup=False).bundle.family_info["gate"] == "sound"


def _open_fraction(track, start_s: float, end_s: float) -> float:
    a, b = int(start_s / 0.01), int(end_s / 0.01)
    return float(track.gate[a:b].mean())


@needs_music
@pytest.mark.parametrize(
    ("clip", "voice_max"), [("cello/1Ju4S0qeDqw_82.84.mp4", 1.0), ("saxophone/9XoXQXCVUQY_28.47.mp4", 0.8)]
)
def test_sound_gate_stays_open_through_music_where_the_voice_gate_closes(clip: str, voice_max: float) -> None:
    """Looped MUSIC clips between stretches of room noise. The voice gate's floor (lowest level of the past 2 s)
    learns the saxophone's held notes (open 65 % of the music); the cello clip dips often enough that it stays
    open too (99 %). The sound gate is open >= 99 % through both, and neither opens on the room alone."""
    rate = 11025
    music = np.tile(load_audio(MUSIC / clip, rate), 6)  # 36 s of the clip, looped
    room = (10 ** (-65 / 20) * np.random.default_rng(0).standard_normal(4 * rate)).astype(np.float32)
    x = np.concatenate([room, music, room])
    end = (len(room) + len(music)) / rate
    voice, sound = detect(x, rate, VadParams()), detect(x, rate, gate_params("sound", VadParams()))
    assert _open_fraction(sound, 4.0, end) >= 0.99
    assert _open_fraction(voice, 4.0, end) <= voice_max  # the voice gate's floor learns the sustained notes
    for track in (voice, sound):  # the room alone opens neither (the sound gate's hangover: 1.5 s)
        assert _open_fraction(track, 0.5, 4.0) == 0.0 and _open_fraction(track, end + 2.0, end + 4.0) == 0.0


def test_sound_gate_follows_steady_noise_and_ignores_clicks() -> None:
    rate = 16000
    rng = np.random.default_rng(1)
    quiet = 10 ** (-70 / 20) * rng.standard_normal(3 * rate)
    rain = 10 ** (-30 / 20) * rng.standard_normal(30 * rate)  # 30 s of steady noise at -30 dBFS
    clicks = 10 ** (-70 / 20) * rng.standard_normal(5 * rate)
    clicks[rate :: rate // 2] = 0.9  # single-sample clicks every 0.5 s
    x = np.concatenate([quiet, rain, quiet, clicks]).astype(np.float32)
    voice, sound = detect(x, rate, VadParams()), detect(x, rate, gate_params("sound", VadParams()))
    assert _open_fraction(sound, 3.0, 33.0) >= 0.99
    assert _open_fraction(voice, 23.0, 33.0) == 0.0  # the voice gate takes steady noise for the room
    assert _open_fraction(sound, 37.0, 41.0) == 0.0  # clicks do not open it (50 ms attack)


# -- live ----------------------------------------------------------------------------------------------------------
class Recorder:
    """The engine Generator with its calls recorded: which named inputs each generation got."""

    def __init__(self, gen: Generator) -> None:
        self.gen = gen
        self.calls: list[dict[str, Any]] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.gen, name)

    def __call__(self, audio: np.ndarray, noise: np.ndarray | None = None, seed: int | None = None) -> np.ndarray:
        self.calls.append({})
        return self.gen(audio, noise=noise, seed=seed)

    def generate(self, **inputs: np.ndarray) -> dict[str, np.ndarray]:
        self.calls.append({k: np.array(v) for k, v in inputs.items() if k not in ("audio", "noise")})
        return self.gen.generate(**inputs)


def test_live_pins_the_scene_class_over_osc(tmp_path: Path) -> None:
    from pythonosc.udp_client import SimpleUDPClient

    from installation.presets import OscConfig

    rate = 11025
    t = np.arange(3 * rate) / rate
    tone = 0.3 * np.sin(2 * np.pi * 440 * t) * (1 + 0.3 * np.sin(2 * np.pi * 3 * t))
    sf.write(tmp_path / "tone.wav", tone.astype(np.float32), rate)
    gen = Recorder(Generator(MUSIC_BUNDLE, backend="onnxruntime-cpu", max_batch=4))
    labels = list(gen.labels)
    cfg = LiveConfig(
        bundle=MUSIC_BUNDLE, input=tmp_path / "tone.wav", fullscreen=False, width=320, height=180, vsync=False,
        fps=30.0, duration_s=6.0, params={"scene": "grid", "grid/n": 2},
        osc=OscConfig(port=0, oscquery=False, feedback=False),
    )  # fmt: skip
    sent: dict[str, int] = {}
    pinned_images: list[np.ndarray] = []

    def on_frame(loop: LiveLoop, t_present: float, canvas: np.ndarray) -> None:
        host, port = loop.osc.server.address
        client = SimpleUDPClient(host, port)
        if loop.frames == 25:
            client.send_message("/avgan/scene_class", "banjo")  # not a class of this bundle: ignored
            client.send_message("/avgan/scene_class", f"{labels[3]}:0.5 {labels[5]}:0.5")
            sent["mix"] = len(gen.calls)
        if loop.frames == 55:
            pinned_images.append(np.array(loop.images[0]))
            client.send_message("/avgan/scene_class", "sound")
            sent["follow"] = len(gen.calls)

    loop = LiveLoop(cfg, generator=gen, on_frame=on_frame)
    assert loop.vad_params.hangover_s == SOUND_GATE["hangover_s"]  # the bundle's declared gate
    report = loop.run()
    assert report["frame_errors"] == 0 and report["generator"]["errors"] == 0 and report["osc"]["handled"] >= 3
    before, pinned, after = (
        gen.calls[: sent["mix"]],
        gen.calls[sent["mix"] + 2 : sent["follow"]],
        gen.calls[sent["follow"] + 2 :],
    )
    assert before and all(not c for c in before)  # following the sound: the engine fills `class` with zeros
    assert pinned and all(c["class"].shape == (4, len(labels)) for c in pinned)
    expected = np.zeros(len(labels), np.float32)
    expected[[3, 5]] = 0.5
    np.testing.assert_allclose(pinned[-1]["class"], np.tile(expected, (4, 1)))
    assert after and all(not c for c in after)
    assert loop.class_weights is None and pinned_images and pinned_images[0].std() > 0


def test_a_bundle_without_a_class_input_ignores_scene_class(tiny_bundle: Path, tmp_path: Path) -> None:
    sf.write(tmp_path / "x.wav", (0.2 * np.random.default_rng(0).standard_normal(16000)).astype(np.float32), 16000)
    cfg = LiveConfig(bundle=tiny_bundle, input=tmp_path / "x.wav", fullscreen=False, width=160, height=90,
                     vsync=False, duration_s=0.5, params={"scene_class": "cello"})  # fmt: skip
    loop = LiveLoop(cfg)
    assert loop.class_labels is None and loop.class_weights is None
    assert loop.vad_params == replace(cfg.picture.vad)  # no gate declared: the voice gate
    loop.close()


# -- render --------------------------------------------------------------------------------------------------------
def test_render_uses_the_gate_the_bundle_declares(tiny_bundle: Path, tmp_path: Path) -> None:
    import run

    t = np.arange(4 * 16000) / 16000
    hum = (0.05 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)  # a steady sound at -29 dBFS, 4 s
    sf.write(tmp_path / "hum.wav", hum, 16000)
    voiced = {}
    for name, bundle in (("scene", MUSIC_BUNDLE), ("face", tiny_bundle)):
        started = time.perf_counter()
        from installation.render import render

        stats = render(tmp_path / "hum.wav", tmp_path / f"{name}.mp4", bundle=bundle, size=64, fps=10, progress=False)
        voiced[name] = stats.voiced_frames / stats.frames
        assert (tmp_path / f"{name}.mp4").stat().st_size > 0 and time.perf_counter() - started < 120
    assert voiced["scene"] >= 0.9  # the sound gate: a steady hum is a sound to draw
    assert voiced["face"] == 0.0  # the voice gate: a steady hum is the room
    assert run.main(["render", str(tmp_path / "hum.wav"), "-o", str(tmp_path / "cli.mp4"), "--bundle",
                     str(MUSIC_BUNDLE), "--size", "64", "--fps", "10", "--no-progress"]) == 0  # fmt: skip
