"""The AVGAN capture dataset layout — the one module the capture job and the loader agree on.

Layout of a capture dataset folder::

    DATASET/
      manifest.jsonl            one JSON record per kept take, appended after its files are durable
      <participant_id>/
        <take_id>.face.png      square face crop (320×320 by default)
        <take_id>.wav|.flac     the sound (16-bit, device rate)
        <take_id>.json          the take record (same content as its manifest line)

Identities are participants. A record has at least the keys of :class:`TakeRecord`.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MANIFEST = "manifest.jsonl"
FORMAT_VERSION = 1
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


def is_capture_dataset(folder: str | Path) -> bool:
    """True when ``folder`` holds a capture manifest."""
    return (Path(folder) / MANIFEST).is_file()
