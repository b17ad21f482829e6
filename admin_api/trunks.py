"""SIP trunks: stored in ``sip_trunks``, rendered into ``pjsip_trunks.conf`` (included by Eva's pjsip.conf),
applied with an AMI ``module reload res_pjsip.so`` and checked; a configuration Asterisk rejects is rolled
back.

How a rejection is detected: Asterisk's reload "succeeds" even when an object fails (it logs an error and
keeps the previous version of that object).  So after each reload we (1) read the errors Asterisk's
configuration code (sorcery, res_pjsip) logged that name one of the trunk's objects by its quoted id, and
(2) ask AMI whether every object we rendered for the trunk exists.  Either failing restores the previous file,
reloads again, and reports Asterisk's reasons as a 422 ``asterisk_rejected``.  An error line that merely
contains the trunk's host (another trunk's DNS failure, a call, a remote peer) is not a rejection of it.

Each trunk becomes up to five pjsip objects, all named ``trunk-<name>``: endpoint, aor, auth (with
credentials), identify (calls from the provider's host are the trunk's) and registration (when enabled).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from sqlalchemy import delete
from sqlalchemy.engine import Engine
from sqlmodel import col, select

from admin_api.asterisk_link import AsteriskLink
from models import SipTrunk, TrunkStateEvent, utcnow
from models.db import session_scope
from voicebot.asterisk.render import WILDCARD_HOSTS
from voicebot.errors import AsteriskRejected, Conflict, InvalidInput, NotFound

log = logging.getLogger(__name__)
T = TypeVar("T")

TRUNKS_FILE = "pjsip_trunks.conf"
TCP_TRANSPORT = "trunk-transport-tcp"
RELOAD_COMMAND = "module reload res_pjsip.so"
RELOAD_MARKER = "Type 'system' is not reloadable"
"""res_pjsip logs this at the end of every reload: when it appears, all of the reload's errors are logged."""


def endpoint_name(trunk_name: str) -> str:
    return f"trunk-{trunk_name}"


def _value(text: str) -> str:
    """A pjsip.conf value: ';' starts a comment unless escaped; line breaks are refused by the schemas."""
    if "\n" in text or "\r" in text:
        raise InvalidInput("line breaks are not allowed in trunk settings")
    return text.replace(";", "\\;")


def _has_auth(trunk: SipTrunk) -> bool:
    return bool(trunk.username and trunk.password)


def server_uri(trunk: SipTrunk) -> str:
    """The provider's URI: the aor's contact (what qualify pings) and the registration's server_uri."""
    return f"sip:{trunk.host}:{trunk.port}" + (";transport=tcp" if trunk.transport == "tcp" else "")


def client_uri(trunk: SipTrunk) -> str:
    """The registration's client_uri (Asterisk's ``Registry`` AMI event names a registration by it)."""
    return f"sip:{_value(trunk.username)}@{trunk.host}:{trunk.port}"


