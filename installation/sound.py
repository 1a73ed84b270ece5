"""Generated sound with pyo: a granular echo of the visitor's voice (live and offline for ``render --sound``).

The live installation's microphone belongs to sounddevice, so the pyo server here is **output only**
(``duplex=0``). The voice reaches pyo through a table filled from the main thread's :meth:`SoundEngine.feed`
(at the frame rate, from the audio ring), and every parameter reaches pyo's audio thread through pyo's own
thread-safe objects (``Sig`` / ``SigTo``, see ARCHITECTURE.md "Threads"). All pyo objects are built in
:meth:`SoundEngine.start`; afterwards they are only modulated (no object is created per frame:
``tests/test_sound.py`` counts them). For a real device the server and its graph live in a child process
(the same :class:`SoundEngine` code); ``feed`` then writes a shared-memory ring and parameters travel over a
pipe, and the child copies the ring into the table every ~5 ms (reasons below).

Signal graph (built once, in :meth:`SoundEngine._build`)::

    voice table (DataTable, voice_rate Hz, memory_s seconds + a guard copy of its start)
      |  written in place by feed(); the write head (samples) is a Sig
      +--> dry: Granule, synchronous, 2 Hann grains overlapping (constant sum), no transposition,
      |         reading dry_delay_s behind the head  -> a clean, slightly delayed copy of the voice
      +--> wet: 2 Granules (left/right), asynchronous, density = sound/density x (0.25 + 0.75 level),
                transposition = sound/pitch + an interval chosen by the generated identity,
                grain duration = pitch-synchronous (periods_per_grain / pitch_hz) or default_grain_s,
                each grain starts echo_min_s .. echo_min_s + echo_spread_s behind the head (random)
      generated voice (bundles with a ``sound`` output, :mod:`installation.voice_stage`): a DataTable at the
      server rate -> Looper (``loop`` mode: replaces the cloud), and an answer table -> TableRead played once
      from its start by :meth:`SoundEngine.answer` (``answer`` mode: when the visitor stops speaking)
    out[c] = on_fade x level x ((1 - mix) dry + mix x norm x wet[c] + answer),   wet[c] = cloud[c] or the loop
    (norm = 1.6 / sqrt(max(1, density x grain_s)) keeps the cloud near unity loudness at any density)

Granular synthesis after Roads, *Microsound* (MIT Press, 2001): asynchronous granular synthesis (ch. 3)
for the cloud, pitch-synchronous grain durations (ch. 4) when the voice has a pitch, and a synchronous
overlap-add stream (Hann windows at 50 % overlap sum to one) for the dry copy. pyo reference:
http://ajaxsoundstudio.com/pyodoc/ (``Server``, ``DataTable``, ``Granule``, ``Looper``, ``SigTo``,
``Pattern``).

pyo facts this module relies on (pyo 1.1.0, checked here; see the tests), and why the real-time server
runs in a child process by default (``SoundConfig.isolate``):

* pyo's audio callback takes the GIL for every buffer (``Server_process_buffers``: ``PyGILState_Ensure``).
  In the installation's process the main thread (pygame, the generator) would delay it; in a child process
  only the child's light command loop competes with it.
* Stopping a portaudio server on Linux/ALSA calls ``Pa_AbortStream``, which cancels the audio thread; if
  that thread held the GIL the whole interpreter deadlocks (reproduced here with an ALSA null device:
  ``Server.stop()`` waited for the GIL forever, gdb trace in the report). The child therefore fades out and
  exits without stopping PortAudio (the OS closes the device); the parent kills it if it does not exit.
* ``Server(audio='portaudio').boot()`` **segfaults** when portaudio has no default output device (this
  machine; a gallery PC whose USB interface is unplugged): pyo dereferences ``Pa_GetDeviceInfo(-1)``. With
  no device set, pyo opens device 0 on ALSA instead of the default. The engine checks the device list and
  always passes an explicit index; a crash that remains only takes the child down (``SoundUnavailable``).
  A missing JACK server fails cleanly (``getIsBooted()`` is false).
* A table's ``getBuffer()`` exposes its float32 samples to numpy without copying; a numpy view that
  outlives its table corrupts the heap, so views here are taken per call and never stored.
* ``Granule`` plays a grain only if its whole read span (``dur x sr x pitch`` table samples from ``pos``)
  lies inside the table, and reads table samples at ``pitch`` per output sample (pitch 1 = the table's
  own rate only if it equals the server's): the voice table carries a guard copy of its start after its
  end and every pitch includes ``voice_rate / server_rate``.
* Several servers may live one after another in one process if each is stopped, its objects released
  and then shut down (in that order); two at once are not supported here (objects attach to the most
  recent server): one in-process engine at a time per process.
* The offline server writes whole buffers (its file is up to one buffer longer than ``dur``: trimmed) and
  runs ``Pattern`` callbacks in the rendering thread at buffer boundaries: :func:`render_offline` feeds the
  voice from such a callback using the server's sample clock, so offline renders are exact and
  deterministic (``Server.setGlobalSeed``). Offline renders run in-process (no device, nothing to cancel).
"""

from __future__ import annotations

import contextlib
import gc
import logging
import math
import os
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np

from engine.errors import UserError

log = logging.getLogger(__name__)

__all__ = [
    "SOUND_PARAMS",
    "EchoDesign",
    "SoundConfig",
    "SoundEngine",
    "SoundError",
    "SoundSettings",
    "SoundUnavailable",
    "StateTrack",
    "render_offline",
    "settings_from",
]


class SoundError(RuntimeError):
    """The sound engine was misused (e.g. a second engine started while one runs, a call before start)."""


class SoundUnavailable(UserError, OSError):
    """pyo cannot produce sound here (pyo missing, no output device, JACK not running, driver crash).

    The live loop catches this and runs without sound; the message says why in one line.
    """


# -- parameters -----------------------------------------------------------------------------------------

SOUND_PARAMS: dict[str, tuple[float, float]] = {
    "sound/on": (0.0, 1.0),
    "sound/level": (0.0, 1.0),
    "sound/mix": (0.0, 1.0),
    "sound/pitch": (-12.0, 12.0),
    "sound/density": (1.0, 60.0),
}
"""The operator's sound parameters (``installation/params.py`` declares them; OSC ``/avgan/<name>``) and the
ranges :meth:`SoundEngine.set_param` clamps to: on (bool), level (linear gain 0-1), mix (0 dry - 1 wet),
pitch (semitones), density (grains per second)."""


