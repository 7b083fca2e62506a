#!/usr/bin/env bash
# Debian/Ubuntu libraries napari needs for a real OpenGL context on a
# headless machine (Xvfb + Mesa + xcb). Run as root; a no-op elsewhere.
set -euo pipefail
if ! command -v apt-get >/dev/null 2>&1; then
    echo "install-system-deps: no apt-get here; install Xvfb and OpenGL libraries yourself" >&2
    exit 0
fi
SUDO=""
[ "$(id -u)" = 0 ] || SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends \
    xvfb xauth libgl1 libgl1-mesa-dri libegl1 libxkbcommon-x11-0 \
    libxcb-icccm4 libxcb-image0 libxcb-keysyms1 libxcb-randr0 \
    libxcb-render-util0 libxcb-xinerama0 libxcb-xfixes0 libxcb-shape0 \
    libxcb-cursor0 libdbus-1-3 libfontconfig1 >/dev/null
