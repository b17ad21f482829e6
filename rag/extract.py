"""Document type detection and text extraction: PDF (with page numbers), DOCX, Markdown, HTML and plain text.

``detect_type`` is cheap (magic bytes + extension) and runs while an upload is being accepted, so unsupported
files are refused at once.  ``extract`` does the real parsing; the knowledge base runs it in a separate,
resource-limited process (``rag.sandbox``), never in Eva's own.  Every way a file can be unusable (corrupt,
encrypted, no text, beyond the page/size budgets) becomes a ``DocumentError`` with a stable code, which the
knowledge base stores on the document.
"""

from __future__ import annotations

import codecs
import io
import logging
import re
import zipfile
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import PurePath
from typing import Any

from voicebot.errors import DocumentError

TEXT_EXTENSIONS = frozenset({"", ".txt", ".text", ".md", ".markdown", ".rst", ".csv", ".log", ".html",
                             ".htm"})
MARKDOWN_EXTENSIONS = frozenset({".md", ".markdown"})
HTML_EXTENSIONS = frozenset({".html", ".htm"})

DEFAULT_MAX_PDF_PAGES = 2000
"""Pages a PDF may have (EVA_MAX_PDF_PAGES); longer ones are refused, not silently cut."""
MAX_EXTRACTED_CHARS = 50 * 1024 * 1024
"""Characters of text one document may yield (a small PDF or DOCX can unpack to far more than its size)."""
MAX_DOCX_MEMBERS = 5000
MAX_DOCX_UNPACKED = 256 * 1024 * 1024
"""Total declared uncompressed size of a DOCX package; zipfile never inflates a member past its declared
size (and fails on a CRC mismatch), so checking the directory bounds what python-docx can unpack."""
MAX_COMPRESSION_RATIO = 200
"""Real DOCX parts compress 5-30:1; zip bombs 1000:1 and more."""
_RATIO_FLOOR = 1024 * 1024
"""Members smaller than this may have any ratio (a few KB of repeated XML is harmless)."""

# Well-known binary formats we refuse with a helpful message instead of indexing garbage.
_BINARY_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"\xd0\xcf\x11\xe0", "legacy Office (.doc/.xls) files are not supported; save as .docx"),
    (b"\x89PNG", "images are not supported (no OCR)"),
    (b"\xff\xd8\xff", "images are not supported (no OCR)"),
    (b"GIF8", "images are not supported (no OCR)"),
    (b"{\\rtf", "RTF files are not supported; save as .docx or PDF"),
    (b"\x1f\x8b", "compressed archives are not supported"),
    (b"7z\xbc\xaf", "compressed archives are not supported"),
)


@dataclass(frozen=True)
class DocType:
    kind: str
    """pdf | docx | markdown | html | text"""
    mime: str
    extension: str


@dataclass(frozen=True)
class Page:
    """Extracted text of one page (PDF) or of the whole document (``number`` None)."""

    number: int | None
    text: str


def _unsupported(message: str) -> DocumentError:
    return DocumentError(message, code="document_unsupported")


def _corrupt(message: str) -> DocumentError:
    return DocumentError(message, code="document_corrupt")


def _empty(message: str) -> DocumentError:
    return DocumentError(message, code="document_empty")


def too_complex(message: str) -> DocumentError:
    """A document beyond what we agree to spend on reading it (pages, unpacked size, CPU, memory, time)."""
    return DocumentError(message, code="document_too_complex")


