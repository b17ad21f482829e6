"""The router walk and the role matrix.

``EXPECTED`` is written by hand: every route the application serves must be in it (a new route cannot slip in
without deciding who may call it), and each declared role must match.  The walk then proves, against the running
server, that every non-public route answers 401 without credentials, 403 for every weaker role (with a JWT and
with an API key), and neither for the role it names.
"""

from __future__ import annotations

from typing import Any

from admin_api import accounts
from admin_api.app import ENDPOINTS_KEY
from models.db import session_scope
from models.users import ROLE_RANK, rank_to_hold
from tests.api.conftest import ROLES, Api

V, D, A = "viewer", "designer", "admin"
C = "chat"  # API keys that reach only the chat endpoints (and designers and admins reach those too)
P = None  # public
N = "pending"  # every signed-in account, one an admin has not given a role yet too (it may see who it is, leave)
EXPECTED: dict[tuple[str, str], str | None] = {
    # public: liveness, health, metrics, the document, and the two ways to get a token
    ("GET", "/health"): P, ("GET", "/metrics"): P, ("GET", "/api/v1/health"): P,
    ("GET", "/api/v1/openapi.json"): P, ("GET", "/api/v1/docs"): P,
    ("POST", "/api/v1/auth/login"): P, ("POST", "/api/v1/auth/refresh"): P,
    # every signed-in caller
    ("GET", "/api/v1/auth/me"): N, ("POST", "/api/v1/auth/logout"): N, ("POST", "/api/v1/auth/password"): N,
    # users and API keys: admins only (reading them too)
    ("GET", "/api/v1/users"): A, ("POST", "/api/v1/users"): A, ("GET", "/api/v1/users/{user_id}"): A,
    ("PATCH", "/api/v1/users/{user_id}"): A, ("DELETE", "/api/v1/users/{user_id}"): A,
    ("GET", "/api/v1/apikeys"): A, ("POST", "/api/v1/apikeys"): A, ("DELETE", "/api/v1/apikeys/{key_id}"): A,
    # agents: designers change them, everyone reads
    ("GET", "/api/v1/agents"): V, ("POST", "/api/v1/agents"): D, ("GET", "/api/v1/agents/base-models"): V,
    ("GET", "/api/v1/agents/{agent_id}"): V, ("PATCH", "/api/v1/agents/{agent_id}"): D,
    ("DELETE", "/api/v1/agents/{agent_id}"): D, ("POST", "/api/v1/agents/{agent_id}/activate"): D,
    ("POST", "/api/v1/agents/{agent_id}/deactivate"): D, ("POST", "/api/v1/agents/{agent_id}/test"): D,
    # routes
    ("GET", "/api/v1/routes"): V, ("POST", "/api/v1/routes"): D, ("GET", "/api/v1/routes/{route_id}"): V,
    ("PATCH", "/api/v1/routes/{route_id}"): D, ("DELETE", "/api/v1/routes/{route_id}"): D,
    # knowledge
    ("POST", "/api/v1/knowledge/upload"): D, ("GET", "/api/v1/knowledge/documents"): V,
    ("GET", "/api/v1/knowledge/documents/{document_id}"): V,
    ("DELETE", "/api/v1/knowledge/documents/{document_id}"): D,
    ("POST", "/api/v1/knowledge/{document_id}/reindex"): D, ("POST", "/api/v1/knowledge/search"): V,
    ("GET", "/api/v1/knowledge/stats"): V,
    # calls: reading for all, steering live calls for admins
    ("GET", "/api/v1/calls"): V, ("GET", "/api/v1/calls/live"): V, ("POST", "/api/v1/calls/outgoing"): A,
    ("GET", "/api/v1/calls/{call_id}"): V, ("GET", "/api/v1/calls/{call_id}/recording"): V,
    ("POST", "/api/v1/calls/{call_id}/hangup"): A,
    # conversations: read-only
    ("GET", "/api/v1/conversations"): V, ("GET", "/api/v1/conversations/{conversation_id}"): V,
    ("GET", "/api/v1/conversations/{conversation_id}/messages"): V,
    ("GET", "/api/v1/messages/{message_id}/attachments/{index}"): V,
    # SIP trunks: admins change them (they carry credentials and cost money)
    ("GET", "/api/v1/sip/trunks"): V, ("POST", "/api/v1/sip/trunks"): A, ("GET", "/api/v1/sip/trunks/{trunk_id}"): V,
    ("PATCH", "/api/v1/sip/trunks/{trunk_id}"): A, ("DELETE", "/api/v1/sip/trunks/{trunk_id}"): A,
    ("GET", "/api/v1/sip/trunks/{trunk_id}/status"): V, ("GET", "/api/v1/sip/trunks/{trunk_id}/history"): V,
    # dialplans and flows: designers
    ("GET", "/api/v1/dialplans"): V, ("GET", "/api/v1/dialplans/{name}"): V, ("PUT", "/api/v1/dialplans/{name}"): D,
    ("DELETE", "/api/v1/dialplans/{name}"): D,
    ("GET", "/api/v1/flows"): V, ("POST", "/api/v1/flows"): D, ("GET", "/api/v1/flows/{flow_id}"): V,
    ("PATCH", "/api/v1/flows/{flow_id}"): D, ("DELETE", "/api/v1/flows/{flow_id}"): D,
    ("GET", "/api/v1/flows/{flow_id}/runs"): V,
    # text channels: Meta calls the webhook (signed payloads, not credentials); designers send and chat
    ("GET", "/api/v1/whatsapp/webhook"): P, ("POST", "/api/v1/whatsapp/webhook"): P,
    ("POST", "/api/v1/whatsapp/send-message"): D, ("GET", "/api/v1/whatsapp/conversations"): V,
    ("POST", "/api/v1/email/send"): D, ("POST", "/api/v1/email/chat"): D, ("GET", "/api/v1/email/conversations"): V,
    ("GET", "/api/v1/email/templates"): V, ("POST", "/api/v1/email/templates"): D,
    ("GET", "/api/v1/email/templates/{template_id}"): V, ("PATCH", "/api/v1/email/templates/{template_id}"): D,
    ("DELETE", "/api/v1/email/templates/{template_id}"): D,
    ("GET", "/api/v1/analysis/categories"): V, ("POST", "/api/v1/analysis/categories"): D,
    ("GET", "/api/v1/analysis/categories/{category_id}"): V,
    ("PATCH", "/api/v1/analysis/categories/{category_id}"): D,
    ("DELETE", "/api/v1/analysis/categories/{category_id}"): D,
    ("GET", "/api/v1/analysis/status"): V,
    ("GET", "/api/v1/triage/conversations"): V, ("POST", "/api/v1/triage/conversations/{conversation_id}/release"): D,
    # chat: viewers read sessions; replies are for chat keys (a website backend), designers and admins
    ("POST", "/api/v1/chat/sessions"): C, ("GET", "/api/v1/chat/sessions"): V,
    ("GET", "/api/v1/chat/sessions/{session_id}"): V, ("GET", "/api/v1/chat/sessions/{session_id}/messages"): V,
    ("POST", "/api/v1/chat/sessions/{session_id}/messages"): C,
    ("POST", "/api/v1/chat/sessions/{session_id}/stream"): C,
    # contacts: viewers read, designers correct a contact, only admins merge (memory joins) or erase (GDPR)
    ("GET", "/api/v1/contacts"): V, ("GET", "/api/v1/contacts/{contact_id}"): V,
    ("PATCH", "/api/v1/contacts/{contact_id}"): D, ("GET", "/api/v1/contacts/{contact_id}/conversations"): V,
    ("POST", "/api/v1/contacts/{contact_id}/merge"): A, ("DELETE", "/api/v1/contacts/{contact_id}"): A,
    ("GET", "/api/v1/audit"): A,
    # speech: transcribing and synthesizing cost CPU (designers); engine status for all
    ("POST", "/api/v1/calls/stt/transcribe"): D, ("POST", "/api/v1/calls/tts/generate"): D,
    ("GET", "/api/v1/calls/speech/status"): V,
    # analytics: read-only
    ("GET", "/api/v1/analytics"): V, ("GET", "/api/v1/analytics/unanswered"): V,
    # campaigns: designers build them; starting or resuming places calls (admins, as /calls/outgoing)
    ("GET", "/api/v1/campaigns"): V, ("POST", "/api/v1/campaigns"): D, ("GET", "/api/v1/campaigns/{campaign_id}"): V,
    ("PUT", "/api/v1/campaigns/{campaign_id}"): D, ("DELETE", "/api/v1/campaigns/{campaign_id}"): D,
    ("POST", "/api/v1/campaigns/{campaign_id}/start"): A, ("POST", "/api/v1/campaigns/{campaign_id}/pause"): D,
    ("POST", "/api/v1/campaigns/{campaign_id}/resume"): A, ("POST", "/api/v1/campaigns/{campaign_id}/cancel"): D,
    ("GET", "/api/v1/campaigns/{campaign_id}/contacts"): V,
    ("POST", "/api/v1/campaigns/{campaign_id}/contacts/import"): D,
    ("GET", "/api/v1/campaigns/{campaign_id}/analytics"): V,
    ("GET", "/api/v1/campaigns/{campaign_id}/analytics.csv"): V,
    # do-not-call: anyone who may write adds a number; only admins take one off (someone asked not to be called)
    ("GET", "/api/v1/dnc"): V, ("POST", "/api/v1/dnc"): D, ("DELETE", "/api/v1/dnc/{dnc_id}"): A,
    ("GET", "/api/v1/campaigns/{campaign_id}/dnc"): V, ("POST", "/api/v1/campaigns/{campaign_id}/dnc"): D,
    ("DELETE", "/api/v1/campaigns/{campaign_id}/dnc/{dnc_id}"): A,
    ("POST", "/api/v1/agents/{agent_id}/chat/stream"): C, ("POST", "/api/v1/agents/ollama/{agent_id}/chat/stream"): C,
    # the web console: its page and files, its cookie session and first run are public (each checks what it
    # needs: a password, the refresh cookie, the one-time setup token); its live events need a signed-in viewer
    ("GET", "/"): P, ("GET", "/console/{path}"): P,
    ("POST", "/api/v1/console/login"): P, ("POST", "/api/v1/console/refresh"): P,
    ("GET", "/api/v1/console/setup"): P, ("POST", "/api/v1/console/setup"): P,
    ("POST", "/api/v1/console/logout"): N, ("GET", "/api/v1/console/events"): V,
}
PUBLIC_BUT_NEEDS_A_SESSION = {("POST", "/api/v1/console/refresh")}
"""Public routes that answer 401 without their cookie (the refresh cookie is the credential)."""
STREAMS = {("GET", "/api/v1/console/events")}
"""Routes that stream until the client leaves: the walk reads their status and hangs up."""
NOT_FOR_API_KEYS = {("POST", "/api/v1/auth/password")}
"""A machine key has no password to change (403 by design, covered in test_auth)."""


