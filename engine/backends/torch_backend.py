"""torch backend: runs the bundle's ``model.pt2`` (a ``torch.export`` ExportedProgram).

The engine imports nothing of the training code, so the module is the exported
program itself (``ExportedProgram.module()``), not a rebuilt ``nn.Module``.

* CPU: plain calls under :func:`torch.inference_mode`.
* CUDA: the program is moved with ``torch.export.passes.move_to_device_pass``
  (or ``.to(device)`` on older torch); the batch-1 path is captured once in a
  CUDA graph (static input/output buffers, warm-up on a side stream) and
  replayed, which removes per-kernel launch overhead for live use. Other batch
  sizes run eagerly. Capture failure is logged and the eager path is used.
"""

from __future__ import annotations

import logging

import numpy as np

from engine.backends.base import BackendUnavailable
from engine.bundle import Bundle

log = logging.getLogger(__name__)


class TorchBackend:
    """Runs ``model.pt2`` with torch on CPU or CUDA.

    Args:
        bundle: the loaded bundle (must list ``model.pt2``).
        device: ``"cpu"`` or ``"cuda"``.
        device_index: CUDA device index.
        max_batch: largest batch that will be passed (informational here).
        threads: if given, sets torch's process-wide intra-op thread count.
        cuda_graph: capture the batch-1 path in a CUDA graph (CUDA only).

    Raises:
        BackendUnavailable: torch missing, no CUDA device, no ``model.pt2``, or it fails to load.
    """

    def __init__(
        self,
        bundle: Bundle,
        device: str = "cpu",
        device_index: int = 0,
        max_batch: int = 32,
        threads: int | None = None,
        cuda_graph: bool = True,
    ) -> None:
        try:
            import torch
        except ImportError as exc:
            raise BackendUnavailable(f"torch not installed ({exc})") from exc
        self.torch = torch
        self.name = f"torch-{device}"
        if device == "cuda":
            if not torch.cuda.is_available():
                raise BackendUnavailable("no CUDA device")
            self.device = torch.device("cuda", device_index)
        elif device == "cpu":
            self.device = torch.device("cpu")
        else:
            raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")
        if not bundle.has("model.pt2"):
            raise BackendUnavailable("bundle has no model.pt2")
        if threads:
            torch.set_num_threads(int(threads))
        self.max_batch = max_batch
        # the program's dynamic batch axis has an upper bound (export's --max-batch); split above it
        self.limit = int(bundle.manifest.get("export", {}).get("pt2_max_batch") or 1 << 30)
        try:
            program = torch.export.load(str(bundle.pt2_path))
            if self.device.type == "cuda":
                program = _move_program(program, self.device)
            self.module = program.module()
            if self.device.type == "cuda":
                self.module.to(self.device)
        except Exception as exc:  # noqa: BLE001 - deserialisation errors are untyped
            raise BackendUnavailable(f"cannot load model.pt2 ({type(exc).__name__}: {exc})") from exc
        self.input_names = list(bundle.inputs)
        self.output_names = list(bundle.outputs)
        self.item_shapes = {name: spec.item_shape for name, spec in bundle.inputs.items()}
        self._graph = None
        if self.device.type == "cuda" and cuda_graph:
            try:
                self._capture_batch1()
            except Exception as exc:  # noqa: BLE001 - capture can fail for many driver reasons
                log.warning("torch-cuda: CUDA graph capture failed, running eagerly (%s: %s)", type(exc).__name__, exc)
                self._graph = None

    def _call(self, *args):  # -> tuple of tensors in output order
        out = self.module(*args)
        return tuple(out) if isinstance(out, (tuple, list)) else (out,)

    def _capture_batch1(self) -> None:
        torch = self.torch
        with torch.inference_mode():
            self._static_in = [torch.zeros(1, *self.item_shapes[n], device=self.device) for n in self.input_names]
            side = torch.cuda.Stream(device=self.device)
            side.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(side):
                for _ in range(3):
                    self._call(*self._static_in)
            torch.cuda.current_stream(self.device).wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                self._static_out = self._call(*self._static_in)
            torch.cuda.synchronize(self.device)
            self._host_out = [torch.empty(o.shape, dtype=o.dtype, pin_memory=True) for o in self._static_out]
        self._graph = graph

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """float32 inputs by name (e.g. audio [B, S], noise [B, Z]) -> float32 outputs by name (e.g. image)."""
        batch = len(next(iter(inputs.values())))
        if batch > self.limit:
            step = self.limit
            parts = [self.run({k: v[i : i + step] for k, v in inputs.items()}) for i in range(0, batch, step)]
            return {k: np.concatenate([p[k] for p in parts]) for k in self.output_names}
        torch = self.torch
        with torch.inference_mode():
            args = [torch.from_numpy(inputs[n]) for n in self.input_names]
            if self.device.type == "cpu":
                outs = [o.numpy() for o in self._call(*args)]
            elif self._graph is not None and batch == 1:
                for static, a in zip(self._static_in, args):
                    static.copy_(a, non_blocking=False)
                self._graph.replay()
                for host, out in zip(self._host_out, self._static_out):
                    host.copy_(out, non_blocking=False)
                outs = [h.numpy().copy() for h in self._host_out]
            else:
                outs = [o.cpu().numpy() for o in self._call(*[a.to(self.device) for a in args])]
        return dict(zip(self.output_names, outs))

    def close(self) -> None:
        """Drop the module and CUDA graph."""
        self._graph = None
        self.module = None


def _move_program(program, device):  # (ExportedProgram, torch.device) -> ExportedProgram
    """Move an ExportedProgram's parameters, buffers and constants to ``device``."""
    try:
        from torch.export.passes import move_to_device_pass
    except ImportError:
        return program  # caller moves the unlifted module with .to(device)
    return move_to_device_pass(program, str(device))
