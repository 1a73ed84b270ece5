"""Sound engine (pyo, offline server: this machine has no sound card) and ``render --sound``.

pyo runs one server at a time per process; servers may follow one another when each is stopped, its
objects released and then shut down (what :meth:`SoundEngine.stop` does), so everything here runs
in-process, one engine after another.
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path

import av
import numpy as np
import pytest
import soundfile as sf

from installation.sound import (
    SOUND_PARAMS,
    EchoDesign,
    SoundConfig,
    SoundEngine,
    SoundError,
    SoundSettings,
    SoundUnavailable,
    StateTrack,
    render_offline,
    settings_from,
)

os.environ.setdefault("PYO_GUI_WX", "0")  # as installation.sound does: no wxPython nag
pyo = pytest.importorskip("pyo")

VR = 16000  # voice rate, Hz
SR = 48000  # server rate, Hz


def tone(seconds: float, freq: float = 220.0, amp: float = 0.3) -> np.ndarray:
    t = np.arange(round(seconds * VR)) / VR
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def bursts(seconds: float, seed: int = 0) -> np.ndarray:
    """Irregular voice-like bursts (0.3-1.2 s tones, 0.8-2 s silences), the first at 0.5 s."""
    rng = np.random.default_rng(seed)
    voice = np.zeros(round(seconds * VR), np.float32)
    pos = VR // 2
    while pos < voice.size:
        on, off = round(rng.uniform(0.3, 1.2) * VR), round(rng.uniform(0.8, 2.0) * VR)
        n = min(on, voice.size - pos)
        voice[pos : pos + n] = tone(n / VR, rng.uniform(150, 300))[:n] * np.hanning(n) ** 0.3
        pos += on + off
    return voice


def envelope(x: np.ndarray, rate: int, hop_s: float = 0.05) -> np.ndarray:
    """RMS per ``hop_s`` frame of mono ``x``."""
    hop = round(rate * hop_s)
    x = x[: x.size // hop * hop]
    return np.sqrt((x.reshape(-1, hop) ** 2).mean(axis=1))


def rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64))))


def peak_hz(x: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(x * np.hanning(x.size)))
    return float(np.argmax(spectrum) * rate / x.size)


def offline(path: Path, seconds: float) -> SoundConfig:
    return SoundConfig(output="offline", sample_rate=SR, buffer_size=256, record_path=str(path), duration_s=seconds)


# -- lifecycle ---------------------------------------------------------------------------------------


def test_engine_starts_and_stops_twice_in_one_process(tmp_path: Path) -> None:
    voice = tone(0.5)
    for k in range(2):

        def driver(engine: SoundEngine, t: float) -> None:
            upto = min(voice.size, round(t * VR))
            engine.feed(voice[engine.samples_fed : upto])

        engine = SoundEngine(offline(tmp_path / f"run{k}.wav", 0.5), voice_rate=VR, driver=driver)
        assert engine.start() is engine  # offline: returns when the file is written
        assert engine.started and engine.stream_count > 0
        engine.stop()
        engine.stop()  # idempotent
        assert not engine.started and engine.stream_count == 0
        data, rate = sf.read(str(tmp_path / f"run{k}.wav"), dtype="float32")
        assert rate == SR and data.shape[1] == 2 and rms(data) > 0.01
    # the module-level guard was released: a third render works, and is deterministic for a seed
    a = render_offline(voice, VR, 0.5, seed=3)
    b = render_offline(voice, VR, 0.5, seed=3)
    assert a.shape == (SR // 2, 2) and a.dtype == np.float32
    np.testing.assert_array_equal(a, b)


def test_one_engine_at_a_time(tmp_path: Path) -> None:
    errors: list[BaseException] = []

    def driver(engine: SoundEngine, t: float) -> None:
        if not errors:
            try:
                SoundEngine(offline(tmp_path / "second.wav", 0.1)).start()
            except SoundError as exc:
                errors.append(exc)

    SoundEngine(offline(tmp_path / "first.wav", 0.1), driver=driver).start().stop()
    assert errors and "another SoundEngine" in str(errors[0])


def test_driver_errors_propagate(tmp_path: Path) -> None:
    def driver(engine: SoundEngine, t: float) -> None:
        raise ZeroDivisionError("boom")

    engine = SoundEngine(offline(tmp_path / "x.wav", 0.1), driver=driver)
    with pytest.raises(ZeroDivisionError, match="boom"):
        engine.start()
    assert not engine.started
    render_offline(tone(0.1), VR, 0.1)  # the engine was released


def test_realtime_output_unavailable_raises_cleanly() -> None:
    """Without an output device pyo's portaudio boot segfaults; start() must raise SoundUnavailable instead,
    from the sound process (default) and in-process."""
    if pyo.pa_get_output_devices()[1]:
        pytest.skip("this machine has an audio output device")
    for isolate in (True, False):
        engine = SoundEngine(SoundConfig(output="device", isolate=isolate))
        with pytest.raises(SoundUnavailable, match="no audio output device"):
            engine.start()
        assert not engine.started and not engine.alive
    render_offline(tone(0.1), VR, 0.1)  # nothing was left half-started


ASOUNDRC = """
pcm.!default {{ type file; slave.pcm "avgan_null"; file "{path}"; format "raw" }}
pcm.avgan_null {{ type null }}
"""


def test_isolated_realtime_engine_on_an_alsa_null_device(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The real-time path end to end without a sound card: ALSA's null device (through a file plugin) as the
    default output of the sound process. The null device does not pace the callback (it runs flat out), the
    worst case for the ALSA stop deadlock the sound process avoids."""
    if not os.path.exists("/usr/share/alsa/alsa.conf"):
        pytest.skip("needs alsa-lib's configuration")
    out = tmp_path / "alsa_out.raw"
    (tmp_path / ".asoundrc").write_text(ASOUNDRC.format(path=out))
    monkeypatch.setenv("HOME", str(tmp_path))  # the sound process reads ~/.asoundrc
    voice = bursts(1.0)
    for _ in range(2):
        engine = SoundEngine(SoundConfig(output="device", buffer_size=512), voice_rate=VR)
        try:
            engine.start(timeout_s=20)
        except SoundUnavailable as exc:
            pytest.skip(f"no ALSA null device here: {exc}")
        assert engine.alive and engine.stream_count > 20
        for step in range(20):
            engine.feed(voice[step * 800 : (step + 1) * 800])
            engine.set_state(level=0.5, pitch_hz=150.0, identity=step // 5)
            engine.set_param("sound/mix", step / 20)
            time.sleep(0.01)
        deadline = time.monotonic() + 5
        while engine.output_time_s() <= 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert engine.output_time_s() > 0 and engine.samples_fed == 16000
        started = time.monotonic()
        engine.stop()
        engine.stop()
        assert time.monotonic() - started < 2.5 and not engine.alive
    assert out.stat().st_size > 0
    # a sound process that dies is noticed, and stop() still cleans up
    engine = SoundEngine(SoundConfig(output="device"), voice_rate=VR).start(timeout_s=20)
    engine._remote.process.kill()  # type: ignore[union-attr]
    engine._remote.process.wait(5)  # type: ignore[union-attr]
    assert not engine.alive
    engine.feed(voice[:800])
    engine.set_param("sound/level", 0.2)
    engine.stop()


def test_config_and_param_validation() -> None:
    with pytest.raises(ValueError, match="sound.output"):
        SoundConfig(output="alsa")
    with pytest.raises(ValueError, match="power of two"):
        SoundConfig(buffer_size=1000)
    with pytest.raises(ValueError, match=r"sound.sample_rate': 4000 out of range \[8000, 192000\] Hz"):
        SoundConfig(sample_rate=4000)
    with pytest.raises(ValueError, match="offline sound needs"):
        SoundEngine(SoundConfig(output="offline"))
    with pytest.raises(ValueError, match="dry_delay_s"):
        EchoDesign(dry_delay_s=0.05, dry_grain_s=0.08)
    engine = SoundEngine(SoundConfig(output="offline", record_path="x.wav", duration_s=1.0))
    with pytest.raises(KeyError, match="sound/mix"):
        engine.set_param("sound/volume", 1.0)
    with pytest.raises(ValueError, match="finite"):
        engine.set_param("sound/level", math.nan)
    engine.set_param("sound/density", 500)
    engine.set_param("sound/pitch", -40)
    engine.set_param("sound/on", False)
    assert engine.params()["sound/density"] == 60.0
    assert engine.params()["sound/pitch"] == -12.0
    assert engine.params()["sound/on"] == 0.0
    with pytest.raises(SoundError):
        engine.play_generated(tone(0.1), VR)
    assert settings_from({"sound/level": 0.25, "on": 0}) == SoundSettings(level=0.25, on=False)
    with pytest.raises(KeyError):
        settings_from({"sound/volume": 1})


def test_one_config_for_presets_and_the_engine() -> None:
    presets = pytest.importorskip("installation.presets")
    assert presets.SECTIONS["sound"] is SoundConfig  # one dataclass: the preset section is the engine's config
    assert SoundConfig(enabled=False).for_live() is None
    config = SoundConfig(device="USB", buffer_size=1024).for_live()
    assert config is not None and config.buffer_size == 1024
    assert (config.pyo_audio, config.output_device) == ("portaudio", "USB")
    assert SoundConfig().output_device is None  # "" = system default
    assert SoundConfig(output="jack").pyo_audio == "jack"
    with pytest.raises(SoundUnavailable, match="render --sound"):
        SoundConfig(output="offline").for_live()
    preset = presets.load_preset("gallery")
    assert isinstance(preset.sound, SoundConfig) and preset.sound.for_live() == preset.sound


def test_sound_params_agree_with_the_declaration() -> None:
    params = pytest.importorskip("installation.params")
    defaults = SoundSettings().as_params()
    for name, (lo, hi) in SOUND_PARAMS.items():
        spec = params.PARAMS[name]
        if spec.kind == "bool":
            assert float(spec.default) == defaults[name]
        else:
            assert (spec.min, spec.max) == (lo, hi), name
            assert spec.default == pytest.approx(defaults[name]), name


# -- what it sounds like ----------------------------------------------------------------------------------


def test_output_non_silent_with_voice_silent_without() -> None:
    loud = render_offline(tone(1.5), VR, 1.5)
    assert loud.shape == (round(1.5 * SR), 2)
    assert rms(loud[SR // 2 :]) > 0.02
    quiet = render_offline(np.zeros(VR, np.float32), VR, 1.5)
    assert np.abs(quiet).max() == 0.0


def test_silent_when_off() -> None:
    out = render_offline(tone(1.0), VR, 1.0, SoundSettings(on=False))
    assert np.abs(out).max() == 0.0
    # and on/off from a parameter mapping (the OSC names)
    out = render_offline(tone(1.0), VR, 1.0, {"sound/on": 0})
    assert np.abs(out).max() == 0.0


def test_level_scales_rms() -> None:
    voice = bursts(2.0)
    full = render_offline(voice, VR, 2.0, SoundSettings(level=1.0), seed=5)
    half = render_offline(voice, VR, 2.0, SoundSettings(level=0.5), seed=5)
    assert rms(full) > 0.01
    assert rms(half) / rms(full) == pytest.approx(0.5, rel=0.02)


def test_output_follows_the_input_envelope() -> None:
    voice, seconds = bursts(8.0, seed=1), 8.0
    ie = envelope(voice, VR)
    frames = np.arange(ie.size) * 0.05 + 0.05
    track = StateTrack(times=frames, level=np.clip(ie / ie.max(), 0, 1))
    design = EchoDesign()

    # dry only: the voice itself, dry_delay_s late
    dry = envelope(render_offline(voice, VR, seconds, SoundSettings(mix=0.0), track).mean(axis=1), SR)
    n = min(ie.size, dry.size)
    lags = [np.corrcoef(ie[: n - lag], dry[lag:n])[0, 1] for lag in range(21)]
    best = int(np.argmax(lags))
    assert lags[best] > 0.9
    assert abs(best * 0.05 - design.dry_delay_s) <= 0.05

    # default mix: dry copy + the cloud, whose grains start echo_min_s..+echo_spread_s behind the voice
    out = envelope(render_offline(voice, VR, seconds, SoundSettings(), track, seed=2).mean(axis=1), SR)
    power = ie[:n] ** 2
    lo, hi = round(design.echo_min_s / 0.05), round((design.echo_min_s + design.echo_spread_s) / 0.05)
    kernel = np.zeros(hi)
    kernel[lo:hi] = 1.0 / (hi - lo)
    mix = SoundSettings().mix
    expected = np.sqrt((1 - mix) ** 2 * np.r_[np.zeros(3), power][:n] + mix**2 * np.convolve(power, kernel)[:n])
    assert np.corrcoef(expected, out[:n])[0, 1] > 0.6
    assert np.corrcoef(ie[:n], out[:n])[0, 1] > 0.5  # even against the raw envelope, without lag
    # causality: nothing before the first burst (0.5 s) has reached the output
    assert out[: round(0.5 / 0.05)].max() == 0.0


def test_pitch_transposes_the_cloud() -> None:
    voice = tone(2.0, freq=300.0)
    for semitones, expected in ((0.0, 300.0), (12.0, 600.0), (-12.0, 150.0)):
        out = render_offline(voice, VR, 2.0, SoundSettings(mix=1.0, pitch=semitones, density=40))
        assert peak_hz(out[SR:, 0], SR) == pytest.approx(expected, rel=0.03)
    # the identity picks an interval on top (EchoDesign.intervals[1] = +7 semitones)
    track = StateTrack(times=np.array([0.0]), level=np.array([1.0]), identity=np.array([1]))
    out = render_offline(voice, VR, 2.0, SoundSettings(mix=1.0, density=40), track)
    assert peak_hz(out[SR:, 0], SR) == pytest.approx(300.0 * 2 ** (7 / 12), rel=0.03)


# -- real-time rules -------------------------------------------------------------------------------------


def test_no_pyo_objects_created_after_start(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """feed / set_state / set_param / voice_history only modulate what start() built."""
    import pyo.lib._core as core

    created = [0]
    original = core.PyoObjectBase.__init__

    def counting(self: object, *args: object, **kwargs: object) -> None:
        created[0] += 1
        original(self, *args, **kwargs)

    monkeypatch.setattr(core.PyoObjectBase, "__init__", counting)
    voice = bursts(2.0)
    seen: dict[str, list[int]] = {"objects": [], "streams": []}
    fed = [0]

    def driver(engine: SoundEngine, t: float) -> None:
        step = len(seen["objects"])
        upto = min(voice.size, round(t * VR))
        engine.feed(voice[fed[0] : upto])
        fed[0] = upto
        engine.set_state(level=step % 7 / 7, pitch_hz=100 + step, identity=step // 10)
        engine.set_param("sound/level", 0.5 + 0.01 * (step % 10))
        engine.set_param("sound/mix", step % 5 / 5)
        engine.set_param("sound/pitch", step % 13 - 6)
        engine.set_param("sound/density", 1 + step % 60)
        engine.set_param("sound/on", step % 20 < 15)
        engine.voice_history(100)
        seen["objects"].append(created[0])
        seen["streams"].append(engine.stream_count)

    engine = SoundEngine(offline(tmp_path / "x.wav", 2.0), voice_rate=VR, driver=driver)
    engine.start()
    built = created[0]
    engine.stop()
    assert built > 20 and len(seen["objects"]) >= 100
    assert set(seen["objects"]) == {built}, "pyo objects were created after start()"
    assert len(set(seen["streams"])) == 1


def test_feed_wraps_the_table_and_keeps_the_guard(tmp_path: Path) -> None:
    design = EchoDesign(memory_s=2.0)
    rng = np.random.default_rng(0)
    chunks = [rng.uniform(-1, 1, n).astype(np.float32) for n in (5000, 20000, 9000, 31000, 40000, 7)]
    history = np.concatenate(chunks)
    checks: list[bool] = []

    def driver(engine: SoundEngine, t: float) -> None:
        if checks:
            return
        for chunk in chunks:
            engine.feed(chunk)
        assert engine.samples_fed == history.size
        checks.append(np.array_equal(engine.voice_history(engine.memory), history[-engine.memory :]))
        table = np.asarray(engine._objs["voice"].getBuffer())
        checks.append(np.array_equal(table[engine.memory :], table[: engine.guard]))
        del table
        for _ in range(5):  # another rate: resampled to voice_rate (streaming: minus the resampler's latency)
            engine.feed(tone(0.1)[:800], 8000)
        checks.append(engine.samples_fed - history.size in range(6000, 8001))

    SoundEngine(offline(tmp_path / "x.wav", 0.05), voice_rate=VR, design=design, driver=driver).start().stop()
    assert checks == [True, True, True]


def test_play_generated_loops_a_clip(tmp_path: Path) -> None:
    """The API for future sound-generating bundles (none exists yet): the clip replaces the cloud."""

    def driver(engine: SoundEngine, t: float) -> None:
        if engine.samples_fed == 0:
            engine.feed(tone(0.5, 300.0))
            engine.play_generated(tone(0.5, 440.0), VR)

    config = offline(tmp_path / "gen.wav", 1.5)
    SoundEngine(config, voice_rate=VR, settings=SoundSettings(mix=1.0), driver=driver).start().stop()
    data, _ = sf.read(config.record_path, dtype="float32")
    assert peak_hz(data[SR // 2 :, 0], SR) == pytest.approx(440.0, rel=0.02)


# -- render --sound --------------------------------------------------------------------------------------


def _audio_track(path: Path) -> tuple[np.ndarray, float]:
    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        chunks = [frame.to_ndarray().reshape(stream.codec_context.channels, -1) for frame in container.decode(stream)]
        duration = float(stream.duration * stream.time_base) if stream.duration else math.nan
    return np.concatenate(chunks, axis=1), duration


def test_render_with_sound(tiny_bundle: Path, tmp_path: Path) -> None:
    from installation.render import render

    source = tmp_path / "voice.wav"
    voice = bursts(2.5, seed=3)
    sf.write(str(source), voice, VR)
    kwargs = {"bundle": tiny_bundle, "size": 32, "fps": 10, "batch": 8, "backend": "onnxruntime", "progress": False}
    render(source, tmp_path / "plain.mp4", **kwargs)
    stats = render(source, tmp_path / "sound.mp4", sound=SoundSettings(), sound_mix=0.5, **kwargs)
    assert "sound" in stats.timings
    plain, plain_s = _audio_track(tmp_path / "plain.mp4")
    mixed, mixed_s = _audio_track(tmp_path / "sound.mp4")
    assert plain.shape == mixed.shape  # same samples, same duration
    assert mixed_s == pytest.approx(plain_s)
    assert plain.shape[1] == pytest.approx(voice.size, abs=2048)  # AAC priming/padding at most
    difference = rms(mixed - plain)
    assert difference > 0.01 and difference > 0.1 * rms(plain)


def test_render_with_sound_keeps_the_voice_level(tiny_bundle: Path, tmp_path: Path) -> None:
    """Issue 24: ``render --sound`` made the whole track 5 dB quieter (RMS -30.1 against -24.8 dBFS for the demo
    clip). At the default mix the visitor's voice keeps its level (the least-squares gain of the output on the
    input is 1) and the generated sound is added; ``--sound-mix`` 0 is the input alone, 1 the generated alone."""
    import run

    demo = Path(__file__).resolve().parents[1] / "presets" / "demo" / "demo_speech.flac"
    common = ["--bundle", str(tiny_bundle), "--size", "32", "--fps", "10", "--backend", "onnxruntime", "--no-progress"]
    tracks = {}
    for name, extra in (("plain", []), ("mix0.5", ["--sound"]), ("mix0", ["--sound", "--sound-mix", "0"]),
                        ("mix1", ["--sound", "--sound-mix", "1"])):  # fmt: skip
        out = tmp_path / f"{name}.mp4"
        assert run.main(["render", str(demo), "-o", str(out), *common, *extra]) == 0
        tracks[name] = _audio_track(out)[0][0].astype(np.float64)
    plain = tracks["plain"]

    def db(x: np.ndarray) -> float:
        return 20 * math.log10(rms(x))

    def voice_gain_db(x: np.ndarray) -> float:
        return 20 * math.log10(abs(float(np.dot(x, plain) / np.dot(plain, plain))) + 1e-9)

    assert db(plain) == pytest.approx(-24.8, abs=0.5)  # the demo clip's own level
    mixed = tracks["mix0.5"]
    assert abs(voice_gain_db(mixed)) < 0.5  # the voice at its own level ...
    assert db(mixed) >= db(plain) - 0.5  # ... so the track is not quieter than the input
    assert rms(mixed - plain) > 0.1 * rms(plain)  # and the generated sound is in it
    assert np.abs(mixed).max() < 1.0
    assert rms(tracks["mix0"] - plain) < 0.01 * rms(plain)
    assert voice_gain_db(tracks["mix1"]) < -10.0


def test_mix_gains_and_soft_limit() -> None:
    from installation.render import mix_gains, soft_limit

    assert mix_gains(0.0) == (1.0, 0.0) and mix_gains(0.5) == (1.0, 1.0) and mix_gains(1.0) == (0.0, 1.0)
    assert mix_gains(0.25) == (1.0, 0.5) and mix_gains(0.75) == (0.5, 1.0)
    x = np.linspace(-3.0, 3.0, 6001, dtype=np.float32)
    y = soft_limit(x)
    quiet = np.abs(x) <= 0.891
    assert np.array_equal(y[quiet], x[quiet])  # below -1 dBFS: untouched
    assert np.abs(y).max() <= 1.0 and np.abs(y[np.abs(x) <= 1.0]).max() < 0.98 and (np.diff(y) >= 0).all()
    assert np.abs(np.diff(y)).max() <= np.abs(np.diff(x)).max() + 1e-6  # slope <= 1: no corner at the knee
