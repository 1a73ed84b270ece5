"""The live loop's voice gate in a noisy room (issue 24, item 4): a file of pink noise, then speech over it, as
the microphone; the report's ``vad`` section. Played 4x faster than real time (the VAD analyses every sample;
``run.py bench --only live --live-cases gate`` runs the same in real time with the shipped model)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
os.environ.setdefault("SDL_AUDIODRIVER", "dummy")

from benchmarks.live import at_active_level, pink_noise, voiced_frames  # noqa: E402
from installation.audio_in import FileInput  # noqa: E402
from installation.live import LiveConfig, LiveLoop  # noqa: E402
from tests.test_attract import FaceGenerator  # noqa: E402

RATE = 16000
DEMO = Path(__file__).resolve().parents[1] / "presets" / "demo" / "demo_speech.flac"
SPEED = 4.0


def run(tmp_path: Path, audio: np.ndarray) -> tuple[LiveLoop, dict, np.ndarray]:
    """The live loop on ``audio`` played at SPEED; returns the loop, its report and the VAD's gate per 10 ms frame."""
    cfg = LiveConfig(
        fullscreen=False, width=320, height=180, vsync=False, fps=60.0, report=tmp_path / "report.json",
        duration_s=len(audio) / RATE / SPEED + 0.3,
    )  # fmt: skip
    loop = LiveLoop(cfg, generator=FaceGenerator(), audio_input=FileInput(audio, RATE, loop=False, speed=SPEED))
    gates: list[np.ndarray] = []
    process = loop.vad.process

    def recording(samples: np.ndarray) -> object:
        frames = process(samples)
        gates.append(frames.gate)
        return frames

    loop.vad.process = recording  # type: ignore[method-assign]
    report = loop.run()
    return loop, report, np.concatenate(gates)


def test_room_noise_keeps_the_gate_shut(tmp_path: Path) -> None:
    loop, report, gate = run(tmp_path, pink_noise(20.0, -34.0, RATE, seed=1))
    vad = report["vad"]
    assert vad["analysed_s"] == pytest.approx(20.0, abs=0.5)  # every sample went through the VAD
    assert gate[300:].sum() * 0.01 <= 1.0  # after the first 3 s
    assert vad["open_s"] == pytest.approx(gate.sum() * 0.01)
    assert vad["open_s"] <= 3.0
    assert -44.0 < vad["noise_floor_dbfs"] < -36.0
    live_calls = loop.worker.submitted - loop.attract.faces
    assert live_calls <= 40  # the start-up second or two only (it was 66 calls in 15 s, at 10 Hz)


def test_speech_over_room_noise_opens_it(tmp_path: Path) -> None:
    from engine.audio import load_audio

    speech = at_active_level(np.tile(load_audio(DEMO, RATE), 2), RATE, -28.0)
    lead = 5.0
    audio = pink_noise(lead + len(speech) / RATE + 2.0, -34.0, RATE, seed=3)
    audio[int(lead * RATE) : int(lead * RATE) + len(speech)] += speech
    _, report, gate = run(tmp_path, audio)
    voiced = np.zeros(len(gate), bool)
    v = voiced_frames(speech, RATE, 160)
    voiced[500 : 500 + len(v)] = v[: max(0, len(gate) - 500)]
    assert voiced.sum() > 300
    assert gate[voiced].mean() >= 0.8
    assert report["vad"]["open_s"] >= 0.8 * voiced.sum() * 0.01
