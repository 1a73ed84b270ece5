"""Model bundles: the one contract between training and the runtime.

A bundle is a directory holding ``bundle.json`` (the manifest), ``model.onnx``,
``model.pt2``, ``generator.safetensors``, ``config.yaml``, ``metrics.json`` and
``TRAINING.md`` (see ``docs/CONTRACTS.md``). The graph's inputs and outputs are
named (``audio``, ``noise``, ``class`` in; ``image``, ``sound`` out), so the
runtime reads what a bundle makes without asking which family made it. :func:`load_bundle` reads the
manifest, passes it through the single upgrade function
:func:`upgrade_manifest`, validates it, and checks every listed file against
its sha256, so a truncated copy or a hand-edited graph is caught at load time
with a one-line error naming the file.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.errors import UserError

log = logging.getLogger(__name__)

FORMAT_VERSION = 2
"""The manifest format this engine writes and reads natively (format 1 bundles are upgraded on load)."""

MANIFEST = "bundle.json"
ONNX_FILE = "model.onnx"
PT2_FILE = "model.pt2"
WEIGHTS_FILE = "generator.safetensors"
CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.json"
TRAINING_FILE = "TRAINING.md"

FILLS = ("normal", "zeros", "required")
"""How the engine fills an input the caller leaves out: seeded standard-normal noise, zeros, or not at all."""

_REQUIRED_KEYS: dict[str, type | tuple[type, ...]] = {
    "format_version": int,
    "family": str,
    "sample_rate": int,
    "inputs": dict,
    "outputs": dict,
    "labels": list,
    "family_info": dict,
    "files": dict,
    "created": str,
    "training": dict,
}


def cache_root() -> Path:
    """The engine's cache folder (rewritten graphs, TensorRT plans): ``$AVGAN_CACHE`` or ``~/.cache/avgan``."""
    root = os.environ.get("AVGAN_CACHE")
    return Path(root).expanduser() if root else Path.home() / ".cache" / "avgan"


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and ``os.replace`` (creating the
    folder), so a reader never sees a half-written cache file. Raises OSError."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class BundleError(UserError, ValueError):
    """A bundle is missing, unreadable, corrupted or of an unsupported format. The message names the file."""


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of the file at ``path`` (read in 1 MiB chunks)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


#: format-1 top-level keys that format 2 keeps under ``family_info`` (wav2pix's pose code and prior)
_V1_FAMILY_KEYS = ("truncation", "pose_code_dim", "appearance_code_dim", "pose_prior", "pose_prior_fit")


def _upgrade_v1(m: dict[str, Any]) -> dict[str, Any]:
    """Format 1 (until 2026-12, wav2pix only) -> format 2.

    Format 1 listed inputs and outputs as bare shapes (``{"audio": [null, S], "noise": [null, Z]}``), repeated
    ``window_samples``, ``noise_dim`` and ``image_size`` at the top level, called the labels ``identities`` and
    kept the pose-prior keys at the top level.
    """
    m = dict(m)
    fills = {"noise": "normal"}
    m["inputs"] = {k: {"shape": v, "fill": fills.get(k, "required")} for k, v in dict(m.get("inputs", {})).items()}
    m["outputs"] = {k: {"shape": v} for k, v in dict(m.get("outputs", {})).items()}
    m["labels"] = list(m.pop("identities", []))
    info = dict(m.get("family_info") or {})
    for key in _V1_FAMILY_KEYS:
        if key in m:
            info[key] = m.pop(key)
    m["family_info"] = info
    for key in ("window_samples", "noise_dim", "image_size"):
        m.pop(key, None)
    m["format_version"] = 2
    return m


# from-version -> function returning the manifest at from-version + 1
_UPGRADES = {1: _upgrade_v1}


def upgrade_manifest(manifest: dict[str, Any], source: str = MANIFEST) -> dict[str, Any]:
    """Bring a manifest of any supported version to :data:`FORMAT_VERSION` (the single upgrade path).

    Args:
        manifest: the parsed ``bundle.json`` (not modified).
        source: name used in error messages.

    Returns:
        A new dict at ``format_version == FORMAT_VERSION``; unknown extra keys are kept.

    Raises:
        BundleError: the version is missing, not an integer, 0 or negative, newer than this engine
            understands, or has no upgrade path.
    """
    m = dict(manifest)
    if "format_version" not in m:
        raise BundleError(f"{source}: no 'format_version' (not a model bundle written by `run.py export`)")
    version = m["format_version"]
    if isinstance(version, bool) or not isinstance(version, int):
        raise BundleError(f"{source}: 'format_version' must be an integer, got {version!r}")
    if version < 1:
        raise BundleError(f"{source}: 'format_version' must be 1 or more, got {version}")
    if version > FORMAT_VERSION:
        raise BundleError(
            f"{source}: bundle format_version {version} is newer than this engine supports "
            f"({FORMAT_VERSION}); update AVGAN"
        )
    while version < FORMAT_VERSION:
        if version not in _UPGRADES:
            raise BundleError(f"{source}: no upgrade path from bundle format_version {version}")
        m = _UPGRADES[version](m)
        new_version = m["format_version"]
        log.debug("upgraded bundle manifest from format %d to %d", version, new_version)
        version = new_version
    return m


