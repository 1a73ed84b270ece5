"""Capture booth figures: takes per minute, the quality gate's rejections, and the SIGKILL crash test.

    python run.py bench --only capture [--capture-seconds 45] [--crash-kills 60]

Everything runs the real ``run.py capture`` command on the device stand-ins that
``scripts/make_capture_standins.py`` makes from the Wav2Pix material in ``../shared/data`` (a video-file camera
and an audio-file microphone, both played in real time; cached under ``$AVGAN_CACHE/standins``), with the dummy
SDL driver and a visitor script that presses whatever button the screen offers.

Rows:

* ``session default``: the ``open_day`` timings (3 s countdown, 1 s take, 2 s review) for ``--capture-seconds``.
* ``session fast``: 0.3 s countdown, 1 s take, 0.1 s review: what the pipeline sustains when visitors are quick.
* ``crash test``: ``--crash-kills`` capture processes killed with SIGKILL, all writing into one dataset, with a
  0 s countdown, 0.1 s takes and no review. Even-numbered kills come at a uniformly random moment 0.4-2.5 s after
  the process starts (anywhere in its life); odd-numbered ones are aimed at writes: 0-3 ms after the process
  prints ``saving take`` (a take that passed the gate is being written; a write takes ~2 ms), or at the random
  moment if no write started before it. Afterwards ``dataset check`` must find no damaged or partial
  take (orphan files and temp debris of interrupted takes are expected and are reported), every take printed as
  ``kept take ...`` must be in the manifest with valid checksums, and ``--repair`` must leave a clean dataset
  that still holds every kept take.

Children are forked from a process that has already imported the booth (``os.fork`` then ``run.main``): the
children are real capture processes, but start in ~0.3 s instead of ~2 s, so 60 kills take about a minute.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import select
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from engine.configs import finite_float

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "wav2pix" / "train"
KEPT = re.compile(rb"^kept take (\S+) participant (\S+)$", re.M)
DAMAGE = {
    "invalid-line",
    "bad-record",
    "duplicate-take",
    "missing-file",
    "sha-mismatch",
    "bad-image",
    "bad-audio",
    "missing-sidecar",
    "sidecar-mismatch",
}
"""Problem kinds of :func:`datastore.capture_store.check_dataset` that mean a kept take is damaged or partial."""


def add_arguments(parser: argparse._ArgumentGroup) -> None:
    """Options of the capture benchmark."""
    parser.add_argument("--capture-seconds", type=finite_float, default=45.0, help="length of each timed session, s")
    parser.add_argument("--crash-kills", type=int, default=60, help="SIGKILLs in the crash test")


def standins(data: Path = DATA, visitors: int = 4) -> Path:
    """The stand-in camera video and microphone file (made once, cached); returns their folder.

    Raises:
        FileNotFoundError: ``data`` (the Wav2Pix material) is missing.
    """
    if not data.is_dir():
        raise FileNotFoundError(f"{data}: the Wav2Pix material the stand-ins are made from is missing")
    from datastore.cache import default_cache_dir

    folder = default_cache_dir() / f"standins-v3-{visitors}"  # v3: faces in true colours
    if not (folder / "timeline.json").is_file():
        sys.path.insert(0, str(ROOT / "scripts"))
        import make_capture_standins

        tmp = Path(tempfile.mkdtemp(dir=folder.parent if folder.parent.is_dir() else None))
        make_capture_standins.make(data, tmp, visitors)
        folder.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.replace(tmp, folder)
        except OSError:  # made by another process meanwhile
            pass
    return folder


def write_preset(path: Path, **capture: Any) -> Path:
    """A headless preset extending ``open_day``: dummy SDL driver, 640x360 canvas, no OSC, ``capture`` overrides."""
    lines = [
        "extends: open_day",
        "display: {driver: dummy, size: [640, 360], fullscreen: false, windowed_size: [640, 360]}",
        "osc: {enabled: false}",
        "capture: " + json.dumps(capture),
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


SCRIPT = "any capture/consent capture/go\nloop\n"
"""A visitor who presses whatever the screen offers (consent, then Go), for ever."""


def session(folder: Path, work: Path, seconds: float, name: str, **capture: Any) -> dict[str, Any]:
    """One timed ``run.py capture`` session in this process; returns its report."""
    import run

    preset = write_preset(work / f"{name}.yaml", **capture)
    script = work / "visitor.txt"
    script.write_text(SCRIPT)
    report = work / f"{name}.json"
    argv = [
        "capture",
        "--preset",
        str(preset),
        "--out",
        str(work / f"{name}-data"),
        "--camera",
        str(folder / "camera.mp4"),
    ]
    argv += [
        "--input",
        str(folder / "mic.flac"),
        "--script",
        str(script),
        "--duration",
        str(seconds),
        "--report",
        str(report),
    ]
    code = run.main(argv)
    if code != 0:
        raise RuntimeError(f"run.py capture exited with {code}")
    return json.loads(report.read_text())


def _child(argv: list[str], out_fd: int) -> None:  # pragma: no cover - runs in the forked child
    try:
        os.dup2(out_fd, 1)
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 2)
        import run

        code = run.main(argv)
    except BaseException:  # noqa: BLE001
        code = 70
    os._exit(code)


def crash_test(
    folder: Path, work: Path, kills: int, seed: int = 0, min_s: float = 0.4, max_s: float = 2.5
) -> dict[str, Any]:
    """Kill ``kills`` capture processes with SIGKILL at random moments; check the dataset after each and at the end.

    Returns:
        counts: kills, kept_reported (takes printed as kept), manifest_takes, missing_reported (kept takes not in the
        manifest or failing their checksums: must be 0), damaged (problems of a :data:`DAMAGE` kind: must be 0),
        problems (all problem kinds found, e.g. orphans and temp debris of interrupted takes), clean_after_repair,
        kept_after_repair, seconds.
    """
    import installation.capture  # noqa: F401 - imported before forking, so children start fast
    import installation.capture_screen  # noqa: F401
    from datastore.capture_format import read_manifest
    from datastore.capture_store import check_dataset

    rng = random.Random(seed)
    preset = write_preset(work / "crash.yaml", countdown_s=0.0, take_s=0.1, review_s=0.0, takes_per_participant=3)
    script = work / "visitor.txt"
    script.write_text(SCRIPT)
    dataset = work / "crash-data"
    argv = ["capture", "--preset", str(preset), "--out", str(dataset), "--camera", str(folder / "camera.mp4")]
    argv += ["--input", str(folder / "mic.flac"), "--script", str(script)]
    reported: set[str] = set()
    exits: dict[str, int] = {}
    t0 = time.perf_counter()
    for k in range(kills):
        read_fd, write_fd = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover
            os.close(read_fd)
            _child(argv, write_fd)
        os.close(write_fd)
        aimed = k % 2 == 1
        deadline = time.perf_counter() + rng.uniform(min_s, max_s)
        chunks: list[bytes] = []
        while (left := deadline - time.perf_counter()) > 0:
            ready, _, _ = select.select([read_fd], [], [], left)
            if ready:
                chunk = os.read(read_fd, 65536)
                if not chunk:
                    break
                chunks.append(chunk)
                if aimed and b"saving take" in chunk:  # a take is being written right now: kill within ~3 ms
                    deadline = time.perf_counter() + rng.uniform(0.0, 0.003)
                    aimed = False
        os.kill(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
        while chunk := os.read(read_fd, 65536):
            chunks.append(chunk)
        os.close(read_fd)
        how = f"signal {os.WTERMSIG(status)}" if os.WIFSIGNALED(status) else f"exit {os.WEXITSTATUS(status)}"
        exits[how] = exits.get(how, 0) + 1
        reported.update(m.group(1).decode() for m in KEPT.finditer(b"".join(chunks)))
    seconds = time.perf_counter() - t0
    report = check_dataset(dataset)
    problems: dict[str, int] = report.counts()
    records, _ = read_manifest(dataset)
    in_manifest = {r.take_id for r in records}
    bad_paths = {p.path for p in report.problems if p.kind in DAMAGE}
    damaged_takes = {r.take_id for r in records if r.image in bad_paths or r.audio in bad_paths}  # dataset-relative
    missing = (reported - in_manifest) | (reported & damaged_takes)
    repaired = check_dataset(dataset, repair=True)
    after = check_dataset(dataset)
    records_after, _ = read_manifest(dataset)
    kept_after = {r.take_id for r in records_after}
    return {
        "kills": kills,
        "exits": exits,
        "kept_reported": len(reported),
        "manifest_takes": len(in_manifest),
        "missing_reported": len(missing),
        "damaged": sum(n for kind, n in problems.items() if kind in DAMAGE),
        "problems": problems,
        "repair_actions": len(repaired.actions),
        "clean_after_repair": after.ok,
        "kept_after_repair": len(reported & kept_after),
        "seconds": round(seconds, 1),
    }


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    """The rows described in the module docstring."""
    folder = standins()
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for name, capture in (
            ("session default", {}),
            ("session fast", {"countdown_s": 0.3, "review_s": 0.1}),
        ):
            rep = session(folder, work, float(args.capture_seconds), name.replace(" ", "-"), **capture)
            rows.append(
                {
                    "measure": name,
                    "timings_s": "/".join(f"{v:g}" for v in rep["timings_s"].values()),
                    "attempts": rep["attempts"],
                    "kept": rep["kept"],
                    "takes_per_min": rep["takes_per_min"],
                    "rejected_share": rep["rejected_share"],
                    "rejected": ", ".join(f"{k} {v}" for k, v in sorted(rep["rejected"].items())),
                    "save_ms_p50": rep["save_ms_p50"],
                }
            )
        crash = crash_test(folder, work, int(args.crash_kills))
        rows.append(
            {
                "measure": "crash test",
                "kills": crash["kills"],
                "kept_reported": crash["kept_reported"],
                "manifest_takes": crash["manifest_takes"],
                "missing_reported": crash["missing_reported"],
                "damaged": crash["damaged"],
                "orphans_and_debris": ", ".join(f"{k} {v}" for k, v in sorted(crash["problems"].items())),
                "clean_after_repair": crash["clean_after_repair"],
                "seconds": crash["seconds"],
            }
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    """``python -m benchmarks.capture --crash-only KILLS OUT.json``: the crash test alone (the test suite runs it)."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--crash-only", type=int, required=True)
    parser.add_argument("out", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        result = crash_test(standins(), Path(tmp), args.crash_only, seed=args.seed)
    args.out.write_text(json.dumps(result, indent=1))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
