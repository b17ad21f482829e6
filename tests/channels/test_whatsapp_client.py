"""The Cloud API client against a local server speaking the Graph API's send-message wire format."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from typing import Any

import pytest

from channels.whatsapp.client import WhatsAppClient
from tests.fakes.graph_server import FakeGraph, Reply, graph_error
from voicebot.errors import WhatsAppError


@pytest.fixture
async def graph() -> AsyncIterator[FakeGraph]:
    async with FakeGraph() as fake:
        yield fake


class Sleeps:
    """Records the waits the client asks for, without waiting (no timing in unit tests)."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)


def client_for(graph: FakeGraph, sleeps: Sleeps | None = None, **kwargs: Any) -> WhatsAppClient:
    return WhatsAppClient(graph.api_url, graph.phone_number_id, graph.token, sleep=sleeps or Sleeps(), **kwargs)


async def test_send_text(graph: FakeGraph) -> None:
    client = client_for(graph)
    try:
        (sent,) = await client.send_text("16505551234", "Hello from Eva", reply_to="wamid.IN")
    finally:
        await client.close()
    assert sent.wamid.startswith("wamid.") and sent.wa_id == "16505551234"
    assert graph.sent == [{"messaging_product": "whatsapp", "recipient_type": "individual", "to": "16505551234",
                           "type": "text", "text": {"preview_url": False, "body": "Hello from Eva"},
                           "context": {"message_id": "wamid.IN"}}]


async def test_long_text_goes_as_several_messages(graph: FakeGraph) -> None:
    client = client_for(graph)
    text = ("First paragraph. " * 200).strip() + "\n\n" + ("Second paragraph. " * 200).strip()
    try:
        sent = await client.send_text("16505551234", text)
    finally:
        await client.close()
    assert len(sent) == 2 == len(graph.sent) and len({m.wamid for m in sent}) == 2
    assert all(len(m["text"]["body"]) <= 4096 for m in graph.sent)
    assert "context" not in graph.sent[1]


async def test_retries_5xx_and_429_honouring_retry_after(graph: FakeGraph) -> None:
    sleeps = Sleeps()
    graph.replies.extend([Reply(status=503, raw=b"<html>Service Unavailable</html>"),
                          Reply(status=429, body=graph_error("error_rate_limit"), retry_after="7")])
    client = client_for(graph, sleeps, backoff=0.25)
    try:
        (sent,) = await client.send_text("16505551234", "third time lucky")
    finally:
        await client.close()
    assert sent.wamid and graph.requests == 3 and len(graph.sent) == 1
    assert sleeps.delays == [0.25, 7.0]  # backoff without a header, then exactly what Retry-After said


async def test_retry_after_is_capped_and_attempts_are_bounded(graph: FakeGraph) -> None:
    sleeps = Sleeps()
    graph.replies.extend([Reply(status=500, body={"error": {"message": "An unknown error occurred", "code": 1}},
                                retry_after="3600")] * 3)
    client = client_for(graph, sleeps, max_attempts=3, max_retry_after=30.0)
    try:
        with pytest.raises(WhatsAppError) as caught:
            await client.send_text("16505551234", "never")
    finally:
        await client.close()
    assert (caught.value.code, caught.value.upstream_status, caught.value.retryable) == (
        "whatsapp_unavailable", 500, True)
    assert graph.requests == 3 and sleeps.delays == [30.0, 30.0] and graph.sent == []


@pytest.mark.parametrize(("reply", "code", "graph_code"), [
    (Reply(status=400, body=graph_error("error_recipient_not_allowed")), "whatsapp_rejected", 131030),
    (Reply(status=400, body=graph_error("error_reengagement")), "whatsapp_window_closed", 131047),
    (Reply(status=400, body=graph_error("error_rate_limit")), "whatsapp_rate_limited", 130429),
    (Reply(status=200, body={"messaging_product": "whatsapp"}), "whatsapp_bad_response", None),
    (Reply(status=200, raw=b"<html>ok</html>"), "whatsapp_bad_response", None),
])
async def test_refusals_are_not_retried(graph: FakeGraph, reply: Reply, code: str, graph_code: int | None) -> None:
    graph.replies.append(reply)
    sleeps = Sleeps()
    client = client_for(graph, sleeps)
    try:
        with pytest.raises(WhatsAppError) as caught:
            await client.send_text("16505551234", "hello")
    finally:
        await client.close()
    assert (caught.value.code, caught.value.graph_code) == (code, graph_code)
    assert graph.requests == 1 and sleeps.delays == []


async def test_wrong_token_and_wrong_number_id(graph: FakeGraph) -> None:
    client = WhatsAppClient(graph.api_url, graph.phone_number_id, "EAAwrong", sleep=Sleeps())
    try:
        with pytest.raises(WhatsAppError) as caught:
            await client.send_text("16505551234", "hello")
    finally:
        await client.close()
    assert (caught.value.code, caught.value.graph_code, caught.value.upstream_status) == (
        "whatsapp_auth_failed", 190, 401)
    assert "EAAwrong" not in caught.value.message
    client = WhatsAppClient(graph.api_url, "999", graph.token, sleep=Sleeps())
    try:
        with pytest.raises(WhatsAppError) as caught:
            await client.send_text("16505551234", "hello")
    finally:
        await client.close()
    assert (caught.value.code, caught.value.graph_code) == ("whatsapp_rejected", 100)


async def test_timeout_is_not_retried(graph: FakeGraph) -> None:
    graph.replies.append(Reply(delay=1.0))
    client = client_for(graph, timeout=0.3)
    try:
        with pytest.raises(WhatsAppError) as caught:
            await client.send_text("16505551234", "slow")
    finally:
        await client.close()
    assert caught.value.code == "whatsapp_timeout" and graph.requests == 1


async def test_unreachable_server_is_retried_then_reported() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    sleeps = Sleeps()
    client = WhatsAppClient(f"http://127.0.0.1:{port}/v21.0", "1", "t", sleep=sleeps, max_attempts=2)
    try:
        with pytest.raises(WhatsAppError) as caught:
            await client.send_text("16505551234", "hello")
    finally:
        await client.close()
    assert caught.value.code == "whatsapp_unavailable" and len(sleeps.delays) == 1


def test_missing_configuration() -> None:
    with pytest.raises(WhatsAppError) as caught:
        WhatsAppClient("https://graph.facebook.com/v21.0", "", "token")
    assert caught.value.code == "whatsapp_not_configured"
