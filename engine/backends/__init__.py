"""Inference backends: one module per runtime, one small interface.

Every backend runs the bundle's inference graph on float32 numpy inputs by
name (``audio`` [B, window_samples], ``noise`` [B, noise_dim], ``class`` [B, C]:
whatever the manifest lists) and returns float32 numpy outputs by name
(``image`` [B, 3, H, W] in [-1, 1], ``sound`` [B, N] in [-1, 1]). Inputs arrive
complete, validated and no larger than ``max_batch`` (see
:class:`engine.generator.Generator`).

A backend that cannot start (library not installed, no GPU, build failure)
raises :class:`BackendUnavailable` with a short reason; the generator logs it
and tries the next one.

Names (``Backend.name``): ``tensorrt``, ``onnxruntime-cuda``, ``torch-cuda``,
``onnxruntime-cpu``, ``torch-cpu``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from engine.backends.base import Backend, BackendUnavailable, nvidia_driver_present

__all__ = ["AUTO_ORDER", "Backend", "BackendUnavailable", "create", "nvidia_driver_present", "parse_device"]

if TYPE_CHECKING:
    from engine.bundle import Bundle


AUTO_ORDER: tuple[str, ...] = ("tensorrt", "onnxruntime-cuda", "torch-cuda", "onnxruntime-cpu", "torch-cpu")
"""Order ``backend="auto"`` tries: fastest first."""


def parse_device(device: str | None) -> tuple[str | None, int]:
    """``None`` / ``"cpu"`` / ``"cuda"`` / ``"cuda:N"`` -> (kind or None, CUDA device index).

    Raises:
        ValueError: anything else.
    """
    if device is None:
        return None, 0
    text = device.strip().lower()
    if text == "cpu":
        return "cpu", 0
    if text == "cuda":
        return "cuda", 0
    if text.startswith("cuda:") and text[5:].isdigit():
        return "cuda", int(text[5:])
    raise ValueError(f"device must be 'cpu', 'cuda' or 'cuda:N', got {device!r}")


def create(
    name: str,
    bundle: Bundle,
    *,
    max_batch: int,
    device_index: int = 0,
    threads: int | None = None,
    graph_rewrites: bool = True,
    ort_spin: str = "never",
) -> Backend:
    """Start the backend called ``name`` (one of :data:`AUTO_ORDER`) for ``bundle``.

    Args:
        name: backend name.
        bundle: the loaded bundle.
        max_batch: largest batch the backend must accept (TensorRT profile, CUDA buffers).
        device_index: CUDA device for the ``*-cuda`` and ``tensorrt`` backends.
        threads: CPU threads for the ``*-cpu`` backends (``None``: min(2, cores) for
            ONNX Runtime; torch's process-wide setting is left alone).
        graph_rewrites: let ``onnxruntime-cpu`` apply the exact rewrites of :mod:`engine.graph_rewrite`.
        ort_spin: thread spinning of ``onnxruntime-cpu`` (:data:`engine.backends.ort_backend.SPIN_MODES`).

    Raises:
        BackendUnavailable: it cannot run here (the message says why).
        ValueError: unknown name.
    """
    if name == "tensorrt":
        from engine.backends.trt_backend import TensorRTBackend

        return TensorRTBackend(bundle, max_batch=max_batch, device_index=device_index)
    if name in ("onnxruntime-cpu", "onnxruntime-cuda"):
        from engine.backends.ort_backend import OnnxRuntimeBackend

        return OnnxRuntimeBackend(
            bundle,
            device="cuda" if name.endswith("cuda") else "cpu",
            device_index=device_index,
            threads=threads,
            rewrites=graph_rewrites,
            spin=ort_spin,
        )
    if name in ("torch-cpu", "torch-cuda"):
        if name == "torch-cuda" and not nvidia_driver_present():
            raise BackendUnavailable("no CUDA device (no NVIDIA driver)")
        from engine.backends.torch_backend import TorchBackend

        return TorchBackend(
            bundle,
            device="cuda" if name.endswith("cuda") else "cpu",
            device_index=device_index,
            max_batch=max_batch,
            threads=threads,
        )
    raise ValueError(f"unknown backend {name!r} (expected one of {', '.join(AUTO_ORDER)})")
