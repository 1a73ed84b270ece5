"""Presets: typed, validated, layered YAML files in ``presets/`` that say how an installation runs.

API summary::

    from installation.presets import load_preset, list_presets, parse_input

    preset = load_preset("gallery")                 # a name in presets/, or a path to a .yaml file
    preset = load_preset("headless", overrides={"input": {"source": "clip.wav"}})   # e.g. from the CLI
    preset.name, preset.path, preset.chain          # "gallery", its file, the files it was layered from
    preset.display.fullscreen, preset.display.size  # see the dataclasses below for every key and unit
    preset.input.source                             # "mic" | device index | device name | file path
    parse_input(preset.input.source)                # -> InputSource(kind="mic"|"device"|"file", device, path)
    preset.engine.bundle_path                       # absolute Path of the model bundle
    preset.osc.port, preset.osc.allowlist, ...      # consumed by installation.osc.OscControl
    preset.params                                   # {param name: initial value}, validated against PARAMS
    preset.scenes                                   # {scene name: {scene parameter: value}} (non-live settings)
    preset.render_params()                          # -> RenderParams for this preset (render and live take it)
    list_presets()                                  # ["base", "gallery", "headless", "open_day"]

Layering: a preset may say ``extends: NAME`` (a preset name in ``presets/``) or ``extends: ../x.yaml`` (a
path relative to the extending file). Mappings are merged key by key (deep merge: the extending file wins);
lists and scalars are replaced whole. Chains may be several levels deep; a cycle is an error.

Validation happens on load, before anything starts (the nanoGPT-style strict loader of
:mod:`engine.configs`, plus ranges): an unknown key, a wrong type or a value out of range raises
:class:`PresetError` (a :class:`engine.configs.ConfigError` and an :class:`engine.errors.UserError`) with
a one-line message naming the file that set the value, the key path and what is allowed, e.g.::

    presets/gallery.yaml: key 'osc.port': 70000 out of range [0, 65535]
    presets/x.yaml: key 'params.sound/level': 1.5 is not valid (out_of_range); expected float 0 to 1

Relative paths in presets (``engine.bundle``, a file ``input.source``, ``capture.output``) are relative to
the repository root (the folder holding ``run.py``), so a preset means the same wherever it is run from.

Live values (scene, sound level and mix, seed, ...) are *parameters*: they live only under ``params:``, by
their OSC names (:data:`installation.params.PARAMS`), never twice. The other sections hold what cannot change
while running (devices, ports, sizes) or what the scenes and the generator take at start-up.
"""

from __future__ import annotations

import dataclasses
import importlib
import ipaddress
import math
import re
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from engine.configs import ConfigError, from_mapping, load_yaml
from engine.errors import UserError
from installation.attract import AttractConfig
from installation.params import PARAMS, ParamSpec
from installation.service import ServiceConfig
from installation.sound import SoundConfig
from installation.vad import VadParams

ROOT = Path(__file__).resolve().parents[1]
PRESETS_DIR = ROOT / "presets"
MEDIA_SUFFIXES = frozenset(
    ".wav .flac .mp3 .ogg .oga .opus .m4a .aac .aif .aiff .wma .mp4 .mov .mkv .webm .avi".split()
)
"""File suffixes that make an ``input.source`` string a file rather than a device name."""
_SOURCE = "\x00preset\x00"  # placeholder source for engine.configs messages, replaced by the right file


class PresetError(ConfigError, UserError):
    """A preset cannot be loaded; the one-line message names the file, the key path and what is allowed."""


def _range(default: Any, lo: float | None, hi: float | None, unit: str = "") -> Any:
    """A dataclass field with an inclusive range (checked on load; applies to each item of a tuple)."""
    return field(default=default, metadata={"range": (lo, hi), "unit": unit})


# -- sections -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DisplayConfig:
    """The pygame window.

    Attributes:
        fullscreen: fullscreen on ``display`` (``False``: a window of ``windowed_size``).
        display: SDL display index (0 = primary).
        size: logical canvas size [width, height] in px that scenes draw at; SDL's SCALED mode upscales it
            to the screen on the GPU.
        windowed_size: window size [width, height] in px when not fullscreen.
        vsync: ask the driver for vsync (where it offers it).
        driver: ``SDL_VIDEODRIVER`` to use (``""``: SDL's choice; ``"dummy"``: no screen, for servers/tests).
        fps: frame-rate cap, frames per second (0: uncapped, paced by vsync or the generator).
        hide_cursor: hide the mouse cursor over the window.
    """

    fullscreen: bool = True
    display: int = _range(0, 0, 15)
    size: tuple[int, int] = _range((1920, 1080), 16, 16384, "px")
    windowed_size: tuple[int, int] = _range((960, 540), 16, 16384, "px")
    vsync: bool = True
    driver: str = ""
    fps: float = _range(60.0, 0.0, 500.0, "Hz")
    hide_cursor: bool = True


