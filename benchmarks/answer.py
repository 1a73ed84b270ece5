"""Answer latency: from the frame that detects the end of the visitor's utterance to the answer's first sample.

``python run.py bench --only answer``. The chain (:mod:`installation.voice_stage`, :mod:`installation.sound`):

1. ``arm``: on the frame whose voice gate closes, :class:`~installation.voice_stage.VoiceStage` hands the newest
   generated voice (made while they spoke: no generation now) to :meth:`SoundEngine.answer`, which resamples it
   to the server rate, writes the answer table and restarts its reader: timed in-process, main thread, 1 s at 16 kHz;
2. ``pipe``: with the sound server in its own process (the default, ``SoundConfig.isolate``), the clip crosses a
   socket pair as a pickled message: timed as half a round trip of that message to a child process and back;
3. ``buffer``: the reader starts at the next pyo buffer (``buffer_size / sample_rate``; 512 / 48 kHz in the
   gallery preset): measured with pyo's offline server as the time from the requested time to the first non-zero
   output sample. Offline, the request waits for the next control tick, which falls on a buffer edge, so this
   figure is up to two buffers; live, ``answer`` is called from the main thread at any time and the wait is one;
4. the sound card's own output latency, which no stand-in here has (typically one or two more buffers).

Rows: each part's median and p99 over ``--answer-repeats`` repetitions, and their sum (without part 4).
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import time
from typing import Any

import numpy as np


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--answer-repeats", type=int, default=50, help="repetitions per part (default %(default)s)")


def _pipe_half_round_trip(clip: np.ndarray, repeats: int) -> list[float]:
    """Seconds for half a round trip of ``("answer", clip, 16000)`` through a socket pair to a child and back."""
    from multiprocessing.connection import Connection

    ours, theirs = socket.socketpair()
    code = ("import sys; from multiprocessing.connection import Connection; c = Connection(int(sys.argv[1]))\n"
            "while True:\n m = c.recv()\n if m is None: break\n c.send(m)\n")  # fmt: skip
    child = subprocess.Popen([sys.executable, "-c", code, str(theirs.fileno())], pass_fds=(theirs.fileno(),))
    theirs.close()
    conn = Connection(ours.detach())
    times = []
    try:
        for _ in range(repeats + 3):
            t = time.perf_counter()
            conn.send(("answer", clip, 16000))
            conn.recv()
            times.append((time.perf_counter() - t) / 2)
        conn.send(None)
    finally:
        child.wait(5)
        conn.close()
    return times[3:]


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Time the parts (see the module docstring); returns one row per part and the total."""
    from installation.sound import SoundConfig, SoundEngine, render_offline
    from installation.voice_stage import VoiceStage

    repeats = max(3, int(getattr(args, "answer_repeats", 50)))
    rng = np.random.default_rng(0)
    clip = (0.3 * rng.standard_normal(16000)).astype(np.float32)
    rows: list[dict[str, Any]] = []

    # 1. arm: VoiceStage.step + SoundEngine.answer, in-process (offline server as the stand-in for the device)
    arm: list[float] = []

    def driver(engine: SoundEngine, t: float) -> None:
        stage = VoiceStage(16000)
        stage.offer(clip)
        stage.step(t, True, "answer")
        started = time.perf_counter()
        action = stage.step(t, False, "answer")
        assert action is not None
        action.apply(engine)
        arm.append(time.perf_counter() - started)

    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        cfg = SoundConfig(output="offline", sample_rate=48000, buffer_size=512, record_path=f"{folder}/a.wav",
                          duration_s=repeats / 20)  # fmt: skip
        SoundEngine(cfg, voice_rate=16000, driver=driver, driver_rate_hz=20).start().stop()

    # 2. pipe
    pipe = _pipe_half_round_trip(clip, repeats)

    # 3. buffer: answer requested at t; first non-zero sample of the output after t
    buffer_ms = []
    for k in range(min(repeats, 10)):
        t_req = 0.2 + 0.0137 * k
        out = render_offline(np.zeros(16000, np.float32), 16000, 0.6, {"sound/mix": 0.0}, sample_rate=48000,
                             channels=1, control_rate_hz=1000.0, buffer_size=512,
                             voice_actions=[(t_req, "answer", clip, 16000)])  # fmt: skip
        onset = int(np.flatnonzero(np.abs(out[:, 0]) > 1e-6)[0])
        buffer_ms.append(1000.0 * (onset / 48000 - t_req))

    def row(part: str, values_ms: list[float], note: str) -> dict[str, Any]:
        v = np.asarray(values_ms)
        return {"part": part, "p50_ms": float(np.median(v)), "p99_ms": float(np.percentile(v, 99)),
                "max_ms": float(v.max()), "n": len(v), "note": note}  # fmt: skip

    rows.append(row("arm (VoiceStage + SoundEngine.answer, 1 s at 16 kHz)", [1000 * a for a in arm], "main thread"))
    rows.append(row("pipe to the sound process (half round trip)", [1000 * p for p in pipe], "socket pair, pickle"))
    rows.append(row("next pyo buffer (offline server, 512 at 48 kHz)", buffer_ms,
                    "request -> first sample; offline control ticks fall on buffer edges, so up to 2 buffers"))  # fmt: skip
    total = float(np.percentile([1000 * a for a in arm], 99) + np.percentile([1000 * p for p in pipe], 99)
                  + max(buffer_ms))  # fmt: skip
    rows.append({"part": "total (p99 + p99 + max), without the sound card", "p50_ms": None, "p99_ms": total,
                 "max_ms": None, "n": None, "note": "target: <= 100 ms"})  # fmt: skip
    return rows
