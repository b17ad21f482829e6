"""Outbound campaigns: create, list, read, replace and delete; start, pause, resume and cancel; import the audience
from CSV (with a report of every row not taken; rows outside the campaign's segment, ``rules.segment``, are kept as
``excluded`` and never contacted); the audience with each entry's state; analytics; and the
do-not-call list, global (``/dnc``) and per campaign.  The database work is in ``voicebot.campaigns.store``.

Roles: viewers read; designers create and change campaigns, import, pause, cancel and add numbers to the
do-not-call list; starting or resuming a campaign places calls that cost money and reach people, so it is for
admins (as ``POST /calls/outgoing`` is), and so is taking a number off the do-not-call list (someone asked not to
be called).  A running WhatsApp or e-mail campaign is sent by ``voicebot.campaigns.senders`` (in ``eva run``).
"""

from __future__ import annotations

import asyncio
from datetime import UTC
from typing import Annotated, Any, Literal

from aiohttp import web
from pydantic import AwareDatetime, BaseModel, Field, StringConstraints
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from admin_api.framework import ApiRouter, Ctx
from admin_api.handlers.common import paginate, read_form
from admin_api.schemas import Id, Input, Output, Pagination, Slug, Text200, Text2000, Timestamp
from models import utcnow
from models.campaigns import Campaign, CampaignEntry, DncEntry
from voicebot.campaigns import reports, store
from voicebot.campaigns.importer import MAX_FILE_BYTES, MAX_ROWS, parse_csv
from voicebot.campaigns.phones import to_e164
from voicebot.campaigns.rules import CampaignRules
from voicebot.errors import Conflict, InvalidInput

router = ApiRouter("campaigns")
dnc_router = ApiRouter("dnc")

Channel = Literal["voice", "whatsapp", "email"]
Status = Literal["draft", "running", "paused", "cancelled", "completed"]
EntryState = Literal["pending", "calling", "reached", "exhausted", "dnc", "excluded"]
"""``excluded``: outside the campaign's segment (``rules.segment``): kept, never contacted."""
Zone = Annotated[str, StringConstraints(min_length=1, max_length=64)]
CountryCode = Annotated[str, StringConstraints(pattern=r"^([1-9][0-9]{0,2})?$")]
DncPhone = Annotated[str, StringConstraints(min_length=1, max_length=40)]


# ------------------------------ schemas -----------------------------------------------------------
class CampaignIn(Input):
    """A campaign's whole configuration (``PUT`` replaces all of it)."""

    name: Slug
    description: Text2000 = ""
    channel: Channel = "voice"
    agent_id: Id | None = None
    """The agent that talks to every contact (unless A/B arms name their own)."""
    flow: Slug | None = None
    """A flow (by name) each conversation runs."""
    start_at: AwareDatetime | None = None
    end_at: AwareDatetime | None = None
    timezone: Zone = "UTC"
    """IANA zone for contacts whose own zone is not known."""
    country_code: CountryCode = ""
    """Calling code (digits) given to imported numbers written without one ('' refuses such numbers)."""
    rules: CampaignRules = Field(default_factory=CampaignRules)


class CampaignOut(Output):
    id: int
    name: str
    description: str
    channel: Channel
    agent_id: int | None
    flow: str | None
    status: Status
    status_reason: str
    start_at: Timestamp | None
    end_at: Timestamp | None
    timezone: str
    country_code: str
    rules: dict[str, Any]
    contacts: dict[str, int] = Field(default_factory=dict)
    """Audience entries per state."""
    created_at: Timestamp
    updated_at: Timestamp
    started_at: Timestamp | None
    finished_at: Timestamp | None


class CampaignQuery(Pagination):
    status: Status | None = None


class CampaignPage(Output):
    items: list[CampaignOut]
    total: int
    limit: int
    offset: int


class EntryQuery(Pagination):
    state: EntryState | None = None


class EntryOut(Output):
    id: int
    contact_id: int
    phone: str
    variables: dict[str, str]
    timezone: str | None
    arm: str
    state: EntryState
    attempts: int
    last_outcome: str | None
    created_at: Timestamp
    updated_at: Timestamp


class EntryPage(Output):
    items: list[EntryOut]
    total: int
    limit: int
    offset: int


class ImportForm(BaseModel):
    """multipart/form-data fields of the import (documentation only; parsed by hand)."""

    file: bytes
    """CSV: a phone column, optional name, timezone, country_code; other columns become variables."""
    country_code: str = Field(default="", pattern=r"^([1-9][0-9]{0,2})?$")
    """Overrides the campaign's default calling code for this file."""


class ProblemOut(Output):
    line: int
    reason: str
    column: str | None


