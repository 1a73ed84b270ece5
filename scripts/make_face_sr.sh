#!/usr/bin/env bash
# Reproduces the shipped face super-resolution stage presets/models/face-sr-4x (64 -> 256 px) with the project's
# own commands, and its record in docs/face_sr/:
#   1. train presets/training/face-sr-4x.yaml on the Wav2Pix training crops (L1 loss, no discriminator; the face
#      generator's split: val_fraction 0.1, seed 0) into RUN; 8000 steps, ~1-3 h on a shared 2-core CPU;
#   2. export RUN's last checkpoint (the moving-average weights; no checkpoint is selected on anything);
#   3. evaluate that bundle: PSNR against OpenCV's nearest/bilinear/bicubic/Lanczos upscaling on the 111
#      validation crops, and dlib's face detection on the default model's faces from the 555 validation voices x
#      4 seeds, as generated and after the stage (~10-20 min);
#   4. export it again with those figures inside (metrics.json) and copy the record to docs/face_sr/.
#
#   bash scripts/make_face_sr.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
DATA=${DATA:-../shared/data/wav2pix/train}
RUN=${RUN:-runs/face-sr-4x}
OUT=${OUT:-presets/models/face-sr-4x}
"$PY" run.py train --config presets/training/face-sr-4x.yaml --data "$DATA" --out "$RUN"
"$PY" run.py export "$RUN" -o out/face-sr-4x
"$PY" run.py evaluate out/face-sr-4x --data "$DATA" --generated-by presets/models/wav2pix-64 --out out/face-sr-4x.eval
"$PY" run.py export out/face-sr-4x -o "$OUT" --metrics out/face-sr-4x.eval/metrics.json
mkdir -p docs/face_sr
cp out/face-sr-4x.eval/metrics.json out/face-sr-4x.eval/psnr.md out/face-sr-4x.eval/samples.jpg docs/face_sr/
cp "$RUN/config.yaml" "$RUN/command.txt" "$RUN/log.jsonl" "$RUN/loss.png" docs/face_sr/
