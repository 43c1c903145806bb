#!/usr/bin/env bash
# Generates the Python code (and typing stubs) for the car-link protocol.
# Usage: hack/gen-proto.sh [OUT_ROOT]   (default: operator, i.e. in place)
# tests/unit/test_protocol_codegen.py runs it into a temporary folder and
# fails when the committed code differs from what the .proto gives.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
out="${1:-$root/operator}"
venv="${VENV:-$root/.venv}"
mkdir -p "$out"
PATH="$venv/bin:$PATH" "$venv/bin/python" -m grpc_tools.protoc -I "$root/operator" \
  --python_out="$out" --grpc_python_out="$out" --mypy_out="$out" --mypy_grpc_out="$out" \
  "$root/operator/parkfleet/protocol/carlink.proto"
