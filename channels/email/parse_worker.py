"""Inbound mail is parsed in a child process with a time and a memory limit, never on the event loop.

:func:`channels.email.message.parse_email` is linear in the size of the message and capped, but it leans on the
stdlib (``email``, the codecs), whose worst cases are not ours to prove, and anything parsed in a thread of
the server still competes for its GIL with the event loop that clocks every call's audio.  So the e-mail poller
hands each raw message to :class:`ParseWorker`: one child Python process (``python -m
channels.email.parse_worker``), started lazily, kept for the poll round, which reads length-prefixed messages on
stdin and answers length-prefixed JSON on stdout.  Each message has a CPU-time budget of ``timeout`` seconds in
the child (``ITIMER_PROF``: the child runs niced, so on a busy machine it waits longer but is not refused for it):
over it the message is refused with ``email_parse_timeout``.  A child that does not answer within
``wall_timeout`` seconds (stuck in C code, or the machine starved) is killed, a fresh one parses the next message,
and that message is refused the same way.  The child's address space is capped (``RLIMIT_AS``), so a
decompression or allocation bomb ends in ``MemoryError`` there, not in the server.

Wire format: on start the child writes one byte (ready); then per message a request ``>I`` length + raw bytes
(``max_bytes`` and ``attachment_max_bytes`` are fixed per child on its command line) and an answer ``>I`` length
+ ``{"mail": {...}}`` or ``{"error": {"code": ..., "message": ...}}``.  The bytes of the attachments that are kept
travel base64 in the mail's ``attachments`` (together at most ``max_bytes``, so an answer is bounded by the
message limit; see :func:`answer_limit`).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import logging
import os
import signal
import struct
import sys
import traceback
from dataclasses import asdict, replace
from pathlib import Path
from types import TracebackType
from typing import Any

from channels.email.message import (
    MAX_ATTACHMENT_BYTES,
    MAX_LISTED_ATTACHMENTS,
    MAX_MESSAGE_BYTES,
    InboundEmail,
    MailAttachment,
    parse_email,
)
from voicebot.errors import EvaError, InvalidInput, Unavailable

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 10.0
DEFAULT_MEMORY_BYTES = 1024 * 1024 * 1024
MAX_ANSWER_BYTES = 4 * 1024 * 1024
"""An answer without attachment bytes is a few KB (the text is capped); the kept attachments' bytes come on top
(:func:`answer_limit`).  A larger answer means the child misbehaves."""
_LENGTH = struct.Struct(">I")
_READY = b"\x01"
START_TIMEOUT = 30.0
WALL_FACTOR = 6.0
"""The wall-clock backstop is this many times the CPU budget (at least a minute): the niced child may wait."""
_ROOT = Path(__file__).resolve().parents[2]


def answer_limit(max_bytes: int) -> int:
    """The largest answer a child may give for messages of at most ``max_bytes``: the fields, plus the kept
    attachments' bytes in base64 (together at most ``max_bytes`` decoded)."""
    return MAX_ANSWER_BYTES + (max_bytes // 3 + 1) * 4


class ParseWorker:
    """Parses raw messages in a child process, one at a time.  Use as an async context manager (the child is
    stopped on exit)."""

    module = "channels.email.parse_worker"
    """What the child runs (``python -m``)."""

    def __init__(self, *, max_bytes: int = MAX_MESSAGE_BYTES, timeout: float = DEFAULT_TIMEOUT,
                 wall_timeout: float | None = None, memory_bytes: int = DEFAULT_MEMORY_BYTES,
                 attachment_max_bytes: int = MAX_ATTACHMENT_BYTES) -> None:
        self.max_bytes = max_bytes
        self.attachment_max_bytes = attachment_max_bytes
        """Attachments larger than this (decoded) are listed without their bytes."""
        self.timeout = timeout
        """CPU seconds one message may take to parse."""
        self.wall_timeout = wall_timeout if wall_timeout is not None else max(60.0, WALL_FACTOR * timeout)
        """Seconds the child may take to answer at all."""
        self.memory_bytes = memory_bytes
        self._process: asyncio.subprocess.Process | None = None
        self._lock = asyncio.Lock()
        self.started = 0
        """Children started so far (one more after each kill)."""

    async def __aenter__(self) -> ParseWorker:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()

    async def close(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        if process.stdin is not None:
            process.stdin.close()  # EOF: the child leaves its loop
        try:
            await asyncio.wait_for(process.wait(), timeout=2)
        except TimeoutError:
            await _kill(process)

    async def parse(self, raw: bytes) -> InboundEmail:
        """The parsed message; InvalidInput when it is refused (too large, unparseable, too slow to parse),
        Unavailable when no parser process can start."""
        if len(raw) > self.max_bytes:  # no need to ship it to the child to learn that
            raise InvalidInput(f"the e-mail is {len(raw)} bytes, more than the {self.max_bytes} allowed",
                               code="email_too_large")
        async with self._lock:
            process = await self._child()
            try:
                answer = await asyncio.wait_for(self._exchange(process, raw), timeout=self.wall_timeout)
            except TimeoutError as exc:
                await self._discard(process)
                raise InvalidInput(f"the e-mail parser gave no answer within {self.wall_timeout:g} s",
                                   code="email_parse_timeout") from exc
            except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
                await self._discard(process)
                raise InvalidInput(f"the e-mail parser stopped on this message ({type(exc).__name__})",
                                   code="email_parser_crashed") from exc
            except BaseException:
                # Cancelled mid-exchange: the child's answer would be read as the next message's.
                await self._discard(process)
                raise
        return _answer_to_mail(answer)

    async def _child(self) -> asyncio.subprocess.Process:
        if self._process is not None and self._process.returncode is None:
            return self._process
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(_ROOT), env.get("PYTHONPATH", "")) if p)
        try:
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", self.module, str(self.max_bytes), str(self.memory_bytes), repr(self.timeout),
                str(self.attachment_max_bytes), stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
                env=env, cwd=str(_ROOT))
        except OSError as exc:
            raise Unavailable(f"the e-mail parser process cannot start: {exc}",
                              code="email_parser_unavailable") from exc
        assert process.stdout is not None
        try:
            # The child says it is ready once it has imported the parser: a child that cannot start is this
            # installation's problem (the mail waits unseen), not the next message's (which would be refused).
            ready = await asyncio.wait_for(process.stdout.readexactly(1), timeout=START_TIMEOUT)
        except (TimeoutError, asyncio.IncompleteReadError) as exc:
            await _kill(process)
            raise Unavailable("the e-mail parser process did not start (see its errors in the log)",
                              code="email_parser_unavailable") from exc
        if ready != _READY:
            await _kill(process)
            raise Unavailable("the e-mail parser process answered nonsense on start", code="email_parser_unavailable")
        self._process = process
        self.started += 1
        return process

    async def _exchange(self, process: asyncio.subprocess.Process, raw: bytes) -> dict[str, Any]:
        assert process.stdin is not None and process.stdout is not None
        process.stdin.write(_LENGTH.pack(len(raw)) + raw)
        await process.stdin.drain()
        (size,) = _LENGTH.unpack(await process.stdout.readexactly(_LENGTH.size))
        if size > answer_limit(self.max_bytes):
            raise ValueError(f"an answer of {size} bytes")
        answer = json.loads(await process.stdout.readexactly(size))
        if not isinstance(answer, dict):
            raise ValueError("an answer that is not an object")
        return answer

    async def _discard(self, process: asyncio.subprocess.Process) -> None:
        self._process = None
        await _kill(process)


