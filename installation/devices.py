"""``run.py devices``: the audio devices, cameras and displays this machine offers, as the presets name them.

    python run.py devices            # tables: audio inputs/outputs, cameras, displays
    python run.py devices --json     # the same as JSON (for scripts)
    python run.py devices --cameras 0    # skip the camera probe (opening cameras takes a moment each)

Each table says which preset key (and flag) takes what it prints:

* **audio** (PortAudio through sounddevice, the library the live input uses): index, name, host API, input and
  output channels, default sample rate, and the system defaults. ``--input`` / ``input.source`` take an input's
  index or its name (or a unique part of it: sounddevice matches substrings); ``sound.device`` takes an output's
  index or name (pyo enumerates the same PortAudio devices in the same order).
* **cameras** (OpenCV, the library the capture booth uses): the indexes that open and deliver a frame, with the
  frame size and rate they report. ``capture.camera`` takes the index. On Linux only the indexes of existing
  ``/dev/video*`` nodes are tried (nodes that are a camera's metadata interface do not open and are not listed).
* **displays** (SDL through pygame, the library of the window): index and desktop size. ``display.display`` /
  ``--display`` take the index.

Nothing here raises for missing hardware: a section with nothing in it says so and why (no sound card, no
``/dev/video*``, no X/Wayland display). The listing functions take stand-ins for the libraries
(``tests/test_devices.py`` runs them on fakes and on real ALSA / X servers).
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import json
import os
import sys
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class AudioDevice:
    """One PortAudio device (``sounddevice.query_devices()`` entry).

    Attributes:
        index: PortAudio device index (what ``--input`` and ``sound.device`` take, like the name).
        name: device name. host_api: e.g. ``ALSA``, ``PulseAudio``, ``Core Audio``, ``WASAPI``.
        inputs, outputs: channel counts. default_rate: default sample rate, Hz.
        default_input, default_output: whether it is the system's default input / output.
    """

    index: int
    name: str
    host_api: str
    inputs: int
    outputs: int
    default_rate: float
    default_input: bool
    default_output: bool


@dataclass(frozen=True)
class CameraInfo:
    """One camera OpenCV opened: ``index`` (``capture.camera``), frame ``width`` x ``height`` px, ``fps`` (as the
    driver reports it; 0 = unknown), ``backend`` (e.g. ``V4L2``), ``frame`` (whether a frame was read)."""

    index: int
    width: int
    height: int
    fps: float
    backend: str
    frame: bool


@dataclass(frozen=True)
class DisplayInfo:
    """One display SDL reports: ``index`` (``display.display`` / ``--display``), desktop ``width`` x ``height`` px."""

    index: int
    width: int
    height: int


@dataclass(frozen=True)
class Listing:
    """What :func:`list_devices` found. ``*_note`` says why a section is empty (or what was probed)."""

    audio: list[AudioDevice]
    audio_note: str
    cameras: list[CameraInfo]
    camera_note: str
    displays: list[DisplayInfo]
    display_note: str

    def to_json(self) -> dict[str, Any]:
        """JSON-ready dict (lists of dicts, notes as strings)."""
        return asdict(self)


# -- audio ----------------------------------------------------------------------------------------------------


def audio_devices(sd: Any = None) -> tuple[list[AudioDevice], str]:
    """The PortAudio devices (``sd``: the sounddevice module, or a stand-in with ``query_devices``,
    ``query_hostapis``, ``default.device`` and ``get_portaudio_version``).

    Returns:
        ``(devices, note)``: the note names the PortAudio version, or says why the list is empty.
    """
    if sd is None:
        try:
            import sounddevice as sd
        except OSError as exc:  # libportaudio2 missing
            return [], f"sounddevice cannot load PortAudio ({exc}); install libportaudio2 (scripts/setup.sh does)"
    try:
        devices = list(sd.query_devices())
        hostapis = list(sd.query_hostapis())
    except Exception as exc:  # noqa: BLE001 - PortAudioError and friends: report, do not raise
        return [], f"PortAudio could not list devices ({type(exc).__name__}: {exc})"
    version = sd.get_portaudio_version()[1].split(",")[0] if hasattr(sd, "get_portaudio_version") else "PortAudio"
    try:
        default_in, default_out = (int(d) if d is not None else -1 for d in sd.default.device)
    except Exception:  # noqa: BLE001 - no defaults
        default_in = default_out = -1
    out = []
    for index, dev in enumerate(devices):
        api = int(dev.get("hostapi", -1))
        out.append(
            AudioDevice(
                index=int(dev.get("index", index)),
                name=str(dev["name"]),
                host_api=str(hostapis[api]["name"]) if 0 <= api < len(hostapis) else "?",
                inputs=int(dev.get("max_input_channels", 0)),
                outputs=int(dev.get("max_output_channels", 0)),
                default_rate=float(dev.get("default_samplerate", 0.0)),
                default_input=int(dev.get("index", index)) == default_in,
                default_output=int(dev.get("index", index)) == default_out,
            )
        )
    if not out:
        return [], (
            f"{version}: no audio devices found (no sound card, its driver not loaded, or this user not in the "
            "'audio' group); the live input waits for a microphone and retries"
        )
    return out, version


# -- cameras --------------------------------------------------------------------------------------------------


def camera_indexes(max_index: int, platform: str = sys.platform, video_nodes: Iterable[str] | None = None) -> list[int]:
    """The camera indexes worth trying: on Linux those of ``/dev/video*`` nodes (below ``max_index``), elsewhere
    ``0 .. max_index - 1``."""
    if platform.startswith("linux"):
        nodes = glob.glob("/dev/video*") if video_nodes is None else list(video_nodes)
        found = sorted({int(n[len("/dev/video") :]) for n in nodes if n[len("/dev/video") :].isdigit()})
        return [i for i in found if i < max_index]
    return list(range(max_index))


def cameras(
    max_index: int = 8,
    capture_factory: Callable[[int], Any] | None = None,
    indexes: list[int] | None = None,
) -> tuple[list[CameraInfo], str]:
    """Cameras OpenCV can open: each index of :func:`camera_indexes` (or ``indexes``) is opened, asked for its frame
    size and rate, read once, and released.

    Args:
        max_index: indexes below this are tried (0: none).
        capture_factory: ``cv2.VideoCapture`` (default) or a stand-in with ``isOpened/read/get/getBackendName/
            release``.
        indexes: the indexes to try (default: :func:`camera_indexes`).

    Returns:
        ``(cameras, note)``: the note says what was tried.
    """
    if max_index <= 0:
        return [], "not probed (--cameras 0)"
    import cv2

    factory = capture_factory or cv2.VideoCapture
    tried = camera_indexes(max_index) if indexes is None else indexes
    if not tried:
        return [], "no camera: no /dev/video* device (none plugged in, or its driver is not loaded)"
    found = []
    with _quiet_opencv(cv2):
        for index in tried:
            cap = factory(index)
            try:
                if not cap.isOpened():
                    continue
                ok, _ = cap.read()
                backend = cap.getBackendName() if hasattr(cap, "getBackendName") else ""
                found.append(
                    CameraInfo(
                        index=index,
                        width=int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)),
                        height=int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)),
                        fps=round(float(cap.get(cv2.CAP_PROP_FPS) or 0.0), 2),
                        backend=str(backend),
                        frame=bool(ok),
                    )
                )
            finally:
                cap.release()
    span = ", ".join(map(str, tried))
    if not found:
        return [], f"no camera opened (tried index {span})"
    return found, f"OpenCV {cv2.__version__}, tried index {span}"


@contextlib.contextmanager
def _quiet_opencv(cv2: Any) -> Any:
    """OpenCV logs a warning per index that does not open; the table says it instead."""
    logging_mod = getattr(getattr(cv2, "utils", None), "logging", None)
    if logging_mod is None:
        yield
        return
    level = logging_mod.getLogLevel()
    logging_mod.setLogLevel(logging_mod.LOG_LEVEL_SILENT)
    try:
        yield
    finally:
        logging_mod.setLogLevel(level)


# -- displays -------------------------------------------------------------------------------------------------


_DISPLAY_VARS = ("DISPLAY", "WAYLAND_DISPLAY", "SDL_VIDEODRIVER")


def displays(pg: Any = None) -> tuple[list[DisplayInfo], str]:
    """The displays SDL reports (``pg``: pygame, or a stand-in with ``display.init/get_driver/get_desktop_sizes/
    quit``). Uses the environment's ``SDL_VIDEODRIVER`` / ``DISPLAY`` / ``WAYLAND_DISPLAY`` as the window would.

    SDL's ``dummy`` / ``offscreen`` drivers (what it falls back to without a display) are not listed.

    Returns:
        ``(displays, note)``: the note names the SDL video driver, or says why there is no display.
    """
    if pg is None:
        os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")
        import pygame as pg
    try:
        pg.display.init()
    except Exception as exc:  # noqa: BLE001 - pygame.error: no video device
        where = ", ".join(f"{v}={os.environ[v]}" if os.environ.get(v) else f"{v} unset" for v in _DISPLAY_VARS)
        return [], f"no display: SDL cannot start video ({exc}; {where})"
    try:
        driver = pg.display.get_driver()
        sizes = list(pg.display.get_desktop_sizes())
    finally:
        pg.display.quit()
    if driver in ("dummy", "offscreen"):  # SDL's stand-ins report a made-up 1024x768 screen: not a display
        where = ", ".join(f"{v}={os.environ[v]}" if os.environ.get(v) else f"{v} unset" for v in _DISPLAY_VARS)
        return [], (
            f"no display: SDL uses its '{driver}' driver, which has no screen ({where}); the window needs an X11 or "
            "Wayland session (display.driver: dummy runs without one)"
        )
    if not sizes:
        return [], f"SDL video driver {driver}: no display"
    return [DisplayInfo(i, int(w), int(h)) for i, (w, h) in enumerate(sizes)], f"SDL video driver {driver}"


# -- everything -----------------------------------------------------------------------------------------------


def list_devices(max_cameras: int = 8, sd: Any = None, capture_factory: Any = None, pg: Any = None) -> Listing:
    """Audio devices, cameras and displays (see the module docstring); never raises for missing hardware."""
    audio, audio_note = audio_devices(sd)
    cams, camera_note = cameras(max_cameras, capture_factory)
    shown, display_note = displays(pg)
    return Listing(audio, audio_note, cams, camera_note, shown, display_note)


def _table(headers: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    line = "  ".join(h.ljust(w) for h, w in zip(headers, widths)).rstrip()
    out = ["  " + line]
    out += ["  " + "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    return out


def format_listing(listing: Listing) -> str:
    """The tables ``run.py devices`` prints."""
    lines = [f"Audio devices ({listing.audio_note})"]
    if listing.audio:
        lines.append("  --input / input.source take an input's index or name; sound.device an output's")
        rows = []
        for d in listing.audio:
            default = ", ".join(k for k, v in (("input", d.default_input), ("output", d.default_output)) if v)
            rows.append(
                [str(d.index), d.name, d.host_api, str(d.inputs), str(d.outputs), f"{d.default_rate:g} Hz", default]
            )
        lines += _table(["index", "name", "host API", "in", "out", "default rate", "default"], rows)
    lines.append("")
    lines.append(f"Cameras ({listing.camera_note})")
    if listing.cameras:
        lines.append("  capture.camera takes the index")
        rows = [
            [str(c.index), f"{c.width}x{c.height}", f"{c.fps:g}", c.backend, "yes" if c.frame else "no"]
            for c in listing.cameras
        ]
        lines += _table(["index", "size", "fps", "backend", "frame read"], rows)
    lines.append("")
    lines.append(f"Displays ({listing.display_note})")
    if listing.displays:
        lines.append("  display.display / --display take the index (0 = primary)")
        lines += _table(["index", "size"], [[str(d.index), f"{d.width}x{d.height}"] for d in listing.displays])
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``run.py devices``."""
    parser.add_argument("--json", action="store_true", help="print JSON instead of tables")
    parser.add_argument(
        "--cameras",
        type=int,
        default=8,
        metavar="N",
        help="try camera indexes below N (default 8; on Linux only existing /dev/video* nodes; 0: skip cameras)",
    )


def main(args: argparse.Namespace) -> int:
    """Print the listing; returns 0 (an empty section is not an error)."""
    listing = list_devices(max_cameras=max(0, int(args.cameras)))
    if args.json:
        print(json.dumps(listing.to_json(), indent=2))
    else:
        print(format_listing(listing))
    return 0
