"""Asterisk Manager Interface client (panoramisk) and an AMI implementation of :class:`CallControl`.

panoramisk's ``Manager`` reconnects forever on its own, with timers nobody can cancel; an admin API wants the
opposite: connect when needed, fail fast with a clear error when Asterisk is down, try again on the next
request.  ``_Manager`` therefore disables the automatic reconnects, and :class:`AmiClient` connects lazily,
puts a timeout on every action and drops a broken connection so the next call starts afresh.

Secrets: the AMI password is only ever sent in the Login action; nothing here logs actions.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any

from panoramisk import Manager
from panoramisk.message import Message

from admin_api.control import LiveCall, OriginateRequest
from voicebot.ari.origin import ORIGIN_VARIABLE, origin_token
from voicebot.config import Settings
from voicebot.errors import AmiError, NotFound

log = logging.getLogger(__name__)


class _WireLog:
    """The logger panoramisk gets: it drops panoramisk's DEBUG dumps of every AMI message, because some
    responses (``AuthDetail`` of ``PJSIPShowEndpoint``) carry trunk passwords that must never reach a log."""

    def __init__(self, logger: logging.Logger) -> None:
        self._logger = logger

    def debug(self, *args: Any, **kwargs: Any) -> None:
        return None

    def info(self, *args: Any, **kwargs: Any) -> None:
        return None

    def warning(self, msg: str, *args: Any, **kwargs: Any) -> None:
        self._logger.warning(msg, *args, **kwargs)

    def error(self, msg: str, *args: Any, **kwargs: Any) -> None:
        self._logger.error(msg, *args, **kwargs)

    def exception(self, msg: str, *args: Any, **kwargs: Any) -> None:
        # panoramisk formats the whole action (a Login carries the AMI secret) into this message: drop it.
        self._logger.error("AMI: failed to send an action to Asterisk")


_WIRE_LOG = _WireLog(log)


class _Manager(Manager):  # type: ignore[misc]
    """A panoramisk Manager that never reconnects by itself (AmiClient reconnects on demand)."""

    def connection_made(self, f: asyncio.Future[Any]) -> None:
        if f.cancelled() or f.exception() is not None:
            self._connected = False
            return
        super().connection_made(f)

    def connection_lost(self, exc: Any) -> None:
        self._connected = False
        self.authenticated = False
        pinger = getattr(self, "pinger", None)
        if pinger is not None:
            pinger.cancel()
            self.pinger = None


def _as_list(response: Any) -> list[Message]:
    return list(response) if isinstance(response, list) else [response]


def output_text(message: Message) -> str:
    """The text of a Command response (Asterisk ≥ 14 sends it as repeated ``Output:`` headers)."""
    output = message.get("Output", "")
    lines = output if isinstance(output, list) else [output] if output else []
    body = message.content or ""
    return "\n".join([*lines, body] if body and body not in lines else lines)


EventCallback = Callable[[Any, Message], None]
"""``callback(manager, event)``: called on the event loop for each event matching its pattern."""


class AmiClient:
    """One AMI connection, opened on first use.  Every method raises AmiError on failure or timeout.

    ``events`` is the Login's event mask (``"off"``: responses only; e.g. ``"system,call"`` for a client that
    listens with :meth:`on_event`)."""

    def __init__(self, settings: Settings, *, timeout: float = 10.0, events: str = "off") -> None:
        self.host = settings.asterisk_host or settings.bind_host
        self.port = settings.ami_port
        self.user = settings.ami_user
        self._secret = settings.ami_password
        self.timeout = timeout
        self.events = events
        self._listeners: list[tuple[str, EventCallback]] = []
        self._manager: _Manager | None = None
        self._lock = asyncio.Lock()

    def on_event(self, pattern: str, callback: EventCallback) -> None:
        """Call ``callback`` for every event whose name matches ``pattern`` (fnmatch), on this connection and on
        every later one (each reconnect builds a new manager)."""
        self._listeners.append((pattern, callback))
        if self._manager is not None:
            self._manager.register_event(pattern, callback)

    @property
    def connected(self) -> bool:
        """Logged in and not (yet) seen to drop; no network round trip."""
        manager = self._manager
        return manager is not None and bool(manager._connected) and bool(manager.authenticated)

    async def _connected(self) -> _Manager:
        async with self._lock:
            manager = self._manager
            if manager is not None and manager._connected and manager.authenticated:
                return manager
            self._drop()
            if not self._secret:
                raise AmiError("the AMI password is not set: run `eva setup`", field="ami_password")
            manager = _Manager(
                host=self.host,
                port=self.port,
                username=self.user,
                secret=self._secret,
                events=self.events,
                ping_delay=15,
                ping_interval=15,
                loop=asyncio.get_running_loop(),
                log=_WIRE_LOG,
            )
            for pattern, callback in self._listeners:  # before login: no event of the new session is missed
                manager.register_event(pattern, callback)
            try:
                await asyncio.wait_for(manager.connect(), self.timeout)
            except (OSError, TimeoutError) as exc:
                manager.close()
                raise AmiError(f"Asterisk AMI at {self.host}:{self.port} is not reachable") from exc
            login = manager.authenticated_future
            try:
                if login is None:
                    raise AmiError("AMI connection closed before login")
                response = await asyncio.wait_for(asyncio.shield(login), self.timeout)
            except TimeoutError as exc:
                manager.close()
                raise AmiError("AMI login timed out") from exc
            if not response.success:
                manager.close()
                raise AmiError("AMI login was refused (check ami_user / ami_password)")
            manager.authenticated = True
            self._manager = manager
            return manager

    def _drop(self) -> None:
        if self._manager is not None:
            with contextlib.suppress(Exception):
                self._manager.close()
            self._manager = None

    async def action(
        self, fields: Mapping[str, Any], *, as_list: bool | None = None, limit_s: float | None = None
    ) -> list[Message]:
        """Send one action; returns its response messages (an event list: the response, events, Complete)."""
        manager = await self._connected()
        try:
            future = manager.send_action(dict(fields), as_list=as_list)
            response = await asyncio.wait_for(future, limit_s or self.timeout)
        except TimeoutError as exc:
            raise AmiError(f"AMI action {fields.get('Action')} timed out") from exc
        except (OSError, AttributeError) as exc:
            # AttributeError: panoramisk's protocol is gone (connection dropped between checks).
            self._drop()
            raise AmiError(f"AMI connection lost during {fields.get('Action')}") from exc
        return _as_list(response)

    async def run_command(self, command: str, *, limit_s: float | None = None) -> tuple[bool, str]:
        """Run an Asterisk CLI command through AMI: ``(succeeded, output)``."""
        messages = await self.action(
            {"Action": "Command", "Command": command}, as_list=False, limit_s=limit_s
        )
        first = messages[0]
        return first.response != "Error", output_text(first)

    async def command(self, command: str, *, limit_s: float | None = None) -> str:
        """Run an Asterisk CLI command through AMI and return its output; AmiError when the command fails."""
        ok, output = await self.run_command(command, limit_s=limit_s)
        if not ok:
            raise AmiError(f"Asterisk refused the command {command!r}: {output.strip()[:300]}")
        return output

    async def ping(self) -> float:
        """Round trip of an AMI Ping in milliseconds."""
        started = time.perf_counter()
        messages = await self.action({"Action": "Ping"}, as_list=False)
        if not messages[0].success:
            raise AmiError("AMI Ping failed")
        return (time.perf_counter() - started) * 1000

    async def close(self) -> None:
        async with self._lock:
            self._drop()


def _duration(value: str) -> float:
    match = re.fullmatch(r"(\d+):(\d{2}):(\d{2})", value.strip())
    if not match:
        try:
            return float(value)
        except ValueError:
            return 0.0
    hours, minutes, seconds = (int(g) for g in match.groups())
    return float(hours * 3600 + minutes * 60 + seconds)


class AmiCallControl:
    """Live calls, hangup and originate through AMI (works for any channel, in Stasis or not)."""

    def __init__(self, ami: AmiClient, settings: Settings) -> None:
        self.ami = ami
        self.app = settings.ari_app
        self.origin_secret = settings.ari_password

    async def _channels(self) -> list[Message]:
        messages = await self.ami.action({"Action": "CoreShowChannels"})
        return [m for m in messages if m.event == "CoreShowChannel"]

    async def live_calls(self) -> list[LiveCall]:
        calls = []
        for event in await self._channels():
            calls.append(
                LiveCall(
                    channel_id=str(event.get("Uniqueid", "")),
                    channel=str(event.get("Channel", "")),
                    state=str(event.get("ChannelStateDesc", "")),
                    caller=str(event.get("CallerIDNum", "")),
                    did=str(event.get("Exten", "")),
                    duration_s=_duration(str(event.get("Duration", "0"))),
                )
            )
        return calls

    async def hangup(self, channel_id: str) -> None:
        for event in await self._channels():
            if event.get("Uniqueid") == channel_id:
                messages = await self.ami.action(
                    {"Action": "Hangup", "Channel": event["Channel"], "Cause": "16"}, as_list=False
                )
                if not messages[0].success:
                    # The channel went away between listing and hanging up.
                    raise NotFound(f"channel {channel_id} is not up", field="channel_id")
                return
        raise NotFound(f"channel {channel_id} is not up", field="channel_id")

    async def originate(self, request: OriginateRequest) -> str:
        channel_id = f"eva-out-{uuid.uuid4().hex[:16]}"
        fields: dict[str, Any] = {
            "Action": "Originate",
            "Channel": request.dial_string,
            "Async": "true",
            "Timeout": str(int(request.timeout_s * 1000)),
            "ChannelId": channel_id,
            "Application": "Stasis",
            "Data": f"{self.app},did={request.number},agent={request.agent_name},direction=outbound",
            # Proof for the voice app that Eva placed this call (Stasis arguments alone are forgeable).
            "Variable": f"{ORIGIN_VARIABLE}={origin_token(self.origin_secret, channel_id)}",
        }
        if request.caller_id:
            fields["CallerID"] = request.caller_id
        # as_list=False: return on "successfully queued" rather than waiting for the call to be answered.
        messages = await self.ami.action(fields, as_list=False)
        if not messages[0].success:
            raise AmiError(f"Asterisk refused to originate: {messages[0].get('Message', '')}")
        return channel_id
