"""The rating station (``run.py rate``), headless: SDL's dummy video driver, no sound card.

Real speech comes from ``../shared/data/wav2pix/train`` (a handful of pairs copied into ``tmp_path``); the
tests that need it skip when it is absent, the others synthesise audio on the spot. Not exercised here: real
sound output (this machine has no output device; a fake sounddevice stands in), a real touch screen (SDL
touch events are posted), a real display.
"""

from __future__ import annotations

import json
import shutil
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import run
from installation.presets import ROOT, OscConfig
from installation.rate import (
    BUTTONS,
    NO_DEVICE_WARNING,
    RatingsFile,
    RatingStation,
    StationConfig,
    VoicePlayer,
    centre_window,
    face_digest,
    generate_face,
    hit_test,
    item_order,
    layout,
)
from installation.render import DEFAULT_BUNDLE

SHARED = ROOT.parent / "shared" / "data" / "wav2pix" / "train"
FIELDS = {
    "time",
    "session",
    "model",
    "bundle",
    "audio",
    "seed",
    "score",
    "skipped",
    "input",
    "shown_real",
    "voice_played",
    "response_s",
    "face_sha1",
}


@pytest.fixture(scope="module")
def generator() -> Any:
    """The default bundle on ONNX Runtime CPU, one thread (shared by the station tests that take one)."""
    from engine.generator import Generator

    gen = Generator(DEFAULT_BUNDLE, backend="onnxruntime-cpu", max_batch=1, threads=1)
    yield gen
    gen.close()


@pytest.fixture()
def speech_dir(tmp_path: Path) -> Path:
    """Four real Wav2Pix pairs (speech + face crop), two per speaker, copied into ``tmp_path/speech``."""
    if not SHARED.is_dir():
        pytest.skip(f"real speech not available: {SHARED} is missing (clone without ../shared)")
    out = tmp_path / "speech"
    for ident in sorted(p for p in SHARED.iterdir() if p.is_dir())[:2]:
        (out / ident.name).mkdir(parents=True)
        for audio in sorted(ident.glob("preprocessed_frame_*.flac"))[:2]:
            n = audio.stem.rsplit("_", 1)[1]
            shutil.copy(audio, out / ident.name / audio.name)
            for face in ident.glob(f"cropped_face_frame_{n}.*"):
                shutil.copy(face, out / ident.name / face.name)
    if len(list(out.rglob("*.flac"))) < 4:
        pytest.skip(f"real speech not available: fewer than 4 pairs under {SHARED}")
    return out


def synth_dir(tmp_path: Path, n: int = 3, seconds: float = 1.3) -> Path:
    """``n`` synthetic voice-like WAV files (a gliding harmonic tone with a syllable envelope), 16 kHz."""
    import soundfile as sf

    out = tmp_path / "synth"
    out.mkdir(exist_ok=True)
    t = np.arange(int(seconds * 16000)) / 16000.0
    for k in range(n):
        f0 = 110.0 + 40.0 * k + 20.0 * np.sin(2 * np.pi * 0.7 * t)
        phase = 2 * np.pi * np.cumsum(f0) / 16000.0
        voice = sum(np.sin(h * phase) / h for h in range(1, 8)) * (0.5 + 0.5 * np.sin(2 * np.pi * 4.0 * t) ** 2)
        sf.write(out / f"voice{k}.wav", (0.2 * voice).astype(np.float32), 16000)
    return out


def station_config(tmp_path: Path, audio: Path, **changes: Any) -> StationConfig:
    values: dict[str, Any] = dict(
        audio=audio,
        out=tmp_path / "ratings.jsonl",
        width=320,
        height=180,
        fullscreen=False,
        vsync=False,
        hide_cursor=False,
        fps=200.0,
        osc=None,
        play_voice=False,
        min_view_s=0.05,
    )
    values.update(changes)
    return StationConfig(**values)


