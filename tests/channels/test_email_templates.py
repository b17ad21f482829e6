"""E-mail templates and HTML: sandboxed Jinja2 with HTML escaping, templates managed through the API and sent to a
real SMTP server as text + HTML alternatives, agents' replies with their signature in both parts."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy.engine import Engine
from sqlmodel import select

from channels.email import templates
from channels.email.service import EmailService
from models import Agent, Message
from models.db import session_scope
from tests.api.conftest import offline_settings, start_api
from tests.channels.conftest import Dovecot, SmtpSink, all_text_of, plain_of
from tests.channels.test_email_service import mail, make_mail
from voicebot.errors import InvalidInput


def test_variables_are_text_in_html_and_the_sandbox_holds() -> None:
    hostile = '<script>alert(1)</script> & "quotes"'
    html = templates.render("<p>Hello {{ name }}</p>", {"name": hostile}, html=True, field="html")
    assert "<script>" not in html and "&lt;script&gt;" in html and "&amp;" in html
    assert templates.render("Hello {{ name }}", {"name": hostile}, html=False, field="text") == f"Hello {hostile}"
    for source in ("{{ ''.__class__.__mro__[1].__subclasses__() }}", "{{ name.__class__ }}",
                   "{% for x in range(10**9) %}{% endfor %}", "{{ cycler.__init__.__globals__ }}",
                   "{% for a in name %}{% for b in name %}x{% endfor %}{% endfor %}",  # no loops at all
                   "{{ 'x' * 1000000000 }}", "{{ 10 ** 10 ** 10 }}", "{% macro m() %}{% endmacro %}",
                   "{% include 'other' %}"):
        with pytest.raises(InvalidInput):
            templates.render(source, {"name": "x"}, html=False, field="text")
    with pytest.raises(InvalidInput, match="'missing' is undefined"):
        templates.render("Hi {{ missing }}", {}, html=False, field="text")
    with pytest.raises(InvalidInput, match="line 2"):
        templates.check("fine\n{% if %}", html=True, field="html")


def test_a_reply_in_html_keeps_paragraphs_and_escapes_everything() -> None:
    html = templates.reply_html("We open at <nine>.\nSee you!\n\nBring the bike.", "Eva\nAcme Bikes")
    assert "<p>We open at &lt;nine&gt;.<br>See you!</p><p>Bring the bike.</p>" in html
    assert "Eva<br>Acme Bikes" in html
    assert templates.with_signature("Thanks.", "Eva") == "Thanks.\n\n-- \nEva\n"
    assert templates.with_signature("Thanks.", "  ") == "Thanks."


async def test_templates_through_the_api_reach_the_mail_server_as_text_and_html(
        sqlite_db: Engine, smtp_sink: SmtpSink, tmp_path: Path) -> None:
    settings = offline_settings(tmp_path / "data", smtp_host=smtp_sink.host, smtp_port=smtp_sink.port,
                                smtp_starttls=False, smtp_from="Eva <eva@shop.example>")
    service = EmailService(settings, sqlite_db, None)
    api = await start_api(settings, sqlite_db, offline_asterisk=True, email=service)
    try:
        template = {"name": "booking-confirmed", "subject": "Your booking, {{ name }}",
                    "text": "Hello {{ name }},\nyour repair is booked for {{ day }}.",
                    "html": "<p>Hello <b>{{ name }}</b>,</p><p>your repair is booked for {{ day }}.</p>"}
        status, created = await api.call("POST", "/api/v1/email/templates", role="designer", json=template)
        assert status == 201, created
        status, error = await api.call("POST", "/api/v1/email/templates", role="designer", json=template)
        assert (status, error["error"]["field"]) == (409, "name")
        status, error = await api.call("POST", "/api/v1/email/templates", role="designer",
                                       json={**template, "name": "broken", "html": "<p>{{ name </p>"})
        assert (status, error["error"]["field"]) == (422, "html")
        assert (await api.call("POST", "/api/v1/email/templates", role="viewer",
                               json={**template, "name": "x"}))[0] == 403

        status, sent = await api.call("POST", "/api/v1/email/send", role="designer", json={
            "to": "ada@example.org", "template": "booking-confirmed",
            "variables": {"name": "Ada <admin@evil>", "day": "Friday"}})
        assert status == 200, sent
        (message,) = smtp_sink.messages
        assert message["Subject"] == "Your booking, Ada <admin@evil>"
        assert message.get_content_type() == "multipart/alternative"
        assert plain_of(message) == "Hello Ada <admin@evil>,\nyour repair is booked for Friday.\n"
        html_part = message.get_body(("html",))
        assert html_part is not None
        html = str(html_part.get_content())
        assert "<b>Ada &lt;admin@evil&gt;</b>" in html and "<admin@evil>" not in html

        for body, field in (({"template": "nope"}, "template"),
                            ({"template": "booking-confirmed", "variables": {"name": "Ada"}}, "text"),
                            ({"template": "booking-confirmed", "body": "x"}, "template"),
                            ({"subject": "Hi"}, "body"), ({"subject": "Hi", "body": "x", "variables": {"a": "b"}},
                                                          "variables"),
                            ({"template": "booking-confirmed", "variables": {"bad-name": "x"}},
                             "variables.bad-name.[key]")):
            status, error = await api.call("POST", "/api/v1/email/send", role="designer",
                                           json={"to": "ada@example.org", **body})
            assert (status, error["error"]["field"]) == (422, field), body
        assert len(smtp_sink.messages) == 1  # nothing refused was sent

        # A plain message with html: true gets an HTML part made from its text.
        status, _ = await api.call("POST", "/api/v1/email/send", role="designer", json={
            "to": "ada@example.org", "subject": "Hours", "body": "We open at 9 <am>.", "html": True})
        assert status == 200
        html_part = smtp_sink.messages[-1].get_body(("html",))
        assert html_part is not None and "We open at 9 &lt;am&gt;." in str(html_part.get_content())

        status, listed = await api.call("GET", "/api/v1/email/templates", role="viewer")
        assert [t["name"] for t in listed] == ["booking-confirmed"]
        status, changed = await api.call("PATCH", f"/api/v1/email/templates/{created['id']}", role="designer",
                                         json={"subject": "Booked: {{ day }}"})
        assert (status, changed["subject"]) == (200, "Booked: {{ day }}")
        assert (await api.call("DELETE", f"/api/v1/email/templates/{created['id']}", role="designer"))[0] == 204
        assert (await api.call("GET", f"/api/v1/email/templates/{created['id']}", role="viewer"))[0] == 404
    finally:
        await api.client.close()
        await service.close()


async def test_an_agent_reply_has_html_and_the_agents_signature(sqlite_db: Engine, dovecot: Dovecot,
                                                                smtp_sink: SmtpSink, tmp_path: Path) -> None:
    box = make_mail(sqlite_db, dovecot, smtp_sink, tmp_path)
    try:
        with session_scope(sqlite_db) as session:
            for agent in session.exec(select(Agent)).all():
                agent.email_signature = "Eva\nAcme Bikes <acme.example>"
                session.add(agent)
        box.deliver(mail("Do you repair e-bikes?", message_id="<sig@example.org>"))
        result = await box.service.poll_once()
        assert result.answered == 1
        (reply,) = smtp_sink.messages
        assert plain_of(reply) == "You said: Do you repair e-bikes?\n\n-- \nEva\nAcme Bikes <acme.example>\n"
        html_part = reply.get_body(("html",))
        assert html_part is not None
        html = str(html_part.get_content())
        assert "<p>You said: Do you repair e-bikes?</p>" in html and "Acme Bikes &lt;acme.example&gt;" in html
        assert "Acme Bikes" in all_text_of(reply)
        (_user, assistant) = box.rows(Message)
        assert assistant.text == "You said: Do you repair e-bikes?"  # the stored reply is the agent's words alone
    finally:
        await box.service.close()
