"""The feedback schema under Alembic: ``alp-cds migrate``, the check at start, and no stored row ever lost."""

from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine, insert, select, text

from service import cli, migrations
from service.app import create_app
from service.hook_requests import NOW
from service.migrations import SchemaTooNew
from service.migrations.schema import feedback, issued_cards, metadata
from tests.conftest import PV, CheckedClient, postgres_url

ITEM = {
    "card": "a-card",
    "outcome": "accepted",
    "acceptedSuggestions": [{"id": "s-1"}],
    "outcomeTimestamp": "2026-01-02T03:04:05Z",
}


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_store(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/feedback.db"
    url = postgres_url()
    with engine_of(url).begin() as connection:
        connection.execute(text("DROP TABLE IF EXISTS feedback, issued_cards, alembic_version"))
    return url


def engine_of(url: str):
    return create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1))


def create_as_before_migrations(url: str) -> None:
    """The tables as create_all made them before migrations existed: the baseline revision's, not stamped."""
    from alembic import command

    with engine_of(url).begin() as connection:
        command.upgrade(migrations.config(connection), migrations.BASELINE)
        connection.execute(text("DROP TABLE alembic_version"))


def app_on(url: str, **settings) -> CheckedClient:
    overrides = {"NOW": lambda: NOW, "AUTH": "off", "LOG_LEVEL": "WARNING", "FEEDBACK_DB_URL": url, **settings}
    return CheckedClient(create_app(overrides))


def post(client: CheckedClient, card: str = "a-card"):
    return client.client.post(f"/cds-services/{PV}/feedback", json={"feedback": [{**ITEM, "card": card}]})


def test_the_migrated_schema_is_the_one_the_code_uses(empty_store):
    assert cli.main(["migrate", "--db", empty_store]) == 0
    with engine_of(empty_store).connect() as connection:
        assert MigrationContext.configure(connection).get_current_revision() == migrations.head()
        differences = compare_metadata(MigrationContext.configure(connection), metadata)
    assert differences == []


def test_migrate_is_idempotent_and_check_tells_current_from_behind(empty_store, capsys):
    assert cli.main(["migrate", "--db", empty_store, "--check"]) == 1
    assert "run alp-cds migrate" in capsys.readouterr().err
    assert cli.main(["migrate", "--db", empty_store]) == 0
    assert cli.main(["migrate", "--db", empty_store]) == 0
    assert cli.main(["migrate", "--db", empty_store, "--check"]) == 0


def test_a_store_made_before_migrations_keeps_every_row(empty_store):
    """The tables as create_all made them, with feedback in them: migrating stamps them as the first revision."""
    engine = engine_of(empty_store)
    create_as_before_migrations(empty_store)
    with engine.begin() as connection:
        connection.execute(
            insert(feedback),
            [
                {
                    "service_id": PV,
                    "card_uuid": f"old-{i}",
                    "outcome": "overridden",
                    "outcome_timestamp": "2025-01-01T00:00:00Z",
                    "received_at": NOW,
                }
                for i in range(3)
            ],
        )
        connection.execute(  # the columns of revision 0001 only
            text(
                "INSERT INTO issued_cards (uuid, service_id, kind, indicator, issued_at) "
                "VALUES ('old-0', :service, 'alp-low-single', 'info', :at)"
            ),
            {"service": PV, "at": NOW},
        )
    client = app_on(empty_store)  # the service migrates at start by default
    assert post(client, "new").status_code == 200
    with engine.connect() as connection:
        cards = connection.execute(select(feedback.c.card_uuid).order_by(feedback.c.id)).scalars().all()
        issued = connection.execute(select(issued_cards)).mappings().all()
        assert MigrationContext.configure(connection).get_current_revision() == migrations.head()
    assert cards == ["old-0", "old-1", "old-2", "new"]
    # The issued card is kept; what revision 0002 added is empty for it (no patient hash was ever made for it).
    assert [(r["uuid"], r["kind"], r["patient_hash"], r["suggestions"]) for r in issued] == [
        ("old-0", "alp-low-single", None, None)
    ]


def test_a_schema_newer_than_the_code_refuses_the_start(empty_store, capsys):
    assert cli.main(["migrate", "--db", empty_store]) == 0
    with engine_of(empty_store).begin() as connection:
        connection.execute(text("UPDATE alembic_version SET version_num = '9999_from_a_later_release'"))
    with pytest.raises(SchemaTooNew, match="9999_from_a_later_release"):
        app_on(empty_store)
    with pytest.raises(SchemaTooNew):
        app_on(empty_store, FEEDBACK_DB_MIGRATE="off")
    assert cli.main(["migrate", "--db", empty_store]) == 2
    assert "does not know" in capsys.readouterr().err


