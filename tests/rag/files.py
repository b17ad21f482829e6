"""Real document files for the knowledge-base tests, written by real writer libraries (reportlab, pypdf,
python-docx) or as raw bytes in the encodings users actually upload."""

from __future__ import annotations

import io
from collections.abc import Sequence


def make_pdf(pages: Sequence[str], *, title: str = "Test document") -> bytes:
    """A PDF with one text block per page (wrapped lines, like a real document)."""
    from reportlab.lib.pagesizes import A4
    from reportlab.pdfgen import canvas

    buffer = io.BytesIO()
    pdf = canvas.Canvas(buffer, pagesize=A4)
    pdf.setTitle(title)
    width, height = A4
    for text in pages:
        y = height - 72
        text_object = pdf.beginText(72, y)
        text_object.setFont("Helvetica", 11)
        for paragraph in text.split("\n\n"):
            line = ""
            for word in paragraph.split():
                if pdf.stringWidth(f"{line} {word}", "Helvetica", 11) > width - 144:
                    text_object.textLine(line)
                    line = word
                else:
                    line = f"{line} {word}".strip()
            text_object.textLine(line)
            text_object.textLine("")
        pdf.drawText(text_object)
        pdf.showPage()
    pdf.save()
    return buffer.getvalue()


def make_blank_pdf(pages: int = 2) -> bytes:
    """A valid PDF whose pages hold no text (what a scanned document looks like to a text extractor)."""
    from reportlab.lib.pagesizes import A4
    from reportlab.pdfgen import canvas

    buffer = io.BytesIO()
    pdf = canvas.Canvas(buffer, pagesize=A4)
    for _ in range(pages):
        pdf.rect(100, 100, 200, 200, fill=1)
        pdf.showPage()
    pdf.save()
    return buffer.getvalue()


def encrypt_pdf(data: bytes, user_password: str, owner_password: str = "owner-secret") -> bytes:
    from pypdf import PdfReader, PdfWriter

    writer = PdfWriter()
    for page in PdfReader(io.BytesIO(data)).pages:
        writer.add_page(page)
    writer.encrypt(user_password=user_password, owner_password=owner_password, algorithm="AES-128")
    buffer = io.BytesIO()
    writer.write(buffer)
    return buffer.getvalue()


def make_docx(paragraphs: Sequence[str], *, heading: str = "", table: Sequence[Sequence[str]] = ()) -> bytes:
    import docx

    document = docx.Document()
    if heading:
        document.add_heading(heading, level=1)
    for paragraph in paragraphs:
        document.add_paragraph(paragraph)
    if table:
        grid = document.add_table(rows=len(table), cols=len(table[0]))
        for r, row in enumerate(table):
            for c, value in enumerate(row):
                grid.cell(r, c).text = value
    buffer = io.BytesIO()
    document.save(buffer)
    return buffer.getvalue()
