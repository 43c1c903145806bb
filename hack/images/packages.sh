#!/usr/bin/env bash
# Makes sure Debian's mmdebstrap is installed: it makes the images' base (Debian bookworm
# with Debian's Python) for hack/images/build.py. Nothing is downloaded outside apt.
set -euo pipefail

if command -v mmdebstrap >/dev/null && [ -d /usr/share/mmdebstrap/hooks/merged-usr ]; then
    exit 0
fi
"$(dirname "$0")/../apt-install.sh" "the images' base" mmdebstrap
mmdebstrap --version
