#!/usr/bin/env python3
"""Generate the controller files in ``presets/controllers/`` from the one parameter declaration.

Every parameter of :data:`installation.params.PARAMS` gets a control in each file, so the files never drift
from the code (``tests/test_osc.py`` regenerates them and compares)::

    python scripts/make_controllers.py            # write presets/controllers/*
    python scripts/make_controllers.py --check    # exit 1 if a file is missing or out of date

Files:

* ``avgan.tosc`` — TouchOSC (the 2021+ "mk2" editor/app) layout: zlib-compressed XML
  (``<lexml version='3'>``, ``node``/``properties``/``values``/``messages``/``children``), one page,
  1024x768. Faders (scaled to the parameter's range) for numbers, toggle buttons for booleans, a
  momentary button per trigger, a radio (one lit step per choice, sending and receiving the choice's index)
  for enums, one button per preset for ``preset/load`` and per class of the ``scenes`` preset's bundle (plus
  ``sound``) for ``scene_class``, and labels that show the ``/avgan/status/...``
  feedback. Faders, toggles and radios receive the installation's feedback (the value each parameter moves
  to), so they follow changes made elsewhere (keyboard, another controller, a preset load) and scene buttons
  light up. ``quit`` takes two deliberate steps: its button is locked until the "unlock quit" toggle beside it
  is on (a Lua script on the toggle), and using it locks it again. Connection 1 is used: point it at the
  installation (host, port 8000; receive port 9000). The schema was written from TouchOSC files seen in
  the field, not from a published specification, and could not be opened in TouchOSC here: if the
  editor refuses it, ``avgan.controls.json`` describes the same layout, and OSCQuery (the installation's
  HTTP port) lets TouchOSC-like tools and Open Stage Control / Chataigne build controls themselves.
* ``avgan.maxpat`` — Max/MSP patcher (JSON): ``udpsend 127.0.0.1 8000`` fed by one control per parameter
  (slider + number box, number box, toggle, umenu or button) through a message box
  ``/avgan/<name> $1``; ``udpreceive 9000`` -> ``route`` -> status displays and ``set`` messages that move
  the controls, sliders included, when the installation reports a change (``set`` does not send, so there is
  no loop). ``quit`` goes through a ``gate`` opened by an "unlock quit" toggle, which the quit closes again.
* ``avgan.controls.json`` — the layout as plain, documented JSON (address, OSC type, range, default,
  unit, suggested control) for any other controller.
* ``ADDRESS_SPACE.md`` — the OSC address space as a Markdown table (linked from the README).
"""

from __future__ import annotations

import argparse
import json
import sys
import uuid
import zlib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from installation.osc import QUERY_ADDRESS, SMOOTHED_PREFIX, STATUS_DOCS  # noqa: E402
from installation.params import PARAMS, ParamSpec  # noqa: E402
from installation.presets import list_presets, load_preset  # noqa: E402

OUT_DIR = ROOT / "presets" / "controllers"
OSC_HOST, OSC_PORT, FEEDBACK_PORT = "127.0.0.1", 8000, 9000
UI_SPAN = 999
"""Integers with a wider range (``noise/seed``) get a control over ``[min, min + UI_SPAN]`` (OSC: the full range)."""


def ui_range(spec: ParamSpec) -> tuple[float, float]:
    """The range a fader / slider covers: the parameter's, narrowed for very wide integer ranges."""
    lo = spec.min if spec.min is not None else 0
    hi = spec.max if spec.max is not None else lo + UI_SPAN
    if spec.kind == "int" and hi - lo > UI_SPAN:
        hi = lo + UI_SPAN
    return lo, hi


def control_kind(spec: ParamSpec) -> str:
    """Suggested control: ``fader``, ``toggle``, ``button`` (trigger), ``choice`` (enum) or ``list`` (preset names)."""
    return {"float": "fader", "int": "fader", "bool": "toggle", "trigger": "button", "enum": "choice"}.get(
        spec.kind, "list"
    )


SCENES_PRESET = "scenes"
"""The preset whose bundle's class names the ``scene_class`` buttons offer."""


