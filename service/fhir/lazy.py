"""Decoding a hook request: the small parts at once, the resources of prefetch Bundles only when they are read.

A chart of 10000 Observations is a 5 MB request, and most of its Observations are never used (the rules read other
labs only when they are recent or drawn with a low ALP). Decoding all of it into dicts, and freeing them, cost more
than everything else the service does. So each prefetch Bundle is decoded into a :class:`LazyBundle`: the Bundle's
own fields as a dict, and per entry the resource's JSON text (checked to be well-formed JSON by the decoder). A
reader first decodes a small :class:`Head` (type, id, code, date) to test cheaply, and decodes the whole resource
into plain dicts only when it will read it; everything after that works on dicts as before.

What the decoder refuses in a resource it reads (a number no double or Python int can hold) is
:class:`UndecodableResource`, a 400 as it would have been had the whole body been decoded at once; a resource that
is never read is never decoded, so a bad number in it goes unnoticed, as it harms nothing. A resource may nest about
as deep as the decoder allows (about 970 levels) since none is ever walked recursively; everything else is held to
the request's nesting limit (``service.endpoints.incoming``): the Bundle's own fields are decoded and walked, and an
entry's other elements must be plain (:class:`Entry`). The body must be UTF-8 throughout (checked before anything is
decoded). What stays as it was: the rest of the request (decoded in full) and any prefetch value that is not a
Bundle of plain entries, or that has a next page to fetch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import msgspec

from service.fhir.elements import Fields, array, string
from service.jsontext import without_lone_surrogates

EMPTY = msgspec.Raw(b"")
_any = msgspec.json.Decoder()


class UndecodableResource(ValueError):
    """A prefetch resource that a reader needs holds JSON the service cannot decode (no patient data in the text)."""


class Head(msgspec.Struct, gc=False):
    """The fields kept of every entry (small: a chart holds thousands). Not tracked by the garbage collector:
    decoded JSON holds no reference cycles. Any JSON type: the reader checks."""

    resourceType: Any = None
    id: Any = None
    effectiveDateTime: Any = None


class _Codes(msgspec.Struct, gc=False):
    code: Any = None
    component: Any = None


class Peek(Fields):
    """What a reader's cheap test sees of an entry, read like a dict (through :mod:`service.fhir.elements`): the
    head's fields, and ``code`` and ``component`` decoded from the resource's text only if the test asks (and not
    kept)."""

    __slots__ = ("_codes", "_head", "_raw")

    def __init__(self, head: Head, raw: msgspec.Raw) -> None:
        self._head, self._raw, self._codes = head, raw, None

    def get(self, name: str, default: Any = None) -> Any:
        if name in ("code", "component"):
            if self._codes is None:
                self._codes = _decode(_code_parts, self._raw, "a resource's code")
            return getattr(self._codes, name, default)
        return getattr(self._head, name, default)


Plain = str | int | float | bool | None


class Entry(msgspec.Struct, gc=False, forbid_unknown_fields=True):
    """An entry as search results carry it: its elements other than the resource are plain (a ``search`` or
    ``response`` object holds no list or object), so they nest 6 levels deep at most from the body's top. An entry
    with anything else (another key, a nested ``search``, a ``response`` with an ``outcome``, a ``fullUrl`` that is
    not a string) fails this decoding, and its Bundle is decoded whole: then the nesting limit holds in all of it."""

    fullUrl: str | None = None
    search: dict[str, Plain] | None = None
    response: dict[str, Plain] | None = None  # a batch-response's (read by service.fhir.answers.incompleteness)
    resource: msgspec.Raw = EMPTY


class _Bundle(msgspec.Struct, gc=False):
    entry: list[Entry] | None = None


_heads = msgspec.json.Decoder(Head)
_code_parts = msgspec.json.Decoder(_Codes)
_bundle = msgspec.json.Decoder(_Bundle)
_top = msgspec.json.Decoder(dict[str, msgspec.Raw])


def _is_object(raw: msgspec.Raw) -> bool:
    return memoryview(raw)[:1] == b"{"  # the decoder's Raw starts at the value's first byte


def _decode(decoder: msgspec.json.Decoder, raw: msgspec.Raw, where: str) -> Any:
    try:
        return decoder.decode(raw)
    except msgspec.DecodeError as exc:  # a number out of range (the text was checked to be JSON when it arrived)
        raise UndecodableResource(f"{where}: {str(exc).split(' - at ')[0][:80]}") from None


class LazyBundle(dict):
    """A prefetch Bundle: its own fields (``resourceType``, ``type``, ``link``, ...) as a dict, its entries in
    :attr:`entries`. There is no ``entry`` key: read the entries with :func:`service.fhir.readers.entries`."""

    def __init__(self, fields: dict[str, Any], entries: list[Entry], name: str) -> None:
        super().__init__(fields)
        self.entries = entries
        self.name = name  # the prefetch key, to name a resource that cannot be decoded
        self._heads: list[Head | None] | None = None
        # what service.fhir.answers works out of the entries, once per Bundle (its entries never change)
        self.outcomes: list[Any] | None = None
        self.parts: list[tuple[Any, Any, Any]] | None = None

    def heads(self) -> list[Head | None]:
        """The head of every entry (None for an entry that holds no JSON object), decoded once."""
        if self._heads is None:
            self._heads = [
                _decode(_heads, e.resource, f"prefetch.{self.name} entry {i}") if _is_object(e.resource) else None
                for i, e in enumerate(self.entries)
            ]
        return self._heads

    def resources(
        self, resource_type: str | None = None, keep: Callable[[Any], bool] | None = None
    ) -> Iterator[tuple[Any, dict[str, Any]]]:
        """(fullUrl, resource) of the entries of that type whose head ``keep`` accepts (search outcomes skipped)."""
        for index, (entry, head) in enumerate(zip(self.entries, self.heads(), strict=True)):
            # read off the structs directly (any JSON type compares unequal to a string): this loop sees every entry
            if head is None or (resource_type is not None and head.resourceType != resource_type):
                continue
            if string(entry.search, "mode") == "outcome":
                continue
            if keep is not None and not keep(Peek(head, entry.resource)):
                continue
            yield entry.fullUrl, _decode(_any, entry.resource, f"prefetch.{self.name} entry {index}")


def decode_hook_request(raw: bytes) -> Any:
    """The hook request as dicts, with its prefetch Bundles as :class:`LazyBundle`. Raises ``UnicodeDecodeError``
    for bytes that are not UTF-8, ``msgspec.DecodeError`` for text that is not JSON (or a number out of range
    outside the prefetch Bundles' resources) and ``RecursionError`` for JSON nested too deep to decode."""
    if not raw.isascii():
        raw.decode("utf-8")  # the resources are decoded later, and only some: check every byte now
    raw = without_lone_surrogates(raw)  # then a "\\ud800" in a resource never stops its decoding
    try:
        parts = _top.decode(raw)
    except msgspec.ValidationError:  # not a JSON object: decoded in full, the schema says what is wrong
        return _any.decode(raw)
    body = {key: _any.decode(value) for key, value in parts.items() if key != "prefetch"}
    if "prefetch" in parts:
        body["prefetch"] = _prefetch(parts["prefetch"])
    return body


def _prefetch(raw: msgspec.Raw) -> Any:
    try:
        values = _top.decode(raw)
    except msgspec.ValidationError:
        return _any.decode(raw)
    return {key: _prefetch_value(key, value) for key, value in values.items()}


def _prefetch_value(key: str, raw: msgspec.Raw) -> Any:
    try:
        fields = {k: _any.decode(v) for k, v in _top.decode(raw).items() if k != "entry"}
    except msgspec.ValidationError:  # null, or not an object
        return _any.decode(raw)
    if string(fields, "resourceType") != "Bundle" or _has_next_page(fields):
        return _any.decode(raw)
    try:
        entries = _bundle.decode(raw).entry
    except msgspec.ValidationError:  # entry is not a list of plain entries: decoded whole, the readers' checks name it
        return _any.decode(raw)
    return LazyBundle(fields, entries or [], key)


def _has_next_page(bundle: dict[str, Any]) -> bool:
    """A paginated Bundle is completed from the FHIR server, which merges pages as dicts: it is decoded in full."""
    return any(string(link, "relation") == "next" for link in array(bundle, "link"))
