"""The capture booth's screen: mirror preview, silhouette, consent text, countdown, review, touch buttons.

Drawing only (no device, no file I/O): :class:`CaptureScreen` reads the booth's state and draws it into the
live installation's :class:`installation.window.Window` (the same pygame window code, canvas wrapped without
copies). Text is rendered with ``pygame.font``; pictures with OpenCV on the canvas (RGB uint8 [H, W, 3]).
"""

from __future__ import annotations

import math
from typing import Any

import cv2
import numpy as np

BG = (18, 18, 22)
WHITE = (240, 240, 240)
GREEN = (90, 220, 120)
RED = (235, 80, 70)
AMBER = (250, 190, 60)

REASONS: dict[str, str] = {
    "no_face": "No face found - please stand inside the outline",
    "several_faces": "More than one face - one person at a time, please",
    "face_too_small": "Too far away - please step closer",
    "too_dark": "Too dark - please face the light",
    "silent": "We did not hear you - please say something after Go",
    "clipped": "Too loud - please speak a little softer",
    "camera_lost": "The camera stopped - the take was not kept",
    "mic_stopped": "The microphone stopped - the take was not kept",
    "disk_full": "Disk full - the take was not kept; capture paused",
    "write_failed": "The take could not be saved",
}
"""Quality-gate and failure reasons: code -> the message the visitor sees (codes go to the log and report)."""

PAUSES: dict[str, str] = {
    "camera_lost": "Camera lost - waiting for it to come back",
    "mic_stopped": "Microphone stopped - waiting for sound",
    "disk_full": "Disk full - capture paused until space is freed",
}
"""Why new takes wait: code -> the banner on screen (also logged)."""

BUTTONS: dict[str, tuple[tuple[str, str], ...]] = {
    "consent": (("capture/consent", "I agree"), ("capture/decline", "No thanks")),
    "ready": (("capture/go", "Go"), ("capture/next", "Finish")),
}
"""On-screen touch buttons per state: (trigger parameter, label)."""

KEYS: dict[str, str] = {"y": "capture/consent", "n": "capture/decline", "space": "capture/go", "return": "capture/next"}
"""Keyboard: pygame key name -> trigger parameter (Esc / Q quit)."""


