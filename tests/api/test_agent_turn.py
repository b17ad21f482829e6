"""``POST /agents/{id}/test`` and ``GET /agents/base-models`` with the real embedded LLM (Gemma 3 270M) and the
real knowledge base."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from sqlalchemy.engine import Engine
from sqlmodel import select

from models import Conversation
from models.db import session_scope
from rag import KnowledgeBase
from rag.embeddings import LocalEmbedder
from tests.api.conftest import Api, offline_settings, start_api
from tests.embedded_model import shared_embedded_llm


@pytest.fixture
async def llm_api(tmp_path: Path, sqlite_engine: Engine) -> AsyncIterator[tuple[Api, KnowledgeBase]]:
    settings = offline_settings(tmp_path / "data")
    kb = KnowledgeBase(settings, sqlite_engine, embedder=LocalEmbedder())
    api = await start_api(settings, sqlite_engine, offline_asterisk=True, kb=kb, llm=shared_embedded_llm())
    yield api, kb
    await api.client.close()
    await kb.close()


async def test_base_models_lists_the_backend(llm_api: tuple[Api, KnowledgeBase]) -> None:
    api, _ = llm_api
    status, models = await api.call("GET", "/api/v1/agents/base-models", role="viewer")
    assert status == 200
    assert models["backend"] == "embedded"
    assert models["default_model"] in models["models"]


async def test_one_text_turn_with_sources_and_timings(llm_api: tuple[Api, KnowledgeBase]) -> None:
    api, kb = llm_api
    status, agent = await api.call("POST", "/api/v1/agents", role="designer", json={
        "name": "harbour", "persona": "You answer questions about the Acme harbour office.", "max_tokens": 24,
        "temperature": 0.0})
    assert status == 201
    form = aiohttp.FormData(default_to_multipart=True)
    form.add_field("agent_id", str(agent["id"]))
    form.add_field("file", io.BytesIO(b"The Acme harbour office opens at seven in the morning on weekdays."),
                   filename="hours.txt", content_type="text/plain")
    response = await api.client.post("/api/v1/knowledge/upload", data=form, headers=api.auth("designer"))
    document = await response.json()
    assert response.status == 202, document
    await kb.wait_idle()

    status, turn = await api.call("POST", f"/api/v1/agents/{agent['id']}/test", role="designer",
                                  json={"message": "When does the harbour office open?"})
    assert status == 200, turn
    assert turn["reply"].strip()
    assert [s["document_id"] for s in turn["sources"]] == [document["id"]]
    assert turn["sources"][0]["title"] == "hours"
    assert {"retrieval_ms", "total_ms"} <= set(turn["timings"])
    assert all(value >= 0 for value in turn["timings"].values())
    with session_scope(api.engine) as session:
        conversation = session.exec(select(Conversation)).one()
        assert (conversation.channel, conversation.external_id) == ("chat", "admin-api-test")

    status, error = await api.call("POST", "/api/v1/agents/999/test", role="designer", json={"message": "hi"})
    assert status == 404
    status, error = await api.call("POST", f"/api/v1/agents/{agent['id']}/test", role="designer",
                                   json={"message": "   "})
    assert (status, error["error"]["field"]) == (422, "message")
    status, error = await api.call("POST", f"/api/v1/agents/{agent['id']}/test", role="viewer",
                                   json={"message": "hi"})
    assert status == 403


async def test_llm_endpoints_without_a_model(api: Api) -> None:
    status, error = await api.call("GET", "/api/v1/agents/base-models", role="viewer")
    assert (status, error["error"]["code"]) == (503, "llm_unavailable")
