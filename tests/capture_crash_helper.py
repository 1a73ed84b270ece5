"""Crash-test helper for tests/test_capture_store.py: writes takes into DATASET until it is killed.

Usage: ``python tests/capture_crash_helper.py DATASET [SEED]``. Prints ``READY`` once the writer is open, then
for each take ``BEGIN`` before and ``KEPT <take_id>`` after :meth:`DatasetWriter.write_take` returns (flushed),
so the parent knows which takes were reported as kept and whether a kill landed inside a write.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import cv2  # noqa: E402
import numpy as np  # noqa: E402

from datastore.capture_store import DatasetWriter  # noqa: E402


def main() -> None:
    root = sys.argv[1]
    rng = np.random.default_rng(int(sys.argv[2]) if len(sys.argv) > 2 else 0)
    participants = [f"P-CRASH{k}" for k in range(3)]
    writer = DatasetWriter(root, min_free_mb=0.0)
    print("READY", flush=True)
    i = 0
    while True:
        img = rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)
        png = cv2.imencode(".png", img)[1].tobytes()
        jpg = cv2.imencode(".jpg", img)[1].tobytes() if i % 2 else None
        audio = (rng.standard_normal(1600) * 0.1).astype(np.float32)
        print("BEGIN", flush=True)
        rec = writer.write_take(
            participants[i % 3], png, audio, 16000, frame_jpg=jpg, audio_format="flac" if i % 3 == 0 else "wav"
        )
        print(f"KEPT {rec.take_id}", flush=True)
        i += 1


if __name__ == "__main__":
    main()
