"""Retrieval serving benchmark: a Search-R1-style server vs ours, same corpus, encoder and flat index.

Both run as real uvicorn subprocesses on 127.0.0.1. The baseline does what Search-R1's
retrieval_server.py does per request (tokenize + encode that request's queries, FAISS flat search;
no cross-request batching, dedup or cache). Also reports recall@3 of HNSW / IVF-PQ vs Flat on the
same MiniLM embeddings, index build times and peak RSS. Prints JSON, then a table.

    python benchmarks/retrieval.py --passages 20000 [--corpus wiki.jsonl] [--out reports/retrieval.json]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np

from searchr1.config import FaissConfig, RetrievalConfig
from searchr1.io import write_json
from searchr1.retrieval.process import _wait_healthy, free_port, running_server
from searchr1.retrieval.server import QueryRequest, peak_rss_mb  # QueryRequest: Search-R1's request body


# ---------------------------------------------------------------- baseline server (Search-R1 style)
def serve_baseline(index_dir: str, encoder_path: str, port: int) -> None:
    import faiss
    import torch
    import uvicorn
    from fastapi import FastAPI
    from transformers import AutoModel, AutoTokenizer

    from searchr1.retrieval.encoder import resolve_encoder_path

    path = resolve_encoder_path(encoder_path)
    tokenizer, model = AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path).eval()
    index = faiss.read_index(f"{index_dir}/dense/index.faiss")
    with open(f"{index_dir}/docstore/docs.jsonl") as fh:  # whole corpus in RAM, as datasets.load_dataset
        corpus = [json.loads(line) for line in fh]

    @torch.no_grad()
    def encode(queries):
        inputs = tokenizer(queries, max_length=256, padding=True, truncation=True, return_tensors="pt")
        out = model(**inputs).last_hidden_state
        mask = inputs["attention_mask"]
        emb = out.masked_fill(~mask[..., None].bool(), 0.0).sum(1) / mask.sum(1)[..., None]
        return torch.nn.functional.normalize(emb, dim=-1).numpy().astype(np.float32)

    app = FastAPI()

    @app.post("/retrieve")
    def retrieve(req: QueryRequest):  # sync: FastAPI runs it in its thread pool, like Search-R1's
        scores, idxs = index.search(encode(req.queries), k=req.topk or 3)
        return {"result": [[{"document": corpus[int(i)], "score": float(s)} for i, s in zip(ii, ss)]
                           for ii, ss in zip(idxs, scores)]}

    @app.get("/health")
    def health():
        return {"status": "ok", "peak_rss_mb": peak_rss_mb()}

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


@contextlib.contextmanager
def baseline_server(index_dir: Path, encoder: str):
    port = free_port()
    cmd = [sys.executable, __file__, "--serve-baseline", str(index_dir), "--encoder", encoder, "--port", str(port)]
    with tempfile.TemporaryFile("w+") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        try:
            _wait_healthy(proc, f"http://127.0.0.1:{port}", log, 300)
            yield f"http://127.0.0.1:{port}"
        finally:
            proc.terminate()
            proc.wait(timeout=30)


# ---------------------------------------------------------------- load generation
SHAPES = {  # name: (clients, unique queries per request, copies of each query, requests per client)
    "1x64 unique": (1, 64, 1, 6),
    "8x8 unique": (8, 8, 1, 6),
    "32x1 unique": (32, 1, 1, 12),
    "1x60 repeated(12x5)": (1, 12, 5, 6),
}


def run_shape(url: str, queries: list[str], clients: int, unique: int, copies: int, rounds: int) -> dict:
    """Closed loop: each client sends ``rounds`` requests, the next as soon as one returns."""
    latencies: list[float] = []
    lock = threading.Lock()
    errors: list[str] = []

    def client(c: int) -> None:
        with httpx.Client(timeout=120) as http:
            for r in range(rounds):
                start = ((c * rounds) + r) * unique
                batch = [q for q in queries[start : start + unique] for _ in range(copies)]
                t0 = time.perf_counter()
                resp = http.post(f"{url}/retrieve", json={"queries": batch, "topk": 3, "return_scores": True})
                dt = time.perf_counter() - t0
                if resp.status_code != 200 or len(resp.json()["result"]) != len(batch):
                    errors.append(f"HTTP {resp.status_code}")
                with lock:
                    latencies.append(dt)

    t0 = time.perf_counter()
    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    if errors:
        raise RuntimeError(f"{url}: {len(errors)} failed requests, e.g. {errors[0]}")
    lat = sorted(latencies)
    return {"qps": clients * rounds * unique * copies / wall, "p50_ms": 1000 * statistics.median(lat),
            "p95_ms": 1000 * lat[min(len(lat) - 1, int(0.95 * len(lat)))], "requests": len(lat)}


# ---------------------------------------------------------------- ANN recall vs flat
def ann_recall(index_dir: Path, cfg: RetrievalConfig, queries: list[str]) -> dict:
    import faiss

    from searchr1.retrieval.dense import build_faiss
    from searchr1.retrieval.encoder import Encoder

    shard_dir = index_dir / "dense" / "shards"
    n_shards = len(list(shard_dir.glob("emb_*.npy")))
    q = Encoder(cfg.encoder).encode_queries(queries)
    flat = faiss.read_index(str(index_dir / "dense" / "index.faiss"))
    truth = flat.search(q, 3)[1]
    out = {}
    for kind, extra in [("hnsw", {}), ("ivfpq", {"ivf_nlist": 256})]:
        fc = FaissConfig(type=kind, shard_size=cfg.faiss.shard_size, **extra)
        t0 = time.perf_counter()
        index = build_faiss(shard_dir, n_shards, fc)
        build_s = time.perf_counter() - t0
        if kind == "hnsw":
            index.hnsw.efSearch = fc.hnsw_ef_search
        else:
            faiss.extract_index_ivf(index).nprobe = fc.ivf_nprobe
        t0 = time.perf_counter()
        got = index.search(q, 3)[1]
        search_ms = 1000 * (time.perf_counter() - t0) / len(q)
        recall = np.mean([len(set(a) & set(b)) / 3 for a, b in zip(got, truth)])
        with tempfile.NamedTemporaryFile() as tmp:
            faiss.write_index(index, tmp.name)
            size = os.path.getsize(tmp.name)
        out[kind] = {"recall@3_vs_flat": round(float(recall), 4), "build_s": round(build_s, 2),
                     "search_ms_per_query": round(search_ms, 3), "index_mb": round(size / 2**20, 2)}
    out["flat"] = {"index_mb": round(os.path.getsize(index_dir / "dense" / "index.faiss") / 2**20, 2)}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--corpus", help="jsonl corpus (default: a synthetic one of --passages rows)")
    ap.add_argument("--passages", type=int, default=20_000)
    ap.add_argument("--encoder", default="all-MiniLM-L6-v2")
    ap.add_argument("--workdir", default=".cache/bench_retrieval")
    ap.add_argument("--out", help="also write the JSON here")
    ap.add_argument("--threads", type=int, default=1,
                    help="OMP/torch threads for the build and both servers (1 avoids spin-wait collapse on a busy CPU)")
    ap.add_argument("--serve-baseline", help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve_baseline:
        return serve_baseline(args.serve_baseline, args.encoder, args.port)

    os.environ["OMP_NUM_THREADS"] = str(args.threads)  # inherited by both server subprocesses
    from searchr1.retrieval.build import build_indexes
    from searchr1.retrieval.synthetic import synthetic_corpus
    from searchr1.io import write_jsonl

    work = Path(args.workdir)
    n_queries = sum(c * u * r for c, u, _, r in SHAPES.values()) + 64
    rows, pairs = synthetic_corpus(max(args.passages, n_queries), seed=0)
    corpus = Path(args.corpus) if args.corpus else work / f"synthetic_{args.passages}.jsonl"
    if not args.corpus and not corpus.exists():
        write_jsonl(corpus, rows[: args.passages])
    # Queries about invented entities; disjoint slices per shape so no cache carries over between them.
    queries = [q for q, _ in pairs]

    cfg = RetrievalConfig(index_dir=str(work / f"idx_{corpus.stem}"), method="dense", build=["dense"],
                          encoder={"name_or_path": args.encoder}, faiss={"type": "flat", "shard_size": 8192})
    t0 = time.perf_counter()
    build = build_indexes(cfg, corpus)
    report = {"corpus": str(corpus), "passages": build["docstore"]["count"], "encoder": args.encoder,
              "threads": args.threads, "cpus": os.cpu_count(), "load_avg_1m_at_start": os.getloadavg()[0],
              "build": {"dense_flat_s": round(build["dense"]["seconds"], 1), "skipped": build["dense"]["skipped"],
                        "wall_s": round(time.perf_counter() - t0, 1),
                        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}}
    report["ann"] = ann_recall(Path(cfg.index_dir), cfg, queries[:1000])

    shapes: dict = {}
    with baseline_server(Path(cfg.index_dir), args.encoder) as base_url, \
            running_server(cfg, corpus, port=0) as ours_url:
        for url in (base_url, ours_url):  # warm up both (first-call allocations)
            httpx.post(f"{url}/retrieve", json={"queries": queries[-64:], "topk": 3}, timeout=120)
        offset = 0
        for name, (clients, unique, copies, rounds) in SHAPES.items():
            qs = queries[offset : offset + clients * unique * rounds]
            offset += len(qs)
            base = run_shape(base_url, qs, clients, unique, copies, rounds)
            ours = run_shape(ours_url, qs, clients, unique, copies, rounds)
            shapes[name] = {"baseline": base, "ours": ours, "speedup": round(ours["qps"] / base["qps"], 2)}
        report["server_peak_rss_mb"] = {
            "baseline": httpx.get(f"{base_url}/health").json()["peak_rss_mb"],
            "ours": httpx.get(f"{ours_url}/health").json()["peak_rss_mb"]}
    report["shapes"] = shapes
    if args.out:
        write_json(args.out, report)
    print(json.dumps(report, indent=2))
    print(f"\n{'shape':<22}{'base q/s':>10}{'ours q/s':>10}{'ratio':>7}{'base p50/p95 ms':>18}{'ours p50/p95 ms':>18}")
    for name, s in shapes.items():
        b, o = s["baseline"], s["ours"]
        print(f"{name:<22}{b['qps']:>10.1f}{o['qps']:>10.1f}{s['speedup']:>7.2f}"
              f"{b['p50_ms']:>10.0f}/{b['p95_ms']:<7.0f}{o['p50_ms']:>10.0f}/{o['p95_ms']:<7.0f}")
    for kind in ("hnsw", "ivfpq"):
        a = report["ann"][kind]
        print(f"{kind}: recall@3 vs flat {a['recall@3_vs_flat']:.3f}, build {a['build_s']} s, {a['index_mb']} MB")


if __name__ == "__main__":
    main()
