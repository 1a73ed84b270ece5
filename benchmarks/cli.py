"""``python run.py bench [--only engine,render] [--bundle B] [--out benchmarks/results.json] [--calls 200]``.

Runs the registered benchmarks, prints one table each and writes JSON:
``{"machine": {...}, "benchmarks": {name: {"date": ..., "rows": [...]}}}``.
Results of benchmarks not run this time are kept from an existing file, so
``--only render`` does not erase the engine figures.

A benchmark is a module under :mod:`benchmarks` exposing ``run(args) -> list[dict]``
(one dict per table row; a row may carry ``"note"``) and optionally
``add_arguments(parser)`` for its own options. Modules are imported lazily; a
missing module is reported and skipped.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib
import json
import logging
import os
import platform
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from engine.errors import UserError

log = logging.getLogger(__name__)

DEFAULT_OUT = Path("benchmarks") / "results.json"


def _module_runner(module: str) -> Callable[[argparse.Namespace], list[dict[str, Any]]]:
    def run(args: argparse.Namespace) -> list[dict[str, Any]]:
        mod = _import(module)
        if mod is None:
            print(f"[bench] {module} is not available in this checkout; skipped", file=sys.stderr)
            return []
        return list(mod.run(args))

    run.__doc__ = f"Run ``{module}.run(args)``."
    return run


BENCHMARKS: dict[str, Callable[[argparse.Namespace], list[dict[str, Any]]]] = {
    "engine": _module_runner("benchmarks.engine"),
    "render": _module_runner("benchmarks.render"),
    "live": _module_runner("benchmarks.live"),
    "train": _module_runner("benchmarks.train"),
    "capture": _module_runner("benchmarks.capture"),
    "startup": _module_runner("benchmarks.startup"),
    "answer": _module_runner("benchmarks.answer"),
}
"""name -> function(args) -> list of row dicts."""

_MODULES = {name: f"benchmarks.{name}" for name in BENCHMARKS}


def _import(module: str) -> Any:
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name == module:
            return None
        raise


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Shared options, plus each available benchmark module's own ``add_arguments``."""
    parser.add_argument(
        "--only", default=None, help=f"comma-separated benchmarks to run (default: all of {', '.join(BENCHMARKS)})"
    )
    parser.add_argument("--bundle", type=Path, default=None, help="model bundle (default presets/models/wav2pix-64)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON results file (default %(default)s)")
    parser.add_argument("--calls", type=int, default=200, help="timed calls per measurement (default %(default)s)")
    for name, module in _MODULES.items():
        mod = _import(module)
        if mod is not None and hasattr(mod, "add_arguments"):
            group = parser.add_argument_group(f"{name} benchmark")
            mod.add_arguments(group)


def machine_info() -> dict[str, Any]:
    """CPU, OS, library versions, thread settings and load average, for the JSON record."""
    info: dict[str, Any] = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
    }
    try:
        info["cpu_affinity"] = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        pass
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu_model"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        info["loadavg_1m"] = os.getloadavg()[0]
    except OSError:
        pass
    for lib in ("torch", "onnxruntime", "onnx", "numpy", "tensorrt"):
        try:
            info[lib] = importlib.import_module(lib).__version__
        except Exception:  # noqa: BLE001 - absent or broken optional libraries
            info[lib] = None
    if info.get("torch"):
        import torch

        info["torch_threads"] = torch.get_num_threads()
        info["cuda"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return info


def _fmt(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        if value == 0:
            return "0"
        if abs(value) >= 100:
            return f"{value:.0f}"
        if abs(value) >= 0.01:
            return f"{value:.2f}"
        return f"{value:.1e}"
    return str(value)


def format_table(rows: list[dict[str, Any]], columns: tuple[str, ...] | None = None) -> str:
    """Plain-text table of ``rows``; columns default to the keys in first-seen order."""
    if not rows:
        return "(no rows)"
    if columns is None:
        columns = tuple(dict.fromkeys(k for row in rows for k in row))
    columns = tuple(c for c in columns if any(row.get(c) is not None for row in rows))
    notes = "note" in columns
    cols = tuple(c for c in columns if c != "note")
    cells = [[_fmt(row.get(c)) for c in cols] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(cols)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(cols, widths))]
    lines.append("  ".join("-" * w for w in widths))
    for row, r in zip(rows, cells):
        line = "  ".join(v.ljust(w) for v, w in zip(r, widths))
        if notes and row.get("note"):
            line += f"  # {row['note']}"
        lines.append(line.rstrip())
    return "\n".join(lines)


def _write_json(path: Path, machine: dict[str, Any], results: dict[str, dict[str, Any]]) -> None:
    data: dict[str, Any] = {}
    if path.is_file():
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            log.warning("%s: unreadable, overwriting", path)
            data = {}
    benches = data.get("benchmarks", {}) if isinstance(data.get("benchmarks"), dict) else {}
    for name, result in results.items():
        benches[name] = {**result, "machine": machine}
    out = {"machine": machine, "benchmarks": benches}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(out, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def main(args: argparse.Namespace) -> int:
    """Run the selected benchmarks; print tables; write ``args.out``.

    Returns 0; 1 if a benchmark failed or nothing produced rows. A benchmark that raises
    :class:`UserError` (e.g. missing bundle) is reported and the others still run; with a
    single benchmark selected, or when none produced results, the error propagates
    (``run.py`` prints it and exits 2).
    """
    names = [n.strip() for n in args.only.split(",") if n.strip()] if args.only else list(BENCHMARKS)
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        raise UserError(f"unknown benchmark {unknown[0]!r} (choose from {', '.join(BENCHMARKS)})")
    machine = machine_info()
    load, cores = machine.get("loadavg_1m"), machine.get("cpu_affinity") or machine.get("cpu_count") or 1
    if load is not None and load > 0.5 * cores:
        print(
            f"[bench] note: the machine is busy (1-minute load average {load:.1f} on {cores} cores); "
            "CPU latencies are inflated, torch's spinning OpenMP threads most of all",
            file=sys.stderr,
        )
    results: dict[str, dict[str, Any]] = {}
    failures: list[UserError] = []
    for name in names:
        print(f"== {name} ==", flush=True)
        try:
            rows = BENCHMARKS[name](args)
        except UserError as exc:
            if len(names) == 1:
                raise
            print(f"[bench] {name}: error: {exc}", file=sys.stderr)
            failures.append(exc)
            continue
        if not rows:
            continue
        mod = _import(_MODULES[name]) if name in _MODULES else None
        print(format_table(rows, getattr(mod, "COLUMNS", None)), flush=True)
        results[name] = {"date": machine["date"], "rows": rows}
    if not results:
        if failures:
            raise failures[0]
        print("no benchmark produced results", file=sys.stderr)
        return 1
    _write_json(Path(args.out), machine, results)
    print(f"wrote {args.out}")
    return 1 if failures else 0
