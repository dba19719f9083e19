"""A small FHIR R4 REST client: bearer token, timeouts, and Bundle paging through next links.

Next links are followed exactly as the server wrote them (HAPI's are opaque ``_getpages`` URLs), but only
while they stay on the server the client was given: the access token is never sent anywhere else. Redirects are
followed only within that origin (scheme, host and port, ``http://h`` being ``http://h:80``) and count against the
page budget like pages do. Every URL the token is sent to (a read, a next link, a redirect) must also lie under the
base URL's path (``/fhir/...`` for ``https://h/fhir``), without dot segments as a servlet container reads them
(``..;``, percent-encoded, look-alike: :func:`steps_out`). A Bundle whose ``link`` or ``entry`` is
not a list, or a link that is not a valid URL, ends the fetch with a :class:`FhirError` (412), as any other answer
that cannot be used.
The time budget of a hook call covers each whole exchange, not each socket read (see :mod:`service.outbound`).
"""

from __future__ import annotations

import logging
import threading
import time
import unicodedata
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import unquote, urljoin, urlsplit

import orjson
import requests

from service import metrics, outbound
from service.fhir.elements import array, string, untyped
from service.jsontext import loads
from service.logs import log_event
from service.settings import Settings

log = logging.getLogger(__name__)


class FhirError(Exception):
    """Data could not be had from the FHIR server. The message names the cause, never patient data."""


class PagingStopped(FhirError):
    """A search whose paging was cut short (``CDS_FHIR_MAX_PAGES``, ``CDS_FHIR_MAX_ENTRIES``, a next link leading
    back to a page already read): ``pages`` holds what was read, which is not the whole list."""

    def __init__(self, message: str, pages: dict[str, Any]) -> None:
        super().__init__(message)
        self.pages = pages


REDIRECTS = (301, 302, 303, 307, 308)


class CallBudget:
    """What the FHIR fetching of one hook call may spend: a deadline, and bytes read (shared by all its fetches,
    which run in several threads). :meth:`share` gives a part of it to fetches that must not use it all up (the
    optional prefetch keys): a share that yields to the rest. When bytes read outside the shares (a required key's)
    would take the call over its bytes and would not without what the shares hold, the shares are revoked: their
    bytes are no longer counted here, their fetches fail from then on, and what they read must be dropped by their
    caller (:attr:`revoked`). So the optional keys never make a required key fail, and what is kept of the call's
    answers stays within its bytes."""

    def __init__(self, seconds: float, max_bytes: int, *, within: CallBudget | None = None) -> None:
        self.started = time.monotonic()
        self.seconds = seconds
        self.deadline = self.started + seconds
        self.max_bytes = max_bytes
        self.within = within  # the budget this one is a share of (what is read here is counted there too)
        self.revoked = False  # (a share) its bytes were given back to the required keys: what it read is dropped
        self._read = 0
        self._counted = 0  # (a share) of its bytes, those counted in ``within``
        self._shares: list[CallBudget] = []
        self._lock = threading.Lock()

    def share(self, fraction: float) -> CallBudget:
        """At most ``fraction`` of this budget: its time counted from this budget's start, and its bytes (counted
        here as well, so the two together never exceed this budget, until this budget needs them back)."""
        part = CallBudget(self.seconds * fraction, int(self.max_bytes * fraction), within=self)
        part.started = self.started
        part.deadline = min(self.deadline, self.started + self.seconds * fraction)
        with self._lock:
            self._shares.append(part)
        return part

    def _too_many(self, share: bool) -> FhirError:
        metrics.FHIR_FETCHES.labels("too_large").inc()
        what = "bytes, the share of the optional prefetch keys of" if share else "bytes"
        return FhirError(
            f"the FHIR answers for this hook call add up to more than {self.max_bytes} {what} (CDS_FHIR_MAX_CALL_BYTES)"
        )

    def count(self, size: int) -> None:
        if self.within is None:
            self._count(size, None)
            return
        with self._lock:
            if self.revoked:
                raise FhirError(REVOKED)
            self._read += size
            if self._read > self.max_bytes:
                raise self._too_many(share=True)
        self.within._count(size, self)

    def _count(self, size: int, share: CallBudget | None) -> None:
        """``size`` bytes read by a fetch of this (whole) budget, or of one of its shares."""
        with self._lock:
            if share is not None:
                with share._lock:
                    if share.revoked:
                        raise FhirError(REVOKED)
                    share._counted += size
            self._read += size
            if self._read <= self.max_bytes:
                return
            if share is None:  # a required key's: the shares yield, when that is enough
                held = [s for s in self._shares if not s.revoked and s._counted]
                if held and self._read - sum(s._counted for s in held) <= self.max_bytes:
                    for s in held:
                        with s._lock:
                            s.revoked = True
                        self._read -= s._counted
                    log_event(log, logging.WARNING, "fhir_optional_bytes_revoked", shares=len(held))
                    return
        raise self._too_many(share=False)


