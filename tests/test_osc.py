"""OSC control: strict decoding, a real python-osc client on loopback, a flood of junk beside valid messages,
feedback, OSCQuery over HTTP, and the generated controller files."""

from __future__ import annotations

import importlib.util
import json
import math
import random
import socket
import struct
import threading
import time
import urllib.error
import urllib.request
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

import pytest
from pythonosc.osc_message_builder import OscMessageBuilder
from pythonosc.udp_client import SimpleUDPClient

from installation.osc import (
    REJECTIONS,
    Feedback,
    Message,
    OscControl,
    OscError,
    OscQueryServer,
    OscServer,
    Rejected,
    decode_packet,
    unix_to_ntp,
    wire_value,
)
from installation.params import PARAMS, Parameters
from installation.presets import load_preset

ROOT = Path(__file__).resolve().parents[1]
LOCAL = ("127.0.0.1", 50000)


def msg(address: str, *args: Any, types: str | None = None) -> bytes:
    """A datagram built with python-osc (the sender side of TouchOSC / Max)."""
    builder = OscMessageBuilder(address)
    for i, arg in enumerate(args):
        builder.add_arg(arg, types[i] if types else None)
    return builder.build().dgram


def bundle(timetag: float | int, *messages: bytes) -> bytes:
    """A bundle with a raw NTP time tag (int) or a Unix time (float)."""
    tag = timetag if isinstance(timetag, int) else unix_to_ntp(timetag)
    body = b"".join(struct.pack(">i", len(m)) + m for m in messages)
    return b"#bundle\x00" + struct.pack(">Q", tag) + body


def raw_message(address: bytes, tags: bytes = b",", payload: bytes = b"") -> bytes:
    def pad(b: bytes) -> bytes:
        b += b"\x00"
        return b + b"\x00" * (-len(b) % 4)

    return pad(address) + pad(tags) + payload


def wait_for(condition: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.005)
    return condition()


# -- decoding (no sockets) ------------------------------------------------------------------------------


def test_decode_messages_of_every_type() -> None:
    data = msg("/a/b", 1, 2.5, "x", b"\x01\x02", True, False, None, types="ifsbTFN")
    (item,) = decode_packet(data)
    assert isinstance(item, Message) and item.address == "/a/b" and item.timetag is None
    assert item.args == (1, 2.5, "x", b"\x01\x02", True, False, None)
    (item,) = decode_packet(raw_message(b"/x", b",hdI[ii]", struct.pack(">qd", 2**40, 0.25) + struct.pack(">ii", 3, 4)))
    assert item.args == (2**40, 0.25, True, [3, 4])
    (item,) = decode_packet(raw_message(b"/no/tags")[:12])  # OSC 1.0: the type tag string may be missing
    assert item == Message("/no/tags", ())


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "malformed"),
        (b"/ab", "malformed"),  # not a multiple of 4
        (b"hello!!!", "malformed"),
        (b"/abc", "malformed"),  # unterminated
        (raw_message(b"/a\xff\xfe"), "non_utf8"),
        (raw_message(b"/a", b",s", b"\xff\xfe\x00\x00"), "non_utf8"),
        (raw_message(b"/a b"), "bad_address"),
        (raw_message(b"/" + b"a" * 300), "bad_address"),
        (raw_message(b"/a", b",f"), "malformed"),  # argument missing
        (raw_message(b"/a", b",Q"), "malformed"),  # unknown type tag
        (raw_message(b"/a", b"xf", b"\x00" * 4), "malformed"),  # no comma
        (raw_message(b"/a", b",i", b"\x00" * 8), "malformed"),  # trailing bytes
        (raw_message(b"/a", b",[i", b"\x00" * 4), "malformed"),  # unbalanced array
        (raw_message(b"/a", b",b", struct.pack(">i", 100)), "malformed"),  # blob past the end
        (b"/a\x00\x01", "malformed"),  # non-zero padding
        (b"#bundle\x00" + b"\x00" * 4, "malformed"),  # short header
        (bundle(1, b"/a\x00\x00") + b"\x00\x00\x00\x09", "malformed"),  # bad element size
    ],
)
def test_decode_rejects(data: bytes, reason: str) -> None:
    items = decode_packet(data)
    assert isinstance(items[-1], Rejected) and items[-1].reason == reason


