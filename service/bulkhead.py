"""Bulkheads: how many hook calls of one worker process may do a costly kind of work at once.

- **Fetching from a FHIR server.** A server that never answers holds a thread for up to ``FHIR_TIME_BUDGET`` seconds
  per call; enough such calls took every thread of a pod, and ``/healthz`` with them (the liveness probe would then
  restart the pod and end every hospital's calls). At most ``FHIR_CALLS_PER_WORKER`` calls of a worker fetch at
  once (by default the worker's threads minus 4 under ``alp-cds serve``); a call that must fetch beyond that gets a
  503 with ``Retry-After`` at once, and the threads left answer ``/healthz``, calls whose prefetch is complete, and
  feedback.
- **Large bodies.** A body of several MB is parsed into many times its size, and the memory is not given back to the
  system after a burst. At most ``LARGE_CALLS_PER_WORKER`` calls of a worker with a body over ``LARGE_BODY_BYTES``
  (or of unknown length: chunked) are parsed and answered at once; another waits up to ``LARGE_CALL_WAIT`` seconds
  for a slot (its body not yet read; at most the worker's threads minus 4 minus that many wait), else gets a 503
  with ``Retry-After`` (its body read and dropped first, so that the client sees the answer). This is what keeps a
  pod under its memory limit (deploy/k8s/base/deployment.yaml).

Slots are taken by a request and all given back at its end (the hook endpoint's teardown), whatever happened.
"""

from __future__ import annotations

import os
import threading

from service.errors import Overloaded
from service.settings import Settings

THREADS_ENV = "ALP_CDS_WORKER_THREADS"  # set by service/gunicorn_conf.py in each worker: its thread count
FREE_THREADS = 4  # threads of a worker kept from FHIR fetching by default


class Bulkhead:
    """At most ``limit`` holders at once in this process (None: no limit); a taker waits up to ``wait`` seconds, if
    fewer than ``max_waiting`` others wait already (None: any number), else it is refused at once: waiting holds a
    thread too."""

    def __init__(
        self, name: str, limit: int | None, wait: float = 0.0, message: str = "", max_waiting: int | None = None
    ) -> None:
        self.name = name
        self.limit = limit
        self.wait = wait
        self.message = message
        self.max_waiting = max_waiting
        self._slots = threading.BoundedSemaphore(limit) if limit else None
        self._waiting = 0
        self._count = threading.Lock()

    def acquire(self) -> bool:
        if self._slots is None or self._slots.acquire(blocking=False):
            return True
        if self.wait <= 0:
            return False
        with self._count:
            if self.max_waiting is not None and self._waiting >= self.max_waiting:
                return False
            self._waiting += 1
        try:
            return self._slots.acquire(timeout=self.wait)
        finally:
            with self._count:
                self._waiting -= 1

    def release(self) -> None:
        if self._slots is not None:
            self._slots.release()


class Held:
    """The slots one request holds (taken at most once each), released by :meth:`release_all` at its end."""

    def __init__(self) -> None:
        self._held: list[Bulkhead] = []
        self._lock = threading.Lock()

    def take(self, bulkhead: Bulkhead) -> None:
        from service import metrics

        with self._lock:
            if bulkhead in self._held:
                return
            if not bulkhead.acquire():
                metrics.OVERLOADED.labels(bulkhead.name).inc()
                raise Overloaded(bulkhead.message)
            self._held.append(bulkhead)

    def release_all(self) -> None:
        with self._lock:
            while self._held:
                self._held.pop().release()


def worker_threads(environ=os.environ) -> int | None:
    """The threads of this worker under ``alp-cds serve`` (gunicorn_conf.py says); None elsewhere."""
    threads = environ.get(THREADS_ENV, "")
    return int(threads) if threads.isdigit() else None


def fhir_calls_limit(setting: int, threads: int | None) -> int | None:
    """FHIR_CALLS_PER_WORKER: a number, or 0 for the default: the worker's threads minus FREE_THREADS (at least 1)
    under ``alp-cds serve``; no limit elsewhere (the development server, tests)."""
    if setting:
        return setting
    return max(1, threads - FREE_THREADS) if threads else None


def bulkheads(settings: Settings, threads: int | None = None) -> dict[str, Bulkhead]:
    threads = threads or worker_threads()
    fhir = fhir_calls_limit(settings.FHIR_CALLS_PER_WORKER, threads)
    large = settings.LARGE_CALLS_PER_WORKER
    return {
        "fhir": Bulkhead(
            "fhir",
            fhir,
            message=f"this instance is already fetching from FHIR servers for {fhir} calls per process (a FHIR "
            "server may be slow or not answering); please retry, or send the prefetch",
        ),
        "large": Bulkhead(
            "large",
            settings.LARGE_CALLS_PER_WORKER,
            settings.LARGE_CALL_WAIT,
            message=f"this instance is busy with {large} large requests per process "
            f"(over {settings.LARGE_BODY_BYTES} bytes); please retry",
            # the threads left free of FHIR fetching are not all taken by large calls waiting either
            max_waiting=max(0, threads - FREE_THREADS - large) if threads else None,
        ),
    }
