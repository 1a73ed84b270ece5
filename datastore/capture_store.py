"""Crash-safe writing, checking and participant deletion for AVGAN capture datasets; ``run.py dataset``.

The layout is :mod:`datastore.capture_format`'s. Three rules make a dataset survive a crash, a
``SIGKILL`` or a power cut with only whole takes in it:

1. every file of a take is written to a temporary file (``.tmp-*``) in its final folder, flushed,
   ``fsync``-ed and renamed into place with :func:`os.replace`; the folder is ``fsync``-ed after the
   renames (one folder ``fsync`` covers all renames before it);
2. the take's JSON record (with the SHA-256 of every other file of the take) is written the same way,
   last;
3. only then is the record appended to ``manifest.jsonl`` (:func:`datastore.jsonl.append_line`: one
   ``os.write`` of one line on an ``O_APPEND`` descriptor opened for that append, then ``fsync``), under an
   exclusive ``flock`` of ``.lock``. A take is *kept* once its manifest line is durable, and only then does
   :meth:`DatasetWriter.write_take` return.

A crash before step 3 leaves files that no record references (orphans) or temporary debris; both are
reported by :func:`check_dataset` and moved aside (or removed) by its repair, never read by the loader.
A crash during step 3 can at worst leave a torn last manifest line, which the next writer truncates
before it appends (and which the loader skips).

Deleting a participant (:func:`delete_participant`) is crash-safe too: a pending marker
(``.deleting-<deletion_id>.json``) is made durable first, then the manifest is rewritten without the
participant's lines (temporary file + ``fsync`` + ``os.replace`` + folder ``fsync``), the participant's
folder (and any quarantined copy) is removed, a log line without the participant id is appended to
``deletions.jsonl`` and the marker removed. A later ``delete`` or ``check --repair`` finishes a
deletion a crash interrupted.

Command line::

    python run.py dataset check DATASET_DIR [--repair] [--json OUT.json]
    python run.py dataset delete DATASET_DIR --participant ID

Run ``check --repair`` and ``delete`` while capture is stopped if you can. Both are safe while a
capture writer runs (they take the lock; the writer never loses a kept take), but a repair may move
the files of a take that is being written into quarantine, and that take then fails with
:class:`CaptureStoreError` instead of being kept.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import errno
import fcntl
import hashlib
import io
import json
import logging
import math
import os
import secrets
import shutil
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from datastore import capture_format as cf
from datastore import jsonl
from datastore.cache import purge_caches
from datastore.capture_format import TakeRecord
from engine.errors import UserError

log = logging.getLogger(__name__)

#: characters of participant, take and deletion codes: no 0/O, 1/I (nor lower case), easy to read aloud
CODE_ALPHABET = "23456789ABCDEFGHJKLMNPQRSTUVWXYZ"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
JPEG_MAGIC = b"\xff\xd8\xff"
LOCK_TIMEOUT_S = 30.0
_MiB = 1024 * 1024

# problem kinds reported by check_dataset
INVALID_LINE = "invalid-line"  # a manifest line that is not a record (torn by a crash, edited by hand)
NO_FINAL_NEWLINE = "no-final-newline"  # the last manifest line is a whole record but lacks its "\n"
BAD_RECORD = "bad-record"  # a record whose ids or paths are unsafe or inconsistent
DUPLICATE_TAKE = "duplicate-take"  # a take_id on more than one manifest line
MISSING_FILE = "missing-file"
SHA_MISMATCH = "sha-mismatch"
NO_CHECKSUM = "no-checksum"  # a record without a sha256 entry for one of its files (not written by this module)
BAD_IMAGE = "bad-image"
BAD_AUDIO = "bad-audio"
MISSING_SIDECAR = "missing-sidecar"
SIDECAR_MISMATCH = "sidecar-mismatch"
ORPHAN = "orphan"  # a file no record references (e.g. a take whose manifest append never happened)
TEMP_DEBRIS = "temp-debris"  # .tmp-* files of an interrupted write
INCOMPLETE_DELETION = "incomplete-deletion"
INVALID_LOG_LINE = "invalid-log-line"  # a deletions.jsonl line that is not a JSON object
#: kinds that make a take damaged: --repair moves its files into quarantine and drops its manifest line
DAMAGE_KINDS = frozenset({MISSING_FILE, SHA_MISMATCH, BAD_IMAGE, BAD_AUDIO})


# ------------------------------------------------------------------------------------------------ errors
class CaptureStoreError(Exception):
    """Writing to a capture dataset failed (an ``OSError`` other than a full disk, or a busy lock).

    The message names the path. Takes already kept are untouched.

    Attributes:
        path: the file or folder concerned.
    """

    def __init__(self, message: str, path: str | os.PathLike[str] | None = None) -> None:
        super().__init__(message)
        self.path = None if path is None else str(path)


class DiskFullError(CaptureStoreError):
    """The disk is full (``ENOSPC``/``EDQUOT``), or free space is below the writer's ``min_free_mb``.

    The take was not kept and none of its files is left behind. Takes already kept are untouched.
    """


def _store_error(exc: OSError, path: str | os.PathLike[str], action: str) -> CaptureStoreError:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        err: CaptureStoreError = DiskFullError(
            f"{path}: disk full while {action} ({exc.strerror or exc}); the take was not kept", path
        )
        log.error("%s", err)
        return err
    return CaptureStoreError(f"{path}: {action} failed ({exc.strerror or exc})", path)


# ------------------------------------------------------------------------------------------------ ids
def _code(n: int) -> str:
    return "".join(secrets.choice(CODE_ALPHABET) for _ in range(n))


def _utc_stamp(t_ns: int | None = None, ms: bool = True) -> str:
    t_ns = time.time_ns() if t_ns is None else t_ns
    secs, rest = divmod(t_ns, 1_000_000_000)
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(secs))
    return f"{stamp}{rest // 1_000_000:03d}Z" if ms else f"{stamp}Z"


def _utc_iso(t: float | None = None) -> str:
    t = time.time() if t is None else t
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1000):03d}Z"


def new_participant_id(root: str | Path | None = None) -> str:
    """A new pseudonymous participant id such as ``"P-7K3M9Q"``: the visitor's withdrawal code.

    ``P-`` and six characters of :data:`CODE_ALPHABET` (no 0/O/1/I; about 10⁹ codes), safe as a folder
    name and matching :data:`datastore.capture_format.PARTICIPANT_RE`. Random (``secrets``), so it
    carries no information about the visitor.

    Args:
        root: optional dataset folder; a code whose folder already exists there is never returned.
    """
    while True:
        pid = f"P-{_code(6)}"
        if root is None or not (Path(root) / pid).exists():
            return pid


def new_take_id() -> str:
    """A new take id: UTC time to the millisecond, then six random characters, e.g.
    ``"20250601T142233123Z-7K3M9Q"``. Sorts by time; unique in practice (32⁶ codes per millisecond)."""
    return f"{_utc_stamp()}-{_code(6)}"


def _check_participant(participant: object) -> str:
    if not isinstance(participant, str) or not cf.PARTICIPANT_RE.match(participant):
        raise ValueError(
            f"participant id {participant!r}: expected 1-64 letters, digits, '-' or '_' starting with a letter "
            "or digit (e.g. from new_participant_id())"
        )
    return participant


# ------------------------------------------------------------------------------------------------ durable I/O
def _write_durable(final: Path, data: bytes, temps: list[Path] | None = None) -> None:
    """Write ``data`` to a temporary file beside ``final``, fsync it and rename it to ``final``.

    The caller fsyncs the folder afterwards. ``temps`` (if given) holds the temporary path while it exists,
    so that a caller can remove it after a failure.

    Raises:
        OSError: any failure; the temporary file is removed (best effort) unless ``temps`` is given.
    """
    tmp = final.with_name(f"{cf.TEMP_PREFIX}{final.name}.{secrets.token_hex(3)}")
    own = temps is None
    temps = [] if temps is None else temps
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
    temps.append(tmp)
    try:
        try:
            jsonl.write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, final)
        temps.remove(tmp)
    except OSError:
        if own:
            with contextlib.suppress(OSError):
                tmp.unlink()
        raise


class _Lock:
    """Exclusive (or shared) ``flock`` of ``DATASET/.lock``, polled up to ``timeout_s`` seconds."""

    def __init__(self, root: Path, create: bool = True, timeout_s: float = LOCK_TIMEOUT_S) -> None:
        self.path = root / cf.LOCK
        self.timeout_s = timeout_s
        flags = os.O_RDWR | os.O_CREAT if create else os.O_RDONLY
        self.fd: int | None = os.open(self.path, flags | os.O_CLOEXEC, 0o644)

    def acquire(self, shared: bool = False) -> None:
        if self.fd is None:
            raise CaptureStoreError(f"{self.path}: lock already closed", self.path)
        deadline = time.monotonic() + self.timeout_s
        mode = (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB
        while True:
            try:
                fcntl.flock(self.fd, mode)
                return
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise CaptureStoreError(
                        f"{self.path}: dataset locked by another process for over {self.timeout_s:.0f} s "
                        "(a deletion or repair still running?)",
                        self.path,
                    ) from None
                time.sleep(0.005)

    def release(self) -> None:
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)

    @contextlib.contextmanager
    def held(self, shared: bool = False) -> Iterator[None]:
        self.acquire(shared)
        try:
            yield
        finally:
            self.release()

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


_TORN_HINT = "; its take's files are orphans until `run.py dataset check --repair`"


def _append_line(path: Path, line: bytes) -> None:
    """Append one ``line`` to ``path`` with :func:`datastore.jsonl.append_line`; the caller holds the exclusive lock."""
    jsonl.append_line(path, line, _TORN_HINT)


def _split_lines(data: bytes) -> list[tuple[bytes, bool]]:
    """``data`` as (line without newline, had a newline) pairs."""
    parts = data.split(b"\n")
    out = [(p, True) for p in parts[:-1]]
    if parts[-1]:
        out.append((parts[-1], False))
    return out


def _rewrite(path: Path, content: bytes) -> None:
    """Replace ``path`` atomically with ``content`` (temporary file, fsync, ``os.replace``, folder fsync)."""
    _write_durable(path, content)
    jsonl.fsync_dir(path.parent)


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return b""


# ------------------------------------------------------------------------------------------------ writer
def _jsonable(value: Any, where: str) -> Any:
    """``value`` as strict JSON data: numpy scalars/arrays converted, non-finite floats stored as None.

    Raises:
        ValueError: a value JSON cannot hold (the message names its key path ``where``).
    """
    if isinstance(value, np.ndarray):
        value = value.tolist()
    elif isinstance(value, np.generic):
        value = value.item()
    if value is None or isinstance(value, (str, bool, int)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise ValueError(f"meta{where}: key {k!r} is not a string")
            out[k] = _jsonable(v, f"{where}.{k}")
        return out
    if isinstance(value, (list, tuple)):
        return [_jsonable(v, f"{where}[{i}]") for i, v in enumerate(value)]
    raise ValueError(f"meta{where}: {type(value).__name__} is not JSON-serialisable")


def encode_audio(audio: np.ndarray, sample_rate: int, audio_format: str = "wav") -> tuple[bytes, int, int]:
    """Encode float samples as 16-bit PCM WAV or FLAC in memory.

    Args:
        audio: float [n] or [n, channels] in [-1, 1] (values outside are clipped); n ≥ 1, all finite.
        sample_rate: Hz, stored as-is.
        audio_format: ``"wav"`` or ``"flac"``.

    Returns:
        (file bytes, samples per channel, channels).

    Raises:
        ValueError: empty, non-finite or wrongly shaped audio, a bad rate or format.
    """
    fmt = audio_format.lower() if isinstance(audio_format, str) else audio_format
    if fmt not in ("wav", "flac"):
        raise ValueError(f"audio_format: expected 'wav' or 'flac', got {audio_format!r}")
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, (int, np.integer)) or sample_rate <= 0:
        raise ValueError(f"sample_rate: expected a positive integer (Hz), got {sample_rate!r}")
    a = np.asarray(audio, dtype=np.float32)
    if a.ndim == 1:
        a = a[:, None]
    if a.ndim != 2 or a.shape[0] == 0 or not 1 <= a.shape[1] <= 8:
        raise ValueError(f"audio: expected float samples [n] or [n, channels] with n > 0, got shape {a.shape}")
    if not np.isfinite(a).all():
        raise ValueError("audio: contains NaN or infinite samples")
    buf = io.BytesIO()
    import soundfile as sf

    try:
        sf.write(buf, np.clip(a, -1.0, 1.0), int(sample_rate), format=fmt.upper(), subtype="PCM_16")
    except Exception as exc:  # noqa: BLE001 - libsndfile reports unsupported rates/channels in several types
        raise ValueError(f"audio: cannot encode {a.shape[1]} channel(s) at {sample_rate} Hz as {fmt} ({exc})") from exc
    return buf.getvalue(), int(a.shape[0]), int(a.shape[1])


class DatasetWriter:
    """Writes takes into a capture dataset folder, each one whole or not at all (see the module docstring).

    Creates ``root`` and its manifest when missing. On opening, a manifest whose last line was torn by a crash
    (no final newline) is truncated back to its last newline (a warning is logged; the torn take's files become
    orphans that :func:`check_dataset` reports), so the next append never lands on a torn line.

    Thread-safety: a writer may be shared by threads (appends are serialised); several writers (threads or
    processes) may write to one dataset at the same time.

    Args:
        root: dataset folder.
        session: session id stored in every record; a new ``S-<UTC time>-<code>`` when None.
        min_free_mb: :meth:`write_take` refuses to start a take (:class:`DiskFullError`) when the free space of
            the file system is below this many MiB.

    Raises:
        CaptureStoreError: the folder, lock or manifest cannot be created or opened (DiskFullError when full).
    """

    def __init__(self, root: str | Path, session: str | None = None, min_free_mb: float = 200.0) -> None:
        self.root = Path(root)
        self.session = session or f"S-{_utc_stamp(ms=False)}-{_code(4)}"
        self.min_free_mb = float(min_free_mb)
        self.manifest = self.root / cf.MANIFEST
        self._lock: _Lock | None = None
        self._thread_lock = threading.Lock()  # flock does not exclude threads sharing one open file
        try:
            if not self.root.is_dir():
                self.root.mkdir(parents=True, exist_ok=True)
                jsonl.fsync_dir(self.root.parent)
            self._lock = _Lock(self.root)
            with self._lock.held():
                jsonl.prepare(self.manifest, _TORN_HINT)
        except OSError as exc:
            self.close()
            raise _store_error(exc, getattr(exc, "filename", None) or self.root, "opening the dataset") from exc
        log.info("capture dataset %s open (session %s)", self.root, self.session)

    def __enter__(self) -> DatasetWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Release the lock file. Further :meth:`write_take` calls raise :class:`CaptureStoreError`."""
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    def free_mb(self) -> float:
        """Free space on the dataset's file system for this user, MiB (``statvfs`` ``f_bavail``)."""
        st = os.statvfs(self.root)
        return st.f_bavail * st.f_frsize / _MiB

    def write_take(
        self,
        participant: str,
        face_png: bytes,
        audio: np.ndarray,
        sample_rate: int,
        *,
        frame_jpg: bytes | None = None,
        audio_format: str = "wav",
        meta: dict[str, Any] | None = None,
    ) -> TakeRecord:
        """Write one take durably and append it to the manifest; returns only once the take is kept.

        Files: ``<participant>/<take_id>.face.png``, ``.wav``/``.flac`` (16-bit PCM at ``sample_rate``),
        ``.frame.jpg`` (when ``frame_jpg`` is given) and ``.json`` (the record). Each is written to a temporary
        file in the same folder, flushed, fsynced and renamed; the folder is fsynced; the record goes last; then
        its manifest line is appended under the lock (one write on an ``O_APPEND`` descriptor, then fsync).

        The record (manifest line == ``.json`` content) holds ``format_version, take_id, participant, session,
        time, image, audio, [frame], audio_rate, audio_samples, audio_channels, sha256`` and ``meta``'s keys
        (``time`` defaults to now, UTC ISO 8601). numpy values in ``meta`` are converted; NaN/±inf become null.

        Args:
            participant: participant id (folder name), e.g. from :func:`new_participant_id`.
            face_png: the encoded PNG face crop (bytes).
            audio: float32 samples [n] or [n, channels] in [-1, 1].
            sample_rate: the device rate, Hz.
            frame_jpg: optional encoded JPEG of the whole camera frame.
            audio_format: ``"wav"`` or ``"flac"``.
            meta: JSON-serialisable capture metadata (consent scope, devices, detection box, levels ...);
                its keys may not be reserved record keys (:data:`~datastore.capture_format.RESERVED_KEYS`).

        Returns:
            The kept take's record.

        Raises:
            ValueError: bad arguments (nothing is written).
            DiskFullError: free space below ``min_free_mb`` (checked before writing) or ENOSPC/EDQUOT while
                writing; names the path. No file of the take is left (best effort), kept takes are untouched.
            CaptureStoreError: any other ``OSError`` (names the path), a busy lock, or the take's files vanished
                before the append (a concurrent deletion or repair); same clean-up.
        """
        if self._lock is None:
            raise CaptureStoreError(f"{self.root}: writer is closed", self.root)
        _check_participant(participant)
        if not isinstance(face_png, (bytes, bytearray)) or not bytes(face_png[:8]) == PNG_MAGIC:
            raise ValueError("face_png: expected the bytes of an encoded PNG image")
        if frame_jpg is not None and (
            not isinstance(frame_jpg, (bytes, bytearray)) or not bytes(frame_jpg[:3]) == JPEG_MAGIC
        ):
            raise ValueError("frame_jpg: expected the bytes of an encoded JPEG image, or None")
        meta = dict(meta or {})
        reserved = sorted(set(meta) & cf.RESERVED_KEYS)
        if reserved:
            raise ValueError(f"meta: key(s) {', '.join(reserved)} are reserved record keys")
        meta = _jsonable(meta, "")
        audio_bytes, n_samples, channels = encode_audio(audio, sample_rate, audio_format)

        try:
            free = self.free_mb()
        except OSError as exc:
            raise _store_error(exc, self.root, "checking free space") from exc
        if free < self.min_free_mb:
            err = DiskFullError(
                f"{self.root}: only {free:.0f} MiB free, below the {self.min_free_mb:.0f} MiB minimum; "
                "take not written (free some space; kept takes are intact)",
                self.root,
            )
            log.error("%s", err)
            raise err

        folder = self.root / participant
        take_id = new_take_id()
        while (folder / f"{take_id}{cf.SIDECAR_SUFFIX}").exists():  # pragma: no cover - 32**6 codes per ms
            take_id = new_take_id()
        ext = ".flac" if audio_format.lower() == "flac" else ".wav"
        files: list[tuple[str, bytes]] = [
            (f"{take_id}{cf.FACE_SUFFIX}", bytes(face_png)),
            (f"{take_id}{ext}", audio_bytes),
        ]
        if frame_jpg is not None:
            files.append((f"{take_id}{cf.FRAME_SUFFIX}", bytes(frame_jpg)))
        rel = {name: f"{participant}/{name}" for name, _ in files}
        record: dict[str, Any] = {
            "format_version": cf.FORMAT_VERSION,
            "take_id": take_id,
            "participant": participant,
            "session": self.session,
            "time": meta.pop("time", None) or _utc_iso(),
            "image": rel[files[0][0]],
            "audio": rel[files[1][0]],
        }
        if frame_jpg is not None:
            record["frame"] = rel[files[2][0]]
        record.update(
            audio_rate=int(sample_rate),
            audio_samples=n_samples,
            audio_channels=channels,
            sha256={rel[name]: hashlib.sha256(data).hexdigest() for name, data in files},
        )
        record.update(meta)
        line = json.dumps(record, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
        sidecar = folder / f"{take_id}{cf.SIDECAR_SUFFIX}"

        temps: list[Path] = []
        written: list[Path] = []
        current: Path = folder
        action = "creating the participant folder"
        try:
            if not folder.is_dir():
                folder.mkdir(exist_ok=True)
                jsonl.fsync_dir(self.root)
            for name, data in files + [(sidecar.name, (line + "\n").encode("utf-8"))]:
                current, action = folder / name, "writing"
                _write_durable(current, data, temps)
                written.append(current)
                if name == sidecar.name or len(written) == len(files):
                    current, action = folder, "syncing the folder"
                    jsonl.fsync_dir(folder)
            current, action = self.manifest, "appending to the manifest"
            with self._thread_lock, self._lock.held():
                for path in written:
                    if not path.is_file():
                        raise CaptureStoreError(
                            f"{path}: vanished before the take was kept (deleted or repaired meanwhile); take not kept",
                            path,
                        )
                _append_line(self.manifest, (line + "\n").encode("utf-8"))
        except OSError as exc:
            self._discard(temps, written, folder, line)
            raise _store_error(exc, current, action) from exc
        except BaseException:
            self._discard(temps, written, folder, line)
            raise
        log.debug("kept take %s", take_id)
        return cf.parse_record(line, f"{self.manifest}:{take_id}")

    def _discard(self, temps: list[Path], written: list[Path], folder: Path, line: str) -> None:
        """Remove the temporary and final files of a take that was not kept (best effort).

        If the take's manifest line did get into the manifest (an interrupt or error after the append's write),
        its final files are kept, so the manifest never points at a removed file.
        """
        if written and self._line_in_manifest(line):
            written = []
        for path in [*temps, *written]:
            with contextlib.suppress(OSError):
                path.unlink()
        with contextlib.suppress(OSError):
            jsonl.fsync_dir(folder)

    def _line_in_manifest(self, line: str) -> bool:
        """True when ``line`` is among the last 1 MiB of the manifest (True too when that cannot be read)."""
        try:
            with self.manifest.open("rb") as fh:
                fh.seek(max(0, fh.seek(0, os.SEEK_END) - _MiB))
                return (line + "\n").encode("utf-8") in fh.read()
        except FileNotFoundError:
            return False
        except OSError:
            return True


# ------------------------------------------------------------------------------------------------ check
@dataclass(frozen=True)
class Problem:
    """One finding of :func:`check_dataset`.

    Attributes:
        kind: one of the kind constants of this module (``orphan``, ``sha-mismatch``, ...).
        path: the path concerned, relative to the dataset (``manifest.jsonl:12`` for a line).
        detail: what is wrong, one line.
    """

    kind: str
    path: str
    detail: str


@dataclass
class CheckReport:
    """Result of :func:`check_dataset`.

    Attributes:
        root: the dataset folder.
        takes: records (valid manifest lines) found; ``ok_takes`` of them passed every check.
        participants: distinct participants among the records.
        problems: findings (before any repair).
        repaired: True when a repair ran; ``actions`` then says what it did, one line each, and ``quarantine``
            names the folder it moved things into (None if nothing was moved).
    """

    root: str
    takes: int = 0
    ok_takes: int = 0
    participants: int = 0
    problems: list[Problem] = field(default_factory=list)
    repaired: bool = False
    actions: list[str] = field(default_factory=list)
    quarantine: str | None = None

    @property
    def ok(self) -> bool:
        """True when nothing was found."""
        return not self.problems

    def counts(self) -> dict[str, int]:
        """Number of problems per kind."""
        return dict(Counter(p.kind for p in self.problems))

    def to_dict(self) -> dict[str, Any]:
        """The report as JSON-serialisable data (``ok`` and ``counts`` included)."""
        data = dataclasses.asdict(self)
        data.update(ok=self.ok, counts=self.counts())
        return data

    def to_json(self) -> str:
        """The report as a JSON document (see :meth:`to_dict`)."""
        return json.dumps(self.to_dict(), indent=2, ensure_ascii=False)


@dataclass
class _Scan:
    report: CheckReport
    lines: list[tuple[bytes, bool]] = field(default_factory=list)
    drop: dict[int, str] = field(default_factory=dict)  # manifest line index -> why it is dropped on repair
    newline_fix: bool = False
    move: list[str] = field(default_factory=list)  # relative paths to move into quarantine
    sidecars: dict[str, bytes] = field(default_factory=dict)  # relative sidecar path -> content to rewrite
    temps: list[str] = field(default_factory=list)
    markers: list[str] = field(default_factory=list)
    log_lines: list[tuple[bytes, bool]] = field(default_factory=list)
    log_drop: set[int] = field(default_factory=set)


def _safe_rel(path: object, participant: str) -> bool:
    """True for ``<participant>/<name>`` with a plain, non-hidden file name."""
    if not isinstance(path, str):
        return False
    head, sep, name = path.partition("/")
    return (
        sep == "/"
        and head == participant
        and bool(name)
        and "/" not in name
        and "\\" not in name
        and not name.startswith(".")
        and name not in (".", "..")
    )


def _decode_check(kind: str, data: bytes, record: TakeRecord) -> str | None:
    """Why ``data`` does not decode as an image / the record's audio, or None when it does."""
    if kind == "image":
        import cv2

        img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
        return None if img is not None and img.size else "does not decode as an image"
    import soundfile as sf

    try:
        samples, rate = sf.read(io.BytesIO(data), dtype="int16", always_2d=True)
    except Exception as exc:  # noqa: BLE001 - libsndfile raises several types for corrupt data
        return f"does not decode as audio ({exc})"
    if samples.shape[0] == 0:
        return "no audio samples"
    expected = {
        "audio_rate": int(rate),
        "audio_samples": int(samples.shape[0]),
        "audio_channels": int(samples.shape[1]),
    }
    for key, got in expected.items():
        want = record.extra.get(key)
        if want is not None and want != got:
            return f"decodes with {key}={got}, the record says {want}"
    return None


def _scan(root: Path) -> _Scan:
    """Everything :func:`check_dataset` reports, plus what a repair would act on. Reads only."""
    scan = _Scan(CheckReport(root=str(root)))
    rep = scan.report
    problems = rep.problems
    manifest = root / cf.MANIFEST
    scan.lines = _split_lines(_read_bytes(manifest))
    referenced: set[str] = set()
    seen: dict[str, int] = {}
    participants: set[str] = set()

    for index, (raw, had_newline) in enumerate(scan.lines):
        where = f"{cf.MANIFEST}:{index + 1}"
        if not raw.strip():
            continue
        try:
            text = raw.decode("utf-8")
            record = cf.parse_record(text, where)
            data = json.loads(text)
        except (UnicodeDecodeError, ValueError) as exc:
            detail = "not UTF-8" if isinstance(exc, UnicodeDecodeError) else str(exc).removeprefix(f"{where}: ")
            if not had_newline:
                detail += " (torn last line: a crash during an append)"
            problems.append(Problem(INVALID_LINE, where, detail))
            scan.drop[index] = "invalid"
            continue
        if not had_newline:
            problems.append(Problem(NO_FINAL_NEWLINE, where, "last line is a whole record but has no newline"))
            scan.newline_fix = True
        files = cf.record_files(record)
        pid = record.participant
        if (
            not cf.PARTICIPANT_RE.match(pid)
            or not cf.TAKE_ID_RE.match(record.take_id)
            or not all(_safe_rel(f, pid) for f in files)
            or ("frame" in record.extra and not isinstance(record.extra["frame"], str))
        ):
            problems.append(
                Problem(BAD_RECORD, where, f"take {record.take_id!r}: unsafe or inconsistent participant/paths")
            )
            scan.drop[index] = "bad-record"
            continue
        sidecar = cf.sidecar_path(record)
        referenced.update(files)
        referenced.add(sidecar)
        if record.take_id in seen:
            problems.append(
                Problem(DUPLICATE_TAKE, where, f"take {record.take_id} already on line {seen[record.take_id] + 1}")
            )
            scan.drop[index] = "duplicate"
            continue
        seen[record.take_id] = index
        rep.takes += 1
        participants.add(pid)

        found: list[Problem] = []
        for rel in files:
            path = root / rel
            try:
                content = path.read_bytes()
            except FileNotFoundError:
                found.append(Problem(MISSING_FILE, rel, f"take {record.take_id}: file missing"))
                continue
            except OSError as exc:
                found.append(Problem(MISSING_FILE, rel, f"take {record.take_id}: unreadable ({exc.strerror})"))
                continue
            digest = record.sha256.get(rel)
            if not digest:
                found.append(Problem(NO_CHECKSUM, rel, f"take {record.take_id}: no sha256 in the record"))
            elif hashlib.sha256(content).hexdigest() != digest:
                found.append(Problem(SHA_MISMATCH, rel, f"take {record.take_id}: content differs from its sha256"))
                continue
            why = _decode_check("audio" if rel == record.audio else "image", content, record)
            if why:
                found.append(Problem(BAD_AUDIO if rel == record.audio else BAD_IMAGE, rel, why))
        sidecar_path = root / sidecar
        try:
            side = json.loads(sidecar_path.read_bytes().decode("utf-8"))
            if side != data:
                found.append(Problem(SIDECAR_MISMATCH, sidecar, "differs from the manifest record"))
        except FileNotFoundError:
            found.append(Problem(MISSING_SIDECAR, sidecar, f"take {record.take_id}: record file missing"))
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            found.append(Problem(SIDECAR_MISMATCH, sidecar, f"unreadable ({exc})"))
        problems.extend(found)
        kinds = {p.kind for p in found}
        if kinds & DAMAGE_KINDS:
            scan.drop[index] = "damaged"
            scan.move.extend(r for r in [*files, sidecar] if (root / r).exists())
        elif kinds & {MISSING_SIDECAR, SIDECAR_MISMATCH}:
            scan.sidecars[sidecar] = raw + b"\n"
        if not found:
            rep.ok_takes += 1
    rep.participants = len(participants)

    for entry in sorted(os.scandir(root), key=lambda e: e.name):
        name = entry.name
        if name in (cf.MANIFEST, cf.DELETIONS, cf.LOCK) or name == cf.QUARANTINE:
            continue
        if name.startswith(cf.DELETING_PREFIX):
            scan.markers.append(name)
            problems.append(Problem(INCOMPLETE_DELETION, name, "a participant deletion was interrupted"))
        elif name.startswith(cf.TEMP_PREFIX):
            scan.temps.append(name)
            problems.append(Problem(TEMP_DEBRIS, name, "temporary file of an interrupted write"))
        elif name.startswith("."):
            continue  # hidden files (.DS_Store, .git ...) are not the dataset's
        elif entry.is_dir(follow_symlinks=False):
            for sub in sorted(os.scandir(entry.path), key=lambda e: e.name):
                rel = f"{name}/{sub.name}"
                if sub.name.startswith(cf.TEMP_PREFIX):
                    scan.temps.append(rel)
                    problems.append(Problem(TEMP_DEBRIS, rel, "temporary file of an interrupted write"))
                elif rel not in referenced:
                    scan.move.append(rel)
                    problems.append(Problem(ORPHAN, rel, "not referenced by any manifest record"))
        else:
            scan.move.append(name)
            problems.append(Problem(ORPHAN, name, "not part of a capture dataset"))

    scan.log_lines = _split_lines(_read_bytes(root / cf.DELETIONS))
    for index, (raw, had_newline) in enumerate(scan.log_lines):
        if raw.strip() and not (had_newline and jsonl.is_json_object(raw)):
            scan.log_drop.add(index)
            problems.append(Problem(INVALID_LOG_LINE, f"{cf.DELETIONS}:{index + 1}", "not a JSON object (torn?)"))
    return scan


def _open_dataset(root: str | Path) -> Path:
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"{root}: dataset folder not found")
    if not (root / cf.MANIFEST).is_file():
        raise UserError(f"{root}: not a capture dataset (no {cf.MANIFEST})")
    return root


