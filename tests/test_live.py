"""The live loop, headless: SDL's dummy video driver, file or fake-device input, short runs.

The real microphone, a real screen (fullscreen, vsync) and real speakers cannot be exercised here; the
device input runs on fake streams (see ``tests/test_audio_in.py``).
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from installation.audio_in import FileInput, SoundDeviceInput
from installation.live import (
    FastEnvelope,
    LiveConfig,
    LiveLoop,
    NoiseWalk,
    config_from_preset,
    estimate_pitch,
    scene_params,
)
from installation.presets import load_preset
from installation.telemetry import Histogram
from scenes import FrameState, Portrait

RATE = 16000


class FakeGenerator:
    """Generator-shaped stand-in: 16 px images whose grey level follows the window's loudness."""

    sample_rate, window_samples, noise_dim, image_size = RATE, RATE, 8, 16
    backend_name = "fake"

    def __init__(self, fail_on: tuple[int, ...] = ()) -> None:
        self.calls = 0
        self.fail_on = fail_on
        self.batches: list[int] = []

    def make_noise(self, batch: int, seed: int | None = None) -> np.ndarray:
        return np.random.default_rng(seed).standard_normal((int(batch), self.noise_dim), dtype=np.float32)

    def __call__(self, audio: np.ndarray, noise: np.ndarray | None = None, seed: int | None = None) -> np.ndarray:
        self.calls += 1
        self.batches.append(int(audio.shape[0]))
        if self.calls in self.fail_on:
            raise RuntimeError("backend exploded")
        level = float(np.sqrt(np.mean(np.square(audio[0]))))
        images = np.zeros((audio.shape[0], 16, 16, 3), np.uint8)
        images[...] = min(255, int(level * 2000))
        return images


def speechy(seconds: float = 3.0) -> np.ndarray:
    """0.3 s of near-silence, then 0.4 s noise bursts separated by 0.2 s pauses (float32 [n] at 16 kHz)."""
    rng = np.random.default_rng(0)
    x = (1e-4 * rng.standard_normal(int(seconds * RATE))).astype(np.float32)
    t = 0.3
    while t < seconds:
        a, b = int(t * RATE), int(min(seconds, t + 0.4) * RATE)
        x[a:b] += 0.2 * rng.standard_normal(b - a).astype(np.float32)
        t += 0.6
    return x


def config(tmp_path: Path, **changes: Any) -> LiveConfig:
    base = LiveConfig(
        fullscreen=False,
        width=320,
        height=180,
        vsync=False,
        fps=60.0,
        duration_s=1.5,
        report=tmp_path / "report.json",
        params={"overlay": True},
    )
    return replace(base, **changes)


def test_headless_preset_with_file_input_writes_a_sane_report(tiny_bundle: Path, tmp_path: Path) -> None:
    from pythonosc.udp_client import SimpleUDPClient

    preset = load_preset("headless")
    cfg = config_from_preset(preset)
    assert cfg.input == Path(__file__).resolve().parents[1] / "presets" / "demo" / "demo_speech.flac"
    cfg = replace(
        cfg,
        bundle=tiny_bundle,
        duration_s=2.0,
        report=tmp_path / "live.json",
        osc=replace(preset.osc, port=0, oscquery_port=0, oscquery=False, feedback=False),
    )
    sent: list[int] = []

    def on_frame(loop: LiveLoop, t: float, canvas: np.ndarray) -> None:
        if loop.frames == 30 and loop.osc is not None and loop.osc.server is not None:
            host, port = loop.osc.server.address
            SimpleUDPClient(host, port).send_message("/avgan/scene", "grid")  # a controller switches scene
            sent.append(loop.frames)

    loop = LiveLoop(cfg, on_frame=on_frame)
    assert loop.canvas.shape == (1080, 1920, 3)
    report = loop.run()
    on_disk = json.loads((tmp_path / "live.json").read_text())
    assert on_disk["frames"] == report["frames"]
    assert report["frames"] >= 40 and report["quit_reason"] == "duration reached"
    assert 1.9 <= report["wall_s"] <= 3.0
    fps, ft = report["fps"], report["frame_ms"]
    assert 10 <= fps["mean"] <= 62 and fps["p99"] <= fps["p50"]
    assert ft["p50"] <= ft["p90"] <= ft["p99"] <= ft["max"]
    assert sum(report["frame_ms_histogram"]["counts"]) == ft["n"] == report["frames"] - 1
    gen = report["generator"]
    assert gen["backend"] == "onnxruntime-cpu" and gen["calls"] >= 3 and gen["errors"] == 0
    assert gen["ms"]["p50"] is not None and gen["ms"]["p50"] <= gen["ms"]["p99"]
    assert report["frame_errors"] == 0
    audio = report["audio"]
    assert audio["input"] == "file demo_speech.flac" and audio["overflows"] == 0 and audio["reconnects"] == 0
    rss = report["rss_mb"]
    assert 0 < rss["start"] <= rss["peak"] and len(rss["series"]) >= 2 and rss["growth_pct"] is not None
    assert sent and report["osc"]["enabled"] and report["osc"]["handled"] == 1
    assert report["scenes"].get("grid", 0) > 0  # the OSC message took effect


