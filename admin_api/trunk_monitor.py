"""SIP trunk monitoring: each trunk's state (up, down, rejected, ...) followed continuously from Asterisk, with its
history, its calls in progress and its calls today.

Two parts:

* :class:`TrunkTracker` is pure (no socket, no database, no clock of its own): AMI events and full listings go in,
  the trunks' states and the *changes* of state come out.  Everything it decides is tested with realistic event
  dictionaries.
* :class:`TrunkMonitor` feeds it.  It keeps one AMI connection of its own, logged in with the ``system`` and
  ``call`` event classes (the admin API's other connection asks for no events), and listens for

  - ``ContactStatus`` / ``PeerStatus``: the answers to Asterisk's qualify (an OPTIONS ping every
    ``trunk_qualify_s`` seconds; ``qualify_frequency`` of the trunk's aor): Reachable, Unreachable;
  - ``Registry``: the outcome of each outbound REGISTER (Registered, Unregistered, Rejected);
  - ``Newchannel`` / ``Hangup``: channels of the trunk's endpoint (``PJSIP/trunk-<name>-<seq>``), the calls on it.

  Events can be missed (the connection drops, Asterisk restarts, a reload re-creates a contact), so every
  ``trunk_resync_s`` seconds, at once after a trunk changes and after a reconnect, it also reads the whole truth:
  ``PJSIPShowEndpoint`` per trunk (its contacts' status; ``PJSIPShowContacts`` lists only registered contacts,
  never a trunk's static one), ``PJSIPShowRegistrationsOutbound`` and ``CoreShowChannels``.

Each change becomes a row of ``trunk_state_events`` (written by one background task, off the event loop), an INFO
log line (trunk name and states only: no caller data) and the ``eva_trunk_up`` gauge.

Calls today: Eva's ``calls`` rows do not record the trunk a call used (the voice app knows the endpoint but does not
store it), so the monitor counts the trunk's channels itself: every channel Asterisk created on the trunk's
endpoint since 00:00 UTC, in either direction, answered or not.  The count lives in this process: it starts at
zero when Eva starts (``calls_counted_since`` says from when), and a call that began and ended while the AMI
connection was down is not seen.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time
from typing import Any

from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select
from sqlmodel.sql.expression import SelectOfScalar

from admin_api.ami import AmiClient
from admin_api.trunks import client_uri, endpoint_name, server_uri
from models import SipTrunk, TrunkStateEvent, utcnow
from models.db import session_scope
from voicebot import metrics
from voicebot.config import Settings
from voicebot.errors import AmiError

log = logging.getLogger(__name__)

UP, DOWN, REJECTED, REGISTERING, UNKNOWN, DISABLED = "up", "down", "rejected", "registering", "unknown", "disabled"
STATES = (UP, DOWN, REJECTED, REGISTERING, UNKNOWN, DISABLED)
EVENT_MASK = "system,call"
"""Event classes of the monitor's AMI login: qualify and registration events are ``system``, channels ``call``."""
WATCHED_EVENTS = ("ContactStatus", "PeerStatus", "Registry", "Newchannel", "Hangup")
RECENT_CHANGES = 10
"""State changes ``GET /sip/trunks/{id}/status`` shows (the rest: ``/history``)."""
ENDED_MEMORY = 4096
"""Uniqueids of channels seen hanging up that are remembered, so a listing taken just before their hangup neither
brings them back nor counts them twice."""
RETRY_S = 5.0
"""Seconds between attempts while Asterisk (AMI) is unreachable: it comes back within seconds of a restart."""
KICK_DEBOUNCE_S = 0.3
"""A burst of changes (a reload re-creating contacts) is read back once, not once per event."""
ACTION_TIMEOUT_S = 5.0


# ------------------------------------------------------------------ the pure tracker
@dataclass(frozen=True)
class TrunkSpec:
    """What the tracker needs to know of a configured trunk."""

    trunk_id: int
    name: str
    enabled: bool = True
    registers: bool = False
    client_uri: str = ""
    server_uri: str = ""

    @property
    def endpoint(self) -> str:
        return endpoint_name(self.name)

    @classmethod
    def of(cls, trunk: SipTrunk) -> TrunkSpec:
        assert trunk.id is not None
        registers = bool(trunk.registration and trunk.username and trunk.password)
        # Asterisk's Registry event carries the client URI as Asterisk parsed it: without the config file's
        # escaping of ';' that client_uri() adds.
        client = client_uri(trunk).replace("\\;", ";") if registers else ""
        return cls(trunk_id=trunk.id, name=trunk.name, enabled=trunk.enabled, registers=registers,
                   client_uri=client, server_uri=server_uri(trunk))