class ImportReport(Output):
    rows: int
    """Lines with data; each is imported or listed in exactly one of the lists below."""
    imported: int
    excluded: int = 0
    """Of the imported rows, those outside the campaign's segment: added as ``excluded`` entries, never contacted
    (a later change of the segment may bring them in)."""
    blank_lines: int
    encoding: str
    delimiter: str
    columns: list[str]
    contacts_created: int
    contacts_existing: int
    timezones: dict[str, int]
    """Imported rows by where their zone came from: column, country (of the number), campaign (the default)."""
    arms: dict[str, int]
    invalid: list[ProblemOut]
    duplicates: list[ProblemOut]
    dnc: list[ProblemOut]
    already_in_campaign: list[ProblemOut]


class ArmStats(Output):
    arm: str
    contacts: int
    """Entries of the arm in the segment (excluded ones are never tried)."""
    attempts: int
    reached: int
    reach_rate: float | None
    outcomes: dict[str, int]
    converted: int = 0
    """Contacts of the arm that converted (``rules.roi``'s flow variable collected with its value)."""
    conversion_rate: float | None = None


class RateComparison(Output):
    rate_a: float | None
    """Per contact of the arm."""
    rate_b: float | None
    difference: float | None
    """rate_b - rate_a."""
    z: float | None
    p_value: float | None
    """Two-sided, of the pooled two-proportion z-test."""
    significant: bool
    """p_value < 0.05 (rough with fewer than about 5 successes and 5 failures per arm)."""


class ArmComparison(Output):
    a: str
    b: str
    reached: RateComparison
    conversion: RateComparison


class RoiStats(Output):
    cost_per_attempt: float
    cost_per_minute: float
    value_per_conversion: float
    answered_minutes: float
    cost: float
    """attempts x cost_per_attempt + answered_minutes x cost_per_minute."""
    value: float
    """conversions x value_per_conversion."""
    net: float
    roi: float | None
    """net / cost (None without a cost)."""
    cost_per_conversion: float | None


class DayStats(Output):
    day: str
    """Local date in the campaign's zone."""
    attempts: int
    reached: int
    outcomes: dict[str, int]


class CampaignAnalytics(Output):
    campaign_id: int
    status: Status
    status_reason: str
    contacts: int
    excluded: int = 0
    """Entries outside the segment (in ``contacts``, in no rate)."""
    entries_by_state: dict[str, int]
    attempts: int
    """Calls placed (attempts that ended, do-not-call skips not counted)."""
    pending_attempts: int
    reached: int
    """Contacts with an answered attempt."""
    reach_rate: float | None
    average_answered_seconds: float | None
    outcomes: dict[str, int]
    per_arm: list[ArmStats]
    per_day: list[DayStats]
    conversions: int = 0
    conversion_rate: float | None = None
    comparison: ArmComparison | None = None
    """Arm B against arm A, when the campaign has two arms."""
    roi: RoiStats | None = None


class DncIn(Input):
    phone: DncPhone
    """International form (``+34 600 123 456``); stored as E.164."""
    note: Text200 = ""


class DncOut(Output):
    id: int
    phone: str
    """'' for an e-mail address's entry."""
    email: str | None = None
    """The blocked address of someone who unsubscribed by e-mail."""
    campaign_id: int | None
    source: str
    note: str
    created_at: Timestamp


class DncQuery(Pagination):
    phone: DncPhone | None = None
    """Only this number (any format)."""


class DncPage(Output):
    items: list[DncOut]
    total: int
    limit: int
    offset: int


# ------------------------------ helpers -----------------------------------------------------------
def campaign_columns(body: CampaignIn) -> dict[str, Any]:
    """The :class:`Campaign` columns of a validated body (the CLI creates campaigns through this too)."""
    data = body.model_dump(exclude={"flow", "rules"})
    for key in ("start_at", "end_at"):  # stored, and so answered, in UTC
        if data[key] is not None:
            data[key] = data[key].astimezone(UTC)
    data["flow_name"] = body.flow
    data["rules"] = body.rules.model_dump(mode="json")
    return data


def _outs(session: Session, rows: list[Campaign]) -> list[CampaignOut]:
    counts = store.entry_counts(session, [r.id for r in rows if r.id is not None])
    return [CampaignOut.model_validate({**r.model_dump(), "flow": r.flow_name, "contacts": counts.get(r.id or 0, {})})
            for r in rows]


async def _one(ctx: Ctx, fn: Any) -> CampaignOut:
    def run(session: Session) -> CampaignOut:
        return _outs(session, [fn(session)])[0]

    result: CampaignOut = await ctx.services.db(run)
    return result


# ------------------------------ campaigns ---------------------------------------------------------
@router.get("/campaigns", role="viewer", summary="Campaigns, newest first (optionally of one status)")
async def list_campaigns(ctx: Ctx, query: CampaignQuery) -> CampaignPage:
    def load(session: Session) -> tuple[list[CampaignOut], int]:
        conditions = [col(Campaign.status) == query.status] if query.status else []
        rows, total = paginate(session, select(Campaign).where(*conditions)
                               .order_by(col(Campaign.created_at).desc(), col(Campaign.id).desc()), query)
        return _outs(session, rows), total

    items, total = await ctx.services.db(load)
    return CampaignPage(items=items, total=total, limit=query.limit, offset=query.offset)


