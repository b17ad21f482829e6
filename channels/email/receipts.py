"""Claims on inbound e-mail (blocking functions on an open ``Session``; the service runs them in worker threads).

Every worker polling the inbox sees every unseen message; :func:`claim` decides which one answers it.  The row is
created with an insert that does nothing when the row already exists (so two workers inserting at once cannot
both win), and an existing row is taken over only by a conditional UPDATE whose WHERE says "still claimed and
the lease has run out" (so two workers updating at once cannot both win either).  A worker that fails releases
its claim; one that dies loses it when the lease ends.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

from sqlalchemy import and_, func, or_, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import CursorResult
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from models import EmailReceipt, utcnow

Claim = Literal["claimed", "busy", "done"]
"""claimed: this worker answers it | busy: another worker holds it | done: answered or settled already"""

FINAL = ("answered", "held")
"""Settled for good: answered, or set aside for a person by triage (stored; a copy is a duplicate)."""
WAITING = "waiting"
"""Over a rate limit: not final (the mail stays unseen and any worker claims it again once the limit allows)."""
COUNTED = ("claimed", "answered")
"""Receipts that count against the rate limits: answered, or being answered."""
Budget = Literal["known", "unknown"]


@dataclass(frozen=True)
class Key:
    sender: str
    message_id: str


def claim(session: Session, key: Key, owner: str, lease: timedelta, *, subject: str = "", text: str = "",
          now: datetime | None = None) -> Claim:
    """Claim the message for ``owner`` until ``now + lease``."""
    now = now or utcnow()
    until = now + lease
    values: dict[str, Any] = {"sender": key.sender[:320], "message_id": key.message_id[:255], "status": "claimed",
                              "claimed_by": owner, "lease_until": until, "subject": subject[:200], "text": text,
                              "received_at": now, "updated_at": now}
    dialect = session.get_bind().dialect.name
    if dialect in ("sqlite", "postgresql"):
        module: Any = sqlite if dialect == "sqlite" else postgresql
        inserted = session.execute(module.insert(EmailReceipt).values(**values).on_conflict_do_nothing(
            index_elements=["sender", "message_id"]))
        if _rowcount(inserted) == 1:
            return "claimed"
    else:  # portable, if slower: the unique constraint refuses the second insert
        try:
            with session.begin_nested():
                session.add(EmailReceipt(**values))
            return "claimed"
        except IntegrityError:
            pass  # it exists: try to take it over below
    taken = session.execute(
        update(EmailReceipt)
        .where(col(EmailReceipt.sender) == values["sender"], col(EmailReceipt.message_id) == values["message_id"],
               or_(col(EmailReceipt.status) == WAITING,
                   and_(col(EmailReceipt.status) == "claimed",
                        or_(col(EmailReceipt.lease_until).is_(None), col(EmailReceipt.lease_until) < now,
                            col(EmailReceipt.claimed_by) == owner))))
        .values(status="claimed", claimed_by=owner, lease_until=until, updated_at=now))
    if _rowcount(taken) == 1:
        return "claimed"
    status = session.exec(select(EmailReceipt.status).where(
        col(EmailReceipt.sender) == values["sender"], col(EmailReceipt.message_id) == values["message_id"])).first()
    return "done" if status in FINAL else "busy"


def renew(session: Session, key: Key, owner: str, lease: timedelta, *, now: datetime | None = None) -> bool:
    """Whether ``owner`` still holds its claim, extended to ``now + lease`` when it does.  Asked right before a
    reply is sent: a claim whose lease ran out while the reply was being made may have been taken over by another
    worker, which then answers (sending too would answer twice)."""
    now = now or utcnow()
    renewed = session.execute(
        update(EmailReceipt)
        .where(col(EmailReceipt.sender) == key.sender[:320], col(EmailReceipt.message_id) == key.message_id[:255],
               col(EmailReceipt.claimed_by) == owner, col(EmailReceipt.status) == "claimed")
        .values(lease_until=now + lease, updated_at=now))
    return _rowcount(renewed) == 1


def settle(session: Session, key: Key, owner: str, status: str, reason: str = "") -> None:
    """Record what became of a message this worker claimed (answered, waiting) and let the claim go."""
    session.execute(
        update(EmailReceipt)
        .where(col(EmailReceipt.sender) == key.sender[:320], col(EmailReceipt.message_id) == key.message_id[:255],
               col(EmailReceipt.claimed_by) == owner)
        .values(status=status, reason=reason[:64], claimed_by="", lease_until=None, updated_at=utcnow()))


def release(session: Session, key: Key, owner: str, reason: str = "") -> None:
    """Give up this worker's claim without settling (a failure: the next poll of any worker tries again)."""
    session.execute(
        update(EmailReceipt)
        .where(col(EmailReceipt.sender) == key.sender[:320], col(EmailReceipt.message_id) == key.message_id[:255],
               col(EmailReceipt.claimed_by) == owner, col(EmailReceipt.status) == "claimed")
        .values(claimed_by="", lease_until=None, reason=reason[:64], updated_at=utcnow()))


@dataclass(frozen=True)
class Usage:
    """What the hourly limits have spent, for one message about to be answered (itself not included)."""

    mine: int
    """Answered or being answered for this sender."""
    budget: Budget
    """The budget this sender's mail counts against: ``known`` when the sender was answered before the window."""
    spent: int
    """Answered or being answered from that budget."""


def usage(session: Session, key: Key, since: datetime) -> Usage:
    """The counts since ``since`` that decide whether ``key`` is answered now (by when each answer was given:
    mail that waited is counted in the hour it is answered, not the hour it came)."""
    sender = key.sender[:320]
    base = select(func.count()).select_from(EmailReceipt).where(
        col(EmailReceipt.status).in_(COUNTED), col(EmailReceipt.updated_at) >= since,
        ~and_(col(EmailReceipt.sender) == sender, col(EmailReceipt.message_id) == key.message_id[:255]))
    mine = session.exec(base.where(col(EmailReceipt.sender) == sender)).one()
    # Known: answered before this window.  An address answered only within it (an attacker's new one) is not, so
    # each address an attacker wants in the known budget first costs one answer from the unknown one, an hour ago.
    known = session.exec(select(EmailReceipt.id).where(
        col(EmailReceipt.sender) == sender, col(EmailReceipt.status) == "answered",
        col(EmailReceipt.updated_at) < since).limit(1)).first() is not None
    budget: Budget = "known" if known else "unknown"
    spent = session.exec(base.where(col(EmailReceipt.budget) == budget)).one()
    return Usage(int(mine), budget, int(spent))


def assign(session: Session, key: Key, owner: str, budget: Budget) -> None:
    """Count the message this worker claimed against ``budget``."""
    session.execute(
        update(EmailReceipt)
        .where(col(EmailReceipt.sender) == key.sender[:320], col(EmailReceipt.message_id) == key.message_id[:255],
               col(EmailReceipt.claimed_by) == owner)
        .values(budget=budget))


def _rowcount(result: Any) -> int:
    assert isinstance(result, CursorResult)  # INSERT and UPDATE give one
    return int(result.rowcount)
