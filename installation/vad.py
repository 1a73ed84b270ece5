"""Voice-activity detection for gating the generator: frame energy, adaptive noise floor, hysteresis, hangover.

Levels are RMS in dBFS: ``20 * log10(rms)`` of float samples in [-1, 1] after removing each
frame's mean (DC), so a full-scale square wave reads 0 dBFS, a full-scale sine -3 dBFS and
digital silence -120 dBFS (floor of the log). Typical figures: close-miked speech -35..-15 dBFS,
a quiet room through a decent microphone -70..-55 dBFS.

Per analysis frame (``frame_s``, default 10 ms):

1. **Noise floor** (dBFS) by minimum statistics (Martin 2001, "Noise power spectral density estimation
   based on optimal smoothing and minimum statistics", IEEE Trans. Speech Audio Process. 9(5), in its
   simplest form on the broadband level): the lowest frame level of the last ``floor_window_s`` seconds
   (default 2 s), clamped to [``floor_min_db``, ``floor_max_db``]. Speech always has pauses between
   words within 2 s, so it does not lift the floor; a steady noise (a fan, the room, a crowd's murmur)
   fills every frame of the window, so the floor rises to it within ``floor_window_s``. Kept as the
   minima of 0.1 s sub-windows (the window is rounded up to whole sub-windows), so a frame costs O(1).
   On steady pink noise the lowest 10 ms frame lies ~6 dB below the noise's RMS level and the loudest
   of 2000 frames ~0.5 dB above it, so the on threshold (floor + 12 dB) sits ~6 dB above the noise peaks.
2. **Hysteresis**: the gate opens when the level has stayed above the *on* threshold
   ``max(floor + on_margin_db, on_min_db)`` for ``attack_s`` (rejects clicks) and stays open while
   the level is above the lower *off* threshold ``max(floor + off_margin_db, off_min_db)``.
3. **Hangover**: below the off threshold the gate stays open ``hangover_s`` more before closing,
   bridging the gaps between words.

Defaults: on = floor + 12 dB (and at least -50 dBFS), off = floor + 6 dB (and at least -55 dBFS),
attack 30 ms, hangover 300 ms, floor window 2 s. Measured (``tests/test_vad.py``, ``run.py bench --only
live --live-cases gate``): 20 s of steady pink noise at -34 dBFS keep the gate shut after the first
``floor_window_s`` (a streaming detector starts from ``initial_floor_db``); speech at -28 dBFS (active
speech level) over that noise keeps it open for > 90 % of the speech's voiced frames.

It also gives a fast loudness envelope in [0, 1]: 0 at the noise floor, 1 at ``envelope_range_db``
above it, with ``envelope_attack_s`` / ``envelope_release_s`` smoothing.

:class:`VoiceActivityDetector` is streaming (feed blocks of any size, e.g. from the microphone
ring); :func:`detect` analyses a whole file at once and starts the floor from the file's quiet
frames, so a recording that starts in steady noise is not taken for a voice while the floor adapts.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

SILENCE_DB = -120.0
"""Level reported for digital silence (dBFS)."""


@dataclass(frozen=True)
class VadParams:
    """VAD thresholds. Times in seconds, levels in dBFS (RMS), margins in dB.

    Attributes:
        frame_s: analysis frame length (10-20 ms); rounded to whole samples.
        on_margin_db: gate opens above ``floor + on_margin_db`` ...
        on_min_db: ... and above this absolute level.
        off_margin_db: once open, the level counts as voice while above ``floor + off_margin_db`` ...
        off_min_db: ... and above this absolute level.
        attack_s: the level must stay above the on threshold this long before the gate opens.
        hangover_s: the gate stays open this long after the level falls below the off threshold.
        floor_window_s: the noise floor is the lowest frame level of this many past seconds (0.1-60 s,
            rounded up to 0.1 s): longer than the longest stretch of speech without a pause, shorter than
            the time a steady room noise may keep the gate open after it starts.
        floor_min_db, floor_max_db: limits of the noise floor.
        initial_floor_db: the floor of a new streaming detector (``detect`` estimates it instead).
        initial_floor_percentile: ``detect``: initial floor = this percentile of the frame levels.
        envelope_range_db: envelope is 1 at this many dB above the floor.
        envelope_attack_s, envelope_release_s: envelope smoothing time constants.
    """

    frame_s: float = 0.01
    on_margin_db: float = 12.0
    on_min_db: float = -50.0
    off_margin_db: float = 6.0
    off_min_db: float = -55.0
    attack_s: float = 0.03
    hangover_s: float = 0.3
    floor_window_s: float = 2.0
    floor_min_db: float = -80.0
    floor_max_db: float = -30.0
    initial_floor_db: float = -60.0
    initial_floor_percentile: float = 10.0
    envelope_range_db: float = 40.0
    envelope_attack_s: float = 0.005
    envelope_release_s: float = 0.1

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"VAD {f.name} must be a finite number, got {value!r}")
        if not 0.001 <= self.frame_s <= 0.1:
            raise ValueError(f"VAD frame_s must be in [0.001, 0.1] seconds, got {self.frame_s!r}")
        if self.off_margin_db > self.on_margin_db or self.off_min_db > self.on_min_db:
            raise ValueError("VAD off thresholds must not be above the on thresholds (hysteresis)")
        if self.floor_min_db > self.floor_max_db:
            raise ValueError("VAD floor_min_db must be <= floor_max_db")
        if not 0.1 <= self.floor_window_s <= 60.0:
            raise ValueError(f"VAD floor_window_s must be in [0.1, 60] seconds, got {self.floor_window_s!r}")
        for name in ("attack_s", "hangover_s", "envelope_range_db", "envelope_attack_s", "envelope_release_s"):
            if getattr(self, name) < 0:
                raise ValueError(f"VAD {name} must be >= 0, got {getattr(self, name)!r}")


GATE_KINDS: tuple[str, ...] = ("voice", "sound")
"""Gate kinds a model bundle may declare (``family_info["gate"]``; absent: ``voice``)."""

SOUND_GATE: dict[str, float] = {
    "attack_s": 0.05,
    "hangover_s": 1.5,
    "floor_window_s": 60.0,
    "floor_max_db": -45.0,
    "on_margin_db": 10.0,
    "off_margin_db": 4.0,
}
"""The sound-activity gate's settings (music and noise, for scene bundles), replacing the voice gate's.

