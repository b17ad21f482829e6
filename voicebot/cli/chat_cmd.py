"""``eva chat --agent NAME``: talk to an agent in the terminal, with streaming replies and their sources.

Reads one message per line from stdin (so it also works with a pipe: ``echo "When are you open?" | eva chat
--agent demo``) and stops at end of input or ``/quit``.  The conversation is stored like any other channel's
(channel ``chat``); ``--phone``/``--email`` chat as that contact, so memory from calls and e-mails applies.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
from typing import TYPE_CHECKING, TextIO

from voicebot.config import Settings

if TYPE_CHECKING:
    from voicebot.agent.core import ReplyDone

QUIT = {"/quit", "/exit"}


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("chat", help="talk to an agent in the terminal (streaming, with sources)")
    parser.add_argument("--agent", required=True, metavar="NAME", help="the agent to talk to")
    who = parser.add_mutually_exclusive_group()
    who.add_argument("--phone", help="chat as the contact with this phone number (shares its memory)")
    who.add_argument("--email", help="chat as the contact with this e-mail address")
    parser.add_argument("--no-sources", action="store_true", help="do not print the sources of answers")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    return asyncio.run(chat(args, sys.stdin, sys.stdout))


async def chat(args: argparse.Namespace, stdin: TextIO, stdout: TextIO) -> int:
    from rag import KnowledgeBase
    from voicebot.agent.core import AgentCore, ReplyDone
    from voicebot.agent.store import AgentStore
    from voicebot.cli.db_cmd import open_engine
    from voicebot.llm import TextDelta, create_llm

    settings = Settings.load()
    engine = await asyncio.to_thread(open_engine, settings)
    store = AgentStore(engine)
    agent = await store.get_agent_by_name(args.agent)
    contact = None
    if args.phone or args.email:
        contact = await store.find_or_create_contact(phone=args.phone, email=args.email)
    interactive = stdin.isatty()
    async with contextlib.AsyncExitStack() as stack:
        stack.callback(engine.dispose)
        llm = await create_llm(settings)
        stack.push_async_callback(llm.close)
        kb = KnowledgeBase(settings, engine)
        stack.push_async_callback(kb.close)
        core = AgentCore(settings, engine, llm, kb)
        conversation_id: int | None = None
        if interactive:
            stdout.write(f"{agent.name}: {agent.greeting}\n(type /quit to leave)\n")
        while True:
            if interactive:
                stdout.write("you> ")
                stdout.flush()
            line = await asyncio.to_thread(stdin.readline)
            if not line:
                break
            text = line.strip()
            if not text:
                continue
            if text in QUIT:
                break
            stdout.write(f"{agent.name}> ")
            stdout.flush()
            async with contextlib.aclosing(core.reply(agent, contact, "chat", text,
                                                      conversation_id=conversation_id)) as events:
                async for event in events:
                    if isinstance(event, TextDelta):
                        stdout.write(event.text)
                        stdout.flush()
                    elif isinstance(event, ReplyDone):
                        conversation_id = event.conversation_id
                        stdout.write("\n")
                        if event.citations and not args.no_sources:
                            stdout.write(sources_text(event) + "\n")
                        stdout.flush()
    return 0


def sources_text(done: ReplyDone) -> str:
    """The citations of a reply as indented lines."""
    parts = []
    for number, citation in enumerate(done.citations, 1):
        page = f", page {citation.page}" if citation.page is not None else ""
        parts.append(f"  [{number}] {citation.title or 'untitled'}{page} (chunk {citation.ordinal}, "
                     f"similarity {citation.similarity:.2f})")
    return "  sources:\n" + "\n".join(parts)
