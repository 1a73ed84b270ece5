"""Model bundles: the one contract between training and the runtime.

A bundle is a directory holding ``bundle.json`` (the manifest), ``model.onnx``,
``model.pt2``, ``generator.safetensors``, ``config.yaml``, ``metrics.json`` and
``TRAINING.md`` (see ``docs/CONTRACTS.md``). :func:`load_bundle` reads the
manifest, passes it through the single upgrade function
:func:`upgrade_manifest`, validates it, and checks every listed file against
its sha256, so a truncated copy or a hand-edited graph is caught at load time
with a one-line error naming the file.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.errors import UserError

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
"""The manifest format this engine writes and reads natively."""

MANIFEST = "bundle.json"
ONNX_FILE = "model.onnx"
PT2_FILE = "model.pt2"
WEIGHTS_FILE = "generator.safetensors"
CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.json"
TRAINING_FILE = "TRAINING.md"

_REQUIRED_KEYS: dict[str, type | tuple[type, ...]] = {
    "format_version": int,
    "family": str,
    "sample_rate": int,
    "window_samples": int,
    "noise_dim": int,
    "image_size": int,
    "inputs": dict,
    "outputs": dict,
    "identities": list,
    "files": dict,
    "created": str,
    "training": dict,
}


class BundleError(UserError, ValueError):
    """A bundle is missing, unreadable, corrupted or of an unsupported format. The message names the file."""


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of the file at ``path`` (read in 1 MiB chunks)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _upgrade_v0(m: dict[str, Any]) -> dict[str, Any]:
    """Pre-release (unversioned) manifests -> format 1.

    Those drafts had no ``format_version``, stated the window in seconds
    (``window_seconds``) instead of samples, and had no ``inputs``/``outputs``,
    ``identities``, ``created`` or ``training`` keys.
    """
    m = dict(m)
    if "window_samples" not in m and "window_seconds" in m and "sample_rate" in m:
        m["window_samples"] = int(round(float(m["sample_rate"]) * float(m.pop("window_seconds"))))
    m.setdefault("family", "wav2pix")
    m.setdefault("identities", [])
    m.setdefault("created", "")
    m.setdefault("training", {})
    if "window_samples" in m and "noise_dim" in m:
        m.setdefault("inputs", {"audio": [None, m["window_samples"]], "noise": [None, m["noise_dim"]]})
    if "image_size" in m:
        m.setdefault("outputs", {"image": [None, 3, m["image_size"], m["image_size"]]})
    m["format_version"] = 1
    return m


# from-version -> function returning the manifest at from-version + 1
_UPGRADES = {0: _upgrade_v0}


def upgrade_manifest(manifest: dict[str, Any], source: str = MANIFEST) -> dict[str, Any]:
    """Bring a manifest of any supported version to :data:`FORMAT_VERSION` (the single upgrade path).

    Args:
        manifest: the parsed ``bundle.json`` (not modified).
        source: name used in error messages.

    Returns:
        A new dict at ``format_version == FORMAT_VERSION``; unknown extra keys are kept.

    Raises:
        BundleError: the version is not an integer, is newer than this engine
            understands, or has no upgrade path.
    """
    m = dict(manifest)
    version = m.get("format_version", 0)
    if isinstance(version, bool) or not isinstance(version, int):
        raise BundleError(f"{source}: 'format_version' must be an integer, got {version!r}")
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


def _validate(m: dict[str, Any], source: str) -> None:
    for key, tp in _REQUIRED_KEYS.items():
        if key not in m:
            raise BundleError(f"{source}: missing key '{key}'")
        value = m[key]
        if isinstance(value, bool) or not isinstance(value, tp):
            name = tp.__name__ if isinstance(tp, type) else "/".join(t.__name__ for t in tp)
            raise BundleError(f"{source}: key '{key}' must be {name}, got {value!r}")
    for key in ("sample_rate", "window_samples", "noise_dim", "image_size"):
        if m[key] <= 0:
            raise BundleError(f"{source}: key '{key}' must be positive, got {m[key]!r}")
    for name, digest in m["files"].items():
        if not isinstance(name, str) or Path(name).name != name or name in ("", ".", ".."):
            raise BundleError(f"{source}: 'files' entry {name!r} is not a plain file name")
        if not isinstance(digest, str) or len(digest) != 64:
            raise BundleError(f"{source}: 'files' entry '{name}' must be a 64-character sha256 hex digest")
    if ONNX_FILE not in m["files"]:
        raise BundleError(f"{source}: 'files' does not list {ONNX_FILE}")


@dataclass(frozen=True)
class Bundle:
    """A loaded (and, by default, verified) model bundle.

    Attributes:
        path: the bundle directory.
        manifest: the upgraded manifest (``format_version == FORMAT_VERSION``).
        family: model family name, e.g. ``"wav2pix"``.
        sample_rate: audio sample rate in Hz the graph expects.
        window_samples: samples per conditioning window (the ``audio`` input's second axis).
        noise_dim: length of the ``noise`` input's second axis.
        image_size: output side in pixels (images are square).
        identities: identity names; index = training label.
        files: file name -> sha256 hex digest, as listed in the manifest.
    """

    path: Path
    manifest: dict[str, Any] = field(repr=False)
    family: str
    sample_rate: int
    window_samples: int
    noise_dim: int
    image_size: int
    identities: tuple[str, ...]
    files: dict[str, str] = field(repr=False)

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
    _validate(manifest, source)
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
        window_samples=manifest["window_samples"],
        noise_dim=manifest["noise_dim"],
        image_size=manifest["image_size"],
        identities=tuple(str(i) for i in manifest["identities"]),
        files=files,
    )
