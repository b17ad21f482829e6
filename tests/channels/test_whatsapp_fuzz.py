"""Fuzzing the WhatsApp webhook, the one channel input anybody on the internet can POST to: the pure codec with
arbitrary bytes and webhook-shaped JSON, and the signed webhook through the real admin API (aiohttp) into a real
SQLite inbox.  Generated payloads have random fields and types, huge strings, lone surrogates and NULs, bad
UTF-8, Infinity/NaN and nesting deeper than the JSON decoder allows.  Asserted: only our own errors (4xx with a
JSON body, never a 5xx), bounded results, and a correctly signed well-formed message is stored exactly once,
whatever junk comes with it and however often it is delivered."""

from __future__ import annotations

import asyncio
import io
import itertools
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from sqlalchemy.engine import Engine
from sqlmodel import func, select

from admin_api.app import MAX_JSON_BODY
from channels.whatsapp.codec import parse_webhook_body, signature
from models import InboundMessage
from models.db import session_scope
from tests.channels.conftest import migrated
from tests.channels.test_whatsapp_service import APP_SECRET, World, make_world
from tests.fakes.graph_server import FakeGraph
from voicebot.errors import BadRequest, InvalidInput

OWN_NUMBER = FakeGraph().phone_number_id
DEEP = "__deep__"
"""Placeholder replaced in the encoded body by JSON nested deeper than any encoder here could write."""

odd_chars = st.characters(exclude_categories=()) | st.sampled_from(["\ud800", "\udfff", "\x00", "\u2028", "\ufeff"])
odd_text = st.text(alphabet=odd_chars, max_size=40)
huge_text = st.builds(lambda n, c: c * n, st.integers(0, 200_000), st.sampled_from(["x", "é", "\U0001f600", "["]))
texts = st.one_of(odd_text, odd_text, huge_text)
scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.integers(min_value=10**30),
                    st.floats(allow_nan=True, allow_infinity=True), odd_text, st.just(DEEP))
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(odd_text, inner, max_size=4), max_leaves=12)
wamids = st.from_regex(r"wamid\.[A-Za-z0-9+/=]{1,60}", fullmatch=True)
wa_ids = st.from_regex(r"[1-9][0-9]{6,14}", fullmatch=True)
kinds = st.sampled_from(["text", "image", "audio", "reaction", "interactive", "button", "system", "unknown", ""])