def test_decode_bundles() -> None:
    now = time.time()
    good, bad = msg("/avgan/overlay", 1), raw_message(b"/x\xff")
    items = decode_packet(bundle(1, good, bad, good))
    assert [type(i).__name__ for i in items] == ["Message", "Rejected", "Message"]
    assert items[0].timetag is None and items[1].reason == "non_utf8"
    (item,) = decode_packet(bundle(now + 5.0, good))
    assert item.timetag == pytest.approx(now + 5.0, abs=1e-6)
    (item,) = decode_packet(bundle(now + 5.0, bundle(1, good)))  # nested: no earlier than the outer tag
    assert item.timetag == pytest.approx(now + 5.0, abs=1e-6)
    deep = good
    for _ in range(40):
        deep = bundle(1, deep)
    assert decode_packet(deep)[-1].reason == "malformed"
    many = bundle(1, *([good] * 400))
    items = decode_packet(many)
    assert len(items) == 257 and items[-1].reason == "malformed"


# -- the server's per-datagram path (no sockets) --------------------------------------------------------


def test_handle_datagram_outcomes() -> None:
    params = Parameters()
    server = OscServer(params, port=0)
    now = time.time()
    cases = [
        (msg("/avgan/sound/level", 0.25), ["handled"]),
        (msg("/avgan/sound/level", 7.0), ["handled"]),  # clamped
        (msg("/avgan/sound/level", math.nan), ["not_finite"]),
        (msg("/avgan/sound/level", math.inf), ["not_finite"]),
        (msg("/avgan/sound/level", "loud"), ["wrong_type"]),
        (msg("/avgan/sound/level", 0.1, 0.2), ["wrong_count"]),
        (msg("/avgan/sound/level"), ["wrong_count"]),
        (msg("/avgan/scene", "morph"), ["handled"]),
        (msg("/avgan/scene", "disco"), ["bad_choice"]),
        (msg("/avgan/grid/n", 3.0), ["handled"]),  # TouchOSC faders send floats
        (msg("/avgan/overlay", True), ["handled"]),
        (msg("/avgan/quit", 0.0), ["ignored"]),  # a button's release
        (msg("/avgan/nothing", 1), ["unknown_address"]),
        (msg("/other", 1), ["unknown_address"]),
        (msg("/avgan/*/*/*/*/*/x", 1), ["bad_pattern"]),
        (bundle(now + 60.0, msg("/avgan/blackout", True)), ["future_timetag"]),
        (bundle(now - 60.0, msg("/avgan/brightness", 0.5)), ["handled"]),  # late: at once
        (bundle(1, msg("/avgan/noise/seed", 42), raw_message(b"/\xff")), ["handled", "non_utf8"]),
        (b"\x00\x01\x02", ["malformed"]),
        (msg("/avgan/query"), ["no_feedback"]),
    ]
    for data, expected in cases:
        assert server.handle_datagram(data, LOCAL, now=now) == expected, data
    params.apply_pending()
    assert params.target("sound/level") == 1.0 and params.get("scene") == "morph" and params.get("grid/n") == 3
    assert params.get("overlay") is True and params.get("noise/seed") == 42 and not params.get("blackout")
    assert params.source("scene") == "osc:127.0.0.1"
    stats = server.stats.snapshot()
    assert stats["packets"] == len(cases) and stats["items"] == sum(len(e) for _, e in cases)
    assert stats["handled"] + stats["ignored"] + stats["rejected_total"] == stats["items"]
    assert set(stats["rejected"]) <= set(REJECTIONS)


def test_patterns_reach_parameters_but_not_commands() -> None:
    params = Parameters()
    server = OscServer(params, port=0)
    assert server.handle_datagram(msg("/avgan/sound/{level,mix}", 0.3), LOCAL) == ["handled"]
    assert server.handle_datagram(msg("/avgan/q*", 1), LOCAL) == ["unknown_address"]  # quit/query: exact only
    params.apply_pending()
    assert params.target("sound/level") == pytest.approx(0.3) and params.target("sound/mix") == pytest.approx(0.3)
    assert not params.fired("quit")


def test_allowlist() -> None:
    params = Parameters()
    server = OscServer(params, port=0, allowlist=["10.1.0.0/16", "192.168.1.20"])
    data = msg("/avgan/overlay", True)
    assert server.handle_datagram(data, ("127.0.0.1", 1)) == ["not_allowed"]
    assert server.handle_datagram(data, ("10.1.2.3", 1)) == ["handled"]
    assert server.handle_datagram(data, ("192.168.1.20", 1)) == ["handled"]
    assert server.handle_datagram(data, ("192.168.1.21", 1)) == ["not_allowed"]
    assert server.handle_datagram(data, ("not an ip", 1)) == ["not_allowed"]


