"""E-mail parsing and reply building (stdlib email package): what the agent reads, what the reply carries."""

from __future__ import annotations

from email import message_from_bytes, policy
from email.message import EmailMessage
from email.utils import make_msgid

import pytest

from channels.email.message import (
    MAX_DELIMITERS,
    MAX_HEADER_BYTES,
    MAX_MULTIPARTS,
    MAX_REFERENCES,
    MAX_TEXT,
    build_message,
    build_reply,
    html_to_text,
    parse_email,
    reply_subject,
    strip_quoted,
)
from tests.channels.conftest import plain_of
from voicebot.errors import InvalidInput


def mail(body: str = "Do you repair e-bikes?", *, subject: str = "Repairs", sender: str = "Ada <ada@example.org>",
         html: str | None = None, **headers: str) -> bytes:
    message = EmailMessage()
    message["From"] = sender
    message["To"] = "Eva <eva@shop.example>"
    message["Subject"] = subject
    message["Message-ID"] = headers.pop("message_id", "<m1@example.org>")
    for name, value in headers.items():
        message[name.replace("_", "-")] = value
    message.set_content(body)
    if html is not None:
        message.add_alternative(html, subtype="html")
    return message.as_bytes()


def test_plain_message() -> None:
    parsed = parse_email(mail())
    assert (parsed.message_id, parsed.sender, parsed.sender_name, parsed.subject, parsed.text) == (
        "<m1@example.org>", "ada@example.org", "Ada", "Repairs", "Do you repair e-bikes?")
    assert parsed.to == ("eva@shop.example",) and parsed.reply_to_header == ""
    assert not parsed.auto_generated and parsed.thread_ids == [] and parsed.thread_root == "<m1@example.org>"


def test_plain_text_is_preferred_over_html() -> None:
    parsed = parse_email(mail("Plain version.", html="<p>HTML <b>version</b>.</p>"))
    assert parsed.text == "Plain version."


def test_html_only_is_converted_without_markup_scripts_or_quotes() -> None:
    html = ("<html><head><style>p{color:red}</style><title>x</title></head><body>"
            "<div>Hello&nbsp;Eva,</div><p>Is the shop open on <b>Sunday</b>?<br>Thanks &amp; bye</p>"
            "<script>alert(1)</script>"
            "<div class=\"gmail_quote\">On Mon, Bob wrote:<blockquote>old question</blockquote></div>"
            "</body></html>")
    message = EmailMessage()
    message["From"] = "bob@example.org"
    message["Subject"] = "Hours"
    message.set_content(html, subtype="html")
    parsed = parse_email(message.as_bytes())
    assert parsed.text == "Is the shop open on Sunday?\nThanks & bye"  # the greeting line is dropped
    assert parsed.message_id.endswith("@eva.invalid>")  # no Message-ID: a stable one from the content
    assert parse_email(message.as_bytes()).message_id == parsed.message_id


def test_attachments_are_ignored() -> None:
    message = EmailMessage()
    message["From"] = "ada@example.org"
    message["Subject"] = "Invoice"
    message.set_content("Please see the attached invoice.")
    message.add_attachment(b"%PDF-1.4 binary", maintype="application", subtype="pdf", filename="invoice.pdf")
    message.add_attachment("secret notes", filename="notes.txt")
    assert parse_email(message.as_bytes()).text == "Please see the attached invoice."


def test_encoded_headers_and_latin1_body() -> None:
    raw = ("From: =?utf-8?q?J=C3=BCrgen_M=C3=BCller?= <juergen@example.de>\r\n"
           "Subject: =?iso-8859-1?q?F=FCr_morgen?=\r\n"
           "Message-ID: <de1@example.de>\r\n"
           "Content-Type: text/plain; charset=iso-8859-1\r\n"
           "Content-Transfer-Encoding: quoted-printable\r\n\r\n"
           "Gr=FC=DFe, haben Sie ge=F6ffnet?\r\n").encode("ascii")
    parsed = parse_email(raw)
    assert (parsed.sender_name, parsed.subject, parsed.text) == (
        "Jürgen Müller", "Für morgen", "Grüße, haben Sie geöffnet?")


def test_unknown_charset_does_not_fail() -> None:
    raw = (b"From: a@example.org\r\nSubject: x\r\nContent-Type: text/plain; charset=x-unknown-8\r\n\r\n"
           b"hello \xff there\r\n")
    assert parse_email(raw).text.startswith("hello")


