"""Live parameters: the declaration, validation and clamping, the bounded queue, per-frame apply, smoothing."""

from __future__ import annotations

import math
import threading
import time

import pytest

from installation.params import PARAMS, ParamError, Parameters, ParamSpec, spec_for_address

CONTRACT_NAMES = [  # docs/CONTRACTS.md, "Live installation"
    "scene",
    "crossfade_s",
    "grid/n",
    "morph/trail",
    "noise/seed",
    "noise/walk_speed",
    "sound/on",
    "sound/level",
    "sound/mix",
    "sound/pitch",
    "sound/density",
    "sound/answer",
    "overlay",
    "blackout",
    "brightness",
    "vad/threshold_db",
    "scene_class",
    "preset/load",
    "quit",
    "capture/consent",
    "capture/decline",
    "capture/go",
    "capture/next",
    "rate/1",
    "rate/2",
    "rate/3",
    "rate/4",
    "rate/5",
    "rate/skip",
    "rate/replay",
]


def test_declaration_matches_the_contract() -> None:
    assert list(PARAMS) == CONTRACT_NAMES
    assert PARAMS["scene"].choices == ("portrait", "grid", "morph")
    assert (PARAMS["grid/n"].min, PARAMS["grid/n"].max) == (1, 4)
    assert (PARAMS["sound/pitch"].min, PARAMS["sound/pitch"].max) == (-12, 12)
    assert (PARAMS["sound/density"].min, PARAMS["sound/density"].max) == (1, 60)
    assert (PARAMS["vad/threshold_db"].min, PARAMS["vad/threshold_db"].max) == (-80, 0)
    assert PARAMS["quit"].kind == "trigger" and PARAMS["preset/load"].kind == "string"
    for spec in PARAMS.values():
        assert spec.address == "/avgan/" + spec.name
        assert spec_for_address(spec.address) is spec
        assert spec.doc
        if spec.kind != "trigger":
            assert spec.coerce(spec.default, clamp=False) == spec.default
    with pytest.raises(TypeError):
        PARAMS["x"] = PARAMS["scene"]  # type: ignore[index]


def test_spec_rejects_bad_declarations() -> None:
    with pytest.raises(ValueError, match="default"):
        ParamSpec("a", "float", 5.0, 0.0, 1.0)
    with pytest.raises(ValueError, match="choices"):
        ParamSpec("a", "enum", "x")
    with pytest.raises(ValueError, match="smoothing"):
        ParamSpec("a", "int", 1, 0, 2, smoothing_s=0.1)
    with pytest.raises(ValueError, match="name"):
        ParamSpec("Bad Name", "bool", False)


@pytest.mark.parametrize(
    ("name", "value", "ok", "reason", "expected"),
    [
        ("sound/level", 0.5, True, "ok", 0.5),
        ("sound/level", 3, True, "clamped", 1.0),
        ("sound/level", -0.5, True, "clamped", 0.0),
        ("sound/level", math.nan, False, "not_finite", None),
        ("sound/level", math.inf, False, "not_finite", None),
        ("sound/level", -math.inf, False, "not_finite", None),
        ("sound/level", "0.5", False, "wrong_type", None),
        ("sound/level", True, False, "wrong_type", None),
        ("sound/level", None, False, "wrong_type", None),
        ("grid/n", 3.4, True, "ok", 3),
        ("grid/n", 9, True, "clamped", 4),
        ("noise/seed", -5, True, "clamped", 0),
        ("sound/on", 0.0, True, "ok", False),
        ("sound/on", 1, True, "ok", True),
        ("sound/on", "on", False, "wrong_type", None),
        ("scene", "grid", True, "ok", "grid"),
        ("scene", 2, True, "ok", "morph"),
        ("scene", 2.0, True, "ok", "morph"),
        ("scene", 1.5, False, "bad_choice", None),
        ("scene", 3, False, "bad_choice", None),
        ("scene", "disco", False, "bad_choice", None),
        ("preset/load", "gallery", True, "ok", "gallery"),
        ("preset/load", "../etc/passwd", False, "bad_value", None),
        ("preset/load", "x" * 500, False, "too_long", None),
        ("preset/load", 3, False, "wrong_type", None),
        ("quit", None, True, "ok", True),
        ("nope", 1, False, "unknown_param", None),
    ],
)
def test_enqueue_validates_and_clamps(name: str, value: object, ok: bool, reason: str, expected: object) -> None:
    params = Parameters()
    result = params.enqueue(name, value, source="test")
    assert (result.ok, result.reason) == (ok, reason)
    params.apply_pending()
    if ok and name != "quit":
        assert params.target(name) == expected
        assert type(params.target(name)) is type(expected)
    stats = params.stats()
    assert stats["rejected"].get(reason, 0) == (0 if ok else 1)


