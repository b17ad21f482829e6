"""Retrieval quality on a small corpus with known answers (real files, real model, real Chroma).

recall@k = share of questions whose answer-bearing chunk is among the top k hits.  The bounds are set below
what all-MiniLM-L6-v2 reaches here so the test guards against regressions (chunking, extraction, scoring)
without being flaky; the measured values are printed.
"""

from __future__ import annotations

from sqlalchemy.engine import Engine

from rag import KnowledgeBase
from rag.embeddings import LocalEmbedder
from tests.rag import corpus
from tests.rag.conftest import agent_factory
from tests.rag.files import make_docx, make_pdf
from voicebot.config import Settings


async def test_recall_at_5_on_known_answers(sqlite_engine: Engine, local_embedder: LocalEmbedder,
                                            kb_settings: Settings) -> None:
    kb = KnowledgeBase(kb_settings.with_(chunk_size=500, chunk_overlap=50, max_upload_mb=5), sqlite_engine,
                       embedder=local_embedder)
    agent = agent_factory(sqlite_engine)("northwind")
    try:
        await kb.ingest_bytes(agent, make_pdf(corpus.HANDBOOK_PAGES), "handbook.pdf")
        await kb.ingest_bytes(agent, make_docx(corpus.PRODUCTS_DOCX), "products.docx")
        await kb.ingest_bytes(agent, corpus.FAQ_MARKDOWN.encode(), "faq.md")
        await kb.ingest_bytes(agent, corpus.RETURNS_HTML.encode(), "returns.html")
        await kb.wait_idle()
        assert [d.status for d in await kb.list_documents(agent)] == ["ready"] * 4

        ranks: list[int | None] = []
        for question, answer in corpus.QUESTIONS:
            hits = await kb.search(agent, question, limit=5)
            rank = next((i for i, hit in enumerate(hits, 1) if answer in " ".join(hit.text.split())), None)
            ranks.append(rank)
            if rank is None:
                print(f"  miss: {question!r} (expected {answer!r}); top: {hits[0].text[:80]!r}")
        total = len(ranks)
        recall1 = sum(1 for r in ranks if r == 1) / total
        recall5 = sum(1 for r in ranks if r is not None) / total
        mrr = sum(1 / r for r in ranks if r is not None) / total
        print(f"\nretrieval quality over {total} questions: recall@1={recall1:.2f} recall@5={recall5:.2f} "
              f"MRR={mrr:.2f}")
        assert recall5 >= 0.85
        assert recall1 >= 0.65
    finally:
        await kb.close()
