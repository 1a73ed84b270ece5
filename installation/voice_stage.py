"""The generated voice on stage: what the installation does with a bundle's ``sound`` output (live and render).

A bundle whose graph has a ``sound`` output (the avgan family: a face and its voice from one latent) makes a
voice with every face. The runtime never asks which family made the bundle: :func:`run_generator` reads the
bundle's named inputs and outputs, and :class:`VoiceStage` decides, frame by frame, what the sound engine
(:class:`installation.sound.SoundEngine`) does with the newest generated voice, by the ``sound/answer`` parameter
(OSC ``/avgan/sound/answer``, declared in :mod:`installation.params`):

* ``answer`` (default): the installation listens while the visitor speaks (the granular echo plays as with any
  bundle) and, when the end of the utterance is detected (the voice gate closes), answers with the newest voice
  generated from what they said (:meth:`SoundEngine.answer`: played once, from its start). No generation happens
  at that moment: the voice generated at the last request of the utterance (at most ``1 / gen_fps`` old) is
  played, so the answer starts within one pyo buffer of the frame that detected the end (``benchmarks``);
* ``loop``: the newest generated voice loops in place of the granular cloud while its face is shown
  (:meth:`SoundEngine.play_generated`), and follows each new face;
* ``echo``: the granular echo of the visitor's own voice only, as with an image-only bundle.

With an image-only bundle nothing here runs and the echo stays as it is. Live, the actions go to the engine at
once; the offline render (:mod:`installation.render`) collects them with their frame times and
:func:`installation.sound.render_offline` applies them at the same times, so a render sounds like the installation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

MODES = ("answer", "loop", "echo")
"""Values of the ``sound/answer`` parameter."""


def has_sound(generator: Any) -> bool:
    """Whether a Generator-like object's bundle has a ``sound`` output."""
    return "sound" in getattr(getattr(generator, "bundle", None), "outputs", {})


def run_generator(
    generator: Any, audio: np.ndarray, noise: np.ndarray, inputs: dict[str, np.ndarray] | None = None
) -> tuple[np.ndarray, np.ndarray | None]:
    """Images and (if the bundle makes one) sounds for one request, by the bundle's named inputs and outputs.

    Args:
        generator: an :class:`engine.generator.Generator` (or an object with its ``__call__`` only: image bundles).
        audio: float32 [S] the newest window (repeated for every face; not passed to a bundle without an audio
            input). noise: float32 [B, Z]. inputs: further named inputs of the bundle, e.g. ``class`` float32
            [B, C] (None: the engine fills them per the manifest).

    Returns:
        (uint8 [B, H, W, 3] images, float32 [B, N] sounds in [-1, 1] at the bundle's rate, or None).
    """
    bundle = getattr(generator, "bundle", None)
    specs = getattr(bundle, "inputs", None)
    b = noise.shape[0]
    if bundle is None or (not has_sound(generator) and not inputs and "audio" in (specs or {})):
        return np.asarray(generator(np.broadcast_to(audio, (b, audio.shape[0])), noise=noise)), None
    feeds: dict[str, np.ndarray] = {"noise": noise} if "noise" in specs else {}
    if "audio" in specs:
        feeds["audio"] = np.broadcast_to(audio, (b, audio.shape[0]))
    feeds.update(inputs or {})
    out = generator.generate(batch=b, **feeds)
    return np.asarray(out["image"]), (None if "sound" not in out else np.asarray(out["sound"], np.float32))


@dataclass(frozen=True)
class VoiceAction:
    """What the sound engine should do now: ``action`` ``"answer"`` or ``"loop"`` with ``samples`` float32 [n] at
    ``rate`` Hz (an empty ``loop`` clip returns to the granular cloud)."""

    action: str
    samples: np.ndarray
    rate: int

    def apply(self, engine: Any) -> None:
        """Send it to a :class:`installation.sound.SoundEngine`-like object."""
        (engine.answer if self.action == "answer" else engine.play_generated)(self.samples, self.rate)


