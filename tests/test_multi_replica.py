"""Several replicas behind a real load balancer, on loopback: Redis (replay store), PostgreSQL (feedback, migrated by
``alp-cds migrate`` as the init container does), two ``alp-cds serve`` instances of two workers each (JWT checks
on, Prometheus multiprocess mode) and nginx in front, round-robin, as in production.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
from sqlalchemy import create_engine, select, text

from service.feedback import feedback
from tests.conftest import PV, free_port, load_request, postgres_url
from tests.servers import Nginx, Redis
from tests.test_security import ISS, JWKS, token

ALP_CDS = str(Path(sys.executable).parent / "alp-cds")
OVERRIDE_KEY = "the-replicas-share-this-override-key-0123456789"


@dataclass
class Instance:
    name: str
    base: str
    workdir: Path
    process: subprocess.Popen

    def log(self) -> str:
        return (self.workdir / "server.log").read_text()

    def kill(self) -> None:
        """A crash of the whole instance (a node lost): master and workers at once, nothing cleaned up."""
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)


def start_instance(name: str, workdir: Path, public_url: str, env_extra: dict[str, str]) -> Instance:
    workdir.mkdir()
    port = free_port()
    issuers = workdir / "issuers.json"
    issuers.write_text(json.dumps({ISS: {"jwks": JWKS}}))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CDS_", "PROMETHEUS_"))}
    env.update(
        CDS_TRUSTED_ISSUERS_FILE=str(issuers),
        CDS_REPLAY_STORE_URL=f"sqlite:///{workdir}/replay.db",  # must stay unused: Redis is the store
        CDS_FEEDBACK_DB_MIGRATE="off",  # as in Kubernetes: the schema is alp-cds migrate's job
        CDS_LOG_LEVEL="WARNING",
        PROMETHEUS_MULTIPROC_DIR=str(workdir / "metrics"),
        **env_extra,
    )
    command = [ALP_CDS, "serve", "--bind", f"127.0.0.1:{port}", "--workers", "2", "--public-url", public_url]
    with (workdir / "server.log").open("w") as log:
        process = subprocess.Popen(
            command, cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    return Instance(name, f"http://127.0.0.1:{port}", workdir, process)


def wait_ready(instance: Instance) -> None:
    deadline = time.monotonic() + 60
    while True:
        try:
            if requests.get(f"{instance.base}/readyz", timeout=1).status_code == 200:
                return
        except requests.RequestException:
            pass
        if instance.process.poll() is not None or time.monotonic() > deadline:
            instance.stop()
            pytest.fail(f"instance {instance.name} did not get ready: {instance.log()[-3000:]}")
        time.sleep(0.2)


@dataclass
class Cluster:
    lb: str
    a: Instance
    b: Instance
    pg_url: str
    redis: Redis
    nginx: Nginx

    def feedback_cards(self) -> set[str]:
        engine = create_engine(self.pg_url.replace("postgresql://", "postgresql+psycopg://", 1))
        try:
            with engine.connect() as connection:
                return set(connection.execute(select(feedback.c.card_uuid)).scalars())
        finally:
            engine.dispose()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("replicas")
    redis = Redis(workdir)
    pg_url = postgres_url()
    engine = create_engine(pg_url.replace("postgresql://", "postgresql+psycopg://", 1))
    with engine.begin() as connection:
        connection.execute(text("DROP TABLE IF EXISTS feedback, issued_cards, alembic_version"))
    engine.dispose()
    migrate = subprocess.run(
        [ALP_CDS, "migrate"], env={**os.environ, "CDS_FEEDBACK_DB_URL": pg_url}, capture_output=True, text=True
    )
    assert migrate.returncode == 0, migrate.stderr
    lb_port = free_port()
    lb = f"http://127.0.0.1:{lb_port}"
    shared = {
        "CDS_REDIS_URL": redis.url,
        "CDS_FEEDBACK_DB_URL": pg_url,
        "CDS_OVERRIDE_KEY": OVERRIDE_KEY,
        "CDS_OVERRIDE_LOOKUP_TIMEOUT": "4",
    }
    a = start_instance("a", workdir / "a", lb, shared)
    b = start_instance("b", workdir / "b", lb, shared)
    started: list = [redis, a, b]
    try:
        wait_ready(a)
        wait_ready(b)
        nginx = Nginx(workdir / "nginx", [a.base.removeprefix("http://"), b.base.removeprefix("http://")], lb_port)
        started.append(nginx)
        yield Cluster(lb, a, b, pg_url, redis, nginx)
    finally:
        for server in reversed(started):
            server.stop()


def hook(base: str, bearer: str) -> requests.Response:
    return requests.post(
        f"{base}/cds-services/{PV}",
        json=load_request("single-low-in"),
        headers={"Authorization": f"Bearer {bearer}", "Connection": "close"},
        timeout=10,
    )


def post_feedback(base: str, lb: str, card: str) -> requests.Response:
    bearer = token(aud=f"{lb}/cds-services/{PV}/feedback")
    item = {"card": card, "outcome": "overridden", "outcomeTimestamp": "2026-06-01T10:00:00Z"}
    return requests.post(
        f"{base}/cds-services/{PV}/feedback",
        json={"feedback": [item]},
        headers={"Authorization": f"Bearer {bearer}"},
        timeout=10,
    )


def counter(base: str, name: str, **labels: str) -> float:
    """The value of one counter series in an instance's /metrics (0 when absent)."""
    body = requests.get(f"{base}/metrics", timeout=5).text
    total = 0.0
    for line in body.splitlines():
        match = re.fullmatch(rf"{name}\{{(.*)\}} (\S+)", line)
        if match and all(f'{k}="{v}"' in match.group(1) for k, v in labels.items()):
            total += float(match.group(2))
    return total


