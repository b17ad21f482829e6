"""KnowledgeBase end to end on real SQLite and PostgreSQL, real Chroma and the real embedding model:
ingestion of every format, failures stored on the document, deduplication, search, stats, and SQL/Chroma
consistency of delete and reindex — including failures injected halfway."""

from __future__ import annotations

import asyncio
import codecs
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import Engine

from rag import KnowledgeBase, KnowledgeStats, SearchHit
from rag.embeddings import LocalEmbedder
from rag.store import StoreError
from tests.rag.conftest import AgentFactory
from tests.rag.files import encrypt_pdf, make_blank_pdf, make_docx, make_pdf
from voicebot.config import Settings
from voicebot.errors import Conflict, DocumentError, InvalidInput, KnowledgeError, NotFound

HANDBOOK = [
    "Opening hours. The shop opens at nine in the morning and closes at six in the evening on weekdays. "
    "On Saturdays we open at ten and close at four. We are closed on Sundays and public holidays.",
    "Refund policy. Customers can return unused items within thirty days of delivery for a full refund. "
    "The receipt is required. Refunds are paid back to the original payment method within five days.",
    "Shipping. Parcels to Canada cost twelve dollars and arrive within five business days. "
    "Express shipping to Canada costs thirty dollars and arrives in two days.",
]


async def rows_and_vectors(kb: KnowledgeBase, agent_id: int) -> tuple[set[str], set[str]]:
    rows = await asyncio.to_thread(kb.repo.agent_chunk_ids, agent_id)
    vectors = set(await asyncio.to_thread(kb.store.ids, agent_id))
    return rows, vectors


async def assert_consistent(kb: KnowledgeBase, agent_id: int) -> set[str]:
    """SQL chunk rows and Chroma vectors are the same set, and every document's count matches its rows."""
    rows, vectors = await rows_and_vectors(kb, agent_id)
    assert rows == vectors
    for document in await kb.list_documents(agent_id):
        assert document.id is not None
        ids = await asyncio.to_thread(kb.repo.chunk_ids, document.id)
        if document.status == "ready":
            assert len(ids) == document.chunk_count > 0
    return rows


async def ingest_ready(kb: KnowledgeBase, agent_id: int, data: bytes, name: str, **kwargs: Any) -> int:
    document = await kb.ingest_bytes(agent_id, data, name, **kwargs)
    await kb.wait_idle()
    assert document.id is not None
    done = await kb.get_document(document.id)
    assert done.status == "ready", (done.error_code, done.error)
    return document.id


# ============================================================================== ingestion
async def test_pdf_ingested_in_background_and_search_cites_the_page(kb: KnowledgeBase,
                                                                     make_agent: AgentFactory) -> None:
    agent = make_agent("support")
    document = await kb.ingest_bytes(agent, make_pdf(HANDBOOK), "handbook.pdf", description="store rules")
    assert document.status == "processing" and document.id is not None
    assert document.mime_type == "application/pdf" and document.title == "handbook"
    assert await asyncio.to_thread(Path(document.storage_path).is_file)
    assert Path(document.storage_path).is_relative_to(kb.settings.data_dir / "knowledge")
    await kb.wait_idle()
    ready = await kb.get_document(document.id)
    assert (ready.status, ready.progress, ready.error) == ("ready", 1.0, "")
    assert ready.chunk_count >= 3 and ready.size_bytes == len(make_pdf(HANDBOOK))

    hits = await kb.search(agent, "How many days do I have to return something?")
    assert hits and isinstance(hits[0], SearchHit)
    top = hits[0]
    assert (top.document_id, top.title, top.page) == (document.id, "handbook", 2)
    assert "thirty days" in top.text
    assert 0.3 < top.similarity <= 1.0
    assert [hit.similarity for hit in hits] == sorted((hit.similarity for hit in hits), reverse=True)
    assert (await kb.search(agent, "shipping price to Canada"))[0].page == 3
    await assert_consistent(kb, agent)


