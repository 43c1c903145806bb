#!/usr/bin/env bash
# Makes sure Debian's `prometheus` package (prometheus and promtool) is installed.
#
# The observability tests run promtool on the rules and on real /metrics output, and
# start a real Prometheus; CI is a fresh Debian machine, so `make test` calls this.
# Nothing is downloaded outside apt. The package's service is not started: a test
# starts its own Prometheus on loopback with a temporary config.
set -euo pipefail

if command -v prometheus >/dev/null && command -v promtool >/dev/null; then
    exit 0
fi

SUDO=""
if [ "$(id -u)" != 0 ]; then
    SUDO="sudo"
fi

# Keep apt from starting the packaged service (no init system here, and port 9090
# belongs to nobody). Docker-style images already ship such a policy.
CREATED_POLICY=""
if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' | $SUDO tee /usr/sbin/policy-rc.d >/dev/null
    $SUDO chmod 755 /usr/sbin/policy-rc.d
    CREATED_POLICY=1
fi
cleanup() {
    if [ -n "$CREATED_POLICY" ]; then
        $SUDO rm -f /usr/sbin/policy-rc.d
    fi
}
trap cleanup EXIT

echo "installing Debian's prometheus package (prometheus, promtool)"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends prometheus \
    >/dev/null
promtool --version | head -1
