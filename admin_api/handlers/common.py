"""Small helpers shared by the handlers."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TypeVar

from sqlalchemy import func
from sqlmodel import Session, SQLModel, col, select
from sqlmodel.sql.expression import SelectOfScalar

from admin_api.framework import Ctx
from admin_api.schemas import MessageOut, MessagePage, Pagination
from models import FlowRun, Message
from voicebot.errors import NotFound

M = TypeVar("M", bound=SQLModel)


async def get_row(ctx: Ctx, model: type[M], row_id: int, what: str) -> M:
    """The row or NotFound (``what`` names it in the message and the field)."""

    def load(session: Session) -> M | None:
        return session.get(model, row_id)

    row = await ctx.services.db(load)
    if row is None:
        raise NotFound(f"{what} {row_id} does not exist", field=f"{what}_id")
    return row


def paginate(session: Session, query: SelectOfScalar[M], page: Pagination) -> tuple[list[M], int]:
    """One page of ``query`` (already ordered) and the number of rows the whole query matches."""
    total = session.exec(select(func.count()).select_from(query.order_by(None).subquery())).one()
    rows = session.exec(query.offset(page.offset).limit(page.limit)).all()
    return list(rows), int(total)


async def message_page(ctx: Ctx, conversation_id: int, page: Pagination) -> MessagePage:
    """A conversation's messages, oldest first (the conversation is known to exist)."""

    def load(session: Session) -> tuple[list[Message], int]:
        query = (select(Message).where(col(Message.conversation_id) == conversation_id)
                 .order_by(col(Message.created_at), col(Message.id)))
        return paginate(session, query, page)

    rows, total = await ctx.services.db(load)
    return MessagePage(items=[MessageOut.model_validate(r) for r in rows], total=total, limit=page.limit,
                       offset=page.offset)


def aware_utc(value: datetime) -> datetime:
    """A query bound as the database columns want it: timezone-aware UTC (a naive input is taken as UTC)."""
    return value.astimezone(UTC) if value.tzinfo is not None else value.replace(tzinfo=UTC)


async def flow_runs_of(ctx: Ctx, *, call_id: int | None = None, conversation_id: int | None = None) -> list[FlowRun]:
    """The flow runs of a call or a conversation, oldest first (what each collected, where it ended)."""

    def load(session: Session) -> list[FlowRun]:
        query = select(FlowRun)
        if call_id is not None:
            query = query.where(FlowRun.call_id == call_id)
        if conversation_id is not None:
            query = query.where(FlowRun.conversation_id == conversation_id)
        return list(session.exec(query.order_by(col(FlowRun.id)).limit(100)).all())

    result: list[FlowRun] = await ctx.services.db(load)
    return result
