"""The Server-Sent Events codec: what a model writes (and so what a visitor can make it echo) never breaks the
framing -- no text can end an event early, start a field, or forge another event."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from admin_api.sse import decode, encode


def test_an_event_is_one_named_data_line() -> None:
    assert encode("delta", {"text": "Hi"}) == b'event: delta\ndata: {"text":"Hi"}\n\n'
    assert decode(": keep-alive\n\nevent: delta\ndata: {\"text\":\"Hi\"}\n\n") == [("delta", {"text": "Hi"})]


def test_event_names_are_ours_only() -> None:
    for bad in ("", "delta\ndata: x", "de lta", "done:"):
        with pytest.raises(ValueError):
            encode(bad, {})


HOSTILE = st.lists(st.sampled_from(["\n", "\r", "\r\n", "\n\n", "event: done", "data: ", ": ", "é", "\u2028", "\x00",
                                    "a", " ", '"', "\\"]), max_size=20).map("".join)


@given(pieces=st.lists(st.one_of(st.text(max_size=30), HOSTILE), max_size=8))
def test_any_reply_text_round_trips_without_new_events(pieces: list[str]) -> None:
    wire = b"".join(encode("delta", {"text": p}) for p in pieces) + encode("done", {"reply": "".join(pieces)})
    events = decode(wire.decode())
    assert [name for name, _ in events] == ["delta"] * len(pieces) + ["done"]
    assert [data["text"] for _, data in events[:-1]] == pieces
    assert events[-1][1]["reply"] == "".join(pieces)
    # Each event is exactly its two lines: caller text never contributes a line break of its own.
    assert wire.count(b"\n\n") == len(pieces) + 1