class VoiceStage:
    """Turns the generator's newest voice and the voice gate into sound-engine actions (see the module docstring).

    Args:
        rate: Hz of the generated voices.

    Attributes:
        answers: answers given. loops: loop clips sent. last_answer_t: time (s, the caller's clock) of the last.
    """

    def __init__(self, rate: int) -> None:
        self.rate = int(rate)
        self.latest: np.ndarray | None = None
        self._fresh = False
        self._gate = False
        self._looping = False
        self.answers = 0
        self.loops = 0
        self.last_answer_t: float | None = None

    def offer(self, sound: np.ndarray) -> None:
        """The newest generated voice float32 [N] (the first face's, when a request made several)."""
        self.latest = np.asarray(sound, np.float32)
        self._fresh = True

    def step(self, t: float, gate: bool, mode: str) -> VoiceAction | None:
        """One frame at time ``t`` (s) with the voice gate ``gate`` and ``sound/answer`` = ``mode``: the action to
        take now, or None.

        Raises:
            ValueError: an unknown mode.
        """
        if mode not in MODES:
            raise ValueError(f"sound/answer: expected one of {', '.join(MODES)}, got {mode!r}")
        action = None
        if mode == "loop":
            if self._fresh and self.latest is not None:
                action = VoiceAction("loop", self.latest, self.rate)
                self._looping, self._fresh = True, False
                self.loops += 1
        elif self._looping:  # leaving loop mode: back to the cloud
            action = VoiceAction("loop", np.zeros(0, np.float32), self.rate)
            self._looping = False
        elif mode == "answer" and self._gate and not gate and self.latest is not None:
            action = VoiceAction("answer", self.latest, self.rate)
            self.answers += 1
            self.last_answer_t = t
            self._fresh = False
        self._gate = bool(gate)
        return action


def images_for(generator: Any, windows: np.ndarray, noise: np.ndarray) -> np.ndarray:
    """uint8 [B, H, W, 3] images for per-item audio windows float32 [B, S] and noise [B, Z] (the render's batched
    call); a bundle without an audio input gets the noise only."""
    bundle = getattr(generator, "bundle", None)
    if bundle is None or "audio" in getattr(bundle, "inputs", {}):
        return np.asarray(generator(windows, noise=noise))
    return np.asarray(generator.generate(noise=noise)["image"])


def plan_voice_actions(
    generator: Any,
    requests: list[Any],
    gate: np.ndarray,
    times: np.ndarray,
    windows: Any,
    mode: str = "answer",
    batch: int = 16,
) -> list[tuple[float, str, np.ndarray, int]]:
    """The voice actions of an offline render, frame by frame as :class:`VoiceStage` takes them live.

    Args:
        generator: the render's Generator (a bundle with a ``sound`` output; otherwise nothing to plan).
        requests: per frame, the Conditioner's request (with ``noise`` [Z]) or None.
        gate: bool [F] voice gate per frame; times: float [F] frame times in seconds.
        windows: ``windows(frame_indices) -> float32 [B, S]`` the frames' conditioning windows.
        mode: ``sound/answer`` (:data:`MODES`).

    Returns:
        ``(time_s, action, samples, rate)`` for :func:`installation.sound.render_offline`. Only the voices that are
        played are generated (answer: the last request before each end of an utterance; loop: every request), with
        the same inputs as the frame's face, so each voice is the one its face came with.
    """
    if not has_sound(generator) or mode == "echo":
        return []
    made = [i for i, r in enumerate(requests) if r is not None]
    if mode == "answer":
        needed, last = [], None
        for i in range(len(requests)):
            if requests[i] is not None:
                last = i
            if i > 0 and gate[i - 1] and not gate[i] and last is not None and last not in needed:
                needed.append(last)
    else:
        needed = made
    has_audio = "audio" in generator.bundle.inputs
    sounds: dict[int, np.ndarray] = {}
    for k in range(0, len(needed), batch):
        idx = needed[k : k + batch]
        feeds = {"noise": np.stack([requests[i].noise for i in idx])}
        if has_audio:
            feeds["audio"] = windows(np.asarray(idx))
        out = generator.generate(**feeds)["sound"]
        sounds.update({i: out[j] for j, i in enumerate(idx)})
    stage, actions = VoiceStage(int(generator.sample_rate)), []
    for i in range(len(requests)):
        if i in sounds:
            stage.offer(sounds[i])
        action = stage.step(float(times[i]), bool(gate[i]), mode)
        if action is not None:
            actions.append((float(times[i]), action.action, action.samples, action.rate))
    return actions