@router.post("/campaigns", role="designer", status=201, errors=(409,), summary="Create a campaign (as a draft)")
async def create_campaign(ctx: Ctx, body: CampaignIn) -> CampaignOut:
    data = campaign_columns(body)
    return await _one(ctx, lambda s: store.create_campaign(s, data))


@router.get("/campaigns/{campaign_id}", role="viewer", summary="A campaign, with its audience per state")
async def get_campaign(ctx: Ctx, campaign_id: int) -> CampaignOut:
    return await _one(ctx, lambda s: store.get_campaign(s, campaign_id))


@router.put("/campaigns/{campaign_id}", role="designer", errors=(409,),
            summary="Replace a draft or paused campaign's configuration (its audience stays; a changed segment is "
                    "applied to the entries not yet contacted)")
async def replace_campaign(ctx: Ctx, campaign_id: int, body: CampaignIn) -> CampaignOut:
    data = campaign_columns(body)
    return await _one(ctx, lambda s: store.replace_campaign(s, campaign_id, data, now=utcnow()))


@router.delete("/campaigns/{campaign_id}", role="designer", errors=(409,),
               summary="Delete a campaign that is not running or paused, with its audience and attempts")
async def delete_campaign(ctx: Ctx, campaign_id: int) -> None:
    await ctx.services.db(lambda s: store.delete_campaign(s, campaign_id))


async def _act(ctx: Ctx, campaign_id: int, action: str) -> CampaignOut:
    return await _one(ctx, lambda s: store.change_status(s, campaign_id, action, now=utcnow()))


@router.post("/campaigns/{campaign_id}/start", role="admin", errors=(409,),
             summary="Start a draft campaign (it needs contacts and an agent, flow or arms)")
async def start_campaign(ctx: Ctx, campaign_id: int) -> CampaignOut:
    return await _act(ctx, campaign_id, "start")


@router.post("/campaigns/{campaign_id}/pause", role="designer", errors=(409,),
             summary="Pause a running campaign (calls in progress finish)")
async def pause_campaign(ctx: Ctx, campaign_id: int) -> CampaignOut:
    return await _act(ctx, campaign_id, "pause")


@router.post("/campaigns/{campaign_id}/resume", role="admin", errors=(409,),
             summary="Resume a paused campaign (also after the circuit breaker paused it)")
async def resume_campaign(ctx: Ctx, campaign_id: int) -> CampaignOut:
    return await _act(ctx, campaign_id, "resume")


@router.post("/campaigns/{campaign_id}/cancel", role="designer", errors=(409,),
             summary="Cancel a campaign for good (nobody more is contacted)")
async def cancel_campaign(ctx: Ctx, campaign_id: int) -> CampaignOut:
    return await _act(ctx, campaign_id, "cancel")


# ------------------------------ audience ----------------------------------------------------------
@router.get("/campaigns/{campaign_id}/contacts", role="viewer",
            summary="A campaign's audience in import order, with each entry's state")
async def list_entries(ctx: Ctx, campaign_id: int, query: EntryQuery) -> EntryPage:
    def load(session: Session) -> tuple[list[CampaignEntry], int]:
        store.get_campaign(session, campaign_id)
        conditions = [col(CampaignEntry.campaign_id) == campaign_id]
        if query.state:
            conditions.append(col(CampaignEntry.state) == query.state)
        return paginate(session, select(CampaignEntry).where(*conditions).order_by(col(CampaignEntry.id)), query)

    rows, total = await ctx.services.db(load)
    return EntryPage(items=[EntryOut.model_validate(r) for r in rows], total=total, limit=query.limit,
                     offset=query.offset)


@router.post("/campaigns/{campaign_id}/contacts/import", role="designer",
             errors=(400, 409, 413, 415, 422), request_media={"multipart/form-data": ImportForm},
             summary="Import contacts from CSV (multipart: file, country_code); returns a report of every row")
