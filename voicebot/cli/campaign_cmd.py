"""``eva campaign list|create|import|start|pause|resume|cancel|status``: outbound campaigns from the host.

``create`` takes the same configuration as ``POST /api/v1/campaigns`` (the rules -- windows, pacing, retries, A/B
arms, breaker -- from a JSON file with ``--rules-file``); ``import`` reads a CSV the way the API's import does and
prints its progress and the report (every row not taken, with its line and reason); ``status`` prints the
campaign's state, its audience, the outcome counts, the A/B comparison and the ROI, and with ``--watch`` follows a
running campaign (a progress view redrawn every ``--interval`` seconds, or one line per change when stdout is not a
terminal) until it completes, is paused or cancelled, then prints the outcome table; ``start``, ``pause``,
``resume`` and ``cancel`` change its status through the same store function (and checks) as the API's routes.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from voicebot.config import Settings
from voicebot.errors import InvalidInput

MAX_RULES_BYTES = 256 * 1024
SHOWN_PROBLEMS = 20
WATCH_INTERVAL_S = 2.0
MIN_WATCH_INTERVAL_S = 0.5
"""Each look reads the campaign's attempts (the analytics' counts): more often than this only loads the database that
the dialer writes to, and no one reads a terminal faster."""
MAX_WATCH_INTERVAL_S = 3600.0
WATCH_ENDS = frozenset({"completed", "cancelled", "paused"})
"""Statuses in which a watched campaign dials no more (until someone resumes it): the watch ends."""


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("campaign", help="outbound campaigns: list, create, import contacts, start, pause, status")
    actions = parser.add_subparsers(dest="campaign_command", required=True, metavar="ACTION")
    listing = actions.add_parser("list", help="list campaigns")
    listing.add_argument("--json", action="store_true", help="print JSON")
    listing.set_defaults(func=list_cmd)

    create = actions.add_parser("create", help="create a campaign (a draft)")
    create.add_argument("name")
    create.add_argument("--channel", choices=("voice", "whatsapp", "email"), default="voice")
    create.add_argument("--agent", help="the agent's name")
    create.add_argument("--flow", help="a flow's name")
    create.add_argument("--timezone", default="UTC", help="zone of contacts whose own is unknown (IANA)")
    create.add_argument("--country-code", default="", help="calling code for numbers written without one")
    create.add_argument("--start", help="start, ISO 8601 with offset (2026-12-01T09:00:00+01:00)")
    create.add_argument("--end", help="end, ISO 8601 with offset")
    create.add_argument("--rules-file", help="JSON: windows, pacing, retry, arms, breaker")
    create.add_argument("--description", default="")
    create.set_defaults(func=create_cmd)

    load = actions.add_parser("import", help="import contacts from a CSV file into a campaign")
    load.add_argument("name")
    load.add_argument("path")
    load.add_argument("--country-code", default="", help="overrides the campaign's calling code for this file")
    load.add_argument("--all", action="store_true", help="list every row not imported (default: the first 20)")
    load.add_argument("--json", action="store_true", help="print the report as JSON")
    load.set_defaults(func=import_cmd)

    for action, text in (("start", "start a draft campaign (it needs contacts, and an agent, flow or arms)"),
                         ("pause", "pause a running campaign (what is in progress finishes)"),
                         ("resume", "resume a paused campaign (also after the circuit breaker paused it)"),
                         ("cancel", "cancel a campaign for good")):
        change = actions.add_parser(action, help=text)
        change.add_argument("name")
        change.set_defaults(func=change_cmd, action=action)

    status = actions.add_parser("status", help="a campaign's status, audience and outcomes")
    status.add_argument("name")
    status.add_argument("--json", action="store_true", help="print JSON (the API's analytics)")
    status.add_argument("--watch", action="store_true",
                        help="follow the campaign: a progress view redrawn until it completes, is paused or "
                             "cancelled, or Ctrl-C (not a terminal: one line per change)")
    status.add_argument("--interval", type=float, default=WATCH_INTERVAL_S,
                        help=f"seconds between looks with --watch ({MIN_WATCH_INTERVAL_S} to {MAX_WATCH_INTERVAL_S};"
                             f" default {WATCH_INTERVAL_S})")
    status.set_defaults(func=status_cmd)


def _engine() -> Any:
    from voicebot.cli.db_cmd import open_engine

    return open_engine(Settings.load())


def _find(session: Any, name: str) -> Any:
    from sqlmodel import select

    from models.campaigns import Campaign

    campaign = session.exec(select(Campaign).where(Campaign.name == name)).first()
    if campaign is None:
        raise InvalidInput(f"there is no campaign named {name!r}", field="name")
    return campaign


def list_cmd(args: argparse.Namespace) -> int:
    from sqlmodel import col, select

    from models.campaigns import Campaign
    from models.db import session_scope
    from voicebot.campaigns import store

    with session_scope(_engine()) as session:
        rows = list(session.exec(select(Campaign).order_by(col(Campaign.created_at).desc())).all())
        counts = store.entry_counts(session, [r.id for r in rows if r.id is not None])
    if args.json:
        print(json.dumps([{"id": r.id, "name": r.name, "channel": r.channel, "status": r.status,
                           "status_reason": r.status_reason, "contacts": counts.get(r.id or 0, {})} for r in rows],
                         indent=2))
        return 0
    if not rows:
        print("no campaigns")
        return 0
    for r in rows:
        total = sum(counts.get(r.id or 0, {}).values())
        reason = f" ({r.status_reason})" if r.status_reason else ""
        print(f"{r.name:30} {r.channel:9} {r.status:10} {total:6} contacts{reason}")
    return 0


def create_cmd(args: argparse.Namespace) -> int:
    from pydantic import ValidationError
    from sqlmodel import select

    from admin_api.framework import validation_error
    from admin_api.handlers.campaigns import CampaignIn, campaign_columns
    from models import Agent
    from models.db import session_scope
    from voicebot.campaigns import store

    body: dict[str, Any] = {"name": args.name, "channel": args.channel, "timezone": args.timezone,
                            "country_code": args.country_code.removeprefix("+"), "description": args.description,
                            "flow": args.flow, "start_at": args.start, "end_at": args.end}
    if args.rules_file:
        body["rules"] = _read_json(args.rules_file)
    engine = _engine()
    with session_scope(engine) as session:
        if args.agent:
            agent_id = session.exec(select(Agent.id).where(Agent.name == args.agent)).first()
            if agent_id is None:
                raise InvalidInput(f"there is no agent named {args.agent!r}", field="agent")
            body["agent_id"] = agent_id
        try:
            validated = CampaignIn.model_validate({k: v for k, v in body.items() if v is not None})
        except ValidationError as exc:
            raise validation_error(exc, where="campaign") from exc
        campaign = store.create_campaign(session, campaign_columns(validated))
    print(f"created campaign {campaign.name} (id {campaign.id}, {campaign.channel}, draft)")
    return 0


def _read_json(path: str) -> Any:
    try:
        raw = Path(path).read_bytes()[: MAX_RULES_BYTES + 1]
    except OSError as exc:
        raise InvalidInput(f"cannot read {path}: {exc.strerror}", field="rules_file") from exc
    if len(raw) > MAX_RULES_BYTES:
        raise InvalidInput(f"{path} is larger than {MAX_RULES_BYTES} bytes", field="rules_file")
    try:
        return json.loads(raw)
    except ValueError as exc:
        raise InvalidInput(f"{path} is not valid JSON: {exc}", field="rules_file") from exc


def import_cmd(args: argparse.Namespace) -> int:
    from models import utcnow
    from models.db import session_scope
    from voicebot.campaigns import store
    from voicebot.campaigns.importer import MAX_FILE_BYTES, parse_csv

    file = Path(args.path)
    try:
        data = file.read_bytes()[: MAX_FILE_BYTES + 1]
    except OSError as exc:
        raise InvalidInput(f"cannot read {args.path}: {exc.strerror}", field="path") from exc
    if len(data) > MAX_FILE_BYTES:
        raise InvalidInput(f"{args.path} is larger than {MAX_FILE_BYTES // (1024 * 1024)} MB; split it", field="path")
    engine = _engine()
    with session_scope(engine) as session:
        campaign = _find(session, args.name)
        campaign_id, code = campaign.id, args.country_code.removeprefix("+") or campaign.country_code
    started = time.monotonic()
    say = (lambda text: print(text, file=sys.stderr)) if args.json else print
    say(f"reading {file.name} ({len(data) / 1024:.0f} KiB) ...")
    parsed = parse_csv(data, country_code=code)
    say(f"parsed {parsed.data_rows} rows ({parsed.encoding}, delimiter {parsed.delimiter!r}): {len(parsed.rows)} "
        f"valid, {len(parsed.invalid)} invalid, {len(parsed.duplicates)} duplicate")
    say(f"adding {len(parsed.rows)} contacts to {args.name} ...")
    with session_scope(engine) as session:
        report = store.apply_import(session, campaign_id, parsed, now=utcnow())
    if args.json:
        print(json.dumps(report, indent=2, ensure_ascii=False))
        return 0
    print(f"imported {report['imported']} of {report['rows']} rows in {time.monotonic() - started:.1f} s "
          f"({report['contacts_created']} new contacts, {report['contacts_existing']} known)")
    if report["excluded"]:
        print(f"  {report['excluded']} of them outside the campaign's segment: kept as excluded, never contacted")
    skipped = [(kind, p) for kind in ("invalid", "duplicates", "dnc", "already_in_campaign") for p in report[kind]]
    skipped.sort(key=lambda item: item[1]["line"])
    for kind, problem in skipped if args.all else skipped[:SHOWN_PROBLEMS]:
        column = f" [{problem['column']}]" if problem["column"] else ""
        print(f"  line {problem['line']}: {kind.replace('_', ' ')}{column}: {problem['reason']}")
    if len(skipped) > SHOWN_PROBLEMS and not args.all:
        print(f"  ... and {len(skipped) - SHOWN_PROBLEMS} more (--all lists them)")
    return 0


def change_cmd(args: argparse.Namespace) -> int:
    """Start, pause, resume or cancel: the same transition, with the same checks, as the API's routes."""
    from models import utcnow
    from models.db import session_scope
    from voicebot.campaigns import store

    with session_scope(_engine()) as session:
        campaign = store.change_status(session, _find(session, args.name).id, args.action, now=utcnow())
        status, channel = campaign.status, campaign.channel
    print(f"{args.name}: {status}")
    if args.action in ("start", "resume") and channel != "voice":
        print(f"  its {channel} messages are sent by `eva run` (the campaign sender), within the campaign's windows")
    return 0


