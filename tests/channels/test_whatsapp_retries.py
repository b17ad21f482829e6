"""The WhatsApp retry machinery the test audit found untested: the sweeper retries on its own, a retryable
failure becomes ``failed`` after ``max_attempts``, and ``concurrency`` bounds the replies generated at once."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, Sequence
from pathlib import Path

from sqlalchemy.engine import Engine

from models import InboundMessage
from tests.channels.conftest import ScriptedLLM
from tests.channels.test_whatsapp_service import make_world, text_payload
from tests.fakes.graph_server import FakeGraph, Reply
from voicebot.llm.base import ChatMessage, GenerationOptions, LlmEvent, ToolSpec

OUTAGE = Reply(status=503, body={"error": {"message": "Service unavailable", "code": 2}})


async def test_the_sweeper_retries_by_itself(sqlite_db: Engine, graph: FakeGraph, tmp_path: Path) -> None:
    world = await make_world(sqlite_db, graph, tmp_path, retry_interval=0.05)
    try:
        await world.service.start()
        graph.replies.extend([OUTAGE] * 3)  # the first attempt's three requests fail
        await world.post(text_payload("wamid.sweep", "Hello?"))
        await graph.wait_for_messages(1)  # nobody calls retry_pending: the sweeper does
        await world.service.drain()
        assert [m["text"]["body"] for m in graph.sent] == ["You said: Hello?"]
        (row,) = world.rows(InboundMessage)
        assert (row.status, row.attempts) == ("done", 2)
    finally:
        await world.service.close()
        await world.service.client.close()
        await world.api.client.close()


async def test_a_retryable_failure_gives_up_after_max_attempts(sqlite_db: Engine, graph: FakeGraph,
                                                               tmp_path: Path) -> None:
    world = await make_world(sqlite_db, graph, tmp_path, retry_interval=0, max_attempts=2)
    try:
        graph.replies.extend([OUTAGE] * 6)
        await world.post(text_payload("wamid.down", "Hello?"))
        await world.service.drain()
        assert world.rows(InboundMessage)[0].status == "pending"
        assert await world.service.retry_pending() == 1
        await world.service.drain()
        (row,) = world.rows(InboundMessage)
        assert (row.status, row.attempts, row.error) == ("failed", 2, "whatsapp_unavailable")
        assert await world.service.retry_pending() == 0 and graph.sent == []
        assert len(world.llm.calls) == 1  # the second attempt sent the stored reply, it did not generate again
    finally:
        await world.service.close()
        await world.service.client.close()
        await world.api.client.close()


class CountingLLM(ScriptedLLM):
    """Counts the generations running at once."""

    def __init__(self) -> None:
        super().__init__(delay=0.01)
        self.running = 0
        self.most = 0

    async def stream(self, messages: Sequence[ChatMessage], *, tools: Sequence[ToolSpec] = (),
                     knowledge: Sequence[str] = (),
                     options: GenerationOptions | None = None) -> AsyncGenerator[LlmEvent, None]:
        self.running += 1
        self.most = max(self.most, self.running)
        try:
            async with contextlib.aclosing(super().stream(messages, tools=tools, knowledge=knowledge,
                                                          options=options)) as events:
                async for event in events:
                    yield event
        finally:
            self.running -= 1


async def test_concurrency_bounds_the_replies_generated_at_once(sqlite_db: Engine, graph: FakeGraph,
                                                                tmp_path: Path) -> None:
    llm = CountingLLM()
    world = await make_world(sqlite_db, graph, tmp_path, llm, concurrency=2)
    try:
        await asyncio.gather(*(world.post(text_payload(f"wamid.c{i}", f"question {i} is a longer one",
                                                       sender=f"4915100000{i:02d}")) for i in range(8)))
        await world.service.drain()
        assert len(graph.sent) == 8
        assert 1 <= llm.most <= 2
    finally:
        await world.service.close()
        await world.service.client.close()
        await world.api.client.close()