@dataclass(frozen=True)
class IOSpec:
    """One named input or output of a bundle's graph.

    Attributes:
        name: e.g. ``"audio"``, ``"noise"``, ``"class"``, ``"image"``, ``"sound"``.
        shape: float32 shape with ``None`` for the batch axis (axis 0), e.g. ``(None, 16000)``.
        doc: what it holds, with units.
        fill: inputs only: how the engine fills it when the caller leaves it out (:data:`FILLS`).
    """

    name: str
    shape: tuple[int | None, ...]
    doc: str = ""
    fill: str = "required"

    @property
    def item_shape(self) -> tuple[int, ...]:
        """The shape of one batch item (``shape[1:]``)."""
        return tuple(int(d) for d in self.shape[1:])  # type: ignore[arg-type]


def _io_specs(value: Any, key: str, source: str, inputs: bool) -> dict[str, IOSpec]:
    if not value:
        raise BundleError(f"{source}: '{key}' must name at least one tensor")
    specs = {}
    for name, spec in value.items():
        where = f"{source}: '{key}.{name}'"
        if not isinstance(spec, dict) or not isinstance(spec.get("shape"), list):
            raise BundleError(f"{where} must be an object with a 'shape' list, got {spec!r}")
        shape = spec["shape"]
        if not shape or shape[0] is not None or any(isinstance(d, bool) or not isinstance(d, int) or d < 1
                                                    for d in shape[1:]):  # fmt: skip
            raise BundleError(f"{where}: shape must be [null, n1, ...] with positive sizes, got {shape!r}")
        fill = spec.get("fill", "required")
        if fill not in FILLS or (not inputs and "fill" in spec):
            raise BundleError(f"{where}: 'fill' must be one of {', '.join(FILLS)} (inputs only), got {fill!r}")
        specs[name] = IOSpec(name, tuple(shape), str(spec.get("doc", "")), fill)
    return specs


def _validate(m: dict[str, Any], source: str) -> tuple[dict[str, IOSpec], dict[str, IOSpec]]:
    for key, tp in _REQUIRED_KEYS.items():
        if key not in m:
            raise BundleError(f"{source}: missing key '{key}'")
        value = m[key]
        if isinstance(value, bool) or not isinstance(value, tp):
            name = tp.__name__ if isinstance(tp, type) else "/".join(t.__name__ for t in tp)
            raise BundleError(f"{source}: key '{key}' must be {name}, got {value!r}")
    inputs = _io_specs(m["inputs"], "inputs", source, True)
    outputs = _io_specs(m["outputs"], "outputs", source, False)
    sounds = "audio" in inputs or "sound" in outputs
    if m["sample_rate"] < 0 or (sounds and m["sample_rate"] == 0):
        need = "positive" if sounds else ">= 0 (0: a bundle without audio input or sound output)"
        raise BundleError(f"{source}: key 'sample_rate' must be {need}, got {m['sample_rate']!r}")
    image = outputs.get("image")
    if image is not None and (len(image.shape) != 4 or image.shape[1] != 3):
        raise BundleError(f"{source}: 'outputs.image' must be [null, 3, H, W], got {list(image.shape)}")
    for name in ("sound", "audio"):
        spec = outputs.get(name) if name == "sound" else inputs.get(name)
        if spec is not None and len(spec.shape) != 2:
            raise BundleError(f"{source}: '{name}' must be [null, samples], got {list(spec.shape)}")
    for name, digest in m["files"].items():
        if not isinstance(name, str) or Path(name).name != name or name in ("", ".", ".."):
            raise BundleError(f"{source}: 'files' entry {name!r} is not a plain file name")
        if not isinstance(digest, str) or len(digest) != 64:
            raise BundleError(f"{source}: 'files' entry '{name}' must be a 64-character sha256 hex digest")
    if ONNX_FILE not in m["files"]:
        raise BundleError(f"{source}: 'files' does not list {ONNX_FILE}")
    return inputs, outputs