@dataclass(frozen=True)
class InputConfig:
    """Where the sound comes from.

    Attributes:
        source: ``"mic"`` (the default input device), a device index (int), a device name (substring, as
            sounddevice matches it), or an audio/video file played in real time, looping (see
            :func:`parse_input`; relative paths are relative to the repository root).
        sample_rate: device sample rate to open, Hz (0: the device's default); converted to the bundle's rate.
        channels: input channels to open (mixed down to mono).
        heartbeat_s: a stream that delivered nothing for this long is considered dead and reopened, seconds.
        reconnect_min_s: first reconnect back-off, seconds (doubles per failed attempt) ...
        reconnect_max_s: ... up to this, seconds.
        loop: loop a file input at its end (``False``: the file plays once, then silence).
    """

    source: str | int = "mic"
    sample_rate: int = _range(0, 0, 384000, "Hz")
    channels: int = _range(1, 1, 64)
    heartbeat_s: float = _range(1.0, 0.05, 60.0, "s")
    reconnect_min_s: float = _range(0.5, 0.01, 60.0, "s")
    reconnect_max_s: float = _range(30.0, 0.01, 3600.0, "s")
    loop: bool = True


@dataclass(frozen=True)
class EngineConfig:
    """The generator (:class:`engine.generator.Generator`).

    Attributes:
        bundle: model bundle folder (relative to the repository root, or absolute).
        backend: ``auto`` or a backend name (:data:`engine.generator.BACKEND_CHOICES`).
        device: torch-style device for the GPU backends, e.g. ``"cuda:0"`` (``""``: automatic).
        max_batch: largest batch one backend call receives (the grid scene asks for n*n faces at once).
        threads: CPU threads for ONNX Runtime's CPU backend (0: the engine's default).
        ort_spin: thread spinning of ONNX Runtime's CPU backend: ``never`` (workers sleep whenever idle; the default) or
            ``in-call`` (they spin between the kernels of one call and stop when it returns: ~20 % lower
            latency on 2 cores, no CPU burnt between calls); see :mod:`engine.backends.ort_backend`.
        super_resolution: a face super-resolution bundle the live loop runs on single generated faces (portrait,
            morph, grid of 1), e.g. ``presets/models/face-sr-4x`` (64 -> 256 px); ``""``: none (the scenes
            upscale the generated pixels with OpenCV).
    """

    bundle: str = "presets/models/wav2pix-64"
    backend: str = "auto"
    device: str = ""
    max_batch: int = _range(32, 1, 4096)
    threads: int = _range(0, 0, 256)
    ort_spin: Literal["never", "in-call"] = "never"
    super_resolution: str = ""

    @property
    def bundle_path(self) -> Path:
        """``bundle`` as an absolute path."""
        return resolve_path(self.bundle)

    @property
    def super_resolution_path(self) -> Path | None:
        """``super_resolution`` as an absolute path, or ``None`` when it is empty."""
        return resolve_path(self.super_resolution) if self.super_resolution.strip() else None


@dataclass(frozen=True)
class OscConfig:
    """OSC control (UDP, python-osc), feedback to a controller, and OSCQuery discovery.

    Attributes:
        enabled: run the OSC server at all.
        host: address to bind, an IP (``127.0.0.1``: this machine only; ``0.0.0.0``: every interface).
        port: UDP port to listen on (8000: TouchOSC's default outgoing port; 0: any free port).
        allowlist: sender IPs or networks (``192.168.1.20``, ``192.168.1.0/24``) allowed to send; empty: all.
        feedback: send status (fps, level, scene, input state, backend, events) and parameter changes.
        feedback_host: where feedback goes (the controller's IP).
        feedback_port: UDP port of the feedback (9000: TouchOSC's default incoming port).
        feedback_hz: most feedback rounds per second (status values and parameters are sent when they change).
        heartbeat_s: every status value is re-sent this often even when unchanged, seconds (0: never).
        feedback_smoothed: parameters whose smoothed value is also sent, to ``/avgan/status/smoothed/<name>``,
            while it glides (the parameter's own address always gets the value it moves to).
        oscquery: serve the address space over HTTP (OSCQuery) on ``host``.
        oscquery_port: TCP port of the OSCQuery HTTP server (0: any free port).
        mdns: announce ``_oscjson._tcp`` and ``_osc._udp`` over Zeroconf (needs the ``zeroconf`` package;
            only when bound beyond the loopback interface).
        name: service name announced over OSCQuery / Zeroconf.
        required: when the OSC port cannot be bound, stop with an error (exit 2) instead of running without OSC.
    """

    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = _range(8000, 0, 65535)
    allowlist: tuple[str, ...] = ()
    feedback: bool = True
    feedback_host: str = "127.0.0.1"
    feedback_port: int = _range(9000, 1, 65535)
    feedback_hz: float = _range(10.0, 0.1, 100.0, "Hz")
    heartbeat_s: float = _range(5.0, 0.0, 3600.0, "s")
    feedback_smoothed: tuple[str, ...] = ()
    oscquery: bool = True
    oscquery_port: int = _range(8080, 0, 65535)
    mdns: bool = False
    name: str = "AVGAN"
    required: bool = False