@pytest.mark.parametrize(("name", "data", "phrase"), [
    ("policies.docx", make_docx(HANDBOOK[1:2], heading="Refunds"), "thirty days"),
    ("faq.md", ("# Shipping\n\n" + HANDBOOK[2] + "\n\nSee [rates](https://example.com).").encode(), "Canada"),
    ("page.html",
     f"<html><body><h1>Hours</h1><p>{HANDBOOK[0]}</p><script>x()</script></body></html>".encode(),
     "nine in the morning"),
    ("notes-cp1252.txt", ("Café opening: " + HANDBOOK[0] + " Prices in € only.").encode("cp1252"), "Café"),
    ("notes-utf16.txt", codecs.BOM_UTF16_LE + ("Grüße! " + HANDBOOK[1]).encode("utf-16-le"), "Grüße"),
])
async def test_every_format_is_indexed(kb: KnowledgeBase, make_agent: AgentFactory, name: str, data: bytes,
                                       phrase: str) -> None:
    agent = make_agent("formats")
    doc_id = await ingest_ready(kb, agent, data, name)
    hits = await kb.search(agent, phrase, limit=1)
    assert hits[0].document_id == doc_id
    assert phrase in hits[0].text
    assert hits[0].page is None
    await assert_consistent(kb, agent)


async def test_ingest_file_from_disk(kb: KnowledgeBase, make_agent: AgentFactory, tmp_path: Path) -> None:
    agent = make_agent("disk")
    path = tmp_path / "Price List.md"
    path.write_text("Prices\n\nThe basic plan costs ten dollars a month.", encoding="utf-8")
    document = await kb.ingest_file(agent, path, title="Prices 2025")
    await kb.wait_idle()
    assert document.id is not None
    ready = await kb.get_document(document.id)
    assert (ready.status, ready.title, ready.filename, ready.mime_type) == (
        "ready", "Prices 2025", "Price List.md", "text/markdown")
    with pytest.raises(DocumentError) as info:
        await kb.ingest_file(agent, tmp_path / "missing.pdf")
    assert info.value.code == "document_missing"


@pytest.mark.parametrize(("name", "data", "code", "at_once"), [
    ("locked.pdf", encrypt_pdf(make_pdf(HANDBOOK), user_password="s3cret"), "document_encrypted", False),
    ("truncated.pdf", make_pdf(HANDBOOK)[:900], "document_corrupt", False),
    ("scan.pdf", make_blank_pdf(), "document_empty", False),
    ("broken.docx", b"PK\x03\x04" + b"\x00" * 200, "document_corrupt", True),
])
async def test_bad_documents_fail_with_the_error_stored(kb: KnowledgeBase, make_agent: AgentFactory,
                                                        name: str, data: bytes, code: str, at_once: bool) -> None:
    """Each bad file fails on its own path, pinned per case: refused by the upload itself (the type check sees a
    damaged ZIP container), or accepted and failed by the background extraction with the error stored."""
    agent = make_agent("bad")
    good = await ingest_ready(kb, agent, make_pdf(HANDBOOK), "good.pdf")
    before = await assert_consistent(kb, agent)
    if at_once:
        with pytest.raises(DocumentError) as refused:
            await kb.ingest_bytes(agent, data, name)
        assert refused.value.code == code
        assert len(await kb.list_documents(agent)) == 1
    else:
        document = await kb.ingest_bytes(agent, data, name)
        assert document.status == "processing"
        await kb.wait_idle()
        assert document.id is not None
        failed = await kb.get_document(document.id)
        assert (failed.status, failed.error_code) == ("failed", code)
        assert failed.error and name in failed.error
        assert failed.chunk_count == 0
        assert await kb.list_documents(agent, status="failed") == [failed]
    # Nothing else is affected.
    assert (await kb.get_document(good)).status == "ready"
    assert await assert_consistent(kb, agent) == before
    assert (await kb.search(agent, "refund within thirty days", limit=1))[0].document_id == good


