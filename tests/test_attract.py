"""The idle/attract state (issue 24, item 3): silence shows dim drifting faces and a prompt, not a black screen.

In-process runs of the real live loop (SDL's dummy driver, a file as microphone, a face-drawing stand-in for the
generator), and one run of ``run.py live`` with the shipped model on a real X server (Xvfb), judged on the X
server's own framebuffer.
"""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from installation.attract import Attract, AttractConfig, render_prompt
from installation.audio_in import FileInput
from installation.live import LiveConfig, LiveLoop
from installation.presets import PresetError, load_preset
from tests.xvfb import Xvfb, run_with_screenshots

ROOT = Path(__file__).resolve().parents[1]
RATE = 16000
BG = 10.0  # the portrait's default background (8, 8, 12), mean over channels: what "black" is here


class FaceGenerator:
    """Generator stand-in: a 32 px "face" (a bright disc on grey, brightness set by the noise) for any voice."""

    sample_rate, window_samples, noise_dim, image_size = RATE, RATE, 8, 32
    backend_name = "fake"

    def __init__(self) -> None:
        self.calls = 0
        yy, xx = np.mgrid[:32, :32]
        self.disc = ((yy - 16) ** 2 + (xx - 16) ** 2 < 120).astype(np.float32)

    def make_noise(self, batch: int, seed: int | None = None) -> np.ndarray:
        return np.random.default_rng(seed).standard_normal((int(batch), self.noise_dim), dtype=np.float32)

    def __call__(self, audio: np.ndarray, noise: np.ndarray | None = None, seed: int | None = None) -> np.ndarray:
        self.calls += 1
        assert noise is not None
        out = np.empty((audio.shape[0], 32, 32, 3), np.uint8)
        for k in range(audio.shape[0]):
            out[k] = (120 + 100 * self.disc + 10 * np.tanh(noise[k, 0]))[..., None].astype(np.uint8)
        return out


def bursts(seconds: float, start: float, stop: float) -> np.ndarray:
    """Near-silence with loud noise bursts (0.4 s on, 0.2 s off) between ``start`` and ``stop`` seconds."""
    rng = np.random.default_rng(0)
    x = (1e-4 * rng.standard_normal(int(seconds * RATE))).astype(np.float32)
    t = start
    while t < stop:
        a, b = int(t * RATE), int(min(stop, t + 0.4) * RATE)
        x[a:b] += 0.2 * rng.standard_normal(b - a).astype(np.float32)
        t += 0.6
    return x


def run_loop(
    tmp_path: Path, signal: np.ndarray, attract: AttractConfig, seconds: float
) -> tuple[dict[str, Any], list[tuple[float, bool, np.ndarray]]]:
    """Run the live loop on ``signal`` (real time); returns the report and (time, attract showing, canvas) per frame."""
    cfg = LiveConfig(
        fullscreen=False,
        width=320,
        height=180,
        vsync=False,
        fps=30.0,
        duration_s=seconds,
        report=tmp_path / "report.json",
        attract=attract,
    )
    frames: list[tuple[float, bool, np.ndarray]] = []

    def on_frame(loop: LiveLoop, t: float, canvas: np.ndarray) -> None:
        frames.append((t - loop._t0, loop.attract.showing, canvas.copy()))

    loop = LiveLoop(cfg, generator=FaceGenerator(), audio_input=FileInput(signal, RATE, loop=False), on_frame=on_frame)
    return loop.run(), frames


FAST = AttractConfig(after_s=0.8, face_s=0.5, crossfade_s=0.2, fade_s=0.1, brightness=0.4)


def test_silence_shows_dim_faces_and_the_prompt(tmp_path: Path) -> None:
    report, frames = run_loop(tmp_path, np.zeros(4 * RATE, np.float32), FAST, 3.3)
    late = [c for t, showing, c in frames if t > 1.8]
    assert not any(showing for t, showing, _ in frames if t < FAST.after_s - 0.05)  # start-up counts as silence
    assert all(showing for t, showing, _ in frames if t > FAST.after_s + 0.05)
    canvas = late[-1]
    mean = float(canvas.mean())
    # dim: 40 % of the way from the background to the face, plus the prompt
    assert BG + 20 < mean < BG + 0.6 * (canvas.max() - BG)
    band = canvas[int(0.7 * 180) : int(0.9 * 180)]
    assert band.max() >= 0.75 * 255 * FAST.prompt_level  # the prompt's text, near its grey level
    assert (canvas[:60].max(axis=2) < 150).all()  # the faces themselves stay dim
    attract = report["attract"]
    assert attract["starts"] == 1 and attract["faces"] >= 4 and attract["shown_s"] > 2.0
    assert report["vad"]["open_s"] == 0.0 and report["generator"]["calls"] >= 4
    # the drift: successive faces differ (seeded noise per face)
    assert len({round(float(c.mean()), 1) for c in late[::5]}) > 1


def test_disabled_attract_is_the_old_black_screen(tmp_path: Path) -> None:
    report, frames = run_loop(tmp_path, np.zeros(2 * RATE, np.float32), replace(FAST, enabled=False), 1.5)
    assert abs(float(frames[-1][2].mean()) - BG) < 1.0
    assert report["attract"]["starts"] == 0 and report["generator"]["calls"] == 0


