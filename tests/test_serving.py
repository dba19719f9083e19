"""The service as ``alp-cds serve`` runs it: the command's start-up checks, and gunicorn on loopback."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from service import cli
from tests.conftest import PV, load_request
from tests.test_security import ISS, JWKS, token


@pytest.fixture
def serve_env(monkeypatch):
    """A clean environment for ``alp-cds serve``; gunicorn itself is replaced by a recorder."""
    for name in ("CDS_PUBLIC_BASE_URL", "CDS_AUTH"):
        monkeypatch.setenv(name, "")  # recorded, so that what the command sets is undone afterwards
        monkeypatch.delenv(name)
    monkeypatch.setattr(sys, "argv", list(sys.argv))
    started: dict = {}
    monkeypatch.setattr("gunicorn.app.wsgiapp.run", lambda: started.update(argv=list(sys.argv)))
    return started


def test_serve_sets_the_public_url_from_a_specific_bind(serve_env):
    assert cli.main(["serve", "--bind", "127.0.0.1:18080"]) == 0
    assert os.environ["CDS_PUBLIC_BASE_URL"] == "http://127.0.0.1:18080"
    assert "service.app:create_app()" in serve_env["argv"]


def test_serve_gives_each_worker_its_own_socket_on_tcp_and_checks_the_address_first(serve_env, capsys):
    """SO_REUSEPORT spreads connections evenly over the workers (bench/slow_peers.py: with one shared socket, 8 slow
    clients could take one worker's every thread while the other idled)."""
    port = _free_port()
    assert cli.main(["serve", "--bind", f"127.0.0.1:{port}"]) == 0
    assert "--reuse-port" in serve_env["argv"]
    serve_env.clear()
    with socket.create_server(("127.0.0.1", port)):  # another program has the port: gunicorn would retry for ever
        assert cli.main(["serve", "--bind", f"127.0.0.1:{port}"]) == 2
        assert "in use" in capsys.readouterr().err
        assert serve_env == {}
    assert cli.main(["serve", "--bind", "unix:/tmp/alp-cds-test.sock", "--public-url", "http://x"]) == 0
    assert "--reuse-port" not in serve_env["argv"]


def test_serve_refuses_to_start_without_a_public_url_when_auth_is_on(serve_env, capsys):
    assert cli.main(["serve", "--bind", "0.0.0.0:8080"]) == 2
    assert "CDS_PUBLIC_BASE_URL" in capsys.readouterr().err
    assert serve_env == {}  # gunicorn was not started
    assert cli.main(["serve", "--bind", "0.0.0.0:8080", "--public-url", "https://cds.example.org"]) == 0


@pytest.mark.parametrize(
    "host", ["0.0.0.0", "0", "0.0", "000.0.0.0", "0x0", "[::]", "[0::0]", "[0:0:0:0:0:0:0:0]", "[::ffff:0.0.0.0]", ""]
)
def test_every_spelling_of_a_wildcard_bind_is_refused_without_a_public_url(serve_env, capsys, host):
    """gunicorn listens on every interface for each of these: no URL clients call can be derived from them."""
    assert cli.main(["serve", "--bind", f"{host}:8080"]) == 2
    assert "CDS_PUBLIC_BASE_URL" in capsys.readouterr().err
    assert serve_env == {}


@pytest.mark.parametrize(
    ("bind", "url"),
    [("127.0.0.1:18080", "http://127.0.0.1:18080"), ("[::1]:18080", "http://[::1]:18080"), ("cds.local:80", None)],
)
def test_a_specific_bind_gives_the_public_url(bind, url):
    assert cli.url_of_bind(bind) == (url or "http://cds.local:80")


def test_serve_with_auth_off_needs_no_public_url(serve_env, monkeypatch):
    monkeypatch.setenv("CDS_AUTH", "off")
    assert cli.main(["serve", "--bind", "0.0.0.0:8080"]) == 0


# ------------------------------------------------------------------------------------------ gunicorn on loopback


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _get(url: str, timeout: float = 3.0) -> requests.Response:
    return requests.get(url, timeout=timeout)


@dataclass
class Served:
    base: str
    workdir: Path
    process: subprocess.Popen

    def log(self) -> str:
        return (self.workdir / "server.log").read_text()


def start_served(
    workdir: Path, workers: int = 2, threads: int | None = None, fhir_servers: tuple[str, ...] = (), **env_extra: str
) -> Served:
    """``alp-cds serve`` as production runs it (JWT checks on), on fresh store files in ``workdir``."""
    port = _free_port()
    issuers = workdir / "issuers.json"
    issuers.write_text(json.dumps({ISS: {"jwks": JWKS, "fhir_servers": list(fhir_servers)}}))
    env = {k: v for k, v in os.environ.items() if not k.startswith("CDS_")}
    env.update(
        CDS_TRUSTED_ISSUERS_FILE=str(issuers),
        CDS_FEEDBACK_DB_URL=f"sqlite:///{workdir}/feedback.db",
        CDS_REPLAY_STORE_URL=f"sqlite:///{workdir}/replay.db",
        CDS_CLIENT_TIMEOUT="2",
        **env_extra,
    )
    command = [str(Path(sys.executable).parent / "alp-cds"), "serve", "--bind", f"127.0.0.1:{port}"]
    command += ["--workers", str(workers), *(["--threads", str(threads)] if threads else [])]
    with (workdir / "server.log").open("w") as log:
        process = subprocess.Popen(command, cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            if _get(f"{base}/readyz", timeout=1).status_code == 200:
                break
        except requests.RequestException:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"alp-cds serve did not start: {(workdir / 'server.log').read_text()[-3000:]}")
        time.sleep(0.2)
    return Served(base, workdir, process)


def stop_served(served: Served) -> None:
    served.process.terminate()
    try:
        served.process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        served.process.kill()


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """Two workers, on fresh store files."""
    server = start_served(tmp_path_factory.mktemp("served"), workers=2)
    yield server
    stop_served(server)


def test_a_multi_worker_start_on_fresh_store_files_is_clean(served):
    """The fixture started two workers on files that did not exist: none of them reported a store problem.
    (The race itself is reproduced deterministically in test_feedback_and_ops.py.)"""
    assert (served.workdir / "feedback.db").exists()
    assert "feedback_store_unavailable" not in served.log() and "Booting worker" in served.log()
    ready = _get(f"{served.base}/readyz")
    assert ready.status_code == 200 and ready.json()["feedback_store"] == "ok"


def _hook_call(base: str, timeout: float = 5.0) -> requests.Response:
    bearer = token(aud=f"{base}/cds-services/{PV}")
    return requests.post(
        f"{base}/cds-services/{PV}",
        json=load_request("single-low-in"),
        headers={"Authorization": f"Bearer {bearer}"},
        timeout=timeout,
    )


class SlowPeer:
    """A client that sends its request one byte every half second (it would take minutes to finish)."""

    def __init__(self, base: str) -> None:
        host, port = base.removeprefix("http://").split(":")
        self.sock = socket.create_connection((host, int(port)))
        self.stop = threading.Event()
        request = f"POST /cds-services/{PV} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n" + "X" * 200
        self.thread = threading.Thread(target=self._trickle, args=(request.encode(),), daemon=True)
        self.thread.start()

    def _trickle(self, data: bytes) -> None:
        for byte in data:
            if self.stop.wait(0.5):
                break
            try:
                self.sock.sendall(bytes([byte]))
            except OSError:
                break

    def close(self) -> None:
        self.stop.set()
        self.thread.join()
        self.sock.close()


def test_slow_peers_do_not_starve_the_service(served):
    peers = [SlowPeer(served.base) for _ in range(4)]  # more than there are workers
    try:
        time.sleep(1.5)  # accepted and holding whatever they hold
        for _ in range(3):
            assert _get(f"{served.base}/healthz").status_code == 200  # each within 3 s
        response = _hook_call(served.base)
        assert response.status_code == 200 and response.json()["cards"]
    finally:
        for peer in peers:
            peer.close()


def test_a_client_that_stops_sending_is_disconnected(served):
    host, port = served.base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as sock:
        sock.sendall(f"POST /cds-services/{PV} HTTP/1.1\r\nHost: {host}\r\n".encode())  # and then nothing
        sock.settimeout(10)
        started = time.monotonic()
        with contextlib.suppress(ConnectionResetError):  # a reset is a close too
            assert sock.recv(1024) == b""  # the server closed the connection
        assert time.monotonic() - started < 2 + 3  # CDS_CLIENT_TIMEOUT is 2 s here


def test_a_replayed_token_is_accepted_once_across_the_workers(served):
    """Each attempt comes on a new connection, to whichever worker takes it: one 200 in all. (Which worker takes a
    connection is up to the kernel; test_security.py shows the same with two app instances, deterministically.)"""
    bearer = token(aud=f"{served.base}/cds-services/{PV}")
    statuses = [
        requests.post(
            f"{served.base}/cds-services/{PV}",
            json=load_request("single-low-in"),
            headers={"Authorization": f"Bearer {bearer}", "Connection": "close"},
            timeout=5,
        ).status_code
        for _ in range(8)
    ]
    assert sorted(statuses) == [200] + [401] * 7


# ------------------------------------------------------------------------------------------ slow peers, one worker


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """One worker with two threads, so that a few slow peers would be enough to take every thread; a client has 3 s
    to send a whole request."""
    server = start_served(tmp_path_factory.mktemp("small"), workers=1, threads=2, CDS_CLIENT_REQUEST_DEADLINE="3")
    yield server
    stop_served(server)


def _healthz_answers(base: str) -> bool:
    try:
        return _get(f"{base}/healthz", timeout=3).status_code == 200
    except requests.RequestException:
        return False


def _closed_by_the_server(sock: socket.socket) -> bool:
    """Whether the server has closed the connection (what it already sent is read and dropped)."""
    sock.setblocking(False)
    try:
        while True:
            data = sock.recv(65536)
            if not data:
                return True
    except BlockingIOError:
        return False
    except OSError:  # reset: closed too
        return True
    finally:
        sock.setblocking(True)


def _ends_after_what_was_sent(sock: socket.socket) -> bool:
    """Read what the connection gives: True when it ends (the server closed it), False when the server waits for
    more (it kept the connection: it answers the remaining requests once they are read, then waits)."""
    sock.settimeout(1.5)
    try:
        while sock.recv(1 << 20):
            pass
        return True
    except TimeoutError:
        return False
    except OSError:  # reset: closed too
        return True


def test_clients_that_never_read_their_answers_are_dropped(small):
    """Pipelined requests whose answers are never read: writing blocks once the buffers are full. The send timeout
    (CDS_CLIENT_TIMEOUT, 2 s here) drops such a connection, and its thread serves others again."""
    host, port = small.base.removeprefix("http://").split(":")
    readers = []
    for _ in range(2):  # as many as the worker has threads
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect((host, int(port)))
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" * 200)  # 80 kB answers: 16 MB in all
        readers.append(sock)
    try:
        time.sleep(2 + 2)
        assert _healthz_answers(small.base)
        assert all(_ends_after_what_was_sent(sock) for sock in readers)
    finally:
        for sock in readers:
            sock.close()


@pytest.mark.parametrize("phase", ["headers", "body"])
def test_a_request_that_keeps_trickling_is_cut_off_at_the_request_deadline(small, phase):
    """One byte every half second never trips the 2 s idle timeout: only a deadline for the whole request ends it
    (CDS_CLIENT_REQUEST_DEADLINE, 3 s here)."""
    host, port = small.base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as sock:
        if phase == "body":  # authenticated, so that the service reads the body
            bearer = token(aud=f"{small.base}/cds-services/{PV}")
            sock.sendall(
                f"POST /cds-services/{PV} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                f"Authorization: Bearer {bearer}\r\nContent-Length: 1000\r\n\r\n".encode()
            )
            trickle = b" " * 1000
        else:
            trickle = f"POST /cds-services/{PV} HTTP/1.1\r\nHost: x\r\nX-Pad: ".encode() + b"a" * 1000
        started = time.monotonic()
        closed_after = None
        for byte in trickle[:24]:  # 12 s at most
            try:
                sock.sendall(bytes([byte]))
            except OSError:
                closed_after = time.monotonic() - started
                break
            if _closed_by_the_server(sock):
                closed_after = time.monotonic() - started
                break
            time.sleep(0.5)
        assert closed_after is not None, "the connection was still open after 12 s"
        assert closed_after < 3 + 2.5
    assert _healthz_answers(small.base)


# ------------------------------------------------------------------------------------------ the FHIR bulkhead


def test_a_fhir_server_that_never_answers_takes_only_the_fetching_slots(tmp_path):
    """One worker of 8 threads, so by default at most 8 - 4 = 4 of its calls fetch from FHIR at once. 12 calls without
    prefetch to a server that never answers: 4 wait for the time budget (then 412), the 8 others get a 503 with
    Retry-After at once; meanwhile /healthz and a call whose prefetch is complete answer at once."""
    from tests.peer import Peer
    from tests.test_prefetch import request_without_prefetch

    release = threading.Event()
    peer = Peer({"/": lambda handler: release.wait(30)})  # accepts, reads the request, answers nothing
    served = start_served(tmp_path, workers=1, threads=8, fhir_servers=(peer.base,), CDS_FHIR_TIME_BUDGET="4")
    results: list[tuple[int, float, dict]] = []

    def fetching_call() -> None:
        body = request_without_prefetch("single-low-in")
        body["fhirServer"] = peer.base
        bearer = token(aud=f"{served.base}/cds-services/{PV}")
        started = time.monotonic()
        response = requests.post(
            f"{served.base}/cds-services/{PV}", json=body, headers={"Authorization": f"Bearer {bearer}"}, timeout=20
        )
        results.append((response.status_code, time.monotonic() - started, dict(response.headers)))

    try:
        callers = [threading.Thread(target=fetching_call) for _ in range(12)]
        for caller in callers:
            caller.start()
        time.sleep(1.0)
        started = time.monotonic()
        assert _get(f"{served.base}/healthz", timeout=2).status_code == 200
        assert _hook_call(served.base, timeout=2).status_code == 200  # prefetch complete: fetches nothing
        assert time.monotonic() - started < 1.5
        for caller in callers:
            caller.join()
        refused = [r for r in results if r[0] == 503]
        assert sorted(r[0] for r in results) == [412] * 4 + [503] * 8
        assert all(seconds < 2 and headers["Retry-After"] == "1" for _, seconds, headers in refused)
        assert all(seconds >= 3.5 for status, seconds, _ in results if status == 412)  # the whole budget
        metrics = _get(f"{served.base}/metrics").text
        assert 'cds_overloaded_total{bulkhead="fhir"} 8.0' in metrics
    finally:
        release.set()
        stop_served(served)
        peer.close()
