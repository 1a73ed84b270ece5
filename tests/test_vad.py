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
    track = detect(mid, SR, VadParams(on_min_db=-45.0, off_min_db=-55.0, floor_window_s=10.0))
    t = (np.arange(len(track)) + 1) * track.hop / SR
    assert track.gate[(t > 1.1) & (t < 2.4)].all()  # -50 dBFS: below "on" but above "off"
    only_mid = np.concatenate([noise(1.0, -60.0), tone(1.0, -50.0)])
    assert not detect(only_mid, SR, VadParams(on_min_db=-45.0, floor_window_s=10.0)).gate.any()


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


# -- steady room noise (issue 24, item 4) -------------------------------------------------------------------

DEMO = Path(__file__).resolve().parents[1] / "presets" / "demo" / "demo_speech.flac"


def pink_noise(seconds: float, dbfs: float, seed: int = 0) -> np.ndarray:
    from benchmarks.live import pink_noise as make

    return make(seconds, dbfs, SR, seed)


def stream(signal: np.ndarray, block: int = 441) -> tuple[np.ndarray, VoiceActivityDetector]:
    """Gate per frame of a streaming detector as the live loop runs it (default start floor, odd block sizes)."""
    vad = VoiceActivityDetector(SR)
    gates = [vad.process(signal[i : i + block]).gate for i in range(0, len(signal), block)]
    return np.concatenate(gates), vad


def voiced(x: np.ndarray, hop: int = 160) -> np.ndarray:
    from benchmarks.live import voiced_frames

    return voiced_frames(x, SR, hop)


def test_pink_noise_pipeline_is_pink() -> None:
    x = pink_noise(4.0, -34.0)
    assert 10 * np.log10(np.mean(x**2)) == pytest.approx(-34.0, abs=0.01)
    power = np.abs(np.fft.rfft(x)) ** 2
    f = np.fft.rfftfreq(len(x), 1 / SR)
    octave = [power[(f >= lo) & (f < 2 * lo)].sum() for lo in (125, 250, 500, 1000, 2000)]
    assert np.ptp(10 * np.log10(octave)) < 1.5  # pink: equal power per octave


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_steady_pink_noise_does_not_hold_the_gate_open(seed: int) -> None:
    """20 s of pink noise at -34 dBFS: open <= 1 s in total after the first 3 s (issue 24: it was 66 generator
    calls in 15 s); the floor settles a few dB under the noise's RMS."""
    gate, vad = stream(pink_noise(20.0, -34.0, seed))
    t = np.arange(len(gate)) * vad.frame_seconds
    assert gate[t >= 3.0].sum() * vad.frame_seconds <= 1.0
    assert not gate[t >= 5.0].any()
    assert -44.0 < vad.floor_db < -36.0
    assert vad.open_s == pytest.approx(gate.sum() * vad.frame_seconds)
    assert vad.frames == len(gate)


def _speech(source: str) -> np.ndarray:
    if source == "demo":
        import soundfile as sf

        x, rate = sf.read(str(DEMO), dtype="float32")
        assert rate == SR
        return np.tile(x, 2)  # ~16 s
    files = sorted(DATA.glob("*/preprocessed_frame_*.flac"))
    if not files:
        pytest.skip(f"real speech data not found under {DATA}")
    import soundfile as sf

    return np.concatenate([sf.read(str(f), dtype="float32")[0] for f in files[:: max(1, len(files) // 12)][:12]])


@pytest.mark.parametrize("source", ["demo", "wav2pix"])
def test_speech_at_minus_28_over_the_noise_keeps_the_gate_open(source: str) -> None:
    """Speech at -28 dBFS active level over the same noise: open >= 80 % of the voiced time."""
    from benchmarks.live import at_active_level

    clean = at_active_level(_speech(source), SR, -28.0)
    lead = 5.0
    signal = pink_noise(lead + len(clean) / SR + 2.0, -34.0, seed=7)
    start = int(lead * SR)
    signal[start : start + len(clean)] += clean
    gate, vad = stream(signal)
    mask = np.zeros(len(gate), bool)
    v = voiced(clean)
    mask[start // vad.hop : start // vad.hop + len(v)] = v
    assert v.mean() > 0.3  # a sane amount of voiced speech
    assert gate[mask].mean() >= 0.8
    after = np.zeros(len(gate), bool)
    after[(start + len(clean)) // vad.hop + 60 :] = True  # 0.6 s after the speech: the hangover has passed
    assert not gate[after].any()


def test_non_finite_params_are_refused() -> None:
    for name in ("hangover_s", "on_margin_db", "floor_window_s"):
        with pytest.raises(ValueError, match=f"{name} must be a finite number"):
            VadParams(**{name: float("nan")})
    with pytest.raises(ValueError, match="floor_window_s"):
        VadParams(floor_window_s=0.01)
