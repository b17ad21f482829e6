"""``eva flow check|import|export|list``: conversation flows written by hand, in JSON or YAML files.

A file holds one flow: ``name``, optional ``description``, ``agent`` (an agent's name), ``start_step`` and
``steps`` (see :mod:`voicebot.flows.spec`).  ``check`` runs every check the admin API runs and prints the
problem with the field path (``steps.3.collect.pattern: ...``); ``import`` creates the flow or, with
``--replace``, updates the one of the same name.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from voicebot.config import Settings
from voicebot.errors import InvalidInput

MAX_FILE_BYTES = 1024 * 1024


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("flow", help="conversation flows: check, import, export, list (JSON or YAML files)")
    actions = parser.add_subparsers(dest="flow_command", required=True, metavar="ACTION")
    check = actions.add_parser("check", help="validate a flow file (no database needed)")
    check.add_argument("path")
    check.set_defaults(func=check_cmd)
    load = actions.add_parser("import", help="create the flow in a file (or replace the one of that name)")
    load.add_argument("path")
    load.add_argument("--replace", action="store_true", help="update an existing flow of the same name")
    load.set_defaults(func=import_cmd)
    export = actions.add_parser("export", help="print a stored flow as JSON (or YAML with --yaml)")
    export.add_argument("name")
    export.add_argument("--yaml", action="store_true")
    export.set_defaults(func=export_cmd)
    actions.add_parser("list", help="list stored flows").set_defaults(func=list_cmd)


def read_flow_file(path: str) -> dict[str, Any]:
    """The flow in a .json/.yaml/.yml file, checked; InvalidInput names what is wrong."""
    file = Path(path)
    try:
        raw = file.read_bytes()[: MAX_FILE_BYTES + 1]
    except OSError as exc:
        raise InvalidInput(f"cannot read {path}: {exc.strerror}", field="path") from exc
    if len(raw) > MAX_FILE_BYTES:
        raise InvalidInput(f"{path} is larger than {MAX_FILE_BYTES} bytes", field="path")
    if file.suffix.lower() in (".yaml", ".yml"):
        import yaml

        try:
            data = yaml.safe_load(raw)
        except yaml.YAMLError as exc:
            raise InvalidInput(f"{path} is not valid YAML: {exc}", field="path") from exc
    else:
        try:
            data = json.loads(raw)
        except ValueError as exc:
            raise InvalidInput(f"{path} is not valid JSON: {exc}", field="path") from exc
    if not isinstance(data, dict):
        raise InvalidInput(f"{path} must hold one flow (an object with name, start_step and steps)", field="path")
    for key in ("name", "start_step", "steps"):
        if key not in data:
            raise InvalidInput(f"{path}: the flow has no {key}", field=key)
    unknown = set(data) - {"name", "description", "agent", "start_step", "steps", "enabled"}
    if unknown:
        raise InvalidInput(f"{path}: unknown field(s) {', '.join(sorted(unknown))}", field=sorted(unknown)[0])
    from admin_api.flows import check_flow

    if not isinstance(data["steps"], list):
        raise InvalidInput(f"{path}: steps must be a list", field="steps")
    check_flow(str(data["start_step"]), data["steps"])
    return data


def check_cmd(args: argparse.Namespace) -> int:
    data = read_flow_file(args.path)
    print(f"flow {data['name']!r}: {len(data['steps'])} steps, ok")
    return 0


def import_cmd(args: argparse.Namespace) -> int:
    import asyncio

    from admin_api.flows import FlowService
    from models import Agent, Flow
    from models.db import session_scope
    from voicebot.cli.db_cmd import open_engine
    from voicebot.flows.spec import parse_flow

    data = read_flow_file(args.path)
    settings = Settings.load()
    engine = open_engine(settings)
    steps = [s.model_dump(exclude_none=True, exclude_defaults=True)
             for s in parse_flow(data["start_step"], data["steps"]).steps]
    body: dict[str, Any] = {"name": data["name"], "description": str(data.get("description", ""))[:2000],
                            "start_step": data["start_step"], "steps": steps,
                            "enabled": bool(data.get("enabled", True))}
    from sqlmodel import select

    with session_scope(engine) as session:
        if data.get("agent"):
            agent_id = session.exec(select(Agent.id).where(Agent.name == data["agent"])).first()
            if agent_id is None:
                raise InvalidInput(f"there is no agent named {data['agent']!r}", field="agent")
            body["agent_id"] = agent_id
        existing = session.exec(select(Flow.id).where(Flow.name == data["name"])).first()
    service = FlowService(engine)
    if existing is not None:
        if not args.replace:
            print(f"eva: a flow named {data['name']!r} exists; use --replace to update it", file=sys.stderr)
            return 1
        changes = {k: v for k, v in body.items() if k != "name"}
        asyncio.run(service.update(int(existing), changes))
        print(f"flow {data['name']!r} updated ({len(steps)} steps)")
    else:
        asyncio.run(service.create(body))
        print(f"flow {data['name']!r} created ({len(steps)} steps)")
    return 0


def export_cmd(args: argparse.Namespace) -> int:
    from sqlmodel import select

    from models import Agent, Flow
    from models.db import session_scope
    from voicebot.cli.db_cmd import open_engine

    with session_scope(open_engine(Settings.load())) as session:
        flow = session.exec(select(Flow).where(Flow.name == args.name)).first()
        if flow is None:
            raise InvalidInput(f"there is no flow named {args.name!r}", field="name")
        data: dict[str, Any] = {"name": flow.name, "description": flow.description}
        if flow.agent_id is not None:
            agent = session.get(Agent, flow.agent_id)
            if agent is not None:
                data["agent"] = agent.name
        data.update(start_step=flow.start_step, steps=flow.steps, enabled=flow.enabled)
    if args.yaml:
        import yaml

        print(yaml.safe_dump(data, sort_keys=False, allow_unicode=True), end="")
    else:
        print(json.dumps(data, indent=2, ensure_ascii=False))
    return 0


def list_cmd(args: argparse.Namespace) -> int:
    from sqlmodel import col, select

    from models import Flow
    from models.db import session_scope
    from voicebot.cli.db_cmd import open_engine

    with session_scope(open_engine(Settings.load())) as session:
        for flow in session.exec(select(Flow).order_by(col(Flow.name))).all():
            state = "enabled" if flow.enabled else "disabled"
            print(f"{flow.name:30} {len(flow.steps):3} steps  {state}  {flow.description[:60]}")
    return 0
