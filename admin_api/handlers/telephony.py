"""SIP trunks (rendered into Asterisk and reloaded through AMI), dialplans and conversation flows."""

from __future__ import annotations

from sqlalchemy import func
from sqlmodel import Session, col, select

from admin_api.dialplans import NAME_PATTERN
from admin_api.framework import ApiRouter, Ctx
from admin_api.handlers.common import paginate
from admin_api.schemas import (
    DialplanApplied,
    DialplanOut,
    DialplanPut,
    DialplanSummary,
    FlowCreate,
    FlowOut,
    FlowRunOut,
    FlowRunPage,
    FlowRunQuery,
    FlowUpdate,
    Pagination,
    TrunkCreate,
    TrunkHistoryPage,
    TrunkOut,
    TrunkStateEventOut,
    TrunkStatusOut,
    TrunkUpdate,
)
from admin_api.trunk_monitor import history_query, recent_changes
from admin_api.trunks import endpoint_name
from models import FlowRun, SipTrunk

trunks = ApiRouter("sip")
dialplans = ApiRouter("dialplans")
flows = ApiRouter("flows")


def _trunk_out(trunk: SipTrunk) -> TrunkOut:
    data = trunk.model_dump(exclude={"password"})
    return TrunkOut.model_validate(
        {**data, "endpoint": endpoint_name(trunk.name), "has_password": bool(trunk.password)}
    )


@trunks.get("/sip/trunks", role="viewer", summary="List SIP trunks (passwords are never returned)")
async def list_trunks(ctx: Ctx) -> list[TrunkOut]:
    return [_trunk_out(t) for t in await ctx.services.trunks.list_trunks()]


@trunks.post(
    "/sip/trunks",
    role="admin",
    status=201,
    errors=(409, 502),
    summary="Create a trunk: rendered into pjsip config and reloaded; rejected config is rolled back",
)
async def create_trunk(ctx: Ctx, body: TrunkCreate) -> TrunkOut:
    return _trunk_out(await ctx.services.trunks.create(body.model_dump()))


@trunks.get("/sip/trunks/{trunk_id}", role="viewer", summary="Get a trunk")
async def get_trunk(ctx: Ctx, trunk_id: int) -> TrunkOut:
    return _trunk_out(await ctx.services.trunks.get(trunk_id))


@trunks.patch(
    "/sip/trunks/{trunk_id}", role="admin", errors=(502,), summary="Change a trunk (omit password to keep it)"
)
async def update_trunk(ctx: Ctx, trunk_id: int, body: TrunkUpdate) -> TrunkOut:
    return _trunk_out(await ctx.services.trunks.update(trunk_id, body.model_dump(exclude_unset=True)))


@trunks.delete("/sip/trunks/{trunk_id}", role="admin", errors=(502,), summary="Delete a trunk")
async def delete_trunk(ctx: Ctx, trunk_id: int) -> None:
    await ctx.services.trunks.delete(trunk_id)


@trunks.get(
    "/sip/trunks/{trunk_id}/status",
    role="viewer",
    errors=(502,),
    summary="The trunk's monitored state (up, down, rejected, ...) since when, its calls now and today, its last "
    "state changes, and Asterisk's endpoint and registration details (AMI)",
)
async def trunk_status(ctx: Ctx, trunk_id: int) -> TrunkStatusOut:
    trunk = await ctx.services.trunks.get(trunk_id)
    live = await ctx.services.trunks.status(trunk)
    monitor = ctx.services.trunk_monitor
    snapshot = monitor.snapshot(trunk_id) if monitor is not None else None
    recent = await ctx.services.db(lambda session: recent_changes(session, trunk_id))
    if snapshot is not None:
        monitored = {"state": snapshot.state, "state_detail": snapshot.detail, "since": snapshot.since,
                     "active_calls": snapshot.active_calls, "calls_today": snapshot.calls_today,
                     "calls_counted_since": snapshot.calls_counted_since}
    else:
        # No monitor (offline API), or a trunk created a moment ago that it has not read yet.
        state = "disabled" if not trunk.enabled else "unknown"
        detail = ("not monitored: this API does not control an Asterisk" if monitor is None
                  else "not read from Asterisk yet")
        monitored = {"state": state, "state_detail": detail, "since": None,
                     "active_calls": 0, "calls_today": 0, "calls_counted_since": None}
    return TrunkStatusOut.model_validate({
        **live, **monitored, "monitored": monitor is not None,
        "recent_changes": [TrunkStateEventOut.model_validate(r) for r in recent]})


@trunks.get("/sip/trunks/{trunk_id}/history", role="viewer",
            summary="The trunk's state changes, newest first (kept while the trunk exists)")
