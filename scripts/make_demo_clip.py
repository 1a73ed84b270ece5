#!/usr/bin/env python3
"""Make the project's own demo speech clip (no third-party data).

Synthesises about 8 s of speech with espeak-ng: a short lead-in of silence, one
voice, a pause, a second voice, a short tail. The pause and the silences are
there on purpose: they show the render's idle state (voice-activity gating)
between the two speakers.

The result is shipped as ``presets/demo/demo_speech.flac`` (16 kHz mono, 16-bit,
well under 300 KB) so that ``scripts/demo.sh`` needs no speech synthesiser; this
script regenerates it::

    python scripts/make_demo_clip.py                      # -> presets/demo/demo_speech.flac
    python scripts/make_demo_clip.py -o demo_speech.wav   # any extension soundfile writes

Needs the ``espeak-ng`` program (Debian/Ubuntu package ``espeak-ng``), plus
numpy, soundfile and soxr from the project's dependencies.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUTPUT = ROOT / "presets" / "demo" / "demo_speech.flac"

# (espeak-ng voice, words per minute, pitch 0-99, text); two clearly different voices.
SEGMENTS: tuple[tuple[str, int, int, str], ...] = (
    ("en-us+m3", 165, 40, "Hello. Speak to the picture, and it will show you a face."),
    ("en-gb+f3", 170, 60, "Every voice draws a different portrait, frame by frame."),
)
LEAD_IN_S = 0.3  # silence before the first voice
PAUSE_S = 1.0  # silence between the voices
TAIL_S = 0.3  # silence after the last voice
PEAK_DBFS = -3.0


def synthesise(voice: str, wpm: int, pitch: int, text: str, sample_rate: int) -> np.ndarray:
    """Speak ``text`` with espeak-ng; return mono float32 [samples] at ``sample_rate`` Hz, edges trimmed."""
    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "speech.wav"
        subprocess.run(
            ["espeak-ng", "-v", voice, "-s", str(wpm), "-p", str(pitch), "-w", str(wav), text],
            check=True,
            stdin=subprocess.DEVNULL,
            capture_output=True,
        )
        audio, rate = sf.read(str(wav), dtype="float32", always_2d=True)
    audio = audio.mean(axis=1)
    audio = soxr.resample(audio, rate, sample_rate, quality="VHQ").astype(np.float32)
    # trim espeak's own leading/trailing silence so the pauses are exactly ours
    loud = np.flatnonzero(np.abs(audio) > 1e-3)
    return audio[loud[0] : loud[-1] + 1] if loud.size else audio


def make_clip(sample_rate: int = 16000) -> np.ndarray:
    """The demo clip: mono float32 [samples] at ``sample_rate`` Hz, peak at PEAK_DBFS."""
    parts = [np.zeros(int(LEAD_IN_S * sample_rate), np.float32)]
    for i, (voice, wpm, pitch, text) in enumerate(SEGMENTS):
        if i:
            parts.append(np.zeros(int(PAUSE_S * sample_rate), np.float32))
        parts.append(synthesise(voice, wpm, pitch, text, sample_rate))
    parts.append(np.zeros(int(TAIL_S * sample_rate), np.float32))
    clip = np.concatenate(parts)
    peak = float(np.max(np.abs(clip))) or 1.0
    return (clip * (10 ** (PEAK_DBFS / 20) / peak)).astype(np.float32)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-o", "--output", type=Path, default=DEFAULT_OUTPUT, help="output file (default: %(default)s)")
    parser.add_argument("--sample-rate", type=int, default=16000, help="Hz (default: %(default)s)")
    args = parser.parse_args(argv)
    if shutil.which("espeak-ng") is None:
        print("error: espeak-ng not found (apt-get install espeak-ng)", file=sys.stderr)
        return 2
    clip = make_clip(args.sample_rate)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.output.with_name(args.output.stem + ".tmp" + args.output.suffix)
    sf.write(str(tmp), clip, args.sample_rate, subtype="PCM_16")
    tmp.replace(args.output)
    print(f"wrote {args.output}: {len(clip) / args.sample_rate:.2f} s, {args.sample_rate} Hz mono")
    return 0


if __name__ == "__main__":
    sys.exit(main())