def status_cmd(args: argparse.Namespace) -> int:
    from models.db import session_scope
    from voicebot.campaigns import reports, store

    if args.watch:
        return watch_cmd(args)
    with session_scope(_engine()) as session:
        campaign = _find(session, args.name)
        stats = reports.extend(session, campaign, store.analytics(session, campaign))
    if args.json:
        print(json.dumps(stats, indent=2))
        return 0
    _print_status(args.name, stats)
    return 0


def _print_status(name: str, stats: dict[str, Any]) -> None:
    reason = f" ({stats['status_reason']})" if stats["status_reason"] else ""
    print(f"{name}: {stats['status']}{reason}")
    states = ", ".join(f"{n} {state}" for state, n in sorted(stats["entries_by_state"].items())) or "none"
    print(f"contacts: {stats['contacts']} ({states})")
    if stats.get("excluded"):
        print(f"  {stats['excluded']} outside the segment (rules.segment): kept, never contacted")
    print(f"attempts: {stats['attempts']} placed, {stats['pending_attempts']} waiting; reached {stats['reached']}")
    print("outcomes: " + (", ".join(f"{k} {v}" for k, v in stats["outcomes"].items() if v) or "none yet"))
    for arm in stats["per_arm"]:
        if arm["arm"]:
            print(f"  arm {arm['arm']}: {arm['contacts']} contacts, {arm['attempts']} attempts, "
                  f"{arm['reached']} reached, {arm['converted']} converted")
    comparison = stats["comparison"]
    if comparison is not None:
        for metric in ("reached", "conversion"):
            got = comparison[metric]
            if got["p_value"] is not None:
                print(f"  {metric}: {comparison['b']} - {comparison['a']} = {got['difference']:+.4f} "
                      f"(p = {got['p_value']:.4f}, {'significant' if got['significant'] else 'not significant'})")
    print(f"conversions: {stats['conversions']}; cost {stats['roi']['cost']:.2f}, value {stats['roi']['value']:.2f}")


