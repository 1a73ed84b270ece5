"""The OSC server: one daemon thread receiving UDP, turning valid messages into ``Parameters.enqueue`` calls.

Robustness (the server runs for days and anyone on the network may send it anything):

* one thread: python-osc's ``BlockingOSCUDPServer`` (never ``ThreadingOSCUDPServer``, whose thread
  objects pile up under a flood) served by one daemon thread; it handles one datagram at a time and
  never waits on the render loop: handlers only call ``Parameters.enqueue`` (bounded, drop-oldest).
* decoding is :func:`installation.osc.packet.decode_packet`. Routing uses python-osc's
  ``Dispatcher(strict_timing=False)`` (``handlers_for_address``; its OSC pattern matching for addresses
  with wildcards); its ``call_handlers_for_packet`` is not used, so no handler ever sleeps until a time tag.
* every datagram is counted, and every item in it ends in exactly one outcome: ``handled``, ``ignored``
  (a trigger's release), or a rejection reason (:data:`REJECTIONS`): malformed packets, non-UTF-8
  strings, bad addresses and patterns, unknown addresses, wrong argument count or type, NaN/inf, bad enum
  choices, bundles time-tagged more than ``future_tolerance_s`` in the future (rejected: we never
  schedule), senders outside the allowlist. Rejections are logged rate-limited
  (:class:`installation.telemetry.RateLimitedLog`: the first of each reason at once, then one summary line per
  ``log_interval_s``). Nothing a sender does raises out of the thread.
"""

from __future__ import annotations

import ipaddress
import logging
import math
import socket
import socketserver
import threading
import time
from collections.abc import Iterable, Mapping
from typing import Any

from pythonosc import osc_server
from pythonosc.dispatcher import Dispatcher, Handler

from engine.errors import UserError
from installation.osc.feedback import Feedback
from installation.osc.packet import Message, Rejected, decode_packet
from installation.params import PARAMS, PREFIX, Parameters, ParamSpec
from installation.telemetry import RateLimitedLog

log = logging.getLogger(__name__)

QUERY_ADDRESS = PREFIX + "query"
"""``/avgan/query [name ...]``: send current parameter values to the feedback target."""
REJECTIONS: tuple[str, ...] = (
    "not_allowed",
    "malformed",
    "non_utf8",
    "bad_address",
    "bad_pattern",
    "future_timetag",
    "unknown_address",
    "wrong_count",
    "wrong_type",
    "not_finite",
    "bad_choice",
    "too_long",
    "bad_value",
    "unknown_param",
    "no_feedback",
    "internal_error",
)
"""Every rejection reason the server counts (keys of ``stats()["rejected"]``)."""
PATTERN_CHARS = frozenset("*?[]{}")
MAX_WILDCARDS = 4  # '*' and '?' in one address pattern (bounds the regex backtracking)


class OscError(UserError, OSError):
    """The OSC server cannot start (e.g. the port is taken); the message names the address and the fix."""


class OscStats:
    """Thread-safe counters of the OSC server.

    ``packets`` datagrams received; ``items`` = ``handled + ignored + sum(rejected.values())`` (a
    datagram holds one item, or several when it is a bundle); ``bytes`` received.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.packets = 0
        self.bytes = 0
        self.handled = 0
        self.ignored = 0
        self.rejected: dict[str, int] = {}

    def add_packet(self, size: int) -> None:
        with self._lock:
            self.packets += 1
            self.bytes += size

    def add(self, outcome: str) -> None:
        with self._lock:
            if outcome == "handled":
                self.handled += 1
            elif outcome == "ignored":
                self.ignored += 1
            else:
                self.rejected[outcome] = self.rejected.get(outcome, 0) + 1

    def snapshot(self) -> dict[str, Any]:
        """``{"packets", "bytes", "items", "handled", "ignored", "rejected": {reason: n}, "rejected_total"}``."""
        with self._lock:
            rejected = dict(self.rejected)
            total = sum(rejected.values())
            return {
                "packets": self.packets,
                "bytes": self.bytes,
                "items": self.handled + self.ignored + total,
                "handled": self.handled,
                "ignored": self.ignored,
                "rejected": rejected,
                "rejected_total": total,
            }


def normalise_host(host: str) -> str:
    """``"localhost"`` as ``"127.0.0.1"`` (what the servers bind and report); other hosts unchanged."""
    return "127.0.0.1" if host == "localhost" else host


class _DatagramHandler(socketserver.BaseRequestHandler):
    """Per-datagram handler: hands the bytes to :meth:`OscServer.handle_datagram` (never raises)."""

    def handle(self) -> None:
        server: _UDPServer = self.server  # type: ignore[assignment]
        server.owner.handle_datagram(self.request[0], self.client_address)


class _UDPServer(osc_server.BlockingOSCUDPServer):
    """python-osc's blocking UDP server: one thread, one datagram at a time, our handler and error policy."""

    max_packet_size = 65535  # socketserver's 8192 would silently truncate larger datagrams

    def __init__(self, address: tuple[str, int], dispatcher: Dispatcher, owner: OscServer) -> None:
        super().__init__(address, dispatcher)
        self.RequestHandlerClass = _DatagramHandler
        self.owner = owner
        try:
            self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        except OSError:
            pass

    def verify_request(self, request: Any, client_address: Any) -> bool:
        return True  # python-osc drops non-OSC datagrams silently; we count them

    def handle_error(self, request: Any, client_address: Any) -> None:
        self.owner._count("internal_error", "handler raised", "")
        log.debug("osc: error handling a datagram from %s", client_address, exc_info=True)

    def service_actions(self) -> None:
        self.owner._log.flush()


