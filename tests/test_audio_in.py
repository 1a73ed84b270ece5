"""Audio in: the lock-free ring, the sounddevice input (with fake streams), the file stand-in, the reader.

The real sounddevice/PortAudio path cannot run here (no audio device); :class:`SoundDeviceInput` is driven
through its ``stream_factory`` / ``device_info`` injection points with fake streams that call the
callback the way PortAudio does.
"""

from __future__ import annotations

import math
import threading
import time
import tracemalloc
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from installation.audio_in import (
    WAIT_RATE,
    AudioInputError,
    AudioReader,
    AudioRing,
    FileInput,
    SoundDeviceInput,
    open_input,
)

# -- ring ---------------------------------------------------------------------------------------------


def test_ring_latest_zero_pads_then_wraps() -> None:
    ring = AudioRing(10)
    out = np.full(6, 7.0, np.float32)
    got, end = ring.latest(6, out)
    assert got is out and end == 0 and (out == 0).all()
    ring.write(np.arange(1, 5, dtype=np.float32))  # 1..4
    got, end = ring.latest(6, out)
    assert end == 4 and out.tolist() == [0, 0, 1, 2, 3, 4]
    ring.write(np.arange(5, 14, dtype=np.float32))  # 5..13: wraps (capacity 10)
    got, end = ring.latest(6, out)
    assert end == 13 and out.tolist() == [8, 9, 10, 11, 12, 13]
    assert ring.latest(10)[0].tolist() == list(range(4, 14))


def test_ring_read_bounds_and_oversized_block() -> None:
    ring = AudioRing(8)
    ring.write(np.arange(20, dtype=np.float32))  # longer than the ring: keeps the newest 8
    assert ring.written == 20
    buf = np.empty(4, np.float32)
    assert ring.read(14, buf) and buf.tolist() == [14, 15, 16, 17]
    assert not ring.read(11, buf)  # overwritten
    assert not ring.read(18, buf)  # not written yet
    with pytest.raises(ValueError, match="n must be"):
        ring.latest(9)
    with pytest.raises(ValueError, match="float32"):
        ring.latest(4, np.empty(4, np.float64))
    with pytest.raises(ValueError):
        AudioRing(0)


def test_ring_single_writer_single_reader_threads_stay_consistent() -> None:
    """A writer thread appends a ramp in odd-sized blocks; every window the reader takes is a contiguous ramp."""
    ring = AudioRing(4096)
    stop = threading.Event()

    def writer() -> None:
        k = 0
        while not stop.is_set():
            n = 97 + (k % 61)
            # modulo in float64 first: past 2**24 samples float32 cannot hold consecutive integers
            ring.write(((np.arange(n, dtype=np.float64) + ring.written) % 65536).astype(np.float32))
            k += 1

    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    out = np.empty(1000, np.float32)
    checked = 0
    deadline = time.monotonic() + 1.0
    try:
        while time.monotonic() < deadline:
            _, end = ring.latest(1000, out)
            if end >= 1000:
                expected = (np.arange(end - 1000, end, dtype=np.float64) % 65536).astype(np.float32)
                assert np.array_equal(out, expected)
                checked += 1
    finally:
        stop.set()
        thread.join()
    assert checked > 10


# -- sounddevice input with fakes ------------------------------------------------------------------------


class Flags:
    def __init__(self, overflow: bool = False) -> None:
        self.input_overflow = overflow

    def __bool__(self) -> bool:
        return self.input_overflow


class FakeStream:
    """Stands in for ``sounddevice.InputStream``: the test calls :meth:`deliver` as PortAudio would."""

    def __init__(self, **kwargs: Any) -> None:
        self.kwargs = kwargs
        self.callback = kwargs["callback"]
        self.finished = kwargs.get("finished_callback")
        self.active = False
        self.closed = False

    def start(self) -> None:
        self.active = True

    def close(self, ignore_errors: bool = True) -> None:
        self.closed = True
        self.active = False

    def deliver(self, frames: int = 480, value: float = 0.1, overflow: bool = False) -> None:
        indata = np.full((frames, self.kwargs["channels"]), value, np.float32)
        self.callback(indata, frames, None, Flags(overflow))


