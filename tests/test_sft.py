"""Cold start: trajectories from training questions, exact loss masks, and a short real SFT run."""

from __future__ import annotations

import json
import re

import pytest
import torch
import torch.nn.functional as F

from searchr1.config import PolicyConfig, Settings, SFTConfig
from searchr1.io import DataError
from searchr1.models.loading import load_policy, prepare_base_policy
from searchr1.models.micro import train_micro_tokenizer
from searchr1.models.tiny import build_tiny_policy
from searchr1.prompts import INFO_OPEN
from searchr1.retrieval.base import Doc
from searchr1.sft.train import (
    batch_loss_backward,
    collate,
    read_train_rows,
    run_sft,
    tokenize_example,
    trainable_token_loss,
)
from searchr1.sft.trajectories import build_sft_examples, contains_answer, gold_queries, perturb_query


def masked_lm_loss(
    logits: torch.Tensor, input_ids: torch.Tensor, loss_mask: torch.Tensor, num_targets: torch.Tensor | None = None
) -> torch.Tensor:
    """Token-mean next-token cross-entropy over positions whose target has loss_mask == 1, on full logits:
    the definition sft.train.trainable_token_loss must equal.

    ``num_targets`` divides instead of this batch's own count: a micro-batch's share of a larger batch's
    token mean, so accumulated micro-batches give the whole batch's loss and gradient."""
    targets = input_ids[:, 1:]
    mask = loss_mask[:, 1:].to(logits.dtype)
    ce = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), targets.flatten(), reduction="none")
    return (ce * mask.flatten()).sum() / (mask.sum() if num_targets is None else num_targets).clamp(min=1)


FIRST = ["Zorbak", "Maritsa", "Dunkar", "Ulpy", "Tesri", "Orvane", "Kelmit", "Sabra"]
LAST = ["Quellin", "Velmor", "Solath", "Grovenka", "Athmora", "Brindle", "Cortesz"]
CITIES = ["Velmora", "Kastrin", "Obbledale", "Quenport", "Harrowmint", "Dravik"]
FOUNDERS = ["Ilsa Marrow", "Petrak Vonn", "Odile Saretz", "Humbert Kael", "Yelva Droon", "Castor Pim"]


class KeywordRetriever:
    """Ranks passages by how many distinct query words they contain (title words count double)."""

    def __init__(self, docs: list[Doc]):
        self.docs = docs

    @staticmethod
    def _words(text: str) -> set[str]:
        return set(re.findall(r"\w+", text.lower()))

    def search(self, queries: list[str], topk: int) -> list[list[Doc]]:
        out = []
        for q in queries:
            words = self._words(q)
            scored = [(len(words & self._words(d.contents)) + len(words & self._words(d.title)), d) for d in self.docs]
            scored = [(s, d) for s, d in scored if s > 0]
            scored.sort(key=lambda sd: (-sd[0], sd[1].id))
            out.append([Doc(d.id, d.contents, float(s)) for s, d in scored[:topk]])
        return out


def make_world(n_people: int = 40):
    """People born in cities; cities founded by people. Two-hop: who founded X's birthplace?"""
    docs = [Doc(f"c{i}", f'"{c}"\n{c} is a city founded by {FOUNDERS[i]}.') for i, c in enumerate(CITIES)]
    train, test = [], []
    for i in range(n_people):
        name = f"{FIRST[i % len(FIRST)]} {LAST[i % len(LAST)]}"
        city = (i * 5) % len(CITIES)
        docs.append(Doc(f"p{i}", f'"{name}"\n{name} was born in {CITIES[city]}.'))
        split = test if i % 4 == 0 else train
        split.append({"id": f"{'test' if split is test else 'train'}-{i}",
                      "question": f"Who founded the birthplace of {name}?", "golden_answers": [FOUNDERS[city]],
                      "metadata": {"gold_queries": [f"{name} born", f"{CITIES[city]} founded"], "type": "two_hop"}})
    return docs, train, test


def gold(rows: list[dict]) -> list[list[str]]:
    """The generator's gold queries as search paths (sft.source=gold)."""
    return [gold_queries(r) for r in rows]


