"""Presets: every shipped preset loads; strict errors name file, key and allowed range; extends layering."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from engine.configs import ConfigError
from engine.errors import UserError
from installation.params import PARAMS, Parameters
from installation.presets import (
    ROOT,
    InputSource,
    Preset,
    PresetError,
    RenderParams,
    list_presets,
    load_preset,
    parse_input,
)


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def error_of(target: str | Path, **kwargs: object) -> str:
    with pytest.raises(PresetError) as info:
        load_preset(target, **kwargs)  # type: ignore[arg-type]
    message = str(info.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize("name", list_presets())
def test_every_preset_loads(name: str) -> None:
    preset = load_preset(name)
    assert isinstance(preset, Preset) and preset.name == name
    assert preset.chain[-1] == f"presets/{name}.yaml"
    params = Parameters(initial=preset.params)  # the initial values are valid parameters
    assert set(params.snapshot()) == set(PARAMS)
    render = preset.render_params()
    assert isinstance(render, RenderParams) and render.scene in PARAMS["scene"].choices
    assert render.vad.on_min_db == preset.param_values()["vad/threshold_db"]
    assert preset.engine.bundle_path.is_absolute()


def test_required_presets_exist() -> None:
    assert {"gallery", "headless", "open_day"} <= set(list_presets())


def test_gallery_preset() -> None:
    p = load_preset("gallery")
    assert p.display.fullscreen and p.display.size == (1920, 1080)
    assert parse_input(p.input.source) == InputSource("mic")
    assert p.params["scene"] == "portrait" and p.params["sound/on"] is True
    assert p.sound.enabled and p.sound.output == "device"
    assert p.osc.enabled and p.osc.host == "127.0.0.1" and (p.osc.port, p.osc.feedback_port) == (8000, 9000)
    text = (ROOT / "presets" / "gallery.yaml").read_text()
    assert "0.0.0.0" in text and "allowlist" in text  # documents how to open OSC to the LAN


def test_headless_preset() -> None:
    p = load_preset("headless")
    source = parse_input(p.input.source)
    assert source.kind == "file" and source.path is not None and source.path.is_file()
    assert p.display.driver == "dummy" and not p.display.fullscreen
    assert not p.sound.enabled
    assert p.osc.host == "127.0.0.1" and not p.osc.mdns


def test_open_day_layers_on_gallery() -> None:
    p = load_preset("open_day")
    assert p.chain == ("presets/base.yaml", "presets/gallery.yaml", "presets/open_day.yaml")
    assert p.capture.take_s == 1.0 and p.capture.output == "captures/open_day"
    assert not p.display.fullscreen and p.display.windowed_size == (1280, 720)
    assert p.params["sound/level"] == 0.6  # overridden
    assert p.params["sound/mix"] == 0.5  # inherited from gallery
    assert p.scenes["portrait"]["idle_fade_s"] == 2.5  # inherited nested mapping


def test_layering_deep_merges_mappings_and_replaces_lists(tmp_path: Path) -> None:
    write(
        tmp_path,
        "parent.yaml",
        """
        osc: {port: 8100, allowlist: [10.0.0.1, 10.0.0.2], feedback_port: 9100}
        display: {size: [800, 600], fullscreen: false}
        params: {sound/level: 0.3, scene: grid}
    """,
    )
    write(
        tmp_path,
        "child.yaml",
        """
        extends: parent.yaml
        osc: {port: 8200, allowlist: [10.0.0.3]}
        params: {sound/level: 0.4}
    """,
    )
    p = load_preset(tmp_path / "child.yaml")
    assert p.osc.port == 8200 and p.osc.feedback_port == 9100
    assert p.osc.allowlist == ("10.0.0.3",)
    assert p.display.size == (800, 600)
    assert p.params == {"sound/level": 0.4, "scene": "grid"}
    assert p.name == "child" and len(p.chain) == 2
    p = load_preset(tmp_path / "child.yaml", overrides={"input": {"source": 3}, "display": {"fullscreen": True}})
    assert parse_input(p.input.source) == InputSource("device", device=3) and p.display.fullscreen


def test_extends_by_name_from_another_folder(tmp_path: Path) -> None:
    write(tmp_path, "mine.yaml", "extends: headless\nparams: {grid/n: 3}\n")
    p = load_preset(tmp_path / "mine.yaml")
    assert p.display.driver == "dummy" and p.params["grid/n"] == 3
    assert p.chain[:2] == ("presets/base.yaml", "presets/headless.yaml")


def test_unknown_key_names_file_and_key(tmp_path: Path) -> None:
    write(tmp_path, "a.yaml", "extends: headless\nosc: {prot: 1}\n")
    message = error_of(tmp_path / "a.yaml")
    assert str(tmp_path / "a.yaml") in message and "'osc.prot'" in message and "port" in message
    write(tmp_path, "b.yaml", "extends: headless\nvolume: 3\n")
    message = error_of(tmp_path / "b.yaml")
    assert "unknown key 'volume'" in message and "display" in message
    write(tmp_path, "c.yaml", "extends: headless\nparams: {volume: 3}\n")
    message = error_of(tmp_path / "c.yaml")
    assert "unknown key 'params.volume'" in message and "sound/level" in message
    write(tmp_path, "d.yaml", "extends: headless\nscenes: {disco: {}}\n")
    assert "unknown key 'scenes.disco'" in error_of(tmp_path / "d.yaml")
    write(tmp_path, "e.yaml", "extends: headless\nscenes: {portrait: {idle_fade: 1}}\n")
    assert "'scenes.portrait.idle_fade'" in error_of(tmp_path / "e.yaml")


@pytest.mark.parametrize(
    ("body", "key", "allowed"),
    [
        ("osc: {port: 70000}", "osc.port", "[0, 65535]"),
        ("display: {size: [1920, 0]}", "display.size", "[16, 16384] px"),
        ("generation: {gen_fps: -1}", "generation.gen_fps", "[0, 240] Hz"),
        ("input: {heartbeat_s: 0}", "input.heartbeat_s", "[0.05, 60] s"),
        ("sound: {sample_rate: 4000}", "sound.sample_rate", "[8000, 192000] Hz"),
        ("params: {sound/level: 1.5}", "params.sound/level", "float 0 to 1"),
        ("params: {vad/threshold_db: 3}", "params.vad/threshold_db", "float -80 to 0 dBFS"),
        ("params: {scene: disco}", "params.scene", "one of portrait, grid, morph"),
    ],
)
def test_out_of_range_names_file_key_and_range(tmp_path: Path, body: str, key: str, allowed: str) -> None:
    write(tmp_path, "x.yaml", f"extends: headless\n{body}\n")
    message = error_of(tmp_path / "x.yaml")
    assert message.startswith(str(tmp_path / "x.yaml") + ": ")
    assert f"'{key}'" in message and allowed in message


@pytest.mark.parametrize(
    ("body", "key", "expected"),
    [
        ("osc: {port: eighty}", "osc.port", "expected an integer"),
        ("display: {fullscreen: 1}", "display.fullscreen", "expected true/false"),
        ("display: {size: [1920, x]}", "display.size[1]", "expected an integer"),
        ("display: {size: 1920}", "display.size", "expected a list"),
        ("osc: {allowlist: [10.0.0.300]}", "osc.allowlist[0]", "not an IP address"),
        ("osc: {host: gallery-pc}", "osc.host", "not an IP address"),
        ("engine: {backend: cuda}", "engine.backend", "expected one of auto"),
        ("sound: {output: speakers}", "sound.output", "one of 'device', 'jack', 'offline'"),
        ("sound: {buffer_size: 1000}", "sound.buffer_size", "power of two"),
        ("sound: {audio: jack}", "sound.audio", "unknown key"),
        ("params: {grid/n: 2.0}", "params.grid/n", "wrong_type"),
        ("params: {sound/on: 1}", "params.sound/on", "wrong_type"),
        ("params: {scene: 1}", "params.scene", "one of portrait"),
        ("params: {quit: true}", "params.quit", "trigger"),
        ("osc: 3", "osc", "expected a mapping"),
        ("generation: {vad: {frame_s: 0.5}}", "generation.vad", "frame_s"),
        ("generation: {vad: {on_min_db: -40}}", "generation.vad.on_min_db", "params.vad/threshold_db"),
        ("scenes: {portrait: {crossfade_s: 1}}", "scenes.portrait.crossfade_s", "params.crossfade_s"),
        ("scenes: {portrait: {idle_zoom: 0.5}}", "scenes.portrait", "idle_zoom"),
        ("input: {reconnect_min_s: 50, reconnect_max_s: 10}", "input.reconnect_min_s", "<= input.reconnect_max_s"),
        ("input: {source: missing/clip.wav}", "input.source", "file not found"),
    ],
)
def test_wrong_type_names_file_and_key(tmp_path: Path, body: str, key: str, expected: str) -> None:
    write(tmp_path, "x.yaml", f"extends: headless\n{body}\n")
    message = error_of(tmp_path / "x.yaml")
    assert message.startswith(str(tmp_path / "x.yaml") + ": ")
    assert f"'{key}'" in message and expected in message


def test_error_names_the_file_that_set_the_key(tmp_path: Path) -> None:
    write(tmp_path, "parent.yaml", "extends: headless\nosc: {port: 99999}\n")
    write(tmp_path, "child.yaml", "extends: parent.yaml\nosc: {feedback_port: 9001}\n")
    message = error_of(tmp_path / "child.yaml")
    assert message.startswith(str(tmp_path / "parent.yaml") + ": key 'osc.port'")
    write(tmp_path, "fixed.yaml", "extends: parent.yaml\nosc: {port: 8001}\n")
    assert load_preset(tmp_path / "fixed.yaml").osc.port == 8001  # the child's value replaces the bad one
    message = error_of(tmp_path / "fixed.yaml", overrides={"params": {"sound/mix": 7}})
    assert message.startswith("<overrides>: key 'params.sound/mix'")


def test_cyclic_extends(tmp_path: Path) -> None:
    write(tmp_path, "a.yaml", "extends: b.yaml\n")
    write(tmp_path, "b.yaml", "extends: ./a.yaml\n")
    message = error_of(tmp_path / "a.yaml")
    assert "key 'extends'" in message and "cycle" in message and "a.yaml -> " in message and "b.yaml" in message
    write(tmp_path, "self.yaml", "extends: self.yaml\n")
    assert "cycle" in error_of(tmp_path / "self.yaml")


def test_bad_extends_and_missing_presets(tmp_path: Path) -> None:
    write(tmp_path, "a.yaml", "extends: nonexistent\n")
    message = error_of(tmp_path / "a.yaml")
    assert "key 'extends'" in message and "no preset named 'nonexistent'" in message and "gallery" in message
    write(tmp_path, "b.yaml", "extends: [gallery]\n")
    assert "key 'extends'" in error_of(tmp_path / "b.yaml")
    assert "available: " in error_of("no_such_preset")
    assert "not found" in error_of(tmp_path / "missing.yaml")
    write(tmp_path, "c.yaml", "- a list\n")
    assert "mapping" in error_of(tmp_path / "c.yaml")
    write(tmp_path, "d.yaml", "osc: {port: [\n")
    assert "not valid YAML" in error_of(tmp_path / "d.yaml")


def test_preset_error_is_a_user_error() -> None:
    assert issubclass(PresetError, UserError) and issubclass(PresetError, ConfigError)
    assert issubclass(PresetError, ValueError)


def test_parse_input(tmp_path: Path) -> None:
    assert parse_input("mic") == InputSource("mic") == parse_input("default")
    assert parse_input(2) == InputSource("device", device=2) == parse_input("2")
    assert parse_input("USB Audio") == InputSource("device", device="USB Audio")
    clip = parse_input("presets/demo/demo_speech.flac")
    assert clip.kind == "file" and clip.path == ROOT / "presets" / "demo" / "demo_speech.flac"
    assert parse_input("take.wav", base=tmp_path) == InputSource("file", path=tmp_path / "take.wav")
    assert parse_input(str(tmp_path / "x")).kind == "file"
    with pytest.raises(PresetError):
        parse_input(True)  # type: ignore[arg-type]
