"""SQL side of the knowledge base: documents and chunk bookkeeping (``models.knowledge``).

Synchronous on purpose (SQLAlchemy sessions); the knowledge base runs these methods in worker threads.  Each
method is one transaction (``replace_chunks`` is short batches plus one switching transaction, and undoes its
batches itself), so a failure leaves the rows as they were before the call — the property the
write-order/compensation logic in ``rag.knowledge`` relies on.

A chunk row with a negative ordinal is *staged*: written by a ``replace_chunks`` still in progress, invisible to
search until the switch turns it into ``-ordinal - 1``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import func, insert
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlmodel import col, delete, select, update

from models import Agent, KnowledgeChunk, KnowledgeDocument, utcnow
from models.db import session_scope
from rag.types import DOCUMENT_STATUSES, KnowledgeStats
from voicebot.errors import Conflict, InvalidInput, NotFound

IN_CLAUSE_BATCH = 500
"""Ids per ``IN (...)`` (SQLite's bound-parameter limit is 999 on old builds)."""
CHUNK_BATCH = 500
"""Chunk rows per transaction while a document's rows are written (each holds the write lock briefly)."""
SQLITE_YIELD_S = 0.15
"""Pause between two batches on SQLite: longer than SQLite's longest busy-handler sleep (100 ms), so a writer
waiting for the lock (call setup, a turn) always gets it between two batches instead of starving."""


class ReplaceStopped(Exception):
    """``replace_chunks`` was asked to stop before its switch; its staged rows were removed."""


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

    def update_document(self, document_id: int, *, when_status: str | None = None,
                        **changes: Any) -> KnowledgeDocument:
        """Apply ``changes``; with ``when_status``, only if the document is in that status (else unchanged)."""
        with session_scope(self.engine) as session:
            document = session.get(KnowledgeDocument, document_id)
            if document is None:
                raise NotFound(f"knowledge document {document_id} does not exist")
            if when_status is not None and document.status != when_status:
                return document
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
                             .where(col(KnowledgeChunk.chroma_id).in_(batch), col(KnowledgeChunk.ordinal) >= 0))
                found.update({chroma_id: title for chroma_id, title in session.exec(statement).all()})
        return found

    def replace_chunks(self, document_id: int, chunks: Sequence[KnowledgeChunk],
                       stop: threading.Event | None = None, **document_changes: Any) -> list[str]:
        """Swap the document's chunk rows for ``chunks`` and apply ``document_changes``, atomically for readers.

        The new rows are inserted in batches of ``CHUNK_BATCH``, one short transaction each, *staged* (negative
        ordinals: search ignores them, and the unique (document, ordinal) index lets them sit beside the old
        rows); then ONE small transaction deletes the old rows, un-stages the new ones and updates the
        document.  So no transaction holds the write lock for long, and readers see the old version until the
        switch.  If a batch fails, or ``stop`` is set before the switch, the staged rows are removed again and
        the error (``ReplaceStopped``) is raised: the old version is untouched.

        Returns the chroma ids of the rows that were replaced (their vectors are now orphans to delete).
        """
        with session_scope(self.engine) as session:
            if session.get(KnowledgeDocument, document_id) is None:
                raise NotFound(f"knowledge document {document_id} does not exist")
        # Staged rows left by an earlier run that died before its switch are replaced too.
        leftovers = self._remove_staged(document_id)
        pause = SQLITE_YIELD_S if self.engine.dialect.name == "sqlite" else 0.0
        try:
            for start in range(0, len(chunks), CHUNK_BATCH):
                if stop is not None and stop.is_set():
                    raise ReplaceStopped(f"writing the chunks of document {document_id} was stopped")
                if start and pause:
                    time.sleep(pause)
                values = [{**row.model_dump(exclude={"id"}), "ordinal": -row.ordinal - 1}
                          for row in chunks[start:start + CHUNK_BATCH]]
                with session_scope(self.engine) as session:
                    session.execute(insert(KnowledgeChunk), values)
            if stop is not None and stop.is_set():
                raise ReplaceStopped(f"writing the chunks of document {document_id} was stopped")
            with session_scope(self.engine) as session:
                document = session.get(KnowledgeDocument, document_id)
                if document is None:
                    raise NotFound(f"knowledge document {document_id} does not exist")
                old = list(session.exec(select(KnowledgeChunk.chroma_id).where(
                    KnowledgeChunk.document_id == document_id, col(KnowledgeChunk.ordinal) >= 0)).all())
                session.exec(delete(KnowledgeChunk).where(col(KnowledgeChunk.document_id) == document_id,
                                                          col(KnowledgeChunk.ordinal) >= 0))
                session.exec(update(KnowledgeChunk)
                             .where(col(KnowledgeChunk.document_id) == document_id,
                                    col(KnowledgeChunk.ordinal) < 0)
                             .values(ordinal=-col(KnowledgeChunk.ordinal) - 1))
                for key, value in document_changes.items():
                    setattr(document, key, value)
                document.updated_at = utcnow()
                session.add(document)
        except BaseException:
            self._remove_staged(document_id)
            raise
        return leftovers + old

    def _remove_staged(self, document_id: int) -> list[str]:
        """Delete the document's staged rows (in batches); returns their chroma ids."""
        with session_scope(self.engine) as session:
            staged = list(session.exec(select(KnowledgeChunk.chroma_id).where(
                KnowledgeChunk.document_id == document_id, col(KnowledgeChunk.ordinal) < 0)).all())
        for start in range(0, len(staged), IN_CLAUSE_BATCH):
            with session_scope(self.engine) as session:
                session.exec(delete(KnowledgeChunk).where(
                    col(KnowledgeChunk.chroma_id).in_(staged[start:start + IN_CLAUSE_BATCH])))
        return staged

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
