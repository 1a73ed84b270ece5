"""Offline render speed: real-time factor (input seconds / wall seconds) of ``run.py render``.

Renders a speech clip at 512x512, 30 fps through :func:`installation.render.render` (real PyAV decode,
VAD, batched generator, scene, H.264 + AAC encode) with the model loaded once beforehand, so
the figure is the steady rendering speed (model loading, ~1-3 s, is reported separately).

The clip: real speech from ``../shared/data/wav2pix/train`` (1 s snippets of both speakers,
alternating, with 0.25 s pauses between every fourth snippet), or, without that data, the
repository's ``presets/demo/demo_speech.flac`` repeated.

Cases (``--render-cases``):

* ``default``: the command's defaults (generation at 10 Hz within voiced segments, as live, crossfading in
  between; x264 ``ultrafast``);
* ``every-frame``: a generated image for every output frame (``--gen-fps 0``);
* ``veryfast``: x264 ``veryfast`` (smaller files, slower encode);
* ``silence``: a silent clip of the same length: no generation, the floor set by draw + encode.

Per row: wall seconds, real-time factor, CPU seconds of the whole process (all threads; unlike
wall time, hardly affected by other processes' load), images generated, and milliseconds per stage
(generator per image, computed in a worker thread while the main thread draws and encodes;
main-thread waits for it, scene draw, H.264 encode per frame (in the output thread, beside the drawing) and the
main thread's waits for the output thread; other = decode, VAD, loop).
With ``--render-repeats R`` the cases take turns R times; each row is the case's median render
(by real-time factor) and ``rtf_range`` the spread of its R renders.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from engine.configs import finite_float

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "wav2pix" / "train"
DEMO = ROOT / "presets" / "demo" / "demo_speech.flac"
SIZE, FPS = 512, 30
CASES = ("default", "every-frame", "veryfast", "silence")

COLUMNS = (
    "case",
    "input_s",
    "frames",
    "generated",
    "wall_s",
    "rtf",
    "rtf_range",
    "cpu_s",
    "gen_ms_per_image",
    "gen_wait_ms_per_frame",
    "draw_ms_per_frame",
    "encode_ms_per_frame",
    "encode_wait_ms_per_frame",
    "other_ms_per_frame",
    "backend",
    "note",
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Render-benchmark options (``--bundle`` is shared, added by :mod:`benchmarks.cli`)."""
    parser.add_argument(
        "--render-seconds", type=finite_float, default=30.0, help="length of the speech clip, s (default %(default)s)"
    )
    parser.add_argument(
        "--render-cases", default=",".join(CASES), help=f"comma-separated, from {', '.join(CASES)} (default: all)"
    )
    parser.add_argument(
        "--render-repeats",
        type=int,
        default=1,
        help="render every case this many times, cases taking turns; each row is the case's median render, "
        "rtf_range the spread (default %(default)s)",
    )


