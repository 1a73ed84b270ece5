"""Grid: n x n faces from the same voice, each with its own noise.

The live loop generates ``n * n`` images per generator call (one audio window repeated, ``n * n``
different noise vectors: the same voice, different faces) and passes them as ``FrameState.images``;
cell ``k`` (row-major, top-left first) shows ``images[k]`` (cycling when there are fewer images than
cells). :meth:`Grid.faces_needed` tells the loop how many to generate.

Drawing, per frame, all at the working resolution (the mosaic of generated images with gutters,
centred in a frame of the canvas's aspect ratio), then one upscale into the canvas (see
:mod:`scenes._fit` for the cost model):

* a new batch of images starts a linear crossfade of the whole mosaic (``crossfade_s``); a change of
  ``n`` or of the image size cuts;
* gate open: the faces brighten to full (time constant ``fade_in_s``); gate closed: they fade to the
  background (``idle_fade_s``). Before the first image the cells stay empty: the scene never invents a face;
* the fast loudness envelope ``FrameState.level`` (0..1) modulates every frame: face brightness
  ``1 - pulse + pulse * level`` and a background glow ``background + glow * level``, so a clap shows at
  once even before the generator has answered.

The mosaic is drawn into the largest centred square of the canvas (a 16:9 canvas gets background bars left
and right) so no face is cropped.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from scenes._fit import (
    INTERPOLATIONS,
    Buffers,
    Crossfade,
    FrameClock,
    ParamCache,
    approach,
    check_interpolation,
    check_rgb,
    replace_known,
    upscale_into,
    validate_image,
    working_shape,
)
from scenes.base import FrameState, check_canvas


@dataclass(frozen=True)
class GridParams:
    """Grid parameters (times in seconds; colours RGB 0-255; ``gutter`` in source pixels).

    Attributes:
        n: faces per side, 1..4 (``n * n`` faces; OSC ``/avgan/grid/n``).
        crossfade_s: linear crossfade to a newly generated batch (0: cut).
        fade_in_s: time constant of the brightening while the voice is active.
        idle_fade_s: time constant of the fade to the background while idle.
        gutter: gap between and around cells, in pixels of the generated images.
        pulse: 0..1, how much the fast envelope modulates face brightness (0: not at all).
        glow: RGB added to the background at full envelope (level 1).
        background: RGB of the empty canvas.
        interpolation: upscaling filter, one of :data:`scenes._fit.INTERPOLATIONS`.
    """

    n: int = 2
    crossfade_s: float = 0.1
    fade_in_s: float = 0.15
    idle_fade_s: float = 2.5
    gutter: int = 2
    pulse: float = 0.35
    glow: tuple[int, int, int] = (40, 30, 64)
    background: tuple[int, int, int] = (8, 8, 12)
    interpolation: str = "linear"

    def __post_init__(self) -> None:
        if isinstance(self.n, bool) or int(self.n) != self.n or not 1 <= int(self.n) <= 4:
            raise ValueError(f"grid parameter n must be an integer in 1..4, got {self.n!r}")
        object.__setattr__(self, "n", int(self.n))
        for name in ("crossfade_s", "fade_in_s", "idle_fade_s"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"grid parameter {name} must be >= 0 seconds, got {getattr(self, name)!r}")
        if not 0 <= int(self.gutter) <= 16:
            raise ValueError(f"grid parameter gutter must be in 0..16 px, got {self.gutter!r}")
        if not 0.0 <= self.pulse <= 1.0:
            raise ValueError(f"grid parameter pulse must be in 0..1, got {self.pulse!r}")
        object.__setattr__(self, "glow", check_rgb("grid parameter glow", self.glow))
        object.__setattr__(self, "background", check_rgb("grid parameter background", self.background))
        check_interpolation("grid parameter interpolation", self.interpolation)

    @classmethod
    def from_params(cls, params: Mapping[str, Any], base: GridParams | None = None) -> GridParams:
        """``base`` (default: the defaults) with the known keys of ``params`` replaced; other keys are ignored.

        Raises:
            ValueError: a known key has an invalid value.
        """
        if isinstance(params.get("n"), float) and params["n"].is_integer():  # TouchOSC faders send floats
            params = {**params, "n": int(params["n"])}
        return replace_known(base or cls(), params)


class Grid:
    """n x n faces of the same voice with different noise; crossfades, idle fade, envelope pulse.

    Args:
        params: default parameters; ``FrameState.params`` overrides them per frame (keys as in :class:`GridParams`).
    """

    name = "grid"

    def __init__(self, params: GridParams | None = None) -> None:
        self.params = params or GridParams()
        self._cache: ParamCache[GridParams] = ParamCache(GridParams.from_params)
        self._buffers = Buffers()
        self._fade = Crossfade()
        self._clock = FrameClock()
        self.reset()

    def reset(self) -> None:
        """Forget faces, fades and timing (next frame: background until images arrive)."""
        self._fade.reset()
        self._index = -1
        self._clock.reset()
        self._brightness = 0.0
        self._layout: tuple[int, int, int] | None = None  # (n, cell side, gutter) of the mosaic in the crossfade

    def resolve(self, params: Mapping[str, Any]) -> GridParams:
        """The parameters in effect for ``params`` (cached by value).

        Raises:
            ValueError: a known key has an invalid value.
        """
        return self._cache.get(params, self.params)

    def faces_needed(self, params: Mapping[str, Any]) -> int:
        """Images per generation for ``params``: ``n * n``."""
        n = self.resolve(params).n
        return n * n

    def _mosaic(self, images: tuple[np.ndarray, ...], n: int, gutter: int) -> np.ndarray:
        """float32 [M, M, 3] mosaic (gutters 0), M = n * side + (n + 1) * gutter, side = first image's height."""
        for image in images:
            validate_image(image)
        side = images[0].shape[0]
        m = n * side + (n + 1) * gutter
        mosaic = np.zeros((m, m, 3), np.float32)  # new per generation (the crossfade keeps it): small
        for k in range(n * n):
            image = images[k % len(images)]
            if image.shape[:2] != (side, side):
                image = cv2.resize(image, (side, side), interpolation=cv2.INTER_AREA)
            r, c = divmod(k, n)
            y, x = gutter + r * (side + gutter), gutter + c * (side + gutter)
            mosaic[y : y + side, x : x + side] = image
        self._layout = (n, side, gutter)
        return mosaic

    def _mask(self, m: int, n: int, side: int, gutter: int) -> np.ndarray:
        """float32 [M, M, 1]: 1 inside cells, 0 in gutters (cached)."""
        mask = self._buffers.get(f"mask{n}/{side}/{gutter}", (m, m, 1))
        if not getattr(self, "_mask_key", None) == (m, n, side, gutter):
            mask[...] = 0.0
            for k in range(n * n):
                r, c = divmod(k, n)
                y, x = gutter + r * (side + gutter), gutter + c * (side + gutter)
                mask[y : y + side, x : x + side] = 1.0
            self._mask_key = (m, n, side, gutter)
        return mask

    def draw(self, canvas: np.ndarray, frame: FrameState) -> None:
        """Draw ``frame`` into ``canvas`` (uint8 [H, W, 3], overwritten in place).

        Raises:
            ValueError: bad canvas, an image that is not uint8 [h, w, 3], or a bad parameter.
        """
        check_canvas(canvas)
        p = self.resolve(frame.params)
        now, previous, dt = self._clock.tick(frame.time)

        if frame.images and frame.image_index != self._index:
            self._index = frame.image_index
            self._fade.push(self._mosaic(frame.images, p.n, int(p.gutter)), now, previous, p.crossfade_s)
        elif self._layout is not None and self._layout[0] != p.n and frame.images:
            self._fade.reset()  # n changed: re-lay the images we have (they are cycled over the new cells)
            self._fade.push(self._mosaic(frame.images, p.n, int(p.gutter)), now, previous, 0.0)

        if frame.active and not self._fade.empty:
            self._brightness = approach(self._brightness, 1.0, dt, p.fade_in_s)
        else:
            self._brightness = approach(self._brightness, 0.0, dt, p.idle_fade_s)
        level = min(1.0, max(0.0, float(frame.level)))
        background = np.asarray(p.background, np.float32) + np.asarray(p.glow, np.float32) * np.float32(level)

        picture = self._fade.at(now, p.crossfade_s)
        if picture is None:
            n, side, gutter = p.n, 64, int(p.gutter)
            m = n * side + (n + 1) * gutter
        else:
            assert self._layout is not None
            n, side, gutter = self._layout
            m = picture.shape[0]
        # Working frame: the mosaic's square centred in a frame of the canvas's aspect ratio.
        h, w = working_shape(canvas.shape[:2], m)
        work = self._buffers.get("work", (h, w, 3))
        work[...] = background
        if picture is not None:
            bright = self._brightness * (1.0 - p.pulse + p.pulse * level)
            if bright >= 0.5 / 255:
                mask = self._mask(m, n, side, gutter)
                y0, x0 = (h - m) // 2, (w - m) // 2
                if h < m or w < m:  # canvas smaller than the mosaic (tiny canvases): scale the mosaic down
                    s = min(h, w)
                    picture = cv2.resize(picture, (s, s), interpolation=cv2.INTER_AREA)
                    mask = cv2.resize(mask, (s, s), interpolation=cv2.INTER_AREA)[..., None]
                    y0, x0, m = (h - s) // 2, (w - s) // 2, s
                region = work[y0 : y0 + m, x0 : x0 + m]
                # region = background + (picture - background) * bright * mask
                tmp = self._buffers.get("tmp", (m, m, 3))
                np.subtract(picture, background, out=tmp)
                tmp *= mask
                tmp *= np.float32(bright)
                region += tmp
        small = self._buffers.get("small", (h, w, 3), np.uint8)
        np.add(work, 0.5, out=work)
        np.clip(work, 0, 255, out=work)
        small[...] = work  # float32 -> uint8 (truncation after +0.5: rounding)
        upscale_into(small, canvas, INTERPOLATIONS[p.interpolation])
