"""``run.py render``: an audio or video file in, a generated H.264 video with its audio out (headless, offline).

Data flow (see ARCHITECTURE.md): input --PyAV--> mono audio at the bundle's rate
(:func:`engine.audio.load_audio`) --> voice activity (:mod:`installation.vad`) -->
conditioning windows at the video frame times --> :class:`engine.generator.Generator` (batched,
voiced frames only) --> image EMA --> a scene (:mod:`scenes`) --> frames --PyAV--> ``.mp4``
(H.264 yuv420p, x264 ``ultrafast`` / crf 20 by default) with the input's own audio (AAC and MP3 tracks
copied as they are, anything else re-encoded to AAC at the input's rate, mono or stereo; with ``--sound``
the installation's generated sound, rendered by pyo's offline server
(:func:`installation.sound.render_offline`), is mixed in and the mix encoded to AAC). Only the clock differs
from the live loop: here it is a frame counter (:class:`FrameCounterClock`); :class:`Conditioner`, :class:`NoiseDrift`, :class:`ImageEMA`
and the scenes are shared with it.

Timing (exact): output frame ``i`` (0-based) is shown from ``i / fps`` to ``(i + 1) / fps`` seconds
and depicts the state at the *end* of that interval, ``t_i = (i + 1) / fps``: its conditioning
window is the ``window_samples`` input samples ending at sample ``e_i = round(t_i * sample_rate)``
(exclusive), zero-padded before the start of the input (and past its end, for the last frame).
The video has ``N = max(1, round(duration * fps))`` frames, so it is within half a frame of the
input's duration.

Temporal smoothing (so faces morph instead of flickering):

* the voice gate comes from the VAD: frames without voice are not generated at all (the scene shows
  its idle state: the last face fading to the background);
* within a voiced segment the generator runs at ``gen_fps`` (default 10 Hz, every 3rd frame at
  30 fps) and the scene crossfades linearly between successive generated images (crossfade = the
  generation interval). The EMA below passes little above ~1.6 Hz anyway (1 / (2 pi 0.1 s)), so
  generating every frame triples the generator's cost for little visible change; ``--gen-fps 0``
  generates every frame;
* the noise input is held per voiced segment and drifts slowly: each segment ``k`` walks through
  seeded noise vectors ``z(k, 0), z(k, 1), ...``, one every ``noise_drift_s`` seconds, spherically
  interpolated (slerp keeps the Gaussian's norm, so in-between vectors are as likely as the keys);
  a new segment starts a new face;
* generated images are smoothed with an exponential moving average, time constant
  ``image_ema_s`` = 0.1 s (reset at each segment start, so a new face does not drag the previous
  one in): the speech window slides by one generation interval between images and the raw outputs
  jitter; 100 ms removes that jitter while the face still follows the voice within ~0.2 s.

Raises :class:`engine.errors.UserError` (one line naming the file and the problem) for missing,
corrupt, zero-length or track-less input, an unwritable output folder, an unknown preset or bad
numbers; the output is written to a temporary file in the target folder and renamed at the end.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import secrets
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field, replace
from fractions import Fraction
from pathlib import Path
from typing import Any, Protocol

import cv2
import numpy as np

from engine.configs import finite_float
from engine.errors import UserError
from installation.presets import RenderParams, load_preset
from installation.sound import SoundSettings, StateTrack, render_offline
from installation.vad import declared_gate, detect, gate_params
from installation.voice_stage import images_for, plan_voice_actions
from scenes import FrameState, Scene, make_scene

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_BUNDLE = ROOT / "presets" / "models" / "wav2pix-64"
AAC_RATES = (96000, 88200, 64000, 48000, 44100, 32000, 24000, 22050, 16000, 12000, 11025, 8000)
"""Sample rates (Hz) the AAC encoder takes; other input rates are resampled to 48 kHz for the output."""


class RenderError(UserError, ValueError):
    """A render input, output or option is unusable; the message names the file or option and the problem."""


# -- parameters ---------------------------------------------------------------------------------


PRESETS: dict[str, RenderParams] = {"default": RenderParams(gen_fps=10.0)}
# The built-in render preset generates at 10 Hz within voiced segments and crossfades in between, as the live
# presets do (``generation.gen_fps``), so a render looks like the installation; ``--gen-fps 0`` generates every
# output frame (three times the generator's work at 30 fps for little visible change, see the module docstring).
"""Built-in presets; any other ``--preset`` name is a live preset (:func:`installation.presets.load_preset`)."""


# -- clocks ---------------------------------------------------------------------------------------


class FrameClock(Protocol):
    """Where frame times come from: a frame counter offline, the wall clock live."""

    def tick(self) -> float:
        """Advance to the next frame; returns its time in seconds."""
        ...


class FrameCounterClock:
    """Offline clock: frame ``i`` (the ``i+1``-th tick) is at ``(i + 1) / fps`` seconds (exact rational arithmetic)."""

    def __init__(self, fps: Fraction) -> None:
        self.fps = Fraction(fps)
        self.frame = -1

    def time_of(self, frame: int) -> float:
        """Seconds of frame index ``frame``: ``(frame + 1) / fps``."""
        return float((frame + 1) / self.fps)

    def tick(self) -> float:
        self.frame += 1
        return self.time_of(self.frame)


def frame_end_samples(n_frames: int, fps: Fraction, sample_rate: int) -> np.ndarray:
    """int64 [n_frames]: ``e_i = round((i + 1) * sample_rate / fps)``, the exclusive end sample of frame i's window."""
    num = (np.arange(1, n_frames + 1, dtype=np.int64) * sample_rate) * fps.denominator
    return (2 * num + fps.numerator) // (2 * fps.numerator)  # round half up, exact


