"""A local HTTP server that speaks Ollama's documented wire format, for tests (no real Ollama can run here).

Endpoints (https://github.com/ollama/ollama/blob/main/docs/api.md):

* ``POST /api/chat``: NDJSON stream of ``{"model", "created_at", "message": {"role": "assistant", "content",
  "tool_calls"?}, "done": false}`` objects, then a final ``"done": true`` object with ``done_reason``,
  ``prompt_eval_count``, ``eval_count`` and durations; ``"stream": false`` gets the whole reply in one object.
  Tool calls are as Ollama 0.12+ sends them: ``{"id": "call_...", "function": {"index": n, "name",
  "arguments": {object}}}``, all of one reply in one ``done: false`` message.
* ``GET /api/tags``: ``{"models": [{"name", "model", "modified_at", "size", "digest", "details"}]}``.
* ``POST /api/embed``: ``{"model", "embeddings": [[...], ...], "prompt_eval_count"}`` for ``input`` as a
  string or a list of strings.  Vectors are deterministic, normalized hashed bags of words (texts sharing
  words are similar), of dimension ``embed_dim``.
* Errors as ``{"error": "..."}`` with an HTTP status (404 for a missing model, 400 for tools on a model
  without tool support), or as an ``{"error": ...}`` line in the middle of a stream.

Each chat request takes the next :class:`ChatScript` from ``FakeOllama.scripts`` (or ``default_script``), so
a test says exactly what the "model" answers and how it fails.  Every request body is kept in ``requests``.
Usage: ``async with FakeOllama() as fake: OllamaLLM(settings, url=fake.url)``.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import re
import secrets
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aiohttp import web


@dataclass
class ChatScript:
    """What the fake model answers to one ``/api/chat`` request."""

    chunks: Sequence[str] = ("Hello", " there", ".")
    tool_calls: Sequence[Mapping[str, Any]] = ()
    """``[{"name": ..., "arguments": {...}}]``, streamed in one message after the text chunks."""
    done_reason: str = "stop"
    status: int = 200
    """Anything but 200: answer ``{"error": error}`` with this status instead of a stream."""
    error: str = "something went wrong"
    error_after: int | None = None
    """Send ``{"error": error}`` after this many chunks (an error mid-stream)."""
    malformed_after: int | None = None
    """Send a line that is not JSON after this many chunks."""
    end_early: bool = False
    """Close the stream without the final ``done`` object."""
    delay: float = 0.0
    """Seconds to wait before each chunk (lets a test cancel mid-stream or trip a read timeout)."""
    prompt_eval_count: int = 21


@dataclass
class FakeOllama:
    models: list[str] = field(default_factory=lambda: ["llama3.2:latest", "nomic-embed-text:latest"])
    embed_dim: int = 16
    tools_supported: bool = True
    default_script: ChatScript = field(default_factory=ChatScript)
    scripts: deque[ChatScript] = field(default_factory=deque)
    reply: Callable[[dict[str, Any]], ChatScript] | None = None
    """When set, every chat request's answer is ``reply(request body)`` (a model whose words depend on what it was
    sent, e.g. on the conversation so far), before ``scripts`` and ``default_script``."""
    requests: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    chunks_sent: int = 0
    disconnects: int = 0
    disconnected: asyncio.Event = field(default_factory=asyncio.Event)
    _runner: web.AppRunner | None = None
    _port: int = 0

    # ------------------------------------------------------------------ lifecycle
    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._port}"

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/api/chat", self._chat)
        app.router.add_get("/api/tags", self._tags)
        app.router.add_post("/api/embed", self._embed)
        # A stream the client left mid-way must not hold stop() for aiohttp's default 60 s grace period.
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        assert server is not None
        self._port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> FakeOllama:
        await self.start()
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.stop()

    def bodies(self, path: str) -> list[dict[str, Any]]:
        return [body for p, body in self.requests if p == path]

    # ------------------------------------------------------------------ helpers
    def _has_model(self, name: str) -> bool:
        def norm(n: str) -> str:
            return n if ":" in n else f"{n}:latest"

        return norm(name) in {norm(m) for m in self.models}

    @staticmethod
    def _error(status: int, message: str) -> web.Response:
        return web.json_response({"error": message}, status=status)

    @staticmethod
    def _now() -> str:
        return datetime.now(UTC).isoformat().replace("+00:00", "Z")

    async def _read_json(self, request: web.Request) -> dict[str, Any] | web.Response:
        try:
            body = await request.json()
        except json.JSONDecodeError:
            return self._error(400, "invalid character looking for beginning of value")
        if not isinstance(body, dict):
            return self._error(400, "json: cannot unmarshal into Go value")
        self.requests.append((request.path, body))
        return body

    # ------------------------------------------------------------------ /api/tags
    async def _tags(self, request: web.Request) -> web.Response:
        self.requests.append((request.path, {}))
        return web.json_response({"models": [
            {"name": name, "model": name, "modified_at": "2025-01-01T00:00:00Z", "size": 1000 + i,
             "digest": hashlib.sha256(name.encode()).hexdigest(),
             "details": {"format": "gguf", "family": "llama", "families": None, "parameter_size": "3B",
                         "quantization_level": "Q4_K_M"}}
            for i, name in enumerate(self.models)]})

    # ------------------------------------------------------------------ /api/embed
    def embed_text(self, text: str) -> list[float]:
        vector = [0.0] * self.embed_dim
        for word in re.findall(r"\w+", text.lower()):
            digest = hashlib.sha256(word.encode()).digest()
            vector[int.from_bytes(digest[:4], "big") % self.embed_dim] += 1.0
        norm = math.sqrt(sum(v * v for v in vector)) or 1.0
        return [v / norm for v in vector]

    async def _embed(self, request: web.Request) -> web.Response:
        body = await self._read_json(request)
        if isinstance(body, web.Response):
            return body
        model = str(body.get("model", ""))
        if not self._has_model(model):
            return self._error(404, f'model "{model}" not found, try pulling it first')
        raw = body.get("input")
        texts = [raw] if isinstance(raw, str) else raw
        if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
            return self._error(400, "invalid input type")
        return web.json_response({"model": model, "embeddings": [self.embed_text(t) for t in texts],
                                  "total_duration": 1000, "load_duration": 10,
                                  "prompt_eval_count": sum(len(t.split()) for t in texts)})

    # ------------------------------------------------------------------ /api/chat
    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body = await self._read_json(request)
        if isinstance(body, web.Response):
            return body
        model = str(body.get("model", ""))
        if not self._has_model(model):
            return self._error(404, f'model "{model}" not found, try pulling it first')
        if body.get("tools") and not self.tools_supported:
            return self._error(400, f"registry.ollama.ai/library/{model} does not support tools")
        if self.reply is not None:
            script = self.reply(body)
        else:
            script = self.scripts.popleft() if self.scripts else self.default_script
        if script.status != 200:
            return self._error(script.status, script.error)
        message_tool_calls = [{"id": f"call_{secrets.token_hex(4)}",
                               "function": {"index": index, "name": c["name"], "arguments": dict(c["arguments"])}}
                              for index, c in enumerate(script.tool_calls)]
        final = {"model": model, "created_at": self._now(),
                 "message": {"role": "assistant", "content": ""}, "done": True,
                 "done_reason": script.done_reason, "total_duration": 5_000_000, "load_duration": 1_000,
                 "prompt_eval_count": script.prompt_eval_count, "prompt_eval_duration": 1_000_000,
                 "eval_count": len(script.chunks) + len(script.tool_calls), "eval_duration": 4_000_000}
        if body.get("stream") is False:
            final["message"] = {"role": "assistant", "content": "".join(script.chunks)}
            if message_tool_calls:
                final["message"]["tool_calls"] = message_tool_calls  # type: ignore[index]
            return web.json_response(final)

        response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await response.prepare(request)
        try:
            for index, chunk in enumerate(script.chunks):
                if script.error_after is not None and index == script.error_after:
                    await self._line(response, {"error": script.error})
                    return response
                if script.malformed_after is not None and index == script.malformed_after:
                    await response.write(b'{"model": "x", "message": {"content": "unterminated\n')
                    return response
                if script.delay:
                    await asyncio.sleep(script.delay)
                await self._line(response, {"model": model, "created_at": self._now(), "done": False,
                                            "message": {"role": "assistant", "content": chunk}})
                self.chunks_sent += 1
            if message_tool_calls:
                await self._line(response, {"model": model, "created_at": self._now(),
                                            "message": {"role": "assistant", "content": "",
                                                        "tool_calls": message_tool_calls},
                                            "done": False})
            if not script.end_early:
                await self._line(response, final)
            await response.write_eof()
        except ConnectionResetError:
            # The client went away mid-stream (a cancelled generation): that is what tests look for.
            self._note_disconnect()
        except asyncio.CancelledError:
            self._note_disconnect()
            raise
        return response

    def _note_disconnect(self) -> None:
        self.disconnects += 1
        self.disconnected.set()

    async def _line(self, response: web.StreamResponse, obj: Mapping[str, Any]) -> None:
        await response.write(json.dumps(obj).encode() + b"\n")
        # A real server flushes per token; draining makes each line a separate read for the client.
        await asyncio.sleep(0)
