"""Call rows on real databases (SQLite and the session's real PostgreSQL): what a SIP peer controls cannot
stop a call being recorded, and a channel's later Stasis sessions never rewrite its earlier rows."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy.engine import Engine
from sqlmodel import select

from models import Call, SipTrunk
from models.db import make_engine, session_scope, upgrade
from voicebot.calls import store as calls


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('calls') / 'eva.db'}"
    else:
        url = request.getfixturevalue("postgres_url")
    engine = make_engine(url)
    upgrade(engine)
    try:
        yield engine
    finally:
        engine.dispose()


def test_over_long_caller_id_and_did_are_cut_not_fatal(engine: Engine) -> None:
    # Review L8: caller and did are VARCHAR(64); PostgreSQL refuses longer values and the call was never answered.
    caller = "+1" + "5" * 300
    did = "1" * 500
    call_id, generation = calls.create_call(engine, channel_id="1700000000.1", caller=caller, did=did,
                                            agent_id=None)
    with session_scope(engine) as session:
        row = session.get(Call, call_id)
        assert row is not None and generation == 0
        assert row.caller == caller[:64] and row.did == did[:64]


def test_a_channel_back_in_stasis_gets_a_new_row_and_the_first_keeps_its_outcome(engine: Engine) -> None:
    # Review F9: UNIQUE(channel_id) made the second session fail, and its teardown closed the *first* row.
    first, g0 = calls.create_call(engine, channel_id="1700000000.2", caller="caller", did="100", agent_id=None)
    calls.end_call(engine, first, outcome="transferred")
    with session_scope(engine) as session:
        started = session.get(Call, first)
        assert started is not None
        after = started.started_at
    second, g1 = calls.create_call(engine, channel_id="1700000000.2", caller="caller", did="700", agent_id=None)
    assert (g0, g1) == (0, 1) and second != first
    # The second session hung up before its id was known: only its own row is closed.
    calls.end_call_by_channel(engine, "1700000000.2", outcome="failed", after=after)
    with session_scope(engine) as session:
        rows = {r.generation: r for r in session.exec(select(Call).where(Call.channel_id == "1700000000.2"))}
    assert rows[0].outcome == "transferred"
    assert rows[1].outcome == "failed" and rows[1].ended_at is not None


def test_only_an_enabled_trunk_marked_verified_vouches_for_caller_id(engine: Engine) -> None:
    with session_scope(engine) as session:
        session.add(SipTrunk(name="attested", host="192.0.2.1", verified_caller_id=True))
        session.add(SipTrunk(name="plain", host="192.0.2.2"))
        session.add(SipTrunk(name="off", host="192.0.2.3", verified_caller_id=True, enabled=False))
    assert calls.caller_id_verified(engine, "trunk-attested")
    assert not calls.caller_id_verified(engine, "trunk-plain")
    assert not calls.caller_id_verified(engine, "trunk-off")
    assert not calls.caller_id_verified(engine, "carrier")  # the local carrier: whatever the caller claims
    assert not calls.caller_id_verified(engine, "attested")  # only the trunk-<name> endpoint
    assert not calls.caller_id_verified(engine, "")