# -- conditioning ----------------------------------------------------------------------------------


def slerp(a: np.ndarray, b: np.ndarray, t: float) -> np.ndarray:
    """Spherical interpolation between float vectors ``a`` and ``b`` [Z] at ``t`` in [0, 1] (lerp if parallel)."""
    na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    if na == 0.0 or nb == 0.0:
        return ((1 - t) * a + t * b).astype(np.float32)
    cos = float(np.clip(np.dot(a, b) / (na * nb), -1.0, 1.0))
    omega = math.acos(cos)
    if math.sin(omega) < 1e-6:
        return ((1 - t) * a + t * b).astype(np.float32)
    s = math.sin(omega)
    return (math.sin((1 - t) * omega) / s * a + math.sin(t * omega) / s * b).astype(np.float32)


class NoiseDrift:
    """Seeded, slowly drifting noise per voiced segment.

    ``at(k, s)`` is the noise ``s`` seconds into segment ``k``: slerp between keys ``z(k, j)`` and
    ``z(k, j+1)`` with ``j = floor(s / drift_s)``; key ``z(k, j)`` is ``make_noise(1, seed')[0]`` with
    ``seed'`` derived from ``(seed, k, j)``, so the same seed gives the same noise on every run.

    Args:
        make_noise: ``(batch, seed) -> float32 [batch, Z]`` (e.g. ``Generator.make_noise``).
        seed: base seed.
        drift_s: seconds between keys (0 or less: hold ``z(k, 0)`` for the whole segment).
    """

    def __init__(self, make_noise: Callable[[int, int], np.ndarray], seed: int, drift_s: float) -> None:
        self.make_noise = make_noise
        self.seed = int(seed)
        self.drift_s = float(drift_s)
        self._keys: dict[tuple[int, int], np.ndarray] = {}

    def key(self, segment: int, index: int) -> np.ndarray:
        """Noise key ``z(segment, index)``, float32 [Z]."""
        k = (segment, index)
        if k not in self._keys:
            if len(self._keys) > 64:  # keys are only revisited within a segment
                self._keys.clear()
            derived = int(np.random.SeedSequence([self.seed & 0xFFFFFFFF, segment, index]).generate_state(1)[0])
            self._keys[k] = np.asarray(self.make_noise(1, derived), dtype=np.float32)[0]
        return self._keys[k]

    def at(self, segment: int, seconds: float) -> np.ndarray:
        """Noise float32 [Z] at ``seconds`` (>= 0) into voiced segment ``segment`` (>= 0)."""
        if self.drift_s <= 0:
            return self.key(segment, 0)
        u = max(0.0, seconds) / self.drift_s
        j = math.floor(u)
        return slerp(self.key(segment, j), self.key(segment, j + 1), u - j)


@dataclass(frozen=True)
class Request:
    """One generation request from :class:`Conditioner`.

    Attributes:
        noise: float32 [Z]. segment: voiced segment index (0, 1, ...). new_segment: first request of it.
        dt: seconds since the previous request of the same segment (0 for the first).
    """

    noise: np.ndarray
    segment: int
    new_segment: bool
    dt: float


class Conditioner:
    """Decides, frame by frame, whether to generate and with which noise (the same for live and offline).

    Args:
        noise: the noise source.
        interval_s: minimum seconds between generations within a voiced segment (0: every frame).
    """

    def __init__(self, noise: NoiseDrift, interval_s: float) -> None:
        self.noise = noise
        self.interval_s = float(interval_s)
        self.segment = -1
        self._start: float | None = None  # current segment's start time (s), None while idle
        self._last = 0.0

    def step(self, t: float, active: bool) -> Request | None:
        """Frame at ``t`` seconds with the voice gate ``active``: a :class:`Request`, or ``None`` (don't generate)."""
        if not active:
            self._start = None
            return None
        if self._start is None:
            self.segment += 1
            self._start = self._last = t
            return Request(self.noise.at(self.segment, 0.0), self.segment, True, 0.0)
        dt = t - self._last
        if dt < self.interval_s - 1e-6:
            return None
        self._last = t
        return Request(self.noise.at(self.segment, t - self._start), self.segment, False, dt)


class ImageEMA:
    """Exponential moving average of images with a time constant in seconds (frame-rate independent).

    ``update(image, dt)``: ``state += (1 - exp(-dt / tau)) * (image - state)``; the first image after
    :meth:`reset` (or a size change) is taken as is.
    """

    def __init__(self, time_constant_s: float) -> None:
        self.tau = float(time_constant_s)
        self._state: np.ndarray | None = None

    def reset(self) -> None:
        self._state = None

    def update(self, image: np.ndarray, dt: float) -> np.ndarray:
        """Blend uint8 ``image`` [h, w, 3] in after ``dt`` seconds; returns the smoothed uint8 [h, w, 3]."""
        x = image.astype(np.float32)
        if self._state is None or self._state.shape != x.shape or self.tau <= 0:
            self._state = x
        else:
            self._state += np.float32(1.0 - math.exp(-max(dt, 0.0) / self.tau)) * (x - self._state)
        return (self._state + 0.5).astype(np.uint8)


# -- media -----------------------------------------------------------------------------------------