@pytest.mark.parametrize(("data", "name", "code"), [
    (b"x" * (1024 * 1024 + 1), "huge.txt", "document_too_large"),
    (b"", "empty.txt", "document_empty"),
    (b"   \n\n  ", "blank.md", "document_empty"),
    (b"\x89PNG\r\n\x1a\n" + b"\x00" * 100, "photo.png", "document_unsupported"),
    (b"<html>fake</html>", "fake.pdf", "document_corrupt"),
])
async def test_refused_at_once_without_a_trace(kb: KnowledgeBase, make_agent: AgentFactory, data: bytes,
                                               name: str, code: str) -> None:
    agent = make_agent("refused")
    with pytest.raises(DocumentError) as info:
        await kb.ingest_bytes(agent, data, name)
    assert info.value.code == code
    assert info.value.http_status == 422
    assert await kb.list_documents() == []
    storage = kb.settings.data_dir / "knowledge"
    assert not storage.exists() or not any(p.is_file() for p in storage.rglob("*"))


async def test_duplicate_content_is_a_conflict_per_agent(kb: KnowledgeBase, make_agent: AgentFactory) -> None:
    first, second = make_agent("first"), make_agent("second")
    data = make_docx(HANDBOOK)
    doc_id = await ingest_ready(kb, first, data, "handbook.docx")
    with pytest.raises(Conflict) as info:
        await kb.ingest_bytes(first, data, "renamed-copy.docx", title="Another title")
    assert info.value.code == "document_duplicate" and str(doc_id) in info.value.message
    # Another agent may hold the same file.
    other = await ingest_ready(kb, second, data, "handbook.docx")
    assert other != doc_id
    assert len(await kb.list_documents(first)) == 1


async def test_concurrent_duplicate_uploads_store_one(kb: KnowledgeBase, make_agent: AgentFactory) -> None:
    agent = make_agent("race")
    data = ("Concurrent upload test. " + HANDBOOK[0]).encode()
    results = await asyncio.gather(*(kb.ingest_bytes(agent, data, f"copy{i}.txt") for i in range(4)),
                                   return_exceptions=True)
    await kb.wait_idle()
    accepted = [r for r in results if not isinstance(r, BaseException)]
    conflicts = [r for r in results if isinstance(r, Conflict)]
    assert len(accepted) == 1 and len(conflicts) == 3
    assert len(await kb.list_documents(agent)) == 1
    files = [p for p in (kb.settings.data_dir / "knowledge").rglob("*") if p.is_file()]
    assert len(files) == 1  # the losers' copies were removed
    await assert_consistent(kb, agent)


async def test_unknown_agent_and_document(kb: KnowledgeBase) -> None:
    with pytest.raises(NotFound):
        await kb.ingest_bytes(9999, b"some text", "a.txt")
    with pytest.raises(NotFound):
        await kb.get_document(12345)
    with pytest.raises(NotFound):
        await kb.delete_document(12345)
    with pytest.raises(NotFound):
        await kb.reindex(12345)
    assert await kb.search(9999, "anything") == []