@dataclass(frozen=True)
class StateChange:
    trunk_id: int
    trunk_name: str
    state: str
    previous: str
    """'' when the trunk had no recorded state before."""
    detail: str
    at: datetime


@dataclass(frozen=True)
class TrunkSnapshot:
    """A trunk as the monitor sees it now."""

    trunk_id: int
    name: str
    state: str
    detail: str
    since: datetime | None
    qualify: str
    """reachable | unreachable | unqualified | unknown"""
    rtt_ms: float | None
    registration: str
    """registered | unregistered | rejected | missing | '' (the trunk does not register, or not known yet)"""
    active_calls: int
    calls_today: int
    calls_counted_since: datetime


@dataclass
class _Trunk:
    spec: TrunkSpec
    state: str = ""
    detail: str = ""
    since: datetime | None = None
    qualify: str = "unknown"
    rtt_ms: float | None = None
    registration: str = ""
    loaded: bool = True
    """Asterisk has the trunk's endpoint (False: its configuration is not loaded)."""
    active: set[str] = field(default_factory=set)
    calls_today: int = 0
    day: date | None = None
    counted_since: datetime | None = None
    touched: int = 0
    """The tracker's event counter when an event last changed this trunk (see :meth:`TrunkTracker.mark`)."""


def _fields(event: Mapping[str, Any]) -> dict[str, str]:
    """An AMI message's headers, lower-cased names (Asterisk spells ``URI`` in one event, ``Uri`` in another)."""
    out: dict[str, str] = {}
    for key, value in event.items():
        first = (value[0] if value else "") if isinstance(value, list) else value
        out[str(key).lower()] = str(first).strip()
    return out


def endpoint_of_channel(channel: str) -> str:
    """``PJSIP/trunk-acme-0000001a`` → ``trunk-acme`` ('' for a channel of another technology)."""
    if not channel.startswith("PJSIP/"):
        return ""
    name, _, seq = channel[len("PJSIP/"):].rpartition("-")
    return name if name and seq else ""


def _qualify_of(status: str) -> str | None:
    """A contact status of ContactStatus / ContactStatusDetail / PeerStatus as the tracker's qualify value."""
    lowered = status.lower()
    if lowered == "reachable":
        return "reachable"
    if lowered in ("unreachable", "unavailable"):
        return "unreachable"
    if lowered in ("nonqualified", "unqualified"):
        return "unqualified"
    if lowered == "unknown":
        return "unknown"
    return None  # Created, Updated, Removed: a contact object's life, not an answer; the listing tells what follows


def _rtt_ms(value: str) -> float | None:
    try:
        usec = int(value)
    except ValueError:
        return None
    return round(usec / 1000, 2) if usec > 0 else None


def derive(trunk: _Trunk) -> tuple[str, str]:
    """The state and its reason from the trunk's qualify and registration results."""
    spec = trunk.spec
    if not spec.enabled:
        return DISABLED, "the trunk is disabled"
    if not trunk.loaded:
        return DOWN, f"Asterisk has not loaded endpoint {spec.endpoint}"
    if spec.registers and trunk.registration == "rejected":
        return REJECTED, "the provider rejected the registration (or did not answer it)"
    if spec.registers and trunk.registration == "missing":
        return DOWN, f"Asterisk has not loaded registration {spec.endpoint}"
    if trunk.qualify == "unreachable":
        return DOWN, "no answer to SIP OPTIONS (qualify)"
    if spec.registers and trunk.registration != "registered":
        return REGISTERING, "waiting for the provider to accept the registration"
    if trunk.qualify == "reachable":
        rtt = f" in {trunk.rtt_ms:g} ms" if trunk.rtt_ms is not None else ""
        return UP, f"answers SIP OPTIONS{rtt}" + ("; registered" if spec.registers else "")
    if spec.registers:
        return UP, "registered"
    if trunk.qualify == "unqualified":
        return UNKNOWN, "qualify is off for this trunk"
    return UNKNOWN, "waiting for the first answer to SIP OPTIONS (qualify)"


