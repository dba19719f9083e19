"""GET requests to peers the service does not control (FHIR servers, JWKS endpoints), bounded as a whole.

requests' timeouts apply to each socket read, so a peer that sends one byte every few seconds is never timed out.
Here a deadline covers the whole exchange. Connecting is done here too: the name is resolved in a small pool of
threads (getaddrinfo cannot be interrupted) and each address gets what is left of the time, where urllib3 would give
every address the whole connect timeout. Once connected, a watchdog shuts the socket down at the deadline, which
ends whatever is waiting for the peer: the TLS handshake, the headers or the body. The body is streamed and reading
stops past a byte limit. Redirects are never followed here: the caller sees them and decides.
"""

from __future__ import annotations

import ipaddress
import socket
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import requests
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import ConnectTimeoutError, NameResolutionError, NewConnectionError
from urllib3.util.connection import allowed_gai_family

from service.watchdog import Watchdog
from service.watchdog import current as current_watchdog

CHUNK = 64 * 1024
_RESOLVER = ThreadPoolExecutor(max_workers=4, thread_name_prefix="resolve")  # a hung resolver holds these, no more


class OutboundError(Exception):
    """The exchange failed; ``kind`` is a metrics label and the message is safe to show (no response data)."""

    kind = "network"


class TimedOut(OutboundError):
    kind = "timeout"


class TooLarge(OutboundError):
    kind = "too_large"


DEFAULT_PORTS = {"http": 80, "https": 443}


def origin(url: str) -> tuple[Any, ...]:
    """Scheme, user information, host and port (the scheme's default when none is written): two URLs with the same
    origin reach the same server with the same credentials. ValueError when ``url`` cannot be split, or its port is
    not a number from 0 to 65535."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    port = parts.port if parts.port is not None else DEFAULT_PORTS.get(scheme)
    return scheme, parts.username, parts.password, parts.hostname, port


# Cloud metadata services: never a FHIR server, a JWKS or an authorization server, whatever a peer says.
METADATA_HOSTS = frozenset({"metadata", "metadata.google.internal", "metadata.goog", "instance-data"})
METADATA_ADDRESSES = (ipaddress.ip_network("fd00:ec2::254/128"), ipaddress.ip_network("100.100.100.200/32"))


def forbidden_address(address: str) -> bool:
    """A link-local address (169.254.0.0/16, fe80::/10: where cloud metadata services answer), a known metadata
    address, or an unspecified or multicast one: never connected to."""
    try:
        ip = ipaddress.ip_address(address.strip("[]").split("%")[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return (
        ip.is_link_local
        or ip.is_unspecified
        or ip.is_multicast
        or any(ip in network for network in METADATA_ADDRESSES if network.version == ip.version)
    )


def is_loopback(host: str) -> bool:
    host = host.strip("[]").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def url_problem(url: str, *, https_only: bool) -> str | None:
    """Why ``url`` may not be contacted, or None: not http(s), no host, user information in it, a link-local or
    metadata host; plain http unless ``https_only`` is off, and then only to a loopback host (a test set-up)."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 (raises ValueError for a port that is not a number from 0 to 65535)
    except ValueError:
        return "it is not a valid URL"
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not parts.hostname:
        return "it is not an http(s) URL with a host"
    if parts.username is not None or parts.password is not None or "@" in parts.netloc:
        return "it holds user information"
    if parts.hostname.lower().rstrip(".") in METADATA_HOSTS or forbidden_address(parts.hostname):
        return "its host is a link-local or metadata address"
    if scheme == "http" and (https_only or not is_loopback(parts.hostname)):
        return "it is not https (plain http only to a loopback host, for tests)"
    return None


@dataclass(frozen=True)
class Answer:
    status: int
    headers: Any  # a case-insensitive mapping
    body: bytes  # read for a 200 only


class _Session(requests.Session):
    def get_redirect_target(self, resp: requests.Response) -> None:
        """Redirects are the caller's to judge: requests would otherwise parse the Location of every redirect (and
        raise ValueError on one it cannot split) even when it does not follow it."""
        return None


def session() -> requests.Session:
    """A requests Session whose connections report their socket to the watchdog of the request in progress."""
    s = _Session()
    adapter = _WatchedAdapter()
    s.mount("http://", adapter)
    s.mount("https://", adapter)
    return s


