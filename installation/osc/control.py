"""The OSC server, feedback and OSCQuery of one installation together, as a preset's ``osc`` section
configures them: :class:`OscControl`, and :func:`start_or_log` for loops that must come up without OSC."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from installation.osc.feedback import Feedback
from installation.osc.oscquery import OscQueryServer
from installation.osc.server import OscError, OscServer
from installation.params import PARAMS, Parameters, ParamSpec

log = logging.getLogger(__name__)


class OscControl:
    """The OSC server, feedback and OSCQuery for one installation, configured by a preset's ``osc`` section.

    Args:
        params: the installation's parameters.
        config: :class:`installation.presets.OscConfig` (or anything with the same attributes).
        specs: the parameter declaration.
    """

    def __init__(self, params: Parameters, config: Any, specs: Mapping[str, ParamSpec] = PARAMS) -> None:
        self.params = params
        self.config = config
        self.specs = specs
        self.server: OscServer | None = None
        self.feedback: Feedback | None = None
        self.oscquery: OscQueryServer | None = None

    def start(self) -> OscControl:
        """Start what the config enables. Feedback or OSCQuery that cannot start is logged and left off.

        Raises:
            OscError: the OSC port cannot be bound.
        """
        cfg = self.config
        if not cfg.enabled:
            log.info("osc: disabled by the preset")
            return self
        if cfg.feedback:
            try:
                self.feedback = Feedback(
                    cfg.feedback_host,
                    cfg.feedback_port,
                    cfg.feedback_hz,
                    self.specs,
                    heartbeat_s=getattr(cfg, "heartbeat_s", 5.0),
                    smoothed=getattr(cfg, "feedback_smoothed", ()),
                )
            except OSError as exc:
                log.error("osc: no feedback: cannot resolve %s (%s)", cfg.feedback_host, exc)
        try:
            self.server = OscServer(
                self.params, cfg.host, cfg.port, cfg.allowlist, feedback=self.feedback, specs=self.specs
            ).start()
        except OscError:
            if self.feedback is not None:
                self.feedback.close()
                self.feedback = None
            raise
        if cfg.oscquery:
            query = OscQueryServer(
                self.specs,
                self.params.published_targets,
                self.feedback.status_values if self.feedback else None,
                host=cfg.host,
                port=cfg.oscquery_port,
                osc_port=self.server.address[1],
                name=cfg.name,
                mdns=cfg.mdns,
                smoothed=getattr(cfg, "feedback_smoothed", ()) if self.feedback else (),
            )
            try:
                self.oscquery = query.start()
            except OscError as exc:
                log.error("%s; continuing without OSCQuery", exc)
        return self

    def status(self, **values: Any) -> None:
        """Set status values (:data:`installation.osc.feedback.STATUS_KEYS`) for the next feedback round (no-op
        without feedback)."""
        if self.feedback is not None:
            self.feedback.status(**values)

    def event(self, text: str) -> None:
        """Queue an event line for ``/avgan/status/event`` (any thread; no-op without feedback)."""
        if self.feedback is not None:
            self.feedback.event(text)

    def pump(self, params: Parameters | None = None) -> int:
        """Per frame, after ``apply_pending``: send feedback that is due (targets of changed parameters, changed
        status, smoothed values where the preset asks). Returns messages sent."""
        if self.feedback is None:
            return 0
        params = params or self.params
        self.feedback.note_changes(params.changed)
        return self.feedback.pump(params.published_targets(), current=params.published())

    def stats(self) -> dict[str, Any]:
        """``{"osc": server counters, "feedback": sender counters, "params": queue counters}``."""
        return {
            "osc": self.server.stats.snapshot() if self.server else {},
            "feedback": self.feedback.stats() if self.feedback else {},
            "params": self.params.stats(),
        }

    def stop(self) -> None:
        """Stop everything (idempotent)."""
        if self.oscquery is not None:
            self.oscquery.stop()
        if self.server is not None:
            self.server.stop()
        if self.feedback is not None:
            self.feedback.close()

    def __enter__(self) -> OscControl:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_or_log(params: Parameters, config: Any) -> tuple[OscControl | None, str | None]:
    """Start OSC for a loop that can come up without it: ``(control, None)``, or ``(None, error)`` after logging
    ``OSC disabled: ...`` when the port is taken or anything else fails (live, the booth, the rating station).
    ``config`` ``None`` or not ``enabled``: ``(None, None)``.

    Raises:
        OscError: the OSC port cannot be bound and the preset says ``osc.required: true`` (the gallery: an
            installation nobody can steer must not start quietly; the message names the port and the fix).
    """
    if config is None or not getattr(config, "enabled", True):
        return None, None
    try:
        return OscControl(params, config).start(), None
    except OscError as exc:
        if getattr(config, "required", False):
            raise OscError(
                f"{exc} (osc.required is true in the preset: the installation does not start without OSC)"
            ) from None
        error = f"{type(exc).__name__}: {exc}"
        log.error("OSC disabled: %s", error)
        return None, error
    except Exception as exc:  # noqa: BLE001 - the picture must come up even if the port is taken
        error = f"{type(exc).__name__}: {exc}"
        log.error("OSC disabled: %s", error)
        return None, error
