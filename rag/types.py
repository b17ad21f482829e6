"""Plain value types of the knowledge base, shared by the agent core, the admin API and the CLI."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

DOCUMENT_STATUSES = ("pending", "processing", "ready", "failed")
"""Lifecycle of a knowledge document: accepted → being indexed → searchable, or failed with an error."""


@dataclass(frozen=True)
class SearchHit:
    """One retrieved chunk.  ``similarity`` is the cosine similarity of query and chunk (higher is better)."""

    chunk_id: str
    document_id: int
    title: str
    page: int | None
    ordinal: int
    text: str
    similarity: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class KnowledgeStats:
    """Totals over one agent's knowledge (or all agents)."""

    documents: int
    by_status: dict[str, int] = field(default_factory=dict)
    chunks: int = 0
    bytes: int = 0
    avg_chunks_per_document: float = 0.0
    """Chunks per *ready* document (failed and in-flight documents have none yet)."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
