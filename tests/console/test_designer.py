"""The flow editor and routes in a real browser: a flow made through the API is opened, broken in a chosen step and
saved, and the validator's message must appear on that step's card (found by the step's name) and on no other;
fixed and saved, the API holds the change.  Routes are added, refused (a taken number, at its field) and deleted.
And each role sees exactly the write controls its API role allows: viewers none, designers no admin-only ones."""

from __future__ import annotations

import copy
import json
import re
from typing import Any

from playwright.async_api import Browser, Locator, Page, expect
from sqlmodel import select

from models import Contact
from models.campaigns import Campaign, CampaignEntry
from models.db import session_scope
from tests.console.conftest import PHONE, Console, close_console, open_console, shot

FLOW: dict[str, Any] = {
    "name": "front-desk", "description": "The main number's menu", "start_step": "menu", "steps": [
        {"id": "menu", "say": "Press 1 for opening hours or 0 for the front desk.",
         "collect": {"var": "choice", "type": "choice", "choices": {"hours": ["1"], "desk": ["0"]}},
         "branches": [{"when": {"var": "choice", "equals": "hours"}, "next": "hours"}], "next": "desk"},
        {"id": "hours", "say": "We open at nine.", "end": "completed"},
        {"id": "desk", "say": "Putting you through.", "end": "transferred"},
    ]}


async def make_flow(console: Console) -> dict[str, Any]:
    status, flow = await console.api.call("POST", "/api/v1/flows", role="designer", json=FLOW)
    assert status == 201, flow
    made: dict[str, Any] = flow
    return made


def nav(page: Page, name: str) -> Locator:
    """A link of the main menu."""
    return page.get_by_role("navigation", name="Main").get_by_role("link", name=name, exact=True)


def card(page: Page, step: str) -> Locator:
    """The outline's card of a step, found by the step's name (its heading)."""
    return page.locator(".step-card").filter(has=page.get_by_role("heading", name=step, exact=True))


async def save_steps(page: Page, steps: list[dict[str, Any]]) -> None:
    await page.get_by_label("Steps (JSON)").fill(json.dumps({"start_step": "menu", "steps": steps}, indent=2))
    await page.get_by_role("button", name="Save flow").click()


async def test_flow_error_is_shown_at_its_step_then_fixed(console: Console) -> None:
    flow = await make_flow(console)
    page = await console.sign_in("designer")
    await nav(page, "Flows").click()
    await page.get_by_role("link", name="front-desk").click()
    await page.get_by_role("heading", name="Flow front-desk").wait_for()
    # The outline drew the API's steps, with their transitions.
    await expect(page.locator(".step-card")).to_have_count(3)
    await expect(card(page, "menu")).to_contain_text("if choice equals hours → hours")
    await expect(card(page, "desk")).to_contain_text("ends with transferred")
    assert json.loads(await page.get_by_label("Steps (JSON)").input_value())["steps"] == FLOW["steps"]

    # 1. A transition to a step that does not exist (the flow check: field steps.2.next).
    steps = copy.deepcopy(FLOW["steps"])
    del steps[2]["end"]
    steps[2]["next"] = "nowhere"
    await save_steps(page, steps)
    message = "step 'desk': next points at unknown step 'nowhere'"
    await expect(card(page, "desk").locator(".step-error")).to_have_text(message)
    await expect(card(page, "desk")).to_have_class(re.compile(r"\binvalid\b"))
    for other in ("menu", "hours"):
        await expect(card(page, other).locator(".step-error")).to_be_hidden()
        await expect(card(page, other)).not_to_have_class(re.compile(r"\binvalid\b"))
    await expect(page.locator(".editor-error")).to_contain_text(message)
    await expect(card(page, "desk")).to_contain_text("unknown step")
    await shot(page, "flow-editor-error")
    status, stored = await console.api.call("GET", f"/api/v1/flows/{flow['id']}", role="viewer")
    assert stored["steps"] == FLOW["steps"]  # nothing was saved

    # 2. A step the schema refuses as a whole (field steps.1): the error moves to that card.
    steps[2]["next"] = "menu"
    steps[1]["next"] = "menu"
    await save_steps(page, steps)
    await expect(card(page, "hours").locator(".step-error")).to_contain_text("an end step goes nowhere")
    for other in ("menu", "desk"):
        await expect(card(page, other).locator(".step-error")).to_be_hidden()

    # 3. Fixed: saved, the outline follows and no card is marked.
    del steps[1]["next"]
    await save_steps(page, steps)
    await page.get_by_text("Flow front-desk saved.").wait_for()
    await expect(page.locator(".step-card.invalid")).to_have_count(0)
    await expect(page.locator(".editor-error")).to_be_hidden()
    await expect(card(page, "desk")).to_contain_text("next → menu")
    status, stored = await console.api.call("GET", f"/api/v1/flows/{flow['id']}", role="viewer")
    assert status == 200 and stored["steps"][2] == {"id": "desk", "say": "Putting you through.", "next": "menu"}

    # Invalid JSON never reaches the API: the editor says why.
    await page.get_by_label("Steps (JSON)").fill('{"start_step": "menu", "steps": [')
    await page.get_by_role("button", name="Save flow").click()
    await expect(page.locator(".editor-error")).to_contain_text("not valid JSON")