def generator_threads(cores: int | None = None) -> int:
    """CPU threads for the render's generator (its worker thread): 1 on up to 3 cores, else 2.

    The generator runs beside the main thread (draw, encode) and x264 (:func:`encoder_threads`), so on a small
    machine its own second thread only competes with them for the same cores. On the 2-core development machine,
    three alternating renders of the render benchmark's ``default`` case each way: median 11.8x real time with
    one thread against 9.6x with the engine's default two, 4.5 against 5.5 CPU seconds (1 thread faster in all
    three pairs). The torch-cpu backend takes it as torch's thread count (not timed; ONNX Runtime is the default).

    Args:
        cores: CPU cores available (default: this process's affinity).
    """
    from engine.backends.ort_backend import available_cores

    return 1 if (available_cores() if cores is None else int(cores)) <= 3 else 2


def encoder_threads(cores: int | None = None) -> int:
    """libx264 threads for a render: every core but two (the generator's worker thread and the main thread that
    draws and feeds the encoder), at least 1, instead of x264's automatic ``1.5 x cores`` frame threads that
    oversubscribe a small machine. On the 2-core development machine, six alternating renders of the render
    benchmark's ``default`` case: median 12.2x real time with one encoder thread against 11.8x automatic,
    3 % less CPU time, a narrower spread (10.6-12.5x against 10.5-14.3x).

    Args:
        cores: CPU cores available (default: this process's affinity).
    """
    from engine.backends.ort_backend import available_cores

    return max(1, (available_cores() if cores is None else int(cores)) - 2)


class _VideoWriter:
    """The output MP4 container (PyAV) and its H.264 stream (libx264, yuv420p); :class:`_AudioMuxer` adds the audio."""

    def __init__(
        self, path: Path, size: int, fps: Fraction, x264_preset: str, crf: int, threads: int = 0, pool: int = 8
    ) -> None:
        import av

        self.container = av.open(str(path), mode="w", format="mp4")
        self.stream = self.container.add_stream("libx264", rate=fps)
        self.stream.width = self.stream.height = size
        self.stream.pix_fmt = "yuv420p"
        self.stream.time_base = Fraction(1) / fps
        self.stream.options = {"preset": x264_preset, "crf": str(crf), **({"threads": str(threads)} if threads else {})}
        self.frames = 0
        self.size = size
        # A ring of reused frames (:meth:`frame`): filling one is a tenth of the CPU of a new frame per canvas
        # (``VideoFrame.from_ndarray``: a fresh buffer every frame, 0.37 against 0.03 ms at 512 px).
        self._pool = [av.VideoFrame(size, size, "yuv420p") for _ in range(pool)]
        self._planes = [
            [np.frombuffer(p, np.uint8).reshape(p.height, p.line_size)[:, : p.width] for p in f.planes]
            for f in self._pool
        ]

    def frame(self, rgb: np.ndarray) -> Any:
        """The next ``av.VideoFrame`` of a uint8 [size, size, 3] RGB canvas (BT.601 limited-range conversion by
        OpenCV, as swscale's default), so the canvas can be drawn again while it is encoded.

        The frame is one of a ring of ``pool`` reused frames: it stays valid until ``pool`` more frames have been
        made, so at most ``pool - 1`` may wait to be encoded (x264 copies a frame when it is encoded).
        """
        yuv = cv2.cvtColor(rgb, cv2.COLOR_RGB2YUV_I420)  # [size * 3/2, size]: Y, then U and V, each (size/2)^2
        slot = self.frames % len(self._pool)
        frame, (y, u, v) = self._pool[slot], self._planes[slot]
        n, h = self.size, self.size // 2
        y[...] = yuv[:n]
        chroma = yuv[n:].reshape(-1)  # U then V, h * h bytes each, in rows of n (a row splits where h is odd)
        u[...] = chroma[: h * h].reshape(h, h)
        v[...] = chroma[h * h :].reshape(h, h)
        frame.pts = self.frames
        self.frames += 1
        return frame

    def encode(self, frame: Any) -> None:
        """Encode and mux one frame from :meth:`frame`."""
        self.container.mux(self.stream.encode(frame))

    def close(self) -> None:
        """Flush the encoder and finish the file."""
        self.container.mux(self.stream.encode(None))
        self.container.close()

    def abort(self) -> None:
        """Close the file without flushing (after an error; the caller deletes it)."""
        try:
            self.container.close()
        except Exception:  # noqa: BLE001 - already failing; the original error matters
            log.debug("closing the failed output", exc_info=True)


class _OutputThread:
    """Runs the output container's work (video encode, audio encode, mux) in one thread, in submission order.

    x264 and FFmpeg's AAC encoder release the GIL, so the main thread draws frame ``i + 1`` while frame ``i`` is
    encoded (one container, one thread: PyAV containers are not thread-safe). The queue is short (``depth``), so
    drawing never runs far ahead. An exception in the thread is raised again by the next :meth:`submit` or by
    :meth:`close`.
    """

    DEPTH = 4

    def __init__(self, depth: int = DEPTH) -> None:
        import queue
        import threading

        self._queue: queue.Queue = queue.Queue(depth)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._work, name="render-output", daemon=True)
        self._thread.start()

    def _work(self) -> None:
        while (task := self._queue.get()) is not None:
            if self._error is None:
                try:
                    task()
                except BaseException as exc:  # noqa: BLE001 - handed to the main thread
                    self._error = exc

    def submit(self, task: Callable[[], None]) -> None:
        """Queue ``task`` (blocks while the queue is full). Raises the thread's earlier error, if any."""
        if self._error is not None:
            raise self._error
        self._queue.put(task)

    def close(self) -> None:
        """Wait for every queued task; raise the thread's error, if any."""
        self._queue.put(None)
        self._thread.join()
        if self._error is not None:
            raise self._error


