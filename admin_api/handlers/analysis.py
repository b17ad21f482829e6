"""Message analysis for admins: the categories the model sorts contacts' messages into (with their e-mail triage
rules), the analysis worker's progress, and the conversations triage set aside for a person.

The analysis itself runs in the background (``voicebot.analysis``); each message's result is on its ``sentiment``
and ``category`` fields, and the analytics report counts them per day, agent and channel.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field, StringConstraints
from sqlalchemy import func
from sqlmodel import Session, col, select

from admin_api.framework import ApiRouter, Ctx
from admin_api.handlers.common import changed, get_row, paginate, row_or_404, saved
from admin_api.schemas import ConversationOut, ConversationPage, Id, Input, Output, Pagination, Timestamp, optional
from models import Agent, Category, Conversation, Message
from voicebot.analysis.classifier import OTHER
from voicebot.errors import Conflict, InvalidInput

router = ApiRouter("analysis")

MAX_CATEGORIES = 30
"""More would not fit the small model's prompt, nor help it choose."""
CategoryName = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_-]{0,39}$")]
"""A lower-case word: it is what the model answers with."""


class CategoryIn(Input):
    name: CategoryName
    description: str = Field(default="", max_length=500)
    """What belongs in it, in a phrase: the model reads it to decide."""
    route_agent_id: Id | None = None
    """E-mail triage: mail in this category is answered by this agent."""
    needs_human: bool = False
    """E-mail triage: mail in this category gets no automatic answer; its conversation waits for a person."""


class CategoryUpdate(Input):
    name: CategoryName = optional()
    description: str = optional(max_length=500)
    route_agent_id: Id | None = None
    """An agent, or null for none (leaving it out keeps it)."""
    needs_human: bool = optional()


class CategoryOut(Output):
    id: int
    name: str
    description: str
    route_agent_id: int | None
    needs_human: bool
    created_at: Timestamp
    updated_at: Timestamp


class AnalysisStatusOut(Output):
    enabled: bool
    """The worker runs in this process (``EVA_ANALYSIS`` and a language model)."""
    categories: int
    messages: dict[str, int]
    """Contacts' messages by analysis state: ``waiting`` (not yet), ``claimed``, ``done``, ``failed``."""
    sentiments: dict[str, int]
    """Analysed messages by sentiment."""


def _check(session: Session, fields: dict[str, Any], other_than: int | None = None) -> None:
    name = fields.get("name")
    if name == OTHER:
        raise InvalidInput(f"{OTHER!r} is built in: the model answers it when no category fits", field="name")
    if name is not None:
        query = select(Category.id).where(Category.name == name)
        if other_than is not None:
            query = query.where(col(Category.id) != other_than)
        if session.exec(query).first() is not None:
            raise Conflict(f"a category named {name!r} exists", field="name", code="category_exists")
    agent_id = fields.get("route_agent_id")
    if agent_id is not None:
        agent = session.get(Agent, agent_id)
        if agent is None:
            raise InvalidInput(f"agent {agent_id} does not exist", field="route_agent_id")
        if not agent.active:  # triage skips inactive agents: the rule would silently do nothing
            raise InvalidInput(f"agent {agent.name!r} is inactive", code="agent_inactive", field="route_agent_id")
    if fields.get("route_agent_id") is not None and fields.get("needs_human"):
        raise InvalidInput("a category either routes to an agent or waits for a person, not both",
                           field="needs_human")


@router.get("/analysis/categories", role="viewer", summary="The categories contacts' messages are sorted into")
async def list_categories(ctx: Ctx) -> list[CategoryOut]:
    rows = await ctx.services.db(lambda s: list(s.exec(select(Category).order_by(col(Category.name)))))
    return [CategoryOut.model_validate(r) for r in rows]


@router.post("/analysis/categories", role="designer", status=201, errors=(409,),
             summary="Add a category (and its e-mail triage rule)")
async def create_category(ctx: Ctx, body: CategoryIn) -> CategoryOut:
    fields = body.model_dump()

    def create(session: Session) -> Category:
        _check(session, fields)
        if int(session.exec(select(func.count()).select_from(Category)).one()) >= MAX_CATEGORIES:
            raise Conflict(f"at most {MAX_CATEGORIES} categories", code="too_many_categories")
        return saved(session, Category(**fields))

    return CategoryOut.model_validate(await ctx.services.db(create))


@router.get("/analysis/categories/{category_id}", role="viewer", summary="A category")
async def get_category(ctx: Ctx, category_id: int) -> CategoryOut:
    return CategoryOut.model_validate(await get_row(ctx, Category, category_id, "category"))


@router.patch("/analysis/categories/{category_id}", role="designer", errors=(409,), summary="Change a category")
async def update_category(ctx: Ctx, category_id: int, body: CategoryUpdate) -> CategoryOut:
    changes = body.model_dump(exclude_unset=True)

    def change(session: Session) -> Category:
        row = row_or_404(session, Category, category_id, "category")
        merged = {"route_agent_id": row.route_agent_id, "needs_human": row.needs_human, **changes}
        _check(session, merged, other_than=category_id)
        return changed(session, row, changes)

    return CategoryOut.model_validate(await ctx.services.db(change))


@router.delete("/analysis/categories/{category_id}", role="designer",
               summary="Delete a category (messages already in it keep the name)")
async def delete_category(ctx: Ctx, category_id: int) -> None:
    def delete(session: Session) -> None:
        session.delete(row_or_404(session, Category, category_id, "category"))

    await ctx.services.db(delete)


@router.get("/analysis/status", role="viewer", summary="How far the analysis of contacts' messages is")
async def analysis_status(ctx: Ctx) -> AnalysisStatusOut:
    def load(session: Session) -> AnalysisStatusOut:
        by_status = session.exec(select(Message.analysis_status, func.count())
                                 .where(col(Message.role) == "user", col(Message.text) != "")
                                 .group_by(col(Message.analysis_status))).all()
        by_sentiment = session.exec(select(Message.sentiment, func.count())
                                    .where(col(Message.analysis_status) == "done")
                                    .group_by(col(Message.sentiment))).all()
        return AnalysisStatusOut(
            enabled=ctx.services.settings.analysis and ctx.services.llm is not None,
            categories=int(session.exec(select(func.count()).select_from(Category)).one()),
            messages={(status or "waiting"): int(n) for status, n in by_status},
            sentiments={str(sentiment): int(n) for sentiment, n in by_sentiment if sentiment})

    return await ctx.services.db(load)


@router.get("/triage/conversations", role="viewer",
            summary="Conversations e-mail triage set aside for a person, most recent first")
async def waiting_for_a_person(ctx: Ctx, query: Pagination) -> ConversationPage:
    def load(session: Session) -> tuple[list[Conversation], int]:
        return paginate(session, select(Conversation).where(col(Conversation.needs_human).is_(True))
                        .order_by(col(Conversation.updated_at).desc(), col(Conversation.id).desc()), query)

    rows, total = await ctx.services.db(load)
    return ConversationPage(items=[ConversationOut.model_validate(r) for r in rows], total=total, limit=query.limit,
                            offset=query.offset)


@router.post("/triage/conversations/{conversation_id}/release", role="designer",
             summary="A person has taken care of it: the agent answers new mail in it again")
async def release_conversation(ctx: Ctx, conversation_id: int) -> ConversationOut:
    def release(session: Session) -> Conversation:
        return changed(session, row_or_404(session, Conversation, conversation_id, "conversation"),
                       {"needs_human": False})

    return ConversationOut.model_validate(await ctx.services.db(release))