@dataclass(frozen=True)
class SoundSettings:
    """Values of the operator's sound parameters (see :data:`SOUND_PARAMS`).

    Attributes:
        on: sound on/off (fades over ``EchoDesign.fade_s``, never clicks).
        level: output gain, linear amplitude 0-1 (0.5 is -6 dB).
        mix: 0 = only the dry (delayed) voice, 1 = only the granular cloud.
        pitch: transposition of the cloud in semitones, -12..12 (the identity's interval adds to it).
        density: grains per second of the cloud at full voice level, 1-60.
    """

    on: bool = True
    level: float = 0.8
    mix: float = 0.5
    pitch: float = 0.0
    density: float = 12.0

    def as_params(self) -> dict[str, float]:
        """``{"sound/on": 1.0, "sound/level": ...}``: the parameters by their OSC/preset names."""
        return {f"sound/{f.name}": float(getattr(self, f.name)) for f in fields(self)}


@dataclass(frozen=True)
class EchoDesign:
    """Fixed shape of the granular echo (not on OSC). Seconds unless stated.

    Attributes:
        memory_s: how much past voice the table holds.
        dry_delay_s: delay of the dry copy behind the write head (must exceed one feed interval plus
            ``dry_grain_s``: grains must not read where ``feed`` has not written yet).
        dry_grain_s: grain length of the dry overlap-add stream (two grains overlap).
        echo_min_s, echo_spread_s: each cloud grain starts uniformly ``echo_min_s`` to
            ``echo_min_s + echo_spread_s`` behind the head.
        default_grain_s: cloud grain length when the voice has no pitch.
        periods_per_grain: pitch-synchronous grain length = this many periods of ``pitch_hz``.
        min_grain_s, max_grain_s: grain length limits.
        intervals: semitones added to ``sound/pitch`` for identity ``i``: ``intervals[i % len]``.
        max_transpose: total transposition limit in semitones (both ways).
        detune: random per-grain pitch deviation (fraction, e.g. 0.004 = +-7 cents).
        fade_s: on/off fade. level_ramp_s, mix_ramp_s, pitch_ramp_s, density_ramp_s, grain_ramp_s:
            SigTo ramp times of the other controls.
        generated_max_s: longest generated clip :meth:`SoundEngine.play_generated` keeps.
    """

    memory_s: float = 4.0
    dry_delay_s: float = 0.15
    dry_grain_s: float = 0.08
    echo_min_s: float = 0.25
    echo_spread_s: float = 1.25
    default_grain_s: float = 0.1
    periods_per_grain: float = 12.0
    min_grain_s: float = 0.03
    max_grain_s: float = 0.25
    intervals: tuple[float, ...] = (0.0, 7.0, -5.0, 12.0, 5.0, -12.0, 3.0, 10.0)
    max_transpose: float = 24.0
    detune: float = 0.004
    fade_s: float = 0.3
    level_ramp_s: float = 0.05
    mix_ramp_s: float = 0.1
    pitch_ramp_s: float = 0.15
    density_ramp_s: float = 0.3
    grain_ramp_s: float = 0.1
    generated_max_s: float = 8.0

    def __post_init__(self) -> None:
        if self.dry_delay_s <= self.dry_grain_s:
            raise ValueError("EchoDesign.dry_delay_s must exceed dry_grain_s (dry grains would read unwritten samples)")
        if self.memory_s < self.echo_min_s + self.echo_spread_s + self.max_grain_s:
            raise ValueError("EchoDesign.memory_s must hold echo_min_s + echo_spread_s + max_grain_s")
        if not 0 < self.min_grain_s <= self.default_grain_s <= self.max_grain_s:
            raise ValueError("EchoDesign grain lengths must satisfy 0 < min <= default <= max")
        if not self.intervals:
            raise ValueError("EchoDesign.intervals must not be empty")


def _range(default: Any, lo: float, hi: float, unit: str = "") -> Any:
    """A dataclass field with an inclusive range (checked by :class:`SoundConfig` and by the preset loader)."""
    return field(default=default, metadata={"range": (lo, hi), "unit": unit})


OUTPUTS = ("device", "jack", "offline")
"""Values of :attr:`SoundConfig.output`."""


@dataclass(frozen=True)
class SoundConfig:
    """Where the sound goes: a preset's ``sound:`` section (:mod:`installation.presets` loads it strictly) and the
    :class:`SoundEngine`'s configuration, one dataclass. Rates in Hz. Level, mix, pitch, density and on/off are
    live ``params`` (``sound/...``), not here.

    Attributes:
        enabled: start the pyo server at all (``False``: no sound, whatever ``params`` say); the live loop's switch
            (:meth:`for_live`), ignored by :class:`SoundEngine`.
        output: ``"device"`` (a real audio output through portaudio: ALSA/PulseAudio/CoreAudio/WASAPI), ``"jack"``,
            or ``"offline"`` (pyo's offline server renders ``record_path`` as fast as possible and
            :meth:`SoundEngine.start` blocks; nothing reaches a speaker: ``render --sound`` and headless machines,
            a live run with it runs silent). pyo's ``PYO_SERVER_AUDIO`` environment variable overrides device/jack.
        device: ``"device"`` output only: portaudio output device index, or a (case-insensitive) part of its name;
            ``""``: the system default.
        sample_rate: server rate, 8000-192000 Hz.
        buffer_size: samples per pyo buffer, a power of two from 32 to 8192 (latency = buffer_size / sample_rate;
            512 at 48 kHz = 10.7 ms, robust on a busy 2-core machine).
        channels: output channels of the server, 1-64 (1: everything summed to mono; 2 or more: the stereo cloud
            on the first two, the others silent).
        jack_name: JACK client name.
        isolate: real-time only: run the pyo server in a child process (default; see the module docstring:
            pyo can segfault on boot, deadlock the interpreter on stop, and takes the GIL every buffer). False:
            in this process (JACK or macOS users who accept that; the tests' offline renders are in-process).
        seed: random seed of the grains (pyo ``Server.setGlobalSeed``); the same seed and input give the same
            offline render.
        record_path: offline only: the WAV file to write (32-bit float); :class:`SoundEngine` requires it.
        duration_s: offline only: seconds to render; :class:`SoundEngine` requires it.

    Raises:
        ValueError: an output, rate, buffer size or channel count out of range (``key 'sound.<name>'``, as the
            preset loader names it).
    """

    enabled: bool = True
    output: Literal["device", "jack", "offline"] = "device"
    device: str | int = ""
    sample_rate: int = _range(48000, 8000, 192000, "Hz")
    buffer_size: int = _range(512, 32, 8192, "samples")
    channels: int = _range(2, 1, 64)
    jack_name: str = "avgan"
    isolate: bool = True
    seed: int = 0
    record_path: str | None = None
    duration_s: float | None = None

    def __post_init__(self) -> None:
        if self.output not in OUTPUTS:
            raise ValueError(f"key 'sound.output': expected one of {', '.join(OUTPUTS)}, got {self.output!r}")
        for f in fields(self):
            if "range" in f.metadata:
                lo, hi = f.metadata["range"]
                value = getattr(self, f.name)
                if not lo <= value <= hi:
                    unit = f" {f.metadata['unit']}" if f.metadata["unit"] else ""
                    raise ValueError(f"key 'sound.{f.name}': {value!r} out of range [{lo:g}, {hi:g}]{unit}")
        if self.buffer_size & (self.buffer_size - 1):
            raise ValueError(f"key 'sound.buffer_size': expected a power of two (pyo), got {self.buffer_size}")

    @property
    def pyo_audio(self) -> str:
        """pyo's ``Server(audio=...)`` for :attr:`output`: ``"portaudio"``, ``"jack"`` or ``"offline"``."""
        return "portaudio" if self.output == "device" else self.output

    @property
    def output_device(self) -> int | str | None:
        """:attr:`device` for portaudio: ``None`` for the system default (``""``)."""
        return None if self.device in (None, "") else self.device

    def for_live(self) -> SoundConfig | None:
        """This config for a live run: ``None`` when not :attr:`enabled`.

        Raises:
            SoundUnavailable: ``output: offline``: the offline server renders files (``render --sound``), it
                cannot follow a live microphone.
        """
        if not self.enabled:
            return None
        if self.output == "offline":
            raise SoundUnavailable("sound: output 'offline' is for render --sound; a live run needs output: device")
        return self


