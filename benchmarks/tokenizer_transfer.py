"""How well the `micro` policy's tokenizer, trained on one world, covers another (issue 33).

For each vocabulary size, train the micro tokenizer as `searchr1 policy` does (byte-level BPE on the home
world's corpus, training questions and answers: models/micro.py) and report, on the other world's test
questions and answers, the share of tokens that are rare in the home training text (fewer than ``--rare``
occurrences) or never produced there: a token the policy has barely seen has an embedding that barely
trained. Also the price: tokens per passage on both worlds and per home question, and how many tokens are
whole numbers (the comparisons' number codes, copy_llama.NumberedEmbedding, exist only for those).

Usage (after `make demo` and `make check-transfer`, which write both worlds' data):
  python benchmarks/tokenizer_transfer.py --home . --away runs/check-transfer --vocab 4096 1024 512
"""

from __future__ import annotations

import argparse
import collections
import json
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from searchr1.io import iter_jsonl  # noqa: E402
from searchr1.models.micro import _training_texts, train_micro_tokenizer  # noqa: E402


def rows(path: Path) -> list[dict]:
    return [row for _, row in iter_jsonl(path)]


def measure(home: Path, away: Path, vocab: int, rare: int) -> dict:
    corpus, train_qa = home / "data/corpus/corpus.jsonl", home / "data/qa/train.jsonl"
    with tempfile.TemporaryDirectory() as tmp:
        tok = train_micro_tokenizer(corpus, [train_qa], vocab, tmp)

    def encode(text: str) -> list[int]:
        return tok(text, add_special_tokens=False)["input_ids"]

    seen = collections.Counter(t for text in _training_texts(corpus, [train_qa]) for t in encode(text))
    away_qa = rows(away / "data/qa/test.jsonl")
    questions = [t for r in away_qa for t in encode(r["question"])]
    answers = [t for r in away_qa for t in encode(" " + r["golden_answers"][0])]
    numbers = [t for t in map(tok.decode, range(len(tok))) if t.startswith(" ") and t[1:].isdigit()]
    return {
        "vocab": len(tok),
        "away_question_tokens_rare": sum(seen[t] < rare for t in questions) / len(questions),
        "away_question_tokens_never": sum(seen[t] == 0 for t in questions) / len(questions),
        "away_answer_tokens_rare": sum(seen[t] < rare for t in answers) / len(answers),
        "home_tokens_per_passage": statistics.mean(len(encode(r["contents"])) for r in rows(corpus)),
        "away_tokens_per_passage": statistics.mean(len(encode(r["contents"])) for r in rows(away / "data/corpus/corpus.jsonl")),
        "home_tokens_per_question": statistics.mean(len(encode(r["question"])) for r in rows(train_qa)),
        "number_tokens": len(numbers),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--home", default=".", help="project folder of the world the tokenizer is trained on")
    parser.add_argument("--away", default="runs/check-transfer", help="project folder of the other world")
    parser.add_argument("--vocab", type=int, nargs="+", default=[4096, 1024, 512])
    parser.add_argument("--rare", type=int, default=10, help="a token seen fewer times than this is rare")
    args = parser.parse_args()
    results = {v: measure(Path(args.home), Path(args.away), v, args.rare) for v in args.vocab}
    print(json.dumps(results, indent=1))
    print(f"\n| vocabulary | away question tokens rare (< {args.rare}) | never seen | away answer tokens rare | "
          "tokens / home passage | tokens / away passage | tokens / home question | number tokens |")
    print("|---|---|---|---|---|---|---|---|")
    for v, r in results.items():
        print(f"| {v} | {r['away_question_tokens_rare']:.1%} | {r['away_question_tokens_never']:.1%} | "
              f"{r['away_answer_tokens_rare']:.1%} | {r['home_tokens_per_passage']:.1f} | "
              f"{r['away_tokens_per_passage']:.1f} | {r['home_tokens_per_question']:.1f} | {r['number_tokens']} |")


if __name__ == "__main__":
    main()
