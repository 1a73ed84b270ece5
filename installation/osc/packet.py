"""OSC packet decoding and validation (pure: no sockets, no threads, no parameters).

Our own strict OSC 1.0/1.1 decoder (:func:`decode_packet`), not python-osc's ``OscPacket``: the latter lets
``UnicodeDecodeError`` and ``RecursionError`` escape on hostile input (non-UTF-8 addresses, deeply nested
bundles), logs a warning on the root logger for every unknown type tag character (a log flood from one
packet), and turns time tags into floats. OSC 1.0: https://opensoundcontrol.stanford.edu/spec-1_0.html.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

MAX_ADDRESS = 255  # bytes
MAX_ARGS = 64
MAX_ITEMS = 256  # messages + rejections per datagram
MAX_DEPTH = 4  # nested bundles / arrays
NTP_UNIX_OFFSET = 2208988800  # seconds from 1900-01-01 (NTP era 0) to 1970-01-01


@dataclass(frozen=True)
class Message:
    """One decoded OSC message.

    Attributes:
        address: the OSC address pattern (UTF-8 decoded), e.g. ``"/avgan/sound/level"``.
        args: decoded arguments: int (``i``, ``h``, ``c`` as str, ``r``, ``t``), float (``f``, ``d``),
            str (``s``, ``S``), bytes (``b``, ``m``), True/False (``T``/``F``; ``I`` impulse = True),
            None (``N``), list (``[...]`` arrays).
        timetag: when it should take effect, Unix seconds; ``None`` = immediately (not in a bundle, or
            the bundle's time tag was "immediately").
    """

    address: str
    args: tuple[Any, ...] = ()
    timetag: float | None = None

    def __iter__(self) -> Iterator[Any]:  # python-osc's Handler.invoke unpacks messages with *message
        return iter(self.args)


@dataclass(frozen=True)
class Rejected:
    """A datagram or bundle element that was not accepted: ``reason`` (one of
    :data:`installation.osc.server.REJECTIONS`) and a detail."""

    reason: str
    detail: str = ""
    address: str = ""


class _Bad(Exception):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


def _string(data: bytes, i: int) -> tuple[bytes, int]:
    """OSC-string at ``i`` (4-aligned): its bytes and the index after its 1-4 NUL padding bytes."""
    end = data.find(b"\x00", i)
    if end < 0:
        raise _Bad("malformed", "unterminated string")
    nxt = i + ((end - i) // 4 + 1) * 4
    if nxt > len(data):
        raise _Bad("malformed", "string padding runs past the end")
    if data[end:nxt].strip(b"\x00"):
        raise _Bad("malformed", "non-zero string padding")
    return data[i:end], nxt


def _utf8(raw: bytes, what: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise _Bad("non_utf8", f"{what} is not UTF-8: {raw[:40]!r}") from None


_FIXED = {"i": (">i", 4), "h": (">q", 8), "f": (">f", 4), "d": (">d", 8), "t": (">Q", 8), "r": (">I", 4)}


def _decode_message(data: bytes, timetag: float | None) -> Message | Rejected:
    """One OSC message (``data`` starts with ``/`` and is 4-aligned)."""
    address = ""
    try:
        raw_address, i = _string(data, 0)
        address = _utf8(raw_address, "address")
        if len(raw_address) > MAX_ADDRESS or any(ord(c) < 32 or c in " #" for c in address):
            raise _Bad(
                "bad_address", f"address has control characters, spaces or '#', or is too long: {address[:60]!r}"
            )
        if i == len(data):
            return Message(address, (), timetag)  # OSC 1.0: old senders may omit the type tag string
        raw_tags, i = _string(data, i)
        if not raw_tags.startswith(b","):
            raise _Bad("malformed", "type tag string does not start with ','")
        tags = _utf8(raw_tags[1:], "type tags")
        args: list[Any] = []
        stack: list[list[Any]] = [args]
        count = 0
        for tag in tags:
            if tag == "[":
                if len(stack) > MAX_DEPTH:
                    raise _Bad("malformed", "arrays nested too deep")
                stack.append([])
                continue
            if tag == "]":
                if len(stack) < 2:
                    raise _Bad("malformed", "unbalanced ']' in type tags")
                inner = stack.pop()
                stack[-1].append(inner)
                continue
            count += 1
            if count > MAX_ARGS:
                raise _Bad("malformed", f"more than {MAX_ARGS} arguments")
            value: Any
            if tag in _FIXED:
                fmt, size = _FIXED[tag]
                if i + size > len(data):
                    raise _Bad("malformed", f"argument '{tag}' runs past the end")
                (value,) = struct.unpack_from(fmt, data, i)
                i += size
            elif tag in "sS":
                raw, i = _string(data, i)
                value = _utf8(raw, "string argument")
            elif tag == "b":
                if i + 4 > len(data):
                    raise _Bad("malformed", "blob size runs past the end")
                (size,) = struct.unpack_from(">i", data, i)
                end = i + 4 + size
                nxt = i + 4 + ((size + 3) // 4) * 4
                if size < 0 or nxt > len(data):
                    raise _Bad("malformed", "blob runs past the end")
                value = bytes(data[i + 4 : end])
                i = nxt
            elif tag == "c":
                if i + 4 > len(data):
                    raise _Bad("malformed", "char runs past the end")
                (code,) = struct.unpack_from(">I", data, i)
                i += 4
                if code > 0x10FFFF:
                    raise _Bad("malformed", "char out of Unicode range")
                value = chr(code)
            elif tag == "m":
                if i + 4 > len(data):
                    raise _Bad("malformed", "MIDI argument runs past the end")
                value = bytes(data[i : i + 4])
                i += 4
            elif tag in "TI":
                value = True
            elif tag == "F":
                value = False
            elif tag == "N":
                value = None
            else:
                raise _Bad("malformed", f"unknown type tag {tag!r}")
            stack[-1].append(value)
        if len(stack) != 1:
            raise _Bad("malformed", "unbalanced '[' in type tags")
        if i != len(data):
            raise _Bad("malformed", f"{len(data) - i} bytes after the last argument")
        return Message(address, tuple(args), timetag)
    except _Bad as bad:
        return Rejected(bad.reason, bad.detail, address)


def ntp_to_unix(timetag: int) -> float | None:
    """OSC time tag (64-bit NTP fixed point) -> Unix seconds; ``None`` for 1 ("immediately", OSC 1.0)."""
    if timetag == 1:
        return None
    return (timetag >> 32) - NTP_UNIX_OFFSET + (timetag & 0xFFFFFFFF) / 2**32


def unix_to_ntp(seconds: float) -> int:
    """Unix seconds -> OSC time tag (64-bit NTP fixed point)."""
    return int(round((seconds + NTP_UNIX_OFFSET) * 2**32)) & 0xFFFFFFFFFFFFFFFF


def _decode_bundle(data: bytes, depth: int, out: list[Message | Rejected]) -> None:
    if depth > MAX_DEPTH:
        out.append(Rejected("malformed", "bundles nested too deep"))
        return
    if len(data) < 16:
        out.append(Rejected("malformed", "bundle shorter than its header"))
        return
    (tag,) = struct.unpack_from(">Q", data, 8)
    timetag = ntp_to_unix(tag)
    i = 16
    while i < len(data):
        if len(out) >= MAX_ITEMS:
            out.append(Rejected("malformed", f"more than {MAX_ITEMS} elements in one datagram"))
            return
        if i + 4 > len(data):
            out.append(Rejected("malformed", "bundle element size runs past the end"))
            return
        (size,) = struct.unpack_from(">i", data, i)
        if size <= 0 or size % 4 or i + 4 + size > len(data):
            out.append(Rejected("malformed", f"bad bundle element size {size}"))
            return
        element = data[i + 4 : i + 4 + size]
        i += 4 + size
        if element.startswith(b"#bundle\x00"):
            nested: list[Message | Rejected] = []
            _decode_bundle(element, depth + 1, nested)
            for item in nested:  # OSC 1.0: contents of a bundle happen no earlier than its own time tag
                if isinstance(item, Message) and timetag is not None:
                    later = timetag if item.timetag is None else max(timetag, item.timetag)
                    item = Message(item.address, item.args, later)
                out.append(item)
        elif element.startswith(b"/"):
            out.append(_decode_message(element, timetag))
        else:
            out.append(Rejected("malformed", "bundle element is neither a message nor a bundle"))


def decode_packet(data: bytes) -> list[Message | Rejected]:
    """Decode one OSC packet (a UDP datagram) into its messages and rejected parts. Pure; never raises.

    Strict OSC 1.0 (sizes multiple of 4, NUL-padded strings, bundle element sizes) with the OSC 1.1 types
    ``h d t S c r m T F N I`` and arrays. Bundles are flattened; each message carries its (innermost)
    bundle's time tag. A bad bundle element is rejected on its own; the rest of the bundle still counts.

    Returns:
        At least one item: :class:`Message` or :class:`Rejected` (reasons ``malformed``, ``non_utf8``,
        ``bad_address``), at most :data:`MAX_ITEMS` + 1.
    """
    try:
        if not data:
            return [Rejected("malformed", "empty datagram")]
        if len(data) % 4:
            return [Rejected("malformed", f"size {len(data)} is not a multiple of 4")]
        if data.startswith(b"#bundle\x00"):
            out: list[Message | Rejected] = []
            _decode_bundle(bytes(data), 0, out)
            return out or [Rejected("malformed", "empty bundle")]
        if data.startswith(b"/"):
            return [_decode_message(bytes(data), None)]
        return [Rejected("malformed", "neither a message nor a bundle")]
    except Exception as exc:  # pragma: no cover - the decoder is written not to raise; belt and braces
        return [Rejected("malformed", f"decoder error: {type(exc).__name__}")]