@dataclass(frozen=True)
class StateTrack:
    """The generator's state over time, for :func:`render_offline` (what the live loop passes to
    :meth:`SoundEngine.set_state` every frame).

    Attributes:
        times: float [F], seconds, increasing: state ``j`` holds from ``times[j]`` until ``times[j+1]``.
        level: float [F], voice level 0-1 (e.g. the VAD envelope).
        pitch_hz: float [F], voice fundamental in Hz (0: none/unknown), or None (all 0).
        identity: int [F], identity (or face) index, -1 for none, or None (all none).
    """

    times: np.ndarray
    level: np.ndarray
    pitch_hz: np.ndarray | None = None
    identity: np.ndarray | None = None

    def __post_init__(self) -> None:
        n = np.asarray(self.times).shape[0]
        for name in ("level", "pitch_hz", "identity"):
            value = getattr(self, name)
            if value is not None and np.asarray(value).shape != (n,):
                raise ValueError(f"StateTrack.{name}: expected shape ({n},), got {np.asarray(value).shape}")

    def at(self, t: float) -> tuple[float, float, int | None]:
        """``(level, pitch_hz, identity)`` holding at ``t`` seconds (before the first time: ``(0, 0, None)``)."""
        j = int(np.searchsorted(self.times, t, side="right")) - 1
        if j < 0:
            return 0.0, 0.0, None
        pitch = 0.0 if self.pitch_hz is None else float(self.pitch_hz[j])
        ident = None if self.identity is None or int(self.identity[j]) < 0 else int(self.identity[j])
        return float(self.level[j]), pitch, ident


# -- pyo access ------------------------------------------------------------------------------------------

_ACTIVE_LOCK = threading.Lock()
_ACTIVE: SoundEngine | None = None


def _pyo() -> Any:
    """Import pyo quietly (no wxPython nag on stdout). Raises SoundUnavailable if pyo is not installed."""
    os.environ.setdefault("PYO_GUI_WX", "0")
    try:
        import pyo
    except ImportError as exc:  # pragma: no cover - pyo is a dependency
        raise SoundUnavailable(f"sound: pyo is not importable ({exc}); running without sound") from exc
    return pyo


def _output_device_index(pyo: Any, device: int | str | None) -> int:
    """Resolve a portaudio output device (index, part of a name, or None for the system default) to its index.

    Always an explicit index: pyo opens device 0 on ALSA when no device is set (not the default), and
    dereferences a null device (segfault) when portaudio has no default output.

    Raises:
        SoundUnavailable: portaudio lists no output device, or none matches ``device``.
    """
    names, indexes = pyo.pa_get_output_devices()
    if not indexes:
        raise SoundUnavailable("sound: portaudio lists no audio output device (no sound card?)")
    if device is None:
        default = int(pyo.pa_get_default_output())
        if default not in indexes:
            raise SoundUnavailable("sound: portaudio has no default output device; name one in the preset")
        return default
    listing = ", ".join(f"{i}: {n}" for n, i in zip(names, indexes))
    if isinstance(device, int) or (isinstance(device, str) and device.strip().isdigit()):
        index = int(device)
        if index not in indexes:
            raise SoundUnavailable(f"sound: no output device {index}; available: {listing}")
        return index
    matches = [i for n, i in zip(names, indexes) if str(device).lower() in str(n).lower()]
    if not matches:
        raise SoundUnavailable(f"sound: no output device named like {device!r}; available: {listing}")
    return matches[0]


# -- the child process (real-time backends) -----------------------------------------------------------------

_RING_S = 2.0
"""Seconds of voice the shared ring between the main process and the sound process holds."""