def _concrete(path: str) -> str:
    """Fill path parameters with values that exist nowhere, so an allowed call changes nothing."""
    return (path.replace("{name}", "no-such-dialplan")
            .replace("{user_id}", "999999").replace("{key_id}", "999999").replace("{agent_id}", "999999")
            .replace("{route_id}", "999999").replace("{document_id}", "999999").replace("{call_id}", "999999")
            .replace("{conversation_id}", "999999").replace("{trunk_id}", "999999").replace("{flow_id}", "999999")
            .replace("{session_id}", "999999").replace("{contact_id}", "999999")
            .replace("{message_id}", "999999").replace("{index}", "0")
            .replace("{template_id}", "999999").replace("{category_id}", "999999")
            .replace("{campaign_id}", "999999").replace("{dnc_id}", "999999"))


def _served(api: Api) -> dict[tuple[str, str], str | None]:
    return {(e.method, e.full_path): e.role for e in api.app[ENDPOINTS_KEY]}


async def test_every_route_is_in_the_matrix_with_its_role(api: Api) -> None:
    routed = {(route.method, route.resource.canonical) for route in api.app.router.routes()
              if route.resource is not None}
    assert routed == set(EXPECTED), (sorted(routed - set(EXPECTED)), sorted(set(EXPECTED) - routed))
    assert _served(api) == EXPECTED


