"""``KnowledgeBase``: ingestion in the background, search, deletion and reindexing that keep SQL and Chroma
consistent.

Consistency rules (SQL is the source of truth; a chunk exists when its row exists):

- **Index / reindex**: new vectors get fresh ids and are written to Chroma first; then ONE SQL transaction
  swaps the document's chunk rows and marks it ready.  If that transaction fails (or the work is cancelled),
  the new vectors are deleted again (compensation) and the old rows and vectors are untouched.  Only after the
  commit are the replaced vectors deleted.
- **Delete**: the document's vectors are snapshotted, deleted from Chroma, then the rows are deleted in one
  transaction; if that fails the snapshot is written back.
- If a compensation step itself fails (Chroma down at that very moment), the leftover is an orphan *vector*,
  never an orphan row: search only returns chunks whose row exists, and ``reconcile()`` sweeps such vectors
  (and reindexes any document whose vectors went missing).
- Chroma writes run on one dedicated thread, so they happen in submission order: a compensation can never
  overtake the write it undoes, even when we stopped waiting for that write (timeout, cancellation).
- The chunk rows are written in short batches with *staged* ordinals that search ignores (see
  ``KnowledgeRepository.replace_chunks``), so a large document never holds the SQLite write lock for long
  (call setup writes too); the switch to the new rows is still one small transaction.

Everything blocking (SQL, Chroma, the embedding model) runs in executors, and documents are read (detected,
extracted, chunked) in a separate resource-limited process (``rag.sandbox``): the event loop never blocks.
Cancelling a caller (a retrieval timeout, barge-in) stops its wait at once, even when the thread it was waiting
for is stuck in a hung Chroma server; only the transaction whose outcome a compensation depends on is waited
for.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import logging
import os
import threading
import uuid
from collections.abc import Callable
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import Any, TypeVar

from sqlalchemy.engine import Engine

from models import KnowledgeChunk, KnowledgeDocument
from rag.chunking import Chunk, check_sizes
from rag.embeddings import Embedder, make_embedder
from rag.extract import detect_type
from rag.repository import KnowledgeRepository
from rag.sandbox import SandboxLimits, extract_chunks
from rag.store import StoreError, VectorRecord, VectorStore, chunk_metadata
from rag.types import KnowledgeStats, SearchHit
from voicebot.config import Settings
from voicebot.errors import Conflict, DocumentError, EvaError, InvalidInput, KnowledgeError, NotFound
from voicebot.media.priority import background_thread

log = logging.getLogger(__name__)

T = TypeVar("T")

EMBED_BATCH = 64
"""Chunks per embedding call; progress is reported after each batch."""
CHROMA_WRITE_TIMEOUT = 300.0
CHROMA_READ_TIMEOUT = 30.0
MAX_SEARCH_LIMIT = 100
PROCESSING_CONCURRENCY = 2
"""Documents processed at once (the embedding model itself runs one batch at a time)."""


@dataclass(frozen=True)
class ReconcileReport:
    removed_vectors: int
    reindexed_documents: list[int]


class KnowledgeBase:
    """Per-agent knowledge: documents in SQL, vectors in Chroma.  Create one per process; ``close()`` it."""

    def __init__(self, settings: Settings, engine: Engine, embedder: Embedder | None = None) -> None:
        check_sizes(settings.chunk_size, settings.chunk_overlap)
        self.settings = settings
        self.repo = KnowledgeRepository(engine)
        self._own_embedder = embedder is None
        self.embedder = embedder if embedder is not None else make_embedder(settings)
        self.store = VectorStore(settings, self.embedder.name)
        self._executor = ThreadPoolExecutor(max_workers=4, thread_name_prefix="eva-kb")
        # Chroma reads on their own threads: a hung Chroma server blocks these, never the SQL work above.
        self._chroma_reader = ThreadPoolExecutor(max_workers=4, thread_name_prefix="eva-kb-chroma-read")
        self._limits = SandboxLimits.from_settings(settings)
        # One thread: Chroma writes (and their compensations) run strictly in submission order.
        # Indexing is background work: below the calls' media clocks (voicebot.media.priority).
        self._chroma_writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="eva-kb-chroma",
                                                 initializer=background_thread)
        self._tasks: dict[int, asyncio.Task[None]] = {}
        self._semaphore = asyncio.Semaphore(PROCESSING_CONCURRENCY)
        self._closed = False

    @property
    def storage_dir(self) -> Path:
        return self.settings.data_dir / "knowledge"

    # ================================================================== ingestion
    async def ingest_file(self, agent_id: int, path: str | os.PathLike[str], *, title: str = "",
                          description: str = "", filename: str | None = None) -> KnowledgeDocument:
        """Accept a file from disk; indexing continues in the background (see ``ingest_bytes``)."""
        source = Path(path)
        try:
            size = (await self._run(source.stat)).st_size
        except FileNotFoundError as exc:
            raise DocumentError(f"{source} does not exist", code="document_missing") from exc
        except OSError as exc:
            raise DocumentError(f"cannot read {source}: {exc.strerror}", code="document_unreadable") from exc
        if not await self._run(source.is_file):
            raise DocumentError(f"{source} is not a regular file", code="document_unreadable")
        self._check_size(size, filename or source.name)
        try:
            data = await self._run(source.read_bytes)
        except OSError as exc:
            raise DocumentError(f"cannot read {source}: {exc.strerror}", code="document_unreadable") from exc
        return await self.ingest_bytes(agent_id, data, filename or source.name, title=title,
                                       description=description)

    async def ingest_bytes(self, agent_id: int, data: bytes, filename: str, *, title: str = "",
                           description: str = "") -> KnowledgeDocument:
        """Validate quickly, store a copy, create the document (status ``processing``) and return at once.

        Raises ``DocumentError`` (too large, empty, unsupported type), ``NotFound`` (no such agent) or
        ``Conflict`` (``document_duplicate``: the same content is already in this agent's knowledge).
        Extraction, chunking and embedding run in the background and end in status ``ready`` or ``failed``
        (with ``error``/``error_code`` on the document).
        """
        self._check_open()
        name = PurePath(filename.replace("\\", "/")).name.strip()[:500] or "document.txt"
        self._check_size(len(data), name)
        if not await self._run(self.repo.agent_exists, agent_id):
            raise NotFound(f"agent {agent_id} does not exist")
        doc_type = await self._run(detect_type, data, name)
        sha256 = await self._run(lambda: hashlib.sha256(data).hexdigest())
        existing = await self._run(self.repo.find_by_sha256, agent_id, sha256)
        if existing is not None:
            raise Conflict(f"this file is already in the knowledge base as document {existing.id} "
                           f"({existing.title or existing.filename!r}, status {existing.status})",
                           code="document_duplicate")
        stored = await self._run(self._store_copy, agent_id, data, doc_type.extension)
        document = KnowledgeDocument(
            agent_id=agent_id, title=(title.strip() or PurePath(name).stem)[:500],
            description=description.strip()[:2000], filename=name, mime_type=doc_type.mime,
            size_bytes=len(data), sha256=sha256, status="processing", storage_path=str(stored))
        try:
            document = await self._run(self.repo.add_document, document)
        except BaseException:
            await self._run(_unlink_quietly, stored)
            raise
        log.info("knowledge document %s accepted for agent %s (%s, %d bytes)", document.id, agent_id,
                 doc_type.kind, len(data))
        self._schedule(document)
        return document

    def _check_size(self, size: int, name: str) -> None:
        limit = self.settings.max_upload_mb * 1024 * 1024
        if size > limit:
            raise DocumentError(
                f"{name} is {size / 1048576:.1f} MB; the limit is {self.settings.max_upload_mb} MB",
                code="document_too_large")
        if size == 0:
            raise DocumentError(f"{name} is empty", code="document_empty")

    def _store_copy(self, agent_id: int, data: bytes, extension: str) -> Path:
        folder = self.storage_dir / str(agent_id)
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / f"{uuid.uuid4().hex}{extension}"
        partial = target.with_suffix(target.suffix + ".part")
        partial.write_bytes(data)
        os.replace(partial, target)  # never a half-written copy under the final name
        return target

    def _schedule(self, document: KnowledgeDocument) -> None:
        assert document.id is not None
        task = asyncio.get_running_loop().create_task(self._process(document.id),
                                                      name=f"eva-kb-index-{document.id}")
        self._tasks[document.id] = task
        task.add_done_callback(functools.partial(self._forget, document.id))

    def _forget(self, document_id: int, task: asyncio.Task[None]) -> None:
        if self._tasks.get(document_id) is task:
            del self._tasks[document_id]

    async def wait_idle(self) -> None:
        """Wait until no document is being processed."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks.values()), return_exceptions=True)

    # ------------------------------------------------------------------ background indexing
    async def _process(self, document_id: int) -> None:
        async with self._semaphore:
            try:
                await self._index(document_id)
            except asyncio.CancelledError:
                # Only while still processing: if the new rows were committed meanwhile, the document is ready.
                await self._mark(document_id, when_status="processing", status="pending", progress=0.0,
                                 error_code="interrupted",
                                 error="indexing was interrupted; it resumes on the next start")
                raise
            except EvaError as exc:
                log.warning("knowledge document %s failed: [%s] %s", document_id, exc.code, exc.message)
                await self._mark(document_id, status="failed", error_code=exc.code, error=exc.message[:2000])
            except Exception as exc:
                log.exception("knowledge document %s failed unexpectedly", document_id)
                await self._mark(document_id, status="failed", error_code="internal_error",
                                 error=f"internal error: {type(exc).__name__}: {exc}"[:2000])

    async def _mark(self, document_id: int, *, when_status: str | None = None, **changes: Any) -> None:
        try:
            await self._run(self.repo.update_document, document_id, when_status=when_status, **changes)
        except NotFound:
            pass  # deleted meanwhile
        except EvaError:
            raise
        except Exception:
            log.exception("could not record the state of knowledge document %s", document_id)

    async def _index(self, document_id: int) -> None:
        document = await self._run(self.repo.update_document, document_id, status="processing", progress=0.0,
                                   error="", error_code="")
        agent_id = document.agent_id
        data = await self._read_copy(document)
        chunks = await extract_chunks(data, document.filename, chunk_size=self.settings.chunk_size,
                                      overlap=self.settings.chunk_overlap, limits=self._limits)
        del data
        if not chunks:
            raise DocumentError(f"{document.filename} contains no text", code="document_empty")
        await self._run(self.repo.update_document, document_id, progress=0.1)

        vectors: list[list[float]] = []
        for start in range(0, len(chunks), EMBED_BATCH):
            batch = chunks[start:start + EMBED_BATCH]
            vectors.extend(await self.embedder.embed_documents([chunk.text for chunk in batch]))
            done = min(start + EMBED_BATCH, len(chunks))
            progress = round(0.1 + 0.8 * done / len(chunks), 3)
            await self._run(self.repo.update_document, document_id, progress=progress)

        # Built on a thread: tens of thousands of objects are too much work for the event loop.
        records, rows = await self._run(_records_and_rows, document, chunks, vectors)
        new_ids = [record.id for record in records]
        stop = threading.Event()
        commit: asyncio.Future[list[str]] | None = None
        try:
            await self._write(self.store.upsert, agent_id, records)
            commit = self._submit(self.repo.replace_chunks, document_id, rows, stop=stop, status="ready",
                                  progress=1.0, chunk_count=len(rows), error="", error_code="")
            replaced = await asyncio.shield(commit)
        except BaseException as exc:
            if commit is not None and isinstance(exc, asyncio.CancelledError):
                stop.set()  # the batched write stops at the next batch and removes its staged rows
                await _settle(commit)
            if commit is not None and commit.done() and not commit.cancelled() and commit.exception() is None:
                # The switch committed before the cancellation took effect: the new version is live, so
                # nothing is undone; only the replaced vectors are left to delete (in writer order).
                self._chroma_writer.submit(self._delete_quietly, agent_id, commit.result())
            else:
                await self._compensate(agent_id, new_ids, f"indexing document {document_id}")
            raise
        try:
            await self._write(self.store.delete, agent_id, replaced)
        except EvaError as exc:
            log.warning("old vectors of document %s stay until the next reconcile: %s", document_id,
                        exc.message)
        log.info("knowledge document %s ready: %d chunks", document_id, len(rows))

    async def _read_copy(self, document: KnowledgeDocument) -> bytes:
        try:
            return await self._run(Path(document.storage_path).read_bytes)
        except OSError as exc:
            raise DocumentError(f"the stored copy of {document.filename} is missing ({exc.strerror}); "
                                "upload the file again", code="document_missing") from exc

    def _delete_quietly(self, agent_id: int, ids: list[str]) -> None:
        """Delete replaced vectors on the writer thread without anyone waiting (reconcile() sweeps failures)."""
        try:
            self.store.delete(agent_id, ids)
        except EvaError as exc:
            log.warning("old vectors of agent %s stay until the next reconcile: %s", agent_id, exc.message)

    async def _compensate(self, agent_id: int, ids: list[str], what: str) -> None:
        """Undo a Chroma write whose SQL half did not happen.  Never raises (the original error matters)."""
        try:
            await self._write(self.store.delete, agent_id, ids)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("could not undo the vectors written while %s; reconcile() will remove them", what)

    # ================================================================== search
    async def search(self, agent_id: int, query: str, *, limit: int = 5,
                     threshold: float = 0.0) -> list[SearchHit]:
        """The agent's chunks most similar to ``query`` (cosine similarity ≥ ``threshold``), best first."""
        self._check_open()
        if not 1 <= limit <= MAX_SEARCH_LIMIT:
            raise InvalidInput(f"limit must be between 1 and {MAX_SEARCH_LIMIT}", field="limit")
        if not -1.0 <= threshold <= 1.0:
            raise InvalidInput("threshold must be between -1 and 1", field="threshold")
        if not query.strip():
            raise InvalidInput("the query is empty", field="query")
        vector = await self.embedder.embed_query(query.strip())
        # A few extra candidates make up for vectors whose row is gone (orphans awaiting reconcile).
        matches = await self._read(self.store.query, agent_id, vector, limit + 5)
        if not matches:
            return []
        # SQL decides what exists (and the title is the document's current one, not the indexed copy).
        live = await self._run(self.repo.live_chunks, [match.id for match in matches])
        hits: list[SearchHit] = []
        for match in matches:
            similarity = 1.0 - match.distance
            if match.id not in live or similarity < threshold:
                continue
            page = match.metadata.get("page")
            hits.append(SearchHit(chunk_id=match.id, document_id=int(match.metadata.get("document_id", 0)),
                                  title=live[match.id],
                                  page=int(page) if page is not None else None,
                                  ordinal=int(match.metadata.get("ordinal", 0)), text=match.text,
                                  similarity=round(similarity, 6)))
        hits.sort(key=lambda hit: hit.similarity, reverse=True)
        return hits[:limit]

    # ================================================================== documents
    async def list_documents(self, agent_id: int | None = None,
                             status: str | None = None) -> list[KnowledgeDocument]:
        return await self._run(self.repo.list_documents, agent_id, status)

    async def get_document(self, doc_id: int) -> KnowledgeDocument:
        return await self._run(self.repo.get_document, doc_id)

    async def delete_document(self, doc_id: int) -> None:
        """Delete a document, its chunks, its vectors and its stored copy (consistently, see module doc)."""
        self._check_open()
        document = await self._run(self.repo.get_document, doc_id)
        await self._cancel_processing(doc_id)
        agent_id = document.agent_id
        row_ids = await self._run(self.repo.chunk_ids, doc_id)
        stray_ids = await self._read(self.store.ids, agent_id, document_id=doc_id)
        all_ids = list(dict.fromkeys([*row_ids, *stray_ids]))
        # Undo snapshot: only vectors whose rows exist need restoring if the SQL delete fails.
        snapshot = await self._read(self.store.get, agent_id, row_ids)
        await self._write(self.store.delete, agent_id, all_ids)
        try:
            await self._run(self.repo.delete_document, doc_id)
        except BaseException:
            try:
                await self._write(self.store.upsert, agent_id, snapshot)
            except Exception:
                log.exception("could not restore the vectors of document %s; reindex it", doc_id)
            raise
        if document.storage_path:
            await self._run(_unlink_quietly, Path(document.storage_path))
        log.info("knowledge document %s deleted (%d vectors)", doc_id, len(all_ids))

    async def reindex(self, doc_id: int) -> KnowledgeDocument:
        """Extract, chunk and embed the stored copy again (e.g. after a chunking or model change)."""
        self._check_open()
        document = await self._run(self.repo.get_document, doc_id)
        if doc_id in self._tasks:
            raise Conflict(f"document {doc_id} is being processed; try again when it is done",
                           code="document_busy")
        if not document.storage_path or not await self._run(Path(document.storage_path).is_file):
            raise DocumentError(f"the stored copy of {document.filename} is missing; upload the file again",
                                code="document_missing")
        document = await self._run(self.repo.update_document, doc_id, status="processing", progress=0.0,
                                   error="", error_code="")
        self._schedule(document)
        return document

    async def reindex_agent(self, agent_id: int) -> list[KnowledgeDocument]:
        """Reindex every document of an agent; also the way to move an agent to a new embedding model."""
        self._check_open()
        try:
            await self._read(self.store.collection, agent_id, create=False)
        except KnowledgeError as exc:
            if exc.code != "embedder_mismatch":
                raise
            # Vectors of another model are useless: drop them; the rows are rebuilt below.
            log.warning("dropping agent %s's vectors made by another embedding model", agent_id)
            await self._write(self.store.drop, agent_id)
        documents = await self._run(self.repo.list_documents, agent_id, None)
        return [await self.reindex(document.id) for document in documents
                if document.id is not None and document.id not in self._tasks]

    async def delete_agent_knowledge(self, agent_id: int) -> int:
        """Delete all of an agent's documents and its collection (call before deleting the agent row)."""
        documents = await self._run(self.repo.list_documents, agent_id, None)
        for document in documents:
            assert document.id is not None
            await self.delete_document(document.id)
        await self._write(self.store.drop, agent_id)
        return len(documents)

    async def stats(self, agent_id: int | None = None) -> KnowledgeStats:
        return await self._run(self.repo.stats, agent_id)

    async def _cancel_processing(self, doc_id: int) -> None:
        task = self._tasks.get(doc_id)
        if task is None or task.done():
            return
        task.cancel()
        # The task compensates its own Chroma writes before it ends.
        await asyncio.wait({task})

    # ================================================================== maintenance
    async def warm_up(self) -> None:
        """Open the vector store now: chromadb's first import and client start hold the GIL for about a second
        (its native parts load), which must happen at start, not in the middle of a call's retrieval."""
        self._check_open()
        try:
            await self._read(self.store.client)
        except EvaError as exc:
            log.warning("the vector store is not available yet (%s); it is retried on first use", exc.message)

    async def recover(self) -> list[int]:
        """Resume documents left ``pending``/``processing`` by a previous run (call once at server start).

        Opens the vector store first (``warm_up``).
        """
        self._check_open()
        await self.warm_up()
        resumed: list[int] = []
        for status in ("pending", "processing"):
            for document in await self._run(self.repo.list_documents, None, status):
                if document.id is not None and document.id not in self._tasks:
                    self._schedule(document)
                    resumed.append(document.id)
        if resumed:
            log.info("resuming indexing of %d knowledge documents", len(resumed))
        return resumed

    async def reconcile(self, agent_id: int | None = None) -> ReconcileReport:
        """Remove vectors without a chunk row and reindex documents whose vectors are missing.

        Run it when no other Eva process is indexing the same agents (vectors being written by an in-flight
        job elsewhere would look like orphans).
        """
        self._check_open()
        documents = await self._run(self.repo.list_documents, agent_id, None)
        agents = sorted({document.agent_id for document in documents} | ({agent_id} if agent_id else set()))
        removed = 0
        reindex_ids: list[int] = []
        busy = set(self._tasks)
        for agent in agents:
            rows = await self._run(self.repo.agent_chunk_ids, agent)
            vectors = set(await self._read(self.store.ids, agent))
            candidates = sorted(vectors - rows)
            if busy and candidates:
                # Vectors of documents being indexed right now are not orphans yet.
                records = await self._read(self.store.get, agent, candidates)
                candidates = [r.id for r in records if int(r.metadata.get("document_id", -1)) not in busy]
            if candidates:
                await self._write(self.store.delete, agent, candidates)
                removed += len(candidates)
            if rows - vectors:
                for document in documents:
                    if (document.agent_id == agent and document.id is not None and document.id not in busy
                            and set(await self._run(self.repo.chunk_ids, document.id)) - vectors):
                        await self.reindex(document.id)
                        reindex_ids.append(document.id)
        if removed or reindex_ids:
            log.warning("reconcile: removed %d orphan vectors, reindexing documents %s", removed, reindex_ids)
        return ReconcileReport(removed_vectors=removed, reindexed_documents=reindex_ids)

    # ================================================================== lifecycle
    async def close(self) -> None:
        """Stop background work (interrupted documents resume via ``recover()``) and release everything."""
        if self._closed:
            return
        self._closed = True
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.to_thread(self._chroma_writer.shutdown, wait=True)
        # Reads may still be stuck in a hung server (their callers stopped waiting); do not wait for them.
        self._chroma_reader.shutdown(wait=False, cancel_futures=True)
        await asyncio.to_thread(self.store.close)
        await asyncio.to_thread(self._executor.shutdown, wait=True)
        if self._own_embedder:
            await self.embedder.close()

    def _check_open(self) -> None:
        if self._closed:
            raise KnowledgeError("the knowledge base is closed", code="knowledge_closed")

    # ================================================================== executors
    async def _run(self, func: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        """``func`` on the general worker pool (SQL, files)."""
        return await self._in_executor(self._executor, func, args, kwargs, None)

    async def _read(self, func: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        """A Chroma read on the reader pool, bounded by ``CHROMA_READ_TIMEOUT``."""
        return await self._in_executor(self._chroma_reader, func, args, kwargs, CHROMA_READ_TIMEOUT)

    async def _write(self, func: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        return await self._in_executor(self._chroma_writer, func, args, kwargs, CHROMA_WRITE_TIMEOUT)

    def _submit(self, func: Callable[..., T], /, *args: Any, **kwargs: Any) -> asyncio.Future[T]:
        """``func`` started on the general pool; the caller decides how to wait (see ``_index``)."""
        future = asyncio.get_running_loop().run_in_executor(self._executor,
                                                            functools.partial(func, *args, **kwargs))
        future.add_done_callback(_consume)
        return future

    async def _in_executor(self, executor: Executor, func: Callable[..., T], args: tuple[Any, ...],
                           kwargs: dict[str, Any], limit_s: float | None) -> T:
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(executor, functools.partial(func, *args, **kwargs))
        future.add_done_callback(_consume)
        try:
            async with asyncio.timeout(limit_s):
                # Shielded: a timeout or a cancellation ends our wait at once, while the thread (which cannot be
                # interrupted) finishes on its own.  Waiting for it here would make a hung Chroma server hold
                # up a call's retrieval timeout and barge-in.  Writes stay safe: Chroma writes (and their
                # compensations) run in submission order on one thread, and the one SQL write a compensation
                # depends on is settled explicitly (``_index``).
                return await asyncio.shield(future)
        except TimeoutError as exc:
            name = getattr(func, "__name__", "operation")
            raise StoreError(f"knowledge store operation {name} timed out after {limit_s:.0f}s") from exc


def _consume(future: asyncio.Future[Any]) -> None:
    """Retrieve an abandoned job's outcome, so that asyncio does not log it as never retrieved."""
    if not future.cancelled():
        future.exception()


async def _settle(future: asyncio.Future[Any]) -> None:
    """Wait until a started thread job has ended, through further cancellations.

    Only for the transaction whose outcome decides the compensation; the caller re-raises the cancellation
    that brought it here, so none is lost (the job is short: it stops at its next batch).
    """
    while not future.done():
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait({future})


def _records_and_rows(document: KnowledgeDocument, chunks: list[Chunk],
                      vectors: list[list[float]]) -> tuple[list[VectorRecord], list[KnowledgeChunk]]:
    assert document.id is not None
    records = [VectorRecord(id=uuid.uuid4().hex, embedding=vector, text=chunk.text,
                            metadata=chunk_metadata(agent_id=document.agent_id, document_id=document.id,
                                                    title=document.title, page=chunk.page,
                                                    ordinal=chunk.ordinal))
               for chunk, vector in zip(chunks, vectors, strict=True)]
    rows = [KnowledgeChunk(document_id=document.id, agent_id=document.agent_id, ordinal=chunk.ordinal,
                           page=chunk.page, text_hash=chunk.text_hash, chroma_id=record.id,
                           chars=len(chunk.text))
            for chunk, record in zip(chunks, records, strict=True)]
    return records, rows


def _unlink_quietly(path: Path) -> None:
    try:
        path.unlink(missing_ok=True)
    except OSError:
        log.warning("could not remove %s", path)
