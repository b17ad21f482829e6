"""Knowledge over HTTP with the real knowledge base (MiniLM embeddings, embedded Chroma): upload → processing →
ready → searchable, and every way an upload can be wrong."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from sqlalchemy.engine import Engine
from sqlmodel import select

from models import KnowledgeDocument
from models.db import session_scope
from rag import KnowledgeBase
from rag.embeddings import LocalEmbedder
from tests.api.conftest import Api, offline_settings, start_api

FACTS = ("# Opening hours\n\nThe Lisbon harbour office of Acme Shipping opens at seven in the morning and "
         "closes at half past four on weekdays. On Saturdays it is closed.\n\n# Parking\n\nVisitors park in "
         "the blue garage behind the customs building; the first two hours are free.\n")


@pytest.fixture(scope="session")
def api_embedder() -> LocalEmbedder:
    return LocalEmbedder()


@pytest.fixture
async def kb_api(tmp_path: Path, sqlite_engine: Engine, api_embedder: LocalEmbedder) -> AsyncIterator[
        tuple[Api, KnowledgeBase]]:
    settings = offline_settings(tmp_path / "data", max_upload_mb=1)
    kb = KnowledgeBase(settings, sqlite_engine, embedder=api_embedder)
    api = await start_api(settings, sqlite_engine, offline_asterisk=True, kb=kb)
    yield api, kb
    await api.client.close()
    await kb.close()


def form(fields: dict[str, str], file: tuple[str, bytes, str] | None) -> aiohttp.FormData:
    data = aiohttp.FormData(default_to_multipart=True)
    for name, value in fields.items():
        data.add_field(name, value)
    if file is not None:
        name, content, mime = file
        data.add_field("file", io.BytesIO(content), filename=name, content_type=mime)
    return data


async def upload(api: Api, fields: dict[str, str], file: tuple[str, bytes, str] | None,
                 role: str = "designer") -> tuple[int, Any]:
    response = await api.client.post("/api/v1/knowledge/upload", data=form(fields, file), headers=api.auth(role))
    return response.status, await response.json()


async def _agent(api: Api, name: str = "harbour") -> int:
    status, agent = await api.call("POST", "/api/v1/agents", json={"name": name})
    assert status == 201
    agent_id: int = agent["id"]
    return agent_id


async def test_upload_processing_ready_searchable(kb_api: tuple[Api, KnowledgeBase]) -> None:
    api, kb = kb_api
    agent_id = await _agent(api)
    fields = {"agent_id": str(agent_id), "title": "Harbour office", "description": "visitor info"}
    status, document = await upload(api, fields, ("harbour.md", FACTS.encode(), "text/markdown"))
    assert status == 202, document
    assert (document["status"], document["title"], document["filename"]) == ("processing", "Harbour office",
                                                                             "harbour.md")
    await kb.wait_idle()
    status, ready = await api.call("GET", f"/api/v1/knowledge/documents/{document['id']}", role="viewer")
    assert (status, ready["status"], ready["error"]) == (200, "ready", "")
    assert ready["chunk_count"] >= 1

    status, hits = await api.call("POST", "/api/v1/knowledge/search", role="viewer",
                                  json={"agent_id": agent_id, "query": "When does the harbour office open?"})
    assert status == 200 and hits, hits
    assert hits[0]["document_id"] == document["id"]
    assert "seven in the morning" in hits[0]["text"]
    assert hits[0]["similarity"] > 0.3

    status, stats = await api.call("GET", f"/api/v1/knowledge/stats?agent_id={agent_id}", role="viewer")
    assert (status, stats["documents"], stats["by_status"].get("ready")) == (200, 1, 1)
    status, page = await api.call("GET", f"/api/v1/knowledge/documents?agent_id={agent_id}&status=ready",
                                  role="viewer")
    assert [d["id"] for d in page["items"]] == [document["id"]]

    status, again = await api.call("POST", f"/api/v1/knowledge/{document['id']}/reindex", role="designer")
    assert (status, again["status"]) == (202, "processing")
    await kb.wait_idle()
    assert (await api.call("GET", f"/api/v1/knowledge/documents/{document['id']}"))[1]["status"] == "ready"

    # The same file twice for one agent is a conflict; the agent cannot be deleted while it has knowledge.
    status, error = await upload(api, {"agent_id": str(agent_id)}, ("copy.md", FACTS.encode(), "text/markdown"))
    assert (status, error["error"]["code"]) == (409, "document_duplicate")
    assert (await api.call("DELETE", f"/api/v1/agents/{agent_id}"))[0] == 409

    assert (await api.call("DELETE", f"/api/v1/knowledge/documents/{document['id']}", role="designer"))[0] == 204
    status, hits = await api.call("POST", "/api/v1/knowledge/search", role="viewer",
                                  json={"agent_id": agent_id, "query": "When does the harbour office open?"})
    assert (status, hits) == (200, [])
    assert (await api.call("GET", f"/api/v1/knowledge/documents/{document['id']}"))[0] == 404


async def test_bad_uploads(kb_api: tuple[Api, KnowledgeBase]) -> None:
    api, kb = kb_api
    agent_id = str(await _agent(api))
    big = b"word " * (1024 * 1024 // 5 + 1000)  # just over the 1 MB limit of this server
    cases: list[tuple[dict[str, str], tuple[str, bytes, str] | None, int, str, str | None]] = [
        ({"agent_id": agent_id}, ("big.txt", big, "text/plain"), 413, "payload_too_large", "file"),
        ({"agent_id": agent_id}, ("setup.exe", b"MZ\x90\x00binary", "application/octet-stream"), 415,
         "unsupported_media_type", "file"),
        ({"agent_id": agent_id}, ("photo.txt", b"\x89PNG\r\n\x1a\nxxxx", "text/plain"), 415,
         "unsupported_media_type", "file"),
        ({"agent_id": agent_id}, ("broken.pdf", b"this is no pdf at all", "application/pdf"), 422,
         "document_corrupt", None),
        ({"agent_id": agent_id}, ("empty.txt", b"   \n", "text/plain"), 422, "document_empty", None),
        ({"agent_id": "999999"}, ("a.txt", b"some text", "text/plain"), 422, "invalid_input", "agent_id"),
        ({"agent_id": "not a number"}, ("a.txt", b"some text", "text/plain"), 422, "invalid_input", "agent_id"),
        ({"agent_id": agent_id}, None, 422, "invalid_input", "file"),
        ({"agent_id": agent_id, "colour": "blue"}, ("a.txt", b"some text", "text/plain"), 422, "invalid_input",
         "colour"),
        ({"agent_id": agent_id, "title": "t" * 501}, ("a.txt", b"some text", "text/plain"), 422, "invalid_input",
         "title"),
    ]
    for fields, file, status, code, field in cases:
        answer, body = await upload(api, fields, file)
        assert (answer, body["error"]["code"], body["error"]["field"]) == (status, code, field), (file, body)
    # Wrong or broken envelopes.
    response = await api.client.post("/api/v1/knowledge/upload", json={"agent_id": 1}, headers=api.auth("designer"))
    assert response.status == 415
    response = await api.client.post(
        "/api/v1/knowledge/upload", data=b"--xyz\r\nthis is not a part\r\n",
        headers={**api.auth("designer"), "Content-Type": "multipart/form-data; boundary=xyz"})
    assert (response.status, (await response.json())["error"]["code"]) == (400, "malformed_multipart")
    await kb.wait_idle()
    with session_scope(api.engine) as session:
        assert session.exec(select(KnowledgeDocument)).all() == []  # nothing refused was kept
    assert not any((api.settings.data_dir / "knowledge").rglob("*.*"))


async def test_path_traversal_in_file_names_is_neutralised(kb_api: tuple[Api, KnowledgeBase]) -> None:
    api, kb = kb_api
    agent_id = str(await _agent(api))
    names = {"../../../../etc/cron.d/evil.md": "evil.md", "..\\\\..\\\\windows\\\\notes.txt": "notes.txt",
             "/absolute/path/readme.txt": "readme.txt", 'we<ird>:na*me?|".txt': "we_ird__na_me___.txt",
             "..%2F..%2Fencoded.txt": "encoded.txt", "..": "document.txt"}
    for index, (raw, expected) in enumerate(names.items()):
        # Built by hand: a hostile client sends the name raw, exactly as written (a quoted-string, so a
        # Windows path's backslashes travel doubled).
        boundary = "evaboundary"
        body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"agent_id\"\r\n\r\n{agent_id}\r\n"
                f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{raw}\"\r\n"
                f"Content-Type: text/plain\r\n\r\nFact number {index} about the harbour.\r\n"
                f"--{boundary}--\r\n").encode("latin-1")
        response = await api.client.post(
            "/api/v1/knowledge/upload", data=body,
            headers={**api.auth("designer"), "Content-Type": f"multipart/form-data; boundary={boundary}"})
        document = await response.json()
        assert response.status == 202, (raw, document)
        assert document["filename"] == expected, raw
    # Control characters in a header are refused by the multipart parser itself.
    response = await api.client.post(
        "/api/v1/knowledge/upload",
        data=(b'--b\r\nContent-Disposition: form-data; name="file"; filename="a\x01b.txt"\r\n\r\nx\r\n--b--\r\n'),
        headers={**api.auth("designer"), "Content-Type": "multipart/form-data; boundary=b"})
    assert (response.status, (await response.json())["error"]["code"]) == (400, "malformed_multipart")
    await kb.wait_idle()
    _check_stored_copies(api, len(names))


def _check_stored_copies(api: Api, count: int) -> None:
    """Every stored copy lies inside the knowledge folder; nothing was written where a name pointed."""
    root = (api.settings.data_dir / "knowledge").resolve()
    with session_scope(api.engine) as session:
        documents = session.exec(select(KnowledgeDocument)).all()
        assert len(documents) == count
        for document in documents:
            stored = Path(document.storage_path).resolve()
            assert stored.is_relative_to(root) and stored.is_file()
    assert not (api.settings.data_dir.parent / "etc").exists()


async def test_knowledge_endpoints_without_a_knowledge_base(api: Api) -> None:
    status, error = await api.call("POST", "/api/v1/knowledge/search", role="viewer",
                                   json={"agent_id": 1, "query": "x"})
    assert (status, error["error"]["code"]) == (503, "knowledge_unavailable")
    assert (await api.call("GET", "/api/v1/knowledge/documents", role="viewer"))[0] == 200

