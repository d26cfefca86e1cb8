"""A synthetic corpus of invented entities (one passage each) with single-hop queries, for tests and
benchmarks that must run offline on any corpus size."""

from __future__ import annotations

import random
from pathlib import Path

from searchr1.io import write_jsonl

_SYL = ["ka", "lo", "mir", "zen", "tha", "vor", "qui", "bel", "dra", "nox", "pel", "sar", "tor", "ul", "wen", "yst"]
_KINDS = ["painter", "river", "fortress", "composer", "comet", "guild", "engine", "poet", "island", "cipher"]
_THINGS = ["glass bells", "copper maps", "silent clocks", "salt bridges", "paper lanterns", "iron kites",
           "amber lenses", "woven roads", "tidal organs", "stone gardens"]
_PLACES = ["Ostrava Vale", "Quenth", "Marrowby", "Ilsefjord", "Tarn Oberlin", "Cassivel", "Drummond Reach"]


def _name(rng: random.Random) -> str:
    return " ".join("".join(rng.choice(_SYL) for _ in range(rng.randint(2, 3))).capitalize() for _ in range(2))


def synthetic_corpus(n: int, seed: int = 0) -> tuple[list[dict], list[tuple[str, str]]]:
    """``n`` passages ``{"id", "contents"}`` and one (query, gold passage id) per passage."""
    rng = random.Random(seed)
    seen: set[str] = set()
    rows, queries = [], []
    while len(rows) < n:
        name = _name(rng)
        if name in seen:
            continue
        seen.add(name)
        kind, thing, place, year = rng.choice(_KINDS), rng.choice(_THINGS), rng.choice(_PLACES), rng.randint(1200, 2020)
        doc_id = str(len(rows))
        text = (f"{name} is a {kind} from {place}, first recorded in {year}. {name} is best known for "
                f"{thing}, and scholars of {place} still argue about the {kind}'s origins.")
        rows.append({"id": doc_id, "contents": f'"{name}"\n{text}'})
        queries.append((f"what is {name} known for", doc_id))
    return rows, queries


def write_synthetic_corpus(path: str | Path, n: int, seed: int = 0) -> list[tuple[str, str]]:
    """Write the corpus as jsonl; returns the (query, gold id) pairs."""
    rows, queries = synthetic_corpus(n, seed)
    write_jsonl(path, rows)
    return queries
