"""A flood of anonymous SMART launches cannot push out other clients' launches (issue 27, point 4).

Anyone can call ``/smart/launch``; 10,050 calls in 30 s once made a real user's callback fail ("unknown, expired or
already used"): past ``CDS_SMART_MAX_PENDING`` the oldest launches were forgotten, whoever had started them. Now one
client address (an IPv6 /64) holds at most a tenth of them, past which its own oldest go, and a full store forgets
the oldest launch of the client holding the most.
"""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

import pytest

from service.smart import store as launches
from service.smart import views
from tests.conftest import make_app

ISS = "https://ehr.example/fhir"


def test_one_client_holds_at_most_its_share_and_forgets_only_its_own():
    store = launches.LaunchStore("sqlite://", max_pending=50)  # a client may hold 5
    store.put("user", {"who": "user"}, 600, client="user")
    for i in range(500):
        store.put(f"flood{i}", {"i": i}, 600, client="attacker")
    assert store.take("user") == {"who": "user"}
    assert [store.take(f"flood{i}") is not None for i in range(490, 500)] == [False] * 5 + [True] * 5


def test_a_full_store_forgets_the_launches_of_the_client_holding_the_most():
    store = launches.LaunchStore("sqlite://", max_pending=50)
    store.put("user", {"who": "user"}, 600, client="user")
    for i in range(200):  # 40 addresses of one attacker, 5 launches each, then more
        store.put(f"flood{i}", {"i": i}, 600, client=f"attacker{i % 40}")
    assert store.take("user") == {"who": "user"}
    with store.engine.connect() as connection:
        assert connection.exec_driver_sql("SELECT count(*) FROM smart_launches").scalar_one() == 49


def test_clients_are_addresses_and_ipv6_hosts_their_64():
    assert launches.client_of("192.0.2.1") != launches.client_of("192.0.2.2")
    assert launches.client_of("2001:db8:1:2::1") == launches.client_of("2001:db8:1:2:ffff::9")
    assert launches.client_of("2001:db8:1:2::1") != launches.client_of("2001:db8:1:3::1")
    assert launches.client_of("::ffff:192.0.2.1") == launches.client_of("192.0.2.1")
    assert launches.client_of(None) == launches.client_of("not an address") == "unknown"
    assert "192.0.2.1" not in launches.client_of("192.0.2.1")  # a digest: no address is kept


@pytest.fixture
def smart(monkeypatch):
    monkeypatch.setattr(
        views.oauth,
        "discover",
        lambda iss, config: views.oauth.SmartConfiguration(
            "https://ehr.example/auth", "https://ehr.example/token", views.oauth.SCOPES_V2
        ),
    )
    return make_app(
        SMART_ISSUERS=ISS,
        PUBLIC_BASE_URL="https://cds.example.org",
        SMART_STATE_STORE_URL="sqlite://",
        SMART_MAX_PENDING=100,
    )


def _launch(app, address: str) -> str:
    response = app.client.get(f"/smart/launch?iss={ISS}&launch=l", environ_base={"REMOTE_ADDR": address})
    assert response.status_code == 302
    return parse_qs(urlsplit(response.headers["Location"]).query)["state"][0]


@pytest.mark.parametrize("flooder", ["198.51.100.7", "2001:db8:bad::{i:x}"])
def test_a_flood_of_launches_from_one_client_does_not_evict_a_users_launch(smart, flooder):
    state = _launch(smart, "192.0.2.10")
    for i in range(300):  # three times CDS_SMART_MAX_PENDING, from one address (or one IPv6 /64)
        _launch(smart, flooder.format(i=i))
    assert smart.app.extensions["smart_launches"].take(state) is not None


def test_a_launch_store_made_before_clients_were_counted_is_brought_up_to_date(tmp_path):
    import sqlite3

    with sqlite3.connect(tmp_path / "launch.db") as old:
        old.execute("CREATE TABLE smart_launches (key TEXT PRIMARY KEY, payload TEXT, expires_at REAL NOT NULL)")
        old.execute("INSERT INTO smart_launches VALUES ('k', '{}', 9e9)")
    store = launches.LaunchStore(f"sqlite:///{tmp_path}/launch.db")
    store.put("new", {"who": "user"}, 600, client="user")
    assert store.take("new") == {"who": "user"}
