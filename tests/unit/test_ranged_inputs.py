"""Inputs read by range: .jsonl lines found by one scan (blank lines, CRLF, no final
newline, lines across scan and block boundaries), .npy items by offset, parts numbered on
end to end, texts read from lines, and tokenised batches padded to their longest text."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from parkfleet.nodeagent import ranged
from parkfleet.nodeagent.openinputs import Tokenizers, file_readers
from parkfleet.nodeagent.ranged import FileReader, JsonlPart, NpyPart, Parts, open_part
from parkfleet.nodeagent.textinput import texts_of


async def _part(path: Path) -> NpyPart | JsonlPart:
    return await open_part(FileReader(path))


@pytest.mark.parametrize(
    "content",
    [
        b'"a"\n"b"\n"c"\n',
        b'"a"\r\n"b"\r\n\r\n"c"',  # CRLF, a blank line, no final newline
        b'\n\n"a"\n\n"b"\n"c"\n\n',
    ],
)
async def test_jsonl_lines_are_the_non_blank_lines(tmp_path: Path, content: bytes) -> None:
    f = tmp_path / "t.jsonl"
    f.write_bytes(content)
    part = await _part(f)
    assert isinstance(part, JsonlPart)
    assert part.items == 3
    assert await part.lines(0, 3) == [b'"a"', b'"b"', b'"c"']
    assert await part.lines(1, 2) == [b'"b"']


async def test_lines_across_scan_and_block_boundaries(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ranged, "_SCAN_BYTES", 7)
    monkeypatch.setattr(ranged, "BLOCK_BYTES", 50)
    texts = [f"text number {i} " + "x" * (i % 13) for i in range(300)]
    f = tmp_path / "t.jsonl"
    f.write_text("".join(json.dumps(t) + ("\r\n" if i % 2 else "\n") for i, t in enumerate(texts)))
    part = await _part(f)
    assert part.items == 300
    assert isinstance(part, JsonlPart)
    got = await part.lines(17, 211)
    assert [json.loads(g) for g in got] == texts[17:211]


async def test_npy_items_by_offset_and_parts_numbered_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ranged, "BLOCK_BYTES", 100)
    a = np.arange(40 * 3, dtype=np.float32).reshape(40, 3)
    np.save(tmp_path / "a.npy", a)
    (tmp_path / "b.jsonl").write_text("".join(json.dumps([i, i, i]) + "\n" for i in range(5)))
    (tmp_path / ".hidden.npy").write_bytes(b"not ours")
    readers = file_readers(tmp_path)
    assert [r.name for r in readers] == ["a.npy", "b.jsonl"]
    parts = Parts([await open_part(r) for r in readers])
    assert parts.items == 45
    got = await parts.read(35, 43)
    expected = np.concatenate([a[35:], np.array([[i] * 3 for i in range(3)], dtype=np.float32)])
    assert np.array_equal(got, expected)
    with pytest.raises(ValueError, match=r"a\.npy: a text input is \.jsonl"):
        await parts.lines(0, 2)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"not numpy at all", "not a .npy file"),
        (b"\x93NUMPY\x01\x00\x10\x00{'descr': 'zz'}   ", "unreadable .npy header"),
    ],
)
async def test_a_bad_npy_is_refused_saying_why(
    tmp_path: Path, content: bytes, message: str
) -> None:
    f = tmp_path / "bad.npy"
    f.write_bytes(content)
    with pytest.raises(ValueError, match=message):
        await _part(f)


async def test_a_truncated_npy_is_refused(tmp_path: Path) -> None:
    f = tmp_path / "cut.npy"
    np.save(f, np.zeros((10, 4), dtype=np.float32))
    f.write_bytes(f.read_bytes()[:-8])
    with pytest.raises(ValueError, match="its header says"):
        await _part(f)


def test_texts_are_strings_or_a_field_of_objects() -> None:
    lines = [b'"plain"', b'{"text": "in an object", "id": 3}']
    assert texts_of(lines, "text", 0) == ["plain", "in an object"]
    with pytest.raises(ValueError, match="item 11: no string 'text'"):
        texts_of([b'"ok"', b'{"body": "x"}'], "text", 10)
    with pytest.raises(ValueError, match="item 5: neither a JSON string"):
        texts_of([b"[1, 2]"], "text", 5)
    with pytest.raises(ValueError, match="item 0: not a line of JSON"):
        texts_of([b"{oops"], "text", 0)


async def test_blocks_are_bounded_in_bytes_however_line_lengths_vary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ranged, "BLOCK_BYTES", 1000)
    # Mostly short lines, then a run of long ones: blocks of a fixed count of lines would
    # reach far past BLOCK_BYTES there.
    texts = ["x"] * 500 + ["y" * 900] * 50 + ["z"] * 500
    f = tmp_path / "t.jsonl"
    f.write_text("".join(json.dumps(t) + "\n" for t in texts))
    part = await _part(f)
    assert isinstance(part, JsonlPart)
    longest = max(len(json.dumps(t)) for t in texts)
    for index in range(len(part.firsts)):
        first, end = part._items_of(index)
        start, stop = part._span(first, end)
        assert stop - start <= 1000 + longest
    got = await part.lines(0, len(texts))
    assert [json.loads(g) for g in got] == texts


async def test_a_line_longer_than_the_bound_is_refused_naming_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ranged, "MAX_LINE_BYTES", 100)
    f = tmp_path / "t.jsonl"
    f.write_text('"short"\n' + json.dumps("w" * 200) + "\n")
    with pytest.raises(ValueError, match=r"t\.jsonl: item 1 is a line of 202 bytes, more than 100"):
        await _part(f)


async def test_a_npy_item_larger_than_the_car_link_carries_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ranged, "MAX_ITEM_BYTES", 1024)
    np.save(tmp_path / "big.npy", np.zeros((3, 512), dtype=np.float32))  # 2048 bytes an item
    with pytest.raises(ValueError, match="an item is 2048 bytes, more than the car link carries"):
        await _part(tmp_path / "big.npy")


async def test_a_tokenizer_is_read_once_for_every_unit_and_checked_each_time(
    tmp_path: Path,
) -> None:
    from tests.unit.test_tokenize import TOKENIZER

    f = tmp_path / "tokenizer.json"
    f.write_text(TOKENIZER)
    reads: list[int] = []
    tokenizers = Tokenizers()
    digest = hashlib.sha256(TOKENIZER.encode()).hexdigest()
    first = await tokenizers.open(FileReader(f, reads.append), 32, digest)
    again = await tokenizers.open(FileReader(f, reads.append), 32, digest)
    assert again is first
    assert reads == [len(TOKENIZER.encode())]  # read once
    with pytest.raises(ValueError, match="its sha256 is not the one the job names"):
        await tokenizers.open(FileReader(f, reads.append), 32, "0" * 64)
