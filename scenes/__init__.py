"""Scenes: pure drawing. A :class:`FrameState` in, pixels out; no I/O, no clocks.

Used by both the live loop and the offline render (``installation.render``). Imports nothing
else of AVGAN's.
"""

from __future__ import annotations

from scenes.base import FrameState, Scene, check_canvas
from scenes.grid import Grid, GridParams
from scenes.morph import Morph, MorphParams
from scenes.portrait import Portrait, PortraitParams

SCENES: dict[str, type] = {"portrait": Portrait, "grid": Grid, "morph": Morph}
"""Scene classes by name."""


def make_scene(name: str) -> Scene:
    """A new scene by name (see :data:`SCENES`).

    Raises:
        ValueError: unknown name (the message lists the known ones).
    """
    try:
        return SCENES[name]()
    except KeyError:
        raise ValueError(f"unknown scene {name!r} (choose from {', '.join(SCENES)})") from None


__all__ = [
    "SCENES",
    "FrameState",
    "Grid",
    "GridParams",
    "Morph",
    "MorphParams",
    "Portrait",
    "PortraitParams",
    "Scene",
    "check_canvas",
    "make_scene",
]