def check_dataset(root: str | Path, repair: bool = False) -> CheckReport:
    """Verify a capture dataset: every manifest line, record, file, checksum and decode; orphans and debris.

    Checks: each manifest line parses (torn or invalid lines are reported with ``manifest.jsonl:N``); a record's
    ids and paths are safe; take ids are unique; each file exists and matches its sha256; images decode (OpenCV)
    and audio decodes (soundfile) with the rate/length/channels of the record; the ``.json`` sidecar equals the
    manifest line; files no record references are orphans; ``.tmp-*`` files are debris; a ``.deleting-*`` marker
    is an incomplete deletion; ``deletions.jsonl`` lines are JSON objects.

    Without ``repair`` nothing is changed (not even a lock file is created); the manifest is read under a shared
    lock when ``.lock`` exists. A capture writing at the same time may show up as transient orphans/debris.

    With ``repair``, under the exclusive lock: incomplete deletions are finished; temporary debris is removed;
    damaged takes (missing file, checksum mismatch, undecodable) and orphans are moved into
    ``_quarantine/<UTC time>/`` (relative paths kept), together with every manifest/log line dropped
    (``manifest-removed.jsonl``, ``deletions-removed.jsonl``); the manifest is rewritten atomically without the
    damaged, invalid and duplicate lines; sidecars that differ from their manifest line are rewritten from it.
    Whole takes are never deleted. ``no-checksum`` findings are left alone.

    Args:
        root: dataset folder.
        repair: fix what can be fixed (see above).

    Returns:
        The report. ``problems`` lists the findings before the repair; ``actions`` what the repair did.

    Raises:
        UserError: the folder or its manifest does not exist.
        CaptureStoreError: the lock is busy, or a repair step failed (the dataset stays consistent).
    """
    root = _open_dataset(root)
    if not repair:
        lock = None
        if (root / cf.LOCK).is_file():
            try:
                lock = _Lock(root, create=False)
            except OSError as exc:  # e.g. a read-only copy owned by someone else: check without the lock
                log.debug("%s: not locking (%s)", root / cf.LOCK, exc)
        try:
            if lock is None:
                return _scan(root).report
            with lock.held(shared=True):
                return _scan(root).report
        finally:
            if lock is not None:
                lock.close()
    lock = _Lock(root)
    try:
        with lock.held():
            first = _scan(root)
            report = first.report
            for marker in first.markers:
                try:
                    report.actions.append(_finish_deletion(root, root / marker))
                except CaptureStoreError as exc:
                    report.actions.append(f"could not finish the deletion of {marker}: {exc}")
            scan = _scan(root) if first.markers else first
            try:
                _repair(root, scan, report)
            except OSError as exc:
                raise _store_error(exc, getattr(exc, "filename", None) or root, "repairing") from exc
            report.repaired = True
            return report
    finally:
        lock.close()


