#!/usr/bin/env bash
# Makes sure Debian's packages that the local cluster's real node runs are installed:
# containerd (its CRI plugin runs the pods; `ctr` imports the node's images), runc,
# the CNI plugins (bridge, host-local, loopback), iptables (kube-proxy's Services)
# and busybox-static (the tests' locally built image).
#
# `pf-controlplane up --node` starts its own containerd with its own root, state and
# socket; the package's service is never started. Nothing is downloaded outside apt.
set -euo pipefail

CNI_DIR=/usr/lib/cni
if command -v containerd >/dev/null && command -v ctr >/dev/null && command -v runc >/dev/null \
    && [ -x "$CNI_DIR/bridge" ] && [ -x "$CNI_DIR/host-local" ] && [ -x "$CNI_DIR/loopback" ] \
    && command -v iptables >/dev/null && [ -x /bin/busybox ] && busybox --list >/dev/null 2>&1; then
    exit 0
fi

"$(dirname "$0")/apt-install.sh" "the local cluster's node" \
    containerd runc containernetworking-plugins iptables busybox-static
containerd --version
runc --version | head -1
