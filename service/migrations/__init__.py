"""The feedback store's schema under Alembic: ``alp-cds migrate`` (or the service itself at start, with
``CDS_FEEDBACK_DB_MIGRATE`` on) brings it to this code's version; a schema newer than this code knows is refused.

Revisions live in ``versions/``; the first (``0001``) is the schema that ``create_all`` made before migrations
existed, so a store made then is stamped with it and keeps every row. Every step runs in the caller's transaction,
under the caller's lock (SQLite's write lock, PostgreSQL's advisory lock: service/feedback.py), so replicas and
workers starting together migrate once and the others find the schema done.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import inspect
from sqlalchemy.engine import Connection
from sqlalchemy.exc import SQLAlchemyError

BASELINE = "0001"  # the schema create_all made before migrations existed
HEAD = "0003"  # this code's newest revision (a test holds it equal to the head of versions/)

if TYPE_CHECKING:
    from alembic.config import Config
    from alembic.script import ScriptDirectory


class SchemaTooNew(SQLAlchemyError):
    """The store's schema is of a later version than this code knows: a newer release migrated it."""


class SchemaNotMigrated(SQLAlchemyError):
    """The store's schema is older than this code's (or missing), and migrating is left to ``alp-cds migrate``."""


def config(connection: Connection | None = None) -> Config:
    from alembic.config import Config  # Alembic only when a schema is to be migrated: every worker checks, few migrate

    cfg = Config()
    cfg.set_main_option("script_location", str(Path(__file__).parent))
    cfg.attributes["connection"] = connection
    return cfg


@functools.cache
def scripts() -> ScriptDirectory:
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(config())


def head() -> str:
    return HEAD


def stamped(connection: Connection) -> str | None:
    """The revision recorded in the store (Alembic's table, read without Alembic); None for an empty store or one
    made by create_all."""
    if not inspect(connection).has_table("alembic_version"):
        return None
    rows = connection.exec_driver_sql("SELECT version_num FROM alembic_version").fetchall()
    if len(rows) > 1:
        raise SQLAlchemyError("the feedback store records more than one schema revision")
    return rows[0][0] if rows else None


def ensure(connection: Connection, upgrade: bool) -> tuple[str | None, str]:
    """Check the store's schema against this code's and, with ``upgrade``, migrate it (in ``connection``'s
    transaction). Returns (revision found, revision now); a store made by create_all before migrations existed is
    found at the baseline. Raises SchemaTooNew, or SchemaNotMigrated when the schema is behind (or not stamped) and
    ``upgrade`` is off."""
    recorded = stamped(connection)
    if recorded == head():
        return recorded, recorded
    found = recorded
    if recorded is None and inspect(connection).has_table("feedback"):
        found = BASELINE  # made by create_all: the tables are there, with their rows
    from alembic import command
    from alembic.util import CommandError

    if found is not None:
        try:
            scripts().get_revision(found)
        except CommandError:
            raise SchemaTooNew(
                f"the feedback store's schema is at revision {found!r}, which this release does not know (its newest "
                f"is {head()!r}): a newer release migrated it"
            ) from None
    if not upgrade:
        if found is None:
            raise SchemaNotMigrated("the feedback store has no schema yet: run alp-cds migrate")
        if recorded is None:
            raise SchemaNotMigrated(
                f"the feedback store was made before migrations (the tables of revision {found!r}, not stamped): run "
                "alp-cds migrate, which stamps it and keeps its rows"
            )
        raise SchemaNotMigrated(f"the feedback store's schema is at {found!r}, not {head()!r}: run alp-cds migrate")
    cfg = config(connection)
    if recorded is None and found == BASELINE:
        command.stamp(cfg, BASELINE)
    command.upgrade(cfg, "head")
    return found, head()
