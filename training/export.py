"""Export a trained generator to a model bundle (format 2, ``docs/CONTRACTS.md``), and check it.

``python run.py export RUN_DIR -o BUNDLE_DIR`` loads the run's moving-average generator
(:func:`training.runs.load_run`), asks its family for the inference graph
(:meth:`training.families.contract.Family.inference`: named inputs and outputs, feature extraction and every
run-time mapping inside) and writes:

* ``model.onnx`` — the graph, dynamic batch axis, opset 18 via the dynamo exporter (falls back to the
  TorchScript-based exporter, opset 17, if that fails), checked with ``onnx.checker``;
* ``model.pt2`` — the same module as a ``torch.export`` program with a dynamic batch dimension (1..max_batch);
* ``generator.safetensors`` — the generator side's state dict as trained (spectral-norm parametrizations
  included, loadable into the family's generator), plus the graph's run-time tensors (the family's prefix);
* ``config.yaml``, ``metrics.json``, ``TRAINING.md`` and ``bundle.json`` (sha256 of every file).

``python run.py export BUNDLE_DIR -o NEW_DIR`` exports a bundle again from its own weights (a format-1 bundle
comes out in format 2). Parametrizations are baked into plain weights (eval mode) before tracing. Everything is
written into a temporary folder next to the target, verified by loading it with the engine (ONNX Runtime and
torch backends against torch eager, every output, max abs error <= 1e-3), and only then renamed into place, so a
failed export never leaves a half-written bundle.
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import json
import logging
import os
import platform
import shutil
import tempfile
import time
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.utils import parametrize

from engine import configs
from engine.bundle import (
    CONFIG_FILE,
    FORMAT_VERSION,
    MANIFEST,
    METRICS_FILE,
    ONNX_FILE,
    PT2_FILE,
    TRAINING_FILE,
    WEIGHTS_FILE,
    sha256_file,
)
from engine.errors import UserError
from training import families, runs
from training.families.contract import Family, GraphSource, InferenceGraph

log = logging.getLogger(__name__)

ONNX_OPSET = 18
LEGACY_ONNX_OPSET = 17
CHECK_TOLERANCE = 1e-3
DEFAULT_MAX_BATCH = 1024


class ExportError(RuntimeError):
    """The exported graph failed its self-check (the message gives the error and the backend)."""


# ----------------------------------------------------------------------------------------------- graph
def bake_parametrizations(module: nn.Module) -> nn.Module:
    """A deep copy of ``module`` in eval mode, on CPU, float32, with every parametrization baked into a plain tensor.

    The copy's parametrized modules get their own classes first: ``copy.deepcopy``
    shares the dynamically created ``Parametrized*`` class with the original,
    and ``remove_parametrizations`` deletes the property from that class, which
    would break the original module.
    """
    baked = copy.deepcopy(module).eval().cpu().float()
    for sub in baked.modules():
        if parametrize.is_parametrized(sub):
            cls = type(sub)
            sub.__class__ = type(cls.__name__, cls.__bases__, dict(cls.__dict__))
            for name in list(sub.parametrizations.keys()):
                parametrize.remove_parametrizations(sub, name, leave_parametrized=True)
    for p in baked.parameters():
        p.requires_grad_(False)
    return baked


def inference_graph(
    family: Family, cfg: Any, G: nn.Module, labels: Sequence[str], source: GraphSource, options: argparse.Namespace
) -> InferenceGraph:
    """The family's inference graph of ``G`` (not modified: a baked copy is used), in eval mode."""
    graph = family.inference(cfg, bake_parametrizations(G), list(labels), source, options)
    graph.module.eval()
    return graph


def _dynamic_shapes(graph: InferenceGraph, max_batch: int) -> tuple[dict[int, Any], ...]:
    """A dynamic batch axis for every input, by position (an input may be named ``class``, which no Python
    argument can be, so the module's argument names need not match the input names)."""
    batch = torch.export.Dim("batch", min=1, max=max_batch)
    return tuple({0: batch} for _ in graph.inputs)


