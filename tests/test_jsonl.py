"""datastore.jsonl: the one durable JSON Lines appender (capture manifest, deletion log, ratings file)."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import pytest

from datastore import jsonl
from installation.rate import RateError, RatingsFile


def test_append_repairs_the_tail_first(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "x.jsonl"
    path.write_bytes(b'{"a": 1}\n{"b": 2')  # torn by a crash: cut
    jsonl.append_line(path, b'{"c": 3}\n', hint="; hint")
    assert path.read_bytes() == b'{"a": 1}\n{"c": 3}\n'
    assert "removed a torn last line (7 bytes, a crash during an append); hint" in caplog.text
    path.write_bytes(b'{"a": 1}\n{"b": 2}')  # a whole record that only lost its newline: kept
    jsonl.append_line(path, b'{"c": 3}\n')
    assert [json.loads(line) for line in path.read_bytes().splitlines()] == [{"a": 1}, {"b": 2}, {"c": 3}]
    with pytest.raises(ValueError, match="one line"):
        jsonl.append_line(path, b'{"d": 4}')


def test_a_failed_append_leaves_the_file_as_it_was(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "x.jsonl"
    jsonl.append_line(path, b'{"a": 1}\n')

    def full(fd: int, data: bytes) -> None:
        os.write(fd, data[:3])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(jsonl, "write_all", full)
    with pytest.raises(OSError, match="No space"):
        jsonl.append_line(path, b'{"b": 2}\n')
    assert path.read_bytes() == b'{"a": 1}\n'


def test_prepare_creates_and_reports_bytes_cut(tmp_path: Path) -> None:
    path = tmp_path / "new.jsonl"
    assert jsonl.prepare(path) == 0 and path.read_bytes() == b""
    path.write_bytes(b'{"a": 1}\n{"tor')
    assert jsonl.prepare(path) == 5 and path.read_bytes() == b'{"a": 1}\n'
    path.write_bytes(b'{"a": 1}')
    assert jsonl.prepare(path) == 0 and path.read_bytes() == b'{"a": 1}\n'


def test_fsync_dir_raises(tmp_path: Path) -> None:
    jsonl.fsync_dir(tmp_path)
    with pytest.raises(OSError):
        jsonl.fsync_dir(tmp_path / "missing")


def test_ratings_file_keeps_a_whole_last_rating_and_refuses_after_close(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    path.write_bytes(b'{"score": 4}')  # the newline was lost, the rating is whole
    ratings = RatingsFile(path)
    assert ratings.repaired == 0
    ratings.append({"score": 5})
    ratings.close()
    assert path.read_bytes() == b'{"score": 4}\n{"score": 5}\n'
    with pytest.raises(RateError, match="closed"):
        ratings.append({"score": 1})
