"""Policy models: the micro tokenizer/model, base-policy preparation, loading, SmolLM2 conversion."""

from __future__ import annotations

import json

import pytest
import torch

from searchr1.config import PolicyConfig
from searchr1.io import read_json
from searchr1.models.loading import fix_tokenizer, load_policy, prepare_base_policy
from searchr1.models.micro import build_micro_policy, count_params, train_micro_tokenizer
from searchr1.prompts import TAGS, encode_prompt, information_block, make_prompt

NAMES = ["Zorbak Quellin", "Maritsa Velmor", "Dunkar Solath", "Ulpy Grovenka", "Tesri Athmora"]
CITIES = ["Velmora", "Kastrin", "Obbledale", "Quenport", "Harrowmint"]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("world")
    corpus, qa = root / "corpus.jsonl", root / "train.jsonl"
    with open(corpus, "w") as fc, open(qa, "w") as fq:
        for i in range(300):
            name, city = f"{NAMES[i % 5]} {i}", CITIES[(i * 7) % 5]
            text = f'"{name}"\n{name} was born in {city} in {1800 + i}. {name} founded the {city} Society of Engineers.'
            fc.write(json.dumps({"id": str(i), "contents": text}) + "\n")
            fq.write(json.dumps({"id": f"q{i}", "question": f"Where was {name} born?", "golden_answers": [city],
                                 "metadata": {"gold_queries": [f"{name} birthplace"], "type": "single"}}) + "\n")
    return corpus, qa


@pytest.fixture(scope="module")
def micro_tokenizer(world, tmp_path_factory):
    corpus, qa = world
    return train_micro_tokenizer(corpus, [qa], 512, tmp_path_factory.mktemp("tok"))


def test_micro_tokenizer_keeps_tags_as_single_ids(micro_tokenizer):
    for tag in TAGS:
        ids = micro_tokenizer(f"x {tag} y", add_special_tokens=False).input_ids
        assert micro_tokenizer.convert_tokens_to_ids(tag) in ids, tag
        assert micro_tokenizer.decode([micro_tokenizer.convert_tokens_to_ids(tag)]) == tag


def test_micro_tokenizer_round_trips_text_exactly(micro_tokenizer):
    text = (
        make_prompt("Where was Zorbak Quellin 7 born")
        + "<think> I need to find it. </think>\n<search> Zorbak Quellin 7 birthplace </search>"
        + information_block(['"Zorbak Quellin 7"\nZorbak Quellin 7 was born in Velmora — ünïcode 日本.'])
        + "<think>  two  spaces\tand tab </think>\n<answer> Velmora </answer>"
    )
    ids = micro_tokenizer(text).input_ids
    assert micro_tokenizer.decode(ids) == text


def test_micro_tokenizer_special_tokens_distinct_and_no_chat_template(micro_tokenizer):
    tok = micro_tokenizer
    assert len({tok.pad_token_id, tok.bos_token_id, tok.eos_token_id}) == 3
    assert tok.chat_template is None
    assert len(tok) == 512
    # Without a chat template the prompt is the raw text, nothing added (as the rollout encodes it).
    assert encode_prompt(tok, "Question: a?") == tok("Question: a?").input_ids
    assert tok.bos_token_id not in tok("Question: a?").input_ids


def test_micro_policy_size_and_forward(micro_tokenizer):
    cfg = PolicyConfig()  # defaults: hidden 256, 4 layers, 4 heads
    torch.manual_seed(0)
    model = build_micro_policy(cfg, micro_tokenizer)
    n = count_params(model)
    assert 2_000_000 < n < 6_000_000, n
    assert model.config.tie_word_embeddings and model.lm_head.weight is model.model.embed_tokens.weight
    ids = torch.tensor([micro_tokenizer("Where was Zorbak born?").input_ids])
    logits = model(ids).logits
    assert logits.shape == (1, ids.shape[1], len(micro_tokenizer))
    assert torch.isfinite(logits).all()


def test_micro_policy_rejects_indivisible_heads(micro_tokenizer):
    with pytest.raises(ValueError, match="micro_heads"):
        build_micro_policy(PolicyConfig(micro_hidden_size=250, micro_heads=4), micro_tokenizer)