def test_a_scene_that_raises_once_does_not_stop_the_loop(tmp_path: Path) -> None:
    class Flaky(Portrait):
        calls = 0

        def draw(self, canvas: np.ndarray, frame: FrameState) -> None:
            Flaky.calls += 1
            if Flaky.calls == 10:
                raise RuntimeError("scene bug")
            super().draw(canvas, frame)

    class FakeSound:
        """installation.sound.SoundEngine-shaped: records what the loop feeds it."""

        def __init__(self) -> None:
            self.fed, self.states, self.set, self.stopped = 0, 0, [], False

        def feed(self, samples: np.ndarray, rate: int) -> None:
            assert rate == RATE and samples.dtype == np.float32
            self.fed += samples.shape[0]

        def set_state(self, level: float, pitch_hz: float = 0.0, identity: int | None = None) -> None:
            assert 0.0 <= level <= 1.0 and pitch_hz >= 0.0
            self.states += 1

        def set_param(self, name: str, value: Any) -> None:
            self.set.append((name, value))

        def stop(self) -> None:
            self.stopped = True

    def on_frame(loop: LiveLoop, t: float, canvas: np.ndarray) -> None:
        if loop.frames == 5:
            loop.params.enqueue("sound/mix", 0.25, source="test")  # as an OSC handler would

    gen, sound = FakeGenerator(fail_on=(2,)), FakeSound()
    source = FileInput(speechy(), RATE)
    loop = LiveLoop(config(tmp_path), generator=gen, audio_input=source, sound=sound, on_frame=on_frame)
    loop.scenes["portrait"] = Flaky()
    report = loop.run()
    assert report["frame_errors"] == 1 and Flaky.calls == report["frames"]
    assert report["frames"] >= 40  # ran its whole 1.5 s at (nearly) 60 fps
    assert report["generator"]["errors"] == 1 and report["generator"]["calls"] >= 3
    assert loop.image_index >= 1  # later generations still reached the scene
    assert sound.states == report["frames"] and sound.stopped
    # every sample the loop read went to the sound engine: compare with what the reader consumed, not with what the
    # input thread wrote (it goes on writing after the last frame; on a loaded CI runner 0.13 s of it, 2080 samples);
    # a reader that fell more than 0.5 s behind skips ahead by design, and then fed is short by the skipped samples
    if loop.reader.gaps == 0:
        assert 0 <= loop.reader.position - sound.fed <= 1600, (loop.reader.position, sound.fed)  # ring before the first read
    assert ("sound/mix", 0.25) in sound.set


