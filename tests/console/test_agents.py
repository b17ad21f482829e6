"""The agents screens in a real browser: create, edit (the API's validation errors at the field), activate and delete
an agent; a viewer reads everything and gets no write control; the test chat streams a reply from a model server
speaking Ollama's wire format (the fake's chunks arrive one by one) and its Stop button cancels the reply."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Browser, Locator, Page, expect
from sqlalchemy.engine import Engine

from tests.api.conftest import offline_settings
from tests.console.conftest import PHONE, Console, served_console, shot
from tests.fakes.ollama_server import ChatScript, FakeOllama
from voicebot.llm.ollama import OllamaLLM


async def agent_of(console: Console, agent_id: int) -> dict[str, Any]:
    status, agent = await console.api.call("GET", f"/api/v1/agents/{agent_id}", role="viewer")
    assert status == 200, agent
    return dict(agent)


async def new_agent(console: Console, name: str, **fields: Any) -> int:
    status, agent = await console.api.call("POST", "/api/v1/agents", role="designer", json={"name": name, **fields})
    assert status == 201, agent
    return int(agent["id"])


def field_error(page: Page, name: str) -> Locator:
    return page.locator(f'.field[data-field="{name}"] .field-error')


async def opened_agent_id(page: Page) -> int:
    await page.wait_for_url(re.compile(r"#/agents/\d+$"))
    match = re.search(r"#/agents/(\d+)$", page.url)
    assert match is not None
    return int(match.group(1))


async def test_designer_creates_edits_activates_and_deletes_an_agent(console: Console) -> None:
    page = await console.sign_in("designer")
    await page.get_by_role("link", name="Agents", exact=True).click()
    await page.get_by_role("heading", name="Agents").wait_for()
    await page.get_by_role("button", name="New agent").click()
    await page.get_by_role("heading", name="New agent").wait_for()
    # The form starts with the API's own defaults.
    persona = page.get_by_label("Persona (system prompt)")
    await expect(persona).to_have_value("You are a helpful, concise phone assistant.")
    await expect(page.get_by_label("Max tokens per reply")).to_have_value("160")

    await page.get_by_label("Name", exact=True).fill("harbour desk")  # a space: not a valid agent name
    await page.get_by_role("button", name="Create agent").click()
    error = field_error(page, "name")
    await expect(error).to_contain_text("name: String should match pattern")
    await expect(page.get_by_label("Name", exact=True)).to_have_attribute("aria-invalid", "true")
    status, agents = await console.api.call("GET", "/api/v1/agents", role="viewer")
    assert (status, agents) == (200, [])

    await page.get_by_label("Name", exact=True).fill("harbour-desk")
    await page.get_by_label("Persona (system prompt)").fill("You answer for the Lisbon harbour office.")
    await page.get_by_label("Language", exact=True).fill("pt-PT")
    await page.get_by_label("Further languages").fill("en, es")
    await page.get_by_label("Temperature").fill("0.7")
    await page.get_by_label("Transfer targets").fill("front desk = 201\nsales = 300")
    await page.get_by_label("Active as soon as it is saved").uncheck()
    await page.get_by_role("button", name="Create agent").click()
    agent_id = await opened_agent_id(page)
    stored = await agent_of(console, agent_id)
    assert (stored["name"], stored["persona"], stored["language"], stored["languages"]) == (
        "harbour-desk", "You answer for the Lisbon harbour office.", "pt-PT", ["en", "es"])
    assert (stored["temperature"], stored["active"]) == (0.7, False)
    assert stored["transfer_targets"] == {"front desk": "201", "sales": "300"}
    await page.get_by_role("heading", name="harbour-desk").wait_for()
    await expect(page.locator(".page-head .badge")).to_have_text("inactive")

    await page.get_by_role("button", name="Activate").click()
    await expect(page.locator(".page-head .badge")).to_have_text("active")
    assert (await agent_of(console, agent_id))["active"] is True

    # Edit: an out-of-range value is refused by the API and shown at its field; fixed, it is saved.
    await page.get_by_label("Greeting").fill("Bom dia, harbour office.")
    await page.get_by_label("Temperature").fill("5")
    await page.get_by_role("button", name="Save changes").click()
    await expect(field_error(page, "temperature")).to_contain_text("less than or equal to 2")
    assert (await agent_of(console, agent_id))["greeting"] == "Hello, this is Eva. How can I help you?"
    await page.get_by_label("Temperature").fill("0.5")
    await page.get_by_label("Flow triggers").fill("booking")  # no ":": caught before sending
    await page.get_by_role("button", name="Save changes").click()
    await expect(field_error(page, "flow_triggers")).to_contain_text("line 1")
    await expect(field_error(page, "temperature")).to_be_hidden()
    await page.get_by_label("Flow triggers").fill("")
    await page.get_by_label("Name", exact=True).fill("harbour-office")
    await page.get_by_role("button", name="Save changes").click()
    await page.get_by_role("heading", name="harbour-office").wait_for()
    stored = await agent_of(console, agent_id)
    assert (stored["name"], stored["greeting"], stored["temperature"]) == (
        "harbour-office", "Bom dia, harbour office.", 0.5)
    await shot(page, "agent-edit")

    # No model in this API: the test chat says so with the API's own message.
    status, refused = await console.api.call("POST", f"/api/v1/agents/{agent_id}/chat/stream", role="designer",
                                             json={"message": "Hello"})
    assert status == 503, refused
    await page.get_by_role("tab", name="Test chat").click()
    await page.get_by_label("Message", exact=True).fill("Hello")
    await page.get_by_role("button", name="Send").click()
    await expect(page.locator(".bubble.agent .form-error")).to_have_text(refused["error"]["message"])

    other = await new_agent(console, "night-shift", description="Answers after hours", llm_model="llama3.2")
    await page.get_by_role("link", name="Agents", exact=True).click()
    await expect(page.locator(".agents-count")).to_have_text("2 agents, 2 active")
    rows = page.locator("tbody tr")
    await expect(rows).to_have_count(2)
    await expect(rows.filter(has_text="harbour-office")).to_contain_text("pt-PT, en, es")
    await expect(rows.filter(has_text="night-shift")).to_contain_text("llama3.2")
    await expect(rows.filter(has_text="night-shift")).to_contain_text("Answers after hours")
    await shot(page, "agents")

    await page.get_by_role("link", name="night-shift").click()
    await page.get_by_role("heading", name="night-shift").wait_for()
    page.once("dialog", lambda dialog: asyncio.ensure_future(dialog.accept()))
    await page.get_by_role("button", name="Delete").click()
    await page.wait_for_url(re.compile(r"#/agents$"))
    await expect(page.locator("tbody tr")).to_have_count(1)
    assert (await console.api.call("GET", f"/api/v1/agents/{other}", role="viewer"))[0] == 404

    await page.set_viewport_size(PHONE)  # type: ignore[arg-type]
    await page.reload()
    await page.get_by_role("heading", name="Agents").wait_for()
    assert await page.evaluate("() => document.documentElement.scrollWidth") <= 390  # the table scrolls, not the page
    await shot(page, "agents-phone")
    await page.get_by_role("link", name="harbour-office").click()
    await page.get_by_role("heading", name="harbour-office").wait_for()
    assert await page.evaluate("() => document.documentElement.scrollWidth") <= 390
    await shot(page, "agent-phone")


async def test_a_viewer_reads_an_agent_without_write_controls(console: Console) -> None:
    agent_id = await new_agent(console, "reception", persona="You greet visitors of the museum.",
                               transfer_targets={"guide": "205"})
    page = await console.sign_in("viewer")
    await page.goto(f"{console.base}/#/agents")
    await page.get_by_role("link", name="reception").wait_for()
    await expect(page.get_by_role("button", name="New agent")).to_have_count(0)
    await page.get_by_role("link", name="reception").click()
    await page.get_by_role("heading", name="reception").wait_for()
    await expect(page.get_by_label("Persona (system prompt)")).to_have_value("You greet visitors of the museum.")
    await expect(page.get_by_label("Transfer targets")).to_have_value("guide = 205")
    controls = page.locator("form.agent-form").locator("input, textarea, select")
    assert await controls.count() >= 15
    for index in range(await controls.count()):
        await expect(controls.nth(index)).to_be_disabled()
    for name in ("Save changes", "Activate", "Deactivate", "Delete"):
        await expect(page.get_by_role("button", name=name)).to_have_count(0)
    await expect(page.get_by_role("tab")).to_have_text(["Settings", "Knowledge"])  # no test chat (role chat)

    await page.get_by_role("tab", name="Knowledge").click()
    await page.get_by_role("heading", name="Search").wait_for()
    await expect(page.get_by_label("File")).to_have_count(0)
    await expect(page.get_by_role("button", name="Upload")).to_have_count(0)
    await expect(page.get_by_role("button", name=re.compile("Reindex|Delete"))).to_have_count(0)

    await page.goto(f"{console.base}/#/agents/new")
    await page.get_by_text("Your role cannot create agents.").wait_for()
    await expect(page.locator("form")).to_have_count(0)
    assert (await agent_of(console, agent_id))["persona"] == "You greet visitors of the museum."


# ---------------------------------------------------------------------------------------------- test chat
@pytest.fixture
async def fake() -> AsyncIterator[FakeOllama]:
    async with FakeOllama() as server:
        yield server


@pytest.fixture
async def chat_console(tmp_path: Path, sqlite_engine: Engine, browser: Browser,
                       fake: FakeOllama) -> AsyncIterator[Console]:
    """The console of an API whose model is the fake Ollama server (through Eva's real Ollama backend)."""
    settings = offline_settings(tmp_path / "data")
    llm = OllamaLLM(settings, url=fake.url, model="llama3.2", timeout=5.0)
    try:
        async with served_console(settings, sqlite_engine, browser, llm=llm) as running:
            yield running
    finally:
        await llm.close()


async def test_the_test_chat_streams_the_reply_and_stop_cancels_it(chat_console: Console, fake: FakeOllama) -> None:
    console = chat_console
    agent_id = await new_agent(console, "bike-shop", persona="You answer questions about the Acme bike shop.")
    page = await console.sign_in("designer")
    await page.goto(f"{console.base}/#/agents/{agent_id}?tab=chat")
    fake.scripts.append(ChatScript(chunks=("We open ", "at nine ", "on weekdays."), delay=0.4))
    await page.get_by_label("Message", exact=True).fill("When do you open?")
    await page.get_by_label("Message", exact=True).press("Enter")
    reply = page.locator(".bubble.agent").last
    # The first pieces show while the rest is still being written.
    await expect(reply.locator(".text")).to_have_text(re.compile(r"^We open (at nine )?$"))
    await expect(page.get_by_role("button", name="Stop")).to_be_enabled()
    await expect(reply.locator(".text")).to_have_text("We open at nine on weekdays.")
    await expect(reply.locator(".timings")).to_contain_text("total")
    await expect(page.get_by_role("button", name="Stop")).to_be_disabled()
    asked = fake.bodies("/api/chat")[-1]["messages"]
    assert asked[-1] == {"role": "user", "content": "When do you open?"}
    assert "Acme bike shop" in asked[0]["content"]
    await shot(page, "agent-chat")

    # The next message continues the same session: the model sees the first exchange.
    fake.scripts.append(ChatScript(chunks=("Pedal ", "slowly ", "and ") + ("wait. ",) * 40, delay=0.25))
    await page.get_by_label("Message", exact=True).fill("And on Sundays?")
    await page.get_by_role("button", name="Send").click()
    reply = page.locator(".bubble.agent").last
    await expect(reply.locator(".text")).to_contain_text("Pedal slowly")
    await page.get_by_role("button", name="Stop").click()
    await expect(reply).to_contain_text("Stopped")
    await asyncio.wait_for(fake.disconnected.wait(), 10)  # the generation was cancelled at the model
    contents = [m["content"] for m in fake.bodies("/api/chat")[-1]["messages"]]
    assert "When do you open?" in contents and "We open at nine on weekdays." in contents
    status, sessions = await console.api.call("GET", "/api/v1/chat/sessions", role="viewer",
                                              params={"agent_id": agent_id})
    assert (status, sessions["total"]) == (200, 1)
