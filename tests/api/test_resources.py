"""Agents, routes, flows, calls, conversations and users over HTTP, on SQLite and PostgreSQL; bad input of
every kind answered with the error body and the right status, nothing partially written."""

from __future__ import annotations

import io
import wave
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlmodel import select

from models import Agent, Call, CallTurn, Contact, Conversation, FlowRun, Message
from models.db import session_scope
from tests.api.conftest import Api


def _error(body: Any) -> dict[str, Any]:
    assert set(body) == {"error"}, body
    assert set(body["error"]) == {"code", "message", "field"}, body
    error: dict[str, Any] = body["error"]
    return error


async def test_agent_lifecycle(api_db: Api) -> None:
    api = api_db
    status, agent = await api.call("POST", "/api/v1/agents", role="designer",
                                   json={"name": "sales", "persona": "You sell.", "temperature": 0.5})
    assert status == 201 and agent["name"] == "sales" and agent["active"] is True
    assert agent["created_at"].endswith("Z")  # UTC, explicitly
    agent_id = agent["id"]
    status, changed = await api.call("PATCH", f"/api/v1/agents/{agent_id}", role="designer",
                                     json={"greeting": "Hi!", "max_tokens": 64})
    assert (status, changed["greeting"], changed["max_tokens"], changed["persona"]) == (200, "Hi!", 64, "You sell.")
    status, off = await api.call("POST", f"/api/v1/agents/{agent_id}/deactivate", role="designer")
    assert (status, off["active"]) == (200, False)
    status, on = await api.call("POST", f"/api/v1/agents/{agent_id}/activate", role="designer")
    assert (status, on["active"]) == (200, True)
    status, listed = await api.call("GET", "/api/v1/agents", role="viewer")
    assert [a["name"] for a in listed] == ["sales"]
    status, error = await api.call("POST", "/api/v1/agents", role="designer", json={"name": "sales"})
    assert (status, _error(error)["code"], error["error"]["field"]) == (409, "conflict", "name")

    # A route keeps the agent from being deleted; removing the route frees it.
    status, route = await api.call("POST", "/api/v1/routes", role="designer", json={"did": "+15550100",
                                                                                    "agent_id": agent_id})
    assert status == 201
    status, error = await api.call("DELETE", f"/api/v1/agents/{agent_id}", role="designer")
    assert (status, _error(error)["field"]) == (409, "routes")
    assert (await api.call("DELETE", f"/api/v1/routes/{route['id']}", role="designer"))[0] == 204
    assert (await api.call("DELETE", f"/api/v1/agents/{agent_id}", role="designer"))[0] == 204
    assert (await api.call("GET", f"/api/v1/agents/{agent_id}", role="viewer"))[0] == 404


