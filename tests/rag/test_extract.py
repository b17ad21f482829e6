"""Type detection and text extraction on real files: PDF (pages, encrypted, damaged, textless), DOCX, HTML,
Markdown and plain text in the encodings people actually upload."""

from __future__ import annotations

import codecs

import pytest

from rag.extract import decode_text, detect_type, extract, html_to_text, markdown_to_text
from tests.rag.files import encrypt_pdf, make_blank_pdf, make_docx, make_pdf
from voicebot.errors import DocumentError

PAGES = [
    "Opening hours. The shop opens at nine in the morning and closes at six in the evening on weekdays.",
    "Refunds. Customers can return unused items within thirty days of delivery for a full refund.",
    "Shipping. Parcels to Canada cost twelve dollars and arrive within five business days.",
]


def _error(data: bytes, name: str) -> DocumentError:
    with pytest.raises(DocumentError) as info:
        extract(data, detect_type(data, name), name)
    return info.value


def test_pdf_pages_are_numbered() -> None:
    data = make_pdf(PAGES)
    doc_type = detect_type(data, "handbook.pdf")
    assert (doc_type.kind, doc_type.mime) == ("pdf", "application/pdf")
    pages = extract(data, doc_type, "handbook.pdf")
    assert [page.number for page in pages] == [1, 2, 3]
    assert "thirty days" in pages[1].text and "thirty days" not in pages[0].text
    assert "Canada" in pages[2].text


def test_pdf_detected_by_content_whatever_the_extension() -> None:
    assert detect_type(make_pdf(PAGES[:1]), "upload.bin").kind == "pdf"


def test_encrypted_pdf_is_refused_with_a_clear_code() -> None:
    error = _error(encrypt_pdf(make_pdf(PAGES), user_password="s3cret"), "locked.pdf")
    assert error.code == "document_encrypted"
    assert "password" in error.message


def test_owner_password_only_pdf_is_read() -> None:
    """Encrypted only to restrict copying (empty user password): readers open it, so do we."""
    data = encrypt_pdf(make_pdf(PAGES), user_password="")
    pages = extract(data, detect_type(data, "restricted.pdf"), "restricted.pdf")
    assert "nine in the morning" in pages[0].text


@pytest.mark.parametrize("cut", [0.3, 0.6, 0.95])
def test_truncated_pdf_is_corrupt(cut: float) -> None:
    data = make_pdf(PAGES)
    assert _error(data[: int(len(data) * cut)], "broken.pdf").code == "document_corrupt"


def test_pdf_extension_without_pdf_content_is_corrupt() -> None:
    with pytest.raises(DocumentError) as info:
        detect_type(b"<html>not really a pdf</html>", "report.pdf")
    assert info.value.code == "document_corrupt"


def test_textless_pdf_is_empty() -> None:
    assert _error(make_blank_pdf(), "scan.pdf").code == "document_empty"


def test_docx_paragraphs_heading_and_table_in_order() -> None:
    data = make_docx(["First paragraph about refunds.", "Second paragraph about shipping."],
                     heading="Customer handbook", table=[["Plan", "Price"], ["Basic", "10 dollars"]])
    doc_type = detect_type(data, "handbook.docx")
    assert doc_type.kind == "docx"
    text = extract(data, doc_type, "handbook.docx")[0].text
    assert text.index("Customer handbook") < text.index("First paragraph") < text.index("Second paragraph")
    assert "Basic | 10 dollars" in text


def test_damaged_docx_is_corrupt() -> None:
    data = make_docx(["Some text."])
    # Keep the ZIP signature and directory but break the document part's compressed data.
    broken = data.replace(b"word/document.xml", b"word/documenX.xml")
    with pytest.raises(DocumentError) as info:
        detect_type(broken, "x.docx")
    assert info.value.code in {"document_corrupt", "document_unsupported"}
    assert _error(b"PK\x03\x04" + b"\x00" * 100, "x.docx").code == "document_corrupt"
    assert _error(b"plain words", "x.docx").code == "document_corrupt"