def get(
    http: requests.Session,
    url: str,
    *,
    deadline: float,
    connect_timeout: float,
    read_timeout: float,
    max_bytes: int,
    count: Callable[[int], None] | None = None,
    headers: dict[str, str] | None = None,
) -> Answer:
    """GET ``url`` with everything done by ``deadline`` (``time.monotonic()``); a 200's body is read up to
    ``max_bytes`` (``count`` is told of every chunk, and may raise to stop reading)."""
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise TimedOut("no time was left to send the request")
    timeout = (min(connect_timeout, remaining), min(read_timeout, remaining))
    with Watchdog(remaining) as watchdog:
        try:
            with http.get(url, headers=headers, timeout=timeout, allow_redirects=False, stream=True) as response:
                body = _read(response, max_bytes, count) if response.status_code == 200 else b""
        except requests.Timeout:
            raise TimedOut("the peer did not answer in time") from None
        except requests.RequestException:
            if watchdog.fired:
                raise TimedOut("the peer did not finish its answer in time") from None
            raise OutboundError("the peer could not be reached") from None
        except ValueError:  # what requests lets through from a URL or header http.client refuses
            raise OutboundError("the request could not be sent: its URL or a header is not valid") from None
        if watchdog.fired:  # the shut-down socket may have looked like the end of a body sent without a length
            raise TimedOut("the peer did not finish its answer in time")
    return Answer(response.status_code, response.headers, body)


def read_body(response: requests.Response, max_bytes: int) -> bytes:
    """A streamed response's body, read up to ``max_bytes`` (:class:`TooLarge` past it, the rest never read)."""
    return _read(response, max_bytes, None)


def _read(response: requests.Response, max_bytes: int, count: Callable[[int], None] | None) -> bytes:
    declared = response.headers.get("Content-Length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise TooLarge(f"the answer is {declared} bytes, more than the {max_bytes} allowed")
    body = bytearray()
    for chunk in response.iter_content(CHUNK):  # decompressed, at most CHUNK bytes at a time
        body += chunk
        if len(body) > max_bytes:
            raise TooLarge(f"the answer is more than the {max_bytes} bytes allowed")
        if count is not None:
            count(len(chunk))
    return bytes(body)


# ------------------------------------------------------------------------------------------------ connecting


def _connect(address: tuple[str, int], timeout: Any, deadline: float, options: Any) -> socket.socket:
    """urllib3's create_connection, with everything done by ``deadline``: the name resolution, and each address
    tried with what is left of the time (and at most ``timeout``, the connect timeout)."""
    host, port = address
    lookup = _RESOLVER.submit(socket.getaddrinfo, host.strip("[]"), port, allowed_gai_family(), socket.SOCK_STREAM)
    try:
        addresses = lookup.result(timeout=max(deadline - time.monotonic(), 0))
    except TimeoutError:
        lookup.cancel()
        raise TimeoutError("the name was not resolved in time") from None
    error: OSError = OSError("getaddrinfo returns an empty list")
    for family, kind, proto, _, where in addresses:
        if forbidden_address(str(where[0])):
            error = OSError("a link-local or metadata address is never connected to")
            continue
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("no time was left to connect")
        sock = socket.socket(family, kind, proto)
        try:
            for option in options or ():
                sock.setsockopt(*option)
            sock.settimeout(min(timeout, remaining) if isinstance(timeout, int | float) else remaining)
            sock.connect(where)
            return sock
        except OSError as exc:
            error = exc
            sock.close()
    raise error


class _Watched:
    """Mixed into urllib3's connections: connect within the current watchdog's deadline, and hand it the socket."""

    sock: socket.socket | None
    host: str
    port: int
    timeout: Any
    source_address: Any
    socket_options: Any
    _dns_host: str

    def _new_conn(self) -> socket.socket:
        watchdog = current_watchdog()
        if watchdog is None or self.source_address:
            return super()._new_conn()  # type: ignore[misc]
        try:
            sock = _connect((self._dns_host, self.port), self.timeout, watchdog.deadline, self.socket_options)
        except socket.gaierror as exc:
            raise NameResolutionError(self.host, self, exc) from exc  # type: ignore[arg-type]
        except TimeoutError as exc:
            raise ConnectTimeoutError(self, f"Connection to {self.host} timed out") from exc
        except OSError as exc:
            raise NewConnectionError(self, f"Failed to establish a new connection: {exc}") from exc  # type: ignore[arg-type]
        sys.audit("http.client.connect", self, self.host, self.port)
        watchdog.watch_descriptor(sock.fileno())  # TLS wraps (and detaches) ``sock``; the descriptor stays
        return sock

    def getresponse(self, *args: Any, **kwargs: Any) -> Any:
        watchdog = current_watchdog()
        if watchdog is not None and self.sock is not None:  # a kept-alive connection, reused
            watchdog.watch(self.sock)
        return super().getresponse(*args, **kwargs)  # type: ignore[misc]


class _WatchedHTTPConnection(_Watched, HTTPConnection):
    pass


class _WatchedHTTPSConnection(_Watched, HTTPSConnection):
    pass


class _WatchedHTTPPool(HTTPConnectionPool):
    ConnectionCls = _WatchedHTTPConnection


class _WatchedHTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _WatchedHTTPSConnection


_POOLS = {"http": _WatchedHTTPPool, "https": _WatchedHTTPSPool}


class _WatchedAdapter(HTTPAdapter):
    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = _POOLS

    def proxy_manager_for(self, proxy: str, **kwargs: Any) -> Any:
        manager = super().proxy_manager_for(proxy, **kwargs)
        manager.pool_classes_by_scheme = _POOLS
        return manager
