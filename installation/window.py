"""The pygame window shared by the live installation, the capture booth and the rating station.

Logical size = the canvas, SDL's SCALED mode scales it to the screen; the window surface wraps the canvas'
memory (no copy per frame). Only ``pygame.display`` (and ``pygame.font`` for the overlay) is initialised.
"""

from __future__ import annotations

import logging
import os
import warnings
from typing import Any

import cv2
import numpy as np

from engine.errors import UserError

log = logging.getLogger(__name__)


class WindowError(UserError, ValueError):
    """No window can be opened (no display, bad driver); the one-line message says what to do."""


class Window:
    """The pygame window: logical size = canvas size, SCALED (SDL scales to the screen), fullscreen on ``display``.

    Only ``pygame.display`` (and ``pygame.font`` for the overlay) is initialised: never ``pygame.init()``,
    which would also open an audio device (the microphone belongs to sounddevice, the speakers to pyo).

    Args:
        canvas: uint8 [H, W, 3] C-contiguous; the window surface wraps its memory (no copy per frame).
        fullscreen, display, vsync, hide_cursor, windowed_size, video_driver: see
            :class:`installation.live.LiveConfig`.

    Attributes:
        vsync: whether SDL accepted vsync. driver: SDL video driver name.
    """

    def __init__(
        self,
        canvas: np.ndarray,
        *,
        fullscreen: bool,
        display: int = 0,
        vsync: bool = True,
        hide_cursor: bool = True,
        windowed_size: tuple[int, int] | None = None,
        video_driver: str = "",
        title: str = "AVGAN",
    ) -> None:
        if video_driver:
            os.environ.setdefault("SDL_VIDEODRIVER", video_driver)  # the environment wins (e.g. CI sets dummy)
        import pygame

        self.pg = pygame
        if not canvas.flags.c_contiguous:
            raise ValueError("canvas must be C-contiguous")
        pygame.display.init()
        height, width = canvas.shape[:2]
        flags = pygame.SCALED | (pygame.FULLSCREEN if fullscreen else 0)
        n_displays = pygame.display.get_num_displays()
        if not 0 <= display < max(1, n_displays):
            log.warning("display %d does not exist (%d displays); using display 0", display, n_displays)
            display = 0
        self.vsync = False
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                self.screen = pygame.display.set_mode((width, height), flags, display=display, vsync=1 if vsync else 0)
                self.vsync = bool(vsync)
            except pygame.error as exc:
                log.info("vsync not available (%s); running without it", exc)
                self.screen = pygame.display.set_mode((width, height), flags, display=display)
        for w in caught:  # e.g. "no fast renderer available": SDL scales in software (dummy driver, no GPU)
            log.info("pygame: %s", w.message)
        pygame.display.set_caption(title)
        if hide_cursor:
            pygame.mouse.set_visible(False)
        # (not under the dummy driver: there is no OS window, and resizing it through pygame's private _sdl2
        # API crashed SDL's event pump there)
        if (
            not fullscreen
            and windowed_size
            and tuple(windowed_size) != (width, height)
            and pygame.display.get_driver() != "dummy"
        ):
            try:  # SCALED picks an integer multiple of the logical size; resize the OS window as asked
                from pygame._sdl2.video import Window as SdlWindow

                SdlWindow.from_display_module().size = tuple(windowed_size)
            except Exception:  # noqa: BLE001 - cosmetic; private pygame API
                log.debug("cannot resize the window to %s", windowed_size, exc_info=True)
        self.driver = pygame.display.get_driver()
        self.canvas = canvas
        self.surface = pygame.image.frombuffer(canvas, (width, height), "RGB")
        self._font: Any = None
        self._overlay: Any = None

    @classmethod
    def open(
        cls, canvas: np.ndarray, settings: Any, title: str = "AVGAN", error: type[Exception] | None = None
    ) -> Window:
        """Open a window for ``canvas`` from anything with the display attributes of :class:`installation.live.LiveConfig`
        (``fullscreen``, ``display``, ``hide_cursor``, ``windowed_size``, ``video_driver``; ``vsync`` optional).

        Raises:
            WindowError (or ``error``, e.g. ``installation.live.LiveError``): no window can be opened (no display,
                bad driver); one line saying what to do.
        """
        try:
            return cls(
                canvas,
                fullscreen=settings.fullscreen,
                display=settings.display,
                vsync=getattr(settings, "vsync", True),
                hide_cursor=settings.hide_cursor,
                windowed_size=settings.windowed_size,
                video_driver=settings.video_driver,
                title=title,
            )
        except Exception as exc:  # pygame.error: no display, bad driver
            raise (error or WindowError)(
                f"display: cannot open a window ({exc}); on a machine without a screen use a headless preset "
                "or set SDL_VIDEODRIVER=dummy"
            ) from exc

    def overlay_text(self, lines: list[str], font_px: int) -> None:
        """Render the overlay's text (call a few times per second, not every frame)."""
        pg = self.pg
        if self._font is None:
            pg.font.init()
            self._font = pg.font.Font(None, font_px)
        rendered = [self._font.render(line, True, (235, 235, 235)) for line in lines]
        w = max(s.get_width() for s in rendered) + 20
        h = sum(s.get_height() for s in rendered) + 16
        box = pg.Surface((w, h), pg.SRCALPHA)
        box.fill((0, 0, 0, 150))
        y = 8
        for s in rendered:
            box.blit(s, (10, y))
            y += s.get_height()
        self._overlay = box

    def present(self, *, blackout: bool, brightness: float, overlay: bool) -> None:
        """Dim the canvas (in place), blit it (or black), draw the overlay, flip.

        Dimming uses OpenCV on the canvas (~0.7 ms at 1920x1080): SDL's ``BLEND_RGB_MULT`` fill takes ~12 ms.
        """
        pg = self.pg
        if blackout:
            self.screen.fill((0, 0, 0))
        else:
            if brightness < 0.999:
                cv2.convertScaleAbs(self.canvas, dst=self.canvas, alpha=max(0.0, float(brightness)))
            self.screen.blit(self.surface, (0, 0))
        if overlay and self._overlay is not None:
            self.screen.blit(self._overlay, (16, 16))
        pg.display.flip()

    def events(self) -> list[Any]:
        """Pending pygame events (``pygame.event.get()``)."""
        return self.pg.event.get()

    def close(self) -> None:
        """Close the window (``pygame.display.quit()``)."""
        self.pg.display.quit()
