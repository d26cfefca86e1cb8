"""Multi-turn search rollout on real tokenizers (SmolLM2's and a tiny BPE) with a scripted policy engine:
masks from spans, no re-encoding, EOS kept, one retriever call per turn, limits, reward extraction."""

import re
from collections import Counter

import pytest

from searchr1.config import RewardConfig, RolloutConfig
from searchr1.prompts import INVALID_ACTION_MESSAGE, information_block
from searchr1.retrieval.base import Doc, RetrievalError
from searchr1.rollout.engine import Generation, cut_at_stop
from searchr1.rollout.loop import build_prompt_ids, run_rollout

DOCS = [
    Doc("d1", '"Zorbland"\nZorbland is a country whose capital is Quilltown.'),
    Doc("d2", '"Quilltown"\nQuilltown was founded by Mira Fenwick in 1820.'),
    Doc("d3", '"Mira Fenwick"\nMira Fenwick was an explorer born in Ostara.'),
    Doc("d4", '"Ostara"\nOstara is a port city famous for glass and long winters by the grey sea.'),
    Doc("d5", '"Beijing"\nBeijing is the capital of China.'),
]


class KeywordRetriever:
    """Real (tiny) retriever: ranks docs by word overlap with the query; counts calls and can fail."""

    def __init__(self, docs=DOCS, fail_times: int = 0):
        self.docs, self.fail_times = docs, fail_times
        self.calls: list[list[str]] = []

    def search(self, queries, topk):
        self.calls.append(list(queries))
        if self.fail_times > 0:
            self.fail_times -= 1
            raise ConnectionError("retriever down")
        words = lambda s: set(re.findall(r"\w+", s.lower()))  # noqa: E731
        return [
            sorted(self.docs, key=lambda d: (-len(words(q) & words(d.contents)), d.id))[:topk] for q in queries
        ]


class ScriptedEngine:
    """A real GenerationEngine that replays a scripted policy: per question, one token-id list per turn.

    Like a real engine it cuts each scripted continuation at the first stop string / EOS / max_new_tokens,
    and it records every raw output so tests can compare trajectories with what was 'sampled'."""

    def __init__(self, tokenizer, scripts: dict[str, list[list[int]]]):
        self.tok, self.scripts = tokenizer, scripts
        self.eos = {tokenizer.eos_token_id}
        self.state: dict[tuple, tuple[str, int]] = {}
        self.outputs: dict[str, list[list[int]]] = {q: [] for q in scripts}
        self.calls = 0

    def generate(self, prompts, max_new_tokens, sampling, stop, seeds=None):
        self.calls += 1
        gens = []
        for p in prompts:
            key = max((k for k in self.state if tuple(p[: len(k)]) == k), key=len, default=None)
            if key is None:
                q, turn = next(q for q in self.scripts if q in self.tok.decode(p)), 0
            else:
                q, turn = self.state[key]
            raw = self.scripts[q][min(turn, len(self.scripts[q]) - 1)][:max_new_tokens]
            n, reason = cut_at_stop(raw, self.tok, stop, self.eos)
            ids = raw[:n]
            self.state[tuple(p) + tuple(ids)] = (q, turn + 1)
            self.outputs[q].append(ids)
            gens.append(Generation(ids, [-0.01 * (j + 1) for j in range(n)], reason))
        return gens

    def update_weights(self, weights):
        pass


def enc(tok, text):
    return tok.encode(text, add_special_tokens=False)


def char_ids(tok, text):
    """``text`` spelled one character per token: decodes to the same text, re-encodes differently."""
    return [enc(tok, c)[0] for c in text]


