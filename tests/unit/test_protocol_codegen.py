"""The committed generated code must be exactly what hack/gen-proto.sh makes from the .proto."""

from __future__ import annotations

import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PROTOCOL = ROOT / "operator" / "parkfleet" / "protocol"
GENERATED = (
    "carlink_pb2.py",
    "carlink_pb2.pyi",
    "carlink_pb2_grpc.py",
    "carlink_pb2_grpc.pyi",
)


def test_generated_code_matches_proto(tmp_path: Path) -> None:
    subprocess.run(
        ["bash", str(ROOT / "hack" / "gen-proto.sh"), str(tmp_path)],
        check=True,
        capture_output=True,
        timeout=120,
    )
    fresh_dir = tmp_path / "parkfleet" / "protocol"
    produced = sorted(p.name for p in fresh_dir.iterdir() if p.is_file())
    assert produced == sorted(GENERATED), "gen-proto.sh produced an unexpected set of files"
    stale = [
        name
        for name in GENERATED
        if (fresh_dir / name).read_bytes() != (PROTOCOL / name).read_bytes()
    ]
    assert not stale, (
        f"generated code is out of date with carlink.proto: {stale}; run hack/gen-proto.sh"
    )