class TrunkTracker:
    """Trunk states from AMI events and listings.  Not thread-safe: used from the event loop only.

    Every method that can change a state returns the changes it made (possibly none), in order."""

    def __init__(self, *, started: datetime) -> None:
        self.started = started
        self._trunks: dict[int, _Trunk] = {}
        self._by_endpoint: dict[str, int] = {}
        self._ended: OrderedDict[str, None] = OrderedDict()
        self._events = 0
        self.needs_resync = False
        """An event said something changed that only a listing can tell (a contact created or removed)."""

    # -------------------------------------------------------------- configuration
    def configure(self, specs: Iterable[TrunkSpec]) -> list[TrunkSpec]:
        """The trunks that exist now; returns the specs of trunks dropped (deleted, or renamed: the old name).

        States are not re-derived here: a trunk's state is only changed by what Asterisk says."""
        wanted = {spec.trunk_id: spec for spec in specs}
        dropped = []
        for trunk_id in list(self._trunks):
            old = self._trunks[trunk_id]
            if trunk_id not in wanted:
                dropped.append(old.spec)
                del self._trunks[trunk_id]
            elif wanted[trunk_id].name != old.spec.name:
                dropped.append(old.spec)
        for trunk_id, spec in wanted.items():
            current = self._trunks.get(trunk_id)
            if current is None:
                self._trunks[trunk_id] = _Trunk(spec=spec)
            elif current.spec != spec:
                if current.spec.server_uri != spec.server_uri:
                    current.qualify, current.rtt_ms = "unknown", None  # another host: the old answers say nothing
                current.spec = spec
        self._by_endpoint = {t.spec.endpoint: trunk_id for trunk_id, t in self._trunks.items()}
        return dropped

    def known(self, trunk_id: int) -> bool:
        return trunk_id in self._trunks

    def restore(self, trunk_id: int, state: str, since: datetime) -> None:
        """Start from the last recorded state (Eva restarted): the same state read again is not a change."""
        trunk = self._trunks.get(trunk_id)
        if trunk is not None and not trunk.state:
            trunk.state, trunk.since = state, since

    def mark(self) -> int:
        """A point in the event stream: a listing requested after it must not undo what later events said."""
        return self._events

    # -------------------------------------------------------------- events
    def feed(self, event: Mapping[str, Any], at: datetime) -> list[StateChange]:
        values = _fields(event)
        name = values.get("event", "")
        if name == "ContactStatus":
            return self._contact_event(values, at)
        if name == "PeerStatus":
            peer = values.get("peer", "")
            trunk = self._trunk_of(peer[len("PJSIP/"):] if peer.startswith("PJSIP/") else "")
            qualify = _qualify_of(values.get("peerstatus", ""))
            if trunk is None or qualify is None:
                return []
            return self._touch_qualify(trunk, qualify, trunk.rtt_ms, at)
        if name == "Registry":
            return self._registry_event(values, at)
        if name == "Newchannel":
            trunk = self._trunk_of(endpoint_of_channel(values.get("channel", "")))
            if trunk is not None:
                self._events += 1
                trunk.touched = self._events
                self._channel_seen(trunk, values.get("uniqueid", ""), at)
            return []
        if name == "Hangup":
            trunk = self._trunk_of(endpoint_of_channel(values.get("channel", "")))
            uniqueid = values.get("uniqueid", "")
            if trunk is not None and uniqueid:
                self._events += 1
                trunk.touched = self._events
                trunk.active.discard(uniqueid)
                self._remember_ended(uniqueid)
            return []
        return []

    def _contact_event(self, values: dict[str, str], at: datetime) -> list[StateChange]:
        trunk = self._trunk_of(values.get("aor", "")) or self._trunk_of(values.get("endpointname", ""))
        if trunk is None:
            return []
        qualify = _qualify_of(values.get("contactstatus", ""))
        if qualify is None:
            self.needs_resync = True
            return []
        rtt = _rtt_ms(values.get("roundtripusec", "")) if qualify == "reachable" else None
        return self._touch_qualify(trunk, qualify, rtt, at)

    def _registry_event(self, values: dict[str, str], at: datetime) -> list[StateChange]:
        if values.get("channeltype", "").lower() != "pjsip":
            return []
        # Asterisk names the registration by its client and server URIs only, not by the object's name.
        client, server = values.get("username", ""), values.get("domain", "")
        for trunk in self._trunks.values():
            spec = trunk.spec
            if spec.registers and spec.client_uri == client and (not server or spec.server_uri == server):
                status = values.get("status", "").lower()
                if status not in ("registered", "unregistered", "rejected"):
                    status = "rejected" if status == "failed" else trunk.registration
                self._events += 1
                trunk.touched = self._events
                trunk.registration = status
                return self._update(trunk, at)
        return []

    def _touch_qualify(self, trunk: _Trunk, qualify: str, rtt: float | None, at: datetime) -> list[StateChange]:
        self._events += 1
        trunk.touched = self._events
        trunk.qualify, trunk.rtt_ms, trunk.loaded = qualify, rtt, True
        return self._update(trunk, at)

    # -------------------------------------------------------------- listings
    def resync(
        self,
        *,
        endpoints: Mapping[int, Sequence[Mapping[str, Any]]],
        registrations: Sequence[Mapping[str, Any]] | None,
        channels: Sequence[Mapping[str, Any]],
        at: datetime,
        since_mark: int | None = None,
    ) -> list[StateChange]:
        """Apply full listings: ``endpoints`` maps each enabled trunk's id to its ``PJSIPShowEndpoint`` events (none:
        Asterisk does not have it), ``registrations`` are ``PJSIPShowRegistrationsOutbound`` events (None: not
        asked, no trunk registers), ``channels`` ``CoreShowChannels`` events.  A trunk an event changed after
        ``since_mark`` keeps what the event said (the listing was taken before it)."""
        self.needs_resync = False
        changes: list[StateChange] = []
        registered = {}
        for message in registrations or ():
            values = _fields(message)
            if values.get("event") == "OutboundRegistrationDetail":
                registered[values.get("objectname", "")] = values.get("status", "").lower()
        live: dict[int, list[str]] = {}
        for message in channels:
            values = _fields(message)
            trunk = self._trunk_of(endpoint_of_channel(values.get("channel", "")))
            if trunk is not None and values.get("uniqueid"):
                live.setdefault(trunk.spec.trunk_id, []).append(values["uniqueid"])
        for trunk_id, trunk in self._trunks.items():
            if since_mark is not None and trunk.touched > since_mark:
                continue
            spec = trunk.spec
            uniqueids = [u for u in live.get(trunk_id, []) if u not in self._ended]
            for uniqueid in uniqueids:
                self._channel_seen(trunk, uniqueid, at)
            trunk.active = set(uniqueids)
            if spec.enabled:
                events = [_fields(m) for m in endpoints.get(trunk_id, ())]
                trunk.loaded = any(e.get("event") == "EndpointDetail" for e in events)
                statuses = [e for e in events if e.get("event") == "ContactStatusDetail"]
                qualifies = [_qualify_of(e.get("status", "")) or "unknown" for e in statuses]
                if "reachable" in qualifies:
                    trunk.qualify = "reachable"
                    reachable = [e for e, q in zip(statuses, qualifies, strict=True) if q == "reachable"]
                    trunk.rtt_ms = _rtt_ms(reachable[0].get("roundtripusec", ""))
                elif qualifies and all(q == "unreachable" for q in qualifies):
                    trunk.qualify, trunk.rtt_ms = "unreachable", None
                elif qualifies and all(q == "unqualified" for q in qualifies):
                    trunk.qualify, trunk.rtt_ms = "unqualified", None
                else:
                    trunk.qualify, trunk.rtt_ms = "unknown", None
                if spec.registers and registrations is not None:
                    trunk.registration = registered.get(spec.endpoint, "missing")
                    if trunk.registration not in ("registered", "unregistered", "rejected", "missing"):
                        trunk.registration = "unregistered"  # Stopped, or a status a newer Asterisk adds
            changes += self._update(trunk, at)
        return changes

    def lost(self, at: datetime) -> list[StateChange]:
        """Asterisk (AMI) cannot be reached: nothing is known of any enabled trunk, and no call is seen."""
        changes: list[StateChange] = []
        for trunk in self._trunks.values():
            trunk.active.clear()
            if not trunk.spec.enabled:
                changes += self._update(trunk, at)
                continue
            trunk.qualify, trunk.rtt_ms, trunk.registration = "unknown", None, ""
            changes += self._set(trunk, UNKNOWN, "Asterisk (AMI) is unreachable", at)
        return changes

    # -------------------------------------------------------------- reading
    def snapshot(self, trunk_id: int, at: datetime) -> TrunkSnapshot | None:
        trunk = self._trunks.get(trunk_id)
        if trunk is None:
            return None
        self._roll(trunk, at)
        assert trunk.counted_since is not None
        return TrunkSnapshot(
            trunk_id=trunk_id, name=trunk.spec.name, state=trunk.state or UNKNOWN,
            detail=trunk.detail or "not read from Asterisk yet", since=trunk.since, qualify=trunk.qualify,
            rtt_ms=trunk.rtt_ms, registration=trunk.registration if trunk.spec.registers else "",
            active_calls=len(trunk.active), calls_today=trunk.calls_today, calls_counted_since=trunk.counted_since)

    def states(self) -> dict[int, tuple[str, str]]:
        """Each trunk's ``(name, state)``."""
        return {trunk_id: (t.spec.name, t.state or UNKNOWN) for trunk_id, t in self._trunks.items()}

    # -------------------------------------------------------------- internals
    def _trunk_of(self, endpoint: str) -> _Trunk | None:
        trunk_id = self._by_endpoint.get(endpoint)
        return self._trunks.get(trunk_id) if trunk_id is not None else None

    def _roll(self, trunk: _Trunk, at: datetime) -> None:
        """Start a new day's count at midnight UTC."""
        day = at.astimezone(UTC).date()
        if trunk.day != day:
            midnight = datetime.combine(day, time(0), tzinfo=UTC)
            trunk.day, trunk.calls_today = day, 0
            trunk.counted_since = max(midnight, self.started)

    def _channel_seen(self, trunk: _Trunk, uniqueid: str, at: datetime) -> None:
        self._roll(trunk, at)
        if uniqueid and uniqueid not in trunk.active and uniqueid not in self._ended:
            trunk.active.add(uniqueid)
            trunk.calls_today += 1

    def _remember_ended(self, uniqueid: str) -> None:
        self._ended[uniqueid] = None
        while len(self._ended) > ENDED_MEMORY:
            self._ended.popitem(last=False)

    def _update(self, trunk: _Trunk, at: datetime) -> list[StateChange]:
        state, detail = derive(trunk)
        return self._set(trunk, state, detail, at)

    def _set(self, trunk: _Trunk, state: str, detail: str, at: datetime) -> list[StateChange]:
        trunk.detail = detail
        if state == trunk.state:
            return []
        change = StateChange(trunk_id=trunk.spec.trunk_id, trunk_name=trunk.spec.name, state=state,
                             previous=trunk.state, detail=detail, at=at)
        trunk.state, trunk.since = state, at
        return [change]


