"""Analytics on a seeded data set (SQLite and PostgreSQL): every number equals what the test counts itself from the
rows it wrote, per day, agent and channel; percentiles of the call turns' voice-to-voice latency; the questions an
agent could not answer; windows and filters; bad windows refused."""

from __future__ import annotations

import random
from collections import Counter, defaultdict
from datetime import UTC, datetime, timedelta
from typing import Any

from admin_api.analytics import percentile
from models import Agent, Call, CallTurn, Conversation, Message
from models.db import session_scope
from tests.api.conftest import Api

START = datetime(2026, 11, 20, tzinfo=UTC)
CHANNELS = ("voice", "whatsapp", "email", "chat")
QUESTIONS = ["When do you open?", "How much is a repair?", "Do you sell scooters?", "Can I pay by card?"]
SENTIMENTS = ("negative", "neutral", "positive")
CATEGORIES = ("sales", "support", "complaint", "other")
REPLIES = ["We open at nine.", "A repair is 15 dollars.", "I am sorry, I do not know that.", "Yes, we take cards."]


def seed(api: Api) -> dict[str, Any]:
    """Two agents, six days of conversations on every channel, calls with turns; returns what was written."""
    rng = random.Random(7)
    written: dict[str, Any] = {"conversations": [], "messages": [], "calls": [], "turns": []}
    with session_scope(api.engine) as session:
        agents = [Agent(name="shop"), Agent(name="clinic")]
        for agent in agents:
            session.add(agent)
        session.flush()
        agent_ids = [a.id for a in agents]
        for n in range(60):
            day = START + timedelta(days=rng.randrange(6), hours=rng.randrange(24), minutes=rng.randrange(60))
            agent_id, channel = rng.choice(agent_ids), rng.choice(CHANNELS)
            conversation = Conversation(channel=channel, agent_id=agent_id, started_at=day, updated_at=day)
            session.add(conversation)
            session.flush()
            assert conversation.id is not None
            written["conversations"].append((day, agent_id, channel))
            for turn in range(rng.randrange(1, 4)):
                at = day + timedelta(minutes=turn, seconds=1)
                pick = rng.randrange(len(QUESTIONS))
                for role, text in (("user", QUESTIONS[pick]), ("assistant", REPLIES[pick])):
                    # Some of the contacts' messages analysed (sentiment, category), as the worker leaves them.
                    analysed = role == "user" and rng.random() < 0.7
                    sentiment = rng.choice(SENTIMENTS) if analysed else None
                    category = rng.choice(CATEGORIES) if analysed else None
                    session.add(Message(conversation_id=conversation.id, role=role, text=text, created_at=at,
                                        sentiment=sentiment, category=category,
                                        analysis_status="done" if analysed else ""))
                    written["messages"].append((at, agent_id, channel, role, text, QUESTIONS[pick], sentiment,
                                                category))
                    at += timedelta(seconds=1)
                session.flush()
            if channel == "voice":
                answered = rng.random() < 0.8
                outcome = rng.choice(["completed", "transferred", "caller_hangup"]) if answered else "failed"
                length = rng.randrange(20, 300)
                call = Call(channel_id=f"c{n}", agent_id=agent_id, conversation_id=conversation.id, started_at=day,
                            answered_at=day + timedelta(seconds=2) if answered else None,
                            ended_at=day + timedelta(seconds=2 + length), outcome=outcome)
                session.add(call)
                session.flush()
                assert call.id is not None
                written["calls"].append((day, agent_id, answered, outcome, length if answered else None))
                for index in range(rng.randrange(0, 4) if answered else 0):
                    latency = rng.choice([None, *[float(rng.randrange(600, 2500)) for _ in range(5)]])
                    interrupted = rng.random() < 0.3
                    session.add(CallTurn(call_id=call.id, index=index, kind="speech", first_frame_out_ms=latency,
                                         interrupted=interrupted))
                    written["turns"].append((day, agent_id, latency, interrupted))
                session.add(CallTurn(call_id=call.id, index=99, kind="greeting", first_frame_out_ms=1.0,
                                     interrupted=True))  # not a caller turn: never counted
    written["agents"] = agent_ids
    return written


