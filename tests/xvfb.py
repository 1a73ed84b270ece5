"""A real X server for tests and screenshots: Xvfb with its framebuffer in a file (``-fbdir``), read as XWD.

    with Xvfb(1920, 1080) as x:
        subprocess.run([...], env={**os.environ, **x.env})   # SDL_VIDEODRIVER=x11, DISPLAY=:N
        rgb = x.screenshot()                                   # uint8 [1080, 1920, 3], what the screen shows

``Xvfb.available()`` says whether the ``Xvfb`` binary is installed (``apt-get install xvfb``); tests skip
without it. The screenshot is the X server's own framebuffer (what a monitor would scan out), not the
program's canvas.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np


class Xvfb:
    """Start ``Xvfb :N -screen 0 WxHx24 -fbdir DIR`` on a free display number; stopped on exit.

    Attributes:
        display: ``":N"``. env: environment additions for a client (``DISPLAY``, ``SDL_VIDEODRIVER=x11``).
    """

    def __init__(self, width: int = 1920, height: int = 1080) -> None:
        self.width, self.height = int(width), int(height)
        self.display = ""
        self.env: dict[str, str] = {}
        self._proc: subprocess.Popen | None = None
        self._dir: tempfile.TemporaryDirectory | None = None

    @staticmethod
    def available() -> bool:
        """Whether the ``Xvfb`` binary is on PATH."""
        return shutil.which("Xvfb") is not None

    def __enter__(self) -> Xvfb:
        self._dir = tempfile.TemporaryDirectory(prefix="avgan-xvfb-")
        for n in range(90, 200):
            if Path(f"/tmp/.X{n}-lock").exists() or Path(f"/tmp/.X11-unix/X{n}").exists():
                continue
            proc = subprocess.Popen(
                ["Xvfb", f":{n}", "-screen", "0", f"{self.width}x{self.height}x24", "-fbdir", self._dir.name,
                 "-nolisten", "tcp"],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )  # fmt: skip
            deadline = time.monotonic() + 10.0
            while time.monotonic() < deadline and proc.poll() is None:
                if Path(f"/tmp/.X11-unix/X{n}").exists() and self._fb.exists():
                    self._proc, self.display = proc, f":{n}"
                    self.env = {"DISPLAY": self.display, "SDL_VIDEODRIVER": "x11"}
                    return self
                time.sleep(0.05)
            proc.kill()
            proc.wait()
        raise RuntimeError("could not start Xvfb on any display :90-:199")

    @property
    def _fb(self) -> Path:
        assert self._dir is not None
        return Path(self._dir.name) / "Xvfb_screen0"

    def screenshot(self) -> np.ndarray:
        """The screen now: uint8 [height, width, 3] RGB, from the XWD framebuffer file."""
        data = self._fb.read_bytes()
        header = np.frombuffer(data[:100], ">u4")
        header_size, depth, width, height = int(header[0]), int(header[3]), int(header[4]), int(header[5])
        byte_order, bits_per_pixel, bytes_per_line, ncolors = (int(header[i]) for i in (7, 11, 12, 19))
        if depth != 24 or bits_per_pixel != 32:
            raise RuntimeError(f"unexpected XWD format: depth {depth}, {bits_per_pixel} bits per pixel")
        offset = header_size + 12 * ncolors
        rows = np.frombuffer(data, np.uint8, bytes_per_line * height, offset).reshape(height, bytes_per_line)
        pixels = rows[:, : 4 * width].reshape(height, width, 4)
        # LSB first: B, G, R, X in memory (the masks say red 0xff0000); MSB first: X, R, G, B
        rgb = pixels[..., 2::-1] if byte_order == 0 else pixels[..., 1:4]
        return np.ascontiguousarray(rgb)

    def __exit__(self, *exc: object) -> None:
        if self._proc is not None:
            self._proc.terminate()
            try:
                self._proc.wait(5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        if self._dir is not None:
            self._dir.cleanup()


def run_with_screenshots(
    x: Xvfb, argv: list[str], every_s: float = 0.5, timeout_s: float = 120.0, cwd: str | os.PathLike | None = None
) -> tuple[subprocess.CompletedProcess, list[tuple[float, np.ndarray]]]:
    """Run ``argv`` on the X server ``x``; screenshot every ``every_s`` while it runs.

    Returns:
        (the finished process with its stdout/stderr text, [(seconds since start, uint8 [H, W, 3]), ...]).
    """
    env = {**os.environ, **x.env}
    started = time.monotonic()
    proc = subprocess.Popen(argv, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    shots: list[tuple[float, np.ndarray]] = []
    while proc.poll() is None and time.monotonic() - started < timeout_s:
        time.sleep(every_s)
        shots.append((time.monotonic() - started, x.screenshot()))
    if proc.poll() is None:
        proc.kill()
    out, err = proc.communicate()
    return subprocess.CompletedProcess(argv, proc.returncode, out, err), shots
