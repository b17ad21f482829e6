"""Upgrading a database that already holds data: every revision after the first keeps what was accepted.

A fresh database proves little about a migration: the 0002 upgrade once rebuilt `agents` (copy, drop, rename) and
SQLite, with the foreign keys Eva turns on, refused to drop a table that routes and conversations point at, so
every installation with an agent failed `eva setup` after the update.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from models.db import make_engine, upgrade

pytestmark = pytest.mark.db


@pytest.fixture(params=["sqlite", "postgresql"])
def first_revision(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    """A database at revision 0001, as Eva connects to it (SQLite foreign keys on)."""
    url = f"sqlite:///{tmp_path / 'eva.db'}" if request.param == "sqlite" else request.getfixturevalue("postgres_url")
    db = make_engine(url)
    upgrade(db, "0001")
    yield db
    db.dispose()


def _filler(column: sa.Column[Any]) -> Any:
    """A value for a required column of an old schema, whatever its type."""
    kind = column.type
    if isinstance(kind, sa.Boolean):
        return True
    if isinstance(kind, sa.Integer):
        return 1
    if isinstance(kind, sa.Float | sa.Numeric):
        return 0.5
    if isinstance(kind, sa.DateTime):
        return datetime.now(UTC).replace(tzinfo=None)
    if isinstance(kind, sa.JSON):
        return []
    return "x"


def _insert(connection: sa.Connection, table: sa.Table, **given: Any) -> int:
    row = {c.name: _filler(c) for c in table.columns
           if not c.nullable and not c.primary_key and c.server_default is None and c.name not in given}
    result = connection.execute(table.insert().values(**row, **given))
    key = result.inserted_primary_key
    assert key is not None
    return int(key[0])


def test_an_agent_with_routes_and_conversations_survives_every_upgrade(first_revision: Engine) -> None:
    meta = sa.MetaData()
    meta.reflect(first_revision, only=["agents", "routes", "conversations"])
    agents, routes, conversations = (meta.tables[n] for n in ("agents", "routes", "conversations"))
    with first_revision.begin() as connection:
        agent_id = _insert(connection, agents, name="front-desk", persona="You are the front desk.",
                           language="es")
        _insert(connection, routes, did="100", agent_id=agent_id)
        _insert(connection, conversations, channel="voice", agent_id=agent_id)

    upgrade(first_revision)  # to head: raised IntegrityError (FOREIGN KEY constraint failed) on SQLite before

    with first_revision.connect() as connection:
        agent = connection.execute(sa.text("SELECT name, persona, language, languages FROM agents")).one()
        route = connection.execute(sa.text("SELECT did, agent_id FROM routes")).one()
        conversation = connection.execute(sa.text("SELECT agent_id FROM conversations")).one()
    assert (agent.name, agent.persona, agent.language) == ("front-desk", "You are the front desk.", "es")
    assert agent.languages in ([], "[]")  # the agent keeps answering in its one language
    assert (route.did, route.agent_id) == ("100", agent_id)
    assert conversation.agent_id == agent_id


def test_campaign_tables_join_a_database_with_contacts_and_calls(first_revision: Engine) -> None:
    upgrade(first_revision, "0004")
    meta = sa.MetaData()
    meta.reflect(first_revision, only=["contacts", "calls"])
    with first_revision.begin() as connection:
        contact_id = _insert(connection, meta.tables["contacts"], phone="+34600000001")
        call_id = _insert(connection, meta.tables["calls"], channel_id="c-1", direction="outbound")

    upgrade(first_revision)  # 0005: new tables only

    meta = sa.MetaData()
    meta.reflect(first_revision, only=["campaigns", "campaign_entries", "campaign_attempts", "dnc_entries"])
    with first_revision.begin() as connection:
        campaign_id = _insert(connection, meta.tables["campaigns"], name="spring", rules={})
        entry_id = _insert(connection, meta.tables["campaign_entries"], campaign_id=campaign_id,
                           contact_id=contact_id, variables={})
        _insert(connection, meta.tables["campaign_attempts"], campaign_id=campaign_id, entry_id=entry_id,
                call_id=call_id, outcome="answered")
        _insert(connection, meta.tables["dnc_entries"], phone="+34600000002", campaign_id=None)
        contact = connection.execute(sa.text("SELECT phone FROM contacts")).one()
        entries = connection.execute(sa.text("SELECT contact_id FROM campaign_entries")).all()
    assert contact.phone == "+34600000001" and [e.contact_id for e in entries] == [contact_id]