def _repair(root: Path, scan: _Scan, report: CheckReport) -> None:
    """Act on a fresh ``scan`` (exclusive lock held); see :func:`check_dataset`."""
    for rel in scan.temps:
        with contextlib.suppress(FileNotFoundError):
            (root / rel).unlink()
        report.actions.append(f"removed temporary file {rel}")
    if scan.temps:
        for folder in {(root / rel).parent for rel in scan.temps}:
            jsonl.fsync_dir(folder)

    qdir: Path | None = None

    def quarantine() -> Path:
        nonlocal qdir
        if qdir is None:
            base = root / cf.QUARANTINE
            if not base.is_dir():
                base.mkdir()
                jsonl.fsync_dir(root)
            stamp = _utc_stamp(ms=False)
            qdir = base / stamp
            k = 1
            while qdir.exists():
                k += 1
                qdir = base / f"{stamp}-{k}"
            qdir.mkdir()
            jsonl.fsync_dir(base)
            report.quarantine = str(qdir)
        return qdir

    if scan.drop or scan.newline_fix:
        if scan.drop:
            removed = b"".join(scan.lines[i][0] + b"\n" for i in sorted(scan.drop))
            _rewrite(quarantine() / "manifest-removed.jsonl", removed)
        kept = b"".join(raw + b"\n" for i, (raw, _) in enumerate(scan.lines) if i not in scan.drop and raw.strip())
        _rewrite(root / cf.MANIFEST, kept)
        for why, n in sorted(Counter(scan.drop.values()).items()):
            report.actions.append(f"removed {n} {why} manifest line(s) (kept in manifest-removed.jsonl)")
        if scan.newline_fix:
            report.actions.append("added the missing newline at the end of the manifest")

    if scan.log_drop:
        removed = b"".join(scan.log_lines[i][0] + b"\n" for i in sorted(scan.log_drop))
        _rewrite(quarantine() / "deletions-removed.jsonl", removed)
        kept = b"".join(raw + b"\n" for i, (raw, _) in enumerate(scan.log_lines) if i not in scan.log_drop)
        _rewrite(root / cf.DELETIONS, kept)
        report.actions.append(f"removed {len(scan.log_drop)} invalid deletion log line(s)")

    touched: set[Path] = set()
    for rel in dict.fromkeys(scan.move):
        src = root / rel
        if not src.exists() and not src.is_symlink():
            continue
        dest = quarantine() / rel
        if not dest.parent.is_dir():
            dest.parent.mkdir(parents=True)
            touched.add(dest.parent.parent)
        os.replace(src, dest)
        touched.update((src.parent, dest.parent))
        report.actions.append(f"moved {rel} to quarantine")
    for folder in touched:
        jsonl.fsync_dir(folder)

    for rel, content in scan.sidecars.items():
        _rewrite(root / rel, content)
        report.actions.append(f"rewrote {rel} from its manifest line")