def test_voice_ends_the_attract_state_and_silence_brings_it_back(tmp_path: Path) -> None:
    # 0-1.4 s silence (attract from 0.8 s), 1.4-3.2 s voice (live face), then silence (attract after after_s)
    signal = bursts(6.0, 1.4, 3.2)
    report, frames = run_loop(tmp_path, signal, FAST, 5.4)
    showing = np.array([s for _, s, _ in frames])
    times = np.array([t for t, _, _ in frames])
    assert showing[(times > 0.9) & (times < 1.3)].all()
    voice = (times > 1.8) & (times < 3.1)
    assert not showing[voice].any()
    assert showing[times > 4.8].all()
    assert report["attract"]["starts"] == 2
    live = frames[int(np.flatnonzero(voice)[-1])][2]
    attract = frames[-1][2]
    assert live.mean() > attract.mean() + 40  # the live face is at full brightness, the attract one dim
    assert report["vad"]["open_s"] > 1.0


def test_attract_faces_reuse_the_voices_heard() -> None:
    gen = FaceGenerator()
    a = Attract(AttractConfig(after_s=0.0, face_s=1.0), gen.make_noise, RATE, seed=3)
    assert Attract(AttractConfig(after_s=2.0), gen.make_noise, RATE).update(1.9, False, -1) is None  # not yet
    first = a.update(0.0, False, -1)
    assert first is not None and not first.audio.any()  # nobody spoke yet: silence
    assert a.update(0.5, False, -1) is None  # face_s apart
    voices = [np.full(RATE, k, np.float32) for k in range(10)]
    for k, v in enumerate(voices):
        a.remember(k, v)
    faces = [a.update(1.0 + k, False, -1) for k in range(8)]
    heard = {float(f.audio[0]) for f in faces if f is not None}
    assert heard == {float(k) for k in range(2, 10)}  # the 8 newest segments, in turn
    assert len({f.noise.tobytes() for f in faces if f is not None}) == 8
    again = Attract(AttractConfig(after_s=0.0, face_s=1.0), gen.make_noise, RATE, seed=3).update(0.0, False, -1)
    assert again is not None and np.array_equal(again.noise, first.noise)  # seeded


def test_prompt_layout() -> None:
    single = render_prompt("Say something", 1920, 1080, 0.06)
    assert single is not None
    x0, y0, alpha = single
    h, w = alpha.shape[:2]
    assert 40 <= h <= 90 and abs((x0 + w / 2) - 960) <= 1 and abs((y0 + h / 2) - 864) <= 1
    two = render_prompt("Say something\nand a face appears", 1920, 1080, 0.06)
    assert two is not None and two[2].shape[0] >= 2 * h - 4
    wide = render_prompt("a very long prompt " * 8, 640, 360, 0.1)
    assert wide is not None and wide[2].shape[1] <= 0.9 * 640 + 1 and wide[0] >= 0


def test_attract_section_of_a_preset(tmp_path: Path) -> None:
    gallery = load_preset("gallery")
    assert gallery.attract.enabled and gallery.attract.prompt
    for text, key in (
        ("attract: {brightness: .nan}", "attract.brightness"),
        ("attract: {brightness: 1.5}", "attract.brightness"),
        ("attract: {after_s: -1}", "attract.after_s"),
        ("attract: {face_s: .inf}", "attract.face_s"),
        ("attract: {prompt: 3}", "attract.prompt"),
        ("attract: {timing: 3}", "attract.timing"),
    ):
        path = tmp_path / "p.yaml"
        path.write_text(f"extends: headless\n{text}\n")
        with pytest.raises(PresetError, match=f"p.yaml: .*key '{key}'"):
            load_preset(path)
    with pytest.raises(ValueError, match="finite"):
        AttractConfig(fade_s=float("nan"))


@pytest.mark.skipif(not Xvfb.available(), reason="Xvfb is not installed (apt-get install xvfb): no X server to test on")
def test_idle_state_on_a_real_x_server(tmp_path: Path) -> None:
    """``run.py live`` with the shipped model, fullscreen on Xvfb at 1920x1080: 2 s of the demo clip, then silence.

    The X server's framebuffer, after the voice has stopped: the attract state (report), a picture well above
    black with the prompt's bright text in the lower band; the in-process test above shows the same loop without
    it stays at the background."""
    import soundfile as sf

    from engine.audio import load_audio

    voice = load_audio(ROOT / "presets" / "demo" / "demo_speech.flac", RATE)[: 2 * RATE]
    clip = tmp_path / "voice_then_silence.wav"
    sf.write(str(clip), np.concatenate([voice, np.zeros(10 * RATE, np.float32)]), RATE)
    preset = tmp_path / "x.yaml"
    preset.write_text(
        f"extends: {ROOT / 'presets' / 'headless.yaml'}\n"
        "display: {fullscreen: true, size: [1920, 1080]}\n"
        "input: {loop: false}\nosc: {enabled: false}\nparams: {overlay: false}\n"
        "attract: {after_s: 2.0, fade_s: 0.5}\n"
    )
    report = tmp_path / "report.json"
    with Xvfb(1920, 1080) as x:
        argv = [sys.executable, "run.py", "live", "--preset", str(preset), "--input", str(clip), "--duration", "8",
                "--report", str(report)]  # fmt: skip
        proc, shots = run_with_screenshots(x, argv, every_s=0.5, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    data = json.loads(report.read_text())
    assert data["display"]["driver"] == "x11" and data["attract"]["starts"] >= 1 and data["attract"]["showing"]
    # the last screenshots before the window closed: attract (the run ends at 8 s; voice stopped at 2 s)
    lit = [s for _, s in shots if s.mean() > 1.0]
    assert lit, "nothing was ever drawn on the X server"
    screen = lit[-1]
    assert screen.shape == (1080, 1920, 3)
    assert screen.mean() > BG + 15  # above black: the dim face
    assert screen[:700].max(axis=2).mean() < 140  # and dim, not a live face at full brightness
    band = screen[int(0.75 * 1080) : int(0.85 * 1080), 600:1320].max(axis=2)
    assert (band > 180).sum() > 500  # the prompt's letters
