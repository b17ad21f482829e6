"""Analytics over a time window, per day and agent: conversations and messages per channel (with the contacts'
messages by sentiment and category), calls (answer rate, duration, transfers, barge-ins, voice-to-voice latency
p50/p95), and the questions the agents could not answer.

Each report is read straight from the rows (no second bookkeeping that could drift from them): the database
groups what SQL groups portably (counts per day, agent, channel), and this module does the rest over the
window's call turns and replies (percentiles, "I don't know" replies), which are bounded by ``MAX_ROWS``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

from sqlalchemy import func
from sqlalchemy import select as sa_select
from sqlmodel import Session, col, select

from models import Call, CallTurn, Conversation, Message
from voicebot.agent.decisions import says_dont_know

MAX_ROWS = 200_000
"""Call turns and replies read for one report at most (a longer window is refused: ask for fewer days)."""


def percentile(values: Sequence[float], q: float) -> float | None:
    """The ``q`` quantile (0..1) by linear interpolation between closest ranks; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = q * (len(ordered) - 1)
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def _day(moment: datetime) -> date:
    return moment.date()  # stored as UTC: days are UTC days


@dataclass
class ChannelDay:
    day: date
    agent_id: int | None
    channel: str
    conversations: int = 0
    """Conversations started that day."""
    messages: int = 0
    """Messages written that day (both sides), in conversations of any age."""
    sentiments: dict[str, int] = field(default_factory=dict)
    """Contacts' messages of that day by sentiment (those analysed so far)."""
    categories: dict[str, int] = field(default_factory=dict)
    """Contacts' messages of that day by category, most frequent first."""


@dataclass
class CallDay:
    day: date
    agent_id: int | None
    calls: int = 0
    answered: int = 0
    transferred: int = 0
    failed: int = 0
    barge_ins: int = 0
    """Turns the caller interrupted."""
    durations: list[float] = field(default_factory=list, repr=False)
    latencies: list[float] = field(default_factory=list, repr=False)

    def summary(self) -> dict[str, Any]:
        return {
            "day": self.day.isoformat(), "agent_id": self.agent_id, "calls": self.calls, "answered": self.answered,
            "answer_rate": round(self.answered / self.calls, 4) if self.calls else None,
            "transferred": self.transferred, "failed": self.failed, "barge_ins": self.barge_ins,
            "avg_duration_s": round(sum(self.durations) / len(self.durations), 2) if self.durations else None,
            "voice_to_voice_avg_ms": _ms(sum(self.latencies) / len(self.latencies)) if self.latencies else None,
            "voice_to_voice_p50_ms": _ms(percentile(self.latencies, 0.5)),
            "voice_to_voice_p95_ms": _ms(percentile(self.latencies, 0.95)),
            "turns_timed": len(self.latencies),
        }


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


class TooMuch(Exception):
    """The window holds more rows than one report reads."""


def channel_days(session: Session, since: datetime, until: datetime, agent_id: int | None,
                 channel: str | None) -> list[ChannelDay]:
    conditions: list[Any] = []
    if agent_id is not None:
        conditions.append(col(Conversation.agent_id) == agent_id)
    if channel is not None:
        conditions.append(col(Conversation.channel) == channel)
    days: dict[tuple[date, int | None, str], ChannelDay] = {}

    def row(day: date, agent: int | None, chan: str) -> ChannelDay:
        return days.setdefault((day, agent, chan), ChannelDay(day, agent, chan))

    # Grouped by the day in Python (date functions differ between SQLite and PostgreSQL); the rows read are one
    # (started_at, agent, channel) per conversation or message, bounded below.
    started = session.exec(select(Conversation.started_at, Conversation.agent_id, Conversation.channel)
                           .where(col(Conversation.started_at) >= since, col(Conversation.started_at) < until,
                                  *conditions).limit(MAX_ROWS + 1)).all()
    _check(started)
    for at, agent, chan in started:
        row(_day(at), agent, chan).conversations += 1
    written = session.execute(sa_select(Message.created_at, Conversation.agent_id, Conversation.channel,  # type: ignore[call-overload]
                                        Message.role, Message.sentiment, Message.category)
                              .join(Conversation, col(Message.conversation_id) == col(Conversation.id))
                              .where(col(Message.created_at) >= since, col(Message.created_at) < until,
                                     col(Message.role).in_(("user", "assistant")), *conditions)
                              .limit(MAX_ROWS + 1)).all()
    _check(written)
    for at, agent, chan, role, sentiment, category in written:
        day = row(_day(at), agent, chan)
        day.messages += 1
        if role == "user" and sentiment:
            day.sentiments[sentiment] = day.sentiments.get(sentiment, 0) + 1
        if role == "user" and category:
            day.categories[category] = day.categories.get(category, 0) + 1
    for day in days.values():
        day.categories = dict(sorted(day.categories.items(), key=lambda item: (-item[1], item[0])))
    return sorted(days.values(), key=lambda d: (d.day, d.agent_id or 0, d.channel))


