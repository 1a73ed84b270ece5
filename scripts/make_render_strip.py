#!/usr/bin/env python3
"""Make the README's picture: a strip of frames from a render of the demo clip with the default model.

    python scripts/make_render_strip.py [--frames 8] [--height 192] [--out docs/render_strip.png]

Renders ``presets/demo/demo_speech.flac`` with ``run.py render`` (default preset, seed 0) to a temporary
.mp4, decodes it with PyAV and keeps ``--frames`` frames evenly spaced over the voiced part (frames whose
picture is not the idle background), side by side at ``--height`` px.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import av
import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--height", type=int, default=192)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "render_strip.png")
    args = parser.parse_args(argv)
    import run

    with tempfile.TemporaryDirectory() as tmp:
        video = Path(tmp) / "demo.mp4"
        code = run.main(
            ["render", str(ROOT / "presets/demo/demo_speech.flac"), "-o", str(video), "--seed", "0", "--no-progress"]
        )
        if code:
            return code
        with av.open(str(video)) as container:
            frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    busy = [f for f in frames if float(f.std()) > 20.0]  # skip the idle background (silence)
    pick = np.linspace(0, len(busy) - 1, args.frames).round().astype(int)
    tiles = [cv2.resize(busy[i], (args.height, args.height), interpolation=cv2.INTER_AREA) for i in pick]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(args.out), cv2.cvtColor(np.concatenate(tiles, axis=1), cv2.COLOR_RGB2BGR))
    print(f"wrote {args.out} ({len(tiles)} of {len(busy)} voiced frames)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