async def test_new_flow_and_routes(console: Console) -> None:
    await make_flow(console)
    page = await console.sign_in("designer")
    await page.goto(f"{console.base}/#/flows/new")
    await page.get_by_role("heading", name="New flow").wait_for()
    await page.get_by_label("Name").fill("after-hours")
    await page.get_by_role("button", name="Create flow").click()
    await page.get_by_role("heading", name="Flow after-hours").wait_for()
    status, flows = await console.api.call("GET", "/api/v1/flows", role="viewer")
    assert sorted(f["name"] for f in flows) == ["after-hours", "front-desk"]
    # A name the API refuses is shown at the name field.
    await page.get_by_label("Name").fill("front-desk")
    await page.get_by_role("button", name="Save flow").click()
    await expect(page.locator('[data-field="name"] .field-error')).to_have_text(
        "a flow named 'front-desk' already exists")

    await nav(page, "Flows").click()
    await page.get_by_role("heading", name="Routes").wait_for()
    form = page.get_by_role("form", name="Route")
    await form.get_by_label("Number").fill("+34910000001")
    await form.get_by_label("Goes to").select_option(label="flow front-desk")
    await form.get_by_label("Description").fill("Main line")
    await form.get_by_role("button", name="Add route").click()
    await page.get_by_role("cell", name="+34910000001", exact=True).wait_for()
    status, routes = await console.api.call("GET", "/api/v1/routes", role="viewer")
    front = next(f for f in flows if f["name"] == "front-desk")
    assert [(r["did"], r["flow_id"], r["agent_id"], r["description"]) for r in routes] == [
        ("+34910000001", front["id"], None, "Main line")]
    # The same number again: the API's refusal at the number.
    form = page.get_by_role("form", name="Route")
    await form.get_by_label("Number").fill("+34910000001")
    await form.get_by_label("Goes to").select_option(label="flow after-hours")
    await form.get_by_role("button", name="Add route").click()
    await expect(form.locator('[data-field="did"] .field-error')).to_have_text(
        "a route for '+34910000001' already exists")
    await expect(page.locator(".flows-count")).to_have_text("2 flows")
    await shot(page, "flows")

    # Edit the route to the other flow, then delete it.
    await page.get_by_role("button", name="Edit route +34910000001").click()
    form = page.get_by_role("form", name="Route")
    await form.get_by_label("Goes to").select_option(label="flow after-hours")
    await form.get_by_role("button", name="Save route").click()
    await page.get_by_role("row").filter(has_text="+34910000001").get_by_role("link", name="after-hours").wait_for()
    page.once("dialog", lambda dialog: dialog.accept())
    await page.get_by_role("button", name="Delete route +34910000001").click()
    await page.get_by_text("No routes: calls to unknown numbers are refused.").wait_for()
    status, routes = await console.api.call("GET", "/api/v1/routes", role="viewer")
    assert (status, routes) == (200, [])


async def seed_for_roles(console: Console) -> tuple[int, int]:
    """A flow, a trunk and a running campaign; returns (flow id, campaign id)."""
    flow = await make_flow(console)
    status, trunk = await console.api.call("POST", "/api/v1/sip/trunks",
                                           json={"name": "carrier", "host": "sip.example.com"})
    assert status == 201, trunk
    status, agent = await console.api.call("POST", "/api/v1/agents", role="designer", json={"name": "sales"})
    assert status == 201, agent
    status, campaign = await console.api.call("POST", "/api/v1/campaigns", role="designer", json={
        "name": "winter-offer", "agent_id": agent["id"], "country_code": "34"})
    assert status == 201, campaign
    with session_scope(console.api.engine) as session:
        row = session.exec(select(Campaign).where(Campaign.id == campaign["id"])).one()
        row.status = "running"
        contact = Contact(phone="+34600000001", name="Ana")
        session.add_all([row, contact])
        session.flush()
        assert contact.id is not None
        session.add(CampaignEntry(campaign_id=campaign["id"], contact_id=contact.id, phone="+34600000001"))
    return flow["id"], campaign["id"]


