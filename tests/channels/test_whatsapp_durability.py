"""An acknowledged webhook must survive a power loss (review F13): SQLite commits the inbound message with
``synchronous=FULL`` (an fsync of the WAL), while every other write keeps the cheaper NORMAL."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Engine

from models.db import durable_session_scope, session_scope
from tests.channels.test_whatsapp_service import make_world, text_payload
from tests.fakes.graph_server import FakeGraph


def synchronous(engine: Engine) -> int:
    with session_scope(engine) as session:
        value = session.connection().exec_driver_sql("PRAGMA synchronous").scalar()
    assert isinstance(value, int)
    return value


def test_a_durable_transaction_is_fsynced_and_the_connection_goes_back_as_it_came(sqlite_db: Engine) -> None:
    with durable_session_scope(sqlite_db) as session:
        assert session.connection().exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL
    assert synchronous(sqlite_db) == 1  # NORMAL, on the pooled connection too


async def test_the_webhook_commits_its_messages_with_full_sync(sqlite_db: Engine, graph: FakeGraph,
                                                               tmp_path: Path) -> None:
    statements: list[str] = []

    @event.listens_for(sqlite_db, "before_cursor_execute")
    def record(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        statements.append(" ".join(statement.split()).upper())

    world = await make_world(sqlite_db, graph, tmp_path)
    try:
        status, _body = await world.post(text_payload("wamid.durable", "Hello"))
        assert status == 200
        insert = next(i for i, s in enumerate(statements) if s.startswith("INSERT INTO INBOUND_MESSAGES"))
        pragmas = [s for s in statements[:insert] if s.startswith("PRAGMA SYNCHRONOUS")]
        assert pragmas and pragmas[-1] == "PRAGMA SYNCHRONOUS=FULL"
        await world.service.drain()
    finally:
        event.remove(sqlite_db, "before_cursor_execute", record)
        await world.service.close()
        await world.service.client.close()
        await world.api.client.close()
