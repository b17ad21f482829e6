"""Issue 15's "done means", end to end on real calls: an admin, through the admin HTTP API (a logged-in session),
creates two agents, a SIP trunk and a voice campaign with two A/B arms (one agent each, 50/50), imports 50
contacts from a CSV through the import endpoint (two invalid rows and a duplicate are reported, not imported),
starts it, and follows it through ``GET .../analytics`` and ``eva campaign status --watch`` (the real command, a
subprocess with the test instance's environment) until it completes.

The callee behind the trunk (pjsua2) is told, per number, to pick up and hang up a second later, to answer 486
busy at once, or to ring until Eva gives up, so 50 real calls through Asterisk end in well under a minute at 4
calls at a time (the most one pjsua2 callee holds).  What is proven: every valid contact was dialled exactly once
(no retry rules) and its outcome is the one its number was told to give; both arms got contacts and each answered
call was taken by its arm's agent; the analytics' per-arm counts and z-test equal what the attempts table gives
(the z computed here, from the formula); the analytics never went backwards while it ran; and the command printed
progress lines and the final outcome table with the same counts.  The outcome table and the throughput are printed
for the report.
"""

from __future__ import annotations

import asyncio
import io
import math
import os
import re
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from aiohttp import FormData
from sqlmodel import col, select

from models import Call
from models.campaigns import CampaignEntry
from models.db import session_scope
from tests.api.conftest import Api, voice_admin_api
from tests.voice.test_campaign_dialer import ALWAYS, attempts, callee, incoming
from voicebot.server import EvaRuntime

pytestmark = [pytest.mark.asterisk, pytest.mark.slow, pytest.mark.asyncio(loop_scope="session")]

REPO = Path(__file__).resolve().parents[2]
CLI = "import sys; from voicebot.cli import main; sys.exit(main())"
CONTACTS = 50
NAME = "e2e-ab"
RING_S = 5
"""The campaign's ring timeout (the smallest the rules allow): the ringing numbers end ``no_answer`` after it."""


def told(i: int) -> str:
    """What number ``i`` does: 4 in 10 pick up, 5 in 10 are busy, 1 in 10 rings out."""
    return "answered" if i % 10 < 4 else "busy" if i % 10 < 9 else "no_answer"


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def api(runtime: EvaRuntime) -> AsyncIterator[Api]:
    """The admin API on the voice runtime's database."""
    async with voice_admin_api(runtime) as api:
        yield api


async def created(api: Api, path: str, body: dict[str, Any]) -> dict[str, Any]:
    status, made = await api.call("POST", path, json=body)  # as the admin (a login session)
    assert status == 201, made
    out: dict[str, Any] = made
    return out


def z_of(reached: tuple[int, int], contacts: tuple[int, int]) -> float:
    """The pooled two-proportion z of arm B against arm A, from the textbook formula."""
    pooled = sum(reached) / sum(contacts)
    spread = math.sqrt(pooled * (1 - pooled) * (1 / contacts[0] + 1 / contacts[1]))
    return 0.0 if spread == 0 else (reached[1] / contacts[1] - reached[0] / contacts[0]) / spread


