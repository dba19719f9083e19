"""The replay store shared by replicas on several machines: Redis (``CDS_REDIS_URL``), fail-closed by default."""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from service.replay import RedisReplayStore, SqliteReplayStore, open_replay_store
from service.settings import SettingsError, load_settings
from tests.conftest import free_port
from tests.servers import Redis
from tests.test_security import ISS, assert_401, call, secured, token


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory):
    server = Redis(tmp_path_factory.mktemp("redis"))
    yield server
    server.stop()


def test_without_redis_the_store_is_the_sqlite_file_as_before():
    settings = load_settings(environ={})
    assert settings.REDIS_URL == "" and settings.REPLAY_FAIL_OPEN is False
    store = open_replay_store(settings.REPLAY_STORE_URL.replace("var/replay.db", ""), settings.REDIS_URL)
    assert isinstance(store, SqliteReplayStore)


def test_a_token_is_accepted_once_by_replicas_sharing_redis(redis_server):
    first, second = secured(REDIS_URL=redis_server.url), secured(REDIS_URL=redis_server.url)
    reused = token()
    assert call(first, reused).status_code == 200
    assert_401(call(second, reused))
    assert_401(call(first, reused))
    assert call(second, token()).status_code == 200


def test_concurrent_replays_through_redis_are_accepted_once_in_total(redis_server):
    apps = [secured(REDIS_URL=redis_server.url) for _ in range(3)]
    reused = token()
    barrier = threading.Barrier(9)

    def attempt(i: int) -> int:
        barrier.wait()
        return call(apps[i % 3], reused).status_code

    with ThreadPoolExecutor(9) as pool:
        statuses = list(pool.map(attempt, range(9)))
    assert sorted(statuses) == [200] + [401] * 8


def test_redis_keys_hold_no_jti_and_expire_with_the_token(redis_server):
    import redis

    store = open_replay_store("sqlite://", redis_server.url)
    assert isinstance(store, RedisReplayStore)
    jti = "a-jti-that-must-not-be-stored-as-is"
    assert store.first_use(f"{ISS}|{jti}", time.time() + 120)
    assert not store.first_use(f"{ISS}|{jti}", time.time() + 120)
    client = redis.Redis.from_url(redis_server.url)
    key = RedisReplayStore.PREFIX + hashlib.sha256(f"{ISS}|{jti}".encode()).hexdigest()
    # gone when the token would be refused as expired anyway, with CLOCK_MARGIN (5 s) for the replicas' clocks
    assert 120_000 < client.pttl(key) <= 125_000
    assert not [k for k in client.keys("*") if jti.encode() in k]
    assert store.first_use(f"{ISS}|expired", time.time() - 5)  # an entry lives at least a second, never forever
    assert 0 < client.pttl(RedisReplayStore.PREFIX + hashlib.sha256(f"{ISS}|expired".encode()).hexdigest()) <= 1000


def test_an_entry_outlives_the_token_by_the_leeway_and_a_margin_for_the_replicas_clocks(redis_server):
    """The service stores a jti until exp + leeway (when the token is refused as expired) on its own clock; a replica
    whose clock is behind by up to the leeway, plus 5 s, still finds it there."""
    import jwt
    import redis

    app = secured(REDIS_URL=redis_server.url, JWT_LEEWAY=30)
    bearer = token()
    claims = jwt.decode(bearer, options={"verify_signature": False})
    assert call(app, bearer).status_code == 200
    key = RedisReplayStore.PREFIX + hashlib.sha256(f"{ISS}|{claims['jti']}".encode()).hexdigest()
    left = redis.Redis.from_url(redis_server.url).pttl(key) / 1000
    expected = claims["exp"] + 30 - time.time() + 30 + 5  # exp + leeway, then the leeway and 5 s for other clocks
    assert expected - 2 < left <= expected + 1


def test_a_full_redis_refuses_the_write_and_the_token_gets_a_503_not_an_accept(tmp_path):
    """maxmemory-policy noeviction (docs/operations.md, "Deploying at scale"): when Redis is full it refuses writes
    (OOM), and the service fails closed; the jtis already stored are not evicted, so a replay is still refused."""
    import redis

    server = Redis(tmp_path, extra=("--maxmemory-policy", "noeviction"))
    try:
        app = secured(REDIS_URL=server.url)
        used = token()
        assert call(app, used).status_code == 200
        raw = redis.Redis.from_url(server.url)
        raw.config_set("maxmemory", raw.info("memory")["used_memory"] + 200_000)
        with pytest.raises(redis.exceptions.OutOfMemoryError):
            for i in range(100_000):
                raw.set(f"filler:{i}", "x" * 100)
        # Full for certain: freed client buffers could otherwise leave room for one more small key (a flaky pass)
        raw.config_set("maxmemory", max(1, raw.info("memory")["used_memory"] - 100_000))
        refused = call(app, token())
        assert refused.status_code == 503 and "replay" in refused.get_json()["issue"][0]["diagnostics"]
        assert call(app, used).status_code == 503  # a full Redis refuses every SET, even one that would not write
        raw.config_set("maxmemory", raw.info("memory")["used_memory"] + 1_000_000)  # room again
        assert_401(call(app, used))  # still remembered: nothing was evicted
        assert call(app, token()).status_code == 200
    finally:
        server.stop()


def test_redis_down_fails_closed_with_503_quickly(caplog):
    """Nothing listens on the port: the token is refused with 503 within the timeout, never accepted unchecked."""
    client = secured(REDIS_URL=f"redis://:secret-password@127.0.0.1:{free_port()}/0", REDIS_TIMEOUT=0.5)
    bearer = token()
    started = time.monotonic()
    with caplog.at_level(logging.INFO):
        response = call(client, bearer)
    assert response.status_code == 503 and time.monotonic() - started < 2
    assert "replay" in response.get_json()["issue"][0]["diagnostics"]
    assert "replay_store_unavailable" in caplog.text
    assert bearer not in caplog.text and "secret-password" not in caplog.text


def test_redis_down_with_fail_open_accepts_and_logs_it(caplog):
    client = secured(REDIS_URL=f"redis://127.0.0.1:{free_port()}/0", REDIS_TIMEOUT=0.5, REPLAY_FAIL_OPEN="on")
    bearer = token()
    with caplog.at_level(logging.WARNING):
        assert call(client, bearer).status_code == 200
    lines = [r.getMessage() for r in caplog.records if "fail_open" in r.getMessage()]
    assert len(lines) == 1 and json.loads(lines[0])["issuer"] == "https://ehr.example.org"
    assert bearer not in caplog.text


def test_a_redis_that_stops_and_comes_back(tmp_path):
    server = Redis(tmp_path)
    client = secured(REDIS_URL=server.url, REDIS_TIMEOUT=0.5)
    assert call(client, token()).status_code == 200
    server.stop()
    assert call(client, token()).status_code == 503
    server = Redis(tmp_path, port=server.port)
    try:
        assert call(client, token()).status_code == 200  # the same app: its pool connects again
    finally:
        server.stop()


@pytest.mark.parametrize("url", ["http://user:pw-secret@host/0", "postgresql://x:pw-secret@h/db"])
def test_a_url_that_is_not_redis_is_refused_at_start_without_repeating_it(url):
    with pytest.raises(SettingsError) as caught:
        load_settings({"REDIS_URL": url}, environ={})
    assert "REDIS_URL" in str(caught.value) and "pw-secret" not in str(caught.value)
