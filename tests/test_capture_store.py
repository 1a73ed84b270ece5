"""Capture dataset store: crash-safe writer, check/repair, participant deletion, disk full, SIGKILL crash test, CLI."""

from __future__ import annotations

import errno
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import soundfile as sf

import run
from datastore import capture_format as cf
from datastore import capture_store as cs
from datastore import jsonl
from datastore.capture_store import (
    CaptureStoreError,
    DatasetWriter,
    DiskFullError,
    check_dataset,
    delete_participant,
    new_participant_id,
)
from engine.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
HELPER = Path(__file__).with_name("capture_crash_helper.py")


def _png(seed: int = 0, size: int = 32) -> bytes:
    img = np.random.default_rng(seed).integers(0, 255, (size, size, 3), dtype=np.uint8)
    return cv2.imencode(".png", img)[1].tobytes()


def _jpg(seed: int = 0) -> bytes:
    img = np.random.default_rng(seed).integers(0, 255, (24, 40, 3), dtype=np.uint8)
    return cv2.imencode(".jpg", img)[1].tobytes()


def _audio(seed: int = 0, n: int = 4800, channels: int = 1) -> np.ndarray:
    a = np.random.default_rng(seed).uniform(-0.5, 0.5, (n, channels)).astype(np.float32)
    return a[:, 0] if channels == 1 else a


def _make(root: Path, participants: tuple[str, ...] = ("P-AAAAAA", "P-BBBBBB"), per: int = 2) -> list:
    records = []
    with DatasetWriter(root, session="S-test", min_free_mb=0) as w:
        for k, pid in enumerate(participants):
            for j in range(per):
                records.append(
                    w.write_take(
                        pid,
                        _png(10 * k + j),
                        _audio(10 * k + j),
                        48000,
                        frame_jpg=_jpg(j) if j == 0 else None,
                        audio_format="flac" if j % 2 else "wav",
                        meta={"consent": "research-training-v1", "detection": [1, 2, 3, 4]},
                    )
                )
    return records


def _tree(root: Path) -> dict[str, tuple[int, int]]:
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            st = p.lstat()
            out[str(p.relative_to(root))] = (st.st_size, st.st_mtime_ns)
    return out


def _kinds(report) -> set[str]:
    return {p.kind for p in report.problems}


# ------------------------------------------------------------------------------------------------ writer
def test_participant_id_format(tmp_path):
    ids = {new_participant_id() for _ in range(200)}
    assert len(ids) == 200
    for pid in ids:
        assert pid.startswith("P-") and len(pid) == 8 and cf.PARTICIPANT_RE.match(pid)
        assert not set(pid[2:]) & set("0O1I")
    (tmp_path / "P-XXXXXX").mkdir()
    assert new_participant_id(tmp_path) != "P-XXXXXX"


def test_write_take_round_trip(tmp_path):
    root = tmp_path / "ds"
    w = DatasetWriter(root, min_free_mb=0)
    assert w.session.startswith("S-") and (root / cf.MANIFEST).is_file() and w.free_mb() > 0
    stereo = _audio(1, n=2400, channels=2)
    rec = w.write_take(
        "P-AAAAAA",
        _png(1),
        stereo,
        44100,
        frame_jpg=_jpg(1),
        audio_format="flac",
        meta={"time": "2025-06-01T10:00:00Z", "levels": {"rms_dbfs": np.float32(-20.5), "peak": float("-inf")}},
    )
    rec2 = w.write_take("P-AAAAAA", _png(2), _audio(2), 48000)
    w.close()
    with pytest.raises(CaptureStoreError, match="closed"):
        w.write_take("P-AAAAAA", _png(2), _audio(2), 48000)

    assert rec.take_id < rec2.take_id  # sortable by time
    assert rec.image == f"P-AAAAAA/{rec.take_id}.face.png" and rec.audio.endswith(".flac")
    assert rec.extra["frame"] == f"P-AAAAAA/{rec.take_id}.frame.jpg"
    assert rec.extra["audio_rate"] == 44100 and rec.extra["audio_samples"] == 2400 and rec.extra["audio_channels"] == 2
    assert rec.extra["time"] == "2025-06-01T10:00:00Z" and rec.extra["session"] == w.session
    assert rec.extra["levels"] == {"rms_dbfs": -20.5, "peak": None}
    assert set(rec.sha256) == {rec.image, rec.audio, rec.extra["frame"]}
    lines = (root / cf.MANIFEST).read_text().splitlines()
    assert len(lines) == 2
    assert json.loads(lines[0]) == json.loads((root / "P-AAAAAA" / f"{rec.take_id}.json").read_text())
    data, rate = sf.read(root / rec.audio, dtype="float32")
    assert rate == 44100 and data.shape == (2400, 2) and sf.info(root / rec.audio).subtype == "PCM_16"
    assert np.abs(data - stereo).max() < 1e-4
    assert (root / rec.image).read_bytes() == _png(1)
    assert check_dataset(root).ok