def flat_text(example: dict) -> str:
    return "".join(text for text, _ in example["segments"])


def turns_text(example: dict) -> str:
    """What the policy writes (the prompt also shows an example <search> query </search>)."""
    return "".join(text for text, trainable in example["segments"] if trainable)


def test_examples_follow_search_r1_format_with_real_retrieval():
    docs, train, _ = make_world()
    ex = build_sft_examples(train, gold(train), KeywordRetriever(docs), 2, SFTConfig(query_noise=0.0, skip_hop=0.0), seed=0)
    assert len(ex) == len(train)  # the keyword retriever always finds both facts
    for e in ex:
        segs = e["segments"]
        assert [t for _, t in segs] == [False, True, False, True, False, True]
        assert "Question: " + e["question"] in segs[0][0]
        q1, q2 = (re.search(r"<search> (.*?) </search>", segs[i][0]).group(1) for i in (1, 3))
        row = next(r for r in train if r["id"] == e["id"])
        assert [q1, q2] == row["metadata"]["gold_queries"]
        assert segs[2][0].startswith("\n\n" + INFO_OPEN) and segs[4][0].startswith("\n\n" + INFO_OPEN)
        assert e["golden_answers"][0] in segs[4][0]  # the answer is in the retrieved passages...
        assert segs[5][0].endswith(f"<answer> {e['golden_answers'][0]} </answer>")  # ...and then answered
        assert e["num_searches"] == 2


def test_examples_come_only_from_the_given_training_rows():
    docs, train, test = make_world()
    ex = build_sft_examples(train, gold(train), KeywordRetriever(docs), 2, SFTConfig(), seed=0)
    ids = {e["id"] for e in ex}
    assert ids and ids <= {r["id"] for r in train}
    assert not ids & {r["id"] for r in test}
    test_questions = {r["question"] for r in test}
    assert not any(q in flat_text(e) for e in ex for q in test_questions)


def test_imperfect_first_query_leads_to_a_re_search():
    docs, train, _ = make_world()
    ex = build_sft_examples(train, gold(train), KeywordRetriever(docs), 1, SFTConfig(query_noise=1.0, skip_hop=0.0), seed=0)
    re_searched = [e for e in ex if e["re_searched"]]
    assert re_searched, "with top-1 retrieval some imperfect queries must miss"
    for e in re_searched:
        text = turns_text(e)
        assert "search again" in text and e["num_searches"] == 3
        queries = re.findall(r"<search> (.*?) </search>", text)
        row = next(r for r in train if r["id"] == e["id"])
        assert queries[0] != queries[1] == row["metadata"]["gold_queries"][0]
    assert perturb_query("single", __import__("random").Random(0)) is None


def test_second_hop_is_skipped_only_when_first_passages_hold_the_answer():
    docs = [Doc("a", '"Ada Pell"\nAda Pell was born in Kastrin, a city founded by Ilsa Marrow.'),
            Doc("k", '"Kastrin"\nKastrin is a city founded by Ilsa Marrow.')]
    row = {"id": "t1", "question": "Who founded the birthplace of Ada Pell?", "golden_answers": ["Ilsa Marrow"],
           "metadata": {"gold_queries": ["Ada Pell born", "Kastrin founded"]}}
    [skip] = build_sft_examples([row], gold([row]), KeywordRetriever(docs), 1, SFTConfig(query_noise=0, skip_hop=1.0))
    assert skip["skipped_hop"] and skip["num_searches"] == 1
    [full] = build_sft_examples([row], gold([row]), KeywordRetriever(docs), 1, SFTConfig(query_noise=0, skip_hop=0.0))
    assert not full["skipped_hop"] and full["num_searches"] == 2


