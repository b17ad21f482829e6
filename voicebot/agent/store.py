"""Agents, routes and contacts: validated CRUD over ``models.db`` sessions.

Two layers:

* module-level functions that take an open ``Session`` (blocking; usable inside a caller's own transaction,
  e.g. setup steps or a request handler that does several things atomically);
* :class:`AgentStore`, the async facade every channel and the admin API use: each call opens one
  ``session_scope`` in a worker thread (``asyncio.to_thread``) so the event loop never blocks on the database.

Errors are our own: :class:`~voicebot.errors.NotFound`, :class:`~voicebot.errors.Conflict` and
:class:`~voicebot.errors.InvalidInput`, each with the offending ``field`` where there is one.  Returned rows
are detached snapshots (the session is closed); change them through ``update_*``, not by mutating them.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from pydantic import ValidationError
from sqlalchemy import and_, func, or_
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from models import Agent, Category, Contact, Conversation, Flow, KnowledgeDocument, Route, utcnow
from models.calls import Call
from models.db import session_scope
from voicebot.errors import Conflict, InvalidInput, NotFound

T = TypeVar("T")

AGENT_FIELDS = frozenset({
    "name", "description", "persona", "language", "languages", "voice", "llm_model", "temperature", "max_tokens",
    "greeting", "fallback_message", "dtmf_terminator", "dtmf_timeout_ms", "transfer_targets", "start_flow",
    "flow_triggers", "email_signature", "email_address", "learn_from_media", "active",
})
"""Fields a caller may set on an agent (ids and timestamps are ours)."""

ROUTE_FIELDS = frozenset({"did", "agent_id", "flow_id", "description", "enabled"})

# Agent names appear in CLI arguments and URLs, so keep them to a slug.
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,79}$")
# A DID/extension as Asterisk dialplans see it (digits, +, *, #, or a named extension).
_DID_RE = re.compile(r"^[A-Za-z0-9+*#_.-]{1,64}$")
_EMAIL_RE = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
_PHONE_STRIP_RE = re.compile(r"[\s().\-/]")


# ---------------------------------------------------------------------------------------------- helpers
def _validation_error(exc: ValidationError) -> InvalidInput:
    first = exc.errors()[0]
    field = ".".join(str(part) for part in first.get("loc", ())) or None
    return InvalidInput(f"{field or 'value'}: {first.get('msg', 'invalid')}", field=field)


def _check_keys(data: Mapping[str, Any], allowed: frozenset[str]) -> None:
    for key in data:
        if key not in allowed:
            raise InvalidInput(f"unknown field {key!r}", field=key)


def _check_name(name: Any) -> str:
    # fullmatch, not match: with match, `$` also matches before a trailing newline ("demo\n").
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        raise InvalidInput("name must be 1-80 letters, digits, '_', '-' or '.', starting with a letter or "
                           "digit", field="name")
    return name


_LANGUAGE_RE = re.compile(r"^[A-Za-z]{2,3}(?:[_-][A-Za-z0-9]{2,8})?$")


def _check_languages(data: Mapping[str, Any]) -> None:
    """``language`` is one BCP-47 tag, ``languages`` a list of at most 8 of them."""
    if "language" in data and not (isinstance(data["language"], str) and _LANGUAGE_RE.fullmatch(data["language"])):
        raise InvalidInput("language must be a language tag such as 'en', 'es' or 'es-MX'", field="language")
    if "languages" in data:
        value = data["languages"]
        if not isinstance(value, list) or len(value) > 8 or not all(
                isinstance(v, str) and _LANGUAGE_RE.fullmatch(v) for v in value):
            raise InvalidInput("languages must be a list of at most 8 language tags such as 'en' or 'es-MX'",
                               field="languages")


def _check_did(did: Any) -> str:
    if not isinstance(did, str) or not _DID_RE.fullmatch(did):
        raise InvalidInput("did must be 1-64 characters of digits, letters, + * # _ . -", field="did")
    return did


def normalize_phone(raw: str) -> str:
    """``+1 (555) 123-4567`` → ``+15551234567``; raises InvalidInput if it is not a phone number."""
    value = _PHONE_STRIP_RE.sub("", raw.strip())
    if value.startswith("00"):
        value = "+" + value[2:]
    digits = value[1:] if value.startswith("+") else value
    if not digits.isdigit() or not 2 <= len(digits) <= 20:
        raise InvalidInput("phone must be a phone number (digits, optionally with a leading +)",
                           field="phone")
    return value


def normalize_whatsapp_id(raw: str) -> str:
    """WhatsApp ids (``wa_id``) are the international number in digits; a leading + is dropped."""
    value = _PHONE_STRIP_RE.sub("", raw.strip()).removeprefix("+")
    if not value.isdigit() or not 4 <= len(value) <= 20:
        raise InvalidInput("whatsapp_id must be the international number in digits", field="whatsapp_id")
    return value


def normalize_email(raw: str) -> str:
    value = raw.strip().lower()
    if len(value) > 320 or not _EMAIL_RE.fullmatch(value):
        raise InvalidInput("email must be an e-mail address", field="email")
    return value


# ---------------------------------------------------------------------------------------------- agents (sync)
def list_agents(session: Session, *, active_only: bool = False) -> list[Agent]:
    query = select(Agent).order_by(col(Agent.name))
    if active_only:
        query = query.where(col(Agent.active).is_(True))
    return list(session.exec(query).all())


def get_agent(session: Session, agent_id: int) -> Agent:
    agent = session.get(Agent, agent_id)
    if agent is None:
        raise NotFound(f"agent {agent_id} does not exist", field="agent_id")
    return agent


def get_agent_by_name(session: Session, name: str) -> Agent:
    agent = session.exec(select(Agent).where(Agent.name == name)).first()
    if agent is None:
        raise NotFound(f"agent {name!r} does not exist", field="name")
    return agent


def _check_flows(session: Session, data: Mapping[str, Any]) -> None:
    """``start_flow`` and the ``flow_triggers`` keys name flows that exist (a typo would silently start none)."""
    named = [("start_flow", data["start_flow"])] if data.get("start_flow") else []
    named += [(f"flow_triggers.{name}", name) for name in (data.get("flow_triggers") or {})]
    for field, name in named:
        if session.exec(select(Flow.id).where(Flow.name == name)).first() is None:
            raise InvalidInput(f"there is no flow named {name!r}", field=field)


def _check_email_address(session: Session, data: Mapping[str, Any], other_than: int | None = None) -> dict[str, Any]:
    """``data`` with its ``email_address`` lower-cased (None clears it); Conflict ``email_address_taken`` when
    another agent has that address (inbound mail to it must have exactly one agent to answer it)."""
    fields = dict(data)
    if fields.get("email_address") is None:
        return fields
    value = fields["email_address"]
    if not isinstance(value, str):
        raise InvalidInput("email_address must be an e-mail address or null", field="email_address")
    try:
        address = fields["email_address"] = normalize_email(value)
    except InvalidInput as exc:
        raise InvalidInput("email_address must be an e-mail address or null", field="email_address") from exc
    query = select(Agent.id).where(Agent.email_address == address)
    if other_than is not None:
        query = query.where(col(Agent.id) != other_than)
    if session.exec(query).first() is not None:
        raise Conflict(f"another agent has the e-mail address {address!r}", code="email_address_taken",
                       field="email_address")
    return fields


def _conflict(session: Session, name: str, address: str | None, agent_id: int | None) -> Conflict:
    """The Conflict a failed flush means: a concurrent write took the name or the address first (the values are
    read before the flush: the session must be rolled back before it can tell which)."""
    session.rollback()
    query = select(Agent.id).where(Agent.email_address == address)
    if agent_id is not None:
        query = query.where(col(Agent.id) != agent_id)
    if address and session.exec(query).first() is not None:
        return Conflict(f"another agent has the e-mail address {address!r}", code="email_address_taken",
                        field="email_address")
    return Conflict(f"an agent named {name!r} already exists", field="name")


def create_agent(session: Session, data: Mapping[str, Any]) -> Agent:
    _check_keys(data, AGENT_FIELDS)
    if "name" not in data:
        raise InvalidInput("name is required", field="name")
    _check_name(data["name"])
    _check_languages(data)
    _check_flows(session, data)
    data = _check_email_address(session, data)
    try:
        agent = Agent.model_validate(dict(data))
    except ValidationError as exc:
        raise _validation_error(exc) from exc
    if session.exec(select(Agent.id).where(Agent.name == agent.name)).first() is not None:
        raise Conflict(f"an agent named {agent.name!r} already exists", field="name")
    session.add(agent)
    name, address = agent.name, agent.email_address
    try:
        session.flush()
    except IntegrityError as exc:  # a concurrent create won the race for the unique name or address
        raise _conflict(session, name, address, None) from exc
    return agent


def update_agent(session: Session, agent_id: int, changes: Mapping[str, Any]) -> Agent:
    _check_keys(changes, AGENT_FIELDS)
    _check_languages(changes)
    _check_flows(session, changes)
    agent = get_agent(session, agent_id)
    changes = _check_email_address(session, changes, other_than=agent_id)
    if "name" in changes:
        _check_name(changes["name"])
        clash = session.exec(
            select(Agent.id).where(Agent.name == changes["name"], Agent.id != agent_id)).first()
        if clash is not None:
            raise Conflict(f"an agent named {changes['name']!r} already exists", field="name")
    # Validate the merged record as a whole so range and length checks apply exactly as on create.
    merged = agent.model_dump() | dict(changes)
    try:
        Agent.model_validate(merged)
    except ValidationError as exc:
        raise _validation_error(exc) from exc
    for key, value in changes.items():
        setattr(agent, key, value)
    agent.updated_at = utcnow()
    session.add(agent)
    name, address = agent.name, agent.email_address
    try:
        session.flush()
    except IntegrityError as exc:
        raise _conflict(session, name, address, agent_id) from exc
    return agent


def delete_agent(session: Session, agent_id: int) -> None:
    """Delete an agent.  Refused while routes or knowledge documents still point at it (delete those first,
    so no route answers with a missing agent and no vectors are orphaned in Chroma).  Conversation and call
    history is kept, detached from the agent."""
    agent = get_agent(session, agent_id)
    routes = session.exec(select(func.count()).select_from(Route).where(Route.agent_id == agent_id)).one()
    if routes:
        raise Conflict(f"agent {agent.name!r} is used by {routes} route(s); delete or re-point them first",
                       field="routes")
    docs = session.exec(select(func.count()).select_from(KnowledgeDocument)
                        .where(KnowledgeDocument.agent_id == agent_id)).one()
    if docs:
        raise Conflict(f"agent {agent.name!r} still has {docs} knowledge document(s); remove them first",
                       field="knowledge")
    flows = session.exec(select(func.count()).select_from(Flow).where(Flow.agent_id == agent_id)).one()
    if flows:
        raise Conflict(f"agent {agent.name!r} is used by {flows} flow(s); delete or re-point them first",
                       field="flows")
    routed = session.exec(select(func.count()).select_from(Category).where(Category.route_agent_id == agent_id)).one()
    if routed:
        raise Conflict(f"agent {agent.name!r} answers the mail of {routed} triage categor"
                       f"{'y' if routed == 1 else 'ies'}; re-point them first", field="categories")
    for conversation in session.exec(select(Conversation).where(Conversation.agent_id == agent_id)).all():
        conversation.agent_id = None
        session.add(conversation)
    for call in session.exec(select(Call).where(Call.agent_id == agent_id)).all():
        call.agent_id = None
        session.add(call)
    session.flush()
    name = agent.name  # read now: after a failed flush the session cannot load it
    session.delete(agent)
    try:
        session.flush()
    except IntegrityError as exc:  # a reference added since the checks above (or one they do not know)
        raise Conflict(f"agent {name!r} is still referenced; remove what uses it first",
                       field="agent_id") from exc


# ---------------------------------------------------------------------------------------------- routes (sync)
def list_routes(session: Session) -> list[Route]:
    return list(session.exec(select(Route).order_by(col(Route.did))).all())


def get_route(session: Session, route_id: int) -> Route:
    route = session.get(Route, route_id)
    if route is None:
        raise NotFound(f"route {route_id} does not exist", field="route_id")
    return route


def get_route_by_did(session: Session, did: str) -> Route:
    route = session.exec(select(Route).where(Route.did == did)).first()
    if route is None:
        raise NotFound(f"no route for {did!r}", field="did")
    return route


def _check_route_target(session: Session, agent_id: Any, flow_id: Any) -> None:
    if agent_id is None and flow_id is None:
        raise InvalidInput("a route needs an agent_id or a flow_id", field="agent_id")
    if agent_id is not None and flow_id is not None:
        raise InvalidInput("a route points at an agent or a flow, not both", field="flow_id")
    if agent_id is not None:
        if not isinstance(agent_id, int) or isinstance(agent_id, bool):
            raise InvalidInput("agent_id must be an integer", field="agent_id")
        if session.get(Agent, agent_id) is None:
            raise InvalidInput(f"agent {agent_id} does not exist", field="agent_id")
    if flow_id is not None and (not isinstance(flow_id, int) or isinstance(flow_id, bool)):
        raise InvalidInput("flow_id must be an integer", field="flow_id")


def create_route(session: Session, data: Mapping[str, Any]) -> Route:
    _check_keys(data, ROUTE_FIELDS)
    did = _check_did(data.get("did"))
    _check_route_target(session, data.get("agent_id"), data.get("flow_id"))
    try:
        route = Route.model_validate(dict(data))
    except ValidationError as exc:
        raise _validation_error(exc) from exc
    if session.exec(select(Route.id).where(Route.did == did)).first() is not None:
        raise Conflict(f"a route for {did!r} already exists", field="did")
    session.add(route)
    try:
        session.flush()
    except IntegrityError as exc:
        raise Conflict(f"a route for {did!r} already exists", field="did") from exc
    return route


def update_route(session: Session, route_id: int, changes: Mapping[str, Any]) -> Route:
    _check_keys(changes, ROUTE_FIELDS)
    route = get_route(session, route_id)
    merged = route.model_dump() | dict(changes)
    _check_did(merged["did"])
    _check_route_target(session, merged.get("agent_id"), merged.get("flow_id"))
    if "did" in changes:
        clash = session.exec(
            select(Route.id).where(Route.did == changes["did"], Route.id != route_id)).first()
        if clash is not None:
            raise Conflict(f"a route for {changes['did']!r} already exists", field="did")
    try:
        Route.model_validate(merged)
    except ValidationError as exc:
        raise _validation_error(exc) from exc
    for key, value in changes.items():
        setattr(route, key, value)
    session.add(route)
    try:
        session.flush()
    except IntegrityError as exc:
        raise Conflict(f"a route for {route.did!r} already exists", field="did") from exc
    return route


def delete_route(session: Session, route_id: int) -> None:
    session.delete(get_route(session, route_id))
    session.flush()


def agent_for_did(session: Session, did: str) -> Agent | None:
    """The active agent an enabled route sends ``did`` to, or None (no route, a flow route, or disabled)."""
    route = session.exec(select(Route).where(Route.did == did, col(Route.enabled).is_(True))).first()
    if route is None or route.agent_id is None:
        return None
    agent = session.get(Agent, route.agent_id)
    return agent if agent is not None and agent.active else None


# -------------------------------------------------------------------------------------------- contacts (sync)
def get_contact(session: Session, contact_id: int) -> Contact:
    contact = session.get(Contact, contact_id)
    if contact is None:
        raise NotFound(f"contact {contact_id} does not exist", field="contact_id")
    return contact


def _contact_identity(phone: str | None, whatsapp_id: str | None,
                      email: str | None) -> tuple[str | None, str | None, str | None]:
    phone = normalize_phone(phone) if phone else None
    whatsapp_id = normalize_whatsapp_id(whatsapp_id) if whatsapp_id else None
    email = normalize_email(email) if email else None
    if not (phone or whatsapp_id or email):
        raise InvalidInput("a contact needs a phone number, a WhatsApp id or an e-mail address",
                           field="phone")
    return phone, whatsapp_id, email


def find_contact(session: Session, *, phone: str | None = None, whatsapp_id: str | None = None,
                 email: str | None = None, verified: bool = False) -> Contact | None:
    """The contact matching any of the identifiers, or None.

    ``verified``: the channel authenticated the identifiers (a signed WhatsApp webhook: Meta vouches for the
    wa_id; a trunk that attests caller ID).  A WhatsApp id is the international number, and the two identities
    are one contact, sharing conversation memory across channels, only when both are verified: a verified
    caller finds the WhatsApp contact of ``+<wa_id>``, and a WhatsApp id finds the contact of a phone number
    only if that number was verified (``Contact.phone_verified``).  Unverified identifiers match only their
    own kind: a spoofed caller ID must neither open the WhatsApp contact's memory nor plant turns in it.
    When several contacts match different identifiers, the phone match wins, then WhatsApp, then e-mail (we
    never merge contacts implicitly)."""
    phone, whatsapp_id, email = _contact_identity(phone, whatsapp_id, email)
    candidates: list[Any] = []
    if phone:
        candidates.append(Contact.phone == phone)
        if phone.startswith("+") and verified:
            candidates.append(Contact.whatsapp_id == phone[1:])
    if whatsapp_id:
        candidates.append(Contact.whatsapp_id == whatsapp_id)
        if verified:
            candidates.append(and_(col(Contact.phone) == "+" + whatsapp_id, col(Contact.phone_verified)))
    if email:
        candidates.append(Contact.email == email)
    found = list(session.exec(select(Contact).where(or_(*candidates))).all())
    if not found:
        return None

    def rank(contact: Contact) -> int:
        if phone and contact.phone == phone and verified and not contact.phone_verified:
            return 3  # a verified caller prefers their verified contact to one a spoofed caller ID may have made
        if phone and contact.phone == phone:
            return 0
        if whatsapp_id and contact.whatsapp_id == whatsapp_id:
            return 1
        if (phone and contact.whatsapp_id == phone.removeprefix("+")) or (
                whatsapp_id and contact.phone == "+" + whatsapp_id):
            return 2
        return 4  # matched by e-mail only

    return min(found, key=lambda c: (rank(c), c.id or 0))


def find_or_create_contact(session: Session, *, phone: str | None = None, whatsapp_id: str | None = None,
                           email: str | None = None, name: str = "", verified: bool = False) -> Contact:
    """Return the one contact for this person, creating it if new.  Identifiers the contact lacks are filled
    in when no other contact holds them (so a verified caller who later writes on WhatsApp stays one contact;
    ``verified`` as for :func:`find_contact`)."""
    phone, whatsapp_id, email = _contact_identity(phone, whatsapp_id, email)
    if len(name) > 200:
        raise InvalidInput("name is longer than 200 characters", field="name")
    contact = find_contact(session, phone=phone, whatsapp_id=whatsapp_id, email=email, verified=verified)
    if contact is None:
        contact = Contact(name=name, phone=phone, phone_verified=bool(phone and verified), whatsapp_id=whatsapp_id,
                          email=email)
        session.add(contact)
        session.flush()
        return contact
    changed = False
    for attr, value in (("phone", phone), ("whatsapp_id", whatsapp_id), ("email", email)):
        if value and getattr(contact, attr) is None:
            holder = session.exec(select(Contact.id).where(getattr(Contact, attr) == value)).first()
            if holder is None:
                setattr(contact, attr, value)
                if attr == "phone":
                    contact.phone_verified = verified
                changed = True
    if name and not contact.name:
        contact.name = name
        changed = True
    if changed:
        session.add(contact)
        session.flush()
    return contact


# ---------------------------------------------------------------------------------------------- async facade
class AgentStore:
    """Async access to agents, routes and contacts.  Each method is one transaction in a worker thread."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def _transaction(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        with session_scope(self.engine) as session:
            return fn(session, *args, **kwargs)

    async def _run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return await asyncio.to_thread(self._transaction, fn, *args, **kwargs)

    # agents
    async def list_agents(self, *, active_only: bool = False) -> list[Agent]:
        return await self._run(list_agents, active_only=active_only)

    async def get_agent(self, agent_id: int) -> Agent:
        return await self._run(get_agent, agent_id)

    async def get_agent_by_name(self, name: str) -> Agent:
        return await self._run(get_agent_by_name, name)

    async def create_agent(self, data: Mapping[str, Any]) -> Agent:
        return await self._run(create_agent, data)

    async def update_agent(self, agent_id: int, changes: Mapping[str, Any]) -> Agent:
        return await self._run(update_agent, agent_id, changes)

    async def delete_agent(self, agent_id: int) -> None:
        await self._run(delete_agent, agent_id)

    # routes
    async def list_routes(self) -> list[Route]:
        return await self._run(list_routes)

    async def get_route(self, route_id: int) -> Route:
        return await self._run(get_route, route_id)

    async def get_route_by_did(self, did: str) -> Route:
        return await self._run(get_route_by_did, did)

    async def create_route(self, data: Mapping[str, Any]) -> Route:
        return await self._run(create_route, data)

    async def update_route(self, route_id: int, changes: Mapping[str, Any]) -> Route:
        return await self._run(update_route, route_id, changes)

    async def delete_route(self, route_id: int) -> None:
        await self._run(delete_route, route_id)

    async def agent_for_did(self, did: str) -> Agent | None:
        return await self._run(agent_for_did, did)

    # contacts
    async def get_contact(self, contact_id: int) -> Contact:
        return await self._run(get_contact, contact_id)

    async def find_or_create_contact(self, *, phone: str | None = None, whatsapp_id: str | None = None,
                                     email: str | None = None, name: str = "", verified: bool = False) -> Contact:
        try:
            return await self._run(find_or_create_contact, phone=phone, whatsapp_id=whatsapp_id,
                                   email=email, name=name, verified=verified)
        except IntegrityError:
            # Two channels created the same new person at the same moment; the other insert won, so the
            # retry finds it.
            return await self._run(find_or_create_contact, phone=phone, whatsapp_id=whatsapp_id,
                                   email=email, name=name, verified=verified)
