#!/usr/bin/env bash
# Reproduces the shipped default model presets/models/wav2pix-64 with the project's own commands:
# train -> export a candidate -> evaluate it (validation split + unseen espeak-ng voices) ->
# export again with the figures inside. Takes about 1-1.5 h on a 2-core CPU (bf16 autocast).
#
#   bash scripts/make_default_model.sh            # settings of the shipped bundle (see its TRAINING.md)
#   CONFIG=... RUN=... PSI=... bash scripts/make_default_model.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
DATA=${DATA:-../shared/data/wav2pix/train}
CONFIG=${CONFIG:-presets/training/wav2pix-64b.yaml}
RUN=${RUN:-runs/wav2pix-64b}
PSI=${PSI:-1.0}
OUT=${OUT:-presets/models/wav2pix-64}

if [ ! -d "$DATA" ]; then echo "error: $DATA not found (the Wav2Pix data, see ../shared/data/README.md)" >&2; exit 2; fi
resume=()
[ -d "$RUN/checkpoints" ] && resume=(--resume)
"$PY" run.py train --config "$CONFIG" --data "$DATA" --out "$RUN" "${resume[@]}"
"$PY" run.py export "$RUN" -o out/default-candidate --truncation "$PSI"
"$PY" scripts/make_unseen_voices.py out/unseen_voices
"$PY" run.py evaluate out/default-candidate --data "$DATA" --unseen-voices out/unseen_voices --out "$RUN/eval"
cp "$RUN/eval/metrics.json" "$RUN/metrics.json"
"$PY" run.py export "$RUN" -o "$OUT" --truncation "$PSI"
mkdir -p docs/default_model
cp "$RUN/eval/metrics.json" "$RUN/eval/samples.png" "$RUN/loss.png" "$RUN/config.yaml" "$RUN/command.txt" docs/default_model/
echo "default model written to $OUT; figures in docs/default_model/"
