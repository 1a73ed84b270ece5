"""Engine latency: a bundle's inputs -> its outputs (uint8 images, sound), per backend, next to plain torch eager.

For batch 1 (the live case) and batch 32 (offline render), every backend that
can run here is timed over ``--calls`` calls after warm-up, in round-robin
chunks so that background load hits all of them alike. Reported: p50 / p99 /
mean latency per call (ms), per-item time, throughput, the ratio
``eager p50 / backend p50``, and the backend's max abs error against eager on
the same inputs (every float output: images and sound in [-1, 1]). With ``--repeats R`` the whole
round robin runs R times a second apart: percentiles pool all ``R x calls``
calls, and ``ratio_range`` (``ratio_per_repeat`` in the JSON) shows how far
the eager/backend ratio moves between repeats on a noisy machine.

"torch eager" is, when the training package is importable, the family's
inference graph rebuilt from the bundle's ``generator.safetensors`` +
``config.yaml`` (spectral norm baked, exactly the module that was exported);
otherwise the ``model.pt2`` program's ``.module()``.
The row's ``note`` says which.

``onnxruntime-cpu`` runs the graph after the exact rewrites of
:mod:`engine.graph_rewrite` (the engine's default); the row
``onnxruntime-cpu/as-exported`` times the same backend on ``model.onnx`` as
exported, side by side, so the table shows what the rewrites buy. The row
``onnxruntime-cpu/spin-in-call`` lets the worker threads spin within a call
(``ort_spin="in-call"``; the engine default never spins). For batch 1,
``cpu_at_10hz`` is the process's CPU-seconds per second while the backend is
called 10 times a second, as the live loop does: the work plus any spinning
between calls.
"""

from __future__ import annotations

import argparse
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from engine.backends import AUTO_ORDER
from engine.errors import UserError

log = logging.getLogger(__name__)

DEFAULT_BUNDLE = Path(__file__).resolve().parents[1] / "presets" / "models" / "wav2pix-64"
BATCHES = (1, 32)
AS_EXPORTED = "onnxruntime-cpu/as-exported"
"""Row name of ONNX Runtime CPU on ``model.onnx`` as exported, without :mod:`engine.graph_rewrite`."""
SPIN_IN_CALL = "onnxruntime-cpu/spin-in-call"
"""Row name of ONNX Runtime CPU with ``ort_spin="in-call"`` (the engine default is ``"never"``)."""
IDLE_RATE_HZ = 10.0
IDLE_CALLS = 20
CHUNKS = 10
REPEAT_PAUSE_S = 1.0

