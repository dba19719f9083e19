"""gunicorn's threaded worker with a deadline for receiving each request (used by ``alp-cds serve``).

A client that trickles its request, one byte just before each idle timeout, holds a thread for as long as it
likes: the idle (receive) timeout never fires. Here a request must have arrived whole, headers and body,
``CDS_CLIENT_REQUEST_DEADLINE`` seconds after a thread took it up; then the reading side of its connection is shut
down, so the read waiting on it ends (gunicorn drops the connection, or the application answers 400 for a body
cut short). Answers are not affected: shutting down the reading side of a request already read changes nothing but
that the connection is not kept alive.

This bounds how long one connection holds a thread, not how many connections an attacker opens: against many
slow clients, a buffering proxy (nginx) in front is the remedy (docs/operations.md, "Serving").
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import socket
import threading
import time
from typing import Any

from gunicorn.workers.gthread import ThreadWorker

from service.settings import load_settings

CHECK_EVERY = 0.25  # seconds between looks for late requests


class RequestDeadlines:
    """The connections whose request is being read, each with its deadline; one thread shuts the late ones."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._reading: dict[object, tuple[float, socket.socket]] = {}
        self._lock = threading.Lock()
        threading.Thread(target=self._watch, name="request-deadlines", daemon=True).start()

    def start(self, sock: socket.socket) -> object:
        key = object()
        with self._lock:
            self._reading[key] = (time.monotonic() + self.seconds, sock)
        return key

    def stop(self, key: object) -> None:
        with self._lock:  # after this, the socket is never touched here again (and may be closed)
            self._reading.pop(key, None)

    def _watch(self) -> None:
        while True:
            time.sleep(CHECK_EVERY)
            now = time.monotonic()
            with self._lock:
                for key in [k for k, (deadline, _) in self._reading.items() if deadline <= now]:
                    _, sock = self._reading.pop(key)
                    with contextlib.suppress(OSError):  # the client is gone already
                        sock.shutdown(socket.SHUT_RD)


M_ARENA_MAX = -8  # glibc mallopt parameter
BIG_BODY = 1 << 20  # after a request this large, free memory goes back to the system


def _libc() -> Any:
    try:
        return ctypes.CDLL("libc.so.6", use_errno=True)
    except OSError:  # not glibc (musl, macOS): its allocator keeps its own counsel
        return None


class DeadlineThreadWorker(ThreadWorker):
    """gunicorn's gthread worker with a request deadline, and memory that a burst of big charts gives back.

    Memory: each thread that allocates gets a glibc arena of its own (up to 8 per core), and a freed 5 MB chart
    leaves pages in each, so a worker that served 16 big charts at once stayed near its peak. Two arenas, and a
    trim after each big request, bring it back down (measured in bench/: docs/benchmarks.md)."""

    def init_process(self) -> None:
        self.deadlines = RequestDeadlines(load_settings().CLIENT_REQUEST_DEADLINE)
        self.libc = _libc()
        if self.libc is not None:
            self.libc.mallopt(M_ARENA_MAX, 2)  # before the threads start
        super().init_process()

    def handle(self, conn: Any) -> Any:
        key = self.deadlines.start(conn.sock)
        try:
            return super().handle(conn)
        finally:
            self.deadlines.stop(key)

    def handle_request(self, req: Any, conn: Any) -> Any:
        try:
            return super().handle_request(req, conn)
        except BlockingIOError:  # the send timeout (gunicorn_conf.when_ready): the client does not read
            self.log.warning("Closed a connection whose client took nothing of its answer for CDS_CLIENT_TIMEOUT")
            raise BrokenPipeError(errno.EPIPE, "the client does not read its answer") from None  # no traceback
        finally:
            if self.libc is not None and _content_length(req) >= BIG_BODY:
                self.libc.malloc_trim(0)


def _content_length(req: Any) -> int:
    """The request's Content-Length (0 when absent or unreadable: a chunked body is capped, see service/app.py)."""
    for name, value in req.headers:
        if name == "CONTENT-LENGTH":
            return int(value) if value.isdigit() else 0
    return 0
