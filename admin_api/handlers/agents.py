"""Agents (persona + model settings) and routes (DID → agent or flow)."""

from __future__ import annotations

import asyncio
import time

from admin_api.framework import ApiRouter, Ctx
from admin_api.schemas import (
    AgentCreate,
    AgentOut,
    AgentTestOut,
    AgentTestRequest,
    AgentUpdate,
    BaseModelsOut,
    RouteCreate,
    RouteOut,
    RouteUpdate,
    SourceOut,
)
from voicebot.errors import InvalidInput, LlmError

router = ApiRouter("agents")
routes = ApiRouter("routes")

LIST_MODELS_TIMEOUT = 10.0


@router.get("/agents", role="viewer", summary="List agents")
async def list_agents(ctx: Ctx) -> list[AgentOut]:
    return [AgentOut.model_validate(a) for a in await ctx.services.agents.list_agents()]


@router.post("/agents", role="designer", status=201, errors=(409,), summary="Create an agent")
async def create_agent(ctx: Ctx, body: AgentCreate) -> AgentOut:
    return AgentOut.model_validate(await ctx.services.agents.create_agent(body.model_dump()))


@router.get(
    "/agents/base-models",
    role="viewer",
    errors=(502, 503),
    summary="Models the LLM backend offers (for an agent's llm_model)",
)
async def base_models(ctx: Ctx) -> BaseModelsOut:
    llm = ctx.services.need_llm()
    try:
        models = await asyncio.wait_for(llm.list_models(), LIST_MODELS_TIMEOUT)
    except TimeoutError as exc:
        raise LlmError(
            f"the {llm.name} backend did not list its models within {LIST_MODELS_TIMEOUT:.0f}s",
            code="llm_timeout",
        ) from exc
    return BaseModelsOut(backend=llm.name, default_model=llm.default_model, models=sorted(models))


@router.get("/agents/{agent_id}", role="viewer", summary="Get an agent")
async def get_agent(ctx: Ctx, agent_id: int) -> AgentOut:
    return AgentOut.model_validate(await ctx.services.agents.get_agent(agent_id))


@router.patch("/agents/{agent_id}", role="designer", errors=(409,), summary="Change an agent")
async def update_agent(ctx: Ctx, agent_id: int, body: AgentUpdate) -> AgentOut:
    changes = body.model_dump(exclude_unset=True)
    return AgentOut.model_validate(await ctx.services.agents.update_agent(agent_id, changes))


@router.delete(
    "/agents/{agent_id}",
    role="designer",
    errors=(409,),
    summary="Delete an agent (refused while routes or knowledge documents use it)",
)
async def delete_agent(ctx: Ctx, agent_id: int) -> None:
    await ctx.services.agents.delete_agent(agent_id)


@router.post("/agents/{agent_id}/activate", role="designer", summary="Let the agent take calls and messages")
async def activate_agent(ctx: Ctx, agent_id: int) -> AgentOut:
    return AgentOut.model_validate(await ctx.services.agents.update_agent(agent_id, {"active": True}))


@router.post(
    "/agents/{agent_id}/deactivate", role="designer", summary="Stop the agent taking new calls and messages"
)
async def deactivate_agent(ctx: Ctx, agent_id: int) -> AgentOut:
    return AgentOut.model_validate(await ctx.services.agents.update_agent(agent_id, {"active": False}))


@router.post(
    "/agents/{agent_id}/test",
    role="designer",
    errors=(503,),
    summary="One text turn with the agent: reply, knowledge sources and timings",
)
async def test_agent(ctx: Ctx, agent_id: int, body: AgentTestRequest) -> AgentTestOut:
    from voicebot.agent.core import AgentCore

    llm = ctx.services.need_llm()
    agent = await ctx.services.agents.get_agent(agent_id)
    if not body.message.strip():
        raise InvalidInput("the message is empty", field="message")
    core = AgentCore(ctx.services.settings, ctx.services.engine, llm, ctx.services.kb)
    started = time.monotonic()
    done = await core.respond(agent, None, "chat", body.message, external_id="admin-api-test")
    timings = {
        k: float(v) for k, v in done.timings.items() if isinstance(v, int | float) and not isinstance(v, bool)
    }
    timings.setdefault("total_ms", (time.monotonic() - started) * 1000)
    return AgentTestOut(
        reply=done.text,
        sources=[SourceOut.model_validate(c) for c in done.citations],
        timings=timings,
    )


# ------------------------------ routes ------------------------------------------------------------
async def _check_flow(ctx: Ctx, flow_id: int | None) -> None:
    if flow_id is not None and not await ctx.services.flows.exists(flow_id):
        raise InvalidInput(f"flow {flow_id} does not exist", field="flow_id")


@routes.get("/routes", role="viewer", summary="List routes (DID/extension → agent or flow)")
async def list_routes(ctx: Ctx) -> list[RouteOut]:
    return [RouteOut.model_validate(r) for r in await ctx.services.agents.list_routes()]


@routes.post("/routes", role="designer", status=201, errors=(409,), summary="Create a route")
async def create_route(ctx: Ctx, body: RouteCreate) -> RouteOut:
    await _check_flow(ctx, body.flow_id)
    return RouteOut.model_validate(await ctx.services.agents.create_route(body.model_dump()))


@routes.get("/routes/{route_id}", role="viewer", summary="Get a route")
async def get_route(ctx: Ctx, route_id: int) -> RouteOut:
    return RouteOut.model_validate(await ctx.services.agents.get_route(route_id))


@routes.patch("/routes/{route_id}", role="designer", errors=(409,), summary="Change a route")
async def update_route(ctx: Ctx, route_id: int, body: RouteUpdate) -> RouteOut:
    changes = body.model_dump(exclude_unset=True)
    await _check_flow(ctx, changes.get("flow_id"))
    return RouteOut.model_validate(await ctx.services.agents.update_route(route_id, changes))


@routes.delete("/routes/{route_id}", role="designer", summary="Delete a route")
async def delete_route(ctx: Ctx, route_id: int) -> None:
    await ctx.services.agents.delete_route(route_id)
