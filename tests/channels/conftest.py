"""Fixtures of the channel tests: migrated databases with the demo agent, a scripted language model for the
mechanics, speaking Ollama's wire format (what the agent says is beside the point there; the real embedded model
answers in the end-to-end tests), the local Graph API server, and real mail servers: aiosmtpd (SMTP) in-process
and Debian's dovecot (IMAP) started once per session with a private configuration."""

from __future__ import annotations

import contextlib
import imaplib
import os
import pwd
import re
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from sqlalchemy.engine import Engine

from models.db import make_engine, upgrade
from tests.conftest import stop_process
from tests.fakes.graph_server import FakeGraph
from tests.fakes.ollama_server import ChatScript, FakeOllama
from voicebot.agent.demo import seed_demo_rows
from voicebot.config import Settings
from voicebot.llm.base import ChatMessage, GenerationOptions, LanguageModel, LlmEvent, ToolSpec
from voicebot.llm.embedded import EmbeddedLLM
from voicebot.llm.ollama import OllamaLLM


# ---------------------------------------------------------------------------------------------- a scripted model
class ScriptedLLM(LanguageModel):
    """Answers ``reply(messages)`` word by word and records every request (to check memory and call counts).

    The words go over Ollama's wire format: each generation starts a :class:`FakeOllama` whose answer is
    ``reply`` of the messages it was sent, and streams it as NDJSON through the official client and Eva's
    :class:`OllamaLLM`, so the channel code under test meets a real backend's parsing, not an in-process shortcut.
    ``supports_tools`` stays False: what these tests script is text."""

    name = "scripted"
    supports_tools = False

    def __init__(self, reply: Callable[[Sequence[ChatMessage]], str] | None = None, *,
                 delay: float = 0.0) -> None:
        self.reply = reply or (lambda messages: f"You said: {messages[-1].content}")
        self.delay = delay
        self.calls: list[list[ChatMessage]] = []

    @property
    def default_model(self) -> str:
        return "scripted"

    def _answer(self, body: dict[str, Any]) -> ChatScript:
        sent = [ChatMessage(m["role"], str(m.get("content", ""))) for m in body["messages"]]
        words = tuple(re.findall(r"\S+\s*", self.reply(sent)))
        return ChatScript(chunks=words, delay=self.delay,
                          prompt_eval_count=sum(len(m.content.split()) for m in sent))

    async def stream(self, messages: Sequence[ChatMessage], *, tools: Sequence[ToolSpec] = (),
                     knowledge: Sequence[str] = (),
                     options: GenerationOptions | None = None) -> AsyncGenerator[LlmEvent, None]:
        self.calls.append(list(messages))
        wire_options = replace(options or GenerationOptions(), model="llama3.2")
        fake = FakeOllama(reply=self._answer)
        client: OllamaLLM | None = None
        try:
            await fake.start()
            client = OllamaLLM(Settings(), url=fake.url, model="llama3.2", timeout=30)
            async with contextlib.aclosing(client.stream(messages, knowledge=knowledge,
                                                         options=wire_options)) as events:
                async for event in events:
                    yield event
        finally:
            if client is not None:
                await client.close()
            # Inside a cancelled generation aiohttp's shutdown may time out instead: the cancellation is what must
            # travel on, not a TimeoutError the agent would take for a slow model.
            with contextlib.suppress(Exception):
                await fake.stop()

    async def list_models(self) -> list[str]:
        return ["scripted"]

    async def close(self) -> None:
        return None


# ---------------------------------------------------------------------------------------------- databases
def migrated(url: str) -> Engine:
    engine = make_engine(url)
    upgrade(engine)
    seed_demo_rows(engine)
    return engine


@pytest.fixture
def sqlite_db(tmp_path: Path) -> Iterator[Engine]:
    engine = migrated(f"sqlite:///{tmp_path / 'channels.db'}")
    yield engine
    engine.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def any_db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    """The demo agent in a fresh SQLite file, then in a fresh real PostgreSQL database."""
    url = f"sqlite:///{tmp_path / 'channels.db'}" if request.param == "sqlite" else request.getfixturevalue(
        "postgres_url")
    engine = migrated(url)
    yield engine
    engine.dispose()


@pytest.fixture
async def graph() -> AsyncIterator[FakeGraph]:
    async with FakeGraph() as fake:
        yield fake


# ---------------------------------------------------------------------------------------------- SMTP
@dataclass
class SmtpSink:
    """A real SMTP server (aiosmtpd) on 127.0.0.1 that keeps every message it accepts."""

    host: str
    port: int
    messages: list[EmailMessage] = field(default_factory=list)
    envelopes: list[tuple[str, list[str]]] = field(default_factory=list)
    received: threading.Event = field(default_factory=threading.Event)
    """Set when a message arrives (the server runs in its own thread)."""

    def by_recipient(self, address: str) -> list[EmailMessage]:
        return [m for (_from, rcpts), m in zip(self.envelopes, self.messages, strict=True) if address in rcpts]


class KeepMessages:
    """aiosmtpd handler: refuses recipients named nobody@, keeps every accepted message in the sink."""

    def __init__(self, sink: SmtpSink) -> None:
        self.sink = sink

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str,
                          rcpt_options: list[str]) -> str:
        if address.startswith("nobody@"):  # a recipient the server refuses for good
            return "550 5.1.1 <" + address + ">: Recipient address rejected: User unknown"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        message = message_from_bytes(envelope.original_content or envelope.content, policy=policy.default)
        assert isinstance(message, EmailMessage)
        self.sink.envelopes.append((envelope.mail_from, list(envelope.rcpt_tos)))
        self.sink.messages.append(message)
        self.sink.received.set()
        return "250 Message accepted for delivery"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture
def smtp_sink() -> Iterator[SmtpSink]:
    sink = SmtpSink("127.0.0.1", free_port())
    controller = Controller(KeepMessages(sink), hostname=sink.host, port=sink.port)
    controller.start()
    try:
        yield sink
    finally:
        controller.stop()


# ---------------------------------------------------------------------------------------------- IMAP (dovecot)
DOVECOT = shutil.which("dovecot") or "/usr/sbin/dovecot"


@dataclass
class Dovecot:
    """A private dovecot (IMAP only, plaintext on 127.0.0.1, any user with ``password``, maildir per user)."""

    host: str
    port: int
    password: str
    root: Path

    def imap(self, user: str) -> imaplib.IMAP4:
        connection = imaplib.IMAP4(self.host, self.port, timeout=10)
        connection.login(user, self.password)
        return connection

    def deliver(self, user: str, raw: bytes, *, seen: bool = False) -> None:
        """Put a message into ``user``'s INBOX (IMAP APPEND), unseen unless ``seen``."""
        connection = self.imap(user)
        try:
            status, data = connection.append("INBOX", "(\\Seen)" if seen else None, None, raw)
            assert status == "OK", data
        finally:
            connection.logout()

    def flags(self, user: str) -> list[tuple[str, bool]]:
        """(Message-ID, seen) of every message in ``user``'s INBOX, in order."""
        connection = self.imap(user)
        try:
            connection.select("INBOX")
            status, data = connection.uid("SEARCH", "ALL")
            assert status == "OK"
            result = []
            for uid in (data[0] or b"").split():
                status, fetched = connection.uid("FETCH", uid.decode(),
                                                 "(FLAGS BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)])")
                assert status == "OK"
                head = next(item for item in fetched if isinstance(item, tuple))
                header = message_from_bytes(head[1], policy=policy.default)
                result.append((str(header.get("Message-ID", "")), b"\\Seen" in head[0]))
            return result
        finally:
            connection.logout()


def _dovecot_config(root: Path, port: int, password: str) -> str:
    if os.geteuid() == 0:
        # Dovecot refuses to run mail processes as root: the package's unprivileged users do the work.
        internal, login, mail = "dovecot", "dovenull", "dovecot"
    else:
        internal = login = mail = pwd.getpwuid(os.geteuid()).pw_name
    uid = pwd.getpwnam(mail).pw_uid
    return f"""
base_dir = {root}/run
state_dir = {root}/state
log_path = {root}/dovecot.log
protocols = imap
listen = 127.0.0.1
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain login
mail_location = maildir:{root}/mail/%u
mail_uid = {mail}
mail_gid = {pwd.getpwnam(mail).pw_gid}
first_valid_uid = {uid}
last_valid_uid = {uid}
default_internal_user = {internal}
default_login_user = {login}
mail_fsync = never
auth_failure_delay = 0
passdb {{
  driver = static
  args = password={password}
}}
userdb {{
  driver = static
  args = home={root}/mail/%u
}}
service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {port}
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
service stats {{
  inet_listener http {{
    port = 0
  }}
}}
"""


@pytest.fixture(scope="session")
def dovecot() -> Iterator[Dovecot]:
    if not Path(DOVECOT).exists():
        pytest.fail("dovecot is not installed: run `make setup` (Debian package dovecot-imapd)")
    root = Path(tempfile.mkdtemp(prefix="eva-dovecot-"))
    root.chmod(0o755)  # the unprivileged dovecot processes must reach their files
    for sub in ("run", "state", "mail"):
        (root / sub).mkdir()
    if os.geteuid() == 0:
        shutil.chown(root / "mail", "dovecot", "dovecot")
    port = free_port()
    server = Dovecot("127.0.0.1", port, "imap-test-password", root)
    config = root / "dovecot.conf"
    config.write_text(_dovecot_config(root, port, server.password))
    process = subprocess.Popen([DOVECOT, "-F", "-c", str(config)], stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 20
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
                break
            if process.poll() is not None or time.monotonic() > deadline:
                log = (root / "dovecot.log").read_text() if (root / "dovecot.log").exists() else ""
                stderr = process.stderr.read().decode() if process.stderr and process.poll() is not None else ""
                pytest.fail(f"dovecot did not start: {stderr} {log}")
            time.sleep(0.05)
        yield server
    finally:
        stop_server(process, root)


def stop_server(process: subprocess.Popen[bytes], root: Path) -> None:
    """End a test server process (terminate, then kill after 10 s) and remove its folder."""
    stop_process(process)
    if process.stderr is not None:
        process.stderr.close()
    shutil.rmtree(root, ignore_errors=True)


def plain_of(message: EmailMessage) -> str:
    """A sent message's plain-text body (replies are text + HTML alternatives; clients read either)."""
    part = message.get_body(("plain",))
    assert part is not None, "the message has no text/plain part"
    return str(part.get_content()).replace("\r\n", "\n")


def all_text_of(message: EmailMessage) -> str:
    """Every text part of a message (plain and HTML): what a recipient could read in it."""
    return "\n".join(str(p.get_content()) for p in message.walk() if p.get_content_maintype() == "text")


@pytest.fixture(scope="module")
def qwen() -> EmbeddedLLM:
    """The default embedded model (Qwen2.5 0.5B), loaded once per test process."""
    from tests.embedded_model import shared_qwen_llm

    return shared_qwen_llm()