REVOKED = (
    "the FHIR answers for this hook call add up to more than CDS_FHIR_MAX_CALL_BYTES, and the required prefetch keys "
    "needed the bytes the optional keys had read"
)


@dataclass
class Allowance:
    """Requests one prefetch key may still make (pages, and the redirects on the way to them)."""

    left: int

    def take(self) -> None:
        if self.left <= 0:
            raise FhirError("the FHIR server needed more requests than CDS_FHIR_MAX_PAGES allows (pages and redirects)")
        self.left -= 1


def bundle_problem(bundle: dict[str, Any]) -> str | None:
    """Why the paging fields of a Bundle cannot be read (``link`` and ``entry`` must be lists), or None."""
    for name in ("link", "entry"):
        if untyped(bundle, name) is not None and not isinstance(untyped(bundle, name), list):
            return f"Bundle.{name} is not a list"
    return None


def next_link(bundle: dict[str, Any]) -> str | None:
    for link in array(bundle, "link"):
        if string(link, "relation") == "next" and (url := string(link, "url")) is not None:
            return url
    return None


def unfollowable_next(bundle: dict[str, Any]) -> bool:
    """A ``next`` link whose URL is missing or not a string: the Bundle has further pages that cannot be read."""
    return any(
        string(link, "relation") == "next" and not (string(link, "url") or "").strip() for link in array(bundle, "link")
    )


def _resolve(base: str, reference: str, what: str) -> str:
    """``reference`` made absolute against ``base``, checked to be a URL that can be requested."""
    try:
        if any(c < " " or c == "\x7f" for c in reference):  # urlsplit drops tabs and line breaks, requests would not
            raise ValueError(reference)
        url = urljoin(base, reference)
        outbound.origin(url)  # splits it, port included
    except ValueError:
        metrics.FHIR_FETCHES.labels("bad_url").inc()
        raise FhirError(f"{what} is not a valid URL; it was not followed") from None
    return url


def outside_base(base: str, url: str, written: str = "") -> str | None:
    """Why ``url`` (``written`` made absolute) is not under the FHIR base URL ``base`` (which ends with ``/``), or
    None: another origin, a path outside the base's path, or a path that could step out of it once the server reads
    it (:func:`steps_out`), as written too (making it absolute removes ``.`` and ``..``: ``Patient/..`` is the base
    itself). The bearer token goes under the base only."""
    if outbound.origin(url) != outbound.origin(base):
        return "another host"
    path, prefix = urlsplit(url).path, urlsplit(base).path or "/"
    if not (path + "/").startswith(prefix) or steps_out(path) or steps_out(urlsplit(written).path):
        return "a path outside the FHIR base URL"
    return None


DECODINGS = 3  # percent-encoding undone at most this often (a proxy may decode once more than the server does)


def _decoded(text: str) -> str | None:
    """``text`` with its percent-encoding undone until nothing is left to undo, or None when that takes more than
    :data:`DECODINGS` decodings, when the bytes decoded are not UTF-8 (``%C0%AE``, an overlong dot that old servers
    read as one), or when a ``%`` is left that is no escape (``%u002e``, which IIS reads as a dot): never guessed."""
    for _ in range(DECODINGS + 1):
        try:
            decoded = unquote(text, errors="strict")
        except UnicodeDecodeError:
            return None
        if decoded == text:
            return None if "%" in text else text
        text = decoded
    return None


def steps_out(path: str) -> bool:
    """Whether a server could read ``path`` as stepping out of the folders it names. Each segment is read as servlet
    containers read it (Tomcat and Jetty, HAPI FHIR's): its path parameters cut off (``..;x=y`` is ``..``, which
    urllib3 sends as written), its percent-encoding undone, as often as a chain of proxies might (a segment still
    encoded after :data:`DECODINGS` decodings, or not UTF-8, or holding a ``%`` that is no escape, is refused), and
    then compared with ``.`` and ``..``, whichever is done first. Also refused: an encoded slash, a backslash (a
    separator on some servers), a control character (a NUL ends the path on some), and a segment of dots and blanks
    only, dots written as look-alike characters (full-width dots, two-dot leaders: read as dots after Unicode NFKC)
    included."""
    for raw in path.split("/"):
        decoded = _decoded(raw)
        if decoded is None or any(c in "/\\" or c < " " or c == "\x7f" for c in decoded):
            return True
        for name in (_decoded(raw.split(";", 1)[0]) or "", decoded.split(";", 1)[0]):
            name = unicodedata.normalize("NFKC", name)
            if "." in name and not name.strip(" \t."):
                return True
    return False