def test_loader_reads_written_dataset(tmp_path):
    from training.data.dataset import discover_pairs, load_dataset

    root = tmp_path / "ds"
    _make(root, ("P-AAAAAA", "P-BBBBBB", "P-CCCCCC"), per=2)
    pairs = discover_pairs(root)
    assert len(pairs) == 6 and {p.identity for p in pairs} == {"P-AAAAAA", "P-BBBBBB", "P-CCCCCC"}
    ds = load_dataset([root], sample_rate=16000, image_size=16, use_cache=False, workers=1)
    assert ds.identities == ["P-AAAAAA", "P-BBBBBB", "P-CCCCCC"] and len(ds) == 6 and len(ds.audio[0]) == 1600


def test_write_take_rejects_bad_arguments(tmp_path):
    root = tmp_path / "ds"
    w = DatasetWriter(root, min_free_mb=0)
    bad = [
        dict(participant="../x"),
        dict(participant="a/b"),
        dict(face_png=b"not a png"),
        dict(frame_jpg=b"nope"),
        dict(audio=np.zeros(0, np.float32)),
        dict(audio=np.full(10, np.nan, np.float32)),
        dict(sample_rate=0),
        dict(audio_format="mp3"),
        dict(audio_format="flac", sample_rate=10_000_000),
        dict(meta={"take_id": "x"}),
        dict(meta={"sha256": {}}),
        dict(meta={"obj": object()}),
    ]
    base = dict(participant="P-AAAAAA", face_png=_png(), audio=_audio(), sample_rate=16000)
    for override in bad:
        kw = {**base, **override}
        args = [kw.pop("participant"), kw.pop("face_png"), kw.pop("audio"), kw.pop("sample_rate")]
        with pytest.raises(ValueError):
            w.write_take(*args, **kw)
    w.close()
    assert sorted(p.name for p in root.iterdir()) == [cf.LOCK, cf.MANIFEST]
    assert (root / cf.MANIFEST).read_bytes() == b""


def test_torn_manifest_tail_repaired_on_open(tmp_path, caplog):
    root = tmp_path / "ds"
    recs = _make(root, ("P-AAAAAA",), per=2)
    manifest = root / cf.MANIFEST
    whole = manifest.read_bytes()
    manifest.write_bytes(whole + b'{"take_id": "20250101T000000000Z-TORN", "partic')
    report = check_dataset(root)
    assert [p.kind for p in report.problems] == [cs.INVALID_LINE] and report.problems[0].path == "manifest.jsonl:3"
    assert "torn" in report.problems[0].detail and report.takes == 2
    with caplog.at_level("WARNING"):
        w = DatasetWriter(root, min_free_mb=0)
    assert "torn last line" in caplog.text
    assert manifest.read_bytes() == whole
    rec = w.write_take("P-AAAAAA", _png(5), _audio(5), 16000)
    w.close()
    ids = [json.loads(line)["take_id"] for line in manifest.read_text().splitlines()]
    assert ids == [recs[0].take_id, recs[1].take_id, rec.take_id]
    assert check_dataset(root).ok

    # a whole last record that only lost its newline gets the newline back instead
    manifest.write_bytes(manifest.read_bytes().rstrip(b"\n"))
    assert _kinds(check_dataset(root)) == {cs.NO_FINAL_NEWLINE}
    DatasetWriter(root, min_free_mb=0).close()
    assert manifest.read_bytes().endswith(b"}\n") and len(manifest.read_text().splitlines()) == 3
    assert check_dataset(root).ok


