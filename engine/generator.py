"""The engine's public entry point: raw audio windows in, images out.

>>> gen = Generator("presets/models/wav2pix-64")            # doctest: +SKIP
>>> gen.backend_name, gen.backend_reason                     # doctest: +SKIP
('onnxruntime-cpu', 'tensorrt: not installed; ...; chose onnxruntime-cpu')
>>> images = gen(audio)          # float32 [B, 16000] -> uint8 [B, 64, 64, 3]  # doctest: +SKIP
>>> out = gen.run(audio=audio, noise=noise)   # {"image": float32 [B, 3, 64, 64]}  # doctest: +SKIP

Backend choice (``backend="auto"``) tries, in order: ``tensorrt`` >
``onnxruntime-cuda`` > ``torch-cuda`` > ``onnxruntime-cpu`` > ``torch-cpu``,
logging why each one that cannot run was skipped; ``backend_reason`` records
the whole story. ``device="cpu"`` / ``"cuda"`` restricts the candidates.
Explicit ``"tensorrt"`` falls back along the same order if TensorRT cannot run;
``"onnxruntime"`` / ``"torch"`` try CUDA then CPU (or only ``device``); the
exact names (``"onnxruntime-cpu"``, ...) and ``fallback=False`` try exactly one.

A Generator is not thread-safe: call it from one thread (the render loop).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from engine.backends import AUTO_ORDER, Backend, BackendUnavailable, create, parse_device
from engine.backends.ort_backend import SPIN_MODES
from engine.bundle import Bundle, load_bundle
from engine.errors import UserError

log = logging.getLogger(__name__)

BACKEND_CHOICES: tuple[str, ...] = ("auto", "tensorrt", "onnxruntime", "torch", *AUTO_ORDER[1:])
"""Values accepted for ``backend`` (``--backend`` on the command line)."""


class EngineInputError(UserError, ValueError):
    """Audio or noise of the wrong shape or dtype; the message states what was expected."""


class BackendError(UserError, RuntimeError):
    """No backend could run the bundle (the message lists why each one was skipped), or a bad backend name."""


def candidates(backend: str, device: str | None, fallback: bool = True) -> list[str]:
    """Backend names to try, in order, for a ``backend`` / ``device`` request.

    Args:
        backend: one of :data:`BACKEND_CHOICES`.
        device: ``None``, ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
        fallback: ``False`` keeps only the first candidate.

    Raises:
        BackendError: unknown backend, bad device, or a combination that leaves nothing
            (e.g. ``backend="tensorrt", device="cpu"``).
    """
    try:
        kind, _ = parse_device(device)
    except ValueError as exc:
        raise BackendError(str(exc)) from exc
    if backend == "auto":
        names = list(AUTO_ORDER)
    elif backend == "tensorrt":
        names = list(AUTO_ORDER)  # falls back along the auto order
    elif backend in ("onnxruntime", "torch"):
        names = [f"{backend}-cuda", f"{backend}-cpu"]
    elif backend in AUTO_ORDER:
        names = [backend]
    else:
        raise BackendError(f"unknown backend {backend!r} (choose from {', '.join(BACKEND_CHOICES)})")
    if kind == "cpu":
        names = [n for n in names if n.endswith("-cpu")]
    elif kind == "cuda":
        names = [n for n in names if not n.endswith("-cpu")]
    if not names or (backend != "auto" and not names[0].startswith(backend)):
        raise BackendError(f"backend {backend!r} cannot run on device {device!r}")
    return names[:1] if not fallback else names


class Generator:
    """Runs a model bundle on the best available backend.

    Args:
        bundle_dir: model bundle directory (see ``docs/CONTRACTS.md``).
        backend: ``"auto"`` (default), ``"tensorrt"``, ``"onnxruntime"``, ``"torch"``, or an
            exact name from :data:`engine.backends.AUTO_ORDER`.
        device: ``None`` (any), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
        max_batch: largest batch one backend call receives; larger inputs are split.
        warmup: run a few batch-1 and max-batch calls at load so the first real
            call does not pay for allocations, kernel selection or graph capture.
        threads: CPU threads for the ONNX Runtime CPU backend (default ``min(2, cores)``);
            for torch-cpu, if given, sets torch's process-wide thread count.
        fallback: try the next backend when one cannot run (default); ``False`` raises instead.
        verify: check bundle file hashes at load.
        graph_rewrites: let the ONNX Runtime CPU backend run the exactly rewritten graph of
            :mod:`engine.graph_rewrite` (default); ``False`` runs ``model.onnx`` as exported.
        ort_spin: ONNX Runtime CPU thread spinning: ``"never"`` (default; workers sleep when idle) or
            ``"in-call"`` (spin between the kernels of one call, stop when it returns); see
            :mod:`engine.backends.ort_backend`.

    Attributes:
        bundle: the loaded :class:`engine.bundle.Bundle`.
        backend_name: the backend in use, e.g. ``"onnxruntime-cpu"``.
        backend_reason: why it was chosen, e.g. ``"tensorrt: not installed; ...; chose onnxruntime-cpu"``.
        sample_rate: Hz of the audio input and sound output. window_samples: samples per audio window (0: no
        audio input). noise_dim: noise length (0: none). image_size: image side in pixels (0: no image output).
        labels: the class names the model was trained with (speakers, scene classes).

    Raises:
        engine.bundle.BundleError: the bundle is missing or corrupted.
        BackendError: bad backend/device, or no backend could run (lists the reasons).
        ValueError: ``max_batch`` < 1 or an unknown ``ort_spin``.
    """

    def __init__(
        self,
        bundle_dir: str | Path,
        backend: str = "auto",
        device: str | None = None,
        max_batch: int = 32,
        warmup: bool = True,
        *,
        threads: int | None = None,
        fallback: bool = True,
        verify: bool = True,
        graph_rewrites: bool = True,
        ort_spin: str = "never",
    ) -> None:
        if int(max_batch) < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        if ort_spin not in SPIN_MODES:
            raise ValueError(f"ort_spin must be one of {', '.join(SPIN_MODES)}, got {ort_spin!r}")
        self.max_batch = int(max_batch)
        names = candidates(backend, device, fallback)
        self.bundle: Bundle = load_bundle(bundle_dir, verify=verify)
        self.sample_rate = self.bundle.sample_rate
        self.window_samples = self.bundle.window_samples
        self.noise_dim = self.bundle.noise_dim
        self.image_size = self.bundle.image_size
        self.labels = self.bundle.labels
        _, device_index = parse_device(device)
        skipped: list[str] = []
        self._backend: Backend | None = None
        for name in names:
            try:
                self._backend = create(
                    name,
                    self.bundle,
                    max_batch=self.max_batch,
                    device_index=device_index,
                    threads=threads,
                    graph_rewrites=graph_rewrites,
                    ort_spin=ort_spin,
                )
            except BackendUnavailable as exc:
                log.info("backend %s unavailable: %s", name, exc)
                skipped.append(f"{name}: {exc}")
                continue
            break
        if self._backend is None:
            raise BackendError(f"no backend can run {self.bundle.path}: " + "; ".join(skipped))
        self.backend_name: str = self._backend.name
        request = f"requested {backend}" + (f" on {device}" if device else "")
        self.backend_reason: str = (
            "; ".join([*skipped, f"chose {self.backend_name}"])
            if skipped
            else (f"{request}; chose {self.backend_name}")
        )
        log.info("engine backend: %s (%s)", self.backend_name, self.backend_reason)
        if warmup:
            self.warmup()

    # -- inputs -----------------------------------------------------------------------------

    def make_noise(self, batch: int, seed: int | None = None) -> np.ndarray:
        """Standard normal noise float32 [batch, noise_dim]; the same ``seed`` gives the same noise."""
        return np.random.default_rng(seed).standard_normal((int(batch), self.noise_dim), dtype=np.float32)

    def _check(self, name: str, value: np.ndarray, batch: int | None) -> np.ndarray:
        spec = self.bundle.inputs[name]
        arr = np.asarray(value)
        item = spec.item_shape
        if name == "audio" and arr.ndim == 1:
            raise EngineInputError(
                f"audio must have shape [batch, {self.window_samples}] (window_samples at {self.sample_rate} Hz), "
                f"got shape {tuple(arr.shape)}; add a batch axis with audio[None]"
            )
        if name == "audio" and arr.ndim == 2 and arr.shape[1] != item[0]:
            seconds = self.window_samples / self.sample_rate
            raise EngineInputError(
                f"audio has {arr.shape[1]} samples per window; this bundle expects window_samples="
                f"{self.window_samples} ({seconds:g} s at {self.sample_rate} Hz)"
            )
        if arr.ndim != len(item) + 1 or tuple(arr.shape[1:]) != item or (batch is not None and len(arr) != batch):
            want = ", ".join(str(d) for d in ("batch" if batch is None else batch, *item))
            raise EngineInputError(f"{name} must have shape [{want}] ({spec.doc or name}), got shape {tuple(arr.shape)}")
        if not np.issubdtype(arr.dtype, np.floating):
            hint = " (int16 PCM: divide by 32768)" if name == "audio" else ""
            raise EngineInputError(f"{name} must be float, got dtype {arr.dtype}{hint}")
        return np.ascontiguousarray(arr, dtype=np.float32)

    def complete_inputs(self, inputs: dict[str, np.ndarray], seed: int | None = None, batch: int | None = None):
        """Check ``inputs`` against the bundle and fill the ones left out (``fill`` in the manifest).

        Args:
            inputs: float arrays by input name, each with the same batch size.
            seed: seed of the standard-normal inputs that are filled (``None``: fresh noise every call).
            batch: the batch size when no input is given (an unconditional bundle's noise is then drawn).

        Returns:
            float32 C-contiguous arrays for every input of the graph.

        Raises:
            EngineInputError: an unknown input name, a required input missing, wrong shapes, batch sizes or
                dtypes, or no way to tell the batch size.
        """
        unknown = sorted(set(inputs) - set(self.bundle.inputs))
        if unknown:
            raise EngineInputError(f"unknown input(s) {unknown}; this bundle takes {list(self.bundle.inputs)}")
        if batch is None and inputs:
            batch = len(np.asarray(next(iter(inputs.values()))))
        if batch is None:
            raise EngineInputError("no input given: pass batch= (the number of samples to generate)")
        out: dict[str, np.ndarray] = {}
        rng = np.random.default_rng(seed)
        for name, spec in self.bundle.inputs.items():
            if name in inputs:
                out[name] = self._check(name, inputs[name], batch)
            elif spec.fill == "normal":
                out[name] = rng.standard_normal((batch, *spec.item_shape), dtype=np.float32)
            elif spec.fill == "zeros":
                out[name] = np.zeros((batch, *spec.item_shape), np.float32)
            else:
                raise EngineInputError(f"input '{name}' is required ({spec.doc or name}); got {sorted(inputs)}")
        return out

    # -- running ----------------------------------------------------------------------------

    def run(self, *, seed: int | None = None, batch: int | None = None, **inputs: np.ndarray) -> dict[str, np.ndarray]:
        """Run the graph on named inputs; returns its named outputs.

        Args:
            **inputs: float arrays by input name, the same batch size each: e.g. ``audio`` [B, window_samples]
                samples in [-1, 1] at ``sample_rate`` Hz, ``noise`` [B, noise_dim] standard normal. Inputs left
                out are filled as the manifest says (:meth:`complete_inputs`).
            seed: seed of the filled noise. batch: batch size when no input is given.

        Returns:
            float32 arrays by output name: ``image`` [B, 3, H, W] in [-1, 1], ``sound`` [B, N] in [-1, 1] at
            ``sample_rate`` Hz. Batches larger than ``max_batch`` are split into several backend calls.

        Raises:
            EngineInputError: as :meth:`complete_inputs`.
        """
        feeds = self.complete_inputs(inputs, seed, batch)
        if self._backend is None:
            raise RuntimeError("Generator is closed")
        n = len(next(iter(feeds.values())))
        if n == 0:
            return {k: np.zeros((0, *spec.item_shape), np.float32) for k, spec in self.bundle.outputs.items()}
        if n <= self.max_batch:
            return self._backend.run(feeds)
        parts = [
            self._backend.run({k: v[i : i + self.max_batch] for k, v in feeds.items()})
            for i in range(0, n, self.max_batch)
        ]
        return {k: np.concatenate([p[k] for p in parts], axis=0) for k in self.bundle.outputs}

    def generate(
        self, *, seed: int | None = None, batch: int | None = None, **inputs: np.ndarray
    ) -> dict[str, np.ndarray]:
        """:meth:`run` with the outputs ready to show and play: ``image`` as uint8 [B, H, W, 3] RGB
        (:func:`to_uint8`), ``sound`` float32 [B, N] clipped to [-1, 1]; other outputs as they are."""
        out = self.run(seed=seed, batch=batch, **inputs)
        if "image" in out:
            out["image"] = to_uint8(out["image"])
        if "sound" in out:
            out["sound"] = np.clip(out["sound"], -1.0, 1.0)
        return out

    def __call__(self, audio: np.ndarray, noise: np.ndarray | None = None, seed: int | None = None) -> np.ndarray:
        """Convenience for image bundles with an audio input: raw audio windows -> uint8 images.

        Args:
            audio: float [B, window_samples] samples in [-1, 1] at ``sample_rate`` Hz.
            noise: float [B, noise_dim]; ``None`` draws it from ``seed`` (see :meth:`make_noise`).
            seed: noise seed when ``noise`` is ``None`` (``None``: fresh noise every call).

        Returns:
            uint8 [B, H, W, 3] RGB, ``round((x + 1) * 127.5)`` clipped to [0, 255].

        Raises:
            EngineInputError: wrong shapes or dtypes, or a bundle without an audio input or image output.
        """
        if "audio" not in self.bundle.inputs or "image" not in self.bundle.outputs:
            raise EngineInputError(f"{self.bundle.path}: not an audio -> image bundle; use Generator.run")
        inputs = {"audio": audio} if noise is None else {"audio": audio, "noise": noise}
        return to_uint8(self.run(seed=seed, **inputs)["image"])

    def warmup(self, calls: int = 3) -> None:
        """Run ``calls`` batch-1 and ``max(1, calls - 1)`` max-batch calls: required inputs (``audio``, a
        super-resolution stage's ``image``) get quiet noise (0.1 x standard normal), the others are filled."""
        rng = np.random.default_rng(0)
        for batch, n in ((1, calls), (self.max_batch, max(1, calls - 1))):
            inputs = {
                name: (0.1 * rng.standard_normal((batch, *spec.item_shape))).astype(np.float32)
                for name, spec in self.bundle.inputs.items()
                if spec.fill == "required"
            }
            for _ in range(n):
                self.run(seed=0, batch=batch, **inputs)

    def close(self) -> None:
        """Release the backend (sessions, engines, device memory)."""
        if self._backend is not None:
            self._backend.close()
            self._backend = None

    def __repr__(self) -> str:
        return f"Generator({str(self.bundle.path)!r}, backend={self.backend_name!r}, max_batch={self.max_batch})"


def to_uint8(images: np.ndarray) -> np.ndarray:
    """float [B, 3, H, W] in [-1, 1] -> uint8 [B, H, W, 3]: ``round((x + 1) * 127.5)`` clipped to [0, 255]."""
    x = np.clip(np.rint((images + 1.0) * 127.5), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(x.transpose(0, 2, 3, 1))
