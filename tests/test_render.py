"""Offline render: real PyAV decode/encode, timing, determinism, idle gating, bad input."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import soundfile as sf

import run
from benchmarks.startup import write_mp3
from engine.audio import load_audio
from installation.presets import RenderParams
from installation.render import (
    ImageEMA,
    NoiseDrift,
    _VideoWriter,
    encoder_threads,
    frame_end_samples,
    generator_threads,
    render,
    slerp,
)
from installation.vad import VadParams

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "presets" / "demo" / "demo_speech.flac"
SR = 16000
BG = np.array([8, 8, 12])


# -- helpers -------------------------------------------------------------------------------------


class FakeGenerator:
    """The Generator interface, recording its calls: image = mean |window| in red, noise[0] in green."""

    sample_rate, window_samples, noise_dim, image_size, backend_name = SR, SR, 4, 16, "fake"

    def __init__(self, fail_on_call: int | None = None) -> None:
        self.calls: list[tuple[np.ndarray, np.ndarray]] = []
        self.fail_on_call = fail_on_call

    def make_noise(self, batch: int, seed: int | None = None) -> np.ndarray:
        return np.random.default_rng(seed).standard_normal((batch, self.noise_dim), dtype=np.float32)

    def __call__(self, audio: np.ndarray, noise: np.ndarray | None = None, seed: int | None = None) -> np.ndarray:
        if self.fail_on_call is not None and len(self.calls) + 1 >= self.fail_on_call:
            raise RuntimeError("generator exploded")
        assert audio.dtype == np.float32 and audio.shape[1] == self.window_samples and noise is not None
        self.calls.append((audio.copy(), noise.copy()))
        out = np.zeros((audio.shape[0], 16, 16, 3), np.uint8)
        out[..., 0] = np.clip(np.abs(audio).mean(axis=1) * 1000, 0, 255)[:, None, None]
        out[..., 1] = np.clip((noise[:, 0] + 3) * 40, 0, 255)[:, None, None]
        out[..., 2] = 150
        return out


def write_wav(path: Path, audio: np.ndarray, rate: int = SR) -> Path:
    sf.write(str(path), audio, rate)
    return path


def make_mp4(path: Path, audio: np.ndarray | None, rate: int = SR, seconds: float = 1.0) -> Path:
    """A small H.264 video (with an AAC track of ``audio`` unless None), made with PyAV."""
    with av.open(str(path), "w") as out:
        vs = out.add_stream("libx264", rate=25)
        vs.width = vs.height = 64
        vs.pix_fmt = "yuv420p"
        ast = out.add_stream("aac", rate=rate, layout="mono") if audio is not None else None
        frames = int(seconds * 25) if audio is None else int(len(audio) / rate * 25)
        for i in range(frames):
            img = np.full((64, 64, 3), (i * 7) % 255, np.uint8)
            out.mux(vs.encode(av.VideoFrame.from_ndarray(img, format="rgb24")))
        out.mux(vs.encode(None))
        if ast is not None:
            frame = av.AudioFrame.from_ndarray(audio.astype(np.float32)[None, :], format="fltp", layout="mono")
            frame.sample_rate, frame.pts = rate, 0
            out.mux(ast.encode(frame))
            out.mux(ast.encode(None))
    return path


def probe(path: Path) -> dict:
    """Stream facts of an output file; video frames and audio samples counted by decoding."""
    with av.open(str(path)) as c:
        v, a = c.streams.video[0], c.streams.audio[0]
        info = {
            "vcodec": v.codec_context.name,
            "width": v.width,
            "height": v.height,
            "pix_fmt": v.format.name,
            "fps": v.average_rate,
            "acodec": a.codec_context.name,
            "arate": a.codec_context.sample_rate,
        }
        info["audio_s"] = float(a.duration * a.time_base)  # the edit list's duration: what players play
        info["frames"] = sum(1 for _ in c.decode(v))
    with av.open(str(path)) as c:
        samples = sum(f.samples for f in c.decode(audio=0))  # + up to one AAC frame of end padding
    assert info["audio_s"] * info["arate"] <= samples < info["audio_s"] * info["arate"] + 1024
    info["video_s"] = info["frames"] / float(info["fps"])
    return info


def frames_of(path: Path) -> list[np.ndarray]:
    with av.open(str(path)) as c:
        return [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """2.5 s of real speech (the repository's demo clip), as 16 kHz WAV."""
    audio = load_audio(DEMO, SR)[: int(2.5 * SR)]
    return write_wav(tmp_path_factory.mktemp("clip") / "speech.wav", audio)


@pytest.fixture(scope="module")
def generator(tiny_bundle: Path):
    from engine.generator import Generator

    gen = Generator(tiny_bundle, backend="onnxruntime-cpu", max_batch=32)
    yield gen
    gen.close()


def cli(*argv: str) -> int:
    return run.main(["render", *map(str, argv), "--no-progress"])


# -- through the real engine and PyAV --------------------------------------------------------------


def test_render_cli_real_bundle(tiny_bundle: Path, clip: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.mp4"
    assert cli(clip, "-o", out, "--bundle", tiny_bundle, "--size", 96, "--fps", 30) == 0
    info = probe(out)
    duration = sf.info(str(clip)).frames / SR
    assert info["vcodec"] == "h264" and info["pix_fmt"] == "yuv420p" and (info["width"], info["height"]) == (96, 96)
    assert info["acodec"] == "aac" and info["fps"] == 30
    assert info["frames"] == round(duration * 30)
    assert abs(info["video_s"] - duration) <= 1 / 30
    assert abs(info["audio_s"] - duration) <= 1 / 30
    assert abs(info["video_s"] - info["audio_s"]) <= 1 / 30
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.mp4"]  # no temporary file left
    frames = frames_of(out)
    assert np.abs(frames[-1].astype(int) - BG).max() > 30  # speech: a face, not the background


def test_deterministic_for_a_seed(generator, clip: Path, tmp_path: Path) -> None:
    kw = dict(generator=generator, size=64, progress=False)
    s1 = render(clip, tmp_path / "a.mp4", seed=3, **kw)
    render(clip, tmp_path / "b.mp4", seed=3, **kw)
    render(clip, tmp_path / "c.mp4", seed=4, **kw)
    a, b, c = (frames_of(tmp_path / n) for n in ("a.mp4", "b.mp4", "c.mp4"))
    assert s1.generated > 0 and s1.backend == "onnxruntime-cpu"
    assert len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b))
    assert any(not np.array_equal(x, y) for x, y in zip(a, c))


