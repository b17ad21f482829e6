"""Embedders: the real local model (all-MiniLM-L6-v2 from its package) and the Ollama backend against a local
server speaking Ollama's ``/api/embed`` JSON (no real Ollama can run here)."""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from aiohttp import web

from rag.embeddings import LocalEmbedder, OllamaEmbedder, make_embedder
from tests.fakes.ollama_server import FakeOllama
from voicebot.config import Settings
from voicebot.errors import ConfigError, EmbeddingError


def cosine(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True))


# ============================================================================== local
async def test_local_vectors_are_unit_length_and_meaningful(local_embedder: LocalEmbedder) -> None:
    refund, returns, weather = await local_embedder.embed_documents([
        "Customers can get their money back within thirty days.",
        "You may return a product for a refund during the first month.",
        "Heavy rain and strong winds are expected tomorrow.",
    ])
    assert len(refund) == 384
    for vector in (refund, returns, weather):
        assert math.isclose(math.sqrt(sum(x * x for x in vector)), 1.0, rel_tol=1e-4)
    assert cosine(refund, returns) > cosine(refund, weather) + 0.2
    query = await local_embedder.embed_query("how do I get a refund?")
    assert cosine(query, returns) > cosine(query, weather)


async def test_local_cache_and_batching(local_embedder: LocalEmbedder) -> None:
    embedder = LocalEmbedder(batch_size=4, cache_size=50)
    texts = [f"Distinct sentence number {i} about camping gear." for i in range(10)]
    first = await embedder.embed_documents([*texts, texts[0]])  # a duplicate inside one call
    assert (embedder.cache_misses, embedder.cache_hits) == (10, 0)
    assert first[0] == first[10]
    again = await embedder.embed_documents(texts[:3])
    assert again == first[:3] and embedder.cache_hits == 3
    # Same text as a query is a separate cache entry (backends may embed queries differently).
    await embedder.embed_query(texts[0])
    assert embedder.cache_misses == 11
    # The cache is bounded.
    await embedder.embed_documents([f"filler {i}" for i in range(100)])
    assert len(embedder._cache) == 50


def test_make_embedder_by_settings() -> None:
    assert isinstance(make_embedder(Settings(embedder="local")), LocalEmbedder)
    ollama = make_embedder(Settings(embedder="ollama", ollama_embed_model="nomic-embed-text"))
    assert isinstance(ollama, OllamaEmbedder) and ollama.name == "ollama:nomic-embed-text"
    with pytest.raises(ConfigError):
        make_embedder(Settings(embedder="openai"))


# ============================================================================== ollama
@pytest.fixture
async def fake_ollama() -> AsyncIterator[FakeOllama]:
    async with FakeOllama(embed_dim=32) as fake:
        yield fake


async def test_ollama_embeds_in_batches_with_task_prefixes(fake_ollama: FakeOllama) -> None:
    embedder = OllamaEmbedder(fake_ollama.url, "nomic-embed-text", timeout=5, batch_size=3)
    try:
        texts = [f"parcel {i} ships to Canada" for i in range(7)]
        vectors = await embedder.embed_documents(texts)
        query = await embedder.embed_query("shipping to Canada")
    finally:
        await embedder.close()
        await embedder.close()  # idempotent
    bodies = fake_ollama.bodies("/api/embed")
    assert [len(body["input"]) for body in bodies] == [3, 3, 1, 1]
    assert bodies[0]["model"] == "nomic-embed-text"
    assert bodies[0]["input"][0] == "search_document: parcel 0 ships to Canada"
    assert bodies[-1]["input"] == ["search_query: shipping to Canada"]
    assert len(vectors) == 7 and all(len(v) == 32 for v in vectors)
    assert vectors[0] == fake_ollama.embed_text("search_document: parcel 0 ships to Canada")
    assert math.isclose(sum(x * x for x in query), 1.0, rel_tol=1e-6)


async def test_ollama_missing_model_is_a_clear_error(fake_ollama: FakeOllama) -> None:
    embedder = OllamaEmbedder(fake_ollama.url, "mxbai-embed-large", timeout=5)
    try:
        with pytest.raises(EmbeddingError) as info:
            await embedder.embed_query("hello")
    finally:
        await embedder.close()
    assert info.value.code == "embedding_model_missing"
    assert "ollama pull mxbai-embed-large" in info.value.message


async def test_ollama_unreachable() -> None:
    async with FakeOllama() as fake:
        url = fake.url
    embedder = OllamaEmbedder(url, "nomic-embed-text", timeout=5)  # nothing listens there any more
    try:
        with pytest.raises(EmbeddingError) as info:
            await embedder.embed_documents(["hello"])
    finally:
        await embedder.close()
    assert info.value.code == "embedding_unavailable"


async def _odd_server(handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                      ) -> tuple[web.AppRunner, str]:
    app = web.Application()
    app.router.add_post("/api/embed", handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    server = site._server
    assert server is not None
    port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
    return runner, f"http://127.0.0.1:{port}"


async def test_ollama_timeout_server_error_and_bad_body() -> None:
    release = asyncio.Event()

    async def slow(_request: web.Request) -> web.Response:
        await release.wait()
        return web.json_response({"embeddings": [[1.0]]})

    async def broken(_request: web.Request) -> web.Response:
        return web.json_response({"error": "llama runner process has terminated"}, status=500)

    async def short(_request: web.Request) -> web.Response:
        return web.json_response({"model": "nomic-embed-text", "embeddings": [[0.5, 0.5]]})

    for handler, texts, code, words in ((slow, ["a"], "embedding_failed", "did not answer"),
                                        (broken, ["a"], "embedding_failed", "llama runner"),
                                        (short, ["a", "b"], "embedding_failed", "1 embeddings for 2")):
        runner, url = await _odd_server(handler)
        embedder = OllamaEmbedder(url, "nomic-embed-text", timeout=0.5)
        try:
            with pytest.raises(EmbeddingError) as info:
                await embedder.embed_documents(texts)
            assert info.value.code == code
            assert words in info.value.message
        finally:
            release.set()
            await embedder.close()
            await runner.cleanup()