async def test_numbers_match_the_rows(api_db: Api) -> None:
    api = api_db
    data = seed(api)
    since, until = START.isoformat(), (START + timedelta(days=6)).isoformat()
    status, report = await api.call("GET", "/api/v1/analytics", role="viewer", params={"since": since, "until": until})
    assert status == 200, report
    assert report["totals"] == {"conversations": 60, "calls": len(data["calls"])}

    expected_channels: Counter[tuple[str, int, str]] = Counter()
    expected_messages: Counter[tuple[str, int, str]] = Counter()
    for day, agent, channel in data["conversations"]:
        expected_channels[(day.date().isoformat(), agent, channel)] += 1
    for at, agent, channel, *_ in data["messages"]:
        expected_messages[(at.date().isoformat(), agent, channel)] += 1
    got = {(c["day"], c["agent_id"], c["channel"]): (c["conversations"], c["messages"]) for c in report["channels"]}
    keys = set(expected_channels) | set(expected_messages)
    assert got == {k: (expected_channels[k], expected_messages[k]) for k in keys}
    sentiments: dict[tuple[str, int, str], Counter[str]] = defaultdict(Counter)
    categories: dict[tuple[str, int, str], Counter[str]] = defaultdict(Counter)
    for at, agent, channel, _role, _text, _question, sentiment, category in data["messages"]:
        key = (at.date().isoformat(), agent, channel)
        if sentiment:
            sentiments[key][sentiment] += 1
        if category:
            categories[key][category] += 1
    assert sum(sum(c.values()) for c in sentiments.values()) > 20  # the seed analysed a fair share
    for c in report["channels"]:
        key = (c["day"], c["agent_id"], c["channel"])
        assert c["sentiments"] == dict(sentiments[key]), key
        assert c["categories"] == dict(categories[key]), key
        counts = list(c["categories"].values())
        assert counts == sorted(counts, reverse=True)  # the top categories first

    calls: dict[tuple[str, int], dict[str, Any]] = defaultdict(lambda: {"calls": 0, "answered": 0, "transferred": 0,
                                                                        "failed": 0, "durations": [],
                                                                        "latencies": [], "barge_ins": 0})
    for day, agent, answered, outcome, length in data["calls"]:
        row = calls[(day.date().isoformat(), agent)]
        row["calls"] += 1
        row["answered"] += answered
        row["transferred"] += outcome == "transferred"
        row["failed"] += outcome == "failed"
        if length is not None:
            row["durations"].append(float(length))
    for day, agent, latency, interrupted in data["turns"]:
        row = calls[(day.date().isoformat(), agent)]
        row["barge_ins"] += interrupted
        if latency is not None:
            row["latencies"].append(latency)
    assert {(c["day"], c["agent_id"]) for c in report["calls"]} == set(calls)
    for out in report["calls"]:
        row = calls[(out["day"], out["agent_id"])]
        assert (out["calls"], out["answered"], out["transferred"], out["failed"], out["barge_ins"]) == (
            row["calls"], row["answered"], row["transferred"], row["failed"], row["barge_ins"]), out
        assert out["answer_rate"] == round(row["answered"] / row["calls"], 4)
        durations = row["durations"]
        assert out["avg_duration_s"] == (round(sum(durations) / len(durations), 2) if durations else None)
        latencies = sorted(row["latencies"])
        assert out["turns_timed"] == len(latencies)
        if latencies:  # nearest-rank bounds: the interpolated percentile lies between two observed values
            assert latencies[0] <= out["voice_to_voice_p50_ms"] <= out["voice_to_voice_p95_ms"] <= latencies[-1]
            assert out["voice_to_voice_p50_ms"] == round(percentile(latencies, 0.5) or 0, 1)
        else:
            assert out["voice_to_voice_p50_ms"] is None

    # Filters: one agent, one channel (a text channel has no calls).
    shop = data["agents"][0]
    status, only = await api.call("GET", "/api/v1/analytics", role="viewer",
                                  params={"since": since, "until": until, "agent_id": shop, "channel": "chat"})
    assert status == 200 and only["calls"] == []
    assert {(c["agent_id"], c["channel"]) for c in only["channels"]} <= {(shop, "chat")}
    assert sum(c["conversations"] for c in only["channels"]) == sum(
        1 for _, agent, channel in data["conversations"] if agent == shop and channel == "chat")

    # The questions the agents could not answer: every "I do not know" reply, with the question before it.
    status, page = await api.call("GET", "/api/v1/analytics/unanswered", role="viewer",
                                  params={"since": since, "until": until, "limit": 5})
    expected = [m for m in data["messages"] if m[3] == "assistant" and "do not know" in m[4]]
    assert status == 200 and page["total"] == len(expected) > 5 and len(page["items"]) == 5
    assert all(item["question"] == "Do you sell scooters?" for item in page["items"])
    ats = [item["at"] for item in page["items"]]
    assert ats == sorted(ats, reverse=True)


def test_percentile() -> None:
    assert percentile([], 0.5) is None
    assert percentile([3.0], 0.95) == 3.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 0.5) == 2.5
    assert percentile([10.0, 0.0, 20.0], 1.0) == 20.0


async def test_windows_are_checked(api: Api) -> None:
    for params, field in (({"since": "2026-12-02T00:00:00Z", "until": "2026-12-01T00:00:00Z"}, "since"),
                          ({"since": "2026-01-01T00:00:00Z", "until": "2026-12-01T00:00:00Z"}, "since"),
                          ({"channel": "fax"}, "channel"), ({"agent_id": "0"}, "agent_id"),
                          ({"since": "yesterday"}, "since")):
        status, error = await api.call("GET", "/api/v1/analytics", role="viewer", params=params)
        assert (status, error["error"]["field"]) == (422, field), params
    status, empty = await api.call("GET", "/api/v1/analytics", role="viewer")  # the last 7 days, nothing in them
    assert status == 200 and empty["channels"] == [] and empty["calls"] == []
    assert (await api.call("GET", "/api/v1/analytics", role=None))[0] == 401
