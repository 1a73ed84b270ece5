"""``run.py live``: microphone in, generated faces fullscreen, sound out, OSC control.

    python run.py live [--preset NAME] [--input mic|DEVICE|FILE] [--windowed] [--display N]
                       [--duration S] [--report FILE.json]

Threads (ARCHITECTURE.md "Threads"; measured, see below):

* **audio writer** -- the sounddevice callback or the file player (:mod:`installation.audio_in`) copies
  blocks into the :class:`~installation.audio_in.AudioRing` and returns.
* **main thread** -- pygame/SDL (it must), once per frame: drain the parameter queue
  (``Parameters.apply_pending``: OSC and keyboard changes), heartbeat the audio input, read the new
  samples (VAD + fast envelope/onset path), decide whether to generate (the render's
  :class:`~installation.render.Conditioner`), hand the request to the generator thread, pick up the newest
  finished images, draw the scene into a preallocated canvas, blit, flip, pace.
* **generator thread** (one, ``live-generator``) -- runs :class:`engine.generator.Generator` on the newest
  request. The handoff is a 1-slot mailbox each way: a request that the worker has not started yet is
  *replaced* by a newer one (latest wins, never a backlog), and the main thread only ever takes the newest
  finished result. This deviates from the architecture sketch (generator on the main thread) because it
  does not fit the frame budget: on 2 CPU cores at 1920x1080 a frame's drawing costs ~4-6 ms while the
  64 px bundle takes ~3.5 ms for 1 face and ~17 / ~56 / ~90 ms for the grid's 4 / 9 / 16 faces (ONNX
  Runtime CPU); run inline, every generation would be a dropped frame (grid: several). The Generator is
  still used from one thread only (it is not thread-safe).
* **OSC server** (:mod:`installation.osc`, if present) -- parses, validates, enqueues; **pyo** -- its own
  audio thread (:mod:`installation.sound`), fed by the main thread.

Shared with the offline render (:mod:`installation.render`; only the clock differs): the
:class:`~installation.render.Conditioner` (gate -> generation requests at ``gen_fps``, segments),
:class:`~installation.render.NoiseDrift` (seeded noise keys; here advanced by a *noise clock* running at
``noise/walk_speed`` keys per second, so at the default 0.25 the faces equal the render's 4 s drift),
:class:`~installation.render.ImageEMA`, the VAD and the scenes.

Fast path: the generator listens to a whole second, so the picture would answer a clap late. Every frame
the newest 10 ms of raw samples (device rate, no resampler delay) give a level in dBFS; it drives
``FrameState.level`` (instant attack, ``release_s`` release, 0 at the VAD's noise floor, 1 at
``envelope_range_db`` above it) and an *onset*: a window above the VAD's on threshold opens the gate at once
and holds it ``onset_hold_s`` (the VAD needs ``attack_s`` = 30 ms of voice before it opens the gate itself).

Per-frame isolation: a frame runs in stages (keyboard + parameters, audio, generator handoff, scene, sound,
overlay, display); an exception in one stage is logged (rate-limited) and the frame's other stages still
run; frames with an error are counted in the report's ``frame_errors`` and the loop goes on. A generator
exception (in its thread) is counted in ``generator.errors`` and the picture keeps its last images.

Costs per frame at 1920x1080 on this project's 2-core development machine (shared, load ~4): main-thread
work p50 4-8 ms, p99 5-7 ms of CPU time (11-20 ms wall: the rest is waiting for a core): scene draw
~2 ms for grid/morph, ~3 ms for the portrait (the grid and morph compose at the generated image's
resolution and upscale once with OpenCV straight into the canvas), blit 1 ms, flip (dummy SDL driver)
1.5 ms, brightness < 1 another 0.7 ms (OpenCV on the canvas; SDL's ``BLEND_RGB_MULT`` fill took 12 ms).
The canvas, the window surface that wraps it (``pygame.image.frombuffer``, no copy), the scenes' working
buffers and the audio buffers are allocated once. Frames are paced by deadline (``fps``; no catch-up
bursts after a late frame); with vsync on a real display, flip paces as well. ``benchmarks/live.py``
measures all of this.

Report (``--report FILE.json``, also rewritten every ``report_every_s`` during the run): see
:meth:`LiveLoop.report`. Frame and generator times go into fixed-size histograms (constant memory
however long the installation runs); RSS is sampled on a decimating time series.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import logging
import math
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from engine.configs import finite_float
from engine.errors import UserError
from installation.attract import Attract, AttractConfig
from installation.audio_in import AudioInput, AudioReader, open_input
from installation.params import PARAMS
from installation.presets import RenderParams
from installation.render import DEFAULT_BUNDLE, Conditioner, ImageEMA, NoiseDrift
from installation.scene_class import parse_class_weights
from installation.telemetry import Histogram, RateLimitedLog, RssSeries, peak_rss_mb, rss_mb
from installation.vad import VadParams, VoiceActivityDetector, declared_gate, gate_params
from installation.voice_stage import VoiceStage, has_sound, run_generator
from installation.window import Window
from scenes import SCENES, FrameState, Scene, make_scene

log = logging.getLogger(__name__)


class LiveError(UserError, ValueError):
    """A live option or preset value is unusable; the message names it."""


# -- audio analysis for the fast path and the walk ---------------------------------------------------------


def level_db(x: np.ndarray) -> float:
    """RMS level of float samples ``x`` [n] in dBFS after removing the mean (as :func:`installation.vad.frame_levels`)."""
    if x.shape[0] == 0:
        return -120.0
    m = float(x.mean())
    power = float(np.dot(x, x)) / x.shape[0] - m * m
    return 10.0 * math.log10(max(power, 0.0) + 1e-12)


METER_DB = (-60.0, 0.0)
"""Range of the overlay's level meter, dBFS (speech close to a microphone: about -35 to -15)."""


def meter_bar(
    db: float,
    marks: Mapping[str, float] | None = None,
    width: int = 30,
    lo: float = METER_DB[0],
    hi: float = METER_DB[1],
) -> str:
    """A text level meter: ``#`` up to ``db`` (dBFS) on a ``lo`` .. ``hi`` dBFS scale of ``width`` characters,
    ``-`` beyond; ``marks`` put a character at a level (e.g. ``{"|": on threshold}``). E.g. -28 dBFS on the
    default -60..0 scale: 16 of 30 filled."""

    def cell(level: float) -> int:
        return min(width, max(0, round((level - lo) / (hi - lo) * width)))

    chars = ["#" if i < cell(db) else "-" for i in range(width)]
    for mark, level in (marks or {}).items():
        if math.isfinite(level):
            chars[min(width - 1, cell(level))] = mark
    return "".join(chars)


def estimate_pitch(x: np.ndarray, rate: int, fmin: float = 70.0, fmax: float = 500.0, threshold: float = 0.45) -> float:
    """Fundamental frequency of mono samples ``x`` [n] (~40 ms) in Hz, by normalised autocorrelation; 0 if unvoiced.

    The autocorrelation (FFT) is normalised by the overlap length; the signal counts as voiced if the best lag
    in ``[rate/fmax, rate/fmin]`` correlates at least ``threshold`` x the energy; the period is the first local
    maximum within 10 % of the best (multiples of the period score as high), refined by parabolic interpolation.
    """
    n = x.shape[0]
    lo, hi = int(rate / fmax), min(n - 2, int(rate / fmin))
    if hi <= lo + 2:
        return 0.0
    y = x - x.mean()
    energy = float(np.dot(y, y))
    if energy < 1e-8:
        return 0.0
    size = 1 << (2 * n - 1).bit_length()
    spec = np.fft.rfft(y, size)
    ac = np.fft.irfft(spec.real**2 + spec.imag**2, size)[: hi + 2]
    lags = np.arange(lo, hi + 2)
    r = ac[lo : hi + 2] * (n / (n - lags)) / ac[0]
    best = float(r[:-1].max())
    if best < threshold:
        return 0.0
    # The first local maximum within 10 % of the best (multiples of the period score as high: octave errors).
    candidates = np.flatnonzero(r[:-1] >= 0.9 * best)
    k = int(candidates[0])
    while k + 1 < r.shape[0] - 1 and r[k + 1] > r[k]:
        k += 1
    if 0 < k < r.shape[0] - 1:
        a, b, c = r[k - 1], r[k], r[k + 1]
        den = a - 2 * b + c
        shift = 0.5 * (a - c) / den if den != 0 else 0.0
    else:
        shift = 0.0
    return float(rate / (lo + k + max(-0.5, min(0.5, shift))))


