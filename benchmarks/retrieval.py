"""Retrieval serving benchmark: a Search-R1-style server vs ours (torch and ONNX Runtime encoder), same
corpus, encoder and flat index.

All run as real uvicorn subprocesses on 127.0.0.1. The baseline does what Search-R1's
retrieval_server.py does per request (tokenize + encode that request's queries, FAISS flat search;
no cross-request batching, dedup or cache). Also reports recall@3 of HNSW / IVF-PQ vs Flat on the
same MiniLM embeddings, index build times and peak RSS. Prints JSON, then a table.

    python benchmarks/retrieval.py --passages 20000 [--corpus wiki.jsonl] [--out reports/retrieval.json]

``--agreement`` instead measures, on a real corpus and QA split, how often a fast encoder's top-3
equals fp32 torch Flat's: fast queries against the fp32 passage index (index once, serve fast) and the
fast encoder on both sides; also encoding throughput. Backends: onnx, and torch dynamic int8 (kept
here as the measured reason it is not offered: it fails the 98% bar).

    python benchmarks/retrieval.py --agreement --corpus data/corpus/corpus.jsonl --qa data/qa/test.jsonl
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path

import httpx
import numpy as np

from searchr1.config import EncoderConfig, FaissConfig, RetrievalConfig
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
def baseline_server(index_dir: Path, encoder: str, threads: int):
    port = free_port()
    cmd = [sys.executable, __file__, "--serve-baseline", str(index_dir), "--encoder", encoder, "--port", str(port)]
    with tempfile.TemporaryFile("w+") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "OMP_NUM_THREADS": str(threads)})
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

    host, port = url.removeprefix("http://").split(":")

    def client(c: int) -> None:
        # http.client on one keep-alive connection: a lighter load generator than httpx, which matters
        # when the load generator and the servers share two cores.
        conn = http.client.HTTPConnection(host, int(port), timeout=120)
        try:
            for r in range(rounds):
                start = ((c * rounds) + r) * unique
                batch = [q for q in queries[start : start + unique] for _ in range(copies)]
                body = json.dumps({"queries": batch, "topk": 3, "return_scores": True})
                t0 = time.perf_counter()
                conn.request("POST", "/retrieve", body, {"Content-Type": "application/json"})
                resp = conn.getresponse()
                data = resp.read()
                dt = time.perf_counter() - t0
                if resp.status != 200 or len(json.loads(data)["result"]) != len(batch):
                    errors.append(f"HTTP {resp.status}")
                with lock:
                    latencies.append(dt)
        finally:
            conn.close()

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


# ---------------------------------------------------------------- fast-backend agreement vs fp32
def _agree(got: np.ndarray, truth: np.ndarray) -> dict:
    return {"top3_set_equal": round(float(np.mean([set(a) == set(b) for a, b in zip(got, truth)])), 4),
            "recall@3": round(float(np.mean([len(set(a) & set(b)) / 3 for a, b in zip(got, truth)])), 4),
            "top1_equal": round(float(np.mean(got[:, 0] == truth[:, 0])), 4)}


def agreement(corpus: Path, qa: Path, encoder: str, backends: tuple[str, ...] = ("onnx", "int8")) -> dict:
    import faiss
    import torch

    from searchr1.io import iter_jsonl
    from searchr1.retrieval.encoder import Encoder

    passages = [row["contents"] for _, row in iter_jsonl(corpus)]
    queries: list[str] = []
    for _, row in iter_jsonl(qa):
        queries += [row["question"], *row.get("metadata", {}).get("gold_queries", [])]
    queries = list(dict.fromkeys(queries))

    def top3(p: np.ndarray, q: np.ndarray) -> np.ndarray:
        index = faiss.IndexFlatIP(p.shape[1])
        index.add(p)
        return index.search(q, 3)[1]

    def encode(backend: str) -> tuple[np.ndarray, np.ndarray, float, float]:
        enc = Encoder(EncoderConfig(name_or_path=encoder, backend="onnx" if backend == "onnx" else "torch"), "cpu")
        if backend == "int8":
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                torch.ao.quantization.quantize_dynamic(enc.model, {torch.nn.Linear}, dtype=torch.qint8, inplace=True)
        t0 = time.perf_counter()
        p = enc.encode_passages(passages, progress=True)
        t1 = time.perf_counter()
        q = enc.encode_queries(queries)
        return p, q, len(passages) / (t1 - t0), len(queries) / (time.perf_counter() - t1)

    out: dict = {"corpus": str(corpus), "qa": str(qa), "passages": len(passages), "queries": len(queries),
                 "torch_threads": torch.get_num_threads()}
    p32, q32, prate, qrate = encode("torch")
    truth = top3(p32, q32)
    out["torch"] = {"passages_per_s": round(prate, 1), "queries_per_s": round(qrate, 1)}
    for backend in backends:
        p, q, prate, qrate = encode(backend)
        out[backend] = {"passages_per_s": round(prate, 1), "queries_per_s": round(qrate, 1),
                        "max_abs_diff": float(np.abs(q - q32).max()),
                        "query_side": _agree(top3(p32, q), truth), "both_sides": _agree(top3(p, q), truth)}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--corpus", help="jsonl corpus (default: a synthetic one of --passages rows)")
    ap.add_argument("--agreement", action="store_true", help="only measure fast-encoder vs fp32 top-3 agreement")
    ap.add_argument("--qa", default="data/qa/test.jsonl", help="--agreement: questions and gold_queries")
    ap.add_argument("--passages", type=int, default=20_000)
    ap.add_argument("--encoder", default="all-MiniLM-L6-v2")
    ap.add_argument("--workdir", default=".cache/bench_retrieval")
    ap.add_argument("--out", help="also write the JSON here")
    ap.add_argument("--threads", type=int, default=1, help="OMP/torch threads for the index build")
    ap.add_argument("--build-backend", default="torch", choices=["torch", "onnx"], help="encoder backend for the build")
    ap.add_argument("--baseline-threads", default="1,2",
                    help="one baseline server per thread count; ratios are against the best of them per shape "
                    "(1 thread wins under concurrent requests, which it encodes in parallel; more win on one big one)")
    ap.add_argument("--ours-threads", type=int, default=os.cpu_count(),
                    help="torch/ONNX threads of our servers (default: all cores; ours encodes one batch at a time)")
    ap.add_argument("--shapes", help="comma-separated load shapes to run (default: all), e.g. '32x1 unique'")
    ap.add_argument("--serve-baseline", help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve_baseline:
        return serve_baseline(args.serve_baseline, args.encoder, args.port)

    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    if args.agreement:
        import torch

        torch.set_num_threads(args.threads)
        report = agreement(Path(args.corpus or "data/corpus/corpus.jsonl"), Path(args.qa), args.encoder)
        if args.out:
            write_json(args.out, report)
        return print(json.dumps(report, indent=2))
    from searchr1.io import write_jsonl
    from searchr1.retrieval.build import build_indexes
    from searchr1.retrieval.synthetic import synthetic_corpus

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
    # The backend does not change the vectors (top-3 agreement 100%, see --agreement), only build speed.
    build = build_indexes(cfg.model_copy(update={"encoder": cfg.encoder.model_copy(
        update={"backend": args.build_backend})}), corpus)
    report = {"corpus": str(corpus), "passages": build["docstore"]["count"], "encoder": args.encoder,
              "build_threads": args.threads, "cpus": os.cpu_count(), "load_avg_1m_at_start": os.getloadavg()[0],
              "build": {"dense_flat_s": round(build["dense"]["seconds"], 1), "skipped": build["dense"]["skipped"],
                        "wall_s": round(time.perf_counter() - t0, 1),
                        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}}
    report["ann"] = ann_recall(Path(cfg.index_dir), cfg, queries[:1000])

    shapes: dict = {}
    onnx = cfg.model_copy(update={"encoder": cfg.encoder.model_copy(update={"backend": "onnx"})})
    report["threads"] = {"baseline": args.baseline_threads, "ours": args.ours_threads}
    shape_names = [n.strip() for n in args.shapes.split(",")] if args.shapes else list(SHAPES)
    with contextlib.ExitStack() as stack:
        urls = {f"baseline_{t}t": stack.enter_context(baseline_server(Path(cfg.index_dir), args.encoder, int(t)))
                for t in args.baseline_threads.split(",")}
        os.environ["OMP_NUM_THREADS"] = str(args.ours_threads)  # read by each server at start-up
        urls["ours"] = stack.enter_context(running_server(cfg, corpus, port=0))
        urls["ours_onnx"] = stack.enter_context(running_server(onnx, corpus, port=0))
        os.environ["OMP_NUM_THREADS"] = str(args.threads)
        for url in urls.values():  # warm up all (first-call allocations)
            httpx.post(f"{url}/retrieve", json={"queries": queries[-64:], "topk": 3}, timeout=120)
        offset = 0
        for name, (clients, unique, copies, rounds) in SHAPES.items():
            qs = queries[offset : offset + clients * unique * rounds]
            offset += len(qs)
            if name not in shape_names:
                continue
            shapes[name] = {k: run_shape(url, qs, clients, unique, copies, rounds) for k, url in urls.items()}
            best = max((k for k in urls if k.startswith("baseline")), key=lambda k: shapes[name][k]["qps"])
            shapes[name]["baseline"] = {**shapes[name][best], "server": best}
            for k in ("ours", "ours_onnx"):
                shapes[name][f"ratio_{k}"] = round(shapes[name][k]["qps"] / shapes[name]["baseline"]["qps"], 2)
        report["server_peak_rss_mb"] = {k: httpx.get(f"{url}/health").json()["peak_rss_mb"] for k, url in urls.items()}
    report["load_avg_1m_at_end"] = os.getloadavg()[0]
    report["shapes"] = shapes
    if args.out:
        write_json(args.out, report)
    print(json.dumps(report, indent=2))
    bases = [k for k in urls if k.startswith("baseline")]
    print(f"\n{'shape':<22}" + "".join(f"{k:>13}" for k in bases) + f"{'ours torch':>11}{'ours onnx':>10}"
          f"{'x best base: torch':>19}{'onnx':>6}   p50/p95 ms: best base | torch | onnx")
    for name, s in shapes.items():
        lat = " | ".join(f"{s[k]['p50_ms']:.0f}/{s[k]['p95_ms']:.0f}" for k in ("baseline", "ours", "ours_onnx"))
        print(f"{name:<22}" + "".join(f"{s[k]['qps']:>13.1f}" for k in bases) + f"{s['ours']['qps']:>11.1f}"
              f"{s['ours_onnx']['qps']:>10.1f}{s['ratio_ours']:>19.2f}{s['ratio_ours_onnx']:>6.2f}   {lat}")
    for kind in ("hnsw", "ivfpq"):
        a = report["ann"][kind]
        print(f"{kind}: recall@3 vs flat {a['recall@3_vs_flat']:.3f}, build {a['build_s']} s, {a['index_mb']} MB")


if __name__ == "__main__":
    main()