class Factory:
    def __init__(self, fail: int = 0) -> None:
        self.streams: list[FakeStream] = []
        self.fail = fail  # the next `fail` opens raise

    def __call__(self, **kwargs: Any) -> FakeStream:
        if self.fail > 0:
            self.fail -= 1
            raise OSError("PortAudio: device unavailable")
        stream = FakeStream(**kwargs)
        self.streams.append(stream)
        return stream


def device_info(device: Any) -> dict[str, Any]:
    if device == "nope":
        raise ValueError("No input device matching 'nope'")
    return {"name": "Fake USB Mic", "default_samplerate": 48000.0, "max_input_channels": 2}


def make_input(factory: Factory, **kwargs: Any) -> tuple[SoundDeviceInput, list[tuple[str, str]]]:
    events: list[tuple[str, str]] = []
    inp = SoundDeviceInput(
        "Fake",
        stream_factory=factory,
        device_info=device_info,
        on_event=lambda kind, detail: events.append((kind, detail)),
        **kwargs,
    )
    return inp, events


def test_device_input_opens_at_device_rate_and_callback_copies() -> None:
    factory = Factory()
    inp, events = make_input(factory, channels=2)
    inp.start()
    stream = factory.streams[0]
    assert inp.sample_rate == 48000 and stream.kwargs["samplerate"] == 48000
    assert stream.kwargs["channels"] == 2 and stream.kwargs["dtype"] == "float32"
    assert inp.state == "running" and events[0][0] == "opened"
    indata = np.stack([np.full(480, 0.2, np.float32), np.full(480, 0.4, np.float32)], axis=1)
    stream.callback(indata, 480, None, Flags())
    assert inp.ring.written == 480
    assert np.allclose(inp.ring.latest(480)[0], 0.3)  # mixed down to mono
    stream.deliver(overflow=True)
    stream.deliver(overflow=True)
    assert inp.overflows == 2
    inp.close()
    assert stream.closed and inp.state == "closed"


def test_callback_allocates_no_arrays_and_never_raises() -> None:
    factory = Factory()
    inp, _ = make_input(factory, channels=2)
    inp.start()
    stream = factory.streams[0]
    indata = np.random.default_rng(0).standard_normal((4096, 2)).astype(np.float32)  # mono mix would be 16 KiB
    stream.callback(indata, 4096, None, Flags())  # warm up
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        for _ in range(50):
            stream.callback(indata, 4096, None, Flags())
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    assert peak < 4096, f"callback allocated {peak} bytes"
    stream.callback("garbage", 3, None, None)  # must not raise into PortAudio ...
    assert inp._stream_error  # ... but the heartbeat will notice
    inp.close()


def test_unknown_device_and_too_many_channels() -> None:
    with pytest.raises(AudioInputError, match="input device .nope. not found"):
        SoundDeviceInput("nope", stream_factory=Factory(), device_info=device_info)
    with pytest.raises(AudioInputError, match="3 requested"):
        SoundDeviceInput("Fake", channels=3, stream_factory=Factory(), device_info=device_info)
    inp = SoundDeviceInput("Fake", stream_factory=Factory(fail=1), device_info=device_info)
    with pytest.raises(AudioInputError, match="cannot open"):
        inp.start()
    # the live loop's way: a device that is found but cannot open yet is retried in the heartbeat
    factory = Factory(fail=1)
    inp, events = make_input(factory, backoff_s=0.01)
    inp.start(retry=True)
    assert inp.state == "waiting" and events[-1][0] == "reopen_failed"
    pump(inp, "running")
    assert inp.reconnects == 1 and len(factory.streams) == 1
    inp.close()


def pump(inp: SoundDeviceInput, until: str, timeout: float = 3.0, deliver: FakeStream | None = None) -> float:
    """Call heartbeat (as the frame loop does) until ``inp.state == until``; returns the time it took."""
    start = time.monotonic()
    while inp.state != until:
        now = time.monotonic()
        assert now - start < timeout, f"state stayed {inp.state!r}, wanted {until!r}"
        if deliver is not None:
            deliver.deliver()
        inp.heartbeat(now)
        time.sleep(0.002)
    return time.monotonic() - start


