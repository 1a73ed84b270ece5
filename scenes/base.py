"""The scene interface: pure drawing, one frame in, pixels out.

A scene draws one output frame into a caller-owned canvas from a :class:`FrameState`.
Scenes do no I/O and read no clock: time arrives in ``FrameState.time`` (seconds, from
the caller's clock: the wall clock in the live loop, the frame counter in the offline
render), so the same scene gives the same pixels for the same sequence of states.
Scenes may keep state between calls (what is on screen, crossfades, idle fades);
:meth:`Scene.reset` forgets it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np


@dataclass(frozen=True)
class FrameState:
    """Everything a scene may draw from, for one output frame.

    Attributes:
        time: seconds on the caller's clock (monotonic; only differences matter).
        gate: voice activity in [0, 1] (1 = voice active; the offline render passes 0.0 or 1.0).
        level: fast loudness envelope in [0, 1] (see :mod:`installation.vad`).
        images: the newest generated image(s), each uint8 [h, w, 3] RGB, newest first; empty
            until the generator has produced anything. The same images may be passed again on
            later frames (e.g. while the gate is off): ``image_index`` tells whether they are new.
        image_index: increases whenever ``images`` holds newly generated images; -1 before the first.
        params: scene parameters (name -> value); unknown names are ignored, missing ones take
            the scene's defaults.
    """

    time: float
    gate: float = 0.0
    level: float = 0.0
    images: tuple[np.ndarray, ...] = ()
    image_index: int = -1
    params: Mapping[str, Any] = field(default_factory=dict)

    @property
    def image(self) -> np.ndarray | None:
        """The newest generated image, uint8 [h, w, 3], or ``None`` before the first."""
        return self.images[0] if self.images else None

    @property
    def active(self) -> bool:
        """Whether the voice gate is open (``gate >= 0.5``)."""
        return self.gate >= 0.5


@runtime_checkable
class Scene(Protocol):
    """Draws frames. Implementations: :class:`scenes.portrait.Portrait`."""

    name: str

    def reset(self) -> None:
        """Forget everything drawn so far (the next frame starts from the background)."""

    def draw(self, canvas: np.ndarray, frame: FrameState) -> None:
        """Draw one frame.

        Args:
            canvas: uint8 [H, W, 3] RGB, written in place (every pixel is overwritten).
            frame: the state to draw; ``frame.time`` must not go backwards between calls
                (a backwards step is treated as zero elapsed time).

        Raises:
            ValueError: ``canvas`` is not uint8 [H, W, 3].
        """


def check_canvas(canvas: np.ndarray) -> None:
    """Raise ``ValueError`` unless ``canvas`` is a writable, non-empty uint8 [H, W, 3] array."""
    if (
        not isinstance(canvas, np.ndarray)
        or canvas.dtype != np.uint8
        or canvas.ndim != 3
        or canvas.shape[2] != 3
        or canvas.size == 0
    ):
        got = f"{canvas.dtype} {tuple(canvas.shape)}" if isinstance(canvas, np.ndarray) else type(canvas).__name__
        raise ValueError(f"canvas must be a uint8 [H, W, 3] array, got {got}")
    if not canvas.flags.writeable:
        raise ValueError("canvas must be writable")
