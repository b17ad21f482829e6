"""Knowledge documents: multipart upload (streamed, size-limited), list/get/delete, search, stats, reindex."""

from __future__ import annotations

import re
import unicodedata
from pathlib import PurePosixPath
from typing import Any
from urllib.parse import unquote

from aiohttp import BodyPartReader
from aiohttp.http_exceptions import HttpProcessingError
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from sqlalchemy import func
from sqlmodel import Session, col, select

from admin_api.framework import ApiRouter, Ctx, validation_error
from admin_api.handlers.common import get_row
from admin_api.schemas import (
    DocumentOut,
    DocumentPage,
    DocumentQuery,
    Id,
    SearchHitOut,
    SearchRequest,
    StatsOut,
    StatsQuery,
    UploadForm,
)
from models import KnowledgeDocument
from voicebot.errors import (
    BadRequest,
    DocumentError,
    InvalidInput,
    NotFound,
    PayloadTooLarge,
    UnsupportedMediaType,
)

router = ApiRouter("knowledge")

SUPPORTED_EXTENSIONS = frozenset(
    {".pdf", ".docx", ".txt", ".text", ".md", ".markdown", ".rst", ".csv", ".log", ".html", ".htm"}
)
"""What ``rag`` can read (rag.extract decides for sure from the content; this is the early, cheap check)."""
FIELD_LIMIT = 4096
"""Bytes allowed in a non-file form field (title, description, agent_id)."""
MULTIPART_OVERHEAD = 64 * 1024
_UNSAFE_CHARS = re.compile(r"[\x00-\x1f\x7f/\\:*?\"<>|]")


class _UploadFields(BaseModel):
    model_config = ConfigDict(extra="forbid")

    agent_id: Id
    title: str = Field(default="", max_length=500)
    description: str = Field(default="", max_length=2000)


def safe_filename(raw: str) -> str:
    """The client's file name reduced to a harmless base name (no folders, '..' or control chars)."""
    # Some clients (aiohttp among them) percent-encode the name: decode first, then sanitise what it says.
    name = PurePosixPath(unquote(raw).replace("\\", "/")).name
    name = unicodedata.normalize("NFC", name)
    name = _UNSAFE_CHARS.sub("_", name).strip(" .")
    return name[:200] or "document.txt"


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


@router.post(
    "/knowledge/upload",
    role="designer",
    status=202,
    errors=(400, 409, 413, 415, 422, 503),
    request_media={"multipart/form-data": UploadForm},
    summary="Upload a document (multipart: agent_id, file, title, description); indexing runs in "
    "the background",
)
async def upload(ctx: Ctx) -> DocumentOut:
    request = ctx.request
    kb = ctx.services.need_kb()
    limit = ctx.services.settings.max_upload_mb * 1024 * 1024
    if request.content_length is not None and request.content_length > limit + MULTIPART_OVERHEAD:
        raise PayloadTooLarge(
            f"the upload is larger than {ctx.services.settings.max_upload_mb} MB", field="file"
        )
    if request.content_type != "multipart/form-data":
        raise UnsupportedMediaType("send the upload as multipart/form-data", field="Content-Type")
    fields: dict[str, Any] = {}
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
                extension = PurePosixPath(filename).suffix.lower()
                if extension not in SUPPORTED_EXTENSIONS:
                    raise UnsupportedMediaType(
                        f"{filename}: unsupported file type {extension or '(none)'!r} "
                        "(supported: PDF, DOCX, Markdown, HTML, plain text)",
                        field="file",
                    )
                data = await _read_limited(part, limit, "file")
            elif name in _UploadFields.model_fields:
                if name in fields:
                    raise InvalidInput(f"field {name!r} given twice", field=name)
                raw = await _read_limited(part, FIELD_LIMIT, name)
                fields[name] = raw.decode("utf-8")
            else:
                raise InvalidInput(f"unknown field {name!r}", field=name or None)
    except (HttpProcessingError, ValueError, LookupError, RuntimeWarning, AssertionError) as exc:
        # Malformed boundaries, headers or encodings; aiohttp signals some of them as warnings.
        raise BadRequest("the multipart body is malformed", code="malformed_multipart") from exc
    if data is None:
        raise InvalidInput("the upload has no file part", field="file")
    if "agent_id" in fields:
        fields["agent_id"] = fields["agent_id"].strip()
    try:
        form = _UploadFields.model_validate(fields)
    except ValidationError as exc:
        raise validation_error(exc, where="form") from exc
    try:
        document = await kb.ingest_bytes(
            form.agent_id, data, filename, title=form.title, description=form.description
        )
    except NotFound as exc:
        raise InvalidInput(f"agent {form.agent_id} does not exist", field="agent_id") from exc
    except DocumentError as exc:
        if exc.code == "document_too_large":
            raise PayloadTooLarge(exc.message, field="file") from exc
        if exc.code == "document_unsupported":
            raise UnsupportedMediaType(exc.message, field="file") from exc
        raise
    return DocumentOut.model_validate(document)