def test_stall_closes_and_reopens_and_old_stream_cannot_write() -> None:
    factory = Factory()
    inp, events = make_input(factory, heartbeat_s=0.05, backoff_s=0.02, backoff_max_s=1.0)
    inp.start()
    first = factory.streams[0]
    first.deliver()
    inp.heartbeat(time.monotonic())
    # the device goes silent: no more callbacks
    pump(inp, "waiting")
    assert inp.stalls == 1 and [k for k, _ in events][-1] == "stalled"
    pump(inp, "running")
    assert inp.reconnects == 1 and len(factory.streams) == 2
    assert [k for k, _ in events][-2:] == ["reconnecting", "reconnected"]
    time.sleep(0.05)
    assert first.closed  # closed in a helper thread
    written = inp.ring.written
    first.deliver()  # a zombie callback of the old stream must not write
    assert inp.ring.written == written
    factory.streams[1].deliver()
    assert inp.ring.written == written + 480
    inp.close()


def test_inactive_stream_and_error_flag_count_as_stalls() -> None:
    factory = Factory()
    inp, events = make_input(factory, heartbeat_s=10.0, backoff_s=0.01)
    inp.start()
    factory.streams[0].active = False  # e.g. PortAudio stopped it
    inp.heartbeat(time.monotonic())
    assert inp.state == "waiting" and "inactive" in events[-1][1]
    pump(inp, "running")
    factory.streams[-1].finished()  # the finished callback: device gone
    inp.heartbeat(time.monotonic())
    assert inp.state == "waiting" and "error" in events[-1][1]
    inp.close()


def test_reopen_failures_back_off_exponentially() -> None:
    factory = Factory()
    inp, events = make_input(factory, heartbeat_s=0.02, backoff_s=0.01, backoff_max_s=0.04)
    inp.start()
    factory.fail = 3  # the device is unplugged: three reopen attempts fail
    pump(inp, "waiting")
    delays = []
    while len([k for k, _ in events if k == "reopen_failed"]) < 3:
        pump(inp, "reconnecting", timeout=3.0)
        pump(inp, "waiting", timeout=3.0)
        delays.append(inp._delay)
    assert delays == [0.02, 0.04, 0.04]  # doubles, capped at backoff_max_s
    t = pump(inp, "running", timeout=3.0)  # plugged back in
    assert t >= 0.03 and inp.reconnects == 1
    # still silent after the reopen: the next stall waits longer (no reset until samples flow)
    assert inp._delay == 0.04
    inp.close()


# -- file input ---------------------------------------------------------------------------------------------


def test_file_input_fast_mode_loops_through_the_same_ring(tmp_path: Path) -> None:
    import soundfile as sf

    samples = (np.arange(1600, dtype=np.float32) / 1600.0) - 0.5
    path = tmp_path / "ramp.wav"
    sf.write(str(path), samples, 16000, subtype="FLOAT")
    inp = open_input(path, 16000, file_speed=math.inf)
    assert isinstance(inp, FileInput)
    inp.start()
    deadline = time.monotonic() + 5.0
    while inp.passes < 3 and time.monotonic() < deadline:
        time.sleep(0.005)
    inp.close()
    assert inp.passes >= 3 and inp.state == "closed"
    end = inp.ring.written
    window, _ = inp.ring.latest(1600)
    assert np.allclose(window, np.roll(samples, -(end % 1600)), atol=1e-6)  # the file, looping


def test_file_input_real_time_pacing() -> None:
    rate = 16000
    inp = FileInput(np.zeros(rate, np.float32), rate, block_s=0.01)
    inp.start()
    time.sleep(0.3)
    elapsed = time.perf_counter() - (inp.started_at or 0)
    written = inp.ring.written
    inp.close()
    assert inp.block == 160
    # deadline-paced: never ahead of real time, and (even on a busy machine) not far behind
    assert written <= elapsed * rate + 160
    assert written >= (elapsed - 0.1) * rate
    assert inp.file_time(16000) == pytest.approx((inp.started_at or 0) + 1.0)


def test_open_input_errors() -> None:
    with pytest.raises(AudioInputError, match="no such audio file"):
        open_input("missing_clip.wav", 16000)
    with pytest.raises(AudioInputError, match="no audio samples"):
        FileInput(np.zeros(0, np.float32), 16000)


# -- reader side ----------------------------------------------------------------------------------------------


