"""The idle/attract state of the live installation: what the screen shows while nobody speaks.

Without it, a few seconds of silence fade the last face to the dark background and the screen stays
black, with nothing telling a visitor that the installation is alive or what to do. With it
(:class:`AttractConfig`, the preset's ``attract:`` section), once the voice gate has been closed for
``after_s`` seconds (counted from start-up, too):

* a slow drift through generated faces: a new face every ``face_s`` seconds, dissolving into the next over
  ``crossfade_s``, at ``brightness`` (0 = background, 1 = full) so the picture stays calm and dim. Each face
  is generated from a voice heard earlier -- the last window of each of the :data:`VOICES` most recent voiced
  segments, in turn, kept in memory only -- or, before anyone spoke, from silence (the model still draws a
  face), with fresh seeded noise, through the live loop's one generator thread (a 64 px face costs ~4 ms every
  few seconds);
* a short prompt (``prompt``, e.g. "Say something", lines split at ``\\n``) centred in the lower part of the
  canvas, ``prompt_size`` of the canvas height, grey level ``prompt_level``.

Both fade in from the background with time constant ``fade_s``. Voice ends it: as soon as the gate opens no
more attract faces are requested, and once the live scene has its first new image the live scene is drawn
again. The faces are drawn by a private :class:`scenes.Portrait` with the preset's portrait settings (fill or
fit, background, interpolation), so the attract picture looks like the installation's own.

Cost: the picture is dimmed at the generated image's resolution (64 px), the prompt is rendered once per
(text, canvas size) with pygame's default font and blended over its bounding box only (~1 ms at 1920x1080).
"""

from __future__ import annotations

import logging
import math
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from engine.configs import ranged
from scenes import FrameState, Portrait, PortraitParams

log = logging.getLogger(__name__)

VOICES = 8
"""Voiced segments whose last window the attract drift cycles through (memory only, never written)."""