def test_fuzz_without_sockets() -> None:
    """Random bytes and mutated valid packets: never raises, every item accounted for, valid ones land."""
    rng = random.Random(1234)
    params = Parameters()
    server = OscServer(params, port=0)
    valid = [msg("/avgan/sound/mix", 0.125), msg("/avgan/scene", "grid"), bundle(1, msg("/avgan/grid/n", 4))]
    started = time.perf_counter()
    for i in range(4000):
        kind = i % 4
        if kind == 0:
            data = bytes(rng.getrandbits(8) for _ in range(rng.randrange(0, 96)))
        elif kind == 1:
            base = bytearray(rng.choice(valid))
            for _ in range(rng.randrange(1, 4)):
                base[rng.randrange(len(base))] = rng.getrandbits(8)
            data = bytes(base)
        elif kind == 2:
            data = rng.choice([b"/", b"#bundle\x00"]) + bytes(rng.getrandbits(8) for _ in range(rng.randrange(0, 64)))
        else:
            data = rng.choice(valid)
        outcomes = server.handle_datagram(data, LOCAL)
        assert outcomes and all(o in REJECTIONS or o in ("handled", "ignored") for o in outcomes)
    elapsed = time.perf_counter() - started
    stats = server.stats.snapshot()
    assert stats["packets"] == 4000 and "internal_error" not in stats["rejected"]
    assert stats["handled"] + stats["ignored"] + stats["rejected_total"] == stats["items"]
    assert stats["handled"] >= 1000  # at least the untouched valid ones
    params.apply_pending()
    assert params.get("grid/n") in (1, 2, 3, 4) and params.get("scene") in PARAMS["scene"].choices
    assert elapsed < 10.0


# -- over the network -----------------------------------------------------------------------------------


def test_loopback_client_takes_effect_after_apply_pending() -> None:
    params = Parameters()
    with OscServer(params, host="127.0.0.1", port=0) as server:
        host, port = server.address
        assert port != 0 and server.running
        client = SimpleUDPClient(host, port)
        client.send_message("/avgan/sound/level", 0.25)
        client.send_message("/avgan/scene", "grid")
        client.send_message("/avgan/grid/n", 3)
        client.send_message("/avgan/blackout", 1)
        client.send_message("/avgan/quit", [])
        assert wait_for(lambda: server.stats.snapshot()["handled"] == 5)
        assert params.get("scene") == "portrait"  # nothing changes until the frame applies the queue
        changed = params.apply_pending()
        assert {"sound/level", "scene", "grid/n", "blackout", "quit"} <= changed
        assert params.target("sound/level") == 0.25 and params.get("scene") == "grid"
        assert params.get("grid/n") == 3 and params.get("blackout") is True and params.fired("quit")
    assert not server.running


def test_flood_of_junk_beside_valid_messages() -> None:
    """Junk and valid packets interleaved: the server stays up, never blocks, counts everything, and the
    valid ones take effect. Sent in batches that wait for the server, so no datagram is lost in the kernel
    and the counters must match exactly; the thread count does not grow."""
    rng = random.Random(7)
    params = Parameters()
    server = OscServer(params, host="127.0.0.1", port=0).start()
    threads_before = threading.active_count()
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    now = time.time()
    junk_makers: list[Callable[[], bytes]] = [
        lambda: bytes(rng.getrandbits(8) for _ in range(rng.randrange(1, 200))),
        lambda: raw_message(b"/avgan/\xff\xfe"),  # non-UTF-8 address
        lambda: msg("/avgan/sound/level", math.nan),
        lambda: msg("/avgan/sound/level", -math.inf),
        lambda: msg("/avgan/sound/level", "x"),  # wrong type
        lambda: msg("/avgan/scene", 1, 2),  # wrong count
        lambda: bundle(now + 3600.0, msg("/avgan/blackout", 1)),  # future time tag
        lambda: msg("/avgan/unknown", 1.0),
        lambda: b"#bundle\x00" + bytes(rng.getrandbits(8) for _ in range(40)),
    ]
    sent_packets = sent_valid = 0
    expected_items = 0
    last_level = last_seed = None
    started = time.perf_counter()
    try:
        for batch in range(20):
            for i in range(100):
                if i % 4 == 0:
                    last_level = round(rng.random(), 3)
                    last_seed = batch * 100 + i
                    data = bundle(1, msg("/avgan/sound/level", last_level), msg("/avgan/noise/seed", last_seed))
                    sent_valid += 2
                    expected_items += 2
                else:
                    data = rng.choice(junk_makers)()
                    expected_items += max(1, len(decode_packet(data)))
                sock.sendto(data, server.address)
                sent_packets += 1
            target = sent_packets
            assert wait_for(lambda: server.stats.snapshot()["packets"] == target), "datagrams lost or stuck"  # noqa: B023
            assert threading.active_count() == threads_before
        elapsed = time.perf_counter() - started
        stats = server.stats.snapshot()
        assert server.running and stats["packets"] == sent_packets == 2000
        assert stats["items"] == expected_items
        assert stats["handled"] == sent_valid
        assert stats["handled"] + stats["ignored"] + stats["rejected_total"] == stats["items"]
        assert {"malformed", "non_utf8", "not_finite", "wrong_type", "future_timetag"} <= set(stats["rejected"])
        assert "internal_error" not in stats["rejected"]
        assert not params.get("blackout")
        params.apply_pending()
        assert params.target("sound/level") == pytest.approx(last_level, abs=1e-6)
        assert params.get("noise/seed") == last_seed
        # still answering afterwards
        sock.sendto(msg("/avgan/overlay", True), server.address)
        assert wait_for(lambda: server.stats.snapshot()["packets"] == sent_packets + 1)
        params.apply_pending()
        assert params.get("overlay") is True
        assert elapsed < 15.0
    finally:
        sock.close()
        server.stop()
    assert wait_for(lambda: threading.active_count() == threads_before - 1, 3.0)