async def test_bad_input_is_rejected_cleanly(api_db: Api) -> None:
    api = api_db
    cases: list[tuple[str, str, dict[str, Any], int, str, str | None]] = [
        ("POST", "/api/v1/agents", {"json": {"name": "ok", "surprise": 1}}, 422, "invalid_input", "surprise"),
        ("POST", "/api/v1/agents", {"json": {"name": "ok", "max_tokens": "12"}}, 422, "invalid_input", "max_tokens"),
        ("POST", "/api/v1/agents", {"json": {"name": "ok", "temperature": 9}}, 422, "invalid_input", "temperature"),
        ("POST", "/api/v1/agents", {"json": {"name": "../../etc"}}, 422, "invalid_input", "name"),
        ("POST", "/api/v1/agents", {"json": ["name"]}, 422, "invalid_input", None),
        ("POST", "/api/v1/agents", {"data": b"{not json", "headers": {"Content-Type": "application/json"}}, 400,
         "malformed_json", None),
        ("POST", "/api/v1/agents", {"data": b"", "headers": {"Content-Type": "application/json"}}, 400,
         "malformed_json", None),
        ("POST", "/api/v1/agents", {"data": b"name=x", "headers": {"Content-Type": "text/plain"}}, 415,
         "unsupported_media_type", "Content-Type"),
        ("POST", "/api/v1/agents", {"data": io.BytesIO(b"{" + b" " * (3 * 1024 * 1024) + b"}"),
                                    "headers": {"Content-Type": "application/json"}}, 413, "payload_too_large", None),
        ("PATCH", "/api/v1/agents/1", {"json": {"name": None}}, 422, "invalid_input", "name"),
        ("GET", "/api/v1/calls?limit=100000", {}, 422, "invalid_input", "limit"),
        ("GET", "/api/v1/calls?offset=99999999999999999999999", {}, 422, "invalid_input", "offset"),
        ("GET", "/api/v1/calls?limit=abc", {}, 422, "invalid_input", "limit"),
        ("GET", "/api/v1/calls?limit=5&limit=6", {}, 422, "invalid_input", "limit"),
        ("GET", "/api/v1/calls?nonsense=1", {}, 422, "invalid_input", "nonsense"),
        ("GET", "/api/v1/calls?since=yesterday", {}, 422, "invalid_input", "since"),
        ("GET", "/api/v1/calls/99999999999999999999999999", {}, 404, "not_found", "call_id"),
        ("GET", "/api/v1/calls/0", {}, 404, "not_found", "call_id"),
        ("GET", "/api/v1/calls/abc", {}, 404, "not_found", None),
        ("DELETE", "/api/v1/calls", {}, 405, "method_not_allowed", None),
        ("GET", "/api/v1/dialplans/..%2F..%2Fetc%2Fpasswd", {}, 404, "not_found", None),
    ]
    for method, path, kwargs, status, code, field in cases:
        headers = {**api.auth("admin"), **kwargs.pop("headers", {})}
        response = await api.client.request(method, path, headers=headers, **kwargs)
        body = await response.json()
        assert (response.status, _error(body)["code"], body["error"]["field"]) == (status, code, field), (path, body)
    # Nothing of the refused creates was written.
    with session_scope(api.engine) as session:
        assert session.exec(select(Agent)).all() == []


async def test_patch_null_is_refused_and_changes_nothing(api: Api) -> None:
    status, agent = await api.call("POST", "/api/v1/agents", role="designer", json={"name": "keep"})
    status, error = await api.call("PATCH", f"/api/v1/agents/{agent['id']}", role="designer",
                                   json={"name": None, "greeting": "changed"})
    assert (status, _error(error)["field"]) == (422, "name")
    assert (await api.call("GET", f"/api/v1/agents/{agent['id']}", role="viewer"))[1]["greeting"] == agent["greeting"]


async def test_agents_start_flows_by_name(api_db: Api) -> None:
    api = api_db
    _, flow = await api.call("POST", "/api/v1/flows", role="designer", json={
        "name": "booking", "start_step": "ask", "steps": [{"id": "ask", "say": "Which day?"}]})
    status, agent = await api.call("POST", "/api/v1/agents", role="designer", json={
        "name": "frontdesk", "flow_triggers": {"booking": ["book", "an appointment"]}})
    assert (status, agent["flow_triggers"], agent["start_flow"]) == (201, {"booking": ["book", "an appointment"]},
                                                                      None), agent
    path = f"/api/v1/agents/{agent['id']}"
    status, changed = await api.call("PATCH", path, role="designer", json={"start_flow": "booking"})
    assert (status, changed["start_flow"], changed["flow_triggers"]) == (200, "booking", agent["flow_triggers"])
    for body, field in (({"start_flow": "bookin"}, "start_flow"),
                        ({"flow_triggers": {"nope": ["x"]}}, "flow_triggers.nope"),
                        ({"flow_triggers": {"booking": []}}, "flow_triggers.booking"),
                        ({"flow_triggers": {"booking": ["x" * 101]}}, "flow_triggers.booking.0")):
        status, error = await api.call("PATCH", path, role="designer", json=body)
        assert (status, _error(error)["field"]) == (422, field), body
    status, cleared = await api.call("PATCH", path, role="designer", json={"start_flow": None})
    assert (status, cleared["start_flow"]) == (200, None)
    assert flow["name"] == "booking"


