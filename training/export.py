"""Export a trained generator to a model bundle (``docs/CONTRACTS.md``), and check it.

``python run.py export RUN_DIR -o BUNDLE_DIR`` loads the run's EMA generator
(``training.trainer.load_run``) and writes:

* ``model.onnx`` — :class:`~training.models.wav2pix.Wav2PixInference` (raw audio
  + noise -> image, feature extraction inside), dynamic batch axis, opset 18
  via the dynamo exporter (falls back to the TorchScript-based exporter, opset
  17, if that fails), checked with ``onnx.checker``;
* ``model.pt2`` — the same module as a ``torch.export`` program with a dynamic
  batch dimension (1..max_batch);
* ``generator.safetensors`` — the generator-side state dict as trained
  (spectral-norm parametrizations included, loadable into ``Wav2PixGenerator``), plus, for a bundle
  with a pose prior, its buffers under ``pose_prior.`` (``PoseCodePrior.from_state_dict``; strip them
  with :func:`split_pose_prior` before ``load_state_dict``);
* ``config.yaml``, ``metrics.json``, ``TRAINING.md`` and ``bundle.json`` (sha256 of every file).

Spectral-norm parametrizations are baked into plain weights (eval mode, no
power iteration) before tracing. Everything is written into a temporary folder
next to the target, verified by loading it with the engine (ONNX Runtime and
torch backends against torch eager, max abs error <= 1e-3), and only then
renamed into place, so a failed export never leaves a half-written bundle.
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
from collections.abc import Iterator
from contextlib import contextmanager
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
from training.config import POSE_PRIORS, Config
from training.models.wav2pix import (
    NeighbourPosePrior,
    PoseCodePrior,
    Wav2PixGenerator,
    Wav2PixInference,
    pose_prior_from_state_dict,
)

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


POSE_PRIOR_PREFIX = "pose_prior."


def split_pose_prior(
    state: dict[str, torch.Tensor],
) -> tuple[dict[str, torch.Tensor], PoseCodePrior | NeighbourPosePrior | None]:
    """A bundle's ``generator.safetensors`` tensors → (the generator's state dict, its pose prior or ``None``).

    Raises:
        ValueError: pose-prior tensors that do not form a valid :class:`PoseCodePrior` or
            :class:`NeighbourPosePrior`.
    """
    prior = {k[len(POSE_PRIOR_PREFIX) :]: v for k, v in state.items() if k.startswith(POSE_PRIOR_PREFIX)}
    rest = {k: v for k, v in state.items() if not k.startswith(POSE_PRIOR_PREFIX)}
    return rest, (pose_prior_from_state_dict(prior) if prior else None)


def inference_module(
    net: Wav2PixGenerator, truncation: float = 1.0, pose_prior: PoseCodePrior | NeighbourPosePrior | None = None
) -> Wav2PixInference:
    """The exported graph (:class:`Wav2PixInference`, noise scaled by ``truncation``, then the first noise inputs
    mapped by ``pose_prior`` if given) from a baked copy of ``net``."""
    return Wav2PixInference(bake_parametrizations(net), truncation, pose_prior).eval()


def _example_inputs(cfg: Config, batch: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    audio = (torch.rand(batch, cfg.audio.window_samples, generator=g) * 2 - 1) * 0.5
    noise = torch.randn(batch, cfg.model.noise_dim, generator=g)
    return audio, noise


def _dynamic_shapes(max_batch: int) -> dict[str, dict[int, Any]]:
    batch = torch.export.Dim("batch", min=1, max=max_batch)
    return {"audio": {0: batch}, "noise": {0: batch}}


def export_pt2(module: nn.Module, cfg: Config, path: Path, max_batch: int) -> None:
    """Write ``module`` as a ``torch.export`` program with a dynamic batch axis (1..max_batch)."""
    program = torch.export.export(module, _example_inputs(cfg, 2), dynamic_shapes=_dynamic_shapes(max_batch))
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


def export_onnx(module: nn.Module, cfg: Config, path: Path, max_batch: int) -> str:
    """Write ``module`` as ONNX (inputs ``audio``, ``noise``; output ``image``; dynamic batch).

    Tries the dynamo exporter (opset 18) first and falls back to the
    TorchScript-based exporter (opset 17). The file is checked with
    ``onnx.checker`` (full check). Returns a description of the exporter used.

    Raises:
        ExportError: both exporters failed or produced an invalid model.
    """
    import onnx

    args = _example_inputs(cfg, 2)
    names = {"input_names": ["audio", "noise"], "output_names": ["image"]}
    try:
        torch.onnx.export(
            module,
            args,
            str(path),
            dynamo=True,
            opset_version=ONNX_OPSET,
            dynamic_shapes=_dynamic_shapes(max_batch),
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
                module,
                args,
                str(path),
                dynamo=False,
                opset_version=LEGACY_ONNX_OPSET,
                dynamic_axes={"audio": {0: "batch"}, "noise": {0: "batch"}, "image": {0: "batch"}},
                do_constant_folding=True,
                **names,
            )
        onnx.checker.check_model(str(path), full_check=True)
    except Exception as exc:  # noqa: BLE001
        raise ExportError(f"ONNX export failed with both exporters ({type(exc).__name__}: {exc})") from exc
    return f"torch.onnx legacy (TorchScript) exporter, opset {LEGACY_ONNX_OPSET}"


# ----------------------------------------------------------------------------------------------- files
def _training_md(cfg: Config, training: dict[str, Any], export: dict[str, Any], identities: list[str]) -> str:
    lines = ["# Training record", ""]
    lines += ["## Command", "", "```", str(training.get("command") or "(not recorded)"), "```", ""]
    data = training.get("data") or []
    lines += ["## Data", ""]
    lines += [f"- `{d}`" for d in data] if data else ["(not recorded)"]
    lines += ["", f"{len(identities)} identities: {', '.join(identities[:20])}{' …' if len(identities) > 20 else ''}"]
    lines += ["", "## Run", ""]
    lines.append(f"- steps: {training.get('steps', '(not recorded)')}")
    wall = training.get("wall_time_s")
    if wall is not None:
        lines.append(f"- wall time: {float(wall) / 3600:.2f} h ({float(wall):.0f} s)")
    for key, value in training.items():
        if key not in ("command", "data", "steps", "wall_time_s"):
            lines.append(f"- {key}: {value}")
    m = cfg.model
    lines += ["", "## Model", ""]
    lines.append(
        f"- {m.family}, front end {m.front_end}, {m.image_size} px, g_channels {m.g_channels} "
        f"(min {m.g_min_channels}), encoder_channels {m.encoder_channels}, embedding {m.embedding_dim}, noise {m.noise_dim}"
    )
    lines.append(f"- audio: {cfg.audio.sample_rate} Hz, window {cfg.audio.window_samples} samples")
    lines.append(f"- full resolved config: `{CONFIG_FILE}`")
    lines += ["", "## Export", ""]
    lines += [f"- {k}: {v}" for k, v in export.items()]
    return "\n".join(lines) + "\n"


def _self_check(bundle_dir: Path, module: nn.Module, cfg: Config) -> dict[str, float]:
    """Load the bundle with the engine and compare each CPU backend with torch eager; returns max abs errors."""
    from engine.generator import Generator

    audio, noise = _example_inputs(cfg, 3, seed=1234)
    with torch.inference_mode():
        expected = module(audio, noise).numpy()
    errors: dict[str, float] = {}
    for backend in ("onnxruntime-cpu", "torch-cpu"):
        gen = Generator(bundle_dir, backend=backend, max_batch=4, warmup=False, fallback=False)
        try:
            got = gen.run(audio.numpy(), noise.numpy())
        finally:
            gen.close()
        err = float(np.abs(got - expected).max())
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


def export_bundle(
    net: Wav2PixGenerator,
    cfg: Config,
    identities: list[str],
    out_dir: str | Path,
    *,
    training_info: dict[str, Any],
    metrics: dict[str, Any] | None = None,
    max_batch: int = DEFAULT_MAX_BATCH,
    check: bool = True,
    truncation: float = 1.0,
    pose_prior: PoseCodePrior | NeighbourPosePrior | None = None,
) -> Path:
    """Write a verified model bundle for ``net`` to ``out_dir`` (replacing an older bundle there).

    Args:
        net: the (EMA) generator side; not modified (a baked copy is exported).
        cfg: the resolved training config (written as ``config.yaml``).
        identities: identity names; index = training label.
        out_dir: bundle directory to create. An existing bundle there is replaced;
            an existing non-empty folder that is not a bundle is refused.
        training_info: ``command`` (str), ``data`` (list of dataset folders), ``steps``
            (int; ``step`` is accepted too), optionally ``wall_time_s`` and other
            keys, which go to ``TRAINING.md`` and the manifest's ``training``.
        metrics: evaluation figures for ``metrics.json`` (``None``: ``{}``).
        max_batch: largest batch of the torch.export program's dynamic batch axis.
        check: load the bundle with the engine and compare with torch eager (default).
        truncation: noise scale psi applied inside the graph (truncation trick, Brock et al. 2019); the
            manifest records it as ``truncation``. 1.0 = none.
        pose_prior: for a generator with ``model.pose_code_dim`` > 0, the map from standard-normal noise to the
            training faces' pose codes (:class:`~training.models.wav2pix.PoseCodePrior`), applied inside the graph
            after the truncation, or a :class:`~training.models.wav2pix.NeighbourPosePrior`; the manifest records
            ``pose_prior`` (its ``kind``: "neighbours", "quantile", "copula" or "speaker"; "normal" without one).

    Returns:
        ``out_dir`` as a :class:`Path`.

    Raises:
        UserError: ``out_dir`` exists and is not a bundle, or the config is not a wav2pix one.
        ExportError: ONNX export failed or the self-check found a mismatch > 1e-3.
    """
    if cfg.model.family != "wav2pix":
        raise UserError(f"export supports the wav2pix family, got {cfg.model.family!r}")
    out_dir = Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or (any(out_dir.iterdir()) and not (out_dir / MANIFEST).is_file())):
        raise UserError(f"{out_dir}: exists and is not a model bundle; choose another output folder")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    module = inference_module(net, truncation, pose_prior)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        with _quiet_exporter():
            export_pt2(module, cfg, tmp / PT2_FILE, max_batch)
            exporter = export_onnx(module, cfg, tmp / ONNX_FILE, max_batch)
        from safetensors.torch import save_file

        state = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
        if pose_prior is not None:
            state.update({f"{POSE_PRIOR_PREFIX}{k}": v.contiguous() for k, v in pose_prior.state_dict().items()})
        save_file(state, str(tmp / WEIGHTS_FILE), metadata={"n_identities": str(len(identities))})
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
        (tmp / TRAINING_FILE).write_text(_training_md(cfg, training, export, identities), encoding="utf-8")
        files = [ONNX_FILE, PT2_FILE, WEIGHTS_FILE, CONFIG_FILE, METRICS_FILE, TRAINING_FILE]
        size = cfg.model.image_size
        manifest = {
            "format_version": FORMAT_VERSION,
            "family": cfg.model.family,
            "sample_rate": cfg.audio.sample_rate,
            "window_samples": cfg.audio.window_samples,
            "noise_dim": cfg.model.noise_dim,
            "image_size": size,
            "inputs": {"audio": [None, cfg.audio.window_samples], "noise": [None, cfg.model.noise_dim]},
            "outputs": {"image": [None, 3, size, size]},
            "identities": list(identities),
            "truncation": float(truncation),
            # the first pose_code_dim noise inputs are a pose code (training.landmarks.PoseCodes); 0: none
            "pose_code_dim": cfg.model.pose_code_dim,
            # the next appearance_code_dim noise inputs are an appearance code (training.appearance); 0: none
            "appearance_code_dim": cfg.model.appearance_code_dim,
            # how standard-normal noise becomes that code, in the graph: the prior's kind ("neighbours", "quantile",
            # "copula", "speaker") or "normal"
            "pose_prior": pose_prior.kind if pose_prior is not None else "normal",
            # the neighbours prior's bank: pairs, faces, neighbours k, search dimensions (null for other priors)
            "pose_prior_fit": getattr(pose_prior, "fit_report", None),
            "files": {name: sha256_file(tmp / name) for name in files},
            "created": export["exported"],
            "training": _jsonable(training),
            "export": export,
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
        _normalise_modes(tmp)
        if check:
            errors = _self_check(tmp, module, cfg)
            log.info("export self-check passed: %s", ", ".join(f"{k} max abs err {v:.2e}" for k, v in errors.items()))
        _replace_dir(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("wrote bundle %s in %.1f s (%s)", out_dir, time.perf_counter() - started, exporter)
    return out_dir


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


# ----------------------------------------------------------------------------------------------- CLI
def load_bundle_source(
    bundle_dir: str | Path,
) -> tuple[Wav2PixGenerator, Config, list[str], PoseCodePrior | NeighbourPosePrior | None, dict[str, Any]]:
    """A model bundle's generator side, rebuilt for export: ``(net, cfg, identities, pose_prior, manifest)``.

    Reads ``bundle.json``, ``config.yaml`` and ``generator.safetensors`` (the net's state dict, spectral
    normalisation included, plus the pose prior's tensors under ``pose_prior.``). ``net`` is on CPU in eval mode.

    Raises:
        UserError: a missing or unreadable file, a family other than wav2pix, or weights that do not fit the
            bundle's config.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from engine.bundle import load_bundle
    from training.config import load_config
    from training.models.wav2pix import build

    bundle = load_bundle(bundle_dir)
    folder = Path(bundle_dir)
    cfg = load_config(folder / CONFIG_FILE)
    if cfg.model.family != "wav2pix":
        raise UserError(f"{folder / CONFIG_FILE}: export supports the wav2pix family, got {cfg.model.family!r}")
    identities = list(bundle.identities)
    path = folder / WEIGHTS_FILE
    try:
        state, prior = split_pose_prior(load_file(str(path)))
    except (OSError, SafetensorError, ValueError) as err:
        raise UserError(f"{path}: cannot read the generator weights ({err})") from err
    net, _ = build(cfg.audio, cfg.model, len(identities))
    try:
        net.load_state_dict(state)
    except RuntimeError as err:
        raise UserError(f"{path}: the weights do not fit {folder / CONFIG_FILE} ({str(err).splitlines()[0]})") from err
    if prior is not None and bundle.manifest.get("pose_prior_fit") is not None:
        prior.fit_report = bundle.manifest["pose_prior_fit"]
    return net.eval(), cfg, identities, prior, dict(bundle.manifest)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``run.py export RUN_DIR -o BUNDLE_DIR`` (or ``run.py export BUNDLE_DIR -o NEW_BUNDLE_DIR``)."""
    parser.add_argument(
        "run_dir",
        type=Path,
        metavar="RUN_OR_BUNDLE",
        help="training run folder (checkpoints/, command.txt, ...), or a model bundle to export again with this "
        "exporter: its weights, pose prior, truncation, training record and figures are kept",
    )
    parser.add_argument("-o", "--out", type=Path, required=True, help="bundle folder to write (replaced if a bundle)")
    parser.add_argument("--checkpoint", type=Path, default=None, help="checkpoint file (default: the latest)")
    parser.add_argument(
        "--generator",
        choices=("ema", "raw"),
        default="ema",
        help="the moving-average weights (default) or the trained weights themselves",
    )
    parser.add_argument(
        "--max-batch", type=int, default=DEFAULT_MAX_BATCH, help="largest batch of model.pt2 (default %(default)s)"
    )
    parser.add_argument(
        "--metrics",
        type=Path,
        metavar="METRICS.json",
        help="evaluation figures to write as the bundle's metrics.json, e.g. evaluate's output for these weights "
        "(default: RUN_DIR/metrics.json, or the source bundle's)",
    )
    parser.add_argument(
        "--truncation",
        type=float,
        default=1.0,
        metavar="PSI",
        help="noise scale inside the graph (truncation trick, Brock et al. 2019; default 1.0 = none)",
    )
    parser.add_argument(
        "--pose-prior",
        choices=POSE_PRIORS,
        default=None,
        help="for a generator with a pose code: map standard-normal noise to the training faces' pose codes "
        "inside the graph (neighbours: the code of one of the 16 training pairs whose speech embeddings are nearest "
        "to the voice's, reads the training data in RUN_DIR/split.json; quantile, the default: marginals; copula: "
        "with the components' correlations; speaker: per training speaker, weighted by the speech identity head; "
        "all need RUN_DIR/pose_codes.safetensors) or feed it as is (normal)",
    )
    parser.add_argument(
        "--calibrate-bank",
        action="store_true",
        help="for the neighbours prior: per training identity, scale the bank's codes and keep the share of its "
        "rows the generator draws best, chosen by the Fréchet distance of the bank's renderings to the real "
        "training faces (training data only; see training/bank_calibration.py; about 0.13 s per bank row and gain "
        "on a CPU)",
    )
    parser.add_argument(
        "--data",
        action="append",
        default=None,
        metavar="DIR",
        help="with --calibrate-bank: the training data the bank was built from (default: the run's split.json, or "
        "the bundle's training record); repeatable",
    )


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise UserError(f"{path}: cannot read JSON ({exc})") from exc


def _wall_time_from_log(path: Path) -> float | None:
    """Seconds between the first and last ``time`` stamps of a training log (JSON lines), or ``None``."""
    if not path.is_file():
        return None
    stamps: list[float] = []
    try:
        with open(path, encoding="utf-8") as fh:
            for line in fh:
                try:
                    t = json.loads(line).get("time")
                except (json.JSONDecodeError, AttributeError):
                    continue
                if isinstance(t, (int, float)):
                    stamps.append(float(t))
    except OSError:
        return None
    return max(stamps) - min(stamps) if len(stamps) >= 2 else None


def _calibrated_bank(
    prior: Any,
    net: nn.Module,
    cfg: Config,
    identities: list[str],
    data: list[str],
    val_face_hashes: set[str] | None,
    source: Path,
) -> NeighbourPosePrior:
    """``export --calibrate-bank``: ``prior`` calibrated by :func:`training.bank_calibration.calibrate_on_data`.

    Raises:
        UserError: ``prior`` is not a neighbours prior (named with ``source``); as ``calibrate_on_data``.
    """
    if not isinstance(prior, NeighbourPosePrior):
        raise UserError(f"{source}: --calibrate-bank needs the neighbours pose prior (--pose-prior neighbours)")
    from training.bank_calibration import calibrate_on_data

    return calibrate_on_data(net, cfg, prior, identities, data, val_face_hashes)[0]


def reexport_bundle(
    source: Path,
    out: Path,
    max_batch: int = DEFAULT_MAX_BATCH,
    metrics: dict[str, Any] | None = None,
    calibrate_bank: bool = False,
    data: list[str] | None = None,
) -> Path:
    """Export the model bundle ``source`` again to ``out`` (may be ``source`` itself: everything is read first):
    same weights, pose prior (rebuilt from its tensors, so with this version's graph), truncation, identities,
    training record (plus ``reexported_from``) and ``metrics.json`` (or ``metrics``, e.g. a new evaluation of the
    same weights); a new graph, hashes and self-check.

    With ``calibrate_bank`` the neighbours prior's bank is calibrated first
    (:func:`training.bank_calibration.calibrate_on_data`) on ``data`` (default: the folders in the bundle's
    training record), and the bundle's old ``metrics.json`` is not carried over unless ``metrics`` is given
    (its figures were of the uncalibrated bank).

    Raises:
        UserError: as :func:`load_bundle_source`; ``calibrate_bank`` for a bundle without a neighbours prior or
            with one already calibrated; as :func:`training.bank_calibration.calibrate_on_data`.
        ExportError: as :func:`export_bundle`.
    """
    net, cfg, identities, prior, manifest = load_bundle_source(source)
    metrics_path = Path(source) / METRICS_FILE
    if metrics is None and metrics_path.is_file() and not calibrate_bank:
        metrics = _read_json(metrics_path)
    training = dict(manifest.get("training", {}))
    training["reexported_from"] = {"bundle": str(source), "created": manifest.get("created"),
                                   "files": manifest.get("files", {})}  # fmt: skip
    if calibrate_bank:
        if "calibration" in (getattr(prior, "fit_report", None) or {}):
            raise UserError(f"{source}: its bank is calibrated already; calibrate the uncalibrated bundle or the run")
        prior = _calibrated_bank(prior, net, cfg, identities, data or list(training.get("data") or []), None, source)
        training["bank_calibrated"] = True
    return export_bundle(
        net,
        cfg,
        identities,
        out,
        training_info=training,
        metrics=metrics,
        max_batch=max_batch,
        truncation=float(manifest.get("truncation", 1.0)),
        pose_prior=prior,
    )


def main(args: argparse.Namespace) -> int:
    """Export the run folder ``args.run_dir`` to ``args.out`` (or export a bundle again, see
    :func:`reexport_bundle`); prints the bundle path."""
    run_dir: Path = args.run_dir
    metrics_file = getattr(args, "metrics", None)
    metrics = _read_json(metrics_file) if metrics_file is not None else None
    if metrics is not None and not isinstance(metrics, dict):
        raise UserError(f"{metrics_file}: expected a JSON object of evaluation figures")
    if (run_dir / MANIFEST).is_file():
        changed = [
            flag
            for flag, value, default in (  # --calibrate-bank and --data apply to bundles too
                ("--checkpoint", getattr(args, "checkpoint", None), None),
                ("--generator", getattr(args, "generator", "ema"), "ema"),
                ("--truncation", getattr(args, "truncation", 1.0), 1.0),
                ("--pose-prior", getattr(args, "pose_prior", None), None),
            )
            if value != default
        ]
        if changed:
            raise UserError(f"{run_dir}: a model bundle is exported again as it is; {', '.join(changed)} apply to "
                            "run folders only")  # fmt: skip
        out = reexport_bundle(
            run_dir,
            args.out,
            args.max_batch,
            metrics,
            bool(getattr(args, "calibrate_bank", False)),
            getattr(args, "data", None),
        )
        print(f"wrote {out} (exported again from {run_dir})")
        return 0
    if not run_dir.is_dir():
        raise UserError(f"{run_dir}: run folder not found")
    try:
        from training.trainer import load_run
    except ImportError as exc:
        if getattr(exc, "name", None) not in ("training.trainer",) and "load_run" not in str(exc):
            raise
        raise UserError("export needs training.trainer.load_run, which this checkout does not have") from exc
    checkpoint = getattr(args, "checkpoint", None)
    generator = getattr(args, "generator", "ema")
    net, cfg, identities, info = load_run(run_dir, checkpoint, generator)
    from training.trainer import pose_prior_for_run

    pose_prior = pose_prior_for_run(run_dir, cfg, getattr(args, "pose_prior", None) or "quantile", net)
    info = dict(info)
    split = _read_json(run_dir / "split.json") if (run_dir / "split.json").is_file() else None
    if not info.get("data") and split is not None:
        info["data"] = split.get("data", [])
    if getattr(args, "calibrate_bank", False):
        hashes = (split or {}).get("val_face_hashes")
        data = getattr(args, "data", None) or list(info.get("data") or [])
        pose_prior = _calibrated_bank(
            pose_prior, net, cfg, list(identities), data, None if hashes is None else set(hashes), run_dir
        )
        info["bank_calibrated"] = True
    if info.get("wall_time_s") is None:
        wall = _wall_time_from_log(run_dir / "log.jsonl")
        if wall is not None:
            info["wall_time_s"] = round(wall, 1)
            info["wall_time_source"] = "log.jsonl, first to last record (includes pauses between resumed runs)"
    metrics_path = run_dir / METRICS_FILE
    if metrics is None and metrics_path.is_file():
        metrics = _read_json(metrics_path)
    out = export_bundle(
        net,
        cfg,
        list(identities),
        args.out,
        training_info=info,
        metrics=metrics,
        max_batch=args.max_batch,
        truncation=args.truncation,
        pose_prior=pose_prior,
    )
    print(f"wrote {out} ({len(identities)} identities, {cfg.model.image_size} px)")
    return 0
