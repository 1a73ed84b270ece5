"""``run.py rate``: the rating station -- visitors score generated faces 1-5 (a mean-opinion-score test).

    python run.py rate [--preset NAME] [--bundle B] --audio DIR_OR_FILE --out RATINGS.jsonl
                       [--windowed] [--script FILE] [--max-items N] [--seed S] [--show-real | --no-show-real]

Wav2Pix (Duarte et al., ICASSP 2019) and the audio-to-scene work judged their models with human opinion
scores. The station shows one generated face at a time, large, plays the voice it came from and, where the
dataset has it and ``show_real`` is on, the real face beside it; the visitor answers on the ITU-T P.800
absolute category rating scale (1 bad, 2 poor, 3 fair, 4 good, 5 excellent), or skips. ``run.py evaluate
--ratings RATINGS.jsonl`` (:mod:`training.ratings`) turns the file into a mean opinion score with a 95 %
confidence interval per model.

Items. Every audio file under ``--audio`` (recursively; the formats of :func:`engine.audio.find_audio_files`,
decoded by :func:`engine.audio.load_audio`; for a capture dataset folder, the takes its manifest lists) is one item, presented once, in an order shuffled by ``seed``
(``numpy.random.default_rng(seed).permutation``), until every item has an answer, ``max_items`` answers are in
(0: no limit), or the visitor quits. An item is decoded to the bundle's rate, its *centre* window of the
bundle's length (1 s; zero-padded at the end when shorter) is the voice, and the face is
``Generator(window[None], noise=file_noise(seed, relative path))`` -- the same noise as ``run.py generate``
(:func:`engine.noise.file_noise`), so a file and a seed always give the same face, whatever the order.
An undecodable file is skipped with a warning naming it.

Real faces (``show_real``): the Wav2Pix layout pairs ``preprocessed_frame_N.*`` with ``cropped_face_frame_N.*``
in the same folder (decoded by content: the dataset's ``.png`` files are JPEG); the capture layout finds the
take in ``manifest.jsonl`` (:func:`datastore.capture_format.read_manifest`) in the audio file's folder or
the one above. Items without a real face show the generated face alone.

Input, all through one :class:`installation.params.Parameters` (the triggers ``rate/1`` ... ``rate/5``,
``rate/skip``, ``rate/replay``, ``quit``), applied once per frame as in the live loop:

* keys ``1``-``5`` (and the keypad), ``S`` skip, ``R`` replay, ``Esc`` / ``Q`` quit;
* mouse clicks and touches (``MOUSEBUTTONDOWN``, ``FINGERDOWN``) on the on-screen buttons (:func:`layout`,
  :func:`hit_test`); mouse events that SDL synthesises from touches are ignored (the touch counts once);
* OSC ``/avgan/rate/4`` etc. (:class:`installation.osc.OscControl`, when the preset enables OSC; a busy port is
  logged and the station runs without OSC);
* ``--script FILE`` (:mod:`installation.visitor_script`), the stand-in for a visitor on machines without one.
  The station ends once the script has nothing left to press.

A face must have been on screen ``min_view_s`` (0.3 s) before an answer counts: a double tap does not rate
the next face unseen. Several different scores in one frame are ambiguous and ignored (with a warning).

Voice playback: the 1 s window the face was generated from, through ``sounddevice.play`` (non-blocking),
resampled to the output device's default rate, once when the face appears and again on replay, when
the preset's ``rating.play_voice`` is on and an output device exists; otherwise one warning ("no audio output
device: voices are not played") and the station goes on silent. Each rating records ``voice_played``.

Ratings file (:class:`RatingsFile`, written by :mod:`datastore.jsonl`): JSON Lines, one object per answer,
appended with ONE ``os.write`` on an ``O_APPEND`` descriptor followed by ``os.fsync`` (a crash leaves whole lines,
at worst a torn last line, which the next run cuts back to the last newline with a warning). Keys (no personal
data):

======================  =============================================================================
``time``                UTC ISO 8601 with milliseconds, e.g. ``2026-11-21T10:15:02.123Z``
``session``             random id of this run (12 hex digits)
``model``               bundle folder name + ``@`` + first 12 hex digits of the graph's sha256
``bundle``              bundle path relative to the repository (outside it: the folder name only)
``audio``               the file's path relative to ``--audio`` (POSIX)
``seed``                the run's seed (the face's noise = f(seed, audio))
``score``               1-5, or ``null`` when skipped
``skipped``             true / false
``input``               ``key``, ``touch`` (mouse or touch screen), ``osc`` or ``script``
``shown_real``          whether the real face was shown beside it
``voice_played``        whether the voice was played (at least once) before the answer
``response_s``          seconds from the face's first frame on screen to the answer
``face_sha1``           first 16 hex digits of the sha1 of the shown face (uint8 RGB): same face, same hash
======================  =============================================================================

Raises :class:`RateError` (a :class:`engine.errors.UserError`: one line naming the path or key) for a missing
or empty ``--audio``, a missing bundle, an unwritable ``--out``, a bad script or bad numbers.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import logging
import re
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from datastore import capture_format, jsonl
from engine.audio import AudioDecodeError, find_audio_files, load_audio, resample
from engine.errors import UserError
from engine.noise import file_noise
from installation.params import Parameters
from installation.presets import ROOT
from installation.render import DEFAULT_BUNDLE

log = logging.getLogger(__name__)

SCORE_BUTTONS: tuple[str, ...] = ("rate/1", "rate/2", "rate/3", "rate/4", "rate/5")
"""The score triggers, score 1 first."""
BUTTONS: tuple[str, ...] = ("rate/replay", *SCORE_BUTTONS, "rate/skip")
"""The on-screen buttons, left to right."""
SCORE_LABELS: dict[int, str] = {1: "bad", 2: "poor", 3: "fair", 4: "good", 5: "excellent"}
"""ITU-T P.800 absolute category rating labels."""
INSTRUCTION = "How well does this face fit the voice?  1 = bad ... 5 = excellent     S skip   R replay"
MIN_VIEW_S = 0.3
"""Seconds a face must have been on screen before an answer counts."""
NO_DEVICE_WARNING = "no audio output device: voices are not played"
_W2P_AUDIO = re.compile(r"^preprocessed_frame_(\d+)$")
_IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")

BG = (18, 18, 22)
FG = (235, 235, 235)
DIM = (150, 150, 160)
BUTTON = (58, 60, 72)
BUTTON_EDGE = (120, 124, 140)


class RateError(UserError, ValueError):
    """A rating-station option, file or value is unusable; the one-line message names it."""


# -- layout ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Rect:
    """An axis-aligned rectangle in canvas pixels: top-left ``x``, ``y``, size ``w`` x ``h``."""

    x: int
    y: int
    w: int
    h: int

    @property
    def center(self) -> tuple[int, int]:
        """Centre ``(x, y)`` in pixels."""
        return self.x + self.w // 2, self.y + self.h // 2

    def contains(self, x: float, y: float) -> bool:
        """Whether the point ``(x, y)`` (pixels) lies inside (left/top edges inclusive, right/bottom exclusive)."""
        return self.x <= x < self.x + self.w and self.y <= y < self.y + self.h


@dataclass(frozen=True)
class Layout:
    """Where everything goes on a ``width`` x ``height`` canvas.

    Attributes:
        face: the generated face (square). real: the real face (square), or ``None`` when not shown.
        buttons: trigger name (:data:`BUTTONS`) -> its rectangle.
        title_y, label_y, status_y: vertical centres of the instruction line, the face captions and the
            status line, px. text_px: instruction text height, px.
    """

    width: int
    height: int
    face: Rect
    real: Rect | None
    buttons: Mapping[str, Rect]
    title_y: int
    label_y: int
    status_y: int
    text_px: int


def layout(width: int, height: int, show_real: bool) -> Layout:
    """The station's screen layout for a canvas of ``width`` x ``height`` px.

    The instruction line at the top, the face (and the real face to its right when ``show_real``) as large
    as fits in the middle ~55 % of the height, and one row of buttons below: replay, 1-5, skip.
    """
    w, h = int(width), int(height)
    m = max(2, round(0.03 * min(w, h)))
    top = round(0.11 * h)
    avail_h = round(0.57 * h)
    if show_real:
        side = max(8, min(avail_h, (w - 3 * m) // 2))
        x0 = (w - 2 * side - m) // 2
        face, real = Rect(x0, top, side, side), Rect(x0 + side + m, top, side, side)
    else:
        side = max(8, min(avail_h, w - 2 * m))
        face, real = Rect((w - side) // 2, top, side, side), None
    row_y, row_h = round(0.77 * h), round(0.15 * h)
    gap = max(2, round(0.012 * w))
    weights = [1.0, *([1.2] * len(SCORE_BUTTONS)), 1.0]
    unit = (w - 2 * m - gap * (len(weights) - 1)) / sum(weights)
    buttons: dict[str, Rect] = {}
    x = float(m)
    for name, weight in zip(BUTTONS, weights, strict=True):
        bw = unit * weight
        buttons[name] = Rect(round(x), row_y, max(1, round(x + bw) - round(x)), row_h)
        x += bw + gap
    return Layout(
        width=w,
        height=h,
        face=face,
        real=real,
        buttons=buttons,
        title_y=round(0.055 * h),
        label_y=top + side + round(0.035 * h),
        status_y=round(0.96 * h),
        text_px=max(10, round(0.042 * h)),
    )


def hit_test(lay: Layout, x: float, y: float) -> str | None:
    """The button (trigger name) at canvas point ``(x, y)`` px, or ``None``."""
    for name, rect in lay.buttons.items():
        if rect.contains(x, y):
            return name
    return None


# -- items ----------------------------------------------------------------------------------------------------


def centre_window(audio: np.ndarray, samples: int) -> np.ndarray:
    """The centre ``samples`` of ``audio`` (float [n] in [-1, 1]), zero-padded at the end when shorter.

    Returns:
        float32 [samples] (a copy). Start offset ``(n - samples) // 2``, as training's validation window.
    """
    a = np.asarray(audio, np.float32).reshape(-1)
    n = a.shape[0]
    if n >= samples:
        start = (n - samples) // 2
        return a[start : start + samples].copy()
    return np.pad(a, (0, samples - n)).astype(np.float32)


def item_order(count: int, seed: int) -> list[int]:
    """Presentation order of ``count`` items for ``seed``: ``numpy.random.default_rng(seed).permutation``."""
    return [int(i) for i in np.random.default_rng(int(seed)).permutation(int(count))]


def generate_face(generator: Any, window: np.ndarray, seed: int, relative: str | Path) -> np.ndarray:
    """The item's face: uint8 [S, S, 3] RGB.

    Args:
        generator: a :class:`engine.generator.Generator` (``noise_dim``; called as ``gen(audio, noise=...)``).
        window: float32 [window_samples] at the generator's rate.
        seed: the run's seed; with ``relative`` it fixes the noise (:func:`engine.noise.file_noise`).
        relative: the audio file's path relative to ``--audio``.
    """
    noise = file_noise(int(seed), relative, int(generator.noise_dim))[None]
    images = np.asarray(generator(np.ascontiguousarray(window[None], np.float32), noise=noise))
    return np.ascontiguousarray(images[0])


def face_digest(image: np.ndarray) -> str:
    """First 16 hex digits of the sha1 of ``image``'s bytes (uint8 C order)."""
    return hashlib.sha1(np.ascontiguousarray(image).tobytes()).hexdigest()[:16]