def render_trunks(trunks: Sequence[SipTrunk], *, bind_host: str, sip_port: int, qualify_s: int = 60) -> str:
    """The whole ``pjsip_trunks.conf`` for these trunks (disabled ones are left out).

    ``qualify_s``: how often Asterisk sends each trunk an OPTIONS ping; the trunk monitor learns from the answers
    (or their absence) whether the trunk is up."""
    lines = ["; SIP trunks managed by Eva's admin API (/api/v1/sip/trunks).  Edits here are overwritten.", ""]
    enabled = [t for t in sorted(trunks, key=lambda t: t.name) if t.enabled]
    if any(t.transport == "tcp" for t in enabled):
        lines += [
            f"[{TCP_TRANSPORT}]",
            "type = transport",
            "protocol = tcp",
            f"bind = {bind_host}:{sip_port}",
            "",
        ]
    for trunk in enabled:
        name = endpoint_name(trunk.name)
        transport = TCP_TRANSPORT if trunk.transport == "tcp" else "transport-udp"
        uri = server_uri(trunk)
        lines += [
            f"; trunk {trunk.name}",
            f"[{name}]",
            "type = endpoint",
            f"transport = {transport}",
            "context = from-trunk",
            "disallow = all",
            f"allow = {','.join(trunk.codecs)}",
            "direct_media = no",
            "rtp_symmetric = yes",
            "force_rport = yes",
            "rewrite_contact = yes",
            "dtmf_mode = rfc4733",
            "rtp_timeout = 60",
            f"aors = {name}",
        ]
        if bind_host not in WILDCARD_HOSTS:
            # RTP on the SIP address only, never the wildcard (chan_pjsip's default).
            lines += [f"media_address = {bind_host}", "bind_rtp_to_media_address = yes"]
        if _has_auth(trunk):
            lines.append(f"outbound_auth = {name}")
        if trunk.from_user:
            lines.append(f"from_user = {_value(trunk.from_user)}")
        if trunk.from_domain:
            lines.append(f"from_domain = {_value(trunk.from_domain)}")
        lines += ["", f"[{name}]", "type = aor", f"contact = {uri}",
                  f"qualify_frequency = {max(1, qualify_s)}", ""]
        if _has_auth(trunk):
            lines += [
                f"[{name}]",
                "type = auth",
                "auth_type = userpass",
                f"username = {_value(trunk.username)}",
                f"password = {_value(trunk.password)}",
                "",
            ]
        lines += [f"[{name}]", "type = identify", f"endpoint = {name}", f"match = {trunk.host}", ""]
        if trunk.registration and _has_auth(trunk):
            lines += [
                f"[{name}]",
                "type = registration",
                f"transport = {transport}",
                f"outbound_auth = {name}",
                f"server_uri = {uri}",
                f"client_uri = {client_uri(trunk)}",
                f"contact_user = {_value(trunk.username)}",
                "retry_interval = 60",
                "forbidden_retry_interval = 600",
                "expiration = 3600",
                "line = yes",
                f"endpoint = {name}",
                "",
            ]
    return "\n".join(lines)


def check_trunk(trunk: SipTrunk) -> None:
    """Rules that span fields, and what the request schemas cannot see about Asterisk's config syntax."""
    if trunk.registration and not _has_auth(trunk):
        raise InvalidInput("registration needs a username and a password", field="registration")
    if trunk.password != trunk.password.strip(" "):
        # Asterisk strips a value's surrounding spaces: the provider would get a different password.
        raise InvalidInput("a trunk password cannot begin or end with a space", field="password")


CONFIG_SOURCES = ("res_pjsip", "res_sorcery", "sorcery.c", "config.c", "config_options.c")
"""Where Asterisk logs configuration errors (its channel driver and applications log call-time ones)."""


def rejection_reasons(trunk: SipTrunk, logged: Sequence[tuple[str, str, str]]) -> list[str]:
    """The errors of one reload that reject ``trunk``: configuration errors naming one of its objects."""
    ids = {f"'{endpoint_name(trunk.name)}'"}
    if trunk.transport == "tcp":
        ids.add(f"'{TCP_TRANSPORT}'")
    return [
        text
        for level, source, text in logged
        if level == "ERROR" and source.startswith(CONFIG_SOURCES) and any(i in text for i in ids)
    ]


