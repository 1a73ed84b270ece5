"""A face generator followed by a super-resolution stage, behind the generator's own interface.

A super-resolution bundle (``run.py train`` with ``family: face_sr``; the shipped one is
``presets/models/face-sr-4x``) has one input, float32 [B, 3, h, w] in [-1, 1] (``low_res``), and returns ``image``
float32 [B, 3, s*h, s*w] in [-1, 1]. :class:`SuperResolved` runs a face generator, then (for batches of at most
``max_faces`` images) that stage on its float output, both through :class:`engine.generator.Generator` (so on
any backend: ONNX Runtime on the CPU here). The live loop and the render hold one where they held a Generator.

>>> gen = SuperResolved(Generator("presets/models/wav2pix-64"), Generator("presets/models/face-sr-4x"))  # doctest: +SKIP
>>> gen(audio).shape        # uint8 [B, 256, 256, 3] for B <= max_faces, else [B, 64, 64, 3]   # doctest: +SKIP
"""

from __future__ import annotations

import numpy as np

from engine.errors import UserError
from engine.generator import Generator, to_uint8


class SuperResolutionError(UserError, ValueError):
    """The super-resolution bundle does not fit the generator (the message says what each side has)."""


class ImageSizeMismatch(SuperResolutionError):
    """The super-resolution bundle takes images of another size than the generator makes (e.g. a 64 px face
    stage with a 32 px digits bundle)."""


class SuperResolved:
    """``generator``'s images, upscaled by ``upscaler`` (see the module docstring).

    Args:
        generator: a face generator (a bundle with an ``image`` output [B, 3, h, w]).
        upscaler: a super-resolution bundle with one input, [B, 3, h, w] (the generator's h, w; any name: ONNX
            forbids naming it ``image`` like the output), and an ``image`` output [B, 3, H, W].
        max_faces: batches of more images than this (the grid scene's n x n faces) are passed on as generated:
            the stage costs about as much per face as the generator (~5-10 ms per 64 px face on 2 CPU cores).

    Attributes:
        generator, upscaler, max_faces: as given. The generator's ``bundle``, ``sample_rate``, ``window_samples``,
        ``noise_dim``, ``labels`` and ``make_noise`` are this object's; ``image_size`` is the upscaled side;
        ``backend_name`` names both backends (``"onnxruntime-cpu + sr onnxruntime-cpu"``).

    Raises:
        SuperResolutionError: the upscaler is not a super-resolution bundle, or the generator makes no image.
        ImageSizeMismatch: (a SuperResolutionError) the upscaler takes images of another size.
    """

    def __init__(self, generator: Generator, upscaler: Generator, max_faces: int = 1) -> None:
        out = generator.bundle.outputs.get("image")
        ins, outs = upscaler.bundle.inputs, upscaler.bundle.outputs
        if out is None:
            raise SuperResolutionError(f"{generator.bundle.path}: no image output to upscale")
        spec = next(iter(ins.values()))
        if len(ins) != 1 or len(spec.shape) != 4 or "image" not in outs:
            raise SuperResolutionError(
                f"{upscaler.bundle.path}: not a super-resolution bundle (inputs {sorted(ins)}, outputs {sorted(outs)}; "
                "expected one image input and an image output)"
            )
        if spec.item_shape != out.item_shape:
            raise ImageSizeMismatch(
                f"{upscaler.bundle.path} takes images {list(spec.item_shape)}, but {generator.bundle.path} "
                f"makes {list(out.item_shape)}"
            )
        if int(max_faces) < 0:
            raise SuperResolutionError(f"max_faces: expected >= 0, got {max_faces}")
        self.generator, self.upscaler, self.max_faces = generator, upscaler, int(max_faces)
        self._input = spec.name
        self.bundle = generator.bundle
        self.sample_rate, self.window_samples = generator.sample_rate, generator.window_samples
        self.noise_dim, self.labels = generator.noise_dim, generator.labels
        self.image_size = int(outs["image"].shape[2])
        self.backend_name = f"{generator.backend_name} + sr {upscaler.backend_name}"
        self.backend_reason = f"{generator.backend_reason}; super-resolution: {upscaler.backend_reason}"
        self.make_noise = generator.make_noise

    def run(self, *, seed: int | None = None, batch: int | None = None, **inputs: np.ndarray) -> dict[str, np.ndarray]:
        """:meth:`engine.generator.Generator.run`, then the upscaler on ``image`` (float32 [B, 3, H, W] in [-1, 1])
        when B <= ``max_faces``; other outputs as generated."""
        out = self.generator.run(seed=seed, batch=batch, **inputs)
        if 0 < len(out["image"]) <= self.max_faces:
            out["image"] = self.upscaler.run(**{self._input: out["image"]})["image"]
        return out

    def generate(
        self, *, seed: int | None = None, batch: int | None = None, **inputs: np.ndarray
    ) -> dict[str, np.ndarray]:
        """:meth:`run` with ``image`` as uint8 [B, H, W, 3] RGB and ``sound`` clipped (as the generator's)."""
        out = self.run(seed=seed, batch=batch, **inputs)
        out["image"] = to_uint8(out["image"])
        if "sound" in out:
            out["sound"] = np.clip(out["sound"], -1.0, 1.0)
        return out

    def __call__(self, audio: np.ndarray, noise: np.ndarray | None = None, seed: int | None = None) -> np.ndarray:
        """Raw audio windows float [B, window_samples] -> uint8 [B, H, W, 3] (upscaled when B <= ``max_faces``).

        Raises:
            engine.generator.EngineInputError: as :meth:`engine.generator.Generator.__call__`.
        """
        inputs = {"audio": audio} if noise is None else {"audio": audio, "noise": noise}
        return to_uint8(self.run(seed=seed, **inputs)["image"])

    def warmup(self, calls: int = 3) -> None:
        """Warm both stages up."""
        self.generator.warmup(calls)
        self.upscaler.warmup(calls)

    def close(self) -> None:
        """Release both backends."""
        self.generator.close()
        self.upscaler.close()

    def __repr__(self) -> str:
        return f"SuperResolved({self.generator!r}, {self.upscaler!r}, max_faces={self.max_faces})"
