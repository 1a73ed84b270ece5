"""What a visitor sees, on a real X server: ``run.py live`` with the gallery preset fullscreen on Xvfb
(1920x1080), the demo clip as microphone, the screen grabbed with PyAV's x11grab (``scripts/live_screenshots.py``).

* gallery as shipped (``fit`` mode, the face super-resolution stage): the whole face inside the frame on the
  preset's background (bars left and right), dlib finds it with all 68 landmarks on screen, skin redder than blue;
* the same with ``fill`` and no super-resolution (the picture before issue 24): the face covers the screen.

Skips without Xvfb (``apt-get install xvfb``; CI has no display). Sound and OSC are off (no devices here).
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

import live_screenshots  # noqa: E402

pytestmark = pytest.mark.skipif(shutil.which("Xvfb") is None, reason="Xvfb not installed (apt-get install xvfb)")
BG = np.array([8, 8, 12])


def test_gallery_shows_the_whole_face_super_resolved_and_fill_crops_it(tmp_path: Path) -> None:
    from training.face_metrics import FaceAnalyzer

    after = live_screenshots.write_preset(tmp_path / "after.yaml")
    shot, report, _ = live_screenshots.capture(after, seconds=10.0)
    assert "+ sr" in report["generator"]["backend"] and report["frame_errors"] == 0
    h, w = shot.shape[:2]
    assert (h, w) == (1080, 1920)
    side = h  # fit: the square face is as high as the screen, centred
    x0, x1 = (w - side) // 2, (w + side) // 2
    bars = np.concatenate([shot[:, : x0 - 2], shot[:, x1 + 2 :]], axis=1).astype(int)
    assert np.abs(bars - BG).max() <= 2, "the bars beside the face are not the preset's background"
    face = shot[:, x0:x1]
    assert face.std() > 20
    found = FaceAnalyzer().analyze(shot, embed=False)
    assert found.boxes[0] is not None, "dlib finds no face on the screen"
    marks = found.landmarks[0]
    # all 68 landmarks inside the face square; the Wav2Pix crops (and so the generated faces) end at the chin, so
    # the chin may sit on the screen's lower edge
    assert (marks[:, 0] > x0).all() and (marks[:, 0] < x1).all() and (marks[:, 1] > 0).all()
    assert (marks[:, 1] < 1.06 * h).all()
    chin, brows = marks[8, 1], marks[17:27, 1].min()
    assert chin - brows > 0.35 * h  # a whole face, not a close-up
    third = face[h // 3 : 2 * h // 3, side // 3 : 2 * side // 3].astype(float)
    assert (third[..., 0] - third[..., 2]).mean() > 0, "skin bluer than red"

    before = live_screenshots.write_preset(tmp_path / "before.yaml", scenes={"portrait": {"fit": "fill"}},
                                           engine={"super_resolution": ""})  # fmt: skip
    shot, report, _ = live_screenshots.capture(before, seconds=10.0)
    assert "+ sr" not in report["generator"]["backend"]
    edges = np.concatenate([shot[:, :200], shot[:, -200:]], axis=1).astype(int)
    assert np.abs(edges - BG).max(axis=2).mean() > 10  # no bars: the face covers the 16:9 screen
