#!/usr/bin/env python3
"""Synthesise "unseen voices" with espeak-ng: short sentences by voices in no training data.

``run.py evaluate --unseen-voices DIR`` reports the face detection ratio of images generated from
these clips: a generator that only makes faces for the training speakers' voices fails here.

Each clip is one sentence (English or Spanish, the languages of the Wav2Pix data) spoken by one of
several espeak-ng voice variants at a chosen pitch (``-p``, 0..99) and speed (``-s``, words/min),
trimmed of leading/trailing silence, limited to 1..3 s, peak-normalised to 0.9, and written as
16 kHz mono 16-bit FLAC. Output is deterministic for a given espeak-ng version.

Usage::

    python scripts/make_unseen_voices.py OUT_DIR [--count 24]

Needs ``espeak-ng`` on PATH (Debian/Ubuntu: ``apt-get install espeak-ng``).
"""

from __future__ import annotations

import argparse
import io
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

SAMPLE_RATE = 16000
MIN_SECONDS, MAX_SECONDS = 1.0, 3.0

SENTENCES_EN = [
    "The quick brown fox jumps over the lazy dog.",
    "Please call me back when you get this message.",
    "It was a bright cold day in April.",
    "Turn left at the next corner and keep walking.",
    "We will meet again at the station tomorrow.",
    "Nobody expected the weather to change so fast.",
    "Can you hear the music from the other room?",
    "I think the coffee is getting cold.",
    "The museum opens at ten in the morning.",
    "She sells sea shells by the sea shore.",
    "Every picture tells a different story.",
    "Let me know what you think about it.",
]
SENTENCES_ES = [
    "Hola, buenos días a todos.",
    "El tren sale a las ocho de la mañana.",
    "Me gusta mucho pasear por la playa.",
    "Hoy hace un tiempo estupendo para salir.",
    "¿Dónde está la biblioteca de la ciudad?",
    "Vamos a cenar con mis amigos esta noche.",
    "La película empezó con media hora de retraso.",
    "Nunca había visto un cielo tan azul.",
    "Mañana tenemos una reunión muy importante.",
    "El perro corre detrás de la pelota.",
    "Gracias por venir a visitarnos.",
    "Este verano quiero aprender a nadar.",
]
#: (espeak-ng voice, pitch 0..99, speed words/min)
VOICES = [
    ("en", 50, 160),
    ("en+f3", 70, 150),
    ("en+m3", 30, 170),
    ("en-us+f2", 80, 140),
    ("en+m7", 20, 165),
    ("en-gb+f4", 60, 155),
    ("es", 50, 160),
    ("es+f3", 75, 150),
    ("es+m3", 25, 170),
    ("es-419+f1", 65, 145),
    ("es+m1", 40, 175),
    ("es+f5", 90, 150),
]


def espeak_available() -> bool:
    """Whether ``espeak-ng`` is on PATH."""
    return shutil.which("espeak-ng") is not None


def synthesise(text: str, voice: str, pitch: int, speed: int) -> np.ndarray:
    """Speak ``text`` with espeak-ng; float32 [samples] mono at 16 kHz, silence-trimmed, 1..3 s, peak 0.9.

    Raises:
        RuntimeError: espeak-ng is missing or fails.
    """
    import soundfile as sf

    from engine.audio import resample

    exe = shutil.which("espeak-ng")
    if exe is None:
        raise RuntimeError("espeak-ng not found on PATH (apt-get install espeak-ng)")
    proc = subprocess.run(
        [exe, "-v", voice, "-p", str(pitch), "-s", str(speed), "--stdout", text],
        capture_output=True,
        check=False,
        timeout=60,
    )
    if proc.returncode != 0 or not proc.stdout:
        raise RuntimeError(f"espeak-ng -v {voice} failed: {proc.stderr.decode(errors='replace').strip()}")
    data, rate = sf.read(io.BytesIO(proc.stdout), dtype="float32", always_2d=True)
    audio = resample(data.mean(axis=1), int(rate), SAMPLE_RATE)
    loud = np.flatnonzero(np.abs(audio) > 0.02 * max(np.abs(audio).max(), 1e-6))
    if len(loud):
        audio = audio[max(0, loud[0] - 800) : loud[-1] + 800]
    audio = audio[: int(MAX_SECONDS * SAMPLE_RATE)]
    if len(audio) < MIN_SECONDS * SAMPLE_RATE:
        audio = np.pad(audio, (0, int(MIN_SECONDS * SAMPLE_RATE) - len(audio)))
    peak = np.abs(audio).max()
    return (audio * (0.9 / peak) if peak > 0 else audio).astype(np.float32)


def make_unseen_voices(out_dir: str | Path, count: int = 24) -> list[Path]:
    """Write ``count`` clips ``<NN>_<voice>_p<pitch>.flac`` to ``out_dir``; returns their paths.

    Clip i uses voice ``VOICES[i % 12]`` and a sentence in that voice's language.

    Raises:
        RuntimeError: espeak-ng is missing or fails.
    """
    import soundfile as sf

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        voice, pitch, speed = VOICES[i % len(VOICES)]
        pool = SENTENCES_ES if voice.startswith("es") else SENTENCES_EN
        text = pool[(i // len(VOICES) * 5 + i) % len(pool)]
        audio = synthesise(text, voice, pitch, speed)
        path = out / f"{i:02d}_{voice.replace('+', '-')}_p{pitch}.flac"
        sf.write(path, audio, SAMPLE_RATE, subtype="PCM_16")
        paths.append(path)
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="output folder")
    parser.add_argument("--count", type=int, default=24, help="number of clips (default 24)")
    args = parser.parse_args(argv)
    try:
        paths = make_unseen_voices(args.out, args.count)
    except RuntimeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {len(paths)} clips to {args.out}")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    sys.exit(main())
