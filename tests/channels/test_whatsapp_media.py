"""WhatsApp files in and out: images, videos, stickers and documents from the documented webhook, downloaded through
the Graph API's media endpoints (the local FakeGraph), kept below the media folder, listed on the stored message and
acknowledged in the agent's language; a caption answered by the agent; documents offered to the agent's knowledge
(the real ingestion pipeline and embedding model) only when the admin allows it.  Outbound, the admin API's
send-message sends templates and media (by https link, or uploaded as multipart first), checked field by field
against what the Cloud API reference documents.  Attacker-shaped media objects are fuzzed through the signed
webhook: whatever they claim, each is answered once, politely, and nothing refused is written to disk."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import itertools
import json
import time
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy.engine import Engine
from sqlmodel import select

from channels.whatsapp.codec import MEDIA_KINDS, check_upload, parse_media
from models import Agent, InboundMessage, Message, utcnow
from models.db import session_scope
from rag import KnowledgeBase
from rag.embeddings import LocalEmbedder
from tests.api.conftest import offline_settings
from tests.channels.test_whatsapp_service import SENDER, World, make_world, payload
from tests.fakes.graph_server import FakeGraph, Reply
from tests.rag.files import make_pdf
from voicebot.errors import InvalidInput, PayloadTooLarge, UnsupportedMediaType
from voicebot.i18n import phrase

SEND = "/api/v1/whatsapp/send-message"
PHOTO = b"\xff\xd8\xff\xe0" + bytes(range(256)) * 40
"""The bytes of a JPEG as far as anything here looks (the type comes from the media answer)."""
PRICE_LIST = [
    "Price list. A city bike costs four hundred and ninety euros. A cargo bike costs two thousand one hundred "
    "euros. Servicing a bike costs sixty euros and takes two working days.",
]


def media_payload(kind: str, media_id: str, *, wamid: str, mime: str = "image/jpeg", caption: str | None = None,
                  filename: str | None = None) -> dict[str, Any]:
    """The documented image notification turned into a ``kind`` message about ``media_id``."""
    data = payload("image_message")
    message = data["entry"][0]["changes"][0]["value"]["messages"][0]
    part: dict[str, Any] = {"mime_type": mime, "sha256": "Y2hlY2tlZCBieSB0aGUgbWVkaWEgYW5zd2Vy", "id": media_id}
    if caption is not None:
        part["caption"] = caption
    if filename is not None:
        part["filename"] = filename
    del message["image"]
    message.update({"id": wamid, "type": kind, kind: part})
    return data


def bodies(graph: FakeGraph) -> list[str]:
    return [m["text"]["body"] for m in graph.sent if m["type"] == "text"]


def kept_files(world: World) -> list[Path]:
    folder = world.service.settings.media_dir
    return sorted(p for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


async def close(world: World) -> None:
    await world.service.close()
    await world.service.client.close()
    await world.api.client.close()


@pytest.fixture
async def world(sqlite_db: Engine, graph: FakeGraph, tmp_path: Path) -> AsyncIterator[World]:
    w = await make_world(sqlite_db, graph, tmp_path)
    yield w
    await close(w)


@pytest.fixture(scope="module")
def embedder() -> LocalEmbedder:
    """all-MiniLM-L6-v2, as the knowledge-base tests load it."""
    return LocalEmbedder()


@pytest.fixture
async def knowledge(sqlite_db: Engine, embedder: LocalEmbedder, tmp_path: Path) -> AsyncIterator[KnowledgeBase]:
    kb = KnowledgeBase(offline_settings(tmp_path / "data"), sqlite_db, embedder=embedder)
    try:
        yield kb
    finally:
        await kb.close()


@pytest.fixture
async def learning_world(sqlite_db: Engine, graph: FakeGraph, tmp_path: Path,
                         knowledge: KnowledgeBase) -> AsyncIterator[World]:
    w = await make_world(sqlite_db, graph, tmp_path, knowledge=knowledge)
    yield w
    await close(w)


def demo_agent(engine: Engine, *, learn: bool | None = None) -> int:
    with session_scope(engine) as session:
        agent = session.exec(select(Agent).where(Agent.name == "demo")).one()
        if learn is not None:
            agent.learn_from_media = learn
            session.add(agent)
        assert agent.id is not None
        return agent.id


# ---------------------------------------------------------------------------------------------- inbound
async def test_an_image_is_kept_listed_and_acknowledged(world: World) -> None:
    media_id = world.graph.add_media(PHOTO, "image/jpeg")
    status, body = await world.post(media_payload("image", media_id, wamid="wamid.photo"))
    assert (status, body["accepted"]) == (200, 1)
    await world.service.drain()
    assert bodies(world.graph) == [phrase("whatsapp_received_image")]
    assert world.llm.calls == [] and world.graph.media_downloads == 1
    user, assistant = world.rows(Message)
    digest = hashlib.sha256(PHOTO).hexdigest()
    assert (user.role, user.text, user.external_id) == ("user", "[image]", "wamid.photo")
    assert user.attachments == [{"name": "image.jpg", "content_type": "image/jpeg", "size": len(PHOTO),
                                 "sha256": digest, "path": f"{user.conversation_id}/{digest}.jpg"}]
    (kept,) = kept_files(world)
    assert hashlib.sha256(kept.read_bytes()).hexdigest() == digest  # the bytes the Graph API served
    assert kept.stat().st_mode & 0o777 == 0o600
    assert assistant.text == phrase("whatsapp_received_image") and assistant.external_id.startswith("wamid.")
    (row,) = world.rows(InboundMessage)
    assert (row.status, row.attempts) == ("done", 1)


async def test_a_caption_is_answered_after_the_acknowledgement(world: World) -> None:
    media_id = world.graph.add_media(PHOTO, "image/jpeg")
    await world.post(media_payload("image", media_id, wamid="wamid.part", caption="Is this the right part?"))
    await world.service.drain()
    expected = f"{phrase('whatsapp_received_image')}\n\nYou said: Is this the right part?"
    assert bodies(world.graph) == [expected]
    assert world.llm.calls[-1][-1].content == "Is this the right part?"
    user, assistant = world.rows(Message)
    assert user.text == "Is this the right part?" and user.attachments and user.attachments[0]["name"] == "image.jpg"
    assert assistant.text == expected  # stored as sent
    (row,) = world.rows(InboundMessage)
    assert (row.status, row.text) == ("done", "Is this the right part?")


async def test_a_failed_send_is_retried_with_the_stored_reply_without_a_second_download(world: World) -> None:
    world.graph.replies.extend([Reply(status=503, body={"error": {"message": "Service unavailable", "code": 2}})] * 3)
    media_id = world.graph.add_media(PHOTO, "image/jpeg")
    await world.post(media_payload("image", media_id, wamid="wamid.retry", caption="Does it fit?"))
    await world.service.drain()
    (row,) = world.rows(InboundMessage)
    assert (row.status, row.error) == ("pending", "whatsapp_unavailable")
    with session_scope(world.engine) as session:  # the back-off is over
        held = session.get(InboundMessage, row.id)
        assert held is not None
        held.lease_until = utcnow() - timedelta(seconds=1)
        session.add(held)
    assert await world.service.retry_pending() == 1
    await world.service.drain()
    assert bodies(world.graph) == [f"{phrase('whatsapp_received_image')}\n\nYou said: Does it fit?"]
    assert world.graph.media_downloads == 1 and len(world.llm.calls) == 1 and len(kept_files(world)) == 1
    assert world.rows(InboundMessage)[0].status == "done"


async def test_a_turn_interrupted_before_its_file_was_listed_is_finished_after_a_restart(
        world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    import channels.whatsapp.service as service_module

    real = service_module._attach_turn
    calls = {"n": 0}

    def interrupted(*args: Any) -> None:
        calls["n"] += 1
        if calls["n"] == 1:  # the caption was answered and stored; then the process stopped
            raise asyncio.CancelledError
        real(*args)

    monkeypatch.setattr(service_module, "_attach_turn", interrupted)
    media_id = world.graph.add_media(PHOTO, "image/jpeg")
    await world.post(media_payload("image", media_id, wamid="wamid.cut", caption="Is it waterproof?"))
    await world.service.drain()
    assert world.graph.sent == []
    (row,) = world.rows(InboundMessage)
    assert row.status == "pending" and row.claimed_by == ""  # released for the next start
    assert await world.service.retry_pending() == 1
    await world.service.drain()
    expected = f"{phrase('whatsapp_received_image')}\n\nYou said: Is it waterproof?"
    assert bodies(world.graph) == [expected]
    assert len(world.llm.calls) == 1  # the stored answer was used, not generated again
    user, assistant = world.rows(Message)
    assert user.attachments and user.attachments[0]["name"] == "image.jpg" and assistant.text == expected
    assert world.rows(InboundMessage)[0].status == "done" and len(kept_files(world)) == 1


async def test_a_redelivered_media_webhook_is_not_downloaded_or_answered_twice(world: World) -> None:
    media_id = world.graph.add_media(PHOTO, "image/png")
    data = media_payload("image", media_id, wamid="wamid.twice", mime="image/png")
    answers = await asyncio.gather(*(world.post(data) for _ in range(3)))
    assert sorted(body["accepted"] for _, body in answers) == [0, 0, 1]
    await world.service.drain()
    status, body = await world.post(data)  # Meta delivers it again later
    assert (status, body["duplicates"]) == (200, 1)
    await world.service.drain()
    assert world.graph.media_downloads == 1 and len(world.graph.sent) == 1 and len(kept_files(world)) == 1


async def test_video_and_sticker_are_kept_like_images(world: World) -> None:
    video = world.graph.add_media(b"\0\0\0\x18ftypmp42" * 50, "video/mp4")
    sticker = world.graph.add_media(b"RIFF\0\0\0\0WEBPVP8 " * 20, "image/webp")
    await world.post(media_payload("video", video, wamid="wamid.video", mime="video/mp4"))
    await world.post(media_payload("sticker", sticker, wamid="wamid.sticker", mime="image/webp"))
    await world.service.drain()
    assert sorted(bodies(world.graph)) == sorted([phrase("whatsapp_received_video"),
                                                  phrase("whatsapp_received_sticker")])
    assert len(kept_files(world)) == 2


async def test_the_acknowledgement_is_in_the_agents_language(world: World) -> None:
    with session_scope(world.engine) as session:
        agent = session.exec(select(Agent).where(Agent.name == "demo")).one()
        agent.language = "es"
        session.add(agent)
    media_id = world.graph.add_media(b"Horario: de 9 a 18.", "text/plain")
    await world.post(media_payload("document", media_id, wamid="wamid.es", mime="text/plain", filename="horario.txt"))
    await world.service.drain()
    assert bodies(world.graph) == ["Gracias, he recibido su documento «horario.txt»."]


async def test_media_that_cannot_be_accepted_gets_a_polite_answer_and_is_not_kept(world: World) -> None:
    graph = world.graph
    cases = {  # wamid: (media id, type the webhook says, the answer it gets, the note on the listing)
        "wamid.big": (graph.add_media(b"\xff" * (5 * 1024 * 1024 + 1), "image/jpeg"), "image",
                      "whatsapp_media_too_large", "too_large"),
        # declares a small size, serves more: the download stops at the limit
        "wamid.liar": (graph.add_media(b"\xff" * (5 * 1024 * 1024 + 1), "image/jpeg", file_size="10"), "image",
                       "whatsapp_media_too_large", "too_large"),
        "wamid.exe": (graph.add_media(b"MZ\x90\0" * 100, "application/x-msdownload"), "document",
                      "whatsapp_media_refused", "refused"),
        "wamid.gif": (graph.add_media(b"GIF89a" * 100, "image/gif"), "image", "whatsapp_media_refused", "refused"),
        "wamid.gone": ("1999999999999999", "image", "whatsapp_media_unavailable", "unavailable"),
        "wamid.noid": ("../../etc/passwd", "image", "whatsapp_media_unavailable", "unavailable"),
        "wamid.tampered": (graph.add_media(PHOTO, "image/jpeg", sha256="not-its-hash"), "image",
                           "whatsapp_media_unavailable", "unavailable"),
    }
    for wamid, (media_id, kind, _key, _note) in cases.items():
        status, body = await world.post(media_payload(kind, media_id, wamid=wamid, filename="x.exe"
                                                      if kind == "document" else None))
        assert (status, body["accepted"]) == (200, 1)
    await world.service.drain()
    assert sorted(bodies(graph)) == sorted(phrase(key) for _id, _kind, key, _note in cases.values())
    assert kept_files(world) == []
    assert graph.media_downloads == 2  # the liar's download was cut off, the tampered file's hash failed
    rows = {r.external_id: r for r in world.rows(InboundMessage)}
    assert {(r.status, r.attempts) for r in rows.values()} == {("done", 1)}  # answered, not retried
    assert await world.service.retry_pending() == 0
    users = {m.external_id: m for m in world.rows(Message) if m.role == "user"}
    for wamid, (_id, _kind, _key, note) in cases.items():
        (listing,) = users[wamid].attachments or []
        assert listing["note"] == note and "path" not in listing, (wamid, listing)


async def test_a_document_is_only_kept_when_the_agent_does_not_learn_from_media(
        learning_world: World, knowledge: KnowledgeBase) -> None:
    agent_id = demo_agent(learning_world.engine)
    media_id = learning_world.graph.add_media(make_pdf(PRICE_LIST), "application/pdf")
    await learning_world.post(media_payload("document", media_id, wamid="wamid.doc", mime="application/pdf",
                                            filename="price list.pdf"))
    await learning_world.service.drain()
    await knowledge.wait_idle()
    assert bodies(learning_world.graph) == ['Thanks, I received your document "price list.pdf".']
    assert await knowledge.list_documents(agent_id) == []
    user, _assistant = learning_world.rows(Message)
    (listing,) = user.attachments or []
    assert listing["name"] == "price list.pdf" and "note" not in listing and listing["path"].endswith(".pdf")


async def test_a_document_goes_into_the_agents_knowledge_when_the_admin_allows_it(
        learning_world: World, knowledge: KnowledgeBase) -> None:
    agent_id = demo_agent(learning_world.engine, learn=True)
    pdf = make_pdf(PRICE_LIST)
    media_id = learning_world.graph.add_media(pdf, "application/pdf")
    await learning_world.post(media_payload("document", media_id, wamid="wamid.learn", mime="application/pdf",
                                            filename="price-list.pdf"))
    await learning_world.service.drain()
    await knowledge.wait_idle()
    (document,) = await knowledge.list_documents(agent_id)
    assert (document.status, document.title, document.filename) == ("ready", "WhatsApp: price-list",
                                                                     "price-list.pdf")
    assert document.chunk_count > 0 and document.sha256 == hashlib.sha256(pdf).hexdigest()
    assert SENDER not in document.title + document.description
    hits = await knowledge.search(agent_id, "How much does a cargo bike cost?", limit=3)
    assert hits and hits[0].document_id == document.id and "cargo bike" in hits[0].text
    user, _assistant = learning_world.rows(Message)
    assert (user.attachments or [{}])[0]["note"] == "offered_to_knowledge"

    # The same file sent again (another message) is kept and listed, not a second document.
    again = learning_world.graph.add_media(pdf, "application/pdf")
    await learning_world.post(media_payload("document", again, wamid="wamid.learn-again", mime="application/pdf",
                                            filename="price-list.pdf"))
    await learning_world.service.drain()
    await knowledge.wait_idle()
    assert len(await knowledge.list_documents(agent_id)) == 1
    assert [m.attachments[0]["note"] for m in learning_world.rows(Message) if m.role == "user" and m.attachments] \
        == ["offered_to_knowledge"] * 2
    # Another agent's knowledge got nothing; a photo is never offered.
    photo = learning_world.graph.add_media(PHOTO, "image/jpeg")
    await learning_world.post(media_payload("image", photo, wamid="wamid.learn-photo"))
    await learning_world.service.drain()
    assert len(await knowledge.list_documents()) == 1


# ---------------------------------------------------------------------------------------------- outbound
async def test_a_template_is_sent_in_the_documented_format(world: World) -> None:
    status, body = await world.api.call("POST", SEND, role="designer", json={
        "to": "+16505551234", "type": "template",
        "template": {"name": "order_update", "language": "en_US", "parameters": ["Ada", "A-1234"]}})
    assert status == 200, body
    assert world.graph.sent[-1] == {
        "messaging_product": "whatsapp", "recipient_type": "individual", "to": SENDER, "type": "template",
        "template": {"name": "order_update", "language": {"code": "en_US"},
                     "components": [{"type": "body", "parameters": [{"type": "text", "text": "Ada"},
                                                                    {"type": "text", "text": "A-1234"}]}]}}
    (message,) = world.rows(Message)
    assert (message.role, message.external_id, message.text) == (
        "assistant", body["message_id"], "[template order_update (en_US)]: Ada | A-1234")
    status, body = await world.api.call("POST", SEND, json={
        "to": SENDER, "type": "template", "template": {"name": "hello_world", "language": "en"}})
    assert status == 200, body
    assert world.graph.sent[-1]["template"] == {"name": "hello_world", "language": {"code": "en"}}


async def test_media_by_link_is_sent_in_the_documented_format(world: World) -> None:
    status, body = await world.api.call("POST", SEND, role="designer", json={
        "to": SENDER, "type": "image", "link": "https://shop.example/bikes/red.jpg", "caption": "The red one"})
    assert status == 200, body
    assert world.graph.sent[-1] == {"messaging_product": "whatsapp", "recipient_type": "individual", "to": SENDER,
                                    "type": "image", "image": {"link": "https://shop.example/bikes/red.jpg",
                                                               "caption": "The red one"}}
    status, body = await world.api.call("POST", SEND, json={
        "to": SENDER, "type": "document", "link": "https://shop.example/terms.pdf", "filename": "Terms.pdf"})
    assert status == 200, body
    assert world.graph.sent[-1]["document"] == {"link": "https://shop.example/terms.pdf", "filename": "Terms.pdf"}
    image, document = world.rows(Message)
    assert (image.text, image.attachments) == ("The red one", [{"name": "red.jpg", "content_type": "", "size": 0,
                                                                "sha256": "", "note": "link"}])
    assert document.text == "[document]" and (document.timings or {})["link"] == "https://shop.example/terms.pdf"
    assert world.graph.uploads == [] and kept_files(world) == []


async def test_uploaded_media_goes_up_as_multipart_then_by_id(world: World) -> None:
    pdf = make_pdf(PRICE_LIST)
    status, body = await world.api.call("POST", SEND, role="designer", json={
        "to": SENDER, "type": "document", "content_base64": base64.b64encode(pdf).decode(),
        "filename": "Price list.pdf", "content_type": "application/pdf", "caption": "Our prices"})
    assert status == 200, body
    (upload,) = world.graph.uploads
    assert (upload["messaging_product"], upload["type"], upload["filename"], upload["content_type"],
            upload["data"]) == ("whatsapp", "application/pdf", "Price list.pdf", "application/pdf", pdf)
    assert world.graph.sent[-1] == {
        "messaging_product": "whatsapp", "recipient_type": "individual", "to": SENDER, "type": "document",
        "document": {"id": upload["id"], "caption": "Our prices", "filename": "Price list.pdf"}}
    status, body = await world.api.call("POST", SEND, json={
        "to": SENDER, "type": "audio", "content_base64": base64.b64encode(b"ID3" + b"\0" * 500).decode(),
        "filename": "hello.mp3", "content_type": "audio/mpeg"})
    assert status == 200, body
    assert world.graph.sent[-1]["audio"] == {"id": world.graph.uploads[-1]["id"]}
    document, audio = world.rows(Message)
    digest = hashlib.sha256(pdf).hexdigest()
    assert document.attachments == [{"name": "Price list.pdf", "content_type": "application/pdf", "size": len(pdf),
                                     "sha256": digest, "path": f"{document.conversation_id}/{digest}.pdf"}]
    assert (document.text, audio.text) == ("Our prices", "[audio]")
    assert len(kept_files(world)) == 2


@pytest.mark.parametrize(("request_body", "status", "field"), [
    ({"type": "template"}, 422, "template"),
    ({"type": "template", "template": {"name": "Order Update", "language": "en"}}, 422, "template.name"),
    ({"type": "template", "template": {"name": "x", "language": "english"}}, 422, "template.language"),
    ({"type": "template", "template": {"name": "x", "language": "en", "parameters": ["a\nb"]}}, 422,
     "template.parameters.0"),
    ({"type": "template", "template": {"name": "x", "language": "en", "parameters": ["a      b"]}}, 422,
     "template.parameters.0"),
    ({"type": "template", "template": {"name": "x", "language": "en", "parameters": ["a"] * 21}}, 422,
     "template.parameters"),
    ({"type": "template", "text": "hi", "template": {"name": "x", "language": "en"}}, 422, "text"),
    ({"type": "text"}, 422, "text"),
    ({"type": "video", "link": "https://x.example/v.mp4"}, 422, "type"),
    ({"type": "image"}, 422, "link"),
    ({"type": "image", "link": "http://shop.example/a.jpg"}, 422, "link"),
    ({"type": "image", "link": "https://u:p@shop.example/a.jpg"}, 422, "link"),
    ({"type": "image", "link": "https://shop.example/a b.jpg"}, 422, "link"),
    ({"type": "image", "link": "https://shop.example/a.jpg", "content_base64": "AAAA", "filename": "a.jpg",
      "content_type": "image/jpeg"}, 422, "link"),
    ({"type": "image", "content_base64": "AAAA", "filename": "a.gif", "content_type": "image/gif"}, 415,
     "content_type"),
    ({"type": "image", "content_base64": "not base64!", "filename": "a.jpg", "content_type": "image/jpeg"}, 422,
     "content_base64"),
    ({"type": "image", "content_base64": "AAAA", "content_type": "image/jpeg"}, 422, "filename"),
    ({"type": "audio", "link": "https://shop.example/a.mp3", "caption": "hi"}, 422, "caption"),
    ({"type": "image", "link": "https://shop.example/a.jpg", "caption": "x" * 1025}, 422, "caption"),
    ({"type": "image", "link": "https://shop.example/a.jpg", "content_type": "image/jpeg"}, 422, "content_type"),
    ({"type": "image", "text": "hello", "link": "https://shop.example/a.jpg"}, 422, "text"),
])
async def test_bad_input_is_refused_naming_the_field(world: World, request_body: dict[str, Any], status: int,
                                                     field: str) -> None:
    answer_status, answer = await world.api.call("POST", SEND, json={"to": SENDER, **request_body})
    assert (answer_status, answer["error"].get("field")) == (status, field), answer
    assert world.graph.requests == 0 and world.rows(Message) == []


async def test_an_upload_beyond_the_request_limit_is_413(world: World) -> None:
    big = base64.b64encode(b"\xff" * (1600 * 1024)).decode()
    body = json.dumps({"to": SENDER, "type": "image", "content_base64": big, "filename": "a.jpg",
                       "content_type": "image/jpeg"}).encode()
    status, answer = await world.api.call("POST", SEND, data=io.BytesIO(body),
                                          headers={"Content-Type": "application/json"})
    assert (status, answer["error"]["code"]) == (413, "payload_too_large")
    assert world.graph.requests == 0


def test_upload_limits_are_whatsapps() -> None:
    assert check_upload("image", "image/PNG; charset=binary", 5 * 1024 * 1024) == "image/png"
    with pytest.raises(PayloadTooLarge):
        check_upload("image", "image/png", 5 * 1024 * 1024 + 1)
    with pytest.raises(UnsupportedMediaType):
        check_upload("audio", "audio/wav", 10)
    with pytest.raises(InvalidInput):
        check_upload("document", "application/pdf", 0)


# ---------------------------------------------------------------------------------------------- fuzzing
odd_text = st.text(alphabet=st.characters(exclude_categories=()) | st.sampled_from(["\ud800", "\x00", ";"]),
                   max_size=60)
json_values = st.recursive(st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), odd_text),
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(odd_text, inner, max_size=3),
                           max_leaves=8)
media_parts = st.fixed_dictionaries({}, optional={
    "id": st.one_of(st.from_regex(r"[0-9]{1,20}", fullmatch=True), odd_text, json_values),
    "mime_type": st.one_of(st.sampled_from(["image/jpeg", "IMAGE/PNG; q=1", "application/pdf", "", "text/plain"]),
                           odd_text, json_values),
    "caption": st.one_of(odd_text, json_values, st.just("x" * 5000)),
    "filename": st.one_of(odd_text, st.just("../../etc/passwd"), st.just("a" * 1000 + ".pdf"), json_values),
    "sha256": json_values,
})


@settings(max_examples=500, deadline=None)
@given(kind=st.sampled_from([*MEDIA_KINDS, "text", "location"]), part=st.one_of(media_parts, json_values))
def test_a_media_object_of_any_shape_parses_to_bounded_clean_fields(kind: str, part: Any) -> None:
    media = parse_media({kind: part}, kind)
    if kind not in MEDIA_KINDS:
        assert media is None
        return
    assert media is not None and media.kind == kind
    assert media.media_id == "" or (len(media.media_id) <= 128 and media.media_id.isascii()
                                    and "/" not in media.media_id)
    assert len(media.mime_type) <= 100 and len(media.caption) <= 1024 and len(media.filename) <= 500
    for text in (media.mime_type, media.caption, media.filename):
        assert "\x00" not in text
        text.encode("utf-8")


_wamids = itertools.count()
served_types = st.sampled_from(["image/jpeg", "image/png", "image/gif", "application/pdf", "text/plain",
                                "application/x-msdownload", "", "image/jpeg; codecs=x", "IMAGE/JPEG", "video/mp4",
                                "image/webp", "text/html", "a" * 300])
file_sizes = st.one_of(st.none(), st.sampled_from(["-1", "0", "1e9", "99999999999999999999999", "12", " 5",
                                                   "NaN", ""]), st.integers(-10**30, 10**30), st.booleans())


@pytest.mark.filterwarnings("ignore::hypothesis.errors.HypothesisWarning")
def test_hostile_media_objects_are_each_answered_once_and_never_kept_unless_allowed(sqlite_db: Engine,
                                                                                     tmp_path: Path) -> None:
    loop = asyncio.new_event_loop()
    graph = FakeGraph()
    loop.run_until_complete(graph.start())
    world = loop.run_until_complete(make_world(sqlite_db, graph, tmp_path))
    polite = {phrase(key) for key in ("whatsapp_media_too_large", "whatsapp_media_refused",
                                      "whatsapp_media_unavailable", "whatsapp_received_image",
                                      "whatsapp_received_video", "whatsapp_received_sticker")}
    try:
        @settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
        @given(kind=st.sampled_from(["image", "video", "sticker", "document"]), served=served_types,
               size=file_sizes, part=media_parts, use_served=st.booleans(), big=st.booleans())
        def deliver(kind: str, served: str, size: Any, part: dict[str, Any], use_served: bool, big: bool) -> None:
            data = b"\xff" * (600 * 1024 if big else 300)
            answer = {} if size is None else {"file_size": size}
            if use_served:
                part = {**part, "id": graph.add_media(data, served, **answer)}
            wamid = f"wamid.MEDIA{next(_wamids):06d}"
            message = {"from": SENDER, "id": wamid, "timestamp": str(int(time.time())), "type": kind, kind: part}
            body = media_payload("image", "1", wamid=wamid)
            body["entry"][0]["changes"][0]["value"]["messages"] = [message]
            before = len(graph.sent)
            status, ack = loop.run_until_complete(world.post(body))
            assert (status, ack["accepted"]) == (200, 1), ack
            loop.run_until_complete(world.service.drain())
            with session_scope(sqlite_db) as session:
                row = session.exec(select(InboundMessage).where(InboundMessage.external_id == wamid)).one()
                assert (row.status, row.attempts, row.error) == ("done", 1, "")
                user = session.exec(select(Message).where(Message.external_id == wamid)).one()
                (listing,) = user.attachments or []
            sent = graph.sent[before:]
            assert len(sent) == 1
            text = sent[0]["text"]["body"]
            first = text.split("\n\n", 1)[0]
            assert first in polite or first.startswith("Thanks, I received your document"), text
            if listing.get("path"):
                kept = world.service.settings.media_dir / listing["path"]
                assert kept.read_bytes() == data and listing["content_type"] == served.partition(";")[0].strip().lower()
                assert len(data) <= (512 * 1024 if kind == "sticker" else 5 * 1024 * 1024)

        deliver()
        folder = world.service.settings.media_dir
        assert all(p.parent.parent == folder for p in folder.rglob("*") if p.is_file())  # nothing climbed out
    finally:
        loop.run_until_complete(close(world))
        loop.run_until_complete(graph.close())
        loop.close()

