"""Hostile documents uploaded through the real admin API (aiohttp server, real knowledge base, real reader
process): each upload is accepted with 202 and the document ends ``ready`` or ``failed`` with a reason, never a
5xx and never lost; the server keeps answering (and its event loop keeps ticking) while they are read."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from sqlalchemy.engine import Engine

from rag import KnowledgeBase
from rag.embeddings import LocalEmbedder
from tests.api.conftest import Api, offline_settings, start_api
from tests.loop_probe import LoopProbe, stall_bound
from tests.rag.test_untrusted_documents import BRACKETS, HTML_CPU_BOMB, docx_bomb


@pytest.fixture(scope="module")
def embedder() -> LocalEmbedder:
    return LocalEmbedder()


@pytest.fixture
async def kb_api(tmp_path: Path, sqlite_engine: Engine, embedder: LocalEmbedder) -> AsyncIterator[
        tuple[Api, KnowledgeBase]]:
    settings = offline_settings(tmp_path / "data", max_upload_mb=2, extract_cpu_seconds=3)
    await embedder.warm_up()
    kb = KnowledgeBase(settings, sqlite_engine, embedder=embedder)
    await kb.recover()  # as the server does at start (opens Chroma)
    api = await start_api(settings, sqlite_engine, offline_asterisk=True, kb=kb)
    yield api, kb
    await api.client.close()
    await kb.close()


async def _upload(api: Api, agent_id: int, name: str, content: bytes) -> tuple[int, Any]:
    form = aiohttp.FormData(default_to_multipart=True)
    form.add_field("agent_id", str(agent_id))
    form.add_field("file", io.BytesIO(content), filename=name, content_type="application/octet-stream")
    response = await api.client.post("/api/v1/knowledge/upload", data=form, headers=api.auth("designer"))
    return response.status, await response.json()


async def test_hostile_uploads_end_ready_or_failed_with_a_reason(kb_api: tuple[Api, KnowledgeBase]) -> None:
    api, kb = kb_api
    status, agent = await api.call("POST", "/api/v1/agents", json={"name": "hostile"})
    assert status == 201
    expected = {"brackets.md": {"ready", "failed"}, "bomb.docx": {"failed"}, "links.html": {"failed"}}
    files = {"brackets.md": BRACKETS, "bomb.docx": docx_bomb(), "links.html": HTML_CPU_BOMB}

    async with LoopProbe(0.02) as probe:
        documents: dict[str, int] = {}
        for name, content in files.items():
            status, document = await _upload(api, agent["id"], name, content)
            assert status == 202, (name, document)
            assert document["status"] == "processing"
            documents[name] = document["id"]
        # The API answers while the documents are read.
        status, _health = await api.call("GET", "/api/v1/knowledge/stats", role="viewer")
        assert status == 200
        await kb.wait_idle()
    for name, document_id in documents.items():
        status, document = await api.call("GET", f"/api/v1/knowledge/documents/{document_id}", role="viewer")
        assert status == 200
        assert document["status"] in expected[name], (name, document)
        if document["status"] == "failed":
            assert document["error_code"] and document["error"], (name, document)
    status, bomb = await api.call("GET", f"/api/v1/knowledge/documents/{documents['bomb.docx']}", role="viewer")
    assert bomb["error_code"] == "document_too_complex"
    status, html = await api.call("GET", f"/api/v1/knowledge/documents/{documents['links.html']}", role="viewer")
    assert html["error_code"] == "document_too_complex" and "CPU" in html["error"]
    gap = probe.longest_delay
    assert gap < stall_bound(), f"the API's event loop stalled for {gap * 1000:.0f} ms"
