"""Conversation flows: CRUD with reference checks.

A flow is a list of steps; each step says something, optionally collects and validates an answer, and names
the next step.  Saved flows are always consistent: step ids unique, every ``next_step``/``branches``/
``on_invalid`` and the ``start_step`` point at a step of the flow, regular expressions compile, the agent
exists, and the flow can end (some step without a successor is reachable from the start).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlmodel import col, select

from models import Agent, Flow, Route, utcnow
from models.db import session_scope
from voicebot.errors import Conflict, InvalidInput, NotFound


def check_flow(start_step: str, steps: Sequence[Mapping[str, Any]]) -> None:
    """Raise InvalidInput (with the offending field path) unless the steps form a valid flow."""
    index: dict[str, int] = {}
    for position, step in enumerate(steps):
        if step["id"] in index:
            raise InvalidInput(f"step id {step['id']!r} is used twice", field=f"steps.{position}.id")
        index[step["id"]] = position
    if start_step not in index:
        raise InvalidInput(f"start_step {start_step!r} is not a step of this flow", field="start_step")
    for position, step in enumerate(steps):
        targets: list[tuple[str, str]] = []
        if step.get("next_step") is not None:
            targets.append(("next_step", step["next_step"]))
        if step.get("on_invalid") is not None:
            targets.append(("on_invalid", step["on_invalid"]))
        for answer, target in (step.get("branches") or {}).items():
            targets.append((f"branches.{answer}", target))
        for name, target in targets:
            if target not in index:
                raise InvalidInput(
                    f"step {step['id']!r}: {name} points at unknown step {target!r}",
                    field=f"steps.{position}.{name}",
                )
        validation = step.get("validation") or {}
        kind = validation.get("kind", "none")
        if kind == "regex":
            pattern = validation.get("pattern")
            if not pattern:
                raise InvalidInput(
                    "a regex validation needs a pattern", field=f"steps.{position}.validation.pattern"
                )
            try:
                re.compile(pattern)
            except re.error as exc:
                raise InvalidInput(
                    f"invalid regular expression: {exc}", field=f"steps.{position}.validation.pattern"
                ) from exc
        if kind == "choice" and not validation.get("choices"):
            raise InvalidInput(
                "a choice validation needs choices", field=f"steps.{position}.validation.choices"
            )
        low, high = validation.get("min_length"), validation.get("max_length")
        if low is not None and high is not None and low > high:
            raise InvalidInput(
                "min_length is greater than max_length", field=f"steps.{position}.validation.min_length"
            )
    # The flow must be able to finish: walk every edge from the start and look for a final step.
    seen: set[str] = set()
    todo = [start_step]
    can_end = False
    while todo:
        current = todo.pop()
        if current in seen:
            continue
        seen.add(current)
        step = steps[index[current]]
        successors = [
            t
            for t in [step.get("next_step"), step.get("on_invalid"), *(step.get("branches") or {}).values()]
            if t is not None
        ]
        if step.get("next_step") is None:
            can_end = True
        todo.extend(successors)
    if not can_end:
        raise InvalidInput("the flow never ends: no reachable step has next_step null", field="steps")


class FlowService:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

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
        check_flow(data["start_step"], data["steps"])

        def create(session: Any) -> Flow:
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
            check_flow(merged["start_step"], merged["steps"])
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
