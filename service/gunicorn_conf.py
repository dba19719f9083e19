"""gunicorn settings used by ``alp-cds serve`` (and so by the Dockerfile).

Slow peers: with sync workers one client that sends its request slowly holds a whole worker process, so two of them
took every endpoint down. Threaded workers give a connection a thread only while it sends a request or waits for
its answer (a connection that has sent nothing, or is idle between kept-alive requests, waits in the worker's
poller). A client that stops sending, or stops reading its answer, for ``CDS_CLIENT_TIMEOUT`` seconds is
disconnected, and one that keeps trickling its request is cut off ``CDS_CLIENT_REQUEST_DEADLINE`` seconds after a
thread took it up (``service/gunicorn_worker.py``). The work of a hook call itself is bounded: FHIR fetching by
``CDS_FHIR_TIME_BUDGET``, the stores by their timeouts. ``alp-cds serve`` adds ``--reuse-port`` on a TCP address,
so that each worker has a listening socket of its own and the kernel spreads connections evenly over them. Each slow
client still holds a thread while it lasts, so facing the open internet, put a buffering proxy (nginx) in front
(docs/operations.md, "Serving", which gives the measured numbers).
"""

import gc
import os
import re
import socket
import struct
from pathlib import Path

from service.bulkhead import THREADS_ENV
from service.settings import load_settings

PROMETHEUS_FILE = re.compile(r"(counter|gauge_[a-z]+|histogram|summary)_\d+\.db")
worker_class = "service.gunicorn_worker.DeadlineThreadWorker"  # gunicorn's gthread, with a request deadline
threads = 16  # per worker: requests served at once by each process (alp-cds serve --threads)
keepalive = 5  # seconds an idle kept-alive connection is kept (in the poller, holding no thread)
timeout = 30  # a worker whose main loop is stuck this long is restarted
graceful_timeout = 30  # on SIGTERM, seconds requests in flight have to finish (deploy/k8s: grace period 45 s)
control_socket_disable = True  # no gunicornc socket in $HOME: several services (and tests) may run side by side


def on_starting(server) -> None:
    """Prometheus multiprocess mode (``PROMETHEUS_MULTIPROC_DIR``): the directory starts empty, or the values of a
    previous run would be added to this one's (service/metrics.py)."""
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if directory:
        Path(directory).mkdir(parents=True, exist_ok=True)
        for stale in Path(directory).glob("*.db"):
            if PROMETHEUS_FILE.fullmatch(stale.name):  # only the client library's files, whatever else is there
                stale.unlink()
        server.log.info("Prometheus multiprocess mode: one scrape reports every worker (%s)", directory)


def child_exit(server, worker) -> None:
    """A worker that ended: its counters stay in the sum (their files stay); live gauges of it are dropped."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)


def when_ready(server) -> None:
    """With a socket per worker (--reuse-port) gunicorn's own "Listening at" line names no address: say it here."""
    server.log.info("Serving on %s (threads per worker: %s)", ", ".join(server.cfg.bind), server.cfg.threads)


def post_fork(server, worker) -> None:
    """Every connection a worker accepts inherits its listener's receive and send timeouts: a blocking read of a
    request (headers or body) that gets nothing, or a write of an answer that the client does not take (it never
    reads), for CDS_CLIENT_TIMEOUT seconds fails, and the connection is closed."""
    os.environ[THREADS_ENV] = str(worker.cfg.threads)  # the FHIR bulkhead's default (service/bulkhead.py)
    seconds = load_settings().CLIENT_TIMEOUT
    value = struct.pack("ll", int(seconds), int((seconds % 1) * 1_000_000))
    for listener in worker.sockets:
        listener.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, value)
        listener.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, value)


def post_worker_init(worker) -> None:
    """Large prefetch Bundles allocate hundreds of thousands of small objects; with the default thresholds the
    cycle collector runs over them many times per request. Freeze what start-up built and collect less often
    (measured in bench/: see docs/benchmarks.md)."""
    gc.freeze()
    gc.set_threshold(100_000, 50, 100)