# ------------------------------------------------------------------------------------------------ check / repair
def _damage(root: Path, recs: list) -> dict[str, str]:
    """Damage a dataset of 3 participants × 2 takes in every way check must find; returns take_id -> damage."""
    a0, a1, b0, b1, c0, c1 = recs
    (root / a0.audio).write_bytes((root / a0.audio).read_bytes()[:-10] + b"\x00" * 10)  # sha mismatch
    (root / a1.image).unlink()  # missing file
    (root / "P-BBBBBB" / f"{b0.take_id}.json").unlink()  # missing sidecar (data intact)
    (root / "P-BBBBBB" / "20250101T000000000Z-ORPHAN.face.png").write_bytes(_png(9))  # orphan
    (root / "P-BBBBBB" / ".tmp-20250101T000000000Z-X.wav.abc123").write_bytes(b"RIFF")  # temp debris
    (root / ".tmp-manifest.jsonl.abc").write_bytes(b"{")
    manifest = root / cf.MANIFEST
    lines = manifest.read_text().splitlines()
    lines.insert(4, lines[3])  # duplicate of b1's line
    manifest.write_text("\n".join(lines) + '\n{"take_id": "torn')
    return {a0.take_id: cs.SHA_MISMATCH, a1.take_id: cs.MISSING_FILE}


def test_check_reports_problems_and_changes_nothing(tmp_path):
    root = tmp_path / "ds"
    recs = _make(root, ("P-AAAAAA", "P-BBBBBB", "P-CCCCCC"), per=2)
    _damage(root, recs)
    before = _tree(root)
    report = check_dataset(root)
    assert _tree(root) == before  # read-only: same files, sizes and mtimes
    assert not report.ok and report.takes == 6 and report.participants == 3 and report.ok_takes == 3
    counts = report.counts()
    assert counts == {
        cs.SHA_MISMATCH: 1,
        cs.MISSING_FILE: 1,
        cs.MISSING_SIDECAR: 1,
        cs.ORPHAN: 1,
        cs.TEMP_DEBRIS: 2,
        cs.DUPLICATE_TAKE: 1,
        cs.INVALID_LINE: 1,
    }
    by_kind = {p.kind: p for p in report.problems}
    assert by_kind[cs.SHA_MISMATCH].path == recs[0].audio
    assert by_kind[cs.MISSING_FILE].path == recs[1].image
    assert by_kind[cs.DUPLICATE_TAKE].path == "manifest.jsonl:5"
    assert by_kind[cs.INVALID_LINE].path == "manifest.jsonl:8"
    doc = json.loads(report.to_json())
    assert doc["ok"] is False and doc["counts"][cs.TEMP_DEBRIS] == 2 and len(doc["problems"]) == 8


def test_check_finds_undecodable_files_with_valid_checksums(tmp_path):
    root = tmp_path / "ds"
    with DatasetWriter(root, min_free_mb=0) as w:
        rec = w.write_take("P-AAAAAA", _png(), _audio(), 16000)
    # a record whose files match their checksums but do not decode (e.g. written by a buggy tool)
    data = json.loads((root / cf.MANIFEST).read_text())
    bad_png = cs.PNG_MAGIC + b"garbage" * 10
    (root / rec.image).write_bytes(bad_png)
    data["sha256"][rec.image] = cs.hashlib.sha256(bad_png).hexdigest()
    data["audio_samples"] = 999
    line = json.dumps(data)
    (root / cf.MANIFEST).write_text(line + "\n")
    (root / "P-AAAAAA" / f"{rec.take_id}.json").write_text(line + "\n")
    report = check_dataset(root)
    assert report.counts() == {cs.BAD_IMAGE: 1, cs.BAD_AUDIO: 1}
    assert "audio_samples=4800, the record says 999" in next(
        p.detail for p in report.problems if p.kind == cs.BAD_AUDIO
    )


