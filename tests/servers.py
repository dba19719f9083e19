"""Real servers from Debian's packages, started on loopback for the scale tests: Redis and nginx.

Each is skipped with one line saying what to install when its binary is missing, and fails in CI (``.ci/run``
installs them), as the PostgreSQL and FHIR server helpers in conftest.py do.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import free_port


def debian_binary(name: str, package: str, *places: str) -> str:
    for candidate in (*places, shutil.which(name)):
        if candidate and Path(candidate).exists():
            return candidate
    message = f"{name} is not installed (Debian: apt-get install {package})"
    if os.environ.get("CI"):
        pytest.fail(message + ": .ci/run must install it")
    pytest.skip(message)


def wait_for_port(port: int, process: subprocess.Popen, log: Path, seconds: float = 20) -> None:
    deadline = time.monotonic() + seconds
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"{log.name}: did not start: {log.read_text()[-2000:]}")
        time.sleep(0.05)


class Server:
    """A server process the tests started: stopped politely, then for good."""

    process: subprocess.Popen

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()


class Redis(Server):
    """``redis-server`` on a free loopback port, nothing saved to disk."""

    def __init__(self, workdir: Path, port: int | None = None, extra: tuple[str, ...] = ()) -> None:
        binary = debian_binary("redis-server", "redis-server", "/usr/bin/redis-server")
        self.port = port or free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.workdir = workdir
        self.log = workdir / "redis.log"
        command = [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        command += ["--dir", str(workdir), *extra]
        with self.log.open("w") as out:
            self.process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
        wait_for_port(self.port, self.process, self.log)


NGINX_CONF = """
{user}
worker_processes 1;
pid {workdir}/nginx.pid;
error_log {workdir}/error.log warn;
events {{ worker_connections 512; }}
http {{
    access_log off;
    client_body_temp_path {workdir}/body;
    proxy_temp_path {workdir}/proxy;
    fastcgi_temp_path {workdir}/fastcgi;
    uwsgi_temp_path {workdir}/uwsgi;
    scgi_temp_path {workdir}/scgi;
    client_max_body_size 5m;
    upstream alp_cds {{
{servers}
        keepalive 16;
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://alp_cds;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_connect_timeout 1s;
            proxy_read_timeout 30s;
            # A replica that refuses the connection or is gone: the request goes to the next one (a POST only when
            # nothing of it was sent yet, nginx's own rule, so that no hook call or feedback is sent twice).
            proxy_next_upstream error timeout http_502 http_503;
        }}
    }}
}}
"""


class Nginx(Server):
    """nginx on a free loopback port, round-robin over ``upstreams`` (``host:port``), a server that fails is left
    out for 2 seconds."""

    def __init__(self, workdir: Path, upstreams: list[str], port: int | None = None) -> None:
        binary = debian_binary("nginx", "nginx", "/usr/sbin/nginx")
        self.port = port or free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        # Started as root, nginx's worker would run as nobody, who cannot reach the test's private directory.
        user = "user root;" if os.geteuid() == 0 else ""
        servers = "\n".join(f"        server {u} max_fails=1 fail_timeout=2s;" for u in upstreams)
        conf = workdir / "nginx.conf"
        conf.write_text(NGINX_CONF.format(user=user, workdir=workdir, servers=servers, port=self.port))
        self.log = workdir / "nginx.out"
        with self.log.open("w") as out:
            self.process = subprocess.Popen(
                [binary, "-c", str(conf), "-p", str(workdir), "-g", "daemon off;"], stdout=out, stderr=out
            )
        wait_for_port(self.port, self.process, self.log)