def test_reader_resamples_device_rate_to_bundle_rate() -> None:
    ring = AudioRing(48000 * 2)
    reader = AudioReader(ring, 48000, 16000, 16000)
    t = np.arange(48000 * 3) / 48000
    tone = (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    fed = 0
    for block in np.array_split(tone, 300):  # 10 ms blocks, read every block (a frame loop)
        ring.write(block)
        new = reader.update()
        fed += new.shape[0]
    assert fed == tone.shape[0] and reader.gaps == 0
    window = reader.window()
    assert window.shape == (16000,) and window.dtype == np.float32
    assert abs(float(np.sqrt(np.mean(window**2))) - 0.5 / math.sqrt(2)) < 0.01
    crossings = np.count_nonzero(np.diff(np.signbit(window)))
    assert abs(crossings / 2 - 440) <= 2  # one second at 16 kHz holds 440 periods


def test_reader_skips_ahead_after_a_long_stall() -> None:
    ring = AudioRing(16000 * 4)
    reader = AudioReader(ring, 16000, 16000, 16000, max_new_s=0.5)
    ring.write(np.ones(16000 * 2, np.float32))  # 2 s arrived while the main thread was stuck
    new = reader.update()
    assert new.shape[0] == 8000 and reader.gaps == 1
    assert reader.update().shape[0] == 0
    assert (reader.window() == 1.0).all()
    out = np.empty(160, np.float32)
    assert (reader.latest_raw(160, out) == 1.0).all()


def test_a_reopen_stuck_in_the_driver_is_reported_and_waited_for() -> None:
    release = threading.Event()
    factory = Factory()
    inp, events = make_input(factory, heartbeat_s=0.02, backoff_s=0.01)
    inp.reopen_hang_s = 0.05
    inp.start()

    def stuck(**kwargs: Any) -> FakeStream:
        release.wait(5.0)  # PortAudio blocking on a half-gone USB device
        return factory(**kwargs)

    inp._factory = stuck
    pump(inp, "reconnecting")
    deadline = time.monotonic() + 3.0
    while "reopen_hung" not in [k for k, _ in events]:
        assert time.monotonic() < deadline
        inp.heartbeat(time.monotonic())  # never blocks, even now
        time.sleep(0.005)
    assert inp.state == "reconnecting"
    release.set()
    pump(inp, "running")
    assert inp.reconnects == 1
    inp.close()


def test_a_device_missing_at_start_is_waited_for_and_opened_when_it_appears() -> None:
    """``wait_for_device`` (the live loop): no device at construction is not an error; the input waits with
    back-off, re-scanning devices before every try, and opens the device once it appears (its first opening:
    ``opened``, not a reconnect)."""
    plugged = {"in": False}
    scans: list[int] = []

    def info(device: Any) -> dict[str, Any]:
        if not plugged["in"]:
            raise ValueError("No input device matching 'USB'")
        return {"name": "USB Audio Device", "default_samplerate": 44100.0, "max_input_channels": 1}

    factory = Factory(fail=10**6)  # every open fails while unplugged
    events: list[tuple[str, str]] = []
    inp = SoundDeviceInput(
        "USB",
        stream_factory=factory,
        device_info=info,
        refresh_devices=lambda: scans.append(1),
        on_event=lambda kind, detail: events.append((kind, detail)),
        backoff_s=0.01,
        backoff_max_s=0.04,
        wait_for_device=True,
    )
    assert inp.sample_rate == WAIT_RATE and inp.description == f"USB @ {WAIT_RATE} Hz"
    with pytest.raises(AudioInputError, match="cannot open"):
        inp.start()  # without retry it still says so at once
    inp.start(retry=True)
    assert inp.state == "waiting" and events[-1][0] == "reopen_failed"
    assert events[-1][1].startswith("input device 'USB' not found (No input device matching 'USB'); waiting for it")
    while len([k for k, _ in events if k == "reopen_failed"]) < 4:
        pump(inp, "reconnecting", timeout=3.0)
        pump(inp, "waiting", timeout=3.0)
    plugged["in"], factory.fail = True, 0  # plugged in
    pump(inp, "running", timeout=3.0)
    assert events[-1] == ("opened", f"USB Audio Device @ {WAIT_RATE} Hz (found after waiting)")
    assert inp.reconnects == 0 and inp.missing == "" and len(scans) >= 4
    assert factory.streams[-1].kwargs["samplerate"] == WAIT_RATE
    inp.close()
