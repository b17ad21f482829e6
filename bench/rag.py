"""Knowledge-base benchmark: ingestion throughput and search latency at 1k, 10k and 100k chunks.

Everything runs through the real ``KnowledgeBase`` (SQLite + embedded Chroma in a temporary data directory):
plain-text documents of ~100 chunks each are ingested (detection, extraction, chunking, embedding, Chroma
upsert, SQL rows), then random questions are searched (query embedding + Chroma query + SQL check).

The local model embeds roughly 70-80 chunks/s on 2 CPU cores, so embedding 100k chunks would take ~25 minutes.
Indexes larger than ``--real-embed-max`` chunks are therefore built from *perturbed real embeddings*: a pool
of chunk vectors really computed by all-MiniLM-L6-v2, each reused with small Gaussian noise and renormalised.
Queries are always embedded by the real model, so search latency is end to end.  The output says which index
used which embeddings, and reports the model's own throughput (measured on a sample) so the end-to-end
ingestion rate with real embeddings can be estimated as well.

Usage: ``.venv/bin/python bench/rag.py [--sizes 1000,10000,100000] [--queries 200] [--real-embed-max 1000]``
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import logging
import os
import random
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.stats import percentile
from models import Agent
from models.db import make_engine, session_scope, upgrade
from rag import KnowledgeBase
from rag.chunking import chunk_pages
from rag.embeddings import Embedder, LocalEmbedder, Vector, normalize
from rag.extract import Page
from voicebot.config import Settings

CHUNKS_PER_DOCUMENT = 100
PRODUCTS = ["tent", "kayak", "canoe", "backpack", "sleeping bag", "stove", "headlamp", "rain jacket", "boot",
            "paddle", "water filter", "compass", "hammock", "trekking pole", "cooler"]
ADJECTIVES = ["lightweight", "waterproof", "insulated", "foldable", "rugged", "compact", "ventilated",
              "recycled", "reinforced", "quick-dry"]
CITIES = ["Duluth", "Madison", "Fargo", "Bemidji", "Marquette", "Eau Claire", "Rochester", "Ely", "Ashland"]
TOPICS = ["warranty", "shipping", "returns", "repairs", "rentals", "sizing", "cleaning", "storage"]


def sentence(rng: random.Random) -> str:
    product = rng.choice(PRODUCTS)
    match rng.randrange(4):
        case 0:
            return (f"The {rng.choice(ADJECTIVES)} {product} model {rng.randrange(100, 999)} costs "
                    f"{rng.randrange(20, 900)} dollars and ships from {rng.choice(CITIES)} within "
                    f"{rng.randrange(1, 14)} days.")
        case 1:
            return (f"Our {rng.choice(TOPICS)} policy for the {product} allows {rng.randrange(10, 90)} days, "
                    f"provided the item is {rng.choice(ADJECTIVES)} and unused.")
        case 2:
            return (f"Store number {rng.randrange(1, 60)} in {rng.choice(CITIES)} stocks "
                    f"{rng.randrange(2, 200)} units of the {product} and opens at "
                    f"{rng.randrange(7, 11)} a.m.")
        case _:
            return (f"Customers report that the {product} weighs {rng.randrange(1, 40) / 10:.1f} kilograms "
                    f"and lasts about {rng.randrange(2, 15)} seasons of {rng.choice(TOPICS)} use.")


def document_text(rng: random.Random, chunk_size: int, overlap: int, target_chunks: int) -> str:
    """Synthetic prose that chunks into about ``target_chunks`` chunks."""
    paragraphs: list[str] = []
    length = 0
    # Chunking is only checked once the text is about long enough (each chunk advances ~size - overlap).
    enough = target_chunks * (chunk_size - overlap) * 0.8
    while True:
        paragraph = " ".join(sentence(rng) for _ in range(rng.randrange(2, 6)))
        paragraphs.append(paragraph)
        length += len(paragraph) + 2
        if length >= enough and len(paragraphs) % 5 == 0:
            text = "\n\n".join(paragraphs)
            if len(chunk_pages([Page(None, text)], chunk_size, overlap)) >= target_chunks:
                return text


def question(rng: random.Random) -> str:
    forms = [
        "How much does the {adj} {product} cost?",
        "What is the {topic} policy for a {product}?",
        "Which store in {city} has the {product}?",
        "How heavy is the {product}?",
        "When does the {city} store open?",
    ]
    # A unique suffix defeats the query cache: every search embeds its query.
    text = rng.choice(forms).format(adj=rng.choice(ADJECTIVES), product=rng.choice(PRODUCTS),
                                    topic=rng.choice(TOPICS), city=rng.choice(CITIES))
    return f"{text} (#{rng.random():.6f})"


class PerturbedEmbedder(Embedder):
    """Documents: real model vectors from a pool, perturbed per text.  Queries: the real model."""

    def __init__(self, real: LocalEmbedder, pool: Sequence[Vector], sigma: float) -> None:
        super().__init__(batch_size=256, cache_size=0)
        self.real = real
        self.pool = list(pool)
        self.sigma = sigma
        self.name = real.name  # queries and documents share one vector space

    async def _embed_batch(self, texts: list[str], *, query: bool) -> list[Vector]:
        if query:
            return await self.real._embed_batch(texts, query=True)
        vectors: list[Vector] = []
        for text in texts:
            seed = int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")
            rng = random.Random(seed)
            base = self.pool[seed % len(self.pool)]
            vectors.append(normalize([x + rng.gauss(0.0, self.sigma) for x in base]))
        return vectors


def _new_agent(engine: Any) -> int:
    with session_scope(engine) as session:
        agent = Agent(name="bench")
        session.add(agent)
        session.flush()
        assert agent.id is not None
        return agent.id


async def measure_embedding(real: LocalEmbedder, texts: Sequence[str]) -> tuple[float, list[Vector]]:
    await real.warm_up()
    await real.embed_documents(["warm up the kernels once"])
    started = time.perf_counter()
    vectors = await real.embed_documents(list(texts))
    elapsed = time.perf_counter() - started
    return len(texts) / elapsed, vectors


async def bench_size(size: int, *, settings: Settings, embedder: Embedder, queries: int,
                     seed: int) -> dict[str, Any]:
    rng = random.Random(seed + size)
    engine = make_engine(f"sqlite:///{settings.data_dir / 'eva.db'}")
    await asyncio.to_thread(upgrade, engine)
    agent_id = await asyncio.to_thread(_new_agent, engine)
    kb = KnowledgeBase(settings, engine, embedder=embedder)
    try:
        documents: list[bytes] = []
        while len(documents) * CHUNKS_PER_DOCUMENT < size:
            remaining = size - len(documents) * CHUNKS_PER_DOCUMENT
            target = min(CHUNKS_PER_DOCUMENT, remaining)
            text = document_text(rng, settings.chunk_size, settings.chunk_overlap, target)
            documents.append(text.encode())
        started = time.perf_counter()
        for index, data in enumerate(documents):
            await kb.ingest_bytes(agent_id, data, f"catalog-{index:05d}.txt")
        await kb.wait_idle()
        ingest_s = time.perf_counter() - started
        stats = await kb.stats(agent_id)
        if stats.by_status["ready"] != len(documents):
            raise SystemExit(f"ingestion failed: {stats}")

        latencies: list[float] = []
        for _ in range(10):  # warm-up: HNSW pages, SQL caches
            await kb.search(agent_id, question(rng))
        for _ in range(queries):
            query = question(rng)
            t0 = time.perf_counter()
            hits = await kb.search(agent_id, query, limit=5)
            latencies.append((time.perf_counter() - t0) * 1000)
            if not hits:
                raise SystemExit(f"no hits for {query!r}")
        return {
            "chunks": stats.chunks, "documents": len(documents), "ingest_seconds": round(ingest_s, 2),
            "ingest_chunks_per_s": round(stats.chunks / ingest_s, 1),
            "search_p50_ms": round(percentile(latencies, 50), 2),
            "search_p95_ms": round(percentile(latencies, 95), 2),
            "search_queries": queries,
        }
    finally:
        await kb.close()
        engine.dispose()


async def run(args: argparse.Namespace) -> dict[str, Any]:
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    rng = random.Random(args.seed)
    real = LocalEmbedder()
    base_settings = Settings.load({}).with_(chunk_size=args.chunk_size, chunk_overlap=args.chunk_overlap,
                                            max_upload_mb=50)
    sample_doc = document_text(rng, args.chunk_size, args.chunk_overlap, args.embed_sample)
    sample = [c.text for c in chunk_pages([Page(None, sample_doc)], args.chunk_size, args.chunk_overlap)]
    sample = sample[: args.embed_sample]
    print(f"embedding {len(sample)} sample chunks with the local model ...", flush=True)
    embed_rate, pool = await measure_embedding(real, sample)
    query_ms: list[float] = []
    for _ in range(50):
        t0 = time.perf_counter()
        await real.embed_query(question(rng))
        query_ms.append((time.perf_counter() - t0) * 1000)
    results: dict[str, Any] = {
        "machine": {"cpus": os.cpu_count(), "load_average_at_start": list(os.getloadavg())},
        "settings": {"chunk_size": args.chunk_size, "chunk_overlap": args.chunk_overlap,
                     "chunks_per_document": CHUNKS_PER_DOCUMENT,
                     "store": "chroma embedded (PersistentClient)", "database": "sqlite"},
        "embedding": {"model": real.name, "sample_chunks": len(sample),
                      "chunks_per_s": round(embed_rate, 1),
                      "avg_chunk_chars": round(sum(map(len, sample)) / len(sample)),
                      "query_p50_ms": round(percentile(query_ms, 50), 2),
                      "query_p95_ms": round(percentile(query_ms, 95), 2)},
        "sizes": [],
    }
    for size in sizes:
        real_embeddings = size <= args.real_embed_max
        embedder: Embedder = LocalEmbedder(cache_size=0) if real_embeddings else PerturbedEmbedder(
            real, pool, args.sigma)
        mode = "real model" if real_embeddings else f"perturbed real (pool {len(pool)}, sigma {args.sigma})"
        print(f"index of {size} chunks, document embeddings: {mode} ...", flush=True)
        with tempfile.TemporaryDirectory(prefix="eva-bench-rag-") as tmp:
            row = await bench_size(size, settings=base_settings.with_(data_dir=Path(tmp)), embedder=embedder,
                                   queries=args.queries, seed=args.seed)
        row["document_embeddings"] = mode
        if not real_embeddings:
            # Store+SQL rate with the model's cost added back: 1 / (1/store_rate + 1/model_rate).
            row["est_ingest_chunks_per_s_with_real_model"] = round(
                1 / (1 / row["ingest_chunks_per_s"] + 1 / embed_rate), 1)
        results["sizes"].append(row)
        print(f"  {row}", flush=True)
    return results


def print_table(results: dict[str, Any]) -> None:
    emb = results["embedding"]
    print()
    print(f"local embedding model ({emb['model']}): {emb['chunks_per_s']} chunks/s "
          f"(~{emb['avg_chunk_chars']} chars/chunk, {emb['sample_chunks']} chunks); "
          f"query embedding p50 {emb['query_p50_ms']} ms, p95 {emb['query_p95_ms']} ms")
    header = (f"{'chunks':>8} {'docs':>6} {'ingest s':>9} {'chunks/s':>9} {'est. real':>9} "
              f"{'search p50':>11} {'search p95':>11}  document embeddings")
    print(header)
    print("-" * len(header))
    for row in results["sizes"]:
        estimate = row.get("est_ingest_chunks_per_s_with_real_model", row["ingest_chunks_per_s"])
        print(f"{row['chunks']:>8} {row['documents']:>6} {row['ingest_seconds']:>9} "
              f"{row['ingest_chunks_per_s']:>9} {estimate:>9} {row['search_p50_ms']:>8} ms "
              f"{row['search_p95_ms']:>8} ms  {row['document_embeddings']}")
    print("search = kb.search(limit=5): real query embedding + Chroma HNSW query + SQL liveness check.")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1000,10000,100000", help="comma-separated index sizes (chunks)")
    parser.add_argument("--queries", type=int, default=200, help="searches per index size")
    parser.add_argument("--real-embed-max", type=int, default=1000,
                        help="largest index embedded with the real model (bigger: perturbed real vectors)")
    parser.add_argument("--embed-sample", type=int, default=512, help="chunks embedded to measure the model")
    parser.add_argument("--sigma", type=float, default=0.02, help="noise added to pooled vectors")
    parser.add_argument("--chunk-size", type=int, default=500)
    parser.add_argument("--chunk-overlap", type=int, default=50)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--json", default=str(Path(__file__).resolve().parent / "results" / "rag.json"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    results = asyncio.run(run(args))
    print_table(results)
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