def detect_type(data: bytes, filename: str) -> DocType:
    """Decide how to read ``data`` from its content and its file name; refuse what we cannot index."""
    extension = PurePath(filename).suffix.lower()
    if not data.strip():
        raise _empty(f"{filename or 'the file'} is empty")
    head = data[:2048]
    if b"%PDF-" in head[:1024]:
        return DocType("pdf", "application/pdf", ".pdf")
    if extension == ".pdf":
        raise _corrupt(f"{filename} is not a valid PDF (no PDF header)")
    if head.startswith(b"PK\x03\x04"):
        try:
            with zipfile.ZipFile(io.BytesIO(data)) as archive:
                names = set(archive.namelist())
        except (zipfile.BadZipFile, OSError) as exc:
            raise _corrupt(f"{filename} is a damaged ZIP/DOCX file") from exc
        if "word/document.xml" in names:
            return DocType("docx", "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
                           ".docx")
        raise _unsupported(f"{filename}: ZIP archives other than .docx are not supported")
    if extension == ".docx":
        raise _corrupt(f"{filename} is not a valid .docx file (not a ZIP package)")
    for magic, message in _BINARY_MAGIC:
        if head.startswith(magic):
            raise _unsupported(f"{filename}: {message}")
    if extension not in TEXT_EXTENSIONS:
        raise _unsupported(f"{filename}: unsupported file type '{extension}' "
                           "(supported: PDF, DOCX, Markdown, HTML, plain text)")
    text = decode_text(head if len(data) > len(head) else data, partial=len(data) > len(head))
    if _looks_binary(text):
        raise _unsupported(f"{filename} looks like a binary file, not text")
    lowered = text[:1024].lstrip().lower()
    if extension in HTML_EXTENSIONS or lowered.startswith(("<!doctype html", "<html")):
        return DocType("html", "text/html", extension or ".html")
    if extension in MARKDOWN_EXTENSIONS:
        return DocType("markdown", "text/markdown", extension)
    return DocType("text", "text/plain", extension or ".txt")


