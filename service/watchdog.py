"""A deadline for blocking work on sockets (a peer's answer, a database's): at the deadline the sockets handed to
the watchdog are shut down, which ends any read or write waiting on them, whatever library is doing it.

Socket timeouts apply to each read, so a peer that sends one byte every few seconds, or a connection that stays
open while nothing comes back, would never be timed out by them. One watchdog covers one operation of one thread:
``with Watchdog(seconds): ...``; code deeper down finds it with :func:`current` and hands it its sockets.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time

_current = threading.local()


def current() -> Watchdog | None:
    """The watchdog of the operation this thread is doing, if any."""
    return getattr(_current, "watchdog", None)


class Watchdog:
    """Shuts down the sockets it watches when the time is up (a timer thread per operation)."""

    def __init__(self, seconds: float) -> None:
        self.fired = False
        self.deadline = time.monotonic() + seconds
        self._socks: list[socket.socket] = []
        self._owned: list[socket.socket] = []  # duplicates made for watching, closed at the end
        self._lock = threading.Lock()
        self._timer = threading.Timer(seconds, self._fire)
        self._timer.daemon = True

    def __enter__(self) -> Watchdog:
        self._outer = current()
        _current.watchdog = self
        self._timer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._timer.cancel()
        _current.watchdog = self._outer
        with self._lock:
            for sock in self._owned:
                sock.close()
            self._socks.clear()

    def watch(self, sock: socket.socket) -> None:
        with self._lock:
            self._socks.append(sock)
            if self.fired:
                _shutdown(sock)

    def watch_descriptor(self, fd: int) -> None:
        """Watch the socket behind a file descriptor another library owns (through a duplicate, so that the
        descriptor closing and its number being reused meanwhile can never make us shut down another socket)."""
        duplicate = socket.socket(fileno=os.dup(fd))
        with self._lock:
            self._owned.append(duplicate)
        self.watch(duplicate)

    def _fire(self) -> None:
        with self._lock:  # the duplicates cannot be closed meanwhile
            self.fired = True
            for sock in self._socks:
                _shutdown(sock)


def _shutdown(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):  # already closed
        sock.shutdown(socket.SHUT_RDWR)