@pytest.mark.parametrize(("body", "expected"), [
    ("Yes, Saturday works.\n\nOn Mon, 3 Jun 2024 at 10:00, Eva <eva@shop.example> wrote:\n> Can you come?\n> Eva",
     "Yes, Saturday works."),
    ("Yes please.\n\nOn Mon, 3 Jun 2024 at 10:00, Eva Assistant from the Sunny Side Bike Shop\n"
     "<eva@shop.example> wrote:\n\n> Shall I book it?", "Yes please."),
    ("Thanks!\n\n-----Original Message-----\nFrom: Eva\nSent: Monday\nSubject: Re: x\n\nold text", "Thanks!"),
    ("Thanks!\n\n________________________________\nFrom: Eva <eva@shop.example>\nSent: Monday\nold", "Thanks!"),
    ("Thanks!\n\nFrom: Eva <eva@shop.example>\nSent: Monday, June 3, 2024 10:00\nTo: Ada\nSubject: Re: x\n\nold",
     "Thanks!"),
    ("> quoted first\nMy answer below the quote.\n> more quote", "My answer below the quote."),
    ("Danke!\n\nAm 03.06.2024 um 10:00 schrieb Eva <eva@shop.example>:\n> Hallo", "Danke!"),
    ("See you then.\n-- \nAda Lovelace\nAnalytical Engines Ltd.", "See you then."),
    ("From: the look of it, the chain is worn.\nCan you check?", "From: the look of it, the chain is worn.\n"
     "Can you check?"),
])
def test_quoted_history_and_signature_are_removed(body: str, expected: str) -> None:
    assert strip_quoted(body) == expected


@pytest.mark.parametrize(("body", "expected"), [
    ("Hello,\n\nHow much is a flat tire repair?\n\nThanks,\nAda", "How much is a flat tire repair?"),
    ("Hi Eva,\nIs it open?\nBest regards,\nAda Lovelace\nAnalytical Engines", "Is it open?"),
    ("Can you fix it?\nThanks", "Can you fix it?"),
    ("Thanks!", "Thanks!"),  # nothing else: the thanks is the message
    ("Thanks for the quick answer. When can I come by?", "Thanks for the quick answer. When can I come by?"),
    ("Is it open?\nCheers,\nAda\nP.S. I also need a new chain, can you order one for next week?",
     "Is it open?\nCheers,\nAda\nP.S. I also need a new chain, can you order one for next week?"),
])
def test_greeting_and_sign_off_are_dropped(body: str, expected: str) -> None:
    message = EmailMessage()
    message["From"] = "ada@example.org"
    message.set_content(body)
    assert parse_email(message.as_bytes()).text == expected


def test_auto_replies_bounces_and_lists_are_flagged() -> None:
    assert parse_email(mail(Auto_Submitted="auto-replied")).auto_generated
    assert parse_email(mail(Precedence="bulk")).auto_generated
    assert parse_email(mail(List_Id="<bikes.lists.example.org>")).auto_generated
    assert parse_email(mail(sender="MAILER-DAEMON@example.org")).auto_generated
    assert not parse_email(mail(Auto_Submitted="no")).auto_generated


def test_no_sender_is_invalid() -> None:
    with pytest.raises(InvalidInput):
        parse_email(b"Subject: nobody\r\n\r\nhello\r\n")


def test_reply_subject() -> None:
    assert reply_subject("Repairs") == "Re: Repairs"
    assert reply_subject("Re: RE: AW: Repairs") == "Re: Repairs"
    assert reply_subject("Re[2]: Repairs") == "Re: Repairs"
    assert reply_subject("") == "Re: your message"


def test_reply_threads_under_the_message() -> None:
    root = make_msgid(domain="example.org")
    parsed = parse_email(mail(message_id="<m2@example.org>", In_Reply_To="<r1@shop.example>",
                              References=f"{root} <r1@shop.example>", Reply_To="ada.work@example.org"))
    assert parsed.thread_ids == ["<r1@shop.example>", root] and parsed.thread_root == root
    reply = build_reply(parsed, "We do, any day.", sender="Eva <eva@shop.example>")
    again = message_from_bytes(reply.as_bytes(), policy=policy.default)
    assert again["In-Reply-To"] == "<m2@example.org>"
    assert again["References"].split() == [root, "<r1@shop.example>", "<m2@example.org>"]
    # The reply goes to From, not to Reply-To: it is written with From's memory (review F4).
    assert parsed.reply_to_header == "ada.work@example.org"
    assert again["Subject"] == "Re: Repairs" and again["To"] == "Ada <ada@example.org>"
    assert again["Message-ID"].endswith("@shop.example>") and again["Auto-Submitted"] == "auto-replied"
    assert plain_of(again).strip() == "We do, any day."


def test_header_injection_is_neutralised() -> None:
    message = build_message(sender="eva@shop.example", to="ada@example.org",
                            subject="Hello\r\nBcc: victim@example.org", body="x")
    assert "Bcc" not in message and message["Subject"] == "Hello Bcc: victim@example.org"


def test_html_to_text_handles_sloppy_markup() -> None:
    assert html_to_text("<p>one<p>two<div>three</span></div>") == "one\ntwo\nthree"


# ---------------------------------------------------------------------------------------------- hostile input
def test_long_quote_marker_lines_are_text_not_minutes_of_regex() -> None:
    # Review F1: "^On.*wrote.*:$" took minutes on one such line; markers are short, so a long line is text.
    line = "On Monday " + "wrote : " * 130_000 + "x"
    assert strip_quoted(line + "\n" + line) == line + "\n" + line
    assert strip_quoted("Fine.\nOn Mon, 3 Jun 2024, Eva\n" + "wrote : " * 130_000) == (
        "Fine.\nOn Mon, 3 Jun 2024, Eva\n" + ("wrote : " * 130_000).rstrip())
    parsed = parse_email(mail(line))
    assert len(parsed.text) == MAX_TEXT and parsed.text.startswith("On Monday wrote")


