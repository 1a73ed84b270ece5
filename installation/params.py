"""Live parameters: the one declaration (:data:`PARAMS`) and the per-frame store (:class:`Parameters`).

API summary (see ``docs/CONTRACTS.md``, "Live installation")::

    from installation.params import PARAMS, Parameters

    PARAMS["sound/level"]                  # ParamSpec(name, kind, default, min, max, choices, smoothing_s, doc, unit)
    PARAMS["sound/level"].address          # "/avgan/sound/level" (OSC address = "/avgan/" + name)

    params = Parameters(initial=preset.params)      # initial values (validated, clamped)
    ok, reason = params.enqueue("sound/level", 0.5, source="osc:10.0.0.7")   # ANY thread, never blocks
    # main thread, once per frame:
    changed = params.apply_pending()       # frozenset of names whose target changed; triggers fire once
    params.tick(dt)                        # dt seconds: exponential smoothing towards the targets
    params.get("sound/level")              # current (smoothed) value
    params.target("sound/level")           # the value it is moving to
    params.changed                         # == the last apply_pending() result
    params.fired("quit")                   # True only in the frame the trigger fired
    params.snapshot()                      # read-only {name: current value}; also published to other threads
    params.published()                     # ANY thread: the snapshot of the last apply_pending()/tick()
    params.published_targets()             # ANY thread: the same for the targets (what controllers are told)
    params.section("grid")                 # {"n": 2}: the "grid/..." parameters without the prefix
    params.stats()                         # {"enqueued", "dropped", "rejected": {reason: n}, "applied", "pending"}
    params.source("scene")                 # who set it last: "osc:10.0.0.7", "keyboard", "preset", ""
    params.set("scene", "grid", immediate=True)   # main thread, bypasses the queue (start-up, tests)
    params.reset(preset.params)            # main thread: defaults + values, no smoothing, queue cleared

Threads: :meth:`Parameters.enqueue` and :meth:`Parameters.published` may be called from any thread (the OSC
server thread, a keyboard handler); everything else belongs to the main (render) thread. ``enqueue`` validates
(type, NaN/inf, choices), clamps numbers to the declared range and appends to a bounded queue; when the queue
is full the *oldest* entry is dropped and counted (the newest ``queue_size`` entries survive, so the latest
values still win after a flood). The critical section is a few list operations under a lock that only other
``enqueue`` calls and the once-per-frame swap in ``apply_pending`` take: nothing ever waits on I/O or on the
render loop.

Kinds and the values they take (``ParamSpec.coerce``):

* ``float``: int or float (not bool), finite; clamped to [min, max]. Smoothed when ``smoothing_s > 0``.
* ``int``: int, or a finite float rounded to the nearest integer (TouchOSC faders send floats); clamped.
* ``bool``: bool, or a finite number (>= 0.5 is true: TouchOSC sends 0.0/1.0, Max sends 0/1).
* ``enum``: one of ``choices`` by name (string), or by index (int or integral float, as TouchOSC radios
  and Max umenus send).
* ``string``: a string of at most :data:`MAX_STRING` characters matching ``pattern`` (if given). Strings are
  commands: every accepted message counts as a change, even when equal to the current value.
* ``trigger``: ``True`` (no OSC argument, or a non-zero number, or true). It fires once in the next frame;
  ``False`` (a button's release, 0) is accepted and ignored.
"""

from __future__ import annotations

import math
import re
import threading
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Literal, NamedTuple

Kind = Literal["float", "int", "bool", "enum", "string", "trigger"]
KINDS: tuple[str, ...] = ("float", "int", "bool", "enum", "string", "trigger")
PREFIX = "/avgan/"
"""OSC address prefix: the address of parameter ``name`` is ``PREFIX + name``."""
MAX_STRING = 128
"""Longest accepted string value, characters."""
INT32_MAX = 2**31 - 1