# ------------------------------ status --watch ----------------------------------------------------
@dataclass(frozen=True)
class Progress:
    """One look at a running campaign: what the progress view shows."""

    status: str
    reason: str
    done: int
    """Entries with nothing more to do: reached, retries used up, or on the do-not-call list."""
    total: int
    """Entries the campaign tries to reach (those outside its segment, if it has one, are not)."""
    in_progress: int
    """Attempts a dialer has claimed (the call rings or talks) that have not ended."""
    waiting: int
    """Attempts not placed yet: due now, held by a window or the pacing, or retries due later."""
    placed: int
    outcomes: tuple[tuple[str, int], ...]
    reached_per_arm: tuple[tuple[str, int], ...]
    elapsed_s: float
    """Since the campaign was started (to its end once it has ended)."""
    per_minute: float | None
    """Attempts placed per minute, from the first dial to now (to the campaign's end once it has ended)."""
    stats: dict[str, Any] = field(compare=False, hash=False, repr=False)

    def key(self) -> tuple[Any, ...]:
        """What a change is: everything but the clock-driven numbers (elapsed, rate), which change on every look."""
        return (self.status, self.reason, self.done, self.total, self.in_progress, self.waiting, self.placed,
                self.outcomes, self.reached_per_arm)


def look(session: Any, name: str, now: datetime) -> Progress:
    """The campaign's progress now, from the same counts as the analytics plus the calls in flight."""
    from sqlmodel import col, func, select

    from models.base import as_utc
    from models.campaigns import CampaignAttempt
    from voicebot.campaigns import store

    campaign = _find(session, name)
    stats = store.analytics(session, campaign)
    in_progress, first_dial = session.exec(
        select(func.count(col(CampaignAttempt.id)).filter(col(CampaignAttempt.outcome).is_(None),
                                                          col(CampaignAttempt.started_at).is_not(None)),
               func.min(CampaignAttempt.started_at))
        .where(col(CampaignAttempt.campaign_id) == campaign.id)).one()
    started, finished, first = (as_utc(moment) if moment is not None else None
                                for moment in (campaign.started_at, campaign.finished_at, first_dial))
    until = finished or now
    minutes = (until - first).total_seconds() / 60 if first is not None else 0.0
    states = stats["entries_by_state"]
    in_progress = int(in_progress or 0)
    return Progress(
        status=campaign.status, reason=campaign.status_reason,
        done=sum(states.get(state, 0) for state in ("reached", "exhausted", "dnc")),
        total=stats["contacts"] - stats.get("excluded", 0),  # entries outside a segment are never dialled
        in_progress=in_progress, waiting=max(0, stats["pending_attempts"] - in_progress), placed=stats["attempts"],
        outcomes=tuple((k, v) for k, v in stats["outcomes"].items() if v),
        reached_per_arm=tuple((arm["arm"], arm["reached"]) for arm in stats["per_arm"] if arm["arm"]),
        elapsed_s=max(0.0, (until - started).total_seconds()) if started is not None else 0.0,
        per_minute=stats["attempts"] / minutes if minutes > 0 else None, stats=stats)