def test_size_limits_are_refused_with_a_reason() -> None:
    with pytest.raises(InvalidInput) as caught:
        parse_email(mail("x" * 2000), max_bytes=1000)
    assert caught.value.code == "email_too_large"
    with pytest.raises(InvalidInput) as caught:
        parse_email(b"From: a@example.org\r\nX-Pad: " + b"x" * (MAX_HEADER_BYTES + 1) + b"\r\n\r\nhi")
    assert caught.value.code == "email_too_large"
    nested = b"".join(b'Content-Type: multipart/mixed; boundary="b%d"\r\n\r\n--b%d\r\n' % (i, i)
                      for i in range(MAX_MULTIPARTS + 1))
    with pytest.raises(InvalidInput) as caught:
        parse_email(b"From: a@example.org\r\n" + nested + b"Content-Type: text/plain\r\n\r\nhi\r\n")
    assert caught.value.code == "email_unparseable"


def test_many_references_keep_the_root_and_the_nearest() -> None:
    ids = [f"<r{i}@example.org>" for i in range(1000)]
    parsed = parse_email(mail(References=" ".join(ids)))
    assert parsed.references == (ids[0], *ids[-(MAX_REFERENCES - 1):])


def test_a_super_linear_charset_is_read_as_utf8() -> None:
    raw = (b"From: a@example.org\r\nContent-Type: text/plain; charset=punycode\r\n\r\n"
           b"Can you help?\r\n")
    assert parse_email(raw).text == "Can you help?"


@pytest.mark.parametrize(("markup", "expected"), [
    ('<p title="a > b">Visible</p>', "Visible"),
    ("<script>document.write('<p>no</p>')</script><p>yes</p>", "yes"),
    ("<p>kept</p><!-- an unclosed comment <p>hidden</p>", "kept"),
    ("<p>a<![CDATA[ <p>x</p> ]]>b</p>", "ab"),
    ("<div class=gmail_quote>old</div><p>new</p>", "new"),
    ("1 < 2 and 3 > 2", "1 < 2 and 3 > 2"),
    ("<p>tag left open <a href='x", "tag left open"),
    ("<P>Upper</P><BR>case", "Upper\n\ncase"),
])
def test_html_tokenizer(markup: str, expected: str) -> None:
    assert html_to_text(markup) == expected


def test_deeply_nested_html_is_linear() -> None:
    # The closing tags once scanned the whole stack of open ones each (quadratic).
    assert html_to_text("<div>" * 100_000 + "deep" + "</span>" * 100_000 + "</div>" * 100_000) == "deep"


def test_hostile_header_values_are_parsed_only_in_part() -> None:
    # A part's Content-Type with thousands of parameters took the stdlib header parser seconds (quadratic).
    params = "".join(f'; p{i}="v{i}"' for i in range(16_000))
    raw = ("From: a@example.org\r\nContent-Type: multipart/mixed; boundary=x\r\n\r\n--x\r\n"
           f"Content-Type: text/plain{params}\r\n\r\nhello\r\n--x--\r\n").encode()
    assert parse_email(raw).text == "hello"
    many = "".join(f"--x\r\nContent-Type: text/plain\r\n\r\npart {i}\r\n" for i in range(MAX_DELIMITERS + 1))
    with pytest.raises(InvalidInput) as caught:
        parse_email(f"From: a@example.org\r\nContent-Type: multipart/mixed; boundary=x\r\n\r\n{many}".encode())
    assert caught.value.code == "email_unparseable"


@pytest.mark.parametrize("odd", ["\x0b", "\x0c", "\x1c", "\x85", "\u2028", "\u200b", "\x00"])
def test_an_address_with_line_breaking_characters_is_refused_and_a_name_cleaned(odd: str) -> None:
    # Found by the fuzz test: "x\x0by@example.org" parsed, then the reply's To header could not be built.
    with pytest.raises(InvalidInput):
        parse_email(f"From: x{odd}y@example.org\r\n\r\nhi".encode())
    parsed = parse_email(f"From: An{odd}na <anna@example.org>\r\n\r\nhi".encode())
    assert parsed.sender_name in ("An na", "Anna")
    assert build_reply(parsed, "ok", sender="eva@shop.example")["To"] == f"{parsed.sender_name} <anna@example.org>"


@pytest.mark.parametrize("charset", ["unicode_escape", "raw_unicode_escape", "utf-7", "punycode"])
def test_a_body_declared_in_a_codec_no_mail_uses_is_read_as_utf8(charset: str) -> None:
    raw = (b"From: Ada <ada@example.org>\r\nTo: eva@shop.example\r\nMessage-ID: <c@example.org>\r\n"
           b"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=" + charset.encode() + b"\r\n\r\n"
           b"Hi \\x00 +ADw-script+AD4- there\r\n")
    mail = parse_email(raw)
    assert "\\x00" in mail.text and "+ADw-script" in mail.text  # the sender's bytes, not what the codec makes of them