def test_repair_moves_damaged_takes_then_clean(tmp_path):
    root = tmp_path / "ds"
    recs = _make(root, ("P-AAAAAA", "P-BBBBBB", "P-CCCCCC"), per=2)
    damaged = _damage(root, recs)
    files_before = {p for p, _ in _tree(root).items() if (root / p).is_file() and not p.startswith(".tmp-")}
    files_before = {p for p in files_before if "/.tmp-" not in p}

    report = check_dataset(root, repair=True)
    assert report.repaired and not report.ok and report.quarantine
    q = Path(report.quarantine)
    assert q.parent == root / cf.QUARANTINE
    after = check_dataset(root)
    assert after.ok, after.problems
    assert after.takes == 4 and after.participants == 2  # both takes of P-AAAAAA were damaged
    kept = {json.loads(line)["take_id"] for line in (root / cf.MANIFEST).read_text().splitlines()}
    assert kept == {r.take_id for r in recs} - set(damaged)
    # nothing but temp debris was deleted: every other file is still in the dataset or in quarantine
    for rel in files_before:
        assert (root / rel).exists() or (q / rel).exists(), rel
    for r in recs[:2]:
        assert (q / "P-AAAAAA" / f"{r.take_id}.json").is_file()
    assert (q / recs[0].audio).is_file() and (q / "P-BBBBBB" / "20250101T000000000Z-ORPHAN.face.png").is_file()
    removed = (q / "manifest-removed.jsonl").read_text().splitlines()
    assert len(removed) == 4  # the two damaged takes, the duplicate and the torn line
    assert (root / "P-BBBBBB" / f"{recs[2].take_id}.json").is_file()  # sidecar rewritten from the manifest
    assert not list(root.rglob(".tmp-*"))
    # the training loader still reads it
    from training.data.dataset import discover_pairs

    assert len(discover_pairs(root)) == 4
    # a second repair has nothing to do
    again = check_dataset(root, repair=True)
    assert again.ok and again.actions == [] and again.quarantine is None


# ------------------------------------------------------------------------------------------------ delete
def test_delete_participant(tmp_path):
    root = tmp_path / "ds"
    recs = _make(root, ("P-AAAAAA", "P-BBBBBB"), per=3)
    result = delete_participant(root, "P-AAAAAA")
    assert result["takes"] == 3 and result["files"] == 3 * 3 + 1 and result["deletion_id"].startswith("D-")
    assert not (root / "P-AAAAAA").exists()
    manifest = (root / cf.MANIFEST).read_text()
    assert "P-AAAAAA" not in manifest and len(manifest.splitlines()) == 3
    log_text = (root / cf.DELETIONS).read_text()
    assert "P-AAAAAA" not in log_text and "AAAAAA" not in log_text
    entry = json.loads(log_text)
    assert set(entry) == {"time", "deletion_id", "takes", "files"} and entry["takes"] == 3
    assert not list(root.glob(".deleting-*"))
    assert check_dataset(root).ok
    assert {r.take_id for r in recs[3:]} == {json.loads(x)["take_id"] for x in manifest.splitlines()}

    with pytest.raises(UserError, match="P-AAAAAA"):
        delete_participant(root, "P-AAAAAA")  # already gone: unknown
    with pytest.raises(UserError, match="P-ZZZZZZ"):
        delete_participant(root, "P-ZZZZZZ")
    for bad in ("../P-BBBBBB", "P-BBBBBB/x", "..", "a\\b", ""):
        with pytest.raises(UserError):
            delete_participant(root, bad)
    assert (root / "P-BBBBBB").is_dir()


def test_delete_also_removes_quarantined_copies(tmp_path):
    root = tmp_path / "ds"
    recs = _make(root, ("P-AAAAAA", "P-BBBBBB"), per=2)
    (root / recs[0].image).unlink()
    report = check_dataset(root, repair=True)
    q = Path(report.quarantine)
    assert (q / "P-AAAAAA").is_dir() and "P-AAAAAA" in (q / "manifest-removed.jsonl").read_text()
    delete_participant(root, "P-AAAAAA")
    assert not (q / "P-AAAAAA").exists() and not (q / "manifest-removed.jsonl").exists()
    assert "P-AAAAAA" not in "".join(p.read_text() for p in root.rglob("*.json*") if p.is_file())


