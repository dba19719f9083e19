"""JSON text from outside, made decodable: a lone surrogate escape (``"\\ud800"``) becomes U+FFFD.

JSON's grammar allows any ``\\uXXXX`` escape, and JavaScript's ``JSON.stringify`` and Python's ``json.dumps`` write
a lone surrogate so (a truncated emoji in a note). orjson and msgspec refuse it ("unexpected end of hex escape"), so
one in any unread note made the whole request a 400, or a FHIR server's answer a 412. A string holding one could not
be written out again as UTF-8 either (a response, a log line, the feedback store). So before decoding, each escape
of a surrogate that is not half of a pair is replaced with ``\\ufffd``, the replacement character, as a UTF-8 decoder
replaces bytes it cannot read. The text keeps its length, so decoding errors keep their positions.
"""

from __future__ import annotations

import re
from typing import Any

import orjson

_SURROGATE = re.compile(rb"\\u[dD][89a-fA-F]")
# Every escape, left to right (in JSON a backslash only ever starts one): a surrogate pair, a lone surrogate, or any
# other escape (``\\\\`` taken whole, so that the ``u`` after an escaped backslash is never read as an escape).
_ESCAPE = re.compile(
    rb"\\(?:u[dD][89abAB][0-9a-fA-F]{2}\\u[dD][c-fC-F][0-9a-fA-F]{2}|(u[dD][89a-fA-F][0-9a-fA-F]{2})|.)", re.DOTALL
)


def without_lone_surrogates(raw: bytes) -> bytes:
    """``raw`` with every lone surrogate escape replaced by ``\\ufffd`` (the same bytes when there is none)."""
    if _SURROGATE.search(raw) is None:
        return raw
    return _ESCAPE.sub(lambda m: b"\\ufffd" if m.group(1) else m.group(), raw)


def loads(raw: bytes) -> Any:
    """``orjson.loads``, lone surrogates read as U+FFFD; raises ``orjson.JSONDecodeError`` as it does."""
    return orjson.loads(without_lone_surrogates(raw))
