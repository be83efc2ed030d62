"""The Open Inference Protocol's raw form of a BYTES tensor: each element as its length (a 4-byte little-endian
unsigned integer) followed by its bytes. Shared by the classifier's v2 servicer and the gateway's v2 REST bridge."""

from __future__ import annotations

import struct
from collections.abc import Iterable

from services.core.errors import InvalidArgument

LENGTH = struct.Struct("<I")


def pack_bytes(elements: Iterable[bytes]) -> bytes:
    return b"".join(LENGTH.pack(len(element)) + element for element in elements)


def unpack_bytes(raw: bytes) -> list[bytes]:
    """The elements of a raw BYTES tensor; InvalidArgument when the lengths do not add up."""
    elements, offset = [], 0
    while offset < len(raw):
        if offset + LENGTH.size > len(raw):
            raise InvalidArgument("raw BYTES tensor ends inside an element's 4-byte length")
        (length,) = LENGTH.unpack_from(raw, offset)
        offset += LENGTH.size
        if offset + length > len(raw):
            raise InvalidArgument("raw BYTES tensor is shorter than an element's stated length")
        elements.append(raw[offset : offset + length])
        offset += length
    return elements
