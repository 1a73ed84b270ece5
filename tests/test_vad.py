"""Voice-activity detection: real speech vs silence and low noise; hysteresis, hangover, streaming."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from installation.vad import VadParams, VoiceActivityDetector, detect, frame_levels, initial_floor

SR = 16000
DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "wav2pix" / "train"


def noise(seconds: float, dbfs: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(int(seconds * SR)) * 10 ** (dbfs / 20)).astype(np.float32)


def tone(seconds: float, dbfs: float, hz: float = 220.0) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    return (np.sqrt(2) * 10 ** (dbfs / 20) * np.sin(2 * np.pi * hz * t)).astype(np.float32)


@pytest.fixture(scope="module")
def speech() -> np.ndarray:
    """About 8 s of real speech (8 one-second snippets, both speakers) from ../shared/data."""
    files = sorted(DATA.glob("*/preprocessed_frame_*.flac"))
    if not files:
        pytest.skip(f"real speech data not found under {DATA}")
    import soundfile as sf

    chosen = files[:: max(1, len(files) // 8)][:8]
    parts = []
    for f in chosen:
        x, rate = sf.read(str(f), dtype="float32")
        assert rate == SR
        parts.append(x)
    return np.concatenate(parts)


def test_levels_in_dbfs() -> None:
    assert abs(float(frame_levels(tone(0.5, -3.0), 160).mean()) - (-3.0)) < 0.1  # full-scale sine = -3 dBFS
    assert abs(float(frame_levels(tone(0.5, -40.0), 160).mean()) - (-40.0)) < 0.1
    assert frame_levels(np.zeros(1600, np.float32), 160).max() <= -119
    assert frame_levels(np.full(1600, 0.5, np.float32), 160).max() <= -119  # DC is removed


def test_silence_and_low_noise_are_not_voice() -> None:
    for signal in (np.zeros(3 * SR, np.float32), noise(5.0, -50.0), noise(5.0, -65.0), noise(5.0, -40.0)):
        track = detect(signal, SR)
        assert not track.gate.any()
        assert (track.envelope >= 0).all() and (track.envelope <= 1).all()


def test_real_speech_is_voice(speech: np.ndarray) -> None:
    track = detect(speech, SR)
    assert track.gate.mean() > 0.8
    assert track.envelope.max() > 0.5


def test_speech_in_noise_is_gated_on_the_speech(speech: np.ndarray) -> None:
    quiet = 2.0
    signal = np.concatenate(
        [noise(quiet, -50.0, 1), speech + noise(len(speech) / SR, -50.0, 2), noise(quiet, -50.0, 3)]
    )
    track = detect(signal, SR)
    t = (np.arange(len(track)) + 1) * track.hop / SR
    speech_end = quiet + len(speech) / SR
    in_noise = (t < quiet) | (t > speech_end + VadParams().hangover_s + 0.05)
    in_speech = (t > quiet + 0.1) & (t < speech_end - 0.1)
    assert not track.gate[in_noise].any()
    assert track.gate[in_speech].mean() > 0.8


def test_hysteresis_attack_and_hangover_timing() -> None:
    p = VadParams()
    # 1 s of quiet, a 5 ms click (shorter than the attack), 1 s quiet, 1 s of a loud tone, 1 s quiet.
    click = tone(0.005, -10.0, 1000.0)
    signal = np.concatenate([noise(1.0, -60.0), click, noise(1.0, -60.0, 1), tone(1.0, -20.0), noise(1.0, -60.0, 2)])
    track = detect(signal, SR, p)
    t = (np.arange(len(track)) + 1) * track.hop / SR
    assert not track.gate[t < 2.0].any()  # the click did not open the gate
    start, stop = 2.005, 3.005
    on = t[track.gate]
    assert start + p.attack_s - 0.011 <= on.min() <= start + p.attack_s + 0.011
    assert stop + p.hangover_s - 0.011 <= on.max() <= stop + p.hangover_s + 0.021
    assert track.gate[(t > on.min()) & (t < on.max())].all()  # one segment
    # Between the off and on thresholds an open gate stays open, a closed one stays closed.
    mid = np.concatenate([noise(1.0, -60.0), tone(0.5, -30.0), tone(1.0, -50.0), noise(1.0, -60.0, 1)])
    track = detect(mid, SR, VadParams(on_min_db=-45.0, off_min_db=-55.0, floor_rise_db_per_s=0.0))
    t = (np.arange(len(track)) + 1) * track.hop / SR
    assert track.gate[(t > 1.1) & (t < 2.4)].all()  # -50 dBFS: below "on" but above "off"
    only_mid = np.concatenate([noise(1.0, -60.0), tone(1.0, -50.0)])
    assert not detect(only_mid, SR, VadParams(on_min_db=-45.0, floor_rise_db_per_s=0.0)).gate.any()


def test_streaming_equals_offline(speech: np.ndarray) -> None:
    signal = np.concatenate([noise(1.0, -55.0), speech[: 3 * SR], noise(1.0, -55.0, 1)])
    offline = detect(signal, SR)
    # detect() starts from the file's quiet frames; give the streaming detector the same start.
    vad = VoiceActivityDetector(SR, initial_floor_db=initial_floor(offline.level_db, VadParams()))
    rng = np.random.default_rng(0)
    gates, pos = [], 0
    while pos < len(signal):
        n = int(rng.integers(1, 700))
        gates.append(vad.process(signal[pos : pos + n]).gate)
        pos += n
    assert np.array_equal(np.concatenate(gates), offline.gate)


def test_gate_at_sample_positions() -> None:
    track = detect(np.concatenate([np.zeros(SR, np.float32), tone(1.0, -20.0)]), SR)
    gate, env = track.at(np.array([0, 159, 160, SR, SR + 800, 2 * SR, 3 * SR]))
    assert gate.dtype == bool and env.dtype == np.float32
    assert not gate[:4].any() and gate[4:].all()  # the last position is past the end: the last frame's state
    assert env[0] == 0 and env[-1] > 0.5


def test_bad_params() -> None:
    with pytest.raises(ValueError, match="frame_s"):
        VadParams(frame_s=0.5)
    with pytest.raises(ValueError, match="hysteresis"):
        VadParams(off_margin_db=20.0)