async def trunk_history(ctx: Ctx, trunk_id: int, query: Pagination) -> TrunkHistoryPage:
    await ctx.services.trunks.get(trunk_id)
    rows, total = await ctx.services.db(lambda session: paginate(session, history_query(trunk_id), query))
    return TrunkHistoryPage(items=[TrunkStateEventOut.model_validate(r) for r in rows], total=total,
                            limit=query.limit, offset=query.offset)


# ------------------------------ dialplans ---------------------------------------------------------
_NAME = {"name": NAME_PATTERN}


@dialplans.get("/dialplans", role="viewer", summary="List dialplan files")
async def list_dialplans(ctx: Ctx) -> list[DialplanSummary]:
    return [DialplanSummary.model_validate(d) for d in await ctx.services.dialplans.list_dialplans()]


@dialplans.get("/dialplans/{name}", role="viewer", path_patterns=_NAME, summary="Get a dialplan file")
async def get_dialplan(ctx: Ctx, name: str) -> DialplanOut:
    return DialplanOut.model_validate(await ctx.services.dialplans.get(name))


@dialplans.put(
    "/dialplans/{name}",
    role="designer",
    path_patterns=_NAME,
    errors=(403, 409, 502),
    summary="Replace (or create) a dialplan file: validated, applied, rolled back if Asterisk "
    "does not load it exactly; only admins may dial trunks or external URIs (403 otherwise)",
)
async def put_dialplan(ctx: Ctx, name: str, body: DialplanPut) -> DialplanApplied:
    # Outbound calls cost money and are an admin decision: a designer's Dial may not reach a trunk.
    outbound = ctx.user.has_role("admin")
    return DialplanApplied.model_validate(await ctx.services.dialplans.put(name, body.content, outbound=outbound))


@dialplans.delete(
    "/dialplans/{name}",
    role="designer",
    path_patterns=_NAME,
    errors=(409, 502),
    summary="Delete a custom dialplan, or revert an edited one to the packaged version",
)
async def delete_dialplan(ctx: Ctx, name: str) -> None:
    await ctx.services.dialplans.delete(name)


# ------------------------------ flows -------------------------------------------------------------
@flows.get("/flows", role="viewer", summary="List conversation flows")
async def list_flows(ctx: Ctx) -> list[FlowOut]:
    return [FlowOut.model_validate(f) for f in await ctx.services.flows.list_flows()]


@flows.post(
    "/flows", role="designer", status=201, errors=(409,), summary="Create a flow (references checked)"
)
async def create_flow(ctx: Ctx, body: FlowCreate) -> FlowOut:
    data = body.model_dump()
    data["steps"] = [step.model_dump(exclude_none=True, exclude_defaults=True) for step in body.steps]
    return FlowOut.model_validate(await ctx.services.flows.create(data))


@flows.get("/flows/{flow_id}", role="viewer", summary="Get a flow")
async def get_flow(ctx: Ctx, flow_id: int) -> FlowOut:
    return FlowOut.model_validate(await ctx.services.flows.get(flow_id))


@flows.patch("/flows/{flow_id}", role="designer", errors=(409,), summary="Change a flow")
async def update_flow(ctx: Ctx, flow_id: int, body: FlowUpdate) -> FlowOut:
    changes = body.model_dump(exclude_unset=True)
    if body.steps is not None and "steps" in changes:
        changes["steps"] = [step.model_dump(exclude_none=True, exclude_defaults=True) for step in body.steps]
    return FlowOut.model_validate(await ctx.services.flows.update(flow_id, changes))


@flows.get("/flows/{flow_id}/runs", role="viewer", summary="A flow's runs, newest first (step, result, variables)")
async def list_flow_runs(ctx: Ctx, flow_id: int, query: FlowRunQuery) -> FlowRunPage:
    await ctx.services.flows.get(flow_id)

    def load(session: Session) -> tuple[list[FlowRun], int]:
        conditions = [col(FlowRun.flow_id) == flow_id]
        if query.status is not None:
            conditions.append(col(FlowRun.status) == query.status)
        rows = session.exec(
            select(FlowRun).where(*conditions).order_by(col(FlowRun.id).desc()).offset(query.offset).limit(query.limit)
        ).all()
        total = session.exec(select(func.count()).select_from(FlowRun).where(*conditions)).one()
        return list(rows), int(total)

    rows, total = await ctx.services.db(load)
    return FlowRunPage(
        items=[FlowRunOut.model_validate(r) for r in rows], total=total, limit=query.limit, offset=query.offset
    )


@flows.delete(
    "/flows/{flow_id}", role="designer", errors=(409,), summary="Delete a flow (not while routed to)"
)
async def delete_flow(ctx: Ctx, flow_id: int) -> None:
    await ctx.services.flows.delete(flow_id)
