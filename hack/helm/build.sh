#!/usr/bin/env bash
# Build Helm from its Go module (pinned in this folder's go.mod) into the path given as $1.
#
# The ldflags are the ones Helm's own Makefile sets, so that `helm version` names the
# release and `helm lint`/`helm template` assume the Kubernetes version of the client-go
# Helm was built with (without them Helm falls back to a built-in v1.20 and lints
# deprecations against it).
set -euo pipefail

out=${1:?usage: build.sh OUTPUT}
cd "$(dirname "$0")"
case $out in /*) ;; *) out=$OLDPWD/$out ;; esac

helm_version=$(go list -m -f '{{.Version}}' helm.sh/helm/v3)
client_go=$(go list -m -f '{{.Version}}' k8s.io/client-go) # v0.MINOR.PATCH
k8s_minor=$(echo "$client_go" | cut -d. -f2)

ldflags="-s -w"
ldflags+=" -X helm.sh/helm/v3/internal/version.version=$helm_version"
ldflags+=" -X helm.sh/helm/v3/internal/version.metadata="
ldflags+=" -X helm.sh/helm/v3/internal/version.gitTreeState=clean"
ldflags+=" -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMajor=1"
ldflags+=" -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMinor=$k8s_minor"
ldflags+=" -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor=1"
ldflags+=" -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor=$k8s_minor"

mkdir -p "$(dirname "$out")"
echo "building Helm $helm_version (client-go $client_go) into $out"
CGO_ENABLED=0 go build -trimpath -ldflags "$ldflags" -o "$out" helm.sh/helm/v3/cmd/helm