# ---------------------------------------------------------------------------------------------- text decoding
def decode_text(data: bytes, *, partial: bool = False) -> str:
    """Decode bytes of unknown encoding: BOMs first, then UTF-8, a UTF-16 guess, cp1252, latin-1.

    ``partial`` means ``data`` may end in the middle of a multi-byte character (a prefix of the file).
    """
    errors = "ignore" if partial else "strict"
    for bom, encoding in ((codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"),
                          (codecs.BOM_UTF8, "utf-8-sig"), (codecs.BOM_UTF16_LE, "utf-16"),
                          (codecs.BOM_UTF16_BE, "utf-16")):
        if data.startswith(bom):
            try:
                return data.decode(encoding, errors=errors)
            except UnicodeDecodeError as exc:
                raise _corrupt(f"text claims {encoding} (byte order mark) but is not valid {encoding}"
                               ) from exc
    # Before UTF-8: NUL bytes are valid UTF-8, so BOM-less UTF-16 would "decode" as UTF-8 with NULs.
    utf16 = _guess_utf16(data)
    if utf16 is not None:
        return data.decode(utf16, errors="replace")
    try:
        return data.decode("utf-8", errors="strict")
    except UnicodeDecodeError as exc:
        if partial and exc.start >= len(data) - 3 and exc.end == len(data):
            # Only the cut-off last character is incomplete: the text is UTF-8.
            return data[:exc.start].decode("utf-8")
    try:
        # cp1252 is a superset of latin-1's printable range and what "ANSI" files on Windows are.
        return data.decode("cp1252")
    except UnicodeDecodeError:
        return data.decode("latin-1")


def _guess_utf16(data: bytes) -> str | None:
    """UTF-16 without a BOM: mostly-ASCII text has a NUL in every other byte."""
    sample = data[:4096]
    if len(sample) < 4:
        return None
    even_nuls = sample[0::2].count(0)
    odd_nuls = sample[1::2].count(0)
    half = len(sample) / 2
    if odd_nuls > 0.4 * half and even_nuls < 0.05 * half:
        return "utf-16-le"
    if even_nuls > 0.4 * half and odd_nuls < 0.05 * half:
        return "utf-16-be"
    return None


def _looks_binary(text: str) -> bool:
    if not text:
        return False
    controls = sum(1 for char in text if ord(char) < 32 and char not in "\t\n\r\f\v")
    return "\x00" in text or controls > 0.05 * len(text)


# ---------------------------------------------------------------------------------------------- extraction
def extract(data: bytes, doc_type: DocType, filename: str = "", *,
            max_pdf_pages: int = DEFAULT_MAX_PDF_PAGES) -> list[Page]:
    """Text of the document, page by page.  Raises ``DocumentError`` when no usable text comes out.

    The work is bounded by the input for text formats (linear-time handling) and by ``max_pdf_pages``, the DOCX
    package checks and ``MAX_EXTRACTED_CHARS`` for the others; CPU time and memory are bounded by the process
    this runs in (``rag.sandbox``).
    """
    name = filename or "the document"
    if doc_type.kind == "pdf":
        pages = _extract_pdf(data, name, max_pdf_pages)
    elif doc_type.kind == "docx":
        pages = [Page(None, _extract_docx(data, name))]
    else:
        text = decode_text(data)
        if _looks_binary(text):
            raise _unsupported(f"{name} looks like a binary file, not text")
        if doc_type.kind == "html":
            text = html_to_text(text)
        elif doc_type.kind == "markdown":
            text = markdown_to_text(text)
        pages = [Page(None, text)]
    if sum(len(page.text) for page in pages) > MAX_EXTRACTED_CHARS:
        raise too_complex(f"{name} holds more than {MAX_EXTRACTED_CHARS // 1048576} M characters of text "
                          "(split it into smaller files)")
    pages = [Page(page.number, clean_text(page.text)) for page in pages]
    pages = [page for page in pages if page.text]
    if not pages:
        if doc_type.kind == "pdf":
            raise _empty(f"{name} has no extractable text (a scanned PDF? OCR is not supported)")
        raise _empty(f"{name} contains no text")
    return pages


def _extract_pdf(data: bytes, name: str, max_pages: int) -> list[Page]:
    from pypdf import PasswordType, PdfReader
    from pypdf.errors import DependencyError, PdfReadError, PyPdfError

    # pypdf logs every repaired irregularity of real-world files as a warning; they are not actionable.
    logging.getLogger("pypdf").setLevel(logging.ERROR)

    try:
        reader = PdfReader(io.BytesIO(data))
        if reader.is_encrypted:
            # Many PDFs are "encrypted" only to restrict printing/copying, with an empty user password.
            try:
                opened = reader.decrypt("")
            except (DependencyError, NotImplementedError) as exc:
                raise DocumentError(f"{name} is encrypted with an unsupported method",
                                    code="document_encrypted") from exc
            if opened == PasswordType.NOT_DECRYPTED:
                raise DocumentError(f"{name} is password-protected; remove the password and upload it again",
                                    code="document_encrypted")
        declared = len(reader.pages)
        if declared > max_pages:
            raise too_complex(f"{name} has {declared} pages; the limit is {max_pages} "
                              "(split it into smaller files)")
        pages: list[Page] = []
        chars = 0
        for number, page in enumerate(reader.pages, start=1):
            if number > max_pages:  # the page tree may hold more pages than its /Count claims
                raise too_complex(f"{name} has more than {max_pages} pages (split it into smaller files)")
            text = page.extract_text() or ""
            chars += len(text)
            if chars > MAX_EXTRACTED_CHARS:
                raise too_complex(f"{name} holds more than {MAX_EXTRACTED_CHARS // 1048576} M characters "
                                  "of text (split it into smaller files)")
            pages.append(Page(number, text))
    except (DocumentError, MemoryError):
        raise  # a memory limit is the reader process's to report
    except (PdfReadError, PyPdfError, ValueError, KeyError, TypeError, AttributeError, IndexError,
            OSError, RecursionError, AssertionError, ZeroDivisionError) as exc:
        # pypdf surfaces damaged structures as a wide range of exception types.
        raise _corrupt(f"{name} is a damaged PDF: {exc}") from exc
    except Exception as exc:
        # ... and some undocumented ones (NotImplementedError for an unknown filter, found by fuzzing).
        raise _corrupt(f"{name} is a damaged PDF: {type(exc).__name__}: {exc}") from exc
    if not pages:
        raise _empty(f"{name} has no pages")
    return pages


def _extract_docx(data: bytes, name: str) -> str:
    try:
        import docx
        from docx.opc.exceptions import PackageNotFoundError
    except ImportError as exc:  # pragma: no cover - a declared dependency
        raise DocumentError("python-docx is not installed", code="document_unsupported") from exc
    check_docx_package(data, name)
    try:
        document = docx.Document(io.BytesIO(data))
        parts: list[str] = []
        body = document.element.body
        # Walk the body in order so tables stay where they are in the text.
        for child in body.iterchildren():
            tag = child.tag.rsplit("}", 1)[-1]
            if tag == "p":
                parts.append(_node_text(child, ""))
            elif tag == "tbl":
                for row in child.iter():
                    if row.tag.endswith("}tr"):
                        cells = [_node_text(cell, " ") for cell in row.iterchildren()
                                 if cell.tag.endswith("}tc")]
                        parts.append(" | ".join(cell for cell in cells if cell))
    except (PackageNotFoundError, KeyError, ValueError, zipfile.BadZipFile, OSError) as exc:
        raise _corrupt(f"{name} is a damaged .docx file: {exc}") from exc
    except MemoryError:
        raise  # a memory limit is the reader process's to report
    except Exception as exc:
        # lxml raises its own XMLSyntaxError for damaged XML parts.
        raise _corrupt(f"{name} is a damaged .docx file: {type(exc).__name__}: {exc}") from exc
    return "\n\n".join(parts)


def check_docx_package(data: bytes, name: str) -> None:
    """Refuse a DOCX whose ZIP directory promises too much unpacked data (a zip bomb) before opening it."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            members = archive.infolist()
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
        raise _corrupt(f"{name} is a damaged .docx file: {exc}") from exc
    if len(members) > MAX_DOCX_MEMBERS:
        raise too_complex(f"{name} is a package of {len(members)} parts; the limit is {MAX_DOCX_MEMBERS}")
    unpacked = 0
    for member in members:
        unpacked += member.file_size
        if unpacked > MAX_DOCX_UNPACKED:
            raise too_complex(f"{name} unpacks to more than {MAX_DOCX_UNPACKED // 1048576} MB")
        if (member.file_size > _RATIO_FLOOR
                and member.file_size > MAX_COMPRESSION_RATIO * max(member.compress_size, 1)):
            raise too_complex(f"{name}: part {member.filename[:100]!r} is compressed more than "
                              f"{MAX_COMPRESSION_RATIO}:1 (a zip bomb?)")


def _node_text(element: Any, separator: str) -> str:
    """Concatenated text runs (``w:t``) under a DOCX XML element."""
    return separator.join(node.text or "" for node in element.iter() if node.tag.endswith("}t")).strip()


_BLOCK_TAGS = frozenset({
    "p", "div", "br", "li", "ul", "ol", "h1", "h2", "h3", "h4", "h5", "h6", "tr", "table", "section",
    "article", "header", "footer", "blockquote", "pre", "dd", "dt", "dl", "hr", "title", "main", "nav",
    "aside", "figure", "figcaption", "form",
})
_LINE_TAGS = frozenset({"br", "li", "tr", "dt", "dd"})
"""Block elements that end a line but not a paragraph (list items, table rows)."""
_SKIP_TAGS = frozenset({"script", "style", "noscript", "template", "svg", "head", "iframe", "object"})


class _TextCollector(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.skip_depth = 0
        self.pre_depth = 0
        self.title: list[str] = []
        self._in_title = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "title":
            self._in_title = True
        elif tag in _SKIP_TAGS:
            self.skip_depth += 1
        if tag == "pre":
            self.pre_depth += 1
        if tag in _BLOCK_TAGS:
            self.parts.append("\n" if tag in _LINE_TAGS else "\n\n")

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _BLOCK_TAGS:
            self.parts.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag == "title":
            self._in_title = False
        elif tag in _SKIP_TAGS and self.skip_depth:
            self.skip_depth -= 1
        if tag == "pre":
            self.pre_depth = max(0, self.pre_depth - 1)
        if tag in _BLOCK_TAGS and tag not in _LINE_TAGS:
            self.parts.append("\n\n")
        elif tag in {"td", "th"}:
            self.parts.append(" | ")

    def handle_data(self, data: str) -> None:
        if self._in_title:
            self.title.append(data)
        elif not self.skip_depth:
            # Outside <pre>, line breaks in HTML source are just spaces; structure comes from the tags.
            self.parts.append(data if self.pre_depth else re.sub(r"\s+", " ", data))


def html_to_text(markup: str) -> str:
    """Visible text of an HTML page (scripts, styles and the head dropped; block elements become breaks)."""
    collector = _TextCollector()
    try:
        collector.feed(markup)
        collector.close()
    except (AssertionError, ValueError, IndexError, RecursionError) as exc:
        # html.parser asserts on some malformed declarations ("<![" without a name).
        raise _corrupt(f"the HTML cannot be parsed: {exc}"[:300]) from exc
    body = "".join(collector.parts)
    # Collapse runs of spaces the markup's indentation leaves inside lines; keep the line structure.
    lines = [re.sub(r"[ \t\r\f\v]+", " ", line).strip() for line in body.split("\n")]
    text = "\n".join(lines)
    title = " ".join("".join(collector.title).split())
    if title and title not in text[: len(title) + 200]:
        text = f"{title}\n\n{text}"
    return text


# Linear-time patterns only (uploaded Markdown is untrusted, and ``re`` holds the GIL): every repeated class
# excludes the delimiter that ends it and is bounded, so each character is scanned a bounded number of times
# (``[^\]]+`` followed by ``\]\(`` made ``[[[[…`` quadratic: 20k characters took seconds).
_MD_IMAGE = re.compile(r"!\[([^\[\]\n]{0,500})\]\([^()\n]{0,2000}\)")
_MD_LINK = re.compile(r"\[([^\[\]\n]{1,500})\]\([^()\n]{0,2000}\)")
_MD_STRONG = re.compile(r"\*\*([^*\n]{1,1000})\*\*|__([^_\n]{1,1000})__")


def markdown_to_text(markdown: str) -> str:
    """Markdown without the markup that hurts retrieval (link targets, heading hashes, emphasis marks).

    Runs in time linear in the input: plain string scanning for comments, fences and headings, and bounded
    non-backtracking patterns for links and emphasis.
    """
    text = _strip_html_comments(markdown)
    lines: list[str] = []
    for line in text.split("\n"):
        stripped = line.lstrip()
        if stripped.startswith(("```", "~~~")):
            lines.append("")
            continue
        heading = _heading(line)
        # A heading is its own paragraph so that chunks break there.
        lines.append(line if heading is None else f"\n{heading}\n")
    text = "\n".join(lines)
    text = _MD_IMAGE.sub(r"\1", text)
    text = _MD_LINK.sub(r"\1", text)
    return _MD_STRONG.sub(lambda match: match.group(1) or match.group(2), text)


def _strip_html_comments(text: str) -> str:
    parts: list[str] = []
    position = 0
    while True:
        start = text.find("<!--", position)
        if start < 0:
            break
        end = text.find("-->", start + 4)
        if end < 0:
            break  # an unclosed comment stays text; no later one can be closed either
        parts.append(text[position:start])
        position = end + 3
    parts.append(text[position:])
    return "".join(parts)


def _heading(line: str) -> str | None:
    """The text of an ATX heading line (``## Title ##``), or None when ``line`` is not one."""
    stripped = line.lstrip(" \t")
    if len(line) - len(stripped) > 3:
        return None
    hashes = len(stripped) - len(stripped.lstrip("#"))
    if not 1 <= hashes <= 6:
        return None
    rest = stripped[hashes:]
    if rest and not rest[0].isspace():
        return None  # "#hashtag" is text
    return rest.strip().rstrip("#").rstrip()


def clean_text(text: str) -> str:
    """Normalise whitespace and drop control characters while keeping paragraph breaks."""
    text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\x0c", "\n\n").replace("\u00a0", " ")
    # Lone surrogates (a PDF's broken ToUnicode map) cannot be stored, hashed or sent as UTF-8.
    text = text.encode("utf-8", "replace").decode("utf-8")
    text = "".join(char for char in text if char in "\n\t" or ord(char) >= 32)
    # Words hyphenated across PDF line ends ("infor-\nmation").
    text = re.sub(r"(\w)-\n(\w)", r"\1\2", text)
    text = re.sub(r"[ \t]+", " ", text)
    text = re.sub(r" *\n *", "\n", text)
    text = re.sub(r"\n{3,}", "\n\n", text)
    return text.strip()