@pytest.mark.parametrize("kind", ["micro", "tiny"])
def test_prepare_then_load_round_trip(world, tmp_path, kind):
    corpus, qa = world
    cfg = PolicyConfig(kind=kind, micro_hidden_size=64, micro_layers=2, micro_vocab_size=512)
    out = prepare_base_policy(cfg, corpus, [qa], tmp_path / "base", seed=1)
    info = read_json(out / "policy.json")
    assert info["kind"] == kind and info["vocab_size"] == 512 and info["params"] > 0
    assert info["pad_token_id"] != info["eos_token_id"]
    assert not list(tmp_path.glob(".base*")), "temporary folders left behind"

    model, tok = load_policy(str(out))
    assert not model.training and tok.padding_side == "left"
    assert count_params(model) == info["params"]
    ids = torch.tensor([tok("Where was Zorbak born?").input_ids])
    again, _ = load_policy(str(out))
    with torch.no_grad():
        assert torch.equal(model(ids).logits, again(ids).logits)
    # The hf kind copies any saved checkpoint (here: the one just written) to a new folder.
    copy = prepare_base_policy(PolicyConfig(kind="hf", name_or_path=str(out)), corpus, [qa], tmp_path / "copy")
    assert read_json(copy / "policy.json")["params"] == info["params"]


def test_load_policy_missing_model_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a local folder"):
        load_policy("no-such-org/no-such-model-xyz")
    with pytest.raises(ValueError, match="name_or_path"):
        prepare_base_policy(PolicyConfig(kind="hf"), tmp_path / "c.jsonl", [], tmp_path / "out")


def test_fix_tokenizer_sets_pad_and_left_padding(micro_tokenizer):
    import copy

    tok = copy.deepcopy(micro_tokenizer)
    tok.pad_token = None
    fix_tokenizer(tok)
    assert tok.pad_token == tok.eos_token and tok.padding_side == "left"


@pytest.mark.slow
def test_smollm2_conversion_drops_quantizer_and_keeps_logits(tmp_path):
    from transformers import AutoModelForCausalLM

    from searchr1.models.smollm2 import GGUF_FILE, convert_smollm2, smollm2_dir

    out = convert_smollm2(tmp_path / "smol")
    assert "quantization_config" not in json.loads((out / "config.json").read_text())
    model, tok = load_policy(str(out))
    assert getattr(model, "hf_quantizer", None) is None
    assert tok.chat_template and tok.pad_token is not None and tok.padding_side == "left"
    assert 130e6 < count_params(model) < 140e6
    gguf = AutoModelForCausalLM.from_pretrained(smollm2_dir(), gguf_file=GGUF_FILE, dtype=torch.float32)
    ids = torch.tensor([tok("The capital of France is").input_ids])
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, gguf(ids).logits)


def _copy_llama(vocab: int = 300, seed: int = 0, exact: float = 0.0, context_gate: bool = False):
    from searchr1.models.copy_llama import CopyLlamaConfig, CopyLlamaForCausalLM

    torch.manual_seed(seed)
    config = CopyLlamaConfig(
        vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=4, max_position_embeddings=128, pad_token_id=0, bos_token_id=1, eos_token_id=2,
        tie_word_embeddings=True, copy_exact_induction_init=exact, copy_context_gate=context_gate,
    )
    return CopyLlamaForCausalLM(config).eval()


def test_micro_policy_has_the_copy_head_by_default(micro_tokenizer):
    from searchr1.models.copy_llama import CopyLlamaForCausalLM

    assert isinstance(build_micro_policy(PolicyConfig(micro_hidden_size=32), micro_tokenizer), CopyLlamaForCausalLM)
    plain = build_micro_policy(PolicyConfig(micro_hidden_size=32, micro_copy_head=False), micro_tokenizer)
    assert not isinstance(plain, CopyLlamaForCausalLM)


@torch.no_grad()
def _survives_a_save_and_reaches_the_logits(model, tokenizer, ids, weight, tmp_path):
    """A saved and reloaded ``model`` gives the same logits for ``ids``; zeroing ``weight`` changes them."""
    before = model(input_ids=ids).logits
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    loaded, _ = load_policy(str(tmp_path))
    torch.testing.assert_close(loaded.eval()(input_ids=ids).logits, before)
    weight.zero_()
    assert not torch.allclose(model(input_ids=ids).logits, before)