def small_preset(tmp_path: Path) -> Path:
    """A small, fast preset for ``run.main``: the rating station at 320x180, one ONNX Runtime thread, no OSC."""
    path = tmp_path / "station.yaml"
    path.write_text(
        "extends: rating_station\n"
        "display: {size: [320, 180], windowed_size: [320, 180], fps: 200, vsync: false}\n"
        "engine: {backend: onnxruntime-cpu, threads: 1}\n"
        "osc: {enabled: false}\n"
    )
    return path


def read_lines(path: Path) -> list[dict[str, Any]]:
    data = path.read_bytes()
    assert data.endswith(b"\n")
    return [json.loads(line) for line in data.decode().splitlines()]


def actions(plan: list[Callable[[RatingStation], None]], limit_s: float = 30.0) -> Callable[[RatingStation], None]:
    """``on_frame``: once per item, when it has been on screen past the lockout, run the next plan step."""
    state: dict[str, Any] = {"i": 0, "item": None, "t0": time.perf_counter()}

    def on_frame(st: RatingStation) -> None:
        if time.perf_counter() - state["t0"] > limit_s:
            st.stop("test time limit")
        item = st.item
        if item is None or item.shown_at is None or state["item"] is item or state["i"] >= len(plan):
            return
        if time.perf_counter() - item.shown_at < st.config.min_view_s + 0.02:
            return
        state["item"] = item
        plan[state["i"]](st)
        state["i"] += 1

    return on_frame


# -- pieces -------------------------------------------------------------------------------------------------


def test_layout_buttons_are_disjoint_inside_and_hit_at_their_centres() -> None:
    for w, h, real in ((1920, 1080, False), (1920, 1080, True), (320, 180, True), (768, 1024, True)):
        lay = layout(w, h, real)
        assert list(lay.buttons) == list(BUTTONS)
        rects = [lay.face, *([lay.real] if lay.real else []), *lay.buttons.values()]
        for r in rects:
            assert 0 <= r.x and r.x + r.w <= w and 0 <= r.y and r.y + r.h <= h and r.w > 0 and r.h > 0
        for i, a in enumerate(rects):
            for b in rects[i + 1 :]:
                assert a.x + a.w <= b.x or b.x + b.w <= a.x or a.y + a.h <= b.y or b.y + b.h <= a.y
        for name, rect in lay.buttons.items():
            assert hit_test(lay, *rect.center) == name
        assert hit_test(lay, *lay.face.center) is None
        assert (lay.real is not None) == real and lay.face.w == lay.face.h


def test_centre_window_and_order() -> None:
    x = np.arange(10, dtype=np.float32)
    assert centre_window(x, 4).tolist() == [3, 4, 5, 6]
    assert centre_window(x, 10).tolist() == x.tolist()
    assert centre_window(x[:3], 5).tolist() == [0, 1, 2, 0, 0]
    assert item_order(6, 1) == item_order(6, 1) and sorted(item_order(6, 1)) == list(range(6))
    assert item_order(6, 1) != item_order(6, 2)


def test_same_file_and_seed_give_the_same_face(generator: Any) -> None:
    window = centre_window(np.random.default_rng(0).standard_normal(20000).astype(np.float32) * 0.1, 16000)
    a = generate_face(generator, window, 7, "a/voice.wav")
    b = generate_face(generator, window, 7, "a/voice.wav")
    assert a.dtype == np.uint8 and a.shape == (64, 64, 3)
    assert np.array_equal(a, b) and face_digest(a) == face_digest(b)
    assert not np.array_equal(a, generate_face(generator, window, 8, "a/voice.wav"))  # another seed
    assert not np.array_equal(a, generate_face(generator, window, 7, "b/voice.wav"))  # another file