def export_pt2(graph: InferenceGraph, path: Path, max_batch: int) -> None:
    """Write the graph's module as a ``torch.export`` program with a dynamic batch axis (1..max_batch)."""
    program = torch.export.export(graph.module, graph.examples(2), dynamic_shapes=_dynamic_shapes(graph, max_batch))
    torch.export.save(program, str(path))


@contextmanager
def _quiet_exporter() -> Iterator[None]:
    """Silence the ONNX exporter's INFO chatter (onnxscript rewrites, onnx_ir passes) and its known warnings."""
    names = ("onnx_ir", "onnxscript", "torch.onnx", "torch.export")
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=FutureWarning)
            warnings.filterwarnings("ignore", message=".*axis name.*")
            warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def export_onnx(graph: InferenceGraph, path: Path, max_batch: int) -> str:
    """Write the graph's module as ONNX with its input and output names and a dynamic batch axis.

    Tries the dynamo exporter (opset 18) first and falls back to the TorchScript-based exporter (opset 17).
    The file is checked with ``onnx.checker`` (full check). Returns a description of the exporter used.

    Raises:
        ExportError: both exporters failed or produced an invalid model.
    """
    import onnx

    args = graph.examples(2)
    names = {"input_names": list(graph.inputs), "output_names": list(graph.outputs)}
    try:
        torch.onnx.export(
            graph.module,
            args,
            str(path),
            dynamo=True,
            opset_version=ONNX_OPSET,
            dynamic_shapes=_dynamic_shapes(graph, max_batch),
            external_data=False,
            verbose=False,
            **names,
        )
        onnx.checker.check_model(str(path), full_check=True)
        return f"torch.onnx dynamo exporter, opset {ONNX_OPSET}"
    except Exception as exc:  # noqa: BLE001 - fall back on any exporter failure
        log.warning("dynamo ONNX export failed (%s: %s); using the legacy exporter", type(exc).__name__, exc)
        path.unlink(missing_ok=True)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=DeprecationWarning)  # "legacy TorchScript-based ONNX export"
            warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)  # GroupNorm's batch-size check
            torch.onnx.export(
                graph.module,
                args,
                str(path),
                dynamo=False,
                opset_version=LEGACY_ONNX_OPSET,
                dynamic_axes={name: {0: "batch"} for name in [*graph.inputs, *graph.outputs]},
                do_constant_folding=True,
                **names,
            )
        onnx.checker.check_model(str(path), full_check=True)
    except Exception as exc:  # noqa: BLE001
        raise ExportError(f"ONNX export failed with both exporters ({type(exc).__name__}: {exc})") from exc
    return f"torch.onnx legacy (TorchScript) exporter, opset {LEGACY_ONNX_OPSET}"


# ----------------------------------------------------------------------------------------------- files
def _training_md(
    family: Family, cfg: Any, training: dict[str, Any], export: dict[str, Any], labels: Sequence[str]
) -> str:
    lines = ["# Training record", ""]
    lines += ["## Command", "", "```", str(training.get("command") or "(not recorded)"), "```", ""]
    data = training.get("data") or []
    lines += ["## Data", ""]
    lines += [f"- `{d}`" for d in data] if data else ["(not recorded)"]
    lines += ["", f"{len(labels)} labels: {', '.join(labels[:20])}{' …' if len(labels) > 20 else ''}"]
    lines += ["", "## Run", ""]
    lines.append(f"- steps: {training.get('steps', '(not recorded)')}")
    wall = training.get("wall_time_s")
    if wall is not None:
        lines.append(f"- wall time: {float(wall) / 3600:.2f} h ({float(wall):.0f} s)")
    for key, value in training.items():
        if key not in ("command", "data", "steps", "wall_time_s"):
            lines.append(f"- {key}: {value}")
    lines += ["", "## Model", ""]
    lines.append(f"- {family.describe(cfg)}")
    lines.append(f"- full resolved config: `{CONFIG_FILE}`")
    lines += ["", "## Export", ""]
    lines += [f"- {k}: {v}" for k, v in export.items()]
    return "\n".join(lines) + "\n"