def speech_clip(seconds: float, sample_rate: int = 16000) -> tuple[np.ndarray, str]:
    """About ``seconds`` of speech, float32 [samples] at ``sample_rate`` Hz, and a description of its source."""
    from engine.audio import load_audio

    files = sorted(DATA.glob("*/preprocessed_frame_*.flac")) if DATA.is_dir() else []
    target = int(seconds * sample_rate)
    parts: list[np.ndarray] = []
    if files:
        speakers = sorted({f.parent.name for f in files})
        by_speaker = [[f for f in files if f.parent.name == s] for s in speakers]
        pause = np.zeros(int(0.25 * sample_rate), np.float32)
        k = 0
        while sum(map(len, parts)) < target:
            group = by_speaker[k % len(by_speaker)]
            parts.append(load_audio(group[(k * 37) % len(group)], sample_rate))
            if k % 4 == 3:
                parts.append(pause)
            k += 1
        source = f"{k} real 1 s speech snippets from {DATA}"
    else:
        demo = load_audio(DEMO, sample_rate)
        parts = [demo] * (target // len(demo) + 1)
        source = f"{DEMO.name} repeated (no {DATA})"
    return np.concatenate(parts)[:target], source


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Time the render cases; one row each (see :data:`COLUMNS`)."""
    import soundfile as sf

    from engine.generator import Generator
    from installation.render import DEFAULT_BUNDLE, PRESETS, generator_threads, render

    seconds = float(getattr(args, "render_seconds", 30.0))
    cases = [c.strip() for c in str(getattr(args, "render_cases", ",".join(CASES))).split(",") if c.strip()]
    unknown = [c for c in cases if c not in CASES]
    if unknown:
        from engine.errors import UserError

        raise UserError(f"--render-cases: unknown case {unknown[0]!r} (choose from {', '.join(CASES)})")
    repeats = int(getattr(args, "render_repeats", 1))
    if repeats < 1:
        from engine.errors import UserError

        raise UserError(f"--render-repeats: expected >= 1, got {repeats}")
    bundle = Path(getattr(args, "bundle", None) or DEFAULT_BUNDLE)
    started = time.perf_counter()
    gen = Generator(bundle, backend="auto", max_batch=32, threads=generator_threads())  # as run.py render loads it
    load_s = time.perf_counter() - started
    runs: dict[str, list[dict[str, Any]]] = {case: [] for case in cases}
    source = ""
    try:
        audio, source = speech_clip(seconds, gen.sample_rate)
        with tempfile.TemporaryDirectory(prefix="avgan-bench-render-") as tmp:
            speech = Path(tmp) / "speech.flac"
            silence = Path(tmp) / "silence.flac"
            sf.write(str(speech), audio, gen.sample_rate)
            sf.write(str(silence), np.zeros_like(audio), gen.sample_rate)
            for case in [c for _ in range(repeats) for c in cases]:
                params = PRESETS["default"]
                kwargs: dict[str, Any] = {}
                if case == "every-frame":  # --gen-fps 0: a generated image for every output frame
                    from dataclasses import replace

                    params = replace(params, gen_fps=0.0)
                elif case == "veryfast":
                    kwargs["x264_preset"] = "veryfast"
                cpu = time.process_time()
                stats = render(
                    silence if case == "silence" else speech,
                    Path(tmp) / f"{case}.mp4",
                    generator=gen,
                    size=SIZE,
                    fps=FPS,
                    params=params,
                    progress=False,
                    **kwargs,
                )
                cpu = time.process_time() - cpu  # all threads of this process: independent of other processes' load
                t = stats.timings
                # Main-thread stages; "generate" and "encode" / "audio" run in worker threads, overlapped (the "_wait"
                # timings are the main thread's waits for them).
                other = stats.wall_s - sum(t.get(k, 0.0) for k in ("load", "generate_wait", "draw", "encode_wait"))
                runs[case].append(
                    {
                        "case": case,
                        "input_s": round(stats.duration_s, 2),
                        "frames": stats.frames,
                        "generated": stats.generated,
                        "wall_s": round(stats.wall_s, 3),
                        "rtf": round(stats.realtime_factor, 2),
                        "cpu_s": round(cpu, 2),
                        "gen_ms_per_image": round(1000 * t.get("generate", 0.0) / stats.generated, 2)
                        if stats.generated
                        else None,
                        "gen_wait_ms_per_frame": round(1000 * t.get("generate_wait", 0.0) / stats.frames, 3),
                        "draw_ms_per_frame": round(1000 * t.get("draw", 0.0) / stats.frames, 3),
                        "encode_ms_per_frame": round(1000 * t.get("encode", 0.0) / stats.frames, 3),
                        "encode_wait_ms_per_frame": round(1000 * t.get("encode_wait", 0.0) / stats.frames, 3),
                        "other_ms_per_frame": round(1000 * other / stats.frames, 3),
                        "backend": stats.backend,
                    }
                )
                log.info("render benchmark %s: %.1fx real time", case, stats.realtime_factor)
    finally:
        gen.close()
    rows = []
    for done in runs.values():
        row = sorted(done, key=lambda r: r["rtf"])[(len(done) - 1) // 2]  # the median render (lower middle)
        if repeats > 1:
            rtfs = [r["rtf"] for r in done]
            row = {**row, "rtf_range": f"{min(rtfs):.1f}-{max(rtfs):.1f}", "rtf_per_repeat": rtfs}
        row["note"] = (
            f"{SIZE}x{SIZE} {FPS} fps, bundle {bundle.name}, {source}; model load {load_s:.1f} s"
            + (f"; median of {repeats} renders" if repeats > 1 else "")
            if not rows
            else None
        )
        rows.append(row)
    return rows