def test_video_input_uses_its_audio_track(generator, tmp_path: Path) -> None:
    audio = load_audio(DEMO, 22050)[: int(1.5 * 22050)]
    video = make_mp4(tmp_path / "in.mp4", audio, rate=22050)
    out = tmp_path / "out.mp4"
    stats = render(video, out, generator=generator, size=64, fps=25, progress=False)
    info = probe(out)
    duration = load_audio(video, SR).shape[0] / SR
    assert stats.generated > 0 and info["arate"] == 22050 and info["fps"] == 25
    assert abs(info["video_s"] - duration) <= 1 / 25 and abs(info["audio_s"] - duration) <= 1 / 25


# -- scheduling (fake generator, real PyAV) ----------------------------------------------------------


def test_silence_gives_idle_frames_without_generator_calls(tmp_path: Path) -> None:
    src = write_wav(tmp_path / "silence.wav", np.zeros(2 * SR, np.float32))
    gen = FakeGenerator()
    stats = render(src, tmp_path / "out.mp4", generator=gen, size=32, progress=False)
    assert gen.calls == [] and stats.generated == 0 and stats.voiced_frames == 0
    frames = frames_of(tmp_path / "out.mp4")
    assert len(frames) == 60
    assert all(np.abs(f.astype(int) - BG).max() <= 3 for f in frames)  # background (after YUV round trip)


