"""Small helpers shared by the handlers."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import PurePosixPath
from typing import Any, TypeVar
from urllib.parse import unquote

from aiohttp import BodyPartReader, web
from aiohttp.http_exceptions import HttpProcessingError
from sqlalchemy import func
from sqlmodel import Session, SQLModel, col, select
from sqlmodel.sql.expression import SelectOfScalar

from admin_api.framework import Ctx
from admin_api.schemas import MessageOut, MessagePage, Pagination
from models import FlowRun, Message, utcnow
from voicebot.errors import BadRequest, InvalidInput, NotFound, PayloadTooLarge, UnsupportedMediaType

M = TypeVar("M", bound=SQLModel)


def row_or_404(session: Session, model: type[M], row_id: int, what: str) -> M:
    """The row or NotFound (``what`` names it in the message and the field), inside a transaction."""
    row = session.get(model, row_id)
    if row is None:
        raise NotFound(f"{what} {row_id} does not exist", field=f"{what}_id")
    return row


def saved(session: Session, row: M) -> M:
    """``row`` written and read back (its id, defaults and server-side values filled in)."""
    session.add(row)
    session.flush()
    session.refresh(row)
    return row


def changed(session: Session, row: M, changes: dict[str, Any]) -> M:
    """``row`` with ``changes`` applied (and ``updated_at`` moved when it has one), written and read back."""
    for key, value in changes.items():
        setattr(row, key, value)
    if hasattr(row, "updated_at"):
        row.updated_at = utcnow()
    return saved(session, row)


async def get_row(ctx: Ctx, model: type[M], row_id: int, what: str) -> M:
    """:func:`row_or_404` in its own transaction."""
    return await ctx.services.db(lambda session: row_or_404(session, model, row_id, what))


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

# ------------------------------ multipart forms ---------------------------------------------------
FIELD_LIMIT = 4096
"""Bytes allowed in a non-file form field (a title, a language, an id)."""
MULTIPART_OVERHEAD = 64 * 1024
"""What a multipart body may hold beyond its file (boundaries, headers, the small fields)."""
_UNSAFE_CHARS = re.compile(r"[\x00-\x1f\x7f/\\:*?\"<>|]")


def safe_filename(raw: str) -> str:
    """The client's file name reduced to a harmless base name (no folders, '..' or control chars)."""
    # Some clients (aiohttp among them) percent-encode the name: decode first, then sanitise what it says.
    name = PurePosixPath(unquote(raw).replace("\\", "/")).name
    name = unicodedata.normalize("NFC", name)
    name = _UNSAFE_CHARS.sub("_", name).strip(" .")
    return name[:200]


async def _read_limited(part: BodyPartReader, limit: int, what: str) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        chunk = await part.read_chunk(65536)
        if not chunk:
            return b"".join(chunks)
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(
                f"{what} is larger than {limit // (1024 * 1024) or limit} "
                f"{'MB' if limit >= 1024 * 1024 else 'bytes'}",
                field=what,
            )
        chunks.append(chunk)


async def read_form(request: web.Request, *, file_limit: int, names: set[str],
                    check_file: Callable[[str], None] | None = None) -> tuple[dict[str, str], str, bytes | None]:
    """A multipart upload read with limits: (small fields by name, the file's safe name, the file's bytes or
    None).  One ``file`` part at most, only the ``names`` fields, each once; ``check_file(filename)`` may refuse
    the file before its bytes are read.  Raises the API's 400/413/415/422 errors."""
    if request.content_length is not None and request.content_length > file_limit + MULTIPART_OVERHEAD:
        raise PayloadTooLarge(f"the upload is larger than {file_limit // (1024 * 1024) or file_limit} "
                              f"{'MB' if file_limit >= 1024 * 1024 else 'bytes'}", field="file")
    if request.content_type != "multipart/form-data":
        raise UnsupportedMediaType("send the upload as multipart/form-data", field="Content-Type")
    fields: dict[str, str] = {}
    data: bytes | None = None
    filename = ""
    try:
        reader = await request.multipart()
        while True:
            part = await reader.next()
            if part is None:
                break
            if not isinstance(part, BodyPartReader):
                raise BadRequest("nested multipart bodies are not supported", code="malformed_multipart")
            name = part.name or ""
            if name == "file":
                if data is not None:
                    raise InvalidInput("send one file per upload", field="file")
                filename = safe_filename(part.filename or "")
                if check_file is not None:
                    check_file(filename)
                data = await _read_limited(part, file_limit, "file")
            elif name in names:
                if name in fields:
                    raise InvalidInput(f"field {name!r} given twice", field=name)
                raw = await _read_limited(part, FIELD_LIMIT, name)
                fields[name] = raw.decode("utf-8")
            else:
                raise InvalidInput(f"unknown field {name!r}", field=name or None)
    except (HttpProcessingError, ValueError, LookupError, RuntimeWarning, AssertionError) as exc:
        # Malformed boundaries, headers or encodings; aiohttp signals some of them as warnings.
        raise BadRequest("the multipart body is malformed", code="malformed_multipart") from exc
    return fields, filename, data