def maybe(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Mostly the right shape, sometimes anything at all."""
    return st.one_of(strategy, strategy, strategy, json_values)


messages = st.fixed_dictionaries({}, optional={
    "id": maybe(wamids), "from": maybe(wa_ids), "type": maybe(kinds),
    "timestamp": maybe(st.integers(0, 2**40).map(str)),
    "text": maybe(st.fixed_dictionaries({"body": maybe(texts)})),
    "interactive": maybe(st.fixed_dictionaries({"button_reply": maybe(st.fixed_dictionaries({"title": texts}))})),
    "errors": json_values, "context": json_values, "extra": json_values,
})
values = st.fixed_dictionaries({}, optional={
    "messaging_product": maybe(st.just("whatsapp")),
    "metadata": maybe(st.fixed_dictionaries({"phone_number_id": maybe(st.just(OWN_NUMBER))})),
    "contacts": maybe(st.lists(st.fixed_dictionaries({"wa_id": maybe(wa_ids),
                                                       "profile": maybe(st.fixed_dictionaries({"name": texts}))}),
                               max_size=3)),
    "messages": maybe(st.lists(messages, max_size=4)),
    "statuses": maybe(st.lists(st.fixed_dictionaries({}, optional={
        "id": maybe(wamids), "status": maybe(st.sampled_from(["sent", "delivered", "read", "failed"])),
        "recipient_id": json_values, "errors": json_values}), max_size=3)),
    "errors": json_values,
})
changes = st.fixed_dictionaries({"field": maybe(st.just("messages")), "value": maybe(values)})
entries = st.fixed_dictionaries({}, optional={"id": json_values, "changes": maybe(st.lists(changes, max_size=3))})
envelopes = st.fixed_dictionaries({}, optional={
    "object": maybe(st.just("whatsapp_business_account")), "entry": maybe(st.lists(entries, max_size=3))})


def encode(payload: Any, depth: int) -> bytes:
    """JSON the way Meta encodes it (ASCII escapes, so lone surrogates arrive as ``\\udxxx``), with every DEEP
    placeholder replaced by ``depth`` levels of nesting."""
    text = json.dumps(payload)
    return text.replace(json.dumps(DEEP), "[" * depth + "]" * depth).encode()


def corrupt(body: bytes, at: int, junk: bytes) -> bytes:
    at = at % (len(body) + 1)
    return body[:at] + junk + body[at:]


@st.composite
def bodies(draw: st.DrawFn) -> bytes:
    payload = draw(envelopes)
    body = encode(payload, draw(st.sampled_from([1, 50, 900, 5000, 200_000])))
    if draw(st.integers(0, 4)) == 0:
        body = corrupt(body, draw(st.integers(0, 10**6)), draw(st.sampled_from([b"\xff", b"\xc3", b"\xed\xa0\x80",
                                                                                 b"\x00", b"}", b"\""])))
    return body


# ---------------------------------------------------------------------------------------------- the codec
@settings(max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                   HealthCheck.data_too_large])
@given(body=st.one_of(bodies(), st.binary(max_size=200)))
def test_the_codec_takes_anything_and_yields_only_storable_messages(body: bytes) -> None:
    try:
        batch = parse_webhook_body(body)
    except (BadRequest, InvalidInput) as refused:
        assert refused.http_status in (400, 422)
        return
    assert len(batch.messages) + len(batch.statuses) <= body.count(b"{")
    for message in batch.messages:
        assert 0 < len(message.wamid) <= 255 and message.wamid.isascii() and message.wamid.isprintable()
        for text in (message.wa_id, message.kind, message.text, message.profile_name, message.phone_number_id):
            assert "\x00" not in text
            text.encode("utf-8")  # no lone surrogates: storable in SQLite and PostgreSQL text
    for status in batch.statuses:
        assert "\x00" not in status.wamid and status.wamid.encode("utf-8")


# ---------------------------------------------------------------------------------------------- the handler
_ids = itertools.count()


@st.composite
def deliveries(draw: st.DrawFn) -> tuple[bytes, str | None, dict[str, Any] | None]:
    """(body, signature header, the well-formed message it carries or None)."""
    how = draw(st.sampled_from(["canary", "canary", "canary", "junk", "unsigned", "forged"]))
    if how != "canary":
        body = draw(bodies())
        header = {"junk": signature(APP_SECRET, body), "unsigned": None,
                  "forged": draw(st.sampled_from([signature("guess", body), "sha256=", "garbage", "sha1=00"]))}[how]
        return body, header, None
    canary = {"id": f"wamid.FUZZ{next(_ids):07d}{draw(st.integers(0, 10**6))}", "from": draw(wa_ids),
              "type": "text", "timestamp": str(int(time.time())),
              "text": {"body": draw(st.text(alphabet=odd_chars, min_size=1, max_size=300).filter(str.strip))}}
    payload = draw(envelopes)
    good_change = {"field": "messages", "value": {"messaging_product": "whatsapp",
                                                  "metadata": {"phone_number_id": OWN_NUMBER},
                                                  "messages": [*draw(st.lists(messages, max_size=3)), canary]}}
    found = payload.get("entry")
    junk_entries: list[Any] = found if isinstance(found, list) else []
    position = draw(st.integers(0, len(junk_entries)))
    entry = {"id": "WABA", "changes": [*draw(st.lists(changes, max_size=2)), good_change]}
    body = encode({**payload, "object": "whatsapp_business_account",
                   "entry": [*junk_entries[:position], entry, *junk_entries[position:]]},
                  draw(st.sampled_from([1, 50, 900])))
    # A good message comes in real JSON, as Meta sends it: no NaN/Infinity anywhere in the body (those make the
    # whole body invalid JSON, refused with 400; the junk branches still send them).
    try:
        json.loads(body, parse_constant=_no_constants)
    except ValueError:
        assume(False)
    return body, signature(APP_SECRET, body), canary


def _no_constants(constant: str) -> Any:
    raise ValueError(constant)


def stored(engine: Engine, wamid: str) -> list[InboundMessage]:
    with session_scope(engine) as session:
        return list(session.exec(select(InboundMessage).where(InboundMessage.external_id == wamid)).all())


@pytest.mark.filterwarnings("ignore::hypothesis.errors.HypothesisWarning")  # the repr of a huge failing body
def test_the_signed_webhook_never_fails_and_never_loses_a_good_message(tmp_path: Path) -> None:
    fuzz_the_webhook(f"sqlite:///{tmp_path / 'fuzz.db'}", tmp_path, examples=1000)


@pytest.mark.filterwarnings("ignore::hypothesis.errors.HypothesisWarning")
def test_the_signed_webhook_into_postgresql(postgres_url: str, tmp_path: Path) -> None:
    """PostgreSQL refuses NUL in text and lone surrogates cannot be encoded for it: fewer examples, same rules."""
    fuzz_the_webhook(postgres_url, tmp_path, examples=300)


def fuzz_the_webhook(url: str, tmp_path: Path, *, examples: int) -> None:
    loop = asyncio.new_event_loop()
    engine = migrated(url)
    graph = FakeGraph()
    # max_queued=0: every stored message waits in the inbox (this is about accepting, not answering).
    world: World = loop.run_until_complete(_start(engine, graph, tmp_path))
    seen = {"canaries": 0, "refused": 0}
    try:
        @settings(max_examples=examples, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                               HealthCheck.data_too_large])
        @given(delivery=deliveries())
        def deliver(delivery: tuple[bytes, str | None, dict[str, Any] | None]) -> None:
            body, header, canary = delivery
            status, answer = loop.run_until_complete(_post(world, body, header))
            assert status < 500, answer
            assert status in (200, 400, 401, 403, 413, 422), (status, answer)
            if status != 200:
                assert isinstance(answer, dict) and answer["error"]["code"]  # a JSON body naming the problem
                seen["refused"] += 1
            if len(body) > MAX_JSON_BODY:  # the API's documented bound (Meta's webhooks are far smaller)
                assert status == 413, answer
                return
            if canary is not None:
                assert status == 200, answer
                (row,) = stored(engine, canary["id"])
                body_text = canary["text"]["body"]
                expected = body_text.encode("utf-8", "replace").decode("utf-8").replace("\x00", "\ufffd")
                assert (row.sender, row.text, row.status) == (canary["from"], expected, "pending")
                again, _ = loop.run_until_complete(_post(world, body, header))  # Meta delivers it again
                assert again == 200 and len(stored(engine, canary["id"])) == 1
                seen["canaries"] += 1

        deliver()
        with session_scope(engine) as session:
            rows = session.exec(select(func.count()).select_from(InboundMessage)).one()
        assert seen["canaries"] > examples // 4 and seen["refused"] > examples // 20 and rows >= seen["canaries"]
        assert world.service._tasks == set()
    finally:
        loop.run_until_complete(_stop(world, graph))
        loop.close()
        engine.dispose()


async def _start(engine: Engine, graph: FakeGraph, tmp_path: Path) -> World:
    await graph.start()
    return await make_world(engine, graph, tmp_path, max_queued=0)


async def _stop(world: World, graph: FakeGraph) -> None:
    await world.service.close()
    await world.service.client.close()
    await world.api.client.close()
    await graph.close()


async def _post(world: World, body: bytes, header: str | None) -> tuple[int, Any]:
    headers = {"Content-Type": "application/json"}
    if header is not None:
        headers["X-Hub-Signature-256"] = header
    # A file object: aiohttp warns that a large bytes body would be written in one blocking piece.
    return await world.api.call("POST", "/api/v1/whatsapp/webhook", role=None, data=io.BytesIO(body),
                                headers=headers)


@pytest.mark.parametrize("make", [
    lambda: b"[" * 100_000,
    lambda: b'{"object": "whatsapp_business_account", "entry": [1, {"changes": [{"field": "messages", "value": '
            b'{"messages": [{"id": "wamid.x", "from": "1555", "type": "text", "timestamp": '
            + b"9" * 5000 + b"}]}}]}]}",
    lambda: b'{"object": "whatsapp_business_account", "entry": [], "n": ' + b"9" * 5000 + b"}",
    lambda: b'{"object": "whatsapp_business_account", "entry": [{"changes": [{"field": "messages", "value": '
            b'{"messages": [{"id": "wamid.inf", "from": "1555", "type": "text", "timestamp": Infinity}]}}]}]}',
])
def test_known_hostile_bodies_are_refused_or_parsed(make: Callable[[], bytes]) -> None:
    """The crashes the fuzzer found first, kept as plain regressions: nesting past the decoder's recursion
    limit, integers past 4300 digits, an Infinity timestamp."""
    try:
        batch = parse_webhook_body(make())
    except (BadRequest, InvalidInput):
        return
    assert all(m.timestamp == 0 for m in batch.messages)


@pytest.mark.parametrize("constant", [b"Infinity", b"-Infinity", b"NaN"])
def test_json_constants_that_are_not_json_are_refused(constant: bytes) -> None:
    """Found by the PostgreSQL fuzz in CI: Python's decoder accepts ``Infinity`` anywhere (here in a field Eva does
    not read), and storing the payload then failed in PostgreSQL's json type: a 500 for a signed webhook."""
    body = (b'{"object": "whatsapp_business_account", "entry": [{"changes": [{"field": "messages", "value": '
            b'{"messages": [{"id": "wamid.c", "from": "1555", "type": "text", "text": {"body": "hi"}, '
            b'"interactive": {"x": ' + constant + b'}}]}}]}]}')
    with pytest.raises(BadRequest):
        parse_webhook_body(body)
