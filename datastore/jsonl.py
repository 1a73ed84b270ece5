"""The one durable JSON Lines appender: capture manifests and deletion logs (:mod:`datastore.capture_store`) and
the rating station's ratings file (:mod:`installation.rate`).

A JSON Lines file here only grows by whole lines, and a crash (``SIGKILL``, power cut) can at worst leave its
last line torn. Rules:

* **append** (:func:`append_line`): open the file ``O_APPEND``, repair its tail (below), write the whole line
  (one ``os.write`` for a regular file; :func:`write_all` continues a short write), ``fsync``; if the write or
  the sync fails the file is truncated back to its size before the append (best effort) and the ``OSError``
  raised. ``O_APPEND`` makes concurrent appenders land one after another, never inside each other's lines;
  writers that also *rewrite* the file (the capture store's delete and repair replace the manifest) hold an
  exclusive ``flock`` around their appends and rewrites (``capture_store._Lock`` of ``DATASET/.lock``); the
  ratings file has a single writer and takes no lock.
* **torn last line** (:func:`repair_tail`, before every append and when a file is opened with :func:`prepare`):
  a last line without its ``"\\n"`` that is a whole JSON object only lost its newline, which is appended; any
  other fragment is a line torn by a crash and is truncated away (a warning names the file and the bytes cut).
  Readers skip a torn line anyway; the repair keeps the next line from being glued onto it.
* **new files** (:func:`prepare`): created, ``fsync``-ed, then their folder ``fsync``-ed (:func:`fsync_dir`), so
  the file itself survives a crash.

:func:`fsync_dir`'s error policy is the same for every caller: it raises. A durability step that failed is never
reported as done; the caller decides (the capture store fails the take, the rating station refuses to start,
cleanup code after an earlier failure suppresses it).
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)


def fsync_dir(folder: str | os.PathLike[str]) -> None:
    """``fsync`` a folder, making the creations, renames and removals of entries in it durable.

    One ``fsync`` covers every change to the folder's entries made before it.

    Raises:
        OSError: the folder cannot be opened or synced (including a file system that cannot sync folders:
            ``EINVAL``). Never swallowed here (see the module docstring).
    """
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_all(fd: int, data: bytes) -> None:
    """Write all of ``data`` to ``fd`` (one ``os.write`` for a regular file unless interrupted or out of space).

    Raises:
        OSError: the write failed (``ENOSPC`` when the disk is full); part of ``data`` may have been written.
    """
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        if n <= 0:  # pragma: no cover - os.write raises rather than returning 0 for regular files
            raise OSError(errno.EIO, "short write")
        view = view[n:]


def is_json_object(data: bytes) -> bool:
    """Whether ``data`` (one line, without its newline) is UTF-8 JSON holding an object (a whole record)."""
    try:
        return isinstance(json.loads(data.decode("utf-8")), dict)
    except (UnicodeDecodeError, ValueError):
        return False


def repair_tail(fd: int, path: str | os.PathLike[str], hint: str = "") -> int:
    """Make the file behind ``fd`` (opened read-write) end with a newline; returns its size afterwards, bytes.

    A last line without ``"\\n"`` that is a whole JSON object only lost its newline, which is appended; anything
    else is a line torn by a crash and is truncated away, back to the last newline or to empty (logged as a
    warning naming ``path`` and the bytes cut, followed by ``hint``, e.g. what the torn line leaves behind).
    Both changes are ``fsync``-ed.

    Raises:
        OSError: the file cannot be read, truncated, written or synced.
    """
    size = os.fstat(fd).st_size
    if size == 0 or os.pread(fd, 1, size - 1) == b"\n":
        return size
    start = size
    cut = 0
    while start > 0:
        start = max(0, start - 65536)
        chunk = os.pread(fd, size - start, start)
        pos = chunk.rfind(b"\n")
        if pos >= 0:
            cut = start + pos + 1
            break
    fragment = os.pread(fd, size - cut, cut)
    if is_json_object(fragment):
        log.warning("%s: last line had no newline; appended one", path)
        os.lseek(fd, 0, os.SEEK_END)
        write_all(fd, b"\n")
        os.fsync(fd)
        return size + 1
    log.warning("%s: removed a torn last line (%d bytes, a crash during an append)%s", path, size - cut, hint)
    os.ftruncate(fd, cut)
    os.fsync(fd)
    return cut


def prepare(path: str | os.PathLike[str], hint: str = "") -> int:
    """Open (creating it when missing) the JSON Lines file ``path`` and repair its last line (:func:`repair_tail`).

    A new file is ``fsync``-ed and then its folder (:func:`fsync_dir`), so it survives a crash. The folder must
    exist. The caller holds the file's lock where it has one.

    Returns:
        Bytes cut from a torn last line (0: none, or only a missing newline was added).

    Raises:
        OSError: the file cannot be created, opened, repaired or synced, or its folder synced.
    """
    path = Path(path)
    existed = path.exists()
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        before = os.fstat(fd).st_size
        after = repair_tail(fd, path, hint)
        if not existed:
            os.fsync(fd)
    finally:
        os.close(fd)
    if not existed:
        fsync_dir(path.parent)
    return max(0, before - after)


def append_line(path: str | os.PathLike[str], line: bytes, hint: str = "") -> None:
    """Append one ``line`` (one JSON value ending in ``"\\n"``) to ``path`` durably (see the module docstring).

    The tail is repaired first (:func:`repair_tail`, ``hint`` for its warning), so the line is never glued onto
    a torn one. On failure the file is truncated back to its size before the append (best effort) and the
    ``OSError`` re-raised. The file is created when missing (without the folder ``fsync`` of :func:`prepare`).

    Raises:
        ValueError: ``line`` does not end with exactly one ``"\\n"``.
        OSError: opening, writing or syncing failed (``ENOSPC``: disk full).
    """
    if not line.endswith(b"\n") or b"\n" in line[:-1]:
        raise ValueError(f"{path}: a JSON Lines record must be one line ending in a newline")
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        size = repair_tail(fd, path, hint)
        try:
            write_all(fd, line)
            os.fsync(fd)
        except OSError:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, size)
                os.fsync(fd)
            raise
    finally:
        os.close(fd)
