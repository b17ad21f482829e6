"""The ``EVA_CHROMA_URL`` deployment: a real Chroma server (``chroma run`` from the chromadb package) reached
through ``HttpClient``, as in the scale-out setup where several Eva workers share one vector store."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine

from rag import KnowledgeBase
from rag.embeddings import LocalEmbedder
from tests.conftest import stop_process
from tests.rag.conftest import agent_factory
from tests.rag.files import make_pdf
from voicebot.config import Settings
from voicebot.errors import ConfigError

PAGES = ["Deliveries leave the warehouse at noon.", "The returns desk is on the second floor."]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture(scope="module")
def chroma_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    binary = Path(sys.executable).parent / "chroma"
    if not binary.exists():
        pytest.fail(f"{binary} not found (it ships with the chromadb package)")
    port = _free_port()
    data = tmp_path_factory.mktemp("chroma-server")
    log = (data / "server.log").open("wb")
    process = subprocess.Popen([str(binary), "run", "--path", str(data / "db"), "--host", "127.0.0.1",
                                "--port", str(port)], stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"{url}/api/v2/heartbeat", timeout=1) as response:
                    if response.status == 200:
                        break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"chroma server did not start: {(data / 'server.log').read_text()[-2000:]}")
                time.sleep(0.2)
        yield url
    finally:
        stop_process(process)
        log.close()


async def test_knowledge_base_over_a_chroma_server(chroma_server: str, sqlite_engine: Engine,
                                                   kb_settings: Settings,
                                                   local_embedder: LocalEmbedder) -> None:
    agent = agent_factory(sqlite_engine)("remote")
    kb = KnowledgeBase(kb_settings.with_(chroma_url=chroma_server), sqlite_engine, embedder=local_embedder)
    try:
        document = await kb.ingest_bytes(agent, make_pdf(PAGES), "ops.pdf")
        await kb.wait_idle()
        assert document.id is not None
        assert (await kb.get_document(document.id)).status == "ready"
        hits = await kb.search(agent, "where do I bring a return?", limit=1)
        assert hits[0].page == 2 and "second floor" in hits[0].text
        rows = await asyncio.to_thread(kb.repo.agent_chunk_ids, agent)
        assert set(await asyncio.to_thread(kb.store.ids, agent)) == rows and rows
        # Nothing was written locally: the vectors live on the server.
        assert not kb_settings.chroma_dir.exists()
        await kb.delete_document(document.id)
        assert await asyncio.to_thread(kb.store.ids, agent) == []
    finally:
        await kb.close()


async def test_unreachable_chroma_server_fails_the_document_clearly(
        sqlite_engine: Engine, kb_settings: Settings, local_embedder: LocalEmbedder) -> None:
    agent = agent_factory(sqlite_engine)("offline")
    kb = KnowledgeBase(kb_settings.with_(chroma_url=f"http://127.0.0.1:{_free_port()}"), sqlite_engine,
                       embedder=local_embedder)
    try:
        document = await kb.ingest_bytes(agent, make_pdf(PAGES), "ops.pdf")
        await kb.wait_idle()
        assert document.id is not None
        failed = await kb.get_document(document.id)
        assert (failed.status, failed.error_code) == ("failed", "vector_store_error")
        assert "cannot open the Chroma store" in failed.error
        assert await asyncio.to_thread(kb.repo.agent_chunk_ids, agent) == set()
    finally:
        await kb.close()


async def test_bad_chroma_url_is_a_config_error(sqlite_engine: Engine, kb_settings: Settings,
                                                local_embedder: LocalEmbedder) -> None:
    kb = KnowledgeBase(kb_settings.with_(chroma_url="chroma.example:8000"), sqlite_engine,
                       embedder=local_embedder)
    try:
        with pytest.raises(ConfigError):
            await asyncio.to_thread(kb.store.client)
    finally:
        with contextlib.suppress(Exception):
            await kb.close()
