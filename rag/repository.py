"""SQL side of the knowledge base: documents and chunk bookkeeping (``models.knowledge``).

Synchronous on purpose (SQLAlchemy sessions); the knowledge base runs these methods in worker threads.  Each
method is one transaction, so a failure leaves the rows as they were before the call — the property the
write-order/compensation logic in ``rag.knowledge`` relies on.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import func
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlmodel import col, delete, select

from models import Agent, KnowledgeChunk, KnowledgeDocument, utcnow
from models.db import session_scope
from rag.types import DOCUMENT_STATUSES, KnowledgeStats
from voicebot.errors import Conflict, InvalidInput, NotFound

IN_CLAUSE_BATCH = 500
"""Ids per ``IN (...)`` (SQLite's bound-parameter limit is 999 on old builds)."""


class KnowledgeRepository:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    # ------------------------------------------------------------------ agents
    def agent_exists(self, agent_id: int) -> bool:
        with session_scope(self.engine) as session:
            return session.get(Agent, agent_id) is not None

    # ------------------------------------------------------------------ documents
    def add_document(self, document: KnowledgeDocument) -> KnowledgeDocument:
        """Insert a new document; the same content twice for one agent is a ``Conflict``."""
        existing = self.find_by_sha256(document.agent_id, document.sha256)
        if existing is not None:
            raise _duplicate(existing)
        try:
            with session_scope(self.engine) as session:
                session.add(document)
                session.flush()
                session.refresh(document)
        except IntegrityError as exc:
            # Lost a race with a concurrent upload of the same file (the unique constraint decided).
            existing = self.find_by_sha256(document.agent_id, document.sha256)
            if existing is not None:
                raise _duplicate(existing) from exc
            raise Conflict(f"document could not be stored: {exc.orig}") from exc
        return document

    def find_by_sha256(self, agent_id: int, sha256: str) -> KnowledgeDocument | None:
        with session_scope(self.engine) as session:
            statement = select(KnowledgeDocument).where(KnowledgeDocument.agent_id == agent_id,
                                                        KnowledgeDocument.sha256 == sha256)
            return session.exec(statement).first()

    def get_document(self, document_id: int) -> KnowledgeDocument:
        with session_scope(self.engine) as session:
            document = session.get(KnowledgeDocument, document_id)
            if document is None:
                raise NotFound(f"knowledge document {document_id} does not exist")
            return document

    def list_documents(self, agent_id: int | None = None,
                       status: str | None = None) -> list[KnowledgeDocument]:
        if status is not None and status not in DOCUMENT_STATUSES:
            raise InvalidInput(f"status must be one of {', '.join(DOCUMENT_STATUSES)}", field="status")
        with session_scope(self.engine) as session:
            statement = select(KnowledgeDocument)
            if agent_id is not None:
                statement = statement.where(KnowledgeDocument.agent_id == agent_id)
            if status is not None:
                statement = statement.where(KnowledgeDocument.status == status)
            return list(session.exec(statement.order_by(col(KnowledgeDocument.id))).all())

    def update_document(self, document_id: int, **changes: Any) -> KnowledgeDocument:
        with session_scope(self.engine) as session:
            document = session.get(KnowledgeDocument, document_id)
            if document is None:
                raise NotFound(f"knowledge document {document_id} does not exist")
            for key, value in changes.items():
                setattr(document, key, value)
            document.updated_at = utcnow()
            session.add(document)
            session.flush()
            session.refresh(document)
            return document

    # ------------------------------------------------------------------ chunks
    def chunk_ids(self, document_id: int) -> list[str]:
        with session_scope(self.engine) as session:
            statement = (select(KnowledgeChunk.chroma_id).where(KnowledgeChunk.document_id == document_id)
                         .order_by(col(KnowledgeChunk.ordinal)))
            return list(session.exec(statement).all())

    def agent_chunk_ids(self, agent_id: int) -> set[str]:
        with session_scope(self.engine) as session:
            statement = select(KnowledgeChunk.chroma_id).where(KnowledgeChunk.agent_id == agent_id)
            return set(session.exec(statement).all())

    def live_chunks(self, ids: Iterable[str]) -> dict[str, str]:
        """Of ``ids``, the chunks whose row exists, mapped to their document's current title."""
        wanted = list(ids)
        found: dict[str, str] = {}
        with session_scope(self.engine) as session:
            for start in range(0, len(wanted), IN_CLAUSE_BATCH):
                batch = wanted[start:start + IN_CLAUSE_BATCH]
                statement = (select(KnowledgeChunk.chroma_id, KnowledgeDocument.title)
                             .join(KnowledgeDocument, col(KnowledgeDocument.id) == KnowledgeChunk.document_id)
                             .where(col(KnowledgeChunk.chroma_id).in_(batch)))
                found.update({chroma_id: title for chroma_id, title in session.exec(statement).all()})
        return found

    def replace_chunks(self, document_id: int, chunks: Sequence[KnowledgeChunk],
                       **document_changes: Any) -> list[str]:
        """In ONE transaction: drop the document's chunk rows, insert ``chunks``, update the document.

        Returns the chroma ids of the rows that were replaced (their vectors are now orphans to delete).
        """
        with session_scope(self.engine) as session:
            document = session.get(KnowledgeDocument, document_id)
            if document is None:
                raise NotFound(f"knowledge document {document_id} does not exist")
            old = list(session.exec(select(KnowledgeChunk.chroma_id)
                                    .where(KnowledgeChunk.document_id == document_id)).all())
            session.exec(delete(KnowledgeChunk).where(col(KnowledgeChunk.document_id) == document_id))
            session.add_all(chunks)
            for key, value in document_changes.items():
                setattr(document, key, value)
            document.updated_at = utcnow()
            session.add(document)
        return old

    def delete_document(self, document_id: int) -> None:
        """Delete the document row and its chunk rows in one transaction."""
        with session_scope(self.engine) as session:
            document = session.get(KnowledgeDocument, document_id)
            if document is None:
                raise NotFound(f"knowledge document {document_id} does not exist")
            session.exec(delete(KnowledgeChunk).where(col(KnowledgeChunk.document_id) == document_id))
            session.flush()
            session.delete(document)

    # ------------------------------------------------------------------ stats
    def stats(self, agent_id: int | None = None) -> KnowledgeStats:
        with session_scope(self.engine) as session:
            doc_query = select(
                KnowledgeDocument.status, func.count(),
                func.coalesce(func.sum(KnowledgeDocument.size_bytes), 0),
                func.coalesce(func.sum(KnowledgeDocument.chunk_count), 0),
            ).group_by(col(KnowledgeDocument.status))
            chunk_query = select(func.count()).select_from(KnowledgeChunk)
            if agent_id is not None:
                doc_query = doc_query.where(KnowledgeDocument.agent_id == agent_id)
                chunk_query = chunk_query.where(KnowledgeChunk.agent_id == agent_id)
            by_status = dict.fromkeys(DOCUMENT_STATUSES, 0)
            total_bytes = 0
            ready_chunks = 0
            for status, count, size, chunk_sum in session.exec(doc_query).all():
                by_status[status] = int(count)
                total_bytes += int(size)
                if status == "ready":
                    ready_chunks = int(chunk_sum)
            chunks = int(session.exec(chunk_query).one())
        ready = by_status.get("ready", 0)
        return KnowledgeStats(documents=sum(by_status.values()), by_status=by_status, chunks=chunks,
                              bytes=total_bytes,
                              avg_chunks_per_document=round(ready_chunks / ready, 2) if ready else 0.0)


def _duplicate(existing: KnowledgeDocument) -> Conflict:
    return Conflict(f"this file is already in the knowledge base as document {existing.id} "
                    f"({existing.title or existing.filename!r}, status {existing.status})",
                    code="document_duplicate")