# ------------------------------------------------------------------ history
def history_query(trunk_id: int) -> SelectOfScalar[TrunkStateEvent]:
    """A trunk's state changes, newest first."""
    return (select(TrunkStateEvent).where(col(TrunkStateEvent.trunk_id) == trunk_id)
            .order_by(col(TrunkStateEvent.at).desc(), col(TrunkStateEvent.id).desc()))


def recent_changes(session: Session, trunk_id: int, limit: int = RECENT_CHANGES) -> list[TrunkStateEvent]:
    return list(session.exec(history_query(trunk_id).limit(limit)).all())


def record_changes(engine: Engine, changes: Sequence[StateChange]) -> int:
    """Write changes (blocking: run it in a thread); returns how many rows were written.

    A change is skipped when the trunk's last row already has that state (a second Eva worker's monitor saw it
    first) or the trunk no longer exists (deleted while the change was queued)."""
    written = 0
    with session_scope(engine) as session:
        for change in changes:
            if session.get(SipTrunk, change.trunk_id) is None:
                continue
            last = session.exec(history_query(change.trunk_id).limit(1)).first()
            if last is not None and last.state == change.state:
                continue
            session.add(TrunkStateEvent(trunk_id=change.trunk_id, trunk_name=change.trunk_name,
                                        state=change.state, previous=last.state if last else change.previous,
                                        detail=change.detail[:200], at=change.at))
            session.flush()
            written += 1
    return written