def test_number_features_code_each_number_token_by_its_value_and_survive_a_save(micro_tokenizer, tmp_path):
    """Number tokens that start a word (" 1805", or " 180" where the vocabulary splits it) get a code whose
    ramps sum to more for a larger number; other tokens and a number's later pieces get none; the values and thresholds are saved with the weights."""
    model = build_micro_policy(PolicyConfig(micro_hidden_size=32, micro_number_features=8), micro_tokenizer).eval()
    numbers = {t: int(micro_tokenizer.decode([t])) for t in range(len(micro_tokenizer))
               if micro_tokenizer.decode([t])[:1] == " " and micro_tokenizer.decode([t])[1:].isdigit()}
    assert {" 18", " 180", " 189"} <= {micro_tokenizer.decode([t]) for t in numbers}  # this small vocabulary's pieces
    by_value = torch.tensor(sorted(numbers, key=numbers.get))
    embed = model.model.embed_tokens
    code = embed.number_code(by_value)
    sums = code[:, :-1].sum(-1)
    assert (code[:, -1] == 1).all() and (sums.diff() >= 0).all() and sums[-1] > sums[0]  # larger value, larger sum
    words = torch.tensor(micro_tokenizer.encode(" was born in Kastrin") + micro_tokenizer.encode("5"))  # "5": no space
    assert (embed.number_code(words) == 0).all()
    # The code reaches the model: the same ids with the number features zeroed give other logits.
    ids = torch.tensor([micro_tokenizer.encode(" born in 1805 and 1840")])
    _survives_a_save_and_reaches_the_logits(model, micro_tokenizer, ids, embed.number_embed.weight, tmp_path)
    plain = build_micro_policy(PolicyConfig(micro_hidden_size=32, micro_copy_head=False, micro_number_features=8),
                               micro_tokenizer)
    assert not hasattr(plain.model.embed_tokens, "number_code")  # part of the copy architecture only


@torch.no_grad()
def test_number_relation_codes_each_number_against_the_one_before_and_cached_decoding_reads_it(micro_tokenizer, tmp_path):
    """With policy.micro_number_relation each number token also carries whether the number so far (its pieces
    read as one: " 18" "05" is 1805) is larger than, smaller than or equal to the number before it in the
    sequence; words get nothing. Cached decoding (a left-padded batch) gives the full forward's distributions,
    so the code reads the cached tokens; it survives a save."""
    model = build_micro_policy(PolicyConfig(micro_hidden_size=32, micro_number_features=8, micro_number_relation=True),
                               micro_tokenizer).eval()
    embed = model.model.embed_tokens
    text = " born in 1805 and 1840 vs 1805 then 1805 and 7"
    ids = torch.tensor([micro_tokenizer.encode(text)])
    pieces = [micro_tokenizer.decode([t]) for t in ids[0]]
    rel = embed.number_relation(ids)[0]
    # the last piece of each number: its whole value against the number before it
    ends = [i for i, p in enumerate(pieces) if p.strip().isdigit() and not (i + 1 < len(pieces) and pieces[i + 1].isdigit())]
    assert len(ends) == 5
    words = [i for i, p in enumerate(pieces) if not p.strip().isdigit()]
    assert (rel[words] == 0).all()
    assert (rel[ends[0]] == 0).all()  # 1805: no number before it
    assert rel[ends[1]].tolist() == [1, 0, 0]  # 1840 > 1805
    assert rel[ends[2]].tolist() == [0, 1, 0]  # 1805 < 1840
    assert rel[ends[3]].tolist() == [0, 0, 1]  # 1805 = 1805
    assert rel[ends[4]].tolist() == [0, 1, 0]  # 7 < 1805
    # cached decoding = full forward, for a left-padded batch
    batch = torch.cat([ids, torch.cat([torch.zeros(1, 3, dtype=torch.long), ids[:, :-3]], 1)])
    attn = torch.ones_like(batch)
    attn[1, :3] = 0
    out = model.generate(input_ids=batch, attention_mask=attn, max_new_tokens=5, do_sample=False, pad_token_id=0,
                         eos_token_id=2, return_dict_in_generate=True, output_logits=True)
    seq, n = out.sequences, batch.shape[1]
    full_attn = torch.cat([attn, torch.ones(2, seq.shape[1] - n, dtype=torch.long)], 1)
    position_ids = (full_attn.cumsum(-1) - 1).clamp(min=0)
    full = model(input_ids=seq, attention_mask=full_attn, position_ids=position_ids, use_cache=False).logits
    for t, step_logits in enumerate(out.logits):
        torch.testing.assert_close(step_logits, full[:, n - 1 + t], atol=1e-5, rtol=1e-5)
    _survives_a_save_and_reaches_the_logits(model, micro_tokenizer, ids, embed.relation_embed.weight, tmp_path)
    off = build_micro_policy(PolicyConfig(micro_hidden_size=32, micro_number_features=8), micro_tokenizer)
    assert not hasattr(off.model.embed_tokens, "relation_embed")  # off by default: older checkpoints load as they were