@router.get("/knowledge/documents", role="viewer", summary="List knowledge documents")
async def list_documents(ctx: Ctx, query: DocumentQuery) -> DocumentPage:
    def load(session: Session) -> tuple[list[KnowledgeDocument], int]:
        statement = select(KnowledgeDocument)
        counting = select(func.count()).select_from(KnowledgeDocument)
        if query.agent_id is not None:
            statement = statement.where(KnowledgeDocument.agent_id == query.agent_id)
            counting = counting.where(KnowledgeDocument.agent_id == query.agent_id)
        if query.status is not None:
            statement = statement.where(KnowledgeDocument.status == query.status)
            counting = counting.where(KnowledgeDocument.status == query.status)
        rows = session.exec(
            statement.order_by(col(KnowledgeDocument.id).desc()).offset(query.offset).limit(query.limit)
        ).all()
        return list(rows), int(session.exec(counting).one())

    rows, total = await ctx.services.db(load)
    return DocumentPage(
        items=[DocumentOut.model_validate(r) for r in rows],
        total=total,
        limit=query.limit,
        offset=query.offset,
    )


@router.get("/knowledge/documents/{document_id}", role="viewer", summary="Get a document and its status")
async def get_document(ctx: Ctx, document_id: int) -> DocumentOut:
    return DocumentOut.model_validate(await get_row(ctx, KnowledgeDocument, document_id, "document"))


@router.delete(
    "/knowledge/documents/{document_id}",
    role="designer",
    errors=(503,),
    summary="Delete a document, its chunks and vectors",
)
async def delete_document(ctx: Ctx, document_id: int) -> None:
    await ctx.services.need_kb().delete_document(document_id)


@router.post(
    "/knowledge/{document_id}/reindex",
    role="designer",
    status=202,
    errors=(409, 503),
    summary="Extract, chunk and embed the stored copy again",
)
async def reindex_document(ctx: Ctx, document_id: int) -> DocumentOut:
    return DocumentOut.model_validate(await ctx.services.need_kb().reindex(document_id))


@router.post(
    "/knowledge/search",
    role="viewer",
    errors=(502, 503),
    summary="Search an agent's knowledge (what the agent would retrieve)",
)
async def search(ctx: Ctx, body: SearchRequest) -> list[SearchHitOut]:
    hits = await ctx.services.need_kb().search(
        body.agent_id, body.query, limit=body.limit, threshold=body.threshold
    )
    return [SearchHitOut.model_validate(hit.to_dict()) for hit in hits]


@router.get("/knowledge/stats", role="viewer", errors=(503,), summary="Document and chunk totals")
async def stats(ctx: Ctx, query: StatsQuery) -> StatsOut:
    result = await ctx.services.need_kb().stats(query.agent_id)
    return StatsOut.model_validate(result.to_dict())