# ------------------------------------------------------------------------------------------------ deletion
def _participant_lines(lines: list[tuple[bytes, bool]], participant: str) -> set[int]:
    """Indexes of the lines that belong to ``participant``: its records, and unparseable lines naming it."""
    out: set[int] = set()
    needle = participant.encode("utf-8")
    for i, (raw, _) in enumerate(lines):
        try:
            data = json.loads(raw.decode("utf-8"))
            if isinstance(data, dict) and data.get("participant") == participant:
                out.add(i)
        except (UnicodeDecodeError, ValueError):
            if needle in raw:
                out.add(i)
    return out


def _participant_dirs(root: Path, participant: str) -> list[Path]:
    """The participant's folder and its quarantined folders, those that exist."""
    dirs = [root / participant]
    qbase = root / cf.QUARANTINE
    if qbase.is_dir():
        dirs.extend(q / participant for q in sorted(qbase.iterdir()) if q.is_dir())
    return [d for d in dirs if d.exists() or d.is_symlink()]


def _finish_deletion(root: Path, marker: Path) -> str:
    """Carry out (or finish) the deletion described by ``marker``; exclusive lock held. Returns one line.

    Idempotent: manifest lines already gone, folders already removed and a log entry already written are fine.

    Raises:
        CaptureStoreError: the marker is unreadable, or a step failed (the marker then stays for a later try).
    """
    try:
        info = json.loads(marker.read_bytes().decode("utf-8"))
        participant = _check_participant(info["participant"])
        deletion_id = str(info["deletion_id"])
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as exc:
        raise CaptureStoreError(f"{marker}: unreadable deletion marker ({exc}); remove it by hand", marker) from exc
    try:
        manifest = root / cf.MANIFEST
        lines = _split_lines(_read_bytes(manifest))
        drop = _participant_lines(lines, participant)
        if drop:
            _rewrite(
                manifest, b"".join(raw + (b"\n" if nl else b"") for i, (raw, nl) in enumerate(lines) if i not in drop)
            )
        for folder in _participant_dirs(root, participant):
            if folder.is_dir() and not folder.is_symlink():
                shutil.rmtree(folder)
            else:
                folder.unlink()
            jsonl.fsync_dir(folder.parent)
        qbase = root / cf.QUARANTINE
        for removed in sorted(qbase.glob("*/manifest-removed.jsonl")) if qbase.is_dir() else []:
            qlines = _split_lines(removed.read_bytes())
            qdrop = _participant_lines(qlines, participant)
            if len(qdrop) == len(qlines):
                removed.unlink()
                jsonl.fsync_dir(removed.parent)
            elif qdrop:
                _rewrite(removed, b"".join(raw + b"\n" for i, (raw, _) in enumerate(qlines) if i not in qdrop))
        log_path = root / cf.DELETIONS
        logged = any(
            jsonl.is_json_object(raw) and json.loads(raw).get("deletion_id") == deletion_id
            for raw, _ in _split_lines(_read_bytes(log_path))
        )
        if not logged:
            entry = {
                "time": info.get("time") or _utc_iso(),
                "deletion_id": deletion_id,
                "takes": int(info.get("takes", 0)),
                "files": int(info.get("files", 0)),
            }
            _append_line(log_path, (json.dumps(entry) + "\n").encode("utf-8"))
        marker.unlink()
        jsonl.fsync_dir(root)
    except OSError as exc:
        raise _store_error(exc, getattr(exc, "filename", None) or root, "deleting a participant") from exc
    return f"finished deletion {deletion_id}: {info.get('takes', 0)} take(s), {info.get('files', 0)} file(s)"


