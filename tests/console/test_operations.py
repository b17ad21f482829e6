"""Telephony, conversations and campaigns in a real browser, on rows the test writes: an admin adds a trunk and reads
its history (and the screen copes with an Asterisk that is not there), a dialplan's validator message is shown at
its line; a conversation's thread shows the seeded messages with their delivery, sentiment and attachments and
takes a new message live; a campaign's page shows the analytics counted from the seeded attempts."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta

from playwright.async_api import Browser, Locator, Page, Route, expect

from channels import attachments
from models import Contact, Conversation, Message
from models.campaigns import CampaignAttempt, CampaignEntry
from models.db import session_scope
from models.trunks import TrunkStateEvent
from tests.console.conftest import PHONE, Console, close_console, open_console, shot


def nav(page: Page, name: str) -> Locator:
    return page.get_by_role("navigation", name="Main").get_by_role("link", name=name, exact=True)


async def test_trunks_history_and_dialplans(console: Console) -> None:
    page = await console.sign_in("admin")
    await nav(page, "Telephony").click()
    form = page.get_by_role("form", name="Trunk")
    await form.get_by_label("Name", exact=True).fill("carrier")
    await form.get_by_label("Host").fill("sip.carrier.example")
    await form.get_by_label("Numbers (DIDs)").fill("+34910000000, +34910000009")
    await form.get_by_label("Password").fill("s3cret-pass")
    await form.get_by_role("button", name="Add trunk").click()
    await page.get_by_text("carrier", exact=True).wait_for()
    status, trunks = await console.api.call("GET", "/api/v1/sip/trunks", role="viewer")
    assert [(t["name"], t["host"], t["dids"], t["has_password"]) for t in trunks] == [
        ("carrier", "sip.carrier.example", ["+34910000000", "+34910000009"], True)]
    trunk_id = trunks[0]["id"]
    await expect(page.get_by_role("row").filter(has_text="carrier")).to_contain_text("+34910000000, +34910000009")
    await expect(page.locator(".asterisk-notice")).to_contain_text("Asterisk not connected")

    # The API's refusal at its field: the host is not a host name.
    await form.get_by_label("Name", exact=True).fill("second")
    await form.get_by_label("Host").fill("not a host!")
    await form.get_by_role("button", name="Add trunk").click()
    await expect(form.locator('[data-field="host"] .field-error')).to_contain_text("host")

    # History: the monitor's state changes, newest first.
    at = datetime(2026, 12, 1, 9, 30, tzinfo=UTC)
    with session_scope(console.api.engine) as session:
        session.add_all([
            TrunkStateEvent(trunk_id=trunk_id, trunk_name="carrier", state="up", previous="", detail="qualified",
                            at=at),
            TrunkStateEvent(trunk_id=trunk_id, trunk_name="carrier", state="down", previous="up",
                            detail="qualify unanswered 3 times", at=at + timedelta(hours=2))])
    await page.get_by_role("button", name="History of carrier").click()
    history = page.locator(".trunk-history")
    await history.get_by_role("heading", name="History of carrier").wait_for()
    rows = history.locator("tbody tr")
    await expect(rows).to_have_count(2)
    await expect(rows.nth(0)).to_contain_text("qualify unanswered 3 times")
    await expect(rows.nth(0)).to_contain_text("up → down")
    await expect(rows.nth(1)).to_contain_text("qualified")

    # A dialplan with a broken line: the validator's message, and that line quoted and selected.
    await page.get_by_role("button", name="New dialplan").click()
    await page.get_by_label("File name").fill("night")
    broken = "[eva-night]\nexten => 200,1,Answer()\n same => n,Hangup(\n"
    await page.get_by_label("Content").fill(broken)
    await page.get_by_role("button", name="Save dialplan").click()
    await expect(page.locator('[data-field="content"] .field-error')).to_have_text(
        "line 3: invalid application call 'Hangup('")
    await expect(page.locator(".error-line")).to_have_text("3 |  same => n,Hangup(")
    selected = await page.get_by_label("Content").evaluate("t => t.value.slice(t.selectionStart, t.selectionEnd)")
    assert selected == " same => n,Hangup("
    await shot(page, "telephony")
    await page.get_by_label("Content").fill(broken.replace("Hangup(\n", "Hangup()\n"))
    await page.get_by_role("button", name="Save dialplan").click()
    await page.get_by_role("cell", name="night.conf").wait_for()
    status, plan = await console.api.call("GET", "/api/v1/dialplans/night", role="viewer")
    assert status == 200 and plan["contexts"] == ["eva-night"] and plan["source"] == "custom"

    # An API whose Asterisk link is down answers 503: the status cell says so, the page keeps working.
    async def unavailable(route: Route) -> None:
        await route.fulfill(status=503, content_type="application/json", body=json.dumps({"error": {
            "code": "asterisk_unavailable", "message": "Asterisk is not reachable", "field": None}}))
    await page.route(re.compile(r".*/sip/trunks/\d+/status$"), unavailable)
    await page.reload()
    await expect(page.locator(".trunk-status")).to_contain_text("Asterisk not connected")
    await expect(page.locator(".trunk-status")).to_contain_text("Asterisk is not reachable")
    page.once("dialog", lambda dialog: dialog.accept())
    await page.get_by_role("button", name="Delete trunk carrier").click()
    await page.get_by_text("No trunks yet").wait_for()
    status, trunks = await console.api.call("GET", "/api/v1/sip/trunks", role="viewer")
    assert trunks == []


def seed_conversations(console: Console) -> tuple[int, int]:
    """A WhatsApp conversation with four messages (one with a kept PDF) and an e-mail one; returns their ids."""
    start = datetime(2026, 12, 2, 10, 0, tzinfo=UTC)
    with session_scope(console.api.engine) as session:
        ana = Contact(name="Ana Torres", whatsapp_id="34600111222", phone="+34600111222")
        bob = Contact(name="Bob Stone", email="bob@example.com")
        session.add_all([ana, bob])
        session.flush()
        chat = Conversation(channel="whatsapp", contact_id=ana.id, external_id="34600111222", category="billing")
        mail = Conversation(channel="email", contact_id=bob.id, external_id="thread-1")
        session.add_all([chat, mail])
        session.flush()
        assert chat.id is not None and mail.id is not None
        kept = attachments.keep(console.api.settings.media_dir, chat.id, "invoice-march.pdf", "application/pdf",
                                b"%PDF-1.4 a small invoice")
        session.add_all([
            Message(conversation_id=chat.id, role="user", text="My invoice shows the wrong amount.",
                    created_at=start, sentiment="negative", category="billing",
                    attachments=[kept.to_dict(), {"name": "photo.jpg", "content_type": "image/jpeg", "size": 90000,
                                                  "sha256": ""}]),
            Message(conversation_id=chat.id, role="assistant", text="Sorry about that: I have passed it to billing.",
                    created_at=start + timedelta(minutes=1), timings={"delivery": "read"}),
            Message(conversation_id=chat.id, role="user", text="Thanks, waiting for the fix.",
                    created_at=start + timedelta(minutes=5), sentiment="neutral"),
            Message(conversation_id=chat.id, role="assistant", text="You will hear from us today.",
                    created_at=start + timedelta(minutes=6), timings={"delivery": "failed", "delivery_error": 131047}),
            Message(conversation_id=mail.id, role="user", text="Please call me back.", created_at=start),
        ])
        return chat.id, mail.id


async def test_conversations_and_a_live_thread(console: Console) -> None:
    chat_id, mail_id = seed_conversations(console)
    page = await console.sign_in("viewer")
    await nav(page, "Conversations").click()
    await page.get_by_role("link", name="Ana Torres").wait_for()
    await expect(page.locator(".conversation-count")).to_have_text("2 conversations")
    await expect(page.get_by_role("row").filter(has_text="Ana Torres")).to_contain_text("billing")
    await shot(page, "conversations")
    await page.get_by_label("Channel").select_option("email")
    await page.wait_for_url(re.compile(r"#/conversations\?channel=email"))
    await page.get_by_role("link", name="Bob Stone").wait_for()
    await expect(page.get_by_role("link", name="Ana Torres")).to_have_count(0)
    await page.get_by_label("Channel").select_option("whatsapp")
    await page.get_by_role("link", name="Ana Torres").click()

    await page.get_by_role("heading", name="Conversation with Ana Torres").wait_for()
    messages = page.locator(".thread .message")
    await expect(messages).to_have_count(4)
    await expect(page.locator(".message-count")).to_have_text("4 messages")
    first, reply = messages.nth(0), messages.nth(1)
    await expect(first).to_have_class(re.compile(r"\binbound\b"))
    await expect(first.locator(".author")).to_have_text("Ana Torres")
    await expect(first).to_contain_text("My invoice shows the wrong amount.")
    await expect(first.locator(".sentiment")).to_have_text("negative")
    await expect(first.locator(".category")).to_have_text("billing")
    await expect(first.get_by_role("link", name="invoice-march.pdf")).to_have_attribute(
        "href", f"/api/v1/messages/{await first.get_attribute('data-id')}/attachments/0")
    await expect(first).to_contain_text("photo.jpg (not kept)")
    href = await first.get_by_role("link", name="invoice-march.pdf").get_attribute("href")
    assert await page.evaluate("h => fetch(h).then(r => r.text())", href) == "%PDF-1.4 a small invoice"
    await expect(reply).to_have_class(re.compile(r"\boutbound\b"))
    await expect(reply.locator(".author")).to_have_text("Eva")
    await expect(reply.locator(".delivery")).to_have_text("read")
    await expect(messages.nth(3).locator(".delivery")).to_have_text("failed (131047)")

    # A message stored now (an event from the store's commit) appears without a reload; one in another
    # conversation does not touch this thread.
    await expect(page.locator(".live")).to_have_text("● live")
    with session_scope(console.api.engine) as session:
        session.add(Message(conversation_id=mail_id, role="assistant", text="Not for this thread."))
        session.add(Message(conversation_id=chat_id, role="user", text="Is it fixed yet?"))
    await expect(messages).to_have_count(5)
    await expect(messages.nth(4)).to_contain_text("Is it fixed yet?")
    await expect(page.locator(".thread")).not_to_contain_text("Not for this thread.")
    await shot(page, "conversation-thread")


# Six contacts in two arms; each attempt: (contact, outcome, seconds).  Expected numbers are counted from this list.
ATTEMPTS = [(0, "no_answer", 0), (0, "answered", 120), (1, "busy", 0), (1, "busy", 0), (2, "no_answer", 0),
            (3, "answered", 300), (4, "failed", 0), (4, "dnc_skipped", 0), (5, "answered", 30), (5, "voicemail", 0)]
STATES = ["reached", "exhausted", "exhausted", "reached", "dnc", "reached"]


def seed_campaign(console: Console, campaign_id: int) -> None:
    day = datetime(2026, 11, 30, 11, 0, tzinfo=UTC)
    with session_scope(console.api.engine) as session:
        entries = []
        for n, state in enumerate(STATES):
            contact = Contact(phone=f"+3461000000{n}", name=f"Contact {n}")
            session.add(contact)
            session.flush()
            assert contact.id is not None
            entry = CampaignEntry(campaign_id=campaign_id, contact_id=contact.id, phone=contact.phone or "",
                                  arm="A" if n < 3 else "B", state=state)
            session.add(entry)
            session.flush()
            assert entry.id is not None
            entries.append((entry.id, entry.arm))
        for number, (n, outcome, seconds) in enumerate(ATTEMPTS):
            began = day + timedelta(days=number % 2, minutes=number)
            entry_id, arm = entries[n]
            session.add(CampaignAttempt(campaign_id=campaign_id, entry_id=entry_id, number=number + 1,
                                        arm=arm, outcome=outcome, started_at=began,
                                        ended_at=began + timedelta(seconds=seconds)))


def cell(row: Locator, index: int) -> Locator:
    return row.locator("td").nth(index)


async def test_campaign_list_and_analytics(console: Console, browser: Browser) -> None:
    status, agent = await console.api.call("POST", "/api/v1/agents", role="designer", json={"name": "sales"})
    status, campaign = await console.api.call("POST", "/api/v1/campaigns", role="designer", json={
        "name": "spring-sale", "description": "Spring offer to last year's buyers", "agent_id": agent["id"],
        "country_code": "34", "timezone": "UTC",
        "rules": {"arms": [{"name": "A", "agent_id": agent["id"]}, {"name": "B", "agent_id": agent["id"]}]}})
    assert status == 201, campaign
    status, other = await console.api.call("POST", "/api/v1/campaigns", role="designer", json={"name": "empty-one"})
    assert status == 201, other
    seed_campaign(console, campaign["id"])
    placed = [a for a in ATTEMPTS if a[1] != "dnc_skipped"]
    reached = {n for n, outcome, _ in ATTEMPTS if outcome == "answered"}
    status, stats = await console.api.call("GET", f"/api/v1/campaigns/{campaign['id']}/analytics", role="viewer")
    assert (stats["attempts"], stats["reached"]) == (len(placed), len(reached))  # the API agrees with the rows

    page = await console.sign_in("admin")
    await nav(page, "Campaigns").click()
    row = page.get_by_role("row").filter(has=page.get_by_role("link", name="spring-sale"))
    done = sum(1 for s in STATES if s in ("reached", "exhausted", "dnc"))
    await expect(row.locator(".progress-text")).to_have_text(f"{done} of {len(STATES)} (100%)")
    empty = page.get_by_role("row").filter(has=page.get_by_role("link", name="empty-one"))
    await expect(empty.locator(".progress-text")).to_have_text("no audience")
    await shot(page, "campaigns")

    await page.get_by_role("link", name="spring-sale").click()
    await page.get_by_role("heading", name="Campaign spring-sale").wait_for()
    stat = page.locator(".campaign-stats .stat")
    await expect(stat.filter(has_text="Attempts").locator(".value")).to_have_text(str(len(placed)))
    await expect(stat.filter(has_text="Reached").locator(".value")).to_have_text(str(len(reached)))
    await expect(stat.filter(has_text="Reached")).to_contain_text(f"reach rate {len(reached) / 6 * 100:.1f}%")
    await expect(stat.filter(has_text="Contacts").locator(".value")).to_have_text("6")
    seconds = [s for _, outcome, s in ATTEMPTS if outcome == "answered"]
    await expect(stat.filter(has_text="Average answered").locator(".value")).to_have_text(
        f"{round(sum(seconds) / len(seconds))} s")
    # Outcomes chart: one bar per outcome with its count (the chart's table holds the same numbers).
    outcomes: dict[str, int] = {}
    for _, outcome, _ in placed:
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
    chart = page.locator("figure").filter(has_text="Outcomes of the attempts")
    for outcome, count in outcomes.items():
        await expect(chart.locator("tbody tr").filter(has_text=outcome.replace("_", " "))).to_contain_text(str(count))
    await expect(page.locator("figure").filter(has_text="Attempts per day").locator("rect")).not_to_have_count(0)
    # Per arm: contacts, attempts, reached, computed from the seeded list.
    arms = page.locator(".arms tbody tr")
    await expect(arms).to_have_count(2)
    for index, arm in enumerate("AB"):
        members = range(3) if arm == "A" else range(3, 6)
        arm_attempts = sum(1 for n, outcome, _ in placed if n in members)
        arm_reached = len(reached & set(members))
        await expect(cell(arms.nth(index), 0)).to_have_text(arm)
        await expect(cell(arms.nth(index), 1)).to_have_text("3")
        await expect(cell(arms.nth(index), 2)).to_have_text(str(arm_attempts))
        await expect(cell(arms.nth(index), 3)).to_have_text(str(arm_reached))
    difference = (len(reached & {3, 4, 5}) - len(reached & {0, 1, 2})) / 3 * 100
    await expect(page.locator(".comparison")).to_contain_text(f"{'+' if difference > 0 else ''}{difference:.1f} points")
    # Draft: an admin may start it (and cancel); nothing to pause or resume.
    await expect(page.get_by_role("button", name="Start")).to_be_visible()
    await expect(page.get_by_role("button", name="Cancel campaign")).to_be_visible()
    await expect(page.get_by_role("button", name="Pause")).to_have_count(0)
    await shot(page, "campaign-detail")

    phone = await open_console(console.api, browser, viewport=PHONE)
    try:
        small = await phone.sign_in("viewer")
        await small.goto(f"{phone.base}/#/campaigns/{campaign['id']}")
        await small.get_by_role("heading", name="A/B arms").wait_for()
        assert await small.evaluate("() => document.documentElement.scrollWidth") <= 390
        await shot(small, "campaign-detail-390")
    finally:
        await close_console(phone)


async def test_cancelling_a_trunk_edit_brings_back_the_add_forms_defaults(console: Console) -> None:
    status, trunk = await console.api.call("POST", "/api/v1/sip/trunks", json={
        "name": "edited", "host": "127.0.0.9", "port": 5080, "codecs": ["g722"], "enabled": False})
    assert status == 201, trunk
    page = await console.sign_in("admin")
    await page.goto(f"{console.base}/#/telephony")
    await page.get_by_role("button", name="Edit trunk edited").click()
    form = page.get_by_role("form", name="Trunk")
    await expect(form.get_by_label("Port", exact=True)).to_have_value("5080")
    await expect(form.get_by_label("Codecs")).to_have_value("g722")
    await form.get_by_role("button", name="Cancel").click()
    await expect(form.get_by_label("Port", exact=True)).to_have_value("5060")
    await expect(form.get_by_label("Codecs")).to_have_value("ulaw, alaw")
    await expect(form.get_by_label("Enabled", exact=True)).to_be_checked()
    await expect(form.get_by_label("Name", exact=True)).to_have_value("")


async def test_a_long_list_pages_through_the_address(console: Console) -> None:
    with session_scope(console.api.engine) as session:
        for n in range(27):  # 25 per page: two pages, the second with 2
            session.add(Conversation(channel="chat", external_id=f"visitor-{n:02d}"))
    page = await console.sign_in("viewer")
    await nav(page, "Conversations").click()
    pages = page.get_by_role("navigation", name="Pages")
    await expect(pages).to_contain_text("Page 1 of 2")
    await expect(page.locator("a.conversation-link")).to_have_count(25)
    assert await pages.get_by_role("link", name="Previous").count() == 0
    await pages.get_by_role("link", name="Next").click()
    await page.wait_for_url(re.compile(r"#/conversations\?page=2"))
    await expect(pages).to_contain_text("Page 2 of 2")
    await expect(page.locator("a.conversation-link")).to_have_count(2)
    assert await pages.get_by_role("link", name="Next").count() == 0
    await pages.get_by_role("link", name="Previous").click()
    await expect(page.locator("a.conversation-link")).to_have_count(25)