async def _kill(process: asyncio.subprocess.Process) -> None:
    with contextlib.suppress(ProcessLookupError):  # it already ended
        process.kill()
    await process.wait()


def _answer_to_mail(answer: dict[str, Any]) -> InboundEmail:
    error = answer.get("error")
    if answer.get("traceback"):
        log.debug("the e-mail parser failed unexpectedly:\n%s", answer["traceback"])
    if isinstance(error, dict):
        raise InvalidInput(str(error.get("message", "the e-mail cannot be parsed")),
                           code=str(error.get("code", "email_unparseable")),
                           field=str(error["field"]) if error.get("field") else None)
    fields = answer.get("mail")
    if not isinstance(fields, dict):
        raise InvalidInput("the e-mail parser gave no answer", code="email_parser_crashed")
    try:
        return mail_from_wire(fields)
    except (TypeError, KeyError, ValueError, binascii.Error) as exc:
        raise InvalidInput("the e-mail parser gave a malformed answer", code="email_parser_crashed") from exc


def mail_to_wire(mail: InboundEmail) -> dict[str, Any]:
    """``mail`` as JSON-safe fields (attachment bytes in base64)."""
    fields = asdict(replace(mail, attachments=()))
    fields["attachments"] = [
        {**asdict(replace(a, data=None)), "data": base64.b64encode(a.data).decode() if a.data is not None else None}
        for a in mail.attachments]
    return fields