class TrunkService:
    """Trunk CRUD that keeps the database, the rendered file and the running Asterisk in step."""

    def __init__(self, engine: Engine, link: AsteriskLink) -> None:
        self.engine = engine
        self.link = link
        self.on_change: Callable[[], None] | None = None
        """Called after every change Asterisk took (the trunk monitor re-reads the trunks then)."""

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change()

    def _render(self, trunks: Sequence[SipTrunk]) -> str:
        settings = self.link.settings
        return render_trunks(trunks, bind_host=settings.sip_bind_host or settings.bind_host,
                             sip_port=settings.sip_port, qualify_s=settings.trunk_qualify_s)

    @property
    def path(self) -> Any:
        return self.link.etc_dir / TRUNKS_FILE

    # ------------------------------------------------------------------ reads
    def _all(self) -> list[SipTrunk]:
        with session_scope(self.engine) as session:
            return list(session.exec(select(SipTrunk).order_by(col(SipTrunk.name))).all())

    async def list_trunks(self) -> list[SipTrunk]:
        return await asyncio.to_thread(self._all)

    async def get(self, trunk_id: int) -> SipTrunk:
        def load() -> SipTrunk:
            with session_scope(self.engine) as session:
                trunk = session.get(SipTrunk, trunk_id)
                if trunk is None:
                    raise NotFound(f"trunk {trunk_id} does not exist", field="trunk_id")
                return trunk

        return await asyncio.to_thread(load)

    # ------------------------------------------------------------------ writes
    async def create(self, data: dict[str, Any]) -> SipTrunk:
        candidate = SipTrunk(**data)
        check_trunk(candidate)
        async with self.link.lock:
            existing = await asyncio.to_thread(self._all)
            if any(t.name == candidate.name for t in existing):
                raise Conflict(f"a trunk named {candidate.name!r} already exists", field="name")
            await self._apply([*existing, candidate], candidate, removed=None)

            def insert() -> SipTrunk:
                with session_scope(self.engine) as session:
                    session.add(candidate)
                    session.flush()
                    return candidate

            created = await self._persist(insert)
            self._changed()
            return created

    async def update(self, trunk_id: int, changes: dict[str, Any]) -> SipTrunk:
        async with self.link.lock:
            existing = await asyncio.to_thread(self._all)
            current = next((t for t in existing if t.id == trunk_id), None)
            if current is None:
                raise NotFound(f"trunk {trunk_id} does not exist", field="trunk_id")
            merged = current.model_copy(update={**changes, "updated_at": utcnow()})
            check_trunk(merged)
            await self._apply(
                [merged if t.id == trunk_id else t for t in existing],
                merged,
                removed=None if merged.enabled else current,
            )

            def save() -> SipTrunk:
                with session_scope(self.engine) as session:
                    row = session.get(SipTrunk, trunk_id)
                    if row is None:
                        raise NotFound(f"trunk {trunk_id} does not exist", field="trunk_id")
                    for key, value in {**changes, "updated_at": merged.updated_at}.items():
                        setattr(row, key, value)
                    session.add(row)
                    session.flush()
                    return row

            saved = await self._persist(save)
            self._changed()
            return saved

    async def delete(self, trunk_id: int) -> None:
        async with self.link.lock:
            existing = await asyncio.to_thread(self._all)
            current = next((t for t in existing if t.id == trunk_id), None)
            if current is None:
                raise NotFound(f"trunk {trunk_id} does not exist", field="trunk_id")
            await self._apply([t for t in existing if t.id != trunk_id], None, removed=current)

            def remove() -> None:
                with session_scope(self.engine) as session:
                    row = session.get(SipTrunk, trunk_id)
                    if row is not None:
                        session.delete(row)
                    # Its history goes with it: SQLite may give the next trunk this id again.
                    session.execute(delete(TrunkStateEvent).where(col(TrunkStateEvent.trunk_id) == trunk_id))

            await self._persist(remove)
            self._changed()

    async def sync(self, *, only_if_changed: bool = False) -> bool:
        """Render the file from the database (e.g. at start); True when Asterisk reloaded it."""
        async with self.link.lock:
            trunks = await asyncio.to_thread(self._all)
            text = self._render(trunks)
            if only_if_changed and await asyncio.to_thread(self.link.read_text, self.path) == text:
                return False
            await asyncio.to_thread(self.link.write_config, self.path, text)
            if not self.link.live:
                return False
            await self.link.reload(RELOAD_COMMAND, marker=RELOAD_MARKER)
            self._changed()
            return True

    async def _persist(self, write: Callable[[], T]) -> T:
        """Run the database write; if it fails after Asterisk took the new file, put the file back in line
        with the database so the two never disagree."""
        try:
            return await asyncio.to_thread(write)
        except BaseException:
            trunks = await asyncio.to_thread(self._all)
            text = self._render(trunks)
            await asyncio.to_thread(self.link.write_config, self.path, text)
            if self.link.live:
                await self.link.reload(RELOAD_COMMAND, marker=RELOAD_MARKER)
            raise

    # ------------------------------------------------------------------ apply + verify + roll back
    async def _apply(
        self, trunks: list[SipTrunk], changed: SipTrunk | None, *, removed: SipTrunk | None
    ) -> None:
        new_text = self._render(trunks)
        old_text = await asyncio.to_thread(self.link.read_text, self.path)
        await asyncio.to_thread(self.link.write_config, self.path, new_text)
        if not self.link.live:
            return
        try:
            problems = await self._reload_and_check(changed, removed)
        except BaseException:
            await self._restore(old_text)
            raise
        if problems:
            await self._restore(old_text)
            secret = changed.password if changed is not None else ""
            reasons = "; ".join(dict.fromkeys(_scrub(p, secret) for p in problems))
            subject = changed or removed
            name = subject.name if subject is not None else "?"
            log.warning("Asterisk rejected trunk %s; previous configuration restored", name)
            raise AsteriskRejected(
                f"Asterisk rejected the configuration of trunk {name!r}: {reasons}. "
                "The previous configuration is still active.",
                field="host" if changed is not None and _about_host(problems) else None,
            )

    async def _restore(self, old_text: str | None) -> None:
        await asyncio.to_thread(
            self.link.write_config, self.path, old_text if old_text is not None else "; no trunks\n"
        )
        try:
            await self.link.reload(RELOAD_COMMAND, marker=RELOAD_MARKER)
        except Exception:
            log.exception("could not reload Asterisk after restoring %s", TRUNKS_FILE)

    async def _reload_and_check(self, changed: SipTrunk | None, removed: SipTrunk | None) -> list[str]:
        assert self.link.ami is not None
        logged = await self.link.reload(RELOAD_COMMAND, marker=RELOAD_MARKER)
        problems: list[str] = []
        if changed is not None and changed.enabled:
            problems += rejection_reasons(changed, logged)
            problems += await self._missing_objects(changed)
        gone = removed if removed is not None and (changed is None or not changed.enabled) else None
        if gone is not None and await self._endpoint_events(endpoint_name(gone.name)):
            problems.append(f"endpoint {endpoint_name(gone.name)} is still loaded")
        return problems

    async def _endpoint_events(self, name: str) -> list[Any]:
        assert self.link.ami is not None
        messages = await self.link.ami.action({"Action": "PJSIPShowEndpoint", "Endpoint": name})
        if not messages or messages[0].response == "Error":
            return []
        return [m for m in messages if m.event]

    async def _missing_objects(self, trunk: SipTrunk) -> list[str]:
        assert self.link.ami is not None
        name = endpoint_name(trunk.name)
        events = await self._endpoint_events(name)
        if not events:
            return [f"endpoint {name} was not created"]
        kinds = {str(e.event) for e in events}
        missing = []
        wanted = {"AorDetail": "aor", "IdentifyDetail": "identify"}
        if _has_auth(trunk):
            wanted["AuthDetail"] = "auth"
        for event, kind in wanted.items():
            if event not in kinds:
                missing.append(f"{kind} {name} was not created")
        if trunk.registration and _has_auth(trunk):
            registrations = await self.link.ami.action({"Action": "PJSIPShowRegistrationsOutbound"})
            if not any(
                m.event == "OutboundRegistrationDetail" and m.get("ObjectName") == name for m in registrations
            ):
                missing.append(f"registration {name} was not created")
        return missing

    # ------------------------------------------------------------------ status
    async def status(self, trunk: SipTrunk) -> dict[str, Any]:
        name = endpoint_name(trunk.name)
        result: dict[str, Any] = {
            "trunk_id": trunk.id,
            "endpoint": name,
            "asterisk": "live" if self.link.live else "offline",
            "endpoint_found": False,
            "endpoint_state": "unknown",
            "contacts": [],
            "registration": None,
        }
        if self.link.ami is None:
            return result
        events = await self._endpoint_events(name)
        for event in events:
            if event.event == "EndpointDetail":
                result["endpoint_found"] = True
                result["endpoint_state"] = str(event.get("DeviceState", "unknown"))
            elif event.event == "ContactStatusDetail":
                result["contacts"].append(
                    {
                        "uri": str(event.get("URI", "")),
                        "status": str(event.get("Status", "")),
                        "rtt_us": str(event.get("RoundtripUsec", "")),
                    }
                )
        if trunk.registration and trunk.enabled:
            registrations = await self.link.ami.action({"Action": "PJSIPShowRegistrationsOutbound"})
            for message in registrations:
                if message.event == "OutboundRegistrationDetail" and message.get("ObjectName") == name:
                    result["registration"] = str(message.get("Status", "unknown"))
            if result["registration"] is None:
                result["registration"] = "missing"
        return result


def _about_host(problems: Sequence[str]) -> bool:
    """The objects built from the host: identify (match) and aor (contact)."""
    return any(word in p.lower() for p in problems for word in ("identify", "'aor'", "aor ", "contact", "match"))


def _scrub(text: str, secret: str) -> str:
    return text.replace(secret, "***") if secret else text
