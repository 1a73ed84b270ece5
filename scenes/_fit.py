"""Drawing helpers shared by the grid and morph scenes (private to :mod:`scenes`).

Cost model at 1920x1080 (2 CPU cores): every float operation on a full canvas costs ~1-2 ms, an OpenCV
``resize`` of a small picture straight into the canvas ~1 ms, an affine warp at full size ~16 ms. So the
scenes compose each frame at a *small* working resolution with the canvas's aspect ratio (a few hundred
pixels wide at most) and finish with exactly one :func:`upscale_into` into the caller's canvas. Working
buffers are cached by shape, so a steady stream of frames allocates nothing at canvas size.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from typing import Any, Generic, TypeVar

import cv2
import numpy as np

INTERPOLATIONS: dict[str, int] = {
    "nearest": cv2.INTER_NEAREST,
    "linear": cv2.INTER_LINEAR,
    "cubic": cv2.INTER_CUBIC,
    "lanczos": cv2.INTER_LANCZOS4,
}


def approach(value: float, target: float, dt: float, tau: float) -> float:
    """One-pole step of ``value`` towards ``target`` over ``dt`` seconds with time constant ``tau`` seconds."""
    if tau <= 0:
        return target
    return target + (value - target) * math.exp(-dt / tau)


def working_shape(canvas_hw: tuple[int, int], height: int) -> tuple[int, int]:
    """(h, w) of a working picture ``height`` px high (capped at the canvas's) with the canvas's aspect ratio."""
    ch, cw = canvas_hw
    h = max(1, min(int(height), ch))
    return h, max(1, min(cw, round(h * cw / ch)))


def upscale_into(small: np.ndarray, canvas: np.ndarray, interpolation: int) -> None:
    """Resize uint8 ``small`` [h, w, 3] to fill ``canvas`` [H, W, 3] (uint8, written in place).

    A C-contiguous canvas is written directly (``dst=``); a strided view gets a temporary copy.
    """
    height, width = canvas.shape[:2]
    if small.shape[:2] == (height, width):
        np.copyto(canvas, small)
    elif canvas.flags.c_contiguous:
        cv2.resize(small, (width, height), dst=canvas, interpolation=interpolation)
    else:
        canvas[...] = cv2.resize(small, (width, height), interpolation=interpolation)


FITS: tuple[str, ...] = ("fill", "fit")
"""How a picture meets a canvas of another shape: ``fill`` covers it (cropping the picture), ``fit`` shows all of it
(letterboxed on the scene's background)."""


def contain_into(
    small: np.ndarray, canvas: np.ndarray, zoom: float, interpolation: int, background: np.ndarray
) -> tuple[int, int, int, int]:
    """Scale uint8 ``small`` [h, w, 3] to fit inside ``canvas`` [H, W, 3] times ``zoom``, centred, and fill the rest
    from ``background`` (uint8, the canvas's shape), in place: the whole picture, letterboxed (a ``zoom`` above 1
    lets it grow past the canvas, which then crops it). Only the bars are copied from ``background``.

    Returns:
        (x0, y0, x1, y1): the picture's rectangle on the canvas, px (clipped to the canvas).
    """
    height, width = canvas.shape[:2]
    h, w = small.shape[:2]
    scale = min(height / h, width / w) * zoom
    rw, rh = max(1, round(w * scale)), max(1, round(h * scale))
    x0, y0 = (width - rw) // 2, (height - rh) // 2
    cx0, cy0, cx1, cy1 = max(0, x0), max(0, y0), min(width, x0 + rw), min(height, y0 + rh)
    for ys, xs in ((slice(0, cy0), slice(None)), (slice(cy1, None), slice(None)),
                   (slice(cy0, cy1), slice(0, cx0)), (slice(cy0, cy1), slice(cx1, None))):  # fmt: skip
        canvas[ys, xs] = background[ys, xs]
    if (rw, rh) == (cx1 - cx0, cy1 - cy0):
        region = canvas[cy0:cy1, cx0:cx1]
        region[...] = cv2.resize(small, (rw, rh), interpolation=interpolation)
    else:  # grown past the canvas: the visible part of the scaled picture
        big = cv2.resize(small, (rw, rh), interpolation=interpolation)
        canvas[cy0:cy1, cx0:cx1] = big[cy0 - y0 : cy1 - y0, cx0 - x0 : cx1 - x0]
    return cx0, cy0, cx1, cy1


def validate_image(image: np.ndarray) -> None:
    """Raise ``ValueError`` unless ``image`` is uint8 [h, w, 3] with h, w > 0."""
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        got = f"{image.dtype} {tuple(image.shape)}" if isinstance(image, np.ndarray) else type(image).__name__
        raise ValueError(f"generated image must be uint8 [h, w, 3], got {got}")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError("generated image is empty")


def check_rgb(name: str, value: tuple[int, ...]) -> tuple[int, int, int]:
    """``value`` as an RGB tuple of ints in 0..255; ``ValueError`` naming ``name`` otherwise."""
    try:
        rgb = tuple(int(c) for c in value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be 3 values in 0..255, got {value!r}") from None
    if len(rgb) != 3 or not all(0 <= c <= 255 for c in rgb):
        raise ValueError(f"{name} must be 3 values in 0..255, got {value!r}")
    return rgb[0], rgb[1], rgb[2]


def check_interpolation(name: str, value: str) -> None:
    """``ValueError`` unless ``value`` is one of :data:`INTERPOLATIONS`."""
    if value not in INTERPOLATIONS:
        raise ValueError(f"{name} must be one of {', '.join(INTERPOLATIONS)}, got {value!r}")


P = TypeVar("P")


def replace_known(base: P, params: Mapping[str, Any]) -> P:
    """``base`` (a frozen parameter dataclass) with the keys of ``params`` that are its fields replaced; other keys
    are ignored. Goes through the dataclass's ``__init__``, so its checks run.

    Raises:
        ValueError: a known key has an invalid value.
    """
    changes = {f.name: params[f.name] for f in dataclasses.fields(base) if f.name in params}  # type: ignore[arg-type]
    return dataclasses.replace(base, **changes) if changes else base  # type: ignore[type-var]


class ParamCache(Generic[P]):
    """The parameters in effect for a frame's ``params``, resolved once per distinct value (compared by value:
    callers may update one dict in place).

    Args:
        resolve: ``(params, base) -> P``, e.g. a parameter class's ``from_params``.
    """

    def __init__(self, resolve: Callable[[Mapping[str, Any], P], P]) -> None:
        self._resolve = resolve
        self._cached: tuple[dict[str, Any], P] | None = None

    def get(self, params: Mapping[str, Any], base: P) -> P:
        """``base`` when ``params`` is empty, else ``resolve(params, base)`` (cached).

        Raises:
            ValueError: a known key has an invalid value.
        """
        if not params:
            return base
        if self._cached is None or self._cached[0] != params:
            self._cached = (dict(params), self._resolve(params, base))
        return self._cached[1]


class FrameClock:
    """A scene's own clock: the time of the frame being drawn, never running backwards.

    :meth:`tick` takes ``FrameState.time`` (seconds) and returns ``(now, previous, dt)``: this frame's time,
    the previous frame's (``now`` on the first frame) and the non-negative step between them. A frame time
    earlier than the previous one (a clock reset) gives ``dt = 0`` and keeps the later time.
    """

    def __init__(self) -> None:
        self.time: float | None = None

    def reset(self) -> None:
        """Forget the previous frame's time."""
        self.time = None

    def tick(self, frame_time: float) -> tuple[float, float, float]:
        """(now, previous, dt) in seconds for a frame at ``frame_time``."""
        now = float(frame_time)
        previous = now if self.time is None else self.time
        self.time = max(now, previous)
        return now, previous, max(0.0, now - previous)


class Buffers:
    """Working arrays cached by (name, shape, dtype): the steady state allocates nothing."""

    def __init__(self) -> None:
        self._arrays: dict[str, np.ndarray] = {}

    def get(self, name: str, shape: tuple[int, ...], dtype: type = np.float32) -> np.ndarray:
        """An uninitialised array of ``shape``/``dtype`` reserved for ``name`` (the same object while the shape holds)."""
        a = self._arrays.get(name)
        if a is None or a.shape != shape or a.dtype != dtype:
            a = np.empty(shape, dtype)
            self._arrays[name] = a
        return a

    def clear(self) -> None:
        self._arrays.clear()


class Crossfade:
    """Linear crossfade between successive generated pictures (float32, any fixed shape), as in the portrait.

    A new picture starts a fade from what is on screen now to it, lasting ``crossfade_s`` seconds from
    the *previous* frame's time (so the frame that brings it already moves towards it). A shape change cuts.
    """

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self._from: np.ndarray | None = None
        self._to: np.ndarray | None = None
        self._start = 0.0
        self._mix: np.ndarray | None = None

    @property
    def empty(self) -> bool:
        """No picture yet."""
        return self._to is None

    def push(self, picture: np.ndarray, now: float, previous: float, crossfade_s: float) -> None:
        """Start fading to float32 ``picture`` (taken over: the caller must not modify it afterwards)."""
        current = self.at(now, crossfade_s)
        if current is None or current.shape != picture.shape:
            self._from = picture
        else:
            self._from = current.copy() if current is self._mix else current
        self._to = picture
        self._start = previous

    def at(self, now: float, crossfade_s: float) -> np.ndarray | None:
        """The picture at ``now`` (float32; an internal buffer, valid until the next call), or ``None``."""
        if self._to is None or self._from is None:
            return None
        if crossfade_s <= 0 or self._from is self._to:
            return self._to
        alpha = (now - self._start) / crossfade_s
        if alpha >= 1.0:
            self._from = self._to
            return self._to
        alpha = max(0.0, alpha)
        if self._mix is None or self._mix.shape != self._to.shape:
            self._mix = np.empty_like(self._to)
        np.subtract(self._to, self._from, out=self._mix)
        self._mix *= np.float32(alpha)
        self._mix += self._from
        return self._mix
