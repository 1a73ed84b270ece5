"""Mean opinion scores from rating-station files: ``run.py evaluate --ratings RATINGS.jsonl [...] [--json OUT]``.

Method (ITU-T P.800, absolute category rating): each answer is a score on the five-point scale 1 bad, 2 poor,
3 fair, 4 good, 5 excellent. Per model (the ``model`` key the rating station writes: bundle name + graph hash)
the mean opinion score is the arithmetic mean of its ``n`` scores; its 95 % confidence interval is the Student
t-interval of the mean,

    MOS +- t(0.975, n - 1) * s / sqrt(n),

with ``s`` the sample standard deviation (``ddof = 1``) and ``t(p, df)`` the ``p`` quantile of Student's t
distribution with ``df`` degrees of freedom (:func:`t_quantile`). It treats the answers as independent draws;
answers of one visitor (one ``session``) are correlated, so with few sessions the interval is optimistic --
``n_sessions`` is reported for that reason. Skipped faces carry no score: they count only in ``skip_share`` =
skipped / (rated + skipped). With ``n < 2`` the standard deviation and the interval are undefined (``None``).

Input: JSON Lines written by :mod:`installation.rate`. Blank lines are ignored; a line that is not a JSON object,
lacks a string ``model``, or has neither a score in 1..5 (an int) nor ``"skipped": true`` is skipped with a
warning naming ``file:line`` (a torn last line after a crash is the usual case).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from engine.errors import UserError

log = logging.getLogger(__name__)

CONFIDENCE = 0.95
"""Two-sided confidence level of the reported intervals."""


class RatingsError(UserError, ValueError):
    """A ratings file that cannot be used (missing, unreadable, or without a single valid rating)."""


@dataclass(frozen=True)
class Rating:
    """One valid answer: ``model``, ``score`` (1-5, or ``None`` when skipped), ``session`` (``""`` if absent),
    and where it came from (``where`` = ``file:line``)."""

    model: str
    score: int | None
    session: str
    where: str

    @property
    def skipped(self) -> bool:
        return self.score is None


def parse_rating(line: str, where: str) -> Rating:
    """Parse one line of a ratings file.

    Raises:
        ValueError: not a JSON object, no string ``model``, or neither an int ``score`` in 1..5 nor
            ``"skipped": true`` (the message names ``where``).
    """
    try:
        data = json.loads(line)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{where}: not valid JSON ({exc.msg}; a torn line?)") from None
    if not isinstance(data, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(data).__name__}")
    model = data.get("model")
    if not isinstance(model, str) or not model:
        raise ValueError(f"{where}: missing or empty 'model'")
    score = data.get("score")
    skipped = data.get("skipped", False)
    if skipped is True:
        if score is not None:
            raise ValueError(f"{where}: 'skipped' is true but 'score' is {score!r}")
        parsed: int | None = None
    elif isinstance(score, int) and not isinstance(score, bool) and 1 <= score <= 5:
        parsed = score
    else:
        raise ValueError(f"{where}: 'score' must be an integer 1-5 (or 'skipped': true), got {score!r}")
    session = data.get("session")
    return Rating(model=model, score=parsed, session=session if isinstance(session, str) else "", where=where)


def read_ratings(paths: Iterable[str | Path]) -> tuple[list[Rating], list[str]]:
    """Read ratings files.

    Returns:
        (ratings, problems): the valid ratings in file order, and one message per skipped line (each also
        logged as a warning).

    Raises:
        RatingsError: a file is missing or unreadable (names it).
    """
    ratings: list[Rating] = []
    problems: list[str] = []
    for path in (Path(p) for p in paths):
        if not path.is_file():
            raise RatingsError(f"--ratings {path}: no such file")
        try:
            text = path.read_bytes().decode("utf-8", errors="replace")
        except OSError as exc:
            raise RatingsError(f"--ratings {path}: cannot read ({exc.strerror or exc})") from exc
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                ratings.append(parse_rating(line, f"{path}:{number}"))
            except ValueError as exc:
                problems.append(str(exc))
                log.warning("skipping %s", exc)
    return ratings, problems


def t_quantile(p: float, df: float) -> float:
    """The ``p`` quantile of Student's t distribution with ``df`` degrees of freedom (``scipy.stats.t.ppf``).

    E.g. ``t_quantile(0.975, 1) = 12.706``, ``t_quantile(0.975, 10) = 2.228``, ``t_quantile(0.975, 30) = 2.042``.

    Raises:
        ValueError: ``p`` outside (0, 1) or ``df`` <= 0.
    """
    if not 0.0 < p < 1.0:
        raise ValueError(f"p must be in (0, 1), got {p}")
    if not df > 0:
        raise ValueError(f"degrees of freedom must be > 0, got {df}")
    from scipy.stats import t

    return float(t.ppf(p, df))


def mos(scores: Sequence[float], confidence: float = CONFIDENCE) -> dict[str, Any]:
    """Mean opinion score and its Student t confidence interval.

    Args:
        scores: opinion scores (1-5), any length.
        confidence: two-sided level of the interval (0.95: ``t(0.975, n - 1)``).

    Returns:
        ``{"n", "mos", "std", "ci_half_width", "ci_low", "ci_high", "t"}``: ``std`` is the sample standard
        deviation (``ddof = 1``); ``ci_*`` the interval ``mos +- t * std / sqrt(n)``; ``t`` the quantile used.
        ``mos`` is ``None`` for ``n = 0``; ``std``, ``t`` and the interval are ``None`` for ``n < 2``.

    Raises:
        ValueError: ``confidence`` outside (0, 1).
    """
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    x = np.asarray(scores, np.float64)
    n = int(x.size)
    out: dict[str, Any] = {"n": n, "mos": None, "std": None, "ci_half_width": None, "ci_low": None, "ci_high": None}
    out["t"] = None
    if n == 0:
        return out
    mean = float(x.mean())
    out["mos"] = mean
    if n < 2:
        return out
    std = float(x.std(ddof=1))
    t = t_quantile(0.5 + confidence / 2.0, n - 1)
    half = t * std / math.sqrt(n)
    out.update(std=std, t=t, ci_half_width=half, ci_low=mean - half, ci_high=mean + half)
    return out


def summarize(ratings: Iterable[Rating], confidence: float = CONFIDENCE) -> dict[str, dict[str, Any]]:
    """Per-model figures, models sorted by name.

    Returns:
        ``{model: {"n", "mos", "std", "ci_half_width", "ci_low", "ci_high", "t", "n_skipped", "n_answers",
        "skip_share", "n_sessions", "histogram"}}`` where ``n`` counts scores, ``n_answers`` = scores + skips,
        ``skip_share`` = skips / answers, ``histogram`` = ``{"1": count, ..., "5": count}``.
    """
    scores: dict[str, list[int]] = {}
    skips: dict[str, int] = {}
    sessions: dict[str, set[str]] = {}
    for r in ratings:
        scores.setdefault(r.model, [])
        skips.setdefault(r.model, 0)
        sessions.setdefault(r.model, set()).add(r.session)
        if r.score is None:
            skips[r.model] += 1
        else:
            scores[r.model].append(r.score)
    out: dict[str, dict[str, Any]] = {}
    for model in sorted(scores):
        s = scores[model]
        answers = len(s) + skips[model]
        out[model] = {
            **mos(s, confidence),
            "n_skipped": skips[model],
            "n_answers": answers,
            "skip_share": skips[model] / answers if answers else None,
            "n_sessions": len(sessions[model]),
            "histogram": {str(k): s.count(k) for k in range(1, 6)},
        }
    return out


def format_table(summary: Mapping[str, Mapping[str, Any]], confidence: float = CONFIDENCE) -> str:
    """A plain-text table: model, n, MOS, std, the confidence interval, skips, sessions."""

    def f(v: Any, digits: int = 2) -> str:
        return "-" if v is None else f"{v:.{digits}f}"

    level = f"{100 * confidence:g} % CI"
    rows = [("model", "n", "MOS", "std", level, "skipped", "sessions")]
    for model, s in summary.items():
        ci = "-" if s["ci_low"] is None else f"[{s['ci_low']:.2f}, {s['ci_high']:.2f}]"
        skip = f"{s['n_skipped']} ({100 * s['skip_share']:.0f} %)" if s["skip_share"] is not None else "0"
        rows.append((model, str(s["n"]), f(s["mos"]), f(s["std"]), ci, skip, str(s["n_sessions"])))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in rows]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)


def report(paths: Sequence[str | Path], confidence: float = CONFIDENCE) -> dict[str, Any]:
    """Read ``paths`` and summarise them (JSON-ready).

    Returns:
        ``{"method", "confidence", "files", "n_ratings", "n_invalid_lines", "invalid_lines", "models"}`` with
        ``models`` from :func:`summarize`.

    Raises:
        RatingsError: a missing or unreadable file, or no valid rating at all.
    """
    ratings, problems = read_ratings(paths)
    if not ratings:
        raise RatingsError(
            f"--ratings {', '.join(str(p) for p in paths)}: no valid ratings"
            + (f" ({len(problems)} invalid lines; first: {problems[0]})" if problems else " (empty)")
        )
    return {
        "method": "ITU-T P.800 absolute category rating (1-5); mean opinion score with a Student t interval "
        "of the mean, t(0.5 + confidence/2, n-1) * s / sqrt(n)",
        "confidence": confidence,
        "files": [str(p) for p in paths],
        "n_ratings": len(ratings),
        "n_invalid_lines": len(problems),
        "invalid_lines": problems[:100],
        "models": summarize(ratings, confidence),
    }


def write_json(path: str | Path, data: Mapping[str, Any]) -> None:
    """Write ``data`` as indented JSON (temporary file + rename).

    Raises:
        RatingsError: the file or its folder cannot be written (names it).
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        tmp.replace(path)
    except OSError as exc:
        raise RatingsError(f"--json {path}: cannot write ({exc.strerror or exc})") from exc
