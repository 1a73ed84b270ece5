"""ONNX Runtime backend (CPU execution provider, or CUDA where available).

CPU sessions are tuned for low-latency single-window inference next to a
render loop: a pinned number of intra-op threads (default ``min(2, cores)``),
one inter-op thread, sequential execution, no thread spinning (idle worker
threads sleep instead of burning the cores the window and audio threads need),
and every graph optimisation (``ORT_ENABLE_ALL``).

Spinning (``spin``, see :data:`SPIN_MODES`): ``"never"`` (the default) lets a
worker thread sleep whenever it has no work, so it is woken for every
parallel kernel. ``"in-call"`` lets workers spin between the kernels of one
inference call and forces them to stop when the call returns
(``session.force_spinning_stop``, ONNX Runtime PR #11841): no CPU is burnt
between calls, but the cores stay busy for the whole call. ONNX Runtime's own
default (spin, and keep spinning after the call) is not offered: called at
10 Hz as the live loop does, the default bundle's process then used 0.87-0.91
CPU-seconds per second on the 2-core development machine, against 0.03-0.045
with ``"never"`` or ``"in-call"`` (``run.py bench --only engine`` reports the
latter two as ``cpu_at_10hz``).

Before the session is made, the CPU backend applies the exact rewrites of
:mod:`engine.graph_rewrite` (folded DFT front end, 1-D convolutions as 2-D,
channel means as 1x1 convolutions); ``rewrites=False`` runs the graph as
exported. The rewritten graph is cached under ``$AVGAN_CACHE/onnx-cpu`` by
the graph's sha256, so only a bundle's first load pays for the rewrite.
"""

from __future__ import annotations

import logging
import os

import numpy as np

from engine.backends.base import BackendUnavailable
from engine.bundle import Bundle, cache_root

log = logging.getLogger(__name__)


def available_cores() -> int:
    """CPU cores this process may run on (affinity-aware), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def default_threads() -> int:
    """Default intra-op threads for CPU inference: ``min(2, cores)``."""
    return min(2, available_cores())


SPIN_MODES: tuple[str, ...] = ("never", "in-call")
"""Thread-spinning policies of the CPU sessions (see the module docstring); ``"never"`` is the default."""


def session_options(threads: int | None = None, spin: str = "never"):  # -> onnxruntime.SessionOptions
    """ONNX Runtime session options used for every session (see the module docstring).

    Args:
        threads: intra-op threads (``None``: :func:`default_threads`).
        spin: one of :data:`SPIN_MODES`.

    Raises:
        ValueError: unknown ``spin``.
    """
    import onnxruntime as ort

    if spin not in SPIN_MODES:
        raise ValueError(f"spin: expected one of {', '.join(SPIN_MODES)}, got {spin!r}")
    so = ort.SessionOptions()
    so.intra_op_num_threads = int(threads or default_threads())
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin == "in-call" else "0")
    so.add_session_config_entry("session.inter_op.allow_spinning", "0")
    if spin == "in-call":
        so.add_session_config_entry("session.force_spinning_stop", "1")
    so.log_severity_level = 3  # errors only; CUDA-provider fallbacks are reported by us
    return so


class OnnxRuntimeBackend:
    """Runs ``model.onnx`` with ONNX Runtime.

    Args:
        bundle: the loaded bundle.
        device: ``"cpu"`` (CPU execution provider) or ``"cuda"`` (CUDA execution provider).
        device_index: CUDA device index.
        threads: intra-op threads for the CPU provider (``None``: ``min(2, cores)``).
        rewrites: apply :func:`engine.graph_rewrite.optimize_for_cpu` (CPU provider only).
        spin: thread spinning, one of :data:`SPIN_MODES` (see the module docstring).

    Raises:
        BackendUnavailable: onnxruntime is not installed, the CUDA provider is not
            available or failed to load, or the session could not be created.
    """

    def __init__(
        self,
        bundle: Bundle,
        device: str = "cpu",
        device_index: int = 0,
        threads: int | None = None,
        rewrites: bool = True,
        spin: str = "never",
    ) -> None:
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise BackendUnavailable(f"onnxruntime not installed ({exc})") from exc
        self.name = f"onnxruntime-{device}"
        self.threads = int(threads or default_threads())
        self.spin = spin
        if device == "cuda":
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise BackendUnavailable("no CUDA provider (install onnxruntime-gpu)")
            providers: list = [("CUDAExecutionProvider", {"device_id": device_index}), "CPUExecutionProvider"]
        elif device == "cpu":
            providers = ["CPUExecutionProvider"]
        else:
            raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")
        model: str | bytes = str(bundle.onnx_path)
        self.rewrites: dict[str, int] = {}
        if rewrites and device == "cpu":
            from engine.graph_rewrite import cached_optimize_for_cpu

            data, self.rewrites = cached_optimize_for_cpu(
                str(bundle.onnx_path), bundle.digest, cache_root() / "onnx-cpu"
            )
            if data is not None:
                model = data
                log.debug("graph rewrites for %s: %s", bundle.onnx_path, self.rewrites)
        try:
            self.session = ort.InferenceSession(
                model, sess_options=session_options(self.threads, spin), providers=providers
            )
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own untyped errors
            raise BackendUnavailable(f"cannot create session ({type(exc).__name__}: {exc})") from exc
        if device == "cuda" and self.session.get_providers()[0] != "CUDAExecutionProvider":
            raise BackendUnavailable("CUDA provider failed to load (CUDA/cuDNN libraries missing?)")
        names = {i.name for i in self.session.get_inputs()}
        if names != set(bundle.inputs):
            raise BackendUnavailable(f"model.onnx inputs are {sorted(names)}, the manifest lists {sorted(bundle.inputs)}")
        outputs = [o.name for o in self.session.get_outputs()]
        if set(outputs) != set(bundle.outputs):
            raise BackendUnavailable(f"model.onnx outputs are {outputs}, the manifest lists {sorted(bundle.outputs)}")
        self.output_names = list(bundle.outputs)

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """float32 inputs by name (e.g. audio [B, S], noise [B, Z]) -> float32 outputs by name (e.g. image)."""
        return dict(zip(self.output_names, self.session.run(self.output_names, inputs)))

    def close(self) -> None:
        """Drop the session."""
        self.session = None
