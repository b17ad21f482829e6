"""The WhatsApp codecs against Meta's documented payloads (tests/data/whatsapp)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from channels.whatsapp.codec import (
    build_text_message,
    parse_graph_error,
    parse_send_response,
    parse_webhook,
    parse_webhook_body,
    signature,
    split_text,
    verify_signature,
    verify_subscription,
)
from voicebot.errors import AuthError, BadRequest, Forbidden, InvalidInput, WhatsAppError

DATA = Path(__file__).resolve().parent.parent / "data" / "whatsapp"


def sample(name: str) -> Any:
    return json.loads((DATA / f"{name}.json").read_text())


def test_text_message() -> None:
    batch = parse_webhook(sample("text_message"))
    assert batch.statuses == () and batch.errors == () and batch.skipped == 0
    (message,) = batch.messages
    assert message.wamid == "wamid.HBgLMTY1MDM4Nzk0MzkVAgASGBQzQUFERjg0NDEzNDdFODU3MUMxMAA="
    assert (message.wa_id, message.kind, message.text) == ("16505551234", "text", "Does it come in another color?")
    assert (message.profile_name, message.phone_number_id, message.timestamp) == (
        "Sheena Nelson", "106540352242922", 1739321024)
    assert message.disposition == "answer"


def test_dashboard_test_sample_with_field_before_value() -> None:
    (message,) = parse_webhook(sample("dashboard_test_message")).messages
    assert (message.wamid, message.wa_id, message.text, message.phone_number_id) == (
        "ABGGFlA5Fpa", "16315551181", "this is a text message", "123456123")


def test_media_is_declined_reactions_ignored_buttons_answered() -> None:
    (image,) = parse_webhook(sample("image_message")).messages
    assert (image.kind, image.text, image.disposition) == ("image", "", "decline")
    (unsupported,) = parse_webhook(sample("unsupported_message")).messages
    assert (unsupported.kind, unsupported.disposition) == ("unsupported", "decline")
    (reaction,) = parse_webhook(sample("reaction_message")).messages
    assert reaction.disposition == "ignore"
    (button,) = parse_webhook(sample("interactive_button_reply")).messages
    assert (button.kind, button.text, button.disposition) == ("interactive", "Opening hours", "answer")


def test_statuses_and_errors() -> None:
    (sent,) = parse_webhook(sample("status_sent")).statuses
    assert (sent.status, sent.recipient_id, sent.timestamp) == ("sent", "16505551234", 1750263773)
    assert sent.wamid == "wamid.HBgLMTY1MDM4Nzk0MzkVAgARGBI3MTE5MjVBOTE3MDk5QUVFM0YA"
    (failed,) = parse_webhook(sample("status_failed")).statuses
    assert failed.status == "failed"
    assert [(e.code, e.title) for e in failed.errors] == [(131047, "Re-engagement message")]
    assert "24 hours" in failed.errors[0].details
    batch = parse_webhook(sample("errors_webhook"))
    assert batch.messages == () and [e.code for e in batch.errors] == [130429]


def test_other_fields_and_malformed_messages_are_skipped_not_fatal() -> None:
    payload = sample("text_message")
    value = payload["entry"][0]["changes"][0]["value"]
    value["messages"].append({"type": "text", "text": {"body": "no id, no sender"}})
    value["messages"].append("not an object")
    payload["entry"][0]["changes"].append({"field": "account_update", "value": {"event": "VERIFIED_ACCOUNT"}})
    batch = parse_webhook(payload)
    assert len(batch.messages) == 1 and batch.skipped == 3


@pytest.mark.parametrize("payload", [
    [], {"object": "page", "entry": []}, {"object": "whatsapp_business_account"},
    {"object": "whatsapp_business_account", "entry": {"changes": []}},
])
def test_not_a_whatsapp_notification(payload: Any) -> None:
    with pytest.raises(InvalidInput):
        parse_webhook(payload)


def test_a_broken_entry_or_change_does_not_spoil_the_good_messages_beside_it() -> None:
    payload = sample("text_message")
    payload["entry"].insert(0, {"changes": "x"})
    payload["entry"].append("not an entry")
    payload["entry"][1]["changes"].append({"field": "messages", "value": 3})
    batch = parse_webhook(payload)
    assert len(batch.messages) == 1 and batch.skipped == 3


def test_body_that_is_not_json() -> None:
    with pytest.raises(BadRequest) as caught:
        parse_webhook_body(b"\xff{not json")
    assert caught.value.code == "malformed_json"
    assert parse_webhook_body(json.dumps(sample("text_message")).encode()).messages


def test_signature() -> None:
    body = json.dumps(sample("text_message")).encode()
    good = signature("app-secret", body)
    assert good.startswith("sha256=") and len(good) == 7 + 64
    verify_signature("app-secret", body, good)
    with pytest.raises(AuthError) as missing:
        verify_signature("app-secret", body, None)
    assert (missing.value.code, missing.value.http_status) == ("signature_missing", 401)
    for wrong in (signature("other-secret", body), signature("app-secret", body + b" "), "sha1=abc", "garbage"):
        with pytest.raises(Forbidden) as caught:
            verify_signature("app-secret", body, wrong)
        assert (caught.value.code, caught.value.http_status) == ("signature_invalid", 403)


def test_subscription_handshake() -> None:
    assert verify_subscription("subscribe", "tok", "1158201444", "tok") == "1158201444"
    for mode, token in (("unsubscribe", "tok"), ("subscribe", "wrong"), ("subscribe", "")):
        with pytest.raises(Forbidden):
            verify_subscription(mode, token, "1158201444", "tok")
    with pytest.raises(Forbidden):  # no token configured: nothing verifies
        verify_subscription("subscribe", "", "1", "")


def test_send_payload_matches_the_documented_request() -> None:
    documented = sample("send_text_request")
    built = build_text_message(documented["to"], documented["text"]["body"], preview_url=True)
    assert built == documented
    quoted = build_text_message("16505551234", "Yes.", reply_to="wamid.X")
    assert quoted["context"] == {"message_id": "wamid.X"} and quoted["text"] == {"preview_url": False, "body": "Yes."}
    with pytest.raises(InvalidInput):
        build_text_message("16505551234", "   ")
    with pytest.raises(InvalidInput):
        build_text_message("16505551234", "x" * 4097)


def test_send_response_and_errors() -> None:
    sent = parse_send_response(sample("send_text_response"))
    assert (sent.wamid, sent.wa_id, sent.input) == (
        "wamid.HBgLMTY0NjcwNDM1OTUVAgARGBI1RjQyNUE3NEYxMzAzMzQ5MkEA", "16505551234", "+16505551234")
    with pytest.raises(WhatsAppError) as bad:
        parse_send_response({"messaging_product": "whatsapp", "messages": []})
    assert bad.value.code == "whatsapp_bad_response"
    cases = {
        ("error_rate_limit", 400): ("whatsapp_rate_limited", 130429, True),
        ("error_recipient_not_allowed", 400): ("whatsapp_rejected", 131030, False),
        ("error_token_expired", 401): ("whatsapp_auth_failed", 190, False),
        ("error_reengagement", 400): ("whatsapp_window_closed", 131047, False),
    }
    for (name, status), (code, graph_code, retryable) in cases.items():
        error = parse_graph_error(status, sample(name))
        assert (error.code, error.graph_code, error.retryable, error.upstream_status) == (
            code, graph_code, retryable, status), name
        assert str(graph_code) in error.message
    assert parse_graph_error(503, None).code == "whatsapp_unavailable"
    assert "allowed list" in parse_graph_error(400, sample("error_recipient_not_allowed")).message


def test_split_text() -> None:
    assert split_text("  short  ") == ["short"]
    paragraphs = ("a" * 3000) + "\n\n" + ("b" * 3000)
    assert split_text(paragraphs) == ["a" * 3000, "b" * 3000]
    sentences = " ".join(["This is a sentence of some length."] * 300)
    pieces = split_text(sentences, 1000)
    assert all(len(p) <= 1000 and p.endswith(".") for p in pieces)
    assert " ".join(pieces) == sentences
    assert split_text("x" * 2500, 1000) == ["x" * 1000, "x" * 1000, "x" * 500]
