"""``run.py capture``: the open-day capture booth (camera + microphone -> a consented face+voice dataset).

    python run.py capture [--preset open_day] --out DATASET_DIR [--camera INDEX|FILE] [--input mic|DEVICE|FILE]
                          [--windowed] [--script FILE] [--duration S] [--max-takes N] [--report FILE.json]

"Make a Face for Science": a visitor stands in front of the camera, reads what is kept and why, consents (key,
touch or OSC), stands in the silhouette, and after a 3-2-1-Go countdown says something. The booth keeps one face
crop and ``take_s`` seconds of sound per take, taken together (the frame is the one in the middle of the sound,
as in the Wav2Pix pairs), after a quality gate. The dataset is the capture layout of
:mod:`datastore.capture_format`, written crash-safely by :class:`datastore.capture_store.DatasetWriter`,
and ``run.py train --data DATASET_DIR`` reads it directly (identities = participants).

Screens (states): ``consent`` (mirror dimmed behind the consent text and the participant's withdrawal code;
Y / "I agree" / ``capture/consent`` -- N / "No thanks" / ``capture/decline``) -> ``ready`` (live mirror with the
face silhouette and live hints; Space / "Go" / ``capture/go`` starts a take; Enter / "Finish" / ``capture/next``
ends the participant) -> ``countdown`` (3-2-1) -> ``recording`` ("Go!": ``take_s`` of sound) -> ``saving`` (quality
gate + atomic write, in a worker thread) -> ``review`` (the kept crop, or the reason the take failed; nothing is
written for a failed take) -> ``ready`` again, or ``thanks`` after ``takes_per_participant`` kept takes (the code
again) -> ``consent`` for the next visitor.

Quality gate (:func:`assess`), before anything is kept: exactly one face (dlib's HOG frontal face detector;
OpenCV 5 no longer ships the Haar cascades Roldán's pipeline used), the face box side at least ``min_face_frac`` of
the frame's shorter side, mean luma of the face box at least ``min_luma``, the sound's RMS above ``silence_dbfs``
and at most ``clip_fraction`` of its samples at full scale.

Devices and their failures: the camera is :class:`installation.camera.Camera` (an OpenCV index, or a video file as
the stand-in); the microphone is the live installation's input (:func:`installation.audio_in.open_input`: a
sounddevice stream, or a file played in real time as the stand-in), kept at its own rate (takes are stored at the
device rate). A camera that vanishes, a microphone that stops delivering, or a disk that fills up shows a message
on screen and in the log and pauses new takes until it is resolved (devices reconnect by themselves); a take in
flight is dropped, and every take already kept stays as it is. Stdout gets ``saving take participant <id>`` when a
take that passed the gate starts being written and ``kept take <take_id> participant <id>`` once it is durable
(the operator's console; the crash test relies on both).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import hashlib
import json
import logging
import math
import os
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from engine.configs import finite_float
from engine.errors import UserError
from installation.audio_in import AudioInput, open_input
from installation.capture_screen import PAUSES, REASONS, CaptureScreen
from installation.params import Parameters

log = logging.getLogger(__name__)

# -- detection, crop and the quality gate -------------------------------------------------------------------------


class FaceDetector:
    """dlib's HOG frontal face detector (the one the evaluation uses) on a downscaled copy of the frame.

    Args:
        detect_short_side: the frame is scaled so its shorter side is at most this many px before detection
            (480: ~25 ms for a 960x540 frame on one core; faces smaller than ~17 % of the short side are not found).

    Raises:
        UserError: dlib is not installed (it comes with the ``dlib-bin`` wheel).
    """

    name = "dlib-hog"

    def __init__(self, detect_short_side: int = 480) -> None:
        try:
            import dlib
        except ImportError as exc:  # pragma: no cover - dlib-bin is a dependency
            raise UserError("capture needs dlib for face detection (pip install dlib-bin)") from exc
        self._detector = dlib.get_frontal_face_detector()
        self.detect_short_side = int(detect_short_side)

    def __call__(self, frame: np.ndarray) -> list[tuple[int, int, int, int]]:
        """Faces in ``frame`` (BGR uint8 [H, W, 3]) as (x, y, w, h) boxes in frame pixels, largest first."""
        h, w = frame.shape[:2]
        scale = min(1.0, self.detect_short_side / min(h, w))
        small = (
            cv2.resize(frame, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_AREA)
            if scale < 1
            else frame
        )
        rgb = cv2.cvtColor(small, cv2.COLOR_BGR2RGB)
        boxes = []
        for r in self._detector(rgb, 0):
            x0, y0 = max(0, r.left()), max(0, r.top())
            x1, y1 = min(small.shape[1], r.right()), min(small.shape[0], r.bottom())
            if x1 > x0 and y1 > y0:
                boxes.append((round(x0 / scale), round(y0 / scale), round((x1 - x0) / scale), round((y1 - y0) / scale)))
        return sorted(boxes, key=lambda b: -b[2] * b[3])


def crop_box(frame_size: tuple[int, int], box: tuple[int, int, int, int], margin: float) -> tuple[int, int, int]:
    """The square crop around a face box: (x, y, side) in frame px, inside the frame.

    The square's side is the box's longer side times ``1 + 2 * margin``, centred on the box, shifted to stay inside
    the frame and shrunk to the frame's shorter side if it is larger.

    Args:
        frame_size: (width, height) px. box: (x, y, w, h) px. margin: fraction of the box side added on each side.
    """
    fw, fh = frame_size
    x, y, w, h = box
    side = min(int(round(max(w, h) * (1 + 2 * margin))), fw, fh)
    cx, cy = x + w / 2, y + h / 2
    x0 = int(round(min(max(cx - side / 2, 0), fw - side)))
    y0 = int(round(min(max(cy - side / 2, 0), fh - side)))
    return x0, y0, side


def crop_face(
    frame: np.ndarray, box: tuple[int, int, int, int], margin: float, size: int
) -> tuple[np.ndarray, tuple[int, int, int]]:
    """Square face crop: (BGR uint8 [size, size, 3], (x, y, side) of the crop in the frame) -- see :func:`crop_box`."""
    x0, y0, side = crop_box((frame.shape[1], frame.shape[0]), box, margin)
    patch = frame[y0 : y0 + side, x0 : x0 + side]
    interp = cv2.INTER_AREA if side > size else cv2.INTER_CUBIC
    return cv2.resize(patch, (size, size), interpolation=interp), (x0, y0, side)


def audio_levels(audio: np.ndarray) -> dict[str, float]:
    """Levels of a take's sound (float32 [n] or [n, channels] in [-1, 1]).

    Returns:
        ``rms_dbfs`` and ``peak_dbfs`` (dB re full scale, floor -120) and ``clipped_fraction`` (share of samples
        with ``|x| >= 0.999``, over all channels).
    """
    x = np.asarray(audio, dtype=np.float32)
    if x.size == 0:
        return {"rms_dbfs": -120.0, "peak_dbfs": -120.0, "clipped_fraction": 0.0}
    rms = float(np.sqrt(np.mean(np.square(x, dtype=np.float64))))
    peak = float(np.max(np.abs(x)))
    return {
        "rms_dbfs": round(max(-120.0, 20 * math.log10(max(rms, 1e-6))), 2),
        "peak_dbfs": round(max(-120.0, 20 * math.log10(max(peak, 1e-6))), 2),
        "clipped_fraction": round(float(np.mean(np.abs(x) >= 0.999)), 6),
    }


@dataclass
class Assessment:
    """The quality gate's verdict on one take.

    Attributes:
        reasons: failure codes (keys of :data:`REASONS`); empty when the take may be kept.
        box: the face box (x, y, w, h) px when exactly one face was found. luma: mean luma (0-255) of that box.
        levels: :func:`audio_levels` of the sound.
    """

    reasons: list[str]
    box: tuple[int, int, int, int] | None
    luma: float | None
    levels: dict[str, float]

    @property
    def ok(self) -> bool:
        return not self.reasons


def assess(frame: np.ndarray, boxes: list[tuple[int, int, int, int]], audio: np.ndarray | None, cfg: Any) -> Assessment:
    """Quality gate: one face, large enough, not too dark; sound neither silent nor clipped.

    Args:
        frame: BGR uint8 [H, W, 3]. boxes: faces found in it, (x, y, w, h) px.
        audio: the take's sound (float32 [n] in [-1, 1]), or ``None`` to judge the picture only (live hints).
        cfg: :class:`installation.presets.CaptureConfig` (``min_face_frac``, ``min_luma``, ``silence_dbfs``,
            ``clip_fraction``).
    """
    reasons: list[str] = []
    box = luma = None
    if not boxes:
        reasons.append("no_face")
    elif len(boxes) > 1:
        reasons.append("several_faces")
    else:
        box = boxes[0]
        x, y, w, h = box
        if max(w, h) < cfg.min_face_frac * min(frame.shape[:2]):
            reasons.append("face_too_small")
        region = cv2.cvtColor(frame[y : y + h, x : x + w], cv2.COLOR_BGR2GRAY)
        luma = float(region.mean()) if region.size else 0.0
        if luma < cfg.min_luma:
            reasons.append("too_dark")
    levels = audio_levels(audio) if audio is not None else {}
    if audio is not None:
        if levels["rms_dbfs"] < cfg.silence_dbfs:
            reasons.append("silent")
        if levels["clipped_fraction"] > cfg.clip_fraction:
            reasons.append("clipped")
    return Assessment(reasons, box, luma, levels)


# -- configuration --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CaptureSettings:
    """Everything ``run.py capture`` needs, resolved from a preset and the command line.

    Attributes:
        out: dataset folder. capture: the preset's :class:`installation.presets.CaptureConfig`.
        camera: device index or video file (absolute). input: ``open_input`` spec (``"mic"``, device, file Path).
        input_rate: device rate to open, Hz (0: the device's default; a file plays at its own rate).
        input_channels: channels to open. width, height: canvas size, px. fullscreen, display, video_driver,
        hide_cursor, windowed_size, fps: the window (see :class:`installation.presets.DisplayConfig`).
        osc: the preset's OSC section or ``None``. script: visitor script (stand-in) or ``None``.
        duration_s: stop after this long (``None``: until quit). max_takes: stop after this many kept takes (0: no limit).
        report: write a JSON report here at the end. preset_name: for the report.
    """

    out: Path
    capture: Any
    camera: int | Path
    input: Any = "mic"
    input_rate: int = 0
    input_channels: int = 1
    width: int = 1280
    height: int = 720
    fullscreen: bool = False
    display: int = 0
    video_driver: str = ""
    hide_cursor: bool = False
    windowed_size: tuple[int, int] = (1280, 720)
    fps: float = 30.0
    osc: Any = None
    script: Path | None = None
    duration_s: float | None = None
    max_takes: int = 0
    report: Path | None = None
    preset_name: str = ""


def file_rate(path: Path) -> int:
    """Native sample rate of an audio/video file, Hz (soundfile, else PyAV).

    Raises:
        UserError: the file cannot be read (names it).
    """
    try:
        import soundfile as sf

        return int(sf.info(str(path)).samplerate)
    except Exception:  # noqa: BLE001 - not a libsndfile format: ask PyAV
        pass
    try:
        import av

        with av.open(str(path)) as container:
            stream = next(s for s in container.streams if s.type == "audio")
            return int(stream.rate or stream.codec_context.sample_rate)
    except Exception as exc:  # noqa: BLE001
        raise UserError(f"{path}: cannot read the audio input ({exc})") from exc


# -- the booth ------------------------------------------------------------------------------------------------------


@dataclass
class Take:
    """A take in flight: what the booth knows from Go until it is kept or dropped."""

    participant: str
    go_t: float
    start_index: int
    samples: int
    frame: np.ndarray | None = None
    frame_at: float = 0.0
    audio: np.ndarray | None = None
    started_utc: str = ""


@dataclass
class BoothStats:
    """Counters for the report. ``rejected``: failure code -> takes; ``save_ms``: gate + write time per take."""

    kept: int = 0
    attempts: int = 0
    rejected: Counter = field(default_factory=Counter)
    participants: int = 0
    declined: int = 0
    save_ms: list = field(default_factory=list)
    events: list = field(default_factory=list)
    first_go: float | None = None
    last_kept: float | None = None


class CaptureBooth:
    """The capture loop (see the module docstring). Use :meth:`run`; ``close`` releases the devices.

    Args:
        settings: resolved settings.
        camera, audio: already-built devices (tests); built from ``settings`` when ``None``.

    Raises:
        UserError: the camera, the microphone, the window or the dataset cannot be opened at start (one line).
    """

    def __init__(self, settings: CaptureSettings, camera: Any = None, audio: AudioInput | None = None) -> None:
        from datastore.capture_store import DatasetWriter

        self.s = settings
        self.cfg = settings.capture
        self.params = Parameters()
        self.stats = BoothStats()
        self.writer = DatasetWriter(settings.out, min_free_mb=float(self.cfg.min_free_mb))
        self.camera: Any = None
        self.audio: Any = None
        try:
            self.camera = camera if camera is not None else self._open_camera()
            self.audio = audio if audio is not None else self._open_audio()
            self.detector = FaceDetector()
        except BaseException:  # release what did open (camera thread, audio stream, dataset lock)
            for part in (self.audio, self.camera, self.writer):
                if part is not None:
                    part.close()
            raise
        self.state = "consent"
        self.state_t = time.perf_counter()
        self.participant = ""
        self.participant_kept = 0
        self.consent: dict[str, Any] = {}
        self.take: Take | None = None
        self.review: tuple[str, np.ndarray | None] = ("", None)
        self.pause_reason = ""
        self.script: Any = None
        self.osc: Any = None
        self.window: Any = None
        self._saver = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="capture-save")
        self._saving: concurrent.futures.Future | None = None
        self._hint_future: concurrent.futures.Future | None = None
        self._hint_pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="capture-detect")
        self._hint: tuple[list[str], list[tuple[int, int, int, int]]] = (["no_face"], [])
        self._hint_t = 0.0
        self._stop_reason = ""
        self._disk_check_t = 0.0
        self._disk_low = False
        self._last_audio = (0, time.perf_counter())
        self._new_participant()

    # -- devices ----------------------------------------------------------------------------------------------

    def _event(self, what: str) -> None:
        """Device event (any thread): kept for the report, bounded."""
        self.stats.events.append([_utc_now(), what])
        if len(self.stats.events) > 200:
            del self.stats.events[:100]

    def _open_camera(self) -> Any:
        from installation.camera import Camera

        cfg = self.cfg
        return Camera(
            self.s.camera,
            size=tuple(cfg.camera_size),
            fps=float(cfg.camera_fps),
            on_event=lambda kind, detail: self._event(f"camera {kind}: {detail}"),
        ).start()

    def _open_audio(self) -> AudioInput:
        spec = self.s.input
        source = open_input(
            spec,
            file_rate(spec) if isinstance(spec, Path) else 16000,  # a stand-in file plays at its own rate
            on_event=lambda kind, detail: self._event(f"microphone {kind}: {detail}"),
            device_rate=self.s.input_rate,
            channels=self.s.input_channels,
            ring_seconds=max(4.0, 3 * float(self.cfg.take_s)),  # a whole take must fit with room to spare
        )
        source.start()
        return source

    @property
    def rate(self) -> int:
        """Sample rate of the microphone (the stored takes' rate), Hz."""
        return int(self.audio.sample_rate)

    # -- participants and states ------------------------------------------------------------------------------

    def _new_participant(self) -> None:
        from datastore.capture_store import new_participant_id

        self.participant = new_participant_id(self.s.out)  # never one that already has takes here
        self.participant_kept = 0
        self.consent = {}

    def _set_state(self, state: str) -> None:
        log.debug("state %s -> %s", self.state, state)
        self.state = state
        self.state_t = time.perf_counter()

    def _press(self, name: str, source: str) -> None:
        self.params.enqueue(name, True, source=source)

    def accepting(self) -> set[str]:
        """Trigger names the current state reacts to (the visitor script waits for them)."""
        if self.pause_reason and self.state == "ready":
            return {"capture/next"}  # no new take while a device or the disk is in trouble
        return {
            "consent": {"capture/consent", "capture/decline"},
            "ready": {"capture/go", "capture/next"},
        }.get(self.state, set())

    def _handle_triggers(self) -> None:
        p = self.params
        p.apply_pending()
        fired = [n for n in ("capture/consent", "capture/decline", "capture/go", "capture/next") if p.fired(n)]
        for name in fired:
            if name not in self.accepting():
                continue
            source = p.source(name).split(":")[0] or "key"
            if name == "capture/consent":
                self.consent = {
                    "scope": self.cfg.consent_scope,
                    "text_sha256": hashlib.sha256(self.cfg.consent_text.encode()).hexdigest(),
                    "confirmed_by": source,
                    "confirmed_at": _utc_now(),
                }
                self.stats.participants += 1
                log.info("participant %s consented (%s)", self.participant, source)
                self._set_state("ready")
            elif name == "capture/decline":
                self.stats.declined += 1
                log.info("a visitor declined; nothing kept")
                self._new_participant()
                self._set_state("consent")
            elif name == "capture/go":
                self._set_state("countdown")
            elif name == "capture/next":
                self._set_state("thanks")
            break
        if p.fired("quit"):
            self._stop_reason = "quit"

    # -- health ---------------------------------------------------------------------------------------------------

    def _health(self, now: float) -> str:
        """The reason new takes must wait (``""``: none): camera lost, microphone stopped, disk full."""
        heartbeat = getattr(self.camera, "heartbeat", None)
        if heartbeat is not None:
            heartbeat(now)
        self.audio.heartbeat(now)
        if getattr(self.camera, "state", "running") != "running":
            return "camera_lost"
        written = self.audio.ring.written
        if written != self._last_audio[0]:
            self._last_audio = (written, now)
        if self.audio.state not in ("running",) or now - self._last_audio[1] > 1.0:
            return "mic_stopped"
        if now - self._disk_check_t >= (1.0 if self._disk_low else 2.0):  # statvfs, not every frame
            self._disk_check_t = now
            self._disk_low = self.writer.free_mb() < float(self.cfg.min_free_mb)
        if self._disk_low:
            return "disk_full"
        return ""

    # -- the take ----------------------------------------------------------------------------------------------

    def _start_take(self, now: float) -> None:
        n = int(round(self.cfg.take_s * self.rate))
        self.take = Take(self.participant, now, self.audio.ring.written, n, started_utc=_utc_now())
        self.stats.attempts += 1
        if self.stats.first_go is None:
            self.stats.first_go = now
        self._set_state("recording")

    def _record(self, now: float) -> None:
        take = self.take
        assert take is not None
        if take.frame is None and now >= take.go_t + self.cfg.take_s / 2:
            frame, _, frame_t = self.camera.latest()
            if frame is not None and now - frame_t < 0.5:
                take.frame, take.frame_at = frame, frame_t  # the camera never reuses a frame's array
        ring = self.audio.ring
        if ring.written >= take.start_index + take.samples:
            audio = np.zeros(take.samples, np.float32)
            if not ring.read(take.start_index, audio):  # the ring wrapped: should not happen with a 4 s ring
                self._fail("mic_stopped")
                return
            take.audio = audio
            if take.frame is None:
                self._fail("camera_lost")
                return
            self._set_state("saving")
            self._saving = self._saver.submit(self._save, take)
        elif now - take.go_t > self.cfg.take_s + 1.0:
            self._fail("mic_stopped")

    def _save(self, take: Take) -> tuple[str, Any]:
        """Saver thread: detect, gate, crop, write. Returns (``"kept"``, record) or (reason code, assessment)."""
        from datastore.capture_store import CaptureStoreError, DiskFullError

        t0 = time.perf_counter()
        assert take.frame is not None and take.audio is not None
        boxes = self.detector(take.frame)
        verdict = assess(take.frame, boxes, take.audio, self.cfg)
        if not verdict.ok:
            return verdict.reasons[0], verdict
        assert verdict.box is not None
        face, (cx, cy, side) = crop_face(take.frame, verdict.box, float(self.cfg.margin), int(self.cfg.face_size))
        ok, png = cv2.imencode(".png", face)
        frame_jpg = None
        if self.cfg.save_full_frame:
            ok_jpg, jpg = cv2.imencode(".jpg", take.frame, [cv2.IMWRITE_JPEG_QUALITY, 92])
            frame_jpg = jpg.tobytes() if ok_jpg else None
        h, w = take.frame.shape[:2]
        meta = {
            "time": take.started_utc,
            "consent": dict(self.consent),
            "devices": {
                "camera": getattr(self.camera, "description", "camera"),
                "camera_size": [w, h],
                "microphone": getattr(self.audio, "description", "microphone"),
                "sample_rate": self.rate,
            },
            "detection": {
                "detector": self.detector.name,
                "box": list(verdict.box),
                "crop": [cx, cy, side],
                "frame_size": [w, h],
                "faces": len(boxes),
            },
            "levels": {**verdict.levels, "face_luma": round(float(verdict.luma or 0.0), 2)},
            "take_s": float(self.cfg.take_s),
            "frame_offset_s": round(take.frame_at - take.go_t, 3),
        }
        print(f"saving take participant {take.participant}", flush=True)  # the crash test aims kills at this
        try:
            record = self.writer.write_take(
                take.participant,
                face_png=png.tobytes(),
                audio=take.audio,
                sample_rate=self.rate,
                frame_jpg=frame_jpg,
                audio_format=str(self.cfg.audio_format),
                meta=meta,
            )
        except DiskFullError as exc:  # the writer logged it
            return "disk_full", exc
        except (CaptureStoreError, ValueError) as exc:  # ValueError: a record the store refuses (a bug, not data)
            log.error("take not kept: %s", exc)
            return "write_failed", exc
        self.stats.save_ms.append(round((time.perf_counter() - t0) * 1000, 2))
        return "kept", (record, face)

    def _fail(self, reason: str, crop: np.ndarray | None = None) -> None:
        self.stats.rejected[reason] += 1
        log.info("take rejected: %s (%s)", reason, REASONS.get(reason, reason))
        self.take = None
        self.review = (reason, crop)
        if reason == "disk_full":
            self.pause_reason = "disk_full"
            self._disk_low = True
        self._set_state("review")

    def _collect(self, now: float) -> None:
        fut = self._saving
        if fut is None or not fut.done():
            return
        self._saving = None
        try:
            outcome, detail = fut.result()
        except Exception as exc:  # noqa: BLE001 - a bug in the gate must not end the open day
            log.exception("saving a take failed")
            outcome, detail = "write_failed", exc
        if outcome != "kept":
            self._fail(outcome)
            return
        record, face = detail
        self.take = None
        self.stats.kept += 1
        self.stats.last_kept = now
        self.participant_kept += 1
        print(f"kept take {record.take_id} participant {record.participant}", flush=True)
        log.info(
            "kept take %s (%d of %d for %s)",
            record.take_id,
            self.participant_kept,
            self.cfg.takes_per_participant,
            record.participant,
        )
        self.review = ("kept", face)
        self._set_state("review")

    # -- per frame ---------------------------------------------------------------------------------------------

    def step(self, now: float) -> None:
        """Advance the state machine by one frame (main thread)."""
        if self.script is not None:
            self.script.poll(self.accepting())
        self._handle_triggers()
        problem = self._health(now)
        if problem != self.pause_reason:
            if problem:
                log.warning("capture paused: %s", PAUSES[problem])
            elif self.pause_reason:
                log.info("capture resumed (%s resolved)", self.pause_reason)
            self.pause_reason = problem
        cfg = self.cfg
        elapsed = now - self.state_t
        if self.state in ("countdown", "recording") and problem in ("camera_lost", "mic_stopped"):
            self._fail(problem)
            return
        if self.state == "countdown":
            if self.pause_reason:
                self._set_state("ready")
            elif elapsed >= cfg.countdown_s:
                self._start_take(now)
        elif self.state == "recording":
            self._record(now)
        elif self.state == "saving":
            self._collect(now)
        elif self.state == "review" and elapsed >= cfg.review_s:
            done = self.participant_kept >= cfg.takes_per_participant
            self._set_state("thanks" if done else "ready")
        elif self.state == "thanks" and elapsed >= cfg.review_s:
            self._new_participant()
            self._set_state("consent")

    def _update_hint(self, now: float) -> None:
        """Live guidance in the ready state: detection on the newest frame, ~4 Hz, in a worker thread."""
        fut = self._hint_future
        if fut is not None and fut.done():
            self._hint_future = None
            try:
                self._hint = fut.result()
            except Exception:  # noqa: BLE001
                log.debug("hint detection failed", exc_info=True)
        if self._hint_future is None and now - self._hint_t > 0.25 and self.state in ("ready", "countdown"):
            frame, _, _ = self.camera.latest()
            if frame is not None:
                self._hint_t = now

                def job(f: np.ndarray = frame) -> tuple[list[str], list[tuple[int, int, int, int]]]:
                    boxes = self.detector(f)
                    return assess(f, boxes, None, self.cfg).reasons, boxes

                self._hint_future = self._hint_pool.submit(job)

    def start_osc(self) -> None:
        """Start the OSC server if the preset enables it (a busy port is logged; the booth goes on without OSC)."""
        if self.osc is None:
            from installation.osc import start_or_log

            self.osc, _ = start_or_log(self.params, self.s.osc)

    def done(self, now: float, started: float) -> bool:
        """Whether the session should end (quit, duration or max takes reached)."""
        if self._stop_reason:
            return True
        if self.s.duration_s is not None and now - started >= self.s.duration_s:
            self._stop_reason = "duration"
        elif self.s.max_takes and self.stats.kept >= self.s.max_takes and self.state != "saving":
            self._stop_reason = "max_takes"
        elif self.script is not None and self.script.done and self.state in ("consent", "ready"):
            self._stop_reason = "script finished"
        return bool(self._stop_reason)

    def run(self) -> dict[str, Any]:
        """Run the booth until quit / duration / max takes / end of script; returns the report.

        Raises:
            UserError: the window cannot be opened, or the script cannot be read.
        """
        if self.s.script is not None:
            from installation.visitor_script import VisitorScript

            self.script = VisitorScript.from_file(self.s.script, lambda name: self._press(name, "script"))
        started = time.perf_counter()
        period = 1.0 / self.s.fps if self.s.fps > 0 else 0.0
        next_frame = started
        try:
            self.start_osc()
            self.window = CaptureScreen(self.s)
            while True:
                now = time.perf_counter()
                if self.done(now, started):
                    break
                for event in self.window.events():
                    name = self.window.action_for(event, self.state)
                    if name == "quit":
                        self._stop_reason = "quit"
                    elif name:
                        self._press(name, "touch" if event.type != self.window.pg.KEYDOWN else "key")
                self.step(now)
                self._update_hint(now)
                self.window.draw(self, now)
                next_frame += period
                delay = next_frame - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
                else:
                    next_frame = time.perf_counter()
            if self._saving is not None:  # let a take in flight finish writing (it is durable or not written)
                self._saving.result(timeout=30)
                self._collect(time.perf_counter())
        finally:
            self.close()
        report = self.report(time.perf_counter() - started)
        if self.s.report is not None:
            _write_json(self.s.report, report)
        return report

    def report(self, wall_s: float) -> dict[str, Any]:
        """Session figures: takes kept and rejected (by reason), takes per minute, save time, device events."""
        st = self.stats
        active = (st.last_kept - st.first_go) if st.first_go is not None and st.last_kept is not None else 0.0
        save = sorted(st.save_ms)
        return {
            "preset": self.s.preset_name,
            "dataset": str(self.s.out),
            "session": self.writer.session,
            "wall_s": round(wall_s, 2),
            "participants": st.participants,
            "declined": st.declined,
            "attempts": st.attempts,
            "kept": st.kept,
            "rejected": dict(st.rejected),
            "rejected_share": round(sum(st.rejected.values()) / st.attempts, 3) if st.attempts else 0.0,
            "takes_per_min": round(60.0 * (st.kept - 1) / active, 2) if st.kept > 1 and active > 0 else None,
            "save_ms_p50": save[len(save) // 2] if save else None,
            "save_ms_max": save[-1] if save else None,
            "timings_s": {"countdown": self.cfg.countdown_s, "take": self.cfg.take_s, "review": self.cfg.review_s},
            "events": st.events[-50:],
            "stop_reason": self._stop_reason,
        }

    def close(self) -> None:
        """Release the window, the devices, OSC and the worker threads (idempotent)."""
        for closer in (
            getattr(self.window, "close", None),
            getattr(self.osc, "close", None),
            getattr(self.camera, "close", None),
            getattr(self.audio, "close", None),
            getattr(self.writer, "close", None),
        ):
            if closer is not None:
                try:
                    closer()
                except Exception:  # noqa: BLE001
                    log.debug("close failed", exc_info=True)
        self.window = self.osc = None
        self._saver.shutdown(wait=True)
        self._hint_pool.shutdown(wait=False, cancel_futures=True)


def _utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def _write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)


# -- command line ----------------------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``run.py capture``."""
    parser.add_argument("--preset", default=None, help="preset name or path (default: open_day)")
    parser.add_argument("--out", type=Path, default=None, help="dataset folder (default: the preset's capture.output)")
    parser.add_argument("--camera", default=None, help="camera index, or a video file standing in for the camera")
    parser.add_argument("--input", default=None, help="microphone: 'mic', a device index or name, or an audio file")
    parser.add_argument("--windowed", action="store_true", help="a window instead of fullscreen")
    parser.add_argument("--script", type=Path, default=None, help="visitor script (a stand-in pressing the buttons)")
    parser.add_argument("--duration", type=finite_float, default=None, help="stop after this many seconds")
    parser.add_argument("--max-takes", type=int, default=0, help="stop after this many kept takes")
    parser.add_argument("--report", type=Path, default=None, help="write a JSON report of the session here")


def resolve_settings(args: argparse.Namespace) -> CaptureSettings:
    """Preset (default ``open_day``) + command line -> :class:`CaptureSettings`.

    Raises:
        installation.presets.PresetError: unknown preset or bad values. UserError: a bad ``--camera``.
    """
    from installation.live import input_spec
    from installation.presets import ROOT, load_preset

    preset = load_preset(args.preset or "open_day")
    cap, d = preset.capture, preset.display
    camera: int | Path
    raw = args.camera if args.camera is not None else cap.camera
    if isinstance(raw, int) or str(raw).strip().isdigit():
        camera = int(raw)
    else:
        base = Path.cwd() if args.camera is not None else ROOT
        camera = Path(raw) if Path(raw).is_absolute() else (base / raw)
    out = args.out if args.out is not None else Path(cap.output)
    if not out.is_absolute():
        out = (Path.cwd() if args.out is not None else ROOT) / out
    audio = input_spec(args.input, Path.cwd()) if args.input is not None else input_spec(preset.input.source)
    width, height = (int(v) for v in d.size)
    settings = CaptureSettings(
        out=out,
        capture=cap,
        camera=camera,
        input=audio,
        input_rate=int(preset.input.sample_rate),
        input_channels=int(preset.input.channels),
        width=width,
        height=height,
        fullscreen=bool(d.fullscreen) and not args.windowed,
        display=int(d.display),
        video_driver=str(d.driver),
        hide_cursor=bool(d.hide_cursor),
        windowed_size=tuple(int(v) for v in d.windowed_size),  # type: ignore[arg-type]
        fps=min(float(d.fps) or 30.0, 30.0),
        osc=preset.osc if preset.osc.enabled else None,
        script=args.script,
        duration_s=args.duration,
        max_takes=int(args.max_takes or 0),
        report=args.report,
        preset_name=preset.name,
    )
    return settings


def main(args: argparse.Namespace) -> int:
    """Run ``run.py capture``; returns 0. Raises UserError for bad options or devices (run.py prints it)."""
    settings = resolve_settings(args)
    booth = CaptureBooth(settings)
    report = booth.run()
    rejected = ", ".join(f"{k} {v}" for k, v in sorted(report["rejected"].items())) or "none"
    print(
        f"capture: {report['kept']} takes kept of {report['attempts']} ({report['participants']} participants) "
        f"in {report['wall_s']:.0f} s; rejected: {rejected}; dataset {settings.out}"
    )
    return 0


__all__ = ["CaptureBooth", "CaptureSettings", "FaceDetector", "assess", "audio_levels", "crop_face"]