def test_html_drops_scripts_styles_and_head() -> None:
    page = """<!DOCTYPE html><html><head><title>Store policies</title><style>p{color:red}</style>
    <script>var secret = "do not index";</script></head>
    <body><nav>Home</nav><h1>Returns</h1>
    <p>Items can be returned within <b>30&nbsp;days</b> &amp; refunded.</p>
    <ul><li>Keep the receipt</li><li>Use the original box</li></ul>
    <noscript>enable js</noscript></body></html>"""
    data = page.encode("utf-8")
    doc_type = detect_type(data, "policies.html")
    assert doc_type.kind == "html"
    text = extract(data, doc_type, "policies.html")[0].text
    assert "Items can be returned within 30 days & refunded." in text
    assert "do not index" not in text and "color:red" not in text and "enable js" not in text
    assert "Store policies" in text  # the title is kept as a heading
    assert "Keep the receipt\nUse the original box" in text


def test_html_sniffed_without_extension() -> None:
    assert detect_type(b"<!doctype html><p>hello</p>", "page").kind == "html"


def test_markdown_markup_removed() -> None:
    md = "# Returns\n\nSee [our policy](https://example.com/p) and ![logo](logo.png).\n\n**Bold** claim.\n"
    text = markdown_to_text(md)
    assert "https://example.com" not in text and "#" not in text and "**" not in text
    assert "See our policy and logo." in text
    assert detect_type(md.encode(), "README.md").kind == "markdown"


@pytest.mark.parametrize(("raw", "expected"), [
    ("Café crème à 3€ — naïve".encode("cp1252"), "Café crème à 3€ — naïve"),
    (codecs.BOM_UTF16_LE + "Grüße aus Köln".encode("utf-16-le"), "Grüße aus Köln"),
    (codecs.BOM_UTF16_BE + "Grüße aus Köln".encode("utf-16-be"), "Grüße aus Köln"),
    (codecs.BOM_UTF8 + "naïve café".encode(), "naïve café"),
    ("plain ascii and ünïcödé".encode(), "plain ascii and ünïcödé"),
    ("no BOM utf-16 text here".encode("utf-16-le"), "no BOM utf-16 text here"),
])
def test_text_encodings(raw: bytes, expected: str) -> None:
    assert decode_text(raw) == expected
    doc_type = detect_type(raw, "notes.txt")
    assert doc_type.kind == "text"
    assert extract(raw, doc_type, "notes.txt")[0].text == expected


def test_windows_line_endings_and_control_characters_cleaned() -> None:
    raw = b"Line one\r\nLine two\x07\r\n\r\n\r\n\r\nNext paragraph\x0cthird"
    text = extract(raw, detect_type(raw, "a.txt"), "a.txt")[0].text
    assert text == "Line one\nLine two\n\nNext paragraph\n\nthird"


@pytest.mark.parametrize(("data", "name", "code"), [
    (b"", "empty.txt", "document_empty"),
    (b"   \n\t  \n", "blank.txt", "document_empty"),
    (b"\x89PNG\r\n\x1a\n" + b"\x00" * 64, "photo.png", "document_unsupported"),
    (b"\x89PNG\r\n\x1a\n" + b"\x00" * 64, "photo.txt", "document_unsupported"),
    (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + b"\x00" * 64, "old.doc", "document_unsupported"),
    (b"MZ\x90\x00\x03\x00\x00\x00\x04\x00\x00\x00\xff\xff" * 20, "tool.exe", "document_unsupported"),
    (b"\x00\x01\x02\x03\x04\x05binary\x00\x00" * 50, "data.txt", "document_unsupported"),
    (b"col1,col2\n1,2\n", "sheet.xlsx", "document_unsupported"),
])
def test_refused_before_extraction(data: bytes, name: str, code: str) -> None:
    with pytest.raises(DocumentError) as info:
        detect_type(data, name)
    assert info.value.code == code
    assert info.value.message


def test_html_to_text_keeps_table_cells_apart() -> None:
    text = html_to_text("<table><tr><td>Basic</td><td>10</td></tr><tr><td>Pro</td><td>20</td></tr></table>")
    assert "Basic | 10" in text and "Pro | 20" in text
