"""Hypothesis fuzz of the uploaded-document parsers at the pure-parser level (the same code the reader process
runs): Markdown, HTML, text in odd encodings, and random or mutated bytes named .pdf/.docx/.txt/...  Only our
own ``DocumentError`` may come out, output stays within a bound of the input (bounded work), and text that is
accepted keeps its words (nothing accepted is lost).  The parent side of the reader protocol is fuzzed too: a
child that writes garbage is a ``DocumentError``, never a crash."""

from __future__ import annotations

import asyncio
import codecs
import re

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rag.chunking import chunk_pages
from rag.extract import Page, decode_text, detect_type, extract, html_to_text, markdown_to_text
from rag.sandbox import _read_records
from tests.rag.files import make_docx, make_pdf
from voicebot.errors import DocumentError

FUZZ = settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])

PDF_SEED = make_pdf(["Opening hours are nine to five.", "Refunds take five days."])
DOCX_SEED = make_docx(["Opening hours are nine to five."], heading="Hours", table=[["Day", "Open"]])
NAMES = ["doc.pdf", "doc.docx", "doc.txt", "doc.md", "doc.html", "doc", "doc.csv", "doc.htm", "doc.markdown"]
MARKDOWN_TOKENS = ["[", "]", "(", ")", "![", "**", "__", "# ", "###### ", "```", "~~~", "<!--", "-->", "\n",
                   "\n\n", " ", "\t", "word", "é", "http://x.y/z", "#", "*", "_", "\\"]
HTML_TOKENS = ["<", ">", "</", "<p>", "</p>", "<a ", "href='", "'", '"', "<!--", "-->", "<![", "<!", "<?", "&amp;",
               "&#", "&#x", ";", "<script>", "</script>", "<title>", "<pre>", "<td>", "<br/>", "text", " ", "\n",
               "<style>", "]]>", "=", "ü"]
WORD = re.compile(r"[A-Za-z0-9]+")

markdownish = st.lists(st.sampled_from(MARKDOWN_TOKENS), max_size=300).map("".join)
htmlish = st.lists(st.sampled_from(HTML_TOKENS), max_size=300).map("".join)


def _mutate(seed: bytes, edits: list[tuple[int, int]], cut: int) -> bytes:
    data = bytearray(seed)
    for position, value in edits:
        data[position % len(data)] = value
    return bytes(data[: max(1, len(data) - cut)])


mutated_files = st.builds(_mutate, st.sampled_from([PDF_SEED, DOCX_SEED]),
                          st.lists(st.tuples(st.integers(0, 1 << 20), st.integers(0, 255)), max_size=12),
                          st.one_of(st.just(0), st.integers(0, 4000)))
any_bytes = st.one_of(st.binary(max_size=3000), mutated_files,
                      st.binary(max_size=2000).map(lambda tail: b"%PDF-1.4\n" + tail),
                      st.binary(max_size=2000).map(lambda tail: b"PK\x03\x04" + tail))


@FUZZ
@given(st.one_of(markdownish, st.text(max_size=2000)))
def test_markdown_to_text(markdown: str) -> None:
    text = markdown_to_text(markdown)
    # A heading line gains two line breaks; nothing else grows.
    assert len(text) <= len(markdown) + 2 * (markdown.count("\n") + 1)
    if "http" in markdown or "<!--" in markdown:
        return  # link targets and comments are meant to go
    # Fence lines (```python) go whole, their info string included; every other word stays.
    kept = "\n".join(line for line in markdown.split("\n") if not line.lstrip().startswith(("```", "~~~")))
    for word in WORD.findall(kept):
        assert word in text


@FUZZ
@given(st.one_of(htmlish, st.text(max_size=2000)))
def test_html_to_text(markup: str) -> None:
    try:
        text = html_to_text(markup)
    except DocumentError as exc:
        assert exc.code == "document_corrupt" and exc.message
        return
    assert len(text) <= 3 * len(markup) + 2


@FUZZ
@given(any_bytes, st.sampled_from(NAMES))
def test_detect_and_extract_raise_only_document_errors(data: bytes, name: str) -> None:
    try:
        doc_type = detect_type(data, name)
        pages = extract(data, doc_type, name, max_pdf_pages=20)
    except DocumentError as exc:
        assert exc.code.startswith("document_") and exc.message
        return
    assert pages and all(page.text for page in pages)
    assert sum(len(page.text) for page in pages) <= 40 * len(data) + 1000
    chunk_pages(pages, 400, 40)  # what the reader process does next must accept it too


ENCODINGS = ["utf-8", "utf-8-sig", "utf-16", "utf-32", "cp1252", "latin-1", "utf-16-le", "utf-16-be"]


@FUZZ
@given(st.text(alphabet=st.characters(codec="utf-8"), min_size=1, max_size=800),
       st.sampled_from(ENCODINGS), st.sampled_from(["notes.txt", "notes.md", "page.html", "notes"]))
def test_text_in_odd_encodings(text: str, encoding: str, name: str) -> None:
    raw = text.encode(encoding, errors="ignore")
    try:
        doc_type = detect_type(raw, name)
        pages = extract(raw, doc_type, name)
    except DocumentError as exc:
        assert exc.code in {"document_empty", "document_unsupported", "document_corrupt"}, exc.code
        return
    assert len(pages) == 1
    lossless = encoding in {"utf-8", "utf-8-sig", "utf-16", "utf-32"} and doc_type.kind == "text"
    if lossless and raw.decode(encoding) == text:
        decoded = decode_text(raw)
        assert decoded == text or decoded == text.lstrip(codecs.BOM_UTF8.decode("utf-8"))
        for word in WORD.findall(text):
            assert word in pages[0].text  # nothing accepted is lost


def _records(stream: bytes) -> tuple[list[object], object]:
    async def read() -> tuple[list[object], object]:
        reader = asyncio.StreamReader(limit=1 << 16)
        reader.feed_data(stream)
        reader.feed_eof()
        chunks, outcome = await _read_records(reader, "doc.txt")
        return list(chunks), outcome

    return asyncio.run(read())


record_lines = st.lists(st.one_of(
    st.binary(max_size=200),
    st.sampled_from([b'{"t":"text","p":null,"h":"x"}', b'{"t":1}', b'{"end":1}', b'{"end":"x"}', b"[]",
                     b'{"error":"document_empty","message":"m"}', b'{"error":"rm -rf","message":7}',
                     b'{"p":"1","t":"x","h":"y"}', b"null", b'{"t":"x","h":"y","p":3}'])),
    max_size=20).map(b"\n".join)


@FUZZ
@given(record_lines)
def test_reader_output_parsing(stream: bytes) -> None:
    try:
        chunks, outcome = _records(stream)
    except DocumentError as exc:
        assert exc.code == "document_too_complex"
        return
    assert outcome is None or isinstance(outcome, int | DocumentError)
    if isinstance(outcome, DocumentError):
        assert outcome.code.startswith("document_")  # a child cannot inject an arbitrary error code
    assert all(isinstance(chunk, object) for chunk in chunks)


def test_seeds_are_read() -> None:
    """The mutation seeds are valid documents (so the fuzz starts from files that reach the real parsers)."""
    assert extract(PDF_SEED, detect_type(PDF_SEED, "a.pdf"), "a.pdf")[1].number == 2
    assert "Opening hours" in extract(DOCX_SEED, detect_type(DOCX_SEED, "a.docx"), "a.docx")[0].text
    assert Page(None, "x").text == "x"