class RealFaces:
    """Finds the real face of an audio file (Wav2Pix or capture layout; see the module docstring)."""

    def __init__(self) -> None:
        self._manifests: dict[Path, dict[Path, Path] | None] = {}

    def _index(self, folder: Path) -> dict[Path, Path] | None:
        if folder not in self._manifests:
            index: dict[Path, Path] | None = None
            if capture_format.is_capture_dataset(folder):
                try:
                    records, problems = capture_format.read_manifest(folder)
                except OSError as exc:
                    log.warning("%s: cannot read the capture manifest (%s)", folder, exc)
                    records, problems = [], []
                for problem in problems:
                    log.warning("skipping manifest line: %s", problem)
                index = {(folder / r.audio).resolve(): folder / r.image for r in records}
            self._manifests[folder] = index
        return self._manifests[folder]

    def find(self, audio: Path) -> Path | None:
        """The real face image file for ``audio``, or ``None``."""
        m = _W2P_AUDIO.match(audio.stem)
        if m:
            for ext in _IMAGE_EXTS:
                p = audio.parent / f"cropped_face_frame_{m.group(1)}{ext}"
                if p.is_file():
                    return p
        resolved = audio.resolve()
        for folder in (resolved.parent, resolved.parent.parent):
            index = self._index(folder)
            if index is not None:
                return index.get(resolved)
        return None

    def load(self, audio: Path, side: int) -> np.ndarray | None:
        """The real face of ``audio`` as uint8 [side, side, 3] RGB (centre square, decoded by content, in the
        channel order of its dataset folder: :func:`datastore.images.channel_order`), or ``None`` (none found, or
        unreadable: logged)."""
        path = self.find(audio)
        if path is None:
            return None
        from datastore.images import channel_order, decode_image

        try:  # both layouts keep faces one folder below the dataset folder (<identity>/, <participant>/)
            return decode_image(path.read_bytes(), side, str(path), channel_order(path.parent.parent))
        except (OSError, ValueError) as exc:
            log.warning("real face %s not shown: %s", path, exc)
            return None


