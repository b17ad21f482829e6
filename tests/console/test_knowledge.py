"""An agent's knowledge in a real browser with the real knowledge base (MiniLM embeddings, embedded Chroma): upload a
document through the page's file input, watch it become ready with its chunks, find its fact by a question, then
reindex and delete it."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from playwright.async_api import Browser, expect
from sqlalchemy.engine import Engine

from rag import KnowledgeBase
from rag.embeddings import LocalEmbedder
from tests.api.conftest import offline_settings
from tests.console.conftest import Console, served_console, shot

FACTS = ("# Opening hours\n\nThe Lisbon harbour office of Acme Shipping opens at seven in the morning and closes at "
         "half past four on weekdays. On Saturdays it is closed.\n\n# Parking\n\nVisitors park in the blue garage "
         "behind the customs building; the first two hours are free.\n")


@pytest.fixture(scope="session")
def local_embedder() -> LocalEmbedder:
    return LocalEmbedder()


@pytest.fixture
async def kb_console(tmp_path: Path, sqlite_engine: Engine, browser: Browser,
                     local_embedder: LocalEmbedder) -> AsyncIterator[Console]:
    settings = offline_settings(tmp_path / "data", max_upload_mb=1)
    kb = KnowledgeBase(settings, sqlite_engine, embedder=local_embedder)
    try:
        async with served_console(settings, sqlite_engine, browser, kb=kb) as running:
            yield running
    finally:
        await kb.close()


async def test_upload_a_document_and_find_it_by_search(kb_console: Console, tmp_path: Path) -> None:
    console = kb_console
    status, agent = await console.api.call("POST", "/api/v1/agents", role="designer", json={"name": "harbour"})
    assert status == 201, agent
    document = tmp_path / "harbour.md"
    document.write_text(FACTS)
    page = await console.sign_in("designer")
    await page.goto(f"{console.base}/#/agents/{agent['id']}?tab=knowledge")
    await page.get_by_text("0 documents").wait_for()

    # A file the knowledge base cannot read is refused at the file field, with the API's reason.
    (tmp_path / "logo.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    await page.get_by_label("File").set_input_files(tmp_path / "logo.png")
    await page.get_by_role("button", name="Upload").click()
    await expect(page.locator('.field[data-field="file"] .field-error')).to_contain_text("unsupported file type '.png'")

    await page.get_by_label("File").set_input_files(document)
    await page.get_by_label("Title").fill("Harbour office")
    await page.get_by_role("button", name="Upload").click()
    row = page.locator("tr", has_text="Harbour office")
    await expect(row.locator(".doc-status")).to_have_text("ready", timeout=60_000)
    status, listed = await console.api.call("GET", "/api/v1/knowledge/documents", role="viewer",
                                            params={"agent_id": agent["id"]})
    assert status == 200 and listed["total"] == 1
    stored = listed["items"][0]
    assert stored["chunk_count"] >= 1 and stored["filename"] == "harbour.md"
    await expect(row.locator(".doc-chunks")).to_have_text(str(stored["chunk_count"]))
    await expect(row).to_contain_text(f"{stored['size_bytes']} B")
    await expect(page.get_by_text("1 document", exact=True)).to_be_visible()

    question = "When does the harbour office open?"
    status, hits = await console.api.call("POST", "/api/v1/knowledge/search", role="viewer",
                                          json={"agent_id": agent["id"], "query": question, "limit": 5})
    assert status == 200 and "seven in the morning" in hits[0]["text"]
    await page.get_by_label("Question").fill(question)
    await page.get_by_role("button", name="Search").click()
    first = page.locator(".hit").first
    await expect(first.locator(".hit-text")).to_contain_text("opens at seven in the morning")
    await expect(first.locator(".score")).to_have_text(f"score {hits[0]['similarity']:.3f}")
    await expect(page.locator(".hit")).to_have_count(len(hits))
    await shot(page, "agent-knowledge")

    await page.get_by_role("button", name="Reindex Harbour office").click()
    # The row shows the reindex under way (the page re-reads it every 1.5 s), then ready again.
    await expect(row.locator(".doc-status")).to_have_text(re.compile(r"^(pending|processing)"))
    await expect(row.locator(".doc-status")).to_have_text("ready", timeout=60_000)
    status, again = await console.api.call("GET", f"/api/v1/knowledge/documents/{stored['id']}", role="viewer")
    assert status == 200 and again["updated_at"] != stored["updated_at"] and again["status"] == "ready"
    page.once("dialog", lambda dialog: asyncio.ensure_future(dialog.accept()))
    await page.get_by_role("button", name="Delete Harbour office").click()
    await page.get_by_text("0 documents").wait_for()
    status, listed = await console.api.call("GET", "/api/v1/knowledge/documents", role="viewer",
                                            params={"agent_id": agent["id"]})
    assert (status, listed["total"]) == (200, 0)
    await page.get_by_role("button", name="Search").click()
    await page.get_by_text("Nothing in this agent's knowledge matches.").wait_for()
