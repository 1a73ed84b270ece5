"""OSCQuery (https://github.com/Vidvox/OSCQueryProposal): the address space as HTTP JSON -- :class:`OscQueryServer`.

The HTTP JSON tree (FULL_PATH, CONTENTS, TYPE, VALUE, RANGE, ACCESS, CLIPMODE, DESCRIPTION; ``?HOST_INFO`` with
NAME, OSC_IP, OSC_PORT, OSC_TRANSPORT, EXTENSIONS; ``?ATTRIBUTE`` for one attribute) is served by a small
``http.server`` HTTP/1.1 server with persistent connections (the proposal asks for HTTP/1.1; Max, TouchOSC and
Chataigne keep one connection open and poll over it): a thread per connection, at most
:data:`MAX_CONNECTIONS` at once (more are closed at once), each closed after ``idle_timeout_s`` without a
request, bound to the OSC host. We do not use python-oscquery 0.4.0 (checked): its HTTP server always binds
every interface (it would expose a localhost-only installation), starts Zeroconf unconditionally, serves the
VALUE given at start-up (not the live one), and cannot express RANGE, enum choices (VALS) or argument-less
triggers.

What clients rely on (each checked in ``tests/test_osc.py``): every OSC method is a leaf (TYPE, no CONTENTS;
every container has CONTENTS and no TYPE: a node with both is shown as a folder by Chataigne, which then loses
the control); triggers are TYPE ``N`` and the server accepts a ``,N`` message (and ``,I``, no argument or a
non-zero number) as a press; ``?VALUE`` of a method without a value (triggers, commands, status not reported
yet) is ``200 {}`` as the proposal says, while attributes a node does not have otherwise answer 204.

Zeroconf/mDNS announcement of ``_oscjson._tcp`` (this HTTP server) and ``_osc._udp`` (the OSC port) is done
with the ``zeroconf`` package when ``mdns`` is on and the server is bound beyond loopback (an interface
address, or ``0.0.0.0``: every non-loopback IPv4 address of the machine, as ``ifaddr`` lists them).
"""

from __future__ import annotations

import http.server
import ipaddress
import json
import logging
import math
import socket
import threading
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import unquote, urlsplit

from installation.osc.feedback import SMOOTHED_PREFIX, STATUS_DOCS
from installation.osc.server import QUERY_ADDRESS, OscError, normalise_host
from installation.params import PREFIX, ParamSpec

log = logging.getLogger(__name__)


OSCQUERY_ATTRIBUTES = ("FULL_PATH", "CONTENTS", "TYPE", "VALUE", "RANGE", "ACCESS", "CLIPMODE", "DESCRIPTION")
MAX_CONNECTIONS = 16
"""Most HTTP connections served at once (each has its own thread); more are closed at once."""
OSCQUERY_EXTENSIONS = {
    "ACCESS": True,
    "VALUE": True,
    "RANGE": True,
    "DESCRIPTION": True,
    "CLIPMODE": True,
    "TYPE": True,
    "TAGS": False,
    "UNIT": False,
    "CRITICAL": False,
    "LISTEN": False,
    "PATH_CHANGED": False,
}


def _json_value(spec: ParamSpec, value: Any) -> Any:
    if spec.kind == "float":
        return float(value) if math.isfinite(float(value)) else None
    return value