def call_days(session: Session, since: datetime, until: datetime, agent_id: int | None) -> list[CallDay]:
    conditions: list[Any] = [col(Call.started_at) >= since, col(Call.started_at) < until]
    if agent_id is not None:
        conditions.append(col(Call.agent_id) == agent_id)
    calls = session.exec(select(Call).where(*conditions).limit(MAX_ROWS + 1)).all()
    _check(calls)
    days: dict[tuple[date, int | None], CallDay] = {}
    by_call: dict[int, CallDay] = {}
    for call in calls:
        day = days.setdefault((_day(call.started_at), call.agent_id), CallDay(_day(call.started_at), call.agent_id))
        day.calls += 1
        if call.answered_at is not None:
            day.answered += 1
            if call.ended_at is not None:
                day.durations.append(max(0.0, (call.ended_at - call.answered_at).total_seconds()))
        day.transferred += call.outcome == "transferred"
        day.failed += call.outcome == "failed"
        if call.id is not None:
            by_call[call.id] = day
    if by_call:
        turns = session.exec(select(CallTurn.call_id, CallTurn.first_frame_out_ms, CallTurn.interrupted)
                             .where(col(CallTurn.call_id).in_(list(by_call)), col(CallTurn.kind) == "speech")
                             .limit(MAX_ROWS + 1)).all()
        _check(turns)
        for call_id, first_frame, interrupted in turns:
            day = by_call[call_id]
            day.barge_ins += bool(interrupted)
            if first_frame is not None:
                day.latencies.append(float(first_frame))
    return sorted(days.values(), key=lambda d: (d.day, d.agent_id or 0))


@dataclass(frozen=True)
class Unanswered:
    conversation_id: int
    message_id: int
    agent_id: int | None
    channel: str
    question: str
    reply: str
    at: datetime


def unanswered(session: Session, since: datetime, until: datetime, agent_id: int | None, channel: str | None,
               limit: int) -> tuple[list[Unanswered], int]:
    """Questions whose reply said the agent did not know (or was the fallback after a model failure), newest
    first: the designer's to-do list for the knowledge base.  Returns a page and the total."""
    conditions: list[Any] = [col(Message.role) == "assistant", col(Message.created_at) >= since,
                             col(Message.created_at) < until]
    if agent_id is not None:
        conditions.append(col(Conversation.agent_id) == agent_id)
    if channel is not None:
        conditions.append(col(Conversation.channel) == channel)
    replies = session.exec(select(Message, Conversation.agent_id, Conversation.channel)
                           .join(Conversation, col(Message.conversation_id) == col(Conversation.id))
                           .where(*conditions).order_by(col(Message.created_at).desc(), col(Message.id).desc())
                           .limit(MAX_ROWS + 1)).all()
    _check(replies)
    found = [(m, agent, chan) for m, agent, chan in replies
             if says_dont_know(m.text) or (m.timings or {}).get("error")]
    page = found[:limit]
    # The question is the user message just before each reply in its conversation.
    questions: dict[int, str] = {}
    for message, _agent, _chan in page:
        assert message.id is not None
        before = session.exec(select(Message.text).where(col(Message.conversation_id) == message.conversation_id,
                                                         col(Message.role) == "user",
                                                         col(Message.id) < message.id)
                              .order_by(col(Message.id).desc()).limit(1)).first()
        questions[message.id] = before or ""
    return [Unanswered(m.conversation_id, m.id or 0, agent, chan, questions.get(m.id or 0, ""), m.text,
                       m.created_at) for m, agent, chan in page], len(found)


def totals(session: Session, since: datetime, until: datetime) -> dict[str, int]:
    """Whole-window counts (the headline numbers)."""
    return {
        "conversations": int(session.exec(select(func.count()).select_from(Conversation).where(
            col(Conversation.started_at) >= since, col(Conversation.started_at) < until)).one()),
        "calls": int(session.exec(select(func.count()).select_from(Call).where(
            col(Call.started_at) >= since, col(Call.started_at) < until)).one()),
    }


def _check(rows: Sequence[Any]) -> None:
    if len(rows) > MAX_ROWS:
        raise TooMuch(f"the window holds more than {MAX_ROWS} rows; ask for fewer days")