def test_apply_pending_latest_wins_and_reports_changes() -> None:
    params = Parameters()
    assert params.apply_pending() == frozenset()
    params.enqueue("scene", "grid")
    params.enqueue("scene", "morph")
    params.enqueue("grid/n", 3)
    params.enqueue("overlay", False)  # equal to the current value: not a change
    assert params.get("scene") == "portrait"  # nothing happens before the frame applies it
    changed = params.apply_pending()
    assert changed == {"scene", "grid/n"} == params.changed
    assert params.get("scene") == "morph" and params.get("grid/n") == 3
    assert params.source("scene") == ""  # enqueue without a source
    assert params.apply_pending() == frozenset()
    # strings are commands: the same value again is a change again
    params.enqueue("preset/load", "gallery", source="osc:1.2.3.4")
    assert params.apply_pending() == {"preset/load"}
    params.enqueue("preset/load", "gallery")
    assert params.apply_pending() == {"preset/load"}
    assert params.source("preset/load") == ""


def test_triggers_fire_once() -> None:
    params = Parameters()
    for _ in range(3):
        params.enqueue("quit", True)
    params.enqueue("quit", False)  # a release later in the same frame does not cancel the press
    assert "quit" in params.apply_pending()
    assert params.fired("quit") and params.get("quit") is True
    assert params.apply_pending() == frozenset()
    assert not params.fired("quit") and params.get("quit") is False
    params.enqueue("quit", 0)
    assert params.apply_pending() == frozenset() and not params.fired("quit")
    with pytest.raises(ParamError):
        params.set("quit", True)


def test_tick_smooths_exponentially() -> None:
    params = Parameters()
    spec = PARAMS["brightness"]
    params.enqueue("brightness", 0.0)
    params.apply_pending()
    assert params.target("brightness") == 0.0 and params.get("brightness") == 1.0
    params.tick(spec.smoothing_s)  # one time constant: 1 - 1/e of the way
    assert params.get("brightness") == pytest.approx(math.exp(-1.0))
    params.tick(0.0)
    params.tick(-1.0)  # no time, no movement
    assert params.get("brightness") == pytest.approx(math.exp(-1.0))
    for _ in range(200):
        params.tick(0.05)
    assert params.get("brightness") == 0.0  # snapped exactly
    # non-smoothed floats jump at apply time
    params.enqueue("crossfade_s", 1.5)
    params.apply_pending()
    assert params.get("crossfade_s") == 1.5
    assert params.published()["brightness"] == 0.0


def test_queue_is_bounded_and_drops_oldest() -> None:
    params = Parameters(queue_size=8)
    for i in range(20):
        assert params.enqueue("noise/seed", i).ok
    stats = params.stats()
    assert stats["dropped"] == 12 and stats["pending"] == 8 and stats["enqueued"] == 20
    params.apply_pending()
    assert params.get("noise/seed") == 19  # the newest survives


def test_enqueue_from_many_threads() -> None:
    params = Parameters(queue_size=100_000)
    per_thread, threads = 2000, 4

    def writer(k: int) -> None:
        for i in range(per_thread):
            params.enqueue("noise/seed", k * per_thread + i, source=f"t{k}")
            params.enqueue("sound/level", math.nan)

    workers = [threading.Thread(target=writer, args=(k,)) for k in range(threads)]
    start = time.perf_counter()
    for w in workers:
        w.start()
    frames = 0
    while any(w.is_alive() for w in workers):
        params.apply_pending()
        params.tick(0.016)
        frames += 1
    for w in workers:
        w.join()
    params.apply_pending()
    elapsed = time.perf_counter() - start
    stats = params.stats()
    assert stats["enqueued"] == per_thread * threads
    assert stats["applied"] == per_thread * threads and stats["pending"] == 0 and stats["dropped"] == 0
    assert stats["rejected"] == {"not_finite": per_thread * threads}
    assert elapsed < 10.0


def test_initial_values_snapshot_and_sections() -> None:
    params = Parameters(initial={"scene": "grid", "grid/n": 4, "sound/level": 2.0})
    assert params.get("scene") == "grid" and params.get("grid/n") == 4
    assert params.get("sound/level") == 1.0  # clamped
    snap = params.snapshot()
    assert set(snap) == set(PARAMS)
    with pytest.raises(TypeError):
        snap["scene"] = "morph"  # type: ignore[index]
    assert params.section("grid") == {"n": 4}
    assert params.section("sound") == {"on": True, "level": 1.0, "mix": 0.5, "pitch": 0.0, "density": 12.0, "answer": "answer"}
    assert params.set("sound/mix", 0.2, immediate=True) and params.get("sound/mix") == 0.2
    with pytest.raises(ParamError, match="unknown parameter"):
        Parameters(initial={"volume": 1})
    with pytest.raises(ParamError, match="sound/on"):
        Parameters(initial={"sound/on": "yes"})


def test_format_and_range_text_for_the_overlay() -> None:
    assert PARAMS["vad/threshold_db"].format(-50.0) == "-50.0 dBFS"
    assert PARAMS["sound/level"].format(0.8) == "0.80"
    assert PARAMS["overlay"].format(True) == "on"
    assert PARAMS["sound/pitch"].range_text() == "float -12 to 12 semitones"
    assert PARAMS["scene"].range_text() == "one of portrait, grid, morph"
