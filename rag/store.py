"""Chroma vector store: one cosine collection per agent, our own embeddings, no telemetry.

Embedded ``PersistentClient`` under the data directory by default; an ``HttpClient`` when
``EVA_CHROMA_URL`` names a Chroma server (the scale-out deployment).  We always pass vectors ourselves and
create collections with ``embedding_function=None``: Chroma's default embedder would download a model at run
time.

Every method here blocks (Chroma's client is synchronous); the knowledge base calls them from worker threads.
Each collection records which embedding model wrote it, so vectors of different models never mix: a mismatch
is a clear error that asks for a reindex.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from voicebot.config import Settings
from voicebot.errors import ConfigError, KnowledgeError

log = logging.getLogger(__name__)

COLLECTION_PREFIX = "eva_agent_"
MAX_BATCH = 1000
"""Rows per Chroma write (below every server's max batch size; keeps HTTP bodies moderate)."""


@dataclass(frozen=True)
class VectorRecord:
    """One chunk as Chroma stores it."""

    id: str
    embedding: list[float]
    text: str
    metadata: dict[str, Any]


@dataclass(frozen=True)
class VectorMatch:
    id: str
    distance: float
    text: str
    metadata: dict[str, Any]


class StoreError(KnowledgeError):
    """Chroma failed (server down, disk full, ...)."""

    code = "vector_store_error"
    http_status = 502


def collection_name(agent_id: int) -> str:
    return f"{COLLECTION_PREFIX}{agent_id}"


def chunk_metadata(*, agent_id: int, document_id: int, title: str, page: int | None,
                   ordinal: int) -> dict[str, Any]:
    metadata: dict[str, Any] = {"agent_id": agent_id, "document_id": document_id, "title": title,
                                "ordinal": ordinal}
    if page is not None:  # Chroma metadata values cannot be None
        metadata["page"] = page
    return metadata


HTTP_CONNECT_TIMEOUT = 5.0
HTTP_TIMEOUT = 60.0
"""Per request to a Chroma server (its own query timeout is 60 s; our largest write is MAX_BATCH rows)."""


def _http_timeout() -> Any:
    import httpx

    return httpx.Timeout(HTTP_TIMEOUT, connect=HTTP_CONNECT_TIMEOUT)


def _probe(base_url: str) -> None:
    """One heartbeat with a timeout: refuse a server that accepts connections but does not answer."""
    import httpx

    try:
        with httpx.Client(timeout=httpx.Timeout(HTTP_CONNECT_TIMEOUT)) as http:
            http.get(f"{base_url}/api/v2/heartbeat").raise_for_status()
    except httpx.HTTPError as exc:
        raise StoreError(f"the Chroma server at {base_url} does not answer: {type(exc).__name__} {exc}"
                         ) from exc


class VectorStore:
    """Thread-safe wrapper over one Chroma client."""

    def __init__(self, settings: Settings, embedder_name: str) -> None:
        self.settings = settings
        self.embedder_name = embedder_name
        self._client: Any = None
        self._lock = threading.Lock()
        self._collections: dict[int, Any] = {}

    # ------------------------------------------------------------------ connection
    def client(self) -> Any:
        with self._lock:
            if self._client is None:
                self._client = self._connect()
            return self._client

    def _connect(self) -> Any:
        # Set before chromadb is imported: its telemetry client reads this at import time.
        os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")
        try:
            import chromadb
            from chromadb.config import Settings as ChromaSettings
        except ImportError as exc:  # pragma: no cover - a declared dependency
            raise StoreError("chromadb is not installed") from exc
        chroma_settings = ChromaSettings(anonymized_telemetry=False, allow_reset=False)
        url = self.settings.chroma_url.strip()
        try:
            if not url:
                path = self.settings.chroma_dir
                path.mkdir(parents=True, exist_ok=True)
                return chromadb.PersistentClient(path=str(path), settings=chroma_settings)
            parts = urlsplit(url)
            if parts.scheme not in {"http", "https"} or not parts.hostname:
                raise ConfigError(f"EVA_CHROMA_URL must be http(s)://host:port, not {url!r}",
                                  field="chroma_url")
            ssl = parts.scheme == "https"
            port = parts.port or (443 if ssl else 8000)
            # Chroma's HTTP client has no timeout at all (httpx ``timeout=None``), and its constructor already
            # talks to the server: a hung server would hold our worker threads forever.  So: probe with a
            # timeout first, then give the client's own sessions one.
            _probe(f"{parts.scheme}://{parts.hostname}:{port}")
            client = chromadb.HttpClient(host=parts.hostname, port=port, ssl=ssl, settings=chroma_settings)
            for owner in (client, getattr(client, "_admin_client", None)):
                session = getattr(getattr(owner, "_server", None), "_session", None)
                if session is not None:
                    session.timeout = _http_timeout()
            client.heartbeat()
            return client
        except ConfigError:
            raise
        except Exception as exc:
            where = url or str(self.settings.chroma_dir)
            raise StoreError(f"cannot open the Chroma store at {where}: {exc}") from exc

    def close(self) -> None:
        with self._lock:
            client, self._client = self._client, None
            self._collections.clear()
        if client is None:
            return
        # Chroma's HTTP client (and its internal admin client) keep httpx connection pools that client.close()
        # does not close (chromadb 1.5); close them ourselves, or every KnowledgeBase leaks sockets.
        sessions = [getattr(getattr(owner, "_server", None), "_session", None)
                    for owner in (client, getattr(client, "_admin_client", None))]
        try:
            client.close()
            for session in sessions:
                if session is not None:
                    session.close()
        except Exception:  # closing must never mask the caller's own outcome
            log.debug("closing the Chroma client failed", exc_info=True)

    # ------------------------------------------------------------------ collections
    def collection(self, agent_id: int, *, create: bool) -> Any:
        """The agent's collection; None when it does not exist and ``create`` is false."""
        cached = self._collections.get(agent_id)
        if cached is not None:
            return cached
        client = self.client()
        name = collection_name(agent_id)
        try:
            if create:
                collection = client.get_or_create_collection(
                    name, configuration={"hnsw": {"space": "cosine"}},
                    metadata={"embedder": self.embedder_name, "agent_id": agent_id}, embedding_function=None)
            else:
                try:
                    collection = client.get_collection(name, embedding_function=None)
                except Exception as exc:
                    if type(exc).__name__ in {"NotFoundError", "InvalidCollectionException"} or (
                            isinstance(exc, ValueError) and "does not exist" in str(exc)):
                        return None
                    raise
        except Exception as exc:
            raise StoreError(f"Chroma collection {name}: {exc}") from exc
        stored = (collection.metadata or {}).get("embedder")
        if stored and stored != self.embedder_name:
            raise KnowledgeError(
                f"agent {agent_id}'s vectors were made by {stored}, but the embedder is now "
                f"{self.embedder_name}; run `eva kb reindex --agent NAME --all`", code="embedder_mismatch")
        self._collections[agent_id] = collection
        return collection

    def drop(self, agent_id: int) -> None:
        """Delete the agent's whole collection (moving to a new embedder, deleting an agent)."""
        self._collections.pop(agent_id, None)
        client = self.client()
        try:
            client.delete_collection(collection_name(agent_id))
        except Exception as exc:
            if type(exc).__name__ == "NotFoundError" or "does not exist" in str(exc):
                return
            raise StoreError(f"cannot drop the Chroma collection of agent {agent_id}: {exc}") from exc

    def _call(self, agent_id: int, what: str, func: Any, /, **kwargs: Any) -> Any:
        try:
            return func(**kwargs)
        except KnowledgeError:
            raise
        except Exception as exc:
            # A dropped/recreated collection invalidates our cached handle.
            self._collections.pop(agent_id, None)
            raise StoreError(f"Chroma {what} failed for agent {agent_id}: {exc}") from exc

    # ------------------------------------------------------------------ writes
    def upsert(self, agent_id: int, records: Sequence[VectorRecord]) -> None:
        if not records:
            return
        collection = self.collection(agent_id, create=True)
        for start in range(0, len(records), MAX_BATCH):
            batch = records[start:start + MAX_BATCH]
            self._call(agent_id, "upsert", collection.upsert, ids=[r.id for r in batch],
                       embeddings=[r.embedding for r in batch], documents=[r.text for r in batch],
                       metadatas=[r.metadata for r in batch])

    def delete(self, agent_id: int, ids: Sequence[str]) -> None:
        if not ids:
            return
        collection = self.collection(agent_id, create=False)
        if collection is None:
            return
        for start in range(0, len(ids), MAX_BATCH):
            self._call(agent_id, "delete", collection.delete, ids=list(ids[start:start + MAX_BATCH]))

    # ------------------------------------------------------------------ reads
    def get(self, agent_id: int, ids: Sequence[str]) -> list[VectorRecord]:
        """Full records (vectors included) of ``ids`` that exist: the undo snapshot before a delete."""
        collection = self.collection(agent_id, create=False)
        if collection is None or not ids:
            return []
        records: list[VectorRecord] = []
        for start in range(0, len(ids), MAX_BATCH):
            result = self._call(agent_id, "get", collection.get, ids=list(ids[start:start + MAX_BATCH]),
                                include=["embeddings", "documents", "metadatas"])
            for index, record_id in enumerate(result["ids"]):
                records.append(VectorRecord(
                    id=record_id, embedding=[float(x) for x in result["embeddings"][index]],
                    text=result["documents"][index] or "", metadata=dict(result["metadatas"][index] or {})))
        return records

    def ids(self, agent_id: int, *, document_id: int | None = None) -> list[str]:
        """Every vector id of the agent (or of one document)."""
        collection = self.collection(agent_id, create=False)
        if collection is None:
            return []
        where = {"document_id": document_id} if document_id is not None else None
        found: list[str] = []
        offset = 0
        while True:
            page = self._call(agent_id, "get", collection.get, where=where, include=[], limit=MAX_BATCH,
                              offset=offset)
            found.extend(page["ids"])
            if len(page["ids"]) < MAX_BATCH:
                return found
            offset += MAX_BATCH

    def count(self, agent_id: int) -> int:
        collection = self.collection(agent_id, create=False)
        if collection is None:
            return 0
        return int(self._call(agent_id, "count", collection.count))

    def query(self, agent_id: int, embedding: Sequence[float], n_results: int) -> list[VectorMatch]:
        collection = self.collection(agent_id, create=False)
        if collection is None:
            return []
        # Chroma (1.x) returns fewer results when the collection holds fewer than n_results: no count() first.
        result = self._call(agent_id, "query", collection.query, query_embeddings=[list(embedding)],
                            n_results=n_results, include=["distances", "documents", "metadatas"])
        matches: list[VectorMatch] = []
        for index, record_id in enumerate(result["ids"][0]):
            matches.append(VectorMatch(id=record_id, distance=float(result["distances"][0][index]),
                                       text=result["documents"][0][index] or "",
                                       metadata=dict(result["metadatas"][0][index] or {})))
        return matches