class _AudioMuxer:
    """Streams the input's first audio track into the output.

    * **copied** (``reencode`` False and an AAC or MP3 track, which MP4 holds as they are, with continuous
      timestamps: :meth:`_copyable`): packets go from the input to the output unchanged, with no generation loss and next to no CPU (re-encoding a minute of stereo
      took 1.2 s of the render's two cores). Timestamps are shifted by the stream's start time (as ``ffmpeg -c:a
      copy`` does): an MP3's encoder delay (1105 samples for LAME) becomes a negative first timestamp, which the
      MP4 muxer writes as an edit list, so players skip it as the decoder does and output audio sample 0 is
      still the first decoded sample.
    * **re-encoded** to AAC at the input's rate (48 kHz where AAC does not take it), mono or stereo, otherwise
      and whenever :meth:`mix_in` is used. Samples are re-timestamped from 0, so output audio sample 0 is the
      first decoded sample -- the same alignment as :func:`engine.audio.load_audio`, which the video is timed
      against.

    Raises:
        RenderError: the input has no audio track, or its audio data is corrupt or cannot be written (from
            :meth:`advance_to`).
    """

    COPIED_CODECS = ("aac", "mp3", "mp3float")  # PyAV names MP3 tracks by their decoder
    MP3_RATES = (16000, 22050, 24000, 32000, 44100, 48000)  # MPEG-1/2 layer III; MP4 refuses MPEG-2.5 (8-12 kHz)

    def __init__(self, source: Path, container: Any, reencode: bool = False) -> None:
        import av

        self._av = av
        self.source = source
        self.input = av.open(str(source))
        if not self.input.streams.audio:
            self.input.close()
            raise RenderError(f"{source}: no audio track")
        stream = self.input.streams.audio[0]
        rate = int(stream.codec_context.sample_rate or stream.rate or 48000)
        self.rate = rate if rate in AAC_RATES else 48000
        channels = stream.codec_context.channels or 1
        self.channels = 1 if channels == 1 else 2
        self.layout = layout = "mono" if channels == 1 else "stereo"
        self.container = container
        self.samples = 0
        self._mix: tuple[np.ndarray, float] | None = None
        self._next: Any = None  # a packet read but not muxed yet (past advance_to's limit)
        self.copied = not reencode and self._copyable(stream)
        if self.copied:
            self.stream = container.add_stream_from_template(stream)
            self._packets: Iterator[Any] = self._demuxed(stream, stream.start_time or 0)
            return
        self.stream = container.add_stream("aac", rate=self.rate, layout=layout)
        # FFmpeg's "fast" AAC coder: half the CPU of the default two-loop search (0.8 against 1.4 s per minute of
        # stereo on the 2-core machine), which the render's output thread spends beside x264
        self.stream.codec_context.options = {"aac_coder": "fast"}
        self.stream.time_base = Fraction(1, self.rate)
        self._frames = self._decoded(stream, layout)
        self._packets = self._encoded()

    def _copyable(self, stream: Any) -> bool:
        """True where the input's audio packets can go into the MP4 unchanged: an AAC or MP3 track (MP3 at an
        MPEG-1/2 rate), every packet timestamped, each starting where the one before ends (within 1 ms). A gap or
        a jump back (joined recordings, broadcast captures) would move the sound against the video, which is timed
        against the decoded samples joined end to end (:func:`engine.audio.load_audio`); such tracks are
        re-encoded. A demux-only pass over a second handle on the input (milliseconds per minute of audio)."""
        ctx = stream.codec_context
        if ctx.name not in self.COPIED_CODECS or (ctx.name != "aac" and ctx.sample_rate not in self.MP3_RATES):
            return False
        end = None
        try:
            with self._av.open(str(self.source)) as scan:
                s = scan.streams.audio[0]
                tolerance = 0.001 / float(s.time_base)
                for packet in scan.demux(s):
                    if packet.size == 0:  # the demuxer's flush packet
                        continue
                    if packet.pts is None or packet.dts is None or not packet.duration:
                        return False
                    if end is not None and abs(packet.pts - end) > tolerance:
                        return False
                    end = packet.pts + packet.duration
        except self._av.error.FFmpegError:
            return False  # decoding will say what is wrong with the file
        return end is not None

    def mix_in(self, sound: np.ndarray, amount: float) -> None:
        """Mix ``sound`` (float32 [n, channels] at ``self.rate``, from output sample 0) into the audio still to
        be muxed, with :func:`mix_gains` ``(input_gain, sound_gain)`` of ``amount`` and :func:`soft_limit` on the
        sum; past the end of ``sound`` the input alone (times its gain).

        Raises:
            RuntimeError: the muxer copies the input's packets (made with ``reencode`` False).
        """
        if self.copied:
            raise RuntimeError("_AudioMuxer.mix_in: this muxer copies the input's audio; make it with reencode=True")
        self._mix = (sound, float(amount))

    def _mixed(self, frame: Any) -> Any:
        sound, amount = self._mix  # type: ignore[misc]
        dry, wet = mix_gains(amount)
        x = frame.to_ndarray().reshape(self.channels, -1)  # fltp: [channels, n]
        part = sound[self.samples : self.samples + x.shape[1]].T
        y = dry * x if dry != 1.0 else x.astype(np.float32, copy=True)
        y[:, : part.shape[1]] += wet * part
        y = np.ascontiguousarray(soft_limit(y), dtype=np.float32)
        out = self._av.AudioFrame.from_ndarray(y, format="fltp", layout=self.layout)
        out.sample_rate = self.rate
        return out

    def _decoded(self, stream: Any, layout: str) -> Iterator[Any]:
        resampler = self._av.AudioResampler(format="fltp", layout=layout, rate=self.rate)
        try:
            for frame in self.input.decode(stream):
                frame.pts = None
                yield from resampler.resample(frame)
            yield from resampler.resample(None)
        except self._av.error.FFmpegError as exc:
            raise RenderError(f"{self.source}: corrupt audio data ({exc})") from exc

    def _encoded(self) -> Iterator[Any]:
        """AAC packets of the decoded (and mixed) input, timestamped from sample 0, then the encoder's flush."""
        for frame in self._frames:
            if self._mix is not None:
                frame = self._mixed(frame)
            frame.pts = self.samples
            frame.time_base = self.stream.time_base
            self.samples += frame.samples
            yield from self.stream.encode(frame)
        yield from self.stream.encode(None)

    def _demuxed(self, stream: Any, start: int) -> Iterator[Any]:
        """The input's packets, their timestamps shifted by ``start`` (in the stream's time base)."""
        try:
            for packet in self.input.demux(stream):
                if packet.size == 0:  # the demuxer's flush packet
                    continue
                packet.pts, packet.dts = packet.pts - start, packet.dts - start
                packet.stream = self.stream
                yield packet
        except self._av.error.FFmpegError as exc:
            raise RenderError(f"{self.source}: corrupt audio data ({exc})") from exc

    def advance_to(self, seconds: float | None) -> None:
        """Mux the input's audio up to ``seconds`` into the output (``None``: all of it)."""
        while True:
            packet = self._next if self._next is not None else next(self._packets, None)
            self._next = None
            if packet is None:
                return
            if seconds is not None and packet.pts is not None and packet.pts * packet.time_base >= seconds:
                self._next = packet
                return
            try:
                self.container.mux(packet)
            except self._av.error.FFmpegError as exc:
                raise RenderError(f"{self.source}: its audio could not be written to the output ({exc})") from exc

    def close(self) -> None:
        """Mux the rest of the audio (a re-encoded track's encoder flushed) and close the input."""
        self.advance_to(None)
        self.input.close()

    def abort(self) -> None:
        """Close the input after an error."""
        self.input.close()