@dataclass(frozen=True)
class AttractConfig:
    """The idle/attract state (a preset's ``attract:`` section). Times in seconds.

    Attributes:
        enabled: show the attract state at all (``False``: the last face fades to the background and stays).
        after_s: seconds of closed voice gate before the attract state starts (the live scene's own idle fade
            runs meanwhile; the portrait's ``idle_fade_s`` is 2.5 s).
        face_s: a new attract face this often.
        crossfade_s: dissolve from one attract face to the next.
        fade_s: time constant of the attract picture's and the prompt's fade-in from the background.
        brightness: of the attract faces, 0 (background) to 1 (as bright as a live face).
        prompt: text shown over the faces (``""``: none; ``\\n`` starts a new line).
        prompt_size: text height as a fraction of the canvas height (0.06: 65 px at 1080 px).
        prompt_level: grey level of the text, 0 (black) to 1 (white).
    """

    enabled: bool = True
    after_s: float = ranged(6.0, 0.0, 3600.0, "s")
    face_s: float = ranged(6.0, 0.5, 3600.0, "s")
    crossfade_s: float = ranged(3.0, 0.0, 3600.0, "s")
    fade_s: float = ranged(1.0, 0.0, 60.0, "s")
    brightness: float = ranged(0.35, 0.0, 1.0)
    prompt: str = "Say something"
    prompt_size: float = ranged(0.06, 0.01, 0.5)
    prompt_level: float = ranged(0.8, 0.0, 1.0)

    def __post_init__(self) -> None:
        for name in ("after_s", "face_s", "crossfade_s", "fade_s", "brightness", "prompt_size", "prompt_level"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ValueError(f"attract {name} must be a finite number >= 0, got {value!r}")
        if not 0 <= self.brightness <= 1 or not 0 <= self.prompt_level <= 1:
            raise ValueError("attract brightness and prompt_level must be in [0, 1]")
        if len(self.prompt) > 200:
            raise ValueError(f"attract prompt: at most 200 characters, got {len(self.prompt)}")


@dataclass(frozen=True)
class AttractFace:
    """One attract face to generate: ``audio`` float32 [window_samples], ``noise`` float32 [1, Z]; ``index``: k-th."""

    audio: np.ndarray
    noise: np.ndarray
    index: int


class Attract:
    """The idle/attract state: when to show it, which faces to ask for, and drawing it.

    Per frame the live loop calls :meth:`update` (it returns an :class:`AttractFace` when one should be
    generated), hands finished faces to :meth:`push`, and while :attr:`showing` draws with :meth:`draw`
    instead of the live scene. :meth:`remember` keeps the voice windows the drift reuses.

    Args:
        config: :class:`AttractConfig`.
        make_noise: ``(batch, seed) -> float32 [batch, Z]`` (``Generator.make_noise``).
        window_samples: conditioning window of the generator, samples.
        seed: base seed of the attract faces' noise.

    Attributes:
        showing: the attract state is on screen. starts: times it started. faces: faces requested.
        shown_s: seconds it was on screen.
    """

    def __init__(
        self, config: AttractConfig, make_noise: Callable[[int, int], np.ndarray], window_samples: int, seed: int = 0
    ) -> None:
        self.config = config
        self.make_noise = make_noise
        self.seed = int(seed)
        self._silence = np.zeros(int(window_samples), np.float32)
        self._voices: OrderedDict[int, np.ndarray] = OrderedDict()
        self._portrait = Portrait()
        self._idle_since = 0.0  # run time the gate closed (start-up counts as a close)
        self._leaving_at: int | None = None  # live image index when the gate opened while showing
        self._next_face = 0.0
        self._last_t: float | None = None
        self._visibility = 0.0  # 0..1, fades in with fade_s
        self._raw: np.ndarray | None = None  # newest attract face, uint8 [h, w, 3]
        self._raw_index = -1
        self._dimmed: tuple[np.ndarray, ...] = ()
        self._dimmed_key: tuple[int, tuple[int, int, int], float] | None = None
        self._prompt_key: tuple[str, int, int, float] | None = None
        self._prompt: tuple[int, int, np.ndarray] | None = None  # (x0, y0, alpha float32 [h, w, 1])
        self.showing = False
        self.starts = 0
        self.faces = 0
        self.shown_s = 0.0

    def remember(self, segment: int, window: np.ndarray) -> None:
        """Keep ``window`` (float32 [window_samples], not copied: do not modify it) as voiced segment ``segment``'s
        latest; only the :data:`VOICES` newest segments are kept."""
        self._voices[segment] = window
        self._voices.move_to_end(segment)
        while len(self._voices) > VOICES:
            self._voices.popitem(last=False)

    def update(self, t: float, gate: bool, live_index: int) -> AttractFace | None:
        """Advance to run time ``t`` (s) with the voice ``gate``; ``live_index``: the live scene's image index.

        Returns:
            the next face to generate, or ``None``.
        """
        cfg = self.config
        dt = 0.0 if self._last_t is None else max(0.0, t - self._last_t)
        self._last_t = t
        if self.showing:
            self.shown_s += dt
        if not cfg.enabled:
            self.showing = False
            return None
        if gate:
            self._idle_since = math.inf
            if self.showing:
                if self._leaving_at is None:
                    self._leaving_at = live_index
                elif live_index > self._leaving_at:  # the live scene has a new face: hand the screen back
                    self.showing, self._leaving_at = False, None
            return None
        if self._idle_since == math.inf:
            self._idle_since = t
        if self.showing and self._leaving_at is not None:
            self._leaving_at = None  # the gate closed again before a live face came: stay
        if not self.showing:
            if t - self._idle_since < cfg.after_s:
                return None
            self.showing = True
            self.starts += 1
            self._portrait.reset()
            self._visibility = 0.0
            self._next_face = t
        self._visibility = _approach(self._visibility, 1.0, dt, cfg.fade_s)
        if t < self._next_face:
            return None
        self._next_face = t + cfg.face_s
        k = self.faces
        self.faces += 1
        voices = list(self._voices.values())
        audio = voices[k % len(voices)] if voices else self._silence
        derived = int(np.random.SeedSequence([self.seed & 0xFFFFFFFF, 0xA77AC7, k]).generate_state(1)[0])
        noise = np.asarray(self.make_noise(1, derived), np.float32)
        return AttractFace(audio=audio, noise=noise, index=k)

    def push(self, image: np.ndarray) -> None:
        """A finished attract face, uint8 [h, w, 3] (it replaces the newest)."""
        self._raw = image
        self._raw_index += 1

    def draw(self, canvas: np.ndarray, t: float, portrait_params: Mapping[str, Any] | None = None) -> None:
        """Draw the attract picture into ``canvas`` (uint8 [H, W, 3], overwritten in place) at run time ``t``.

        Args:
            portrait_params: the preset's portrait settings and live ``scene/...`` values (background, fit
                mode, interpolation, ...); the attract timing replaces ``crossfade_s`` and ``fade_in_s``.

        Raises:
            ValueError: bad canvas or parameter (as :meth:`scenes.Portrait.draw`).
        """
        cfg = self.config
        params = {**(portrait_params or {}), "crossfade_s": cfg.crossfade_s, "fade_in_s": cfg.fade_s}
        background = PortraitParams.from_params(params).background
        if self._raw is not None:
            key = (self._raw_index, tuple(int(c) for c in background), cfg.brightness)
            if key != self._dimmed_key:  # dim at the generated image's resolution, once per face
                bg = np.asarray(background, np.float32)
                dimmed = bg + (self._raw.astype(np.float32) - bg) * np.float32(cfg.brightness)
                self._dimmed = (np.clip(dimmed + 0.5, 0, 255).astype(np.uint8),)
                self._dimmed_key = key  # type: ignore[assignment]
        state = FrameState(time=t, gate=1.0, level=0.0, images=self._dimmed, image_index=self._raw_index, params=params)
        self._portrait.draw(canvas, state)
        self._draw_prompt(canvas)

    def _draw_prompt(self, canvas: np.ndarray) -> None:
        cfg = self.config
        if not cfg.prompt.strip() or cfg.prompt_level <= 0:
            return
        height, width = canvas.shape[:2]
        key = (cfg.prompt, height, width, cfg.prompt_size)
        if key != self._prompt_key:
            self._prompt_key = key
            self._prompt = render_prompt(cfg.prompt, width, height, cfg.prompt_size)
        if self._prompt is None:
            return
        x0, y0, alpha = self._prompt
        roi = canvas[y0 : y0 + alpha.shape[0], x0 : x0 + alpha.shape[1]]
        level = np.float32(255.0 * cfg.prompt_level)
        a = alpha * np.float32(self._visibility)
        roi[...] = (roi + (level - roi) * a + 0.5).astype(np.uint8)

    def stats(self) -> dict[str, Any]:
        """For the live report: ``enabled``, ``showing``, ``starts``, ``faces`` (requested), ``shown_s``."""
        return {
            "enabled": self.config.enabled,
            "showing": self.showing,
            "starts": self.starts,
            "faces": self.faces,
            "shown_s": round(self.shown_s, 2),
        }


def render_prompt(text: str, width: int, height: int, size: float) -> tuple[int, int, np.ndarray] | None:
    """The prompt's coverage: ``(x0, y0, alpha)`` with ``alpha`` float32 [h, w, 1] in 0..1 (antialiased text).

    Lines (split at ``\\n``) are centred; the block's centre sits at 80 % of the canvas height; the text is
    ``size * height`` px high (pygame's default font) and shrunk to fit 90 % of the width. ``None`` if pygame's
    font module is unavailable (logged).
    """
    try:
        import pygame

        pygame.font.init()
        px = max(8, round(size * height))
        font = pygame.font.Font(None, px)
        lines = [font.render(line, True, (255, 255, 255)) for line in text.split("\n")]
    except Exception as exc:  # noqa: BLE001 - pygame without SDL_ttf: no prompt, the faces still show
        log.warning("attract prompt not drawn: %s", exc)
        return None
    alphas = [np.ascontiguousarray(pygame.surfarray.array_alpha(s).T, np.float32) / 255.0 for s in lines]
    w = max(a.shape[1] for a in alphas)
    h = sum(a.shape[0] for a in alphas)
    block = np.zeros((h, w), np.float32)
    y = 0
    for a in alphas:
        x = (w - a.shape[1]) // 2
        block[y : y + a.shape[0], x : x + a.shape[1]] = a
        y += a.shape[0]
    scale = min(1.0, 0.9 * width / w, 0.9 * height / h)
    if scale < 1.0:
        import cv2

        block = cv2.resize(block, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
    h, w = block.shape
    x0 = (width - w) // 2
    y0 = min(height - h, max(0, round(0.8 * height - h / 2)))
    return x0, y0, block[:, :, None]


def _approach(value: float, target: float, dt: float, tau: float) -> float:
    """One-pole step of ``value`` towards ``target`` over ``dt`` seconds with time constant ``tau`` seconds."""
    if tau <= 0:
        return target
    return target + (value - target) * math.exp(-dt / tau)