class ThreadedFakeStream:
    """A fake PortAudio stream that calls back from its own thread every 10 ms; the first one dies early."""

    def __init__(self, stop_after_s: float | None, **kwargs: Any) -> None:
        self.kwargs = kwargs
        self.active = False
        self.stop_after_s = stop_after_s
        self._stop = threading.Event()

    def start(self) -> None:
        self.active = True
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        rng = np.random.default_rng(1)
        started = time.monotonic()
        while not self._stop.wait(0.01):
            if self.stop_after_s is not None and time.monotonic() - started > self.stop_after_s:
                return  # the USB microphone was pulled: silence, the stream still claims to be active
            block = (0.2 * rng.standard_normal((480, 1))).astype(np.float32)
            self.kwargs["callback"](block, 480, None, None)

    def close(self, ignore_errors: bool = True) -> None:
        self._stop.set()
        self.active = False


def test_vanished_input_reconnects_while_frames_continue(tmp_path: Path) -> None:
    streams: list[ThreadedFakeStream] = []

    def factory(**kwargs: Any) -> ThreadedFakeStream:
        stream = ThreadedFakeStream(0.3 if not streams else None, **kwargs)
        streams.append(stream)
        return stream

    mic = SoundDeviceInput(
        "fake",
        heartbeat_s=0.15,
        backoff_s=0.1,
        stream_factory=factory,
        device_info=lambda d: {"name": "Fake Mic", "default_samplerate": 48000, "max_input_channels": 1},
    )

    def on_frame(loop: LiveLoop, t: float, canvas: np.ndarray) -> None:
        if loop.frames == 5:
            loop.params.enqueue("preset/load", "open_day", source="test")  # e.g. from TouchOSC
        if loop.frames == 6:
            loop.params.enqueue("preset/load", "no_such_preset", source="test")  # logged, ignored

    cfg = config(tmp_path, duration_s=1.5, params={"overlay": False, "sound/level": 0.9})
    loop = LiveLoop(cfg, generator=FakeGenerator(), audio_input=mic, on_frame=on_frame)
    report = loop.run()
    assert loop.params.target("sound/level") == 0.6 and loop.params.get("overlay") is True  # open_day's values
    audio = report["audio"]
    kinds = [e[1] for e in audio["events"]]
    assert audio["reconnects"] >= 1 and audio["stalls"] >= 1
    assert kinds[:1] == ["opened"] and "stalled" in kinds and "reconnected" in kinds
    assert audio["rate"] == 48000 and len(streams) >= 2
    assert report["frames"] >= 40 and report["frame_ms"]["max"] < 250  # the picture never stopped
    assert report["frame_errors"] == 0
    assert mic.ring.written - loop.reader.position <= 3 * 480  # kept reading after the reconnect, to the end


def test_keyboard_switches_scenes_toggles_and_quits(tmp_path: Path) -> None:
    import pygame

    keys = {10: pygame.K_2, 20: pygame.K_o, 30: pygame.K_RIGHT, 40: pygame.K_b, 50: pygame.K_q}
    seen: dict[int, str] = {}

    def on_frame(loop: LiveLoop, t: float, canvas: np.ndarray) -> None:
        seen[loop.frames] = loop.scene_name
        if loop.frames in keys:
            pygame.event.post(pygame.event.Event(pygame.KEYDOWN, key=keys[loop.frames], mod=0, unicode=""))

    class DeadSound:
        """A sound engine whose process has died (``alive`` false): the loop must drop it and go on."""

        alive = False
        stopped = False

        def feed(self, samples: np.ndarray, rate: int) -> None:
            raise AssertionError("fed a dead sound engine")

        def set_state(self, *args: Any) -> None:
            raise AssertionError("fed a dead sound engine")

        def stop(self) -> None:
            DeadSound.stopped = True

    gen = FakeGenerator()
    loop = LiveLoop(
        config(tmp_path, duration_s=5.0, params={"overlay": False}),
        generator=gen,
        audio_input=FileInput(speechy(), RATE),
        sound=DeadSound(),
        on_frame=on_frame,
    )
    report = loop.run()
    assert loop.sound is None and DeadSound.stopped and "stopped" in (report["sound"]["error"] or "")
    assert report["frame_errors"] == 0
    assert report["quit_reason"] == "keyboard" and report["frames"] <= 53
    assert seen[9] == "portrait" and seen[15] == "grid" and seen[35] == "morph"
    assert loop.params.get("overlay") is True and loop.params.get("blackout") is True
    assert 4 in gen.batches  # the grid asked for 2 x 2 faces