def test_with_migrating_off_a_schema_behind_is_503_until_migrated(empty_store):
    client = app_on(empty_store, FEEDBACK_DB_MIGRATE="off")
    ready = client.client.get("/readyz")
    assert ready.status_code == 503 and ready.get_json()["feedback_store"] == "SchemaNotMigrated"
    assert post(client).status_code == 503
    assert client.hook(PV, {"hook": "patient-view"}).status_code == 400  # hooks still answer
    assert cli.main(["migrate", "--db", empty_store]) == 0
    assert client.client.get("/readyz").status_code == 200
    assert post(client).status_code == 200


def test_by_default_the_service_migrates_a_fresh_store_itself(tmp_path):
    url = f"sqlite:///{tmp_path}/feedback.db"
    client = app_on(url)
    assert post(client).status_code == 200
    with engine_of(url).connect() as connection:
        assert MigrationContext.configure(connection).get_current_revision() == migrations.head()


def test_migrate_never_prints_the_store_url(capsys):
    assert cli.main(["migrate", "--db", "postgresql://user:pw-secret@127.0.0.1:1/db"]) == 3  # unreachable
    captured = capsys.readouterr()
    assert "pw-secret" not in captured.out + captured.err and "cannot be reached" in captured.err
    assert cli.main(["migrate", "--check", "--db", "postgresql://user:pw-secret@127.0.0.1:1/db"]) == 3


def test_check_says_a_store_made_before_migrations_is_so_and_behind_is_not_unreachable(empty_store, capsys):
    create_as_before_migrations(empty_store)
    assert cli.main(["migrate", "--db", empty_store, "--check"]) == 1  # behind: 1, unreachable: 3
    message = capsys.readouterr().err
    assert "made before migrations" in message and "not '0001'" not in message
    assert cli.main(["migrate", "--db", empty_store]) == 0
    assert cli.main(["migrate", "--db", empty_store, "--check"]) == 0


def test_check_on_a_sqlite_path_that_does_not_exist_creates_nothing(tmp_path, capsys):
    missing = tmp_path / "no-such-folder" / "feedback.db"
    assert cli.main(["migrate", "--db", f"sqlite:///{missing}", "--check"]) == 1
    assert "no feedback store" in capsys.readouterr().err
    assert not missing.parent.exists()


def test_a_migration_slower_than_the_feedback_timeout_runs_under_its_own(empty_store, monkeypatch, capsys):
    """The service's operations end after CDS_FEEDBACK_DB_TIMEOUT (1 s here); a migration has CDS_MIGRATE_TIMEOUT
    (or --timeout). It waits here for another session's schema lock: 2 s is fine, past its own timeout it says so,
    not "cannot be reached"."""
    import threading
    import time

    from service.feedback import SCHEMA_LOCK

    if not empty_store.startswith("postgresql"):
        pytest.skip("PostgreSQL's lock: SQLite's busy wait is the same timeout")
    monkeypatch.setenv("CDS_FEEDBACK_DB_TIMEOUT", "1")

    def hold_the_lock(seconds: float, taken: threading.Event) -> None:
        with engine_of(empty_store).begin() as connection:
            connection.execute(text(f"SELECT pg_advisory_xact_lock({SCHEMA_LOCK})"))
            taken.set()
            time.sleep(seconds)

    taken = threading.Event()
    holder = threading.Thread(target=hold_the_lock, args=(2, taken))
    holder.start()
    taken.wait(10)
    started = time.monotonic()
    assert cli.main(["migrate", "--db", empty_store, "--timeout", "10"]) == 0
    assert time.monotonic() - started >= 1.5
    holder.join()

    assert cli.main(["migrate", "--db", empty_store, "--check"]) == 0
    with engine_of(empty_store).begin() as connection:
        connection.execute(text("DROP TABLE feedback, issued_cards, alembic_version"))
    capsys.readouterr()
    taken = threading.Event()
    holder = threading.Thread(target=hold_the_lock, args=(4, taken))
    holder.start()
    taken.wait(10)
    assert cli.main(["migrate", "--db", empty_store, "--timeout", "1.5"]) == 4
    holder.join()
    message = capsys.readouterr().err
    assert "did not finish within its timeout of 1.5 s" in message and "cannot be reached" not in message


def test_the_head_the_workers_check_without_alembic_is_the_head_of_the_versions_folder():
    """Workers compare the stored revision with migrations.HEAD (Alembic is imported only to migrate): the constant
    must follow every new revision."""
    from service import migrations

    assert migrations.scripts().get_current_head() == migrations.HEAD


def test_a_worker_on_a_current_store_does_not_import_alembic(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    url = f"sqlite:///{tmp_path}/fb.db"
    code = (
        f"import sys; from service.feedback import FeedbackStore; FeedbackStore({url!r}); "
        f"s = FeedbackStore({url!r}); s.ping(); print('alembic' in sys.modules)"
    )
    first = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=root)
    assert first.stdout.strip().endswith("True")  # the first start migrated the new store
    again = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=root)
    assert again.stdout.strip().endswith("False"), again.stdout