def mix_gains(amount: float) -> tuple[float, float]:
    """``(input_gain, sound_gain)`` of ``render --sound-mix amount`` (0-1): a DJ-style crossfade whose middle keeps
    both at unity, ``(min(1, 2 (1 - amount)), min(1, 2 amount))``: 0 = the input alone, 0.5 (the default) = the
    visitor's voice at its own level with the generated sound added at its own, 1 = the generated sound alone.
    (A linear crossfade, ``(1 - amount, amount)``, made the whole track 6 dB quieter at 0.5.)"""
    a = min(1.0, max(0.0, float(amount)))
    return min(1.0, 2.0 * (1.0 - a)), min(1.0, 2.0 * a)


def soft_limit(x: np.ndarray, knee: float = 0.891) -> np.ndarray:
    """Samples with ``|x| <= knee`` (default -1 dBFS) unchanged; above it ``knee + (1 - knee) tanh((|x| - knee) /
    (1 - knee))`` with the sign kept: continuous with slope 1 at the knee, never above full scale, so a mix
    that adds up past 0 dBFS is rounded off instead of clipped. float [...] in, float32 out (a new array)."""
    y = np.asarray(x, dtype=np.float32).copy()
    over = np.abs(y) > knee
    if over.any():
        head = 1.0 - knee
        v = y[over]
        y[over] = np.sign(v) * (knee + head * np.tanh((np.abs(v) - knee) / head))
    return y


# -- the render --------------------------------------------------------------------------------------


@dataclass
class RenderStats:
    """What a render did. Times in seconds.

    Attributes:
        frames: output frames. duration_s: input duration. wall_s: wall time of :func:`render`
            (model loading included when ``render`` loaded it: see ``timings['load']``).
        generated: images generated. generator_calls: batched generator calls. voiced_frames: frames with the gate open.
        timings: seconds per stage: decode, vad, load, generate (in the worker thread), generate_wait (the
            main thread waiting for it), draw, encode, audio.
        backend: the generator's backend name.
    """

    frames: int = 0
    duration_s: float = 0.0
    wall_s: float = 0.0
    generated: int = 0
    generator_calls: int = 0
    voiced_frames: int = 0
    timings: dict[str, float] = field(default_factory=dict)
    backend: str = ""

    @property
    def realtime_factor(self) -> float:
        """Input seconds per wall second, excluding model loading (``timings['load']``)."""
        busy = self.wall_s - self.timings.get("load", 0.0)
        return self.duration_s / busy if busy > 0 else math.inf