# ------------------------------------------------------------------ metrics
MAX_TRUNK_LABELS = 100
"""Trunks reported by name on ``eva_trunk_up`` (trunks are admin-made and few; the bound keeps a runaway script
that creates thousands from costing the scraper a series each)."""


class _TrunkGauge:
    """``eva_trunk_up{trunk=...}`` (1 while up, 0 otherwise; a deleted trunk's series is removed) and
    ``eva_trunk_state_changes_total{trunk=..., state=...}``."""

    def __init__(self) -> None:
        self._names: set[str] = set()
        self._warned = False

    def _labelled(self, name: str) -> bool:
        if name not in self._names:
            if len(self._names) >= MAX_TRUNK_LABELS:
                if not self._warned:
                    log.warning("more than %d trunks: eva_trunk_up reports only the first ones", MAX_TRUNK_LABELS)
                    self._warned = True
                return False
            self._names.add(name)
        return True

    def show(self, name: str, state: str) -> None:
        if self._labelled(name):
            metrics.TRUNK_UP.set(1.0 if state == UP else 0.0, trunk=name)

    def changed(self, name: str, state: str) -> None:
        if self._labelled(name):
            metrics.TRUNK_UP.set(1.0 if state == UP else 0.0, trunk=name)
            metrics.TRUNK_STATE_CHANGES_TOTAL.inc(trunk=name, state=state)

    def remove(self, name: str) -> None:
        if name in self._names:
            self._names.discard(name)
            metrics.TRUNK_UP.remove(trunk=name)


