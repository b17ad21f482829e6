"""``eva agent list|create|show|update|delete``: manage agents (persona, voice, model settings, greeting)."""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path
from typing import Any

from models import Agent
from voicebot.config import Settings
from voicebot.errors import Conflict, InvalidInput

# CLI option → agent field, for create and update.
_FIELD_OPTIONS = {
    "description": "description",
    "persona": "persona",
    "language": "language",
    "voice": "voice",
    "model": "llm_model",
    "temperature": "temperature",
    "max_tokens": "max_tokens",
    "greeting": "greeting",
    "fallback": "fallback_message",
}


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("agent", help="manage agents: list, create, show, update, delete")
    actions = parser.add_subparsers(dest="agent_command", required=True, metavar="ACTION")

    listing = actions.add_parser("list", help="list agents")
    listing.add_argument("--json", action="store_true", help="print JSON")
    listing.set_defaults(func=list_agents)

    create = actions.add_parser("create", help="create an agent")
    create.add_argument("name", help="unique name (letters, digits, _ - .)")
    _field_arguments(create)
    create.add_argument("--inactive", action="store_true", help="create it switched off")
    create.add_argument("--json", action="store_true", help="print the agent as JSON")
    create.set_defaults(func=create_agent)

    show = actions.add_parser("show", help="show one agent")
    show.add_argument("name")
    show.add_argument("--json", action="store_true", help="print JSON")
    show.set_defaults(func=show_agent)

    update = actions.add_parser("update", help="change an agent (only the options given)")
    update.add_argument("name")
    update.add_argument("--rename", metavar="NEW_NAME", help="give the agent a new name")
    _field_arguments(update)
    state = update.add_mutually_exclusive_group()
    state.add_argument("--active", dest="active", action="store_true", default=None, help="switch on")
    state.add_argument("--inactive", dest="active", action="store_false", help="switch off")
    update.add_argument("--json", action="store_true", help="print the agent as JSON")
    update.set_defaults(func=update_agent)

    delete = actions.add_parser("delete", help="delete an agent")
    delete.add_argument("name")
    delete.add_argument("--force", action="store_true",
                        help="also delete the routes pointing at it and its knowledge documents")
    delete.set_defaults(func=delete_agent)


def _field_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--description", help="what the agent is for")
    persona = parser.add_mutually_exclusive_group()
    persona.add_argument("--persona", help="the system prompt")
    persona.add_argument("--persona-file", metavar="FILE", help="read the system prompt from FILE")
    parser.add_argument("--language", help="language of its calls and default for messages, e.g. en, es, es-MX")
    parser.add_argument("--languages", help="further languages it answers messages in, comma-separated (e.g. en,fr);"
                                            " '' for none")
    parser.add_argument("--voice", help="Piper voice (.onnx path); empty for the default")
    parser.add_argument("--model", help="LLM model name; empty for the backend's default")
    parser.add_argument("--temperature", type=float, help="sampling temperature 0-2")
    parser.add_argument("--max-tokens", type=int, help="longest reply in tokens")
    parser.add_argument("--greeting", help="first sentence of a call")
    parser.add_argument("--fallback", help="what the agent says when the LLM fails")


def _fields(args: argparse.Namespace) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for option, name in _FIELD_OPTIONS.items():
        value = getattr(args, option, None)
        if value is not None:
            values[name] = value
    if getattr(args, "languages", None) is not None:
        values["languages"] = [t.strip() for t in args.languages.split(",") if t.strip()]
    if getattr(args, "persona_file", None):
        path = Path(args.persona_file)
        try:
            values["persona"] = path.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise InvalidInput(f"cannot read {path}: {exc}", field="persona_file") from exc
    return values


def agent_dict(agent: Agent) -> dict[str, Any]:
    return json.loads(agent.model_dump_json())  # type: ignore[no-any-return]


