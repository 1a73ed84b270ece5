"""The AVGAN capture dataset layout — the one module the capture job and the loader agree on.

Layout of a capture dataset folder::

    DATASET/
      manifest.jsonl            one JSON record per kept take, appended after its files are durable
      deletions.jsonl           deletion log: {time, deletion_id, takes, files}; no participant id
      .lock                     flock(2) file serialising writers (manifest appends, delete, repair)
      .deleting-<id>.json       pending-deletion marker (participant id inside) while a deletion runs
      <participant_id>/
        <take_id>.face.png      square face crop (320×320 by default)
        <take_id>.wav|.flac     the sound (16-bit PCM, device rate)
        <take_id>.frame.jpg     optional: the whole camera frame
        <take_id>.json          the take record (same content as its manifest line)
      _quarantine/<UTC time>/   where ``run.py dataset check --repair`` moves damaged takes and orphans
      .tmp-*                    temporary files of a write in progress (debris after a crash)

Identities are participants. A record has at least the keys of :class:`TakeRecord`; records written by
:mod:`datastore.capture_store` also carry the keys of :data:`RESERVED_KEYS` (``frame`` only when a
frame was kept) and the capture's metadata (time, consent, devices, detection, levels) as top-level keys.
``sha256`` maps every file of the take but the ``.json`` sidecar (path relative to the dataset) to its
hex digest. Paths in records are POSIX, relative to the dataset folder, inside ``<participant>/``.

Participant ids are pseudonymous codes such as ``P-7K3M9Q`` (see :data:`PARTICIPANT_RE`); take ids
are sortable (UTC time first) and unique, e.g. ``20250601T142233123Z-7K3M``.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MANIFEST = "manifest.jsonl"
DELETIONS = "deletions.jsonl"
LOCK = ".lock"
QUARANTINE = "_quarantine"
TEMP_PREFIX = ".tmp-"
DELETING_PREFIX = ".deleting-"
FORMAT_VERSION = 1
#: suffixes of a take's files after ``<take_id>``
FACE_SUFFIX = ".face.png"
FRAME_SUFFIX = ".frame.jpg"
SIDECAR_SUFFIX = ".json"
AUDIO_SUFFIXES = (".wav", ".flac")
#: record keys set by the writer; capture metadata may not use them
RESERVED_KEYS = frozenset(
    {
        "format_version",
        "take_id",
        "participant",
        "session",
        "image",
        "audio",
        "frame",
        "audio_rate",
        "audio_samples",
        "audio_channels",
        "sha256",
    }
)
#: a participant id (and folder name): starts with a letter or digit; letters, digits, ``-`` and ``_``; ≤ 64 chars
PARTICIPANT_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
#: a take id (file-name stem): same alphabet, ≤ 80 chars
TAKE_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,79}$")
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TakeRecord:
    """One kept take. Paths are relative to the dataset folder; ``sha256`` maps file name → hex digest."""

    take_id: str
    participant: str
    image: str
    audio: str
    sha256: dict[str, str] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)


def parse_record(line: str, where: str) -> TakeRecord:
    """Parse one manifest line.

    Raises:
        ValueError: not JSON or a required key (take_id, participant, image, audio) is missing;
            the message names ``where`` (file:line).
    """
    try:
        data = json.loads(line)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{where}: not valid JSON ({exc.msg})") from exc
    if not isinstance(data, dict):
        raise ValueError(f"{where}: expected a JSON object")
    missing = [k for k in ("take_id", "participant", "image", "audio") if not isinstance(data.get(k), str)]
    if missing:
        raise ValueError(f"{where}: missing or non-string key '{missing[0]}'")
    known = {"take_id", "participant", "image", "audio", "sha256"}
    return TakeRecord(
        take_id=data["take_id"],
        participant=data["participant"],
        image=data["image"],
        audio=data["audio"],
        sha256=dict(data.get("sha256") or {}),
        extra={k: v for k, v in data.items() if k not in known},
    )


def read_manifest(folder: str | Path) -> tuple[list[TakeRecord], list[str]]:
    """Read ``folder/manifest.jsonl``.

    Returns:
        (records, problems): valid records and one message per skipped line (a torn last line after
        a crash is expected and skipped). Never raises for bad lines.

    Raises:
        FileNotFoundError: there is no manifest.
    """
    path = Path(folder) / MANIFEST
    records: list[TakeRecord] = []
    problems: list[str] = []
    with path.open("r", encoding="utf-8", errors="replace") as fh:
        for number, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                records.append(parse_record(line, f"{path}:{number}"))
            except ValueError as exc:
                problems.append(str(exc))
    return records, problems


def sidecar_path(record: TakeRecord) -> str:
    """Relative path of a record's JSON sidecar: ``<participant>/<take_id>.json``."""
    return f"{record.participant}/{record.take_id}{SIDECAR_SUFFIX}"


def record_files(record: TakeRecord) -> list[str]:
    """Relative paths of a record's data files: image, audio and (when present) the full frame."""
    files = [record.image, record.audio]
    frame = record.extra.get("frame")
    if isinstance(frame, str) and frame:
        files.append(frame)
    return files


def is_capture_dataset(folder: str | Path) -> bool:
    """True when ``folder`` holds a capture manifest."""
    return (Path(folder) / MANIFEST).is_file()