class _Remote:
    """Main-process side of a :class:`SoundEngine` whose pyo server runs in a child process.

    Voice samples go through a shared-memory ring (int64 header: [samples written, output samples computed],
    then float32 samples at ``voice_rate``); parameters, state and generated clips go through a socket pair
    (``multiprocessing.connection.Connection``: pickled tuples). The child (:func:`_child_main`, a fresh
    ``python`` started with :mod:`subprocess`, so no ``__main__`` re-import and no fork of a threaded
    process) runs an in-process :class:`SoundEngine` and copies new ring samples into its table every ~5 ms.
    """

    def __init__(self, engine: SoundEngine, start_timeout_s: float) -> None:
        import socket
        import subprocess
        import sys
        from multiprocessing import shared_memory
        from multiprocessing.connection import Connection

        self.capacity = max(1024, round(_RING_S * engine.voice_rate))
        self.stream_count = 0
        self.process: Any = None
        self.shm = shared_memory.SharedMemory(create=True, size=16 + 4 * self.capacity)
        self.header: Any = np.ndarray((2,), np.int64, self.shm.buf, 0)
        self.ring: Any = np.ndarray((self.capacity,), np.float32, self.shm.buf, 16)
        self.header[:] = 0
        self.ring[:] = 0.0
        ours, theirs = socket.socketpair()
        self.conn = Connection(ours.detach())
        try:
            root = str(Path(__file__).resolve().parents[1])
            code = (
                f"import sys; sys.path.insert(0, {root!r}); from installation.sound import _child_main; _child_main()"
            )
            fd = theirs.fileno()
            self.process = subprocess.Popen(
                [sys.executable, "-c", code, str(fd)],
                pass_fds=(fd,),
                env={**os.environ, "PYO_GUI_WX": "0"},
            )
            theirs.close()
            setup = {
                "shm": self.shm.name,
                "capacity": self.capacity,
                "config": asdict(replace(engine.config, isolate=False)),
                "voice_rate": engine.voice_rate,
                "settings": asdict(engine.settings),
                "params": engine.params(),
                "design": asdict(engine.design),
                "parent": os.getpid(),
            }
            self.conn.send(setup)
            if not self.conn.poll(start_timeout_s):
                raise SoundUnavailable(f"sound: the sound process did not start within {start_timeout_s:.0f} s")
            try:
                kind, detail = self.conn.recv()
            except (EOFError, OSError):
                code_ = self.process.wait(2.0)
                raise SoundUnavailable(f"sound: the sound process died while starting (exit {code_})") from None
            if kind != "ready":
                raise SoundUnavailable(detail)
            self.stream_count = int(detail)
        except BaseException:
            theirs.close()
            self.close()
            raise

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def send(self, message: tuple[Any, ...]) -> None:
        """Send a command; a dead sound process is ignored here (see :attr:`SoundEngine.alive`)."""
        with contextlib.suppress(OSError, ValueError):
            self.conn.send(message)

    def write(self, x: np.ndarray) -> None:
        """Append voice samples (float32 [n] at voice_rate) to the ring; publishes the count after the data."""
        cap, written = self.capacity, int(self.header[0])
        end = written + x.size
        m = min(x.size, cap)
        start = (end - m) % cap
        first = min(m, cap - start)
        self.ring[start : start + first] = x[x.size - m : x.size - m + first]
        if first < m:
            self.ring[: m - first] = x[x.size - m + first :]
        self.header[0] = end

    def output_samples(self) -> int:
        return int(self.header[1]) if self.header is not None else 0

    def close(self, timeout_s: float = 2.0) -> None:
        """Ask the child to fade out and exit; kill it if it does not within ``timeout_s``. Idempotent."""
        import subprocess

        if self.alive:
            self.send(("stop",))
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                log.warning("sound: the sound process did not stop within %.1f s; killing it", timeout_s)
                self.process.kill()
                self.process.wait(5.0)
        with contextlib.suppress(Exception):
            self.conn.close()
        self.header = self.ring = None  # release the views before closing the shared memory
        with contextlib.suppress(Exception):
            self.shm.close()
        with contextlib.suppress(Exception):
            self.shm.unlink()


def _child_main() -> None:
    """The sound process (started by :class:`_Remote`): an in-process engine fed from the shared ring,
    commanded over the socket whose descriptor is ``sys.argv[1]``."""
    import sys
    from multiprocessing import shared_memory
    from multiprocessing.connection import Connection

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    conn = Connection(int(sys.argv[1]))
    setup = conn.recv()
    config, design, params = setup["config"], setup["design"], setup["params"]
    capacity, parent_pid = int(setup["capacity"]), int(setup["parent"])
    design["intervals"] = tuple(design["intervals"])
    engine = SoundEngine(
        SoundConfig(**config),
        voice_rate=int(setup["voice_rate"]),
        settings=SoundSettings(**setup["settings"]),
        design=EchoDesign(**design),
    )
    for name, value in params.items():
        engine.set_param(name, value)
    try:
        engine.start()
    except Exception as exc:  # noqa: BLE001 - reported to the parent, which raises SoundUnavailable
        message = str(exc) if isinstance(exc, SoundUnavailable) else f"sound: {type(exc).__name__}: {exc}"
        conn.send(("error", message))
        conn.close()
        return
    shm = shared_memory.SharedMemory(name=setup["shm"])
    with contextlib.suppress(Exception):  # the parent owns (and unlinks) it; Python < 3.13 would track it here too
        from multiprocessing import resource_tracker

        resource_tracker.unregister(shm._name, "shared_memory")  # type: ignore[attr-defined]
    header = np.ndarray((2,), np.int64, shm.buf, 0)
    ring = np.ndarray((capacity,), np.float32, shm.buf, 16)
    read = int(header[0])
    conn.send(("ready", engine.stream_count))
    sample_rate = engine.config.sample_rate
    try:
        while True:
            if conn.poll(0.005):
                message = conn.recv()
                kind = message[0]
                if kind == "stop":
                    break
                if kind == "param":
                    engine.set_param(message[1], message[2])
                elif kind == "state":
                    engine.set_state(message[1], message[2], message[3])
                elif kind == "generated":
                    engine.play_generated(message[1], message[2])
                elif kind == "answer":
                    engine.answer(message[1], message[2])
            written = int(header[0])
            if written - read > capacity // 2:  # fell behind (stalled): resume at the newest samples
                read = written - capacity // 4
            if written > read:
                index = np.arange(read, written) % capacity
                engine.feed(ring[index])
                read = written
            header[1] = int(engine.output_time_s() * sample_rate)
            if os.getppid() != parent_pid:
                break
    except (EOFError, OSError, KeyboardInterrupt):
        pass  # the parent went away
    # Fade out, then leave without PortAudio's Pa_AbortStream: on ALSA it cancels pyo's audio thread, which may
    # hold the GIL, and the interpreter deadlocks (seen here). The OS closes the device. JACK stops cleanly.
    with contextlib.suppress(Exception):
        engine._objs["master"].time = 0.03
        engine._objs["master"].value = 0.0
        time.sleep(0.06)
        if engine.config.output == "jack":
            engine._server.stop()
    del header, ring
    os._exit(0)


# -- the engine --------------------------------------------------------------------------------------------


