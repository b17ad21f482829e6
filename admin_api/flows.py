"""Conversation flows: CRUD with the engine's checks, and the runs flows left in conversations.

A flow is a graph of steps (see :mod:`voicebot.flows.spec` for the format).  Saved flows are always sound:
the schema is the engine's own, and :func:`voicebot.flows.spec.check_flow` refuses unknown references,
variables not collected on every path before use, unreachable steps, loops that never wait for the caller,
missing recorded prompts and flows that cannot end -- each with the field path of the offending step.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlmodel import col, select

from models import Agent, Flow, FlowRun, Route, utcnow
from models.db import session_scope
from voicebot.errors import Conflict, InvalidInput, NotFound
from voicebot.flows import spec


def check_flow(start_step: str, steps: Sequence[Mapping[str, Any]],
               prompt_exists: Callable[[str], bool] | None = None) -> None:
    """Raise InvalidInput (with the offending field path) unless the steps form a valid flow (see
    :func:`voicebot.flows.spec.check_flow`: references, variables collected on every path before use,
    unreachable steps, loops that never wait, recorded prompts that exist, a reachable end)."""
    spec.check_flow(spec.parse_flow(start_step, [dict(s) for s in steps]), prompt_exists=prompt_exists)


class FlowService:
    def __init__(self, engine: Engine, prompt_exists: Callable[[str], bool] | None = None) -> None:
        self.engine = engine
        self.prompt_exists = prompt_exists
        """Whether a recorded prompt of that name exists (None: prompts are not checked)."""

    async def _run(self, fn: Any, *args: Any) -> Any:
        def transaction() -> Any:
            with session_scope(self.engine) as session:
                return fn(session, *args)

        return await asyncio.to_thread(transaction)

    async def list_flows(self) -> list[Flow]:
        result: list[Flow] = await self._run(
            lambda session: list(session.exec(select(Flow).order_by(col(Flow.name))).all())
        )
        return result

    async def get(self, flow_id: int) -> Flow:
        result: Flow = await self._run(_get, flow_id)
        return result

    async def create(self, data: dict[str, Any]) -> Flow:
        def create(session: Any) -> Flow:
            # In the worker thread: the prompt check stats files.
            check_flow(data["start_step"], data["steps"], self.prompt_exists)
            _check_refs(session, data)
            if session.exec(select(Flow.id).where(Flow.name == data["name"])).first() is not None:
                raise Conflict(f"a flow named {data['name']!r} already exists", field="name")
            flow = Flow(**data)
            session.add(flow)
            try:
                session.flush()
            except IntegrityError as exc:
                raise Conflict(f"a flow named {data['name']!r} already exists", field="name") from exc
            return flow

        result: Flow = await self._run(create)
        return result

    async def update(self, flow_id: int, changes: dict[str, Any]) -> Flow:
        def update(session: Any) -> Flow:
            flow = _get(session, flow_id)
            merged = {"start_step": flow.start_step, "steps": flow.steps, **changes}
            check_flow(merged["start_step"], merged["steps"], self.prompt_exists)
            _check_refs(session, changes)
            if (
                "name" in changes
                and session.exec(
                    select(Flow.id).where(Flow.name == changes["name"], Flow.id != flow_id)
                ).first()
                is not None
            ):
                raise Conflict(f"a flow named {changes['name']!r} already exists", field="name")
            for key, value in changes.items():
                setattr(flow, key, value)
            flow.updated_at = utcnow()
            session.add(flow)
            session.flush()
            return flow

        result: Flow = await self._run(update)
        return result

    async def delete(self, flow_id: int) -> None:
        def delete(session: Any) -> None:
            flow = _get(session, flow_id)
            routes = session.exec(select(Route.id).where(Route.flow_id == flow_id)).all()
            if routes:
                raise Conflict(
                    f"flow {flow.name!r} is used by {len(routes)} route(s); re-point them first",
                    field="routes",
                )
            # Its runs are history (the calls and conversations that ran it): keep them under the flow's name,
            # end the active ones.
            for run in session.exec(select(FlowRun).where(FlowRun.flow_id == flow_id)).all():
                run.flow_id = None
                if run.status == "active":
                    run.status, run.result, run.updated_at = "ended", "flow_deleted", utcnow()
                session.add(run)
            session.flush()
            session.delete(flow)
            session.flush()

        await self._run(delete)

    async def exists(self, flow_id: int) -> bool:
        result: bool = await self._run(lambda session: session.get(Flow, flow_id) is not None)
        return result


def _get(session: Any, flow_id: int) -> Flow:
    flow = session.get(Flow, flow_id)
    if flow is None:
        raise NotFound(f"flow {flow_id} does not exist", field="flow_id")
    return flow  # type: ignore[no-any-return]


def _check_refs(session: Any, data: Mapping[str, Any]) -> None:
    agent_id = data.get("agent_id")
    if agent_id is not None and session.get(Agent, agent_id) is None:
        raise InvalidInput(f"agent {agent_id} does not exist", field="agent_id")
