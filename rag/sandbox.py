"""Reading uploaded documents in a separate, resource-limited process.

Parsing an uploaded file is the riskiest thing Eva does with untrusted input: a crafted PDF, DOCX (zip bomb)
or text file can drive pypdf, python-docx/lxml or a regular expression into pathological CPU or memory use, and
CPython's ``re`` (like much of these parsers) holds the GIL, so even a worker thread would freeze every call's
media clock, the API and ARI.  So the whole detect → extract → chunk pipeline runs in a child process
(``python -m rag.sandbox``) that

- lowers its own priority and sets RLIMIT_AS (memory), RLIMIT_CPU (SIGXCPU, then SIGKILL), RLIMIT_FSIZE=0 (it
  writes no files) and RLIMIT_CORE=0 before it reads a byte of the document;
- gets a minimal environment (none of Eva's secrets) and the document on stdin;
- writes one JSON object per line on stdout: the chunks, then ``{"end": N}`` or ``{"error": code, ...}``.

The parent (``extract_chunks``) kills it when the wall-clock timeout passes or it is cancelled, reads a bounded
amount of output in small lines (so decoding it never blocks the event loop for long), and turns every way the
child can fail (limit hit, crash, garbage) into a ``DocumentError`` with a stable code and a clear reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import signal
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from rag.chunking import Chunk, chunk_pages
from rag.extract import DEFAULT_MAX_PDF_PAGES, detect_type, extract, too_complex
from voicebot.errors import DocumentError

log = logging.getLogger(__name__)

MAX_OUTPUT_BYTES = 256 * 1024 * 1024
"""Chunk lines one document may produce (the extracted text itself is capped at 50 M characters)."""
MAX_LINE_BYTES = 8 * 1024 * 1024
"""Longest line accepted from the child (one chunk: chunk_size characters, JSON-escaped)."""
STDERR_BYTES = 64 * 1024
YIELD_EVERY = 256
"""Lines decoded between two yields to the event loop."""
_PROJECT_ROOT = Path(__file__).resolve().parent.parent
_CODE = re.compile(r"document_[a-z_]{1,40}")


@dataclass(frozen=True)
class SandboxLimits:
    """What reading one document may cost (EVA_EXTRACT_MEMORY_MB, EVA_EXTRACT_CPU_SECONDS, ...)."""

    memory_mb: int = 1024
    cpu_seconds: int = 60
    timeout: float = 120.0
    max_pdf_pages: int = DEFAULT_MAX_PDF_PAGES

    @classmethod
    def from_settings(cls, settings: Any) -> SandboxLimits:
        return cls(memory_mb=settings.extract_memory_mb, cpu_seconds=settings.extract_cpu_seconds,
                   timeout=settings.extract_timeout, max_pdf_pages=settings.max_pdf_pages)


# ================================================================================================ parent side
async def extract_chunks(data: bytes, filename: str, *, chunk_size: int, overlap: int,
                         limits: SandboxLimits) -> list[Chunk]:
    """Detect, extract and chunk ``data`` in a resource-limited child process.

    Raises ``DocumentError``: what the document itself is wrong with (corrupt, empty, encrypted, ...), or
    ``document_too_complex`` when reading it went past a limit (memory, CPU, wall-clock time, pages, size).
    """
    name = filename or "the document"
    config = {"filename": filename, "chunk_size": chunk_size, "overlap": overlap,
              "memory_mb": limits.memory_mb, "cpu_seconds": limits.cpu_seconds,
              "max_pdf_pages": limits.max_pdf_pages}
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"}
    # -E -s: no PYTHON* variables, no user site; the project root is the working directory, so ``-m`` finds
    # this package whether it is installed or run from a checkout.
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-E", "-s", "-m", "rag.sandbox", json.dumps(config),
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        cwd=str(_PROJECT_ROOT), env=env, limit=MAX_LINE_BYTES, start_new_session=True)
    assert process.stdin is not None and process.stdout is not None and process.stderr is not None
    helpers = [asyncio.ensure_future(_feed(process.stdin, data)),
               asyncio.ensure_future(_read_capped(process.stderr, STDERR_BYTES))]
    try:
        async with asyncio.timeout(limits.timeout):
            chunks, outcome = await _read_records(process.stdout, name)
            returncode = await process.wait()
            stderr = await helpers[1]
    except TimeoutError as exc:
        raise too_complex(f"{name} took longer than {limits.timeout:.0f} s to read; "
                          "split it into smaller files") from exc
    finally:
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()
        for helper in helpers:
            helper.cancel()
        await asyncio.gather(*helpers, return_exceptions=True)
    if stderr:
        log.debug("document reader for %s wrote: %s", name, stderr.decode("utf-8", "replace")[-4000:])
    if isinstance(outcome, DocumentError):
        raise outcome
    if outcome is not None and outcome == len(chunks) and returncode == 0:
        return chunks
    raise _died(name, returncode, limits)


def _died(name: str, returncode: int, limits: SandboxLimits) -> DocumentError:
    """Why the child ended without a result, from its exit status."""
    if returncode in {-signal.SIGXCPU, -signal.SIGKILL}:
        return too_complex(f"reading {name} needed more than {limits.cpu_seconds} s of CPU time or "
                           f"{limits.memory_mb} MB of memory; split it into smaller files")
    if returncode < 0:
        return DocumentError(f"the document reader crashed on {name} (signal {-returncode}); the file is "
                             "probably damaged", code="document_corrupt")
    return DocumentError(f"the document reader failed on {name} (exit status {returncode}); the file is "
                         "probably damaged", code="document_corrupt")


async def _read_records(stream: asyncio.StreamReader, name: str) -> tuple[list[Chunk], int | DocumentError | None]:
    """Chunk lines up to the final record: (chunks, announced count | the child's error | None if it died)."""
    chunks: list[Chunk] = []
    received = 0
    while True:
        try:
            line = await stream.readline()
        except ValueError as exc:  # a line over MAX_LINE_BYTES (LimitOverrunError)
            raise too_complex(f"reading {name} produced an over-long chunk") from exc
        if not line:
            return chunks, None
        received += len(line)
        if received > MAX_OUTPUT_BYTES:
            raise too_complex(f"{name} yields more than {MAX_OUTPUT_BYTES // 1048576} MB of text; "
                              "split it into smaller files")
        record = _decode(line)
        if record is None:
            return chunks, None
        if "t" in record:
            text, page, digest = record["t"], record.get("p"), record.get("h")
            if not (isinstance(text, str) and isinstance(digest, str)
                    and (page is None or isinstance(page, int))):
                return chunks, None
            chunks.append(Chunk(ordinal=len(chunks), page=page, text=text, text_hash=digest))
            if len(chunks) % YIELD_EVERY == 0:
                await asyncio.sleep(0)  # buffered lines do not suspend readline(): let calls run
            continue
        if "error" in record:
            code = record["error"] if isinstance(record["error"], str) else ""
            message = record.get("message")
            return chunks, DocumentError(
                message[:2000] if isinstance(message, str) and message else f"{name} could not be read",
                code=code if _CODE.fullmatch(code) else "document_corrupt")
        end = record.get("end")
        return chunks, end if isinstance(end, int) else None


def _decode(line: bytes) -> dict[str, Any] | None:
    try:
        record = json.loads(line)
    except ValueError:
        return None
    return record if isinstance(record, dict) else None


async def _feed(stdin: asyncio.StreamWriter, data: bytes) -> None:
    try:
        stdin.write(data)
        await stdin.drain()
        stdin.close()
    except (BrokenPipeError, ConnectionResetError):
        pass  # the child stopped reading (it died); its exit status says why


async def _read_capped(stream: asyncio.StreamReader, limit: int) -> bytes:
    """Up to ``limit`` bytes of ``stream``; the rest is read and dropped so the child never blocks on it."""
    kept = bytearray()
    while block := await stream.read(65536):
        if len(kept) < limit:
            kept += block[:limit - len(kept)]
    return bytes(kept)


# ================================================================================================ child side
def _limit_self(memory_mb: int, cpu_seconds: int) -> None:
    import resource

    os.nice(10)  # calls' speech and LLM work comes first on a busy machine
    memory = memory_mb * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    # SIGXCPU at the soft limit; SIGKILL shortly after if the process is stuck in C code that ignores it.
    resource.setrlimit(resource.RLIMIT_CPU, (cpu_seconds, cpu_seconds + 2))
    resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def _write(out: IO[bytes], record: dict[str, Any]) -> None:
    out.write(json.dumps(record, ensure_ascii=False, separators=(",", ":")).encode("utf-8") + b"\n")


def run_child(config: dict[str, Any], data: bytes, out: IO[bytes]) -> None:
    """The child's work: detect, extract, chunk; every outcome is a record on ``out``."""
    filename = str(config.get("filename", ""))
    try:
        doc_type = detect_type(data, filename)
        pages = extract(data, doc_type, filename, max_pdf_pages=int(config["max_pdf_pages"]))
        chunks = chunk_pages(pages, int(config["chunk_size"]), int(config["overlap"]))
    except DocumentError as exc:
        _write(out, {"error": exc.code, "message": exc.message})
        return
    except MemoryError:
        del data
        _write(out, {"error": "document_too_complex",
                     "message": f"reading {filename or 'the document'} needs more than "
                                f"{config['memory_mb']} MB of memory; split it into smaller files"})
        return
    except RecursionError:
        _write(out, {"error": "document_corrupt",
                     "message": f"{filename or 'the document'} is nested too deeply to read (damaged?)"})
        return
    except Exception as exc:
        # A parser failing in a way it does not document is still a file we cannot read, not a crash.
        _write(out, {"error": "document_corrupt",
                     "message": f"{filename or 'the document'} could not be read "
                                f"({type(exc).__name__}: {exc})"[:500]})
        return
    for chunk in chunks:
        _write(out, {"p": chunk.page, "t": chunk.text, "h": chunk.text_hash})
    _write(out, {"end": len(chunks)})


def main() -> int:
    config = json.loads(sys.argv[1])
    _limit_self(int(config["memory_mb"]), int(config["cpu_seconds"]))
    data = sys.stdin.buffer.read()
    run_child(config, data, sys.stdout.buffer)
    sys.stdout.buffer.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