def test_a_token_replayed_through_the_balancer_is_accepted_once_in_total(cluster):
    """The same token 12 times through nginx (round-robin over both instances and their workers) and twice to each
    instance directly: one 200 in all, and both instances refused some (each asked Redis)."""
    bearer = token(aud=f"{cluster.lb}/cds-services/{PV}")
    before = {
        i.name: counter(i.base, "cds_requests_total", endpoint="/cds-services/<service_id>")
        for i in (cluster.a, cluster.b)
    }
    statuses = [hook(cluster.lb, bearer).status_code for _ in range(12)]
    statuses += [hook(i.base, bearer).status_code for i in (cluster.a, cluster.b) for _ in range(2)]
    assert sorted(statuses) == [200] + [401] * 15
    for instance in (cluster.a, cluster.b):
        served = counter(instance.base, "cds_requests_total", endpoint="/cds-services/<service_id>")
        assert served - before[instance.name] >= 2 + 1, instance.name  # its direct calls and some through nginx
    assert not (cluster.a.workdir / "replay.db").exists() and not (cluster.b.workdir / "replay.db").exists()
    assert hook(cluster.lb, token(aud=f"{cluster.lb}/cds-services/{PV}")).status_code == 200


def test_feedback_through_either_instance_is_in_the_one_postgresql(cluster):
    cards = [f"direct-a-{uuid.uuid4()}", f"direct-b-{uuid.uuid4()}"]
    assert post_feedback(cluster.a.base, cluster.lb, cards[0]).status_code == 200
    assert post_feedback(cluster.b.base, cluster.lb, cards[1]).status_code == 200
    for i in range(8):
        card = f"balanced-{i}-{uuid.uuid4()}"
        assert post_feedback(cluster.lb, cluster.lb, card).status_code == 200
        cards.append(card)
    assert set(cards) <= cluster.feedback_cards()


def test_an_override_through_one_instance_quiets_the_warning_on_the_other(cluster):
    """The override memory across replicas: a warning issued by instance a, overridden through instance b, is shown
    as information by both instances and through the balancer (every worker reads the one PostgreSQL). The patient
    is in no table and in no log in clear. The chart's dates are reckoned from today: the instances run on the real
    clock."""
    from datetime import UTC, datetime, timedelta

    from fixtures.scenarios import Scenario
    from service.hook_requests import hook_request

    today = datetime.now(UTC).date()
    patient = f"replica-memory-{uuid.uuid4()}"
    scenario = (
        Scenario(patient, "1970-02-02", "female")
        .lab("alp", 22, (today - timedelta(days=120)).isoformat(), low=35, high=104)
        .lab("alp", 24, (today - timedelta(days=40)).isoformat(), low=35, high=104)
    )
    request = hook_request(PV, scenario.bundle(), patient)

    def cards(base: str) -> list[dict]:
        bearer = token(aud=f"{cluster.lb}/cds-services/{PV}")
        answer = requests.post(
            f"{base}/cds-services/{PV}", json=request, headers={"Authorization": f"Bearer {bearer}"}, timeout=10
        )
        assert answer.status_code == 200, answer.text
        return answer.json()["cards"]

    [card] = cards(cluster.a.base)
    assert card["indicator"] == "warning"
    engine = create_engine(cluster.pg_url.replace("postgresql://", "postgresql+psycopg://", 1))
    try:
        deadline = time.monotonic() + 10  # instance a writes the card's audit row off the call's path
        while True:
            with engine.connect() as connection:
                found = connection.execute(
                    text("SELECT count(*) FROM issued_cards WHERE uuid = :u"), {"u": card["uuid"]}
                ).scalar_one()
            if found or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        bearer = token(aud=f"{cluster.lb}/cds-services/{PV}/feedback")
        item = {
            "card": card["uuid"],
            "outcome": "overridden",
            "outcomeTimestamp": datetime.now(UTC).isoformat(),
            "overrideReason": {"reason": {"system": "urn:alp-cds:override-reason", "code": "hpp-already-assessed"}},
        }
        answer = requests.post(
            f"{cluster.b.base}/cds-services/{PV}/feedback",
            json={"feedback": [item]},
            headers={"Authorization": f"Bearer {bearer}"},
            timeout=10,
        )
        assert answer.status_code == 200, answer.text
        for base in (cluster.b.base, cluster.a.base, cluster.lb, cluster.lb):
            [again] = cards(base)
            assert again["indicator"] == "info", base
            assert again["summary"].endswith(f"; overridden {today.isoformat()}")
            assert again["detail"].startswith(f"**Overridden on {today.isoformat()}** (HPP already diagnosed or ")
        with engine.connect() as connection:
            dump = "\n".join(
                json.dumps(list(row), default=str)
                for table in ("issued_cards", "feedback")
                for row in connection.execute(text(f"SELECT * FROM {table}"))
            )
    finally:
        engine.dispose()
    assert patient not in dump and patient not in cluster.a.log() + cluster.b.log()
    assert counter(cluster.a.base, "cds_override_lookups_total", outcome="found") >= 1
    assert counter(cluster.b.base, "cds_override_lookups_total", outcome="found") >= 1