# ============================================================================== search
async def test_search_limit_threshold_and_agent_isolation(kb: KnowledgeBase,
                                                          make_agent: AgentFactory) -> None:
    shop, clinic = make_agent("shop"), make_agent("clinic")
    await ingest_ready(kb, shop, make_pdf(HANDBOOK), "shop.pdf")
    clinic_doc = await ingest_ready(
        kb, clinic, b"The clinic opens at eight. Vaccinations need an appointment. Dr. Smith sees "
                    b"patients on Mondays. Parking is free for patients.", "clinic.txt")

    hits = await kb.search(clinic, "when does it open?", limit=10)
    assert hits and {hit.document_id for hit in hits} == {clinic_doc}
    assert hits[0].title == "clinic"
    # Titles come from the document row, so a renamed document shows its new title at once.
    await asyncio.to_thread(kb.repo.update_document, clinic_doc, title="Clinic FAQ")
    assert (await kb.search(clinic, "when does it open?", limit=1))[0].title == "Clinic FAQ"
    shop_hits = await kb.search(shop, "when does it open?", limit=10)
    assert shop_hits and clinic_doc not in {hit.document_id for hit in shop_hits}

    assert len(await kb.search(shop, "refund", limit=1)) == 1
    assert len(await kb.search(shop, "refund", limit=2)) == 2
    everything = await kb.search(shop, "refund", limit=50)
    assert len(everything) == len(await asyncio.to_thread(kb.repo.agent_chunk_ids, shop))
    cut = everything[len(everything) // 2].similarity
    above = await kb.search(shop, "refund", limit=50, threshold=cut)
    assert above and all(hit.similarity >= cut for hit in above)
    assert len(above) < len(everything)
    assert await kb.search(shop, "refund", threshold=0.99) == []

    for bad in ({"limit": 0}, {"limit": 101}, {"threshold": 1.5}):
        with pytest.raises(InvalidInput):
            await kb.search(shop, "refund", **bad)
    with pytest.raises(InvalidInput):
        await kb.search(shop, "   ")


# ============================================================================== stats
async def test_stats_by_status_chunks_bytes_average(kb: KnowledgeBase, make_agent: AgentFactory) -> None:
    agent, other = make_agent("stats"), make_agent("other")
    pdf = make_pdf(HANDBOOK)
    docx = make_docx(["Short document about parking. Parking is free after six."])
    bad = make_blank_pdf()
    await ingest_ready(kb, agent, pdf, "a.pdf")
    await ingest_ready(kb, agent, docx, "b.docx")
    await kb.ingest_bytes(agent, bad, "c.pdf")
    await ingest_ready(kb, other, b"Other agent text, unrelated.", "o.txt")
    await kb.wait_idle()
    stats = await kb.stats(agent)
    assert isinstance(stats, KnowledgeStats)
    rows = await asyncio.to_thread(kb.repo.agent_chunk_ids, agent)
    assert stats.documents == 3
    assert stats.by_status == {"pending": 0, "processing": 0, "ready": 2, "failed": 1}
    assert stats.chunks == len(rows)
    assert stats.bytes == len(pdf) + len(docx) + len(bad)
    assert stats.avg_chunks_per_document == round(len(rows) / 2, 2)
    everyone = await kb.stats()
    assert everyone.documents == 4 and everyone.chunks == stats.chunks + 1
    assert stats.to_dict()["by_status"]["failed"] == 1


# ============================================================================== delete / reindex
async def test_delete_removes_rows_vectors_and_copy(kb: KnowledgeBase, make_agent: AgentFactory) -> None:
    agent = make_agent("delete")
    keep = await ingest_ready(kb, agent, make_docx(["Keep this document about parking."]), "keep.docx")
    doc_id = await ingest_ready(kb, agent, make_pdf(HANDBOOK), "gone.pdf")
    copy = Path((await kb.get_document(doc_id)).storage_path)
    await kb.delete_document(doc_id)
    with pytest.raises(NotFound):
        await kb.get_document(doc_id)
    assert not await asyncio.to_thread(copy.exists)
    remaining = await assert_consistent(kb, agent)
    assert remaining == set(await asyncio.to_thread(kb.repo.chunk_ids, keep))
    assert {hit.document_id for hit in await kb.search(agent, "refund policy", limit=10)} == {keep}
    # The same file can be added again after deletion.
    await ingest_ready(kb, agent, make_pdf(HANDBOOK), "again.pdf")


async def test_reindex_with_new_chunking_replaces_everything(kb: KnowledgeBase, engine: Engine,
                                                              local_embedder: LocalEmbedder,
                                                              make_agent: AgentFactory) -> None:
    agent = make_agent("reindex")
    doc_id = await ingest_ready(kb, agent, make_pdf(HANDBOOK), "h.pdf")
    old = await assert_consistent(kb, agent)
    await kb.close()
    smaller = KnowledgeBase(kb.settings.with_(chunk_size=120, chunk_overlap=20), engine,
                            embedder=local_embedder)
    try:
        document = await smaller.reindex(doc_id)
        assert document.status == "processing"
        await smaller.wait_idle()
        ready = await smaller.get_document(doc_id)
        assert ready.status == "ready"
        new = await assert_consistent(smaller, agent)
        assert len(new) == ready.chunk_count > len(old)
        assert not new & old  # every old vector is gone
        hits = await smaller.search(agent, "return items within thirty days", limit=1)
        assert hits[0].page == 2 and len(hits[0].text) <= 120
    finally:
        await smaller.close()


class EmbeddingGate:
    """Holds the knowledge base's embedding step until released, so a test acts while a document is provably
    still processing (instead of hoping the machine is slow enough)."""

    def __init__(self, kb: KnowledgeBase, monkeypatch: pytest.MonkeyPatch) -> None:
        self.entered = asyncio.Event()
        self.release = asyncio.Event()
        real = kb.embedder.embed_documents

        async def gated(texts: list[str]) -> Any:
            self.entered.set()
            await self.release.wait()
            return await real(texts)

        monkeypatch.setattr(kb.embedder, "embed_documents", gated)


async def test_reindex_while_processing_is_busy(kb: KnowledgeBase, make_agent: AgentFactory,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    agent = make_agent("busy")
    gate = EmbeddingGate(kb, monkeypatch)
    document = await kb.ingest_bytes(agent, make_pdf(HANDBOOK * 3), "h.pdf")
    assert document.id is not None
    await asyncio.wait_for(gate.entered.wait(), 30)  # extracted, now embedding: processing for sure
    assert (await kb.get_document(document.id)).status == "processing"
    with pytest.raises(Conflict) as info:
        await kb.reindex(document.id)
    assert info.value.code == "document_busy"
    gate.release.set()
    await kb.wait_idle()
    await kb.reindex(document.id)
    await kb.wait_idle()
    assert (await kb.get_document(document.id)).status == "ready"
    await assert_consistent(kb, agent)


async def test_delete_while_processing_leaves_nothing(kb: KnowledgeBase, make_agent: AgentFactory,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    agent = make_agent("hurry")
    gate = EmbeddingGate(kb, monkeypatch)
    document = await kb.ingest_bytes(agent, make_pdf(HANDBOOK * 4), "big.pdf")
    assert document.id is not None
    await asyncio.wait_for(gate.entered.wait(), 30)  # the delete lands in the middle of the indexing
    assert (await kb.get_document(document.id)).status == "processing"
    await kb.delete_document(document.id)  # cancels the indexing (the gate is never opened)
    await kb.wait_idle()
    assert await kb.list_documents(agent) == []
    assert await rows_and_vectors(kb, agent) == (set(), set())


# ---------------------------------------------------------------------------- injected failures
class Boom(RuntimeError):
    pass


def fail(*_args: Any, **_kwargs: Any) -> Any:
    raise Boom("injected failure")


async def test_sql_failure_after_vectors_written_is_compensated(kb: KnowledgeBase, make_agent: AgentFactory,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    agent = make_agent("compensate")
    keep = await ingest_ready(kb, agent, make_docx(["Parking is free after six in the evening."]), "p.docx")
    before = await assert_consistent(kb, agent)
    monkeypatch.setattr(kb.repo, "replace_chunks", fail)
    document = await kb.ingest_bytes(agent, make_pdf(HANDBOOK), "h.pdf")
    await kb.wait_idle()
    assert document.id is not None
    failed = await kb.get_document(document.id)
    assert (failed.status, failed.error_code) == ("failed", "internal_error")
    assert "injected failure" in failed.error
    assert await assert_consistent(kb, agent) == before  # the new vectors were taken back
    assert (await kb.get_document(keep)).status == "ready"


async def test_reindex_failing_halfway_keeps_the_old_index(kb: KnowledgeBase, make_agent: AgentFactory,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    agent = make_agent("halfway")
    doc_id = await ingest_ready(kb, agent, make_pdf(HANDBOOK), "h.pdf")
    before = await assert_consistent(kb, agent)
    monkeypatch.setattr(kb.repo, "replace_chunks", fail)
    await kb.reindex(doc_id)
    await kb.wait_idle()
    assert (await kb.get_document(doc_id)).status == "failed"
    rows, vectors = await rows_and_vectors(kb, agent)
    assert rows == vectors == before
    assert (await kb.search(agent, "refund within thirty days", limit=1))[0].chunk_id in before
    monkeypatch.undo()
    await kb.reindex(doc_id)
    await kb.wait_idle()
    assert (await kb.get_document(doc_id)).status == "ready"
    assert not (await assert_consistent(kb, agent)) & before


async def test_vector_write_failure_fails_the_document_only(kb: KnowledgeBase, make_agent: AgentFactory,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    agent = make_agent("chroma-down")
    def chroma_down(*_args: Any, **_kwargs: Any) -> None:
        raise StoreError("chroma down")

    monkeypatch.setattr(kb.store, "upsert", chroma_down)
    document = await kb.ingest_bytes(agent, make_pdf(HANDBOOK), "h.pdf")
    await kb.wait_idle()
    assert document.id is not None
    failed = await kb.get_document(document.id)
    assert (failed.status, failed.error_code) == ("failed", "vector_store_error")
    assert await rows_and_vectors(kb, agent) == (set(), set())


async def test_delete_failing_in_sql_restores_the_vectors(kb: KnowledgeBase, make_agent: AgentFactory,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    agent = make_agent("restore")
    doc_id = await ingest_ready(kb, agent, make_pdf(HANDBOOK), "h.pdf")
    before = await assert_consistent(kb, agent)
    results_before = await kb.search(agent, "shipping to Canada", limit=3)
    monkeypatch.setattr(kb.repo, "delete_document", fail)
    with pytest.raises(Boom):
        await kb.delete_document(doc_id)
    assert await assert_consistent(kb, agent) == before
    assert await asyncio.to_thread(Path((await kb.get_document(doc_id)).storage_path).is_file)
    assert await kb.search(agent, "shipping to Canada", limit=3) == results_before
    monkeypatch.undo()
    await kb.delete_document(doc_id)
    assert await rows_and_vectors(kb, agent) == (set(), set())


async def test_delete_failing_in_chroma_changes_nothing(kb: KnowledgeBase, make_agent: AgentFactory,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    agent = make_agent("chroma-fails")
    doc_id = await ingest_ready(kb, agent, make_pdf(HANDBOOK), "h.pdf")
    before = await assert_consistent(kb, agent)
    monkeypatch.setattr(kb.store, "delete", fail)
    with pytest.raises(Boom):
        await kb.delete_document(doc_id)
    assert (await kb.get_document(doc_id)).status == "ready"
    assert await assert_consistent(kb, agent) == before


async def test_failed_compensation_leaves_only_invisible_orphans_that_reconcile_removes(
        kb: KnowledgeBase, make_agent: AgentFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    agent = make_agent("orphans")
    keep = await ingest_ready(kb, agent, make_docx(["Parking is free after six in the evening."]), "p.docx")
    live = await assert_consistent(kb, agent)
    # Both the SQL swap and the undo of the vectors fail: orphan vectors remain in Chroma.
    monkeypatch.setattr(kb.repo, "replace_chunks", fail)
    monkeypatch.setattr(kb.store, "delete", fail)
    await kb.ingest_bytes(agent, make_pdf(HANDBOOK), "h.pdf")
    await kb.wait_idle()
    monkeypatch.undo()
    rows, vectors = await rows_and_vectors(kb, agent)
    assert rows == live and vectors > rows
    # Search never returns a chunk whose row does not exist.
    hits = await kb.search(agent, "refund within thirty days", limit=5)
    assert {hit.chunk_id for hit in hits} <= live and hits[0].document_id == keep
    report = await kb.reconcile(agent)
    assert report.removed_vectors == len(vectors - rows) and report.reindexed_documents == []
    assert await assert_consistent(kb, agent) == live


async def test_reconcile_reindexes_documents_with_missing_vectors(kb: KnowledgeBase, make_agent: AgentFactory
                                                                  ) -> None:
    agent = make_agent("missing")
    doc_id = await ingest_ready(kb, agent, make_pdf(HANDBOOK), "h.pdf")
    rows, _ = await rows_and_vectors(kb, agent)
    lost = sorted(rows)[:2]
    await asyncio.to_thread(kb.store.delete, agent, lost)  # e.g. a Chroma server restored from an old backup
    report = await kb.reconcile(agent)
    assert report == type(report)(removed_vectors=0, reindexed_documents=[doc_id])
    await kb.wait_idle()
    assert (await kb.get_document(doc_id)).status == "ready"
    await assert_consistent(kb, agent)


# ============================================================================== lifecycle
async def test_close_interrupts_and_recover_resumes(kb_settings: Settings, engine: Engine,
                                                    local_embedder: LocalEmbedder,
                                                    make_agent: AgentFactory) -> None:
    agent = make_agent("resume")
    first = KnowledgeBase(kb_settings, engine, embedder=local_embedder)
    document = await first.ingest_bytes(agent, make_pdf(HANDBOOK * 4), "long.pdf")
    assert document.id is not None
    await first.close()
    await first.close()  # idempotent
    with pytest.raises(KnowledgeError):
        await first.search(agent, "refund")
    interrupted = await asyncio.to_thread(first.repo.get_document, document.id)
    assert interrupted.status in {"pending", "processing"}
    second = KnowledgeBase(kb_settings, engine, embedder=local_embedder)
    try:
        assert await second.recover() == [document.id]
        await second.wait_idle()
        assert (await second.get_document(document.id)).status == "ready"
        await assert_consistent(second, agent)
    finally:
        await second.close()


class RenamedEmbedder(LocalEmbedder):
    """The same model under another name: stands for switching EVA_EMBEDDER on an existing install."""

    def __init__(self) -> None:
        super().__init__()
        self.name = "local:another-model"


async def test_embedder_change_is_detected_and_reindex_agent_moves_over(
        kb: KnowledgeBase, kb_settings: Settings, engine: Engine, make_agent: AgentFactory) -> None:
    agent = make_agent("switch")
    doc_id = await ingest_ready(kb, agent, make_pdf(HANDBOOK), "h.pdf")
    await kb.close()
    switched = KnowledgeBase(kb_settings, engine, embedder=RenamedEmbedder())
    try:
        with pytest.raises(KnowledgeError) as info:
            await switched.search(agent, "refund")
        assert info.value.code == "embedder_mismatch"
        assert [d.id for d in await switched.reindex_agent(agent)] == [doc_id]
        await switched.wait_idle()
        assert (await switched.search(agent, "refund within thirty days", limit=1))[0].page == 2
        await assert_consistent(switched, agent)
    finally:
        await switched.close()


async def test_delete_agent_knowledge(kb: KnowledgeBase, make_agent: AgentFactory) -> None:
    agent, other = make_agent("leaving"), make_agent("staying")
    await ingest_ready(kb, agent, make_pdf(HANDBOOK), "h.pdf")
    await ingest_ready(kb, agent, b"Second doc about parking fees.", "p.txt")
    kept = await ingest_ready(kb, other, b"Other agent keeps its text about parking.", "o.txt")
    assert await kb.delete_agent_knowledge(agent) == 2
    assert await kb.list_documents(agent) == []
    assert await asyncio.to_thread(kb.store.collection, agent, create=False) is None
    assert (await kb.search(other, "parking", limit=1))[0].document_id == kept