def test_port_in_use_is_a_user_error() -> None:
    params = Parameters()
    with OscServer(params, port=0) as first:
        with pytest.raises(OscError, match="cannot listen"):
            OscServer(params, port=first.address[1]).start()


# -- feedback -------------------------------------------------------------------------------------------


@pytest.fixture
def receiver() -> Any:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(2.0)
    yield sock
    sock.close()


def drain(sock: socket.socket, count: int) -> list[Message]:
    out = []
    for _ in range(count):
        data, _ = sock.recvfrom(65535)
        out.extend(i for i in decode_packet(data) if isinstance(i, Message))
    return out


def test_feedback_status_changes_events_and_queries(receiver: socket.socket) -> None:
    params = Parameters()
    feedback = Feedback("127.0.0.1", receiver.getsockname()[1], rate_hz=10.0, heartbeat_s=5.0)
    feedback.status(fps=59.5, level=0.25, scene="portrait", input="ok", backend="onnxruntime-cpu")
    with pytest.raises(KeyError):
        feedback.status(volume=1)
    feedback.event("preset loaded")
    params.enqueue("scene", "morph")
    params.enqueue("overlay", True)
    feedback.note_changes(params.apply_pending())
    sent = feedback.pump(params.published_targets(), now=100.0)
    assert sent == 1 + 5 + 2
    got = {m.address: m.args for m in drain(receiver, sent)}
    assert got["/avgan/status/event"] == ("preset loaded",)
    assert got["/avgan/status/fps"] == (60,)  # whole frames per second
    assert got["/avgan/status/backend"] == ("onnxruntime-cpu",)
    assert got["/avgan/scene"] == (2,) and got["/avgan/overlay"] == (1,)  # enum index, bool as int
    assert feedback.pump(params.published_targets(), now=100.05) == 0  # rate-limited
    assert feedback.pump(params.published_targets(), now=100.2) == 0  # nothing changed: nothing sent
    feedback.status(fps=59.7, level=0.253)  # the same after rounding (60 fps, level 0.25)
    assert feedback.pump(params.published_targets(), now=100.4) == 0
    feedback.status(level=0.5)
    assert feedback.pump(params.published_targets(), now=100.6) == 1
    assert [(m.address, m.args) for m in drain(receiver, 1)] == [("/avgan/status/level", (0.5,))]
    assert feedback.pump(params.published_targets(), now=105.0) == 5  # heartbeat: every status value again
    drain(receiver, 5)
    # /avgan/query through the server: the targets
    server = OscServer(params, port=0, feedback=feedback)
    assert server.handle_datagram(msg("/avgan/query", "sound/level", "/avgan/grid/n"), LOCAL) == ["handled"]
    got = {m.address: m.args for m in drain(receiver, 2)}
    assert got == {"/avgan/sound/level": (pytest.approx(0.8),), "/avgan/grid/n": (2,)}
    assert server.handle_datagram(msg("/avgan/query", "volume"), LOCAL) == ["unknown_param"]
    assert server.handle_datagram(msg("/avgan/query"), LOCAL) == ["handled"]
    states = sum(1 for spec in PARAMS.values() if spec.kind != "trigger")
    assert len(drain(receiver, states)) == states  # every parameter but the triggers
    feedback.close()