def delete_participant(root: str | Path, participant: str) -> dict[str, Any]:
    """Delete every take of one participant and their manifest lines, and log the deletion without the id.

    Under the exclusive lock: first any interrupted deletion is finished; then a pending marker
    ``.deleting-<deletion_id>.json`` (holding the participant id) is made durable, the manifest is rewritten
    atomically without the participant's lines, the participant's folder (and its copies under ``_quarantine/``)
    is removed, ``{time, deletion_id, takes, files}`` is appended to ``deletions.jsonl`` and the marker removed.
    A capture writer running meanwhile keeps all its takes (it appends under the same lock, re-opening the
    manifest each time).

    Args:
        root: dataset folder.
        participant: the participant id (withdrawal code), e.g. ``"P-7K3M9Q"``.

    Returns:
        ``{"takes": manifest records removed, "files": files removed, "deletion_id": "D-...", "caches": decoded-pairs
        caches of the training loader that held this participant's takes and were removed}``.

    Raises:
        UserError: no dataset there, an id that is not a participant id (path separators ...), or an id unknown
            to this dataset (nothing is changed then).
        CaptureStoreError: the lock is busy or a file operation failed; a marker left behind is finished by the
            next ``delete`` or ``check --repair``.
    """
    root = _open_dataset(root)
    if not isinstance(participant, str) or "/" in participant or "\\" in participant or os.sep in participant:
        raise UserError(f"participant id {participant!r}: must not contain path separators")
    try:
        _check_participant(participant)
    except ValueError as exc:
        raise UserError(str(exc)) from exc
    lock = _Lock(root)
    try:
        with lock.held():
            for marker in sorted(root.glob(f"{cf.DELETING_PREFIX}*")):
                log.warning("%s", _finish_deletion(root, marker))
            lines = _split_lines(_read_bytes(root / cf.MANIFEST))
            drop = _participant_lines(lines, participant)
            dirs = _participant_dirs(root, participant)
            if not drop and not dirs:
                raise UserError(f"{root}: no participant {participant!r} in this dataset; nothing deleted")
            files = sum(len(fs) for d in dirs for _, _, fs in os.walk(d)) + sum(1 for d in dirs if d.is_symlink())
            deletion_id = f"D-{_utc_stamp(ms=False)}-{_code(6)}"
            marker = root / f"{cf.DELETING_PREFIX}{deletion_id}.json"
            info = {
                "deletion_id": deletion_id,
                "participant": participant,
                "time": _utc_iso(),
                "takes": len(drop),
                "files": files,
            }
            try:
                _rewrite(marker, (json.dumps(info) + "\n").encode("utf-8"))
            except OSError as exc:
                raise _store_error(exc, marker, "writing the deletion marker") from exc
            _finish_deletion(root, marker)
    finally:
        lock.close()
    caches = purge_caches(root / participant)  # decoded copies in the training cache go too
    log.info(
        "deletion %s: %d take(s), %d file(s), %d training cache(s) removed", deletion_id, len(drop), files, len(caches)
    )
    return {"takes": len(drop), "files": files, "deletion_id": deletion_id, "caches": len(caches)}


