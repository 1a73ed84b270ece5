"""Telemetry of the long-running loops (live, the capture booth, the rating station, the OSC server): latency
histograms, memory (RSS) readings and a rate-limited log, all with constant memory however long they run.

* :class:`Histogram` -- durations in ms in fixed bins (percentiles exact to the bin width);
* :func:`rss_mb`, :func:`peak_rss_mb`, :class:`RssSeries` -- resident memory now, at peak, and over time;
* :class:`RateLimitedLog` -- the one rate limiter for log lines that may repeat many times a second.
"""

from __future__ import annotations

import logging
import math
import os
import resource
import threading
import time
from typing import Any

import numpy as np

# -- statistics with constant memory ----------------------------------------------------------------------


class Histogram:
    """Fixed-bin histogram of durations in milliseconds: 0.1 ms bins to 100 ms, 10 ms bins to 2 s, overflow.

    Constant memory (2290 counters) whatever the run length; percentiles are exact to the bin width.
    """

    FINE_MS, FINE_MAX_MS, COARSE_MS, COARSE_MAX_MS = 0.1, 100.0, 10.0, 2000.0

    def __init__(self) -> None:
        self._fine = int(round(self.FINE_MAX_MS / self.FINE_MS))
        self._coarse = int(round((self.COARSE_MAX_MS - self.FINE_MAX_MS) / self.COARSE_MS))
        self.counts = np.zeros(self._fine + self._coarse + 1, np.int64)
        self.n = 0
        self.total_ms = 0.0
        self.max_ms = 0.0

    def add(self, ms: float) -> None:
        """Count one duration (milliseconds, >= 0)."""
        if ms < self.FINE_MAX_MS:
            k = int(ms / self.FINE_MS)
        elif ms < self.COARSE_MAX_MS:
            k = self._fine + int((ms - self.FINE_MAX_MS) / self.COARSE_MS)
        else:
            k = self._fine + self._coarse
        self.counts[max(0, k)] += 1
        self.n += 1
        self.total_ms += ms
        if ms > self.max_ms:
            self.max_ms = ms

    def _upper(self, k: int) -> float:
        if k < self._fine:
            return (k + 1) * self.FINE_MS
        if k < self._fine + self._coarse:
            return self.FINE_MAX_MS + (k - self._fine + 1) * self.COARSE_MS
        return self.max_ms

    def percentile(self, q: float) -> float | None:
        """The ``q``-th percentile (0-100) in ms (upper edge of its bin, capped at the maximum), ``None`` if empty."""
        if self.n == 0:
            return None
        rank = max(1, math.ceil(q / 100.0 * self.n))
        k = int(np.searchsorted(np.cumsum(self.counts), rank))
        return round(min(self._upper(k), self.max_ms), 3)

    def mean(self) -> float | None:
        """Mean duration in ms (rounded to 1 us), ``None`` if empty."""
        return round(self.total_ms / self.n, 3) if self.n else None

    def coarse(self, edges_ms: tuple[float, ...]) -> dict[str, Any]:
        """Counts between ``edges_ms`` (the last bin is open-ended): ``{"edges_ms": [...], "counts": [...]}``."""
        uppers = np.array([self._upper(k) for k in range(self.counts.shape[0] - 1)] + [math.inf])
        out = []
        lo = 0.0
        for hi in (*edges_ms, math.inf):
            mask = (uppers > lo + 1e-9) & (uppers <= hi + 1e-9) if math.isfinite(hi) else uppers > lo + 1e-9
            out.append(int(self.counts[mask].sum()))
            lo = hi
        return {"edges_ms": list(edges_ms), "counts": out}

    def summary(self) -> dict[str, Any]:
        """``{"n", "mean", "p50", "p90", "p99", "max"}`` (ms; ``None`` when empty)."""
        return {
            "n": self.n,
            "mean": self.mean(),
            "p50": self.percentile(50),
            "p90": self.percentile(90),
            "p99": self.percentile(99),
            "max": round(self.max_ms, 3) if self.n else None,
        }


