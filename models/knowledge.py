"""Knowledge documents and their chunks (the vectors live in Chroma, keyed by chunk ``chroma_id``)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import UniqueConstraint
from sqlmodel import Field, SQLModel

from models.base import utcnow


class KnowledgeDocument(SQLModel, table=True):
    __tablename__ = "knowledge_documents"
    # The same file twice for one agent is a conflict, enforced by the database so that concurrent uploads
    # race safely.
    __table_args__ = (UniqueConstraint("agent_id", "sha256", name="uq_knowledge_documents_agent_sha256"),)

    id: int | None = Field(default=None, primary_key=True)
    agent_id: int = Field(foreign_key="agents.id", index=True)
    title: str = Field(default="", max_length=500)
    description: str = Field(default="", max_length=2000)
    filename: str = Field(default="", max_length=500)
    mime_type: str = Field(default="", max_length=200)
    size_bytes: int = 0
    sha256: str = Field(default="", index=True, max_length=64)
    status: str = Field(default="pending", index=True, max_length=16)
    """pending | processing | ready | failed"""
    error: str = Field(default="", max_length=2000)
    error_code: str = Field(default="", max_length=64)
    """Stable code of ``error`` (document_corrupt, document_encrypted, ...)."""
    progress: float = 0.0
    chunk_count: int = 0
    storage_path: str = Field(default="", max_length=1024)
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)


class KnowledgeChunk(SQLModel, table=True):
    __tablename__ = "knowledge_chunks"
    __table_args__ = (
        UniqueConstraint("document_id", "ordinal", name="uq_knowledge_chunks_document_ordinal"),
    )

    id: int | None = Field(default=None, primary_key=True)
    document_id: int = Field(foreign_key="knowledge_documents.id", index=True)
    agent_id: int = Field(foreign_key="agents.id", index=True)
    ordinal: int = 0
    page: int | None = None
    text_hash: str = Field(index=True, max_length=64)
    chroma_id: str = Field(index=True, unique=True, max_length=64)
    chars: int = 0
