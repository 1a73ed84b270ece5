#!/usr/bin/env bash
# Set up AVGAN (scripts/setup.sh), then render the shipped demo speech clip with the
# shipped default model to demo.mp4 in the repository root.
#
#   bash scripts/demo.sh                 # -> demo.mp4
#   bash scripts/demo.sh --size 512      # extra arguments go to `run.py render`
#
# The clip, presets/demo/demo_speech.flac, is the project's own synthesised speech
# (scripts/make_demo_clip.py, espeak-ng); it is regenerated only if it is missing.
# AVGAN_BUNDLE=path/to/bundle renders with another model bundle.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

bash scripts/setup.sh

VPY=.venv/bin/python
CLIP=presets/demo/demo_speech.flac
BUNDLE="${AVGAN_BUNDLE:-presets/models/wav2pix-64}"
OUT=demo.mp4

if [[ -f "$CLIP" ]]; then
    echo "[demo] clip: $CLIP (shipped)"
else
    CLIP=out/demo_speech.wav
    echo "[demo] no shipped clip; synthesising $CLIP with espeak-ng"
    "$VPY" scripts/make_demo_clip.py -o "$CLIP"
fi
if [[ ! -f "$BUNDLE/bundle.json" ]]; then
    echo "[demo] error: $BUNDLE: no model bundle (bundle.json missing); see README, 'Default model'" >&2
    exit 1
fi

echo "[demo] rendering $CLIP with $BUNDLE -> $OUT"
START=$SECONDS
"$VPY" run.py render "$CLIP" -o "$OUT" --bundle "$BUNDLE" "$@"
echo "[demo] wrote $ROOT/$OUT in $((SECONDS - START)) s"