# -- voice playback -------------------------------------------------------------------------------------------


class VoicePlayer:
    """Plays voices through ``sounddevice`` (non-blocking), or stays silent with one warning.

    Args:
        enabled: the preset's ``rating.play_voice``.
        sd: a sounddevice-like module (``query_devices(kind="output")``, ``play(data, rate)``, ``stop()``);
            default: import ``sounddevice``.

    Attributes:
        available: an output device was found. rate: its default rate, Hz. reason: why not, when not.
    """

    def __init__(self, enabled: bool = True, sd: Any = None) -> None:
        self.available = False
        self.rate = 0
        self.reason = ""
        self._sd = sd
        self._failures = 0
        if not enabled:
            self.reason = "rating.play_voice is off"
            log.info("voices are not played (%s)", self.reason)
            return
        try:
            if self._sd is None:
                import sounddevice

                self._sd = sounddevice
            info = self._sd.query_devices(kind="output")
            self.rate = int(round(float(info["default_samplerate"])))
            if int(info.get("max_output_channels", 1)) < 1 or self.rate <= 0:
                raise ValueError(f"device {info.get('name', '?')!r} has no output channels")
            self.available = True
            log.info("voices play on %s at %d Hz", info.get("name", "the default output"), self.rate)
        except Exception as exc:  # noqa: BLE001 - ImportError/OSError (no PortAudio), PortAudioError, ValueError
            self.reason = f"{type(exc).__name__}: {exc}"
            log.warning("%s (%s)", NO_DEVICE_WARNING, self.reason)

    def play(self, samples: np.ndarray, rate: int) -> bool:
        """Start playing mono float32 ``samples`` [n] at ``rate`` Hz (returns at once). Returns whether it started."""
        if not self.available:
            return False
        try:
            data = resample(np.asarray(samples, np.float32), int(rate), self.rate)
            self._sd.play(data, self.rate)
            return True
        except Exception as exc:  # noqa: BLE001 - a device that went away: the station goes on silent
            self._failures += 1
            if self._failures <= 3:
                log.warning("voice playback failed: %s: %s", type(exc).__name__, exc)
            return False

    def stop(self) -> None:
        """Stop playback (no-op without a device)."""
        if self.available:
            try:
                self._sd.stop()
            except Exception:  # noqa: BLE001
                log.debug("sounddevice.stop failed", exc_info=True)


# -- the ratings file ---------------------------------------------------------------------------------------


