"""SQLite settings shared by the stores: a busy timeout, WAL, and the durability each store asks for."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from typing import Any


def pragmas(synchronous: str, busy_seconds: float = 5.0) -> Callable[[Any, Any], None]:
    """A SQLAlchemy ``connect`` listener: ``event.listen(engine, "connect", pragmas("FULL"))``. ``busy_seconds``:
    how long a statement waits for another connection's lock before it fails."""

    def on_connect(connection: Any, _record: Any) -> None:
        cursor = connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout={round(busy_seconds * 1000)}")  # first: what follows may wait
        _wal(cursor)
        cursor.execute(f"PRAGMA synchronous={synchronous}")
        cursor.close()

    return on_connect


def _wal(cursor: Any, seconds: float = 5.0) -> None:
    """Switch the file to WAL (it stays so: only a fresh file changes). SQLite does not wait on its busy timeout
    for this switch, so when several processes open a fresh file at once, the ones that lose try again shortly."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.02)
