#!/usr/bin/env bash
# One-command set-up: system packages (when apt is available) and the Python package.
#   ./install.sh          mmva and everything it needs to analyze, train and serve
#   ./install.sh --test   also what the test suite needs (espeak-ng voices, Chromium for the browser test)
set -euo pipefail
cd "$(dirname "$0")"
extras=""
pkgs=(espeak-ng)  # speech for `mmva make-corpus` and generated test media
if [ "${1:-}" = "--test" ]; then
  extras="[test]"
  pkgs+=(chromium chromium-driver)
fi
if command -v apt-get >/dev/null 2>&1; then
  need=()
  for pkg in "${pkgs[@]}"; do dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg"); done
  if [ ${#need[@]} -gt 0 ]; then
    sudo_cmd=""; [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
    DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  fi
else
  echo "apt-get not found: install ${pkgs[*]} with your system's package manager" >&2
fi
# An old pip (23.x) gives up on the boto3/aiobotocore/botocore pins that a current pip resolves.
python -m pip install -q --upgrade "pip>=24"
python -m pip install -q -e ".${extras}"
echo "mmva installed: try 'mmva analyze --sample'"
