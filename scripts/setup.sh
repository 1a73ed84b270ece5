#!/usr/bin/env bash
# Set up AVGAN on a fresh Debian/Ubuntu machine with Python 3.11+: system packages,
# a virtual environment in .venv, torch 2.13.0 FIRST, then the project (editable) with
# its dev tools. Idempotent: a second run checks and skips what is already done.
# Non-interactive (works with CI=true and no stdin).
#
# Environment knobs (all optional):
#   PYTHON=/path/to/python3.x   interpreter for the venv (default: python3.11, else python3 if >= 3.11)
#   AVGAN_VENV=.venv            where the venv goes (relative to the repo root)
#   AVGAN_EXTRAS=dev            extras to install (e.g. "dev,tensorrt" on an NVIDIA machine)
#   AVGAN_TORCH_SPEC=torch==2.13.0
#   AVGAN_TORCH_PIP_ARGS=       extra pip arguments for the torch step only (e.g. an --index-url
#                               of PyTorch's CPU wheels on a machine without a local torch wheel)
#   AVGAN_SKIP_APT=1            never touch system packages
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

VENV="${AVGAN_VENV:-.venv}"
EXTRAS="${AVGAN_EXTRAS:-dev}"
TORCH_SPEC="${AVGAN_TORCH_SPEC:-torch==2.13.0}"
TORCH_VERSION="${TORCH_SPEC#torch==}"
APT_PACKAGES=(libportaudio2 libsndfile1 ffmpeg espeak-ng sox)
START=$SECONDS

log() { echo "[setup] $*"; }
die() {
    echo "[setup] error: $*" >&2
    exit 1
}

# ---------------------------------------------------------------- Python 3.11+
py_ok() { "$1" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' 2>/dev/null; }

if [[ -n "${PYTHON:-}" ]]; then
    PY="$PYTHON"
    py_ok "$PY" || die "PYTHON=$PY is not Python 3.11 or newer"
elif command -v python3.11 >/dev/null 2>&1 && py_ok python3.11; then
    PY=python3.11
elif command -v python3 >/dev/null 2>&1 && py_ok python3; then
    PY=python3
else
    die "need Python 3.11 or newer (python3.11 or python3); install it, or set PYTHON=/path/to/python"
fi
PY_VER="$("$PY" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')"
log "python: $(command -v "$PY") ($("$PY" --version 2>&1))"

# ---------------------------------------------------------------- system packages
# libportaudio2: sounddevice (microphone); libsndfile1: soundfile; ffmpeg: command-line
# checks of renders; espeak-ng: regenerating the demo clip; sox: audio inspection.
missing=()
if [[ "${AVGAN_SKIP_APT:-0}" == 1 ]]; then
    log "system packages: skipped (AVGAN_SKIP_APT=1)"
elif ! command -v dpkg >/dev/null 2>&1; then
    log "system packages: no dpkg (not Debian/Ubuntu); make sure these are installed: ${APT_PACKAGES[*]}"
else
    for pkg in "${APT_PACKAGES[@]}"; do
        dpkg -s "$pkg" 2>/dev/null | grep -q '^Status: install ok installed' || missing+=("$pkg")
    done
    # Debian's python3.x needs python3.x-venv for `python -m venv` (ensurepip)
    if [[ ! -x "$VENV/bin/python" ]] && ! "$PY" -c 'import ensurepip, venv' 2>/dev/null; then
        missing+=("python${PY_VER}-venv")
    fi
    if ((${#missing[@]} == 0)); then
        log "system packages: all present (${APT_PACKAGES[*]})"
    else
        SUDO=()
        if [[ "$(id -u)" != 0 ]]; then
            if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
                SUDO=(sudo -n)
            else
                SUDO=(none)
            fi
        fi
        if [[ "${SUDO[*]}" == none ]]; then
            log "system packages missing: ${missing[*]}"
            log "  not root and no password-less sudo: run 'sudo apt-get install ${missing[*]}' yourself."
            log "  continuing; the parts that need them will fail or skip."
        else
            log "system packages: installing ${missing[*]}"
            export DEBIAN_FRONTEND=noninteractive
            "${SUDO[@]}" apt-get update -qq
            "${SUDO[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" </dev/null
        fi
    fi
fi

# ---------------------------------------------------------------- virtual environment
if [[ -x "$VENV/bin/python" ]] && py_ok "$VENV/bin/python"; then
    log "venv: $VENV exists ($("$VENV/bin/python" --version 2>&1))"
else
    if [[ -e "$VENV" ]]; then
        log "venv: $VENV is broken or older than Python 3.11; recreating"
        rm -rf "$VENV"
    fi
    log "venv: creating $VENV with $PY"
    "$PY" -m venv "$VENV"
    log "venv: upgrading pip"
    "$VENV/bin/python" -m pip install --no-input -q --upgrade pip
fi
VPY="$VENV/bin/python"
PIP=("$VPY" -m pip install --no-input)

# ---------------------------------------------------------------- torch FIRST
# A bare `torch` requirement, or any range admitting a newer release, makes pip fetch the
# newest torch with several GB of CUDA packages. Pinned and installed first, the project's
# `torch>=2.4` is already satisfied and pip adds nothing. See DEVELOPERS.md.
have_torch="$("$VPY" -c 'from importlib.metadata import version; print(version("torch"))' 2>/dev/null || true)"
if [[ "${have_torch%%+*}" == "${TORCH_VERSION%%+*}" ]]; then
    log "torch: $have_torch already installed"
else
    log "torch: installing $TORCH_SPEC (before anything else)"
    # shellcheck disable=SC2086  # AVGAN_TORCH_PIP_ARGS is a word list on purpose
    "${PIP[@]}" -q "$TORCH_SPEC" ${AVGAN_TORCH_PIP_ARGS:-}
fi

# ---------------------------------------------------------------- the project
STAMP="$VENV/.avgan-setup"
want_stamp="$(sha256sum pyproject.toml | cut -d' ' -f1) extras=$EXTRAS"
if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$want_stamp" ]] && "$VPY" -c 'from importlib.metadata import version; version("avgan")' 2>/dev/null; then
    log "project: up to date with pyproject.toml (extras: $EXTRAS)"
else
    log "project: pip install -e '.[$EXTRAS]'"
    "${PIP[@]}" -q -e ".[$EXTRAS]"
    echo "$want_stamp" >"$STAMP"
fi

# ---------------------------------------------------------------- resemblyzer, without its metadata's deps
# The avgan evaluation's speaker embeddings (weights inside the wheel). Its metadata asks for `typing` (the
# Python < 3.5 backport) and `webrtcvad` (source only: needs a compiler); what it really needs, librosa and the
# same `webrtcvad` module as prebuilt wheels (webrtcvad-wheels), are in pyproject.toml. So: --no-deps.
RESEMBLYZER_SPEC="resemblyzer==0.1.4"
if "$VPY" -c 'from importlib.metadata import version; assert version("resemblyzer") == "0.1.4"' 2>/dev/null; then
    log "resemblyzer: already installed"
else
    log "resemblyzer: pip install --no-deps $RESEMBLYZER_SPEC"
    "${PIP[@]}" -q --no-deps "$RESEMBLYZER_SPEC"
fi

now_torch="$("$VPY" -c 'from importlib.metadata import version; print(version("torch"))')"
if [[ "${now_torch%%+*}" != "${TORCH_VERSION%%+*}" ]]; then
    die "torch is $now_torch after installing the project, expected $TORCH_VERSION: a dependency pulled another torch"
fi
log "done in $((SECONDS - START)) s: $("$VPY" --version 2>&1), torch $now_torch, venv $VENV"