def _clock(seconds: float) -> str:
    whole = int(seconds)
    return f"{whole // 3600}:{whole % 3600 // 60:02d}:{whole % 60:02d}"


def _rate(progress: Progress) -> str:
    return "-" if progress.per_minute is None else f"{progress.per_minute:.1f}"


def progress_line(name: str, progress: Progress) -> str:
    """One line of the progress (what a log or a pipe gets, once per change)."""
    reason = f" ({progress.reason})" if progress.reason else ""
    outcomes = ", ".join(f"{k} {v}" for k, v in progress.outcomes) or "no outcomes yet"
    arms = "; reached " + ", ".join(f"{arm} {n}" for arm, n in progress.reached_per_arm) \
        if progress.reached_per_arm else ""
    return (f"[{_clock(progress.elapsed_s)}] {name}: {progress.status}{reason}; {progress.done}/{progress.total} done, "
            f"{progress.in_progress} in progress, {progress.waiting} waiting; {outcomes}{arms}; "
            f"{_rate(progress)} attempts/min")


def progress_view(name: str, progress: Progress) -> list[str]:
    """The compact view a terminal gets, redrawn in place."""
    reason = f" ({progress.reason})" if progress.reason else ""
    lines = [f"{name}: {progress.status}{reason}   {_clock(progress.elapsed_s)} elapsed",
             f"  contacts  {progress.done}/{progress.total} done, {progress.in_progress} in progress, "
             f"{progress.waiting} waiting",
             "  outcomes  " + (", ".join(f"{k} {v}" for k, v in progress.outcomes) or "none yet")]
    if progress.reached_per_arm:
        lines.append("  reached   " + ", ".join(f"arm {arm} {n}" for arm, n in progress.reached_per_arm))
    lines.append(f"  rate      {_rate(progress)} attempts/min ({progress.placed} placed)")
    return lines


