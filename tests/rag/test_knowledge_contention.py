"""The knowledge base under contention with calls: a hung Chroma server must not hold a retrieval past its
timeout, a large document's rows must not starve other SQLite writers (call setup), and a query embedding must
not queue behind an ingestion's embedding work."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Awaitable

import pytest
from sqlalchemy import event
from sqlalchemy.engine import Engine

from models import Agent, KnowledgeChunk, KnowledgeDocument
from models.db import session_scope
from rag import KnowledgeBase
from rag.embeddings import LocalEmbedder
from rag.repository import KnowledgeRepository, ReplaceStopped
from rag.store import VectorStore
from tests.rag.conftest import agent_factory
from voicebot.config import Settings


# ------------------------------------------------------------------------------------ hung Chroma server
async def test_retrieval_timeout_is_not_held_by_a_hung_chroma_server(kb_settings: Settings, sqlite_engine: Engine,
                                                                     local_embedder: LocalEmbedder) -> None:
    """A real TCP server that accepts connections and never says a word (a wedged Chroma behind the compose
    network).  A retrieval under ``asyncio.timeout(0.5)`` (what the agent core and barge-in do) ends at once,
    and SQL work of the knowledge base is not stuck behind the hung reads."""
    connections: list[asyncio.StreamWriter] = []

    async def swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(writer)
        await reader.read()  # until the client gives up; never answers

    server = await asyncio.start_server(swallow, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    await local_embedder.warm_up()
    kb = KnowledgeBase(kb_settings.with_(chroma_url=f"http://127.0.0.1:{port}"), sqlite_engine,
                       embedder=local_embedder)
    agent_id = agent_factory(sqlite_engine)("hung-chroma")

    async def retrieve() -> None:
        async with asyncio.timeout(0.5):
            await kb.search(agent_id, "When does the harbour office open?")

    try:
        started = time.perf_counter()
        retrievals = [asyncio.ensure_future(retrieve()) for _ in range(6)]  # more than the pool has threads
        done, _ = await asyncio.wait(retrievals, timeout=5)
        elapsed = time.perf_counter() - started
        assert len(done) == len(retrievals), "retrievals were still waiting for the hung Chroma server after 5 s"
        for task in retrievals:
            with pytest.raises(TimeoutError):
                task.result()
        assert elapsed < 2.0, f"the 0.5 s retrieval timeouts took {elapsed:.1f} s"
        stats = asyncio.ensure_future(kb.stats(agent_id))
        await asyncio.wait({stats}, timeout=5)
        assert stats.done() and stats.result().documents == 0, "SQL work queued behind hung Chroma reads"
    finally:
        server.close()
        for writer in connections:
            writer.close()
        await asyncio.gather(*retrievals, return_exceptions=True)
        await kb.close()


# ------------------------------------------------------------------------------------ SQLite writer starvation
def _document(engine: Engine, name: str) -> tuple[KnowledgeRepository, int, int]:
    repo = KnowledgeRepository(engine)
    agent_id = agent_factory(engine)(name)
    document = repo.add_document(KnowledgeDocument(
        agent_id=agent_id, title=name, filename=f"{name}.txt", mime_type="text/plain", size_bytes=1,
        sha256=uuid.uuid4().hex * 2, status="processing", storage_path=""))
    assert document.id is not None
    return repo, agent_id, document.id


def _rows(document_id: int, agent_id: int, count: int) -> list[KnowledgeChunk]:
    return [KnowledgeChunk(document_id=document_id, agent_id=agent_id, ordinal=index, page=None,
                           text_hash=f"{index:064x}", chroma_id=uuid.uuid4().hex, chars=100)
            for index in range(count)]


def _on_first_chunk_insert(engine: Engine, action: threading.Event) -> None:
    @event.listens_for(engine, "before_cursor_execute")
    def spot(_conn: object, _cursor: object, statement: str, *_args: object) -> None:
        if statement.lstrip().upper().startswith("INSERT INTO KNOWLEDGE_CHUNKS"):
            action.set()


def test_another_writer_gets_in_while_a_large_document_is_written(sqlite_engine: Engine) -> None:
    """Call setup writes (here: an agent row) while 5,000 chunk rows are being written.  It gets the SQLite
    write lock between two batches, so it sees the document still ``processing``; with one big transaction
    it could only write after the switch (and waited up to the 30 s busy timeout on a big document)."""
    repo, agent_id, document_id = _document(sqlite_engine, "big")
    writing = threading.Event()
    _on_first_chunk_insert(sqlite_engine, writing)
    seen: dict[str, object] = {}

    def call_setup() -> None:
        writing.wait(30)
        with session_scope(sqlite_engine) as session:
            session.add(Agent(name="written-during-ingestion"))
            session.flush()  # needs the write lock
            document = session.get(KnowledgeDocument, document_id)
            assert document is not None
            seen["status"] = document.status
            seen["live"] = len(repo.live_chunks(row.chroma_id for row in rows))

    rows = _rows(document_id, agent_id, 5000)
    writer = threading.Thread(target=call_setup)
    writer.start()
    repo.replace_chunks(document_id, rows, status="ready", chunk_count=len(rows))
    writer.join(60)
    assert seen.get("status") == "processing", seen
    assert seen.get("live") == 0, "staged rows were visible to search before the switch"
    assert len(repo.live_chunks(row.chroma_id for row in rows)) == len(rows)
    assert repo.get_document(document_id).status == "ready"
    assert repo.chunk_ids(document_id) == [row.chroma_id for row in rows]


def test_stopped_replace_keeps_the_old_version(sqlite_engine: Engine) -> None:
    repo, agent_id, document_id = _document(sqlite_engine, "stopped")
    old = _rows(document_id, agent_id, 10)
    repo.replace_chunks(document_id, old, status="ready")
    stop = threading.Event()
    _on_first_chunk_insert(sqlite_engine, stop)  # cancelled while its first batch is written
    with pytest.raises(ReplaceStopped):
        repo.replace_chunks(document_id, _rows(document_id, agent_id, 1200), stop=stop, status="ready")
    assert repo.chunk_ids(document_id) == [row.chroma_id for row in old]
    assert repo.get_document(document_id).status == "ready"


def test_leftover_staged_rows_are_replaced_too(sqlite_engine: Engine) -> None:
    """A process that died mid-write left staged rows; the next index run removes them (and reports their
    vector ids for deletion)."""
    repo, agent_id, document_id = _document(sqlite_engine, "leftover")
    stale = _rows(document_id, agent_id, 3)
    with session_scope(sqlite_engine) as session:
        for row in stale:
            row.ordinal = -row.ordinal - 1
            session.add(row)
    fresh = _rows(document_id, agent_id, 4)
    replaced = repo.replace_chunks(document_id, fresh, status="ready")
    assert sorted(replaced) == sorted(row.chroma_id for row in stale)
    assert repo.chunk_ids(document_id) == [row.chroma_id for row in fresh]


# ------------------------------------------------------------------------------------ embedding lanes
async def test_query_embedding_is_not_queued_behind_document_batches(local_embedder: LocalEmbedder) -> None:
    """Two documents' embedding batches are queued, then a caller's query: the query finishes first (after
    at most the one small document job already running), not after both batches."""
    await local_embedder.warm_up()
    tag = uuid.uuid4().hex  # fresh texts: the embedding cache must not answer
    order: list[str] = []

    async def run(name: str, work: Awaitable[object]) -> None:
        await work
        order.append(name)

    documents_a = [f"{tag} A {index}: parcels to Canada cost twelve dollars and take five days."
                   for index in range(64)]
    documents_b = [f"{tag} B {index}: the returns desk on the second floor opens at nine."
                   for index in range(64)]
    await asyncio.gather(run("document A", local_embedder.embed_documents(documents_a)),
                         run("document B", local_embedder.embed_documents(documents_b)),
                         run("query", local_embedder.embed_query(f"{tag} when does the returns desk open?")))
    assert order[0] == "query", order


async def test_close_while_chunk_rows_are_written_leaves_nothing_half_done(kb_settings: Settings,
                                                                          sqlite_engine: Engine,
                                                                          local_embedder: LocalEmbedder) -> None:
    """Cancelling the indexing task in the middle of the batched row write: the write stops at its next batch
    and removes its staged rows, the new vectors are taken back, and the document waits to be resumed."""
    agent_id = agent_factory(sqlite_engine)("closing")
    settings = kb_settings.with_(chunk_size=60, chunk_overlap=0)
    kb = KnowledgeBase(settings, sqlite_engine, embedder=local_embedder)
    await kb.recover()
    tag = uuid.uuid4().hex[:6]
    text = "\n\n".join(f"Locker {index} {tag} is near door {index * 7}." for index in range(1200))
    loop = asyncio.get_running_loop()
    writing = asyncio.Event()
    flag = threading.Event()
    _on_first_chunk_insert(sqlite_engine, flag)

    @event.listens_for(sqlite_engine, "after_cursor_execute")
    def notify(*_args: object) -> None:
        if flag.is_set() and not writing.is_set():
            loop.call_soon_threadsafe(writing.set)

    document = await kb.ingest_bytes(agent_id, text.encode(), "lockers.txt")
    assert document.id is not None
    await asyncio.wait_for(writing.wait(), 300)
    await kb.close()
    repo = KnowledgeRepository(sqlite_engine)
    assert repo.chunk_ids(document.id) == [], "staged or half-written rows were left behind"
    final = repo.get_document(document.id)
    assert (final.status, final.error_code) == ("pending", "interrupted")
    store = VectorStore(settings, local_embedder.name)
    try:
        assert await asyncio.to_thread(store.ids, agent_id) == []  # the new vectors were taken back
    finally:
        await asyncio.to_thread(store.close)