def scene_classes() -> list[str]:
    """``sound`` (follow the sound), then the class names of the ``scenes`` preset's bundle (none when that preset
    or its bundle is missing)."""
    try:
        bundle = load_preset(SCENES_PRESET).engine.bundle_path / "bundle.json"
        return ["sound", *json.loads(bundle.read_text(encoding="utf-8"))["labels"]]
    except (OSError, ValueError, KeyError):
        return ["sound"]


def string_choices(spec: ParamSpec) -> list[str]:
    """Values offered for a string parameter (the preset names for ``preset/load``; ``sound`` and the scene
    bundle's classes for ``scene_class``)."""
    if spec.name == "preset/load":
        return list_presets()
    if spec.name == "scene_class":
        return scene_classes()
    return []


# -- neutral JSON + Markdown ----------------------------------------------------------------------------


def controls_json(specs: Mapping[str, ParamSpec] = PARAMS) -> dict[str, Any]:
    """The layout as plain JSON: connection, one entry per parameter, the feedback addresses."""
    controls = []
    for spec in specs.values():
        entry: dict[str, Any] = {
            "name": spec.name,
            "address": spec.address,
            "kind": spec.kind,
            "osc_type": spec.osc_type,
            "control": control_kind(spec),
            "doc": spec.doc,
            "unit": spec.unit,
        }
        if spec.kind in ("float", "int"):
            entry.update(min=spec.min, max=spec.max, ui_range=list(ui_range(spec)), smoothing_s=spec.smoothing_s)
        if spec.kind == "enum":
            entry["choices"] = list(spec.choices)
        if spec.kind == "string":
            entry["choices"] = string_choices(spec)
        if spec.kind != "trigger":
            entry["default"] = spec.default
        controls.append(entry)
    return {
        "format": "avgan-controls/1",
        "about": "Generated by scripts/make_controllers.py from installation/params.py; do not edit.",
        "osc": {"host": OSC_HOST, "port": OSC_PORT, "feedback_port": FEEDBACK_PORT, "transport": "UDP"},
        "controls": controls,
        "query": {"address": QUERY_ADDRESS, "doc": "send current values to the feedback port (all, or names)"},
        "feedback": [
            {"address": f"/avgan/status/{key}", "osc_type": tag, "doc": doc} for key, (tag, doc) in STATUS_DOCS.items()
        ],
        "feedback_values": "a parameter whose target changed (from any source) comes back once on its own address "
        "with the value it moves to (never one from the middle of a smoothing glide): booleans as int 0/1, enums "
        "as their int index, numbers as they are (clamped to the range)",
        "feedback_status": "status values are sent when they change (fps in whole frames, level in steps of 0.01) "
        "and all of them every osc.heartbeat_s seconds (5 by default)",
        "feedback_smoothed": "parameters named in the preset's osc.feedback_smoothed also send their smoothed value "
        f"to /avgan/{SMOOTHED_PREFIX}<name> while it glides",
        "two_step": {"quit": "the layouts lock quit until an 'unlock quit' toggle is on; quitting locks it again"},
    }