def test_fast_path_onset_opens_the_gate_at_once() -> None:
    fast = FastEnvelope(RATE, window_s=0.01, release_s=0.1, range_db=40.0, hold_s=0.3)
    fast.window[:] = 1e-4
    level, gate = fast.update(0.0, 0.016, floor_db=-80.0, on_db=-50.0)
    assert not gate and level < 0.05
    fast.window[:] = 0.5 * np.sign(np.sin(np.arange(160)))  # a clap: ~-6 dBFS
    level, gate = fast.update(0.016, 0.016, floor_db=-80.0, on_db=-50.0)
    assert gate and level == 1.0 and fast.onsets == 1
    fast.window[:] = 1e-4
    level, gate = fast.update(0.2, 0.184, floor_db=-80.0, on_db=-50.0)
    assert gate and 0.1 < level < 0.3  # held open; released with ~0.1 s time constant
    level, gate = fast.update(0.4, 0.2, floor_db=-80.0, on_db=-50.0)
    assert not gate


def test_pitch_walk_histogram_and_scene_params() -> None:
    t = np.arange(640) / RATE
    assert abs(estimate_pitch(np.sin(2 * np.pi * 220 * t).astype(np.float32), RATE) - 220) < 3
    assert estimate_pitch(np.random.default_rng(0).standard_normal(640).astype(np.float32), RATE) == 0.0
    walk = NoiseWalk(FakeGenerator().make_noise, seed=3)
    z0 = walk.step(0.0, 1.0)
    z1 = walk.step(0.5, 1.0, pitch_hz=220.0)
    assert np.isclose(np.linalg.norm(z1), np.sqrt(8), rtol=1e-4)
    angle = np.arccos(np.dot(z0, z1) / 8.0)
    assert abs(angle - 0.5) < 1e-3  # walked 0.5 rad on the sphere
    h = Histogram()
    for ms in (1.0, 2.0, 3.0, 50.0, 5000.0):
        h.add(ms)
    assert h.percentile(50) == pytest.approx(3.0, abs=0.11) and h.percentile(100) == 5000.0
    assert h.coarse((2.5, 100.0))["counts"] == [2, 2, 1]
    sp = scene_params({"scene": "grid", "crossfade_s": 0.2, "grid/n": 3, "morph/trail": 0.1}, "grid")
    assert sp == {"crossfade_s": 0.2, "n": 3}


def test_cli_runs_a_preset(tiny_bundle: Path, tmp_path: Path) -> None:
    import run

    preset = tmp_path / "ci.yaml"
    demo = Path(__file__).resolve().parents[1] / "presets" / "headless.yaml"
    preset.write_text(
        f"extends: {demo}\nosc: {{port: 0, oscquery: false, feedback: false}}\nengine: {{bundle: {tiny_bundle}}}\n"
        "display: {size: [320, 180]}\n"
    )
    report = tmp_path / "cli.json"
    assert run.main(["live", "--preset", str(preset), "--duration", "1", "--report", str(report)]) == 0
    data = json.loads(report.read_text())
    assert data["frames"] > 10 and data["display"]["size"] == [320, 180]
    assert run.main(["live", "--preset", "no-such-preset", "--duration", "1"]) == 2


def test_window_dims_the_canvas_in_place() -> None:
    from installation.window import Window

    canvas = np.full((32, 48, 3), 200, np.uint8)
    window = Window(canvas, fullscreen=False, vsync=False)
    try:
        window.present(blackout=False, brightness=0.5, overlay=False)
        assert (canvas == 100).all()
        assert tuple(window.screen.get_at((5, 5)))[:3] == (100, 100, 100)
        window.present(blackout=True, brightness=1.0, overlay=False)
        assert tuple(window.screen.get_at((5, 5)))[:3] == (0, 0, 0)
    finally:
        window.close()