def test_a_fader_gets_the_value_it_sent_not_one_from_the_glide(receiver: socket.socket) -> None:
    """The TouchOSC report: ``/avgan/brightness 0.0`` was answered with 0.764 (mid-glide) and never with 0.0, so the
    fader jumped back. Through the real server and feedback on loopback, frames at 60 Hz for 5 s: the controller
    hears exactly the value it sent (clamped where needed), once; the smoothed value only where the preset asks."""
    config = load_preset(
        "headless",
        overrides={
            "osc": {
                "port": 0,
                "oscquery": False,
                "feedback_port": receiver.getsockname()[1],
                "feedback_smoothed": ["brightness"],
                "heartbeat_s": 0,
            }
        },
    ).osc
    params = Parameters()
    with OscControl(params, config) as control:
        assert control.server is not None
        client = SimpleUDPClient(*control.server.address)
        client.send_message("/avgan/brightness", 0.0)
        client.send_message("/avgan/sound/level", 1.5)  # out of range: clamped to 1.0
        assert wait_for(lambda: control.stats()["osc"]["handled"] == 2)
        now = 1000.0
        for _ in range(300):  # 5 s: the 0.3 s glide arrives (snaps within 1e-6 after ~4.1 s)
            params.apply_pending()
            params.tick(1 / 60)
            feedback = control.feedback
            assert feedback is not None
            feedback.note_changes(params.changed)  # what control.pump(params) does, on the test's clock
            feedback.pump(params.published_targets(), now=now, current=params.published())
            now += 1 / 60
        received = []
        receiver.settimeout(0.5)
        try:
            while True:
                data, _ = receiver.recvfrom(65535)
                received.extend(m for m in decode_packet(data) if isinstance(m, Message))
        except TimeoutError:
            pass
    on_fader = [m.args[0] for m in received if m.address == "/avgan/brightness"]
    assert on_fader == [0.0]  # the target, once: no value from the glide ever reaches the fader
    assert [m.args[0] for m in received if m.address == "/avgan/sound/level"] == [1.0]
    glide = [m.args[0] for m in received if m.address == "/avgan/status/smoothed/brightness"]
    assert len(glide) > 5 and glide == sorted(glide, reverse=True)  # the glide, where asked for
    assert glide[0] > 0.5 and glide[-1] == pytest.approx(0.0, abs=1e-6) and params.get("brightness") == 0.0
    assert not any(m.address.startswith("/avgan/status/smoothed/sound") for m in received)  # not asked for


def test_steady_status_is_sent_on_change_and_by_heartbeat_only(receiver: socket.socket) -> None:
    """A minute of a steady installation at 60 frames/s (fps jittering between 59.6 and 60.4, silence): the
    status went out ten times a second (~3 000 messages a minute); now only changes and a 5 s heartbeat."""
    feedback = Feedback("127.0.0.1", receiver.getsockname()[1], rate_hz=10.0, heartbeat_s=5.0)
    rng = random.Random(0)
    sent = 0
    for frame in range(60 * 60):
        now = frame / 60
        fps = 60.0 + rng.uniform(-0.4, 0.4)
        scene = "grid" if frame >= 30 * 60 else "portrait"  # one change in the middle
        feedback.status(fps=fps, level=0.0, scene=scene, input="ok", backend="onnxruntime-cpu")
        sent += feedback.pump({}, now=now)
    assert sent == 5 * 12 + 1  # 12 heartbeats (t = 0, 5, ..., 55 s) of 5 values + the scene change
    assert feedback.stats()["sent"] == sent
    feedback.close()


def test_feedback_errors_are_counted_not_raised(monkeypatch: pytest.MonkeyPatch) -> None:
    feedback = Feedback("127.0.0.1", 9)

    def broken(*_: object) -> None:
        raise BlockingIOError("socket buffer full")

    monkeypatch.setattr(feedback._client, "send_message", broken)
    feedback.status(fps=60.0)
    for _ in range(40):
        feedback.event("x")
    assert feedback.pump(now=0.0) == 0
    stats = feedback.stats()
    assert stats["errors"] == 9 and stats["events_dropped"] == 8 and stats["sent"] == 0
    feedback.close()


# -- OSCQuery -------------------------------------------------------------------------------------------


def get_json(url: str) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            body = response.read()
            return response.status, json.loads(body) if body else None
    except urllib.error.HTTPError as exc:
        return exc.code, None