async def test_viewer_sees_no_write_controls(console: Console) -> None:
    flow_id, campaign_id = await seed_for_roles(console)
    page = await console.sign_in("viewer")
    await nav(page, "Telephony").click()
    await page.get_by_text("carrier", exact=True).wait_for()
    # The offline API has no Asterisk: said plainly, the rest of the screen works.
    await expect(page.locator(".asterisk-notice")).to_contain_text("Asterisk not connected")
    await expect(page.locator(".trunk-status")).to_contain_text("not monitored")
    for name in ("Add trunk", "Edit trunk carrier", "Delete trunk carrier", "New dialplan"):
        await expect(page.get_by_role("button", name=name)).to_have_count(0)
    await page.get_by_role("button", name="Open inbound").click()
    await expect(page.get_by_label("Content")).not_to_be_editable()
    await expect(page.get_by_role("button", name="Save dialplan")).to_have_count(0)

    await nav(page, "Flows").click()
    await page.get_by_role("link", name="front-desk").wait_for()
    await expect(page.get_by_role("button", name="New flow")).to_have_count(0)
    await expect(page.get_by_role("form", name="Route")).to_have_count(0)
    await page.goto(f"{console.base}/#/flows/{flow_id}")
    await page.get_by_role("heading", name="Flow front-desk").wait_for()
    await expect(page.locator(".step-card")).to_have_count(3)
    await expect(page.get_by_label("Steps (JSON)")).not_to_be_editable()
    for name in ("Save flow", "Delete"):
        await expect(page.get_by_role("button", name=name)).to_have_count(0)

    await page.goto(f"{console.base}/#/campaigns/{campaign_id}")
    await page.get_by_role("heading", name="Campaign winter-offer").wait_for()
    await expect(page.locator(".campaign-status")).to_have_text("running")
    for name in ("Start", "Pause", "Resume", "Cancel campaign"):
        await expect(page.get_by_role("button", name=name)).to_have_count(0)


async def test_designer_sees_designer_controls_only(console: Console, browser: Browser) -> None:
    flow_id, campaign_id = await seed_for_roles(console)
    page = await console.sign_in("designer")
    await nav(page, "Telephony").click()
    await page.get_by_text("carrier", exact=True).wait_for()
    for name in ("Add trunk", "Edit trunk carrier", "Delete trunk carrier"):  # trunks are admin-only
        await expect(page.get_by_role("button", name=name)).to_have_count(0)
    await expect(page.get_by_role("button", name="New dialplan")).to_be_visible()  # dialplans: designer
    await page.goto(f"{console.base}/#/flows/{flow_id}")
    await expect(page.get_by_role("button", name="Save flow")).to_be_visible()
    await expect(page.get_by_label("Steps (JSON)")).to_be_editable()

    # A running campaign: a designer may pause and cancel, not resume (admin).
    await page.goto(f"{console.base}/#/campaigns/{campaign_id}")
    await page.get_by_role("button", name="Pause").click()
    await expect(page.locator(".campaign-status")).to_have_text("paused")
    status, campaign = await console.api.call("GET", f"/api/v1/campaigns/{campaign_id}", role="viewer")
    assert (status, campaign["status"]) == (200, "paused")
    await expect(page.get_by_role("button", name="Resume")).to_have_count(0)
    await expect(page.get_by_role("button", name="Cancel campaign")).to_be_visible()

    # The admin, in a profile of their own, gets Resume on the paused campaign.
    other = await open_console(console.api, browser)
    try:
        admin = await other.sign_in("admin")
        await admin.goto(f"{other.base}/#/campaigns/{campaign_id}")
        await admin.get_by_role("button", name="Resume").click()
        await expect(admin.locator(".campaign-status")).to_have_text("running")
    finally:
        await close_console(other)


async def test_flow_editor_on_a_phone(console: Console, browser: Browser) -> None:
    flow = await make_flow(console)
    phone = await open_console(console.api, browser, viewport=PHONE)
    try:
        page = await phone.sign_in("designer")
        await page.goto(f"{phone.base}/#/flows/{flow['id']}")
        await expect(page.locator(".step-card")).to_have_count(3)
        steps = copy.deepcopy(FLOW["steps"])
        steps[0]["branches"][0]["next"] = "closed"
        await save_steps(page, steps)
        await expect(card(page, "menu").locator(".step-error")).to_contain_text(
            "branches.0.next points at unknown step 'closed'")
        # Nothing wider than the screen: the page does not scroll sideways.
        assert await page.evaluate("() => document.documentElement.scrollWidth") <= 390
        await shot(page, "flow-editor-390")
    finally:
        await close_console(phone)