async def test_routes_point_at_agents_or_flows(api_db: Api) -> None:
    api = api_db
    _, agent = await api.call("POST", "/api/v1/agents", json={"name": "support"})
    cases = [({"did": "100"}, 422, "agent_id"), ({"did": "100", "agent_id": 999}, 422, "agent_id"),
             ({"did": "100", "flow_id": 5}, 422, "flow_id"),
             ({"did": "1 OR 1=1", "agent_id": agent["id"]}, 422, "did")]
    for body, status, field in cases:
        answer_status, error = await api.call("POST", "/api/v1/routes", role="designer", json=body)
        assert (answer_status, _error(error)["field"]) == (status, field), body
    _, flow = await api.call("POST", "/api/v1/flows", role="designer", json={
        "name": "menu", "start_step": "ask", "steps": [{"id": "ask", "say": "Sales or support?"}]})
    status, route = await api.call("POST", "/api/v1/routes", role="designer",
                                   json={"did": "200", "flow_id": flow["id"]})
    assert (status, route["flow_id"], route["agent_id"]) == (201, flow["id"], None)
    status, error = await api.call("DELETE", f"/api/v1/flows/{flow['id']}", role="designer")
    assert (status, _error(error)["field"]) == (409, "routes")
    status, route = await api.call("PATCH", f"/api/v1/routes/{route['id']}", role="designer",
                                   json={"flow_id": None, "agent_id": agent["id"]})
    assert (status, route["agent_id"]) == (200, agent["id"])
    assert (await api.call("DELETE", f"/api/v1/flows/{flow['id']}", role="designer"))[0] == 204


async def test_flows_are_validated(api: Api) -> None:
    steps: list[dict[str, Any]] = [
        {"id": "q1", "say": "Your account number?",
         "collect": {"var": "account", "type": "digits", "min_length": 4, "max_length": 8},
         "next": "q2", "fallback": "bye"},
        {"id": "q2", "say": "Happy with us, account {account}?", "collect": {"var": "happy", "type": "yes_no"},
         "branches": [{"when": {"var": "happy", "equals": "no"}, "next": "sorry"}], "next": "bye"},
        {"id": "sorry", "say": "Sorry to hear that.", "next": "bye"},
        {"id": "bye", "say": "Goodbye.", "end": "done"}]
    good: dict[str, Any] = {"name": "survey", "start_step": "q1", "steps": steps}
    status, flow = await api.call("POST", "/api/v1/flows", role="designer", json=good)
    assert status == 201 and [s["id"] for s in flow["steps"]] == ["q1", "q2", "sorry", "bye"]
    assert flow["steps"][0]["collect"] == {"var": "account", "type": "digits", "min_length": 4, "max_length": 8}
    legacy = {"name": "legacy", "start_step": "a", "steps": [{"id": "a", "message": "Hi", "next_step": "b"},
                                                              {"id": "b", "message": "Bye"}]}
    status, old = await api.call("POST", "/api/v1/flows", role="designer", json=legacy)
    assert status == 201 and old["steps"][0] == {"id": "a", "say": "Hi", "next": "b"}, old
    assert (await api.call("DELETE", f"/api/v1/flows/{old['id']}", role="designer"))[0] == 204
    q1 = steps[0]
    bad_cases: list[tuple[dict[str, Any], str]] = [
        ({"start_step": "nope"}, "start_step"),
        ({"steps": [{"id": "a", "say": "x", "next": "ghost"}], "start_step": "a"}, "steps.0.next"),
        ({"steps": [{"id": "a", "say": "x"}, {"id": "a", "say": "y"}], "start_step": "a"}, "steps.1.id"),
        # A loop that never waits for the caller, and no way out.
        ({"steps": [{"id": "a", "say": "x", "next": "b"}, {"id": "b", "say": "y", "next": "a"}],
          "start_step": "a"}, "steps"),
        ({"steps": [{"id": "a", "say": "x", "collect": {"var": "v", "type": "regex", "pattern": "([a-z"}}],
          "start_step": "a"}, "steps.0.collect"),
        ({"steps": [{"id": "a", "say": "x", "collect": {"var": "v"},
                     "branches": [{"when": {"var": "v", "equals": "1"}, "next": "zzz"}]}], "start_step": "a"},
         "steps.0.branches.0.next"),
        ({"steps": [{"id": "a", "say": "x", "bogus": True}], "start_step": "a"}, "steps.0.bogus"),
        # A variable used before it is collected on every path; an unreachable step.
        ({"steps": [{**q1, "say": "Your account, {happy}?"}, *steps[1:]]}, "steps.0.say"),
        ({"steps": [*steps, {"id": "orphan", "say": "never", "end": "x"}]}, "steps.4.id"),
        ({"agent_id": 4242}, "agent_id"),
    ]
    for index, (change, field) in enumerate(bad_cases):
        body = {**good, "name": f"bad{index}", **change}
        status, error = await api.call("POST", "/api/v1/flows", role="designer", json=body)
        assert (status, _error(error)["field"]) == (422, field), (change, error)
    status, error = await api.call("PATCH", f"/api/v1/flows/{flow['id']}", role="designer", json={"start_step": "zz"})
    assert (status, _error(error)["field"]) == (422, "start_step")
    # Starting at q2 would leave q1 unreachable and {account} uncollected: refused, and the flow is unchanged.
    status, error = await api.call("PATCH", f"/api/v1/flows/{flow['id']}", role="designer", json={"start_step": "q2"})
    assert status == 422, error
    status, changed = await api.call("PATCH", f"/api/v1/flows/{flow['id']}", role="designer",
                                     json={"description": "shorter"})
    assert (status, changed["start_step"], changed["description"]) == (200, "q1", "shorter")
    assert len((await api.call("GET", "/api/v1/flows", role="viewer"))[1]) == 1
    status, runs = await api.call("GET", f"/api/v1/flows/{flow['id']}/runs", role="viewer")
    assert (status, runs["total"], runs["items"]) == (200, 0, [])


