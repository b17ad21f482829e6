"""Contract tests of the fakes themselves: FakeOllama speaks Ollama's documented wire format, checked through the
official ``ollama`` client (whose pydantic models validate every response).  These test the double, not Eva: they
are what lets the Eva tests that talk to the fake stand for the real server."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.fakes.ollama_server import FakeOllama


@pytest.fixture
async def fake() -> AsyncIterator[FakeOllama]:
    async with FakeOllama() as server:
        yield server


async def test_fake_embed_endpoint_speaks_the_documented_format(fake: FakeOllama) -> None:
    import ollama

    client = ollama.AsyncClient(host=fake.url)
    try:
        result = await client.embed(model="nomic-embed-text", input=["opening hours", "opening times"])
        assert len(result.embeddings) == 2 and len(result.embeddings[0]) == fake.embed_dim
        with pytest.raises(ollama.ResponseError) as info:
            await client.embed(model="missing-model", input="x")
        assert info.value.status_code == 404
    finally:
        await client.close()  # type: ignore[no-untyped-call]