class FastEnvelope:
    """The fast envelope/onset path: every frame, the newest ``window_s`` of raw samples.

    Args:
        rate: Hz of the samples.
        window_s: analysis window (10-20 ms).
        release_s: release time constant of the level (attack is instant).
        range_db: the level is 1 at this many dB above the noise floor.
        hold_s: an onset holds the gate open this long.

    Attributes:
        window: float32 [round(window_s * rate)] buffer the caller fills with the newest samples.
        level: 0..1. db: dBFS of the last window. gate_until: run time (s) the onset holds the gate until.
        onsets: onsets seen.
    """

    def __init__(
        self, rate: int, window_s: float = 0.01, release_s: float = 0.1, range_db: float = 40.0, hold_s: float = 0.3
    ) -> None:
        self.window = np.zeros(max(1, round(window_s * rate)), np.float32)
        self.release_s, self.range_db, self.hold_s = float(release_s), float(range_db), float(hold_s)
        self.level = 0.0
        self.db = -120.0
        self.gate_until = -math.inf
        self.onsets = 0
        self._above = False

    def update(self, t: float, dt: float, floor_db: float, on_db: float, fresh: bool = True) -> tuple[float, bool]:
        """Analyse :attr:`window` at run time ``t`` (s), ``dt`` after the previous frame.

        Args:
            floor_db: the VAD's noise floor (dBFS). on_db: the VAD's on threshold (dBFS).
            fresh: whether the window holds new samples (stale input: the level decays, no onset).

        Returns:
            ``(level, gate)``: level 0..1 and whether an onset holds the gate open.
        """
        self.db = level_db(self.window) if fresh else -120.0
        target = min(1.0, max(0.0, (self.db - floor_db) / self.range_db)) if self.range_db > 0 else 0.0
        decayed = self.level * math.exp(-dt / self.release_s) if self.release_s > 0 else 0.0
        self.level = max(target, decayed)
        above = fresh and self.db > on_db
        if above:
            if not self._above:
                self.onsets += 1
            self.gate_until = t + self.hold_s
        self._above = above
        return self.level, t < self.gate_until


class NoiseWalk:
    """The morph scene's latent walk: a great-circle walk on the sphere of radius ``sqrt(Z)`` in noise space.

    Speed follows loudness; direction follows pitch: the walk heads along ``cos(a) u + sin(a) v`` (``u``,
    ``v``: fixed seeded orthonormal directions) with ``a = 2 pi log2(pitch / 110 Hz)`` (one turn per octave),
    projected onto the sphere's tangent; without a pitch the last direction is kept.

    Args:
        make_noise: ``(batch, seed) -> float32 [batch, Z]``.
        seed: start point and directions.
    """

    def __init__(self, make_noise: Callable[[int, int], np.ndarray], seed: int) -> None:
        start = np.asarray(make_noise(1, seed), np.float64)[0]
        self.radius = math.sqrt(start.shape[0])
        self.z = start / (np.linalg.norm(start) or 1.0)  # unit vector; scaled on output
        basis = np.asarray(make_noise(2, seed + 7919), np.float64)
        u = basis[0] / (np.linalg.norm(basis[0]) or 1.0)
        v = basis[1] - np.dot(basis[1], u) * u
        self.u, self.v = u, v / (np.linalg.norm(v) or 1.0)
        self.angle = 0.0
        self.distance = 0.0  # radians walked

    def step(self, dt: float, speed_rad_s: float, pitch_hz: float = 0.0) -> np.ndarray:
        """Walk ``speed_rad_s * dt`` radians; returns the noise float32 [Z] (norm ``sqrt(Z)``)."""
        if pitch_hz > 0:
            self.angle = 2 * math.pi * math.log2(pitch_hz / 110.0)
        step = max(0.0, speed_rad_s * dt)
        if step > 0:
            d = math.cos(self.angle) * self.u + math.sin(self.angle) * self.v
            d = d - np.dot(d, self.z) * self.z
            norm = float(np.linalg.norm(d))
            if norm < 1e-6:  # heading straight out of the sphere: turn a quarter
                self.angle += math.pi / 2
                d = math.cos(self.angle) * self.u + math.sin(self.angle) * self.v
                d = d - np.dot(d, self.z) * self.z
                norm = float(np.linalg.norm(d)) or 1.0
            self.z = math.cos(step) * self.z + math.sin(step) * (d / norm)
            self.z /= np.linalg.norm(self.z)
            self.distance += step
        return (self.z * self.radius).astype(np.float32)


def cell_seed(seed: int, cell: int) -> int:
    """Noise seed of grid cell ``cell`` (cell 0 uses ``seed`` itself, so it shows the portrait's face)."""
    if cell == 0:
        return int(seed)
    return int(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, 0x6A1D, cell]).generate_state(1)[0])


# -- the generator thread -----------------------------------------------------------------------------------


@dataclass
class GenRequest:
    """One generation: ``audio`` float32 [S] (one window, repeated for every face), ``noise`` float32 [B, Z];
    ``attract``: a face of the idle/attract state (:mod:`installation.attract`), not of the live scene; ``inputs``:
    further named inputs of the bundle, e.g. ``class`` float32 [B, C] (None: the engine fills them)."""

    seq: int
    t: float
    audio: np.ndarray
    noise: np.ndarray
    segment: int
    new_segment: bool
    attract: bool = False
    inputs: dict[str, np.ndarray] | None = None


@dataclass
class GenResult:
    """A finished :class:`GenRequest`: ``images`` uint8 [B, h, w, 3] or ``error`` (one line); ``seconds`` of work."""

    request: GenRequest
    images: np.ndarray | None
    error: str | None
    seconds: float
    exc: BaseException | None = None
    sound: np.ndarray | None = None  # float32 [B, N]: the bundle's generated voices, if it makes them


