"""Knowledge documents: multipart upload (streamed, size-limited), list/get/delete, search, stats, reindex."""

from __future__ import annotations

from pathlib import PurePosixPath

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from sqlalchemy import func
from sqlmodel import Session, col, select

from admin_api.framework import ApiRouter, Ctx, validation_error
from admin_api.handlers.common import get_row, read_form
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


class _UploadFields(BaseModel):
    model_config = ConfigDict(extra="forbid")

    agent_id: Id
    title: str = Field(default="", max_length=500)
    description: str = Field(default="", max_length=2000)


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

    def check_file(filename: str) -> None:
        filename = filename or "document.txt"  # a file part without a name is taken as text
        extension = PurePosixPath(filename).suffix.lower()
        if extension not in SUPPORTED_EXTENSIONS:
            raise UnsupportedMediaType(
                f"{filename}: unsupported file type {extension or '(none)'!r} "
                "(supported: PDF, DOCX, Markdown, HTML, plain text)",
                field="file",
            )

    fields, filename, data = await read_form(request, file_limit=limit, names=set(_UploadFields.model_fields),
                                             check_file=check_file)
    filename = filename or "document.txt"
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