@pytest.fixture(scope="module")
def tiny_tok():
    """A tiny byte-level BPE trained on the spot: no chat template, pad != eos."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    t = Tokenizer(models.BPE())
    t.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    t.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=600, special_tokens=["<pad>", "<eos>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    t.train_from_iterator([d.contents for d in DOCS] + ["<think> <search> </search> <answer> </answer>"] * 5, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=t, eos_token="<eos>", pad_token="<pad>")


@pytest.fixture(params=["smol", "tiny_tok"])
def tok(request):
    return request.getfixturevalue(request.param)


Q1 = "Who founded the capital of Zorbland"
Q2 = "Where was Mira Fenwick born"
CFG = RolloutConfig(max_turns=3, max_turn_tokens=64)


def items(*qs):
    gold = {Q1: ["Mira Fenwick"], Q2: ["Ostara"]}
    return [{"id": f"q{i}", "question": q, "golden_answers": gold.get(q, ["x"])} for i, q in enumerate(qs)]


def test_masks_come_from_spans_and_sampled_ids_are_kept_verbatim(tok):
    eos = tok.eos_token_id
    t0 = enc(tok, "<think>capital first</think>\n<search> capital of Zorbland") + char_ids(tok, " </search>")
    t0 += enc(tok, " trailing text the engine must cut")
    t1 = enc(tok, "<think>hmm</think>") + [eos]  # EOS without an action: invalid, EOS kept
    t2 = enc(tok, "<think>Quilltown</think>\n<search> who founded Quilltown </search>")
    t3 = enc(tok, "<think>found</think>\n<answer> Mira Fenwick </answer>") + [eos]
    engine = ScriptedEngine(tok, {Q1: [t0, t1, t2, t3]})
    res = run_rollout(engine, tok, items(Q1), KeywordRetriever(), CFG, RewardConfig(), topk=2)
    s = res.samples[0]

    outs = engine.outputs[Q1]
    assert outs[0] == t0[: len(t0) - len(enc(tok, " trailing text the engine must cut"))]  # stopped at </search>
    assert outs[1] == t1 and outs[1][-1] == eos
    assert outs[3] == t3[:-1]  # stopped at </answer>, before the EOS
    # Rebuild the expected trajectory: sampled ids (mask 1) then observation ids (mask 0), per turn.
    ids, mask, lps = [], [], []
    for out, turn in zip(outs, s.turns):
        ids += out
        mask += [1] * len(out)
        lps += [-0.01 * (j + 1) for j in range(len(out))]
        obs = enc(tok, turn.observation)
        ids += obs
        mask += [0] * len(obs)
        lps += [0.0] * len(obs)
    assert s.response_ids == ids and s.response_mask == mask
    assert s.logprobs == pytest.approx(lps)
    # The char-spelled </search> survived (re-encoding its text would have merged it).
    assert enc(tok, tok.decode(outs[0])) != outs[0]
    # EOS (== pad on SmolLM2) is a trained token here.
    eos_pos = len(outs[0]) + len(enc(tok, s.turns[0].observation)) + len(outs[1]) - 1
    assert s.response_ids[eos_pos] == eos and s.response_mask[eos_pos] == 1
    assert [t.action for t in s.turns] == ["search", "invalid", "search", "answer"]
    assert s.turns[1].observation == INVALID_ACTION_MESSAGE
    assert s.turns[0].observation == information_block([d.contents for d in KeywordRetriever().search([s.turns[0].query], 2)[0]])
    assert s.turns[0].query == "capital of Zorbland" and s.turns[0].doc_ids[0] == "d1"
    assert (s.answer, s.reward, s.finished, s.num_searches, s.num_invalid) == ("Mira Fenwick", 1.0, True, 2, 1)
    assert res.stats["em"] == 1.0 and res.stats["searches_per_sample"] == 2.0


def test_batched_search_calls_retriever_once_per_turn(smol):
    tok = smol
    search = lambda q: enc(tok, f"<think>x</think><search> {q} </search>")  # noqa: E731
    answer = lambda a: enc(tok, f"<think>y</think><answer> {a} </answer>")  # noqa: E731
    scripts = {
        Q1: [search("capital of Zorbland"), search("founded Quilltown"), answer("Mira Fenwick")],
        Q2: [search("Mira Fenwick born"), answer("Ostara")],
    }
    engine, retriever = ScriptedEngine(tok, scripts), KeywordRetriever()
    res = run_rollout(engine, tok, items(Q1, Q2), retriever, CFG, RewardConfig(), num_generations=2)
    # turn 1: all 4 rows search; turn 2: only Q1's 2 rows; turn 3: everyone answers -> no call.
    assert [len(c) for c in retriever.calls] == [4, 2]
    assert Counter(retriever.calls[0]) == Counter(["capital of Zorbland"] * 2 + ["Mira Fenwick born"] * 2)
    assert res.stats["retriever_calls"] == 2 and engine.calls == 3
    assert [s.reward for s in res.samples] == [1.0, 1.0, 1.0, 1.0]
    assert {s.group_id for s in res.samples} == {"q0", "q1"} and len({s.uid for s in res.samples}) == 4
    assert res.stats["finish_ratio"] == 1.0 and res.stats["valid_action_ratio"] == 1.0


def test_max_turns_bounds_searches_and_last_turn_is_not_executed(smol):
    tok = smol
    forever = [enc(tok, "<think>more</think><search> Zorbland </search>")]
    retriever = KeywordRetriever()
    res = run_rollout(ScriptedEngine(tok, {Q1: forever}), tok, items(Q1), retriever, CFG.model_copy(update={"max_turns": 2}))
    s = res.samples[0]
    assert len(retriever.calls) == 2 and s.num_searches == 2 and len(s.turns) == 3
    assert s.turns[-1].observation == "" and not s.finished and s.reward == 0.0
    assert s.response_mask[-1] == 1  # ends on the unexecuted search's sampled tokens


def test_reward_ignores_the_instruction_example_answer(smol):
    tok = smol
    script = [enc(tok, "<think>I will not answer</think>") + [tok.eos_token_id]]
    res = run_rollout(ScriptedEngine(tok, {"capital of China": script}), tok,
                      [{"id": "c", "question": "What is the capital of China", "golden_answers": ["Beijing"]}],
                      KeywordRetriever(), CFG)
    s = res.samples[0]
    assert "<answer> Beijing </answer>" in tok.decode(s.prompt_ids)
    assert s.answer is None and s.reward == 0.0 and s.num_invalid == CFG.max_turns + 1


def test_a_retriever_failure_is_not_retried_by_the_rollout(smol):
    """The HTTP client is the one place that retries (transient errors only); the rollout calls once."""
    tok = smol
    script = {Q1: [enc(tok, "<search> Zorbland </search>"), enc(tok, "<answer> Quilltown </answer>")]}
    down = KeywordRetriever(fail_times=1)
    with pytest.raises(RetrievalError):
        run_rollout(ScriptedEngine(tok, script), tok, items(Q1), down, CFG)
    assert len(down.calls) == 1


def test_observation_truncation_keeps_titles_and_closing_tag(tok):
    long_docs = [Doc(f"L{i}", f'"Long {i}"\n' + "word " * 300) for i in range(3)]
    script = {Q1: [enc(tok, "<search> word </search>"), enc(tok, "<answer> x </answer>")]}
    limit = len(enc(tok, information_block([f'"Long {i}"\n' for i in range(3)]))) + 30  # titles + 30 tokens
    cfg = CFG.model_copy(update={"max_obs_tokens": limit})
    res = run_rollout(ScriptedEngine(tok, script), tok, items(Q1), KeywordRetriever(long_docs), cfg)
    s = res.samples[0]
    obs = s.turns[0].observation
    assert limit - 10 <= len(enc(tok, obs)) <= limit and obs.count("word") >= 6 and obs.rstrip().endswith("</information>") and "Long 2" in obs
    assert s.truncated["obs"] == 1 and res.stats["truncated_obs"] == 1


def test_max_total_tokens_stops_and_marks_truncated(smol):
    tok = smol
    forever = [enc(tok, "<think>" + "blah " * 20 + "</think><search> Zorbland </search>")]
    prompt_len = len(build_prompt_ids(tok, Q1)[0])
    cfg = CFG.model_copy(update={"max_total_tokens": prompt_len + 150, "max_turns": 10})
    s = run_rollout(ScriptedEngine(tok, {Q1: forever}), tok, items(Q1), KeywordRetriever(), cfg).samples[0]
    assert len(s.prompt_ids) + len(s.response_ids) <= prompt_len + 150
    assert s.truncated["total"] == 1 and not s.finished and len(s.turns) < 11


def test_prompt_truncation_cuts_instruction_head_never_the_question(smol):
    tok = smol
    full, cut = build_prompt_ids(tok, Q1)
    assert not cut
    short, cut = build_prompt_ids(tok, Q1, max_tokens=len(full) - 20)
    assert cut and len(short) <= len(full) - 20 and Q1 + "?" in tok.decode(short)
    with pytest.raises(ValueError, match="question does not fit"):
        build_prompt_ids(tok, "why " * 100, max_tokens=40)


def test_direct_and_rag_modes_are_single_turn(smol):
    tok = smol
    script = {Q1: [enc(tok, "<answer> Mira Fenwick </answer>")]}
    direct = run_rollout(ScriptedEngine(tok, script), tok, items(Q1), None, CFG)
    assert direct.samples[0].reward == 1.0 and len(direct.samples[0].turns) == 1
    assert "<search>" not in tok.decode(direct.samples[0].prompt_ids)

    retriever = KeywordRetriever()
    rag = run_rollout(ScriptedEngine(tok, script), tok, items(Q1), retriever, CFG, mode="rag", topk=2)
    s = rag.samples[0]
    assert len(retriever.calls) == 1 and s.turns[0].action == "retrieve" and len(s.turns[0].doc_ids) == 2
    assert "Doc 1(Title:" in tok.decode(s.prompt_ids) and s.reward == 1.0
    with pytest.raises(ValueError, match="needs a retriever"):
        run_rollout(ScriptedEngine(tok, script), tok, items(Q1), None, CFG, mode="search")


def test_tiny_tokenizer_prompt_is_raw_text_without_chat_template(tiny_tok):
    ids, _ = build_prompt_ids(tiny_tok, Q1)
    assert tiny_tok.decode(ids).startswith("Answer the given question.")