def address_space_md(specs: Mapping[str, ParamSpec] = PARAMS) -> str:
    """The address space as Markdown (``presets/controllers/ADDRESS_SPACE.md``)."""
    lines = [
        "# AVGAN OSC address space",
        "",
        "Generated by `scripts/make_controllers.py` from `installation/params.py`: do not edit by hand.",
        "",
        f"The installation listens for OSC on UDP port {OSC_PORT} (preset key `osc.port`; bound to "
        "`osc.host`, 127.0.0.1 by default) and sends feedback to `osc.feedback_host:osc.feedback_port` "
        f"({FEEDBACK_PORT} by default). The same tree is served as OSCQuery JSON over HTTP on "
        "`osc.oscquery_port` (8080 by default): `http://HOST:8080/` (the tree), `/?HOST_INFO`, "
        "`/avgan/sound/level?VALUE`.",
        "",
        "Every parameter takes one argument; numbers outside the range are clamped; NaN/inf, wrong types and "
        "unknown addresses are counted and dropped. Smoothed parameters glide to a new value with the given "
        "time constant. Enums take the choice's name (string) or its index (int). Booleans take true/false "
        "or a number (>= 0.5 is on). Triggers take no argument, nil (`N`, as OSCQuery advertises them), impulse "
        "(`I`) or a non-zero number (0 = button release, ignored).",
        "",
        "| address | type | range | default | smoothing | what |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for spec in specs.values():
        if spec.kind in ("float", "int"):
            rng = spec.range_text().split(" ", 1)[1]
        elif spec.kind == "enum":
            rng = " \\| ".join(spec.choices)
        elif spec.kind == "string":
            names = string_choices(spec)
            what = "class (or NAME:WEIGHT ...)" if spec.name == "scene_class" else "preset name"
            rng = (f"{what}: " + ", ".join(names)) if names else "string"
        elif spec.kind == "bool":
            rng = "true/false"
        else:
            rng = "—"
        default = "—" if spec.kind == "trigger" else f"`{json.dumps(spec.default)}`"
        smoothing = f"{spec.smoothing_s:g} s" if spec.smoothing_s else "—"
        lines.append(
            f"| `{spec.address}` | {spec.kind} `{spec.osc_type}` | {rng} | {default} | {smoothing} | {spec.doc} |"
        )
    lines += [
        f"| `{QUERY_ADDRESS}` | `s...` | parameter names | — | — | send the current values of the named "
        "parameters (all when none) to the feedback target |",
        "",
        "Feedback (sent by the installation):",
        "",
        "| address | type | what |",
        "| --- | --- | --- |",
    ]
    for key, (tag, doc) in STATUS_DOCS.items():
        lines.append(f"| `/avgan/status/{key}` | `{tag}` | {doc} |")
    lines += [
        "| `/avgan/<name>` | as the parameter | a parameter's target changed (from any source): the value it moves "
        "to, once (booleans as int 0/1, enums as int index) |",
        f"| `/avgan/{SMOOTHED_PREFIX}<name>` | `f` | the smoothed value while it glides, for the parameters named "
        "in `osc.feedback_smoothed` only |",
        "",
        "Status values are sent when they change (fps in whole frames per second, level in steps of 0.01) and all "
        "of them every `osc.heartbeat_s` seconds (5 by default), so a controller that connects later catches up; "
        "`/avgan/query` asks for parameter values at any time.",
        "",
        "Controllers: `avgan.tosc` (TouchOSC), `avgan.maxpat` (Max/MSP), `avgan.controls.json` (any other).",
        "",
    ]
    return "\n".join(lines)


# -- TouchOSC -------------------------------------------------------------------------------------------

TOSC_W, TOSC_H = 1024, 768
_NS = uuid.UUID("9a1d1f3c-7f55-4d4e-9a52-6f2b3c6a0b11")


def _cdata(text: str) -> str:
    return "<![CDATA[" + str(text).replace("]]>", "]]]]><![CDATA[>") + "]]>"


def _prop(kind: str, key: str, value: Any) -> str:
    if kind == "r":
        x, y, w, h = value
        inner = f"<x>{x}</x><y>{y}</y><w>{w}</w><h>{h}</h>"
    elif kind == "c":
        r, g, b, a = value
        inner = f"<r>{r}</r><g>{g}</g><b>{b}</b><a>{a}</a>"
    elif kind == "s":
        inner = _cdata(value)
    elif kind == "b":
        inner = "1" if value else "0"
    else:
        inner = str(value)
    return f"<property type='{kind}'><key>{_cdata(key)}</key><value>{inner}</value></property>"


def _value(key: str, default: Any) -> str:
    return (
        f"<value><key>{_cdata(key)}</key><locked>0</locked><lockedDefaultCurrent>0</lockedDefaultCurrent>"
        f"<default>{_cdata(default)}</default><defaultPull>0</defaultPull></value>"
    )


def _partial(kind: str, conversion: str, value: Any, lo: float = 0, hi: float = 1) -> str:
    return (
        f"<partial><type>{kind}</type><conversion>{conversion}</conversion><value>{_cdata(value)}</value>"
        f"<scaleMin>{lo:g}</scaleMin><scaleMax>{hi:g}</scaleMax></partial>"
    )


def _osc(address: str, arguments: str, send: bool, receive: bool, trigger: tuple[str, str] = ("x", "ANY")) -> str:
    var, condition = trigger
    return (
        "<messages><osc>"
        f"<enabled>1</enabled><send>{int(send)}</send><receive>{int(receive)}</receive>"
        "<feedback>0</feedback><connections>00001</connections>"
        f"<triggers><trigger><var>{_cdata(var)}</var><condition>{condition}</condition></trigger></triggers>"
        f"<path>{_partial('CONSTANT', 'STRING', address)}</path>"
        f"<arguments>{arguments}</arguments>"
        "</osc></messages>"
    )


def _node(
    kind: str, ident: str, props: Iterable[str], values: Iterable[str], messages: str = "", children: str = ""
) -> str:
    node_id = uuid.uuid5(_NS, ident)
    out = f"<node ID='{node_id}' type='{kind}'><properties>{''.join(props)}</properties>"
    out += f"<values>{''.join(values)}</values>{messages}"
    if children:
        out += f"<children>{children}</children>"
    return out + "</node>"


def _common(name: str, frame: tuple[int, int, int, int], color: tuple[float, float, float, float]) -> list[str]:
    return [
        _prop("b", "background", True),
        _prop("c", "color", color),
        _prop("f", "cornerRadius", 1),
        _prop("r", "frame", frame),
        _prop("b", "grabFocus", True),
        _prop("b", "interactive", True),
        _prop("b", "locked", False),
        _prop("s", "name", name),
        _prop("i", "orientation", 0),
        _prop("b", "outline", True),
        _prop("i", "outlineStyle", 0),
        _prop("i", "pointerPriority", 0),
        _prop("i", "shape", 1),
        _prop("b", "visible", True),
    ]


def _label(ident: str, text: str, frame: tuple[int, int, int, int], address: str | None = None) -> str:
    props = _common(ident, frame, (0.0, 0.0, 0.0, 0.0))
    props[5] = _prop("b", "interactive", False)
    props += [_prop("i", "textSize", 14), _prop("c", "textColor", (1, 1, 1, 1)), _prop("i", "textAlignH", 1)]
    messages = ""
    if address is not None:  # shows the feedback sent to `address`
        messages = _osc(address, _partial("VALUE", "STRING", "text"), send=False, receive=True, trigger=("text", "ANY"))
    return _node("LABEL", ident, props, [_value("text", text), _value("touch", "false")], messages)


COLORS = {
    "fader": (0.2, 0.55, 0.85, 1.0),
    "toggle": (0.85, 0.6, 0.15, 1.0),
    "button": (0.8, 0.2, 0.2, 1.0),
    "choice": (0.35, 0.7, 0.35, 1.0),
    "list": (0.55, 0.4, 0.8, 1.0),
}


def _control(spec: ParamSpec, x: int, y: int, w: int, h: int) -> str:
    """The TouchOSC node(s) for one parameter inside the cell (x, y, w, h) below its label."""
    kind = control_kind(spec)
    color = COLORS[kind]
    if kind == "fader":
        lo, hi = ui_range(spec)
        conversion = "FLOAT" if spec.kind == "float" else "INTEGER"
        default = (spec.default - lo) / (hi - lo) if hi > lo else 0.0
        props = _common(spec.name, (x, y, w, h), color)
        props[8] = _prop("i", "orientation", 1)  # horizontal, increasing to the right
        props += [_prop("b", "bar", True), _prop("b", "centered", False), _prop("b", "cursor", True)]
        args = _partial("VALUE", conversion, "x", lo, hi)
        return _node(
            "FADER",
            spec.name,
            props,
            [_value("x", f"{default:g}"), _value("touch", "false")],
            _osc(spec.address, args, send=True, receive=True),
        )
    if spec.name == QUIT:
        return _quit(spec, x, y, h, color)
    if kind in ("toggle", "button"):
        props = _common(spec.name, (x, y, min(w, 160), h), color)
        props += [_prop("i", "buttonType", 1 if kind == "toggle" else 0)]
        default = "1" if kind == "toggle" and spec.default else "0"
        args = _partial("VALUE", "INTEGER", "x", 0, 1)
        return _node(
            "BUTTON",
            spec.name,
            props,
            [_value("x", default), _value("touch", "false")],
            _osc(spec.address, args, send=True, receive=kind == "toggle"),
        )
    gap = 6
    if kind == "choice":
        # a radio: x is the index of the lit step (0, 1, ...); with scale 0..1 TouchOSC sends and receives the
        # index itself (value = min + x * (max - min)), which the installation takes and sends as feedback
        n = len(spec.choices)
        props = _common(spec.name, (x, y, w, h), color)
        props += [_prop("i", "steps", n), _prop("i", "radioType", 0)]
        nodes = [
            _node(
                "RADIO",
                spec.name,
                props,
                [_value("x", str(spec.choices.index(spec.default))), _value("touch", "false")],
                _osc(spec.address, _partial("VALUE", "INTEGER", "x", 0, 1), send=True, receive=True),
            )
        ]
        bw = w // n
        for i, choice in enumerate(spec.choices):
            nodes.append(_label(f"{spec.name}:{choice}:label", choice, (x + i * bw, y, bw, h)))
        return "".join(nodes)
    # preset names: one momentary button each, sending the name as a string on press
    choices = string_choices(spec)
    n = max(1, len(choices))
    bw = (w - gap * (n - 1)) // n
    nodes = []
    for i, choice in enumerate(choices):
        ident = f"{spec.name}:{choice}"
        props = _common(ident, (x + i * (bw + gap), y, bw, h), color)
        props += [_prop("i", "buttonType", 0)]
        label = _label(f"{ident}:label", choice, (x + i * (bw + gap), y, bw, h))
        nodes.append(
            _node(
                "BUTTON",
                ident,
                props,
                [_value("x", "0"), _value("touch", "false")],
                _osc(
                    spec.address,
                    _partial("CONSTANT", "STRING", choice),
                    send=True,
                    receive=False,
                    trigger=("x", "RISE"),
                ),
            )
        )
        nodes.append(label)
    return "".join(nodes)


QUIT = "quit"
ARM_SCRIPT = """-- two-step quit: this toggle unlocks the QUIT button beside it
function onValueChanged(key)
  if key == 'x' then
    local quit = self.parent:findByName('quit')
    if quit then quit.properties.interactive = self.values.x > 0.5 end
  end
end
"""
QUIT_SCRIPT = """-- after a press, lock QUIT again (turn the unlock toggle off)
function onValueChanged(key)
  if key == 'x' and self.values.x < 0.5 then
    local arm = self.parent:findByName('quit:arm')
    if arm then arm.values.x = 0 end
  end
end
"""


def _quit(spec: ParamSpec, x: int, y: int, h: int, color: tuple[float, float, float, float]) -> str:
    """``quit`` in two deliberate steps: an "unlock" toggle (no OSC) that makes the quit button interactive."""
    arm_props = _common("quit:arm", (x, y, 150, h), COLORS["toggle"])
    arm_props += [_prop("i", "buttonType", 1), _prop("s", "script", ARM_SCRIPT)]
    arm = _node("BUTTON", "quit:arm", arm_props, [_value("x", "0"), _value("touch", "false")])
    arm_label = _label("quit:arm:label", "unlock quit", (x, y, 150, h))
    props = _common(spec.name, (x + 166, y, 160, h), color)
    props[5] = _prop("b", "interactive", False)  # locked until unlocked
    props += [_prop("i", "buttonType", 0), _prop("s", "script", QUIT_SCRIPT)]
    button = _node(
        "BUTTON",
        spec.name,
        props,
        [_value("x", "0"), _value("touch", "false")],
        _osc(spec.address, _partial("VALUE", "INTEGER", "x", 0, 1), send=True, receive=False),
    )
    return arm + arm_label + button + _label("quit:label2", "QUIT", (x + 166, y, 160, h))


def tosc_xml(specs: Mapping[str, ParamSpec] = PARAMS) -> bytes:
    """The TouchOSC document (uncompressed XML bytes)."""
    children = [_label("title", "AVGAN", (16, 8, 300, 40))]
    keys = list(STATUS_DOCS)
    sw = (TOSC_W - 32) // len(keys)
    for i, key in enumerate(keys):
        x = 16 + i * sw
        children.append(_label(f"status:{key}:name", key, (x, 52, sw - 8, 20)))
        children.append(_label(f"status:{key}", "-", (x, 72, sw - 8, 28), address=f"/avgan/status/{key}"))
    cols, cell_w, cell_h, top = 2, (TOSC_W - 48) // 2, 70, 116
    for index, spec in enumerate(specs.values()):
        col, row = index % cols, index // cols
        x, y = 16 + col * (cell_w + 16), top + row * cell_h
        unit = f" ({spec.unit})" if spec.unit else ""
        children.append(_label(f"{spec.name}:label", spec.name + unit, (x, y, cell_w, 22)))
        children.append(_control(spec, x, y + 24, cell_w, 40))
    rows = (len(specs) + cols - 1) // cols
    height = max(TOSC_H, top + rows * cell_h + 16)
    root_props = _common("avgan", (0, 0, TOSC_W, height), (0.08, 0.08, 0.1, 1.0))
    root_props[5] = _prop("b", "interactive", False)
    root = _node("GROUP", "root", root_props, [_value("touch", "false")], children="".join(children))
    return ("<?xml version='1.0' encoding='UTF-8'?>\n<lexml version='3'>" + root + "</lexml>").encode("utf-8")


def tosc_bytes(specs: Mapping[str, ParamSpec] = PARAMS) -> bytes:
    """The ``.tosc`` file: :func:`tosc_xml` zlib-compressed (deterministic)."""
    return zlib.compress(tosc_xml(specs), 9)


# -- Max/MSP --------------------------------------------------------------------------------------------


class _Patch:
    def __init__(self) -> None:
        self.boxes: list[dict[str, Any]] = []
        self.lines: list[dict[str, Any]] = []

    def box(
        self,
        maxclass: str,
        rect: tuple[float, float, float, float],
        inlets: int,
        outlets: int,
        text: str | None = None,
        outlettype: list[str] | None = None,
        **attrs: Any,
    ) -> str:
        ident = f"obj-{len(self.boxes) + 1}"
        box: dict[str, Any] = {
            "id": ident,
            "maxclass": maxclass,
            "numinlets": inlets,
            "numoutlets": outlets,
            "patching_rect": list(rect),
        }
        if outlets:
            box["outlettype"] = outlettype if outlettype is not None else [""] * outlets
        if text is not None:
            box["text"] = text
        box.update(attrs)
        self.boxes.append({"box": box})
        return ident

    def line(self, source: str, outlet: int, destination: str, inlet: int = 0) -> None:
        self.lines.append({"patchline": {"source": [source, outlet], "destination": [destination, inlet]}})


def maxpat(specs: Mapping[str, ParamSpec] = PARAMS) -> dict[str, Any]:
    """The Max patcher as a JSON-able dict."""
    p = _Patch()
    p.box(
        "comment",
        (20, 10, 700, 20),
        1,
        0,
        text="AVGAN control — generated by scripts/make_controllers.py "
        "from installation/params.py (do not edit; regenerate)",
    )
    send = p.box("newobj", (20, 40, 150, 22), 1, 0, text=f"udpsend {OSC_HOST} {OSC_PORT}")
    receive = p.box("newobj", (520, 40, 110, 22), 1, 1, text=f"udpreceive {FEEDBACK_PORT}")
    echoed = [s for s in specs.values() if s.kind not in ("trigger", "string")]
    status_keys = list(STATUS_DOCS)
    route_args = [f"/avgan/status/{k}" for k in status_keys] + [s.address for s in echoed]
    route = p.box("newobj", (520, 70, 600, 22), 2, len(route_args) + 1, text="route " + " ".join(route_args))
    p.line(receive, 0, route)
    for i, key in enumerate(status_keys):
        y = 110 + i * 28
        p.box("comment", (760, y, 70, 20), 1, 0, text=key)
        setter = p.box("newobj", (840, y, 80, 22), 2, 1, text="prepend set")
        shown = p.box("message", (930, y, 180, 22), 2, 1, text="")
        p.line(route, i, setter)
        p.line(setter, 0, shown)
    feedback_outlet = {spec.name: len(status_keys) + i for i, spec in enumerate(echoed)}
    sliders: dict[str, str] = {}
    for row, spec in enumerate(specs.values()):
        y = 110 + row * 34
        p.box("comment", (20, y, 190, 20), 1, 0, text=f"{spec.name}: {spec.range_text()}"[:60])
        message_text = f"{spec.address} $1"
        if spec.kind in ("float", "int"):
            lo, hi = ui_range(spec)
            box_class = "flonum" if spec.kind == "float" else "number"
            if spec.kind == "float":
                slider = p.box("slider", (220, y, 140, 20), 1, 1, floatoutput=1, min=lo, size=hi - lo, orientation=1)
            else:
                slider = None
            control = p.box(
                box_class, (370, y, 60, 22), 1, 2, outlettype=["", "bang"], minimum=lo, maximum=hi, parameter_enable=0
            )
            if slider is not None:
                p.line(slider, 0, control)
                sliders[spec.name] = slider
            out = 0
        elif spec.kind == "bool":
            control = p.box("toggle", (370, y, 22, 22), 1, 1, outlettype=["int"], parameter_enable=0)
            out = 0
        elif spec.kind == "trigger":
            control = p.box("button", (370, y, 22, 22), 1, 1, outlettype=["bang"], parameter_enable=0)
            message_text = spec.address
            out = 0
            if spec.name == QUIT:  # two steps: the unlock toggle opens a gate; quitting closes it again
                arm = p.box("toggle", (230, y, 22, 22), 1, 1, outlettype=["int"], parameter_enable=0)
                p.box("comment", (256, y, 80, 20), 1, 0, text="unlock quit")
                gate = p.box("newobj", (400, y, 40, 22), 2, 1, text="gate")
                close = p.box("message", (450, y, 24, 22), 2, 1, text="0")
                p.line(arm, 0, gate, 0)
                p.line(control, 0, gate, 1)
                p.line(gate, 0, close)
                p.line(close, 0, arm)
                control, out = gate, 0
        else:
            items = list(spec.choices) if spec.kind == "enum" else string_choices(spec)
            menu_items: list[str] = []
            for item in items:
                menu_items += [item, ","]
            control = p.box(
                "umenu", (370, y, 120, 22), 1, 3, outlettype=["int", "", ""], items=menu_items[:-1], parameter_enable=0
            )
            out = 1  # the symbol outlet: the choice's name
        message = p.box("message", (500, y, 200, 22), 2, 1, text=message_text)
        p.line(control, out, message)
        p.line(message, 0, send)
        if spec.name in feedback_outlet:
            setter = p.box("message", (710, y, 50, 22), 2, 1, text="set $1")
            p.line(route, feedback_outlet[spec.name], setter)
            p.line(setter, 0, control)
            if spec.name in sliders:  # the slider follows the feedback too
                p.line(setter, 0, sliders[spec.name])
    height = 140 + len(specs) * 34
    return {
        "patcher": {
            "fileversion": 1,
            "appversion": {"major": 8, "minor": 5, "revision": 0, "architecture": "x64", "modernui": 1},
            "classnamespace": "box",
            "rect": [50.0, 80.0, 1140.0, float(height)],
            "bglocked": 0,
            "openinpresentation": 0,
            "default_fontsize": 12.0,
            "default_fontface": 0,
            "default_fontname": "Arial",
            "gridonopen": 1,
            "gridsize": [15.0, 15.0],
            "gridsnaponopen": 1,
            "boxes": p.boxes,
            "lines": p.lines,
            "description": "AVGAN OSC control surface",
            "digest": "",
            "tags": "",
            "style": "",
        }
    }


# -- writing --------------------------------------------------------------------------------------------


def outputs(specs: Mapping[str, ParamSpec] = PARAMS) -> dict[str, bytes]:
    """File name -> exact bytes of every generated file."""
    return {
        "avgan.tosc": tosc_bytes(specs),
        "avgan.maxpat": (json.dumps(maxpat(specs), indent=2) + "\n").encode("utf-8"),
        "avgan.controls.json": (json.dumps(controls_json(specs), indent=2) + "\n").encode("utf-8"),
        "ADDRESS_SPACE.md": address_space_md(specs).encode("utf-8"),
    }


def stale(out_dir: Path = OUT_DIR) -> list[str]:
    """Names of generated files that are missing from ``out_dir`` or differ from what would be generated."""
    return [
        name
        for name, data in outputs().items()
        if not (out_dir / name).is_file() or (out_dir / name).read_bytes() != data
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=OUT_DIR, help="output folder (default presets/controllers)")
    parser.add_argument("--check", action="store_true", help="only check that the files are up to date")
    args = parser.parse_args(argv)
    if args.check:
        bad = stale(args.out)
        for name in bad:
            print(f"out of date: {args.out / name} (run python scripts/make_controllers.py)", file=sys.stderr)
        return 1 if bad else 0
    args.out.mkdir(parents=True, exist_ok=True)
    for name, data in outputs().items():
        (args.out / name).write_bytes(data)
        print(f"wrote {args.out / name} ({len(data)} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