def _self_check(bundle_dir: Path, graph: InferenceGraph) -> dict[str, float]:
    """Load the bundle with the engine and compare each CPU backend with torch eager, every output; returns the
    largest absolute error per backend."""
    from engine.generator import Generator

    args = graph.examples(3, seed=1234)
    with torch.inference_mode():
        out = graph.module(*args)
    expected = dict(zip(graph.outputs, out if isinstance(out, (tuple, list)) else (out,)))
    errors: dict[str, float] = {}
    for backend in ("onnxruntime-cpu", "torch-cpu"):
        gen = Generator(bundle_dir, backend=backend, max_batch=4, warmup=False, fallback=False)
        try:
            got = gen.run(**{name: a.numpy() for name, a in zip(graph.inputs, args)})
        finally:
            gen.close()
        err = max(float(np.abs(got[name] - expected[name].numpy()).max()) for name in graph.outputs)
        errors[backend] = err
        if not np.isfinite(err) or err > CHECK_TOLERANCE:
            raise ExportError(
                f"export self-check failed: {backend} differs from torch eager by {err:.3g} "
                f"(tolerance {CHECK_TOLERANCE:g})"
            )
    return errors


def _normalise_modes(folder: Path) -> None:
    """Give the bundle ordinary permissions (mkdtemp makes the folder 0700; some writers make files 0600)."""
    umask = os.umask(0)
    os.umask(umask)
    folder.chmod(0o777 & ~umask)
    for f in folder.iterdir():
        f.chmod(0o666 & ~umask)


def _replace_dir(tmp: Path, out_dir: Path) -> None:
    if not out_dir.exists():
        os.rename(tmp, out_dir)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old-", dir=out_dir.parent))
    old.rmdir()
    os.rename(out_dir, old)
    try:
        os.rename(tmp, out_dir)
    except OSError:
        os.rename(old, out_dir)
        raise
    shutil.rmtree(old, ignore_errors=True)


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def _io_manifest(specs: dict, inputs: bool) -> dict[str, dict[str, Any]]:
    out = {}
    for name, spec in specs.items():
        entry: dict[str, Any] = {"shape": list(spec.shape), "doc": spec.doc}
        if inputs:
            entry["fill"] = spec.fill
        out[name] = entry
    return out