class RatingsFile:
    """An append-only JSON Lines file of ratings, written by :func:`datastore.jsonl.append_line`: each record is
    one ``os.write`` on an ``O_APPEND`` descriptor, then ``os.fsync`` (no lock: the station is the only writer).

    Opening creates the file (and its folder) if needed (a new file and its folder are fsynced) and repairs a torn
    last line (:func:`datastore.jsonl.repair_tail`): a last line without ``\\n`` that is a whole JSON object gets
    its newline; anything else is cut back to the last newline (or to empty), with a warning naming the bytes cut.

    Args:
        path: the ``.jsonl`` file.

    Attributes:
        repaired: bytes cut from a torn last line at open (0: none).

    Raises:
        RateError: the file or its folder cannot be created, read, repaired or synced (the message names it).
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.repaired = 0
        self._closed = False
        try:
            if self.path.is_dir():
                raise IsADirectoryError(21, "is a folder")
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise RateError(f"--out {self.path}: cannot write the ratings file ({exc.strerror or exc})") from exc
        try:
            self.repaired = jsonl.prepare(self.path)
        except OSError as exc:
            raise RateError(f"--out {self.path}: cannot read or repair the ratings file ({exc})") from exc

    def append(self, record: Mapping[str, Any]) -> None:
        """Append ``record`` as one JSON line: one ``os.write`` (``O_APPEND``), then ``os.fsync``.

        Raises:
            RateError: the write or the sync failed (disk full, device gone), or the file was closed; names the file.
        """
        data = (json.dumps(record, ensure_ascii=False, separators=(", ", ": ")) + "\n").encode("utf-8")
        try:
            if self._closed:
                raise OSError(9, "the ratings file is closed")
            jsonl.append_line(self.path, data)
        except OSError as exc:
            raise RateError(f"--out {self.path}: cannot append a rating ({exc.strerror or exc})") from exc

    def close(self) -> None:
        """Close the file: later appends raise :class:`RateError` (idempotent)."""
        self._closed = True


# -- configuration ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StationConfig:
    """Everything the station needs (from the preset and the command line; see :func:`resolve_config`).

    Attributes:
        audio: folder (searched recursively) or one audio file. out: the ratings ``.jsonl``.
        bundle, backend, device, threads, ort_spin: the generator (:class:`engine.generator.Generator`).
        width, height: canvas size in px. fullscreen, display, vsync, video_driver, hide_cursor, windowed_size,
            fps: the window (see :class:`installation.live.LiveConfig`).
        show_real, play_voice, seed, max_items: the preset's ``rating`` section (``max_items`` 0: no limit).
        script: a visitor script (:mod:`installation.visitor_script`) or ``None``.
        osc: the preset's :class:`installation.presets.OscConfig`, or ``None`` (OSC off).
        min_view_s: seconds a face is on screen before an answer counts.
        preset_name: for logs.
    """

    audio: Path
    out: Path
    bundle: Path = DEFAULT_BUNDLE
    backend: str = "auto"
    device: str | None = None
    threads: int | None = None
    ort_spin: str = "never"
    width: int = 1920
    height: int = 1080
    fullscreen: bool = True
    display: int = 0
    vsync: bool = True
    video_driver: str = ""
    hide_cursor: bool = True
    windowed_size: tuple[int, int] | None = None
    fps: float = 60.0
    show_real: bool = False
    play_voice: bool = True
    seed: int = 0
    max_items: int = 0
    script: Path | None = None
    osc: Any = None
    min_view_s: float = MIN_VIEW_S
    preset_name: str = ""

    def __post_init__(self) -> None:
        if self.max_items < 0:
            raise RateError(f"--max-items: expected >= 0 (0 = every file), got {self.max_items}")
        if self.seed < 0:
            raise RateError(f"--seed: expected >= 0, got {self.seed}")
        if not (16 <= self.width <= 16384 and 16 <= self.height <= 16384):
            raise RateError(f"display.size: expected 16..16384 px per side, got {self.width}x{self.height}")
        if not 0 <= self.fps <= 1000:
            raise RateError(f"display.fps: expected 0..1000, got {self.fps}")


# -- the station ----------------------------------------------------------------------------------------------


@dataclass
class Item:
    """The item on screen.

    Attributes:
        path, relative: the audio file and its path relative to ``--audio`` (POSIX).
        window: the voice, float32 [window_samples] at the generator's rate. face: uint8 [s, s, 3] RGB.
        real: the real face, uint8 [side, side, 3] RGB, or ``None``.
        shown_at: ``time.perf_counter()`` of its first frame on screen (``None`` until then).
        voice_played: the voice started playing at least once. load_started: ``perf_counter()`` when decoding began.
    """

    path: Path
    relative: str
    window: np.ndarray
    face: np.ndarray
    real: np.ndarray | None
    shown_at: float | None = None
    voice_played: bool = False
    load_started: float = 0.0


@dataclass
class Tally:
    """Counts of this run: ``rated``, ``skipped``, ``scores`` (the scores in order), ``failed`` (messages)."""

    rated: int = 0
    skipped: int = 0
    scores: list[int] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)


def discover_items(audio: Path) -> list[tuple[Path, str]]:
    """The items under ``audio``: ``(file, path relative to audio in POSIX form)``, sorted by relative path.

    A capture dataset (a folder with ``manifest.jsonl``) gives the audio of its kept takes, as the manifest
    lists them (no quarantined or half-written files); any other folder is searched recursively for audio files
    (:func:`engine.audio.find_audio_files`, hidden files skipped); a file is one item.

    Raises:
        RateError: ``audio`` does not exist, or holds no audio file (names it).
    """
    if not audio.exists():
        raise RateError(f"--audio {audio}: no such file or folder")
    if audio.is_dir() and capture_format.is_capture_dataset(audio):
        try:
            records, problems = capture_format.read_manifest(audio)
        except OSError as exc:
            raise RateError(f"--audio {audio}: cannot read {capture_format.MANIFEST} ({exc})") from exc
        for problem in problems:
            log.warning("skipping manifest line: %s", problem)
        items = sorted({(audio / r.audio, r.audio) for r in records if (audio / r.audio).is_file()}, key=lambda x: x[1])
        if not items:
            raise RateError(f"--audio {audio}: the capture dataset lists no take whose audio file exists")
        return items
    try:
        files = find_audio_files(audio)
    except UserError as exc:
        raise RateError(f"--audio {exc}") from None
    return [(p, rel.as_posix()) for p, rel in files]


def input_kind(source: str) -> str:
    """A :meth:`Parameters.source` value as a rating's ``input``: ``key``, ``touch``, ``osc`` or ``script``."""
    if source.startswith("osc"):
        return "osc"
    if source in ("key", "touch", "script"):
        return source
    return source or "unknown"