def test_interrupted_deletion_reported_and_finished(tmp_path):
    root = tmp_path / "ds"
    _make(root, ("P-AAAAAA", "P-BBBBBB"), per=2)
    # simulate a crash after the marker and the manifest rewrite, half-way through removing the folder
    marker = root / ".deleting-D-20250101T000000Z-TEST01.json"
    info = {"deletion_id": "D-20250101T000000Z-TEST01", "participant": "P-AAAAAA", "takes": 2, "files": 7}
    marker.write_text(json.dumps(info) + "\n")
    manifest = root / cf.MANIFEST
    manifest.write_text("".join(x + "\n" for x in manifest.read_text().splitlines() if "P-AAAAAA" not in x))
    next((root / "P-AAAAAA").glob("*.wav")).unlink()

    report = check_dataset(root)
    assert cs.INCOMPLETE_DELETION in _kinds(report) and marker.exists()
    repaired = check_dataset(root, repair=True)
    assert any("finished deletion D-20250101T000000Z-TEST01" in a for a in repaired.actions)
    assert not marker.exists() and not (root / "P-AAAAAA").exists()
    assert repaired.quarantine is None  # the leftover files were deleted with the participant, not quarantined
    assert check_dataset(root).ok
    entry = json.loads((root / cf.DELETIONS).read_text())
    assert entry["deletion_id"] == "D-20250101T000000Z-TEST01" and "P-AAAAAA" not in json.dumps(entry)

    # a later delete finishes a pending deletion too (and logs it once only)
    marker2 = root / ".deleting-D-20250101T000001Z-TEST02.json"
    marker2.write_text(json.dumps({**info, "deletion_id": "D-20250101T000001Z-TEST02", "participant": "P-BBBBBB"}))
    with pytest.raises(UserError, match="P-CCCCCC"):
        delete_participant(root, "P-CCCCCC")
    assert not marker2.exists() and not (root / "P-BBBBBB").exists()
    assert len((root / cf.DELETIONS).read_text().splitlines()) == 2


def test_deletion_failing_midway_is_finished_by_repair(tmp_path, monkeypatch):
    root = tmp_path / "ds"
    _make(root, ("P-AAAAAA", "P-BBBBBB"), per=2)

    def broken_rmtree(path, *a, **k):
        next(Path(path).glob("*.wav")).unlink()  # half-way through, then the disk fails
        raise OSError(errno.EIO, "Input/output error", str(path))

    monkeypatch.setattr(cs.shutil, "rmtree", broken_rmtree)
    with pytest.raises(CaptureStoreError, match="Input/output error"):
        delete_participant(root, "P-AAAAAA")
    monkeypatch.undo()
    assert "P-AAAAAA" not in (root / cf.MANIFEST).read_text()  # the manifest was already rewritten
    report = check_dataset(root)
    assert report.counts()[cs.INCOMPLETE_DELETION] == 1 and report.takes == 2
    check_dataset(root, repair=True)
    assert check_dataset(root).ok and not (root / "P-AAAAAA").exists()
    entry = json.loads((root / cf.DELETIONS).read_text())
    assert entry["takes"] == 2 and entry["files"] == 7 and "P-AAAAAA" not in json.dumps(entry)


