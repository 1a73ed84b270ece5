#!/usr/bin/env python3
"""Screenshots of ``run.py live`` on a real X server: what a visitor sees.

    python scripts/live_screenshots.py --out docs/picture [--seconds 14] [--width 1920 --height 1080]

Starts Xvfb (the X virtual framebuffer) at the given size on a free display, runs ``run.py live`` fullscreen on
it with a preset (the demo clip as microphone, sound and OSC off), grabs the X screen with PyAV's ``x11grab``
every ``--every`` seconds and keeps the frame showing the face best (the largest spread of pixel values in the
middle of the screen). Without arguments beyond ``--out`` it makes the before/after pair of issue 24 from the
gallery preset: ``before.png`` (``fill`` mode, no super-resolution: the 64 px face scaled to cover 16:9) and
``after.png`` (the gallery preset as shipped: ``fit`` mode, the 4x face super-resolution stage), each saved at
half size, and ``before-detail.png`` / ``after-detail.png``: the middle 480 x 480 screen pixels at full size.
:func:`capture` is what the tests use.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "presets" / "demo" / "demo_speech.flac"


class Xvfb:
    """An Xvfb server on a free display (``-displayfd``), ``width`` x ``height`` x 24 bit; a context manager.

    Attributes:
        display: e.g. ``":3"``.

    Raises:
        RuntimeError: Xvfb is not installed or did not start within 10 s.
    """

    def __init__(self, width: int = 1920, height: int = 1080) -> None:
        exe = shutil.which("Xvfb")
        if exe is None:
            raise RuntimeError("Xvfb is not installed (apt-get install xvfb)")
        read, write = os.pipe()
        self.proc = subprocess.Popen(
            [exe, "-displayfd", str(write), "-screen", "0", f"{width}x{height}x24", "-nolisten", "tcp"],
            pass_fds=(write,), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        os.close(write)
        deadline, text = time.monotonic() + 10.0, b""
        with os.fdopen(read, "rb") as fh:
            while not text.endswith(b"\n") and time.monotonic() < deadline:
                chunk = fh.read(1)
                if not chunk:
                    break
                text += chunk
        if not text.strip().isdigit():
            self.close()
            raise RuntimeError("Xvfb did not start")
        self.display = f":{int(text)}"

    def close(self) -> None:
        """Stop the server (the process this object started)."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def __enter__(self) -> Xvfb:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def write_preset(path: Path, base: str = "gallery", **sections: dict[str, Any]) -> Path:
    """A preset file extending ``base`` (a name in ``presets/``) for screenshots: sound and OSC off, vsync off,
    the demo clip as microphone, ``sections`` merged over that (e.g. ``scenes={"portrait": {"fit": "fill"}}``)."""
    data: dict[str, Any] = {
        "extends": str(ROOT / "presets" / f"{base}.yaml"),
        "sound": {"enabled": False},
        "osc": {"enabled": False},
        "display": {"vsync": False, "driver": "", "fullscreen": True},
        "input": {"source": str(DEMO), "loop": True},
    }
    for key, value in sections.items():
        data[key] = {**data.get(key, {}), **value}
    path.write_text(json.dumps(data))  # JSON is YAML
    return path


def _grab(display: str, size: tuple[int, int], every: float, stop: threading.Event, frames: list) -> None:
    import av

    rate = max(1, round(1.0 / every))
    with av.open(f"{display}.0", format="x11grab", options={"video_size": f"{size[0]}x{size[1]}",
                                                             "framerate": str(rate)}) as container:  # fmt: skip
        for frame in container.decode(video=0):
            frames.append((time.monotonic(), frame.to_ndarray(format="rgb24")))
            if stop.is_set():
                return


def face_score(rgb: np.ndarray) -> float:
    """How well a frame shows a face: the standard deviation of the middle third of the screen (0 for a blank or
    idle screen)."""
    h, w = rgb.shape[:2]
    return float(rgb[h // 3 : 2 * h // 3, w // 3 : 2 * w // 3].std())


def capture(
    preset: Path, seconds: float = 14.0, every: float = 0.5, size: tuple[int, int] = (1920, 1080), settle_s: float = 4.0
) -> tuple[np.ndarray, dict[str, Any], list[np.ndarray]]:
    """Run ``run.py live --preset PRESET --duration SECONDS`` fullscreen on a fresh Xvfb and grab the screen.

    Returns:
        (the frame with the best :func:`face_score`, uint8 [H, W, 3] RGB; the live report; every frame grabbed
        after ``settle_s`` seconds, uint8 [H, W, 3] each).

    Raises:
        RuntimeError: Xvfb missing, or ``run.py live`` failed (its output in the message).
    """
    with Xvfb(*size) as x, tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "DISPLAY": x.display, "SDL_VIDEODRIVER": "x11", "SDL_AUDIODRIVER": "dummy"}
        report = Path(tmp) / "report.json"
        cmd = [sys.executable, str(ROOT / "run.py"), "live", "--preset", str(preset), "--duration", str(seconds),
               "--report", str(report)]  # fmt: skip
        frames: list = []
        stop = threading.Event()
        proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        grabber = threading.Thread(target=_grab, args=(x.display, size, every, stop, frames), daemon=True)
        started = time.monotonic()
        grabber.start()
        try:
            output, _ = proc.communicate(timeout=seconds + 120)
        finally:
            stop.set()
            if proc.poll() is None:
                proc.kill()
            grabber.join(10)
        if proc.returncode != 0 or not report.is_file():
            raise RuntimeError(f"run.py live failed (exit {proc.returncode}):\n{output[-3000:]}")
        kept = [f for t, f in frames if t - started >= settle_s]
        if not kept:
            raise RuntimeError("no screen frames were grabbed")
        best = max(kept, key=face_score)
        return best, json.loads(report.read_text()), kept


def main(argv: list[str] | None = None) -> int:
    import cv2

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seconds", type=float, default=14.0)
    parser.add_argument("--width", type=int, default=1920)
    parser.add_argument("--height", type=int, default=1080)
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    size = (args.width, args.height)
    runs = {
        "before": {"scenes": {"portrait": {"fit": "fill"}}, "engine": {"super_resolution": ""}},
        "after": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        for name, sections in runs.items():
            preset = write_preset(Path(tmp) / f"{name}.yaml", **sections)
            best, report, _ = capture(preset, args.seconds, size=size)
            bgr = cv2.cvtColor(best, cv2.COLOR_RGB2BGR)
            half = cv2.resize(bgr, (args.width // 2, args.height // 2), interpolation=cv2.INTER_AREA)
            cv2.imwrite(str(args.out / f"{name}.png"), half)
            y, x = (args.height - 480) // 2, (args.width - 480) // 2
            cv2.imwrite(str(args.out / f"{name}-detail.png"), bgr[y : y + 480, x : x + 480])
            print(f"{name}: fps {report['fps']['mean']}, frame p99 {report['frame_ms']['p99']} ms, "
                  f"[{report['generator']['backend']}] -> {args.out / (name + '.png')}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