def _display_path(path: Path) -> str:
    """``path`` relative to the repository root when inside it (no home folders or user names in the file)."""
    try:
        return path.resolve().relative_to(ROOT).as_posix()
    except ValueError:
        return path.name if path.is_absolute() else path.as_posix()


class RatingStation:
    """The rating station's loop (see the module docstring).

    Args:
        config: resolved configuration.
        generator: a Generator-like object (``sample_rate``, ``window_samples``, ``noise_dim``, ``bundle``,
            ``__call__(audio, noise=)``); default: load ``config.bundle``.
        params: a :class:`installation.params.Parameters` (default: a new one).
        player: a :class:`VoicePlayer` (default: from ``config.play_voice``).
        osc: an :class:`installation.osc.OscControl`-like object; default: from ``config.osc``.
        on_frame: ``on_frame(station)`` after each flip (tests, benchmarks).

    Raises:
        RateError / UserError: no audio files, a missing bundle, an unwritable ``--out``, a bad script.
    """

    def __init__(
        self,
        config: StationConfig,
        *,
        generator: Any = None,
        params: Parameters | None = None,
        player: VoicePlayer | None = None,
        osc: Any = None,
        on_frame: Callable[[RatingStation], None] | None = None,
    ) -> None:
        self.config = config
        self.on_frame = on_frame
        self.files: list[tuple[Path, str]] = discover_items(Path(config.audio))
        self.order = item_order(len(self.files), config.seed)
        self.params = params if params is not None else Parameters()
        self.script: Any = None
        if config.script is not None:
            self.script = self._load_script(Path(config.script))
        self._owns_generator = generator is None
        if generator is None:
            from engine.generator import Generator

            generator = Generator(
                config.bundle,
                backend=config.backend,
                device=config.device,
                max_batch=1,
                threads=config.threads,
                ort_spin=config.ort_spin,
            )
        self.generator = generator
        self.model = model_name(generator, config.bundle)
        try:
            self.out = RatingsFile(config.out)
        except BaseException:
            if self._owns_generator and hasattr(generator, "close"):
                generator.close()
            raise
        self.session = secrets.token_hex(6)
        self.player = player
        self.osc = osc
        self.osc_error: str | None = None
        self.window: Any = None
        self.canvas = np.zeros((config.height, config.width, 3), np.uint8)
        self.layout = layout(config.width, config.height, config.show_real)
        self.real_faces = RealFaces()
        self.item: Item | None = None
        self.next_index = 0  # position in self.order of the next file to load
        self.tally = Tally()
        self.load_times_ms: list[float] = []
        self.frames = 0
        self.running = False
        self.quit_reason = ""
        self._fonts: dict[int, Any] = {}
        self._last_fired: tuple[str, ...] = ()

    # -- set-up ---------------------------------------------------------------------------------------------

    def _load_script(self, path: Path) -> Any:
        from installation.visitor_script import ScriptError, VisitorScript

        script = VisitorScript.from_file(path, press=lambda name: self.params.enqueue(name, True, source="script"))
        allowed = (*BUTTONS, "quit")
        for step in script.steps:
            choices = tuple(getattr(step, "alternatives", ()) or (step.name,))  # ``any A B``: one of them will do
            if step.name and not any(c in allowed for c in choices):
                raise ScriptError(
                    f"{path}: {' / '.join(repr(c) for c in choices)} is not a rating-station button "
                    f"(expected one of: {', '.join(allowed)})"
                )
        return script

    def _start_services(self) -> None:
        if self.player is None:
            self.player = VoicePlayer(self.config.play_voice)
        cfg = self.config
        if self.osc is None and cfg.osc is not None and getattr(cfg.osc, "enabled", False):
            from installation.osc import start_or_log

            self.osc, self.osc_error = start_or_log(self.params, cfg.osc)
        elif self.osc is not None and hasattr(self.osc, "start"):
            self.osc.start()

    # -- items ----------------------------------------------------------------------------------------------

    def _answers(self) -> int:
        return self.tally.rated + self.tally.skipped

    def next_item(self) -> Item | None:
        """Decode, generate and draw the next item (skipping undecodable files); ``None`` when none is left."""
        gen = self.generator
        rate, samples = int(gen.sample_rate), int(gen.window_samples)
        while self.next_index < len(self.order):
            path, rel = self.files[self.order[self.next_index]]
            self.next_index += 1
            started = time.perf_counter()
            try:
                audio = load_audio(path, rate)
            except AudioDecodeError as exc:
                log.warning("skipping %s: %s", path, exc)
                self.tally.failed.append(str(exc))
                continue
            window = centre_window(audio, samples)
            face = generate_face(gen, window, self.config.seed, rel)
            real = self.real_faces.load(path, self.layout.real.w) if self.layout.real is not None else None
            item = Item(path, rel, window, face, real, load_started=started)
            self._draw(item)
            return item
        return None

    def accepting(self, now: float | None = None) -> frozenset[str]:
        """The triggers the station reacts to at ``now`` (default: the clock now; the loop passes its frame
        time, the same one the answer is checked against) -- what a patient scripted visitor may press."""
        item = self.item
        if item is None or item.shown_at is None:
            return frozenset({"quit"})
        now = time.perf_counter() if now is None else now
        if now - item.shown_at < self.config.min_view_s:
            return frozenset({"quit", "rate/replay"})
        return frozenset({*BUTTONS, "quit"})

    def _answer(self, score: int | None, source: str, now: float) -> None:
        item = self.item
        assert item is not None and item.shown_at is not None
        record = {
            "time": dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "session": self.session,
            "model": self.model,
            "bundle": _display_path(Path(self.config.bundle)),
            "audio": item.relative,
            "seed": int(self.config.seed),
            "score": score,
            "skipped": score is None,
            "input": input_kind(source),
            "shown_real": item.real is not None,
            "voice_played": item.voice_played,
            "response_s": round(now - item.shown_at, 3),
            "face_sha1": face_digest(item.face),
        }
        self.out.append(record)
        if score is None:
            self.tally.skipped += 1
        else:
            self.tally.rated += 1
            self.tally.scores.append(score)
        what = "skipped" if score is None else f"rated {score}"
        log.info("%s: %s (%s, %.2f s)", item.relative, what, record["input"], record["response_s"])
        self._osc_event(f"{item.relative}: {what}")
        if self.player is not None:
            self.player.stop()
        self.item = None

    def _handle_triggers(self, now: float) -> None:
        p = self.params
        if p.fired("quit"):
            self.stop("quit (parameter)")
            return
        fired = tuple(name for name in BUTTONS if p.fired(name))
        self._last_fired = fired
        if not fired:
            return
        item = self.item
        if item is None or item.shown_at is None:
            return
        if "rate/replay" in fired:
            self._play(item)
        answers = [name for name in fired if name != "rate/replay"]
        if not answers:
            return
        if now - item.shown_at < self.config.min_view_s:
            log.debug("ignored %s: the face has been on screen only %.2f s", answers, now - item.shown_at)
            return
        scores = [name for name in answers if name in SCORE_BUTTONS]
        if len(scores) > 1:
            log.warning("ignored: several scores in one frame (%s); press one", ", ".join(scores))
            return
        name = scores[0] if scores else "rate/skip"
        score = SCORE_BUTTONS.index(name) + 1 if scores else None
        self._answer(score, p.source(name), now)

    def _play(self, item: Item) -> None:
        if self.player is not None and self.player.play(item.window, int(self.generator.sample_rate)):
            item.voice_played = True

    # -- drawing --------------------------------------------------------------------------------------------

    def _font(self, px: int) -> Any:
        if px not in self._fonts:
            pg = self.window.pg
            pg.font.init()
            self._fonts[px] = pg.font.Font(None, px)
        return self._fonts[px]

    def _text(self, text: str, center: tuple[int, int], px: int, color: tuple[int, int, int] = FG) -> None:
        """Render ``text`` centred at ``center`` into the canvas (through the window surface that wraps it)."""
        if self.window is None:
            return
        surface = self._font(px).render(text, True, color)
        rect = surface.get_rect(center=center)
        self.window.surface.blit(surface, rect)

    def _draw(self, item: Item) -> None:
        """Draw the whole screen for ``item`` into the canvas (once per item; frames only re-present it)."""
        lay, canvas = self.layout, self.canvas
        canvas[...] = BG
        f = lay.face
        canvas[f.y : f.y + f.h, f.x : f.x + f.w] = cv2.resize(item.face, (f.w, f.h), interpolation=cv2.INTER_CUBIC)
        small = max(8, round(lay.text_px * 0.75))
        if lay.real is not None:
            r = lay.real
            if item.real is not None:
                canvas[r.y : r.y + r.h, r.x : r.x + r.w] = item.real
                self._text("real face", (r.center[0], lay.label_y), small, DIM)
            else:
                self._text("(no real face for this voice)", (r.center[0], r.center[1]), small, DIM)
            self._text("generated from the voice", (f.center[0], lay.label_y), small, DIM)
        self._text(INSTRUCTION, (lay.width // 2, lay.title_y), lay.text_px)
        for name, rect in lay.buttons.items():
            cv2.rectangle(canvas, (rect.x, rect.y), (rect.x + rect.w - 1, rect.y + rect.h - 1), BUTTON, cv2.FILLED)
            cv2.rectangle(canvas, (rect.x, rect.y), (rect.x + rect.w - 1, rect.y + rect.h - 1), BUTTON_EDGE, 2)
            cx, cy = rect.center
            if name in SCORE_BUTTONS:
                score = SCORE_BUTTONS.index(name) + 1
                self._text(str(score), (cx, cy - rect.h // 6), round(rect.h * 0.45))
                self._text(SCORE_LABELS[score], (cx, cy + rect.h // 4), max(8, round(rect.h * 0.2)), DIM)
            else:
                label = "replay" if name == "rate/replay" else "skip"
                self._text(label, (cx, cy), max(8, round(rect.h * 0.28)))
        done = self._answers()
        limit = self.config.max_items
        total = min(len(self.files), limit) if limit else len(self.files)
        self._text(f"face {done + 1} of {total}", (lay.width // 2, lay.status_y), small, DIM)

    # -- events ---------------------------------------------------------------------------------------------

    def _handle_events(self) -> None:
        if self.window is None:
            return
        pg = self.window.pg
        keys = {getattr(pg, f"K_{n}"): f"rate/{n}" for n in range(1, 6)}
        keys.update({getattr(pg, f"K_KP{n}"): f"rate/{n}" for n in range(1, 6)})
        keys.update({pg.K_s: "rate/skip", pg.K_r: "rate/replay"})
        for event in self.window.events():
            if event.type == pg.QUIT:
                self.stop("window closed")
            elif event.type == pg.KEYDOWN:
                if event.key in (pg.K_ESCAPE, pg.K_q):
                    self.stop("keyboard")
                elif event.key in keys:
                    self.params.enqueue(keys[event.key], True, source="key")
            elif event.type == pg.MOUSEBUTTONDOWN:
                if getattr(event, "touch", False) or getattr(event, "button", 1) != 1:
                    continue  # SDL's mouse copy of a touch (the FINGERDOWN counts), or not the primary button
                name = hit_test(self.layout, *event.pos)
                if name is not None:
                    self.params.enqueue(name, True, source="touch")
            elif event.type == pg.FINGERDOWN:
                name = hit_test(self.layout, event.x * self.layout.width, event.y * self.layout.height)
                if name is not None:
                    self.params.enqueue(name, True, source="touch")

    def _osc_event(self, text: str) -> None:
        if self.osc is None:
            return
        try:
            self.osc.event(text)
        except Exception:  # noqa: BLE001 - feedback is best effort
            log.debug("OSC event failed", exc_info=True)

    def _feedback(self, fps: float) -> None:
        if self.osc is None:
            return
        try:
            self.osc.status(fps=round(fps, 2), scene="rate", backend=str(getattr(self.generator, "backend_name", "")))
            self.osc.pump(self.params)
        except Exception:  # noqa: BLE001 - feedback is best effort
            log.debug("OSC feedback failed", exc_info=True)

    # -- run ------------------------------------------------------------------------------------------------

    def stop(self, reason: str) -> None:
        """Ask the loop to end after the current frame."""
        if self.running:
            log.info("rate: stopping (%s)", reason)
        self.running = False
        self.quit_reason = self.quit_reason or reason

    def run(self) -> dict[str, Any]:
        """Run until every item has an answer, ``max_items`` answers, the script ends, or quit.

        Returns:
            :meth:`summary`.

        Raises:
            RateError: no window can be opened, a rating cannot be written, or no audio file could be decoded.
        """
        from installation.window import Window

        cfg = self.config
        try:
            self.window = Window.open(self.canvas, cfg, title="AVGAN rating station", error=RateError)
            self._start_services()
            period = 1.0 / cfg.fps if cfg.fps > 0 else 0.0
            deadline = time.perf_counter()
            fps_t0, fps_frames, fps = deadline, 0, 0.0
            self.running = True
            while self.running:
                now = time.perf_counter()
                self._handle_events()
                if self.script is not None:
                    self.script.poll(self.accepting(now))
                self.params.apply_pending()
                self._handle_triggers(now)
                if not self.running:
                    break
                if self.item is None:
                    limit = cfg.max_items
                    if limit and self._answers() >= limit:
                        self.stop(f"{limit} answers (max_items)")
                        break
                    self.item = self.next_item()
                    if self.item is None:
                        self.stop("every item has an answer")
                        break
                self.window.present(blackout=False, brightness=1.0, overlay=False)
                flipped = time.perf_counter()
                self.frames += 1
                item = self.item
                if item.shown_at is None:
                    item.shown_at = flipped
                    self.load_times_ms.append((flipped - item.load_started) * 1000.0)
                    log.debug("%s on screen %.1f ms after its load began", item.relative, self.load_times_ms[-1])
                    self._play(item)
                if self.script is not None and self.script.done and not self._last_fired:
                    self.stop("the visitor script has no presses left")
                fps_frames += 1
                if flipped - fps_t0 >= 1.0:
                    fps, fps_t0, fps_frames = fps_frames / (flipped - fps_t0), flipped, 0
                self._feedback(fps)
                if self.on_frame is not None:
                    self.on_frame(self)
                if period > 0:
                    deadline += period
                    now = time.perf_counter()
                    if deadline < now - period:
                        deadline = now
                    elif deadline > now:
                        time.sleep(deadline - now)
        finally:
            self.running = False
            self.close()
        if self.files and len(self.tally.failed) == len(self.files):
            raise RateError(f"--audio {self.config.audio}: none of the {len(self.files)} audio files could be decoded")
        return self.summary()

    def close(self) -> None:
        """Release the window, OSC, playback, the ratings file and the generator (idempotent)."""
        if self.player is not None:
            self.player.stop()
        if self.osc is not None:
            try:
                self.osc.stop()
            except Exception:  # noqa: BLE001
                log.warning("closing OSC failed", exc_info=True)
            self.osc = None
        if self.window is not None:
            self.window.close()
            self.window = None
            self._fonts = {}
        self.out.close()
        if self._owns_generator and hasattr(self.generator, "close"):
            self.generator.close()
            self._owns_generator = False

    def summary(self) -> dict[str, Any]:
        """JSON-ready: ``session``, ``model``, ``out``, ``rated``, ``skipped``, ``mean_score`` (``None`` if no
        score), ``failed`` (undecodable files), ``voice`` (whether voices could play), ``osc_error``,
        ``item_ms`` (per item, from the start of its decoding to its first frame on screen -- decode, generate,
        draw, flip: n, p50, max), ``frames``, ``quit_reason``."""
        t = self.tally
        times = np.asarray(self.load_times_ms, np.float64)
        return {
            "session": self.session,
            "model": self.model,
            "out": str(self.config.out),
            "rated": t.rated,
            "skipped": t.skipped,
            "mean_score": round(float(np.mean(t.scores)), 3) if t.scores else None,
            "failed": list(t.failed),
            "voice": bool(self.player is not None and self.player.available),
            "osc_error": self.osc_error,
            "item_ms": {
                "n": int(times.size),
                "p50": round(float(np.median(times)), 2) if times.size else None,
                "max": round(float(times.max()), 2) if times.size else None,
            },
            "frames": self.frames,
            "quit_reason": self.quit_reason,
        }


def model_name(generator: Any, bundle: str | Path) -> str:
    """``<bundle folder name>@<first 12 hex digits of the graph's sha256>`` (just the folder name without a digest)."""
    b = getattr(generator, "bundle", None)
    name = Path(getattr(b, "path", bundle)).name or Path(bundle).name
    try:
        digest = str(b.digest) if b is not None else ""
    except (AttributeError, KeyError):
        digest = ""
    return f"{name}@{digest[:12]}" if digest else name


# -- command line ---------------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``run.py rate``."""
    parser.add_argument(
        "--preset",
        default=None,
        help="preset name or path (default: gallery); its display, osc, engine and rating sections are used",
    )
    parser.add_argument("--bundle", type=Path, default=None, help="model bundle (default: the preset's engine.bundle)")
    parser.add_argument(
        "--audio", type=Path, required=True, help="an audio file or a folder of them (searched recursively)"
    )
    parser.add_argument(
        "--out", type=Path, required=True, help="ratings file (JSON Lines; appended to, created if missing)"
    )
    parser.add_argument("--windowed", action="store_true", help="a window instead of fullscreen")
    parser.add_argument(
        "--script",
        type=Path,
        default=None,
        help="visitor script pressing the buttons (see installation/visitor_script.py)",
    )
    parser.add_argument("--max-items", type=int, default=None, help="stop after this many answers (0: every file)")
    parser.add_argument("--seed", type=int, default=None, help="order and noise seed (default: the preset's, 0)")
    parser.add_argument(
        "--show-real",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="show the real face beside the generated one where the dataset has it (default: the preset's)",
    )
    parser.add_argument("--backend", default=None, help="engine backend (default: the preset's, auto)")


def resolve_config(args: argparse.Namespace) -> StationConfig:
    """Preset (``--preset``, default ``gallery``) + command-line overrides -> :class:`StationConfig`.

    Raises:
        installation.presets.PresetError / RateError: unknown preset or bad values (one line naming them).
    """
    from installation.presets import load_preset

    preset = load_preset(args.preset or "gallery", check_files=False)
    d, e, r = preset.display, preset.engine, preset.rating
    width, height = (int(v) for v in d.size)
    return StationConfig(
        audio=Path(args.audio),
        out=Path(args.out),
        bundle=Path(args.bundle) if args.bundle is not None else e.bundle_path,
        backend=args.backend or e.backend,
        device=e.device or None,
        threads=int(e.threads) or None,
        ort_spin=str(e.ort_spin),
        width=width,
        height=height,
        fullscreen=bool(d.fullscreen) and not args.windowed,
        display=int(d.display),
        vsync=bool(d.vsync),
        video_driver=str(d.driver),
        hide_cursor=bool(d.hide_cursor),
        windowed_size=tuple(int(v) for v in d.windowed_size),  # type: ignore[arg-type]
        fps=float(d.fps),
        show_real=bool(r.show_real if args.show_real is None else args.show_real),
        play_voice=bool(r.play_voice),
        seed=int(r.seed if args.seed is None else args.seed),
        max_items=int(r.max_items if args.max_items is None else args.max_items),
        script=Path(args.script) if args.script is not None else None,
        osc=preset.osc if preset.osc.enabled else None,
        preset_name=preset.name,
    )


def format_summary(summary: Mapping[str, Any]) -> str:
    """One line for the terminal."""
    mean = summary["mean_score"]
    failed = f", {len(summary['failed'])} undecodable files skipped" if summary["failed"] else ""
    return (
        f"rate: {summary['rated']} rated, {summary['skipped']} skipped, mean score "
        f"{'-' if mean is None else f'{mean:.2f}'} [{summary['model']}, session {summary['session']}]{failed}; "
        f"appended to {summary['out']} ({summary['quit_reason']})"
    )


def main(args: argparse.Namespace) -> int:
    """Run ``run.py rate``; returns 0. Raises UserError for bad options or files (run.py prints it)."""
    config = resolve_config(args)
    summary = RatingStation(config).run()
    print(format_summary(summary))
    return 0