class CaptureScreen:
    """The booth's window.

    Args:
        settings: :class:`installation.capture.CaptureSettings` (canvas size, fullscreen, display, driver).

    Raises:
        installation.window.WindowError: no window can be opened (one line: set SDL_VIDEODRIVER=dummy without a
            screen).
    """

    def __init__(self, settings: Any) -> None:
        from installation.window import Window

        self.canvas = np.zeros((settings.height, settings.width, 3), np.uint8)
        self.win = Window.open(self.canvas, settings, title="AVGAN capture")
        self.pg = self.win.pg
        self.pg.font.init()
        self._fonts: dict[int, Any] = {}
        self._texts: dict[tuple[str, int, tuple[int, int, int]], Any] = {}
        self.h, self.w = self.canvas.shape[:2]

    # -- input ---------------------------------------------------------------------------------------------------

    def events(self) -> list[Any]:
        """Pending pygame events."""
        return self.win.events()

    def button_rects(self, state: str) -> list[tuple[str, str, tuple[int, int, int, int]]]:
        """The touch buttons of ``state``: (trigger, label, (x, y, w, h) canvas px)."""
        buttons = BUTTONS.get(state, ())
        if not buttons:
            return []
        bw, bh = int(self.w * 0.22), int(self.h * 0.11)
        gap = int(self.w * 0.04)
        total = len(buttons) * bw + (len(buttons) - 1) * gap
        x0, y = (self.w - total) // 2, self.h - bh - int(self.h * 0.05)
        return [(name, label, (x0 + i * (bw + gap), y, bw, bh)) for i, (name, label) in enumerate(buttons)]

    def action_for(self, event: Any, state: str) -> str:
        """The trigger an input event presses in ``state`` (``"quit"`` for Esc/Q/window close; ``""``: none)."""
        pg = self.pg
        if event.type == pg.QUIT:
            return "quit"
        if event.type == pg.KEYDOWN:
            name = pg.key.name(event.key)
            if name in ("escape", "q"):
                return "quit"
            return KEYS.get(name, "")
        pos = None
        if event.type == pg.MOUSEBUTTONDOWN:
            pos = event.pos
        elif event.type == getattr(pg, "FINGERDOWN", -1):
            pos = (event.x * self.w, event.y * self.h)
        if pos is not None:
            for name, _, (x, y, w, h) in self.button_rects(state):
                if x <= pos[0] < x + w and y <= pos[1] < y + h:
                    return name
        return ""

    # -- drawing -------------------------------------------------------------------------------------------------

    def _rendered(self, line: str, px: int, color: tuple[int, int, int]) -> Any:
        """The text surface of ``line`` (rendered once: the screens repeat the same lines every frame)."""
        key = (line, px, color)
        surf = self._texts.get(key)
        if surf is None:
            if px not in self._fonts:
                self._fonts[px] = self.pg.font.Font(None, px)
            if len(self._texts) > 256:  # participant codes and hints come and go
                self._texts.clear()
            surf = self._texts[key] = self._fonts[px].render(line, True, color)
        return surf

    def text(self, line: str, y: int, px: int, color: tuple[int, int, int] = WHITE, x: int | None = None) -> int:
        """Draw one line centred (or at ``x``) with its top at ``y``; returns the y below it."""
        surf = self._rendered(line, px, color)
        left = (self.w - surf.get_width()) // 2 if x is None else x
        self.win.surface.blit(surf, (left, y))
        return y + surf.get_height()

    def _mirror(self, frame: np.ndarray | None, dim: float = 1.0) -> tuple[float, int, int]:
        """Camera frame (BGR), mirrored, fitted into the canvas; returns (scale, x0, y0) of the mapping."""
        self.canvas[:] = BG
        if frame is None:
            return 1.0, 0, 0
        fh, fw = frame.shape[:2]
        scale = min(self.w / fw, self.h / fh)
        tw, th = max(1, int(fw * scale)), max(1, int(fh * scale))
        x0, y0 = (self.w - tw) // 2, (self.h - th) // 2
        # (OpenCV writes into a strided view of the canvas only through a copy: assign instead of dst=)
        rgb = cv2.cvtColor(cv2.flip(frame, 1), cv2.COLOR_BGR2RGB)
        view = self.canvas[y0 : y0 + th, x0 : x0 + tw]
        view[:] = cv2.resize(rgb, (tw, th), interpolation=cv2.INTER_LINEAR)
        if dim < 1.0:
            view[:] = cv2.convertScaleAbs(view, alpha=dim)
        return scale, x0, y0

    def _silhouette(self, color: tuple[int, int, int]) -> None:
        cx, cy = self.w // 2, int(self.h * 0.42)
        ry = int(self.h * 0.22)
        rx = int(ry * 0.75)
        cv2.ellipse(self.canvas, (cx, cy), (rx, ry), 0, 0, 360, color, 3, cv2.LINE_AA)
        cv2.ellipse(
            self.canvas,
            (cx, cy + ry + int(self.h * 0.25)),
            (int(rx * 2.4), int(self.h * 0.2)),
            0,
            200,
            340,
            color,
            3,
            cv2.LINE_AA,
        )

    def _buttons(self, state: str) -> None:
        for _, label, (x, y, w, h) in self.button_rects(state):
            cv2.rectangle(self.canvas, (x, y), (x + w, y + h), (60, 60, 70), -1)
            cv2.rectangle(self.canvas, (x, y), (x + w, y + h), WHITE, 2)
            px = int(h * 0.45)
            surf = self._rendered(label, px, WHITE)
            self.win.surface.blit(surf, (x + (w - surf.get_width()) // 2, y + (h - surf.get_height()) // 2))

    def _picture(self, img_bgr: np.ndarray, side: int) -> None:
        y0, x0 = int(self.h * 0.2), (self.w - side) // 2
        view = self.canvas[y0 : y0 + side, x0 : x0 + side]
        view[:] = cv2.resize(cv2.cvtColor(img_bgr, cv2.COLOR_BGR2RGB), (side, side), interpolation=cv2.INTER_AREA)

    def draw(self, booth: Any, now: float) -> None:
        """Draw the booth's current state and flip."""
        cfg = booth.cfg
        state = booth.state
        frame, _, _ = booth.camera.latest()
        elapsed = now - booth.state_t
        big, mid, small = int(self.h * 0.22), int(self.h * 0.06), int(self.h * 0.04)
        if state == "consent":
            self._mirror(frame, dim=0.3)
            y = self.text("Make a Face for Science", int(self.h * 0.08), mid)
            y += small
            for line in cfg.consent_text.replace("{code}", booth.participant).splitlines():
                y = self.text(line, y, small) + small // 3
            self._buttons(state)
        elif state in ("ready", "countdown", "recording"):
            self._mirror(frame)
            reasons = booth._hint[0]
            self._silhouette(GREEN if not reasons else WHITE)
            if state == "ready":
                self.text(
                    f"Take {booth.participant_kept + 1} of {cfg.takes_per_participant}: stand in the outline",
                    int(self.h * 0.04),
                    mid,
                )
                if reasons:
                    self.text(REASONS[reasons[0]], int(self.h * 0.12), small, AMBER)
                self._buttons(state)
            elif state == "countdown":
                left = max(1, math.ceil(cfg.countdown_s - elapsed))
                self.text(str(left), int(self.h * 0.35), big, AMBER)
            else:
                self.text("Go! Say something", int(self.h * 0.05), mid, RED)
                progress = min(1.0, elapsed / max(cfg.take_s, 1e-3))
                cv2.rectangle(self.canvas, (0, self.h - 12), (int(self.w * progress), self.h), RED, -1)
        elif state == "saving":
            self._mirror(frame, dim=0.4)
            self.text("Saving ...", int(self.h * 0.45), mid)
        elif state == "review":
            self.canvas[:] = BG
            reason, crop = booth.review
            if reason == "kept":
                if crop is not None:
                    self._picture(crop, int(self.h * 0.5))
                self.text(
                    f"Kept: take {booth.participant_kept} of {cfg.takes_per_participant}",
                    int(self.h * 0.06),
                    mid,
                    GREEN,
                )
            else:
                self.text(REASONS.get(reason, reason), int(self.h * 0.4), mid, AMBER)
                self.text("Nothing was kept. Let's try again.", int(self.h * 0.5), small)
        elif state == "thanks":
            self.canvas[:] = BG
            self.text("Thank you!", int(self.h * 0.3), big // 2, GREEN)
            self.text(f"Your code: {booth.participant}  (to withdraw, tell us this code)", int(self.h * 0.5), mid)
        if booth.pause_reason:
            cv2.rectangle(self.canvas, (0, 0), (self.w, int(self.h * 0.1)), (90, 20, 20), -1)
            self.text(PAUSES[booth.pause_reason], int(self.h * 0.025), small, WHITE)
        self.win.present(blackout=False, brightness=1.0, overlay=False)

    def close(self) -> None:
        """Close the window."""
        self.win.close()