@dataclass(frozen=True)
class RenderParams:
    """Everything that shapes the picture besides the model: what the offline render (:mod:`installation.render`)
    and the live loop take; :meth:`Preset.render_params` makes one from a preset.

    Attributes:
        scene: scene name (see :data:`scenes.SCENES`).
        scene_params: scene parameter overrides (name -> value); the render adds ``crossfade_s``
            = the generation interval unless given here.
        gen_fps: generation rate within voiced segments, Hz (0: every output frame).
        noise_drift_s: seconds between successive seeded noise keys of a segment (slerp between them).
        image_ema_s: time constant of the image EMA, seconds (0: off).
        vad: voice-activity thresholds.
    """

    scene: str = "portrait"
    scene_params: dict[str, Any] = field(default_factory=dict)
    gen_fps: float = 10.0
    noise_drift_s: float = 4.0
    image_ema_s: float = 0.1
    vad: VadParams = field(default_factory=VadParams)

    def __post_init__(self) -> None:
        for name in ("gen_fps", "noise_drift_s", "image_ema_s"):
            value = getattr(self, name)
            number = isinstance(value, (int, float)) and not isinstance(value, bool)
            if not (number and math.isfinite(value) and value >= 0):
                raise ValueError(f"render parameter {name}: expected a finite number >= 0, got {value!r}")


@dataclass(frozen=True)
class GenerationConfig:
    """How the generator is driven (shared with the offline render: :class:`RenderParams`).

    Attributes:
        gen_fps: generation rate while the voice gate is open, Hz (0: every frame).
        image_ema_s: time constant of the exponential moving average over generated images, seconds (0: off).
        vad: voice-activity thresholds (:class:`installation.vad.VadParams`); ``on_min_db`` / ``off_min_db``
            come from the live parameter ``vad/threshold_db`` and may not be set here.
    """

    gen_fps: float = _range(10.0, 0.0, 240.0, "Hz")
    image_ema_s: float = _range(0.1, 0.0, 10.0, "s")
    vad: VadParams = field(default_factory=VadParams)