async def test_router_walk_401_without_credentials_403_for_weaker_roles(api: Api) -> None:
    checked = 0
    for (method, path), role in sorted(EXPECTED.items(), key=lambda item: (item[0][1], item[0][0])):
        url = _concrete(path)
        if role is None:
            status, _ = await api.call(method, url, role=None)
            if (method, path) in PUBLIC_BUT_NEEDS_A_SESSION:
                assert status == 401, (method, path, status)
            else:
                assert status not in (401, 403), (method, path, status)
            continue
        status, body = await api.call(method, url, role=None)
        assert status == 401, (method, path, status, body)
        assert body["error"]["code"] == "unauthorized"
        for weaker in ROLES:
            if ROLE_RANK[weaker] >= rank_to_hold(role):
                continue
            for headers in ({"Authorization": f"Bearer {api.tokens[weaker]}"}, {"X-API-Key": api.keys[weaker]}):
                status, body = await api.call(method, url, role=None, headers=headers)
                assert (status, body["error"]["code"]) == (403, "forbidden"), (method, path, weaker, status)
        for allowed in ROLES:
            if ROLE_RANK[allowed] < rank_to_hold(role) or (method, path) in NOT_FOR_API_KEYS:
                continue
            if (method, path) in STREAMS:
                async with api.client.request(method, url, headers={"X-API-Key": api.keys[allowed]}) as response:
                    assert response.status == 200, (method, path, allowed, response.status)
                continue
            status, body = await api.call(method, url, role=None, headers={"X-API-Key": api.keys[allowed]})
            assert status not in (401, 403), (method, path, allowed, status, body)
        checked += 1
    assert checked == sum(1 for role in EXPECTED.values() if role is not None)