class SoundEngine:
    """pyo server + granular echo of the voice (see the module docstring for the graph).

    Use from one thread (the live loop's main thread; offline: the render callback)::

        engine = SoundEngine(SoundConfig(output="device"), voice_rate=16000)
        engine.start()                      # SoundUnavailable -> run without sound (~0.3-1 s: a sound process)
        every frame: engine.feed(new_samples, 16000); engine.set_state(level, pitch_hz, identity)
        on OSC:      engine.set_param("sound/mix", 0.4)
        now and then: engine.alive, engine.output_time_s()   # sound process died / device stopped pulling
        engine.stop()                       # idempotent; never hangs (the sound process is killed if need be)

    Real-time backends run the pyo server in a child process unless ``config.isolate`` is False (then
    in-process: on Linux with portaudio, :meth:`stop` can deadlock the interpreter, see the module docstring).
    Offline renders run in-process. Attributes ``memory``, ``guard`` and ``head`` describe the in-process
    voice table; ``samples_fed`` counts the samples given to :meth:`feed` (after resampling).

    Args:
        config: output backend and rates.
        voice_rate: Hz of the voice fed with :meth:`feed` (the bundle's rate; other rates are resampled).
        settings: initial operator parameters.
        design: fixed shape of the echo.
        driver: offline only: ``driver(engine, t)`` is called every ``1 / driver_rate_hz`` seconds of
            rendered time (``t`` in seconds, from the server's sample clock) to feed the voice and state.
        driver_rate_hz: rate of ``driver`` calls (the live loop's frame rate is the natural choice).
    """

    def __init__(
        self,
        config: SoundConfig | None = None,
        *,
        voice_rate: int = 16000,
        settings: SoundSettings | None = None,
        design: EchoDesign | None = None,
        driver: Callable[[SoundEngine, float], None] | None = None,
        driver_rate_hz: float = 60.0,
    ) -> None:
        self.config = config or SoundConfig()
        self.voice_rate = int(voice_rate)
        if not 1000 <= self.voice_rate <= 192000:
            raise ValueError(f"voice_rate: expected 1000..192000 Hz, got {voice_rate}")
        self.design = design or EchoDesign()
        self.settings = settings or SoundSettings()
        self.driver = driver
        self.driver_rate_hz = float(driver_rate_hz)
        if driver is not None and self.config.output != "offline":
            raise ValueError("SoundEngine: a driver callback is for the offline backend only")
        if self.config.output == "offline" and (
            self.config.record_path is None or not self.config.duration_s or self.config.duration_s <= 0
        ):
            raise ValueError("offline sound needs record_path and a positive duration_s")
        d = self.design
        self.memory = max(1, round(d.memory_s * self.voice_rate))
        """Voice table length in samples (the circular part)."""
        self.guard = math.ceil(d.max_grain_s * 2 ** (d.max_transpose / 12) * self.voice_rate) + 16
        """Samples after the circular part that repeat its start (Granule never reads past a table's end)."""
        if self.guard > self.memory:
            raise ValueError("EchoDesign: max_grain_s x 2^(max_transpose/12) must not exceed memory_s")
        self.head = 0
        """Next write position in the voice table, samples in [0, memory)."""
        self.samples_fed = 0
        self._params = {k: float(v) for k, v in self.settings.as_params().items()}
        self._state: tuple[float, float, int | None] = (1.0, 0.0, None)
        self._server: Any = None
        self._objs: dict[str, Any] = {}
        self._sent: dict[str, float] = {}
        self._resampler: tuple[int, Any] | None = None
        self.generating = False
        self._driver_error: BaseException | None = None
        self._remote: _Remote | None = None
        self._remote_state: tuple[float, float, int | None] | None = None
        self.started = False

    # -- lifecycle ------------------------------------------------------------------------------------

    def start(self, timeout_s: float = 30.0) -> SoundEngine:
        """Boot the server, build every pyo object, start processing. Returns self.

        Real-time with ``config.isolate`` (the default): all of that happens in a child process, and this
        returns once it plays (or raises if it cannot, within ``timeout_s`` seconds; ~1 s normally).
        Offline: renders ``config.duration_s`` seconds to ``config.record_path`` and returns when the file is
        written (the engine stays "started" until :meth:`stop`; parameters set afterwards have no effect).

        Raises:
            SoundUnavailable: pyo missing, no usable output device, JACK not running, the sound process
                crashed or hung while starting.
            SoundError: another in-process engine is started in this process.
        """
        global _ACTIVE
        if self.started:
            return self
        cfg = self.config
        if cfg.output != "offline" and cfg.isolate:
            self._remote = _Remote(self, timeout_s)
            self._remote_state = None
            self.started = True
            log.info(
                "sound: pyo %s server in process %d (%d streams)",
                cfg.pyo_audio,
                self._remote.process.pid,
                self.stream_count,
            )
            return self
        pyo = _pyo()
        device = None
        if cfg.output == "device":
            device = _output_device_index(pyo, cfg.output_device)
        with _ACTIVE_LOCK:
            if _ACTIVE is not None:
                raise SoundError("sound: another SoundEngine is running in this process (pyo: one server at a time)")
            _ACTIVE = self
        try:
            server = pyo.Server(
                sr=cfg.sample_rate,
                nchnls=cfg.channels,
                buffersize=cfg.buffer_size,
                duplex=0,
                audio=cfg.pyo_audio,
                jackname=cfg.jack_name,
            )
            server.setVerbosity(1 | 4)  # errors and warnings
            server.deactivateMidi()
            if device is not None:
                server.setOutputDevice(device)
            server.boot()
            if not server.getIsBooted():
                server = None
                raise SoundUnavailable(
                    f"sound: pyo could not boot its {cfg.pyo_audio} output (see pyo's message above)"
                )
            self._server = server
            server.setGlobalSeed(int(cfg.seed) % 2_000_000_000 + 1)  # 0 would mean "seed from the clock"
            if cfg.output == "offline":
                server.recordOptions(
                    dur=float(cfg.duration_s), filename=str(cfg.record_path), fileformat=0, sampletype=3
                )
            self._build(pyo)
            self.started = True
            log.info(
                "sound: pyo %s server at %d Hz, %d ch, buffer %d (%.1f ms), %d streams",
                cfg.pyo_audio,
                cfg.sample_rate,
                cfg.channels,
                cfg.buffer_size,
                1000 * cfg.buffer_size / cfg.sample_rate,
                self.stream_count,
            )
            server.start()  # offline: blocks until the file is written
        except BaseException:
            self._teardown()
            raise
        if self._driver_error is not None:
            error, self._driver_error = self._driver_error, None
            self.stop()
            raise error
        return self

    def stop(self) -> None:
        """Fade out, stop the server, release every pyo object, shut the server down. Idempotent; never raises
        for a server that is already gone. Isolated: asks the sound process to fade out and exit, and kills it
        if it has not within 2 s (so this never hangs)."""
        if not self.started:
            return
        if self._remote is not None:
            remote, self._remote = self._remote, None
            self.started = False
            remote.close()
            return
        if self.config.output != "offline" and self._server is not None:
            with contextlib.suppress(Exception):
                self._objs["master"].time = 0.03
                self._objs["master"].value = 0.0
                time.sleep(0.05)  # let the 30 ms fade reach the output: no click
        self._teardown()

    def _teardown(self) -> None:
        global _ACTIVE
        server, self._server = self._server, None
        self.started = False
        try:
            if server is not None and server.getIsStarted():
                with contextlib.suppress(Exception):
                    server.stop()
            # Objects before the server: deleting pyo objects after Server.shutdown() can crash.
            self._objs.clear()
            self._sent.clear()
            gc.collect()
            if server is not None:
                with contextlib.suppress(Exception):
                    server.shutdown()
                del server
                gc.collect()
        finally:
            with _ACTIVE_LOCK:
                if _ACTIVE is self:
                    _ACTIVE = None

    def __enter__(self) -> SoundEngine:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def stream_count(self) -> int:
        """Audio streams registered with the pyo server (constant after :meth:`start`: nothing is created later)."""
        if self._remote is not None:
            return self._remote.stream_count
        return int(self._server.getNumberOfStreams()) if self._server is not None else 0

    @property
    def alive(self) -> bool:
        """Started and (for an isolated engine) the sound process still runs. A dead process is not restarted
        here: the live loop may :meth:`stop` and :meth:`start` again."""
        return self.started and (self._remote is None or self._remote.alive)

    def output_time_s(self) -> float:
        """Seconds of audio the server has computed since it started (0 before). A value that stops growing
        while :attr:`alive` means the output device stopped asking for audio (unplugged, driver error)."""
        if self._remote is not None:
            return self._remote.output_samples() / self.config.sample_rate
        if self._server is None:
            return 0.0
        return float(self._server.getCurrentTimeInSamples()) / self.config.sample_rate

    @property
    def rate_ratio(self) -> float:
        """``voice_rate / server rate``: Granule's pitch that plays the voice table untransposed."""
        return self.voice_rate / self.config.sample_rate

    def _build(self, pyo: Any) -> None:
        """Create every pyo object (called once, from :meth:`start`)."""
        d, o = self.design, self._objs
        size = self.memory + self.guard
        o["voice"] = voice = pyo.DataTable(size)
        o["env"] = env = pyo.HannTable()
        o["head"] = head = pyo.Sig(0.0)
        inv_mem, vr = 1.0 / self.memory, float(self.voice_rate)

        def pos_behind(delay_s: Any) -> Any:
            """Table position (samples, [0, memory)) ``delay_s`` seconds behind the head."""
            return pyo.Wrap((head - delay_s * vr) * inv_mem, 0.0, 1.0) * self.memory

        # dry: synchronous Hann grains at 50 % overlap (constant sum), untransposed, dry_delay_s behind
        o["dry"] = dry = pyo.Granule(
            voice,
            env,
            dens=2.0 / d.dry_grain_s,
            pitch=self.rate_ratio,
            pos=pos_behind(d.dry_delay_s),
            dur=d.dry_grain_s,
        )
        # wet: two asynchronous clouds (left/right) with their own random delays and detune
        t = self._targets()

        def ramp(name: str, seconds: float, init: float | None = None) -> Any:
            o[name] = pyo.SigTo(t[name], time=seconds, init=t[name] if init is None else init)
            return o[name]

        pitch = ramp("pitch", d.pitch_ramp_s)
        dens = ramp("dens", d.density_ramp_s)
        grain = ramp("grain", d.grain_ramp_s)
        clouds = []
        for c in range(2):
            delay = pyo.Noise(mul=d.echo_spread_s / 2, add=d.echo_min_s + d.echo_spread_s / 2)
            detune = pyo.Noise(mul=d.detune, add=1.0)
            g = pyo.Granule(voice, env, dens=dens, pitch=pitch * detune, pos=pos_behind(delay), dur=grain)
            g.setSync(False)
            o[f"delay{c}"], o[f"detune{c}"] = delay, detune
            clouds.append(g)
        o["clouds"] = clouds
        # generated sound (future sound-generating bundles): a looped table at the server rate
        o["gen_table"] = gen_table = pyo.DataTable(max(1, round(d.generated_max_s * self.config.sample_rate)))
        o["gen_dur"] = gen_dur = pyo.Sig(1.0)
        o["looper"] = looper = pyo.Looper(gen_table, pitch=1.0, start=0.0, dur=gen_dur, xfade=5, mode=1)
        # the answer: a generated voice played once from its start (TableRead without looping; play() restarts it)
        o["answer_table"] = answer_table = pyo.DataTable(max(1, round(d.generated_max_s * self.config.sample_rate)))
        o["answer"] = answer = pyo.TableRead(answer_table, freq=answer_table.getRate(), loop=0)
        o["cloud_gain"] = cloud_gain = pyo.SigTo(1.0, time=d.mix_ramp_s, init=1.0)
        o["gen_gain"] = gen_gain = pyo.SigTo(0.0, time=d.mix_ramp_s, init=0.0)
        # operator gains; master starts at 0 and fades in (no click at start-up)
        dry_gain, wet_gain = ramp("dry_gain", d.mix_ramp_s), ramp("wet_gain", d.mix_ramp_s)
        level, master = ramp("level", d.level_ramp_s), ramp("master", d.fade_s, init=0.0)
        outs = []
        for c in range(2):
            wet = clouds[c] * cloud_gain + looper * gen_gain
            outs.append((dry * dry_gain + wet * wet_gain + answer) * level * master)
        if self.config.channels == 1:
            o["out"] = [((outs[0] + outs[1]) * 0.5).out(0)]  # the dry copy is in both: keep it at unity
        else:
            o["out"] = [outs[0].out(0), outs[1].out(1)]
        self._sent = dict(t)
        if self.driver is not None:
            o["driver"] = pyo.Pattern(self._drive, time=1.0 / self.driver_rate_hz).play()

    def _drive(self) -> None:
        """Offline Pattern callback: hand the rendered time to ``driver`` (errors are re-raised by start())."""
        if self._driver_error is not None or self._server is None:
            return
        try:
            t = self._server.getCurrentTimeInSamples() / self.config.sample_rate
            assert self.driver is not None
            self.driver(self, t)
        except BaseException as exc:  # noqa: BLE001 - pyo would print and continue; keep it for start()
            self._driver_error = exc

    # -- control ----------------------------------------------------------------------------------------

    def set_param(self, name: str, value: float | bool) -> None:
        """Set an operator parameter (``sound/on``, ``sound/level``, ``sound/mix``, ``sound/pitch``,
        ``sound/density``; see :data:`SOUND_PARAMS`), clamped to its range; ramps through SigTo.

        Works before :meth:`start` too (the value is used when the graph is built).

        Raises:
            KeyError: unknown name. ValueError: NaN or infinite value.
        """
        if name not in SOUND_PARAMS:
            raise KeyError(f"unknown sound parameter {name!r}; expected one of {', '.join(SOUND_PARAMS)}")
        v = float(value)
        if not math.isfinite(v):
            raise ValueError(f"{name}: expected a finite number, got {value!r}")
        lo, hi = SOUND_PARAMS[name]
        v = min(max(v, lo), hi)
        if name == "sound/on":
            v = 1.0 if v >= 0.5 else 0.0
        if self._params.get(name) == v and self.started:
            return
        self._params[name] = v
        if self._remote is not None:
            self._remote.send(("param", name, v))
        else:
            self._push()

    def params(self) -> dict[str, float]:
        """Current operator parameter values by name."""
        return dict(self._params)

    def set_state(self, level: float, pitch_hz: float = 0.0, identity: int | None = None) -> None:
        """Follow the generator's state (call at the frame rate).

        Args:
            level: voice level 0-1 (e.g. the VAD envelope); scales the cloud's density (25 % at 0).
            pitch_hz: voice fundamental in Hz; > 0 makes the cloud's grains ``periods_per_grain`` periods
                long (pitch-synchronous), else ``default_grain_s``.
            identity: index of the identity (or face) shown; picks the interval the cloud is transposed by
                (``design.intervals``); None: no interval.
        """
        lv = float(level) if math.isfinite(float(level)) else 0.0
        ph = float(pitch_hz) if math.isfinite(float(pitch_hz)) and pitch_hz > 0 else 0.0
        self._state = (min(max(lv, 0.0), 1.0), ph, None if identity is None else int(identity))
        if self._remote is not None:
            if self._state != self._remote_state:
                self._remote.send(("state", *self._state))
                self._remote_state = self._state
        else:
            self._push()

    def _targets(self) -> dict[str, float]:
        """Control values for the current parameters and state (pure arithmetic, no pyo)."""
        d, p = self.design, self._params
        level, pitch_hz, identity = self._state
        semis = p["sound/pitch"] + (d.intervals[identity % len(d.intervals)] if identity is not None else 0.0)
        semis = min(max(semis, -d.max_transpose), d.max_transpose)
        transpose = 2.0 ** (semis / 12.0)
        grain = d.default_grain_s if pitch_hz <= 0 else d.periods_per_grain / pitch_hz
        grain = min(max(grain, d.min_grain_s), d.max_grain_s)
        if transpose > 1.0:  # a grain reads ahead (transpose - 1) x grain seconds: stay behind the write head
            grain = min(grain, max(d.min_grain_s, (d.echo_min_s - 0.05) / (transpose - 1.0)))
        dens = p["sound/density"] * (0.25 + 0.75 * level)
        overlap = max(1.0, dens * grain)  # grains sounding at once; incoherent sum grows as sqrt(overlap)
        mix = p["sound/mix"]
        return {
            "pitch": transpose * self.rate_ratio,
            "dens": dens,
            "grain": grain,
            "dry_gain": 1.0 - mix,
            "wet_gain": mix * 1.6 / math.sqrt(overlap),  # 1.6: Hann grains' RMS (0.61) back to ~unity
            "level": p["sound/level"],
            "master": p["sound/on"],
        }

    def _push(self) -> None:
        """Send changed control values to their SigTo objects (each ramps over its own time)."""
        if not self._objs:
            return
        for name, value in self._targets().items():
            if self._sent.get(name) != value:
                self._objs[name].value = value
                self._sent[name] = value

    # -- audio in -----------------------------------------------------------------------------------------

    def feed(self, audio: np.ndarray, rate: int | None = None) -> None:
        """Append new voice samples (float32 [n] in [-1, 1] at ``rate`` Hz, default ``voice_rate``) to the table.

        Writes in place into the pyo table (no copy beyond the samples themselves, at the voice rate; other
        rates go through a streaming soxr resampler first) and then moves the write head,
        so grains only ever read samples already written. Call with only the samples new since the last call.
        Before :meth:`start` the samples are dropped.

        Raises:
            ValueError: not a 1-D array.
        """
        x = np.asarray(audio, dtype=np.float32)
        if x.ndim != 1:
            raise ValueError(f"feed: expected mono samples [n], got shape {x.shape}")
        if rate is not None and int(rate) != self.voice_rate:
            x = self._resample(x, int(rate))
        if self._remote is not None:
            if x.size:
                self._remote.write(x)
                self.samples_fed += x.size
            return
        if not self._objs or x.size == 0:
            return
        mem, guard = self.memory, self.guard
        self.samples_fed += x.size
        if x.size > mem:
            self.head = (self.head + x.size - mem) % mem
            x = x[-mem:]
        table = np.asarray(self._objs["voice"].getBuffer())  # float32 view of the table (never stored)
        h, n = self.head, x.size
        first = min(n, mem - h)
        table[h : h + first] = x[:first]
        if first < n:
            table[: n - first] = x[first:]
        # keep the guard (table[mem:mem+guard]) equal to table[:guard]
        lo, hi = h, h + n  # written range, unwrapped
        for a, b in ((lo, min(hi, mem)), (max(lo, mem) - mem, hi - mem if hi > mem else 0)):
            if a < guard and b > a:
                table[mem + a : mem + min(b, guard)] = table[a : min(b, guard)]
        del table
        self.head = (h + n) % mem
        self._objs["head"].value = float(self.head)

    def voice_history(self, n: int) -> np.ndarray:
        """A copy of the last ``n`` voice samples written (float32 [n], oldest first; zeros before any feed).

        Raises:
            SoundError: before :meth:`start`. ValueError: ``n`` outside 0..memory.
        """
        if not self._objs:
            raise SoundError("voice_history: the engine is not started here (or runs in a sound process)")
        if not 0 <= n <= self.memory:
            raise ValueError(f"voice_history: n must be in 0..{self.memory}, got {n}")
        table = np.asarray(self._objs["voice"].getBuffer())
        index = (self.head - n + np.arange(n)) % self.memory
        out = table[index].copy()
        del table
        return out

    def _resample(self, x: np.ndarray, rate: int) -> np.ndarray:
        import soxr

        if self._resampler is None or self._resampler[0] != rate:
            self._resampler = (rate, soxr.ResampleStream(rate, self.voice_rate, 1, dtype="float32"))
        return self._resampler[1].resample_chunk(x)

    def answer(self, samples: np.ndarray, sample_rate: int) -> None:
        """Play a generated voice (float32 [n] in [-1, 1] at ``sample_rate`` Hz) once, from its start, on top of
        the echo (scaled by ``sound/level`` and the on/off fade, not by the mix): the installation answering.

        The clip is resampled to the server rate, truncated to ``design.generated_max_s`` and written into the
        answer table (the rest of the table is zeroed); the reader restarts at the next pyo buffer, so the first
        sample is out within one buffer (``buffer_size / sample_rate``) plus the device's own latency (in a
        sound process, plus the pipe: ``benchmarks`` measures it). An answer still playing is cut and replaced.

        Raises:
            SoundError: before :meth:`start`. ValueError: not a 1-D array.
        """
        x = np.asarray(samples, dtype=np.float32)
        if x.ndim != 1:
            raise ValueError(f"answer: expected mono samples [n], got shape {x.shape}")
        if self._remote is not None:
            self._remote.send(("answer", x, int(sample_rate)))
            return
        if not self._objs:
            raise SoundError("answer: the engine is not started")
        self._into_table("answer_table", x, sample_rate)
        self._objs["answer"].play()

    def _into_table(self, name: str, x: np.ndarray, sample_rate: int) -> int:
        """Resample ``x`` (float32 [n] at ``sample_rate`` Hz) to the server rate and write it into the pyo table
        ``name`` from its start, truncated to the table and zeroing the rest; returns the samples written."""
        sr = self.config.sample_rate
        if int(sample_rate) != sr and x.size:
            import soxr

            x = soxr.resample(x, int(sample_rate), sr).astype(np.float32)
        table = np.asarray(self._objs[name].getBuffer())
        n = min(x.size, table.size)
        table[:n] = x[:n]
        table[n:] = 0.0
        return n

    def play_generated(self, samples: np.ndarray, sample_rate: int) -> None:
        """Loop a generated sound (float32 [n] at ``sample_rate`` Hz) instead of the granular cloud.

        For bundles that generate sound (the avgan family; ``sound/answer`` = ``loop``, see
        :mod:`installation.voice_stage`). The clip is resampled to the server rate, truncated to
        ``design.generated_max_s`` and written over the looper's table in place (a click is possible if the
        looper is reading the overwritten part); an empty array returns to the cloud.

        Raises:
            SoundError: before :meth:`start`. ValueError: not a 1-D array.
        """
        x = np.asarray(samples, dtype=np.float32)
        if x.ndim != 1:
            raise ValueError(f"play_generated: expected mono samples [n], got shape {x.shape}")
        if self._remote is not None:
            self._remote.send(("generated", x, int(sample_rate)))
            self.generating = x.size > 0
            return
        if not self._objs:
            raise SoundError("play_generated: the engine is not started")
        o = self._objs
        if x.size == 0:
            o["gen_gain"].value, o["cloud_gain"].value = 0.0, 1.0
            self.generating = False
            return
        o["gen_dur"].value = self._into_table("gen_table", x, sample_rate) / self.config.sample_rate
        o["gen_gain"].value, o["cloud_gain"].value = 1.0, 0.0
        self.generating = True


