"""Text that reaches an operator's terminal: every renderer passes its lines through here.

Plan titles, actors, step descriptions and errors come from callers and commands; raw escape
sequences in them could rewrite the screen (or the line a reviewer is reading), and `\\r` or
`\\n` could forge output lines. They are shown escaped, visibly, instead.
"""

from __future__ import annotations

from collections.abc import Iterable

_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
# Bidirectional overrides and isolates reorder what the eye reads (the "Trojan Source" set).
_BIDI = {*range(0x202A, 0x202F), *range(0x2066, 0x206A)}


def _escape(ch: str) -> str:
    code = ord(ch)
    if ch in _NAMED:
        return _NAMED[ch]
    if code < 0x20 or 0x7F <= code <= 0x9F:
        return f"\\x{code:02x}"
    if code in _BIDI or 0xD800 <= code <= 0xDFFF:  # lone surrogates cannot even be printed
        return f"\\u{code:04x}"
    return ch


def sanitize(text: object) -> str:
    """One line of terminal text with every control character escaped (`\\x1b`, `\\r`...)."""
    s = str(text)
    if s.isprintable():
        return s
    return "".join(_escape(ch) for ch in s)


def lines(rows: Iterable[object]) -> str:
    """Join already formatted lines, each sanitised, with real newlines between them."""
    return "\n".join(sanitize(row) for row in rows)
