"""A scripted visitor: the stand-in for a person pressing buttons at the capture booth or the rating station.

Machines without a person in front of them (CI, this project's development machines, a dry run before an open
day) drive ``run.py capture`` and ``run.py rate`` with ``--script FILE``. The script presses the same buttons a
visitor or operator would -- the trigger parameters of :data:`installation.params.PARAMS` (``capture/consent``,
``capture/go``, ``rate/4``, ...) -- through :meth:`installation.params.Parameters.enqueue`, the path OSC and the
keyboard take too, so the loop has no test-only branch.

Script format (UTF-8 text, one step per line; ``#`` starts a comment)::

    capture/consent          # press when the screen accepts it
    capture/go
    wait 0.5                 # then wait 0.5 s (wall clock) before the next press
    capture/go
    rate/4
    repeat 10 capture/go     # the same press 10 times
    any capture/consent capture/go   # whichever of these the screen accepts first
    loop                     # start over from the first line (e.g. for long crash-test sessions)

A press is held until the loop is in a state that accepts that button (a patient visitor): the loop calls
:meth:`VisitorScript.poll` once per frame with the names it currently accepts. Unknown names are rejected when
the script is loaded, naming the file and line.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from pathlib import Path

from engine.errors import UserError
from installation.params import PARAMS, ParamSpec


class ScriptError(UserError, ValueError):
    """A visitor script that cannot be used; the message names the file and line."""


@dataclass(frozen=True)
class Step:
    """One step: press ``name`` (a trigger parameter), or wait ``seconds`` (``name == ""``).

    ``alternatives``: for ``any A B ...``, every name that may be pressed (whichever the loop accepts first).
    """

    name: str
    seconds: float = 0.0
    alternatives: tuple[str, ...] = ()


def parse_script(
    text: str, where: str = "<script>", specs: Mapping[str, ParamSpec] = PARAMS
) -> tuple[list[Step], bool]:
    """Parse a visitor script.

    Returns:
        (steps, loop): the steps in order, and whether the script ends with ``loop``.

    Raises:
        ScriptError: an unknown or non-trigger parameter, a bad number, or an empty script (names ``where:line``).
    """
    steps: list[Step] = []
    loop = False
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if loop:
            raise ScriptError(f"{where}:{number}: nothing may follow 'loop'")
        words = line.split()
        count = 1
        if words[0] == "loop" and len(words) == 1:
            loop = True
            continue
        if words[0] == "wait":
            try:
                seconds = float(words[1]) if len(words) == 2 else float("nan")
            except ValueError:
                seconds = float("nan")
            if not (math.isfinite(seconds) and seconds >= 0):
                raise ScriptError(f"{where}:{number}: expected 'wait SECONDS' with SECONDS >= 0, got {line!r}")
            steps.append(Step("", seconds))
            continue
        if words[0] == "repeat":
            try:
                count = int(words[1])
            except (IndexError, ValueError):
                count = -1
            if count < 1 or len(words) != 3:
                raise ScriptError(f"{where}:{number}: expected 'repeat N BUTTON' with N >= 1, got {line!r}")
            words = words[2:]
        alternatives: tuple[str, ...] = ()
        if words[0] == "any":
            if len(words) < 3:
                raise ScriptError(f"{where}:{number}: expected 'any BUTTON BUTTON ...', got {line!r}")
            words = words[1:]
            alternatives = tuple(w.removeprefix("/avgan/") for w in words)
        elif len(words) != 1:
            raise ScriptError(f"{where}:{number}: expected one button name per line, got {line!r}")
        for word in words:
            name = word.removeprefix("/avgan/")
            spec = specs.get(name)
            if spec is None or spec.kind != "trigger":
                buttons = ", ".join(n for n, s in specs.items() if s.kind == "trigger")
                raise ScriptError(
                    f"{where}:{number}: {name!r} is not a button; expected one of: {buttons}, wait, repeat, any, loop"
                )
        steps.extend(Step(alternatives[0] if alternatives else name, 0.0, alternatives) for _ in range(count))
    if not steps:
        raise ScriptError(f"{where}: the script has no steps")
    return steps, loop


class VisitorScript:
    """Plays a parsed script into a parameter store, in step with the loop's state.

    Args:
        steps, loop: from :func:`parse_script`.
        press: called with a trigger name to press it (normally
            ``lambda name: params.enqueue(name, True, source="script")``).
        clock: seconds, monotonic (default :func:`time.perf_counter`).

    Attributes:
        pressed: presses delivered so far. done: every step delivered (never true for a looping script).
    """

    def __init__(
        self,
        steps: list[Step],
        loop: bool,
        press: Callable[[str], object],
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.steps, self.loop, self.press, self.clock = steps, loop, press, clock
        self.index = 0
        self.pressed = 0
        self._not_before = 0.0

    @classmethod
    def from_file(cls, path: str | Path, press: Callable[[str], object], **kwargs: object) -> VisitorScript:
        """Load ``path`` (see the module docstring).

        Raises:
            ScriptError: the file is missing, unreadable or invalid (the message names it).
        """
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ScriptError(f"{path}: cannot read the visitor script ({exc})") from exc
        steps, loop = parse_script(text, str(path))
        return cls(steps, loop, press, **kwargs)  # type: ignore[arg-type]

    @property
    def done(self) -> bool:
        return not self.loop and self.index >= len(self.steps)

    def poll(self, accepting: Collection[str]) -> str | None:
        """Once per frame: deliver the next press if the loop accepts it now; returns its name (or ``None``).

        Args:
            accepting: the trigger names the loop's current state reacts to.
        """
        now = self.clock()
        while not self.done:
            if self.index >= len(self.steps):
                self.index = 0
            step = self.steps[self.index]
            if now < self._not_before:
                return None
            if not step.name:  # wait
                self._not_before = now + step.seconds
                self.index += 1
                continue
            choices = step.alternatives or (step.name,)
            name = next((c for c in choices if c in accepting), None)
            if name is None:
                return None
            self.index += 1
            self.pressed += 1
            self.press(name)
            return name
        return None