class ParamError(ValueError):
    """A value a parameter cannot take. ``reason`` is a short counter key (e.g. ``"wrong_type"``)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class ParamSpec:
    """One live parameter, declared once; presets, OSC, OSCQuery, the overlay and the controllers read it.

    Attributes:
        name: ``"group/name"`` path (letters, digits, ``_``, ``/``); OSC address ``/avgan/<name>``.
        kind: one of :data:`KINDS` (see the module docstring for what each accepts).
        default: initial value (already valid).
        min, max: inclusive range for ``float`` / ``int`` (``None``: unbounded on that side).
        choices: the names an ``enum`` takes, in index order.
        smoothing_s: time constant of the exponential approach of the current value to a new target,
            seconds (``float`` only; 0 = jump).
        doc: one-line description (OSCQuery DESCRIPTION, README, controller labels).
        unit: unit of the value, e.g. ``"s"``, ``"dBFS"``, ``"semitones"`` (``""``: none / dimensionless).
        pattern: ``string`` only: a regular expression the whole value must match.
    """

    name: str
    kind: Kind
    default: Any
    min: float | None = None
    max: float | None = None
    choices: tuple[str, ...] = ()
    smoothing_s: float = 0.0
    doc: str = ""
    unit: str = ""
    pattern: str | None = None

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[a-z][a-z0-9_]*(/[a-z0-9_]+)*", self.name):
            raise ValueError(f"parameter name {self.name!r} must be lower-case words separated by '/'")
        if self.kind not in KINDS:
            raise ValueError(f"parameter {self.name}: kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
        if self.kind == "enum" and not self.choices:
            raise ValueError(f"parameter {self.name}: an enum needs choices")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"parameter {self.name}: min {self.min} > max {self.max}")
        if self.smoothing_s < 0 or (self.smoothing_s > 0 and self.kind != "float"):
            raise ValueError(f"parameter {self.name}: smoothing_s must be >= 0 and only set on floats")
        if self.kind != "trigger":
            ok, reason, value = self.validate(self.default, clamp=False)
            if not ok or value != self.default:
                raise ValueError(f"parameter {self.name}: default {self.default!r} is not valid ({reason})")

    # -- derived ----------------------------------------------------------------------------------

    @property
    def address(self) -> str:
        """The OSC address, ``/avgan/<name>``."""
        return PREFIX + self.name

    @property
    def osc_type(self) -> str:
        """The OSC 1.0 type tag of the value (OSCQuery TYPE): ``f``, ``i``, ``T`` (bool), ``s``, or ``N`` (trigger)."""
        return {"float": "f", "int": "i", "bool": "T", "enum": "s", "string": "s", "trigger": "N"}[self.kind]

    @property
    def is_command(self) -> bool:
        """Triggers and strings: every accepted value counts as a change (they are actions, not states)."""
        return self.kind in ("trigger", "string")

    def range_text(self) -> str:
        """The allowed values in words, e.g. ``"0 to 1 s"``, ``"one of portrait, grid, morph"``, ``"true/false"``."""
        if self.kind in ("float", "int"):
            unit = f" {self.unit}" if self.unit else ""
            lo = "-inf" if self.min is None else _num(self.min)
            hi = "+inf" if self.max is None else _num(self.max)
            return f"{self.kind} {lo} to {hi}{unit}"
        if self.kind == "enum":
            return "one of " + ", ".join(self.choices)
        if self.kind == "bool":
            return "true/false"
        if self.kind == "string":
            pattern = f" matching {self.pattern}" if self.pattern else ""
            return f"a string of at most {MAX_STRING} characters{pattern}"
        return "a trigger (no value, or true)"

    def format(self, value: Any) -> str:
        """``value`` for the overlay, e.g. ``"0.80"``, ``"-50.0 dBFS"``, ``"on"``, ``"portrait"``."""
        if self.kind == "float":
            text = f"{value:.2f}" if abs(value) < 10 else f"{value:.1f}"
        elif self.kind == "bool":
            text = "on" if value else "off"
        else:
            text = str(value)
        return f"{text} {self.unit}" if self.unit and self.kind in ("float", "int") else text

    def coerce(self, value: Any, *, clamp: bool = True) -> Any:
        """``value`` converted to this parameter's Python type (float/int/bool/str), clamped when ``clamp``.

        Raises:
            ParamError: with ``reason`` one of ``wrong_type``, ``not_finite``, ``out_of_range`` (``clamp=False``
                only), ``bad_choice``, ``too_long``, ``bad_value``; the message names the parameter and the
                allowed range.
        """
        ok, reason, result = self.validate(value, clamp=clamp)
        if not ok:
            raise ParamError(reason, f"{self.name}: {value!r} is not valid ({reason}); expected {self.range_text()}")
        return result

    def validate(self, value: Any, clamp: bool = True) -> tuple[bool, str, Any]:
        """:meth:`coerce` without raising (the hot path of :meth:`Parameters.enqueue`): ``(ok, reason, value)``.

        ``reason`` is ``"ok"``/``"clamped"`` when ``ok``, else the rejection reason; ``value`` is ``None`` then.
        """
        kind = self.kind
        if kind in ("float", "int"):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                return False, "wrong_type", None
            if isinstance(value, float) and not math.isfinite(value):
                return False, "not_finite", None
            number: float | int
            if kind == "float":
                number = float(value)
            else:
                number = value if isinstance(value, int) else int(round(value))
            lo, hi = self.min, self.max
            if (lo is not None and number < lo) or (hi is not None and number > hi):
                if not clamp:
                    return False, "out_of_range", None
                if lo is not None and number < lo:
                    number = lo
                if hi is not None and number > hi:
                    number = hi
                number = float(number) if kind == "float" else int(number)
                return True, "clamped", number
            return True, "ok", number
        if kind == "bool":
            if isinstance(value, bool):
                return True, "ok", value
            if isinstance(value, (int, float)):
                if isinstance(value, float) and not math.isfinite(value):
                    return False, "not_finite", None
                return True, "ok", value >= 0.5
            return False, "wrong_type", None
        if kind == "enum":
            if isinstance(value, str):
                if value in self.choices:
                    return True, "ok", value
                return False, "bad_choice", None
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                return False, "wrong_type", None
            if isinstance(value, float) and not math.isfinite(value):
                return False, "not_finite", None
            index = int(round(value))
            if index != value or not 0 <= index < len(self.choices):
                return False, "bad_choice", None
            return True, "ok", self.choices[index]
        if kind == "string":
            if not isinstance(value, str):
                return False, "wrong_type", None
            if len(value) > MAX_STRING:
                return False, "too_long", None
            if self.pattern is not None and not re.fullmatch(self.pattern, value):
                return False, "bad_value", None
            return True, "ok", value
        # trigger
        if value is None or value is True:
            return True, "ok", True
        if value is False:
            return True, "ok", False
        if isinstance(value, (int, float)):
            if isinstance(value, float) and not math.isfinite(value):
                return False, "not_finite", None
            return True, "ok", value != 0
        return False, "wrong_type", None


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


_DECLARED: tuple[ParamSpec, ...] = (
    ParamSpec("scene", "enum", "portrait", choices=("portrait", "grid", "morph"), doc="current scene"),
    # not "scene/crossfade_s": /avgan/scene is a method (the enum), so it cannot also be a container (OSCQuery
    # clients such as Chataigne would show it as a folder and lose the scene selector)
    ParamSpec("crossfade_s", "float", 0.1, 0.0, 2.0, unit="s", doc="crossfade between successive generated frames"),
    ParamSpec("grid/n", "int", 2, 1, 4, doc="grid scene: n x n faces from the same voice with different noise"),
    ParamSpec(
        "morph/trail",
        "float",
        0.5,
        0.0,
        1.0,
        smoothing_s=0.2,
        doc="morph scene: length of the trail (0 = none, 1 = longest)",
    ),
    ParamSpec("noise/seed", "int", 0, 0, INT32_MAX, doc="base seed of the noise input (a new seed = new faces)"),
    ParamSpec(
        "noise/walk_speed",
        "float",
        0.25,
        0.0,
        2.0,
        smoothing_s=0.5,
        unit="keys/s",
        doc="speed of the latent walk through seeded noise keys (0 = hold; 0.25 = a new key every 4 s)",
    ),
    ParamSpec("sound/on", "bool", True, doc="generated sound on/off"),
    ParamSpec("sound/level", "float", 0.8, 0.0, 1.0, smoothing_s=0.05, doc="output level of the generated sound"),
    ParamSpec("sound/mix", "float", 0.5, 0.0, 1.0, smoothing_s=0.1, doc="dry/wet mix (0 = dry voice, 1 = all echo)"),
    ParamSpec(
        "sound/pitch", "float", 0.0, -12.0, 12.0, smoothing_s=0.1, unit="semitones", doc="pitch shift of the grains"
    ),
    ParamSpec(
        "sound/density",
        "float",
        12.0,
        1.0,
        60.0,
        smoothing_s=0.2,
        unit="grains/s",
        doc="grain density of the granular echo",
    ),
    ParamSpec(
        "sound/answer",
        "enum",
        "answer",
        choices=("answer", "loop", "echo"),
        doc="with a bundle that makes a voice: answer when the visitor stops, loop it while its face shows, or "
        "the echo only",
    ),
    ParamSpec("overlay", "bool", False, doc="show the overlay (fps, input level, backend)"),
    ParamSpec("blackout", "bool", False, doc="black screen (the installation keeps running)"),
    ParamSpec("brightness", "float", 1.0, 0.0, 1.0, smoothing_s=0.3, doc="picture brightness"),
    ParamSpec(
        "vad/threshold_db",
        "float",
        -50.0,
        -80.0,
        0.0,
        unit="dBFS",
        doc="absolute level the voice must exceed to open the gate (VadParams.on_min_db)",
    ),
    ParamSpec(
        "scene_class",
        "string",
        "",
        pattern=r"[A-Za-z0-9_.:, -]*",
        doc="bundles with a class input (scenes): pin a class ('cello'), blend ('cello:0.7 violin:0.3') or follow "
        "the sound ('sound' or empty)",
    ),
    ParamSpec(
        "preset/load",
        "string",
        "",
        pattern=r"[A-Za-z0-9_-]*",
        doc="load the named preset from presets/ (names only, no paths)",
    ),
    ParamSpec("quit", "trigger", False, doc="quit the installation"),
    # capture booth (run.py capture) and rating station (run.py rate): buttons, so operators and TouchOSC
    # pages drive them exactly like the keyboard and touch screen do
    ParamSpec("capture/consent", "trigger", False, doc="capture: the visitor consents (as the Y key)"),
    ParamSpec("capture/decline", "trigger", False, doc="capture: the visitor declines; nothing is kept (as N)"),
    ParamSpec("capture/go", "trigger", False, doc="capture: start the 3-2-1 countdown of a take (as Space)"),
    ParamSpec("capture/next", "trigger", False, doc="capture: end this participant, welcome the next (as Enter)"),
    ParamSpec("rate/1", "trigger", False, doc="rating station: score 1 (bad) for the face shown"),
    ParamSpec("rate/2", "trigger", False, doc="rating station: score 2 (poor)"),
    ParamSpec("rate/3", "trigger", False, doc="rating station: score 3 (fair)"),
    ParamSpec("rate/4", "trigger", False, doc="rating station: score 4 (good)"),
    ParamSpec("rate/5", "trigger", False, doc="rating station: score 5 (excellent)"),
    ParamSpec("rate/skip", "trigger", False, doc="rating station: skip this face without a score"),
    ParamSpec("rate/replay", "trigger", False, doc="rating station: play the voice again"),
)

PARAMS: Mapping[str, ParamSpec] = MappingProxyType({spec.name: spec for spec in _DECLARED})
"""Every live parameter by name, in declaration order (read-only)."""


def spec_for_address(address: str, specs: Mapping[str, ParamSpec] = PARAMS) -> ParamSpec | None:
    """The spec whose OSC address is ``address`` (``/avgan/<name>``), or ``None``."""
    if not address.startswith(PREFIX):
        return None
    return specs.get(address[len(PREFIX) :])


class EnqueueResult(NamedTuple):
    """What :meth:`Parameters.enqueue` did: ``ok`` and a short ``reason``.

    ``reason`` is ``"ok"`` or ``"clamped"`` when accepted, otherwise a counter key: ``unknown_param``,
    ``wrong_type``, ``not_finite``, ``bad_choice``, ``too_long``, ``bad_value``.
    """

    ok: bool
    reason: str


class Parameters:
    """Typed, ranged, smoothed parameter values; written from any thread, applied once per frame.

    Args:
        initial: starting values by name (validated and clamped; unknown names raise).
        specs: the declaration (default :data:`PARAMS`).
        queue_size: capacity of the pending queue; when full the oldest entry is dropped (counted).

    Raises:
        ParamError: ``initial`` names an unknown parameter or has an invalid value.
    """

    def __init__(
        self,
        initial: Mapping[str, Any] | None = None,
        specs: Mapping[str, ParamSpec] = PARAMS,
        queue_size: int = 1024,
    ) -> None:
        if queue_size < 1:
            raise ValueError(f"queue_size must be >= 1, got {queue_size}")
        self.specs = specs
        self.queue_size = int(queue_size)
        self._lock = threading.Lock()
        self._queue: deque[tuple[str, Any, str]] = deque()
        self._dropped = 0
        self._enqueued = 0
        self._rejected: dict[str, int] = {}
        self._applied = 0
        self._smoothed = tuple(name for name, s in specs.items() if s.kind == "float" and s.smoothing_s > 0)
        self._target: dict[str, Any] = {}
        self._current: dict[str, Any] = {}
        self._source: dict[str, str] = {}
        self._fired: set[str] = set()
        self._fired_last: tuple[str, ...] = ()
        self.changed: frozenset[str] = frozenset()
        """Names whose target changed in the last :meth:`apply_pending` (triggers included)."""
        self.reset(initial)

    # -- any thread ---------------------------------------------------------------------------------

    def enqueue(self, name: str, value: Any, source: str = "") -> EnqueueResult:
        """Validate, clamp and queue ``value`` for parameter ``name``; applied at the next :meth:`apply_pending`.

        Thread-safe and non-blocking (see the module docstring). ``source`` (e.g. ``"osc:10.0.0.7"``,
        ``"keyboard"``, ``"preset"``) is kept as the parameter's last source.

        Returns:
            ``EnqueueResult(ok, reason)``; rejected values are counted per reason in :meth:`stats`.
        """
        spec = self.specs.get(name)
        if spec is None:
            return self._reject("unknown_param")
        ok, reason, coerced = spec.validate(value, clamp=True)
        if not ok:
            return self._reject(reason)
        with self._lock:
            if len(self._queue) >= self.queue_size:
                self._queue.popleft()
                self._dropped += 1
            self._queue.append((name, coerced, source))
            self._enqueued += 1
        return EnqueueResult(True, reason)

    def published(self) -> Mapping[str, Any]:
        """The read-only snapshot published by the last :meth:`apply_pending` / :meth:`tick` (any thread)."""
        return self._published

    def published_targets(self) -> Mapping[str, Any]:
        """Like :meth:`published`, but the *targets* (what smoothed parameters move to; any thread): what
        controllers are told (OSC feedback, ``/avgan/query``, OSCQuery VALUE), so a fader is never sent a value
        from the middle of a glide."""
        return self._published_targets

    def stats(self) -> dict[str, Any]:
        """Counters: ``enqueued``, ``dropped`` (queue full, oldest lost), ``rejected`` {reason: n}, ``applied``."""
        with self._lock:
            return {
                "enqueued": self._enqueued,
                "dropped": self._dropped,
                "rejected": dict(self._rejected),
                "applied": self._applied,
                "pending": len(self._queue),
            }

    def _reject(self, reason: str) -> EnqueueResult:
        with self._lock:
            self._rejected[reason] = self._rejected.get(reason, 0) + 1
        return EnqueueResult(False, reason)

    # -- main thread --------------------------------------------------------------------------------

    def reset(self, values: Mapping[str, Any] | None = None) -> None:
        """Set every parameter to its default, then to ``values`` (validated, clamped), without smoothing.

        Clears the pending queue. Main thread.

        Raises:
            ParamError: an unknown name or an invalid value.
        """
        target = {name: spec.default for name, spec in self.specs.items()}
        for name, value in (values or {}).items():
            spec = self.specs.get(name)
            if spec is None:
                raise ParamError("unknown_param", f"unknown parameter {name!r} (known: {', '.join(self.specs)})")
            target[name] = spec.coerce(value, clamp=True)
        for name, spec in self.specs.items():
            if spec.kind == "trigger":
                target[name] = False
        with self._lock:
            self._queue.clear()
        self._target = target
        self._current = dict(target)
        self._source = {}
        self._fired = set()
        self._fired_last = ()
        self.changed = frozenset()
        self._publish()

    def set(self, name: str, value: Any, source: str = "code", immediate: bool = False) -> bool:
        """Set the target of ``name`` now (main thread; bypasses the queue). Returns whether the target changed.

        ``immediate`` also jumps the current value (no smoothing). The change appears in :attr:`changed`
        only from the next :meth:`apply_pending` on; use this for start-up and tests, :meth:`enqueue` otherwise.

        Raises:
            ParamError: an unknown name, an invalid value, or a trigger (triggers fire through :meth:`enqueue`).
        """
        spec = self.specs.get(name)
        if spec is None:
            raise ParamError("unknown_param", f"unknown parameter {name!r} (known: {', '.join(self.specs)})")
        if spec.kind == "trigger":
            raise ParamError("wrong_type", f"{name} is a trigger: fire it with enqueue({name!r}, True)")
        value = spec.coerce(value, clamp=True)
        changed = self._target[name] != value
        self._target[name] = value
        self._source[name] = source
        if immediate or name not in self._smoothed:
            self._current[name] = value
        self._publish()
        return changed

    def apply_pending(self) -> frozenset[str]:
        """Apply the queued values (main thread, once per frame): the latest value per name wins.

        Returns (and stores in :attr:`changed`) the names whose target changed; a trigger is in it, and
        :meth:`fired` is true for it, in exactly the frame after it was enqueued (several presses in one
        frame fire once). Strings are in it whenever one was received. Non-smoothed parameters jump to
        their target at once; smoothed floats move in :meth:`tick`.
        """
        with self._lock:
            if not self._queue:
                items = None
            else:
                items = self._queue
                self._queue = deque()
        self._fired.clear()
        released = bool(self._fired_last)
        for name in self._fired_last:
            self._target[name] = self._current[name] = False
        self._fired_last = ()
        if not items:
            self.changed = frozenset()
            self._publish(targets=released)
            return self.changed
        latest: dict[str, tuple[Any, str]] = {}
        pressed: set[str] = set()
        for name, value, source in items:
            if self.specs[name].kind == "trigger":
                if value:
                    pressed.add(name)
                    latest[name] = (True, source)
                continue
            latest[name] = (value, source)
        changed: set[str] = set()
        for name, (value, source) in latest.items():
            spec = self.specs[name]
            self._source[name] = source
            if spec.kind == "trigger":
                if name in pressed:
                    self._target[name] = self._current[name] = True
                    self._fired.add(name)
                    changed.add(name)
                continue
            if spec.is_command or self._target[name] != value:
                changed.add(name)
            self._target[name] = value
            if name not in self._smoothed:
                self._current[name] = value
        self._fired_last = tuple(self._fired)
        self._applied += len(items)
        self.changed = frozenset(changed)
        self._publish()
        return self.changed

    def tick(self, dt: float) -> None:
        """Advance smoothing by ``dt`` seconds (main thread, once per frame; ``dt <= 0`` does nothing).

        Each smoothed float moves exponentially towards its target with its spec's time constant:
        ``current = target + (current - target) * exp(-dt / smoothing_s)``; it snaps to the target once
        within 1e-6 of the parameter's range.
        """
        if not dt > 0:
            return
        moved = False
        for name in self._smoothed:
            current, target = self._current[name], self._target[name]
            if current == target:
                continue
            spec = self.specs[name]
            value = target + (current - target) * math.exp(-dt / spec.smoothing_s)
            span = (spec.max - spec.min) if spec.max is not None and spec.min is not None else 1.0
            if abs(value - target) <= 1e-6 * span:
                value = target
            self._current[name] = value
            moved = True
        if moved:
            self._publish(targets=False)

    def get(self, name: str) -> Any:
        """The current (smoothed) value of ``name`` (main thread). Raises ``KeyError`` for an unknown name."""
        return self._current[name]

    def target(self, name: str) -> Any:
        """The value ``name`` is moving towards (equals :meth:`get` for non-smoothed parameters)."""
        return self._target[name]

    def source(self, name: str) -> str:
        """Who set ``name`` last (the ``source`` given to :meth:`enqueue` / :meth:`set`; ``""`` = initial value)."""
        return self._source.get(name, "")

    def fired(self, name: str) -> bool:
        """Whether trigger ``name`` fired in the last :meth:`apply_pending`."""
        return name in self._fired

    def snapshot(self) -> Mapping[str, Any]:
        """Read-only ``{name: current value}`` of every parameter (a new mapping per call; cheap)."""
        return MappingProxyType(dict(self._current))

    def section(self, group: str) -> dict[str, Any]:
        """Current values of the ``group/...`` parameters, prefix removed: ``section("grid") == {"n": 2}``."""
        prefix = group.rstrip("/") + "/"
        return {name[len(prefix) :]: value for name, value in self._current.items() if name.startswith(prefix)}

    def _publish(self, targets: bool = True) -> None:
        self._published: Mapping[str, Any] = MappingProxyType(dict(self._current))
        if targets:
            self._published_targets: Mapping[str, Any] = MappingProxyType(dict(self._target))


def iter_specs(kinds: Iterable[str] | None = None, specs: Mapping[str, ParamSpec] = PARAMS) -> list[ParamSpec]:
    """The specs (of the given ``kinds``, default all) in declaration order."""
    wanted = set(kinds) if kinds is not None else None
    return [s for s in specs.values() if wanted is None or s.kind in wanted]
