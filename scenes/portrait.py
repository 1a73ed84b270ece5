"""Portrait: one large face filling the canvas.

Drawing, per frame (all at the generated image's resolution, then one upscale):

* a newly generated image starts a linear crossfade from the picture on screen to the new
  one, lasting ``crossfade_s`` seconds (set it to the generation interval so successive
  generated frames blend into continuous motion);
* while the voice gate is open the face brightens to full (time constant ``fade_in_s``)
  and the zoom returns to 1 (time constant ``zoom_return_s``);
* idle (gate closed) the last face fades exponentially towards the dark ``background``
  (time constant ``idle_fade_s``) while slowly zooming in towards ``idle_zoom``
  (time constant ``idle_zoom_s``). Before the first generated image the canvas is plain
  background: the scene never invents a face.

``fit`` says how the square face meets a canvas of another shape: ``"fill"`` scales it to *cover* the canvas
(a 16:9 canvas crops the face's top and bottom: eyebrows to upper lip show), ``"fit"`` scales it to fit inside
(the whole face, letterboxed on ``background``). Scaling is OpenCV's (``interpolation``: cubic by default,
~0.3 ms for 64 -> 512 px).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from scenes._fit import FITS, FrameClock, ParamCache, contain_into, replace_known, validate_image
from scenes.base import FrameState, check_canvas

INTERPOLATIONS: dict[str, int] = {
    "nearest": cv2.INTER_NEAREST,
    "linear": cv2.INTER_LINEAR,
    "cubic": cv2.INTER_CUBIC,
    "lanczos": cv2.INTER_LANCZOS4,
}


@dataclass(frozen=True)
class PortraitParams:
    """Portrait parameters (times in seconds; colours RGB 0-255).

    Attributes:
        crossfade_s: duration of the linear crossfade to a newly generated image (0: cut).
        fade_in_s: time constant of the brightening to full while the voice is active.
        idle_fade_s: time constant of the exponential fade to the background while idle.
        idle_zoom: zoom factor (>= 1) the idle face drifts towards.
        idle_zoom_s: time constant of the idle zoom.
        zoom_return_s: time constant of the zoom's return to 1 when the voice is active again.
        background: RGB of the empty / faded canvas, and of the bars beside the face in ``fit`` mode.
        interpolation: upscaling filter, one of :data:`INTERPOLATIONS`.
        fit: ``"fill"`` (cover the canvas, cropping the face) or ``"fit"`` (the whole face, letterboxed).
    """

    crossfade_s: float = 0.1
    fade_in_s: float = 0.15
    idle_fade_s: float = 2.5
    idle_zoom: float = 1.12
    idle_zoom_s: float = 8.0
    zoom_return_s: float = 0.6
    background: tuple[int, int, int] = (8, 8, 12)
    interpolation: str = "cubic"
    fit: str = "fill"

    def __post_init__(self) -> None:
        for name in ("crossfade_s", "fade_in_s", "idle_fade_s", "idle_zoom_s", "zoom_return_s"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"portrait parameter {name} must be >= 0 seconds, got {getattr(self, name)!r}")
        if not self.idle_zoom >= 1.0:
            raise ValueError(f"portrait parameter idle_zoom must be >= 1, got {self.idle_zoom!r}")
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(
                f"portrait parameter interpolation must be one of {', '.join(INTERPOLATIONS)}, got {self.interpolation!r}"
            )
        if self.fit not in FITS:
            raise ValueError(f"portrait parameter fit must be one of {', '.join(FITS)}, got {self.fit!r}")
        if len(self.background) != 3 or not all(0 <= int(c) <= 255 for c in self.background):
            raise ValueError(f"portrait parameter background must be 3 values in 0..255, got {self.background!r}")

    @classmethod
    def from_params(cls, params: Mapping[str, Any], base: PortraitParams | None = None) -> PortraitParams:
        """``base`` (default: the defaults) with the known keys of ``params`` replaced; other keys are ignored.

        Raises:
            ValueError: a known key has an invalid value.
        """
        if "background" in params:
            params = {**params, "background": tuple(int(c) for c in params["background"])}
        return replace_known(base or cls(), params)


def _approach(value: float, target: float, dt: float, tau: float) -> float:
    """One-pole step of ``value`` towards ``target`` over ``dt`` seconds with time constant ``tau`` seconds."""
    if tau <= 0:
        return target
    return target + (value - target) * math.exp(-dt / tau)


class Portrait:
    """One large face, crossfading between generated frames, fading and zooming when idle.

    Args:
        params: default parameters; ``FrameState.params`` overrides them per frame.
    """

    name = "portrait"

    def __init__(self, params: PortraitParams | None = None) -> None:
        self.params = params or PortraitParams()
        self._cache: ParamCache[PortraitParams] = ParamCache(PortraitParams.from_params)
        self._bg: np.ndarray | None = None
        self._clock = FrameClock()
        self.reset()

    def reset(self) -> None:
        """Forget the face on screen, fades and zoom (next frame: background until an image arrives)."""
        self._from: np.ndarray | None = None  # float32 [h, w, 3], picture at the crossfade's start
        self._to: np.ndarray | None = None  # float32 [h, w, 3], newest generated image
        self._xf_start = 0.0  # s, crossfade start time
        self._index = -1
        self._clock.reset()
        self._brightness = 0.0  # 0 = background, 1 = full face
        self._zoom = 1.0

    def _params(self, params: Mapping[str, Any]) -> PortraitParams:
        return self._cache.get(params, self.params)

    def _background(self, shape: tuple[int, ...], rgb: tuple[int, int, int]) -> np.ndarray:
        """A cached uint8 canvas of ``shape`` filled with ``rgb`` (copying it is ~50x faster than a broadcast fill)."""
        if self._bg is None or self._bg.shape != shape or tuple(self._bg[0, 0]) != tuple(rgb):
            self._bg = np.empty(shape, np.uint8)
            self._bg[...] = np.asarray(rgb, dtype=np.uint8)
        return self._bg

    def _picture(self, now: float, crossfade_s: float) -> np.ndarray | None:
        """The crossfaded source picture at time ``now``: float32 [h, w, 3] in 0..255, or None."""
        if self._to is None or self._from is None:
            return None
        if crossfade_s <= 0 or self._from is self._to:
            return self._to
        alpha = min(1.0, max(0.0, (now - self._xf_start) / crossfade_s))
        if alpha >= 1.0:
            self._from = self._to
            return self._to
        return self._from + (self._to - self._from) * np.float32(alpha)

    def draw(self, canvas: np.ndarray, frame: FrameState) -> None:
        """Draw ``frame`` into ``canvas`` (uint8 [H, W, 3], overwritten in place).

        Raises:
            ValueError: bad canvas, an image that is not uint8 [h, w, 3], or a bad parameter.
        """
        check_canvas(canvas)
        p = self._params(frame.params)
        now, previous, dt = self._clock.tick(frame.time)

        image = frame.image
        if image is not None and frame.image_index != self._index:
            validate_image(image)
            self._index = frame.image_index
            new = image.astype(np.float32)
            current = self._picture(now, p.crossfade_s)
            if current is None or current.shape != new.shape:
                self._from = new
            else:
                self._from = current
            self._to = new
            # The crossfade started at the previous frame, so this frame already moves towards the new image.
            self._xf_start = previous

        active = frame.active and self._to is not None
        if active:
            self._brightness = _approach(self._brightness, 1.0, dt, p.fade_in_s)
            self._zoom = _approach(self._zoom, 1.0, dt, p.zoom_return_s)
        else:
            self._brightness = _approach(self._brightness, 0.0, dt, p.idle_fade_s)
            self._zoom = _approach(self._zoom, p.idle_zoom, dt, p.idle_zoom_s)

        picture = self._picture(now, p.crossfade_s)
        background = np.asarray(p.background, dtype=np.float32)
        if picture is None or self._brightness < 0.5 / 255:
            np.copyto(canvas, self._background(canvas.shape, p.background))
            return
        if self._brightness < 1.0:
            picture = background + (picture - background) * np.float32(self._brightness)
        small = np.clip(picture + 0.5, 0, 255).astype(np.uint8)  # convex mixes stay in range; clip guards rounding
        if p.fit == "fit":
            contain_into(small, canvas, self._zoom, INTERPOLATIONS[p.interpolation],
                         self._background(canvas.shape, p.background))  # fmt: skip
        else:
            _cover(small, canvas, self._zoom, INTERPOLATIONS[p.interpolation])


def _cover(small: np.ndarray, canvas: np.ndarray, zoom: float, interpolation: int) -> None:
    """Scale uint8 ``small`` [h, w, 3] to cover ``canvas`` [H, W, 3] times ``zoom`` (>= 1), centred, in place."""
    height, width = canvas.shape[:2]
    h, w = small.shape[:2]
    scale = max(height / h, width / w) * zoom
    rw, rh = max(width, round(w * scale)), max(height, round(h * scale))
    if (rw, rh) == (width, height):
        if canvas.flags.c_contiguous:
            cv2.resize(small, (width, height), dst=canvas, interpolation=interpolation)
        else:
            canvas[...] = cv2.resize(small, (width, height), interpolation=interpolation)
        return
    big = cv2.resize(small, (rw, rh), interpolation=interpolation)
    x0, y0 = (rw - width) // 2, (rh - height) // 2
    canvas[...] = big[y0 : y0 + height, x0 : x0 + width]
