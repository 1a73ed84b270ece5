"""A real PortAudio microphone on a machine without a sound card: ALSA devices defined in a ``.asoundrc``.

``write_asoundrc(home, speech)`` writes ``home/.asoundrc`` with

* ``avgan_mic`` -- a capture device that reads ``speech`` (float32 mono samples, written to a raw file) through
  ALSA's ``file`` plugin over the ``null`` plugin, and discards what is played to it;
* ``default`` -- the same, so ``--input mic`` (the default input device) opens it too;
* ``avgan_null`` -- ALSA's null device (silence in, nothing out).

A process started with ``HOME=home`` sees them through PortAudio (sounddevice, pyo) exactly as it would see a USB
microphone; a running process sees them once PortAudio re-scans (what ``SoundDeviceInput`` does before each
reopen): a microphone plugged in later. The null plugin does not pace capture, so the file is read as fast as
the stream asks; enough for listing and opening devices, not for timing.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

ASOUNDRC = """
pcm.avgan_null {{ type null }}
pcm.avgan_mic {{ type file; slave.pcm "avgan_null"; infile "{raw}"; file "/dev/null"; format "raw" }}
pcm.!default {{ type file; slave.pcm "avgan_null"; infile "{raw}"; file "/dev/null"; format "raw" }}
"""


def alsa_available() -> bool:
    """Whether alsa-lib's configuration is installed (the stand-in needs it)."""
    return os.path.exists("/usr/share/alsa/alsa.conf")


def write_asoundrc(home: Path, speech: np.ndarray) -> Path:
    """Write ``home/.asoundrc`` (and the raw samples it plays) as described in the module docstring."""
    raw = home / "avgan_mic.f32"
    np.tile(np.asarray(speech, np.float32), 20).tofile(raw)
    path = home / ".asoundrc"
    path.write_text(ASOUNDRC.format(raw=raw))
    return path
