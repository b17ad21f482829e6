"""``eva kb add|list|search|stats|rm|reindex|reconcile``: an agent's knowledge base from the terminal.

``add`` accepts several files, shows a progress bar per file and one overall, and exits non-zero when any
file was refused or failed (the reason is printed, and also stored on the document).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from sqlalchemy.engine import Engine

from models import KnowledgeDocument
from voicebot.config import Settings
from voicebot.errors import EvaError, InvalidInput, NotFound

POLL_SECONDS = 0.2
BAR_WIDTH = 24


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("kb", help="knowledge base: add documents, list, search, stats, remove, reindex")
    actions = parser.add_subparsers(dest="kb_command", required=True, metavar="ACTION")

    add = actions.add_parser("add", help="add documents (PDF, DOCX, Markdown, HTML, text) to an agent")
    add.add_argument("files", nargs="+", metavar="FILE")
    add.add_argument("--agent", required=True, metavar="NAME")
    add.add_argument("--title", default="", help="title (default: the file name; only with one file)")
    add.add_argument("--description", default="")
    add.set_defaults(func=lambda args: _run(_add, args))

    listing = actions.add_parser("list", help="list an agent's documents")
    listing.add_argument("--agent", required=True, metavar="NAME")
    listing.add_argument("--status", choices=["pending", "processing", "ready", "failed"])
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(func=lambda args: _run(_list, args))

    search = actions.add_parser("search", help="search an agent's knowledge")
    search.add_argument("query")
    search.add_argument("--agent", required=True, metavar="NAME")
    search.add_argument("--limit", type=int, default=5)
    search.add_argument("--threshold", type=float, default=0.0, help="minimum cosine similarity (-1..1)")
    search.add_argument("--json", action="store_true")
    search.set_defaults(func=lambda args: _run(_search, args))

    stats = actions.add_parser("stats", help="documents by status, chunks, bytes")
    stats.add_argument("--agent", metavar="NAME", help="one agent (default: all)")
    stats.add_argument("--json", action="store_true")
    stats.set_defaults(func=lambda args: _run(_stats, args))

    remove = actions.add_parser("rm", help="delete documents (rows, vectors and stored copy)")
    remove.add_argument("ids", nargs="+", type=int, metavar="DOC_ID")
    remove.add_argument("--agent", required=True, metavar="NAME")
    remove.set_defaults(func=lambda args: _run(_remove, args))

    reindex = actions.add_parser("reindex", help="extract, chunk and embed documents again")
    reindex.add_argument("ids", nargs="*", type=int, metavar="DOC_ID")
    reindex.add_argument("--agent", required=True, metavar="NAME")
    reindex.add_argument("--all", action="store_true", help="every document of the agent (also after "
                         "changing EVA_EMBEDDER)")
    reindex.set_defaults(func=lambda args: _run(_reindex, args))

    reconcile = actions.add_parser("reconcile",
                                   help="remove orphan vectors, reindex documents whose vectors are missing")
    reconcile.add_argument("--agent", metavar="NAME", help="one agent (default: all)")
    reconcile.set_defaults(func=lambda args: _run(_reconcile, args))


# ---------------------------------------------------------------------------------------------- plumbing
def _run(handler: Any, args: argparse.Namespace) -> int:
    result: int = asyncio.run(_with_kb(handler, args))
    return result


async def _with_kb(handler: Any, args: argparse.Namespace) -> int:
    from rag import KnowledgeBase
    from voicebot.cli.db_cmd import open_engine

    if not getattr(args, "verbose", False):
        # Progress bars and results go to the terminal; routine INFO logs would tear them apart.
        for name in ("rag", "alembic", "sentence_transformers", "chromadb"):
            logging.getLogger(name).setLevel(logging.WARNING)
    settings = Settings.load()
    engine = await asyncio.to_thread(open_engine, settings)
    kb = KnowledgeBase(settings, engine)
    try:
        agent_id = None
        if getattr(args, "agent", None):
            agent_id = await asyncio.to_thread(_agent_id, engine, args.agent)
        code: int = await handler(kb, agent_id, args)
        return code
    finally:
        await kb.close()
        engine.dispose()


def _agent_id(engine: Engine, name: str) -> int:
    from models.db import session_scope
    from voicebot.agent.store import get_agent_by_name

    with session_scope(engine) as session:
        agent = get_agent_by_name(session, name)
        assert agent.id is not None
        return agent.id


def _document_row(document: KnowledgeDocument) -> dict[str, Any]:
    return {"id": document.id, "title": document.title, "filename": document.filename,
            "status": document.status, "chunks": document.chunk_count, "bytes": document.size_bytes,
            "mime_type": document.mime_type, "error_code": document.error_code, "error": document.error,
            "updated_at": document.updated_at.isoformat()}


# ---------------------------------------------------------------------------------------------- add
def _bar(progress: float) -> str:
    filled = round(max(0.0, min(1.0, progress)) * BAR_WIDTH)
    return "[" + "#" * filled + "-" * (BAR_WIDTH - filled) + f"] {progress * 100:5.1f}%"


class ProgressBoard:
    """One line per file plus an overall line; redrawn in place on a terminal, printed once otherwise."""

    def __init__(self, names: Sequence[str], out: TextIO) -> None:
        self.names = list(names)
        self.out = out
        self.tty = out.isatty()
        self.lines: list[str] = ["waiting"] * len(names)
        self.progress: list[float] = [0.0] * len(names)
        self.final: list[bool] = [False] * len(names)
        self._drawn = 0
        self._width = max((len(name) for name in names), default=10)

    def update(self, index: int, progress: float, state: str, *, final: bool = False) -> None:
        self.progress[index] = progress
        self.lines[index] = f"{_bar(progress)}  {self.names[index]:<{self._width}}  {state}"
        if final and not self.final[index]:
            self.final[index] = True
            if not self.tty:
                print(self.lines[index], file=self.out, flush=True)

    def overall(self) -> str:
        done = sum(self.final)
        total = len(self.names)
        # A file that is finished (ready, failed or refused) counts as complete for the overall bar.
        if not total:
            return f"{_bar(1.0)}  overall: nothing to do"
        average = sum(1.0 if final else p for p, final in zip(self.progress, self.final, strict=True)) / total
        return f"{_bar(average)}  overall: {done}/{total} files done"

    def draw(self) -> None:
        if not self.tty:
            return
        if self._drawn:
            self.out.write(f"\x1b[{self._drawn}F")  # back to the first line of the board
        for line in [*self.lines, self.overall()]:
            self.out.write("\x1b[2K" + line + "\n")
        self._drawn = len(self.lines) + 1
        self.out.flush()

    def finish(self) -> None:
        if self.tty:
            self.draw()
        else:
            print(self.overall(), file=self.out, flush=True)


async def _add(kb: Any, agent_id: int | None, args: argparse.Namespace) -> int:
    assert agent_id is not None
    if args.title and len(args.files) > 1:
        raise InvalidInput("--title applies to a single file", field="title")
    board = ProgressBoard([Path(f).name for f in args.files], sys.stdout)
    pending: dict[int, int] = {}  # document id -> board index
    failures = 0
    for index, file in enumerate(args.files):
        try:
            document = await kb.ingest_file(agent_id, file, title=args.title, description=args.description)
        except EvaError as exc:
            failures += 1
            board.update(index, 0.0, f"refused [{exc.code}]: {exc.message}", final=True)
            continue
        assert document.id is not None
        pending[document.id] = index
        board.update(index, 0.0, f"accepted as document {document.id}")
    board.draw()
    started = time.monotonic()
    while pending:
        await asyncio.sleep(POLL_SECONDS)
        for doc_id, index in list(pending.items()):
            document = await kb.get_document(doc_id)
            if document.status == "ready":
                board.update(index, 1.0, f"ready: {document.chunk_count} chunks (document {doc_id})",
                             final=True)
                del pending[doc_id]
            elif document.status == "failed":
                failures += 1
                board.update(index, document.progress,
                             f"failed [{document.error_code}]: {document.error}", final=True)
                del pending[doc_id]
            else:
                elapsed = time.monotonic() - started
                board.update(index, document.progress, f"{document.status} ({elapsed:.0f}s)")
        board.draw()
    await kb.wait_idle()
    board.finish()
    return 1 if failures else 0


# ---------------------------------------------------------------------------------------------- the rest
async def _list(kb: Any, agent_id: int | None, args: argparse.Namespace) -> int:
    documents = await kb.list_documents(agent_id, args.status)
    if args.json:
        print(json.dumps([_document_row(d) for d in documents], indent=2))
        return 0
    if not documents:
        print("no documents")
        return 0
    print(f"{'ID':>5}  {'STATUS':<10}  {'CHUNKS':>6}  {'SIZE':>9}  TITLE (FILE)")
    for d in documents:
        line = f"{d.id:>5}  {d.status:<10}  {d.chunk_count:>6}  {d.size_bytes:>9}  {d.title} ({d.filename})"
        if d.status == "failed":
            line += f"\n{'':>7}error [{d.error_code}]: {d.error}"
        elif d.status == "processing":
            line += f"  {d.progress * 100:.0f}%"
        print(line)
    return 0


async def _search(kb: Any, agent_id: int | None, args: argparse.Namespace) -> int:
    assert agent_id is not None
    hits = await kb.search(agent_id, args.query, limit=args.limit, threshold=args.threshold)
    if args.json:
        print(json.dumps([hit.to_dict() for hit in hits], indent=2))
        return 0
    if not hits:
        print("no matches")
        return 0
    for rank, hit in enumerate(hits, 1):
        where = f"{hit.title}" + (f", page {hit.page}" if hit.page is not None else "")
        print(f"{rank}. [{hit.similarity:.3f}] {where} (document {hit.document_id}, chunk {hit.ordinal})")
        print(f"   {' '.join(hit.text.split())}")
    return 0


async def _stats(kb: Any, agent_id: int | None, args: argparse.Namespace) -> int:
    stats = await kb.stats(agent_id)
    if args.json:
        print(json.dumps(stats.to_dict(), indent=2))
        return 0
    by_status = ", ".join(f"{k} {v}" for k, v in stats.by_status.items())
    print(f"documents: {stats.documents} ({by_status})")
    print(f"chunks:    {stats.chunks}")
    print(f"bytes:     {stats.bytes}")
    print(f"average:   {stats.avg_chunks_per_document} chunks per ready document")
    return 0


async def _owned(kb: Any, agent_id: int | None, doc_id: int) -> KnowledgeDocument:
    document: KnowledgeDocument = await kb.get_document(doc_id)
    if document.agent_id != agent_id:
        raise NotFound(f"document {doc_id} does not belong to this agent")
    return document


async def _remove(kb: Any, agent_id: int | None, args: argparse.Namespace) -> int:
    for doc_id in args.ids:
        document = await _owned(kb, agent_id, doc_id)
        await kb.delete_document(doc_id)
        print(f"deleted document {doc_id} ({document.title})")
    return 0


async def _reindex(kb: Any, agent_id: int | None, args: argparse.Namespace) -> int:
    assert agent_id is not None
    if args.all == bool(args.ids):
        raise InvalidInput("name document ids or --all", field="ids")
    if args.all:
        documents = await kb.reindex_agent(agent_id)
    else:
        documents = []
        for doc_id in args.ids:
            await _owned(kb, agent_id, doc_id)
            documents.append(await kb.reindex(doc_id))
    print(f"reindexing {len(documents)} document(s) ...", flush=True)
    await kb.wait_idle()
    failures = 0
    for document in documents:
        done = await kb.get_document(document.id)
        if done.status == "ready":
            print(f"  document {done.id} ({done.title}): ready, {done.chunk_count} chunks")
        else:
            failures += 1
            print(f"  document {done.id} ({done.title}): {done.status} [{done.error_code}] {done.error}")
    return 1 if failures else 0


async def _reconcile(kb: Any, agent_id: int | None, args: argparse.Namespace) -> int:
    report = await kb.reconcile(agent_id)
    await kb.wait_idle()
    print(f"removed {report.removed_vectors} orphan vector(s); reindexed documents: "
          f"{report.reindexed_documents or 'none'}")
    return 0