def walk(node: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Every node of an OSCQuery tree by FULL_PATH."""
    found = {node["FULL_PATH"]: node}
    for child in node.get("CONTENTS", {}).values():
        found.update(walk(child))
    return found


def test_oscquery_over_http() -> None:
    params = Parameters(initial={"sound/level": 0.5})
    with OscServer(params, port=0) as server:
        query = OscQueryServer(
            PARAMS, params.published_targets, host="127.0.0.1", port=0, osc_port=server.address[1]
        ).start()
        try:
            base = query.url
            assert base is not None
            code, tree = get_json(base)
            assert code == 200 and tree["FULL_PATH"] == "/"
            nodes = walk(tree)
            for spec in PARAMS.values():
                node = nodes[spec.address]
                assert node["TYPE"] == spec.osc_type and node["DESCRIPTION"] and node["ACCESS"] in (2, 3)
                if spec.kind in ("float", "int"):
                    assert node["RANGE"] == [{"MIN": spec.min, "MAX": spec.max}]
                if spec.kind == "enum":
                    assert node["RANGE"] == [{"VALS": list(spec.choices)}]
            # a method is a leaf, a container has no TYPE: Chataigne shows a node with both as a folder
            both = [path for path, node in nodes.items() if "TYPE" in node and "CONTENTS" in node]
            assert both == []
            assert nodes["/avgan/scene"]["VALUE"] == ["portrait"] and "CONTENTS" not in nodes["/avgan/scene"]
            assert nodes["/avgan/sound/level"]["VALUE"] == [0.5]
            assert "/avgan/status/fps" in nodes and "/avgan/query" in nodes
            code, info = get_json(base + "?HOST_INFO")
            assert code == 200 and info["OSC_PORT"] == server.address[1] and info["OSC_TRANSPORT"] == "UDP"
            assert info["OSC_IP"] == "127.0.0.1" and info["EXTENSIONS"]["RANGE"] is True
            params.enqueue("sound/level", 0.75)
            params.apply_pending()  # the target is 0.75 at once; the value glides there
            assert params.get("sound/level") < 0.75
            assert get_json(base + "avgan/sound/level?VALUE") == (200, {"VALUE": [0.75]})
            assert get_json(base + "avgan/scene?RANGE") == (200, {"RANGE": [{"VALS": ["portrait", "grid", "morph"]}]})
            assert get_json(base + "avgan/quit?VALUE") == (200, {})  # a trigger has no value: {}
            assert get_json(base + "avgan/quit?TYPE") == (200, {"TYPE": "N"})
            assert get_json(base + "avgan/nope")[0] == 404
            assert get_json(base + "avgan?BOGUS")[0] == 400
            assert get_json(base + "avgan?VALUE")[0] == 204  # a container has no value
        finally:
            query.stop()
    assert query.url is None


def test_oscquery_http11_keep_alive_and_curl() -> None:
    """HTTP/1.1 with persistent connections (as the proposal asks; TouchOSC, Max and Chataigne poll over one
    connection): several requests on one connection, concurrent connections, idle ones closed after the timeout,
    and curl as a user would run it."""
    import http.client
    import shutil
    import subprocess

    params = Parameters()
    query = OscQueryServer(PARAMS, params.published_targets, port=0, osc_port=8000, idle_timeout_s=0.5).start()
    try:
        host, port = query.address
        first = http.client.HTTPConnection(host, port, timeout=5)
        second = http.client.HTTPConnection(host, port, timeout=5)
        for path in ("/?HOST_INFO", "/avgan/scene", "/avgan/quit?VALUE", "/avgan?VALUE", "/avgan/brightness?VALUE"):
            for conn in (first, second):  # interleaved on two open connections
                conn.request("GET", path)
                response = conn.getresponse()
                body = response.read()
                assert response.version == 11 and not response.will_close, path
                if response.status == 204:
                    assert body == b"" and response.getheader("Content-Length") is None
                else:
                    assert response.status == 200 and json.loads(body) is not None
        assert first.sock is not None and first.sock.getsockname() != second.sock.getsockname()
        time.sleep(1.0)  # idle for longer than the timeout: the server closed the connection
        assert first.sock.recv(1) == b""
        first.close()
        second.close()
        curl = shutil.which("curl")
        if curl is None:
            pytest.skip("curl is not installed")
        out = subprocess.run(
            [curl, "-sS", "-v", f"http://{host}:{port}/avgan/scene?VALUE", f"http://{host}:{port}/avgan/quit?VALUE"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
        assert out.stdout == '{"VALUE": ["portrait"]}{}'
        assert "HTTP/1.1 200 OK" in out.stderr and "Re-using existing connection" in out.stderr
    finally:
        query.stop()


def test_triggers_accept_what_oscquery_advertises() -> None:
    """Triggers are TYPE "N": a ``,N`` message (and ``,I``, ``,T``, no argument, a non-zero number) presses them."""
    params = Parameters()
    server = OscServer(params)
    for datagram in (
        raw_message(b"/avgan/rate/skip", b",N"),
        raw_message(b"/avgan/rate/skip", b",I"),
        raw_message(b"/avgan/rate/skip", b",T"),
        raw_message(b"/avgan/rate/skip"),
        msg("/avgan/rate/skip", 1.0),
    ):
        assert server.handle_datagram(datagram, LOCAL) == ["handled"], datagram
        params.apply_pending()
        assert params.fired("rate/skip")
    assert server.handle_datagram(msg("/avgan/rate/skip", 0), LOCAL) == ["ignored"]  # a release
    assert server.handle_datagram(raw_message(b"/avgan/rate/skip", b",NN"), LOCAL) == ["wrong_count"]
    assert server.handle_datagram(raw_message(b"/avgan/brightness", b",N"), LOCAL) == ["wrong_type"]


def test_zeroconf_announces_oscjson_and_osc_on_the_lan() -> None:
    """The gallery preset's LAN example (host 0.0.0.0, mdns on) announces ``_oscjson._tcp`` and ``_osc._udp``;
    zeroconf's own browser on this machine finds both with the right ports."""
    zeroconf = pytest.importorskip("zeroconf")
    preset = load_preset(
        "gallery",
        overrides={"osc": {"host": "0.0.0.0", "port": 0, "oscquery_port": 0, "feedback_port": 9, "name": "AVGAN-test"}},
    )
    assert preset.osc.mdns
    control = OscControl(Parameters(), preset.osc).start()
    try:
        assert control.oscquery is not None and control.server is not None
        if not control.oscquery._lan_addresses():
            pytest.skip("this machine has no non-loopback IPv4 address to announce on")
        assert wait_for(lambda: bool(control.oscquery.announced), 10.0), "not announced"  # type: ignore[union-attr]
        zc = zeroconf.Zeroconf()
        try:
            found = {}
            for kind in ("_oscjson._tcp.local.", "_osc._udp.local."):
                names: list[str] = []

                def seen(zeroconf: Any, service_type: str, name: str, state_change: Any, names: list = names) -> None:
                    names.append(name)

                browser = zeroconf.ServiceBrowser(zc, kind, handlers=[seen])
                if not wait_for(lambda names=names: any(n.startswith("AVGAN-test") for n in names), 10.0):
                    browser.cancel()
                    pytest.skip(f"multicast DNS does not loop back on this machine (no {kind} seen)")
                info = zc.get_service_info(kind, next(n for n in names if n.startswith("AVGAN-test")), timeout=3000)
                browser.cancel()
                assert info is not None
                found[kind] = (info.port, info.parsed_addresses())
        finally:
            zc.close()
        assert found["_oscjson._tcp.local."][0] == control.oscquery.address[1]
        assert found["_osc._udp.local."][0] == control.server.address[1]
        assert set(found["_osc._udp.local."][1]) == set(control.oscquery.announced)
        code, info = get_json(f"http://{control.oscquery.announced[0]}:{control.oscquery.address[1]}/?HOST_INFO")
        assert code == 200 and "OSC_IP" not in info  # bound to every interface: clients use the address they used
    finally:
        control.stop()


def test_control_from_a_preset() -> None:
    preset = load_preset(
        "headless", overrides={"osc": {"port": 0, "oscquery_port": 0, "feedback_port": 9, "mdns": True}}
    )
    params = Parameters(initial=preset.params)
    threads_before = threading.active_count()
    with OscControl(params, preset.osc) as control:
        assert control.server is not None and control.feedback is not None and control.oscquery is not None
        SimpleUDPClient(*control.server.address).send_message("/avgan/brightness", 0.5)
        assert wait_for(lambda: control.stats()["osc"]["handled"] == 1)
        params.apply_pending()
        control.status(fps=60.0, scene=params.get("scene"))
        control.event("started")
        assert control.pump() >= 2
        stats = control.stats()
        assert stats["feedback"]["sent"] >= 2 and stats["params"]["applied"] == 1
        code, info = get_json(control.oscquery.url + "?HOST_INFO")
        assert info["OSC_PORT"] == control.server.address[1]
    assert wait_for(lambda: threading.active_count() <= threads_before, 3.0)


def test_control_disabled() -> None:
    preset = load_preset("headless", overrides={"osc": {"enabled": False}})
    with OscControl(Parameters(), preset.osc) as control:
        assert control.server is None and control.pump() == 0 and control.stats()["osc"] == {}


# -- generated controllers ------------------------------------------------------------------------------


def load_generator() -> Any:
    spec = importlib.util.spec_from_file_location("make_controllers", ROOT / "scripts" / "make_controllers.py")
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(module)
    return module


def test_controller_files_are_up_to_date_and_cover_every_parameter() -> None:
    generator = load_generator()
    assert generator.stale() == [], "run: python scripts/make_controllers.py"
    folder = ROOT / "presets" / "controllers"

    root = ElementTree.fromstring(zlib.decompress((folder / "avgan.tosc").read_bytes()))
    assert root.tag == "lexml" and root.get("version") == "3"
    paths = {p.findtext("partial/value") for p in root.iter("path")}
    sending = {osc.findtext("path/partial/value") for osc in root.iter("osc") if osc.findtext("send") == "1"}
    for spec in PARAMS.values():
        assert spec.address in sending, spec.address
    assert {f"/avgan/status/{k}" for k in ("fps", "level", "scene", "input", "backend", "event")} <= paths
    ids = [n.get("ID") for n in root.iter("node")]
    assert len(ids) == len(set(ids))

    patcher = json.loads((folder / "avgan.maxpat").read_text())["patcher"]
    boxes = {b["box"]["id"]: b["box"] for b in patcher["boxes"]}
    texts = [b.get("text", "") for b in boxes.values()]
    assert "udpsend 127.0.0.1 8000" in texts and "udpreceive 9000" in texts
    messages = [b["text"] for b in boxes.values() if b["maxclass"] == "message"]
    for spec in PARAMS.values():
        expected = spec.address if spec.kind == "trigger" else f"{spec.address} $1"
        assert expected in messages, spec.address
    for line in patcher["lines"]:
        source, outlet = line["patchline"]["source"]
        destination, inlet = line["patchline"]["destination"]
        assert outlet < boxes[source]["numoutlets"] and inlet < boxes[destination]["numinlets"]
    send_id = next(i for i, b in boxes.items() if b.get("text") == "udpsend 127.0.0.1 8000")
    feeding = {
        line["patchline"]["source"][0] for line in patcher["lines"] if line["patchline"]["destination"][0] == send_id
    }
    assert len(feeding) == len(PARAMS)

    layout = json.loads((folder / "avgan.controls.json").read_text())
    assert [c["address"] for c in layout["controls"]] == [s.address for s in PARAMS.values()]
    doc = (folder / "ADDRESS_SPACE.md").read_text()
    assert all(f"`{s.address}`" in doc for s in PARAMS.values())


def test_controllers_follow_feedback_and_quit_takes_two_steps() -> None:
    """TouchOSC: enums are radios that send and receive the choice's index (the scene buttons light from
    feedback), faders and toggles receive too; quit is locked until the unlock toggle's script opens it. Max: every
    slider is moved by the feedback's ``set``; quit passes through a gate that only the unlock toggle opens."""
    folder = ROOT / "presets" / "controllers"
    root = ElementTree.fromstring(zlib.decompress((folder / "avgan.tosc").read_bytes()))

    def props(node: ElementTree.Element) -> dict[str, str]:
        return {p.findtext("key"): p.findtext("value") or "" for p in node.find("properties").iter("property")}

    nodes = {props(n)["name"]: n for n in root.iter("node")}
    for spec in PARAMS.values():
        if spec.kind not in ("enum", "float", "int", "bool"):
            continue
        node = nodes[spec.name]
        osc = node.find("messages/osc")
        assert osc.findtext("receive") == "1" and osc.findtext("send") == "1", spec.name  # follows feedback
        if spec.kind == "enum":
            assert node.get("type") == "RADIO" and props(node)["steps"] == str(len(spec.choices))
            argument = osc.find("arguments/partial")
            # value = min + x * (max - min) with 0..1: the index, both ways (what the feedback sends for enums)
            assert argument.findtext("value") == "x" and argument.findtext("conversion") == "INTEGER"
            assert (argument.findtext("scaleMin"), argument.findtext("scaleMax")) == ("0", "1")
            assert wire_value(spec, spec.choices[-1]) == len(spec.choices) - 1
    quit_node, arm = nodes["quit"], nodes["quit:arm"]
    assert props(quit_node)["interactive"] == "0" and quit_node.find("messages/osc/send").text == "1"
    assert props(arm)["interactive"] == "1" and arm.find("messages") is None  # the unlock toggle sends nothing
    assert "findByName('quit')" in props(arm)["script"] and "properties.interactive" in props(arm)["script"]
    assert "findByName('quit:arm')" in props(quit_node)["script"]

    patcher = json.loads((folder / "avgan.maxpat").read_text())["patcher"]
    boxes = {b["box"]["id"]: b["box"] for b in patcher["boxes"]}
    lines = [(ln["patchline"]["source"], ln["patchline"]["destination"]) for ln in patcher["lines"]]
    into = {}
    for (src, _), (dst, inlet) in lines:
        into.setdefault(dst, []).append((src, inlet))
    setters = {i for i, b in boxes.items() if b.get("text") == "set $1"}
    sliders = [i for i, b in boxes.items() if b["maxclass"] == "slider"]
    assert len(sliders) == sum(1 for s in PARAMS.values() if s.kind == "float")
    for slider in sliders:
        assert any(src in setters for src, _ in into[slider]), "a slider that does not follow the feedback"
    quit_message = next(i for i, b in boxes.items() if b.get("text") == "/avgan/quit")
    ((gate, _),) = into[quit_message]
    assert boxes[gate]["text"] == "gate"
    sources = {inlet: boxes[src]["maxclass"] for src, inlet in into[gate]}
    assert sources == {0: "toggle", 1: "button"}  # the toggle opens the gate, the button's bang passes it
    closer = next(dst for (src, _), (dst, _) in lines if src == gate and dst != quit_message)
    assert boxes[closer]["text"] == "0" and any(
        boxes[d]["maxclass"] == "toggle" for (s, _), (d, _) in lines if s == closer
    )