COLUMNS = (
    "backend",
    "batch",
    "calls",
    "p50_ms",
    "p99_ms",
    "mean_ms",
    "per_item_ms",
    "items_per_s",
    "eager_over_this",
    "ratio_range",
    "max_abs_err",
    "cpu_at_10hz",
    "note",
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Engine-benchmark options (``--bundle`` and ``--calls`` are shared and added by :mod:`benchmarks.cli`)."""
    parser.add_argument(
        "--backends",
        default=None,
        help=f"comma-separated engine backends to time (default: all that run here; from {', '.join(AUTO_ORDER)})",
    )
    parser.add_argument(
        "--batches", default=",".join(str(b) for b in BATCHES), help="comma-separated batch sizes (default %(default)s)"
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=1,
        help="time every batch size this many times, --calls calls each, a second apart; percentiles pool all "
        "calls and ratio_range gives the eager/backend p50 ratio's spread over the repeats (default %(default)s)",
    )


def _eager(bundle_dir: Path) -> tuple[Callable[..., Any], str]:
    """(module, description) of plain torch eager for the bundle (see the module docstring): the family's inference
    graph rebuilt from ``generator.safetensors``, or the ``model.pt2`` program without the training package."""
    import torch

    try:
        from training.export import _bundle_options, inference_graph, load_bundle_source
        from training.families.contract import GraphSource
    except ImportError as exc:
        log.info("training package not importable (%s); eager = model.pt2 .module()", exc)
    else:
        src = load_bundle_source(bundle_dir)
        parser = argparse.ArgumentParser(add_help=False)
        src.family.add_export_arguments(parser.add_argument_group())
        options = argparse.Namespace(**{**vars(parser.parse_args([])), **_bundle_options(src, parser.parse_args([]))})
        source = GraphSource(bundle_tensors=src.extra_tensors, family_info=src.manifest["family_info"])
        graph = inference_graph(src.family, src.cfg, src.G, src.labels, source, options)
        return graph.module, f"torch eager: the {src.family.name} graph from generator.safetensors (spectral norm baked)"
    program = torch.export.load(str(bundle_dir / "model.pt2"))
    return program.module(), "torch eager: model.pt2 ExportedProgram.module()"


def _example_inputs(bundle: Any, batch: int) -> dict[str, np.ndarray]:
    """Inputs for a batch: ``audio`` clipped N(0, 0.3), ``class`` one-hot, anything else N(0, 1)."""
    rng = np.random.default_rng(batch)
    out = {}
    for name, spec in bundle.inputs.items():
        shape = (batch, *spec.item_shape)
        if name == "audio":
            out[name] = np.clip(0.3 * rng.standard_normal(shape), -1, 1).astype(np.float32)
        elif name == "class":
            out[name] = np.eye(shape[1], dtype=np.float32)[rng.integers(0, shape[1], batch)]
        else:
            out[name] = rng.standard_normal(shape).astype(np.float32)
    return out


def _outputs(out: Any) -> tuple[Any, ...]:
    return tuple(out) if isinstance(out, (tuple, list)) else (out,)


def _note(name: str, gen: Any) -> str:
    if name == AS_EXPORTED:
        return "onnxruntime-cpu on model.onnx as exported (no engine.graph_rewrite)"
    if name == SPIN_IN_CALL:
        return "onnxruntime-cpu, worker threads spin within a call and stop when it returns (ort_spin=in-call)"
    rewrites = getattr(gen._backend, "rewrites", None)
    done = ", ".join(f"{k} x{v}" for k, v in (rewrites or {}).items() if v)
    return gen.backend_reason + (f"; graph rewrites: {done}" if done else "")


def _cpu_at_rate(fn: Callable[[], Any], rate_hz: float = IDLE_RATE_HZ, calls: int = IDLE_CALLS) -> float:
    """Process CPU-seconds per wall-second while ``fn`` is called ``rate_hz`` times a second (the live
    loop's generation rate): the calls' own work plus whatever the backend's threads burn in between
    (spinning). Measured after a 0.3 s pause so the previous backend's threads have settled."""
    time.sleep(0.3)
    fn()
    c0, w0 = os.times(), time.perf_counter()
    for i in range(calls):
        fn()
        time.sleep(max(0.0, w0 + (i + 1) / rate_hz - time.perf_counter()))
    c1, w1 = os.times(), time.perf_counter()
    return ((c1.user - c0.user) + (c1.system - c0.system)) / (w1 - w0)


def _percentiles(times: list[float]) -> dict[str, float]:
    t = np.asarray(times) * 1e3
    return {
        "p50_ms": float(np.percentile(t, 50)),
        "p99_ms": float(np.percentile(t, 99)),
        "mean_ms": float(t.mean()),
    }


def _time_round_robin(runners: dict[str, Callable[[], Any]], calls: int, warmup: int) -> dict[str, list[float]]:
    for fn in runners.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in runners}
    chunk = max(1, calls // CHUNKS)
    done = 0
    while done < calls:
        n = min(chunk, calls - done)
        for name, fn in runners.items():
            for _ in range(n):
                t0 = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t0)
        done += n
    return times


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Time every available backend and torch eager on the bundle; returns one row per (backend, batch).

    Raises:
        UserError: the bundle is missing (names the default path and how to make one).
    """
    import torch

    from engine.bundle import load_bundle
    from engine.generator import Generator, to_uint8

    bundle_dir = Path(args.bundle) if getattr(args, "bundle", None) else DEFAULT_BUNDLE
    if not bundle_dir.exists():
        where = "the default bundle" if not getattr(args, "bundle", None) else "bundle"
        raise UserError(
            f"{where} {bundle_dir} does not exist; export one with `run.py export RUN_DIR -o {bundle_dir}` "
            "or pass --bundle"
        )
    bundle = load_bundle(bundle_dir)
    calls = int(getattr(args, "calls", 200))
    repeats = int(getattr(args, "repeats", 1))
    if repeats < 1:
        raise UserError(f"--repeats: expected >= 1, got {repeats}")
    batches = [int(b) for b in str(getattr(args, "batches", "1,32")).split(",") if b.strip()]
    wanted = [b.strip() for b in args.backends.split(",")] if getattr(args, "backends", None) else list(AUTO_ORDER)
    max_batch = max(batches)

    eager, eager_note = _eager(bundle_dir)
    rows: list[dict[str, Any]] = []
    generators: dict[str, Generator] = {}
    for name in AUTO_ORDER:
        if name not in wanted:
            continue
        try:
            generators[name] = Generator(bundle_dir, backend=name, max_batch=max_batch, fallback=False)
        except UserError as exc:
            rows.append({"backend": name, "note": f"skipped: {str(exc).split(': ', 1)[-1]}"})
    if "onnxruntime-cpu" in generators:  # the same backend on the graph as exported: what the rewrites buy
        generators[AS_EXPORTED] = Generator(
            bundle_dir, backend="onnxruntime-cpu", max_batch=max_batch, fallback=False, graph_rewrites=False
        )
        generators[SPIN_IN_CALL] = Generator(
            bundle_dir, backend="onnxruntime-cpu", max_batch=max_batch, fallback=False, ort_spin="in-call"
        )
    if not generators:
        log.warning("no engine backend could run %s", bundle_dir)

    names = list(bundle.outputs)
    timed: list[dict[str, Any]] = []
    for batch in batches:
        inputs = _example_inputs(bundle, batch)
        args_ = [torch.from_numpy(inputs[k]) for k in bundle.inputs]
        with torch.inference_mode():
            reference = dict(zip(names, (o.numpy() for o in _outputs(eager(*args_)))))

        def eager_call(a: list = args_) -> dict[str, np.ndarray]:
            with torch.inference_mode():
                out = dict(zip(names, (o.numpy() for o in _outputs(eager(*a)))))
            if "image" in out:
                out["image"] = to_uint8(out["image"])
            return out

        runners: dict[str, Callable[[], Any]] = {"torch-eager": eager_call}
        errors: dict[str, float] = {"torch-eager": 0.0}
        for name, gen in generators.items():
            runners[name] = lambda g=gen, x=inputs: g.generate(**x)
            got = gen.run(**inputs)
            errors[name] = max(float(np.abs(got[k] - reference[k]).max()) for k in names)
        warm = 20 if batch == 1 else 5
        times: dict[str, list[float]] = {name: [] for name in runners}
        ratios: dict[str, list[float]] = {name: [] for name in runners}
        for repeat in range(repeats):
            if repeat:
                time.sleep(REPEAT_PAUSE_S)
            these = _time_round_robin(runners, calls, warm if repeat == 0 else 3)
            p50 = {name: float(np.median(ts)) for name, ts in these.items()}
            for name, ts in these.items():
                times[name] += ts
                ratios[name].append(p50["torch-eager"] / p50[name])
        eager_p50 = _percentiles(times["torch-eager"])["p50_ms"]
        paced = {name: _cpu_at_rate(fn) for name, fn in runners.items()} if batch == 1 else {}
        for name, ts in times.items():
            stats = _percentiles(ts)
            if name in paced:
                stats["cpu_at_10hz"] = paced[name]
            timed.append(
                {
                    "backend": name,
                    "batch": batch,
                    "calls": len(ts),
                    **stats,
                    "per_item_ms": stats["p50_ms"] / batch,
                    "items_per_s": batch * 1e3 / stats["mean_ms"],
                    "eager_over_this": eager_p50 / stats["p50_ms"],
                    **(
                        {
                            "ratio_range": f"{min(ratios[name]):.2f}-{max(ratios[name]):.2f}",
                            "ratio_per_repeat": [round(r, 3) for r in ratios[name]],
                        }
                        if repeats > 1
                        else {}
                    ),
                    "max_abs_err": errors[name],
                    "note": eager_note if name == "torch-eager" else _note(name, generators[name]),
                }
            )
    for gen in generators.values():
        gen.close()
    return timed + rows
