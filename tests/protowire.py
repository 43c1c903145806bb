"""Protobuf's wire format by hand, for tests that need bytes no encoder writes."""

from __future__ import annotations

__all__ = ["delimited", "field", "varint"]


def varint(n: int) -> bytes:
    """``n`` as a base-128 varint."""
    out = bytearray()
    while n >= 0x80:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def field(number: int, wire_type: int, payload: bytes) -> bytes:
    """One field: its key, its length when length-delimited (type 2), then ``payload``."""
    key = varint(number << 3 | wire_type)
    if wire_type == 2:
        return key + varint(len(payload)) + payload
    return key + payload


def delimited(number: int, payload: bytes) -> bytes:
    """A length-delimited field: a string, bytes, a sub-message or a packed list."""
    return field(number, 2, payload)