@dataclass(frozen=True)
class CaptureConfig:
    """Open-day capture sessions (``run.py capture``: camera + microphone -> consented face+voice pairs).

    Attributes:
        camera: OpenCV camera index, or a video file standing in for it (relative to the repository root).
        camera_size: requested camera frame size [width, height], px (the device may give another).
        camera_fps: requested camera rate, frames per second (a file camera plays at its own rate).
        take_s: length of the sound of one take, seconds (Wav2Pix found 1 s windows best).
        countdown_s: the 3-2-1 countdown before a take, seconds.
        review_s: how long a kept take (or the reason a take failed) is shown, seconds.
        takes_per_participant: takes per visitor before the thank-you screen (the operator may end earlier).
        output: dataset folder the takes are written to (relative to the repository root, or absolute).
        face_size: side of the stored square face crop, px (320 like the original AVGAN collection).
        margin: margin added around the detected face box on each side, as a fraction of the box side.
        save_full_frame: also keep the whole camera frame (JPEG) of each take.
        audio_format: ``wav`` or ``flac`` (both 16-bit PCM at the device rate).
        min_face_frac: the face box side must be at least this fraction of the frame's shorter side.
        min_luma: mean luma of the face box must reach this (0-255): "too dark" below it.
        silence_dbfs: RMS level of the take's sound below this is "silent", dBFS.
        clip_fraction: share of samples at full scale (|x| >= 0.999) above which the sound is "clipped".
        min_free_mb: free disk space below which capture pauses with a "disk full" message, MiB.
        consent_scope: short identifier of what the consent covers, stored in every take record.
        consent_text: the consent screen's text (what is kept, for what, how to withdraw); ``{code}`` is replaced
            by the participant's withdrawal code.
    """

    camera: int | str = 0
    camera_size: tuple[int, int] = _range((1280, 720), 16, 8192, "px")
    camera_fps: float = _range(30.0, 1.0, 240.0, "Hz")
    take_s: float = _range(1.0, 0.1, 30.0, "s")
    countdown_s: float = _range(3.0, 0.0, 30.0, "s")
    review_s: float = _range(2.0, 0.0, 30.0, "s")
    takes_per_participant: int = _range(3, 1, 100)
    output: str = "captures"
    face_size: int = _range(320, 32, 2048, "px")
    margin: float = _range(0.4, 0.0, 2.0)
    save_full_frame: bool = False
    audio_format: Literal["wav", "flac"] = "wav"
    min_face_frac: float = _range(0.2, 0.01, 1.0)
    min_luma: float = _range(50.0, 0.0, 255.0)
    silence_dbfs: float = _range(-45.0, -120.0, 0.0, "dBFS")
    clip_fraction: float = _range(0.001, 0.0, 1.0)
    min_free_mb: float = _range(200.0, 0.0, 1e7, "MiB")
    consent_scope: str = "research-training-v1"
    consent_text: str = (
        "We keep one photo of your face and one second of your voice per take.\n"
        "They are used only to train and evaluate face-from-voice generators in this lab's research.\n"
        "They are stored under the code {code}, never with your name.\n"
        "To withdraw at any time, tell us the code: all your takes are deleted."
    )


@dataclass(frozen=True)
class RatingConfig:
    """The rating station (``run.py rate``): visitors score generated faces 1-5.

    Attributes:
        show_real: also show the real face of the voice where the dataset has one.
        play_voice: play the voice the face came from (through sounddevice; silent where there is no output).
        seed: seed of the presentation order and of the generator's noise.
        max_items: stop after this many faces (0: every audio file once).
    """

    show_real: bool = False
    play_voice: bool = True
    seed: int = _range(0, 0, 2**31 - 1)
    max_items: int = _range(0, 0, 1_000_000)


@dataclass(frozen=True)
class Preset:
    """One resolved preset (every section filled in, every value checked).

    Attributes:
        description: one line shown by ``--help`` / logs.
        display, input, engine, osc, sound, generation, capture, rating, service: the sections above (``sound`` is
            :class:`installation.sound.SoundConfig`, the one the sound engine takes; ``service`` is
            :class:`installation.service.ServiceConfig`: single instance, log file).
        attract: the live installation's idle/attract state (:class:`installation.attract.AttractConfig`).
        scenes: per-scene start-up settings, ``{scene name: {parameter: value}}`` (e.g. the portrait's
            ``idle_fade_s``), checked against the scene's parameter dataclass where it has one.
        params: initial live parameter values by OSC name (``sound/level: 0.8``), checked against
            :data:`installation.params.PARAMS`; missing names take their declared defaults.
        name: the preset's name (its file name without ``.yaml``); not a YAML key.
        path: the file it was loaded from; not a YAML key.
        chain: every file that contributed, root ancestor first; not a YAML key.
    """

    description: str = ""
    display: DisplayConfig = field(default_factory=DisplayConfig)
    input: InputConfig = field(default_factory=InputConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    osc: OscConfig = field(default_factory=OscConfig)
    sound: SoundConfig = field(default_factory=SoundConfig)
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    capture: CaptureConfig = field(default_factory=CaptureConfig)
    rating: RatingConfig = field(default_factory=RatingConfig)
    service: ServiceConfig = field(default_factory=ServiceConfig)
    attract: AttractConfig = field(default_factory=AttractConfig)
    scenes: dict[str, dict[str, Any]] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)
    name: str = field(default="", init=False)
    path: str = field(default="", init=False)
    chain: tuple[str, ...] = field(default=(), init=False)

    def param_values(self) -> dict[str, Any]:
        """Every parameter's initial value: the declared defaults overlaid with :attr:`params`."""
        return {name: self.params.get(name, spec.default) for name, spec in PARAMS.items()}

    def render_params(self, scene: str | None = None) -> RenderParams:
        """The :class:`RenderParams` this preset implies (for ``scene``, default ``params.scene``).

        ``scene_params`` = ``scenes[scene]`` plus ``crossfade_s`` (the live parameter) and the scene's own
        live parameters (``grid/n`` -> ``n``); ``noise_drift_s`` = 1 / ``noise/walk_speed`` (0: hold);
        ``vad.on_min_db`` = ``vad/threshold_db`` and ``vad.off_min_db`` = 5 dB below it.
        """
        values = self.param_values()
        scene = scene or values["scene"]
        scene_params = dict(self.scenes.get(scene, {}))
        scene_params["crossfade_s"] = values["crossfade_s"]
        prefix = scene + "/"
        for name, value in values.items():
            if name.startswith(prefix):
                scene_params[name[len(prefix) :]] = value
        speed = float(values["noise/walk_speed"])
        threshold = float(values["vad/threshold_db"])
        vad = dataclasses.replace(self.generation.vad, on_min_db=threshold, off_min_db=threshold - 5.0)
        return RenderParams(
            scene=scene,
            scene_params=scene_params,
            gen_fps=self.generation.gen_fps,
            noise_drift_s=1.0 / speed if speed > 0 else 0.0,
            image_ema_s=self.generation.image_ema_s,
            vad=vad,
        )