def _print_agent(agent: Agent, as_json: bool) -> None:
    if as_json:
        print(json.dumps(agent_dict(agent), indent=2))
        return
    data = agent_dict(agent)
    width = max(len(key) for key in data)
    for key, value in data.items():
        print(f"{key:<{width}}  {value}")


def _store() -> Any:
    from voicebot.agent.store import AgentStore
    from voicebot.cli.db_cmd import open_engine

    return AgentStore(open_engine(Settings.load()))


def list_agents(args: argparse.Namespace) -> int:
    store = _store()
    try:
        agents: list[Agent] = asyncio.run(store.list_agents())
    finally:
        store.engine.dispose()
    if args.json:
        print(json.dumps([agent_dict(a) for a in agents], indent=2))
        return 0
    if not agents:
        print("no agents (create one with `eva agent create NAME`)")
        return 0
    print(f"{'NAME':<24} {'ACTIVE':<7} {'LANG':<5} {'MODEL':<20} DESCRIPTION")
    for agent in agents:
        print(f"{agent.name:<24} {'yes' if agent.active else 'no':<7} {agent.language:<5} "
              f"{agent.llm_model or '(default)':<20} {agent.description}")
    return 0


def create_agent(args: argparse.Namespace) -> int:
    fields = {"name": args.name, **_fields(args)}
    if args.inactive:
        fields["active"] = False
    store = _store()
    try:
        agent: Agent = asyncio.run(store.create_agent(fields))
    finally:
        store.engine.dispose()
    if args.json:
        _print_agent(agent, True)
    else:
        print(f"created agent {agent.name} (id {agent.id})")
    return 0


def show_agent(args: argparse.Namespace) -> int:
    store = _store()
    try:
        agent: Agent = asyncio.run(store.get_agent_by_name(args.name))
    finally:
        store.engine.dispose()
    _print_agent(agent, args.json)
    return 0


def update_agent(args: argparse.Namespace) -> int:
    changes = _fields(args)
    if args.rename is not None:
        changes["name"] = args.rename
    if args.active is not None:
        changes["active"] = args.active
    if not changes:
        raise InvalidInput("nothing to change: give at least one option (see `eva agent update -h`)")
    store = _store()

    async def change() -> Agent:
        agent = await store.get_agent_by_name(args.name)
        result: Agent = await store.update_agent(agent.id, changes)
        return result

    try:
        agent = asyncio.run(change())
    finally:
        store.engine.dispose()
    if args.json:
        _print_agent(agent, True)
    else:
        print(f"updated agent {agent.name}: {', '.join(sorted(changes))}")
    return 0


def delete_agent(args: argparse.Namespace) -> int:
    settings = Settings.load()
    store = _store()

    async def remove() -> tuple[int, int]:
        agent = await store.get_agent_by_name(args.name)
        routes = documents = 0
        if args.force:
            # What --force does not remove must refuse the delete before anything is removed: a designer's
            # flows are never deleted with an agent.
            from sqlmodel import Session, func, select

            from models import Flow

            with Session(store.engine) as session:
                flows = session.exec(select(func.count()).select_from(Flow).where(Flow.agent_id == agent.id)).one()
            if flows:
                raise Conflict(f"agent {args.name!r} is used by {flows} flow(s); re-point them first "
                               "(nothing was deleted)", field="flows")
            for route in await store.list_routes():
                if route.agent_id == agent.id:
                    await store.delete_route(route.id)
                    routes += 1
            documents = await _delete_knowledge(settings, store, agent.id)
        await store.delete_agent(agent.id)
        return routes, documents

    try:
        routes, documents = asyncio.run(remove())
    finally:
        store.engine.dispose()
    extra = f" with {routes} route(s) and {documents} document(s)" if args.force else ""
    print(f"deleted agent {args.name}{extra}")
    return 0


async def _delete_knowledge(settings: Settings, store: Any, agent_id: int) -> int:
    from rag import KnowledgeBase

    kb = KnowledgeBase(settings, store.engine)
    try:
        removed: int = await kb.delete_agent_knowledge(agent_id)
    finally:
        await kb.close()
    return removed
