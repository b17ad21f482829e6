"""Server-Sent Events on an aiohttp response: the wire codec and a writer that notices a client leaving.

The format (https://html.spec.whatwg.org/multipage/server-sent-events.html): each event is ``event: <name>``
and one ``data: <json>`` line, ended by a blank line; a line starting with ``:`` is a comment (our keep-alive).
JSON never holds a raw newline (``json.dumps`` escapes it in strings), so one ``data`` line always suffices and
no caller text can start a new field or event.

aiohttp does not cancel a handler when its client disconnects, and a reply may be silent for seconds while the
model reads its prompt, so :class:`EventStream` watches the connection and runs the producer as a task it
cancels the moment the client is gone (a browser tab closed, a widget's "stop" button).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from typing import Any

from aiohttp import web

from admin_api.framework import error_body
from voicebot.errors import EvaError

log = logging.getLogger(__name__)

CONTENT_TYPE = "text/event-stream"
KEEPALIVE_S = 15.0
"""A comment this often while nothing else is sent: proxies keep the connection, and a gone client is seen."""
DISCONNECT_POLL_S = 0.2


def encode(event: str, data: Any) -> bytes:
    """One event on the wire.  ``event`` is our own name (letters, digits, ``_``); ``data`` any JSON value."""
    if not event or not all(c.isalnum() or c == "_" for c in event):
        raise ValueError(f"not an event name: {event!r}")
    payload = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    return f"event: {event}\ndata: {payload}\n\n".encode()


def decode(raw: str) -> list[tuple[str, Any]]:
    """The events in a complete SSE text (for clients and tests): ``[(event, data), ...]``; comments dropped."""
    events: list[tuple[str, Any]] = []
    for block in raw.replace("\r\n", "\n").split("\n\n"):
        name, data = "message", []
        for line in block.split("\n"):
            if not line or line.startswith(":"):
                continue
            key, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if key == "event":
                name = value
            elif key == "data":
                data.append(value)
        if data:
            events.append((name, json.loads("\n".join(data))))
    return events


class ClientGone(Exception):
    """The client closed the connection before the stream ended."""


class EventStream:
    """An SSE response whose producer is cancelled when the client leaves.

    ``await EventStream(request, headers).run(producer)`` prepares the response, then runs
    ``producer(send)`` where ``await send(event, data)`` writes one event.  Returns the prepared response.
    Raises nothing for a client that left (it is logged at DEBUG); the producer sees CancelledError then.  A
    producer's failure becomes a last ``error`` event carrying the API's JSON error body.
    """

    def __init__(self, request: web.Request, headers: Mapping[str, str] | None = None) -> None:
        self.request = request
        self.response = web.StreamResponse(headers={
            "Content-Type": f"{CONTENT_TYPE}; charset=utf-8", "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no",  # nginx would otherwise hold the tokens back
            **(headers or {})})
        self._lock = asyncio.Lock()
        self._last_write = 0.0
        self.client_gone = False

    def _closing(self) -> bool:
        transport = self.request.transport
        return transport is None or transport.is_closing()

    async def send(self, event: str, data: Any) -> None:
        await self._write(encode(event, data))

    async def _write(self, chunk: bytes) -> None:
        if self._closing():
            raise ClientGone
        async with self._lock:
            try:
                await self.response.write(chunk)
            except ConnectionError as exc:  # aiohttp's ClientConnectionResetError is one
                raise ClientGone from exc
            self._last_write = asyncio.get_running_loop().time()

    async def _watch(self) -> None:
        loop = asyncio.get_running_loop()
        while not self._closing():
            await asyncio.sleep(DISCONNECT_POLL_S)
            if loop.time() - self._last_write >= KEEPALIVE_S:  # only while nothing else was sent
                with contextlib.suppress(ClientGone):
                    await self._write(b": keep-alive\n\n")

    async def run(self, producer: Callable[[Callable[[str, Any], Awaitable[None]]], Coroutine[Any, Any, None]]
                  ) -> web.StreamResponse:
        await self.response.prepare(self.request)
        self._last_write = asyncio.get_running_loop().time()
        produce = asyncio.create_task(producer(self.send), name=f"sse-producer {self.request.path}")
        watch = asyncio.create_task(self._watch(), name=f"sse-watch {self.request.path}")
        try:
            await asyncio.wait({produce, watch}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            # Whatever ended first (the producer, the client, or this handler being cancelled), stop the rest.
            for task in (produce, watch):
                task.cancel()
            results = await asyncio.gather(produce, watch, return_exceptions=True)
        failure, watch_failure = results
        if isinstance(watch_failure, Exception):
            failure = watch_failure  # the watcher broke (not the client leaving): report it, not a quiet end
        if isinstance(failure, ClientGone) or (isinstance(failure, asyncio.CancelledError) and self._closing()):
            self.client_gone = True
            log.debug("SSE client left %s before the end", self.request.path)
            return self.response
        if isinstance(failure, Exception):
            # Too late for an HTTP status: the failure is the stream's last event, as the JSON error body.
            if isinstance(failure, EvaError):
                log.warning("%s failed mid-stream: [%s] %s", self.request.path, failure.code, failure.message)
                body = error_body(failure.code, failure.message, failure.field)
            else:
                log.error("%s failed mid-stream", self.request.path, exc_info=failure)
                body = error_body("internal_error", "internal server error")
            with contextlib.suppress(ClientGone):
                await self.send("error", body)
        with contextlib.suppress(ConnectionError):
            await self.response.write_eof()
        return self.response
