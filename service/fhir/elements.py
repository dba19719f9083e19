"""The one way FHIR JSON is read: typed accessors that cannot raise, whatever JSON type an element holds.

Data from outside (a client's prefetch, a FHIR server's answer, an EHR's SMART configuration) may hold any JSON type
where FHIR says a string, an object or a list: a name's ``use`` may be a list, an ``intent`` an object. Read with a
plain ``dict.get`` such a value reaches a set or dict lookup (unhashable), a string method or a comparison and
raises, and every hook call for that patient fails. So every element is read here: each accessor returns the element
only when it has the JSON type asked for, else what an absent element gives (None, an empty object or list). A
malformed element is then read as absent, never an exception; a reader that must tell "absent" from "malformed"
(a death of the wrong type is refused, not taken for none) reads the element as it came with :func:`untyped` and
checks its type itself.

A node is a JSON object (a dict), a lazily decoded one (:class:`Fields`), or a msgspec Struct of the lazy decoder;
anything else has no elements.
"""

from __future__ import annotations

from typing import Any

import msgspec


class Fields:
    """Read like a JSON object, its elements decoded only when asked for (``service.fhir.lazy.Peek``)."""

    __slots__ = ()

    def get(self, name: str, default: Any = None) -> Any:  # pragma: no cover (overridden)
        raise NotImplementedError


def untyped(node: Any, name: str) -> Any:
    """The element as it came (any JSON type), or None when it is absent or ``node`` is not an object."""
    if type(node) is dict:  # the common case first (decoded JSON): these accessors run hundreds of thousands of times
        return node.get(name)
    if isinstance(node, dict | Fields):
        return node.get(name)
    if isinstance(node, msgspec.Struct):
        return getattr(node, name, None)
    return None


def obj(node: Any, name: str) -> dict[str, Any]:
    """The element if it is a JSON object, else an empty one."""
    value = node.get(name) if type(node) is dict else untyped(node, name)
    return value if type(value) is dict or isinstance(value, dict) else {}


def array(node: Any, name: str) -> list[Any]:
    """The element if it is a JSON list (its items of any type), else an empty one."""
    value = node.get(name) if type(node) is dict else untyped(node, name)
    return value if type(value) is list or isinstance(value, list) else []


def objects(node: Any, name: str) -> list[dict[str, Any]]:
    """The JSON objects in the element's list (other items skipped); empty when it is not a list."""
    return [item for item in array(node, name) if isinstance(item, dict)]


def string(node: Any, name: str) -> str | None:
    """The element if it is a string (empty or not), else None."""
    value = node.get(name) if type(node) is dict else untyped(node, name)
    return value if type(value) is str or isinstance(value, str) else None


def nonempty(node: Any, name: str) -> str | None:
    """The element if it is a string that is not empty, else None."""
    value = untyped(node, name)
    return value if isinstance(value, str) and value else None


def number(node: Any, name: str) -> int | float | None:
    """The element if it is a JSON number (true and false are not), else None."""
    value = untyped(node, name)
    return value if isinstance(value, int | float) and not isinstance(value, bool) else None


def boolean(node: Any, name: str) -> bool | None:
    """The element if it is true or false, else None."""
    value = untyped(node, name)
    return value if isinstance(value, bool) else None


def as_object(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def as_array(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def as_string(value: Any) -> str | None:
    return value if isinstance(value, str) else None
