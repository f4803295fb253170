"""File names as the tag index stores them, and as tables and terminals show them.

A file name that is not UTF-8 (Python gives its undecodable bytes as the surrogates U+DC80-U+DCFF) cannot be an Arrow
string. The index stores each such byte as NUL and two hex digits: no file name holds a NUL, so the escape is
reversible and leaves every UTF-8 name as it is. Outputs, search's table and the server show those bytes as ``\\xHH``.
"""
from __future__ import annotations

import os
import re

_ESCAPED = re.compile("\x00([0-9a-f]{2})")


def stored_name(path: str) -> str:
    """A file name as the index stores it."""
    if path.isascii():
        return path
    return "".join(f"\x00{ord(c) - 0xDC00:02x}" if 0xDC80 <= ord(c) <= 0xDCFF else c for c in path)


def file_name(stored: str) -> str:
    """The file name the index stored as ``stored`` (``stored_name``'s inverse)."""
    return stored if "\x00" not in stored else _ESCAPED.sub(lambda m: chr(0xDC00 + int(m.group(1), 16)), stored)


def shown_name(path: str) -> str:
    """A file name to print or write in a table: bytes that are not UTF-8 as ``\\xHH``."""
    return path if path.isascii() else os.fsencode(path).decode("utf-8", "backslashreplace")
