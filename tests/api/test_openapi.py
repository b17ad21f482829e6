"""The OpenAPI document, checked against the live server by schemathesis (property-based), plus its docs page.

The server is the whole API in a thread of its own (schemathesis calls it synchronously over real HTTP): a real
SQLite database, the real knowledge base (MiniLM + embedded Chroma), the real embedded LLM (for the model list),
call control through AMI of the session's real Asterisk.  Trunk and dialplan changes run *offline* here (written
to this server's own data directory, not into the shared Asterisk, which random input must not reconfigure).

Excluded from generation, each covered by its own test: ``POST /agents/{id}/test`` (a generated agent may ask
for 8192 tokens: minutes of CPU per example), ``POST /calls/outgoing`` (it would place real calls) and
``POST /email/chat`` (a model reply per example; tests/channels covers it), and the chat channel's replies
(``/chat/sessions/{id}/messages`` and the streams: a model reply per example; tests/api/test_chat.py covers them),
and the speech endpoints (a transcription or synthesis per example; tests/api/test_speech.py covers them).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import schemathesis
from aiohttp import web
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis import GenerationMode
from schemathesis.core.result import Ok
from schemathesis.specs.openapi.checks import positive_data_acceptance

from admin_api.ami import AmiCallControl, AmiClient
from admin_api.app import create_app
from models.db import make_engine, upgrade
from rag import KnowledgeBase
from rag.embeddings import LocalEmbedder
from tests.api.conftest import offline_settings, seed_principals
from tests.channels.live import LiveChannels, start_live_channels
from tests.embedded_model import shared_embedded_llm
from voicebot.agent.core import AgentCore
from voicebot.asterisk.process import Asterisk
from voicebot.config import Settings

EXAMPLES = 12
"""Examples per operation and phase: bounded so the whole run stays well under a minute on two cores."""
EXCLUDED = ("/api/v1/agents/{agent_id}/test", "/api/v1/calls/outgoing", "/api/v1/email/chat",
            "/api/v1/chat/sessions/{session_id}/stream",
            "/api/v1/agents/{agent_id}/chat/stream", "/api/v1/agents/ollama/{agent_id}/chat/stream",
            "/api/v1/calls/stt/transcribe", "/api/v1/calls/tts/generate",
            "/api/v1/console/events")  # streams until the client leaves (tests/api/test_console_session.py)


class LiveServer(threading.Thread):
    """The admin API served by its own event loop in a background thread."""

    def __init__(self, settings: Settings, ami_settings: Settings) -> None:
        super().__init__(name="eva-api-under-test", daemon=True)
        self.settings = settings
        self.ami_settings = ami_settings
        self.ready = threading.Event()
        self.error: BaseException | None = None
        self.url = ""
        self.keys: dict[str, str] = {}
        self.loop = asyncio.new_event_loop()
        self.channels: LiveChannels

    def run(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            runner, kb, ami = self.loop.run_until_complete(self._start())
        except BaseException as exc:  # reported to the fixture, which fails the test with it
            self.error = exc
            self.ready.set()
            return
        self.ready.set()
        self.loop.run_forever()
        self.loop.run_until_complete(self._shutdown(runner, kb, ami))
        self.loop.close()

    async def _start(self) -> tuple[web.AppRunner, KnowledgeBase, AmiClient]:
        engine = make_engine(self.settings.effective_database_url)
        await asyncio.to_thread(upgrade, engine)
        _users, self.keys = await asyncio.to_thread(seed_principals, engine)
        kb = KnowledgeBase(self.settings, engine, embedder=LocalEmbedder())
        ami = AmiClient(self.ami_settings)
        # The text channels run against local stand-ins (Graph API server, SMTP server), so their endpoints work.
        self.channels = await start_live_channels(self.settings, engine,
                                                  AgentCore(self.settings, engine, shared_embedded_llm(), kb))
        app = create_app(self.channels.settings, engine, kb=kb, llm=shared_embedded_llm(), offline_asterisk=True,
                         call_control=AmiCallControl(ami, self.ami_settings), whatsapp=self.channels.whatsapp,
                         email=self.channels.email)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        host, port = runner.addresses[0][:2]
        self.url = f"http://{host}:{port}"
        return runner, kb, ami

    async def _shutdown(self, runner: web.AppRunner, kb: KnowledgeBase, ami: AmiClient) -> None:
        await runner.cleanup()
        await self.channels.close()
        await kb.wait_idle()
        await kb.close()
        await ami.close()

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.join(timeout=60)


@pytest.fixture(scope="module")
def live_server(tmp_path_factory: pytest.TempPathFactory, asterisk: Asterisk,
                eva_settings: Settings) -> Iterator[LiveServer]:
    data: Path = tmp_path_factory.mktemp("eva-api-schemathesis")
    server = LiveServer(offline_settings(data, max_upload_mb=1), eva_settings)
    server.start()
    server.ready.wait(timeout=120)
    if server.error is not None:
        raise server.error
    try:
        yield server
    finally:
        server.stop()


@pytest.mark.asterisk
@pytest.mark.slow
def test_openapi_document_holds_against_the_live_server(live_server: LiveServer) -> None:
    """Every operation, with schema-valid and schema-invalid input: no 5xx, responses match the documented
    schemas, statuses and content types, invalid input is rejected, secured operations refuse anonymous calls.

    Positive-data acceptance is not required: schema-valid input can still be refused for what it refers to
    (a missing agent, a duplicate name: 404/409/422 are the right answers there).  The operations are driven
    through schemathesis' hypothesis strategies directly (its lazy pytest loader does not run on pytest 9).
    """
    # Our own credential is sent with every case; schemathesis must not add generated ones beside it (two
    # credentials are refused as ambiguous).  Its ignored_auth check still probes missing and invalid ones.
    config = schemathesis.Config.from_dict({"generation": {"with-security-parameters": False}})
    api_schema = schemathesis.openapi.from_url(f"{live_server.url}/api/v1/openapi.json", config=config).exclude(
        path=list(EXCLUDED)).exclude(method="POST", path="/api/v1/chat/sessions/{session_id}/messages")
    headers = {"Authorization": f"Bearer {live_server.keys['admin']}"}
    failures: list[str] = []
    operations = 0
    spec = requests.get(f"{live_server.url}/api/v1/openapi.json", timeout=10).json()
    served_before = _served(live_server)
    # A templated path filled with another operation's literal segment (GET /calls/{call_id} with call_id "live")
    # is that other operation: OpenAPI matches concrete paths before templated ones, and so does the server.
    concrete = {path for path in spec["paths"] if "{" not in path}
    for result in api_schema.get_all_operations():
        if not isinstance(result, Ok):
            failures.append(f"the document has an invalid operation: {result.err()}")
            continue
        operation = result.ok()
        operations += 1
        declared = spec["paths"][operation.path][operation.method.lower()]
        takes_input = bool(declared.get("parameters") or declared.get("requestBody"))
        # An operation without parameters or body has no invalid input to send.
        modes = (GenerationMode.POSITIVE, GenerationMode.NEGATIVE) if takes_input else (GenerationMode.POSITIVE,)
        for mode in modes:

            @given(case=operation.as_strategy(generation_mode=mode))
            @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                      suppress_health_check=list(HealthCheck), phases=[Phase.explicit, Phase.generate])
            def check(case: schemathesis.Case[Any]) -> None:
                if case.formatted_path in concrete and case.formatted_path != case.path:
                    return
                case.call_and_validate(base_url=live_server.url, headers=headers,
                                       excluded_checks=[positive_data_acceptance])

            try:
                check()
            except (Exception, BaseExceptionGroup) as exc:  # collected: one report of every failing operation
                failures.append(f"{operation.label} [{mode}]: {str(exc)[:1500]}")
    assert operations >= 60
    assert not failures, "\n\n".join(failures)
    # The run really talked to the server: count what its own metrics saw.
    after = _served(live_server)
    by_status = {status: after[status] - served_before.get(status, 0.0) for status in after}
    print("schemathesis requests by status:", dict(sorted(by_status.items())))
    assert sum(by_status.values()) >= operations * EXAMPLES
    assert not any(status.startswith("5") and count for status, count in by_status.items())
    assert sum(count for status, count in by_status.items() if status.startswith("2")) >= operations


def _served(server: LiveServer) -> dict[str, float]:
    """Requests the server has answered so far, by status (from its Prometheus metrics)."""
    scraped = requests.get(f"{server.url}/metrics", timeout=10).text
    counts: dict[str, float] = {}
    for line in scraped.splitlines():
        if line.startswith("eva_http_requests_total{"):
            status = line.split('status="', 1)[1].split('"', 1)[0]
            counts[status] = counts.get(status, 0.0) + float(line.rsplit(" ", 1)[1])
    return counts


@pytest.mark.asterisk
def test_document_and_docs_page(live_server: LiveServer) -> None:
    spec = requests.get(f"{live_server.url}/api/v1/openapi.json", timeout=10).json()
    assert spec["openapi"].startswith("3.")
    operations = [(method, path) for path, item in spec["paths"].items() for method in item]
    assert len(operations) >= 60
    for path, item in spec["paths"].items():
        for method, operation in item.items():
            assert operation["summary"], (method, path)
            assert operation["x-eva-role"] in ("public", "pending", "viewer", "designer", "admin", "chat")
            if operation["x-eva-role"] != "public":
                assert {"401", "403"} <= set(operation["responses"]), (method, path)
                assert operation["security"] == [{"bearerAuth": []}, {"apiKey": []}]
    agent = spec["components"]["schemas"]["AgentCreate"]
    assert agent["additionalProperties"] is False
    assert "password" not in spec["components"]["schemas"]["TrunkOut"]["properties"]
    page = requests.get(f"{live_server.url}/api/v1/docs", timeout=10)
    assert page.status_code == 200 and page.headers["Content-Type"].startswith("text/html")
    assert "<script" not in page.text and "http://" not in page.text.replace(live_server.url, "")
    assert "/api/v1/sip/trunks/{trunk_id}/status" in page.text