def test_items_and_real_faces_in_both_dataset_layouts(tmp_path: Path) -> None:
    import cv2
    import soundfile as sf

    from installation.rate import RealFaces, discover_items

    red = np.zeros((40, 30, 3), np.uint8)
    red[..., 2] = 255  # BGR: a red image, not square (centre-cropped)
    # the Wav2Pix layout stores red and blue swapped (as the published crops do): the same red face, swapped
    jpeg = cv2.imencode(".jpg", np.ascontiguousarray(red[..., ::-1]))[1].tobytes()
    tone = (0.1 * np.sin(np.arange(8000) / 5.0)).astype(np.float32)
    # Wav2Pix layout: the ".png" is JPEG bytes, decoded by content
    w2p = tmp_path / "w2p" / "speaker"
    w2p.mkdir(parents=True)
    sf.write(w2p / "preprocessed_frame_7.flac", tone, 16000)
    sf.write(w2p / "preprocessed_frame_8.flac", tone, 16000)  # no face for this one
    (w2p / "cropped_face_frame_7.png").write_bytes(jpeg)
    # capture layout: the manifest lists the takes; a quarantined take is not an item
    cap = tmp_path / "cap"
    (cap / "P-1").mkdir(parents=True)
    (cap / "_quarantine" / "t").mkdir(parents=True)
    sf.write(cap / "P-1" / "take1.wav", tone, 16000)
    sf.write(cap / "_quarantine" / "t" / "take0.wav", tone, 16000)
    (cap / "P-1" / "take1.face.png").write_bytes(cv2.imencode(".png", red)[1].tobytes())
    record = {"take_id": "take1", "participant": "P-1", "image": "P-1/take1.face.png", "audio": "P-1/take1.wav"}
    (cap / "manifest.jsonl").write_text(json.dumps(record) + "\n")

    items = discover_items(tmp_path / "w2p")
    assert [rel for _, rel in items] == ["speaker/preprocessed_frame_7.flac", "speaker/preprocessed_frame_8.flac"]
    assert discover_items(cap) == [(cap / "P-1" / "take1.wav", "P-1/take1.wav")]
    faces = RealFaces()
    for audio in (w2p / "preprocessed_frame_7.flac", cap / "P-1" / "take1.wav"):
        face = faces.load(audio, 24)
        assert face is not None and face.shape == (24, 24, 3) and face.dtype == np.uint8
        assert face[..., 0].mean() > 200 and face[..., 2].mean() < 40  # RGB: red, from either layout
    assert faces.find(w2p / "preprocessed_frame_8.flac") is None