Speech pauses between words, and the voice gate's floor (the lowest level of the past 2 s, up to -30 dBFS)
learns any sound that does not: a sustained note or a steady rain lifts the floor to its own level within
seconds and the gate closes while it still plays. Here the floor is the lowest level of the past 60 s and never
above -45 dBFS, so a sound 10 dB above the room keeps the gate open for a minute and anything above -35 dBFS for
as long as it lasts; the hangover (1.5 s) bridges rests between notes and phrases, the attack (50 ms) still
rejects clicks. ``tests/test_sound2scene_live.py`` measures both gates on MUSIC clips.
"""


def declared_gate(family_info: Mapping[str, Any] | None) -> str:
    """The gate kind a bundle declares in its manifest's ``family_info["gate"]``: ``"voice"`` when it declares none
    (or for a generator stand-in without a bundle); an unknown kind is logged and read as ``"voice"``."""
    kind = (family_info or {}).get("gate", "voice")
    if kind not in GATE_KINDS:
        log.warning("bundle declares gate %r; expected one of %s; using the voice gate", kind, ", ".join(GATE_KINDS))
        return "voice"
    return str(kind)


def gate_params(kind: str, params: VadParams) -> VadParams:
    """The gate settings for a bundle's declared gate ``kind``: ``params`` for ``"voice"``; for ``"sound"``,
    ``params`` with :data:`SOUND_GATE`'s timing, margins and floor (the absolute thresholds ``on_min_db`` /
    ``off_min_db``, i.e. the live parameter ``vad/threshold_db``, are kept).

    Raises:
        ValueError: an unknown ``kind`` (lists :data:`GATE_KINDS`).
    """
    if kind == "voice":
        return params
    if kind == "sound":
        return replace(params, **SOUND_GATE)
    raise ValueError(f"gate kind {kind!r}: expected one of {', '.join(GATE_KINDS)}")


@dataclass(frozen=True)
class VadFrames:
    """Per-frame VAD output. Frame ``j`` covers samples ``[j*hop, (j+1)*hop)`` of the stream.

    Attributes:
        gate: bool [F], voice active.
        level_db: float32 [F], frame level in dBFS.
        floor_db: float32 [F], noise floor in dBFS after the frame.
        envelope: float32 [F], loudness envelope in [0, 1].
    """

    gate: np.ndarray
    level_db: np.ndarray
    floor_db: np.ndarray
    envelope: np.ndarray

    def __len__(self) -> int:
        return int(self.gate.shape[0])


def frame_levels(audio: np.ndarray, hop: int) -> np.ndarray:
    """RMS level in dBFS of consecutive ``hop``-sample frames of mono ``audio`` [samples] (tail dropped).

    Returns float32 [samples // hop]; each frame's mean (DC) is removed first.
    """
    n = audio.shape[0] // hop
    frames = np.asarray(audio[: n * hop], dtype=np.float32).reshape(n, hop)
    frames = frames - frames.mean(axis=1, keepdims=True)
    power = np.einsum("ij,ij->i", frames, frames) / hop
    return (10.0 * np.log10(power + 1e-12)).astype(np.float32)


class VoiceActivityDetector:
    """Streaming VAD: feed mono float32 blocks of any length with :meth:`process`.

    Args:
        sample_rate: Hz.
        params: thresholds (see :class:`VadParams`).
        initial_floor_db: starting noise floor in dBFS (default ``params.initial_floor_db``); it counts as
            the level of the window's oldest frame, so it holds for at most ``floor_window_s``.

    Attributes:
        floor_db: the noise floor after the last frame, dBFS. active: the gate. envelope: 0..1.
        frames: frames analysed so far. open_frames: of those, frames with the gate open
            (``open_frames * frame_seconds`` = seconds of audio the gate was open).
    """

    SUB_WINDOW_S = 0.1
    """Length of the sub-windows whose minima make up the floor window, seconds."""

    def __init__(self, sample_rate: int, params: VadParams | None = None, initial_floor_db: float | None = None):
        self.params = p = params or VadParams()
        self.sample_rate = int(sample_rate)
        self.hop = max(1, round(p.frame_s * self.sample_rate))
        """Frame length in samples."""
        dt = self.hop / self.sample_rate
        self._env_attack = 1.0 - math.exp(-dt / p.envelope_attack_s) if p.envelope_attack_s > 0 else 1.0
        self._env_release = 1.0 - math.exp(-dt / p.envelope_release_s) if p.envelope_release_s > 0 else 1.0
        self._attack_frames = max(1, math.ceil(p.attack_s / dt - 1e-9))
        self._hangover_frames = math.ceil(p.hangover_s / dt - 1e-9)
        self._sub_frames = max(1, round(self.SUB_WINDOW_S / dt))
        n_sub = max(1, math.ceil(p.floor_window_s / (self._sub_frames * dt) - 1e-9))
        start = p.initial_floor_db if initial_floor_db is None else initial_floor_db
        self._minima: deque[float] = deque([float(start)], maxlen=n_sub)  # minima of the completed sub-windows
        self._window_min = float(start)  # min(self._minima)
        self._sub_min = math.inf  # minimum of the current sub-window
        self._sub_count = 0  # frames in the current sub-window
        self.floor_db = float(np.clip(start, p.floor_min_db, p.floor_max_db))
        self.active = False
        self.envelope = 0.0
        self.frames = 0
        self.open_frames = 0
        self._loud = 0  # consecutive frames above the on threshold (while closed)
        self._quiet = 0  # consecutive frames below the off threshold (while open)
        self._pending = np.zeros(0, dtype=np.float32)

    @property
    def frame_seconds(self) -> float:
        """Frame length in seconds (``hop / sample_rate``)."""
        return self.hop / self.sample_rate

    @property
    def open_s(self) -> float:
        """Seconds of audio analysed with the gate open."""
        return self.open_frames * self.frame_seconds

    def process(self, samples: np.ndarray) -> VadFrames:
        """Analyse a block of mono samples (float in [-1, 1], any length); returns the frames it completed.

        Samples that do not fill a whole frame are kept for the next call.
        """
        samples = np.asarray(samples, dtype=np.float32).reshape(-1)
        if self._pending.size:
            samples = np.concatenate([self._pending, samples])
        levels = frame_levels(samples, self.hop)
        self._pending = samples[levels.shape[0] * self.hop :].copy()
        return self.update_levels(levels)

    def update_levels(self, levels_db: np.ndarray) -> VadFrames:
        """Run the gate on precomputed frame levels (dBFS, float [F], see :func:`frame_levels`)."""
        p = self.params
        n = len(levels_db)
        gate = np.zeros(n, dtype=bool)
        floors = np.empty(n, dtype=np.float32)
        envelope = np.empty(n, dtype=np.float32)
        active, env, loud, quiet = self.active, self.envelope, self._loud, self._quiet
        minima, window_min, sub_min, sub_count = self._minima, self._window_min, self._sub_min, self._sub_count
        floor = self.floor_db
        for j, level in enumerate(np.asarray(levels_db, dtype=np.float64).tolist()):
            # minimum statistics: the lowest level of the completed sub-windows and the current one
            if level < sub_min:
                sub_min = level
            sub_count += 1
            floor = min(max(min(window_min, sub_min), p.floor_min_db), p.floor_max_db)
            if sub_count >= self._sub_frames:
                minima.append(sub_min)  # the oldest sub-window leaves the window
                window_min = min(minima)
                sub_min, sub_count = math.inf, 0
            on = level > max(floor + p.on_margin_db, p.on_min_db)
            if active:
                if level > max(floor + p.off_margin_db, p.off_min_db):
                    quiet = 0
                else:
                    quiet += 1
                    if quiet > self._hangover_frames:
                        active, quiet, loud = False, 0, 0
            else:
                loud = loud + 1 if on else 0
                if loud >= self._attack_frames:
                    active, quiet, loud = True, 0, 0
            target = min(1.0, max(0.0, (level - floor) / p.envelope_range_db)) if p.envelope_range_db > 0 else 0.0
            env += (target - env) * (self._env_attack if target > env else self._env_release)
            gate[j], floors[j], envelope[j] = active, floor, env
        self.floor_db, self.active, self.envelope, self._loud, self._quiet = floor, active, env, loud, quiet
        self._window_min, self._sub_min, self._sub_count = window_min, sub_min, sub_count
        self.frames += n
        self.open_frames += int(gate.sum())
        return VadFrames(
            gate=gate, level_db=np.asarray(levels_db, dtype=np.float32), floor_db=floors, envelope=envelope
        )


@dataclass(frozen=True)
class VadTrack(VadFrames):
    """:class:`VadFrames` for a whole signal, with its timing.

    Attributes:
        sample_rate: Hz. hop: samples per frame.
    """

    sample_rate: int = 16000
    hop: int = 160

    def frame_at(self, sample_end: np.ndarray) -> np.ndarray:
        """Index of the last frame that ends at or before each sample position (int [N]; -1: none yet)."""
        return np.minimum(np.asarray(sample_end, dtype=np.int64) // self.hop, len(self)) - 1

    def at(self, sample_end: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Gate (bool [N]) and envelope (float32 [N]) known at sample positions ``sample_end`` (int [N]).

        The value at position ``e`` is that of the last whole frame ending at or before ``e``;
        positions before the first frame's end read closed / 0.
        """
        j = self.frame_at(sample_end)
        valid = j >= 0
        jj = np.maximum(j, 0)
        if len(self) == 0:
            return np.zeros(j.shape, bool), np.zeros(j.shape, np.float32)
        return self.gate[jj] & valid, np.where(valid, self.envelope[jj], 0.0).astype(np.float32)


def initial_floor(levels_db: np.ndarray, params: VadParams) -> float:
    """Starting noise floor (dBFS) for a whole signal: the ``initial_floor_percentile`` of its frame levels, clamped."""
    if not len(levels_db):
        return float(params.initial_floor_db)
    floor = np.percentile(levels_db, params.initial_floor_percentile)
    return float(np.clip(floor, params.floor_min_db, params.floor_max_db))


def detect(audio: np.ndarray, sample_rate: int, params: VadParams | None = None) -> VadTrack:
    """Voice activity of a whole mono signal.

    Args:
        audio: float [samples] in [-1, 1].
        sample_rate: Hz.
        params: thresholds; the initial floor is the ``initial_floor_percentile`` of the frame levels.

    Returns:
        :class:`VadTrack` with ``samples // hop`` frames.
    """
    params = params or VadParams()
    hop = max(1, round(params.frame_s * sample_rate))
    levels = frame_levels(np.asarray(audio, dtype=np.float32).reshape(-1), hop)
    vad = VoiceActivityDetector(sample_rate, params, initial_floor_db=initial_floor(levels, params))
    frames = vad.update_levels(levels)
    return VadTrack(
        gate=frames.gate,
        level_db=frames.level_db,
        floor_db=frames.floor_db,
        envelope=frames.envelope,
        sample_rate=vad.sample_rate,
        hop=vad.hop,
    )
