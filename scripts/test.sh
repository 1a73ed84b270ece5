#!/usr/bin/env bash
# Set up AVGAN (scripts/setup.sh), then run the linter and the full test suite.
# This is the README's test command and exactly what CI runs (.ci/run).
#
#   bash scripts/test.sh                 # ruff + pytest (slow tests excluded)
#   bash scripts/test.sh -m slow         # extra arguments go to pytest
#
# Exit status: non-zero if set-up, ruff or pytest failed.
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

bash scripts/setup.sh || exit $?

# No screen, no sound card: SDL's dummy drivers; matplotlib without a display.
export SDL_VIDEODRIVER=dummy SDL_AUDIODRIVER=dummy MPLBACKEND=Agg

echo "[test] ruff check ."
.venv/bin/ruff check .
ruff_rc=$?

echo "[test] python -m pytest -q $*"
.venv/bin/python -m pytest -q "$@"
pytest_rc=$?

echo "[test] ruff exit $ruff_rc, pytest exit $pytest_rc"
if ((pytest_rc != 0)); then
    exit "$pytest_rc"
fi
exit "$ruff_rc"