def _write_wav(path: Path, seconds: float = 1.0) -> bytes:
    path.parent.mkdir(parents=True, exist_ok=True)
    with wave.open(str(path), "wb") as handle:
        handle.setnchannels(1)
        handle.setsampwidth(2)
        handle.setframerate(8000)
        handle.writeframes(bytes(range(256)) * int(8000 * 2 * seconds / 256))
    return path.read_bytes()


def _seed_calls(api: Api) -> dict[str, Any]:
    now = datetime.now(UTC)
    with session_scope(api.engine) as session:
        agent = Agent(name="voice")
        session.add(agent)
        session.flush()
        contact = Contact(phone="+15550111")
        session.add(contact)
        session.flush()
        conversation = Conversation(channel="voice", contact_id=contact.id, agent_id=agent.id, external_id="c1")
        session.add(conversation)
        session.flush()
        assert conversation.id is not None
        for index, (role, text) in enumerate((("user", "Hi"), ("assistant", "Hello, how can I help?"))):
            session.add(Message(conversation_id=conversation.id, role=role, text=text,
                                created_at=now + timedelta(seconds=index), timings={"total_ms": 12.5}))
        calls: list[int] = []
        for index in range(7):
            call = Call(channel_id=f"chan-{index}", caller="+15550111" if index % 2 else "+4930123",
                        did="100", agent_id=agent.id if index < 5 else None, conversation_id=conversation.id,
                        started_at=now - timedelta(hours=index), outcome="completed" if index else "active",
                        recording_path=f"call-{index}.wav" if index == 1 else "")
            session.add(call)
            session.flush()
            assert call.id is not None
            calls.append(call.id)
        session.add(CallTurn(call_id=calls[1], index=0, kind="greeting", bot_text="Hello"))
        session.add(CallTurn(call_id=calls[1], index=1, user_text="opening hours?", bot_text="9 to 5",
                             stt_done_ms=210.0, llm_first_token_ms=380.5, first_frame_out_ms=720.0))
        return {"agent": agent.id, "calls": calls, "conversation": conversation.id, "now": now}