def mail_from_wire(fields: dict[str, Any]) -> InboundEmail:
    """The mail :func:`mail_to_wire` wrote (TypeError, KeyError, ValueError when it is not that)."""
    attachments = []
    for row in list(fields.get("attachments") or ())[:MAX_LISTED_ATTACHMENTS]:
        data = row["data"]
        attachments.append(MailAttachment(**{**row, "data": base64.b64decode(data, validate=True)
                                             if isinstance(data, str) else None}))
    return InboundEmail(**{**fields, "references": tuple(fields["references"]), "to": tuple(fields["to"]),
                           "cc": tuple(fields.get("cc") or ()), "delivered_to": tuple(fields.get("delivered_to") or ()),
                           "attachments": tuple(attachments)})


# ---------------------------------------------------------------------------------------------- the child
class _OverBudget(BaseException):
    """Raised in the child when a message used up its CPU budget.  A BaseException, so that no ``except
    Exception`` in the parser can take it for a parse error and carry on."""


def _over_budget(signum: int, frame: object) -> None:
    # Armed again first: should some library code swallow this one, the next fires soon after.
    signal.setitimer(signal.ITIMER_PROF, 0.05)
    raise _OverBudget


def _serve(max_bytes: int, budget: float, attachment_max_bytes: int = MAX_ATTACHMENT_BYTES) -> None:
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    signal.signal(signal.SIGPROF, _over_budget)
    stdout.write(_READY)
    stdout.flush()
    while True:
        head = stdin.read(_LENGTH.size)
        if len(head) < _LENGTH.size:
            return  # the parent closed the pipe
        (size,) = _LENGTH.unpack(head)
        raw = stdin.read(size)
        try:
            signal.setitimer(signal.ITIMER_PROF, budget)
            try:
                answer = _parse_answer(raw, max_bytes, attachment_max_bytes)
            finally:
                signal.setitimer(signal.ITIMER_PROF, 0)
        except _OverBudget:
            answer = {"error": {"code": "email_parse_timeout",
                                "message": f"parsing the e-mail took more than {budget:g} s of CPU time"}}
        data = json.dumps(answer).encode()
        stdout.write(_LENGTH.pack(len(data)) + data)
        stdout.flush()


def _parse_answer(raw: bytes, max_bytes: int, attachment_max_bytes: int = MAX_ATTACHMENT_BYTES) -> dict[str, Any]:
    try:
        return {"mail": mail_to_wire(parse_email(raw, max_bytes=max_bytes,
                                                 attachment_max_bytes=attachment_max_bytes))}
    except EvaError as exc:
        return {"error": exc.to_dict()}
    except MemoryError:
        return {"error": {"code": "email_too_large", "message": "parsing the e-mail ran out of memory"}}
    except Exception as exc:  # a parser bug: reported to the parent, the child serves on
        # The traceback may quote the mail, which is caller data: the parent logs it at DEBUG only.
        return {"error": {"code": "email_unparseable",
                          "message": f"the e-mail cannot be parsed ({type(exc).__name__})"},
                "traceback": traceback.format_exc()[-8000:]}


def main(argv: list[str]) -> None:
    max_bytes, memory, budget = int(argv[0]), int(argv[1]), float(argv[2])
    attachment_max_bytes = int(argv[3]) if len(argv) > 3 else MAX_ATTACHMENT_BYTES
    # Behind the calls' media and speech work for the CPU: a slow parse delays mail, never audio (the budget is
    # CPU time, so waiting for the CPU does not count against it).
    os.nice(10)
    if memory > 0:
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    _serve(max_bytes, budget, attachment_max_bytes)


if __name__ == "__main__":
    main(sys.argv[1:])
