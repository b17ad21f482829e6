"""The Server-Sent Events codec: what a model writes (and so what a visitor can make it echo) never breaks the
framing -- no text can end an event early, start a field, or forge another event."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from hypothesis import given
from hypothesis import strategies as st

from admin_api import sse
from admin_api.sse import EventStream, decode, encode
from tests.api.conftest import ServedAsEvaServes
from voicebot.errors import NotFound


def test_an_event_is_one_named_data_line() -> None:
    assert encode("delta", {"text": "Hi"}) == b'event: delta\ndata: {"text":"Hi"}\n\n'
    assert decode(": keep-alive\n\nevent: delta\ndata: {\"text\":\"Hi\"}\n\n") == [("delta", {"text": "Hi"})]


def test_event_names_are_ours_only() -> None:
    for bad in ("", "delta\ndata: x", "de lta", "done:"):
        with pytest.raises(ValueError):
            encode(bad, {})


HOSTILE = st.lists(st.sampled_from(["\n", "\r", "\r\n", "\n\n", "event: done", "data: ", ": ", "é", "\u2028", "\x00",
                                    "a", " ", '"', "\\"]), max_size=20).map("".join)


@given(pieces=st.lists(st.one_of(st.text(max_size=30), HOSTILE), max_size=8))
def test_any_reply_text_round_trips_without_new_events(pieces: list[str]) -> None:
    wire = b"".join(encode("delta", {"text": p}) for p in pieces) + encode("done", {"reply": "".join(pieces)})
    events = decode(wire.decode())
    assert [name for name, _ in events] == ["delta"] * len(pieces) + ["done"]
    assert [data["text"] for _, data in events[:-1]] == pieces
    assert events[-1][1]["reply"] == "".join(pieces)
    # Each event is exactly its two lines: caller text never contributes a line break of its own.
    assert wire.count(b"\n\n") == len(pieces) + 1


# ---------------------------------------------------------------------------------------------- the stream
async def _serve(producer: Any) -> TestClient[web.Request, web.Application]:
    async def handler(request: web.Request) -> web.StreamResponse:
        return await EventStream(request).run(producer)

    app = web.Application()
    app.router.add_post("/stream", handler)
    client: TestClient[web.Request, web.Application] = TestClient(ServedAsEvaServes(app, host="127.0.0.1", port=0))
    await client.start_server()
    return client


async def test_a_quiet_stream_gets_keep_alives_and_a_busy_one_does_not(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sse, "KEEPALIVE_S", 0.3)

    async def quiet_then_done(send: Any) -> None:
        await asyncio.sleep(1.0)
        await send("done", {"reply": "late"})

    async def busy(send: Any) -> None:
        for i in range(10):
            await send("delta", {"text": str(i)})
            await asyncio.sleep(0.1)

    client = await _serve(quiet_then_done)
    try:
        raw = await (await client.post("/stream")).text()
        assert raw.count(": keep-alive") >= 2 and decode(raw) == [("done", {"reply": "late"})]
    finally:
        await client.close()
    client = await _serve(busy)
    try:
        raw = await (await client.post("/stream")).text()
        assert ": keep-alive" not in raw and len(decode(raw)) == 10
    finally:
        await client.close()


async def test_a_failure_after_the_stream_began_is_its_last_event() -> None:
    async def fails(send: Any) -> None:
        await send("delta", {"text": "Hel"})
        raise NotFound("conversation 5 does not exist", field="conversation_id")

    async def crashes(send: Any) -> None:
        await send("delta", {"text": "Hel"})
        raise RuntimeError("secret internals")

    for producer, error in ((fails, {"code": "not_found", "message": "conversation 5 does not exist",
                                     "field": "conversation_id"}),
                            (crashes, {"code": "internal_error", "message": "internal server error", "field": None})):
        client = await _serve(producer)
        try:
            response = await client.post("/stream")
            assert response.status == 200
            assert decode(await response.text()) == [("delta", {"text": "Hel"}), ("error", {"error": error})]
        finally:
            await client.close()