class OscServer:
    """Receives OSC on UDP in one daemon thread and turns valid messages into ``Parameters.enqueue`` calls.

    Args:
        params: where accepted values go (``enqueue``; ``published_targets`` answers ``/avgan/query``).
        host: address to bind (``127.0.0.1``: this machine; ``0.0.0.0``: all interfaces).
        port: UDP port (0: any free one; see :attr:`address`).
        allowlist: sender IPs / networks allowed; empty: everyone.
        feedback: answers ``/avgan/query``; ``None``: queries are rejected (``no_feedback``).
        specs: the parameter declaration.
        future_tolerance_s: bundles time-tagged later than now + this are rejected (``future_timetag``);
            the slack covers clock differences between the controller and this machine.
        log_interval_s: rejections are summarised in the log at most this often.
    """

    def __init__(
        self,
        params: Parameters,
        host: str = "127.0.0.1",
        port: int = 8000,
        allowlist: Iterable[str] = (),
        feedback: Feedback | None = None,
        specs: Mapping[str, ParamSpec] = PARAMS,
        future_tolerance_s: float = 1.0,
        log_interval_s: float = 10.0,
    ) -> None:
        self.params = params
        self.host = normalise_host(host)
        self.port = int(port)
        self.allowlist = tuple(ipaddress.ip_network(a, strict=False) for a in allowlist)
        self.feedback = feedback
        self.specs = specs
        self.future_tolerance_s = float(future_tolerance_s)
        self.stats = OscStats()
        self._log = RateLimitedLog(log, "osc: rejected", log_interval_s)
        self._allowed: dict[str, bool] = {}
        self.dispatcher = Dispatcher(strict_timing=False)
        self._exact: dict[str, list[Handler]] = {}
        for spec in specs.values():
            handler = self.dispatcher.map(spec.address, self._on_param, spec.name, needs_reply_address=True)
            self._exact.setdefault(spec.address, []).append(handler)
        handler = self.dispatcher.map(QUERY_ADDRESS, self._on_query, needs_reply_address=True)
        self._exact.setdefault(QUERY_ADDRESS, []).append(handler)
        self._server: _UDPServer | None = None
        self._thread: threading.Thread | None = None

    # -- network --------------------------------------------------------------------------------------

    def start(self) -> OscServer:
        """Bind and start the server thread (idempotent).

        Raises:
            OscError: the address cannot be bound (port in use, address not on this machine).
        """
        if self._server is not None:
            return self
        try:
            self._server = _UDPServer((self.host, self.port), self.dispatcher, self)
        except OSError as exc:
            raise OscError(
                f"osc: cannot listen on {self.host}:{self.port} ({exc.strerror or exc}); "
                "choose another osc.port in the preset (0 = any free port) or stop what holds it"
            ) from None
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.2}, name="avgan-osc", daemon=True
        )
        self._thread.start()
        host, port = self.address
        log.info(
            "osc: listening on %s:%d (UDP)%s",
            host,
            port,
            f", allowlist {', '.join(map(str, self.allowlist))}" if self.allowlist else "",
        )
        return self

    @property
    def address(self) -> tuple[str, int]:
        """``(host, port)`` bound (the requested ones before :meth:`start`)."""
        if self._server is None:
            return self.host, self.port
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    @property
    def running(self) -> bool:
        """Whether the server thread is alive."""
        return self._thread is not None and self._thread.is_alive()

    def stop(self, timeout: float = 2.0) -> None:
        """Stop the thread and close the socket (idempotent)."""
        if self._server is None:
            return
        server, self._server = self._server, None
        server.shutdown()
        server.server_close()
        if self._thread is not None:
            self._thread.join(timeout)
        self._log.flush(force=True)

    def __enter__(self) -> OscServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- per datagram (no sockets: the fuzz tests call this directly) ---------------------------------

    def handle_datagram(self, data: bytes, sender: tuple[str, int] | Any, now: float | None = None) -> list[str]:
        """Process one datagram from ``sender`` (``(ip, port)``); never raises, never blocks.

        Returns:
            One outcome per item: ``"handled"``, ``"ignored"``, or a rejection reason (:data:`REJECTIONS`).
        """
        outcomes: list[str] = []
        try:
            self.stats.add_packet(len(data))
            ip = str(sender[0]) if isinstance(sender, tuple) and sender else str(sender)
            if not self._is_allowed(ip):
                self._count("not_allowed", f"sender {ip}", "", outcomes)
                return outcomes
            now = time.time() if now is None else now
            for item in decode_packet(data):
                if isinstance(item, Rejected):
                    self._count(item.reason, f"{item.detail} from {ip}", item.address, outcomes)
                    continue
                if item.timetag is not None and item.timetag > now + self.future_tolerance_s:
                    detail = f"{item.address} due in {item.timetag - now:.3g} s from {ip}"
                    self._count("future_timetag", detail, item.address, outcomes)
                    continue
                outcome, detail = self._route(item, (ip, sender[1] if isinstance(sender, tuple) else 0))
                self._count(outcome, f"{detail} from {ip}" if detail else "", item.address, outcomes)
        except Exception as exc:  # pragma: no cover - belt and braces: nothing a sender does may escape
            self._count("internal_error", f"{type(exc).__name__}: {exc}", "", outcomes)
        return outcomes

    def _count(self, outcome: str, detail: str, address: str, outcomes: list[str] | None = None) -> None:
        self.stats.add(outcome)
        if outcomes is not None:
            outcomes.append(outcome)
        if outcome not in ("handled", "ignored"):
            where = f"{address[:60]!r} " if address else ""
            self._log.note(outcome, f"{where}{detail}")

    def _is_allowed(self, ip: str) -> bool:
        if not self.allowlist:
            return True
        allowed = self._allowed.get(ip)
        if allowed is None:
            try:
                addr = ipaddress.ip_address(ip)
                allowed = any(addr in net for net in self.allowlist)
            except ValueError:
                allowed = False
            if len(self._allowed) > 1024:
                self._allowed.clear()
            self._allowed[ip] = allowed
        return allowed

    def _route(self, message: Message, sender: tuple[str, int]) -> tuple[str, str]:
        address = message.address
        handlers = self._exact.get(address)
        if handlers is None:
            if not address.startswith("/") or not PATTERN_CHARS.intersection(address):
                return "unknown_address", ""
            if sum(address.count(c) for c in "*?") > MAX_WILDCARDS or len(address) > 128:
                return "bad_pattern", f"more than {MAX_WILDCARDS} wildcards or longer than 128"
            # OSC 1.0 pattern dispatch via python-osc; commands (strings, triggers) only by their exact address
            handlers = [
                h
                for h in self.dispatcher.handlers_for_address(address)
                if h.args and self.specs[h.args[0]].kind not in ("trigger", "string")
            ]
            if not handlers:
                return "unknown_address", ""
        outcome = "handled"
        for handler in handlers:
            result = handler.invoke(sender, message)
            if result != "handled":
                outcome = result
        return outcome, ""

    def _on_param(self, sender: tuple[str, int], address: str, fixed: list[str], *args: Any) -> str:
        """Dispatcher handler for ``/avgan/<name>``: validate the arguments, enqueue. Returns the outcome."""
        name = fixed[0]
        spec = self.specs[name]
        if spec.kind == "trigger":
            if len(args) > 1:
                return "wrong_count"
            # no argument, or OSCQuery's advertised TYPE "N" (nil) / OSC 1.1's impulse "I": a press
            value = args[0] if args and args[0] is not None else True
        else:
            if len(args) != 1:
                return "wrong_count"
            value = args[0]
        if isinstance(value, (list, bytes)) or value is None:
            return "wrong_type"
        if isinstance(value, float) and not math.isfinite(value):
            return "not_finite"
        if spec.kind == "trigger":
            ok, reason, fire = spec.validate(value, clamp=True)
            if not ok:
                return reason
            if not fire:
                return "ignored"  # a button's release (0 / false)
        result = self.params.enqueue(name, value, source=f"osc:{sender[0]}")
        return "handled" if result.ok else result.reason

    def _on_query(self, sender: tuple[str, int], address: str, *args: Any) -> str:
        """Handler for ``/avgan/query [name ...]``: send values to the feedback target."""
        if self.feedback is None:
            return "no_feedback"
        names: list[str] = []
        for arg in args:
            if not isinstance(arg, str):
                return "wrong_type"
            name = arg[len(PREFIX) :] if arg.startswith(PREFIX) else arg.lstrip("/")
            if name not in self.specs:
                return "unknown_param"
            names.append(name)
        self.feedback.send_values(names or list(self.specs), self.params.published_targets())
        return "handled"