async def test_calls_filters_pagination_and_detail(api_db: Api) -> None:
    api = api_db
    seeded = _seed_calls(api)
    status, page = await api.call("GET", "/api/v1/calls?limit=3", role="viewer")
    assert (status, page["total"], len(page["items"])) == (200, 7, 3)
    assert [c["channel_id"] for c in page["items"]] == ["chan-0", "chan-1", "chan-2"]  # newest first
    status, page2 = await api.call("GET", "/api/v1/calls?limit=3&offset=6", role="viewer")
    assert [c["channel_id"] for c in page2["items"]] == ["chan-6"]
    filters = {
        f"agent_id={seeded['agent']}": 5, "caller=%2B1555": 3, "caller=%2B4930123": 4, "outcome=active": 1,
        "did=100": 7, "direction=outbound": 0, "caller=%27%20OR%201%3D1%20--": 0, "caller=%25": 0,
    }
    for query, expected in filters.items():
        status, result = await api.call("GET", f"/api/v1/calls?{query}", role="viewer")
        assert (status, result["total"]) == (200, expected), query
    since = (seeded["now"] - timedelta(hours=2, minutes=30)).isoformat().replace("+00:00", "Z")
    status, recent = await api.call("GET", f"/api/v1/calls?since={since}", role="viewer")
    assert recent["total"] == 3
    status, error = await api.call("GET", f"/api/v1/calls?since={since}&until={since}", role="viewer")
    assert (status, _error(error)["field"]) == (422, "since")

    call_id = seeded["calls"][1]
    status, detail = await api.call("GET", f"/api/v1/calls/{call_id}", role="viewer")
    assert status == 200 and detail["has_recording"] is True
    assert [(t["kind"], t["user_text"]) for t in detail["turns"]] == [("greeting", ""), ("speech", "opening hours?")]
    assert detail["turns"][1]["llm_first_token_ms"] == 380.5

    status, conversations = await api.call("GET", "/api/v1/conversations?channel=voice", role="viewer")
    assert conversations["total"] == 1
    status, messages = await api.call("GET", f"/api/v1/conversations/{seeded['conversation']}/messages",
                                      role="viewer")
    assert [(m["role"], m["text"]) for m in messages["items"]] == [("user", "Hi"),
                                                                   ("assistant", "Hello, how can I help?")]
    assert messages["items"][0]["timings"] == {"total_ms": 12.5}
    assert (await api.call("GET", "/api/v1/conversations/999/messages", role="viewer"))[0] == 404


async def test_recording_download_with_range(api: Api) -> None:
    seeded = _seed_calls(api)
    data = _write_wav(api.settings.recordings_dir / "call-1.wav")
    call_id = seeded["calls"][1]
    response = await api.client.get(f"/api/v1/calls/{call_id}/recording", headers=api.auth("viewer"))
    assert response.status == 200 and response.headers["Content-Type"] == "audio/wav"
    assert await response.read() == data
    response = await api.client.get(f"/api/v1/calls/{call_id}/recording",
                                    headers={**api.auth("viewer"), "Range": "bytes=100-199"})
    assert response.status == 206
    assert response.headers["Content-Range"] == f"bytes 100-199/{len(data)}"
    assert await response.read() == data[100:200]
    response = await api.client.get(f"/api/v1/calls/{call_id}/recording",
                                    headers={**api.auth("viewer"), "Range": f"bytes={len(data) + 10}-"})
    assert response.status == 416
    status, error = await api.call("GET", f"/api/v1/calls/{seeded['calls'][2]}/recording", role="viewer")
    assert (status, _error(error)["field"]) == (404, "recording")
    # A recording path that points outside the recordings folder is never served.
    with session_scope(api.engine) as session:
        call = session.get(Call, seeded["calls"][3])
        assert call is not None
        call.recording_path = "../../secrets.env"
        session.add(call)
    api.settings.secrets_file.parent.mkdir(parents=True, exist_ok=True)
    api.settings.secrets_file.write_text("EVA_JWT_SECRET=nope\n")
    status, error = await api.call("GET", f"/api/v1/calls/{seeded['calls'][3]}/recording", role="viewer")
    assert (status, _error(error)["code"]) == (404, "not_found")

    # The recordings folder is Asterisk's: a recording (or the folder itself) replaced by a link to a root-only
    # file is never followed (the review's check-then-open race, done here without the race).
    recording = api.settings.recordings_dir / "call-1.wav"
    recording.unlink()
    recording.symlink_to(api.settings.secrets_file)
    status, error = await api.call("GET", f"/api/v1/calls/{call_id}/recording", role="viewer")
    assert (status, _error(error)["field"]) == (404, "recording")
    recording.unlink()
    moved = api.settings.recordings_dir.with_name("elsewhere")
    api.settings.recordings_dir.rename(moved)
    _write_wav(moved / "call-1.wav")
    api.settings.recordings_dir.symlink_to(moved)
    status, error = await api.call("GET", f"/api/v1/calls/{call_id}/recording", role="viewer")
    assert (status, _error(error)["field"]) == (404, "recording")