def outcome_table(stats: dict[str, Any]) -> list[str]:
    """Outcomes by A/B arm (and in all): the table the watch ends with."""
    arms = [arm for arm in stats["per_arm"] if arm["arm"]]
    names = [k for k, v in stats["outcomes"].items() if v]
    if not names:
        return ["  (no outcomes)"]
    head = ["outcome"] + [f"arm {arm['arm']}" for arm in arms] + ["all"]
    rows = [[k] + [str(arm["outcomes"].get(k, 0)) for arm in arms] + [str(stats["outcomes"][k])] for k in names]
    rows.append(["total"] + [str(arm["attempts"]) for arm in arms] + [str(stats["attempts"])])
    widths = [max(len(row[i]) for row in [head, *rows]) for i in range(len(head))]
    return ["  " + "  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in
                             enumerate(zip(row, widths, strict=True))) for row in [head, *rows]]


def watch_cmd(args: argparse.Namespace) -> int:
    """``status --watch``: look every ``--interval`` seconds until the campaign completes, is paused or cancelled.

    On a terminal the view is redrawn in place; anywhere else (a pipe, a log) one line is printed per change, so a
    long campaign does not fill a log with identical lines.  Ctrl-C only stops watching (exit 0): the campaign is
    dialled by ``eva run``, not by this command.
    """
    from models import utcnow
    from models.db import session_scope
    from voicebot.campaigns import reports

    interval = float(args.interval)
    if not MIN_WATCH_INTERVAL_S <= interval <= MAX_WATCH_INTERVAL_S:  # also refuses nan
        raise InvalidInput(f"--interval is {MIN_WATCH_INTERVAL_S} to {MAX_WATCH_INTERVAL_S} seconds", field="interval")
    if args.json:
        raise InvalidInput("--watch prints a progress view; use --json without --watch", field="json")
    tty = sys.stdout.isatty()
    engine = _engine()  # once: every CLI engine migrates the schema, which is not for every look
    drawn, last_key = 0, None
    try:
        while True:
            with session_scope(engine) as session:
                progress = look(session, args.name, utcnow())
            if tty:
                view = progress_view(args.name, progress)
                # Back to the top of the previous frame and clear below: redrawn in place, scrollback untouched.
                sys.stdout.write((f"\x1b[{drawn}F\x1b[J" if drawn else "") + "\n".join(view) + "\n")
                sys.stdout.flush()
                drawn = len(view)
            elif progress.key() != last_key:
                print(progress_line(args.name, progress), flush=True)
                last_key = progress.key()
            if progress.status in WATCH_ENDS:
                break
            time.sleep(interval)
        with session_scope(engine) as session:
            campaign = _find(session, args.name)
            stats = reports.extend(session, campaign, progress.stats)
    except KeyboardInterrupt:
        print("\nstopped watching (the campaign goes on)", flush=True)
        return 0
    finally:
        engine.dispose()
    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C while the report prints: the same quiet stop
        print()
        _print_status(args.name, stats)
        print("\n".join(outcome_table(stats)), flush=True)
    return 0
