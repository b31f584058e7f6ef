"""File checksums as grid storage uses them (adler32, 8 hex digits)."""

from __future__ import annotations

import zlib
from pathlib import Path

_BLOCK = 1 << 20


def adler32(path: Path) -> str:
    value = 1
    with path.open("rb") as handle:
        while block := handle.read(_BLOCK):
            value = zlib.adler32(block, value)
    return f"{value & 0xFFFFFFFF:08x}"