# -- offline rendering --------------------------------------------------------------------------------------


def render_offline(
    voice: np.ndarray,
    voice_rate: int,
    duration_s: float,
    params: SoundSettings | Mapping[str, float] | None = None,
    state_track: StateTrack | None = None,
    *,
    sample_rate: int = 48000,
    channels: int = 2,
    control_rate_hz: float = 60.0,
    seed: int = 0,
    design: EchoDesign | None = None,
    buffer_size: int = 256,
    voice_actions: Sequence[tuple[float, str, np.ndarray, int]] = (),
) -> np.ndarray:
    """Render the engine's sound for a voice recording with pyo's offline server (the ``render --sound`` path).

    The same :class:`SoundEngine` graph as live; the voice is fed progressively from a pyo ``Pattern`` every
    ``1 / control_rate_hz`` seconds of rendered time (exactly the samples up to the server's sample clock,
    as the live loop feeds what arrived since the last frame), and the state at that time is applied with
    :meth:`SoundEngine.set_state`, so the sound at time ``t`` depends only on the voice before ``t``.

    Args:
        voice: float32 [n] mono samples in [-1, 1] at ``voice_rate`` Hz.
        voice_rate: Hz.
        duration_s: seconds to render (the voice is zero after its end).
        params: operator parameters (:class:`SoundSettings` or ``{"sound/level": 0.5, ...}``; default: defaults).
        state_track: the generator's state over time; None: level 1, no pitch, no identity throughout.
        sample_rate: output rate, Hz. channels: 1 or 2. control_rate_hz: feed/state rate, Hz.
        seed: grain randomness (same seed, same output). design: echo shape. buffer_size: pyo buffer, samples.
        voice_actions: generated-voice actions ``(time_s, action, samples float32 [n], rate_hz)`` in time order,
            ``action`` ``"answer"`` (:meth:`SoundEngine.answer`) or ``"loop"`` (:meth:`SoundEngine.play_generated`;
            an empty clip returns to the cloud), applied at the first control tick at or after ``time_s``
            (:class:`installation.voice_stage.VoiceStage` makes them, as it does live).

    Returns:
        float32 [round(duration_s x sample_rate), channels].

    Raises:
        ValueError: bad shapes, rates or duration. SoundError: another engine is running in this process.
    """
    voice = np.asarray(voice, dtype=np.float32)
    if voice.ndim != 1:
        raise ValueError(f"render_offline: expected mono voice [n], got shape {voice.shape}")
    if not (duration_s > 0 and math.isfinite(duration_s)):
        raise ValueError(f"render_offline: expected a positive duration, got {duration_s!r}")
    if isinstance(params, SoundSettings) or params is None:
        settings = params or SoundSettings()
        extra: Mapping[str, float] = {}
    else:
        settings, extra = SoundSettings(), params
    n_out = max(1, round(duration_s * sample_rate))
    fed = 0
    actions = sorted(voice_actions, key=lambda a: a[0])
    for _, action, _, _ in actions:
        if action not in ("answer", "loop"):
            raise ValueError(f"render_offline: unknown voice action {action!r} (expected answer or loop)")
    done = 0

    def driver(engine: SoundEngine, t: float) -> None:
        nonlocal fed, done
        upto = min(voice.size, round(t * voice_rate))
        if upto > fed:
            engine.feed(voice[fed:upto])
            fed = upto
        if state_track is not None:
            engine.set_state(*state_track.at(t))
        while done < len(actions) and actions[done][0] <= t + 1e-9:
            _, action, clip, rate = actions[done]
            (engine.answer if action == "answer" else engine.play_generated)(clip, rate)
            done += 1

    with tempfile.TemporaryDirectory(prefix="avgan-sound-") as folder:
        path = Path(folder) / "sound.wav"
        config = SoundConfig(
            output="offline",
            sample_rate=int(sample_rate),
            buffer_size=int(buffer_size),
            channels=int(channels),
            record_path=str(path),
            duration_s=n_out / sample_rate,
            seed=int(seed),
        )
        engine = SoundEngine(
            config,
            voice_rate=voice_rate,
            settings=settings,
            design=design,
            driver=driver,
            driver_rate_hz=control_rate_hz,
        )
        for name, value in extra.items():
            engine.set_param(name, value)
        if state_track is None:
            engine.set_state(1.0)
        try:
            engine.start()  # renders the whole file
        finally:
            engine.stop()
        import soundfile as sf

        data, rate = sf.read(str(path), dtype="float32", always_2d=True)
    if rate != sample_rate:  # pragma: no cover - pyo writes at the server rate
        raise SoundError(f"pyo wrote {rate} Hz instead of {sample_rate} Hz")
    out = np.zeros((n_out, channels), np.float32)
    n = min(n_out, data.shape[0])
    out[:n] = data[:n, :channels]
    return out


def settings_from(values: Mapping[str, Any], base: SoundSettings | None = None) -> SoundSettings:
    """:class:`SoundSettings` from ``{"sound/level": 0.5, ...}`` (or ``{"level": 0.5}``) over ``base``.

    Raises:
        KeyError: an unknown name.
    """
    known = {f.name for f in fields(SoundSettings)}
    changes: dict[str, Any] = {}
    for key, value in values.items():
        name = key.removeprefix("sound/")
        if name not in known:
            raise KeyError(f"unknown sound parameter {key!r}; expected one of {', '.join(SOUND_PARAMS)}")
        changes[name] = bool(value) if name == "on" else float(value)
    return replace(base or SoundSettings(), **changes)