async def test_live_call_endpoints_need_call_control(api: Api) -> None:
    for method, path, body in (("GET", "/api/v1/calls/live", None), ("POST", "/api/v1/calls/1/hangup", None),
                               ("POST", "/api/v1/calls/outgoing", {"agent_id": 1, "number": "100"})):
        status, error = await api.call(method, path, json=body)
        assert (status, _error(error)["code"]) == (503, "calls_unavailable"), path


async def test_users_crud(api: Api) -> None:
    status, user = await api.call("POST", "/api/v1/users", json={"username": "ops", "password": "long enough 1",
                                                                   "role": "designer"})
    assert status == 201 and "password" not in user and "password_hash" not in user
    for body, field in (({"username": "x", "password": "long enough 1"}, "username"),
                        ({"username": "okname", "password": "short"}, "password"),
                        ({"username": "okname", "password": "long enough 1", "role": "root"}, "role")):
        status, error = await api.call("POST", "/api/v1/users", json=body)
        assert (status, _error(error)["field"]) == (422, field), body
    status, error = await api.call("POST", "/api/v1/users", json={"username": "ops", "password": "long enough 1"})
    assert status == 409
    status, users = await api.call("GET", "/api/v1/users")
    assert {u["username"] for u in users} == {"admin", "designer", "viewer", "ops"}
    assert (await api.call("DELETE", f"/api/v1/users/{user['id']}"))[0] == 204
    assert (await api.call("GET", f"/api/v1/users/{user['id']}"))[0] == 404


async def test_a_flow_step_naming_a_missing_recorded_prompt_is_refused(api: Api) -> None:
    body = {"name": "prompted", "start_step": "a", "steps": [{"id": "a", "prompt": "no-such-sound", "end": "x"}]}
    status, error = await api.call("POST", "/api/v1/flows", role="designer", json=body)
    assert (status, _error(error)["field"]) == (422, "steps.0.prompt"), error
    _write_wav(api.settings.sounds_dir / "no-such-sound.wav")
    status, flow = await api.call("POST", "/api/v1/flows", role="designer", json=body)
    assert status == 201, flow


async def test_deleting_a_flow_keeps_its_runs_as_history(api_db: Api) -> None:
    from voicebot.flows.runner import FlowRunner

    api = api_db
    body = {"name": "ask-name", "start_step": "a", "steps": [
        {"id": "a", "say": "Your name?", "collect": {"var": "name"}, "next": "b"},
        {"id": "b", "say": "Thanks {name}.", "end": "done"}]}
    status, flow = await api.call("POST", "/api/v1/flows", role="designer", json=body)
    assert status == 201, flow
    runner = FlowRunner(api.engine)
    done = await runner.start("ask-name", channel="chat")
    await runner.answer(done.run_id, "Ana")
    active = await runner.start("ask-name", channel="chat")
    assert (await api.call("DELETE", f"/api/v1/flows/{flow['id']}", role="designer"))[0] == 204
    with session_scope(api.engine) as session:
        runs = {r.id: r for r in session.exec(select(FlowRun)).all()}
    assert runs[done.run_id].flow_id is None and runs[done.run_id].flow_name == "ask-name"
    assert (runs[done.run_id].result, runs[done.run_id].variables["name"]) == ("done", "Ana")
    assert (runs[active.run_id].status, runs[active.run_id].result) == ("ended", "flow_deleted")
