#!/usr/bin/env python3
"""Make the capture booth's device stand-ins from real material: a camera video and a microphone recording.

    python scripts/make_capture_standins.py --out DIR [--data ../shared/data/wav2pix/train] [--visitors 4]

Writes ``DIR/camera.mp4`` (H.264, 960x540, 25 fps, through PyAV) and ``DIR/mic.flac`` (48 kHz mono, 16-bit) of
the same length, and ``DIR/timeline.json`` (what each stretch shows). Nothing here is committed: the material is
the Wav2Pix face crops and speech snippets under ``../shared/data`` (see its README), read in place.

The timeline is a queue of visitors at an open-day booth. Each visitor (the two speakers take turns, each visit
using a different run of consecutive video frames of that speaker) is:

* 9 s of the visitor in front of the camera (their consecutive face crops, scaled 1.7x, drifting slowly, in the
  middle of the frame), speaking (their 1 s speech snippets, in frame order);
* then one awkward moment the quality gate must catch, cycling through: a friend steps in (two faces), the booth
  light goes off (the picture at 25 % brightness), the visitor steps back (face at 0.45x: too small), the
  visitor falls silent (face, room tone only);
* 1.5 s of the empty booth (no face) with room tone (-60 dBFS noise) while the next visitor steps in.

The background is the visitor's first crop, enlarged and blurred (sigma 25 px): real colours, no face.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import av
import cv2
import numpy as np
import soundfile as sf

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from datastore.images import channel_order  # noqa: E402
from engine.audio import load_audio  # noqa: E402

W, H, FPS, RATE = 960, 540, 25, 48_000
EXTRA = ("two_faces", "dark", "small_face", "silent")


def _frames_of(identity_dir: Path) -> list[tuple[int, Path, Path]]:
    out = []
    for img in identity_dir.iterdir():
        m = re.fullmatch(r"cropped_face_frame_(\d+)\.\w+", img.name)
        if not m:
            continue
        audio = next(identity_dir.glob(f"preprocessed_frame_{m.group(1)}.*"), None)
        if audio is not None:
            out.append((int(m.group(1)), img, audio))
    return sorted(out)


def _read_image(path: Path, order: str) -> np.ndarray:
    """The face as OpenCV's BGR array in true colours (``order``: the folder's channel order, see
    :func:`datastore.images.channel_order`; the Wav2Pix crops are stored with red and blue swapped)."""
    img = cv2.imdecode(np.fromfile(path, np.uint8), cv2.IMREAD_COLOR)
    if img is None:
        raise SystemExit(f"{path}: cannot decode image")
    return np.ascontiguousarray(img[:, :, ::-1]) if order == "bgr" else img


def _paste(frame: np.ndarray, face: np.ndarray, cx: float, cy: float, scale: float) -> None:
    side = int(round(face.shape[0] * scale))
    face = cv2.resize(face, (side, side), interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
    x0, y0 = int(round(cx - side / 2)), int(round(cy - side / 2))
    xa, ya, xb, yb = max(0, x0), max(0, y0), min(W, x0 + side), min(H, y0 + side)
    frame[ya:yb, xa:xb] = face[ya - y0 : yb - y0, xa - x0 : xb - x0]


def make(data: Path, out: Path, visitors: int, seed: int = 0) -> dict:
    """Write the stand-ins; returns the timeline. Raises SystemExit when ``data`` has no Wav2Pix identities."""
    rng = np.random.default_rng(seed)
    order = channel_order(data) if data.is_dir() else "rgb"
    identities = sorted(p for p in data.iterdir() if p.is_dir()) if data.is_dir() else []
    runs = {p.name: _frames_of(p) for p in identities}
    runs = {k: v for k, v in runs.items() if len(v) >= 100}
    if len(runs) < 1:
        raise SystemExit(f"{data}: no Wav2Pix identity folders with enough pairs")
    names = sorted(runs)
    out.mkdir(parents=True, exist_ok=True)
    video_path, audio_path = out / "camera.mp4", out / "mic.flac"
    container = av.open(str(video_path), "w")
    stream = container.add_stream("libx264", rate=FPS)
    stream.width, stream.height, stream.pix_fmt = W, H, "yuv420p"
    stream.options = {"crf": "23", "preset": "veryfast"}
    audio_parts: list[np.ndarray] = []
    timeline: list[dict] = []
    t = 0.0
    offsets = {k: 0 for k in names}

    def room_tone(seconds: float) -> np.ndarray:
        return (rng.standard_normal(int(round(seconds * RATE))) * 10 ** (-60 / 20)).astype(np.float32)

    def emit(frames: list[np.ndarray], audio: np.ndarray, kind: str, who: str) -> None:
        nonlocal t
        seconds = len(frames) / FPS
        n = int(round(seconds * RATE))
        audio = np.pad(audio, (0, max(0, n - audio.shape[0])))[:n]
        for f in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(f, format="bgr24")):
                container.mux(packet)
        audio_parts.append(audio)
        timeline.append({"start_s": round(t, 3), "end_s": round(t + seconds, 3), "shows": kind, "identity": who})
        t += seconds

    for v in range(visitors):
        who = names[v % len(names)]
        other = names[(v + 1) % len(names)]
        run = runs[who]
        start = offsets[who]
        offsets[who] = (start + 9 * FPS + 2 * FPS + 37) % max(1, len(run) - 12 * FPS)
        clip = run[start : start + 11 * FPS]
        faces = [_read_image(img, order) for _, img, _ in clip]
        background = cv2.GaussianBlur(cv2.resize(faces[0], (W, H)), (0, 0), 25)
        speech = np.concatenate([load_audio(a, RATE) for _, _, a in clip[:9]]).astype(np.float32)
        speech /= max(1e-3, float(np.abs(speech).max())) / 0.5  # a normal speaking level, peaks at -6 dBFS
        frames = []
        for k in range(9 * FPS):
            f = background.copy()
            phase = k / FPS
            _paste(f, faces[k % len(faces)], W / 2 + 40 * np.sin(phase * 0.7), H / 2 + 12 * np.sin(phase * 1.1), 1.7)
            frames.append(f)
        emit(frames, speech, "face", who)
        extra = EXTRA[v % len(EXTRA)]
        frames = []
        audio = np.concatenate([load_audio(a, RATE) for _, _, a in clip[9:11]]).astype(np.float32)
        audio /= max(1e-3, float(np.abs(audio).max())) / 0.5
        friend = _read_image(runs[other][(start + 500) % len(runs[other])][1], order)
        for k in range(2 * FPS):
            f = background.copy()
            face = faces[(9 * FPS + k) % len(faces)]
            if extra == "two_faces":
                _paste(f, face, W * 0.3, H / 2, 1.4)
                _paste(f, friend, W * 0.72, H / 2, 1.4)
            elif extra == "small_face":
                _paste(f, face, W / 2, H / 2, 0.45)
            else:
                _paste(f, face, W / 2, H / 2, 1.7)
            if extra == "dark":
                f = cv2.convertScaleAbs(f, alpha=0.25)
            frames.append(f)
        emit(frames, room_tone(2.0) if extra == "silent" else audio, extra, who)
        emit([background.copy() for _ in range(int(1.5 * FPS))], room_tone(1.5), "empty", "")
    for packet in stream.encode():
        container.mux(packet)
    container.close()
    sf.write(audio_path, np.clip(np.concatenate(audio_parts), -1, 1), RATE, subtype="PCM_16")
    info = {"camera": video_path.name, "mic": audio_path.name, "fps": FPS, "size": [W, H], "rate": RATE}
    info["duration_s"] = round(t, 3)
    info["timeline"] = timeline
    (out / "timeline.json").write_text(json.dumps(info, indent=1))
    return info


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="output folder (not committed)")
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "wav2pix" / "train")
    parser.add_argument("--visitors", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    info = make(args.data, args.out, args.visitors, args.seed)
    print(f"wrote {args.out / info['camera']} and {args.out / info['mic']} ({info['duration_s']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
