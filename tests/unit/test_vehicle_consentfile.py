"""The owner's consent file on the car: its words, a missing file, a malformed one."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from parkfleet.vehicle.consentfile import ConsentFile, parse_consent


@pytest.mark.parametrize(
    ("text", "consent"),
    [
        ("consent: active\n", "active"),
        ("consent: paused", "paused"),
        ("consent: Withdrawn\n", "withdrawn"),
        ("paused\n", "paused"),
        ("  active  ", "active"),
    ],
)
def test_parse_consent(text: str, consent: str) -> None:
    assert parse_consent(text) == consent


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("", "not one of"),
        ("consent: maybe", "not one of"),
        ("consent: true", "not one of"),  # YAML's bool, not a word
        ("consent: paused\nmood: ok", "one key"),
        ("- paused", "not one of"),
        ("consent: [", "not YAML"),
    ],
)
def test_parse_consent_refuses_what_is_not_a_consent(text: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        parse_consent(text)


def _write(path: Path, text: str, stamp_ns: int) -> None:
    path.write_text(text)
    os.utime(path, ns=(stamp_ns, stamp_ns))  # a new modification time, whatever the fs


def test_missing_file_is_active_and_changes_are_read(tmp_path: Path) -> None:
    path = tmp_path / "consent.yaml"
    f = ConsentFile(path)
    assert f.read_now() == "active"
    _write(path, "consent: paused\n", 1_000_000_000)
    assert f.read_now() == "paused"
    _write(path, "consent: active\n", 2_000_000_000)
    assert f.read_now() == "active"
    _write(path, "consent: withdrawn\n", 3_000_000_000)
    assert f.read_now() == "withdrawn"
    path.unlink()
    assert f.read_now() == "active"


def test_malformed_file_keeps_the_last_value_and_says_so_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "consent.yaml"
    f = ConsentFile(path)
    _write(path, "consent: paused\n", 1_000_000_000)
    assert f.read_now() == "paused"
    _write(path, "consent: paus", 2_000_000_000)  # half-written
    with caplog.at_level(logging.WARNING, logger="parkfleet.vehicle.consentfile"):
        for _ in range(5):
            assert f.read_now() == "paused"
    warnings = [r for r in caplog.records if "keeping consent paused" in r.getMessage()]
    assert len(warnings) == 1
    _write(path, "consent: active\n", 3_000_000_000)
    assert f.read_now() == "active"


async def test_async_read(tmp_path: Path) -> None:
    path = tmp_path / "consent"
    path.write_text("withdrawn")
    assert await ConsentFile(path).read() == "withdrawn"
