"""Liveness, health, Prometheus metrics (registry and exposition), CORS."""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine

from tests.api.conftest import Api, offline_settings, start_api
from voicebot import metrics
from voicebot.metrics import Registry

_SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{([a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\]|\\.)*",?)*\})? (\S+)$')


def parse_exposition(text: str) -> dict[str, float]:
    """Strict enough to catch format errors: every line is a comment or a well-formed sample."""
    samples: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("# HELP ") or line.startswith("# TYPE "):
            continue
        match = _SAMPLE.match(line)
        assert match, f"not a Prometheus sample: {line!r}"
        value = match.group(4)
        samples[line.rsplit(" ", 1)[0]] = float(value.replace("+Inf", "inf"))
    return samples


async def test_liveness_and_health_without_dependencies(api: Api) -> None:
    response = await api.client.get("/health")
    assert (response.status, await response.json()) == (200, {"status": "ok", "asterisk": None})
    status, anonymous = await api.call("GET", "/api/v1/health", role=None)
    assert status == 200 and all(c["detail"] == "" for c in anonymous["checks"])  # no internals without login
    status, health = await api.call("GET", "/api/v1/health", role="viewer")
    assert status == 200
    checks = {c["name"]: c for c in health["checks"]}
    assert checks["database"]["status"] == "ok" and checks["database"]["detail"] == "sqlite"
    assert checks["asterisk_ari"]["status"] == "error"  # nothing listens on this test's ARI port
    assert checks["asterisk_ami"]["status"] == "unconfigured"  # offline API
    assert checks["llm"]["status"] == checks["chroma"]["status"] == "unconfigured"
    assert health["status"] == "degraded"
    # A scoped chat key (a website's) is a valid credential, but not one that reads internals.
    from admin_api import accounts
    from models.db import session_scope

    with session_scope(api.engine) as session:
        _row, key = accounts.create_api_key(session, "site", "chat")
    status, scoped = await api.call("GET", "/api/v1/health", role=None, headers={"X-API-Key": key})
    assert status == 200 and all(c["detail"] == "" for c in scoped["checks"])


async def test_metrics_endpoint_counts_requests_and_exposes_the_voice_metrics(api: Api) -> None:
    # Exposition only: the registry is process-wide, so exact differences (not ">= 1", which another test's
    # increments would satisfy).  That real calls move these metrics is checked on a real call in
    # tests/voice/test_call_mechanics.py (barge-in test).
    before = parse_exposition(await (await api.client.get("/metrics")).text())
    metrics.CALLS_ACTIVE.inc()
    metrics.TURN_STAGE_SECONDS.observe(0.42, stage="stt", agent=metrics.agent_label("front-desk"))
    metrics.BARGE_INS_TOTAL.inc(agent=metrics.agent_label("front-desk"))
    try:
        for _ in range(3):
            await api.call("GET", "/api/v1/agents", role="viewer")
        await api.call("GET", "/api/v1/agents/12345", role="viewer")
        response = await api.client.get("/metrics")
        assert response.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
        after = parse_exposition(await response.text())
    finally:
        metrics.CALLS_ACTIVE.dec()
    ok = 'eva_http_requests_total{method="GET",route="/api/v1/agents",status="200"}'
    missing = 'eva_http_requests_total{method="GET",route="/api/v1/agents/{agent_id}",status="404"}'
    assert after[ok] - before.get(ok, 0) == 3
    assert after[missing] - before.get(missing, 0) == 1
    def delta(name: str) -> float:
        return after[name] - before.get(name, 0)

    assert delta("eva_calls_active") == 1
    series = 'stage="stt",agent="front-desk"'
    assert delta(f'eva_turn_stage_seconds_bucket{{{series},le="0.3"}}') == 0
    assert delta(f'eva_turn_stage_seconds_bucket{{{series},le="0.5"}}') == 1  # cumulative buckets
    assert delta(f'eva_turn_stage_seconds_bucket{{{series},le="+Inf"}}') == 1
    assert delta(f'eva_turn_stage_seconds_count{{{series}}}') == 1
    assert abs(delta(f'eva_turn_stage_seconds_sum{{{series}}}') - 0.42) < 1e-9
    assert delta('eva_barge_ins_total{agent="front-desk"}') == 1
    assert after["eva_ingestion_queue"] == 0


def test_agent_labels_are_bounded_and_partial_labels_sum() -> None:
    names = [f"agent-{n}" for n in range(metrics.MAX_AGENT_LABELS + 5)]
    labels = {metrics.agent_label(name) for name in names}
    assert "other" in labels and len(labels) <= metrics.MAX_AGENT_LABELS + 1
    assert metrics.agent_label(None) == "-" and metrics.agent_label(names[0]) in (names[0], "other")
    registry = Registry()
    counter = registry.counter("calls_total", "Calls.", ("direction", "agent"))
    counter.inc(direction="inbound", agent="a")
    counter.inc(2, direction="inbound", agent="b")
    counter.inc(4, direction="outbound", agent="a")
    assert counter.value(direction="inbound") == 3 and counter.value(agent="a") == 5 and counter.value() == 7
    assert counter.value(direction="inbound", agent="b") == 2
    with pytest.raises(ValueError):
        counter.value(outcome="x")


def test_registry_exposition_rules() -> None:
    registry = Registry()
    counter = registry.counter("demo_total", "A counter.", ("kind",))
    gauge = registry.gauge("demo_level", "A gauge.")
    histogram = registry.histogram("demo_seconds", "A histogram.", buckets=(0.1, 1.0))
    counter.inc(kind='quote"back\\slash\nline')
    counter.inc(2, kind="plain")
    gauge.set(2.5)
    histogram.observe(0.05)
    histogram.observe(0.5)
    histogram.observe(7)
    text = registry.render()
    samples = parse_exposition(text)
    assert samples['demo_total{kind="quote\\"back\\\\slash\\nline"}'] == 1
    assert samples['demo_total{kind="plain"}'] == 2
    assert samples["demo_level"] == 2.5
    assert [samples[f'demo_seconds_bucket{{le="{b}"}}'] for b in ("0.1", "1", "+Inf")] == [1, 2, 3]
    assert samples["demo_seconds_count"] == 3 and math.isclose(samples["demo_seconds_sum"], 7.55)
    with pytest.raises(ValueError):
        counter.inc(-1, kind="plain")
    with pytest.raises(ValueError):
        counter.inc(kind="x", other="y")
    with pytest.raises(ValueError):
        registry.counter("demo_total", "again")
    gauge.set_function(lambda: 42.0)
    assert "demo_level 42" in registry.render()


async def test_cors_is_off_by_default_and_allows_only_configured_origins(
        api: Api, tmp_path: Path, new_engine: Callable[[], Engine]) -> None:
    response = await api.client.get("/health", headers={"Origin": "https://evil.example"})
    assert "Access-Control-Allow-Origin" not in response.headers
    cors_api = await start_api(offline_settings(tmp_path / "cors", api_cors_origins="https://admin.example"),
                               new_engine(), offline_asterisk=True)
    try:
        preflight = await cors_api.client.options("/api/v1/agents", headers={
            "Origin": "https://admin.example", "Access-Control-Request-Method": "POST"})
        assert preflight.status == 204
        assert preflight.headers["Access-Control-Allow-Origin"] == "https://admin.example"
        assert "X-API-Key" in preflight.headers["Access-Control-Allow-Headers"]
        refused = await cors_api.client.options("/api/v1/agents", headers={
            "Origin": "https://evil.example", "Access-Control-Request-Method": "POST"})
        assert refused.status == 403 and "Access-Control-Allow-Origin" not in refused.headers
        response = await cors_api.client.get("/api/v1/agents", headers={"Origin": "https://admin.example"})
        assert response.status == 401  # CORS is not authentication
        assert response.headers["Access-Control-Allow-Origin"] == "https://admin.example"
    finally:
        await cors_api.client.close()


async def test_call_control_that_does_not_fit_the_protocol_is_refused_at_start(
        tmp_path: Path, new_engine: Callable[[], Engine], caplog: pytest.LogCaptureFixture) -> None:
    class NotACallControl:
        async def live_calls(self) -> list[object]:
            return []

    api = await start_api(offline_settings(tmp_path / "cc"), new_engine(), offline_asterisk=True,
                          call_control=NotACallControl())
    try:
        assert "does not implement admin_api.control.CallControl" in caplog.text
        status, error = await api.call("GET", "/api/v1/calls/live", role="viewer")
        assert (status, error["error"]["code"]) == (503, "calls_unavailable")
    finally:
        await api.client.close()
