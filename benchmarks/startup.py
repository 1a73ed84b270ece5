"""Whole-process render speed, start-up included: ``python run.py render`` of a 60 s 44.1 kHz stereo MP3.

What a user waits for: a new Python process imports the code, loads the bundle (graph rewrite included), decodes
the MP3, generates, draws and encodes 512x512 30 fps H.264 (the MP3 audio copied). The clip is real speech (as
:func:`benchmarks.render.speech_clip`), resampled to 44.1 kHz, the second channel at 0.9x, encoded at 128 kb/s with
PyAV. Each checkout in ``--startup-checkouts`` (default: this one) renders it ``--startup-repeats`` times, the
checkouts taking turns, so an older checkout can be measured side by side with this one
(``git worktree add /tmp/base <commit>``, then ``--startup-checkouts .,/tmp/base``; every checkout runs with this
checkout's Python and, unless ``--bundle`` names one, its own default bundle). Per checkout: the median wall time and real-time factor (input seconds / wall seconds) with
their range, and the median seconds until ``render`` has loaded the model (its ``load`` timing, from the log).
The first render of each checkout is a warm-up (disk cache, ONNX Runtime's rewritten-graph cache) and not counted.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SECONDS, RATE, SIZE, FPS = 60.0, 44100, 512, 30


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Start-up benchmark options."""
    parser.add_argument(
        "--startup-checkouts", default=".", metavar="DIRS",
        help="comma-separated repository checkouts to time side by side (default: this one)",
    )  # fmt: skip
    parser.add_argument("--startup-repeats", type=int, default=3, help="timed renders per checkout (default 3)")


def write_mp3(path: Path, mono: np.ndarray, rate: int) -> Path:
    """Write float32 mono samples as a stereo 128 kb/s MP3 (LAME, through PyAV; the second channel at 0.9x)."""
    import av

    stereo = np.stack([mono, 0.9 * mono]).astype(np.float32)
    with av.open(str(path), "w") as out:
        stream = out.add_stream("mp3", rate=rate, layout="stereo")
        stream.bit_rate = 128_000
        frame = av.AudioFrame.from_ndarray(stereo, format="fltp", layout="stereo")
        frame.sample_rate = rate
        out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return path


def write_clip(path: Path) -> str:
    """Write the 60 s 44.1 kHz stereo MP3 to ``path``; returns a description of its source."""
    from benchmarks.render import speech_clip

    mono, source = speech_clip(SECONDS, RATE)
    write_mp3(path, mono, RATE)
    return source


def render_once(checkout: Path, clip: Path, out: Path, bundle: Path | None) -> tuple[float, float | None]:
    """(wall seconds of the whole process, seconds its render spent loading the model or None). ``bundle`` None:
    the checkout's own default bundle."""
    cmd = [sys.executable, "run.py", "-v", "render", str(clip), "-o", str(out), "--size", str(SIZE), "--fps", str(FPS),
           "--no-progress"]  # fmt: skip
    if bundle is not None:
        cmd += ["--bundle", str(bundle)]
    env = dict(os.environ, SDL_VIDEODRIVER="dummy", SDL_AUDIODRIVER="dummy")
    started = time.perf_counter()
    done = subprocess.run(cmd, cwd=checkout, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"{checkout}: run.py render failed ({done.returncode}): {done.stderr[-800:]}")
    found = re.search(r"\bload ([0-9.]+) ?s\b", done.stdout + done.stderr)
    return wall, float(found.group(1)) if found else None


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    """One row per checkout (see the module docstring)."""
    from engine.errors import UserError

    checkouts = [Path(c).resolve() for c in str(getattr(args, "startup_checkouts", ".")).split(",") if c.strip()]
    repeats = int(getattr(args, "startup_repeats", 3))
    if repeats < 1:
        raise UserError(f"--startup-repeats: expected >= 1, got {repeats}")
    for c in checkouts:
        if not (c / "run.py").is_file():
            raise UserError(f"--startup-checkouts: {c} has no run.py")
    bundle = Path(args.bundle).resolve() if getattr(args, "bundle", None) else None  # else each checkout's default
    times: dict[Path, list[tuple[float, float | None]]] = {c: [] for c in checkouts}
    with tempfile.TemporaryDirectory(prefix="avgan-bench-startup-") as tmp:
        clip = Path(tmp) / "speech60.mp3"
        source = write_clip(clip)
        for c in checkouts:  # warm-up
            render_once(c, clip, Path(tmp) / "warm.mp4", bundle)
        for _ in range(repeats):
            for c in checkouts:
                times[c].append(render_once(c, clip, Path(tmp) / "out.mp4", bundle))
    rows = []
    for c, runs in times.items():
        walls = np.asarray([w for w, _ in runs])
        loads = [s for _, s in runs if s is not None]
        rows.append({
            "checkout": str(c),
            "wall_s": round(float(np.median(walls)), 2),
            "wall_range_s": f"{walls.min():.2f}-{walls.max():.2f}",
            "rtf": round(SECONDS / float(np.median(walls)), 2),
            "rtf_range": f"{SECONDS / walls.max():.2f}-{SECONDS / walls.min():.2f}",
            "model_load_s": round(float(np.median(loads)), 2) if loads else None,
            "note": f"whole process, {SECONDS:.0f} s {RATE} Hz stereo MP3 ({source}) -> {SIZE}x{SIZE} {FPS} fps, "
            f"bundle {bundle or 'the checkout default'}, median of {repeats} after a warm-up, checkouts taking turns",
        })  # fmt: skip
    return rows
