#!/usr/bin/env bash
# Installs Debian packages with apt, without starting the services they ship.
#
# usage: apt-install.sh "WHAT (for the log)" PACKAGE...
# CI is a fresh Debian machine and there is no init system here: the packaged
# services are never wanted (tests start their own copies, with their own state).
set -euo pipefail

what=${1:?usage: apt-install.sh WHAT PACKAGE...}
shift

SUDO=""
if [ "$(id -u)" != 0 ]; then
    SUDO="sudo"
fi

# Keep apt from starting the packaged services. Docker-style images already ship
# such a policy; one created here is removed again.
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

echo "installing Debian's packages for $what: $*"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "$@" >/dev/null