def test_threads_share_a_writer(tmp_path):
    import threading

    root = tmp_path / "ds"
    shared = DatasetWriter(root, min_free_mb=0)
    other = DatasetWriter(root, min_free_mb=0)
    ids: list[str] = []

    def work(w: DatasetWriter, k: int) -> None:
        for j in range(8):
            ids.append(w.write_take(f"P-THREAD{k}", _png(k * 10 + j), _audio(j, n=800), 16000).take_id)

    threads = [threading.Thread(target=work, args=(shared if k < 3 else other, k)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    shared.close()
    other.close()
    report = check_dataset(root)
    assert report.ok and report.takes == 32 and len(set(ids)) == 32


def test_writer_survives_concurrent_delete(tmp_path):
    root = tmp_path / "ds"
    w = DatasetWriter(root, min_free_mb=0)
    w.write_take("P-AAAAAA", _png(1), _audio(1), 16000)
    keep = w.write_take("P-BBBBBB", _png(2), _audio(2), 16000)
    delete_participant(root, "P-AAAAAA")  # rewrites the manifest under the writer's feet
    later = w.write_take("P-BBBBBB", _png(3), _audio(3), 16000)
    w.close()
    ids = [json.loads(x)["take_id"] for x in (root / cf.MANIFEST).read_text().splitlines()]
    assert ids == [keep.take_id, later.take_id]
    assert check_dataset(root).ok


def test_take_whose_files_vanish_is_not_kept(tmp_path, monkeypatch):
    root = tmp_path / "ds"
    w = DatasetWriter(root, min_free_mb=0)
    w.write_take("P-AAAAAA", _png(1), _audio(1), 16000)
    real_acquire = cs._Lock.acquire

    def acquire(self, shared=False):  # a deletion of the participant wins the race for the lock
        if self is w._lock:
            monkeypatch.setattr(cs._Lock, "acquire", real_acquire)
            delete_participant(root, "P-AAAAAA")
        return real_acquire(self, shared)

    monkeypatch.setattr(cs._Lock, "acquire", acquire)
    with pytest.raises(CaptureStoreError, match="vanished"):
        w.write_take("P-AAAAAA", _png(2), _audio(2), 16000)
    w.close()
    assert (root / cf.MANIFEST).read_text() == "" and check_dataset(root).ok


# ------------------------------------------------------------------------------------------------ disk full
@pytest.mark.parametrize("fail_at", [1, 2, 3, 4])  # face, audio, sidecar, manifest line
def test_disk_full_mid_take(tmp_path, monkeypatch, fail_at):
    root = tmp_path / "ds"
    recs = _make(root, ("P-AAAAAA",), per=2)
    before = _tree(root)
    manifest_before = (root / cf.MANIFEST).read_bytes()
    calls = {"n": 0}
    real = jsonl.write_all

    def full(fd, data):
        calls["n"] += 1
        if calls["n"] == fail_at:
            os.write(fd, bytes(data[: len(data) // 2]))  # a partial write, then the disk is full
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd, data)

    w = DatasetWriter(root, min_free_mb=0)
    monkeypatch.setattr(jsonl, "write_all", full)
    with pytest.raises(DiskFullError, match="disk full") as info:
        w.write_take("P-AAAAAA", _png(7), _audio(7), 16000)
    assert info.value.path and Path(info.value.path).parent in (root, root / "P-AAAAAA")
    monkeypatch.undo()
    assert (root / cf.MANIFEST).read_bytes() == manifest_before
    assert not list(root.rglob(".tmp-*"))
    after = _tree(root)
    assert set(after) == set(before)  # no file of the failed take under any name
    for rec in recs:
        for rel in (rec.image, rec.audio):
            assert after[rel] == before[rel]
    assert check_dataset(root).ok
    # capture goes on once space is back
    w.write_take("P-AAAAAA", _png(8), _audio(8), 16000)
    w.close()
    assert check_dataset(root).takes == 3


def test_min_free_mb_gate_and_other_errors(tmp_path, monkeypatch):
    root = tmp_path / "ds"
    w = DatasetWriter(root, min_free_mb=1e12)
    with pytest.raises(DiskFullError, match="MiB free, below"):
        w.write_take("P-AAAAAA", _png(), _audio(), 16000)
    assert sorted(p.name for p in root.iterdir()) == [cf.LOCK, cf.MANIFEST]
    w.min_free_mb = 0.0

    def eio(fd):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(cs.os, "fsync", eio)
    with pytest.raises(CaptureStoreError, match=r"P-AAAAAA.*Input/output error") as info:
        w.write_take("P-AAAAAA", _png(), _audio(), 16000)
    assert not isinstance(info.value, DiskFullError)
    monkeypatch.undo()
    w.close()
    assert not list(root.rglob(".tmp-*")) and not list((root / "P-AAAAAA").iterdir())
    assert check_dataset(root).ok


# ------------------------------------------------------------------------------------------------ crash test
def test_sigkill_crash_during_writes(tmp_path):
    """SIGKILL a writing process at random moments; no partial take may ever be in the manifest."""
    kills = int(os.environ.get("AVGAN_CRASH_KILLS", "20"))
    root = tmp_path / "ds"
    rng = random.Random(1234)
    kept: list[str] = []
    in_write = 0
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    for k in range(kills):
        proc = subprocess.Popen(
            [sys.executable, str(HELPER), str(root), str(k)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        ready = proc.stdout.readline()
        assert ready.strip() == "READY", proc.stderr.read()
        time.sleep(rng.uniform(0.0, 0.12))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        lines = proc.stdout.read().splitlines()
        proc.stdout.close()
        proc.stderr.close()
        kept += [x.split()[1] for x in lines if x.startswith("KEPT ")]
        in_write += bool(lines) and lines[-1] == "BEGIN"
    report = check_dataset(root)
    counts = report.counts()
    print(
        f"crash test: {kills} kills ({in_write} inside write_take), {len(kept)} takes reported kept, "
        f"{report.takes} in manifest, problems {counts}"
    )
    assert set(counts) <= {cs.ORPHAN, cs.TEMP_DEBRIS}, report.problems  # never a damaged or partial take
    assert report.takes == report.ok_takes
    records, problems = cf.read_manifest(root)
    assert not problems
    ids = [r.take_id for r in records]
    assert len(ids) == len(set(ids))
    assert set(kept) <= set(ids)
    assert in_write >= kills // 4  # the kills do land inside writes
    repaired = check_dataset(root, repair=True)
    assert repaired.repaired and check_dataset(root).ok
    assert {r.take_id for r in cf.read_manifest(root)[0]} == set(ids)


# ------------------------------------------------------------------------------------------------ CLI
def test_cli_check_repair_delete(tmp_path, capsys):
    root = tmp_path / "ds"
    recs = _make(root, ("P-AAAAAA", "P-BBBBBB"), per=2)
    assert run.main(["dataset", "check", str(root)]) == 0
    assert "4 take(s) (4 ok), 2 participant(s)" in capsys.readouterr().out

    (root / recs[0].audio).write_bytes(b"RIFF0000")
    out_json = tmp_path / "r" / "report.json"
    assert run.main(["dataset", "check", str(root), "--json", str(out_json)]) == 1
    out = capsys.readouterr().out
    assert "sha-mismatch" in out and recs[0].audio in out
    assert json.loads(out_json.read_text())["counts"] == {"sha-mismatch": 1}

    assert run.main(["dataset", "check", str(root), "--repair"]) == 1
    assert "4 path(s) moved; quarantine folder" in capsys.readouterr().out
    assert run.main(["dataset", "check", str(root)]) == 0
    capsys.readouterr()

    assert run.main(["dataset", "delete", str(root), "--participant", "P-BBBBBB"]) == 0
    out = capsys.readouterr().out
    assert "2 take(s)" in out and "deletion D-" in out
    assert run.main(["dataset", "delete", str(root), "--participant", "P-BBBBBB"]) == 2
    assert "error:" in capsys.readouterr().err and "P-BBBBBB" not in (root / cf.DELETIONS).read_text()
    assert run.main(["dataset", "check", str(tmp_path / "missing")]) == 2
    with pytest.raises(SystemExit) as exit_info:
        run.main(["dataset", "delete", str(root)])  # --participant missing: argparse usage error
    assert exit_info.value.code == 2


def test_delete_purges_the_training_cache(tmp_path, monkeypatch):
    """A withdrawal also removes the loader's decoded copies (pairs-*.npz) that hold the participant's takes."""
    from training.data.dataset import load_dataset

    monkeypatch.setenv("AVGAN_CACHE", str(tmp_path / "cache"))
    root, other = tmp_path / "ds", tmp_path / "other"
    _make(root, ("P-AAAAAA", "P-BBBBBB"), per=2)
    _make(other, ("P-CCCCCC", "P-DDDDDD"), per=1)
    load_dataset([root], image_size=16, workers=1)
    load_dataset([other], image_size=16, workers=1)
    assert len(list((tmp_path / "cache").glob("pairs-*.npz"))) == 2
    result = delete_participant(root, "P-AAAAAA")
    assert result["caches"] == 1
    left = list((tmp_path / "cache").glob("pairs-*.npz"))
    assert len(left) == 1  # the other dataset's cache stays
    assert load_dataset([other], image_size=16, workers=1).identities == ["P-CCCCCC", "P-DDDDDD"]