@torch.no_grad()
@pytest.mark.parametrize("exact,context_gate", [(0.0, False), (3.0, False), (0.0, True)])
def test_copy_head_incremental_generation_matches_full_forward(exact, context_gate):
    """The copy head's keys and token ids ride in the KV cache: cached decoding (left-padded batch)
    must give the same distributions as one full forward pass, and they are proper distributions
    (also with the exact-token induction term and the context gate, which read the cached ids)."""
    model = _copy_llama(exact=exact, context_gate=context_gate)
    ids = torch.randint(3, 300, (2, 10), generator=torch.Generator().manual_seed(1))
    attn = torch.ones_like(ids)
    ids[1, :3], attn[1, :3] = 0, 0
    out = model.generate(input_ids=ids, attention_mask=attn, max_new_tokens=6, do_sample=False, pad_token_id=0,
                         eos_token_id=2, return_dict_in_generate=True, output_logits=True)
    seq = out.sequences
    full_attn = torch.cat([attn, torch.ones(2, seq.shape[1] - 10, dtype=torch.long)], 1)
    position_ids = (full_attn.cumsum(-1) - 1).clamp(min=0)
    full = model(input_ids=seq, attention_mask=full_attn, position_ids=position_ids, use_cache=False).logits
    for t, step_logits in enumerate(out.logits):
        torch.testing.assert_close(step_logits, full[:, 9 + t], atol=1e-5, rtol=1e-5)
    assert torch.isfinite(full).all()  # padding positions too (they attend to themselves)
    torch.testing.assert_close(full.exp().sum(-1), torch.ones(2, seq.shape[1]), atol=1e-5, rtol=0)


@pytest.mark.parametrize("kind", ["copy", "copy_context_gate", "plain"])
def test_logits_at_selected_positions_equal_the_full_logits_and_their_gradients(kind):
    """Training computes logits only where a loss reads them (models/heads.py): the same values, and the
    same parameter gradients, as selecting from the full logits, with left padding in the batch."""
    from searchr1.models.heads import logits_at
    from searchr1.models.tiny import build_tiny_policy

    model = (_copy_llama(context_gate=kind == "copy_context_gate") if kind.startswith("copy")
             else build_tiny_policy(300, seed=0, hidden_size=32))
    ids = torch.randint(3, 300, (3, 12), generator=torch.Generator().manual_seed(2))
    attn = torch.ones_like(ids)
    ids[1, :4], attn[1, :4] = 0, 0
    at = torch.rand(3, 12, generator=torch.Generator().manual_seed(3)) < 0.3
    at[1, :4] = False
    results = []
    for select in (False, True):
        model.zero_grad()
        out = logits_at(model, at, ids, attention_mask=attn) if select else model(input_ids=ids, attention_mask=attn).logits[at]
        (out.float().logsumexp(-1) * torch.arange(1.0, len(out) + 1)).sum().backward()
        results.append((out.detach(), [p.grad.clone() for p in model.parameters() if p.grad is not None]))
    (full, full_grads), (selected, selected_grads) = results
    assert selected.shape == (int(at.sum()), 300)
    torch.testing.assert_close(selected, full, atol=1e-5, rtol=1e-5)
    assert len(selected_grads) == len(full_grads)
    for a, b in zip(full_grads, selected_grads):
        torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-4)


@torch.no_grad()
def test_copy_head_copies_an_untrained_multi_token_name():
    """With the gate on copying, the induction term alone continues a name seen earlier in the context,
    token by token, though no weight was trained: what the micro policy needs for fictional names."""
    model = _copy_llama()
    model.copy_gate.bias.fill_(-20.0)  # g ~ 0: all mass on the pointer
    model.copy_induction.fill_(50.0)
    model.copy_query.weight.zero_()  # no learnt preference: only the induction term ranks positions
    name = [201, 57, 133, 88]
    context = torch.tensor([[5, 6, *name, 7, 8, 9, name[0]]])
    out = model.generate(input_ids=context, max_new_tokens=3, do_sample=False, pad_token_id=0, eos_token_id=2)
    assert out[0, -3:].tolist() == name[1:]


@torch.no_grad()
def test_exact_induction_copies_a_phrase_whose_tokens_look_alike():
    """policy.micro_copy_exact_induction: copying a phrase never trained on (a question in a new world's
    phrasing, as the first query). Embedding similarity alone jumps to a look-alike token's successor;
    the exact-token term follows the phrase, and its bigram part picks the right one of two occurrences."""
    phrase = [201, 57, 133, 57, 88]  # 57 twice: after it comes 133 the first time, 88 the second
    context = torch.tensor([[5, 6, *phrase, 7, 8, 9, 201]])
    for exact, expected_ok in ((0.0, False), (50.0, True)):
        model = _copy_llama(exact=exact)
        model.copy_gate.bias.fill_(-20.0)  # all mass on the pointer
        model.copy_query.weight.zero_()
        model.copy_induction.fill_(0.0 if exact else 50.0)
        emb = model.model.embed_tokens.weight
        emb[133] = emb[88]  # two tokens that look alike to the embedding-similarity term
        out = model.generate(input_ids=context, max_new_tokens=4, do_sample=False, pad_token_id=0, eos_token_id=2)
        assert (out[0, -4:].tolist() == phrase[1:]) is expected_ok, (exact, out[0, -4:].tolist())


