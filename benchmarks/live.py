"""Live installation: sustained frame rate, audio-to-photon latency, memory growth, OSC flood.

``python run.py bench --only live [--bundle B] [--live-seconds 20] [--live-cases fps,onset,speaker,osc]``

Everything runs the real :class:`installation.live.LiveLoop` with SDL's dummy video driver on a
1920x1080 canvas, the real-time :class:`~installation.audio_in.FileInput` standing in for the microphone,
and the 64 px default bundle (``presets/models/wav2pix-64``, else ``--bundle``) loaded once with the
engine's default backend. "Photon" here is the return of ``pygame.display.flip()`` on the dummy driver: a
real screen adds its scan-out (vsync wait, panel latency; typically 8-30 ms) and a real microphone its
ADC/driver buffering (typically 3-20 ms), neither measurable on a machine without them.

Cases:

* ``fps``: one row per scene (portrait, grid with n = 2, morph), ``--live-seconds`` each, real speech
  (1 s snippets of both speakers of ``../shared/data/wav2pix/train``, else the demo clip): frames,
  fps (mean, and 1 / p50 frame time), frame time p50/p99/max (interval between flips), main-thread work
  per frame p50/p99 (wall) and p99 in main-thread CPU time (the difference is time spent waiting for a
  core: other processes' load), generator call p50/p99, process CPU, RSS at start/after warm-up/end and its growth.
  ``--live-seconds 1800`` is the 30-minute memory run.
* ``sr``: the gallery's picture: portrait and morph in ``fit`` mode with the face super-resolution stage
  (``presets/models/face-sr-4x``, else ``--sr-bundle``: 64 -> 256 px after every single-face generation, in the
  generator thread, :class:`engine.superres.SuperResolved`), ``--live-seconds`` each, the same speech as ``fps``;
  compare with the ``fps`` rows of the same run (``fill``, the 64 px face upscaled by OpenCV).
* ``onset``: a synthetic file, 1.6 s of near-silence (-70 dBFS noise) then a clap (a 30 ms burst of
  exponentially decaying white noise peaking at -3 dBFS), looping; per scene, the time from each clap
  (its first sample, on the FileInput's real-time clock: :meth:`FileInput.file_time`) to the first
  presented frame whose picture changes (mean absolute difference to the previous frame, over every
  16th pixel, above ``REACT_LEVELS`` grey levels; the idle picture changes by < 1 level per frame).
  The first clap is skipped (nothing on screen yet, warm-up).
* ``speaker``: 4 s of speaker A then 4 s of speaker B (real 1 s clips, consecutive frames of the
  dataset), looping; time from each change to the first frame whose face has changed identity.
  Identity proxy (no face embedding here): the noise input is held fixed (a wrapper replaces it with one
  seeded vector), so the face depends only on the voice; reference faces A and B are the generator's mean
  output over windows lying wholly inside each speaker's part; a presented frame (portrait scene,
  downsampled to the face's visible 64 x 36 band) "is" the speaker whose reference is nearer (mean
  absolute difference). A change is timed only if, in the second before it, at least 80 % of the frames
  were recognised as the old speaker; its latency is the first frame after it that is recognised as the
  new speaker and stays so (>= 80 % of the next 0.3 s). ``separation`` = distance between the references /
  mean within-speaker spread (below ~1 the proxy is noise: e.g. an untrained bundle). Expect ~0.5-0.8 s:
  the generator listens to a whole second, so the new voice must fill about half of the window first.
* ``osc``: the grid scene while a separate process floods the OSC port with random bytes, truncated and
  malformed packets, NaN/inf floats, non-UTF-8 addresses and future-time-tagged bundles (about 2000
  packets/s) with a valid ``/avgan/grid/n`` (alternating 1 and 2) and ``/avgan/brightness`` every 50 ms:
  fps and frame times under flood (compare with the ``fps`` grid row), packets handled/rejected, whether
  the last valid values took effect, no crash. (Cycling n up to 4 instead measures the 16-face generator
  calls, ~90 ms each on 2 cores, rather than the flood.)

* ``gate``: the voice gate in a noisy room (issue 24), portrait scene, real time: 20 s of seeded pink noise at
  -34 dBFS RMS (nobody speaking), then the same noise with real speech (``speech_clip``, 12 s, scaled to an
  active speech level of -28 dBFS: the RMS over the frames the VAD finds voiced in the clean speech) starting
  after 5 s. Rows: seconds the gate was open in all and after the first 3 s of audio (noise row; target
  <= 1 s), live generator calls (attract faces not counted), and the share of the speech's *voiced* time
  (10 ms frames of the clean speech with a pitch: :func:`voiced_frames`, independent of the gate) with the
  gate open (speech row; target >= 80 %), and the noise floor the VAD settled on.

Targets (issue 4, this machine: 2 CPU cores): >= 55 fps sustained, p99 frame time <= 25 ms, onset-to-frame
<= 45 ms, RSS growth < 5 % over 30 minutes. The rows record the load average: the development machine is
shared, and frame-time tails follow its load.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from engine.configs import finite_float

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "wav2pix" / "train"
DEMO = ROOT / "presets" / "demo" / "demo_speech.flac"
DEFAULT_BUNDLE = ROOT / "presets" / "models" / "wav2pix-64"
DEFAULT_SR_BUNDLE = ROOT / "presets" / "models" / "face-sr-4x"
CASES = ("fps", "sr", "onset", "speaker", "osc", "gate")
SCENES = ("portrait", "grid", "morph")
WIDTH, HEIGHT = 1920, 1080
REACT_LEVELS = 2.0
"""Mean absolute frame-to-frame difference (grey levels) that counts as the picture reacting."""

COLUMNS = (
    "case",
    "scene",
    "seconds",
    "frames",
    "fps_mean",
    "fps_p50",
    "frame_p50_ms",
    "frame_p99_ms",
    "frame_max_ms",
    "work_p50_ms",
    "work_p99_ms",
    "work_cpu_p99_ms",
    "gen_p50_ms",
    "gen_p99_ms",
    "events",
    "latency_p50_ms",
    "latency_max_ms",
    "cpu_pct",
    "rss_start_mb",
    "rss_end_mb",
    "rss_growth_pct",
    "load_1m",
    "note",
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Live-benchmark options (``--bundle`` is shared, added by :mod:`benchmarks.cli`)."""
    parser.add_argument(
        "--live-seconds",
        type=finite_float,
        default=20.0,
        help="seconds per sustained-fps run (1800 for the 30-minute memory run; default %(default)s)",
    )
    parser.add_argument(
        "--live-cases", default=",".join(CASES), help=f"comma-separated, from {', '.join(CASES)} (default: all)"
    )
    parser.add_argument(
        "--live-scenes", default=",".join(SCENES), help="scenes for the fps and onset cases (default: all)"
    )
    parser.add_argument(
        "--sr-bundle", default=str(DEFAULT_SR_BUNDLE), help="super-resolution bundle of the sr case (default: %(default)s)"
    )


