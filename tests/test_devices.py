"""``run.py devices``: run as a user would on this machine (no sound card, camera or screen), on real ALSA devices
defined in a ``.asoundrc`` (tests/alsa_standin.py), on a real X server (Xvfb), and on stand-ins for what this
machine cannot have (cameras, several displays). What it prints is what ``--input`` and ``sound.device`` take."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from installation.devices import (
    AudioDevice,
    Listing,
    audio_devices,
    camera_indexes,
    cameras,
    displays,
    format_listing,
)
from tests.alsa_standin import alsa_available, write_asoundrc

ROOT = Path(__file__).resolve().parents[1]


def run_devices(home: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``python run.py devices ARGS`` with ``HOME=home`` (its ALSA configuration) and no display by default."""
    environ = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY", "SDL_VIDEODRIVER")}
    environ.update({"HOME": str(home), **(env or {})})
    return subprocess.run(
        [sys.executable, "run.py", "devices", *args],
        cwd=ROOT,
        env=environ,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_on_this_machine_every_section_says_what_it_found(tmp_path: Path) -> None:
    """No sound card, camera or display: exit 0 and one clear line per section (a gallery PC before the
    microphone is plugged in looks the same)."""
    out = run_devices(tmp_path)
    assert out.returncode == 0, out.stderr
    text = out.stdout
    if "no audio devices found" not in text:
        pytest.skip("this machine has audio devices")
    assert "Cameras (" in text and "Displays (" in text
    if not Path("/dev/video0").exists():
        assert "no camera: no /dev/video* device" in text
    assert "no display: SDL" in text and "DISPLAY unset" in text
    data = json.loads(run_devices(tmp_path, "--json", "--cameras", "0").stdout)
    assert data["audio"] == [] and data["displays"] == [] and data["camera_note"] == "not probed (--cameras 0)"


@pytest.mark.skipif(not alsa_available(), reason="needs alsa-lib's configuration (/usr/share/alsa/alsa.conf)")
def test_real_alsa_devices_and_the_names_it_prints_open(tmp_path: Path) -> None:
    """ALSA devices from a .asoundrc, through the real PortAudio: the table lists them; the index and the name it
    prints open as the live input (a real sounddevice stream delivering the speech the device plays), and pyo
    (sound.device) resolves the same name to the same index."""
    speech = (0.3 * np.sin(2 * np.pi * 220 * np.arange(44100) / 44100)).astype(np.float32)
    write_asoundrc(tmp_path, speech)
    out = run_devices(tmp_path, "--cameras", "0")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].startswith("Audio devices (PortAudio")
    assert lines[2].split() == ["index", "name", "host", "API", "in", "out", "default", "rate", "default"]
    assert any(line.split()[:3] == ["1", "avgan_mic", "ALSA"] for line in lines)
    data = json.loads(run_devices(tmp_path, "--json", "--cameras", "0").stdout)
    mic = next(d for d in data["audio"] if d["name"] == "avgan_mic")
    default = next(d for d in data["audio"] if d["default_input"])
    assert mic["inputs"] >= 1 and mic["default_rate"] > 0 and default["name"] == "default"

    check = f"""
import json, time
import numpy as np
from installation.audio_in import open_input
from installation.live import input_spec
from installation.sound import _output_device_index
import pyo
out = {{}}
for printed in ({mic["index"]!r}, {str(mic["index"])!r}, {mic["name"]!r}, "mic"):
    inp = open_input(input_spec(printed), 16000)
    inp.start()
    deadline = time.monotonic() + 10
    while inp.ring.written < 4410 and time.monotonic() < deadline:
        time.sleep(0.01)
    window, _ = inp.ring.latest(4410)
    out[str(printed)] = [inp.description, int(inp.ring.written), float(np.sqrt(np.mean(window ** 2)))]
    inp.close()
out["pyo"] = [_output_device_index(pyo, {mic["name"]!r}), _output_device_index(pyo, {mic["index"]!r})]
print("RESULT " + json.dumps(out))
"""
    env = {k: v for k, v in os.environ.items()}
    env["HOME"] = str(tmp_path)
    done = subprocess.run([sys.executable, "-c", check], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(next(line for line in done.stdout.splitlines() if line.startswith("RESULT "))[7:])
    for printed in (str(mic["index"]), mic["name"]):
        description, written, rms = result[printed]
        assert description.startswith("avgan_mic @ ") and written >= 4410
        assert rms == pytest.approx(0.3 / np.sqrt(2), rel=0.05)  # the tone the device plays, at its level
    assert result["mic"][0].startswith("default @ ")  # --input mic: the default input device
    assert result["pyo"] == [mic["index"], mic["index"]]  # sound.device: the same index for the printed name


def test_a_real_x_display_is_listed(tmp_path: Path) -> None:
    """Under a real X server (Xvfb at 1920x1080) the display table shows it as display 0."""
    xvfb = shutil.which("Xvfb")
    if xvfb is None:
        pytest.skip("Xvfb is not installed")
    number = 200 + os.getpid() % 500
    server = subprocess.Popen(
        [xvfb, f":{number}", "-screen", "0", "1920x1080x24", "-nolisten", "tcp"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while not Path(f"/tmp/.X11-unix/X{number}").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        out = run_devices(tmp_path, "--cameras", "0", env={"DISPLAY": f":{number}"})
        assert out.returncode == 0, out.stderr
        tail = out.stdout.split("Displays (", 1)[1].splitlines()
        assert tail[0] == "SDL video driver x11)"
        assert tail[-1].split() == ["0", "1920x1080"]
    finally:
        server.terminate()
        server.wait(10)


# -- stand-ins for what this machine cannot have ----------------------------------------------------------------


class FakeSoundDevice:
    """sounddevice's listing API with a USB microphone, HDMI output and a default device."""

    class default:  # noqa: N801 - sounddevice's attribute name
        device = (2, 1)

    @staticmethod
    def query_devices() -> list[dict[str, Any]]:
        return [
            {"index": 0, "name": "HDA Intel PCH: ALC3246 Analog (hw:0,0)", "hostapi": 0, "max_input_channels": 2,
             "max_output_channels": 2, "default_samplerate": 44100.0},
            {"index": 1, "name": "HDA Intel PCH: HDMI 0 (hw:0,3)", "hostapi": 0, "max_input_channels": 0,
             "max_output_channels": 8, "default_samplerate": 48000.0},
            {"index": 2, "name": "USB Audio Device: - (hw:1,0)", "hostapi": 0, "max_input_channels": 1,
             "max_output_channels": 0, "default_samplerate": 48000.0},
        ]  # fmt: skip

    @staticmethod
    def query_hostapis() -> list[dict[str, Any]]:
        return [{"name": "ALSA"}]

    @staticmethod
    def get_portaudio_version() -> tuple[int, str]:
        return 1246720, "PortAudio V19.7.0, revision 147dd72"


class FakeCapture:
    """cv2.VideoCapture on a machine with one webcam at index 0 (index 1 is its metadata node: does not open)."""

    def __init__(self, index: int) -> None:
        self.index = index

    def isOpened(self) -> bool:  # noqa: N802 - OpenCV's name
        return self.index == 0

    def read(self) -> tuple[bool, np.ndarray]:
        return True, np.zeros((720, 1280, 3), np.uint8)

    def get(self, prop: int) -> float:
        import cv2

        return {cv2.CAP_PROP_FRAME_WIDTH: 1280.0, cv2.CAP_PROP_FRAME_HEIGHT: 720.0, cv2.CAP_PROP_FPS: 30.0}[prop]

    def getBackendName(self) -> str:  # noqa: N802 - OpenCV's name
        return "V4L2"

    def release(self) -> None:
        pass


class FakePygame:
    """pygame.display with two screens (what a gallery PC with a projector and a monitor reports)."""

    class display:  # noqa: N801 - pygame's module name
        @staticmethod
        def init() -> None:
            pass

        @staticmethod
        def get_driver() -> str:
            return "x11"

        @staticmethod
        def get_desktop_sizes() -> list[tuple[int, int]]:
            return [(1920, 1080), (1280, 800)]

        @staticmethod
        def quit() -> None:
            pass


def test_tables_with_stand_ins() -> None:
    audio, note = audio_devices(FakeSoundDevice)
    assert note == "PortAudio V19.7.0" and [d.index for d in audio] == [0, 1, 2]
    assert audio[2] == AudioDevice(2, "USB Audio Device: - (hw:1,0)", "ALSA", 1, 0, 48000.0, True, False)
    assert audio[1].default_output and not audio[1].default_input
    cams, camera_note = cameras(8, FakeCapture, indexes=[0, 1])
    assert [(c.index, c.width, c.height, c.fps, c.backend, c.frame) for c in cams] == [
        (0, 1280, 720, 30.0, "V4L2", True)
    ]
    assert camera_note.endswith("tried index 0, 1")
    shown, display_note = displays(FakePygame)
    assert [(d.index, d.width, d.height) for d in shown] == [(0, 1920, 1080), (1, 1280, 800)]
    text = format_listing(Listing(audio, note, cams, camera_note, shown, display_note))
    lines = text.splitlines()
    assert "  2      USB Audio Device: - (hw:1,0)            ALSA      1   0    48000 Hz      input" in lines
    assert "  1      1280x800" in lines and "  0      1280x720  30   V4L2     yes" in lines
    assert camera_indexes(8, "linux", ["/dev/video0", "/dev/video1", "/dev/video12", "/dev/video-meta"]) == [0, 1]
    assert camera_indexes(3, "darwin") == [0, 1, 2]
    assert cameras(0) == ([], "not probed (--cameras 0)")


def test_a_broken_portaudio_is_reported_not_raised() -> None:
    class Broken(FakeSoundDevice):
        @staticmethod
        def query_devices() -> list[dict[str, Any]]:
            raise OSError("PortAudio not initialized")

    assert audio_devices(Broken) == ([], "PortAudio could not list devices (OSError: PortAudio not initialized)")
