"""Screenshots of the live installation's idle state, before and after the attract state (issue 24, item 3).

    python scripts/make_idle_screenshots.py [--out docs] [--width 960]

Runs ``run.py live`` with the shipped model fullscreen on a real X server (Xvfb, 1920x1080), the demo clip's
first 2 s as microphone and then silence, twice: with ``attract.enabled: false`` (what the installation did
before: the last face fades to the dark background and stays) and with the gallery preset's attract settings.
The screen is read from the X server's framebuffer 10 s after the voice stopped and written, scaled to
``--width`` px, as ``idle_before.png`` and ``idle_after.png``; their mean brightness is printed.
Needs ``Xvfb`` (``apt-get install xvfb``).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import soundfile as sf

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from engine.audio import load_audio  # noqa: E402
from installation.presets import load_preset  # noqa: E402
from tests.xvfb import Xvfb  # noqa: E402

RATE = 16000
VOICE_S, AFTER_S = 2.0, 10.0


def shot(x: Xvfb, preset: Path, clip: Path) -> np.ndarray:
    """The X server's screen ``AFTER_S`` seconds after the voice stopped (the live loop's clock starts once the
    model has loaded: the report's first write tells when)."""
    report = preset.with_suffix(".json")
    argv = [sys.executable, "run.py", "live", "--preset", str(preset), "--input", str(clip), "--duration",
            str(VOICE_S + AFTER_S + 2.0), "--report", str(report)]  # fmt: skip
    proc = subprocess.Popen(argv, cwd=ROOT, env={**os.environ, **x.env})
    try:
        deadline = time.monotonic() + 60.0
        while not report.exists() and time.monotonic() < deadline:  # written at the loop's start
            time.sleep(0.05)
        time.sleep(VOICE_S + AFTER_S)
        return x.screenshot()
    finally:
        proc.wait(60)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs")
    parser.add_argument("--width", type=int, default=960)
    args = parser.parse_args()
    if not Xvfb.available():
        print("error: Xvfb is not installed (apt-get install xvfb)", file=sys.stderr)
        return 2
    attract = load_preset("gallery").attract
    with tempfile.TemporaryDirectory() as tmp, Xvfb(1920, 1080) as x:
        folder = Path(tmp)
        voice = load_audio(ROOT / "presets" / "demo" / "demo_speech.flac", RATE)[: int(VOICE_S * RATE)]
        clip = folder / "voice.wav"
        sf.write(str(clip), np.concatenate([voice, np.zeros(int(30 * RATE), np.float32)]), RATE)
        for name, section in (
            ("before", "attract: {enabled: false}"),
            ("after", f"attract: {{after_s: {attract.after_s}, brightness: {attract.brightness}, "
                      f"prompt: {attract.prompt!r}}}"),
        ):  # fmt: skip
            preset = folder / f"{name}.yaml"
            preset.write_text(
                f"extends: {ROOT / 'presets' / 'headless.yaml'}\n"
                "display: {fullscreen: true, size: [1920, 1080]}\n"
                "input: {loop: false}\nosc: {enabled: false}\nparams: {overlay: false}\n"
                "generation: {gen_fps: 10}\n" + section + "\n"
            )
            screen = shot(x, preset, clip)
            height = round(args.width * screen.shape[0] / screen.shape[1])
            small = cv2.resize(screen, (args.width, height), interpolation=cv2.INTER_AREA)
            path = args.out / f"idle_{name}.png"
            cv2.imwrite(str(path), cv2.cvtColor(small, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_PNG_COMPRESSION, 9])
            print(f"{path.relative_to(ROOT)}: mean brightness {screen.mean():.1f} of 255 "
                  f"({AFTER_S:.0f} s after the voice stopped)")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
