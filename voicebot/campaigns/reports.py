"""Campaign analytics beyond the counts of :func:`voicebot.campaigns.store.analytics`: conversions, the A/B
comparison with its significance, the return on investment, and the CSV export of every attempt.

A **conversion** is a contact whose campaign conversation collected the flow variable the admin named
(``rules.roi.conversion_variable``) with the value named (``rules.roi.conversion_value``, compared trimmed and
case-insensitively; none: any non-empty value): a flow run (``flow_runs``) of an attempt's call or of the
conversation its message started.  One contact converts once, however many attempts it took.  Without a
conversion variable nothing converts.

Blocking functions on an open ``Session`` (the admin API runs them in worker threads).
"""

from __future__ import annotations

import csv
import io
from collections import Counter
from typing import Any

from sqlalchemy import and_, or_
from sqlmodel import Session, col, select

from models import Contact, FlowRun
from models.campaigns import Campaign, CampaignAttempt, CampaignEntry
from voicebot.campaigns.rules import CampaignRules, Roi, load_rules
from voicebot.campaigns.segments import EXCLUDED
from voicebot.campaigns.stats import compare, rate, roi

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
"""A spreadsheet reads a cell starting so as a formula (CSV injection): such cells get a leading ``'``."""


def _matches(value: object, roi_rules: Roi) -> bool:
    if not isinstance(value, str) or not value.strip():
        return False
    wanted = roi_rules.conversion_value
    return wanted is None or value.strip().casefold() == wanted.strip().casefold()


def converted_entries(session: Session, campaign_id: int, rules: CampaignRules) -> set[int]:
    """The entries (contacts) of the campaign that converted (see the module)."""
    roi_rules = rules.roi
    if roi_rules.conversion_variable is None:
        return set()
    of_attempt = or_(
        and_(col(FlowRun.conversation_id).is_not(None),
             col(FlowRun.conversation_id) == col(CampaignAttempt.conversation_id)),
        and_(col(FlowRun.call_id).is_not(None), col(FlowRun.call_id) == col(CampaignAttempt.call_id)))
    runs = session.exec(
        select(CampaignAttempt.entry_id, FlowRun.variables).join(FlowRun, of_attempt)
        .where(col(CampaignAttempt.campaign_id) == campaign_id)).all()
    return {entry_id for entry_id, variables in runs
            if _matches((variables or {}).get(roi_rules.conversion_variable), roi_rules)}


def _answered_seconds(session: Session, campaign_id: int) -> float:
    rows = session.exec(select(CampaignAttempt.started_at, CampaignAttempt.ended_at).where(
        col(CampaignAttempt.campaign_id) == campaign_id, col(CampaignAttempt.outcome) == "answered")).all()
    return sum((ended - started).total_seconds() for started, ended in rows if started and ended)


def extend(session: Session, campaign: Campaign, result: dict[str, Any]) -> dict[str, Any]:
    """``store.analytics``'s ``result`` with conversions (overall and per arm), the comparison of the two A/B
    arms (reached and conversion rates per contact, B - A, z-test p-values) and the ROI."""
    assert campaign.id is not None
    rules = load_rules(campaign.rules)
    converted = converted_entries(session, campaign.id, rules)
    arm_of = dict(session.exec(select(CampaignEntry.id, CampaignEntry.arm)
                               .where(col(CampaignEntry.campaign_id) == campaign.id)).all())
    per_arm = Counter(arm_of.get(entry_id, "") for entry_id in converted)
    for arm in result["per_arm"]:
        arm["converted"] = per_arm.get(arm["arm"], 0)
        arm["conversion_rate"] = rate(arm["converted"], arm["contacts"])
    result["conversions"] = len(converted)
    result["conversion_rate"] = rate(len(converted), result["contacts"] - result.get("excluded", 0))
    result["comparison"] = None
    if len(rules.arms) == 2:
        a, b = (next(s for s in result["per_arm"] if s["arm"] == arm.name) for arm in rules.arms)
        result["comparison"] = compare(a["arm"], b["arm"], contacts=(a["contacts"], b["contacts"]),
                                       reached=(a["reached"], b["reached"]),
                                       converted=(a["converted"], b["converted"]))
    prices = rules.roi
    result["roi"] = {
        "cost_per_attempt": prices.cost_per_attempt, "cost_per_minute": prices.cost_per_minute,
        "value_per_conversion": prices.value_per_conversion,
        **roi(attempts=result["attempts"], answered_seconds=_answered_seconds(session, campaign.id),
              conversions=len(converted), cost_per_attempt=prices.cost_per_attempt,
              cost_per_minute=prices.cost_per_minute, value_per_conversion=prices.value_per_conversion),
    }
    return result


def safe_cell(value: object) -> str:
    """A CSV cell a spreadsheet shows as text: ``'`` before one that would start a formula."""
    text = "" if value is None else value.isoformat() if hasattr(value, "isoformat") else str(value)
    return "'" + text if text.startswith(FORMULA_STARTS) else text


COLUMNS = ("attempt_id", "entry_id", "contact_id", "contact_name", "phone", "arm", "number", "outcome",
           "sip_cause", "due_at", "started_at", "ended_at", "duration_seconds", "call_id", "conversation_id",
           "converted")


def export_csv(session: Session, campaign: Campaign) -> str:
    """Every attempt of the campaign, oldest first, with its contact and the contact's variables (a column
    ``var_<name>`` each); every cell safe to open in a spreadsheet (:func:`safe_cell`)."""
    assert campaign.id is not None
    converted = converted_entries(session, campaign.id, load_rules(campaign.rules))
    rows = session.exec(
        select(CampaignAttempt, CampaignEntry, Contact.name)
        .join(CampaignEntry, col(CampaignEntry.id) == col(CampaignAttempt.entry_id))
        .join(Contact, col(Contact.id) == col(CampaignEntry.contact_id))
        # Attempts a segment withdrew were never made: left out, as the analytics leave them out.
        .where(col(CampaignAttempt.campaign_id) == campaign.id,
               or_(col(CampaignAttempt.outcome).is_(None), col(CampaignAttempt.outcome) != EXCLUDED))
        .order_by(col(CampaignAttempt.id))).all()
    variables = sorted({key for _a, entry, _n in rows for key in entry.variables})
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow([*COLUMNS, *(f"var_{key}" for key in variables)])
    for attempt, entry, name in rows:
        duration = (attempt.ended_at - attempt.started_at).total_seconds() \
            if attempt.started_at and attempt.ended_at and attempt.outcome == "answered" else None
        cells = [attempt.id, entry.id, entry.contact_id, name, entry.phone, attempt.arm, attempt.number,
                 attempt.outcome, attempt.sip_cause, attempt.due_at, attempt.started_at, attempt.ended_at,
                 duration, attempt.call_id, attempt.conversation_id, "yes" if entry.id in converted else "no",
                 *(entry.variables.get(key, "") for key in variables)]
        writer.writerow([safe_cell(cell) for cell in cells])
    return out.getvalue()