async def test_a_chat_key_reaches_the_chat_endpoints_and_nothing_else(api: Api) -> None:
    with session_scope(api.engine) as session:
        _row, key = accounts.create_api_key(session, "website", C)
    headers = {"X-API-Key": key}
    for (method, path), role in sorted(EXPECTED.items(), key=lambda item: (item[0][1], item[0][0])):
        if role is None:
            continue
        status, body = await api.call(method, _concrete(path), role=None, headers=headers)
        if role == C:
            assert status not in (401, 403), (method, path, status, body)
        else:  # reads included: a leaked website key shows no conversation and changes no agent
            assert (status, body["error"]["code"]) == (403, "forbidden"), (method, path, status)
    # A chat key is made by an admin (or on the host); a designer's own keys cannot carry more than designer.
    status, made = await api.call("POST", "/api/v1/apikeys", role="admin", json={"name": "site", "role": "chat"})
    assert (status, made["role"]) == (201, "chat"), made


async def test_role_matrix_on_real_operations(api: Api) -> None:
    """The same write, tried by each role: only the roles allowed succeed, the others change nothing."""
    writes: list[tuple[str, str, dict[str, Any], str]] = [
        ("POST", "/api/v1/agents", {"name": "matrix-{role}"}, D),
        ("POST", "/api/v1/flows", {"name": "flow-{role}", "start_step": "a",
                                   "steps": [{"id": "a", "say": "Hello"}]}, D),
        ("POST", "/api/v1/users", {"username": "user-{role}", "password": "long enough pw"}, A),
        ("POST", "/api/v1/apikeys", {"name": "key-{role}"}, A),
        ("POST", "/api/v1/sip/trunks", {"name": "t-{role}", "host": "127.0.0.9"}, A),
    ]
    for method, path, template, least in writes:
        for role in ROLES:
            body = {k: v.replace("{role}", role) if isinstance(v, str) else v for k, v in template.items()}
            status, answer = await api.call(method, path, role=role, json=body)
            if ROLE_RANK[role] >= ROLE_RANK[least]:
                assert status == 201, (path, role, answer)
            else:
                assert status == 403, (path, role, answer)
        status, listed = await api.call("GET", path, role="admin")
        assert status == 200
        names = {item.get("name") or item.get("username") for item in listed}
        created = {template.get("name", template.get("username", "")).replace("{role}", r) for r in ROLES
                   if ROLE_RANK[r] >= ROLE_RANK[least]}
        refused = {template.get("name", template.get("username", "")).replace("{role}", r) for r in ROLES
                   if ROLE_RANK[r] < ROLE_RANK[least]}
        assert created <= names and not refused & names, (path, names)
