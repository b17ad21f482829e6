"""Claims on inbound e-mail (channels/email/receipts.py) on SQLite and PostgreSQL: one worker wins, a lease
that ran out can be taken over, a settled message is done, the key includes the sender."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy.engine import Engine

from channels.email import receipts
from models import utcnow
from models.db import session_scope

LEASE = timedelta(minutes=30)


def claim(engine: Engine, key: receipts.Key, owner: str, *, text: str = "",
          now: datetime | None = None) -> receipts.Claim:
    with session_scope(engine) as session:
        return receipts.claim(session, key, owner, LEASE, text=text, now=now)


def test_one_worker_claims_and_the_others_wait_until_it_settles_or_its_lease_ends(any_db: Engine) -> None:
    key = receipts.Key("ada@example.org", "<m1@example.org>")
    assert claim(any_db, key, "a", text="Hello") == "claimed"
    assert claim(any_db, key, "b") == "busy"
    assert claim(any_db, key, "a") == "claimed"  # the holder may renew its own claim
    with session_scope(any_db) as session:
        receipts.release(session, key, "a", "smtp_unavailable")
    assert claim(any_db, key, "b") == "claimed"  # released: anyone may try again
    later = utcnow() + LEASE + timedelta(seconds=1)
    assert claim(any_db, key, "c", now=later) == "claimed"  # b died: its lease ran out
    assert claim(any_db, key, "b", now=later) == "busy"
    with session_scope(any_db) as session:
        receipts.settle(session, key, "c", "answered")
    assert claim(any_db, key, "b", now=later) == "done"
    other = receipts.Key("mallory@example.net", "<m1@example.org>")  # the same Message-ID from someone else
    assert claim(any_db, other, "b") == "claimed"
    hour = utcnow() - timedelta(hours=1)
    ada_again = receipts.Key("ada@example.org", "<m2@example.org>")
    with session_scope(any_db) as session:
        assert receipts.usage(session, other, hour) == receipts.Usage(mine=0, budget="unknown", spent=0)
        receipts.assign(session, other, "b", "unknown")
        assert receipts.usage(session, ada_again, hour) == receipts.Usage(mine=1, budget="unknown", spent=1)
        # Answered before the window: a known sender, counted in the other budget.
        assert receipts.usage(session, ada_again, utcnow() + timedelta(hours=1)).budget == "known"
        receipts.settle(session, other, "b", receipts.WAITING, "email_rate_limited")
        assert receipts.usage(session, ada_again, hour).spent == 0  # waiting mail is not counted
    assert claim(any_db, other, "c") == "claimed"  # ... and is claimed again by the next poll
    assert claim(any_db, other, "d") == "busy"


def test_a_worker_whose_claim_was_taken_over_learns_it_before_sending(any_db: Engine) -> None:
    key = receipts.Key("ada@example.org", "<slow@example.org>")
    start = utcnow()
    assert claim(any_db, key, "slow", now=start) == "claimed"
    with session_scope(any_db) as session:
        assert receipts.renew(session, key, "slow", LEASE, now=start + timedelta(minutes=20))  # still its own
    # Its reply took longer than the renewed lease: another worker takes the mail over ...
    later = start + timedelta(minutes=20) + LEASE + timedelta(seconds=1)
    assert claim(any_db, key, "fast", now=later) == "claimed"
    with session_scope(any_db) as session:
        # ... so the slow one must not send, and the new holder may.
        assert not receipts.renew(session, key, "slow", LEASE, now=later)
        assert receipts.renew(session, key, "fast", LEASE, now=later)
        receipts.settle(session, key, "fast", "answered")
        assert not receipts.renew(session, key, "fast", LEASE)  # settled: nobody holds it any more