async def import_contacts(ctx: Ctx, campaign_id: int) -> ImportReport:
    campaign = await ctx.services.db(lambda s: store.get_campaign(s, campaign_id))
    fields, _name, data = await read_form(ctx.request, file_limit=MAX_FILE_BYTES, names={"country_code"})
    if data is None:
        raise InvalidInput("send the CSV as the form's file part", field="file")
    country_code = fields.get("country_code", "").strip().removeprefix("+") or campaign.country_code
    if country_code and not (country_code.isascii() and country_code.isdigit() and len(country_code) <= 3):
        raise InvalidInput("country_code is 1 to 3 digits", field="country_code")
    # Decoding and parsing up to 50,000 rows takes a while: off the event loop, which also paces live calls.
    parsed = await asyncio.to_thread(parse_csv, data, country_code=country_code, max_rows=MAX_ROWS)
    try:
        report = await ctx.services.db(lambda s: store.apply_import(s, campaign_id, parsed, now=utcnow()))
    except IntegrityError as exc:  # another import or a caller created one of these contacts meanwhile
        raise Conflict("the contacts changed during the import; nothing was imported, send the file again",
                       code="campaign_import_conflict") from exc
    return ImportReport.model_validate(report)


@router.get("/campaigns/{campaign_id}/analytics", role="viewer",
            summary="Attempts, contacts reached, outcomes, conversions, per A/B arm (compared) and per day, ROI")
async def campaign_analytics(ctx: Ctx, campaign_id: int) -> CampaignAnalytics:
    def load(session: Session) -> dict[str, Any]:
        campaign = store.get_campaign(session, campaign_id)
        return reports.extend(session, campaign, store.analytics(session, campaign))

    return CampaignAnalytics.model_validate(await ctx.services.db(load))


@router.get("/campaigns/{campaign_id}/analytics.csv", role="viewer",
            response_media={"text/csv": {"type": "string"}},
            summary="Every attempt of a campaign as CSV (cells that a spreadsheet would run as formulas are quoted)")
async def campaign_attempts_csv(ctx: Ctx, campaign_id: int) -> web.StreamResponse:
    text = await ctx.services.db(lambda s: reports.export_csv(s, store.get_campaign(s, campaign_id)))
    return web.Response(text=text, content_type="text/csv", charset="utf-8",
                        headers={"Content-Disposition": f'attachment; filename="campaign-{campaign_id}.csv"'})


# ------------------------------ do-not-call -------------------------------------------------------
async def _dnc_page(ctx: Ctx, campaign_id: int | None, query: DncQuery) -> DncPage:
    phone = to_e164(query.phone) if query.phone else None

    def load(session: Session) -> tuple[list[DncEntry], int]:
        if campaign_id is not None:
            store.get_campaign(session, campaign_id)
        conditions = [col(DncEntry.campaign_id).is_(None) if campaign_id is None
                      else col(DncEntry.campaign_id) == campaign_id]
        if phone:
            conditions.append(col(DncEntry.phone) == phone)
        return paginate(session, select(DncEntry).where(*conditions)
                        .order_by(col(DncEntry.created_at).desc(), col(DncEntry.id).desc()), query)

    rows, total = await ctx.services.db(load)
    return DncPage(items=[DncOut.model_validate(r) for r in rows], total=total, limit=query.limit,
                   offset=query.offset)


async def _dnc_add(ctx: Ctx, campaign_id: int | None, body: DncIn) -> DncOut:
    def add(session: Session) -> DncEntry:
        entry, _new = store.add_dnc(session, body.phone, campaign_id=campaign_id, source="api", note=body.note,
                                    now=utcnow())
        return entry

    return DncOut.model_validate(await ctx.services.db(add))


@dnc_router.get("/dnc", role="viewer", summary="The global do-not-call list, newest first")
async def list_dnc(ctx: Ctx, query: DncQuery) -> DncPage:
    return await _dnc_page(ctx, None, query)


@dnc_router.post("/dnc", role="designer", status=201,
                 summary="Block a number for every campaign (adding it twice keeps the first entry)")
async def add_dnc(ctx: Ctx, body: DncIn) -> DncOut:
    return await _dnc_add(ctx, None, body)


@dnc_router.delete("/dnc/{dnc_id}", role="admin", summary="Take a number off the global do-not-call list")
async def remove_dnc(ctx: Ctx, dnc_id: int) -> None:
    await ctx.services.db(lambda s: store.remove_dnc(s, dnc_id, campaign_id=None))


@router.get("/campaigns/{campaign_id}/dnc", role="viewer", summary="A campaign's own do-not-call list")
async def list_campaign_dnc(ctx: Ctx, campaign_id: int, query: DncQuery) -> DncPage:
    return await _dnc_page(ctx, campaign_id, query)


@router.post("/campaigns/{campaign_id}/dnc", role="designer", status=201,
             summary="Block a number for this campaign only")
async def add_campaign_dnc(ctx: Ctx, campaign_id: int, body: DncIn) -> DncOut:
    return await _dnc_add(ctx, campaign_id, body)


@router.delete("/campaigns/{campaign_id}/dnc/{dnc_id}", role="admin",
               summary="Take a number off a campaign's do-not-call list")
async def remove_campaign_dnc(ctx: Ctx, campaign_id: int, dnc_id: int) -> None:
    await ctx.services.db(lambda s: store.remove_dnc(s, dnc_id, campaign_id=campaign_id))