def _timer(timings: dict[str, float]) -> Callable[[str], AbstractContextManager[None]]:
    """``with timer(name):`` adds the block's wall seconds to ``timings[name]`` (usable from several threads)."""

    @contextmanager
    def timed(name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            timings[name] = timings.get(name, 0.0) + time.perf_counter() - start

    return timed


def parse_fps(value: str | float | Fraction) -> Fraction:
    """Frames per second from ``30``, ``29.97`` or ``30000/1001``.

    Raises:
        RenderError: not a positive number up to 240.
    """
    try:
        fps = Fraction(str(value)).limit_denominator(1001)
    except (ValueError, ZeroDivisionError):
        raise RenderError(f"--fps: expected a number such as 30 or 30000/1001, got {value!r}") from None
    if not 0 < fps <= 240:
        raise RenderError(f"--fps: expected a frame rate in (0, 240], got {value!r}")
    return fps


def _temp_output(output: Path) -> Path:
    """Create an empty temporary file next to ``output``; RenderError if the folder is unusable."""
    folder = output.parent
    if output.is_dir():
        raise RenderError(f"{output}: is a directory; give a file name such as {output / 'render.mp4'}")
    if not folder.is_dir():
        raise RenderError(f"{output}: output folder {folder} does not exist")
    tmp = folder / f".{output.name}.{secrets.token_hex(4)}.part"
    try:
        with open(tmp, "xb"):
            pass
    except OSError as exc:
        raise RenderError(f"{output}: cannot write to folder {folder} ({exc.strerror or exc})") from exc
    return tmp


def _windows(padded: np.ndarray, ends: np.ndarray, window: int) -> np.ndarray:
    """float32 [B, window]: ``padded[e : e + window]`` for each ``e`` in ``ends`` (``padded`` has ``window`` leading zeros)."""
    return np.lib.stride_tricks.sliding_window_view(padded, window)[ends]


def render(
    source: str | Path,
    output: str | Path,
    *,
    bundle: str | Path = DEFAULT_BUNDLE,
    size: int = 512,
    fps: str | float | Fraction = 30,
    seed: int = 0,
    batch: int = 32,
    backend: str = "auto",
    params: RenderParams | None = None,
    generator: Any = None,
    scene: Scene | None = None,
    x264_preset: str = "ultrafast",
    crf: int = 20,
    progress: bool = True,
    sound: SoundSettings | None = None,
    sound_mix: float = 0.5,
) -> RenderStats:
    """Render ``source`` (audio or video) to ``output`` (.mp4: H.264 yuv420p ``size`` px square at ``fps``, the input's
    audio copied (AAC, MP3) or encoded to AAC, see :class:`_AudioMuxer`).

    Args:
        source: any file PyAV reads with an audio track.
        output: the video to write (MP4 container whatever the extension); replaced atomically at the end.
        bundle: model bundle directory (ignored when ``generator`` is given).
        size: output side in px (even, >= 16).
        fps: output frame rate (``30``, ``29.97``, ``"30000/1001"``).
        seed: noise seed; the same seed, input and bundle give the same frames.
        batch: images per generator call (also the Generator's ``max_batch``).
        backend: engine backend request (``auto``, ``onnxruntime``, ...).
        params: picture parameters (default: the ``default`` preset).
        generator: an object with the :class:`engine.generator.Generator` interface to use instead of loading ``bundle``.
        scene: a scene instance (default: ``params.scene``).
        x264_preset, crf: H.264 encoder speed preset and quality (lower crf: better, bigger).
        progress: show a tqdm progress bar on stderr.
        sound: the installation's generated sound (:mod:`installation.sound`, rendered with pyo's offline
            server from the same voice, VAD level and faces) is mixed into the output audio with these
            settings; None: the input's audio only.
        sound_mix: balance of the output audio, 0-1 (:func:`mix_gains`): 0 the input only, 0.5 the input at
            its own level plus the generated sound, 1 the generated sound only; peaks above -1 dBFS are rounded
            off (:func:`soft_limit`). Same duration as without sound.

    Returns:
        :class:`RenderStats`.

    Raises:
        RenderError / engine.errors.UserError: bad input file (missing, no audio track, corrupt, zero
            length), unwritable output folder, bad option values, unusable bundle.
    """
    from engine.audio import load_audio

    started = time.perf_counter()
    params = params or PRESETS["default"]
    source, output = Path(source), Path(output)
    fps = parse_fps(fps)
    size, batch = int(size), int(batch)
    if not (16 <= size <= 8192 and size % 2 == 0):
        raise RenderError(f"--size: expected an even number of pixels in [16, 8192], got {size}")
    if batch < 1:
        raise RenderError(f"--batch: expected at least 1, got {batch}")
    if not 0.0 <= sound_mix <= 1.0:
        raise RenderError(f"--sound-mix: expected 0..1, got {sound_mix}")
    if not source.is_file():
        raise RenderError(f"{source}: no such file")
    if output.resolve() == source.resolve() or (output.exists() and os.path.samefile(source, output)):
        raise RenderError(f"{output}: is the input file; write the video to another file (-o)")
    stats = RenderStats()
    timer = _timer(stats.timings)

    tmp = _temp_output(output)
    try:
        if generator is None:
            from engine.bundle import load_bundle
            from engine.generator import Generator

            rate = load_bundle(bundle, verify=False).sample_rate

            def load() -> Generator:
                with timer("load"):
                    return Generator(bundle, backend=backend, max_batch=batch, threads=generator_threads())

            # the model loads in a thread while the input decodes (both release the GIL: 0.1-0.3 s less start-up
            # on 2 cores); a bad input still fails with its own error, once the load is done
            with ThreadPoolExecutor(max_workers=1, thread_name_prefix="render-load") as pool:
                loading = pool.submit(load)
                with timer("decode"):
                    audio = load_audio(source, rate)
                generator = loading.result()
        else:
            rate = int(generator.sample_rate)
            with timer("decode"):
                audio = load_audio(source, rate)
        stats.backend = str(getattr(generator, "backend_name", type(generator).__name__))
        window = int(generator.window_samples)
        stats.duration_s = audio.shape[0] / rate
        n_frames = max(1, round(Fraction(audio.shape[0], rate) * fps))
        stats.frames = n_frames
        ends = frame_end_samples(n_frames, fps, rate)
        with timer("vad"):  # the gate the bundle declares: voice (default) or sound (music and noise)
            vad = gate_params(
                declared_gate(getattr(getattr(generator, "bundle", None), "family_info", None)), params.vad
            )
            gate, level = detect(audio, rate, vad).at(ends)
        stats.voiced_frames = int(gate.sum())

        # Plan: which frames generate, with which noise (cheap; the same Conditioner as live).
        clock = FrameCounterClock(fps)  # time_of() for the plan; tick() drives the frame loop below
        stride = 1 if params.gen_fps <= 0 else max(1, round(float(fps) / params.gen_fps))
        conditioner = Conditioner(NoiseDrift(generator.make_noise, seed, params.noise_drift_s), float(stride / fps))
        requests = [conditioner.step(clock.time_of(i), bool(gate[i])) for i in range(n_frames)]
        todo = [i for i, r in enumerate(requests) if r is not None]
        padded = np.concatenate([np.zeros(window, np.float32), audio, np.zeros(int(ends[-1]) + 1, np.float32)])

        blocks = [todo[b : b + batch] for b in range(0, len(todo), batch)]

        def run_block(idx: list[int]) -> np.ndarray:
            noise = np.stack([requests[i].noise for i in idx])
            with timer("generate"):
                return images_for(generator, _windows(padded, ends[idx], window), noise)

        def generated() -> Iterator[tuple[int, np.ndarray]]:
            """(frame index, uint8 [h, w, 3]) in frame order; the next block is generated in a worker thread
            while this one is drawn and encoded (the generator releases the GIL; one thread calls it)."""
            if not blocks:
                return
            with ThreadPoolExecutor(max_workers=1, thread_name_prefix="render-generator") as pool:
                ahead = pool.submit(run_block, blocks[0])
                for k, idx in enumerate(blocks):
                    images = ahead.result()
                    if k + 1 < len(blocks):
                        ahead = pool.submit(run_block, blocks[k + 1])
                    stats.generator_calls += 1
                    stats.generated += len(idx)
                    yield from zip(idx, images)

        scene = scene or make_scene(params.scene)
        scene.reset()
        scene_params = {"crossfade_s": float(stride / fps), **params.scene_params}
        canvas = np.zeros((size, size, 3), np.uint8)
        ema = ImageEMA(params.image_ema_s)
        images: tuple[np.ndarray, ...] = ()
        index = -1
        pending = generated()

        # frames in the output queue, the one being encoded and the one being made: the ring must be larger
        writer = _VideoWriter(tmp, size, fps, x264_preset, int(crf), encoder_threads(), pool=_OutputThread.DEPTH + 3)
        out_thread = _OutputThread()
        muxer: _AudioMuxer | None = None
        bar = _progress(n_frames, source.name, progress)

        def timed(name: str, fn: Callable[..., None], *args: Any) -> Callable[[], None]:
            def task() -> None:
                with timer(name):
                    fn(*args)

            return task

        # OpenCV's own resize / colour-conversion threads only compete with the generator and x264 for the same
        # cores here (per-stage figures: docs/BENCHMARKS.md); restored after the frame loop
        cv2_threads = cv2.getNumThreads()
        cv2.setNumThreads(1)
        try:
            muxer = _AudioMuxer(source, writer.container, reencode=sound is not None)
            if sound is not None:
                with timer("sound"):
                    track = _sound_state(requests, level, clock, n_frames)
                    actions = plan_voice_actions(  # a bundle with a `sound` output answers in its voice
                        generator, requests, gate, track.times, lambda idx: _windows(padded, ends[idx], window)
                    )
                    seconds = audio.shape[0] / rate + 0.05  # a little past the end: the mixer never runs short
                    generated = render_offline(
                        audio,
                        rate,
                        seconds,
                        sound,
                        track,
                        sample_rate=muxer.rate,
                        channels=muxer.channels,
                        control_rate_hz=float(fps),
                        seed=seed,
                        voice_actions=actions,
                    )
                muxer.mix_in(generated, sound_mix)
            for i in range(n_frames):
                t = clock.tick()
                request = requests[i]
                if request is not None:
                    with timer("generate_wait"):
                        j, image = next(pending)
                    assert j == i
                    if request.new_segment:
                        ema.reset()
                    images, index = (ema.update(image, request.dt),), index + 1
                with timer("draw"):
                    scene.draw(
                        canvas,
                        FrameState(
                            time=t,
                            gate=float(gate[i]),
                            level=float(level[i]),
                            images=images,
                            image_index=index,
                            params=scene_params,
                        ),
                    )
                with timer("encode_wait"):
                    out_thread.submit(timed("encode", writer.encode, writer.frame(canvas)))
                if i % 16 == 15:
                    out_thread.submit(timed("audio", muxer.advance_to, t + 0.5))
                    bar.update(16)
            bar.update(n_frames - bar.n)
            bar.close()
            out_thread.submit(timed("audio", muxer.close))
            out_thread.submit(timed("encode", writer.close))
            with timer("encode_wait"):
                out_thread.close()
        except BaseException:
            pending.close()  # stops the generator thread
            try:
                out_thread.close()  # the output thread must let go of the container before it is closed here
            except BaseException:  # noqa: BLE001 - already failing; the original error matters
                log.debug("output thread after an error", exc_info=True)
            bar.close()
            if muxer is not None:
                muxer.abort()
            writer.abort()
            raise
        finally:
            cv2.setNumThreads(cv2_threads)
        os.replace(tmp, output)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    stats.wall_s = time.perf_counter() - started
    log.info(
        "rendered %s: %d frames (%.2f s) in %.2f s (%.1fx real time), %d voiced frames, %d images in %d calls [%s]; %s",
        output,
        stats.frames,
        stats.duration_s,
        stats.wall_s,
        stats.realtime_factor,
        stats.voiced_frames,
        stats.generated,
        stats.generator_calls,
        stats.backend,
        ", ".join(f"{k} {v:.2f}s" for k, v in stats.timings.items()),
    )
    return stats


def _sound_state(requests: list[Request | None], level: np.ndarray, clock: FrameCounterClock, n: int) -> StateTrack:
    """The generator's state per output frame for the sound, from frame ``i``'s time on: the VAD envelope as
    level, and the voiced segment of the face shown as identity (held through silences, -1 before the first)."""
    identity = np.full(n, -1, np.int64)
    segment = -1
    for i, request in enumerate(requests):
        segment = request.segment if request is not None else segment
        identity[i] = segment
    times = np.array([clock.time_of(i) for i in range(n)])
    return StateTrack(times=times, level=np.asarray(level, np.float32), identity=identity)


class _NoBar:
    n = 0

    def update(self, n: int) -> None:
        self.n += n

    def close(self) -> None:
        pass


def _progress(total: int, name: str, enabled: bool) -> Any:
    if not enabled:
        return _NoBar()
    from tqdm import tqdm

    return tqdm(total=total, desc=f"render {name}", unit="frame", dynamic_ncols=True)


# -- command line ------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``run.py render``."""
    from engine.generator import BACKEND_CHOICES

    parser.add_argument(
        "input", help="audio or video file (wav, flac, mp3, ogg, m4a, mp4, mov, ...); video: its audio track"
    )
    parser.add_argument("-o", "--output", required=True, help="output video (.mp4: H.264 + the input's audio)")
    parser.add_argument(
        "--preset",
        default="default",
        help="picture preset: 'default' (built in) or a live preset name/path (presets/<name>.yaml: its scene, "
        "scene parameters, generation rate, noise walk and VAD threshold) (default: %(default)s)",
    )
    parser.add_argument(
        "--bundle", default=str(DEFAULT_BUNDLE), help="model bundle directory (default: presets/models/wav2pix-64)"
    )
    parser.add_argument("--size", type=int, default=512, help="output side in px, square (default: %(default)s)")
    parser.add_argument("--fps", default="30", help="output frame rate, e.g. 30, 25, 30000/1001 (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="noise seed: same seed, same frames (default: %(default)s)")
    parser.add_argument("--batch", type=int, default=32, help="images per generator call (default: %(default)s)")
    parser.add_argument(
        "--backend", default="auto", choices=BACKEND_CHOICES, help="engine backend (default: %(default)s)"
    )
    parser.add_argument(
        "--gen-fps",
        type=finite_float,
        default=None,
        help="generation rate while the voice is active, Hz; the scene crossfades in between; "
        "0 = every frame (default: the preset's; the built-in 'default' preset: 0)",
    )
    parser.add_argument(
        "--x264-preset",
        default="ultrafast",
        choices=("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow"),
        help="H.264 encoder speed/size trade-off: ultrafast keeps encoding from dominating the render time; "
        "veryfast gives ~2x smaller files at ~3x the encode time (default: %(default)s)",
    )
    parser.add_argument(
        "--crf", type=int, default=20, help="H.264 quality, 0-51, lower is better (default: %(default)s)"
    )
    parser.add_argument(
        "--sound",
        action="store_true",
        help="mix the installation's generated sound (pyo offline: a granular echo of the voice, and the "
        "bundle's own generated voice answering each utterance when it makes one) into the audio",
    )
    parser.add_argument(
        "--sound-mix",
        type=finite_float,
        default=0.5,
        help="with --sound: balance of input and generated sound: 0 = input only, 0.5 = the input at its own level "
        "plus the generated sound, 1 = generated only (default: %(default)s)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def main(args: argparse.Namespace) -> int:
    """Run ``run.py render``; returns 0. Raises UserError for bad input (run.py prints it, exits 2)."""
    if args.preset in PRESETS:
        params = PRESETS[args.preset]
    else:
        params = load_preset(args.preset).render_params()
    if args.gen_fps is not None:
        if args.gen_fps < 0:
            raise RenderError(f"--gen-fps: expected >= 0 Hz, got {args.gen_fps}")
        params = replace(params, gen_fps=args.gen_fps)
    if not 0 <= args.crf <= 51:
        raise RenderError(f"--crf: expected 0..51, got {args.crf}")
    stats = render(
        args.input,
        args.output,
        bundle=args.bundle,
        size=args.size,
        fps=args.fps,
        seed=args.seed,
        batch=args.batch,
        backend=args.backend,
        params=params,
        x264_preset=args.x264_preset,
        crf=args.crf,
        progress=not args.no_progress,
        sound=SoundSettings() if args.sound else None,
        sound_mix=args.sound_mix,
    )
    print(
        f"wrote {args.output}: {stats.frames} frames, {stats.duration_s:.2f} s, "
        f"{stats.realtime_factor:.1f}x real time ({stats.backend})"
    )
    return 0