SECTIONS: dict[str, type] = {
    "display": DisplayConfig,
    "input": InputConfig,
    "engine": EngineConfig,
    "osc": OscConfig,
    "sound": SoundConfig,
    "generation": GenerationConfig,
    "capture": CaptureConfig,
    "rating": RatingConfig,
    "service": ServiceConfig,
    "attract": AttractConfig,
}
"""The typed sections of a preset by key."""


# -- input sources --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class InputSource:
    """A parsed ``input.source`` / ``--input`` value.

    Attributes:
        kind: ``"mic"`` (default input device), ``"device"`` (``device`` is an index or a name), or
            ``"file"`` (``path`` is the file, absolute).
        device: sounddevice device (int index or name substring) for ``"device"``; ``None`` otherwise.
        path: the file for ``"file"``; ``None`` otherwise.
    """

    kind: Literal["mic", "device", "file"]
    device: int | str | None = None
    path: Path | None = None


def resolve_path(path: str | Path, base: Path = ROOT) -> Path:
    """``path`` made absolute: ``~`` expanded, relative paths taken relative to ``base`` (default: repository root)."""
    p = Path(path).expanduser()
    return p if p.is_absolute() else (base / p)


def parse_input(source: str | int, base: Path = ROOT) -> InputSource:
    """Interpret an input source: ``"mic"``/``"default"``, a device index (int or digits), a file, or a device name.

    A string is a file when it ends with a media suffix (:data:`MEDIA_SUFFIXES`) or contains a path
    separator; relative file paths are taken relative to ``base`` (the repository root for presets; pass
    ``Path.cwd()`` for a command-line ``--input``). Existence is not checked here.
    """
    if isinstance(source, bool):
        raise PresetError(f"input source must be 'mic', a device index or name, or a file, got {source!r}")
    if isinstance(source, int):
        return InputSource("device", device=source)
    text = str(source).strip()
    if text.lower() in ("", "mic", "default"):
        return InputSource("mic")
    if text.isdigit():
        return InputSource("device", device=int(text))
    if Path(text).suffix.lower() in MEDIA_SUFFIXES or "/" in text or "\\" in text:
        return InputSource("file", path=resolve_path(text, base))
    return InputSource("device", device=text)


# -- loading --------------------------------------------------------------------------------------------


def list_presets(presets_dir: Path = PRESETS_DIR) -> list[str]:
    """Names of the presets in ``presets_dir`` (``*.yaml`` files), sorted."""
    return sorted(p.stem for p in Path(presets_dir).glob("*.yaml"))


