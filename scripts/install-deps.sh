#!/usr/bin/env bash
# Installs the system packages zinc builds against, only those missing.
# Debian 12 (apt-get). Uses sudo when not root. Idempotent and quiet when
# everything is present.
set -euo pipefail
pkgs=(gcc make libopenmpi-dev openmpi-bin libjansson-dev liburing-dev libcunit1-dev libopenblas-dev libopenblas0-openmp)
missing=()
for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if ! command -v apt-get >/dev/null; then
    echo "zinc: missing packages ${missing[*]} and no apt-get to install them" >&2
    exit 1
fi
SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO="sudo"
echo "zinc: installing ${missing[*]}" >&2
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
