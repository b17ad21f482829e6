"""Eva's knowledge base: document ingestion, embeddings, Chroma vector search (one collection per agent).

``KnowledgeBase`` is the one entry point; SQL (``models.knowledge``) holds documents and chunk bookkeeping,
Chroma holds the vectors and chunk text.  Heavy imports (torch, chromadb) happen lazily on first use, and so
does ``rag.knowledge`` itself: the document-reading child process (``rag.sandbox``) imports this package and
must stay small (it runs under a memory limit).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rag.types import KnowledgeStats, SearchHit

if TYPE_CHECKING:
    from rag.knowledge import KnowledgeBase

__all__ = ["KnowledgeBase", "KnowledgeStats", "SearchHit"]


def __getattr__(name: str) -> Any:
    if name == "KnowledgeBase":
        from rag.knowledge import KnowledgeBase

        return KnowledgeBase
    raise AttributeError(f"module 'rag' has no attribute {name!r}")
