"""The ARI events reader against a real local websocket server (aiohttp on 127.0.0.1:0).

Review L19: a server that accepts the websocket and closes it at once made the reader reconnect (and resync
with GET /channels) every 0.2 s for ever, because the backoff was reset on every successful connect.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import pytest
from aiohttp import web

from voicebot.ari import AriClient, AriEvent


class Server:
    """Accepts /ari/events websockets; ``hold`` says how long each stays open (0: closed at once)."""

    def __init__(self) -> None:
        self.connections = 0
        self.hold = 0.0
        self.seen = asyncio.Event()
        self.wanted = 1
        self.url = ""

    async def events(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        self.connections += 1
        if self.connections >= self.wanted:
            self.seen.set()
        if self.hold:
            await asyncio.sleep(self.hold)
        await ws.close()
        return ws

    async def channels(self, request: web.Request) -> web.Response:
        return web.json_response([])


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    state = Server()
    app = web.Application()
    app.router.add_get("/ari/events", state.events)
    app.router.add_get("/ari/channels", state.channels)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    state.url = f"http://127.0.0.1:{port}/ari"
    try:
        yield state
    finally:
        await runner.cleanup()


async def _run_until(server: Server, client: AriClient, connections: int, on_connect: Callable[[], object]) -> None:
    async def ignore(event: AriEvent) -> None:
        pass

    async def resync() -> None:
        on_connect()

    server.wanted = connections
    client.start(ignore, on_connect=resync)
    try:
        await asyncio.wait_for(server.seen.wait(), 30)
    finally:
        await client.close()


async def test_a_server_that_accepts_and_closes_at_once_gets_exponential_backoff(server: Server) -> None:
    client = AriClient(server.url, "eva", "secret", "eva", reconnect_initial=0.01, reconnect_max=0.08,
                       stable_after=3600)
    resyncs: list[int] = []
    await _run_until(server, client, 7, lambda: resyncs.append(1))
    # Each failed round doubles the wait, up to the maximum; a connect alone never resets it.
    assert client.delays[:6] == [0.01, 0.02, 0.04, 0.08, 0.08, 0.08], client.delays
    assert len(resyncs) == server.connections


async def test_a_connection_that_stayed_up_reconnects_quickly_again(server: Server) -> None:
    server.hold = 0.05
    client = AriClient(server.url, "eva", "secret", "eva", reconnect_initial=0.01, reconnect_max=0.08,
                       stable_after=0.0)  # every connection counts as having stayed up long enough
    await _run_until(server, client, 4, lambda: None)
    assert client.delays[:3] == [0.01, 0.01, 0.01], client.delays