def _display(path: Path) -> str:
    """``path`` relative to the repository root when inside it (shorter messages), else as given."""
    try:
        return str(path.resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


def _is_name(text: str) -> bool:
    return bool(re.fullmatch(r"[A-Za-z0-9_.-]+", text)) and not text.endswith((".yaml", ".yml"))


def resolve_preset(name_or_path: str | Path, presets_dir: Path = PRESETS_DIR, relative_to: Path | None = None) -> Path:
    """The file of a preset: a bare name is ``presets_dir/<name>.yaml``; anything else is a path.

    Relative paths are taken relative to ``relative_to`` (default: the current directory).

    Raises:
        PresetError: no such preset (the message lists the available names) or no such file.
    """
    text = str(name_or_path)
    if isinstance(name_or_path, str) and _is_name(text):
        path = Path(presets_dir) / f"{text}.yaml"
        if not path.is_file():
            raise PresetError(
                f"no preset named {text!r} in {_display(Path(presets_dir))} "
                f"(available: {', '.join(list_presets(presets_dir)) or 'none'})"
            )
        return path.resolve()
    path = Path(text).expanduser()
    if not path.is_absolute():
        path = (relative_to or Path.cwd()) / path
    if not path.is_file():
        raise PresetError(f"{_display(path)}: preset file not found")
    return path.resolve()


def _read_chain(path: Path, presets_dir: Path) -> list[tuple[str, dict[str, Any]]]:
    """``[(file, mapping), ...]`` from the root ancestor to ``path``, following ``extends`` (removed)."""
    chain: list[tuple[str, dict[str, Any]]] = []
    seen: list[Path] = []
    current: Path | None = path
    while current is not None:
        if current in seen:
            cycle = " -> ".join(_display(p) for p in [*seen[seen.index(current) :], current])
            raise PresetError(f"{_display(seen[-1])}: key 'extends': cycle {cycle}")
        seen.append(current)
        if len(seen) > 32:
            raise PresetError(f"{_display(path)}: key 'extends': chain longer than 32 files")
        where = _display(current)
        try:
            data = load_yaml(current)
        except ConfigError as exc:
            raise PresetError(" ".join(str(exc).split())) from None  # YAML errors span lines; ours are one line
        parent = data.pop("extends", None)
        chain.append((where, data))
        if parent is None:
            current = None
        elif not isinstance(parent, str) or not parent.strip():
            raise PresetError(f"{where}: key 'extends': expected a preset name or a relative path, got {parent!r}")
        else:
            try:
                current = resolve_preset(parent.strip(), presets_dir, relative_to=current.parent)
            except PresetError as exc:
                raise PresetError(f"{where}: key 'extends': {exc}") from None
    chain.reverse()
    return chain


def _merge(
    base: dict[str, Any], top: Mapping[str, Any], where: str, prov: dict[tuple[str, ...], str], prefix: tuple = ()
) -> dict[str, Any]:
    """Deep-merge ``top`` (from file ``where``) over ``base``; records in ``prov`` which file set each key path."""
    out = dict(base)
    for key, value in top.items():
        path = (*prefix, str(key))
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            prov[path] = where
            out[key] = _merge(dict(out[key]), value, where, prov, path)
        else:
            out[key] = value
            for sub in [p for p in prov if p[: len(path)] == path]:
                del prov[sub]
            _record(value, where, prov, path)
    return out


def _record(value: Any, where: str, prov: dict[tuple[str, ...], str], path: tuple[str, ...]) -> None:
    prov[path] = where
    if isinstance(value, Mapping):
        for key, sub in value.items():
            _record(sub, where, prov, (*path, str(key)))


def _origin(prov: Mapping[tuple[str, ...], str], key: str, default: str) -> str:
    """The file that set ``key`` (``"a.b[2]"`` style) or its nearest ancestor; ``default`` if none."""
    parts = tuple(p for p in re.sub(r"\[\d+\]", "", key).split(".") if p)
    while parts:
        if parts in prov:
            return prov[parts]
        parts = parts[:-1]
    return default


def _fail(prov: Mapping[tuple[str, ...], str], default: str, key: str, message: str) -> PresetError:
    return PresetError(f"{_origin(prov, key, default)}: key '{key}': {message}")


def _rethrow(exc: ConfigError, prov: Mapping[tuple[str, ...], str], default: str, section: str) -> PresetError:
    """An engine.configs error with the placeholder source replaced by the file that set the key."""
    message = str(exc)
    found = re.search(r"key '([^']*)'", message)
    if found:
        return PresetError(message.replace(_SOURCE, _origin(prov, found.group(1), default), 1))
    detail = message.replace(_SOURCE + ": ", "", 1)
    return _fail(prov, default, section, detail)


def _from_mapping_keyed(cls: type, raw: dict[str, Any], prov: Mapping, default: str, key: str) -> Any:
    """:func:`engine.configs.from_mapping` with every error naming the innermost key path it can.

    Nested dataclass sections are built first on their own, so that a ``__post_init__`` check (which
    names no key) is reported at the nested section's key (``generation.vad``) rather than its parent.
    """
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        sub = raw.get(f.name)
        if f.name in raw and dataclasses.is_dataclass(hints.get(f.name)) and isinstance(sub, Mapping):
            _from_mapping_keyed(hints[f.name], dict(sub), prov, default, f"{key}.{f.name}")
    try:
        return from_mapping(cls, raw, source=_SOURCE, prefix=key + ".")
    except ConfigError as exc:
        raise _rethrow(exc, prov, default, key) from None


def _check_ranges(obj: Any, prov: Mapping[tuple[str, ...], str], default: str, prefix: str) -> None:
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        key = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(value):
            _check_ranges(value, prov, default, key + ".")
            continue
        if "range" not in f.metadata:
            continue
        lo, hi = f.metadata["range"]
        unit = f" {f.metadata['unit']}" if f.metadata.get("unit") else ""
        items = value if isinstance(value, tuple) else (value,)
        for item in items:
            if (lo is not None and item < lo) or (hi is not None and item > hi):
                lo_text = "-inf" if lo is None else f"{lo:g}"
                hi_text = "+inf" if hi is None else f"{hi:g}"
                raise _fail(prov, default, key, f"{value!r} out of range [{lo_text}, {hi_text}]{unit}")


def _check_ip(value: str, network: bool) -> bool:
    try:
        ipaddress.ip_network(value, strict=False) if network else ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


def _scene_params_class(scene: str) -> type | None:
    """The parameter dataclass of ``scene`` by convention (``scenes.<scene>.<Scene>Params``), if it has one."""
    try:
        module = importlib.import_module(f"scenes.{scene}")
    except ImportError:
        return None
    cls = getattr(module, f"{scene.capitalize()}Params", None)
    return cls if dataclasses.is_dataclass(cls) else None


_NATURAL: dict[str, type | tuple[type, ...]] = {
    "float": (int, float),
    "int": int,
    "bool": bool,
    "enum": str,
    "string": str,
    "trigger": bool,
}


def _check_params(params: Mapping[str, Any], prov: Mapping, default: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, value in params.items():
        spec: ParamSpec | None = PARAMS.get(name)
        if spec is None:
            where = _origin(prov, f"params.{name}", default)
            raise PresetError(f"{where}: unknown key 'params.{name}' (allowed: {', '.join(PARAMS)})")
        if spec.kind == "trigger":
            raise _fail(prov, default, f"params.{name}", "a trigger has no initial value")
        ok, reason, coerced = spec.validate(value, clamp=False)
        natural = _NATURAL[spec.kind]
        if ok and (not isinstance(value, natural) or (spec.kind in ("int", "float") and isinstance(value, bool))):
            ok, reason = False, "wrong_type"  # presets are strict: no 1 for true, no 2.0 for 2, no index for a name
        if not ok:
            raise _fail(
                prov, default, f"params.{name}", f"{value!r} is not valid ({reason}); expected {spec.range_text()}"
            )
        out[name] = coerced
    return out


def _check_scenes(scenes: Mapping[str, Any], prov: Mapping, default: str) -> dict[str, dict[str, Any]]:
    choices = PARAMS["scene"].choices
    out: dict[str, dict[str, Any]] = {}
    for scene, settings in scenes.items():
        key = f"scenes.{scene}"
        if scene not in choices:
            where = _origin(prov, key, default)
            raise PresetError(f"{where}: unknown key '{key}' (allowed: {', '.join(choices)})")
        if settings is None:
            settings = {}
        if not isinstance(settings, Mapping):
            raise _fail(prov, default, key, f"expected a mapping of scene parameters, got {settings!r}")
        for name in settings:
            live = f"{scene}/{name}" if f"{scene}/{name}" in PARAMS else name  # e.g. crossfade_s: every scene's
            if live in PARAMS:
                raise _fail(prov, default, f"{key}.{name}", f"a live parameter: set params.{live} instead")
        cls = _scene_params_class(scene)
        if cls is not None:
            try:
                from_mapping(cls, dict(settings), source=_SOURCE, prefix=key + ".")
            except ConfigError as exc:
                raise _rethrow(exc, prov, default, key) from None
        out[scene] = dict(settings)
    return out


def _build(data: dict[str, Any], prov: dict[tuple[str, ...], str], default: str, check_files: bool) -> Preset:
    allowed = [f.name for f in dataclasses.fields(Preset) if f.init]
    unknown = sorted(set(data) - set(allowed))
    if unknown:
        where = _origin(prov, unknown[0], default)
        raise PresetError(f"{where}: unknown key '{unknown[0]}' (allowed: extends, {', '.join(sorted(allowed))})")
    kwargs: dict[str, Any] = {}
    description = data.get("description", "")
    if not isinstance(description, str):
        raise _fail(prov, default, "description", f"expected a string, got {description!r}")
    kwargs["description"] = description
    for section, cls in SECTIONS.items():
        raw = data.get(section)
        if raw is None:
            raw = {}
        if not isinstance(raw, Mapping):
            raise _fail(prov, default, section, f"expected a mapping, got {raw!r}")
        if section == "generation" and isinstance(raw.get("vad"), Mapping):
            for name in ("on_min_db", "off_min_db"):
                if name in raw["vad"]:
                    raise _fail(
                        prov,
                        default,
                        f"generation.vad.{name}",
                        "set by the live parameter: set params.vad/threshold_db",
                    )
        value = _from_mapping_keyed(cls, dict(raw), prov, default, section)
        _check_ranges(value, prov, default, section + ".")
        kwargs[section] = value
    for section, checker in (("params", _check_params), ("scenes", _check_scenes)):
        raw = data.get(section)
        if raw is None:
            raw = {}
        if not isinstance(raw, Mapping):
            raise _fail(prov, default, section, f"expected a mapping, got {raw!r}")
        kwargs[section] = checker(raw, prov, default)
    preset = Preset(**kwargs)
    _check_semantics(preset, prov, default, check_files)
    return preset


def _check_semantics(preset: Preset, prov: Mapping, default: str, check_files: bool) -> None:
    osc = preset.osc
    if not (_check_ip(osc.host, network=False) or osc.host == "localhost"):
        raise _fail(prov, default, "osc.host", f"{osc.host!r} is not an IP address (e.g. 127.0.0.1 or 0.0.0.0)")
    if not osc.feedback_host.strip():
        raise _fail(prov, default, "osc.feedback_host", "expected a host name or IP address, got ''")
    for i, entry in enumerate(osc.allowlist):
        if not _check_ip(entry, network=True):
            raise _fail(prov, default, f"osc.allowlist[{i}]", f"{entry!r} is not an IP address or network (a.b.c.d/nn)")
    for i, name in enumerate(osc.feedback_smoothed):
        if name not in PARAMS or PARAMS[name].kind != "float":
            floats = ", ".join(n for n, spec in PARAMS.items() if spec.kind == "float")
            raise _fail(prov, default, f"osc.feedback_smoothed[{i}]", f"{name!r} is not a float parameter ({floats})")
    if preset.input.reconnect_min_s > preset.input.reconnect_max_s:
        raise _fail(
            prov,
            default,
            "input.reconnect_min_s",
            f"{preset.input.reconnect_min_s} must be <= input.reconnect_max_s ({preset.input.reconnect_max_s})",
        )
    from engine.generator import BACKEND_CHOICES

    if preset.engine.backend not in BACKEND_CHOICES:
        raise _fail(
            prov, default, "engine.backend", f"{preset.engine.backend!r}; expected one of {', '.join(BACKEND_CHOICES)}"
        )
    source = preset.input.source
    try:
        parsed = parse_input(source)
    except PresetError as exc:
        raise _fail(prov, default, "input.source", str(exc)) from None
    if check_files and parsed.kind == "file" and parsed.path is not None and not parsed.path.is_file():
        raise _fail(prov, default, "input.source", f"file not found: {parsed.path}")


def load_preset(
    name_or_path: str | Path,
    overrides: Mapping[str, Any] | None = None,
    *,
    presets_dir: Path = PRESETS_DIR,
    check_files: bool = True,
) -> Preset:
    """Load, layer and validate a preset.

    Args:
        name_or_path: a preset name in ``presets_dir`` (``"gallery"``) or a path to a YAML file.
        overrides: a mapping merged over the result before validation, e.g. from the command line
            (``{"input": {"source": "clip.wav"}, "display": {"fullscreen": False}}``); errors name it
            ``<overrides>``.
        presets_dir: where names are looked up (and ``extends: NAME`` is resolved).
        check_files: check that a file ``input.source`` exists.

    Raises:
        PresetError: missing file, bad YAML, unknown key, wrong type, value out of range, a cycle in
            ``extends``; one line naming the file, the key path and what is allowed.
    """
    path = resolve_preset(name_or_path, presets_dir)
    chain = _read_chain(path, Path(presets_dir))
    prov: dict[tuple[str, ...], str] = {}
    merged: dict[str, Any] = {}
    for where, data in chain:
        merged = _merge(merged, data, where, prov)
    if overrides:
        merged = _merge(merged, overrides, "<overrides>", prov)
    preset = _build(merged, prov, chain[-1][0], check_files)
    object.__setattr__(preset, "name", path.stem)
    object.__setattr__(preset, "path", str(path))
    object.__setattr__(preset, "chain", tuple(where for where, _ in chain))
    return preset
