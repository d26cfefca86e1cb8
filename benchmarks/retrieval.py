"""Retrieval serving benchmark: a Search-R1-style server vs ours, each with the torch and with the ONNX
Runtime encoder, on the same corpus, encoder weights and flat index.

All servers run as real uvicorn subprocesses on 127.0.0.1. The baseline does what Search-R1's
retrieval_server.py does per request (tokenize + encode that request's queries, FAISS flat search; no
cross-request batching, dedup or cache); its ONNX variant swaps only the forward pass for our ONNX export.
So "ours / baseline" with the same encoder isolates the server design (with our retriever: docstore on
disk, flat search by one matrix product for >= 8 queries), "onnx / torch" on the baseline isolates the
encoder backend, and "ours default / baseline torch" is what a user gets against Search-R1
as shipped. Shapes, in three groups:

- search-r1: one client sending one batched request per rollout turn (1xN, N = rows still searching),
  the call pattern of Search-R1's rollout loop; all queries unique. The headline.
- grpo: the same, but the 64 queries are 16 questions x 4 samples with few distinct queries per question
  (turn 1 of a GRPO group: samples of one question often search the same words).
- concurrent: many clients or verbatim repeats (parallel rollout workers, a shared server); not
  Search-R1's call pattern.

Repeats alternate the servers (order rotated each repeat); every (repeat, shape) gets fresh queries, so
no server answers a measured query from its cache unless the shape itself repeats it. The load generator
runs in this process; its CPU time / wall time is reported per run, with the servers' CPU and the rest of
the machine's. ``--pin`` puts the servers on all allowed cores but the last and the load generator on
the last one. Also: recall@3 of HNSW / IVF-PQ vs Flat on the same MiniLM embeddings, build time, peak RSS.
Prints JSON, then markdown tables.

    python benchmarks/retrieval.py --passages 5000 --repeats 3 --out reports/benchmarks/retrieval.json

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
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx
import numpy as np
import psutil  # installed with accelerate
from tqdm import tqdm

from searchr1.config import EncoderConfig, FaissConfig, RetrievalConfig
from searchr1.io import write_json
from searchr1.retrieval.process import _wait_healthy, free_port, running_server
from searchr1.retrieval.server import QueryRequest, peak_rss_mb  # QueryRequest: Search-R1's request body


# ---------------------------------------------------------------- baseline server (Search-R1 style)
def serve_baseline(index_dir: str, encoder_path: str, port: int, backend: str) -> None:
    import faiss
    import torch
    import uvicorn
    from fastapi import FastAPI
    from transformers import AutoModel, AutoTokenizer

    from searchr1.retrieval.encoder import OnnxEncoderModel, resolve_encoder_path

    path = resolve_encoder_path(encoder_path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    if backend == "onnx":  # our exporter (it needs eager attention); the rest of the server is unchanged
        forward = OnnxEncoderModel(AutoModel.from_pretrained(path, attn_implementation="eager").eval(), tokenizer)
    else:
        model = AutoModel.from_pretrained(path).eval()

        def forward(inputs):
            return model(**inputs).last_hidden_state

    index = faiss.read_index(f"{index_dir}/dense/index.faiss")
    with open(f"{index_dir}/docstore/docs.jsonl") as fh:  # whole corpus in RAM, as datasets.load_dataset
        corpus = [json.loads(line) for line in fh]

    @torch.no_grad()
    def encode(queries):
        inputs = tokenizer(queries, max_length=256, padding=True, truncation=True, return_tensors="pt")
        out = forward(inputs)
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
def baseline_server(index_dir: Path, encoder: str, threads: int, backend: str):
    port = free_port()
    cmd = [sys.executable, __file__, "--serve-baseline", str(index_dir), "--encoder", encoder, "--port", str(port),
           "--baseline-backend", backend]
    with tempfile.TemporaryFile("w+") as log:
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        try:
            _wait_healthy(proc, f"http://127.0.0.1:{port}", log, 300)
            yield f"http://127.0.0.1:{port}"
        finally:
            proc.terminate()
            proc.wait(timeout=30)


def listening_pid(url: str) -> int:
    """The child process serving ``url`` (for its CPU time and affinity)."""
    port = int(url.rsplit(":", 1)[1])
    for child in psutil.Process().children():
        with contextlib.suppress(psutil.Error):
            if any(c.status == psutil.CONN_LISTEN and c.laddr.port == port for c in child.net_connections("tcp")):
                return child.pid
    raise RuntimeError(f"no child process of {os.getpid()} listens on port {port}")


def pin_this_process(cpus: set[int]) -> None:
    """Set the affinity of every thread of this process (children started later inherit it)."""
    for tid in os.listdir("/proc/self/task"):
        with contextlib.suppress(ProcessLookupError):
            os.sched_setaffinity(int(tid), cpus)


# ---------------------------------------------------------------- load shapes and generation
@dataclass(frozen=True)
class Shape:
    """``clients`` closed-loop clients, each sending ``requests`` requests whose sizes cycle through
    ``sizes``. Within a request, each run of ``group`` consecutive queries holds only ``distinct``
    different queries (group=1: all unique)."""

    group_name: str  # search-r1 | grpo | concurrent
    clients: int
    sizes: tuple[int, ...]
    requests: int
    group: int = 1
    distinct: int = 1

    def unique_per_request(self, size: int) -> int:
        return size // self.group * self.distinct

    def unique_total(self) -> int:
        per_client = sum(self.unique_per_request(self.sizes[r % len(self.sizes)]) for r in range(self.requests))
        return self.clients * per_client

    def batches(self, pool) -> list[list[list[str]]]:
        """The queries each client sends, per request, drawing fresh ones from the iterator ``pool``."""
        out = []
        for _ in range(self.clients):
            reqs = []
            for r in range(self.requests):
                size = self.sizes[r % len(self.sizes)]
                batch: list[str] = []
                for _ in range(size // self.group):
                    distinct = [next(pool) for _ in range(self.distinct)]
                    batch += [distinct[j * self.distinct // self.group] for j in range(self.group)]
                reqs.append(batch)
            out.append(reqs)
        return out


def shapes(turns: tuple[int, ...], grpo_distinct: int) -> dict[str, Shape]:
    turn_names = ">".join(map(str, turns))
    return {
        f"rollout 1x({turn_names})": Shape("search-r1", 1, turns, 4 * len(turns)),  # 4 rollouts of len(turns) turns
        "1x64 unique": Shape("search-r1", 1, (64,), 12),
        "1x16 unique": Shape("search-r1", 1, (16,), 24),
        f"1x64 GRPO 16q x 4 samples ({grpo_distinct} distinct)": Shape("grpo", 1, (64,), 12, 4, grpo_distinct),
        "8x8 unique": Shape("concurrent", 8, (8,), 12),
        "32x1 unique": Shape("concurrent", 32, (1,), 12),
        "1x60 repeated(12x5)": Shape("concurrent", 1, (60,), 12, 5, 1),
    }


def cpu_seconds(pids: list[int]) -> list[float]:
    """[this process, each of ``pids``, whole machine busy] in CPU seconds so far."""
    own = os.times()
    out = [own.user + own.system]
    for pid in pids:
        t = psutil.Process(pid).cpu_times()
        out.append(t.user + t.system)
    m = psutil.cpu_times()
    not_busy = ("idle", "iowait", "steal", "guest", "guest_nice")  # guest time is already inside user
    out.append(sum(m) - sum(getattr(m, f, 0.0) for f in not_busy))
    return out


def run_shape(url: str, server_pid: int, batches: list[list[list[str]]]) -> dict:
    """Closed loop: each client sends its requests in order, the next as soon as one returns."""
    latencies: list[tuple[int, float]] = []  # (queries in the request, seconds)
    lock = threading.Lock()
    errors: list[str] = []
    host, port = url.removeprefix("http://").split(":")

    def client(reqs: list[list[str]]) -> None:
        # http.client on one keep-alive connection: a light load generator (its CPU share is reported).
        conn = http.client.HTTPConnection(host, int(port), timeout=120)
        try:
            for batch in reqs:
                body = json.dumps({"queries": batch, "topk": 3, "return_scores": True})
                t0 = time.perf_counter()
                conn.request("POST", "/retrieve", body, {"Content-Type": "application/json"})
                resp = conn.getresponse()
                data = resp.read()
                dt = time.perf_counter() - t0
                if resp.status != 200 or len(json.loads(data)["result"]) != len(batch):
                    errors.append(f"HTTP {resp.status}: {data[:200]!r}")
                with lock:
                    latencies.append((len(batch), dt))
        finally:
            conn.close()

    threads = [threading.Thread(target=client, args=(reqs,)) for reqs in batches]
    cpu0, t0 = cpu_seconds([server_pid]), time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    own, server, machine = (b - a for a, b in zip(cpu0, cpu_seconds([server_pid])))
    if errors:
        raise RuntimeError(f"{url}: {len(errors)} failed requests, e.g. {errors[0]}")
    lat = sorted(dt for _, dt in latencies)
    sizes = sorted({m for m, _ in latencies})
    by_size = {n: 1000 * statistics.median(dt for m, dt in latencies if m == n) for n in sizes}
    return {"qps": sum(len(b) for reqs in batches for b in reqs) / wall, "wall_s": wall, "requests": len(lat),
            "p50_ms": 1000 * statistics.median(lat), "p95_ms": 1000 * lat[min(len(lat) - 1, int(0.95 * len(lat)))],
            "p50_ms_by_request_size": by_size, "loadgen_cpu_share": own / wall, "server_cpu_cores": server / wall,
            "other_cpu_cores": max(0.0, machine - own - server) / wall}


def top3_ids(url: str, queries: list[str]) -> list[set[str]]:
    request = {"queries": queries, "topk": 3, "return_scores": True}  # with scores, both wrap hits in "document"
    body = httpx.post(f"{url}/retrieve", json=request, timeout=300).json()
    return [{hit["document"]["id"] for hit in hits} for hits in body["result"]]


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


# ---------------------------------------------------------------- summaries and tables
ARMS = ("baseline_torch", "ours_torch", "baseline_onnx", "ours_onnx")  # table columns; baselines are best-of-threads


def spread(values: list[float], digits: int) -> dict:
    return {"median": round(statistics.median(values), digits), "min": round(min(values), digits),
            "max": round(max(values), digits)}


def summarise(runs: dict[str, list[dict]], default_backend: str) -> dict:
    """Per arm: medians and min-max over repeats; baselines: the thread count with the best median q/s;
    ratios: per repeat (servers alternate within a repeat), then median and min-max."""
    arms: dict = {}
    for arm, reps in runs.items():
        arms[arm] = {"qps": spread([r["qps"] for r in reps], 1),
                     **{k: round(statistics.median(r[k] for r in reps), 1) for k in ("p50_ms", "p95_ms")},
                     **{k: spread([r[k] for r in reps], 3)
                        for k in ("loadgen_cpu_share", "server_cpu_cores", "other_cpu_cores")}}
    pick = {}
    for enc in ("torch", "onnx"):
        cands = [a for a in runs if a.startswith(f"baseline_{enc}_")]
        pick[f"baseline_{enc}"] = max(cands, key=lambda a: arms[a]["qps"]["median"])
    pick.update(ours_torch="ours_torch", ours_onnx="ours_onnx")

    def ratio(num: str, den: str) -> dict:
        return spread([a["qps"] / b["qps"] for a, b in zip(runs[pick[num]], runs[pick[den]])], 2)

    ratios = {"server_torch": ratio("ours_torch", "baseline_torch"), "server_onnx": ratio("ours_onnx", "baseline_onnx"),
              "encoder_baseline": ratio("baseline_onnx", "baseline_torch"),
              "default_vs_shipped": ratio(f"ours_{default_backend}", "baseline_torch")}
    return {"arms": arms, "columns": pick, "ratios": ratios}


def markdown(report: dict) -> str:
    shapes_ = report["shapes"]
    default = report["default_backend"]
    titles = {"search-r1": "Search-R1's call pattern: one client, one batched request per rollout turn (headline)",
              "grpo": "GRPO duplication: 16 questions x 4 samples in one request (turn 1)",
              "concurrent": "Concurrent clients / verbatim repeats (parallel workers; not Search-R1's pattern)"}

    def qps(s: dict, col: str) -> str:
        arm = s["columns"][col]
        q = s["arms"][arm]["qps"]
        threads = f" ({arm.rsplit('_', 1)[1]})" if col.startswith("baseline") else ""
        return f"{q['median']:.0f} [{q['min']:.0f}–{q['max']:.0f}]{threads}"

    def rat(r: dict) -> str:
        return f"**{r['median']:.2f}** [{r['min']:.2f}–{r['max']:.2f}]"

    pin = report["pin"]
    pinning = f"servers on cores {pin['servers']}, load generator on {pin['load_generator']}" if pin else "no pinning"
    lines = [f"{report['passages']} passages, {report['repeats']} repeats, threads {report['threads']}, {pinning}; "
             f"queries/s median [min–max]; ratios per repeat, median [min–max]; ours default = ours {default}.", ""]
    for group, title in titles.items():
        names = [n for n, s in shapes_.items() if s["spec"]["group_name"] == group]
        if not names:
            continue
        lines += [f"**{title}**", "",
                  "| shape | baseline torch | ours torch | baseline onnx | ours onnx | ours/baseline, torch "
                  "| ours/baseline, onnx | baseline onnx/torch "
                  "| ours default / baseline torch (default vs Search-R1 as shipped) |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for n in names:
            s = shapes_[n]
            r = s["ratios"]
            lines.append(f"| {n} | " + " | ".join(qps(s, c) for c in ARMS) + " | " + " | ".join(
                rat(r[k]) for k in ("server_torch", "server_onnx", "encoder_baseline", "default_vs_shipped")) + " |")
        lines.append("")
    lines += ["**Latency and CPU** (medians over repeats; load generator: its CPU time / wall time, share of one "
              "core, max over runs; server: cores it used; other: the rest of the machine, cores, max)", "",
              "| shape | p50/p95 ms: " + " · ".join(c.replace("_", " ") for c in ARMS) + " | load generator CPU "
              "| server cores: " + " · ".join(c.replace("_", " ") for c in ARMS) + " | other cores |",
              "|---|---|---|---|---|"]
    for n, s in shapes_.items():
        a = [s["arms"][s["columns"][c]] for c in ARMS]
        lines.append(f"| {n} | " + " · ".join(f"{x['p50_ms']:.0f}/{x['p95_ms']:.0f}" for x in a)
                     + f" | {max(x['loadgen_cpu_share']['max'] for x in s['arms'].values()):.2f} | "
                     + " · ".join(f"{x['server_cpu_cores']['median']:.2f}" for x in a)
                     + f" | {max(x['other_cpu_cores']['max'] for x in s['arms'].values()):.2f} |")
    ann = report["ann"]
    lines += ["", "| index | recall@3 vs flat | build s | MB |", "|---|---|---|---|"]
    lines += [f"| {k} | {ann[k]['recall@3_vs_flat']:.3f} | {ann[k]['build_s']} | {ann[k]['index_mb']} |"
              for k in ("hnsw", "ivfpq")]
    flat_s = "cached" if report["build"]["skipped"] else report["build"]["dense_flat_s"]
    lines.append(f"| flat | 1 | {flat_s} | {ann['flat']['index_mb']} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--corpus", help="jsonl corpus (default: a synthetic one of --passages rows)")
    ap.add_argument("--agreement", action="store_true", help="only measure fast-encoder vs fp32 top-3 agreement")
    ap.add_argument("--qa", default="data/qa/test.jsonl", help="--agreement: questions and gold_queries")
    ap.add_argument("--passages", type=int, default=20_000)
    ap.add_argument("--encoder", default="all-MiniLM-L6-v2")
    ap.add_argument("--workdir", default=".cache/bench_retrieval")
    ap.add_argument("--out", help="also write the JSON here (atomically)")
    ap.add_argument("--threads", type=int, default=1, help="OMP/torch threads for the index build")
    ap.add_argument("--build-backend", default="torch", choices=["torch", "onnx"], help="encoder backend for the build")
    ap.add_argument("--repeats", type=int, default=3, help="rounds over all shapes and servers (server order rotates)")
    ap.add_argument("--pin", action="store_true",
                    help="servers on all allowed cores but the last, the load generator on the last (2 cores: 0 | 1)")
    ap.add_argument("--ours-threads", type=int,
                    help="torch/ONNX threads of our servers (default: the servers' cores; ours encodes one batch "
                    "at a time)")
    ap.add_argument("--baseline-threads",
                    help="comma-separated; one baseline server per thread count and encoder, the best per shape is "
                    "compared (default: 1 and the servers' cores: 1 thread wins under concurrent requests, which it "
                    "encodes in parallel, more win on one big one)")
    ap.add_argument("--rollout-turns", default="64,48,32,16",
                    help="request sizes of one rollout, turn by turn (rows still searching)")
    ap.add_argument("--grpo-distinct", type=int, default=2,
                    help="GRPO shape: distinct queries among a question's 4 samples")
    ap.add_argument("--shapes", help="comma-separated load shapes to run (default: all), e.g. '1x64 unique'")
    ap.add_argument("--serve-baseline", help=argparse.SUPPRESS)
    ap.add_argument("--baseline-backend", default="torch", help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve_baseline:
        return serve_baseline(args.serve_baseline, args.encoder, args.port, args.baseline_backend)

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
    from searchr1.retrieval.encoder import _onnx_available
    from searchr1.retrieval.synthetic import synthetic_corpus

    if not 1 <= args.grpo_distinct <= 4:
        ap.error(f"--grpo-distinct {args.grpo_distinct}: must be 1..4 (a question has 4 samples)")
    if not _onnx_available():
        ap.error("the onnx arms need `pip install onnxruntime onnx` (the bench extra)")
    allowed = sorted(os.sched_getaffinity(0))
    if args.pin and len(allowed) < 2:
        ap.error(f"--pin needs 2 allowed cores, this process may use {allowed}")
    server_cpus, client_cpus = (set(allowed[:-1]), {allowed[-1]}) if args.pin else (set(allowed), set(allowed))
    ours_threads = args.ours_threads or len(server_cpus)
    base_threads = sorted({int(t) for t in args.baseline_threads.split(",")} if args.baseline_threads
                          else {1, len(server_cpus)})
    all_shapes = shapes(tuple(int(t) for t in args.rollout_turns.split(",")), args.grpo_distinct)
    names = [n.strip() for n in args.shapes.split(",")] if args.shapes else list(all_shapes)
    if unknown := [n for n in names if n not in all_shapes]:
        ap.error(f"unknown shapes {unknown}; known: {list(all_shapes)}")
    run_shapes = {n: all_shapes[n] for n in names}

    work = Path(args.workdir)
    warm_sizes = sorted({s for sh in run_shapes.values() for s in sh.sizes})
    n_queries = args.repeats * sum(sh.unique_total() for sh in run_shapes.values()) + sum(warm_sizes) + 1000
    rows, pairs = synthetic_corpus(max(args.passages, n_queries), seed=0)
    corpus = Path(args.corpus) if args.corpus else work / f"synthetic_{args.passages}.jsonl"
    if not args.corpus and not corpus.exists():
        write_jsonl(corpus, rows[: args.passages])
    # Queries about invented entities (past --passages: entities not in the corpus; the load is what matters).
    queries = [q for q, _ in pairs]

    cfg = RetrievalConfig(index_dir=str(work / f"idx_{corpus.stem}"), method="dense", build=["dense"],
                          encoder={"name_or_path": args.encoder}, faiss={"type": "flat", "shard_size": 8192})
    t0 = time.perf_counter()
    # The backend does not change the vectors (top-3 agreement 100%, see --agreement), only build speed.
    build = build_indexes(cfg.model_copy(update={"encoder": cfg.encoder.model_copy(
        update={"backend": args.build_backend})}), corpus)
    default_backend = "onnx"  # what retrieval.encoder.backend=auto picks on CPU with onnxruntime installed
    report = {"corpus": str(corpus), "passages": build["docstore"]["count"], "encoder": args.encoder,
              "default_backend": default_backend, "repeats": args.repeats, "build_threads": args.threads,
              "cpus": os.cpu_count(), "allowed_cpus": allowed, "load_avg_1m_at_start": os.getloadavg()[0],
              "pin": {"servers": sorted(server_cpus), "load_generator": sorted(client_cpus)} if args.pin else None,
              "threads": {"baseline": base_threads, "ours": ours_threads},
              "build": {"dense_flat_s": round(build["dense"]["seconds"], 1), "skipped": build["dense"]["skipped"],
                        "wall_s": round(time.perf_counter() - t0, 1),
                        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}}
    report["ann"] = ann_recall(Path(cfg.index_dir), cfg, queries[:1000])

    pool = iter(queries[1000:])
    warm = [[next(pool) for _ in range(s)] for s in warm_sizes]  # first-call allocations per batch size
    work_items = {(rep, n): sh.batches(pool) for rep in range(args.repeats) for n, sh in run_shapes.items()}
    with contextlib.ExitStack() as stack:
        if args.pin:
            pin_this_process(server_cpus)  # the servers inherit it
        urls = {}
        for enc in ("torch", "onnx"):
            for t in base_threads:
                server = baseline_server(Path(cfg.index_dir), args.encoder, t, enc)
                urls[f"baseline_{enc}_{t}t"] = stack.enter_context(server)
        os.environ["OMP_NUM_THREADS"] = str(ours_threads)  # read by each server at start-up
        for enc in ("torch", "onnx"):
            enc_cfg = cfg.model_copy(update={"encoder": cfg.encoder.model_copy(update={"backend": enc})})
            urls[f"ours_{enc}"] = stack.enter_context(running_server(enc_cfg, corpus, port=0))
        os.environ["OMP_NUM_THREADS"] = str(args.threads)
        pids = {arm: listening_pid(url) for arm, url in urls.items()}
        if args.pin:
            pin_this_process(client_cpus)
            report["pin"]["server_affinity_seen"] = {a: psutil.Process(p).cpu_affinity() for a, p in pids.items()}
        top3 = {arm: [ids for batch in warm for ids in top3_ids(url, batch)] for arm, url in urls.items()}  # + warm-up
        ref = top3[f"baseline_torch_{base_threads[0]}t"]
        report["top3_agreement_vs_baseline_torch"] = {
            arm: round(float(np.mean([a == b for a, b in zip(got, ref)])), 4) for arm, got in top3.items()}
        arms = list(urls)
        runs: dict = {n: {a: [] for a in arms} for n in run_shapes}
        with tqdm(total=args.repeats * len(run_shapes) * len(arms), desc="shapes x servers", unit="run") as bar:
            for rep in range(args.repeats):
                order = arms[rep % len(arms):] + arms[: rep % len(arms)]
                for n in run_shapes:
                    for arm in order:
                        runs[n][arm].append(run_shape(urls[arm], pids[arm], work_items[(rep, n)]))
                        bar.update()
        report["server_peak_rss_mb"] = {k: httpx.get(f"{url}/health").json()["peak_rss_mb"] for k, url in urls.items()}
    report["load_avg_1m_at_end"] = os.getloadavg()[0]
    report["shapes"] = {n: {"spec": asdict(sh), "queries_per_request": list(sh.sizes),
                            "unique_per_request": [sh.unique_per_request(s) for s in sh.sizes],
                            **summarise(runs[n], default_backend), "runs": runs[n]} for n, sh in run_shapes.items()}
    if args.out:
        write_json(args.out, report)
    print(json.dumps(report, indent=2))
    print("\n" + markdown(report))


if __name__ == "__main__":
    main()
