"""ARI over aiohttp: REST calls with timeouts and the events websocket with reconnect and backoff.

The websocket must be connected before a call reaches ``Stasis()`` (otherwise Asterisk fails the call), so
``wait_connected()`` gates Eva's readiness.  When Asterisk restarts, the reader reconnects with exponential
backoff and the application keeps running.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp

from voicebot.ari.events import AriEvent, parse_event
from voicebot.ari.origin import ORIGIN_VARIABLE, is_eva_origin, origin_token
from voicebot.errors import AriError

log = logging.getLogger(__name__)

EventHandler = Callable[[AriEvent], Awaitable[None]]


class AriClient:
    def __init__(self, base_url: str, user: str, password: str, app: str, *, timeout: float = 10.0,
                 reconnect_initial: float = 0.2, reconnect_max: float = 5.0, stable_after: float = 10.0) -> None:
        """``reconnect_initial`` doubles up to ``reconnect_max`` between reconnection attempts; it is reset only
        once a connection has stayed up ``stable_after`` seconds (a server that accepts the websocket and
        closes it at once must not be hammered, with a full resync each time)."""
        self.base_url = base_url.rstrip("/")
        self.reconnect_initial = reconnect_initial
        self.reconnect_max = reconnect_max
        self.stable_after = stable_after
        self.delays: list[float] = []
        """The last backoff delays slept (newest last, at most 32): observable for tests and debugging."""
        self.app = app
        self._headers = {"Authorization": aiohttp.encode_basic_auth(user, password)}
        self._origin_secret = password
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._session: aiohttp.ClientSession | None = None
        self._connected = asyncio.Event()
        self._reader: asyncio.Task[None] | None = None
        self._closed = False
        self._on_connect: Callable[[], Awaitable[None]] | None = None
        self.reconnects = 0

    # ------------------------------------------------------------------ lifecycle
    def _http(self) -> aiohttp.ClientSession:
        if self._closed:
            raise AriError("the ARI client is closed", code="ari_closed")
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(headers=self._headers, timeout=self._timeout)
        return self._session

    def start(self, handler: EventHandler, on_connect: Callable[[], Awaitable[None]] | None = None) -> None:
        """Start the events reader; ``handler`` is awaited for every event, in order.  ``on_connect`` is awaited
        after every (re)connection, before events are read: the place to resynchronise state."""
        if self._reader is None:
            self._on_connect = on_connect
            self._reader = asyncio.create_task(self._read_forever(handler), name="ari-events")

    async def wait_connected(self, timeout: float = 30.0) -> None:
        try:
            await asyncio.wait_for(self._connected.wait(), timeout)
        except TimeoutError as exc:
            raise AriError(f"could not connect to ARI at {self.base_url} within {timeout:.0f}s") from exc

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    async def close(self) -> None:
        """Idempotent."""
        self._closed = True
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
            self._reader = None
        if self._session is not None and not self._session.closed:
            await self._session.close()
        self._connected.clear()

    # ------------------------------------------------------------------ events
    async def _read_forever(self, handler: EventHandler) -> None:
        loop = asyncio.get_running_loop()
        delay = self.reconnect_initial
        ws_url = self.base_url.replace("http", "ws", 1) + "/events"
        while not self._closed:
            connected_at: float | None = None
            try:
                async with self._http().ws_connect(
                        ws_url, params={"app": self.app, "subscribeAll": "false"}, heartbeat=20,
                        timeout=aiohttp.ClientWSTimeout(ws_close=5)) as ws:
                    self._connected.set()
                    connected_at = loop.time()
                    log.info("ARI events connected (app %s)", self.app)
                    if self._on_connect is not None:
                        try:
                            await self._on_connect()
                        except (AriError, aiohttp.ClientError, TimeoutError) as exc:
                            log.warning("ARI resynchronisation after connect failed: %s", exc)
                    async for message in self._messages(ws):
                        await handler(message)
            except asyncio.CancelledError:
                raise
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                if self._connected.is_set():
                    log.warning("ARI events connection lost: %s", exc)
            except Exception:
                log.exception("ARI event handler failed; reconnecting")
            self._connected.clear()
            if self._closed:
                break
            if connected_at is not None and loop.time() - connected_at >= self.stable_after:
                delay = self.reconnect_initial  # it was a working connection: reconnect quickly
            self.reconnects += 1
            self.delays = [*self.delays[-31:], delay]
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.reconnect_max)

    @staticmethod
    async def _messages(ws: aiohttp.ClientWebSocketResponse) -> AsyncIterator[AriEvent]:
        async for msg in ws:
            if msg.type == aiohttp.WSMsgType.TEXT:
                try:
                    yield parse_event(json.loads(msg.data))
                except (ValueError, TypeError):
                    log.warning("ignoring malformed ARI event")
            elif msg.type in (aiohttp.WSMsgType.ERROR, aiohttp.WSMsgType.CLOSED):
                break

    # ------------------------------------------------------------------ REST
    async def request(self, method: str, path: str, *, params: dict[str, Any] | None = None,
                      body: Any = None, ok_missing: bool = False) -> Any:
        """One REST call.  404 raises AriError(code=ari_not_found) unless ``ok_missing``."""
        url = f"{self.base_url}/{path.lstrip('/')}"
        clean = {k: str(v).lower() if isinstance(v, bool) else str(v) for k, v in (params or {}).items()
                 if v is not None}
        try:
            async with self._http().request(method, url, params=clean, json=body) as resp:
                text = await resp.text()
                if resp.status == 404 and ok_missing:
                    return None
                if resp.status >= 400:
                    code = "ari_not_found" if resp.status == 404 else "ari_request_failed"
                    raise AriError(f"ARI {method} /{path.lstrip('/')} → {resp.status}: {text[:200]}", code=code)
                return json.loads(text) if text else None
        except (aiohttp.ClientError, OSError) as exc:
            raise AriError(f"ARI {method} /{path.lstrip('/')} failed: {exc}", code="ari_unreachable") from exc
        except TimeoutError as exc:
            raise AriError(f"ARI {method} /{path.lstrip('/')} timed out", code="ari_timeout") from exc

    async def answer(self, channel_id: str) -> None:
        await self.request("POST", f"channels/{channel_id}/answer")

    async def hangup(self, channel_id: str, reason: str = "normal") -> None:
        await self.request("DELETE", f"channels/{channel_id}", params={"reason": reason}, ok_missing=True)

    async def continue_in_dialplan(self, channel_id: str, context: str, extension: str, priority: int = 1) -> None:
        await self.request("POST", f"channels/{channel_id}/continue",
                           params={"context": context, "extension": extension, "priority": priority})

    async def continue_next(self, channel_id: str) -> None:
        """Leave Stasis at the dialplan priority after the ``Stasis()`` that brought the channel in (ARI's
        ``continue`` without context/extension/priority)."""
        await self.request("POST", f"channels/{channel_id}/continue")

    async def set_variable(self, channel_id: str, name: str, value: str) -> None:
        """Set a channel variable (the value arrives in the dialplan as it is: sanitise caller data first)."""
        await self.request("POST", f"channels/{channel_id}/variable", params={"variable": name, "value": value})

    async def external_media(self, channel_id: str, external_host: str, media_format: str) -> dict[str, Any]:
        result: dict[str, Any] = await self.request("POST", "channels/externalMedia", params={
            "app": self.app, "channelId": channel_id, "external_host": external_host, "format": media_format,
            "encapsulation": "rtp", "transport": "udp", "direction": "both"})
        return result

    async def get_variable(self, channel_id: str, name: str, *, default: str | None = None) -> str:
        """A channel variable (or dialplan function).  Asterisk answers 404 for an unset variable: that returns
        ``default`` when given, else raises AriError(ari_not_found)."""
        try:
            result = await self.request("GET", f"channels/{channel_id}/variable", params={"variable": name})
        except AriError as exc:
            if exc.code == "ari_not_found" and default is not None:
                return default
            raise
        return str((result or {}).get("value", ""))

    async def create_bridge(self, bridge_id: str, kind: str = "mixing") -> None:
        await self.request("POST", f"bridges/{bridge_id}", params={"type": kind, "name": bridge_id})

    async def add_to_bridge(self, bridge_id: str, channel_ids: list[str]) -> None:
        await self.request("POST", f"bridges/{bridge_id}/addChannel", params={"channel": ",".join(channel_ids)})

    async def destroy_bridge(self, bridge_id: str) -> None:
        await self.request("DELETE", f"bridges/{bridge_id}", ok_missing=True)

    async def record_bridge(self, bridge_id: str, name: str) -> None:
        await self.request("POST", f"bridges/{bridge_id}/record", params={
            "name": name, "format": "wav", "ifExists": "overwrite", "beep": False, "terminateOn": "none"})

    async def stop_recording(self, name: str) -> None:
        await self.request("POST", f"recordings/live/{name}/stop", ok_missing=True)

    async def originate(self, endpoint: str, *, app_args: str, caller_id: str = "", channel_id: str = "",
                        timeout: int = 30, variables: dict[str, str] | None = None) -> dict[str, Any]:
        """Place a call whose channel enters this app; ``variables`` are set on the new channel."""
        result: dict[str, Any] = await self.request("POST", "channels", params={
            "endpoint": endpoint, "app": self.app, "appArgs": app_args, "callerId": caller_id or None,
            "channelId": channel_id or None, "timeout": timeout},
            body={"variables": variables} if variables else None)
        return result

    def origin_variables(self, channel_id: str) -> dict[str, str]:
        """Channel variables that mark ``channel_id`` as originated by Eva (see :mod:`voicebot.ari.origin`)."""
        return {ORIGIN_VARIABLE: origin_token(self._origin_secret, channel_id)}

    def is_eva_origin(self, channel_id: str, token: str) -> bool:
        return is_eva_origin(self._origin_secret, channel_id, token)

    async def channels(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = await self.request("GET", "channels")
        return result

    async def ping(self) -> dict[str, Any]:
        result: dict[str, Any] = await self.request("GET", "asterisk/info")
        return result