def write_bundle(
    family: Family,
    cfg: Any,
    G: nn.Module,
    labels: Sequence[str],
    graph: InferenceGraph,
    out_dir: str | Path,
    *,
    training_info: dict[str, Any],
    metrics: dict[str, Any] | None = None,
    max_batch: int = DEFAULT_MAX_BATCH,
    check: bool = True,
) -> Path:
    """Write a verified model bundle for ``graph`` to ``out_dir`` (replacing an older bundle there).

    Args:
        family, cfg: the model family and its resolved config (written as ``config.yaml``).
        G: the generator side as trained (its state goes to ``generator.safetensors``; not modified).
        labels: class names; index = training label.
        graph: the family's inference graph of ``G`` (:func:`inference_graph`).
        out_dir: bundle directory to create. An existing bundle there is replaced; an existing non-empty
            folder that is not a bundle is refused.
        training_info: ``command`` (str), ``data`` (list of dataset folders), ``steps`` (int; ``step`` is accepted
            too), optionally ``wall_time_s`` and other keys, for ``TRAINING.md`` and the manifest's ``training``.
        metrics: evaluation figures for ``metrics.json`` (``None``: ``{}``).
        max_batch: largest batch of the torch.export program's dynamic batch axis.
        check: load the bundle with the engine and compare with torch eager (default).

    Returns:
        ``out_dir`` as a :class:`Path`.

    Raises:
        UserError: ``out_dir`` exists and is not a bundle.
        ExportError: ONNX export failed or the self-check found a mismatch > 1e-3.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or (any(out_dir.iterdir()) and not (out_dir / MANIFEST).is_file())):
        raise UserError(f"{out_dir}: exists and is not a model bundle; choose another output folder")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        with _quiet_exporter():
            export_pt2(graph, tmp / PT2_FILE, max_batch)
            exporter = export_onnx(graph, tmp / ONNX_FILE, max_batch)
        from safetensors.torch import save_file

        state = {k: v.detach().cpu().contiguous() for k, v in G.state_dict().items()}
        clash = sorted(set(state) & set(graph.extra_tensors))
        if clash:
            raise ExportError(f"the graph's run-time tensors {clash[:3]} collide with the generator's state")
        state.update(graph.extra_tensors)
        save_file(state, str(tmp / WEIGHTS_FILE), metadata={"n_labels": str(len(labels))})
        configs.dump(cfg, tmp / CONFIG_FILE)
        (tmp / METRICS_FILE).write_text(json.dumps(metrics or {}, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        training = dict(training_info)
        if "steps" not in training and "step" in training:
            training["steps"] = training.pop("step")
        training.setdefault("command", "")
        training.setdefault("data", [])
        training.setdefault("steps", 0)
        export = {
            "exporter": exporter,
            "torch": torch.__version__,
            "python": platform.python_version(),
            "pt2_max_batch": max_batch,
            "exported": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        }
        (tmp / TRAINING_FILE).write_text(_training_md(family, cfg, training, export, labels), encoding="utf-8")
        files = [ONNX_FILE, PT2_FILE, WEIGHTS_FILE, CONFIG_FILE, METRICS_FILE, TRAINING_FILE]
        manifest = {
            "format_version": FORMAT_VERSION,
            "family": family.name,
            "sample_rate": int(graph.sample_rate),
            "inputs": _io_manifest(graph.inputs, True),
            "outputs": _io_manifest(graph.outputs, False),
            "labels": list(labels),
            "family_info": _jsonable(graph.family_info),
            "files": {name: sha256_file(tmp / name) for name in files},
            "created": export["exported"],
            "training": _jsonable(training),
            "export": export,
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
        _normalise_modes(tmp)
        if check:
            errors = _self_check(tmp, graph)
            log.info("export self-check passed: %s", ", ".join(f"{k} max abs err {v:.2e}" for k, v in errors.items()))
        _replace_dir(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("wrote bundle %s in %.1f s (%s)", out_dir, time.perf_counter() - started, exporter)
    return out_dir


def export_bundle(
    G: nn.Module,
    cfg: Any,
    labels: Sequence[str],
    out_dir: str | Path,
    *,
    training_info: dict[str, Any],
    metrics: dict[str, Any] | None = None,
    source: GraphSource | None = None,
    options: dict[str, Any] | None = None,
    max_batch: int = DEFAULT_MAX_BATCH,
    check: bool = True,
) -> Path:
    """Export generator side ``G`` of family ``cfg.family`` in one call: :func:`inference_graph` (``options``: the
    family's export flags by their argparse names, defaults otherwise) then :func:`write_bundle`.

    Raises:
        UserError, ExportError: as :func:`write_bundle` and the family's ``inference``.
    """
    family = families.get(cfg.family)
    parser = argparse.ArgumentParser(add_help=False)
    family.add_export_arguments(parser.add_argument_group())
    namespace = argparse.Namespace(**{**vars(parser.parse_args([])), **(options or {})})
    graph = inference_graph(family, cfg, G, labels, source or GraphSource(), namespace)
    return write_bundle(family, cfg, G, labels, graph, out_dir, training_info=training_info, metrics=metrics,
                        max_batch=max_batch, check=check)  # fmt: skip


# ----------------------------------------------------------------------------------------------- sources
@dataclass
class BundleSource:
    """A model bundle's generator, rebuilt for export or fine-tuning (:func:`load_bundle_source`).

    Attributes:
        family, cfg, labels: the family, its config (``config.yaml``, upgraded) and the class names.
        G: the generator side with the bundle's weights, on the CPU in eval mode.
        extra_tensors: the rest of ``generator.safetensors`` (the graph's run-time tensors).
        manifest: the upgraded ``bundle.json``.
    """

    family: Family
    cfg: Any
    labels: list[str]
    G: nn.Module
    extra_tensors: dict[str, torch.Tensor]
    manifest: dict[str, Any]


def load_bundle_source(bundle_dir: str | Path) -> BundleSource:
    """Rebuild a model bundle's generator side from ``bundle.json``, ``config.yaml`` and ``generator.safetensors``.

    Raises:
        UserError: a missing or unreadable file, an unknown family, or weights that do not fit the config.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from engine.bundle import load_bundle
    from training.config import load_config

    bundle = load_bundle(bundle_dir)
    folder = Path(bundle_dir)
    cfg = load_config(folder / CONFIG_FILE)
    if cfg.family != bundle.family:
        raise UserError(f"{folder / CONFIG_FILE}: family {cfg.family!r}, but {MANIFEST} says {bundle.family!r}")
    family = families.get(bundle.family)
    labels = list(bundle.labels)
    path = folder / WEIGHTS_FILE
    try:
        tensors = load_file(str(path))
    except (OSError, SafetensorError) as err:
        raise UserError(f"{path}: cannot read the generator weights ({err})") from err
    G, _ = family.build(cfg, labels)
    names = set(G.state_dict())
    try:
        G.load_state_dict({k: v for k, v in tensors.items() if k in names})
    except RuntimeError as err:
        raise UserError(f"{path}: the weights do not fit {folder / CONFIG_FILE} ({str(err).splitlines()[0]})") from err
    extra = {k: v for k, v in tensors.items() if k not in names}
    return BundleSource(family, cfg, labels, G.eval(), extra, dict(bundle.manifest))


# ----------------------------------------------------------------------------------------------- CLI
def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``run.py export RUN_DIR -o BUNDLE_DIR`` (or ``run.py export BUNDLE_DIR -o NEW_BUNDLE_DIR``), with every
    family's own flags in a group of their own."""
    parser.add_argument(
        "run_dir",
        type=Path,
        metavar="RUN_OR_BUNDLE",
        help="training run folder (checkpoints/, command.txt, ...), or a model bundle to export again with this "
        "exporter: its weights, run-time tensors, training record and figures are kept",
    )
    parser.add_argument("-o", "--out", type=Path, required=True, help="bundle folder to write (replaced if a bundle)")
    parser.add_argument("--checkpoint", type=Path, default=None, help="checkpoint file (default: the latest)")
    parser.add_argument(
        "--generator", choices=runs.GENERATORS, default="ema",
        help="the moving-average weights (default) or the trained weights themselves",
    )  # fmt: skip
    parser.add_argument(
        "--max-batch", type=int, default=DEFAULT_MAX_BATCH, help="largest batch of model.pt2 (default %(default)s)"
    )
    parser.add_argument(
        "--metrics", type=Path, metavar="METRICS.json",
        help="evaluation figures to write as the bundle's metrics.json, e.g. evaluate's output for these weights "
        "(default: RUN_DIR/metrics.json, or the source bundle's)",
    )  # fmt: skip
    parser.add_argument(
        "--data", action="append", default=None, metavar="DIR",
        help="the training data, where a family's export reads it (default: the run's split.json, or the bundle's "
        "training record); repeatable",
    )  # fmt: skip
    add_family_arguments(parser, "add_export_arguments")


def add_family_arguments(parser: argparse.ArgumentParser, hook: str) -> None:
    """Add each family's flags (``hook``: ``add_export_arguments`` or ``add_evaluate_arguments``) in its own group.

    Families may declare the same flag with the same meaning (e.g. two face families' ``--unseen-voices``); the
    parser keeps one (``conflict_handler="resolve"``)."""
    parser.conflict_handler = "resolve"
    for name in families.names():
        group = parser.add_argument_group(f"{name} options")
        getattr(families.get(name), hook)(group)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise UserError(f"{path}: cannot read JSON ({exc})") from exc


def export_run(run_dir: Path, out: Path, args: argparse.Namespace, metrics: dict[str, Any] | None) -> Path:
    """Export a run folder's checkpoint (``args.checkpoint``, ``args.generator``) to ``out``."""
    family, G, cfg, labels, info = runs.load_run(run_dir, getattr(args, "checkpoint", None),
                                                 getattr(args, "generator", "ema"))  # fmt: skip
    split = runs.read_split(run_dir)
    data = tuple(getattr(args, "data", None) or (split or {}).get("data") or ())
    source = GraphSource(run_dir=run_dir, data=data, split=split, for_export=True)
    graph = inference_graph(family, cfg, G, labels, source, args)
    info = {**info, "data": list(data)}
    if info.get("wall_time_s") is None:
        step = info.get("step")
        wall = runs.wall_time_from_log(run_dir / runs.LOG_FILE, step if isinstance(step, int) else None)
        if wall is not None:
            info["wall_time_s"] = round(wall, 1)
            info["wall_time_source"] = ("log.jsonl, first record to the checkpoint's step (includes pauses between "
                                        "resumed runs)")  # fmt: skip
    if metrics is None and (run_dir / METRICS_FILE).is_file():
        metrics = _read_json(run_dir / METRICS_FILE)
    return write_bundle(family, cfg, G, labels, graph, out, training_info=info, metrics=metrics,
                        max_batch=getattr(args, "max_batch", DEFAULT_MAX_BATCH))  # fmt: skip


def reexport_bundle(source_dir: Path, out: Path, args: argparse.Namespace, metrics: dict[str, Any] | None) -> Path:
    """Export the model bundle ``source_dir`` again to ``out`` (may be ``source_dir`` itself: everything is read
    first): same weights, run-time tensors and family info (rebuilt by the family, so with this version's
    graph), labels, training record (plus ``reexported_from``) and ``metrics.json`` (or ``metrics``); a new
    graph, manifest (format 2), hashes and self-check.

    Raises:
        UserError: as :func:`load_bundle_source`, or as the family's ``inference``.
        ExportError: as :func:`write_bundle`.
    """
    src = load_bundle_source(source_dir)
    training = dict(src.manifest.get("training", {}))
    data = tuple(getattr(args, "data", None) or training.get("data") or ())
    source = GraphSource(data=data, bundle_tensors=src.extra_tensors, family_info=src.manifest["family_info"])
    options = argparse.Namespace(**{**vars(args), **_bundle_options(src, args)})
    graph = inference_graph(src.family, src.cfg, src.G, src.labels, source, options)
    metrics_path = Path(source_dir) / METRICS_FILE
    old_info = src.manifest["family_info"]
    if metrics is None and metrics_path.is_file() and all(old_info.get(k) == v for k, v in graph.family_info.items()):
        metrics = _read_json(metrics_path)  # the same graph: its figures still hold
    training["reexported_from"] = {"bundle": str(source_dir), "created": src.manifest.get("created"),
                                   "files": src.manifest.get("files", {})}  # fmt: skip
    return write_bundle(src.family, src.cfg, src.G, src.labels, graph, out, training_info=training, metrics=metrics,
                        max_batch=getattr(args, "max_batch", DEFAULT_MAX_BATCH))  # fmt: skip


def _bundle_options(src: BundleSource, args: argparse.Namespace) -> dict[str, Any]:
    """Export options a bundle keeps unless the command line changes them: its ``family_info`` values for flags
    left at their defaults (e.g. wav2pix's truncation)."""
    parser = argparse.ArgumentParser(add_help=False)
    src.family.add_export_arguments(parser.add_argument_group())
    defaults = vars(parser.parse_args([]))
    info = src.manifest["family_info"]
    return {k: info[k] for k, v in defaults.items() if k in info and getattr(args, k, v) == v}


def main(args: argparse.Namespace) -> int:
    """Export the run folder ``args.run_dir`` to ``args.out`` (or export a bundle again, see
    :func:`reexport_bundle`); prints the bundle path."""
    run_dir: Path = args.run_dir
    metrics_file = getattr(args, "metrics", None)
    metrics = _read_json(metrics_file) if metrics_file is not None else None
    if metrics is not None and not isinstance(metrics, dict):
        raise UserError(f"{metrics_file}: expected a JSON object of evaluation figures")
    if (run_dir / MANIFEST).is_file():
        changed = [flag for flag, value, default in (("--checkpoint", getattr(args, "checkpoint", None), None),
                                                     ("--generator", getattr(args, "generator", "ema"), "ema"))
                   if value != default]  # fmt: skip
        if changed:
            raise UserError(f"{run_dir}: a model bundle has no checkpoints; {', '.join(changed)} apply to run folders")
        out = reexport_bundle(run_dir, args.out, args, metrics)
        print(f"wrote {out} (exported again from {run_dir})")
        return 0
    if not run_dir.is_dir():
        raise UserError(f"{run_dir}: run folder not found")
    out = export_run(run_dir, args.out, args, metrics)
    print(f"wrote {out}")
    return 0
