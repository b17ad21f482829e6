"""Analytics for the console and for reports: per day and agent, per channel, and the questions agents could not
answer.  The numbers come from ``admin_api.analytics``."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from pydantic import Field
from sqlmodel import Session

from admin_api import analytics
from admin_api.framework import ApiRouter, Ctx
from admin_api.handlers.common import aware_utc
from admin_api.schemas import Id, Input, Output, Timestamp
from voicebot.errors import InvalidInput, PayloadTooLarge

router = ApiRouter("analytics")

MAX_DAYS = 92
DEFAULT_DAYS = 7
Channel = Literal["voice", "whatsapp", "email", "chat"]


class AnalyticsQuery(Input):
    since: datetime | None = None
    """Start of the window (ISO 8601; default: 7 days before ``until``)."""
    until: datetime | None = None
    """End of the window, exclusive (default: now)."""
    agent_id: Id | None = None
    channel: Channel | None = None


class UnansweredQuery(AnalyticsQuery):
    limit: int = Field(default=50, ge=1, le=500)


class ChannelDayOut(Output):
    day: str
    agent_id: int | None
    channel: str
    conversations: int
    messages: int
    sentiments: dict[str, int] = Field(default_factory=dict)
    """Contacts' messages by sentiment (negative, neutral, positive), those analysed so far."""
    categories: dict[str, int] = Field(default_factory=dict)
    """Contacts' messages by category, most frequent first."""


class CallDayOut(Output):
    day: str
    agent_id: int | None
    calls: int
    answered: int
    answer_rate: float | None
    transferred: int
    failed: int
    barge_ins: int
    avg_duration_s: float | None
    voice_to_voice_avg_ms: float | None
    """Caller's speech end → first reply audio frame sent, the mean over the day's timed turns (with
    ``turns_timed`` it pools exactly over days and agents)."""
    voice_to_voice_p50_ms: float | None
    """Caller's speech end → first reply audio frame sent, over the day's timed turns."""
    voice_to_voice_p95_ms: float | None
    turns_timed: int


class AnalyticsOut(Output):
    since: Timestamp
    until: Timestamp
    totals: dict[str, int]
    channels: list[ChannelDayOut]
    """Per UTC day, agent and channel."""
    calls: list[CallDayOut]
    """Per UTC day and agent."""


class UnansweredOut(Output):
    conversation_id: int
    message_id: int
    agent_id: int | None
    channel: str
    question: str
    reply: str
    at: Timestamp


class UnansweredPage(Output):
    items: list[UnansweredOut]
    total: int
    since: Timestamp
    until: Timestamp


def _window(query: AnalyticsQuery) -> tuple[datetime, datetime]:
    until = aware_utc(query.until) if query.until is not None else datetime.now(UTC)
    since = aware_utc(query.since) if query.since is not None else until - timedelta(days=DEFAULT_DAYS)
    if since >= until:
        raise InvalidInput("since must be before until", field="since")
    if until - since > timedelta(days=MAX_DAYS):
        raise InvalidInput(f"a window is at most {MAX_DAYS} days", field="since")
    return since, until


async def _read(ctx: Ctx, fn: Any) -> Any:
    try:
        return await ctx.services.db(fn)
    except analytics.TooMuch as exc:
        raise PayloadTooLarge(str(exc), code="analytics_window_too_large", field="since") from exc


@router.get("/analytics", role="viewer", errors=(413,),
            summary="Conversations, messages and calls per day, agent and channel, with latency percentiles")
async def get_analytics(ctx: Ctx, query: AnalyticsQuery) -> AnalyticsOut:
    since, until = _window(query)

    def load(session: Session) -> AnalyticsOut:
        channels = analytics.channel_days(session, since, until, query.agent_id, query.channel)
        calls = ([] if query.channel not in (None, "voice")
                 else analytics.call_days(session, since, until, query.agent_id))
        return AnalyticsOut(
            since=since, until=until, totals=analytics.totals(session, since, until),
            channels=[ChannelDayOut(day=c.day.isoformat(), agent_id=c.agent_id, channel=c.channel,
                                    conversations=c.conversations, messages=c.messages, sentiments=c.sentiments,
                                    categories=c.categories) for c in channels],
            calls=[CallDayOut.model_validate(c.summary()) for c in calls])

    result: AnalyticsOut = await _read(ctx, load)
    return result


@router.get("/analytics/unanswered", role="viewer", errors=(413,),
            summary="Questions the agents could not answer, newest first (what the knowledge base lacks)")
async def get_unanswered(ctx: Ctx, query: UnansweredQuery) -> UnansweredPage:
    since, until = _window(query)

    def load(session: Session) -> UnansweredPage:
        rows, total = analytics.unanswered(session, since, until, query.agent_id, query.channel, query.limit)
        return UnansweredPage(items=[UnansweredOut.model_validate(r, from_attributes=True) for r in rows],
                              total=total, since=since, until=until)

    result: UnansweredPage = await _read(ctx, load)
    return result