@dataclass(frozen=True)
class Bundle:
    """A loaded (and, by default, verified) model bundle.

    Attributes:
        path: the bundle directory.
        manifest: the upgraded manifest (``format_version == FORMAT_VERSION``).
        family: model family name, e.g. ``"wav2pix"``.
        sample_rate: Hz of the ``audio`` input and of a ``sound`` output (0 for a bundle with neither, e.g. a
            super-resolution stage: ``image`` in, ``image`` out).
        inputs, outputs: name -> :class:`IOSpec`, in the graph's order.
        labels: class names the model was trained with (speakers, scene classes; index = label).
        family_info: the family's own manifest keys (e.g. wav2pix's pose prior).
        files: file name -> sha256 hex digest, as listed in the manifest.
    """

    path: Path
    manifest: dict[str, Any] = field(repr=False)
    family: str
    sample_rate: int
    inputs: dict[str, IOSpec] = field(repr=False)
    outputs: dict[str, IOSpec] = field(repr=False)
    labels: tuple[str, ...]
    family_info: dict[str, Any] = field(repr=False)
    files: dict[str, str] = field(repr=False)

    @property
    def window_samples(self) -> int:
        """Samples per conditioning window (the ``audio`` input's second axis); 0 without an audio input."""
        return self.inputs["audio"].shape[1] if "audio" in self.inputs else 0  # type: ignore[return-value]

    @property
    def noise_dim(self) -> int:
        """Length of the ``noise`` input's second axis; 0 without a noise input."""
        return self.inputs["noise"].shape[1] if "noise" in self.inputs else 0  # type: ignore[return-value]

    @property
    def image_size(self) -> int:
        """Side of the ``image`` output in pixels (its height); 0 without one."""
        return self.outputs["image"].shape[2] if "image" in self.outputs else 0  # type: ignore[return-value]

    @property
    def sound_samples(self) -> int:
        """Samples of the ``sound`` output at :attr:`sample_rate`; 0 without one."""
        return self.outputs["sound"].shape[1] if "sound" in self.outputs else 0  # type: ignore[return-value]

    @property
    def onnx_path(self) -> Path:
        """Path of ``model.onnx``."""
        return self.path / ONNX_FILE

    @property
    def pt2_path(self) -> Path:
        """Path of ``model.pt2`` (the torch.export program)."""
        return self.path / PT2_FILE

    @property
    def digest(self) -> str:
        """sha256 of the inference graph (``model.onnx``): identifies the model for plan caches."""
        return self.files[ONNX_FILE]

    def has(self, name: str) -> bool:
        """Whether the manifest lists ``name`` (e.g. ``model.pt2``)."""
        return name in self.files

    def file(self, name: str) -> Path:
        """Path of a listed bundle file.

        Raises:
            BundleError: ``name`` is not listed in the manifest.
        """
        if name not in self.files:
            raise BundleError(f"{self.path}: bundle has no {name} (files: {', '.join(sorted(self.files))})")
        return self.path / name


def read_manifest(path: str | Path) -> dict[str, Any]:
    """Read ``bundle.json`` from the bundle directory ``path`` without upgrading or verifying it.

    Raises:
        BundleError: missing directory, not a bundle, unreadable or invalid JSON.
    """
    root = Path(path)
    if not root.exists():
        raise BundleError(f"{root}: no such bundle directory")
    if not root.is_dir():
        raise BundleError(f"{root}: not a directory (a model bundle is a directory holding {MANIFEST})")
    mpath = root / MANIFEST
    if not mpath.is_file():
        raise BundleError(f"{root}: not a model bundle (no {MANIFEST})")
    try:
        text = mpath.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise BundleError(f"{mpath}: cannot read ({exc})") from exc
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise BundleError(f"{mpath}: not valid JSON (line {exc.lineno} column {exc.colno}: {exc.msg})") from exc
    if not isinstance(data, dict):
        raise BundleError(f"{mpath}: expected a JSON object at the top level, got {type(data).__name__}")
    return data


def load_bundle(path: str | Path, verify: bool = True) -> Bundle:
    """Load the bundle directory ``path``: read, upgrade and validate the manifest; check file hashes.

    Args:
        path: bundle directory (a path to its ``bundle.json`` is accepted too).
        verify: check every file listed in ``files`` against its sha256 (default).
            Hashing a 64 px model takes a few tens of milliseconds.

    Returns:
        The :class:`Bundle`.

    Raises:
        BundleError: missing directory or ``bundle.json``, invalid JSON, unsupported
            ``format_version``, missing or ill-typed keys, a listed file that is
            missing, or a file whose sha256 does not match (names the file).
    """
    root = Path(path)
    if root.name == MANIFEST and root.is_file():
        root = root.parent
    source = str(root / MANIFEST)
    manifest = upgrade_manifest(read_manifest(root), source=source)
    inputs, outputs = _validate(manifest, source)
    files: dict[str, str] = dict(manifest["files"])
    for name, expected in files.items():
        fpath = root / name
        if not fpath.is_file():
            raise BundleError(
                f"{fpath}: missing (listed in {MANIFEST}); the bundle is incomplete — copy or export it again"
            )
        if verify:
            try:
                actual = sha256_file(fpath)
            except OSError as exc:
                raise BundleError(f"{fpath}: cannot read ({exc})") from exc
            if actual != expected.lower():
                raise BundleError(
                    f"{fpath}: sha256 mismatch (expected {expected[:12]}…, got {actual[:12]}…); "
                    "the file is corrupted or was changed after export — copy or export the bundle again"
                )
    return Bundle(
        path=root,
        manifest=manifest,
        family=manifest["family"],
        sample_rate=manifest["sample_rate"],
        inputs=inputs,
        outputs=outputs,
        labels=tuple(str(i) for i in manifest["labels"]),
        family_info=dict(manifest["family_info"]),
        files=files,
    )