def rss_mb() -> float:
    """Current resident set size of this process in MiB (``/proc/self/statm``; peak RSS where unavailable)."""
    try:
        with open("/proc/self/statm", "rb") as f:
            pages = int(f.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return peak_rss_mb()


def peak_rss_mb() -> float:
    """Peak resident set size of this process in MiB (``resource.getrusage``; ru_maxrss is KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


class RssSeries:
    """RSS over time with bounded memory: a sample every ``interval_s``; past ``max_points`` every other point
    is dropped and the interval doubles."""

    def __init__(self, interval_s: float = 1.0, max_points: int = 512) -> None:
        self.interval_s = float(interval_s)
        self.max_points = int(max_points)
        self.points: list[tuple[float, float]] = []
        self._next = 0.0

    def sample(self, t: float, force: bool = False) -> None:
        """Record RSS at run time ``t`` seconds if the interval has passed (or ``force``)."""
        if not force and t < self._next:
            return
        self.points.append((round(t, 3), round(rss_mb(), 2)))
        self._next = t + self.interval_s
        if len(self.points) > self.max_points:
            self.points = self.points[::2]
            self.interval_s *= 2


class RateLimitedLog:
    """Log lines for a problem that may repeat many times a second (a flooded OSC port, a frame stage failing every
    frame, a feedback target that is gone): the first occurrences are logged at once, later ones are counted and
    show up at most once per ``interval_s``, so a flood costs a few lines, not thousands. Thread-safe.

    One limiter, two ways in:

    * :meth:`note` -- counted *reasons* (the OSC server's rejections, feedback send errors). The first ``burst``
      of each reason are logged at once at WARNING (``"<what>: <reason>: <detail> (further ones summarised every
      <interval_s> s)"``); later ones are counted per reason and summarised in one WARNING line
      (``"<what>: N more in the last T s (reason=n, ...)"``) by the first :meth:`note` or :meth:`flush` after
      ``interval_s``.
    * :meth:`error` -- failures worth a traceback (the live loop's frame stages). The first ``burst`` calls in
      total are logged at once at ERROR; later ones at most one per ``interval_s``, with
      ``" (N similar suppressed)"`` appended.

    Args:
        logger: where the lines go.
        what: prefix of :meth:`note`'s lines (e.g. ``"osc: rejected"``).
        interval_s: seconds between summary lines (:meth:`note`) or logged errors (:meth:`error`) after the burst.
        burst: occurrences logged at once: per reason for :meth:`note`, in total for :meth:`error`.

    Attributes:
        count: occurrences so far (:meth:`note` and :meth:`error` calls).
    """

    def __init__(self, logger: logging.Logger, what: str = "", interval_s: float = 10.0, burst: int = 1) -> None:
        self.logger = logger
        self.what = what
        self.interval_s = float(interval_s)
        self.burst = int(burst)
        self.count = 0
        self._lock = threading.Lock()
        self._seen: dict[str, int] = {}
        self._pending: dict[str, int] = {}
        self._last = time.monotonic()  # of the last summary line (note)
        self._last_error = -math.inf  # of the last logged error (error)
        self._suppressed = 0

    def note(self, reason: str, detail: str = "") -> None:
        """Count one ``reason``; log it now if it is among the first ``burst`` of its kind, else in the next summary."""
        with self._lock:
            self.count += 1
            seen = self._seen.get(reason, 0)
            first = seen < self.burst
            if first:
                self._seen[reason] = seen + 1
            else:
                self._pending[reason] = self._pending.get(reason, 0) + 1
        if first:
            self.logger.warning(
                "%s: %s%s (further ones summarised every %g s)",
                self.what,
                reason,
                f": {detail}" if detail else "",
                self.interval_s,
            )
        self.flush()

    def flush(self, force: bool = False) -> None:
        """Log the pending :meth:`note` summary if ``interval_s`` has passed since the last one (or ``force``)."""
        now = time.monotonic()
        with self._lock:
            if not self._pending or (not force and now - self._last < self.interval_s):
                return
            pending, self._pending = self._pending, {}
            elapsed, self._last = now - self._last, now
        summary = ", ".join(f"{k}={v}" for k, v in sorted(pending.items()))
        self.logger.warning("%s: %d more in the last %.0f s (%s)", self.what, sum(pending.values()), elapsed, summary)

    def error(self, msg: str, *args: Any, exc_info: bool = True) -> None:
        """Log ``msg % args`` at ERROR (with the current exception's traceback when ``exc_info``) if it is among
        the first ``burst`` calls or ``interval_s`` has passed since the last one logged; else count it as suppressed."""
        now = time.monotonic()
        with self._lock:
            self.count += 1
            log_now = self.count <= self.burst or now - self._last_error >= self.interval_s
            if log_now:
                suppressed, self._suppressed = self._suppressed, 0
                self._last_error = now
            else:
                self._suppressed += 1
        if log_now:
            extra = f" ({suppressed} similar suppressed)" if suppressed else ""
            self.logger.error(msg + extra, *args, exc_info=exc_info)