def test_without_plan_first_every_question_opens_alike_and_the_passages_decide():
    docs = [Doc("a", '"Ada Pell"\nAda Pell was born in Kastrin.'),
            Doc("k", '"Kastrin"\nKastrin is a city founded by Ilsa Marrow.')]
    one = {"id": "t1", "question": "Where was Ada Pell born?", "golden_answers": ["Kastrin"]}
    two = {"id": "t2", "question": "Who founded the birthplace of Ada Pell?", "golden_answers": ["Ilsa Marrow"]}
    paths = [[one["question"]], [two["question"], "Kastrin"]]

    def first_thoughts(plan_first):
        cfg = SFTConfig(query_noise=0, skip_hop=0.0, plan_first=plan_first)
        examples = build_sft_examples([one, two], paths, KeywordRetriever(docs), 1, cfg, seed=0)
        assert [ex["num_searches"] for ex in examples] == [1, 2]
        return [ex["segments"][1][0].split("</think>")[0] for ex in examples]

    planned = first_thoughts(True)
    assert planned[0] != planned[1]  # the plan (one search or more) is written before any passage
    unplanned = first_thoughts(False)
    assert unplanned[0] == unplanned[1]  # nothing to tell the two apart until the passages are read
    # the two-hop trajectory's second thought, written after the first block, is where it decides
    examples = build_sft_examples([two], paths[1:], KeywordRetriever(docs), 1, SFTConfig(query_noise=0, skip_hop=0.0, plan_first=False))
    assert "<search> Kastrin </search>" in examples[0]["segments"][3][0]


def test_questions_whose_answer_is_never_retrieved_are_dropped():
    docs, train, _ = make_world()
    docs = [d for d in docs if not d.id.startswith("c")]  # no city passages: second hop cannot succeed
    assert build_sft_examples(train, gold(train), KeywordRetriever(docs), 3, SFTConfig(skip_hop=1.0), seed=0) == []
    assert contains_answer([Doc("x", "founded by Ilsa Marrow.")], ["ilsa marrow"])
    assert not contains_answer([Doc("x", "founded by Ilsa Marrowing.")], ["Ilsa Marrow"])


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    docs, train, _ = make_world()
    root = tmp_path_factory.mktemp("sft")
    (root / "corpus.jsonl").write_text("".join(json.dumps({"id": d.id, "contents": d.contents}) + "\n" for d in docs))
    (root / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in train))
    return train_micro_tokenizer(root / "corpus.jsonl", [root / "train.jsonl"], 400, root / "tok")


def test_information_tokens_get_no_loss_and_no_gradient(tokenizer):
    docs, train, _ = make_world()
    [ex] = build_sft_examples(train[:1], gold(train[:1]), KeywordRetriever(docs), 2, SFTConfig(query_noise=0, skip_hop=0))
    ids, mask = tokenize_example(ex["segments"], tokenizer, 1024)
    assert ids[-1] == tokenizer.eos_token_id and mask[-1] == 1
    # Mask 1 exactly on the policy's own turns: decode the masked tokens back to the turn texts.
    kept = tokenizer.decode([i for i, m in zip(ids, mask) if m], skip_special_tokens=True)
    assert kept == "".join(t for t, trainable in ex["segments"] if trainable)
    info = tokenizer.decode([i for i, m in zip(ids, mask) if not m], skip_special_tokens=True)
    assert info == "".join(t for t, trainable in ex["segments"] if not trainable)
    assert info.count(INFO_OPEN) == 3  # the prompt's own mention + two information blocks

    model = build_tiny_policy(len(tokenizer), seed=0)
    x, m = torch.tensor([ids]), torch.tensor([mask])
    logits = model(x).logits
    logits.retain_grad()
    masked_lm_loss(logits, x, m).backward()
    grad_norm = logits.grad[0].abs().sum(-1)  # position t predicts token t + 1
    target_mask = m[0, 1:]
    assert (grad_norm[:-1][target_mask == 0] == 0).all()
    assert (grad_norm[:-1][target_mask == 1] > 0).all()
    assert grad_norm[-1] == 0  # the last position predicts nothing


@pytest.mark.parametrize("copy_head", [True, False])
def test_trainable_token_loss_equals_the_full_logits_loss(tokenizer, copy_head):
    """The SFT loss computes logits at trainable targets only: the same loss and gradient as the
    cross-entropy over full logits masked to those targets."""
    from searchr1.models.micro import build_micro_policy

    docs, train, _ = make_world()
    examples = build_sft_examples(train[:3], gold(train[:3]), KeywordRetriever(docs), 2, SFTConfig(query_noise=0, skip_hop=0))
    batch = collate([tokenize_example(ex["segments"], tokenizer, 1024) for ex in examples], tokenizer.pad_token_id)
    results = []
    for fast in (False, True):
        torch.manual_seed(0)
        model = build_micro_policy(PolicyConfig(micro_hidden_size=32, micro_copy_head=copy_head), tokenizer)
        results.append(loss_and_gradient(model, batch, fast))
    assert_same_loss_and_gradient(*results)


