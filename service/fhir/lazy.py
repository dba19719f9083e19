"""Decoding a hook request: the small parts at once, the resources of prefetch Bundles only when they are read.

A chart of 10000 Observations is a 5 MB request, and most of its Observations are never used (the rules read other
labs only when they are recent or drawn with a low ALP). Decoding all of it into dicts, and freeing them, cost more
than everything else the service does. So each prefetch Bundle is decoded into a :class:`LazyBundle`: the Bundle's
own fields as a dict, and per entry the resource's JSON text (checked to be well-formed by the decoder) with a small
:class:`Head` (type, id, code, date) decoded when first asked for. A reader tests the head cheaply and decodes the
whole resource into plain dicts only when it will read it; everything after that works on dicts as before.

What stays exactly as it was: the rest of the request (decoded in full), and any prefetch value that is not a Bundle
of objects, or that has a next page to fetch, which is decoded in full so that every check sees it as before.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import msgspec

NULL = msgspec.Raw(b"null")
_any = msgspec.json.Decoder()
_lenient = msgspec.json.Decoder(float_hook=float)


class Head(msgspec.Struct):
    """The fields a reader tests before it decides to decode a resource (any JSON type: checked by the reader)."""

    resourceType: Any = None
    id: Any = None
    code: Any = None
    component: Any = None
    effectiveDateTime: Any = None

    def get(self, name: str, default: Any = None) -> Any:
        """As ``dict.get``, so that a cheap test reads a head and a decoded resource alike."""
        return getattr(self, name, default)


class Entry(msgspec.Struct):
    fullUrl: Any = None
    search: Any = None
    resource: msgspec.Raw = NULL


class _Bundle(msgspec.Struct):
    entry: list[Entry] | None = None


_heads = msgspec.json.Decoder(Head)
_bundle = msgspec.json.Decoder(_Bundle)
_top = msgspec.json.Decoder(dict[str, msgspec.Raw])


class LazyEntry:
    __slots__ = ("_head", "_raw", "full_url", "search_mode")

    def __init__(self, entry: Entry) -> None:
        self.full_url = entry.fullUrl
        self.search_mode = entry.search.get("mode") if isinstance(entry.search, dict) else None
        self._raw = entry.resource
        self._head: Head | bool | None = False  # False: not decoded yet

    @property
    def head(self) -> Head | None:
        """The head of the resource; None when the entry holds no JSON object."""
        if self._head is False:
            try:
                self._head = _heads.decode(self._raw)
            except (msgspec.ValidationError, msgspec.DecodeError, RecursionError):
                self._head = None
        return self._head  # type: ignore[return-value]

    def resource(self) -> dict[str, Any] | None:
        """The whole resource as plain dicts (decoded each time it is asked for: readers ask once)."""
        DECODED.count += 1
        try:
            try:
                value = _any.decode(self._raw)
            except msgspec.ValidationError:  # a number no double can hold: read as infinite, which readers refuse
                value = _lenient.decode(self._raw)
        except (msgspec.DecodeError, RecursionError):  # nested deeper than this Python stack can decode
            return None
        return value if isinstance(value, dict) else None


class LazyBundle(dict):
    """A prefetch Bundle: its own fields (``resourceType``, ``type``, ``link``, ...) as a dict, its entries in
    :attr:`entries`. There is no ``entry`` key: read the entries with :func:`service.fhir.readers.entries`."""

    def __init__(self, fields: dict[str, Any], entries: list[LazyEntry]) -> None:
        super().__init__(fields)
        self.entries = entries

    def resources(
        self, resource_type: str | None = None, keep: Callable[[Any], bool] | None = None
    ) -> Iterator[tuple[Any, dict[str, Any]]]:
        """(fullUrl, resource) of the entries of that type whose head ``keep`` accepts (search outcomes skipped)."""
        for entry in self.entries:
            if entry.search_mode == "outcome":
                continue
            head = entry.head
            if head is None or (resource_type is not None and head.resourceType != resource_type):
                continue
            if keep is not None and not keep(head):
                continue
            resource = entry.resource()
            if resource is not None:
                yield entry.full_url, resource


class _Counter:
    """How many resources were decoded in full (a regression guard counts them; never reset by the service)."""

    count = 0


DECODED = _Counter()


def decode_hook_request(raw: bytes) -> Any:
    """The hook request as dicts, with its prefetch Bundles as :class:`LazyBundle`. Raises
    ``msgspec.DecodeError`` for text that is not JSON and ``RecursionError`` for JSON nested too deep to decode."""
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
    return {key: _prefetch_value(value) for key, value in values.items()}


def _prefetch_value(raw: msgspec.Raw) -> Any:
    try:
        fields = {k: _any.decode(v) for k, v in _top.decode(raw).items() if k != "entry"}
    except msgspec.ValidationError:  # null, or not an object
        return _any.decode(raw)
    if fields.get("resourceType") != "Bundle" or _has_next_page(fields.get("link")):
        return _any.decode(raw)
    try:
        entries = _bundle.decode(raw).entry
    except msgspec.ValidationError:  # entry is not a list of objects: the readers' checks name it
        return _any.decode(raw)
    return LazyBundle(fields, [LazyEntry(e) for e in entries or ()])


def _has_next_page(links: Any) -> bool:
    """A paginated Bundle is completed from the FHIR server, which merges pages as dicts: it is decoded in full."""
    return isinstance(links, list) and any(isinstance(link, dict) and link.get("relation") == "next" for link in links)
