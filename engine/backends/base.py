"""What every backend module shares: the backend interface and its "cannot run here" error.

Kept apart from :mod:`engine.backends` (which starts backends by name) so that the backend modules import this one
and nothing imports back in a cycle.
"""

from __future__ import annotations

import os
import sys
from typing import Protocol

import numpy as np


class BackendUnavailable(RuntimeError):
    """This backend cannot run here; ``str(exc)`` is a short reason such as ``"not installed"``."""


class Backend(Protocol):
    """What :class:`engine.generator.Generator` needs from a backend."""

    name: str
    """One of ``tensorrt``, ``onnxruntime-cuda``, ``torch-cuda``, ``onnxruntime-cpu``, ``torch-cpu``."""

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """float32 C-contiguous inputs by name (B <= max_batch) -> float32 outputs by name."""
        ...

    def close(self) -> None:
        """Release sessions, engines and device memory."""
        ...


def nvidia_driver_present() -> bool:
    """Whether an NVIDIA driver is loaded, without importing torch (whose import alone takes seconds on a CPU
    machine). On Linux: ``/proc/driver/nvidia/version`` or ``/dev/nvidiactl`` exists; elsewhere assume yes and
    let the backend find out."""
    if sys.platform.startswith("linux"):
        return os.path.exists("/proc/driver/nvidia/version") or os.path.exists("/dev/nvidiactl")
    return True
