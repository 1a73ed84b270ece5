"""The capture booth (run.py capture): gate, crop, camera, scripted sessions, device failures, crash safety.

End-to-end tests drive the real command with the device stand-ins made from ../shared/data/wav2pix (a video-file
camera and an audio-file microphone, see scripts/make_capture_standins.py); they skip with the reason when that
material is missing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import av
import cv2
import numpy as np
import pytest
import soundfile as sf
import yaml

from installation.capture import (
    CaptureBooth,
    CaptureSettings,
    assess,
    audio_levels,
    crop_box,
    crop_face,
)
from installation.presets import CaptureConfig, load_preset
from installation.visitor_script import ScriptError, VisitorScript, parse_script
from tests.training_support import tiny_config_dict

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "wav2pix" / "train"
needs_data = pytest.mark.skipif(not DATA.is_dir(), reason=f"{DATA} (Wav2Pix material for the stand-ins) is missing")



# -- gate, crop, levels ------------------------------------------------------------------------------------------


def test_crop_box_is_square_inside_the_frame() -> None:
    assert crop_box((960, 540), (400, 200, 100, 120), 0.4) == (342, 152, 216)
    x, y, side = crop_box((960, 540), (0, 0, 100, 100), 0.5)  # shifted into the frame at the corner
    assert (x, y, side) == (0, 0, 200)
    x, y, side = crop_box((960, 540), (300, 100, 500, 500), 0.5)  # larger than the frame: shrunk to its height
    assert side == 540 and y == 0 and 0 <= x <= 960 - 540
    frame = np.zeros((540, 960, 3), np.uint8)
    face, where = crop_face(frame, (400, 200, 100, 120), 0.4, 320)
    assert face.shape == (320, 320, 3) and face.dtype == np.uint8 and where == (342, 152, 216)


def test_audio_levels() -> None:
    t = np.arange(48000) / 48000
    sine = (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    lv = audio_levels(sine)
    assert lv["peak_dbfs"] == pytest.approx(-6.02, abs=0.05)
    assert lv["rms_dbfs"] == pytest.approx(-9.03, abs=0.05)
    assert lv["clipped_fraction"] == 0
    assert audio_levels(np.clip(sine * 4, -1, 1))["clipped_fraction"] > 0.5
    assert audio_levels(np.zeros(0, np.float32))["rms_dbfs"] == -120


def test_assess_reasons() -> None:
    cfg = CaptureConfig()
    frame = np.full((540, 960, 3), 128, np.uint8)
    speech = (0.3 * np.sin(np.arange(16000) * 0.05)).astype(np.float32)
    assert assess(frame, [(400, 150, 200, 200)], speech, cfg).ok
    assert assess(frame, [], speech, cfg).reasons == ["no_face"]
    assert assess(frame, [(0, 0, 200, 200), (500, 0, 200, 200)], speech, cfg).reasons == ["several_faces"]
    assert assess(frame, [(400, 150, 60, 60)], speech, cfg).reasons == ["face_too_small"]  # 60 < 0.2 * 540
    assert assess(frame // 4, [(400, 150, 200, 200)], speech, cfg).reasons == ["too_dark"]
    assert assess(frame, [(400, 150, 200, 200)], speech * 1e-4, cfg).reasons == ["silent"]
    assert assess(frame, [(400, 150, 200, 200)], np.sign(speech), cfg).reasons == ["clipped"]
    assert assess(frame, [(400, 150, 200, 200)], None, cfg).ok  # picture only (live hints)


# -- visitor script ------------------------------------------------------------------------------------------------


def test_visitor_script_parsing_and_pacing() -> None:
    steps, loop = parse_script("capture/consent  # hi\nwait 0.2\nrepeat 2 /avgan/capture/go\nany rate/1 capture/next\n")
    assert [s.name for s in steps] == ["capture/consent", "", "capture/go", "capture/go", "rate/1"]
    assert steps[4].alternatives == ("rate/1", "capture/next") and not loop
    clock = [0.0]
    pressed: list[str] = []
    script = VisitorScript(steps, loop, pressed.append, clock=lambda: clock[0])
    assert script.poll({"capture/go"}) is None  # waits until consent is accepted
    assert script.poll({"capture/consent"}) == "capture/consent"
    assert script.poll({"capture/go"}) is None  # the wait step starts
    clock[0] = 0.25
    assert script.poll({"capture/go"}) == "capture/go"
    assert script.poll({"capture/go"}) == "capture/go"
    assert script.poll({"capture/next"}) == "capture/next" and script.done
    assert pressed == ["capture/consent", "capture/go", "capture/go", "capture/next"]
    steps, loop = parse_script("any capture/consent capture/go\nloop\n")
    looping = VisitorScript(steps, loop, pressed.append)
    assert [looping.poll({"capture/go"}) for _ in range(3)] == ["capture/go"] * 3 and not looping.done
    for bad, message in (
        ("capture/goo\n", "not a button"),
        ("scene\n", "not a button"),  # a state, not a button
        ("wait -1\n", "wait SECONDS"),
        ("repeat 0 capture/go\n", "repeat N"),
        ("loop\ncapture/go\n", "nothing may follow"),
        ("# only a comment\n", "no steps"),
    ):
        with pytest.raises(ScriptError, match=message):
            parse_script(bad, "s.txt")


# -- camera --------------------------------------------------------------------------------------------------------


def _video(path: Path, frames: int, fps: int = 10, size: tuple[int, int] = (160, 120)) -> Path:
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = size[0], size[1], "yuv420p"
        for k in range(frames):
            img = np.full((size[1], size[0], 3), (k * 10) % 255, np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="bgr24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def _wait(predicate, timeout: float = 5.0) -> bool:
    end = time.perf_counter() + timeout
    while time.perf_counter() < end:
        if predicate():
            return True
        time.sleep(0.01)
    return False


def test_file_camera_loops_or_finishes(tmp_path: Path) -> None:
    from installation.camera import Camera, CameraError

    clip = _video(tmp_path / "c.mp4", 12)
    events: list[str] = []
    cam = Camera(clip, realtime=False, on_event=lambda k, d: events.append(k)).start()
    try:
        assert cam.frame_size == (160, 120) and cam.frame_fps == pytest.approx(10)
        assert _wait(lambda: cam.frames > 30)  # looped past the 12 frames
        frame, number, _ = cam.latest()
        assert frame is not None and frame.shape == (120, 160, 3) and number >= 30
    finally:
        cam.close()
    once = Camera(clip, realtime=False, loop=False, on_event=lambda k, d: events.append(k)).start()
    assert _wait(lambda: once.state == "finished")
    once.close()
    assert events.count("opened") == 2 and "finished" in events and "closed" in events
    with pytest.raises(CameraError, match="no such video file"):
        Camera(tmp_path / "missing.mp4").start()
    (tmp_path / "bad.mp4").write_bytes(b"not a video")
    with pytest.raises(CameraError, match="bad.mp4"):
        Camera(tmp_path / "bad.mp4").start()


class FlakyCapture:
    """A cv2.VideoCapture stand-in for a USB camera that is unplugged after some frames and comes back later."""

    opens = 0

    def __init__(self, index: int, plan: dict) -> None:
        FlakyCapture.opens += 1
        self.plan, self.n = plan, 0
        self.ok = FlakyCapture.opens not in plan["fail_opens"]

    def isOpened(self) -> bool:  # noqa: N802 - OpenCV's name
        return self.ok

    def read(self):
        self.n += 1
        if FlakyCapture.opens == 1 and self.n > self.plan["frames_before_unplug"]:
            return False, None
        time.sleep(0.005)
        return True, np.zeros((48, 64, 3), np.uint8)

    def get(self, prop: int) -> float:
        return 30.0

    def set(self, prop: int, value: float) -> bool:
        return True

    def release(self) -> None:
        pass


def test_device_camera_lost_and_reconnected() -> None:
    from installation.camera import Camera

    plan = {"frames_before_unplug": 5, "fail_opens": {2, 3}}  # unplugged; the first two reopen attempts fail
    FlakyCapture.opens = 0
    events: list[str] = []
    cam = Camera(
        0,
        lost_after_s=0.1,
        backoff_s=0.02,
        on_event=lambda k, d: events.append(k),
        capture_factory=lambda index: FlakyCapture(index, plan),
    ).start()
    try:
        assert _wait(lambda: cam.reconnects == 1 and cam.state == "running")
        assert _wait(lambda: cam.fresh(0.5))
    finally:
        cam.close()
    assert events[:2] == ["opened", "lost"] and events.count("reopen_failed") == 2 and "reconnected" in events


# -- end to end with the stand-ins ------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def standins() -> Path:
    if not DATA.is_dir():
        pytest.skip(f"{DATA} (Wav2Pix material for the stand-ins) is missing")
    from benchmarks.capture import standins as make

    return make()


def _preset(tmp_path: Path, **capture) -> Path:
    from benchmarks.capture import write_preset

    return write_preset(tmp_path / "booth.yaml", **capture)


def _script(tmp_path: Path, text: str = "any capture/consent capture/go\nloop\n") -> Path:
    path = tmp_path / "visitor.txt"
    path.write_text(text)
    return path


@needs_data
def test_capture_session_end_to_end_then_check_and_train(tmp_path: Path, standins: Path) -> None:
    import run

    preset = _preset(
        tmp_path, countdown_s=0.2, review_s=0.05, takes_per_participant=2, save_full_frame=True, audio_format="flac"
    )
    out = tmp_path / "dataset"
    report_path = tmp_path / "report.json"
    argv = ["capture", "--preset", str(preset), "--out", str(out), "--camera", str(standins / "camera.mp4")]
    argv += ["--input", str(standins / "mic.flac"), "--script", str(_script(tmp_path)), "--max-takes", "5"]
    argv += ["--duration", "60", "--report", str(report_path)]
    assert run.main(argv) == 0
    report = json.loads(report_path.read_text())
    assert report["kept"] == 5 and report["stop_reason"] == "max_takes"
    assert report["participants"] == 3  # 2 + 2 + 1 takes
    assert run.main(["dataset", "check", str(out)]) == 0

    from datastore.capture_format import read_manifest

    records, problems = read_manifest(out)
    assert len(records) == 5 and not problems
    rec = records[0]
    extra = rec.extra
    assert extra["consent"]["scope"] == "research-training-v1" and extra["consent"]["confirmed_by"] == "script"
    assert extra["devices"]["sample_rate"] == 48000 and extra["devices"]["camera_size"] == [960, 540]
    assert extra["detection"]["faces"] == 1 and len(extra["detection"]["box"]) == 4
    assert extra["levels"]["rms_dbfs"] > -45 and 0 < extra["frame_offset_s"] < 1.0
    face = cv2.imread(str(out / rec.image))
    assert face.shape == (320, 320, 3)
    info = sf.info(str(out / rec.audio))
    assert (info.samplerate, info.channels, info.frames, info.subtype) == (48000, 1, 48000, "PCM_16")
    assert info.format == "FLAC" and rec.audio.endswith(".flac")
    assert (out / rec.participant / f"{rec.take_id}.frame.jpg").is_file()

    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(yaml.safe_dump(tiny_config_dict(steps=2, val_fraction=0.4, sample_every=2, checkpoint_every=2)))
    env = dict(os.environ, AVGAN_CACHE=str(tmp_path / "cache"), OMP_NUM_THREADS="1")
    cmd = [sys.executable, "run.py", "train", "--config", str(cfg), "--data", str(out), "--out", str(tmp_path / "run")]
    r = subprocess.run(cmd + ["--device", "cpu"], cwd=ROOT, capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert (tmp_path / "run" / "log.jsonl").is_file()
    split = json.loads((tmp_path / "run" / "split.json").read_text())
    assert set(json.dumps(split).split('"')) & {r.participant for r in records}  # identities = participants


class SwitchCamera:
    """Wraps a real camera so a test can make it vanish and come back."""

    def __init__(self, camera) -> None:
        self.camera, self.gone = camera, False
        self.description = camera.description

    @property
    def state(self) -> str:
        return "lost" if self.gone else self.camera.state

    def latest(self):
        frame, n, t = self.camera.latest()
        return (None, n, 0.0) if self.gone else (frame, n, t)

    def close(self) -> None:
        self.camera.close()


def _booth(tmp_path: Path, standins: Path, camera=None, audio=None, osc=None, **capture) -> CaptureBooth:
    preset = load_preset(_preset(tmp_path, countdown_s=0.1, review_s=0.0, takes_per_participant=50, **capture))
    settings = CaptureSettings(
        out=tmp_path / "dataset",
        capture=preset.capture,
        camera=standins / "camera.mp4",
        input=standins / "mic.flac",
        script=_script(tmp_path),
        width=320,
        height=180,
        windowed_size=(320, 180),
        video_driver="dummy",
        osc=osc,
    )
    booth = CaptureBooth(settings, camera=camera, audio=audio)
    if osc is None:
        booth.script = VisitorScript(*parse_script(settings.script.read_text()), lambda n: booth._press(n, "script"))
    return booth


def _steps(booth: CaptureBooth, seconds: float, until=lambda b: False) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end and not until(booth):
        booth.step(time.perf_counter())
        time.sleep(0.01)


@needs_data
def test_camera_vanishing_pauses_and_keeps_takes(tmp_path: Path, standins: Path) -> None:
    from datastore.capture_store import check_dataset
    from installation.camera import Camera

    camera = SwitchCamera(Camera(standins / "camera.mp4").start())
    booth = _booth(tmp_path, standins, camera=camera)
    try:
        _steps(booth, 20, lambda b: b.stats.kept >= 2)
        assert booth.stats.kept >= 2
        _steps(booth, 5, lambda b: b.state == "recording")
        camera.gone = True  # unplugged mid-take
        _steps(booth, 1.0)
        assert booth.pause_reason == "camera_lost" and booth.stats.rejected["camera_lost"] == 1
        kept = booth.stats.kept
        attempts = booth.stats.attempts
        _steps(booth, 1.0)
        assert booth.stats.attempts == attempts and booth.accepting() == {"capture/next"}  # no takes while lost
        camera.gone = False
        _steps(booth, 10, lambda b: b.stats.kept > kept)
        assert booth.pause_reason == "" and booth.stats.kept > kept
    finally:
        booth.close()
    assert check_dataset(tmp_path / "dataset").ok


@needs_data
def test_microphone_stopping_pauses(tmp_path: Path, standins: Path) -> None:
    from installation.audio_in import FileInput

    audio = sf.read(str(standins / "mic.flac"), dtype="float32")[0][: 48000 * 3]  # 3 s, then the mic stops
    mic = FileInput(audio, 48000, loop=False)
    mic.start()
    booth = _booth(tmp_path, standins, audio=mic)
    try:
        _steps(booth, 6, lambda b: b.pause_reason == "mic_stopped")
        assert booth.pause_reason == "mic_stopped"
        attempts = booth.stats.attempts
        _steps(booth, 0.5)
        assert booth.stats.attempts == attempts
    finally:
        booth.close()


@needs_data
def test_disk_full_pauses_and_keeps_earlier_takes(tmp_path: Path, standins: Path, monkeypatch) -> None:
    from datastore.capture_store import DiskFullError, check_dataset

    booth = _booth(tmp_path, standins)
    try:
        _steps(booth, 20, lambda b: b.stats.kept >= 1)
        assert booth.stats.kept >= 1

        def full(*args, **kwargs):
            raise DiskFullError("dataset/P-XXXXXX: no space left on device", "dataset")

        monkeypatch.setattr(booth.writer, "write_take", full)
        monkeypatch.setattr(booth.writer, "free_mb", lambda: 0.0)
        _steps(booth, 10, lambda b: b.stats.rejected["disk_full"] >= 1)
        assert booth.stats.rejected["disk_full"] == 1
        _steps(booth, 0.5)
        assert booth.pause_reason == "disk_full" and booth.accepting() == {"capture/next"}
        monkeypatch.undo()
        booth._disk_check_t = 0.0
        kept = booth.stats.kept
        _steps(booth, 10, lambda b: b.stats.kept > kept)
        assert booth.stats.kept > kept and booth.pause_reason == ""
    finally:
        booth.close()
    assert check_dataset(tmp_path / "dataset").ok


def test_keys_and_touch_press_the_buttons(tmp_path: Path) -> None:
    import pygame

    from installation.capture_screen import CaptureScreen

    screen = CaptureScreen(
        SimpleNamespace(
            width=320,
            height=180,
            fullscreen=False,
            display=0,
            hide_cursor=False,
            windowed_size=(320, 180),
            video_driver="dummy",
        )
    )
    try:
        key = pygame.event.Event(pygame.KEYDOWN, key=pygame.K_y)
        assert screen.action_for(key, "consent") == "capture/consent"
        assert screen.action_for(pygame.event.Event(pygame.KEYDOWN, key=pygame.K_ESCAPE), "ready") == "quit"
        (name, _, (x, y, w, h)), (name2, _, (x2, y2, w2, h2)) = screen.button_rects("ready")
        click = pygame.event.Event(pygame.MOUSEBUTTONDOWN, pos=(x + w // 2, y + h // 2), button=1)
        assert name == "capture/go" and screen.action_for(click, "ready") == "capture/go"
        touch = pygame.event.Event(
            pygame.FINGERDOWN, x=(x2 + w2 / 2) / 320, y=(y2 + h2 / 2) / 180, touch_id=0, finger_id=0
        )
        assert name2 == "capture/next" and screen.action_for(touch, "ready") == "capture/next"
        assert screen.action_for(click, "countdown") == ""  # no buttons while counting down
    finally:
        screen.close()


@pytest.mark.slow  # SIGKILLs a writer repeatedly (~14 s); run.py bench --only capture runs the 60-kill version
@needs_data
def test_crash_test_sigkill_during_writes(tmp_path: Path, standins: Path) -> None:
    """``python -m benchmarks.capture --crash-only N``: N SIGKILLs (``AVGAN_CRASH_KILLS``, default 10; bench: 60)."""
    kills = int(os.environ.get("AVGAN_CRASH_KILLS", "10"))
    out = tmp_path / "crash.json"
    r = subprocess.run(
        [sys.executable, "-m", "benchmarks.capture", "--crash-only", str(kills), str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60 + 5 * kills,
        env=dict(os.environ, SDL_VIDEODRIVER="dummy"),
    )
    assert r.returncode == 0, r.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["kills"] == kills and result["exits"] == {"signal 9": kills}
    assert result["kept_reported"] > 0
    assert result["missing_reported"] == 0 and result["damaged"] == 0
    assert result["manifest_takes"] >= result["kept_reported"]
    assert result["clean_after_repair"] and result["kept_after_repair"] == result["kept_reported"]


@needs_data
def test_osc_consent_and_go_from_a_controller(tmp_path: Path, standins: Path) -> None:
    """TouchOSC / Max buttons: /avgan/capture/consent and /avgan/capture/go over UDP drive the booth."""
    from pythonosc.udp_client import SimpleUDPClient

    from datastore.capture_format import read_manifest
    from installation.presets import OscConfig

    osc = OscConfig(enabled=True, host="127.0.0.1", port=0, feedback=False, oscquery=False)
    booth = _booth(tmp_path, standins, osc=osc)
    try:
        booth.start_osc()
        client = SimpleUDPClient(*booth.osc.server.address)
        _steps(booth, 0.3)
        assert booth.state == "consent"
        client.send_message("/avgan/capture/go", [])  # not accepted before consent: ignored
        _steps(booth, 0.3)
        assert booth.state == "consent" and booth.stats.attempts == 0
        client.send_message("/avgan/capture/consent", [])
        _steps(booth, 2, lambda b: b.state == "ready")
        assert booth.state == "ready"
        for _ in range(4):  # a few presses: the stand-in may be between visitors for one of them
            client.send_message("/avgan/capture/go", [1.0])
            _steps(booth, 5, lambda b: b.state in ("ready",) and b.stats.attempts > 0)
            if booth.stats.kept:
                break
    finally:
        booth.close()
    records, _ = read_manifest(tmp_path / "dataset")
    assert records and records[0].extra["consent"]["confirmed_by"] == "osc"
