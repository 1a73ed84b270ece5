"""installation.telemetry: the one RateLimitedLog (both ways in), RSS readings."""

from __future__ import annotations

import logging

import pytest

from installation import telemetry
from installation.telemetry import RateLimitedLog, RssSeries, peak_rss_mb, rss_mb


def test_note_logs_the_first_of_each_reason_then_summaries(caplog: pytest.LogCaptureFixture, monkeypatch) -> None:
    now = [100.0]
    monkeypatch.setattr(telemetry.time, "monotonic", lambda: now[0])
    limiter = RateLimitedLog(logging.getLogger("t"), "osc: rejected", interval_s=10.0)
    with caplog.at_level(logging.WARNING, logger="t"):
        for _ in range(50):
            limiter.note("malformed", "short")
        limiter.note("wrong_type")
        assert [r.getMessage() for r in caplog.records] == [
            "osc: rejected: malformed: short (further ones summarised every 10 s)",
            "osc: rejected: wrong_type (further ones summarised every 10 s)",
        ]
        now[0] += 10.0
        limiter.note("malformed")
        assert caplog.records[-1].getMessage() == "osc: rejected: 50 more in the last 10 s (malformed=50)"
        limiter.flush(force=True)  # nothing pending: no line
    assert len(caplog.records) == 3 and limiter.count == 52


def test_error_logs_a_burst_then_one_per_interval_with_the_count(caplog, monkeypatch) -> None:
    now = [0.0]
    monkeypatch.setattr(telemetry.time, "monotonic", lambda: now[0])
    limiter = RateLimitedLog(logging.getLogger("t"), "live", interval_s=10.0, burst=3)
    with caplog.at_level(logging.ERROR, logger="t"):
        for frame in range(100):
            limiter.error("frame %d: draw failed", frame, exc_info=False)
        now[0] += 10.0
        limiter.error("frame %d: draw failed", 100, exc_info=False)
    assert [r.getMessage() for r in caplog.records] == [
        "frame 0: draw failed",
        "frame 1: draw failed",
        "frame 2: draw failed",
        "frame 100: draw failed (97 similar suppressed)",
    ]
    assert all(r.levelno == logging.ERROR for r in caplog.records) and limiter.count == 101


def test_rss_readings() -> None:
    assert 1.0 < rss_mb() <= peak_rss_mb() + 1.0
    series = RssSeries(interval_s=1.0, max_points=4)
    for t in range(10):
        series.sample(float(t))
    assert len(series.points) <= 4 and series.interval_s > 1.0