def test_ratings_file_repairs_a_torn_last_line(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "r.jsonl"
    path.write_bytes(b'{"score": 4}\n{"score": 5, "mod')
    out = RatingsFile(path)
    assert out.repaired == len(b'{"score": 5, "mod') and "torn" in caplog.text
    out.append({"score": 3, "audio": "ü.wav"})
    out.close()
    assert [r["score"] for r in read_lines(path)] == [4, 3]
    path.write_bytes(b'{"half')  # nothing complete at all
    RatingsFile(path).close()
    assert path.read_bytes() == b""
    clean = RatingsFile(path)
    assert clean.repaired == 0
    clean.close()


# -- end to end ---------------------------------------------------------------------------------------------


def test_scripted_visitor_rates_real_speech_end_to_end(
    speech_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    preset, out = small_preset(tmp_path), tmp_path / "out" / "ratings.jsonl"
    script = tmp_path / "visitor.txt"
    script.write_text("rate/4\nrate/skip  # not sure\nrate/replay\nrate/2\nrate/5\n")
    argv = ["rate", "--preset", str(preset), "--audio", str(speech_dir), "--out", str(out), "--windowed"]
    argv += ["--script", str(script), "--show-real", "--seed", "3"]
    started = time.perf_counter()
    assert run.main(argv) == 0
    first_s = time.perf_counter() - started
    printed = capsys.readouterr().out
    assert "3 rated, 1 skipped, mean score 3.67" in printed and str(out) in printed
    first = read_lines(out)
    assert len(first) == 4
    for r in first:
        assert set(r) == FIELDS
        assert r["model"].startswith("wav2pix-64@") and len(r["model"]) == len("wav2pix-64@") + 12
        assert r["bundle"] == "presets/models/wav2pix-64" and r["seed"] == 3 and r["input"] == "script"
        assert r["shown_real"] is True and isinstance(r["voice_played"], bool)
        assert r["response_s"] >= 0.3 - 1e-3 and r["time"].endswith("Z") and len(r["session"]) == 12
        assert (speech_dir / r["audio"]).is_file() and not r["audio"].startswith("/")
    assert [r["score"] for r in first] == [4, None, 2, 5]
    assert [r["skipped"] for r in first] == [False, True, False, False]
    assert len({r["audio"] for r in first}) == 4 and len({r["session"] for r in first}) == 1
    if not any(r["voice_played"] for r in first):
        assert NO_DEVICE_WARNING in caplog.text  # this machine and CI: no output device, said once
        assert caplog.text.count(NO_DEVICE_WARNING) == 1

    # a crash left a torn line; the next session cuts it and appends; same seed -> same order and faces
    with out.open("ab") as fh:
        fh.write(b'{"time": "2026-')
    assert run.main(argv) == 0
    both = read_lines(out)
    assert len(both) == 8 and "torn" in caplog.text
    second = both[4:]
    assert [r["audio"] for r in second] == [r["audio"] for r in first]
    assert [r["face_sha1"] for r in second] == [r["face_sha1"] for r in first]
    assert second[0]["session"] != first[0]["session"]

    # another seed: other faces for the same files
    assert run.main([*argv[:-1], "4", "--max-items", "2"]) == 0
    third = read_lines(out)[8:]
    assert len(third) == 2 and "2 answers (max_items)" in capsys.readouterr().out + caplog.text
    faces = {r["audio"]: r["face_sha1"] for r in first}
    assert all(faces[r["audio"]] != r["face_sha1"] for r in third)
    print(f"first run (load + 4 items + 1 replay): {first_s:.2f} s")


def test_touch_mouse_and_keys(generator: Any, tmp_path: Path) -> None:
    import pygame

    def click(name: str, **extra: Any) -> Callable[[RatingStation], None]:
        def act(st: RatingStation) -> None:
            pygame.event.post(
                pygame.event.Event(pygame.MOUSEBUTTONDOWN, pos=st.layout.buttons[name].center, button=1, **extra)
            )

        return act

    def finger(name: str) -> Callable[[RatingStation], None]:
        def act(st: RatingStation) -> None:
            x, y = st.layout.buttons[name].center
            w, h = st.layout.width, st.layout.height
            pygame.event.post(
                pygame.event.Event(
                    pygame.FINGERDOWN, touch_id=1, finger_id=0, x=x / w, y=y / h, dx=0.0, dy=0.0, pressure=1.0
                )
            )

        return act

    def key(k: int) -> Callable[[RatingStation], None]:
        return lambda st: pygame.event.post(pygame.event.Event(pygame.KEYDOWN, key=k, mod=0, unicode="", scancode=0))

    def touch_copy_then_keypad(st: RatingStation) -> None:
        click("rate/1", touch=True)(st)  # SDL's mouse copy of a touch: ignored (the FINGERDOWN counts)
        key(pygame.K_KP2)(st)

    audio = synth_dir(tmp_path, n=5)
    plan = [click("rate/3"), finger("rate/4"), touch_copy_then_keypad, key(pygame.K_s), key(pygame.K_ESCAPE)]
    station = RatingStation(station_config(tmp_path, audio), generator=generator, on_frame=actions(plan))
    summary = station.run()
    rows = read_lines(tmp_path / "ratings.jsonl")
    assert [(r["score"], r["input"]) for r in rows] == [(3, "touch"), (4, "touch"), (2, "key"), (None, "key")]
    assert summary["rated"] == 3 and summary["skipped"] == 1 and summary["quit_reason"] == "keyboard"
    assert all(r["shown_real"] is False and r["voice_played"] is False for r in rows)


def test_answers_during_the_lockout_do_not_count(generator: Any, tmp_path: Path) -> None:
    import pygame

    state = {"early": False, "late": False}

    def on_frame(st: RatingStation) -> None:
        item = st.item
        if item is None or item.shown_at is None:
            return
        if not state["early"]:  # the first frame of the face: a double tap from the previous face
            state["early"] = True
            pygame.event.post(pygame.event.Event(pygame.KEYDOWN, key=pygame.K_1, mod=0, unicode="1", scancode=0))
        elif not state["late"] and time.perf_counter() - item.shown_at > 0.45:
            state["late"] = True
            pygame.event.post(pygame.event.Event(pygame.KEYDOWN, key=pygame.K_5, mod=0, unicode="5", scancode=0))

    cfg = station_config(tmp_path, synth_dir(tmp_path, n=2), min_view_s=0.4, max_items=1)
    summary = RatingStation(cfg, generator=generator, on_frame=on_frame).run()
    rows = read_lines(cfg.out)
    assert len(rows) == 1 and rows[0]["score"] == 5 and rows[0]["response_s"] >= 0.45
    assert summary["quit_reason"] == "1 answers (max_items)"


def test_osc_rating_lands_with_input_osc(generator: Any, tmp_path: Path) -> None:
    from pythonosc.udp_client import SimpleUDPClient

    sent: list[int] = []

    def send(st: RatingStation) -> None:
        host, port = st.osc.server.address
        SimpleUDPClient(host, port).send_message("/avgan/rate/5", [])  # a TouchOSC button press
        sent.append(port)

    osc = OscConfig(enabled=True, host="127.0.0.1", port=0, feedback=False, oscquery=False)
    cfg = station_config(tmp_path, synth_dir(tmp_path, n=2), osc=osc, max_items=1)
    summary = RatingStation(cfg, generator=generator, on_frame=actions([send], limit_s=20)).run()
    rows = read_lines(cfg.out)
    assert sent and len(rows) == 1 and rows[0]["score"] == 5 and rows[0]["input"] == "osc"
    assert summary["osc_error"] is None and summary["quit_reason"] == "1 answers (max_items)"


def test_busy_osc_port_logs_and_runs_without_osc(
    generator: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    holder = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    holder.bind(("127.0.0.1", 0))
    try:
        osc = OscConfig(enabled=True, host="127.0.0.1", port=holder.getsockname()[1], feedback=False, oscquery=False)
        script = tmp_path / "s.txt"
        script.write_text("repeat 2 rate/3\n")
        cfg = station_config(tmp_path, synth_dir(tmp_path, n=2), osc=osc, script=script)
        summary = RatingStation(cfg, generator=generator).run()
    finally:
        holder.close()
    assert "cannot listen" in summary["osc_error"] and "OSC disabled" in caplog.text
    assert [r["score"] for r in read_lines(cfg.out)] == [3, 3]


class FakeSoundDevice:
    """sounddevice's output calls, recorded: a 48 kHz default output device."""

    def __init__(self) -> None:
        self.played: list[tuple[int, int]] = []
        self.stops = 0

    def query_devices(self, kind: str | None = None) -> dict[str, Any]:
        assert kind == "output"
        return {"name": "fake speakers", "default_samplerate": 48000.0, "max_output_channels": 2}

    def play(self, data: np.ndarray, samplerate: int) -> None:
        assert data.dtype == np.float32 and data.ndim == 1
        self.played.append((int(data.shape[0]), int(samplerate)))

    def stop(self) -> None:
        self.stops += 1


def test_voice_is_played_at_the_device_rate_and_replayed(generator: Any, tmp_path: Path) -> None:
    sd = FakeSoundDevice()
    script = tmp_path / "s.txt"
    script.write_text("rate/replay\nrate/4\n")
    cfg = station_config(tmp_path, synth_dir(tmp_path, n=1), script=script, play_voice=True)
    summary = RatingStation(cfg, generator=generator, player=VoicePlayer(True, sd=sd)).run()
    (row,) = read_lines(cfg.out)
    assert row["voice_played"] is True and row["score"] == 4 and summary["voice"] is True
    assert sd.played == [(48000, 48000), (48000, 48000)]  # shown + replay: the 1 s window at 48 kHz


def test_no_output_device_warns_once_and_stays_silent(caplog: pytest.LogCaptureFixture) -> None:
    class NoDevice(FakeSoundDevice):
        def query_devices(self, kind: str | None = None) -> dict[str, Any]:
            raise ValueError("No output device matching ''")

    player = VoicePlayer(True, sd=NoDevice())
    assert not player.available and player.play(np.zeros(16000, np.float32), 16000) is False
    assert caplog.text.count(NO_DEVICE_WARNING) == 1


# -- bad input ------------------------------------------------------------------------------------------------


def one_line_error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    assert run.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err
    return err


def test_bad_inputs_give_one_line_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    preset = str(small_preset(tmp_path))
    audio = synth_dir(tmp_path, n=1)
    out = str(tmp_path / "r.jsonl")
    base = ["rate", "--preset", preset, "--out", out]
    assert "--audio" in one_line_error([*base, "--audio", str(tmp_path / "nope")], capsys)
    (tmp_path / "empty").mkdir()
    assert "no audio files" in one_line_error([*base, "--audio", str(tmp_path / "empty")], capsys)
    err = one_line_error([*base, "--audio", str(audio), "--bundle", str(tmp_path / "nobundle")], capsys)
    assert "nobundle" in err
    err = one_line_error(["rate", "--preset", preset, "--audio", str(audio), "--out", str(tmp_path)], capsys)
    assert "--out" in err and str(tmp_path) in err
    blocker = tmp_path / "file"
    blocker.write_text("x")
    err = one_line_error(["rate", "--preset", preset, "--audio", str(audio), "--out", str(blocker / "r.jsonl")], capsys)
    assert "--out" in err
    script = tmp_path / "bad.txt"
    script.write_text("rate/4\nrate/9\n")
    assert f"{script}:2" in one_line_error([*base, "--audio", str(audio), "--script", str(script)], capsys)
    script.write_text("capture/go\n")
    err = one_line_error([*base, "--audio", str(audio), "--script", str(script)], capsys)
    assert "capture/go" in err and "rating-station button" in err
    assert "--max-items" in one_line_error([*base, "--audio", str(audio), "--max-items", "-1"], capsys)
    assert "no preset" in one_line_error([*base[:2], "nosuchpreset", *base[3:], "--audio", str(audio)], capsys)
    assert not (tmp_path / "r.jsonl").exists()  # nothing was created by the failed starts


def test_undecodable_files_are_skipped_by_name(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    preset = str(small_preset(tmp_path))
    audio = synth_dir(tmp_path, n=2)
    (audio / "broken.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk")
    script = tmp_path / "s.txt"
    script.write_text("repeat 2 rate/3\n")
    out = tmp_path / "r.jsonl"
    assert (
        run.main(["rate", "--preset", preset, "--audio", str(audio), "--out", str(out), "--script", str(script)]) == 0
    )
    assert "broken.wav" in caplog.text and "1 undecodable files skipped" in capsys.readouterr().out
    assert sorted(r["audio"] for r in read_lines(out)) == ["voice0.wav", "voice1.wav"]
    for f in audio.glob("voice*.wav"):
        f.unlink()
    err = one_line_error(["rate", "--preset", preset, "--audio", str(audio), "--out", str(out)], capsys)
    assert "could be decoded" in err