class GenWorker:
    """Runs the generator in one thread with 1-slot mailboxes (latest wins both ways).

    Args:
        generator: callable ``(audio [B, S], noise=[B, Z]) -> uint8 [B, h, w, 3]`` (a Generator).
        nice: added to the worker thread's nice value (Linux: per thread), so that under CPU contention the
            main thread's frame deadline wins over generation latency (0: unchanged).

    Attributes:
        submitted, replaced (requests dropped unstarted for a newer one), finished, errors, discarded
        (results overwritten before the main thread took them), times (:class:`Histogram` of work, ms).
    """

    def __init__(self, generator: Any, nice: int = 0) -> None:
        self.generator = generator
        self.nice = int(nice)
        self._cond = threading.Condition()
        self._pending: GenRequest | None = None
        self._result: GenResult | None = None
        self._busy = False
        self._closed = False
        self.submitted = self.replaced = self.finished = self.errors = self.discarded = 0
        self.times = Histogram()
        self._thread = threading.Thread(target=self._run, name="live-generator", daemon=True)
        self._thread.start()

    @property
    def idle(self) -> bool:
        """Nothing pending and nothing running."""
        return self._pending is None and not self._busy

    def submit(self, request: GenRequest) -> None:
        """Queue ``request``, replacing one not started yet (main thread; never blocks on the generator)."""
        with self._cond:
            if self._pending is not None:
                self.replaced += 1
            self._pending = request
            self.submitted += 1
            self._cond.notify()

    def poll(self) -> GenResult | None:
        """The newest finished result not taken yet, or ``None`` (main thread)."""
        with self._cond:
            result, self._result = self._result, None
        return result

    def wait_idle(self, timeout: float) -> bool:
        """Block until nothing is pending or running (tests, benchmarks); returns whether it got there."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while (self._pending is not None or self._busy) and not self._closed:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
        return True

    def _run(self) -> None:
        if self.nice:
            try:
                tid = threading.get_native_id()
                os.setpriority(os.PRIO_PROCESS, tid, os.getpriority(os.PRIO_PROCESS, tid) + self.nice)
            except (AttributeError, OSError) as exc:
                log.debug("cannot renice the generator thread: %s", exc)
        while True:
            with self._cond:
                while self._pending is None and not self._closed:
                    self._cond.wait()
                if self._closed:
                    return
                request, self._pending = self._pending, None
                self._busy = True
            started = time.perf_counter()
            images: np.ndarray | None = None
            sound: np.ndarray | None = None
            error: str | None = None
            exc: BaseException | None = None
            try:
                images, sound = run_generator(self.generator, request.audio, request.noise, request.inputs)
            except Exception as e:  # noqa: BLE001 - a backend failure is one bad frame, not the end
                error, exc = f"{type(e).__name__}: {e}", e
            seconds = time.perf_counter() - started
            with self._cond:
                self._busy = False
                self.finished += 1
                if error is not None:
                    self.errors += 1
                else:
                    self.times.add(seconds * 1000.0)
                if self._result is not None:
                    self.discarded += 1
                self._result = GenResult(request, images, error, seconds, exc, sound)
                self._cond.notify_all()

    def close(self, timeout: float = 5.0) -> None:
        """Stop the thread (after the call in flight, if any)."""
        with self._cond:
            self._closed = True
            self._pending = None
            self._cond.notify_all()
        self._thread.join(timeout)


# -- configuration -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LiveConfig:
    """Everything the live loop needs, resolved from the preset (:func:`config_from_preset`) and the command line.

    Attributes:
        bundle: model bundle directory. backend: engine backend request. device: engine device (``None``: auto).
        gen_threads: CPU threads of the generator backend (``None``: the engine's default, ``min(2, cores)``).
        gen_spin: ONNX Runtime CPU thread spinning, ``"never"`` or ``"in-call"`` (``engine.ort_spin``).
        gen_nice: added to the generator thread's nice value (5: under CPU contention the frame deadline wins;
            measured on the 2-core machine: frame-time p99 ~27 ms instead of ~30 ms with other load running).
        max_batch: largest generator batch (the grid's n x n <= 16).
        super_resolution: a super-resolution bundle run after the generator on single faces (portrait, morph,
            grid n = 1) in the generator thread (:class:`engine.superres.SuperResolved`); ``None``: none.
        input: ``"mic"``, a device index or name, or a file :class:`~pathlib.Path` (played in real time).
        input_rate: device rate to open, Hz (0: the device's default). input_channels: channels to open (mixed
            to mono). input_loop: loop a file input. heartbeat_s, reconnect_min_s, reconnect_max_s: stall timeout
            and reconnect back-off of a device input, seconds. file_speed: file playback speed (1 = real time).
        width, height: canvas size in px (the window's logical size; SCALED lets SDL fit it to the screen).
        fullscreen: fullscreen on ``display`` (default) or a window of ``windowed_size`` (best effort).
        vsync: ask SDL for vsync (falls back without it). video_driver: ``SDL_VIDEODRIVER`` unless the
            environment sets one (``""``: SDL's choice). hide_cursor: hide the mouse over the window.
        fps: frame pacing target (0: unpaced; vsync paces).
        picture: generation rate, image EMA, VAD thresholds (:class:`installation.presets.RenderParams`).
        scene_settings: per-scene start-up settings ``{scene: {parameter: value}}`` (the preset's ``scenes``).
        attract: the idle/attract state (:class:`installation.attract.AttractConfig`, the preset's ``attract``).
        params: initial live parameter values by name (:data:`installation.params.PARAMS`).
        onset_hold_s, envelope_window_s, envelope_release_s: the fast path (see the module docstring).
        duration_s: stop after this many seconds (``None``: run until quit).
        report: JSON report path (``None``: none). report_every_s: rewrite it this often during the run.
        overlay_font_px: overlay text size.
        osc: the preset's :class:`installation.presets.OscConfig` (``None``: OSC off).
        sound: an :class:`installation.sound.SoundConfig` (``None``: sound off).
        preset_name: for logs and the report.
        service: the preset's :class:`installation.service.ServiceConfig` (single instance, log file), used by
            :func:`main`.
    """

    bundle: Path = DEFAULT_BUNDLE
    backend: str = "auto"
    device: str | None = None
    gen_threads: int | None = None
    gen_spin: str = "never"
    gen_nice: int = 5
    max_batch: int = 16
    super_resolution: Path | None = None
    input: str | int | Path = "mic"
    input_rate: int = 0
    input_channels: int = 1
    input_loop: bool = True
    heartbeat_s: float = 1.0
    reconnect_min_s: float = 0.5
    reconnect_max_s: float = 30.0
    file_speed: float = 1.0
    width: int = 1920
    height: int = 1080
    fullscreen: bool = True
    windowed_size: tuple[int, int] | None = None
    display: int = 0
    vsync: bool = True
    video_driver: str = ""
    hide_cursor: bool = True
    fps: float = 60.0
    picture: RenderParams = field(default_factory=RenderParams)
    scene_settings: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    attract: AttractConfig = field(default_factory=AttractConfig)
    params: Mapping[str, Any] = field(default_factory=dict)
    onset_hold_s: float = 0.3
    envelope_window_s: float = 0.01
    envelope_release_s: float = 0.1
    duration_s: float | None = None
    report: Path | None = None
    report_every_s: float = 60.0
    overlay_font_px: int = 28
    osc: Any = None
    sound: Any = None
    preset_name: str = ""
    service: Any = None

    def __post_init__(self) -> None:
        if not (16 <= self.width <= 16384 and 16 <= self.height <= 16384):
            raise LiveError(f"canvas size: expected 16..16384 px per side, got {self.width}x{self.height}")
        if not (0 <= self.fps <= 1000):
            raise LiveError(f"fps: expected 0..1000, got {self.fps}")
        if self.duration_s is not None and not self.duration_s > 0:
            raise LiveError(f"--duration: expected seconds > 0, got {self.duration_s}")
        if not 1 <= self.max_batch <= 4096:
            raise LiveError(f"max_batch: expected 1..4096, got {self.max_batch}")
        if not 0.005 <= self.envelope_window_s <= 0.05:
            raise LiveError(f"envelope_window_s: expected 0.005..0.05 s, got {self.envelope_window_s}")
        if not self.file_speed > 0:
            raise LiveError(f"file_speed: expected > 0, got {self.file_speed}")


# -- parameters ------------------------------------------------------------------------------------------------


def make_parameters(initial: Mapping[str, Any]) -> Any:
    """:class:`installation.params.Parameters` with ``initial`` values.

    Raises:
        LiveError: an unknown parameter or invalid value (the message names it).
    """
    from installation.params import ParamError, Parameters

    try:
        return Parameters(initial=dict(initial))
    except ParamError as exc:
        raise LiveError(f"live parameters: {exc}") from exc


def scene_params(snapshot: Mapping[str, Any], scene: str) -> dict[str, Any]:
    """Scene parameters from the live parameters: ``crossfade_s`` (every scene's) and ``<scene>/<x>`` as ``<x>``.

    E.g. ``{"crossfade_s": 0.1, "grid/n": 3}`` -> ``{"crossfade_s": 0.1, "n": 3}`` for the grid.
    """
    out: dict[str, Any] = {"crossfade_s": snapshot["crossfade_s"]} if "crossfade_s" in snapshot else {}
    prefix = f"{scene}/"
    for name, value in snapshot.items():
        if name.startswith(prefix):
            out[name[len(prefix) :]] = value
    return out


# -- the loop -----------------------------------------------------------------------------------------------------

SCENE_ORDER: tuple[str, ...] = tuple(SCENES)
"""Keyboard order: keys 1, 2, 3 ... pick these; left/right arrows cycle."""

FRAME_EDGES_MS = (5.0, 10.0, 16.7, 20.0, 25.0, 33.3, 50.0, 100.0)


class LiveLoop:
    """The live installation's main loop (see the module docstring).

    Args:
        config: resolved configuration.
        generator: a Generator-like object (default: load ``config.bundle``).
        audio_input: an :class:`~installation.audio_in.AudioInput` (default: from ``config.input``).
        params: a :class:`installation.params.Parameters` (default: from ``config.params``).
        osc: an :class:`installation.osc.OscControl`-like object (``start``, ``stop``, ``status``, ``event``,
            ``pump``, ``stats``); default: built from ``config.osc`` (``None``: OSC off).
        sound: a :class:`installation.sound.SoundEngine`-like object (default: from ``config.sound``).
        on_frame: ``on_frame(loop, t_present, canvas)`` after each flip (benchmarks, tests).

    Raises:
        LiveError / UserError: unusable bundle, input, preset values.
    """

    def __init__(
        self,
        config: LiveConfig,
        *,
        generator: Any = None,
        audio_input: AudioInput | None = None,
        params: Any = None,
        osc: Any = None,
        sound: Any = None,
        on_frame: Callable[[LiveLoop, float, np.ndarray], None] | None = None,
    ) -> None:
        self.config = config
        self.on_frame = on_frame
        self._t0 = time.perf_counter()
        self._owns_generator = generator is None
        if generator is None:
            from engine.generator import Generator

            generator = Generator(
                config.bundle,
                backend=config.backend,
                device=config.device,
                max_batch=config.max_batch,
                threads=config.gen_threads,
                ort_spin=config.gen_spin,
            )
            if config.super_resolution is not None:
                generator = _super_resolved(generator, config)
        self.generator = generator
        self.backend = str(getattr(generator, "backend_name", type(generator).__name__))
        self.sample_rate = int(generator.sample_rate)
        self.window_samples = int(generator.window_samples)

        initial = dict(config.params)
        initial.setdefault("scene", config.picture.scene)
        self.params = params if params is not None else make_parameters(initial)
        self.events: list[tuple[float, str, str]] = []
        self.input = audio_input or open_input(
            config.input,
            self.sample_rate,
            on_event=self._input_event,
            file_speed=config.file_speed,
            loop=config.input_loop,
            device_rate=config.input_rate,
            channels=config.input_channels,
            heartbeat_s=config.heartbeat_s,
            backoff_s=config.reconnect_min_s,
            backoff_max_s=config.reconnect_max_s,
            wait_for_device=True,  # no microphone yet: idle and retry with back-off, never exit
        )
        if getattr(self.input, "on_event", "absent") is None:
            self.input.on_event = self._input_event  # type: ignore[attr-defined]
        self.reader = AudioReader(self.input.ring, self.input.sample_rate, self.sample_rate, self.window_samples)
        # the gate the bundle declares: voice (default) or sound (music and noise, e.g. scene bundles)
        self.vad_params: VadParams = gate_params(declared_gate(getattr(getattr(generator, "bundle", None),
                                                                       "family_info", None)), config.picture.vad)  # fmt: skip
        self.vad = VoiceActivityDetector(self.input.sample_rate, self.vad_params)
        self.fast = FastEnvelope(
            self.input.sample_rate,
            window_s=config.envelope_window_s,
            release_s=config.envelope_release_s,
            range_db=self.vad_params.envelope_range_db,
            hold_s=config.onset_hold_s,
        )
        self._pitch_buf = np.zeros(max(64, round(0.04 * self.input.sample_rate)), np.float32)
        self.pitch_hz = 0.0

        # a bundle with a `class` input can have its class pinned (the scene_class parameter)
        inputs = getattr(getattr(generator, "bundle", None), "inputs", {})
        self.class_labels: tuple[str, ...] | None = tuple(generator.labels) if "class" in inputs else None
        self.class_weights: np.ndarray | None = None
        self._pin_class(str(self.params.get("scene_class")))

        self.canvas = np.zeros((config.height, config.width, 3), np.uint8)
        self.scenes: dict[str, Scene] = {}
        self.scene_name = str(self.params.get("scene"))
        self.worker = GenWorker(generator, nice=config.gen_nice)
        self.osc = osc
        self.sound = sound
        # a bundle with a `sound` output: its voice answers the visitor (installation.voice_stage)
        self.voice = VoiceStage(self.sample_rate) if has_sound(generator) else None
        self.window: Window | None = None

        # generation state
        self._seed = int(self.params.get("noise/seed"))
        self._drifts: list[NoiseDrift] = []
        self._walk = NoiseWalk(generator.make_noise, self._seed)
        self._noise_clock = 0.0  # keys walked in the current segment (noise/walk_speed keys per second)
        gen_fps = config.picture.gen_fps
        self.conditioner = Conditioner(self._drift(0), 0.0 if gen_fps <= 0 else 1.0 / gen_fps)
        self.ema = ImageEMA(config.picture.image_ema_s)
        self.attract = Attract(config.attract, generator.make_noise, self.window_samples, seed=self._seed)
        self.images: tuple[np.ndarray, ...] = ()
        self.image_index = -1
        self._last_result_t: float | None = None
        self._seq = 0

        # run state and statistics
        self.frames = 0
        self.frame_errors = 0
        self.frame_times = Histogram()  # interval between successive flips, ms
        self.work_times = Histogram()  # frame work before pacing, ms (wall)
        self.work_cpu_times = Histogram()  # the same, main-thread CPU time, ms (wall - CPU = waiting for a core)
        self.draw_times = Histogram()  # scene draw, ms
        self.rss = RssSeries()
        self.gate = False
        self.gate_open_s = 0.0  # run time with the gate open (VAD or onset)
        self.level = 0.0
        self.running = False
        self.quit_reason = ""
        self.scene_frames: dict[str, int] = {}
        self._errors = RateLimitedLog(log, "live", burst=3)
        self._gen_errors = RateLimitedLog(log, "live generator", burst=3)
        self._last_audio = -math.inf  # run time of the last new samples
        self._vsync: bool | None = None
        self._frame_failed = False
        self._no_samples = np.zeros(0, np.float32)
        self._overlay_next = 0.0
        self._meter_power = 0.0  # sum of 10 ms frame powers since the overlay's last refresh
        self._meter_peak = -120.0  # loudest 10 ms frame since then, dBFS
        self._meter_frames = 0
        self.overlay_lines: list[str] = []
        self._report_next = 0.0
        self._fps_window: list[float] = []
        self.sound_error: str | None = None
        self.osc_error: str | None = None

    # -- helpers ---------------------------------------------------------------------------------------------

    def _input_event(self, kind: str, detail: str) -> None:
        """Audio input state change: keep it for the report, send it over OSC (``/avgan/status/event``)."""
        self.events.append((round(time.perf_counter() - self._t0, 3), kind, detail))
        del self.events[:-200]
        self._osc_event(f"input {kind}: {detail}")

    def _osc_event(self, text: str) -> None:
        osc = getattr(self, "osc", None)
        if osc is None:
            return
        try:
            osc.event(text)
        except Exception:  # noqa: BLE001 - feedback is best effort
            log.debug("OSC event failed", exc_info=True)

    def input_state(self) -> str:
        """The input's state in the OSC feedback vocabulary: ``ok``, ``file``, ``reconnecting``, ``lost``, ``closed``."""
        state = str(getattr(self.input, "state", ""))
        if state in ("running", "starting"):
            return "file" if hasattr(self.input, "samples") else "ok"
        if state == "reconnecting":
            return "reconnecting"
        if state in ("waiting", "stalled"):
            return "lost"
        return state or "closed"

    def _drift(self, cell: int) -> NoiseDrift:
        while len(self._drifts) <= cell:
            self._drifts.append(NoiseDrift(self.generator.make_noise, cell_seed(self._seed, len(self._drifts)), 1.0))
        return self._drifts[cell]

    def _pin_class(self, text: str) -> None:
        """Apply a ``scene_class`` value: class weights for the bundle's ``class`` input, or None (follow the sound).
        A value the bundle cannot take is logged and sent as an OSC event; the previous pin stays."""
        if self.class_labels is None:
            if text.strip():
                log.info("scene_class %r ignored: this bundle has no class input", text)
            return
        try:
            self.class_weights = parse_class_weights(text, self.class_labels)
        except ValueError as exc:
            log.warning("%s", exc)
            self._osc_event(str(exc))
            return
        log.info("scene class: %s", "following the sound" if self.class_weights is None else text)

    def scene(self, name: str | None = None) -> Scene:
        """The scene instance called ``name`` (default: the current one), created on first use."""
        name = name or self.scene_name
        if name not in self.scenes:
            self.scenes[name] = make_scene(name)
        return self.scenes[name]

    def _faces_needed(self, scene: Scene, sp: Mapping[str, Any]) -> int:
        faces = getattr(scene, "faces_needed", None)
        n = int(faces(sp)) if faces is not None else 1
        return max(1, min(n, self.config.max_batch))

    # -- per frame -------------------------------------------------------------------------------------------

    def _apply_params(self, dt: float) -> None:
        p = self.params
        changed = p.apply_pending()
        p.tick(dt)
        if "scene" in changed:
            name = str(p.get("scene"))
            if name != self.scene_name:
                log.info("scene: %s -> %s", self.scene_name, name)
                self.scene_name = name
                self.scene(name).reset()
        if "noise/seed" in changed:
            self._seed = int(p.get("noise/seed"))
            self._drifts = []
            self.conditioner.noise = self._drift(0)
            self._walk = NoiseWalk(self.generator.make_noise, self._seed)
        if "vad/threshold_db" in changed:
            on = float(p.get("vad/threshold_db"))
            vp = replace(self.vad_params, on_min_db=on, off_min_db=min(self.vad_params.off_min_db, on - 5.0))
            if vp.off_min_db > vp.on_min_db:
                vp = replace(vp, off_min_db=on)
            self.vad_params = vp
            self.vad.params = vp  # thresholds are read per frame from params
        if self.sound is not None:
            for name in changed:
                if name.startswith("sound/"):
                    try:
                        self.sound.set_param(name, p.target(name))  # pyo ramps itself (SigTo)
                    except Exception:  # noqa: BLE001 - sound is optional
                        log.warning("sound parameter %s failed", name, exc_info=True)
        if "scene_class" in changed:
            self._pin_class(str(p.get("scene_class")))
        if "preset/load" in changed:
            self._load_preset(str(p.get("preset/load")))
        if p.fired("quit"):
            self.stop("quit (parameter)")

    def _load_preset(self, name: str) -> None:
        """Apply the named preset's parameter values (display, input, model, OSC and sound devices stay as they are)."""
        if not name:
            return
        try:
            from installation.presets import load_preset

            preset = load_preset(name)
            values = preset_param_values(preset)
        except Exception as exc:  # noqa: BLE001 - a bad preset name over OSC must not stop the show
            log.warning("preset/load %r failed: %s", name, exc)
            self._osc_event(f"preset {name} failed: {exc}")
            return
        for key, value in values.items():
            self.params.enqueue(key, value, source=f"preset:{name}")
        log.info("preset %s: %d parameter values queued", name, len(values))
        self._osc_event(f"preset {name} loaded")

    def _handle_events(self) -> None:
        if self.window is None:
            return
        pg = self.window.pg
        for event in self.window.events():
            if event.type == pg.QUIT:
                self.stop("window closed")
            elif event.type == pg.KEYDOWN:
                key = event.key
                if key in (pg.K_ESCAPE, pg.K_q):
                    self.stop("keyboard")
                elif pg.K_1 <= key <= pg.K_9 and key - pg.K_1 < len(SCENE_ORDER):
                    self.params.enqueue("scene", SCENE_ORDER[key - pg.K_1], source="keyboard")
                elif key in (pg.K_RIGHT, pg.K_LEFT):
                    k = SCENE_ORDER.index(self.scene_name) if self.scene_name in SCENE_ORDER else 0
                    k = (k + (1 if key == pg.K_RIGHT else -1)) % len(SCENE_ORDER)
                    self.params.enqueue("scene", SCENE_ORDER[k], source="keyboard")
                elif key == pg.K_o:
                    self.params.enqueue("overlay", not self.params.get("overlay"), source="keyboard")
                elif key == pg.K_b:
                    self.params.enqueue("blackout", not self.params.get("blackout"), source="keyboard")

    def _listen(self, t: float, dt: float) -> np.ndarray:
        """Heartbeat, new samples -> VAD, fast envelope/onset, pitch; returns the new raw samples."""
        self.input.heartbeat(time.monotonic())
        new = self.reader.update()
        if new.shape[0]:
            self._last_audio = t
            frames = self.vad.process(new)
            if len(frames):
                self._meter_power += float(np.sum(np.power(10.0, frames.level_db.astype(np.float64) / 10.0)))
                self._meter_peak = max(self._meter_peak, float(frames.level_db.max()))
                self._meter_frames += len(frames)
        fresh = t - self._last_audio < 0.25  # a stalled input reads as silence: the picture goes idle
        vp = self.vad.params
        floor = self.vad.floor_db
        on_db = max(floor + vp.on_margin_db, vp.on_min_db)
        if fresh:
            self.reader.latest_raw(self.fast.window.shape[0], self.fast.window)
        level, onset_gate = self.fast.update(t, dt, floor, on_db, fresh)
        self.level = max(level, self.vad.envelope if fresh else 0.0)
        self.gate = fresh and (self.vad.active or onset_gate)
        if self.gate:
            self.gate_open_s += dt
        if fresh and self.gate:
            self.reader.latest_raw(self._pitch_buf.shape[0], self._pitch_buf)
            self.pitch_hz = estimate_pitch(self._pitch_buf, self.input.sample_rate)
        else:
            self.pitch_hz = 0.0
        return new

    def _generate(self, t: float, dt: float, sp: Mapping[str, Any]) -> None:
        """Ask for new images when the Conditioner says so (the worker takes the newest request)."""
        speed = float(self.params.get("noise/walk_speed"))
        if self.gate:
            self._noise_clock += dt * speed
        face = self.attract.update(t, self.gate, self.image_index)
        if face is not None:
            self._seq += 1
            self.worker.submit(GenRequest(self._seq, t, face.audio, face.noise, -1, False, attract=True))
        request = self.conditioner.step(t, self.gate)
        if request is None:
            return
        if request.new_segment:
            self._noise_clock = 0.0
        scene = self.scene()
        faces = self._faces_needed(scene, sp)
        if self.scene_name == "morph":
            # Speed follows loudness: independent keys are ~90 degrees apart, so walk_speed keys/s ~ walk_speed*pi/2 rad/s.
            rad_s = speed * math.pi / 2 * (0.3 + 1.7 * self.level)
            z = self._walk.step(request.dt if not request.new_segment else 0.0, rad_s, self.pitch_hz)
            noise = z[None, :]
        else:
            noise = np.stack([self._drift(k).at(request.segment, self._noise_clock) for k in range(faces)])
        self._seq += 1
        window = self.reader.window().copy()
        self.attract.remember(request.segment, window)
        extra = None if self.class_weights is None else {"class": np.tile(self.class_weights, (noise.shape[0], 1))}
        self.worker.submit(
            GenRequest(self._seq, t, window, noise, request.segment, request.new_segment, inputs=extra)
        )

    def _collect(self) -> None:
        """Take the newest finished images (EMA-smoothed) for the scene."""
        result = self.worker.poll()
        if result is None:
            return
        if result.error is not None or result.images is None:
            self._gen_errors.error("generator failed: %s", result.error, exc_info=False)
            return
        req = result.request
        if req.attract:
            self.attract.push(result.images[0])
            return
        if req.new_segment:
            self.ema.reset()
        dt = 0.0 if self._last_result_t is None or req.new_segment else max(0.0, req.t - self._last_result_t)
        self._last_result_t = req.t
        if self.voice is not None and result.sound is not None and len(result.sound):
            self.voice.offer(result.sound[0])
        smoothed = self.ema.update(result.images, dt)
        self.images = tuple(smoothed[k] for k in range(smoothed.shape[0]))
        self.image_index += 1

    def _draw(self, t: float, sp: Mapping[str, Any]) -> None:
        if self.attract.showing:
            started = time.perf_counter()
            portrait = {
                **self.config.scene_settings.get("portrait", {}),
                **scene_params(self.params.snapshot(), "portrait"),
            }
            self.attract.draw(self.canvas, t, portrait)
            self.draw_times.add((time.perf_counter() - started) * 1000.0)
            return
        state = FrameState(
            time=t,
            gate=1.0 if self.gate else 0.0,
            level=self.level,
            images=self.images,
            image_index=self.image_index,
            params=sp,
        )
        started = time.perf_counter()
        self.scene().draw(self.canvas, state)
        self.draw_times.add((time.perf_counter() - started) * 1000.0)

    def _feed_sound(self, new: np.ndarray) -> None:
        if self.sound is None:
            return
        if self.frames % 60 == 0 and not getattr(self.sound, "alive", True):
            # the sound process died (driver crash, device gone): the picture goes on silent
            self.sound_error = "the sound engine stopped (process died or device lost)"
            log.error("sound: %s; continuing without sound", self.sound_error)
            self._osc_event(f"sound: {self.sound_error}")
            with contextlib.suppress(Exception):
                self.sound.stop()
            self.sound = None
            return
        try:
            if new.shape[0]:
                self.sound.feed(new, self.input.sample_rate)
            self.sound.set_state(self.level, self.pitch_hz, self.conditioner.segment if self.gate else None)
            if self.voice is not None:
                action = self.voice.step(time.perf_counter() - self._t0, self.gate, str(self.params.get("sound/answer")))
                if action is not None:
                    action.apply(self.sound)
        except Exception:  # noqa: BLE001 - sound problems must not stop the picture
            self._errors.error("sound feed failed")

    def _overlay(self, now_t: float) -> None:
        if self.window is None or now_t < self._overlay_next or not self.params.get("overlay"):
            return
        self._overlay_next = now_t + 0.5
        fps = self.current_fps()
        # input level over the last 0.5 s: RMS and the loudest 10 ms, dBFS, on a -60..0 dBFS meter with the
        # VAD's noise floor (:) and on threshold (|)
        n = self._meter_frames
        rms = 10.0 * math.log10(self._meter_power / n) if n and self._meter_power > 0 else -120.0
        peak = self._meter_peak if n else -120.0
        self._meter_power, self._meter_peak, self._meter_frames = 0.0, -120.0, 0
        vp, floor = self.vad.params, self.vad.floor_db
        on = max(floor + vp.on_margin_db, vp.on_min_db)
        bar = meter_bar(rms, {":": floor, "|": on})
        lines = [
            f"{fps:5.1f} fps   {self.scene_name}{' (attract)' if self.attract.showing else ''}   {self.backend}",
            f"input {getattr(self.input, 'state', '?')}: {rms:6.1f} dBFS rms {peak:6.1f} peak  [{bar}] "
            f"-60..0 dBFS  floor {floor:.0f}  gate {'open' if self.gate else 'closed'}",
            f"gen p50 {self.worker.times.percentile(50) or 0:.1f} ms   errors {self.frame_errors}/"
            f"{self.worker.errors}   overflows {getattr(self.input, 'overflows', 0)}",
        ]
        self.overlay_lines = lines
        self.window.overlay_text(lines, self.config.overlay_font_px)

    def _status(self) -> None:
        """OSC feedback (per frame; :class:`installation.osc.OscControl` rate-limits what it sends)."""
        if self.osc is None:
            return
        try:
            self.osc.status(
                fps=round(self.current_fps(), 2),
                level=round(float(self.level), 3),
                scene=self.scene_name,
                input=self.input_state(),
                backend=self.backend,
            )
            self.osc.pump(self.params)
        except Exception:  # noqa: BLE001 - feedback is best effort
            self._errors.error("OSC feedback failed")

    def current_fps(self) -> float:
        """Frames per second over the last ~second."""
        w = self._fps_window
        if len(w) < 2 or w[-1] <= w[0]:
            return 0.0
        return (len(w) - 1) / (w[-1] - w[0])

    @contextmanager
    def _stage(self, what: str) -> Iterator[None]:
        """Run one stage of a frame: an exception is logged (rate-limited) and counted, and the frame goes on."""
        try:
            yield
        except Exception:  # noqa: BLE001 - one bad frame is logged and counted; the show goes on
            if not self._frame_failed:
                self.frame_errors += 1
                self._frame_failed = True
            self._errors.error("frame %d: %s failed", self.frames, what)

    def stop(self, reason: str = "stopped") -> None:
        """Ask the loop to end after the current frame."""
        if self.running:
            log.info("live: stopping (%s)", reason)
        self.running = False
        self.quit_reason = self.quit_reason or reason

    # -- run -------------------------------------------------------------------------------------------------------

    def _start_services(self) -> None:
        cfg = self.config
        if self.osc is None and cfg.osc is not None:
            from installation.osc import start_or_log

            self.osc, self.osc_error = start_or_log(self.params, cfg.osc)
        elif self.osc is not None and hasattr(self.osc, "start"):
            self.osc.start()
        if self.sound is None and cfg.sound is not None:
            try:
                from installation.sound import SoundEngine

                engine = SoundEngine(cfg.sound, voice_rate=self.sample_rate)
                for name in ("sound/on", "sound/level", "sound/mix", "sound/pitch", "sound/density"):
                    engine.set_param(name, self.params.target(name))
                engine.start()
                self.sound = engine
            except Exception as exc:  # noqa: BLE001 - SoundUnavailable and anything pyo throws: run silent
                self.sound_error = f"{type(exc).__name__}: {exc}"
                self.sound = None
                log.warning("sound disabled: %s", self.sound_error)

    def run(self) -> dict[str, Any]:
        """Run until quit or ``duration_s``; returns the report (also written to ``config.report``).

        Raises:
            LiveError: no window can be opened. UserError: the audio input cannot be opened at start (a file
                input; a device that exists but cannot open yet is retried instead).
        """
        cfg = self.config
        try:
            self.window = Window.open(self.canvas, cfg, error=LiveError)
            self._vsync = self.window.vsync
            self._start_services()
            self.input.start(retry=True)  # a busy or late microphone is retried with back-off; the picture idles
        except BaseException:
            self.close()
            raise
        self._t0 = time.perf_counter()
        gc.collect()
        gc.freeze()  # start-up objects (model, pygame, numpy) leave the collector's generations: shorter pauses
        period = 1.0 / cfg.fps if cfg.fps > 0 else 0.0
        deadline = self._t0
        last_flip: float | None = None
        previous_t = 0.0
        self.running = True
        self.rss.sample(0.0, force=True)
        self.rss_start_mb = rss_mb()
        try:
            while self.running:
                frame_start = time.perf_counter()
                cpu_start = time.thread_time()
                t = frame_start - self._t0
                dt = max(0.0, t - previous_t)
                previous_t = t
                self._frame_failed = False
                with self._stage("input/parameters"):
                    self._handle_events()
                    self._apply_params(dt)
                new = self._no_samples
                with self._stage("audio"):
                    new = self._listen(t, dt)
                sp: dict[str, Any] = {}
                with self._stage("generator"):
                    sp = {
                        **self.config.scene_settings.get(self.scene_name, {}),
                        **scene_params(self.params.snapshot(), self.scene_name),
                    }
                    self._generate(t, dt, sp)
                    self._collect()
                if not self.params.get("blackout"):
                    with self._stage(f"scene {self.scene_name}"):
                        self._draw(t, sp)
                with self._stage("sound"):
                    self._feed_sound(new)
                with self._stage("overlay"):
                    self._overlay(t)
                with self._stage("display"):
                    assert self.window is not None
                    self.window.present(
                        blackout=bool(self.params.get("blackout")),
                        brightness=float(self.params.get("brightness")),
                        overlay=bool(self.params.get("overlay")),
                    )
                flipped = time.perf_counter()
                self.frames += 1
                self.scene_frames[self.scene_name] = self.scene_frames.get(self.scene_name, 0) + 1
                self.work_times.add((flipped - frame_start) * 1000.0)
                self.work_cpu_times.add((time.thread_time() - cpu_start) * 1000.0)
                if last_flip is not None:
                    self.frame_times.add((flipped - last_flip) * 1000.0)
                last_flip = flipped
                self._fps_window.append(flipped)
                if len(self._fps_window) > 2 and self._fps_window[-1] - self._fps_window[0] > 1.0:
                    del self._fps_window[0]
                if self.on_frame is not None:
                    self.on_frame(self, flipped, self.canvas)
                run_t = flipped - self._t0
                self.rss.sample(run_t)
                self._status()
                if cfg.report is not None and run_t >= self._report_next:
                    self._report_next = run_t + cfg.report_every_s
                    if run_t > 0:
                        self.write_report(cfg.report)
                if cfg.duration_s is not None and run_t >= cfg.duration_s:
                    self.stop("duration reached")
                    break
                if period > 0:
                    deadline += period
                    now = time.perf_counter()
                    if deadline < now - period:  # more than a frame late: don't catch up in a burst
                        deadline = now
                    elif deadline > now:
                        time.sleep(deadline - now)
        except BaseException as exc:  # Ctrl-C, SIGTERM (run.py), a bug: the report below still says what happened
            self.quit_reason = self.quit_reason or f"interrupted ({type(exc).__name__})"
            raise
        finally:
            self.running = False
            self.wall_s = time.perf_counter() - self._t0
            self.rss.sample(self.wall_s, force=True)
            gc.unfreeze()
            self.close()
            report = self.report()
            if cfg.report is not None:
                self.write_report(cfg.report, report)
        return report

    def close(self) -> None:
        """Release everything (idempotent)."""
        self.worker.close()
        try:
            self.input.close()
        except Exception:  # noqa: BLE001
            log.warning("closing the audio input failed", exc_info=True)
        if self.sound is not None:
            try:
                self.sound.stop()
            except Exception:  # noqa: BLE001
                log.warning("stopping sound failed", exc_info=True)
        if self.osc is not None:
            try:
                self.osc.stop()
            except Exception:  # noqa: BLE001
                log.warning("closing OSC failed", exc_info=True)
        if self.window is not None:
            self.window.close()
            self.window = None
        if self._owns_generator and hasattr(self.generator, "close"):
            self.generator.close()

    # -- report ---------------------------------------------------------------------------------------------------

    def report(self) -> dict[str, Any]:
        """What an operator needs after a run (JSON-ready).

        Keys: ``frames``, ``wall_s``, ``fps`` (``mean`` = frames / wall time; ``p50`` = 1 / median frame time;
        ``p99`` = 1 / p99 frame time, i.e. 99 % of frames came at least this fast), ``frame_ms`` (interval
        between flips: n, mean, p50, p90, p99, max), ``frame_ms_histogram`` (counts between edges),
        ``work_ms`` (frame work before pacing, wall time), ``work_cpu_ms`` (the same in main-thread CPU time: a
        large gap to ``work_ms`` means the thread waited for a core, i.e. other load), ``draw_ms``, ``generator`` (backend, calls, errors, replaced
        requests, discarded results, ``ms`` p50/p99 of one call), ``frame_errors``, ``audio`` (input, state,
        rate, overflows, reconnects, stalls, onsets, gaps, events), ``osc`` (``enabled``; the server's packets,
        handled, ignored, rejected {reason: n}, rejected_total; feedback counters; or why it is off),
        ``vad`` (``open_s``: seconds of audio the voice gate was open; ``gate_open_s``: run seconds the loop's gate --
        VAD or fast onset -- was open; ``noise_floor_dbfs``: the noise floor at the end; ``analysed_s``: seconds of
        audio analysed), ``attract`` (:meth:`installation.attract.Attract.stats`),
        ``params`` (queue counters: enqueued, dropped, rejected, applied), ``sound``, ``rss_mb`` (start, end, peak from getrusage,
        growth %, series [[t, MiB], ...]), ``scenes`` (frames per scene), ``quit_reason``.
        """
        wall = getattr(self, "wall_s", None) or max(1e-9, time.perf_counter() - self._t0)
        ft = self.frame_times
        p50, p99 = ft.percentile(50), ft.percentile(99)
        points = self.rss.points
        start_mb = getattr(self, "rss_start_mb", points[0][1] if points else rss_mb())
        end_mb = points[-1][1] if points else rss_mb()
        # growth after warm-up: from the first sample at >= 10 % of the run (caches, JIT, first frames) to the end
        base = next((mb for t, mb in points if t >= 0.1 * wall), start_mb)
        osc_stats: dict[str, Any] = {"enabled": False, "error": self.osc_error}
        if self.osc is not None:
            try:
                stats = self.osc.stats()
                osc_stats = {"enabled": True, **stats.get("osc", {}), "feedback": stats.get("feedback", {})}
            except Exception as exc:  # noqa: BLE001 - the report must still be written
                osc_stats = {"enabled": True, "error": str(exc)}
        params_stats = self.params.stats() if hasattr(self.params, "stats") else None
        inp = self.input
        w = self.worker
        return {
            "frames": self.frames,
            "wall_s": round(wall, 3),
            "fps": {
                "mean": round(self.frames / wall, 2) if wall > 0 else None,
                "p50": round(1000.0 / p50, 2) if p50 else None,
                "p99": round(1000.0 / p99, 2) if p99 else None,
                "target": self.config.fps,
            },
            "frame_ms": ft.summary(),
            "frame_ms_histogram": ft.coarse(FRAME_EDGES_MS),
            "work_ms": self.work_times.summary(),
            "work_cpu_ms": self.work_cpu_times.summary(),
            "draw_ms": self.draw_times.summary(),
            "frame_errors": self.frame_errors,
            "generator": {
                "backend": self.backend,
                "calls": w.finished,
                "errors": w.errors,
                "submitted": w.submitted,
                "replaced": w.replaced,
                "discarded": w.discarded,
                "ms": w.times.summary(),
            },
            "audio": {
                "input": getattr(inp, "description", str(self.config.input)),
                "state": getattr(inp, "state", None),
                "rate": getattr(inp, "sample_rate", None),
                "overflows": getattr(inp, "overflows", 0),
                "reconnects": getattr(inp, "reconnects", 0),
                "stalls": getattr(inp, "stalls", 0),
                "onsets": self.fast.onsets,
                "reader_gaps": self.reader.gaps,
                "events": [list(e) for e in self.events[-50:]],
            },
            "vad": {
                "open_s": round(self.vad.open_s, 2),
                "gate_open_s": round(self.gate_open_s, 2),
                "noise_floor_dbfs": round(float(self.vad.floor_db), 1),
                "analysed_s": round(self.vad.frames * self.vad.frame_seconds, 2),
            },
            "attract": self.attract.stats(),
            "osc": osc_stats,
            "params": params_stats,
            "sound": {"enabled": self.sound is not None or False, "error": self.sound_error},
            "rss_mb": {
                "start": round(start_mb, 2),
                "after_warmup": round(base, 2),
                "end": round(end_mb, 2),
                # ru_maxrss and /proc/self/statm count slightly differently: the peak is never below a sample
                "peak": round(max([peak_rss_mb(), start_mb, end_mb, *(mb for _, mb in points)]), 2),
                "growth_pct": round(100.0 * (end_mb - base) / base, 2) if base else None,
                "series": [list(p) for p in points],
            },
            "scenes": dict(self.scene_frames),
            "display": {
                "size": [self.config.width, self.config.height],
                "fullscreen": self.config.fullscreen,
                "driver": getattr(self.window, "driver", None) or os.environ.get("SDL_VIDEODRIVER", ""),
                "vsync": getattr(self, "_vsync", None),
            },
            "quit_reason": self.quit_reason,
        }

    def write_report(self, path: Path, report: dict[str, Any] | None = None) -> None:
        """Write the report as JSON (atomically: temporary file + rename)."""
        data = report or self.report()
        path = Path(path)
        tmp = path.with_name(f".{path.name}.tmp")
        try:
            tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
            os.replace(tmp, path)
        except OSError as exc:
            log.error("cannot write report %s: %s", path, exc)


# -- presets and command line ---------------------------------------------------------------------------------------


def preset_param_values(preset: Any) -> dict[str, Any]:
    """Every live parameter's value under ``preset`` (the declared defaults overlaid with its ``params``),
    without the commands (``preset/load``, ``quit`` and the other triggers): loading a preset live sets them all."""
    values = preset.param_values() if hasattr(preset, "param_values") else dict(getattr(preset, "params", {}))
    return {k: v for k, v in values.items() if not (k in PARAMS and PARAMS[k].is_command)}


def input_spec(source: str | int, base: Path | None = None) -> str | int | Path:
    """A preset ``input.source`` / ``--input`` value as :func:`installation.audio_in.open_input` takes it.

    Files become absolute :class:`~pathlib.Path` objects (relative to ``base``: the repository root for presets,
    the current directory for the command line); ``mic``, device indexes and names pass through.
    """
    from installation.presets import ROOT, parse_input

    parsed = parse_input(source, base or ROOT)
    if parsed.kind == "file":
        assert parsed.path is not None
        return parsed.path
    if parsed.kind == "mic":
        return "mic"
    assert parsed.device is not None
    return parsed.device


def sound_config(section: Any) -> Any:
    """The preset's ``sound`` section (an :class:`installation.sound.SoundConfig`) for the live loop, or ``None``
    (sound off): :meth:`installation.sound.SoundConfig.for_live`; ``output: offline`` (no speaker) runs silent."""
    if section is None or not section.enabled:
        return None
    from installation.sound import SoundUnavailable

    try:
        return section.for_live()
    except SoundUnavailable as exc:
        log.info("%s; the live installation runs silent", exc)
        return None


def _super_resolved(generator: Any, config: LiveConfig) -> Any:
    """``generator`` followed by the super-resolution bundle ``config.super_resolution`` on single faces, on the
    same backend request (:class:`engine.superres.SuperResolved`); closes ``generator`` on failure. The stage gets
    one CPU thread: ONNX Runtime then runs it on the calling thread, the generator thread, whose raised nice value
    (``gen_nice``) lets the frame loop win under contention; a second intra-op thread would be a pool thread at
    the main thread's priority.

    A stage made for another image size than the generator's (the base preset's 64 px face stage with a 32 px
    digits bundle) is skipped with a warning: the preset default must not stop a bundle it was not made for.

    Raises:
        UserError: the bundle is missing, corrupt or not a super-resolution bundle.
    """
    from engine.generator import Generator
    from engine.superres import ImageSizeMismatch, SuperResolutionError, SuperResolved

    try:
        upscaler = Generator(config.super_resolution, backend=config.backend, device=config.device, max_batch=1,
                             threads=1, ort_spin=config.gen_spin)  # fmt: skip
        try:
            return SuperResolved(generator, upscaler, max_faces=1)
        except ImageSizeMismatch as exc:
            upscaler.close()
            log.warning("engine.super_resolution: skipped: %s", exc)
            return generator
        except SuperResolutionError as exc:
            upscaler.close()
            raise LiveError(f"engine.super_resolution: {exc} (set engine.super_resolution: '' to turn it off)") from None
    except BaseException:
        generator.close()
        raise


def config_from_preset(preset: Any) -> LiveConfig:
    """Map an :class:`installation.presets.Preset` onto :class:`LiveConfig`.

    Raises:
        LiveError: a value the live loop cannot use (the message names the preset key).
    """
    d, i, e = preset.display, preset.input, preset.engine
    try:
        sound = sound_config(preset.sound)
    except (ImportError, ValueError) as exc:
        log.warning("sound disabled: preset %s sound section: %s", preset.name, exc)
        sound = None
    width, height = (int(v) for v in d.size)
    return LiveConfig(
        bundle=e.bundle_path,
        backend=e.backend,
        device=e.device or None,
        gen_threads=int(e.threads) or None,
        gen_spin=str(e.ort_spin),
        max_batch=int(e.max_batch),
        super_resolution=e.super_resolution_path,
        input=input_spec(i.source),
        input_rate=int(i.sample_rate),
        input_channels=int(i.channels),
        input_loop=bool(i.loop),
        heartbeat_s=float(i.heartbeat_s),
        reconnect_min_s=float(i.reconnect_min_s),
        reconnect_max_s=float(i.reconnect_max_s),
        width=width,
        height=height,
        fullscreen=bool(d.fullscreen),
        windowed_size=tuple(int(v) for v in d.windowed_size),  # type: ignore[arg-type]
        display=int(d.display),
        vsync=bool(d.vsync),
        video_driver=str(d.driver),
        hide_cursor=bool(d.hide_cursor),
        fps=float(d.fps),
        picture=preset.render_params(),
        scene_settings={k: dict(v) for k, v in preset.scenes.items()},
        attract=getattr(preset, "attract", AttractConfig()),
        params=dict(preset.params),
        osc=preset.osc if preset.osc.enabled else None,
        sound=sound,
        preset_name=preset.name,
        service=getattr(preset, "service", None),
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``run.py live``."""
    parser.add_argument("--preset", default=None, help="preset name (presets/<name>.yaml) or path (default: gallery)")
    parser.add_argument(
        "--input",
        default=None,
        help="audio input: 'mic' (default device), a device index or name, or an audio file played in real "
        "time, looping (default: the preset's)",
    )
    parser.add_argument("--windowed", action="store_true", help="a window instead of fullscreen")
    parser.add_argument(
        "--display", type=int, default=None, help="display index for fullscreen (default: the preset's)"
    )
    parser.add_argument("--duration", type=finite_float, default=None, help="stop after this many seconds")
    parser.add_argument("--report", type=Path, default=None, help="write a JSON report here (also during the run)")
    parser.add_argument("--bundle", default=None, help="model bundle directory (default: the preset's)")
    parser.add_argument("--backend", default=None, help="engine backend (default: the preset's, auto)")


def resolve_config(args: argparse.Namespace) -> LiveConfig:
    """Preset (``--preset``, default ``gallery``) + command-line overrides -> :class:`LiveConfig`.

    Raises:
        installation.presets.PresetError / LiveError: unknown preset, bad values (one line naming them).
    """
    from installation.presets import load_preset

    config = config_from_preset(load_preset(args.preset or "gallery"))
    changes: dict[str, Any] = {}
    if args.input is not None:
        changes["input"] = input_spec(args.input, Path.cwd())
    if args.windowed:
        changes["fullscreen"] = False
    if args.display is not None:
        changes["display"] = args.display
    if args.duration is not None:
        changes["duration_s"] = args.duration
    if args.report is not None:
        changes["report"] = args.report
    if getattr(args, "bundle", None):
        changes["bundle"] = Path(args.bundle)
    if getattr(args, "backend", None):
        changes["backend"] = args.backend
    return replace(config, **changes) if changes else config


def main(args: argparse.Namespace) -> int:
    """Run ``run.py live``; returns 0. Raises UserError for bad options, or when another instance runs and the
    preset says ``service.single_instance`` (run.py prints it, exit 2).

    Unattended duties (:class:`installation.service.Service`): the instance lock and the log file before anything
    starts, systemd's READY/WATCHDOG from the frames, SIGTERM ends the loop cleanly."""
    from installation.service import Service

    config = resolve_config(args)
    with Service("live", config.service) as service:
        loop = LiveLoop(config, on_frame=service.frame)
        service.on_stop(loop.stop)
        report = loop.run()
    print(
        f"live: {report['frames']} frames in {report['wall_s']:.1f} s ({report['fps']['mean']} fps), "
        f"p99 frame {report['frame_ms']['p99']} ms, {report['frame_errors']} frame errors, "
        f"{report['audio']['reconnects']} reconnects [{report['generator']['backend']}]"
    )
    return 0
