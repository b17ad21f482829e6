"""Eva's knowledge base: document ingestion, embeddings, Chroma vector search (one collection per agent).

``KnowledgeBase`` is the one entry point; SQL (``models.knowledge``) holds documents and chunk bookkeeping,
Chroma holds the vectors and chunk text.  Heavy imports (torch, chromadb) happen lazily on first use.
"""

from rag.knowledge import KnowledgeBase
from rag.types import KnowledgeStats, SearchHit

__all__ = ["KnowledgeBase", "KnowledgeStats", "SearchHit"]
