"""Mean opinion scores from rating-station files (``training.ratings``, ``run.py evaluate --ratings``)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

import run
from training.ratings import mos, parse_rating, read_ratings, summarize, t_quantile


def line(model: str, score: int | None, session: str = "s1", **extra: Any) -> str:
    return json.dumps({"model": model, "score": score, "skipped": score is None, "session": session, **extra})


@pytest.mark.parametrize(
    ("df", "table"),
    [(1, 12.706), (2, 4.303), (4, 2.776), (10, 2.228), (30, 2.042), (120, 1.980)],
)
def test_t_quantile_matches_the_table(df: int, table: float) -> None:
    assert t_quantile(0.975, df) == pytest.approx(table, abs=5e-4)


def test_t_quantile_limits_and_errors() -> None:
    assert t_quantile(0.975, 1e7) == pytest.approx(1.959964, abs=1e-5)  # the normal quantile
    assert t_quantile(0.5, 3) == pytest.approx(0.0, abs=1e-12)
    assert t_quantile(0.025, 10) == pytest.approx(-2.228, abs=5e-4)
    for p, df in ((0.0, 3), (1.0, 3), (0.9, 0)):
        with pytest.raises(ValueError):
            t_quantile(p, df)


def test_mos_and_interval_by_hand() -> None:
    # scores 4 5 3 4 4: mean 4, s^2 = (0 + 1 + 1 + 0 + 0) / 4 = 0.5, half-width t(0.975, 4) * sqrt(0.5 / 5)
    m = mos([4, 5, 3, 4, 4])
    assert m["n"] == 5 and m["mos"] == 4.0 and m["std"] == pytest.approx(math.sqrt(0.5))
    assert m["ci_half_width"] == pytest.approx(2.7764451 * math.sqrt(0.1), rel=1e-6)  # = 0.87799
    assert (m["ci_low"], m["ci_high"]) == pytest.approx((4 - 0.877994, 4 + 0.877994), abs=1e-5)
    two = mos([1, 2])  # s = 0.7071, half = 12.706 * 0.7071 / sqrt(2) = 6.353
    assert two["ci_half_width"] == pytest.approx(6.3531, abs=1e-3)
    assert mos([3]) == {
        "n": 1,
        "mos": 3.0,
        "std": None,
        "ci_half_width": None,
        "ci_low": None,
        "ci_high": None,
        "t": None,
    }
    assert mos([])["mos"] is None
    assert mos([5, 5, 5])["ci_half_width"] == 0.0


def test_parse_rating_accepts_scores_and_skips_only() -> None:
    assert parse_rating(line("m", 5), "f:1").score == 5
    assert parse_rating(line("m", None), "f:1").skipped
    bad = [
        ('{"model": "m", "score": 6}', "score"),
        ('{"model": "m", "score": true}', "score"),
        ('{"model": "m", "score": 4.5}', "score"),
        ('{"score": 4}', "model"),
        ('{"model": "m", "score": 4, "skipped": true}', "skipped"),
        ("[1, 2]", "JSON object"),
        ('{"model": "m", "sco', "torn"),
    ]
    for text, needle in bad:
        with pytest.raises(ValueError, match=needle) as info:
            parse_rating(text, "r.jsonl:7")
        assert str(info.value).startswith("r.jsonl:7: ")


def test_summarize_groups_by_model_with_skip_share(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    a.write_text("\n".join([line("A", 4), line("A", 5), line("B", 1), line("A", None), "", line("A", 3, "s2")]) + "\n")
    b.write_text(line("B", 2, "s9") + "\n" + '{"model": "B", "score": 9}\n' + line("B", None, "s9") + "\n" + '{"mo')
    ratings, problems = read_ratings([a, b])
    assert len(ratings) == 7 and len(problems) == 2
    assert problems[0].startswith(f"{b}:2: ") and problems[1].startswith(f"{b}:4: ")
    assert f"{b}:2" in caplog.text and f"{b}:4" in caplog.text
    s = summarize(ratings)
    assert list(s) == ["A", "B"]
    assert s["A"]["n"] == 3 and s["A"]["mos"] == 4.0 and s["A"]["n_skipped"] == 1 and s["A"]["skip_share"] == 0.25
    assert s["A"]["n_sessions"] == 2 and s["A"]["histogram"] == {"1": 0, "2": 0, "3": 1, "4": 1, "5": 1}
    assert s["A"]["ci_half_width"] == pytest.approx(t_quantile(0.975, 2) * 1.0 / math.sqrt(3))
    assert s["B"]["n"] == 2 and s["B"]["mos"] == 1.5 and s["B"]["skip_share"] == pytest.approx(1 / 3)


def test_evaluate_ratings_cli_prints_a_table_and_writes_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a, b, out = tmp_path / "a.jsonl", tmp_path / "b.jsonl", tmp_path / "eval" / "mos.json"
    a.write_text("".join(line("wav2pix-64@aaaa", s) + "\n" for s in (4, 5, 3, 4, 4)))
    b.write_text("".join(line("other@bbbb", s) + "\n" for s in (2, 3, None)) + '{"torn')
    assert run.main(["evaluate", "--ratings", str(a), "--ratings", str(b), "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "95 % CI" in printed and "[3.12, 4.88]" in printed and "1 invalid lines skipped" in printed
    row = next(x for x in printed.splitlines() if x.startswith("wav2pix-64@aaaa"))
    assert row.split()[1:4] == ["5", "4.00", "0.71"]
    data = json.loads(out.read_text())
    assert data["confidence"] == 0.95 and "P.800" in data["method"] and data["n_ratings"] == 8
    assert data["models"]["wav2pix-64@aaaa"]["ci_low"] == pytest.approx(3.122006, abs=1e-5)
    assert data["models"]["other@bbbb"]["n_skipped"] == 1 and data["n_invalid_lines"] == 1


def test_evaluate_bad_input_gives_one_line_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    def error(argv: list[str]) -> str:
        assert run.main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and "\n" not in err
        return err

    assert "--ratings" in error(["evaluate"]) and "BUNDLE_OR_RUN" in error(["evaluate"])
    assert "--data" in error(["evaluate", str(tmp_path)])
    assert str(tmp_path / "none.jsonl") in error(["evaluate", "--ratings", str(tmp_path / "none.jsonl")])
    empty = tmp_path / "empty.jsonl"
    empty.write_text('{"torn\n')
    assert "no valid ratings" in error(["evaluate", "--ratings", str(empty)])
    ok = tmp_path / "ok.jsonl"
    ok.write_text(line("m", 3) + "\n")
    assert "--json" in error(["evaluate", "--ratings", str(ok), "--json", str(tmp_path / "ok.jsonl" / "x.json")])
