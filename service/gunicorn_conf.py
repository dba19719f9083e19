"""gunicorn settings used by ``alp-cds serve`` (and so by the Dockerfile).

Slow peers: with sync workers one client that sends its request slowly holds a whole worker process, so two of them
took every endpoint down. Threaded workers give a connection a thread only while it sends a request or waits for
its answer (a connection that has sent nothing, or is idle between kept-alive requests, waits in the worker's
poller), and a client that stops sending for ``CDS_CLIENT_TIMEOUT`` seconds is disconnected. The work of a hook
call itself is bounded: FHIR fetching by ``CDS_FHIR_TIME_BUDGET``. Facing the open internet, put a buffering proxy
(nginx) in front as well: a client that keeps trickling bytes still holds one thread for as long as it trickles.
"""

import gc
import socket
import struct

from service.settings import load_settings

worker_class = "gthread"
threads = 8  # per worker: requests served at once by each process (alp-cds serve --threads)
keepalive = 5  # seconds an idle kept-alive connection is kept (in the poller, holding no thread)
timeout = 30  # a worker whose main loop is stuck this long is restarted
control_socket_disable = True  # no gunicornc socket in $HOME: several services (and tests) may run side by side


def when_ready(server) -> None:
    """Every accepted connection inherits the listener's receive timeout: a blocking read of a request (headers or
    body) that gets nothing for CDS_CLIENT_TIMEOUT seconds fails, and the connection is closed."""
    seconds = load_settings()["CLIENT_TIMEOUT"]
    value = struct.pack("ll", int(seconds), int((seconds % 1) * 1_000_000))
    for listener in server.LISTENERS:
        listener.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, value)


def post_worker_init(worker) -> None:
    """Large prefetch Bundles allocate hundreds of thousands of small objects; with the default thresholds the
    cycle collector runs over them many times per request. Freeze what start-up built and collect less often
    (measured in bench/: see docs/benchmarks.md)."""
    gc.freeze()
    gc.set_threshold(100_000, 50, 100)
