"""Text from users, workflows and file names, made safe to put in a message.

ComfyUI logs every node error through a stream that must encode it: one lone surrogate (a
file name with non-UTF-8 bytes, a pasted phrase) in a message kills the prompt worker, and a
30k-character phrase floods the log. Every message that quotes outside text goes through
:func:`quoted`; :func:`loggable` is the last line of defence for whole messages.
"""

from __future__ import annotations

import re

QUOTE_LIMIT = 120  # characters of outside text a message quotes
MESSAGE_LIMIT = 4000  # characters of a whole message

# lone surrogates, C0/C1 controls, line/paragraph separators and bidirectional overrides
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff]")
_UNSAFE_IN_MESSAGE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff]")


def _escape(match: re.Match) -> str:
    return match.group().encode("unicode_escape").decode("ascii")


def _shorten(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text)} characters)"


def printable(value: object, limit: int = QUOTE_LIMIT) -> str:
    """``value`` on one line, printable, at most ``limit`` characters of it (for messages and drawn labels)."""
    text = value if isinstance(value, str) else str(value)
    return _UNSAFE.sub(_escape, _shorten(text, limit))


def quoted(value: object, limit: int = QUOTE_LIMIT) -> str:
    """``value`` between quotes, as :func:`printable` makes it."""
    return f"'{printable(value, limit)}'"


def loggable(message: str, limit: int = MESSAGE_LIMIT) -> str:
    """A whole message with its unencodable or invisible characters escaped (newlines and tabs kept), bounded."""
    return _UNSAFE_IN_MESSAGE.sub(_escape, _shorten(message, limit))


def is_loggable(message: str, limit: int = MESSAGE_LIMIT) -> bool:
    return len(message) <= limit and _UNSAFE_IN_MESSAGE.search(message) is None