@dataclass
class FhirClient:
    base_url: str
    access_token: str | None = None
    connect_timeout: float = 3.05
    read_timeout: float = 10.0
    max_pages: int = 20
    max_entries: int = 20000
    max_bytes: int = 10_000_000  # per answer
    budget: CallBudget | None = None  # the hook call's: its deadline and byte allowance

    @classmethod
    def configured(
        cls, base_url: str, access_token: str | None, config: Settings, budget: CallBudget | None
    ) -> FhirClient:
        """A client with the settings' timeouts and caps (hook calls and the SMART app alike)."""
        return cls(
            base_url,
            access_token,
            connect_timeout=config.FHIR_CONNECT_TIMEOUT,
            read_timeout=config.FHIR_READ_TIMEOUT,
            max_pages=config.FHIR_MAX_PAGES,
            max_entries=config.FHIR_MAX_ENTRIES,
            max_bytes=config.FHIR_MAX_RESPONSE_BYTES,
            budget=budget,
        )

    session: requests.Session = field(default_factory=outbound.session)

    def __post_init__(self) -> None:
        self.base_url = self.base_url.rstrip("/") + "/"
        self.session.headers["Accept"] = "application/fhir+json, application/json;q=0.9"
        if self.access_token:
            self.session.headers["Authorization"] = f"Bearer {self.access_token}"

    def close(self) -> None:
        self.session.close()

    def sharing(self, fraction: float) -> FhirClient:
        """This client (its session and token), its fetches limited to ``fraction`` of the hook call's budget (time
        and bytes, see :meth:`CallBudget.share`); itself when it has no budget."""
        return self if self.budget is None else replace(self, budget=self.budget.share(fraction))

    def __enter__(self) -> FhirClient:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def get(
        self, relative_or_absolute: str, allowance: Allowance | None = None, what: str = "the address to read"
    ) -> dict[str, Any]:
        """GET one resource (a read, or one page of a search) and check that it is FHIR JSON."""
        url = _resolve(self.base_url, relative_or_absolute, what)
        problem = outside_base(self.base_url, url, relative_or_absolute)
        if problem is not None:
            metrics.FHIR_FETCHES.labels("outside_base").inc()
            raise FhirError(f"{what} pointed to {problem}; the request was not sent")
        allowance = allowance or Allowance(self.max_pages)
        while True:
            allowance.take()
            answer = self._send(url)
            if answer.status not in REDIRECTS or not answer.headers.get("Location"):
                break
            url = _resolve(url, answer.headers["Location"], "the place the FHIR server redirected to")
            problem = outside_base(self.base_url, url, answer.headers["Location"])
            if problem is not None:
                metrics.FHIR_FETCHES.labels("redirect_refused").inc()
                where = "another origin" if problem == "another host" else problem
                raise FhirError(f"the FHIR server redirected to {where}; the redirect was not followed")
        return self._parse(answer)

    def _send(self, url: str) -> outbound.Answer:
        """One GET, done by the hook call's deadline (or, without one, within the connect and read timeouts)."""
        budget = self.budget
        deadline = budget.deadline if budget else time.monotonic() + self.connect_timeout + self.read_timeout
        if deadline <= time.monotonic():
            metrics.FHIR_FETCHES.labels("budget").inc()
            raise FhirError("the time allowed for FHIR fetching ran out")
        started = time.perf_counter()
        try:
            answer = outbound.get(
                self.session,
                url,
                deadline=deadline,
                connect_timeout=self.connect_timeout,
                read_timeout=self.read_timeout,
                max_bytes=self.max_bytes,
                count=budget.count if budget else None,
            )
        except outbound.TimedOut:
            metrics.FHIR_FETCHES.labels("timeout").inc()
            raise FhirError("the FHIR server did not answer in time") from None
        except outbound.TooLarge as exc:
            metrics.FHIR_FETCHES.labels("too_large").inc()
            raise FhirError(f"the FHIR server's answer is too large: {exc} (CDS_FHIR_MAX_RESPONSE_BYTES)") from None
        except outbound.OutboundError as exc:
            metrics.FHIR_FETCHES.labels(exc.kind).inc()
            raise FhirError("the FHIR server could not be reached") from None
        finally:
            metrics.FHIR_SECONDS.observe(time.perf_counter() - started)
        metrics.FHIR_FETCHES.labels(str(answer.status)).inc()
        return answer

    @staticmethod
    def _parse(answer: outbound.Answer) -> dict[str, Any]:
        if answer.status in (401, 403):
            raise FhirError(f"the FHIR server refused access ({answer.status})")
        if answer.status != 200:
            raise FhirError(f"the FHIR server answered {answer.status}")
        try:
            body = loads(answer.body)
        except orjson.JSONDecodeError:
            raise FhirError("the FHIR server's answer is not JSON") from None
        if string(body, "resourceType") is None:
            raise FhirError("the FHIR server's answer is not a FHIR resource")
        if string(body, "resourceType") == "OperationOutcome":
            raise FhirError("the FHIR server answered with an OperationOutcome")
        problem = bundle_problem(body) if string(body, "resourceType") == "Bundle" else None
        if problem:
            raise FhirError(f"the FHIR server's answer is not a valid Bundle: {problem}")
        return body

    def fetch(self, relative: str) -> dict[str, Any]:
        """A read or a search; a searchset Bundle is followed through its next links and merged into one."""
        allowance = Allowance(self.max_pages)
        first = self.get(relative, allowance)
        if string(first, "resourceType") != "Bundle":
            return first
        return self.follow_pages(first, allowance)

    def search(self, relative: str) -> tuple[dict[str, Any], str | None]:
        """Like :meth:`fetch`, but once the first answer is read a later page that fails (or the page or entry cap)
        does not lose the pages read: they are returned with why the rest could not be read (None: all were)."""
        allowance = Allowance(self.max_pages)
        first = self.get(relative, allowance)
        if string(first, "resourceType") != "Bundle":
            return first, None
        return self.read_pages(first, allowance)

    def follow_pages(self, bundle: dict[str, Any], allowance: Allowance | None = None) -> dict[str, Any]:
        """Merge the pages after ``bundle`` into one Bundle. Paging cut short (``max_pages``, ``max_entries``, a
        looping next link) raises :class:`PagingStopped` with the pages read: they are never the whole list
        (:meth:`read_pages` returns them with the reason instead)."""
        merged, error, stopped = self._pages(bundle, allowance)
        if error is not None:
            raise error
        if stopped is not None:
            raise PagingStopped(stopped, merged)
        return merged

    def read_pages(
        self, bundle: dict[str, Any], allowance: Allowance | None = None
    ) -> tuple[dict[str, Any], str | None]:
        """The pages after ``bundle`` merged into one Bundle as far as they could be read, and why the rest could
        not be (a page failed, or the page or entry cap or a looping next link stopped the paging), or None when
        every page was read."""
        merged, error, stopped = self._pages(bundle, allowance)
        return merged, str(error) if error is not None else stopped

    def _pages(
        self, bundle: dict[str, Any], allowance: Allowance | None
    ) -> tuple[dict[str, Any], FhirError | None, str | None]:
        allowance = allowance or Allowance(self.max_pages - 1)  # ``bundle`` itself was the first page
        entries = list(array(bundle, "entry"))
        seen: set[str] = set()
        error: FhirError | None = None
        stopped: str | None = None
        url = next_link(bundle)
        last = bundle
        while url:
            if url in seen:  # the server's paging is broken: what follows is not known to be read
                stopped = "paging stopped: a next link led back to a page already read"
            elif allowance.left <= 0:
                stopped = "paging stopped at CDS_FHIR_MAX_PAGES"
            elif len(entries) >= self.max_entries:
                stopped = "paging stopped at CDS_FHIR_MAX_ENTRIES"
            if stopped:
                log_event(log, logging.WARNING, "fhir_paging_stopped", entries=len(entries))
                break
            seen.add(url)
            try:
                page = self.get(url, allowance, what="a next link")
                if string(page, "resourceType") != "Bundle":
                    raise FhirError("a next link did not lead to a Bundle")
            except FhirError as exc:
                error = exc
                break
            entries.extend(array(page, "entry"))
            url, last = next_link(page), page
        if error is None and not stopped and unfollowable_next(last):
            stopped = "paging stopped: a next link has no URL"
        if len(entries) > self.max_entries:
            stopped = stopped or "paging stopped at CDS_FHIR_MAX_ENTRIES"
        merged = {k: v for k, v in bundle.items() if k not in ("link", "entry")}
        merged["entry"] = entries[: self.max_entries]
        return merged, error, stopped
