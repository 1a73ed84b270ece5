"""OSC out: status, events and parameter values sent to the controller (TouchOSC, Max) -- :class:`Feedback`.

Feedback (to the preset's ``feedback_host:feedback_port``), designed so that controllers can follow it:

* ``/avgan/<name> value`` once for every parameter whose *target* changed (from OSC, the keyboard, a preset
  load), at the next round (at most ``rate_hz`` rounds per second): the value the parameter is moving to, never
  one from the middle of a smoothing glide, so a TouchOSC fader or a Max slider stays where the operator put it
  (and shows the clamped value when it was sent one out of range). Booleans go as int 0/1 and enums as their
  int index, which TouchOSC toggles/radios and Max toggles/umenus take directly.
* ``/avgan/status/smoothed/<name> value``: the smoothed (current) value of the parameters named in
  ``smoothed`` (preset key ``osc.feedback_smoothed``; none by default), while it moves and once it arrives.
* ``/avgan/status/{fps,level,scene,input,backend}`` only when the value changed (after rounding to
  :data:`STATUS_RESOLUTION`: whole frames per second, level to 0.01), plus all of them every ``heartbeat_s``
  (a controller that connects later, or lost a datagram, catches up); ``/avgan/status/event`` per event.
* the answers to ``/avgan/query`` (the targets too).

Measured (``tests/test_osc.py``): a minute at 60 frames/s with steady status (fps jittering by +-0.4) and one
scene change sends 61 status messages (12 heartbeats of 5 values, and the change) instead of the ~3 000 of a
status re-sent every round.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from collections.abc import Iterable, Mapping
from typing import Any

from pythonosc.udp_client import SimpleUDPClient

from installation.params import PARAMS, PREFIX, ParamSpec
from installation.telemetry import RateLimitedLog

log = logging.getLogger(__name__)
_UNSET = object()

STATUS_KEYS: tuple[str, ...] = ("fps", "level", "scene", "input", "backend")
"""Status values sent as ``/avgan/status/<key>`` (plus ``/avgan/status/event`` for events)."""
STATUS_RESOLUTION: dict[str, float] = {"fps": 1.0, "level": 0.01}
"""Status values are rounded to these steps before they are compared and sent (fps jitters by fractions of a frame;
the level meter needs no more than 1 %)."""
SMOOTHED_PREFIX = "status/smoothed/"
"""Smoothed values of ``osc.feedback_smoothed`` parameters go to ``/avgan/status/smoothed/<name>``."""
STATUS_DOCS: dict[str, tuple[str, str]] = {
    "fps": ("f", "frames per second drawn (last second)"),
    "level": ("f", "input level, 0-1 (the fast loudness envelope)"),
    "scene": ("s", "current scene"),
    "input": ("s", "input device state: ok, file, reconnecting, lost"),
    "backend": ("s", "generator backend, e.g. onnxruntime-cpu"),
    "event": ("s", "one line per notable event (device lost/back, preset loaded, errors)"),
}


def _plain(value: Any) -> Any:
    """A status value as a plain Python int/float/str (numpy scalars unwrapped; anything else as text)."""
    if hasattr(value, "item") and callable(value.item):
        try:
            value = value.item()
        except (TypeError, ValueError):
            pass
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, (int, float, str)):
        return value
    return str(value)


def _rounded(key: str, value: Any) -> Any:
    step = STATUS_RESOLUTION.get(key)
    if step is None or not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        return value
    digits = max(0, -math.floor(math.log10(step)))
    rounded = round(round(value / step) * step, digits)
    return int(rounded) if step >= 1 else float(rounded)


def wire_value(spec: ParamSpec, value: Any) -> Any:
    """A parameter value as sent in feedback: bool -> int 0/1, enum -> int index, others unchanged."""
    if spec.kind in ("bool", "trigger"):
        return int(bool(value))
    if spec.kind == "enum":
        return spec.choices.index(value) if value in spec.choices else 0
    return value


class Feedback:
    """Sends status, events and parameter values to the controller (python-osc ``SimpleUDPClient``).

    Never raises on sending: errors (unreachable host, full socket buffer) are counted and logged
    rate-limited. The socket is non-blocking.

    Args:
        host, port: the feedback target (TouchOSC's incoming port is 9000 by default).
        rate_hz: most feedback rounds (changed status values, changed parameters, smoothed values) per second.
        specs: the parameter declaration (for wire formats).
        query_rate: most messages per second answering ``/avgan/query`` (token bucket, burst = 2 s worth);
            bounds what a flood of queries can make us send.
        max_events: events queued before the oldest is dropped.
        heartbeat_s: every status value is re-sent this often even when unchanged, seconds (0: never).
        smoothed: parameters whose smoothed value is also sent (``/avgan/status/smoothed/<name>``).

    Raises:
        OSError: ``host`` cannot be resolved.
        KeyError: ``smoothed`` names an unknown parameter.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 9000,
        rate_hz: float = 10.0,
        specs: Mapping[str, ParamSpec] = PARAMS,
        query_rate: float = 100.0,
        max_events: int = 32,
        heartbeat_s: float = 5.0,
        smoothed: Iterable[str] = (),
    ) -> None:
        self.host, self.port = host, int(port)
        self.interval_s = 1.0 / float(rate_hz)
        self.heartbeat_s = float(heartbeat_s)
        self.specs = specs
        self.smoothed = tuple(smoothed)
        for name in self.smoothed:
            if name not in specs:
                raise KeyError(f"osc.feedback_smoothed: unknown parameter {name!r}")
        self._client = SimpleUDPClient(host, self.port)
        self._lock = threading.Lock()
        self._status: dict[str, Any] = {}
        self._status_sent: dict[str, Any] = {}
        self._smoothed_sent: dict[str, Any] = {}
        self._events: deque[str] = deque()
        self._max_events = int(max_events)
        self._changed: set[str] = set()
        self._last = -math.inf
        self._last_heartbeat = -math.inf
        self._rate = float(query_rate)
        self._tokens = 2.0 * self._rate
        self._token_time = time.monotonic()
        self.sent = 0
        self.errors = 0
        self.throttled = 0
        self.events_dropped = 0
        self._log = RateLimitedLog(log, f"osc feedback to {host}:{port}")

    def status(self, **values: Any) -> None:
        """Set status values (keys from :data:`STATUS_KEYS`; floats/ints/strings); sent by :meth:`pump` when changed.

        Raises:
            KeyError: an unknown key.
        """
        for key in values:
            if key not in STATUS_KEYS:
                raise KeyError(f"unknown status key {key!r} (known: {', '.join(STATUS_KEYS)})")
        with self._lock:
            self._status.update({key: _rounded(key, _plain(value)) for key, value in values.items()})

    def status_values(self) -> dict[str, Any]:
        """The last status values set, rounded as sent (any thread)."""
        with self._lock:
            return dict(self._status)

    def event(self, text: str) -> None:
        """Queue one event line (any thread); sent as ``/avgan/status/event`` by the next :meth:`pump`."""
        with self._lock:
            if len(self._events) >= self._max_events:
                self._events.popleft()
                self.events_dropped += 1
            self._events.append(str(text)[:200])

    def note_changes(self, names: Iterable[str]) -> None:
        """Remember parameters whose target changed this frame; their targets go out at the next round."""
        self._changed.update(n for n in names if n in self.specs and self.specs[n].kind != "trigger")

    def pump(
        self,
        targets: Mapping[str, Any] | None = None,
        now: float | None = None,
        current: Mapping[str, Any] | None = None,
    ) -> int:
        """Send what is due (main thread, once per frame). Returns the number of messages sent.

        Events go out at once (up to 8 per call). At most ``rate_hz`` times per second: the parameters noted by
        :meth:`note_changes` with their value in ``targets`` (``Parameters.published_targets()``), the status
        values that changed since they were last sent (all of them every ``heartbeat_s``), and the smoothed
        values of :attr:`smoothed` from ``current`` (``Parameters.published()``) that changed.

        Args:
            targets: parameter targets by name. now: ``time.monotonic()`` seconds (tests pass their own clock).
            current: current (smoothed) parameter values by name.
        """
        now = time.monotonic() if now is None else now
        sent = 0
        with self._lock:
            events = [self._events.popleft() for _ in range(min(8, len(self._events)))]
        for text in events:
            sent += self._send(PREFIX + "status/event", text)
        if now - self._last < self.interval_s:
            return sent
        self._last = now
        heartbeat = self.heartbeat_s > 0 and now - self._last_heartbeat >= self.heartbeat_s
        if heartbeat:
            self._last_heartbeat = now
        for key, value in self.status_values().items():
            if heartbeat or self._status_sent.get(key, _UNSET) != value:
                self._status_sent[key] = value
                sent += self._send(f"{PREFIX}status/{key}", value)
        if targets is not None and self._changed:
            changed, self._changed = self._changed, set()
            for name in sorted(changed):
                if name in targets:
                    sent += self._send(self.specs[name].address, wire_value(self.specs[name], targets[name]))
        if current is not None:
            for name in self.smoothed:
                value = current.get(name, _UNSET)
                if value is not _UNSET and self._smoothed_sent.get(name, _UNSET) != value:
                    self._smoothed_sent[name] = value
                    sent += self._send(PREFIX + SMOOTHED_PREFIX + name, wire_value(self.specs[name], value))
        self._log.flush()
        return sent

    def send_values(self, names: Iterable[str], values: Mapping[str, Any]) -> int:
        """Send ``/avgan/<name> value`` for each of ``names`` now (any thread; rate-limited by ``query_rate``).

        ``values``: the values to send by name (the server answers ``/avgan/query`` with the targets)."""
        sent = 0
        for name in names:
            spec = self.specs.get(name)
            if spec is None or name not in values or spec.kind == "trigger":
                continue
            if not self._take_token():
                with self._lock:
                    self.throttled += 1
                continue
            sent += self._send(spec.address, wire_value(spec, values[name]))
        return sent

    def _take_token(self) -> bool:
        with self._lock:
            now = time.monotonic()
            self._tokens = min(2.0 * self._rate, self._tokens + (now - self._token_time) * self._rate)
            self._token_time = now
            if self._tokens >= 1.0:
                self._tokens -= 1.0
                return True
            return False

    def _send(self, address: str, value: Any) -> int:
        try:
            self._client.send_message(address, value)
        except (OSError, ValueError, TypeError) as exc:  # BlockingIOError, unreachable, bad value: never raise
            with self._lock:
                self.errors += 1
            self._log.note(type(exc).__name__, str(exc))
            return 0
        with self._lock:
            self.sent += 1
        return 1

    def stats(self) -> dict[str, int]:
        """``{"sent", "errors", "throttled", "events_dropped"}``."""
        with self._lock:
            return {
                "sent": self.sent,
                "errors": self.errors,
                "throttled": self.throttled,
                "events_dropped": self.events_dropped,
            }

    def close(self) -> None:
        """Close the socket."""
        try:
            self._client._sock.close()
        except OSError:
            pass