def loss_and_gradient(model, batch, fast: bool) -> tuple[float, torch.Tensor]:
    """The SFT loss and its gradient, by ``trainable_token_loss`` (fast) or over the full logits."""
    if fast:
        loss = trainable_token_loss(model, batch)
    else:
        loss = masked_lm_loss(model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits,
                              batch["input_ids"], batch["loss_mask"])
    loss.backward()
    return loss.item(), torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])


def assert_same_loss_and_gradient(a: tuple[float, torch.Tensor], b: tuple[float, torch.Tensor]) -> None:
    assert b[0] == pytest.approx(a[0], rel=1e-5)
    torch.testing.assert_close(b[1], a[1], atol=1e-6, rtol=1e-4)


def test_micro_batches_give_the_whole_batch_loss_and_gradient():
    # Rows of different lengths and target counts: a plain mean of micro-batch means would differ.
    gen = torch.Generator().manual_seed(0)
    rows = []
    for length in (5, 17, 9, 12, 3):
        ids = torch.randint(3, 50, (length,), generator=gen).tolist()
        mask = [0] * (length // 2) + [1] * (length - length // 2)
        rows.append((ids, mask))
    batch = collate(rows, pad_id=0)
    grads, losses = [], []
    for micro in (None, 2, 1):
        model = build_tiny_policy(64, seed=0)
        losses.append(batch_loss_backward(model, batch, micro))
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
    for loss, grad in zip(losses[1:], grads[1:]):
        assert loss == pytest.approx(losses[0], rel=1e-5)
        torch.testing.assert_close(grad, grads[0], rtol=1e-4, atol=1e-6)


def test_tokenize_example_rejects_a_trainable_prompt(tokenizer):
    with pytest.raises(ValueError, match="prompt"):
        tokenize_example([("q", True)], tokenizer, 16)


def test_read_train_rows_names_file_and_line(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text('{"id": "a", "question": "q?", "golden_answers": ["x"]}\n{"id": "b", "question": "q?"}\n')
    with pytest.raises(DataError, match=r"train.jsonl:2: .*golden_answers"):
        read_train_rows(path)


def test_short_sft_run_lowers_loss_and_saves_a_loadable_policy(tmp_path):
    docs, train, _ = make_world(60)
    corpus, qa = tmp_path / "corpus.jsonl", tmp_path / "train.jsonl"
    corpus.write_text("".join(json.dumps({"id": d.id, "contents": d.contents}) + "\n" for d in docs))
    qa.write_text("".join(json.dumps(r) + "\n" for r in train))
    settings = Settings(
        policy=PolicyConfig(kind="micro", micro_hidden_size=64, micro_layers=2, micro_vocab_size=400),
        sft=SFTConfig(epochs=6, lr=3e-3, batch_size=8),
    )
    settings.retrieval.topk = 2
    base = prepare_base_policy(settings.policy, corpus, [qa], tmp_path / "base")
    logged = []
    metrics = run_sft(settings, base, qa, KeywordRetriever(docs), tmp_path / "sft", log_fn=lambda m, s: logged.append(s))
    assert metrics["examples"] == len(train) == 45
    assert metrics["steps"] == 6 * 6 and logged == list(range(metrics["steps"]))
    curve = metrics["loss_curve"]
    assert sum(curve[-3:]) / 3 < sum(curve[:3]) / 3 - 1.0, curve  # down by more than a nat per token
    assert metrics["tokens_per_s"] > 0
    model, tok = load_policy(str(tmp_path / "sft"))
    base_model, _ = load_policy(str(base))
    ids = torch.tensor([tok("Who founded the birthplace of Zorbak Quellin?").input_ids])
    with torch.no_grad():
        assert not torch.equal(model(ids).logits, base_model(ids).logits)
    assert (tmp_path / "sft" / "sft_examples.sample.jsonl").exists()


def test_number_drills_join_the_cold_start_from_the_corpus_numbers_and_train_the_relation_code(tmp_path):
    """sft.number_drills: that many relation drills on the corpus's numbers join the trajectories (counted
    apart), and the cold start trains the micro policy's relation code (policy.micro_number_relation);
    sft.vary_values: the comparison's copies read other numbers of the corpus."""
    docs, train, _ = make_world(20)
    docs += [Doc(f"n{i}", f'"Mill {i}"\nMill {i} was built in {1700 + 37 * i} and had {1200 + 410 * i} workers.')
             for i in range(12)]
    docs += [Doc("a", '"Ada Pell"\nAda Pell was a smith born in 1801 in Kastrin.'),
             Doc("i", '"Ilsa Marrow"\nIlsa Marrow was a baker born in 1795 in Dorn.')]
    train += [{"id": "cmp", "question": "Who was born earlier, Ada Pell or Ilsa Marrow?", "golden_answers": ["Ilsa Marrow"]}]
    corpus, qa = tmp_path / "corpus.jsonl", tmp_path / "train.jsonl"
    corpus.write_text("".join(json.dumps({"id": d.id, "contents": d.contents}) + "\n" for d in docs))
    qa.write_text("".join(json.dumps(r) + "\n" for r in train))
    settings = Settings(
        policy=PolicyConfig(kind="micro", micro_hidden_size=32, micro_layers=1, micro_vocab_size=400,
                            micro_number_features=8, micro_number_relation=True),
        sft=SFTConfig(epochs=1, lr=3e-3, batch_size=8, number_drills=24, relation_after=True, vary_values=True,
                      say_direction=True, mark_order=True),
    )
    settings.corpus.out_path = str(corpus)
    settings.retrieval.topk = 2
    base = prepare_base_policy(settings.policy, corpus, [qa], tmp_path / "base")
    metrics = run_sft(settings, base, qa, KeywordRetriever(docs), tmp_path / "sft")
    assert metrics["number_drills"] == 24 and metrics["examples"] == len(train) + 3 + 24  # + 3 comparison copies
    copies = [json.loads(line) for line in (tmp_path / "sft" / "sft_examples.sample.jsonl").read_text().splitlines()]
    copies = [c for c in copies if c["id"].startswith("cmp#") and "#values-" in c["id"]]
    stated = {str(n) for i in range(12) for n in (1700 + 37 * i, 1200 + 410 * i)}  # the mills' four-digit numbers
    assert len(copies) == 3 and all(set(c["judged"]["values"]) <= stated for c in copies)
    assert metrics["searches_per_example"] >= 1 and metrics["coverage"] <= 1  # the trajectories' own, drills apart
    with pytest.raises(ValueError, match="sft.relation_after"):  # drills teach the relation after both values
        SFTConfig(number_drills=24)
    before = load_policy(str(base))[0].model.embed_tokens.relation_embed.weight
    after = load_policy(str(tmp_path / "sft"))[0].model.embed_tokens.relation_embed.weight
    assert not torch.equal(before, after)


def test_rejection_source_keeps_only_correct_finished_samples(tmp_path, tokenizer):
    from searchr1.rollout.types import Sample

    docs, train, _ = make_world()
    qa = tmp_path / "train.jsonl"
    qa.write_text("".join(json.dumps(r) + "\n" for r in train))
    base = tmp_path / "base"
    build_tiny_policy(len(tokenizer), seed=0).save_pretrained(base)
    tokenizer.save_pretrained(base)
    written = {e["id"]: e for e in build_sft_examples(train, gold(train), KeywordRetriever(docs), 2, SFTConfig(query_noise=0))}

    def rollout_fn(model, tok, rows):
        out = []
        for r in rows:  # one correct and one wrong sample per question
            ids, mask = tokenize_example(written[r["id"]]["segments"], tok, 1024)
            n = len(tok(written[r["id"]]["segments"][0][0]).input_ids)
            for reward in (1.0, 0.0):
                out.append(Sample(uid=f"{r['id']}-{reward}", group_id=r["id"], question=r["question"],
                                  golden_answers=r["golden_answers"], prompt_ids=ids[:n], response_ids=ids[n:],
                                  response_mask=mask[n:], reward=reward, finished=True, num_searches=2))
        return out

    settings = Settings(sft=SFTConfig(source="rejection", epochs=1, batch_size=8, num_examples=10))
    metrics = run_sft(settings, base, qa, None, tmp_path / "sft", rollout_fn=rollout_fn)
    assert metrics["questions"] == 10 and metrics["examples"] == 10 and metrics["steps"] == 2
    kept = [json.loads(x) for x in (tmp_path / "sft" / "sft_examples.sample.jsonl").read_text().splitlines()]
    assert all(k["reward"] == 1.0 for k in kept)
    with pytest.raises(ValueError, match="rollout_fn"):
        run_sft(settings, base, qa, None, tmp_path / "sft2")


def test_rag_fraction_adds_retrieve_then_answer_examples_with_evidence_only():
    docs, two_hop, _ = make_world()
    retriever = KeywordRetriever(docs)
    # Single-hop questions (the top passages for the question hold the answer) and two-hop ones (they do not).
    single = [{"id": f"s{i}", "question": f"Where was {d.title} born?", "golden_answers": [d.contents.split("born in ")[1][:-1]],
               "metadata": {"gold_queries": [f"{d.title} born"]}} for i, d in enumerate(docs) if d.id.startswith("p")]
    train = single[:10] + two_hop[:10]
    plain = build_sft_examples(train, gold(train), retriever, 3, SFTConfig(query_noise=0.0, skip_hop=0.0), seed=0)
    mixed = build_sft_examples(train, gold(train), retriever, 3, SFTConfig(query_noise=0.0, skip_hop=0.0, rag_fraction=1.0), seed=0)
    rag = [e for e in mixed if e.get("rag")]
    assert [e for e in mixed if not e.get("rag")] == plain  # the search trajectories are untouched
    assert rag
    for e in rag:
        (prompt, prompt_trainable), (answer, trainable) = e["segments"]
        assert not prompt_trainable and trainable
        assert prompt.startswith("Answer the given question using the retrieved information")
        assert "Doc 1(Title: " in prompt and prompt.rstrip().endswith(e["question"])
        assert answer == f"<answer> {e['golden_answers'][0]} </answer>"
        assert contains_answer([Doc("ctx", prompt)], e["golden_answers"])  # never taught to answer without evidence
    with_evidence = {r["id"] + "#rag" for r, d in zip(train, retriever.search([r["question"] for r in train], 3))
                     if contains_answer(d, r["golden_answers"])}
    assert {e["id"] for e in rag} == with_evidence and 0 < len(rag) < len(train)


def test_rows_sharing_the_instruction_run_it_once_with_the_same_loss_and_gradient(tokenizer):
    """A cold-start batch's rows all start with the instruction: it is run once for the batch, and the loss
    and gradient equal those of running every row in full (rows of different lengths, right-padded)."""
    from searchr1.models.heads import shared_prefix_length

    docs, train, _ = make_world()
    examples = build_sft_examples(train[:4], gold(train[:4]), KeywordRetriever(docs), 2, SFTConfig(query_noise=0, skip_hop=0))
    batch = collate([tokenize_example(ex["segments"], tokenizer, 1024) for ex in examples], tokenizer.pad_token_id)
    assert batch["attention_mask"].sum(1).unique().numel() > 1  # padding in play
    at = F.pad(batch["loss_mask"][:, 1:].bool(), (0, 1))
    shared = shared_prefix_length(batch["input_ids"], batch["attention_mask"], at)
    assert shared >= 16 and not at[:, :shared].any()
    results = []
    for share in (False, True):
        model = build_tiny_policy(len(tokenizer), seed=0).train()
        rows_run = []
        model.model.register_forward_pre_hook(lambda m, a, kw, r=rows_run: r.append(kw["input_ids"].shape), with_kwargs=True)
        results.append(loss_and_gradient(model, batch, fast=share))
    rows, width = batch["input_ids"].shape
    assert rows_run == [torch.Size([1, shared]), torch.Size([rows, width - shared])]  # the prefix once
    assert_same_loss_and_gradient(*results)
