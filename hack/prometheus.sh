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

"$(dirname "$0")/apt-install.sh" "the observability tests" prometheus
promtool --version | head -1