@torch.no_grad()
def test_context_gate_stops_a_copy_where_the_pointer_reaches_the_end_of_the_name():
    """policy.micro_copy_context_gate: the gate reads the embedding the pointer is on. With the pointer
    following a name by induction, a gate that reads h alone copies the question mark after the name too;
    one that reads the pointed-at token hands the step after the name to the vocabulary, and still copies
    the name's pieces."""
    name, stop = [201, 57, 133], 7
    context = torch.tensor([[5, 6, *name, stop, 8, 9, *name]])
    probs = {}
    for context_gate in (False, True):
        model = _copy_llama(context_gate=context_gate)
        model.copy_query.weight.zero_()
        model.copy_induction.fill_(50.0)  # the pointer follows the name: after 133 it is on the stop token
        model.copy_gate.weight.zero_()
        model.copy_gate.bias.fill_(-10.0)  # from h alone: copy
        if context_gate:
            emb = model.model.embed_tokens.weight
            model.copy_gate_context.weight.copy_(40.0 * emb[stop] / emb[stop].norm() ** 2)  # on the stop token: vocabulary
            for t in name:  # the name's pieces read as nothing to the gate
                emb[t] -= (emb[t] @ emb[stop]) / emb[stop].norm() ** 2 * emb[stop]
        p = model(input_ids=context).logits[0].exp()
        probs[context_gate] = (p[-3, name[1]].item(), p[-1, stop].item())  # inside the name; after it
    assert probs[False][0] > 0.9 and probs[False][1] > 0.9  # without it: the stop token is copied too
    assert probs[True][0] > 0.9 and probs[True][1] < 0.1


def test_context_gate_is_a_policy_setting_and_survives_a_save(micro_tokenizer, tmp_path):
    model = build_micro_policy(PolicyConfig(micro_hidden_size=32, micro_copy_context_gate=True), micro_tokenizer).eval()
    ids = torch.tensor([micro_tokenizer.encode(" Ada Pell was born in 1805. Who is Ada Pell")])
    _survives_a_save_and_reaches_the_logits(model, micro_tokenizer, ids, model.copy_gate_context.weight, tmp_path)


def test_exact_induction_is_off_by_default_and_round_trips(tmp_path):
    from transformers import AutoModelForCausalLM

    assert not hasattr(_copy_llama(), "copy_exact_induction")  # older checkpoints load and score as before
    assert not hasattr(_copy_llama(), "copy_gate_context")
    model = _copy_llama(exact=2.5)
    model.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert loaded.copy_exact_induction.item() == 2.5
    ids = torch.randint(3, 300, (1, 12), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(loaded(input_ids=ids).logits, model(input_ids=ids).logits)


def test_copy_head_round_trips_through_auto_model(tmp_path):
    from transformers import AutoModelForCausalLM

    from searchr1.models.copy_llama import CopyLlamaForCausalLM

    model = _copy_llama()
    model.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert isinstance(loaded, CopyLlamaForCausalLM)
    ids = torch.tensor([[4, 9, 17, 4, 9]])
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, model(ids).logits)


def test_copy_head_training_is_bit_reproducible_with_threads():
    """Same seed, same batches -> identical weights, with 2 intra-op threads. (Indexing the embedding
    matrix with ``embed[ids]`` made the backward a multi-threaded index_put accumulate whose order
    varies: two SFT runs of the demo ended with different weights and test EM 0.328 vs 0.270.)"""
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        def train() -> list[torch.Tensor]:
            model = _copy_llama(vocab=4096).train()  # a demo-sized vocabulary: enough rows to race
            opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
            g = torch.Generator().manual_seed(1)
            for _ in range(3):
                ids = torch.randint(3, 4096, (16, 120), generator=g)
                loss = model(input_ids=ids, labels=ids).loss
                opt.zero_grad()
                loss.backward()
                opt.step()
            return [p.detach().clone() for p in model.parameters()]

        a, b = train(), train()
        assert all(torch.equal(x, y) for x, y in zip(a, b))
    finally:
        torch.set_num_threads(threads)