# -- inputs -----------------------------------------------------------------------------------------------


def _speaker_files() -> dict[str, list[Path]]:
    if not DATA.is_dir():
        return {}
    out: dict[str, list[Path]] = {}
    for d in sorted(p for p in DATA.iterdir() if p.is_dir()):
        files = sorted(d.glob("preprocessed_frame_*.flac"), key=lambda p: int(p.stem.rsplit("_", 1)[1]))
        if files:
            out[d.name] = files
    return out


def speech_clip(seconds: float, rate: int) -> tuple[np.ndarray, str]:
    """About ``seconds`` of real speech (alternating speakers' 1 s snippets), or the demo clip repeated."""
    from engine.audio import load_audio

    speakers = _speaker_files()
    target = int(seconds * rate)
    if len(speakers) >= 1:
        lists = list(speakers.values())
        parts, k = [], 0
        while sum(map(len, parts)) < target:
            files = lists[k % len(lists)]
            parts.append(load_audio(files[(k * 37) % len(files)], rate))
            k += 1
        return np.concatenate(parts)[:target], f"{k} 1 s snippets of {len(lists)} speakers"
    demo = load_audio(DEMO, rate)
    return np.tile(demo, target // len(demo) + 1)[:target], f"{DEMO.name} repeated"


def clap_clip(rate: int, silence_s: float = 1.6) -> tuple[np.ndarray, int]:
    """Near-silence then a clap: float32 [n], and the clap's first sample index."""
    rng = np.random.default_rng(7)
    n_sil, n_clap = int(silence_s * rate), int(0.03 * rate)
    x = (10 ** (-70 / 20) * rng.standard_normal(n_sil + n_clap)).astype(np.float32)
    env = np.exp(-np.arange(n_clap) / (0.006 * rate))
    burst = rng.standard_normal(n_clap) * env
    x[n_sil:] += (0.7 * burst / np.abs(burst).max()).astype(np.float32)
    return x, n_sil


def speaker_clip(rate: int, seconds_each: float = 4.0) -> tuple[np.ndarray, int, list[str]] | None:
    """Speaker A for ``seconds_each`` then speaker B (consecutive dataset snippets); ``None`` without data."""
    from engine.audio import load_audio

    speakers = _speaker_files()
    if len(speakers) < 2:
        return None
    names = list(speakers)[:2]
    n = int(seconds_each * rate)
    parts = []
    for name in names:
        files = speakers[name]
        start = len(files) // 3
        audio = np.concatenate([load_audio(f, rate) for f in files[start : start + int(seconds_each) + 1]])[:n]
        parts.append(np.pad(audio, (0, n - audio.shape[0])))
    return np.concatenate(parts).astype(np.float32), n, names


class FixedNoise:
    """A Generator wrapper that ignores the requested noise: one seeded vector for every face."""

    def __init__(self, generator: Any, seed: int = 0) -> None:
        self.generator = generator
        self.fixed = generator.make_noise(1, seed)
        for name in ("sample_rate", "window_samples", "noise_dim", "image_size", "backend_name", "max_batch"):
            setattr(self, name, getattr(generator, name))

    def make_noise(self, batch: int, seed: int | None = None) -> np.ndarray:
        return self.generator.make_noise(batch, seed)

    def __call__(self, audio: np.ndarray, noise: np.ndarray | None = None, seed: int | None = None) -> np.ndarray:
        return self.generator(audio, noise=np.repeat(self.fixed, audio.shape[0], axis=0))


def pink_noise(seconds: float, dbfs: float, rate: int, seed: int = 0) -> np.ndarray:
    """Seeded pink noise (power spectral density ~ 1/f: white Gaussian noise shaped in the frequency domain),
    ``dbfs`` RMS: float32 [seconds * rate]."""
    n = int(seconds * rate)
    spectrum = np.fft.rfft(np.random.default_rng(seed).standard_normal(n))
    f = np.fft.rfftfreq(n, 1 / rate)
    f[0] = f[1]
    x = np.fft.irfft(spectrum / np.sqrt(f), n)
    x -= x.mean()
    return (x / np.sqrt(np.mean(x**2)) * 10 ** (dbfs / 20)).astype(np.float32)


def voiced_frames(x: np.ndarray, rate: int, hop: int) -> np.ndarray:
    """bool [len(x) // hop]: frames of clean speech ``x`` with a pitch (:func:`installation.live.estimate_pitch` on
    the 40 ms around the frame's centre): the voiced time, found independently of the gate."""
    from installation.live import estimate_pitch

    half = round(0.02 * rate)
    out = np.zeros(len(x) // hop, bool)
    for j in range(out.shape[0]):
        c = j * hop + hop // 2
        if c >= half and c + half <= len(x):
            out[j] = estimate_pitch(x[c - half : c + half], rate) > 0
    return out


def at_active_level(speech: np.ndarray, rate: int, dbfs: float) -> np.ndarray:
    """``speech`` scaled so its active speech level (RMS over the frames the VAD finds voiced) is ``dbfs``."""
    from installation.vad import detect

    track = detect(speech, rate)
    active = 10 * np.log10(np.mean(10 ** (track.level_db[track.gate].astype(np.float64) / 10)))
    return (speech * 10 ** ((dbfs - active) / 20)).astype(np.float32)


# -- running --------------------------------------------------------------------------------------------------


def _config(seconds: float, scene: str, scene_settings: dict | None = None, **params: Any) -> Any:
    from installation.live import LiveConfig

    return LiveConfig(
        width=WIDTH,
        height=HEIGHT,
        fullscreen=False,
        vsync=False,
        fps=60.0,
        duration_s=seconds,
        report=None,
        scene_settings=scene_settings or {},
        params={"scene": scene, "overlay": False, **params},
    )


def _run(config: Any, generator: Any, audio: np.ndarray, on_frame: Any = None, osc: Any = None) -> tuple[Any, dict]:
    from installation.audio_in import FileInput
    from installation.live import LiveLoop

    source = FileInput(audio, int(generator.sample_rate))
    loop = LiveLoop(config, generator=generator, audio_input=source, on_frame=on_frame, osc=osc)
    cpu = time.process_time()
    report = loop.run()
    report["cpu_pct"] = round(100.0 * (time.process_time() - cpu) / max(report["wall_s"], 1e-9), 1)
    return loop, report


def _row(case: str, scene: str, report: dict, **extra: Any) -> dict[str, Any]:
    ft, wt, gt, rss = report["frame_ms"], report["work_ms"], report["generator"]["ms"], report["rss_mb"]
    row = {
        "case": case,
        "scene": scene,
        "seconds": report["wall_s"],
        "frames": report["frames"],
        "fps_mean": report["fps"]["mean"],
        "fps_p50": report["fps"]["p50"],
        "frame_p50_ms": ft["p50"],
        "frame_p99_ms": ft["p99"],
        "frame_max_ms": ft["max"],
        "work_p50_ms": wt["p50"],
        "work_p99_ms": wt["p99"],
        "work_cpu_p99_ms": report["work_cpu_ms"]["p99"],
        "gen_p50_ms": gt["p50"],
        "gen_p99_ms": gt["p99"],
        "cpu_pct": report.get("cpu_pct"),
        "rss_start_mb": rss["after_warmup"],
        "rss_end_mb": rss["end"],
        "rss_growth_pct": rss["growth_pct"],
        "load_1m": round(os.getloadavg()[0], 2),
        "backend": report["generator"]["backend"],
        "frame_errors": report["frame_errors"],
    }
    row.update(extra)
    return row


def bench_fps(generator: Any, seconds: float, scenes: list[str]) -> list[dict[str, Any]]:
    audio, source = speech_clip(60.0, int(generator.sample_rate))  # loops: a long run needs no longer clip
    rows = []
    for scene in scenes:
        _, report = _run(_config(seconds, scene, **({"grid/n": 2} if scene == "grid" else {})), generator, audio)
        series = report["rss_mb"]["series"]
        rows.append(_row("fps", scene, report, note=f"speech: {source}", rss_series_mb=series))
    return rows


def bench_sr(generator: Any, sr_bundle: Path, seconds: float, scenes: list[str]) -> list[dict[str, Any]]:
    """The ``sr`` case: portrait and morph (of ``scenes``) in fit mode with the super-resolution stage."""
    from engine.generator import Generator
    from engine.superres import SuperResolved

    audio, source = speech_clip(60.0, int(generator.sample_rate))
    upscaler = Generator(sr_bundle, backend="auto", max_batch=1, threads=1)  # as the live loop runs it
    both = SuperResolved(generator, upscaler, max_faces=1)
    rows = []
    try:
        for scene in [s for s in scenes if s in ("portrait", "morph")]:
            _, report = _run(_config(seconds, scene, {scene: {"fit": "fit"}}), both, audio)
            rows.append(_row("sr", scene, report, note=f"fit + {sr_bundle.name}; speech: {source}",
                             rss_series_mb=report["rss_mb"]["series"]))  # fmt: skip
    finally:
        upscaler.close()
    return rows


def _signature(canvas: np.ndarray) -> np.ndarray:
    return canvas[::16, ::16].astype(np.int16)


def bench_onset(generator: Any, scenes: list[str], claps: int = 8) -> list[dict[str, Any]]:
    rate = int(generator.sample_rate)
    clip, onset = clap_clip(rate)
    n = clip.shape[0]
    rows = []
    for scene in scenes:
        state: dict[str, Any] = {"prev": None, "frames": []}

        def on_frame(loop: Any, t: float, canvas: np.ndarray, state: dict[str, Any] = state) -> None:
            sig = _signature(canvas)
            if state["prev"] is not None:
                state["frames"].append((t, float(np.abs(sig - state["prev"]).mean())))
            state["prev"] = sig

        loop, report = _run(_config(claps * n / rate + 0.3, scene), generator, clip, on_frame)
        frames = state["frames"]
        latencies, idle = [], []
        for k in range(1, claps):
            t_on = loop.input.file_time(k * n + onset)
            later = [(t, d) for t, d in frames if t >= t_on]
            before = [d for t, d in frames if t_on - 0.5 <= t < t_on]
            idle.extend(before)
            hit = next((t for t, d in later if d > REACT_LEVELS), None)
            if hit is not None and hit - t_on < 1.0:
                latencies.append(1000.0 * (hit - t_on))
        note = f"{len(latencies)}/{claps - 1} claps seen; idle frame diff p99 {np.percentile(idle, 99):.2f} levels"
        rows.append(
            _row(
                "onset",
                scene,
                report,
                events=len(latencies),
                latency_p50_ms=round(float(np.median(latencies)), 1) if latencies else None,
                latency_max_ms=round(float(np.max(latencies)), 1) if latencies else None,
                latencies_ms=[round(v, 1) for v in latencies],
                note=note,
            )
        )
    return rows


def bench_speaker(generator: Any) -> list[dict[str, Any]]:
    import cv2

    rate = int(generator.sample_rate)
    made = speaker_clip(rate)
    if made is None:
        return [{"case": "speaker", "note": f"skipped: needs two speakers in {DATA}"}]
    clip, half, names = made
    fixed = FixedNoise(generator)
    window = int(generator.window_samples)
    # references: windows wholly inside each speaker's part
    refs, spreads = [], []
    for part in (0, 1):
        ends = np.linspace(part * half + window, (part + 1) * half, 8).astype(int)
        wins = np.stack([clip[e - window : e] for e in ends])
        faces = fixed(wins).astype(np.float32)[:, 14:50]  # the band a 16:9 cover shows
        ref = faces.mean(axis=0)
        refs.append(ref)
        spreads.append(float(np.abs(faces - ref).mean()))
    separation = float(np.abs(refs[0] - refs[1]).mean()) / max(1e-6, float(np.mean(spreads)))
    small = np.empty((36, 64, 3), np.uint8)  # cv2.resize keeps the source's dtype
    frames: list[tuple[float, int]] = []

    def on_frame(loop: Any, t: float, canvas: np.ndarray) -> None:
        if loop.image_index < 0:
            return
        cv2.resize(canvas[::4, ::4], (64, 36), dst=small, interpolation=cv2.INTER_AREA)
        seen = small.astype(np.float32)
        d = [float(np.abs(seen - r).mean()) for r in refs]
        frames.append((t, int(d[1] < d[0])))

    changes = 6
    seconds = changes * half / rate + 0.3
    loop, report = _run(_config(seconds, "portrait", **{"noise/walk_speed": 0.0}), fixed, clip, on_frame)
    latencies = []
    times = np.array([t for t, _ in frames])
    who = np.array([w for _, w in frames])
    for k in range(1, changes):
        t_change = loop.input.file_time(k * half)
        new = k % 2  # 1: A -> B
        before = who[(times >= t_change - 1.0) & (times < t_change)]
        if before.size == 0 or np.mean(before == new) > 0.2:
            continue  # the old face was not recognised as the old speaker: no change to time
        for i in np.flatnonzero((times >= t_change) & (times < t_change + 3.0) & (who == new)):
            after = who[(times >= times[i]) & (times < times[i] + 0.3)]
            if np.mean(after == new) >= 0.8:  # turned and stayed turned (not a flicker)
                latencies.append(1000.0 * (times[i] - t_change))
                break
    return [
        _row(
            "speaker",
            "portrait",
            report,
            events=len(latencies),
            latency_p50_ms=round(float(np.median(latencies)), 1) if latencies else None,
            latency_max_ms=round(float(np.max(latencies)), 1) if latencies else None,
            latencies_ms=[round(v, 1) for v in latencies],
            separation=round(separation, 2),
            note=f"{names[0]} <-> {names[1]}, fixed noise; {len(latencies)}/{changes - 1} changes timed; reference "
            f"separation {separation:.2f}"
            + (" (< 1: the proxy cannot tell the faces apart)" if separation < 1 else ""),
        )
    ]


FLOOD = r"""
import os, random, socket, struct, sys, time
host, port, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
rnd = random.Random(1)
def pad(b): return b + b"\0" * (4 - len(b) % 4)
def msg(addr, tags, *args):
    body = pad(addr.encode("utf-8", "surrogateescape")) + pad(("," + tags).encode())
    for t, a in zip(tags, args):
        body += struct.pack(">f", a) if t == "f" else struct.pack(">i", a) if t == "i" else pad(a.encode())
    return body
def bundle(when, *msgs):
    out = pad(b"#bundle") + struct.pack(">Q", when)
    for m in msgs: out += struct.pack(">i", len(m)) + m
    return out
bad = [
    lambda: os.urandom(rnd.randint(1, 200)),
    lambda: msg("/avgan/brightness", "f", float("nan")),
    lambda: msg("/avgan/brightness", "f", float("inf")),
    lambda: msg("/avgan/grid/n", "s", "lots"),
    lambda: msg("/avgan/nope", "i", 3),
    lambda: b"/avgan/\xff\xfe\0\0,f\0\0" + struct.pack(">f", 0.5),
    lambda: msg("/avgan/scene", "i", 99),
    lambda: msg("/avgan/grid/n", "f", 2.0)[:-3],
    lambda: bundle(((int(time.time()) + 2208988800 + 3600) << 32), msg("/avgan/blackout", "i", 1)),
    lambda: pad(b"#bundle") + b"\xff" * 12,
]
end = time.time() + seconds
k = valid = 0
next_valid = 0.0
while time.time() < end:
    now = time.time()
    if now >= next_valid:
        n = 1 + valid % 2
        sock.sendto(msg("/avgan/grid/n", "i", n), (host, port))
        sock.sendto(msg("/avgan/brightness", "f", 0.5 + 0.1 * (valid % 5)), (host, port))
        valid += 1
        next_valid = now + 0.05
        last = (n, 0.5 + 0.1 * ((valid - 1) % 5))
    sock.sendto(bad[k % len(bad)](), (host, port))
    k += 1
    if k % 20 == 0:
        time.sleep(0.01)
print(f"SENT {k} {valid} {last[0]} {last[1]:.3f}", flush=True)
"""


def bench_osc(generator: Any, seconds: float) -> list[dict[str, Any]]:
    try:
        from installation.osc import OscControl
        from installation.presets import OscConfig
    except ImportError as exc:
        return [{"case": "osc", "note": f"skipped: {exc}"}]
    from installation.live import make_parameters

    params = make_parameters({"scene": "grid", "overlay": False})
    control = OscControl(params, OscConfig(port=0, oscquery=False, feedback=True))
    audio, _ = speech_clip(60.0, int(generator.sample_rate))
    holder: dict[str, Any] = {}

    def on_frame(loop: Any, t: float, canvas: np.ndarray) -> None:
        if "proc" not in holder and loop.osc is not None and loop.osc.server is not None:
            host, port = loop.osc.server.address
            holder["proc"] = subprocess.Popen(
                [sys.executable, "-c", FLOOD, host, str(port), str(max(1.0, seconds - 2.0))],
                stdout=subprocess.PIPE,
                text=True,
            )

    from installation.audio_in import FileInput
    from installation.live import LiveLoop

    config = _config(seconds, "grid")
    loop = LiveLoop(
        config,
        generator=generator,
        audio_input=FileInput(audio, int(generator.sample_rate)),
        params=params,
        osc=control,
        on_frame=on_frame,
    )
    cpu = time.process_time()
    report = loop.run()
    report["cpu_pct"] = round(100.0 * (time.process_time() - cpu) / max(report["wall_s"], 1e-9), 1)
    out = ""
    child_cpu = 0.0
    if "proc" in holder:
        import resource

        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        out, _ = holder["proc"].communicate(timeout=30)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        child_cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    sent = next((line.split() for line in out.splitlines() if line.startswith("SENT")), None)
    osc = report["osc"]
    took = None
    if sent:
        took = (
            int(loop.params.get("grid/n")) == int(sent[3])
            and abs(loop.params.target("brightness") - float(sent[4])) < 1e-3
        )
    note = (
        f"flood: {sent[1] if sent else '?'} bad + {sent[2] if sent else '?'}x2 valid packets; "
        f"handled {osc.get('handled')}, rejected {osc.get('rejected_total')} {osc.get('rejected')}; "
        f"last valid values took effect: {took}; the sender process itself used "
        f"{100.0 * child_cpu / max(report['wall_s'], 1e-9):.0f} % of a core on the same machine"
    )
    return [_row("osc", "grid", report, events=osc.get("packets"), note=note, osc_took_effect=took)]


def bench_gate(generator: Any) -> list[dict[str, Any]]:
    from installation.audio_in import FileInput
    from installation.live import LiveLoop

    rate = int(generator.sample_rate)
    speech, source = speech_clip(12.0, rate)
    speech = at_active_level(speech, rate, -28.0)
    lead = 5.0
    mixed = pink_noise(lead + len(speech) / rate + 3.0, -34.0, rate, seed=2)
    mixed[int(lead * rate) : int(lead * rate) + len(speech)] += speech
    rows = []
    for name, audio in (("noise", pink_noise(20.0, -34.0, rate, seed=1)), ("speech+noise", mixed)):
        gates: list[np.ndarray] = []
        loop = LiveLoop(
            _config(len(audio) / rate, "portrait"), generator=generator, audio_input=FileInput(audio, rate, loop=False)
        )
        process = loop.vad.process

        def recording(samples: np.ndarray, process: Any = process, gates: list = gates) -> Any:
            frames = process(samples)
            gates.append(frames.gate)
            return frames

        loop.vad.process = recording  # type: ignore[method-assign]
        cpu = time.process_time()
        report = loop.run()
        report["cpu_pct"] = round(100.0 * (time.process_time() - cpu) / max(report["wall_s"], 1e-9), 1)
        gate = np.concatenate(gates) if gates else np.zeros(0, bool)
        frame_s = loop.vad.frame_seconds
        vad = report["vad"]
        live_calls = loop.worker.submitted - loop.attract.faces
        extra: dict[str, Any] = {
            "gate_open_s": vad["open_s"],
            "gate_open_after_3s_s": round(float(gate[int(3.0 / frame_s) :].sum() * frame_s), 2),
            "noise_floor_dbfs": vad["noise_floor_dbfs"],
            "live_generator_calls": live_calls,
        }
        note = f"pink noise -34 dBFS, {len(audio) / rate:.0f} s; gate open {extra['gate_open_s']} s in all, "
        note += f"{extra['gate_open_after_3s_s']} s after the first 3 s; {live_calls} live generator calls"
        if name == "speech+noise":
            voiced = np.zeros(len(gate), bool)
            v = voiced_frames(speech, rate, loop.vad.hop)
            start = int(lead * rate) // loop.vad.hop
            voiced[start : start + len(v)] = v[: max(0, len(gate) - start)]
            share = float(gate[voiced].mean()) if voiced.any() else float("nan")
            extra["voiced_open_pct"] = round(100.0 * share, 1)
            extra["voiced_s"] = round(float(voiced.sum() * frame_s), 2)
            note = (
                f"speech ({source}) at -28 dBFS active level over the noise from {lead:.0f} s: gate open for "
                f"{extra['voiced_open_pct']} % of {extra['voiced_s']} s voiced; {live_calls} live generator calls"
            )
        rows.append(_row("gate", name, report, note=note, **extra))
    return rows


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Run the selected live cases; one row per case and scene (see :data:`COLUMNS`).

    Raises:
        UserError: no bundle (names the default path) or an unknown case.
    """
    from engine.errors import UserError
    from engine.generator import Generator

    os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
    os.environ.setdefault("SDL_AUDIODRIVER", "dummy")
    cases = [c.strip() for c in str(getattr(args, "live_cases", ",".join(CASES))).split(",") if c.strip()]
    scenes = [s.strip() for s in str(getattr(args, "live_scenes", ",".join(SCENES))).split(",") if s.strip()]
    unknown = [c for c in cases if c not in CASES] + [s for s in scenes if s not in SCENES]
    if unknown:
        raise UserError(f"live benchmark: unknown case or scene {unknown[0]!r} (cases {CASES}, scenes {SCENES})")
    bundle = Path(args.bundle) if getattr(args, "bundle", None) else DEFAULT_BUNDLE
    if not bundle.exists():
        raise UserError(f"bundle {bundle} does not exist; export one (run.py export) or pass --bundle")
    seconds = float(getattr(args, "live_seconds", 20.0))
    generator = Generator(bundle, backend="auto", max_batch=16)
    rows: list[dict[str, Any]] = []
    try:
        if "fps" in cases:
            rows += bench_fps(generator, seconds, scenes)
        if "sr" in cases:
            sr_bundle = Path(getattr(args, "sr_bundle", None) or DEFAULT_SR_BUNDLE)
            if not sr_bundle.exists():
                raise UserError(f"super-resolution bundle {sr_bundle} does not exist; pass --sr-bundle")
            rows += bench_sr(generator, sr_bundle, seconds, scenes)
        if "onset" in cases:
            rows += bench_onset(generator, scenes)
        if "speaker" in cases:
            rows += bench_speaker(generator)
        if "osc" in cases:
            rows += bench_osc(generator, min(seconds, 20.0))
        if "gate" in cases:
            rows += bench_gate(generator)
    finally:
        generator.close()
    for row in rows:
        for key, value in list(row.items()):
            if isinstance(value, float) and not math.isfinite(value):
                row[key] = None
    return rows


def _main() -> None:  # python -m benchmarks.live --bundle B (without the bench CLI)
    parser = argparse.ArgumentParser()
    parser.add_argument("--bundle", default=None)
    add_arguments(parser)
    from benchmarks.cli import format_table

    logging.basicConfig(level=logging.WARNING)
    print(format_table(run(parser.parse_args()), COLUMNS))


if __name__ == "__main__":
    _main()
