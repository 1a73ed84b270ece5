"""TensorRT backend (TensorRT 10 Python API), with an on-disk plan cache.

Written against the documented TensorRT 10 API; not run on the development
machine (no GPU there). The cache-key and fallback logic is plain Python and
unit-tested without TensorRT.

Build: ``trt.Builder`` -> network from ``trt.OnnxParser`` (``model.onnx``) ->
builder config with FP16 when ``platform_has_fast_fp16``, one optimisation
profile for batch 1..max_batch (optimised for batch 1, the live case), and a
timing cache file shared across bundles on the same GPU/TensorRT version.
The serialized plan is cached at ``<cache>/trt/<key>.plan`` where ``<cache>``
is ``$AVGAN_CACHE`` or ``~/.cache/avgan``; the key covers the GPU name,
compute capability, TensorRT version, bundle hash (sha256 of ``model.onnx``),
max batch and precision, so changing any of them builds a new plan.

Run: torch CUDA tensors are the I/O buffers (preallocated for ``max_batch``);
``set_input_shape`` + ``set_tensor_address`` + ``execute_async_v3`` on torch's
current stream.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from pathlib import Path
from typing import Any

import numpy as np

from engine.backends.base import BackendUnavailable, nvidia_driver_present
from engine.bundle import Bundle, atomic_write, cache_root

log = logging.getLogger(__name__)

WORKSPACE_BYTES = 1 << 30


def cache_dir() -> Path:
    """Directory for TensorRT plans and timing caches: ``$AVGAN_CACHE/trt`` or ``~/.cache/avgan/trt``."""
    return cache_root() / "trt"


def plan_key(
    gpu_name: str,
    compute_capability: tuple[int, int],
    trt_version: str,
    bundle_hash: str,
    max_batch: int,
    fp16: bool,
) -> str:
    """Cache key of a serialized plan: changes whenever any input changes.

    Args:
        gpu_name: e.g. ``"NVIDIA GeForce RTX 4090"``.
        compute_capability: (major, minor), e.g. ``(8, 9)``.
        trt_version: ``tensorrt.__version__``.
        bundle_hash: sha256 of the bundle's ``model.onnx``.
        max_batch: top of the optimisation profile.
        fp16: whether FP16 kernels were allowed.

    Returns:
        A file-name-safe string ``<gpu>-sm<MM>-trt<version>-<digest16>``.
    """
    fields = {
        "gpu": gpu_name,
        "cc": [int(compute_capability[0]), int(compute_capability[1])],
        "trt": trt_version,
        "bundle": bundle_hash,
        "max_batch": int(max_batch),
        "fp16": bool(fp16),
    }
    digest = hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]
    gpu = re.sub(r"[^A-Za-z0-9]+", "_", gpu_name).strip("_")[:40] or "gpu"
    version = re.sub(r"[^A-Za-z0-9.]+", "_", trt_version)
    return f"{gpu}-sm{compute_capability[0]}{compute_capability[1]}-trt{version}-{digest}"


def timing_cache_name(gpu_name: str, compute_capability: tuple[int, int], trt_version: str) -> str:
    """File name of the timing cache shared by every bundle on this GPU and TensorRT version."""
    gpu = re.sub(r"[^A-Za-z0-9]+", "_", gpu_name).strip("_")[:40] or "gpu"
    return f"timing-{gpu}-sm{compute_capability[0]}{compute_capability[1]}-trt{trt_version}.cache"


class TensorRTBackend:
    """Runs a TensorRT engine built from ``model.onnx`` (cached per GPU / TensorRT / bundle).

    Args:
        bundle: the loaded bundle.
        max_batch: largest batch accepted (optimisation profile 1..max_batch).
        device_index: CUDA device.
        fp16: allow FP16 kernels (``None``: when ``builder.platform_has_fast_fp16``).
        cache: plan cache directory (``None``: :func:`cache_dir`).

    Raises:
        BackendUnavailable: TensorRT not installed, no CUDA device via torch, ONNX
            parse / engine build / deserialisation failed.
    """

    name = "tensorrt"

    def __init__(
        self,
        bundle: Bundle,
        max_batch: int = 32,
        device_index: int = 0,
        fp16: bool | None = None,
        cache: Path | None = None,
    ) -> None:
        try:
            import tensorrt as trt
        except ModuleNotFoundError as exc:
            if exc.name == "tensorrt":
                raise BackendUnavailable("not installed") from exc
            raise BackendUnavailable(f"import failed ({exc})") from exc
        except ImportError as exc:
            raise BackendUnavailable(f"not installed ({exc})") from exc
        except Exception as exc:  # noqa: BLE001 - broken installs raise OSError etc. from native libs
            raise BackendUnavailable(f"import failed ({type(exc).__name__}: {exc})") from exc
        if not nvidia_driver_present():  # before importing torch, which takes seconds
            raise BackendUnavailable("no CUDA device (no NVIDIA driver)")
        try:
            import torch
        except ImportError as exc:
            raise BackendUnavailable("torch (CUDA) is needed for TensorRT buffers") from exc
        if not torch.cuda.is_available():
            raise BackendUnavailable("no CUDA device")
        self.trt = trt
        self.torch = torch
        self.device = torch.device("cuda", device_index)
        self.max_batch = int(max_batch)
        self.item_shapes = {name: spec.item_shape for name, spec in bundle.inputs.items()}
        self.output_names = list(bundle.outputs)
        self.logger = trt.Logger(trt.Logger.WARNING)
        gpu = torch.cuda.get_device_name(self.device)
        cc = tuple(torch.cuda.get_device_capability(self.device))
        self.cache = Path(cache) if cache is not None else cache_dir()
        with torch.cuda.device(self.device):
            if fp16 is None:
                builder = trt.Builder(self.logger)
                fp16 = bool(getattr(builder, "platform_has_fast_fp16", True))
                del builder
            self.fp16 = fp16
            key = plan_key(gpu, cc, trt.__version__, bundle.digest, self.max_batch, fp16)
            self.plan_path = self.cache / f"{key}.plan"
            timing_path = self.cache / timing_cache_name(gpu, cc, trt.__version__)
            self.runtime = trt.Runtime(self.logger)
            self.engine = self._load_or_build(bundle, key, timing_path)
            self.context = self.engine.create_execution_context()
            if self.context is None:
                raise BackendUnavailable("cannot create a TensorRT execution context")
            self._allocate()
        self.meta = {"gpu": gpu, "cc": cc, "trt": trt.__version__, "fp16": fp16, "plan": str(self.plan_path)}

    # -- plan cache -------------------------------------------------------------------------

    def _load_or_build(self, bundle: Bundle, key: str, timing_path: Path) -> Any:
        """The deserialized engine: from the cached plan if it loads, else freshly built (and cached)."""
        if self.plan_path.is_file():
            engine = self.runtime.deserialize_cuda_engine(self.plan_path.read_bytes())
            if engine is not None:
                log.info("tensorrt: using cached plan %s", self.plan_path)
                return engine
            log.warning("tensorrt: cached plan %s does not load; rebuilding", self.plan_path)
        log.info("tensorrt: building a plan for %s (takes a minute; cached at %s)", bundle.path, self.plan_path)
        plan = self._build(bundle, timing_path)
        engine = self.runtime.deserialize_cuda_engine(plan)
        if engine is None:
            raise BackendUnavailable("cannot deserialize the freshly built TensorRT plan")
        try:
            atomic_write(self.plan_path, plan)
            sidecar = {"key": key, "bundle": str(bundle.path), "bundle_hash": bundle.digest, "fp16": self.fp16}
            atomic_write(self.plan_path.with_suffix(".json"), json.dumps(sidecar, indent=2).encode())
        except OSError as exc:
            log.warning("tensorrt: cannot cache the plan at %s (%s); it will be rebuilt next time", self.plan_path, exc)
        return engine

    def _build(self, bundle: Bundle, timing_path: Path) -> bytes:
        trt = self.trt
        builder = trt.Builder(self.logger)
        network = builder.create_network(0)  # explicit batch is the only mode in TensorRT 10
        parser = trt.OnnxParser(network, self.logger)
        if not parser.parse_from_file(str(bundle.onnx_path)):
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise BackendUnavailable(f"ONNX parse failed ({errors})")
        config = builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, WORKSPACE_BYTES)
        if self.fp16:
            config.set_flag(trt.BuilderFlag.FP16)
        profile = builder.create_optimization_profile()
        for i in range(network.num_inputs):
            tensor = network.get_input(i)
            item = self.item_shapes[tensor.name]
            profile.set_shape(tensor.name, (1, *item), (1, *item), (self.max_batch, *item))
        config.add_optimization_profile(profile)
        cache_bytes = timing_path.read_bytes() if timing_path.is_file() else b""
        timing_cache = config.create_timing_cache(cache_bytes)
        config.set_timing_cache(timing_cache, ignore_mismatch=False)
        serialized = builder.build_serialized_network(network, config)
        if serialized is None:
            raise BackendUnavailable("TensorRT engine build failed (see TensorRT log above)")
        try:
            atomic_write(timing_path, bytes(memoryview(config.get_timing_cache().serialize())))
        except OSError as exc:
            log.warning("tensorrt: cannot write timing cache %s (%s)", timing_path, exc)
        return bytes(memoryview(serialized))

    # -- execution --------------------------------------------------------------------------

    def _allocate(self) -> None:
        trt, torch = self.trt, self.torch
        dtypes = {trt.float32: torch.float32, trt.float16: torch.float16}
        self.inputs: dict[str, Any] = {}
        self.outputs: dict[str, Any] = {}
        for i in range(self.engine.num_io_tensors):
            name = self.engine.get_tensor_name(i)
            dtype = dtypes[self.engine.get_tensor_dtype(name)]
            if self.engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT:
                item = self.item_shapes.get(name, ())
                self.inputs[name] = torch.empty((self.max_batch, *item), dtype=dtype, device=self.device)
            else:
                shape = list(self.engine.get_tensor_shape(name))
                shape[0] = self.max_batch
                self.outputs[name] = torch.empty(shape, dtype=dtype, device=self.device)
        if set(self.inputs) != set(self.item_shapes) or set(self.outputs) != set(self.output_names):
            raise BackendUnavailable(
                f"unexpected engine I/O: inputs {sorted(self.inputs)}, outputs {sorted(self.outputs)}; the manifest "
                f"lists {sorted(self.item_shapes)} and {sorted(self.output_names)}"
            )

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """float32 inputs by name (B <= max_batch) -> float32 outputs by name (FP16 engines' outputs widened)."""
        torch = self.torch
        batch = len(next(iter(inputs.values())))
        with torch.cuda.device(self.device):
            stream = torch.cuda.current_stream(self.device)
            for name, host in inputs.items():
                buf = self.inputs[name][:batch]
                buf.copy_(torch.from_numpy(host))
                self.context.set_input_shape(name, tuple(buf.shape))
                self.context.set_tensor_address(name, buf.data_ptr())
            outs = {}
            for name in self.output_names:
                outs[name] = self.outputs[name][:batch]
                self.context.set_tensor_address(name, outs[name].data_ptr())
            if not self.context.execute_async_v3(stream.cuda_stream):
                raise RuntimeError("TensorRT execute_async_v3 failed")
            return {name: out.float().cpu().numpy() for name, out in outs.items()}

    def close(self) -> None:
        """Release the execution context, engine and buffers."""
        self.context = None
        self.engine = None
        self.runtime = None
        self.inputs = {}
        self.outputs = {}