class OscQueryServer:
    """OSCQuery: the address space as HTTP JSON (see the module docstring), in one daemon thread.

    Args:
        specs: the parameters to describe.
        values: returns the values to report (``Parameters.published_targets``: what the parameters move to; any
            thread).
        status: returns the current status values (``Feedback.status_values``), or ``None``.
        host: address to bind (the OSC server's host, so a localhost-only installation stays local).
        port: TCP port (0: any free one; see :attr:`address`).
        osc_port: the OSC UDP port to announce (HOST_INFO OSC_PORT).
        name: service name (HOST_INFO NAME, Zeroconf).
        mdns: announce over Zeroconf when possible (see the module docstring).
        idle_timeout_s: an open connection without a request for this long is closed, seconds.
        smoothed: parameters whose smoothed values the feedback sends (``/avgan/status/smoothed/<name>``).

    Attributes:
        refused: connections closed at once because :data:`MAX_CONNECTIONS` were open.
        announced: the addresses announced over mDNS (empty until announced).
    """

    def __init__(
        self,
        specs: Mapping[str, ParamSpec],
        values: Callable[[], Mapping[str, Any]],
        status: Callable[[], Mapping[str, Any]] | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 8080,
        osc_port: int = 8000,
        name: str = "AVGAN",
        mdns: bool = False,
        idle_timeout_s: float = 10.0,
        smoothed: tuple[str, ...] = (),
    ) -> None:
        self.specs = specs
        self.values = values
        self.status = status
        self.host = normalise_host(host)
        self.port = int(port)
        self.osc_port = int(osc_port)
        self.name = name
        self.mdns = mdns
        self._server: http.server.HTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._zeroconf: Any = None
        self.idle_timeout_s = float(idle_timeout_s)
        self.smoothed = tuple(smoothed)
        self.refused = 0
        self.announced: list[str] = []
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        self._lock = threading.Lock()
        self._open: set[Any] = set()

    # -- the tree (pure) ------------------------------------------------------------------------------

    def host_info(self) -> dict[str, Any]:
        """HOST_INFO: NAME, EXTENSIONS, OSC_PORT, OSC_TRANSPORT, and OSC_IP unless bound to every interface."""
        info: dict[str, Any] = {
            "NAME": self.name,
            "EXTENSIONS": dict(OSCQUERY_EXTENSIONS),
            "OSC_PORT": self.osc_port,
            "OSC_TRANSPORT": "UDP",
        }
        if self.host not in ("0.0.0.0", "::", ""):
            info["OSC_IP"] = self.host
        return info

    def tree(self) -> dict[str, Any]:
        """The whole address space as one OSCQuery JSON object (root ``/``)."""
        values = self.values()
        status = self.status() if self.status is not None else {}
        root: dict[str, Any] = {"FULL_PATH": "/", "ACCESS": 0, "DESCRIPTION": "root", "CONTENTS": {}}

        def container(path: str) -> dict[str, Any]:
            node = root
            full = ""
            for part in path.strip("/").split("/"):
                full += "/" + part
                contents = node.setdefault("CONTENTS", {})
                node = contents.setdefault(part, {"FULL_PATH": full, "ACCESS": 0, "DESCRIPTION": ""})
            return node

        container("/avgan")["DESCRIPTION"] = "AVGAN live installation"
        for spec in self.specs.values():
            node = container(spec.address)
            node.update(self._param_node(spec, values.get(spec.name, spec.default)))
        status_node = container(PREFIX + "status")
        status_node["DESCRIPTION"] = "status feedback (sent to the feedback target; read-only here)"
        for key, (tag, doc) in STATUS_DOCS.items():
            node = container(f"{PREFIX}status/{key}")
            node.update({"TYPE": tag, "ACCESS": 1, "DESCRIPTION": doc})
            if key in status:
                node["VALUE"] = [status[key]]
        for name in self.smoothed:
            spec = self.specs[name]
            node = container(PREFIX + SMOOTHED_PREFIX + name)
            node.update({"TYPE": spec.osc_type, "ACCESS": 1, "DESCRIPTION": f"smoothed value of {spec.address}"})
        query = container(QUERY_ADDRESS)
        query["DESCRIPTION"] = "send parameter values to the feedback target: no argument = all, or names"
        return root

    def _param_node(self, spec: ParamSpec, value: Any) -> dict[str, Any]:
        unit = f" ({spec.unit})" if spec.unit else ""
        node: dict[str, Any] = {"DESCRIPTION": spec.doc + unit, "TYPE": spec.osc_type}
        if spec.kind in ("float", "int"):
            node["ACCESS"] = 3
            node["VALUE"] = [_json_value(spec, value)]
            node["RANGE"] = [{"MIN": spec.min, "MAX": spec.max}]
            node["CLIPMODE"] = ["both"]
        elif spec.kind == "enum":
            node["ACCESS"] = 3
            node["VALUE"] = [value]
            node["RANGE"] = [{"VALS": list(spec.choices)}]
        elif spec.kind == "bool":
            node["ACCESS"] = 3
            node["VALUE"] = [bool(value)]
        else:  # string commands and triggers: write-only
            node["ACCESS"] = 2
        return node

    def node(self, path: str) -> dict[str, Any] | None:
        """The JSON node at OSC ``path`` (``/`` = root), or ``None``."""
        node: dict[str, Any] | None = self.tree()
        for part in [p for p in path.split("/") if p]:
            node = (node or {}).get("CONTENTS", {}).get(part)
            if node is None:
                return None
        return node

    def respond(self, target: str) -> tuple[int, Any]:
        """The reply to ``GET target`` (path + query string): ``(status code, JSON-able body or None)``.

        ``?HOST_INFO`` -> host info; ``?ATTR`` -> ``{ATTR: ...}`` of that node; ``?VALUE`` of a method without
        a value -> ``{}`` (the proposal: "the query should return an empty JSON object"); another attribute the
        node does not have, or ``VALUE`` of a container -> 204; an unknown attribute -> 400; unknown path -> 404.
        """
        parts = urlsplit(target)
        query = unquote(parts.query).strip()
        if query.upper() == "HOST_INFO":
            return 200, self.host_info()
        node = self.node(unquote(parts.path) or "/")
        if node is None:
            return 404, {"error": "no such OSC path"}
        if not query:
            return 200, node
        attribute = query.split("&")[0].split("=")[0].upper()
        if attribute not in OSCQUERY_ATTRIBUTES:
            return 400, {"error": f"unknown attribute {attribute}"}
        if attribute not in node:
            if attribute == "VALUE" and "TYPE" in node:
                return 200, {}  # a method without a value (trigger, command, status not reported yet)
            return 204, None
        return 200, {attribute: node[attribute]}

    # -- network --------------------------------------------------------------------------------------

    def start(self) -> OscQueryServer:
        """Bind and serve (a daemon thread accepting, one per open connection; idempotent).

        Raises:
            OscError: the port cannot be bound.
        """
        if self._server is not None:
            return self
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            timeout = owner.idle_timeout_s  # an idle keep-alive connection is closed after this
            protocol_version = "HTTP/1.1"  # persistent connections, as the OSCQuery proposal asks
            server_version = "AVGAN-OSCQuery"

            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                try:
                    code, body = owner.respond(self.path)
                except Exception:  # pragma: no cover - never let a request kill the thread
                    log.debug("oscquery: error answering %r", self.path, exc_info=True)
                    code, body = 500, {"error": "internal error"}
                payload = b"" if body is None else json.dumps(body).encode("utf-8")
                self.send_response(code)
                self.send_header("Access-Control-Allow-Origin", "*")
                if code != 204:  # RFC 9110 15.3.5: no Content-Length (and no body) in a 204
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                if code != 204:
                    self.wfile.write(payload)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - http.server's signature
                log.debug("oscquery: %s - %s", self.address_string(), format % args)

        class Server(http.server.ThreadingHTTPServer):
            daemon_threads = True
            block_on_close = False
            request_queue_size = 16

            def process_request(self, request: Any, client_address: Any) -> None:
                if not owner._slots.acquire(blocking=False):  # MAX_CONNECTIONS open already
                    owner.refused += 1
                    self.shutdown_request(request)
                    return
                with owner._lock:
                    owner._open.add(request)
                try:
                    super().process_request(request, client_address)
                except BaseException:
                    self._release(request)
                    raise

            def process_request_thread(self, request: Any, client_address: Any) -> None:
                try:
                    super().process_request_thread(request, client_address)
                finally:
                    self._release(request)

            def _release(self, request: Any) -> None:
                with owner._lock:
                    owner._open.discard(request)
                owner._slots.release()

            def handle_error(self, request: Any, client_address: Any) -> None:
                log.debug("oscquery: error serving %s", client_address, exc_info=True)

        try:
            self._server = Server((self.host, self.port), Handler)
        except OSError as exc:
            raise OscError(
                f"oscquery: cannot listen on {self.host}:{self.port} ({exc.strerror or exc}); "
                "choose another osc.oscquery_port in the preset (0 = any free port)"
            ) from None
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.2}, name="avgan-oscquery", daemon=True
        )
        self._thread.start()
        log.info("oscquery: serving the address space on %s", self.url)
        if self.mdns:
            threading.Thread(target=self._announce, name="avgan-mdns", daemon=True).start()
        return self

    @property
    def address(self) -> tuple[str, int]:
        """``(host, port)`` bound (the requested ones before :meth:`start`)."""
        if self._server is None:
            return self.host, self.port
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    @property
    def url(self) -> str | None:
        """``http://host:port/`` once started, else ``None``."""
        if self._server is None:
            return None
        host, port = self.address
        return f"http://{host}:{port}/"

    def stop(self) -> None:
        """Stop serving, withdraw the Zeroconf announcement (idempotent)."""
        with self._lock:  # (the announcing thread checks _server under the same lock)
            zc, self._zeroconf = self._zeroconf, None
            server, self._server = self._server, None
            self.announced = []
        if zc is not None:
            try:
                zc.unregister_all_services()
                zc.close()
            except Exception:  # pragma: no cover
                log.debug("oscquery: zeroconf shutdown failed", exc_info=True)
        if server is not None:
            server.shutdown()
            server.server_close()
            with self._lock:
                still_open = list(self._open)
            for request in still_open:  # idle keep-alive connections: end their threads now
                try:
                    request.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            if self._thread is not None:
                self._thread.join(2.0)

    def _announce(self) -> None:
        """Zeroconf: ``_oscjson._tcp`` (this HTTP server) and ``_osc._udp`` (the OSC port); logs, never raises.

        A name already taken on the network (a second installation) is announced as ``NAME (2)``.
        """
        try:
            from zeroconf import ServiceInfo, Zeroconf
        except ImportError:
            log.warning("oscquery: not announced over mDNS: the zeroconf package is missing (pip install zeroconf)")
            return
        addresses = self._lan_addresses()
        if not addresses:
            if self.host in ("0.0.0.0", "::", ""):
                why = f"bound to {self.host}, but this machine has no non-loopback IPv4 address (no network?)"
            else:
                why = f"bound to {self.host}, a loopback address: set osc.host to 0.0.0.0 or a LAN address"
            log.info("oscquery: not announced over mDNS (%s)", why)
            return
        try:
            zc = Zeroconf() if self.host in ("0.0.0.0", "::", "") else Zeroconf(interfaces=addresses)
            _, http_port = self.address
            for kind, port, server in (("_oscjson._tcp", http_port, "oscjson"), ("_osc._udp", self.osc_port, "osc")):
                zc.register_service(
                    ServiceInfo(
                        f"{kind}.local.",
                        f"{self.name}.{kind}.local.",
                        port=port,
                        properties={"txtvers": "1"},
                        server=f"{self.name.lower()}-{server}.local.",
                        parsed_addresses=addresses,
                    ),
                    allow_name_change=True,
                )
        except Exception as exc:
            log.warning("oscquery: mDNS announcement failed (%s); discovery needs the address typed in", exc)
            return
        with self._lock:
            if self._server is None:  # stopped while announcing
                zc.close()
                return
            self._zeroconf = zc
            self.announced = list(addresses)
        log.info(
            "oscquery: announced _oscjson._tcp (port %d) and _osc._udp (port %d) as %s over mDNS on %s",
            http_port,
            self.osc_port,
            self.name,
            ", ".join(addresses),
        )

    def _lan_addresses(self) -> list[str]:
        """The IPv4 addresses to announce: the bound one, or every non-loopback one for ``0.0.0.0`` (ifaddr)."""
        host = self.host
        if host not in ("0.0.0.0", "::", ""):
            return [] if ipaddress.ip_address(host).is_loopback else [host]
        import ifaddr  # a dependency of zeroconf

        found = []
        for adapter in ifaddr.get_adapters():
            for ip in adapter.ips:
                if isinstance(ip.ip, str) and not ipaddress.ip_address(ip.ip).is_loopback:
                    found.append(ip.ip)
        return found
