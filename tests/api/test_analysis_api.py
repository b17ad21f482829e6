"""Analysis through the admin API: categories and their triage rules (checked), the worker's progress, the
conversations triage set aside and their release, and analysis results on the conversation's messages."""

from __future__ import annotations

from models import Agent, Contact, Conversation, Message
from models.db import session_scope
from tests.api.conftest import Api


def seed_conversation(api: Api, *, needs_human: bool = False) -> tuple[int, int]:
    with session_scope(api.engine) as session:
        contact = Contact(email="cat@example.org")
        session.add(contact)
        session.flush()
        conversation = Conversation(channel="email", contact_id=contact.id, needs_human=needs_human,
                                    category="complaint")
        session.add(conversation)
        session.flush()
        assert conversation.id is not None
        message = Message(conversation_id=conversation.id, role="user", text="Refund me now!", sentiment="negative",
                          category="complaint", analysis_status="done")
        session.add(message)
        session.add(Message(conversation_id=conversation.id, role="user", text="Still waiting"))
        session.flush()
        return conversation.id, message.id or 0


async def test_categories_are_managed_and_their_rules_checked(api: Api) -> None:
    with session_scope(api.engine) as session:
        agent = Agent(name="billing")
        session.add(agent)
        session.flush()
        agent_id = agent.id
    status, sales = await api.call("POST", "/api/v1/analysis/categories", role="designer",
                                   json={"name": "sales", "description": "wants to buy", "route_agent_id": agent_id})
    assert status == 201 and sales["route_agent_id"] == agent_id and sales["needs_human"] is False
    status, body = await api.call("POST", "/api/v1/analysis/categories", role="designer", json={"name": "sales"})
    assert status == 409 and body["error"]["code"] == "category_exists"
    for bad, field in (({"name": "other"}, "name"), ({"name": "Sales Team"}, "name"),
                       ({"name": "x", "route_agent_id": 999999}, "route_agent_id"),
                       ({"name": "y", "route_agent_id": agent_id, "needs_human": True}, "needs_human"),
                       ({"name": "z", "description": "d" * 501}, "description")):
        status, body = await api.call("POST", "/api/v1/analysis/categories", role="designer", json=bad)
        assert status == 422, (bad, body)
        assert field in str(body["error"]), (bad, body)
    status, _ = await api.call("POST", "/api/v1/analysis/categories", role="viewer", json={"name": "spam"})
    assert status == 403
    status, complaint = await api.call("POST", "/api/v1/analysis/categories", role="designer",
                                       json={"name": "complaint", "needs_human": True})
    assert status == 201
    # A rule may not become both: routed and set aside.
    status, body = await api.call("PATCH", f"/api/v1/analysis/categories/{complaint['id']}", role="designer",
                                  json={"route_agent_id": agent_id})
    assert status == 422
    status, changed = await api.call("PATCH", f"/api/v1/analysis/categories/{complaint['id']}", role="designer",
                                     json={"needs_human": False, "route_agent_id": agent_id})
    assert status == 200 and changed["route_agent_id"] == agent_id and not changed["needs_human"]
    status, body = await api.call("PATCH", f"/api/v1/analysis/categories/{complaint['id']}", role="designer",
                                  json={"name": "sales"})
    assert status == 409
    # An agent a rule routes to cannot be deleted from under it (409 naming the rules), nor be an inactive one.
    status, body = await api.call("DELETE", f"/api/v1/agents/{agent_id}", role="admin")
    assert status == 409 and body["error"]["field"] == "categories", body
    with session_scope(api.engine) as session:
        resting = Agent(name="resting", active=False)
        session.add(resting)
        session.flush()
        resting_id = resting.id
    status, body = await api.call("POST", "/api/v1/analysis/categories", role="designer",
                                  json={"name": "billing", "route_agent_id": resting_id})
    assert (status, body["error"]["code"], body["error"]["field"]) == (422, "agent_inactive", "route_agent_id")
    status, listed = await api.call("GET", "/api/v1/analysis/categories", role="viewer")
    assert status == 200 and [c["name"] for c in listed] == ["complaint", "sales"]
    status, _ = await api.call("DELETE", f"/api/v1/analysis/categories/{sales['id']}", role="designer")
    assert status in (200, 204)
    status, _ = await api.call("GET", f"/api/v1/analysis/categories/{sales['id']}", role="viewer")
    assert status == 404


async def test_status_and_results_on_messages(api: Api) -> None:
    conversation_id, message_id = seed_conversation(api)
    status, report = await api.call("GET", "/api/v1/analysis/status", role="viewer")
    assert status == 200
    assert report["messages"] == {"done": 1, "waiting": 1} and report["sentiments"] == {"negative": 1}
    assert report["enabled"] is False  # no language model in this process
    status, page = await api.call("GET", f"/api/v1/conversations/{conversation_id}/messages", role="viewer")
    assert status == 200
    first = next(m for m in page["items"] if m["id"] == message_id)
    assert (first["sentiment"], first["category"]) == ("negative", "complaint")


async def test_triage_lists_conversations_for_a_person_and_releases_them(api: Api) -> None:
    waiting, _ = seed_conversation(api, needs_human=True)
    status, page = await api.call("GET", "/api/v1/triage/conversations", role="viewer")
    assert status == 200 and [c["id"] for c in page["items"]] == [waiting] and page["total"] == 1
    assert page["items"][0]["needs_human"] is True and page["items"][0]["category"] == "complaint"
    status, _ = await api.call("POST", f"/api/v1/triage/conversations/{waiting}/release", role="viewer")
    assert status == 403
    status, released = await api.call("POST", f"/api/v1/triage/conversations/{waiting}/release", role="designer")
    assert status == 200 and released["needs_human"] is False
    status, page = await api.call("GET", "/api/v1/triage/conversations", role="viewer")
    assert page["total"] == 0
    status, body = await api.call("POST", "/api/v1/triage/conversations/999999/release", role="designer")
    assert status == 404 and body["error"]["field"] == "conversation_id"
