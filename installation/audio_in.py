"""Audio in for the live loop: a lock-free ring, a sounddevice input that survives unplugging, a file stand-in.

Threads (see ARCHITECTURE.md):

* **writer** -- the PortAudio callback (:class:`SoundDeviceInput`) or the player thread
  (:class:`FileInput`) copies each block into an :class:`AudioRing` and returns. The sounddevice
  callback allocates no arrays (it copies into preallocated memory through views), takes no
  locks, does not log and never raises; it only counts input overflows.
* **reader** -- the main thread. Each frame it calls :meth:`AudioInput.heartbeat` (stall detection
  and reconnection) and reads the newest samples with an :class:`AudioReader`, which also converts
  the device rate to the bundle's rate.

Rate conversion happens on the reader side, in :class:`AudioReader`, with soxr's streaming resampler
(``HQ``: ~21 ms group delay at 16 kHz): ``soxr.ResampleStream.resample_chunk`` returns a new array on
every call and keeps filter state that must be touched by one thread only, so it cannot run in the
callback (which must not allocate) and it would not be safe to share with the writer. The ring therefore
holds the device's own samples at the device's rate; the fast envelope/onset path reads those raw
samples directly (no resampler delay) and only the generator's conditioning window goes through soxr.

Stall detection: :meth:`SoundDeviceInput.heartbeat` (main thread, once per frame) notices a stream that
stopped delivering -- no new samples for ``heartbeat_s`` seconds, the stream no longer active, or an
error from the stream -- closes it and reopens it with exponential back-off (``backoff_s`` doubling up to
``backoff_max_s``; reset once samples flow again). Closing and opening run in a short-lived helper thread,
because PortAudio may block for seconds on a vanished device and the window must keep drawing its idle
state meanwhile. Each transition is logged and passed to ``on_event(kind, detail)`` (the live loop sends
it over OSC as ``/avgan/status/event``).

The real sounddevice path cannot run on machines without an audio device (CI, this project's
development machines); its logic is tested through the ``stream_factory`` / ``device_info`` injection
points with fake streams.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from engine.errors import UserError

log = logging.getLogger(__name__)

EventCallback = Callable[[str, str], None]
"""``on_event(kind, detail)``: kind is one of ``opened``, ``stalled``, ``reconnecting``, ``reopen_failed``,
``reopen_hung`` (a reopen blocked in the driver for ``reopen_hang_s``), ``reconnected``, ``closed``;
detail is a one-line human-readable message."""


WAIT_RATE = 48000
"""Hz: the rate a device that is not there yet will be opened at (``input.sample_rate`` 0 means "the device's
default", unknown until it appears; 48 kHz is what USB microphones offer)."""


class AudioInputError(UserError, OSError):
    """An audio input cannot be opened at all (unknown device, unreadable file); the message names it."""


# -- ring -------------------------------------------------------------------------------------------


class AudioRing:
    """Preallocated mono float32 ring buffer: one writer thread, one reader thread, no locks.

    The writer first announces how far it is about to write (:attr:`reserved`), copies the block, then
    publishes it by advancing :attr:`written`, a monotonically increasing count of samples ever written
    (Python ints: their assignment is atomic under the GIL). The reader copies the samples it wants and
    afterwards checks against :attr:`reserved` that no write that started before the check can have
    overwritten them (a seqlock without the lock: it retries, or reports failure, otherwise). With a
    capacity of a few seconds and a reader that wants at most ~1 s, that never happens in practice.

    Args:
        capacity: samples held (the oldest are overwritten), > 0.

    Attributes:
        capacity: samples held.
        written: samples written since creation (sample index just past the newest sample).
        reserved: ``written`` plus the length of a write in flight (equal to ``written`` between writes).
    """

    def __init__(self, capacity: int) -> None:
        if int(capacity) <= 0:
            raise ValueError(f"ring capacity must be > 0 samples, got {capacity}")
        self.capacity = int(capacity)
        self._buf = np.zeros(self.capacity, np.float32)
        self.written = 0
        self.reserved = 0

    # writer side ------------------------------------------------------------------------------

    def write(self, block: np.ndarray) -> None:
        """Append mono samples ``block`` (float [n], any n >= 0; float32 avoids a conversion). Writer thread only.

        Copies through views into the preallocated buffer: no array is allocated for float32 input.
        A block longer than the capacity keeps only its newest ``capacity`` samples.
        """
        n = block.shape[0]
        if n == 0:
            return
        w = self.written
        if n > self.capacity:
            block = block[n - self.capacity :]
            w += n - self.capacity
            n = self.capacity
        self.reserved = w + n  # announce before touching the buffer
        start = w % self.capacity
        first = min(n, self.capacity - start)
        self._buf[start : start + first] = block[:first]
        if first < n:
            self._buf[: n - first] = block[first:]
        self.written = w + n  # publish last

    def write_mixdown(self, frames: np.ndarray, scratch: np.ndarray) -> None:
        """Append the mono mix (channel mean) of an interleaved block ``frames`` (float32 [n, channels]).

        Writer thread only. ``scratch`` is a preallocated float32 [m] work buffer: the mix is computed into
        ``scratch[:n]`` with ``out=`` (no allocation); one channel is a plain copy. A block longer than the
        scratch buffer keeps only channel 0 (no allocation either).
        """
        n, channels = frames.shape
        if channels == 1 or n > scratch.shape[0]:
            self.write(frames[:, 0])
            return
        mono = scratch[:n]
        np.sum(frames, axis=1, out=mono)
        mono *= np.float32(1.0 / channels)
        self.write(mono)

    # reader side ------------------------------------------------------------------------------

    def read(self, start: int, out: np.ndarray) -> bool:
        """Copy samples ``[start, start + len(out))`` (absolute indices) into ``out`` (float32 [n]). Reader only.

        Returns:
            ``True`` if all were available and intact; ``False`` if some were not written yet or were
            already overwritten (``out`` then holds garbage).
        """
        n = out.shape[0]
        if n == 0:
            return True
        if n > self.capacity or start < 0 or start + n > self.written or start < self.written - self.capacity:
            return False
        self._copy_out(start, out)
        # Writes announced up to `reserved` may have overwritten absolute positions < reserved - capacity.
        return self.reserved - self.capacity <= start

    def latest(self, n: int, out: np.ndarray | None = None) -> tuple[np.ndarray, int]:
        """The newest ``n`` samples, oldest first, zero-padded at the front before ``n`` were ever written.

        Args:
            n: samples wanted, 0 < n <= capacity.
            out: float32 [n] buffer to fill (allocated if ``None``).

        Returns:
            ``(out, end)``: the samples and the absolute index just past the newest one.

        Raises:
            ValueError: ``n`` out of range or ``out`` of the wrong shape/dtype.
        """
        if not 0 < n <= self.capacity:
            raise ValueError(f"latest(n): n must be in 1..{self.capacity}, got {n}")
        if out is None:
            out = np.empty(n, np.float32)
        elif out.shape != (n,) or out.dtype != np.float32:
            raise ValueError(f"latest(n): out must be float32 [{n}], got {out.dtype} {tuple(out.shape)}")
        for _ in range(4):
            end = self.written
            have = min(n, end)
            if have < n:
                out[: n - have] = 0.0
            if have == 0 or self.read(end - have, out[n - have :]):
                return out, end
        # The writer lapped us four times in a row (reader starved for a whole ring): give the newest anyway.
        end = self.written
        self._copy_out(max(0, end - n), out[n - min(n, end) :])
        return out, end

    def _copy_out(self, start: int, out: np.ndarray) -> None:
        n = out.shape[0]
        s = start % self.capacity
        first = min(n, self.capacity - s)
        out[:first] = self._buf[s : s + first]
        if first < n:
            out[first:] = self._buf[: n - first]


# -- inputs -----------------------------------------------------------------------------------------


class AudioInput(Protocol):
    """What the live loop needs from an audio input (:class:`SoundDeviceInput`, :class:`FileInput`).

    Attributes:
        ring: the :class:`AudioRing` the writer fills (mono, at ``sample_rate``).
        sample_rate: samples per second in the ring (the device's rate).
        state: ``starting``, ``running``, ``stalled``, ``reconnecting``, ``waiting`` (back-off) or ``closed``.
        overflows: input overflows reported by the driver.
        reconnects: successful reopen after a stall.
        description: human-readable name (device or file).
    """

    ring: AudioRing
    sample_rate: int
    state: str
    overflows: int
    reconnects: int
    description: str

    def start(self, retry: bool = False) -> None:
        """Start delivering samples (``retry``: keep trying in :meth:`heartbeat` instead of raising)."""

    def heartbeat(self, now: float) -> None:
        """Main thread, once per frame: notice stalls and drive reconnection (``now``: time.monotonic())."""

    def close(self) -> None:
        """Stop delivering and release the device or thread (idempotent)."""


class _Stream(Protocol):
    """The part of ``sounddevice.InputStream`` used here (fakes in tests implement the same)."""

    active: bool

    def start(self) -> None: ...

    def close(self, ignore_errors: bool = True) -> None: ...


StreamFactory = Callable[..., _Stream]
"""``factory(device=..., samplerate=..., channels=..., dtype='float32', blocksize=..., callback=...) -> stream``."""


def _sounddevice_factory(**kwargs: Any) -> _Stream:
    import sounddevice as sd

    return sd.InputStream(**kwargs)


def _sounddevice_info(device: int | str | None) -> dict[str, Any]:
    """``sounddevice.query_devices(device, 'input')``: keys ``name``, ``default_samplerate``, ``max_input_channels``."""
    import sounddevice as sd

    return dict(sd.query_devices(device, "input"))


def _refresh_portaudio() -> None:
    """Re-scan devices (PortAudio caches its device list at initialisation, so a replugged USB microphone
    would otherwise stay invisible). PortAudio reference-counts initialisation, so this does not disturb
    another library's streams in the same process (it then simply does not re-scan)."""
    import sounddevice as sd

    terminate, initialize = getattr(sd, "_terminate", None), getattr(sd, "_initialize", None)
    if terminate is not None and initialize is not None:
        terminate()
        initialize()


class SoundDeviceInput:
    """Microphone input through a ``sounddevice.InputStream`` at the device's own rate, with reconnection.

    Args:
        device: device index, (part of a) name, or ``None`` for the default input.
        ring_seconds: ring capacity in seconds (at the device rate).
        samplerate: rate to open the device at, Hz (0: the device's default rate).
        channels: input channels to open; mixed down to mono in the callback (into a preallocated buffer).
        blocksize: frames per callback (0: PortAudio chooses, usually lowest latency).
        heartbeat_s: no new samples for this long counts as a stall.
        backoff_s: first delay before reopening after a stall; doubles per failed attempt ...
        backoff_max_s: ... up to this.
        on_event: ``on_event(kind, detail)`` for every state change (main thread; see :data:`EventCallback`).
        stream_factory: builds the stream (default ``sounddevice.InputStream``); tests inject fakes.
        device_info: ``device -> {"name", "default_samplerate", "max_input_channels"}`` (default: sounddevice).
        refresh_devices: ``() -> None`` called before each reopen to re-scan devices (default: re-initialise
            PortAudio; ``None`` with an injected factory).
        wait_for_device: a device that is not there yet (no microphone plugged in at boot, a USB device by name)
            is waited for instead of raising: :meth:`start` with ``retry`` keeps trying with back-off, re-scanning
            the devices each time, and the stream opens at ``samplerate`` or, when that is 0,
            :data:`WAIT_RATE` (the device's default rate is unknown until it appears).

    Attributes:
        ring, sample_rate, state, overflows, reconnects, description: see :class:`AudioInput`.
        stalls: stalls noticed. events: the last 100 ``(monotonic time, kind, detail)`` tuples.
        reopen_hang_s: a reopen still blocked in the driver after this many seconds is reported (once).

    Raises:
        AudioInputError: the device is unknown (unless ``wait_for_device``) or has too few input channels (at
            construction).
    """

    def __init__(
        self,
        device: int | str | None = None,
        *,
        ring_seconds: float = 4.0,
        samplerate: int = 0,
        channels: int = 1,
        blocksize: int = 0,
        heartbeat_s: float = 1.0,
        backoff_s: float = 0.5,
        backoff_max_s: float = 30.0,
        on_event: EventCallback | None = None,
        stream_factory: StreamFactory | None = None,
        device_info: Callable[[int | str | None], dict[str, Any]] | None = None,
        refresh_devices: Callable[[], None] | None = None,
        wait_for_device: bool = False,
    ) -> None:
        self.device = device
        self.channels = max(1, int(channels))
        self.blocksize = int(blocksize)
        self.heartbeat_s = float(heartbeat_s)
        self.backoff_s = float(backoff_s)
        self.backoff_max_s = float(backoff_max_s)
        self.on_event = on_event
        injected = stream_factory is not None
        self._factory: StreamFactory = stream_factory or _sounddevice_factory
        self._device_info = device_info or _sounddevice_info
        self._refresh = refresh_devices if (refresh_devices is not None or injected) else _refresh_portaudio
        name = "the default input device" if device is None else f"input device {device!r}"
        self.missing = ""
        """Why the device was not found at construction (``wait_for_device``); ``""`` once it opened."""
        try:
            info: dict[str, Any] | None = self._device_info(device)
        except Exception as exc:  # noqa: BLE001 - sounddevice raises ValueError / PortAudioError
            if not wait_for_device:
                raise AudioInputError(
                    f"audio input: {name} not found ({exc}); `run.py devices` lists the devices, "
                    "--input FILE plays an audio file instead"
                ) from exc
            info = None
            self.missing = f"{name} not found ({exc}); waiting for it (`run.py devices` lists the devices)"
        if info is not None and int(info.get("max_input_channels", 0)) < self.channels:
            raise AudioInputError(
                f"audio input {device!r} ({info.get('name', '?')}): has {info.get('max_input_channels', 0)} input "
                f"channel(s), {self.channels} requested"
            )
        if samplerate:
            self.sample_rate = int(samplerate)
        else:
            self.sample_rate = int(round(float(info["default_samplerate"]))) if info is not None else WAIT_RATE
        self._scratch = np.zeros(16384, np.float32)  # callback mix-down buffer (blocks up to 16384 frames)
        label = info.get("name", device) if info is not None else ("default input" if device is None else device)
        self.description = f"{label} @ {self.sample_rate} Hz"
        self.ring = AudioRing(max(1, int(ring_seconds * self.sample_rate)))
        self.state = "closed"
        self.overflows = 0
        self.reconnects = 0
        self.stalls = 0
        self.events: list[tuple[float, str, str]] = []
        self._stream: _Stream | None = None
        self._stream_error = False  # set by the stream's finished_callback (PortAudio thread)
        self._last_written = 0
        self._last_progress = 0.0
        self._delay = self.backoff_s
        self._retry_at = 0.0
        self._worker: threading.Thread | None = None
        self._worker_result: tuple[_Stream | None, str] | None = None
        self._opened_at = 0.0
        self._generation = 0  # the stream whose callbacks may write; bumped per open, and at a stall
        self._worker_started = 0.0
        self._hung_reported = False
        self.reopen_hang_s = 10.0

    # PortAudio thread ---------------------------------------------------------------------------

    def _callbacks(self, generation: int) -> tuple[Callable[..., None], Callable[[], None]]:
        """The stream callback and finished callback of stream ``generation`` (built before the stream opens).

        Only the current generation writes: a stalled stream that wakes up while it is being closed must not
        become a second writer of the ring.
        """

        def callback(indata: np.ndarray, frames: int, time_info: Any, status: Any) -> None:
            # Copy the block into the ring; count overflows. No allocation, locks, logging or raising.
            if generation != self._generation:
                return
            try:
                if status and status.input_overflow:
                    self.overflows += 1
                self.ring.write_mixdown(indata, self._scratch)
            except Exception:  # noqa: BLE001 - must never raise into PortAudio; the heartbeat notices the stall
                self._stream_error = True

        def finished() -> None:
            # Stream ended (stopped, aborted, device vanished): the heartbeat decides what to do.
            if generation == self._generation:
                self._stream_error = True

        return callback, finished

    # main thread ---------------------------------------------------------------------------------

    def _event(self, kind: str, detail: str, level: int = logging.INFO) -> None:
        log.log(level, "audio input %s: %s", kind, detail)
        self.events.append((time.monotonic(), kind, detail))
        del self.events[:-100]
        if self.on_event is not None:
            try:
                self.on_event(kind, detail)
            except Exception:  # noqa: BLE001 - a broken listener must not take the input down
                log.exception("audio input event listener failed")

    def _open(self) -> _Stream:
        """Create and start a stream (any thread; the caller owns the result)."""
        self._generation += 1
        callback, finished = self._callbacks(self._generation)
        stream = self._factory(
            device=self.device,
            samplerate=self.sample_rate,
            channels=self.channels,
            dtype="float32",
            blocksize=self.blocksize,
            callback=callback,
            finished_callback=finished,
        )
        try:
            stream.start()
        except BaseException:
            _close_quietly(stream)
            raise
        return stream

    def start(self, retry: bool = False) -> None:
        """Open and start the stream (main thread, blocking).

        Args:
            retry: if the stream cannot be opened, do not raise: report ``reopen_failed`` and let
                :meth:`heartbeat` keep trying with back-off (the live loop: a microphone that is found but
                busy or not ready at boot must not stop an unattended installation).

        Raises:
            AudioInputError: the stream cannot be opened (``retry=False``).
        """
        if self.state != "closed":
            return
        self.state = "starting"
        try:
            self._stream = self._open()
        except Exception as exc:  # noqa: BLE001 - PortAudioError and friends
            if not retry:
                self.state = "closed"
                raise AudioInputError(f"audio input {self.description}: cannot open ({exc})") from exc
            self._retry_at = time.monotonic() + self._delay
            self.state = "waiting"
            why = self.missing or f"{self.description}: cannot open ({type(exc).__name__}: {exc})"
            self._event("reopen_failed", f"{why}; next try in {self._delay:.1f} s", logging.WARNING)
            return
        self._stream_error = False
        now = time.monotonic()
        self._last_progress = self._opened_at = now
        self._last_written = self.ring.written
        self.state = "running"
        self._event("opened", self.description)

    def heartbeat(self, now: float) -> None:
        """Main thread, once per frame (``now``: ``time.monotonic()`` seconds).

        ``running``: notices a stall (no new samples for ``heartbeat_s``, stream inactive, stream error),
        closes the stream in a helper thread and waits ``backoff_s`` (state ``waiting``); then reopens in
        a helper thread (state ``reconnecting``): success -> ``running`` (``reconnected`` event), failure ->
        ``waiting`` with the delay doubled (``reopen_failed`` event). The delay resets once samples flow.
        Never blocks and never raises.
        """
        if self.state == "running":
            written = self.ring.written
            if written != self._last_written:
                self._last_written, self._last_progress = written, now
                if self._delay != self.backoff_s and now - self._opened_at > self.heartbeat_s:
                    self._delay = self.backoff_s  # flowing again for a while: next stall starts from scratch
                return
            stream = self._stream
            inactive = stream is None or not _is_active(stream)
            silent_s = now - self._last_progress
            if not (self._stream_error or inactive or silent_s > self.heartbeat_s):
                return
            why = (
                "stream error"
                if self._stream_error
                else "stream inactive"
                if inactive
                else f"no samples {silent_s:.1f} s"
            )
            self.stalls += 1
            self._event("stalled", f"{self.description}: {why}; reopening in {self._delay:.1f} s", logging.WARNING)
            self._generation += 1  # the old stream's callbacks stop writing
            self._stream, self._stream_error = None, False
            if stream is not None:
                threading.Thread(target=_close_quietly, args=(stream,), name="audio-close", daemon=True).start()
            self._retry_at = now + self._delay
            self.state = "waiting"
        elif self.state == "waiting":
            if now >= self._retry_at and self._worker is None:
                self.state = "reconnecting"
                self._event("reconnecting", f"{self.description}: reopening")
                self._worker_result = None
                self._worker_started, self._hung_reported = now, False
                self._worker = threading.Thread(target=self._reopen_worker, name="audio-reopen", daemon=True)
                self._worker.start()
        elif self.state == "reconnecting":
            worker = self._worker
            if worker is not None and worker.is_alive():
                if not self._hung_reported and now - self._worker_started > self.reopen_hang_s:
                    self._hung_reported = True  # a driver call that never returns: say so once, keep waiting
                    self._event("reopen_hung", f"{self.description}: reopening has taken {self.reopen_hang_s:.0f} s")
                return
            self._worker = None
            stream, error = self._worker_result or (None, "reopen thread ended without a result")
            if stream is not None:
                self._stream, self._stream_error = stream, False
                self._last_written, self._last_progress, self._opened_at = self.ring.written, now, now
                self.state = "running"
                if self.missing:  # the device we were waiting for appeared: its first opening, not a reconnect
                    self.missing = ""
                    self._describe_found()
                    self._event("opened", f"{self.description} (found after waiting)")
                else:
                    self.reconnects += 1
                    self._event("reconnected", f"{self.description} (reconnect {self.reconnects})")
                self._delay = min(self.backoff_max_s, self._delay * 2)  # reset only once samples flow for a while
            else:
                self._delay = min(self.backoff_max_s, self._delay * 2)
                self._retry_at = now + self._delay
                self.state = "waiting"
                why = self.missing or f"{self.description}: {error}"
                self._event("reopen_failed", f"{why}; next try in {self._delay:.1f} s", logging.WARNING)

    def _describe_found(self) -> None:
        """The description of a device that appeared after waiting: its name (the rate stays the one opened)."""
        try:
            name = self._device_info(self.device).get("name", self.device)
        except Exception:  # noqa: BLE001 - keep the old description
            return
        self.description = f"{name} @ {self.sample_rate} Hz"

    def _reopen_worker(self) -> None:
        try:
            if self._refresh is not None:
                self._refresh()
            self._worker_result = (self._open(), "")
        except Exception as exc:  # noqa: BLE001 - reported by heartbeat on the main thread
            self._worker_result = (None, f"{type(exc).__name__}: {exc}")

    def close(self) -> None:
        """Stop and close the stream (main thread; idempotent). A reopen in flight is waited for (<= 5 s).

        No callback writes into the ring after this returns.
        """
        worker = self._worker
        if worker is not None:
            worker.join(timeout=5.0)
            result = self._worker_result
            if result is not None and result[0] is not None:
                _close_quietly(result[0])
            self._worker = None
        self._generation += 1  # after the join: a stream the reopen worker just opened is silenced too
        if self._stream is not None:
            _close_quietly(self._stream)
            self._stream = None
        if self.state != "closed":
            self.state = "closed"
            self._event("closed", self.description)


def _is_active(stream: _Stream) -> bool:
    try:
        return bool(stream.active)
    except Exception:  # noqa: BLE001 - a dead PortAudio stream may raise on any query
        return False


def _close_quietly(stream: _Stream) -> None:
    try:
        stream.close(ignore_errors=True)
    except Exception:  # noqa: BLE001 - closing a vanished device may fail; nothing left to do
        log.debug("closing audio stream failed", exc_info=True)


class FileInput:
    """Stand-in for a microphone: plays a file into an :class:`AudioRing` from a thread, looping.

    Real-time mode (``speed=1``): block ``k`` (``block_s`` long, ~10 ms) is written when its last sample
    is due, at ``started_at + (k + 1) * block / sample_rate`` on ``time.perf_counter``'s clock (deadline
    scheduling: no drift). ``speed=s`` plays ``s`` times faster; ``speed=math.inf`` writes as fast as the
    thread can (yielding between blocks: for tests).

    Args:
        source: audio file (anything :func:`engine.audio.load_audio` reads), or float32 samples [n] already
            at ``sample_rate``.
        sample_rate: rate of the ring (Hz); the file is decoded and resampled to it.
        loop: start over at the end (default); otherwise the input stops delivering after one pass.
        block_s: block length in seconds.
        speed: playback speed factor (> 0; ``math.inf``: as fast as possible).
        ring_seconds: ring capacity in seconds.

    Attributes:
        ring, sample_rate, state, overflows (always 0), reconnects (always 0), description: see :class:`AudioInput`.
        samples: the decoded samples, float32 [n]. started_at: ``time.perf_counter()`` of the file's sample 0
            in the first pass (``None`` before :meth:`start`). passes: completed passes through the file.

    Raises:
        AudioInputError: the file is missing, unreadable or empty.
    """

    def __init__(
        self,
        source: str | Path | np.ndarray,
        sample_rate: int,
        *,
        loop: bool = True,
        block_s: float = 0.01,
        speed: float = 1.0,
        ring_seconds: float = 4.0,
    ) -> None:
        self.sample_rate = int(sample_rate)
        if isinstance(source, np.ndarray):
            samples = np.ascontiguousarray(source, dtype=np.float32).reshape(-1)
            self.description = f"samples ({samples.shape[0] / self.sample_rate:.1f} s)"
        else:
            from engine.audio import load_audio

            path = Path(source)
            if not path.is_file():
                raise AudioInputError(f"{path}: no such audio file")
            try:
                samples = np.ascontiguousarray(load_audio(path, self.sample_rate), dtype=np.float32)
            except Exception as exc:  # noqa: BLE001 - decoder errors of all kinds
                raise AudioInputError(f"{path}: cannot read audio ({exc})") from exc
            self.description = f"file {path.name}"
        if samples.shape[0] == 0:
            raise AudioInputError(f"{self.description}: no audio samples")
        if not speed > 0:
            raise ValueError(f"speed must be > 0, got {speed}")
        self.samples = samples
        self.loop = bool(loop)
        self.block = max(1, int(round(block_s * self.sample_rate)))
        self.speed = float(speed)
        self.ring = AudioRing(max(self.block, int(ring_seconds * self.sample_rate)))
        self.state = "closed"
        self.overflows = 0
        self.reconnects = 0
        self.passes = 0
        self.started_at: float | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def file_time(self, index: int) -> float:
        """``time.perf_counter()`` at which absolute sample ``index`` is due (real-time pacing; needs :meth:`start`)."""
        if self.started_at is None:
            raise RuntimeError("FileInput not started")
        return self.started_at + index / (self.sample_rate * self.speed)

    def start(self, retry: bool = False) -> None:
        """Start the player thread (idempotent; ``retry`` is ignored: a file cannot be busy)."""
        if self._thread is not None:
            return
        self._stop.clear()
        self.started_at = time.perf_counter()
        self.state = "running"
        self._thread = threading.Thread(target=self._play, name="audio-file", daemon=True)
        self._thread.start()

    def _play(self) -> None:
        samples, block, n = self.samples, self.block, self.samples.shape[0]
        rate = self.sample_rate * self.speed
        assert self.started_at is not None
        t0, pos, total = self.started_at, 0, 0
        while not self._stop.is_set():
            end = min(n, pos + block)
            if not math.isinf(rate):
                delay = t0 + (total + end - pos) / rate - time.perf_counter()
                if delay > 0 and self._stop.wait(delay):
                    break
            self.ring.write(samples[pos:end])
            total += end - pos
            pos = end
            if pos >= n:
                self.passes += 1
                if not self.loop:
                    break
                pos = 0
            if math.isinf(rate):
                time.sleep(0)  # yield the GIL
        self.state = "closed" if self._stop.is_set() else "finished"

    def heartbeat(self, now: float) -> None:
        """Nothing to supervise (the thread cannot lose a device)."""

    def close(self) -> None:
        """Stop the player thread (idempotent)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2.0)
            self._thread = None
        self.state = "closed"


# -- reader side ------------------------------------------------------------------------------------


class AudioReader:
    """Main-thread reader: new raw samples for the envelope/VAD, and the newest window at the bundle's rate.

    Every :meth:`update` takes the samples the writer added since the previous call (at the device rate)
    and streams them through soxr (``quality``) into a second, main-thread-only ring at ``target_rate``;
    :meth:`window` copies the newest ``window_samples`` of it into a preallocated buffer. When the rates
    match, no resampler is used. If the main thread fell more than ``max_new_s`` behind, the resampler is
    reset and reading resumes at the newest samples (a gap, counted in :attr:`gaps`).

    Args:
        ring: the input's ring (device rate ``source_rate``).
        source_rate: Hz of ``ring``.
        target_rate: Hz of the generator (the bundle's ``sample_rate``).
        window_samples: samples per generator window at ``target_rate``.
        quality: soxr quality (``HQ``: ~21 ms delay at 16 kHz; ``MQ``: ~15 ms; ``QQ``: none, poor filter).
        max_new_s: at most this many seconds of raw samples are handed out per :meth:`update` (older ones are
            skipped); bounds the work after a long stall.

    Attributes:
        gaps: times the reader fell more than ``max_new_s`` behind and skipped ahead. position: absolute ring index read up to.
    """

    def __init__(
        self,
        ring: AudioRing,
        source_rate: int,
        target_rate: int,
        window_samples: int,
        *,
        quality: str = "HQ",
        max_new_s: float = 0.5,
    ) -> None:
        self.ring = ring
        self.source_rate, self.target_rate = int(source_rate), int(target_rate)
        self.window_samples = int(window_samples)
        self.quality = quality
        self.max_new = max(1, min(ring.capacity // 2, int(max_new_s * self.source_rate)))
        self._raw = np.zeros(self.max_new, np.float32)
        self._resampler: Any = None
        if self.source_rate != self.target_rate:
            import soxr

            self._resampler = soxr.ResampleStream(
                self.source_rate, self.target_rate, 1, dtype="float32", quality=quality
            )
        capacity = self.window_samples + int(self.max_new * self.target_rate / self.source_rate) + 1024
        self._target = AudioRing(capacity) if self._resampler is not None else ring
        self._window = np.zeros(self.window_samples, np.float32)
        self.position = ring.written
        self.gaps = 0

    def update(self) -> np.ndarray:
        """Consume new samples; returns them (float32 [m], device rate; a view valid until the next call)."""
        end = self.ring.written
        start = self.position
        if end - start > self.max_new:  # fell behind (a stall of the main thread): skip to the newest samples
            self.gaps += 1
            if self._resampler is not None:
                self._resampler.clear()
            start = end - self.max_new
        m = end - start
        new = self._raw[:m]
        if m and not self.ring.read(start, new):
            self.gaps += 1
            self.position = end
            return self._raw[:0]
        self.position = end
        if self._resampler is not None and m:
            self._target.write(self._resampler.resample_chunk(new))
        return new

    def window(self) -> np.ndarray:
        """The newest ``window_samples`` at ``target_rate``: float32 [window_samples], zero-padded at the start.

        Returns the reader's own buffer (overwritten by the next call): copy it to keep it. A bundle without an
        ``audio`` input (an unconditional model) has ``window_samples`` 0: the window is empty.
        """
        if self.window_samples == 0:
            return self._window
        out, _ = self._target.latest(self.window_samples, self._window)
        return out

    def latest_raw(self, n: int, out: np.ndarray) -> np.ndarray:
        """The newest ``n`` raw samples at the device rate into ``out`` (float32 [n]); no resampler delay."""
        return self.ring.latest(n, out)[0]


MEDIA_SUFFIXES = frozenset(".wav .flac .mp3 .ogg .oga .opus .m4a .aac .aif .aiff .mp4 .mov .mkv .webm".split())
"""Suffixes that make an input spec a file rather than a device name (as ``installation.presets.parse_input``)."""


def open_input(
    spec: str | int | Path | None,
    sample_rate: int,
    *,
    on_event: EventCallback | None = None,
    file_speed: float = 1.0,
    loop: bool = True,
    device_rate: int = 0,
    channels: int = 1,
    heartbeat_s: float = 1.0,
    backoff_s: float = 0.5,
    backoff_max_s: float = 30.0,
    ring_seconds: float = 4.0,
    wait_for_device: bool = False,
) -> AudioInput:
    """An audio input from a ``--input`` / preset ``input.source`` value (not started).

    Args:
        spec: ``"mic"`` / ``"default"`` / ``None`` (default input device), a device index (int or digits), a
            file (a :class:`~pathlib.Path`, an existing path, or a string with a media suffix or a path
            separator: played by :class:`FileInput` in real time), or a device name (substring).
        sample_rate: the bundle's rate (a file is decoded at it; devices run at their own rate).
        on_event: state-change listener for device inputs.
        file_speed, loop: :class:`FileInput` playback speed and looping.
        device_rate, channels, heartbeat_s, backoff_s, backoff_max_s: :class:`SoundDeviceInput` settings.
        ring_seconds: ring capacity in seconds (either kind of input).
        wait_for_device: a device input that is not there yet is waited for (:class:`SoundDeviceInput`).

    Raises:
        AudioInputError: unknown device (unless ``wait_for_device``), missing or unreadable file.
    """
    device: int | str | None
    if isinstance(spec, Path) or (isinstance(spec, str) and _is_file_spec(spec)):
        return FileInput(Path(spec), sample_rate, speed=file_speed, loop=loop, ring_seconds=ring_seconds)
    if spec is None or (isinstance(spec, str) and spec.strip().lower() in ("", "mic", "default")):
        device = None
    elif isinstance(spec, int) or spec.strip().isdigit():
        device = int(spec)
    else:
        device = spec.strip()
    return SoundDeviceInput(
        device,
        samplerate=device_rate,
        channels=channels,
        on_event=on_event,
        heartbeat_s=heartbeat_s,
        backoff_s=backoff_s,
        backoff_max_s=backoff_max_s,
        ring_seconds=ring_seconds,
        wait_for_device=wait_for_device,
    )


def _is_file_spec(spec: str) -> bool:
    text = spec.strip()
    return Path(text).is_file() or Path(text).suffix.lower() in MEDIA_SUFFIXES or "/" in text or "\\" in text