def test_metrics_of_an_instance_sum_its_workers(cluster):
    """40 health checks to instance b on new connections (the kernel spreads them over its two workers, each with a
    socket of its own): every scrape, whichever worker answers it, reports 40, and each worker counted some."""
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.multiprocess import MultiProcessCollector

    base = cluster.b.base
    before = counter(base, "cds_requests_total", endpoint="/healthz")
    for _ in range(40):
        assert requests.get(f"{base}/healthz", headers={"Connection": "close"}, timeout=5).status_code == 200
    scrapes = [counter(base, "cds_requests_total", endpoint="/healthz") - before for _ in range(6)]
    assert scrapes == [40.0] * 6
    per_worker = []
    for file in sorted((cluster.b.workdir / "metrics").glob("counter_*.db")):
        alone = cluster.b.workdir / f"one-{file.stem}"
        alone.mkdir()
        shutil.copy(file, alone / file.name)
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=str(alone))
        text_ = generate_latest(registry).decode()
        found = re.search(r'cds_requests_total\{endpoint="/healthz",service="",status="200"\} (\S+)', text_)
        per_worker.append(float(found.group(1)) if found else 0.0)
    assert len(per_worker) == 2 and all(n > 0 for n in per_worker), per_worker  # two workers, both counted
    print(f"healthz counted per worker of instance b: {per_worker}; every scrape: {scrapes[0]}")


def test_killing_an_instance_mid_load_loses_no_acknowledged_feedback(cluster):
    """Four clients post feedback through nginx without pause; instance a is killed (SIGKILL, master and workers)
    after 1.5 s. Every feedback that got its 200 is in PostgreSQL, and from a second after the kill on, nginx
    answers every call (from instance b)."""
    results: list[tuple[float, str, int]] = []
    stop = threading.Event()
    lock = threading.Lock()

    def client(n: int) -> None:
        i = 0
        while not stop.is_set():
            card = f"load-{n}-{i}-{uuid.uuid4()}"
            i += 1
            try:
                status = post_feedback(cluster.lb, cluster.lb, card).status_code
            except requests.RequestException:
                status = 0
            with lock:
                results.append((time.monotonic(), card, status))

    threads = [threading.Thread(target=client, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    time.sleep(1.5)
    killed_at = time.monotonic()
    cluster.a.kill()
    time.sleep(3.5)
    stop.set()
    for thread in threads:
        thread.join(timeout=30)

    acknowledged = {card for _, card, status in results if status == 200}
    stored = cluster.feedback_cards()
    assert acknowledged <= stored, f"{len(acknowledged - stored)} acknowledged feedback items are not stored"
    before = [s for t, _, s in results if t < killed_at]
    after = [s for t, _, s in results if t >= killed_at + 1]
    failed_at_kill = [s for t, _, s in results if killed_at <= t < killed_at + 1 and s != 200]
    assert before and set(before) == {200}
    assert len(after) >= 20 and set(after) == {200}, sorted(set(after))
    assert len(failed_at_kill) <= 4  # at most the calls in flight on the killed instance
    assert requests.get(f"{cluster.lb}/readyz", timeout=5).status_code == 200
    print(
        f"feedback calls: {len(results)}, acknowledged {len(acknowledged)} (all stored), before the kill "
        f"{len(before)}, in the second after it {len(failed_at_kill)} failed, after it {len(after)} all 200"
    )


def test_the_metrics_directory_is_emptied_of_metrics_files_only(tmp_path, monkeypatch):
    """A previous run's values would be added to this one's; anything else in the directory is left alone."""
    from types import SimpleNamespace

    from service import gunicorn_conf

    for name in ("counter_11.db", "histogram_11.db", "gauge_livesum_11.db", "feedback.db", "notes.txt"):
        (tmp_path / name).write_text("x")
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    gunicorn_conf.on_starting(SimpleNamespace(log=SimpleNamespace(info=lambda *a: None)))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["feedback.db", "notes.txt"]
