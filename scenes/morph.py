"""Morph: one face on a latent walk, leaving trails.

The walk itself is not drawn here (scenes do not call the generator): the live loop moves the noise
input along a path whose speed follows loudness and whose direction follows pitch
(:class:`installation.live.NoiseWalk`), generating one image per frame when it can. This scene turns
that stream of images into continuous motion:

* each new image starts a short linear crossfade (``crossfade_s``) from the picture on screen;
* the face sways slowly on a Lissajous path (``sway``, fraction of the face size; periods ~7.7 and
  ~9.1 s);
* **trail**: the face layer is an exponential blend of the faces drawn so far, time constant
  ``trail * trail_s`` seconds (frame-rate independent; ``trail`` 0 = no trail, OSC ``/avgan/morph/trail``):
  as the face moves and morphs, its previous states linger and fade;
* gate open: brightness to full (``fade_in_s``); idle: fade to the background (``idle_fade_s``);
* after the trail (so they answer a clap at once) the fast envelope zooms the picture about its centre
  (``1 + zoom_pulse * level``) and adds a glow (``glow * level``) over the whole frame;
* ``fit``: ``"fill"`` covers the frame with the face (a 16:9 canvas crops its top and bottom), ``"fit"`` shows the
  whole face on ``background``, small enough that neither the sway nor the zoom pulse pushes it past the frame
  (:data:`FIT_MARGIN`).

Everything is composed at a small working resolution (the canvas's aspect ratio, ``oversample`` x the generated
image's resolution so sub-pixel sway and zoom stay smooth, at most ``max_work_px`` high) with two affine warps,
then upscaled once into the canvas (see :mod:`scenes._fit`). The cap keeps a super-resolved 256 px face
affordable: one morph frame at 1920x1080 took 2.6 ms of CPU (one thread) for a 64 px face (128 px working
height), 4.4 ms for a 256 px face at the default cap of 192 px and 6.2-7.2 ms at 256 px.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from scenes._fit import (
    FITS,
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

FIT_MARGIN = 1.05
"""In ``fit`` mode the face's largest extent (full sway, full zoom pulse) stays 5 % inside the frame."""


@dataclass(frozen=True)
class MorphParams:
    """Morph parameters (times in seconds; colours RGB 0-255).

    Attributes:
        trail: 0..1; the trail's time constant is ``trail * trail_s`` (OSC ``/avgan/morph/trail``).
        trail_s: trail time constant at ``trail`` = 1.
        crossfade_s: linear crossfade to a newly generated image (0: cut).
        fade_in_s: time constant of the brightening while the voice is active.
        idle_fade_s: time constant of the fade to the background while idle.
        zoom_pulse: zoom added at full envelope (level 1): zoom = ``1 + zoom_pulse * level``.
        sway: amplitude of the slow drift, as a fraction of the face size (0: still).
        glow: RGB added to the background at full envelope.
        background: RGB of the empty canvas.
        oversample: working resolution relative to the generated image (1..4).
        max_work_px: the working picture's height is capped at this, px (16..2160).
        interpolation: upscaling filter, one of :data:`scenes._fit.INTERPOLATIONS`.
        fit: ``"fill"`` (cover the frame, cropping the face) or ``"fit"`` (the whole face on the background).
    """

    trail: float = 0.5
    trail_s: float = 1.0
    crossfade_s: float = 0.05
    fade_in_s: float = 0.15
    idle_fade_s: float = 2.5
    zoom_pulse: float = 0.12
    sway: float = 0.03
    glow: tuple[int, int, int] = (40, 30, 64)
    background: tuple[int, int, int] = (8, 8, 12)
    oversample: int = 2
    max_work_px: int = 192
    interpolation: str = "linear"
    fit: str = "fill"

    def __post_init__(self) -> None:
        if not 0.0 <= self.trail <= 1.0:
            raise ValueError(f"morph parameter trail must be in 0..1, got {self.trail!r}")
        for name in ("trail_s", "crossfade_s", "fade_in_s", "idle_fade_s"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"morph parameter {name} must be >= 0 seconds, got {getattr(self, name)!r}")
        if not 0.0 <= self.zoom_pulse <= 1.0:
            raise ValueError(f"morph parameter zoom_pulse must be in 0..1, got {self.zoom_pulse!r}")
        if not 0.0 <= self.sway <= 0.25:
            raise ValueError(f"morph parameter sway must be in 0..0.25, got {self.sway!r}")
        if (
            isinstance(self.oversample, bool)
            or int(self.oversample) != self.oversample
            or not 1 <= self.oversample <= 4
        ):
            raise ValueError(f"morph parameter oversample must be an integer in 1..4, got {self.oversample!r}")
        if isinstance(self.max_work_px, bool) or int(self.max_work_px) != self.max_work_px or not (
            16 <= self.max_work_px <= 2160
        ):
            raise ValueError(f"morph parameter max_work_px must be an integer in 16..2160, got {self.max_work_px!r}")
        if self.fit not in FITS:
            raise ValueError(f"morph parameter fit must be one of {', '.join(FITS)}, got {self.fit!r}")
        object.__setattr__(self, "glow", check_rgb("morph parameter glow", self.glow))
        object.__setattr__(self, "background", check_rgb("morph parameter background", self.background))
        check_interpolation("morph parameter interpolation", self.interpolation)

    @classmethod
    def from_params(cls, params: Mapping[str, Any], base: MorphParams | None = None) -> MorphParams:
        """``base`` (default: the defaults) with the known keys of ``params`` replaced; other keys are ignored.

        Raises:
            ValueError: a known key has an invalid value.
        """
        return replace_known(base or cls(), params)