async def test_an_ab_voice_campaign_from_csv_to_completion_watched_through_the_api_and_the_cli(
        api: Api, runtime: EvaRuntime) -> None:
    engine = runtime.engine
    assert engine is not None and runtime.dialer is not None
    numbers = [f"+1555709{i:04d}" for i in range(CONTACTS)]
    expected = {n: told(i) for i, n in enumerate(numbers)}
    trunk_id, heard = await callee(
        api, "camp-e2e", "127.0.0.42", answer_briefly={n: 1.0 for n, o in expected.items() if o == "answered"},
        refuse={n: 486 if o == "busy" else 180 for n, o in expected.items() if o != "answered"},
        calls=CONTACTS, timeout=150)

    alice = await created(api, "/api/v1/agents", {"name": "e2e-alice"})
    bruno = await created(api, "/api/v1/agents", {"name": "e2e-bruno"})
    campaign = await created(api, "/api/v1/campaigns", {
        "name": NAME, "timezone": "UTC", "country_code": "1", "rules": {
            "windows": ALWAYS, "trunk_ids": [trunk_id], "ring_timeout_s": RING_S,
            # 4 at once: the most one pjsua2 callee holds (see CallScript.answer_briefly); 600/min: no cap here.
            "pacing": {"max_concurrent": 4, "max_per_minute": 600},
            "arms": [{"name": "A", "agent_id": alice["id"], "weight": 50},
                     {"name": "B", "agent_id": bruno["id"], "weight": 50}]}})
    cid = campaign["id"]
    agent_of = {"A": alice["id"], "B": bruno["id"]}

    # 50 numbers written as people write them, two that are no numbers, and one of the 50 again.
    rows = [f"{n[2:5]}-{n[5:8]}-{n[8:]},Contact {i}" for i, n in enumerate(numbers)]
    rows[10:10] = ["not a number,Nobody"]
    rows[30:30] = ["12,Too short", f"{numbers[3]},Contact 3 again"]
    form = FormData()
    form.add_field("file", io.BytesIO(("phone,name\n" + "\n".join(rows) + "\n").encode()), filename="list.csv",
                   content_type="text/csv")
    response = await api.client.post(f"/api/v1/campaigns/{cid}/contacts/import", data=form, headers=api.auth("admin"))
    report = await response.json()
    assert response.status == 200, report
    assert (report["rows"], report["imported"]) == (CONTACTS + 3, CONTACTS), report
    assert [p["line"] for p in report["invalid"]] == [12, 32], report["invalid"]  # header = line 1
    assert [(p["line"], p["reason"]) for p in report["duplicates"]] == [(33, "the same number as line 5")], report

    status, started = await api.call("POST", f"/api/v1/campaigns/{cid}/start")
    assert status == 200 and started["status"] == "running", started
    t0 = time.monotonic()
    env = {**os.environ, "EVA_DATA_DIR": str(runtime.settings.data_dir),
           "EVA_DATABASE_URL": runtime.settings.effective_database_url}
    watcher = await asyncio.create_subprocess_exec(
        sys.executable, "-c", CLI, "campaign", "status", NAME, "--watch", "--interval", "1",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env, cwd=REPO)
    watched = asyncio.ensure_future(watcher.communicate())  # read as it runs: the pipe never fills

    seen: list[tuple[float, int, int, int]] = []  # (s since start, attempts placed, pending, reached)
    while True:
        status, stats = await api.call("GET", f"/api/v1/campaigns/{cid}/analytics", role="viewer")
        assert status == 200, stats
        seen.append((time.monotonic() - t0, stats["attempts"], stats["pending_attempts"], stats["reached"]))
        if stats["status"] != "running":
            break
        assert time.monotonic() - t0 < 300, f"the campaign never completed: {stats}"
        await asyncio.sleep(1.0)
    took = time.monotonic() - t0
    assert stats["status"] == "completed", stats
    out_bytes, err_bytes = await asyncio.wait_for(watched, 60)
    out, err = out_bytes.decode(), err_bytes.decode()

    # Every contact dialled once, with the outcome its number was told to give.
    rows_ = attempts(engine, cid)
    assert len(rows_) == CONTACTS and {p for _, p in rows_} == set(numbers), len(rows_)
    assert all(a.number == 1 for a, _ in rows_), rows_
    got = {p: a.outcome for a, p in rows_}
    assert got == expected, {p: (got[p], expected[p]) for p in numbers if got[p] != expected[p]}
    result = await heard  # the callee ends once it has seen all 50 calls end
    assert all(incoming(result, n) == 1 for n in numbers), result.events
    # Both arms got contacts, and an answered call was taken by its own arm's agent.
    with session_scope(engine) as session:
        entries = session.exec(select(CampaignEntry).where(col(CampaignEntry.campaign_id) == cid)).all()
        agent_of_call = {c.id: c.agent_id for c in session.exec(
            select(Call).where(col(Call.id).in_([a.call_id for a, _ in rows_ if a.call_id is not None]))).all()}
    contacts = Counter(e.arm for e in entries)
    assert set(contacts) == {"A", "B"} and all(contacts.values()), contacts
    for attempt, phone in rows_:
        if attempt.outcome == "answered":
            assert attempt.call_id is not None and agent_of_call[attempt.call_id] == agent_of[attempt.arm], phone
    # The analytics' A/B numbers are the attempts table's.
    outcome_counts = {arm: Counter(str(a.outcome) for a, _ in rows_ if a.arm == arm) for arm in ("A", "B")}
    reached = {arm: outcome_counts[arm]["answered"] for arm in ("A", "B")}
    per_arm = {arm["arm"]: arm for arm in stats["per_arm"]}
    for arm in ("A", "B"):
        assert per_arm[arm]["contacts"] == contacts[arm], per_arm[arm]
        assert per_arm[arm]["attempts"] == sum(outcome_counts[arm].values()), per_arm[arm]
        assert per_arm[arm]["reached"] == reached[arm], per_arm[arm]
        assert {k: v for k, v in per_arm[arm]["outcomes"].items() if v} == dict(outcome_counts[arm]), per_arm[arm]
    comparison = stats["comparison"]["reached"]
    pair = (reached["A"], reached["B"]), (contacts["A"], contacts["B"])
    assert comparison["rate_a"] == round(pair[0][0] / pair[1][0], 4), comparison
    assert comparison["rate_b"] == round(pair[0][1] / pair[1][1], 4), comparison
    assert comparison["z"] == round(z_of(*pair), 4), (comparison, pair)
    assert stats["reached"] == sum(reached.values()) == sum(1 for o in expected.values() if o == "answered")
    placed = [s[1] for s in seen]
    assert placed == sorted(placed) and placed[-1] == CONTACTS, seen  # progress only ever went forward

    # The command: progress lines while it ran, then the outcome table, the same counts; exit 0.
    assert watcher.returncode == 0, (watcher.returncode, err)
    assert "Traceback" not in err, err
    progress = [line for line in out.splitlines() if line.startswith("[")]
    done = [int(m.group(1)) for line in progress if (m := re.search(r"; (\d+)/50 done", line))]
    assert len(progress) >= 3 and done == sorted(done), progress
    assert f"{NAME}: completed (every contact was attempted); 50/50 done, 0 in progress, 0 waiting" in progress[-1], \
        progress[-1]
    table = {cells[0]: cells[1:] for line in out.split(progress[-1], 1)[1].splitlines()
             if line.startswith("  ") and (cells := line.split())}
    assert table["outcome"] == ["arm", "A", "arm", "B", "all"], out
    for outcome in ("answered", "busy", "no_answer"):
        assert table[outcome] == [str(outcome_counts["A"][outcome]), str(outcome_counts["B"][outcome]),
                                  str(outcome_counts["A"][outcome] + outcome_counts["B"][outcome])], table

    first = min(a.started_at for a, _ in rows_ if a.started_at is not None)
    last = max(a.ended_at for a, _ in rows_ if a.ended_at is not None)
    span = max(0.001, (last - first).total_seconds())
    print(f"\nend to end: {CONTACTS} contacts (arm A {contacts['A']}, arm B {contacts['B']}), "
          f"{len(rows_)} attempts; outcome table (outcome | arm A | arm B | all):")
    for outcome in ("answered", "busy", "no_answer"):
        a, b = outcome_counts["A"][outcome], outcome_counts["B"][outcome]
        print(f"  {outcome:9} | {a:5} | {b:5} | {a + b:3}")
    print(f"  reached: A {comparison['rate_a']}, B {comparison['rate_b']}, z {comparison['z']}, "
          f"p {comparison['p_value']}")
    print(f"throughput: {len(rows_)} attempts in {span:.1f} s from first dial to last outcome = "
          f"{len(rows_) / span * 60:.0f} attempts/min ({took:.1f} s from start to completed as the analytics saw "
          f"it; max_concurrent 4, ring timeout {RING_S} s); the CLI printed {len(progress)} progress lines:")
    for line in [*progress[:3], "...", *progress[-2:]]:
        print("  " + line)