# ------------------------------------------------------------------ the monitor
class TrunkMonitor:
    """Follows every trunk's state through AMI while the admin API runs (``start()`` ... ``close()``)."""

    def __init__(self, settings: Settings, engine: Engine, *, ami: AmiClient | None = None,
                 clock: Callable[[], datetime] = utcnow) -> None:
        self.engine = engine
        self.resync_s = max(1.0, float(settings.trunk_resync_s))
        self.clock = clock
        self._ami = ami or AmiClient(settings, timeout=ACTION_TIMEOUT_S, events=EVENT_MASK)
        self._owns_ami = ami is None
        self.tracker = TrunkTracker(started=clock())
        self._gauge = _TrunkGauge()
        self._kick = asyncio.Event()
        self._writes: asyncio.Queue[StateChange | None] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self._writer: asyncio.Task[None] | None = None
        self._closed = False
        self._reachable: bool | None = None
        """Whether the last resync reached Asterisk (None: not tried yet, or there was nothing to ask it)."""
        self._listening = False
        """The last resync left a live AMI connection: when it drops, read everything again at once."""
        self.resyncs = 0
        """Completed full reads (tests wait on it)."""
        for name in WATCHED_EVENTS:
            self._ami.on_event(name, self._on_event)

    # -------------------------------------------------------------- lifecycle
    async def start(self) -> None:
        if self._task is None and not self._closed:
            self._writer = asyncio.create_task(self._write_loop(), name="eva-trunk-history")
            self._task = asyncio.create_task(self._run(), name="eva-trunk-monitor")

    def kick(self) -> None:
        """Read every trunk again soon (a trunk was created, changed or deleted)."""
        self._kick.set()

    async def close(self) -> None:
        """Stop following; the changes already seen are written first (at most a few seconds).  Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._writer is not None:
            self._writes.put_nowait(None)
            try:
                await asyncio.wait_for(self._writer, 5.0)
            except (TimeoutError, asyncio.CancelledError):
                log.warning("trunk history: %d state change(s) not written at shutdown", self._writes.qsize())
        if self._owns_ami:
            await self._ami.close()

    # -------------------------------------------------------------- reading
    def snapshot(self, trunk_id: int) -> TrunkSnapshot | None:
        return self.tracker.snapshot(trunk_id, self.clock())

    @property
    def reachable(self) -> bool | None:
        return self._reachable

    # -------------------------------------------------------------- events
    def _on_event(self, _manager: Any, event: Mapping[str, Any]) -> None:
        try:
            self._emit(self.tracker.feed(event, self.clock()))
        except Exception:  # one odd event must not stop the listener
            log.exception("trunk monitor: could not read an AMI event")
        if self.tracker.needs_resync:
            self.kick()

    def _emit(self, changes: Sequence[StateChange]) -> None:
        for change in changes:
            log.info("trunk %s (id %d) is %s (was %s): %s", change.trunk_name, change.trunk_id, change.state,
                     change.previous or "not known", change.detail)
            self._gauge.changed(change.trunk_name, change.state)
            self._writes.put_nowait(change)

    # -------------------------------------------------------------- the loop
    async def _run(self) -> None:
        retry = RETRY_S
        failures = 0
        while True:
            try:
                asked = await self._resync()
                if asked and self._reachable is False:
                    log.info("trunk monitor: Asterisk (AMI) is reachable again")
                self._reachable = True if asked else self._reachable
                self._listening = asked and self._ami.connected
                retry, failures = RETRY_S, 0
            except AmiError as exc:
                failures += 1
                if failures == 1 and self._ami.connected:
                    # One slow answer on a live connection (Asterisk busy): not yet a reason to forget every
                    # trunk's state; the next round decides.
                    log.warning("trunk monitor: %s; trying again", exc.message)
                    await self._pause(RETRY_S)
                    continue
                if self._reachable is not False:
                    log.warning("trunk monitor: %s; every trunk's state is unknown until it answers", exc.message)
                self._reachable, self._listening = False, False
                self._emit(self.tracker.lost(self.clock()))
                self._show_all()
            except Exception:
                # A database error (the trunk list could not be read): try again on the next round.
                log.exception("trunk monitor: could not read the trunks")
            if self._reachable is False:
                # Soon after a restart of Asterisk, then less often (a wrong AMI password must not flood its log).
                await self._pause(retry)
                retry = min(retry * 2, self.resync_s)
            else:
                await self._pause(self.resync_s)

    def _show_all(self) -> None:
        """The gauge for every trunk, changed or not (a state restored from the history changes nothing)."""
        for name, state in self.tracker.states().values():
            self._gauge.show(name, state)

    async def _pause(self, seconds: float) -> None:
        """Until the next full read: ``seconds``, or sooner when a trunk changed or the connection dropped."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + min(seconds, self.resync_s)
        while (remaining := deadline - loop.time()) > 0:
            if self._kick.is_set():
                break
            if self._listening and not self._ami.connected:
                return  # dropped (Asterisk restarting?): reconnect, and read everything again, now
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._kick.wait(), min(1.0, remaining))
        if self._kick.is_set():
            await asyncio.sleep(KICK_DEBOUNCE_S)
            self._kick.clear()

    def _load(self) -> tuple[list[TrunkSpec], dict[int, TrunkStateEvent]]:
        with session_scope(self.engine) as session:
            trunks = list(session.exec(select(SipTrunk).order_by(col(SipTrunk.id))).all())
            specs = [TrunkSpec.of(t) for t in trunks]
            last = {}
            for spec in specs:
                if not self.tracker.known(spec.trunk_id):
                    row = session.exec(history_query(spec.trunk_id).limit(1)).first()
                    if row is not None:
                        last[spec.trunk_id] = row
            return specs, last

    async def _resync(self) -> bool:
        """Read the trunks, then Asterisk's view of them; False when there was nothing to ask Asterisk."""
        specs, last = await asyncio.to_thread(self._load)
        for spec in self.tracker.configure(specs):
            self._gauge.remove(spec.name)
        for trunk_id, row in last.items():
            self.tracker.restore(trunk_id, row.state, row.at)
        mark = self.tracker.mark()
        endpoints: dict[int, list[Any]] = {}
        for spec in specs:
            if spec.enabled:
                endpoints[spec.trunk_id] = await self._endpoint(spec.endpoint)
        registrations = None
        if any(s.enabled and s.registers for s in specs):
            registrations = await self._ami.action({"Action": "PJSIPShowRegistrationsOutbound"})
        channels = await self._ami.action({"Action": "CoreShowChannels"}) if specs else []
        self._emit(self.tracker.resync(endpoints=endpoints, registrations=registrations, channels=channels,
                                       at=self.clock(), since_mark=mark))
        self._show_all()
        self.resyncs += 1
        return bool(specs)

    async def _endpoint(self, name: str) -> list[Any]:
        messages = await self._ami.action({"Action": "PJSIPShowEndpoint", "Endpoint": name})
        if not messages or messages[0].get("Response") == "Error":
            return []  # "Unable to retrieve endpoint": not loaded
        return [m for m in messages if m.get("Event")]

    async def _write_loop(self) -> None:
        while True:
            change = await self._writes.get()
            batch = [change]
            while not self._writes.empty():
                batch.append(self._writes.get_nowait())
            done = None in batch
            changes = [c for c in batch if c is not None]
            if changes:
                try:
                    await asyncio.to_thread(record_changes, self.engine, changes)
                except Exception:
                    log.exception("trunk history: could not write %d state change(s)", len(changes))
            if done:
                return
