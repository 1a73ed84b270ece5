"""OSCQuery (https://github.com/Vidvox/OSCQueryProposal): the address space as HTTP JSON -- :class:`OscQueryServer`.

The HTTP JSON tree (FULL_PATH, CONTENTS, TYPE, VALUE, RANGE, ACCESS, CLIPMODE, DESCRIPTION; ``?HOST_INFO`` with
NAME, OSC_IP, OSC_PORT, OSC_TRANSPORT, EXTENSIONS; ``?ATTRIBUTE`` for one attribute) is served by a small
``http.server.HTTPServer`` (one thread, one request at a time, 2 s socket timeout, bound to the OSC host). We do
not use python-oscquery 0.4.0 (checked): its HTTP server always binds every interface (it would expose a
localhost-only installation), uses a thread per request, starts Zeroconf unconditionally, serves the VALUE given
at start-up (not the live one), and cannot express RANGE, enum choices (VALS) or argument-less triggers.
Zeroconf/mDNS announcement of ``_oscjson._tcp`` and ``_osc._udp`` is done with the ``zeroconf`` package when
``mdns`` is on, the package is importable and the server is bound beyond loopback; otherwise skipped.
Note: ``/avgan/scene`` is both a method (the scene) and a container (``/avgan/scene/crossfade_s``), as the
contract names them; OSC 1.0 calls methods leaves, so the OSCQuery node carries both TYPE and CONTENTS
(ossia/Chataigne/Max accept that).
"""

from __future__ import annotations

import http.server
import ipaddress
import json
import logging
import math
import threading
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import unquote, urlsplit

from installation.osc.feedback import STATUS_DOCS
from installation.osc.server import QUERY_ADDRESS, OscError, normalise_host
from installation.params import PREFIX, ParamSpec

log = logging.getLogger(__name__)


OSCQUERY_ATTRIBUTES = ("FULL_PATH", "CONTENTS", "TYPE", "VALUE", "RANGE", "ACCESS", "CLIPMODE", "DESCRIPTION")
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
        values: returns the current values (``Parameters.published``; any thread).
        status: returns the current status values (``Feedback.status_values``), or ``None``.
        host: address to bind (the OSC server's host, so a localhost-only installation stays local).
        port: TCP port (0: any free one; see :attr:`address`).
        osc_port: the OSC UDP port to announce (HOST_INFO OSC_PORT).
        name: service name (HOST_INFO NAME, Zeroconf).
        mdns: announce over Zeroconf when possible (see the module docstring).
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

        ``?HOST_INFO`` -> host info; ``?ATTR`` -> ``{ATTR: ...}`` of that node (204 when the node has no
        such attribute, 400 for an unknown attribute); unknown path -> 404.
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
            return 204, None
        return 200, {attribute: node[attribute]}

    # -- network --------------------------------------------------------------------------------------

    def start(self) -> OscQueryServer:
        """Bind and serve in one daemon thread (idempotent). Raises ``OscError`` if the port cannot be bound."""
        if self._server is not None:
            return self
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            timeout = 2.0  # a slow client cannot hold the single thread for long
            protocol_version = "HTTP/1.0"  # one request per connection: nothing lingers
            server_version = "AVGAN-OSCQuery"

            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                try:
                    code, body = owner.respond(self.path)
                except Exception:  # pragma: no cover - never let a request kill the thread
                    log.debug("oscquery: error answering %r", self.path, exc_info=True)
                    code, body = 500, {"error": "internal error"}
                payload = b"" if body is None else json.dumps(body).encode("utf-8")
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.send_header("Access-Control-Allow-Origin", "*")
                self.end_headers()
                if payload and code != 204:
                    self.wfile.write(payload)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - http.server's signature
                log.debug("oscquery: %s - %s", self.address_string(), format % args)

        class Server(http.server.HTTPServer):
            request_queue_size = 16

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
        if self._zeroconf is not None:
            zc, self._zeroconf = self._zeroconf, None
            try:
                zc.unregister_all_services()
                zc.close()
            except Exception:  # pragma: no cover
                log.debug("oscquery: zeroconf shutdown failed", exc_info=True)
        if self._server is not None:
            server, self._server = self._server, None
            server.shutdown()
            server.server_close()
            if self._thread is not None:
                self._thread.join(2.0)

    def _announce(self) -> None:
        """Zeroconf: ``_oscjson._tcp`` (this HTTP server) and ``_osc._udp`` (the OSC port); logs, never raises."""
        try:
            addresses = self._lan_addresses()
            if not addresses:
                log.info("oscquery: not announced over mDNS (bound to %s, loopback only)", self.host)
                return
            from zeroconf import ServiceInfo, Zeroconf
        except ImportError:
            log.info("oscquery: not announced over mDNS (the zeroconf package is not installed)")
            return
        try:
            zc = Zeroconf()
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
                    )
                )
            self._zeroconf = zc
            log.info("oscquery: announced %s over mDNS on %s", self.name, ", ".join(addresses))
        except Exception as exc:
            log.warning("oscquery: mDNS announcement failed (%s); discovery needs the address typed in", exc)

    def _lan_addresses(self) -> list[str]:
        host = self.host
        if host not in ("0.0.0.0", "::", ""):
            return [] if ipaddress.ip_address(host).is_loopback else [host]
        try:
            import ifaddr
        except ImportError:
            return []
        found = []
        for adapter in ifaddr.get_adapters():
            for ip in adapter.ips:
                if isinstance(ip.ip, str) and not ipaddress.ip_address(ip.ip).is_loopback:
                    found.append(ip.ip)
        return found
