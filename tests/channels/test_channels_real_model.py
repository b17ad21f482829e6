"""Both text channels end to end with the real thing answering: the demo agent (its knowledge document ingested
by the real knowledge base: MiniLM + Chroma) and the embedded model (llama.cpp, Gemma 3 270M), a WhatsApp
webhook in through the admin API and out to the local Graph API server, an e-mail in through dovecot and out
through aiosmtpd."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Iterator
from email.message import EmailMessage
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine
from sqlmodel import col, select

from channels.email.service import EmailService
from channels.whatsapp.client import WhatsAppClient
from channels.whatsapp.codec import signature
from channels.whatsapp.service import WhatsAppService
from models import Message
from models.db import make_engine, session_scope, upgrade
from rag import KnowledgeBase
from tests.api.conftest import offline_settings, start_api
from tests.channels.conftest import Dovecot, SmtpSink, plain_of
from tests.embedded_model import gguf_path, shared_embedded_llm
from tests.fakes.graph_server import FakeGraph
from voicebot.agent.core import AgentCore
from voicebot.agent.demo import seed_demo
from voicebot.config import Settings

DATA = Path(__file__).resolve().parent.parent / "data" / "whatsapp"
QUESTION = "How much is a flat tire repair?"


@pytest.fixture(scope="module")
def demo_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data directory where the demo agent and its document were seeded (as `eva setup` does)."""
    data = tmp_path_factory.mktemp("eva-channels-demo")
    settings = Settings().with_(data_dir=data)
    engine = make_engine(settings.effective_database_url)
    upgrade(engine)
    seed_demo(settings, engine)
    engine.dispose()
    return data


@pytest.fixture
def demo_engine(demo_data: Path) -> Iterator[Engine]:
    engine = make_engine(Settings().with_(data_dir=demo_data).effective_database_url)
    yield engine
    engine.dispose()


@pytest.fixture
async def core(demo_data: Path, demo_engine: Engine) -> AsyncIterator[AgentCore]:
    settings = Settings().with_(data_dir=demo_data, llm="embedded", llm_model_path=str(gguf_path()))
    kb = KnowledgeBase(settings, demo_engine)
    yield AgentCore(settings, demo_engine, shared_embedded_llm(), kb)
    await kb.close()


def last_reply(engine: Engine) -> Message:
    with session_scope(engine) as session:
        message = session.exec(select(Message).where(Message.role == "assistant")
                               .order_by(col(Message.id).desc())).first()
        assert message is not None
        return message


async def test_whatsapp_question_answered_from_the_knowledge(core: AgentCore, demo_data: Path, demo_engine: Engine,
                                                              graph: FakeGraph) -> None:
    settings = offline_settings(demo_data, whatsapp_app_secret="secret", whatsapp_token=graph.token,
                                whatsapp_phone_number_id=graph.phone_number_id, whatsapp_api_url=graph.api_url)
    service = WhatsAppService(settings, demo_engine, core, client=WhatsAppClient.from_settings(settings))
    api = await start_api(settings, demo_engine, offline_asterisk=True, whatsapp=service)
    try:
        data = json.loads((DATA / "text_message.json").read_text())
        data["entry"][0]["changes"][0]["value"]["messages"][0]["text"]["body"] = QUESTION
        data["entry"][0]["changes"][0]["value"]["messages"][0]["timestamp"] = str(int(time.time()))  # not stale
        body = json.dumps(data).encode()
        status, ack = await api.call("POST", "/api/v1/whatsapp/webhook", role=None, data=body,
                                     headers={"Content-Type": "application/json",
                                              "X-Hub-Signature-256": signature("secret", body)})
        assert (status, ack["accepted"]) == (200, 1)
        await service.drain()
    finally:
        await service.close()
        await service.client.close()
        await api.client.close()
    (sent,) = graph.sent
    reply = last_reply(demo_engine)
    assert sent["to"] == "16505551234" and sent["text"]["body"] == reply.text
    assert "15" in reply.text, reply.text
    assert reply.citations and reply.citations[0]["title"] == "Sunny Side Bike Shop facts"
    assert reply.external_id.startswith("wamid.") and not (reply.timings or {}).get("cancelled")


async def test_email_question_answered_from_the_knowledge(core: AgentCore, demo_data: Path, demo_engine: Engine,
                                                           dovecot: Dovecot, smtp_sink: SmtpSink) -> None:
    settings = offline_settings(demo_data, imap_host=dovecot.host, imap_port=dovecot.port, imap_user="demo-inbox",
                                imap_password=dovecot.password, imap_ssl=False, smtp_host=smtp_sink.host,
                                smtp_port=smtp_sink.port, smtp_starttls=False, smtp_from="eva@shop.example")
    message = EmailMessage()
    message["From"] = "Ada <ada@example.org>"
    message["To"] = "eva@shop.example"
    message["Subject"] = "Flat tire"
    message["Message-ID"] = "<flat@example.org>"
    message.set_content(f"Hello,\n\n{QUESTION}\n\nThanks,\nAda")
    dovecot.deliver("demo-inbox", message.as_bytes())
    service = EmailService(settings, demo_engine, core)
    result = await service.poll_once()
    assert result.answered == 1
    (sent,) = smtp_sink.messages
    reply = last_reply(demo_engine)
    assert plain_of(sent).strip() == reply.text.strip() and sent["In-Reply-To"] == "<flat@example.org>"
    assert "15" in reply.text, reply.text
    assert reply.citations
    assert dovecot.flags("demo-inbox") == [("<flat@example.org>", True)]