# ------------------------------------------------------------------------------------------------ CLI
def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``run.py dataset``."""
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    check = sub.add_parser(
        "check",
        help="verify every record, file and checksum; report orphans and damage (changes nothing)",
        description="Verify a capture dataset. Exit code 0: clean; 1: problems found (or repaired).",
    )
    check.add_argument("dataset", type=Path, metavar="DATASET_DIR", help="capture dataset folder")
    check.add_argument(
        "--repair",
        action="store_true",
        help="move damaged takes and orphans into _quarantine/<time>/, remove temporary debris, "
        "finish interrupted deletions (never deletes a whole take)",
    )
    check.add_argument("--json", type=Path, metavar="OUT.json", help="also write the full report as JSON")
    delete = sub.add_parser(
        "delete",
        help="delete all takes of one participant (withdrawal); logs the deletion without the id",
        description="Delete all takes of one participant and their manifest lines in one step.",
    )
    delete.add_argument("dataset", type=Path, metavar="DATASET_DIR", help="capture dataset folder")
    delete.add_argument("--participant", required=True, metavar="ID", help="participant id (withdrawal code)")


def format_report(report: CheckReport, limit: int = 10) -> str:
    """A short human-readable summary: totals, problems per kind, the first ``limit`` problems, repair actions."""
    out = [
        f"dataset {report.root}: {report.takes} take(s) ({report.ok_takes} ok), {report.participants} participant(s)"
    ]
    if report.ok:
        out.append("no problems found")
    else:
        out.append(f"{len(report.problems)} problem(s):")
        out.extend(f"  {kind:<20} {n:>6}" for kind, n in sorted(report.counts().items()))
        out.append("first problems:")
        out.extend(f"  {p.kind:<20} {p.path}: {p.detail}" for p in report.problems[:limit])
        if len(report.problems) > limit:
            out.append(f"  ... and {len(report.problems) - limit} more (--json for all)")
    if report.repaired:
        moved = sum(a.startswith("moved ") for a in report.actions)
        where = f"; quarantine folder {report.quarantine}" if report.quarantine else ""
        out.append(f"repair: {len(report.actions)} action(s), {moved} path(s) moved{where}")
        out.extend(f"  {a}" for a in report.actions[:limit] if not a.startswith("moved "))
        if not report.actions:
            out.append("  nothing to do")
    return "\n".join(out)


def main(args: argparse.Namespace) -> int:
    """Run ``run.py dataset check|delete``. Returns 0 (clean / deleted), 1 (problems found or repaired).

    Raises:
        UserError: a missing dataset, an unknown or invalid participant id, a busy lock (run.py exits 2).
    """
    try:
        if args.action == "delete":
            result = delete_participant(args.dataset, args.participant)
            print(
                f"deleted participant {args.participant}: {result['takes']} take(s), {result['files']} file(s), "
                f"{result['caches']} training cache file(s); "
                f"deletion {result['deletion_id']} logged in {Path(args.dataset) / cf.DELETIONS}"
            )
            return 0
        report = check_dataset(args.dataset, repair=args.repair)
    except CaptureStoreError as exc:
        raise UserError(str(exc)) from exc
    print(format_report(report))
    if args.json:
        try:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(report.to_json() + "\n", encoding="utf-8")
        except OSError as exc:
            raise UserError(f"{args.json}: cannot write the report ({exc.strerror})") from exc
        print(f"report written to {args.json}")
    return 0 if report.ok else 1