class Morph:
    """One face following the latent walk, with envelope zoom, slow sway and trails.

    Args:
        params: default parameters; ``FrameState.params`` overrides them per frame (keys as in :class:`MorphParams`).
    """

    name = "morph"

    def __init__(self, params: MorphParams | None = None) -> None:
        self.params = params or MorphParams()
        self._cache: ParamCache[MorphParams] = ParamCache(MorphParams.from_params)
        self._buffers = Buffers()
        self._fade = Crossfade()
        self._clock = FrameClock()
        self.reset()

    def reset(self) -> None:
        """Forget the face, the trail, fades and timing."""
        self._fade.reset()
        self._index = -1
        self._clock.reset()
        self._brightness = 0.0
        self._trail_valid = False

    def resolve(self, params: Mapping[str, Any]) -> MorphParams:
        """The parameters in effect for ``params`` (cached by value).

        Raises:
            ValueError: a known key has an invalid value.
        """
        return self._cache.get(params, self.params)

    def faces_needed(self, params: Mapping[str, Any]) -> int:
        """Images per generation: 1 (the walk moves one face)."""
        return 1

    def draw(self, canvas: np.ndarray, frame: FrameState) -> None:
        """Draw ``frame`` into ``canvas`` (uint8 [H, W, 3], overwritten in place).

        Raises:
            ValueError: bad canvas, an image that is not uint8 [h, w, 3], or a bad parameter.
        """
        check_canvas(canvas)
        p = self.resolve(frame.params)
        now, previous, dt = self._clock.tick(frame.time)

        image = frame.image
        if image is not None and frame.image_index != self._index:
            validate_image(image)
            self._index = frame.image_index
            self._fade.push(image.astype(np.float32), now, previous, p.crossfade_s)

        if frame.active and not self._fade.empty:
            self._brightness = approach(self._brightness, 1.0, dt, p.fade_in_s)
        else:
            self._brightness = approach(self._brightness, 0.0, dt, p.idle_fade_s)
        level = min(1.0, max(0.0, float(frame.level)))
        background = np.asarray(p.background, np.float32)

        picture = self._fade.at(now, p.crossfade_s)
        side = picture.shape[0] if picture is not None else 64
        h, w = working_shape(canvas.shape[:2], min(side * int(p.oversample), int(p.max_work_px)))
        work = self._buffers.get("work", (h, w, 3))
        if picture is None or self._brightness < 0.5 / 255:
            work[...] = background
        else:
            # Cover (fill) or fit the working frame with the face, swayed: one affine warp at the working resolution.
            ph, pw = picture.shape[:2]
            margin = 1.0 + 2.0 * p.sway  # fill: so the sway never shows an edge; fit: so it never crosses one
            if p.fit == "fit":
                scale = min(h / ph, w / pw) / (margin * (1.0 + p.zoom_pulse) * FIT_MARGIN)
                border = {"borderMode": cv2.BORDER_CONSTANT, "borderValue": tuple(float(c) for c in p.background)}
            else:
                scale = max(h / ph, w / pw) * margin
                border = {"borderMode": cv2.BORDER_REPLICATE}
            sx = p.sway * pw * math.sin(2 * math.pi * now / 7.7)
            sy = p.sway * ph * math.cos(2 * math.pi * now / 9.1)
            matrix = np.array(
                [[scale, 0.0, w / 2 - (pw / 2 + sx) * scale], [0.0, scale, h / 2 - (ph / 2 + sy) * scale]]
            )
            face = self._buffers.get("face", (h, w, 3))
            cv2.warpAffine(picture, matrix, (w, h), dst=face, flags=cv2.INTER_LINEAR, **border)
            # work = background + (face - background) * brightness
            np.subtract(face, background, out=work)
            work *= np.float32(self._brightness)
            work += background

        # Trail: the face layer only (the envelope's zoom and glow below must answer a clap at once).
        trail = self._buffers.get("trail", (h, w, 3))
        tau = p.trail * p.trail_s
        if not self._trail_valid or tau <= 0 or trail.shape != work.shape:
            np.copyto(trail, work)
            self._trail_valid = True
        else:
            # trail += (work - trail) * (1 - exp(-dt / tau)): frame-rate independent exponential blend
            keep = np.float32(1.0 - math.exp(-dt / tau))
            np.subtract(work, trail, out=work)
            work *= keep
            trail += work
        zoom = 1.0 + p.zoom_pulse * level
        if zoom != 1.0:  # zoom about the centre (BORDER_REPLICATE: the edge colour, i.e. the background)
            zm = np.array([[zoom, 0.0, (1.0 - zoom) * w / 2], [0.0, zoom, (1.0 - zoom) * h / 2]])
            cv2.warpAffine(trail, zm, (w, h), dst=work, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        else:
            np.copyto(work, trail)
        if level > 0:
            work += np.asarray(p.glow, np.float32) * np.float32(level)  # the envelope's glow
        small = self._buffers.get("small", (h, w, 3), np.uint8)
        work += 0.5
        np.clip(work, 0, 255, out=work)
        small[...] = work
        upscale_into(small, canvas, INTERPOLATIONS[p.interpolation])
