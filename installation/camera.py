"""Camera in for the capture booth: OpenCV capture read by a thread, latest frame wins, survives unplugging.

A :class:`Camera` wraps ``cv2.VideoCapture`` on a device index or, as the stand-in on machines without a camera
(CI, this project's development machines), on a video file played at its own frame rate (looping by default).
One reader thread calls ``read()`` and keeps only the newest frame; the main thread (pygame) takes it with
:meth:`Camera.latest` and never waits for the device.

Vanishing cameras: when ``read()`` fails, or no new frame arrived for ``lost_after_s`` seconds, the camera is
``lost``: the reader releases the capture and reopens it with exponential back-off (``backoff_s`` doubling up to
``backoff_max_s``), in its own thread, so the window keeps drawing its "camera lost" message. Each transition is
logged and passed to ``on_event(kind, detail)`` (kinds: ``opened``, ``lost``, ``reconnecting``,
``reopen_failed``, ``reconnected``, ``finished``, ``closed``). A file that reaches its end without ``loop``
is ``finished`` (a stand-in for a camera that is unplugged for good).

Frames are BGR uint8 [H, W, 3] as OpenCV delivers them. The reader allocates a new array per frame (OpenCV's
``read()`` does); the main thread may keep a frame it took as long as it likes.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from engine.errors import UserError

log = logging.getLogger(__name__)

CameraEvent = Callable[[str, str], None]
"""``on_event(kind, detail)``; see the module docstring for the kinds."""


class CameraError(UserError, OSError):
    """A camera cannot be opened at start (no such device, missing or unreadable video file); names it."""


class Camera:
    """A camera (OpenCV index) or a video file standing in for one, read by a background thread.

    Args:
        source: device index (int, or a string of digits) or a video file path.
        size: requested frame size (width, height) in px for a device (it may deliver another; see
            :attr:`frame_size`). Ignored for files.
        fps: requested frame rate for a device, Hz. Files play at their own rate.
        loop: a file starts over at its end (default); otherwise it is ``finished`` after one pass.
        realtime: pace a file at its frame rate (default); ``False`` reads as fast as possible (tests).
        lost_after_s: no new frame for this long means the camera is lost, seconds.
        backoff_s, backoff_max_s: reopen back-off, seconds (doubling).
        on_event: state-change listener (called from the reader thread; must not block).
        capture_factory: ``cv2.VideoCapture`` or a stand-in with the same ``isOpened/read/get/set/release``
            methods (fault-injection tests).

    Attributes:
        description: ``"camera 0"`` or ``"file NAME"``. state: ``"closed"``, ``"opening"``, ``"running"``,
            ``"lost"``, ``"finished"``. frame_size: (width, height) px of the frames delivered (after open).
        frame_fps: frames per second the source reports (files: their rate). frames: frames read.
        reconnects: successful reopens. last_error: the latest failure, one line.
    """

    def __init__(
        self,
        source: int | str | Path,
        *,
        size: tuple[int, int] = (1280, 720),
        fps: float = 30.0,
        loop: bool = True,
        realtime: bool = True,
        lost_after_s: float = 2.0,
        backoff_s: float = 0.5,
        backoff_max_s: float = 10.0,
        on_event: CameraEvent | None = None,
        capture_factory: Callable[..., Any] = cv2.VideoCapture,
    ) -> None:
        self.is_file = not (isinstance(source, int) or (isinstance(source, str) and source.strip().isdigit()))
        if self.is_file:
            self.path: Path | None = Path(source)
            self.index = -1
            self.description = f"file {self.path.name}"
        else:
            self.path = None
            self.index = int(source)
            self.description = f"camera {self.index}"
        self.size = (int(size[0]), int(size[1]))
        self.fps = float(fps)
        self.loop = bool(loop)
        self.realtime = bool(realtime)
        self.lost_after_s = float(lost_after_s)
        self.backoff_s = float(backoff_s)
        self.backoff_max_s = float(backoff_max_s)
        self.on_event = on_event
        self.capture_factory = capture_factory
        self.state = "closed"
        self.frame_size: tuple[int, int] = (0, 0)
        self.frame_fps = 0.0
        self.frames = 0
        self.reconnects = 0
        self.last_error = ""
        self._lock = threading.Lock()
        self._frame: np.ndarray | None = None
        self._frame_no = 0
        self._frame_t = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._cap: Any = None

    # -- opening ------------------------------------------------------------------------------------------

    def _event(self, kind: str, detail: str, level: int = logging.INFO) -> None:
        log.log(level, "%s: %s", self.description, detail)
        if self.on_event is not None:
            try:
                self.on_event(kind, detail)
            except Exception:  # noqa: BLE001 - a listener must never kill the reader
                log.debug("camera event listener failed", exc_info=True)

    def _open(self) -> Any:
        """Open the capture; returns it or raises :class:`CameraError` (one line naming the source)."""
        if self.is_file:
            assert self.path is not None
            if not self.path.is_file():
                raise CameraError(f"{self.path}: no such video file (camera stand-in)")
            cap = self.capture_factory(str(self.path))
        else:
            cap = self.capture_factory(self.index)
        if cap is None or not cap.isOpened():
            if cap is not None:
                cap.release()
            what = f"{self.path}: cannot open the video file" if self.is_file else f"camera {self.index}: cannot open"
            raise CameraError(f"{what} (OpenCV VideoCapture failed)")
        if not self.is_file:
            cap.set(cv2.CAP_PROP_FRAME_WIDTH, self.size[0])
            cap.set(cv2.CAP_PROP_FRAME_HEIGHT, self.size[1])
            cap.set(cv2.CAP_PROP_FPS, self.fps)
            cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)  # newest frame, not a queue of stale ones (where supported)
        rate = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
        self.frame_fps = rate if 1.0 <= rate <= 1000.0 else self.fps
        return cap

    def start(self) -> Camera:
        """Open the source and start the reader thread; waits up to 5 s for the first frame.

        Raises:
            CameraError: the source cannot be opened, or delivers no frame at all (a file with no video).
        """
        if self._thread is not None:
            return self
        self.state = "opening"
        self._cap = self._open()
        ok, frame = self._cap.read()
        if not ok or frame is None or frame.ndim != 3:
            self._cap.release()
            self.state = "closed"
            raise CameraError(f"{self.path if self.is_file else self.description}: delivers no video frames")
        self._store(frame)
        self.frame_size = (int(frame.shape[1]), int(frame.shape[0]))
        self.state = "running"
        self._event("opened", f"opened, {self.frame_size[0]}x{self.frame_size[1]} at {self.frame_fps:g} fps")
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="camera", daemon=True)
        self._thread.start()
        return self

    # -- reader thread ------------------------------------------------------------------------------------

    def _store(self, frame: np.ndarray) -> None:
        with self._lock:
            self._frame = frame
            self._frame_no += 1
            self._frame_t = time.perf_counter()
        self.frames += 1

    def _run(self) -> None:
        period = 1.0 / self.frame_fps if self.frame_fps > 0 else 0.0
        next_due = time.perf_counter() + period
        fails_since = 0.0
        while not self._stop.is_set():
            cap = self._cap
            if cap is None:
                if not self._reopen():
                    break
                next_due = time.perf_counter()
                continue
            try:
                ok, frame = cap.read()
            except cv2.error as exc:  # a driver error is a failed read
                ok, frame = False, None
                self.last_error = f"read failed: {exc}"
            now = time.perf_counter()
            if ok and frame is not None and frame.ndim == 3:
                fails_since = 0.0
                if self.state == "lost":  # the heartbeat gave up on a read that blocked; it came back
                    self.state = "running"
                    self._event("reconnected", "frames flow again")
                if self.is_file and self.realtime and period > 0:
                    delay = next_due - now
                    if delay > 0 and self._stop.wait(delay):
                        break
                    next_due = max(next_due + period, time.perf_counter() - period)
                self._store(frame)
                continue
            if self.is_file:
                if self.loop and self.frames > 0:
                    cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
                    ok_rewind, first = cap.read()
                    if ok_rewind and first is not None:
                        self._store(first)
                        continue
                self.state = "finished"
                self._event("finished", "end of the video file: no more frames (camera gone)", logging.WARNING)
                cap.release()
                self._cap = None
                break
            if not fails_since:
                fails_since = now
            if now - fails_since >= self.lost_after_s:
                self._lose("no frames from the device")
            elif self._stop.wait(0.01):
                break

    def _lose(self, why: str) -> None:
        self.state = "lost"
        self.last_error = why
        self._event("lost", f"camera lost: {why}", logging.WARNING)
        if self._cap is not None:
            try:
                self._cap.release()
            except Exception:  # noqa: BLE001 - releasing a vanished device may fail in any way
                log.debug("release failed", exc_info=True)
        self._cap = None

    def _reopen(self) -> bool:
        """Reopen with back-off until it works or the camera is closed; False when closed."""
        delay = self.backoff_s
        while not self._stop.is_set():
            self._event("reconnecting", f"reopening in {delay:.1f} s")
            if self._stop.wait(delay):
                return False
            try:
                self._cap = self._open()
            except CameraError as exc:
                self.last_error = str(exc)
                self._event("reopen_failed", str(exc), logging.WARNING)
                delay = min(self.backoff_max_s, delay * 2)
                continue
            self.reconnects += 1
            self.state = "running"
            self._event("reconnected", "camera back")
            return True
        return False

    # -- main thread ---------------------------------------------------------------------------------------

    def latest(self) -> tuple[np.ndarray | None, int, float]:
        """The newest frame: (BGR uint8 [H, W, 3] or ``None`` before the first, frame number, perf_counter time).

        The frame number increases by one per frame read, so a caller sees whether it is new.
        """
        with self._lock:
            return self._frame, self._frame_no, self._frame_t

    def heartbeat(self, now: float | None = None) -> None:
        """Main thread, once per frame: a running camera whose newest frame is older than ``lost_after_s`` is lost.

        (The reader thread notices failed reads itself; this catches a ``read()`` that blocks in the driver.)
        """
        now = time.perf_counter() if now is None else now
        if (
            self.state == "running"
            and self._frame_t
            and now - self._frame_t > max(self.lost_after_s, 3.0 / max(self.frame_fps, 1e-3))
        ):
            self.state = "lost"
            self.last_error = f"no frame for {now - self._frame_t:.1f} s"
            self._event("lost", f"camera lost: {self.last_error}", logging.WARNING)

    def fresh(self, max_age_s: float | None = None) -> bool:
        """True while frames keep arriving (state running and the newest frame younger than ``max_age_s``)."""
        limit = self.lost_after_s if max_age_s is None else max_age_s
        return self.state == "running" and time.perf_counter() - self._frame_t <= limit

    def close(self) -> None:
        """Stop the reader and release the device (idempotent)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=3.0)
            self._thread = None
        if self._cap is not None:
            try:
                self._cap.release()
            except Exception:  # noqa: BLE001
                log.debug("release failed", exc_info=True)
            self._cap = None
        if self.state != "closed":
            self.state = "closed"
            self._event("closed", "closed")