def test_windows_end_at_frame_time_and_generation_rate(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    audio = (0.1 * rng.standard_normal(int(1.2 * SR))).astype(np.float32)  # loud noise ...
    vad = VadParams(floor_max_db=-60.0)  # ... taken as voice throughout (steady noise alone would become the floor)
    src = write_wav(tmp_path / "noise.wav", audio, SR)
    audio = sf.read(str(src), dtype="float32")[0]  # exactly what the render decodes (16-bit)
    for gen_fps, expected in ((10.0, list(range(0, 36, 3))), (0.0, list(range(36)))):
        gen = FakeGenerator()
        stats = render(
            src,
            tmp_path / "o.mp4",
            generator=gen,
            size=32,
            fps=30,
            batch=5,
            params=RenderParams(gen_fps=gen_fps, vad=vad),
            progress=False,
        )
        windows = np.concatenate([w for w, _ in gen.calls])
        assert stats.frames == 36 and len(windows) == len(expected) and max(len(w) for w, _ in gen.calls) <= 5
        ends = frame_end_samples(36, Fraction(30), SR)
        padded = np.concatenate([np.zeros(SR, np.float32), audio, np.zeros(SR, np.float32)])
        for k, i in enumerate(expected):
            e = int(ends[i])
            assert e == round((i + 1) * SR / 30)
            assert np.array_equal(windows[k], padded[e : e + SR])  # the window ends at sample e (exclusive)


def test_noise_held_per_segment_and_new_per_segment(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    burst = (0.1 * rng.standard_normal(int(0.6 * SR))).astype(np.float32)
    audio = np.concatenate([burst, np.zeros(SR, np.float32), burst])  # two voiced segments
    src = write_wav(tmp_path / "bursts.wav", audio)
    gen = FakeGenerator()
    render(src, tmp_path / "o.mp4", generator=gen, size=32, progress=False, params=RenderParams(noise_drift_s=4.0))
    noise = np.concatenate([z for _, z in gen.calls])
    steps = np.linalg.norm(np.diff(noise, axis=0), axis=1)
    big = np.flatnonzero(steps > 0.5)
    assert len(big) == 1  # slow drift within a segment, one jump: the second segment's new noise
    assert steps[np.arange(len(steps)) != big[0]].max() < 0.3


def test_failed_render_leaves_no_file(tmp_path: Path, clip: Path) -> None:
    out = tmp_path / "out.mp4"
    with pytest.raises(RuntimeError, match="exploded"):
        render(clip, out, generator=FakeGenerator(fail_on_call=2), size=32, batch=4, progress=False)
    assert list(tmp_path.iterdir()) == []


# -- bad input: exit 2, one line naming the file -----------------------------------------------------


def _bad_inputs(tmp: Path) -> dict[str, tuple[list, str]]:
    good = write_wav(tmp / "good.wav", np.zeros(SR, np.float32))
    (tmp / "corrupt.wav").write_bytes(np.random.default_rng(0).bytes(5000))
    (tmp / "empty.wav").write_bytes(b"")
    zero = write_wav(tmp / "zero.wav", np.zeros(0, np.float32))
    silent_video = make_mp4(tmp / "noaudio.mp4", None)
    full = make_mp4(tmp / "full.mp4", np.zeros(SR, np.float32))
    (tmp / "truncated.mp4").write_bytes(full.read_bytes()[: full.stat().st_size // 3])
    (tmp / "afile").write_text("x")
    return {
        "missing": ([tmp / "nope.wav", "-o", tmp / "o.mp4"], "nope.wav"),
        "corrupt": ([tmp / "corrupt.wav", "-o", tmp / "o.mp4"], "corrupt.wav"),
        "truncated": ([tmp / "truncated.mp4", "-o", tmp / "o.mp4"], "truncated.mp4"),
        "empty": ([tmp / "empty.wav", "-o", tmp / "o.mp4"], "empty.wav"),
        "zero-length": ([zero, "-o", tmp / "o.mp4"], "zero.wav"),
        "no audio track": ([silent_video, "-o", tmp / "o.mp4"], "noaudio.mp4"),
        "missing output folder": ([good, "-o", tmp / "no" / "such" / "o.mp4"], "o.mp4"),
        "output folder is a file": ([good, "-o", tmp / "afile" / "o.mp4"], "o.mp4"),
        "output is a folder": ([good, "-o", tmp], str(tmp)),
        "unknown preset": ([good, "-o", tmp / "o.mp4", "--preset", "no_such_preset"], "no_such_preset"),
    }


def test_bad_input_exit_2_with_one_line(tiny_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    for case, (argv, name) in _bad_inputs(tmp_path).items():
        before = set(tmp_path.rglob("*"))
        assert cli(*argv, "--bundle", tiny_bundle) == 2, case
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: ") and name in err[0], (case, err)
        assert set(tmp_path.rglob("*")) == before, case  # nothing written, no temporary file left


def test_live_presets_drive_the_render_picture() -> None:
    from installation.presets import load_preset

    params = load_preset("gallery").render_params()
    assert params.scene == "portrait" and params.gen_fps > 0
    grid = load_preset("headless", overrides={"params": {"scene": "grid"}}).render_params()
    assert grid.scene == "grid" and grid.scene_params["n"] >= 1


# -- conditioning pieces ------------------------------------------------------------------------------


def test_frame_end_samples_exact() -> None:
    ends = frame_end_samples(3000, Fraction(30000, 1001), 16000)
    expected = [round(Fraction((i + 1) * 16000 * 1001, 30000)) for i in range(3000)]
    assert ends.tolist() == expected


def test_noise_drift_and_slerp() -> None:
    gen = FakeGenerator()
    drift = NoiseDrift(gen.make_noise, seed=7, drift_s=2.0)
    again = NoiseDrift(gen.make_noise, seed=7, drift_s=2.0)
    assert np.array_equal(drift.at(0, 0.0), drift.key(0, 0)) and np.array_equal(drift.at(0, 2.0), drift.key(0, 1))
    assert np.array_equal(drift.at(1, 3.3), again.at(1, 3.3))
    assert not np.allclose(drift.key(0, 0), drift.key(1, 0))
    a, b = np.array([2.0, 0.0], np.float32), np.array([0.0, 2.0], np.float32)
    for t in (0.0, 0.25, 0.5, 1.0):  # along the arc, at constant norm
        assert np.allclose(slerp(a, b, t), [2 * np.cos(t * np.pi / 2), 2 * np.sin(t * np.pi / 2)], atol=1e-6)


def test_image_ema_time_constant() -> None:
    ema = ImageEMA(0.1)
    black, white = np.zeros((2, 2, 3), np.uint8), np.full((2, 2, 3), 200, np.uint8)
    assert (ema.update(black, 0.0) == 0).all()
    assert abs(int(ema.update(white, 0.1)[0, 0, 0]) - round(200 * (1 - np.exp(-1)))) <= 1
    ema.reset()
    assert (ema.update(white, 0.1) == 200).all()


def test_encoder_threads_leave_two_cores_to_the_generator_and_the_main_thread(tmp_path: Path) -> None:
    assert [encoder_threads(n) for n in (1, 2, 3, 16)] == [1, 1, 1, 14]
    assert encoder_threads() >= 1
    writer = _VideoWriter(tmp_path / "x.mp4", 64, Fraction(30), "ultrafast", 20, threads=1, pool=3)
    assert writer.stream.options["threads"] == "1"
    made = [writer.frame(np.full((64, 64, 3), 30 * i, np.uint8)) for i in range(3)]  # the whole ring, in flight
    for frame in made:
        writer.encode(frame)
    for i in range(3, 7):  # the ring's frames again, each encoded before it comes round
        writer.encode(writer.frame(np.full((64, 64, 3), 30 * i, np.uint8)))
    writer.close()
    assert len({id(f) for f in made}) == 3
    grey = [float(f.mean()) for f in frames_of(tmp_path / "x.mp4")]
    assert np.allclose(grey, [30 * i for i in range(7)], atol=2), grey


def _decoded_audio(path: Path) -> np.ndarray:
    with av.open(str(path)) as c:
        return np.concatenate([f.to_ndarray() for f in c.decode(audio=0)], axis=1)


def _aac_with_gap(path: Path, audio: np.ndarray, rate: int, gap_s: float) -> Path:
    """An MPEG-TS file with an AAC track of ``audio`` whose second half is timestamped ``gap_s`` later."""
    with av.open(str(path), "w", format="mpegts") as out:
        stream = out.add_stream("aac", rate=rate, layout="mono")
        half = len(audio) // 2
        for start, shift in ((0, 0), (half, int(gap_s * rate))):
            part = audio[start : start + half] if start == 0 else audio[start:]
            frame = av.AudioFrame.from_ndarray(part.astype(np.float32)[None, :], format="fltp", layout="mono")
            frame.sample_rate, frame.pts, frame.time_base = rate, start + shift, Fraction(1, rate)
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return path


def test_audio_that_cannot_be_copied_is_encoded_in_sync(generator, tmp_path: Path) -> None:
    speech = load_audio(DEMO, 22050)[: int(1.6 * 22050)]
    # an MP3 at 8 kHz (MPEG-2.5, which MP4 does not take) and an AAC track with a 3 s gap in its timestamps
    # (a copy would play the second half 3 s after its frames): both re-encoded, the sound as long as the video
    cases = {"low-rate.mp3": write_mp3(tmp_path / "low-rate.mp3", load_audio(DEMO, 8000)[:12800], 8000),
             "gap.ts": _aac_with_gap(tmp_path / "gap.ts", speech, 22050, 3.0)}  # fmt: skip
    for name, src in cases.items():
        out = tmp_path / f"{name}.mp4"
        render(src, out, generator=generator, size=64, fps=25, progress=False)
        with av.open(str(out)) as c:
            a, v = c.streams.audio[0], c.streams.video[0]
            codec, audio_s, video_s = a.codec_context.name, float(a.duration * a.time_base), v.frames / 25
        duration = load_audio(src, SR).shape[0] / SR
        assert codec == "aac", name
        assert abs(audio_s - duration) <= 1 / 25 and abs(video_s - duration) <= 1 / 25, (name, audio_s, video_s)


def test_sizes_whose_chroma_rows_split(generator, clip: Path, tmp_path: Path) -> None:
    # 90 px: the I420 chroma planes are 45 x 45, which OpenCV packs into rows of 90 bytes (a row splits in two)
    render(clip, tmp_path / "out.mp4", generator=generator, size=90, progress=False)
    assert probe(tmp_path / "out.mp4")["width"] == 90


def test_mp3_audio_is_copied_sample_exact_and_in_sync(generator, tmp_path: Path) -> None:
    rate = 44100
    src = write_mp3(tmp_path / "in.mp3", load_audio(DEMO, rate)[: int(1.5 * rate)], rate)
    out = tmp_path / "out.mp4"
    render(src, out, generator=generator, size=64, fps=25, progress=False)
    with av.open(str(out)) as c:
        assert c.streams.audio[0].codec_context.name in ("mp3", "mp3float")  # copied, not re-encoded
    a, b = _decoded_audio(src), _decoded_audio(out)
    # the MP3's encoder delay is an edit list in the MP4: sample 0 of the output is sample 0 of the input, as
    # load_audio decodes it and the frames are timed (without the shift it was 1105 samples late)
    assert b.shape[1] >= a.shape[1] and np.array_equal(b[:, : a.shape[1]], a)


def test_render_runs_the_generator_with_one_thread_on_small_machines(
    tiny_bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert [generator_threads(n) for n in (1, 2, 3, 4, 16)] == [1, 1, 1, 2, 2]
    import engine.generator
    import installation.render as rmod

    made: list[engine.generator.Generator] = []

    class Recording(engine.generator.Generator):
        def __init__(self, *args, **kwargs) -> None:  # noqa: ANN002, ANN003
            super().__init__(*args, **kwargs)
            made.append(self)

    monkeypatch.setattr(engine.generator, "Generator", Recording)
    monkeypatch.setattr(rmod, "generator_threads", lambda cores=None: 3)  # not the engine default (<= 2)
    clip = write_wav(tmp_path / "a.wav", 0.1 * np.sin(np.arange(SR // 2) * 0.05).astype(np.float32))
    render(clip, tmp_path / "a.mp4", bundle=tiny_bundle, backend="onnxruntime-cpu", size=32, progress=False)
    assert len(made) == 1 and made[0]._backend.threads == 3  # the ONNX Runtime session's intra-op threads


def test_render_bench_repeats_report_the_median_render_and_the_spread(tiny_bundle: Path) -> None:
    import argparse

    import benchmarks.render as br
    from engine.errors import UserError

    args = argparse.Namespace(bundle=str(tiny_bundle), render_seconds=1.0, render_cases="silence,default")
    rows = br.run(argparse.Namespace(**vars(args), render_repeats=3))
    assert [r["case"] for r in rows] == ["silence", "default"]
    for r in rows:
        rtfs = r["rtf_per_repeat"]
        assert len(rtfs) == 3 and r["rtf"] == sorted(rtfs)[1]
        assert r["rtf_range"] == f"{min(rtfs):.1f}-{max(rtfs):.1f}"
    assert "median of 3 renders" in rows[0]["note"] and rows[1]["note"] is None
    assert rows[1]["generated"] > 0 and rows[0]["generated"] == 0
    single = br.run(argparse.Namespace(**vars(args), render_repeats=1))
    assert "rtf_range" not in single[0]
    with pytest.raises(UserError, match="--render-repeats"):
        br.run(argparse.Namespace(**vars(args), render_repeats=0))
