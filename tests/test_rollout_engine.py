"""HFEngine on a tiny random Llama with SmolLM2's real tokenizer: left padding, stop strings, EOS, log-probs."""

import pytest
import torch

from searchr1.config import RolloutConfig
from searchr1.models.tiny import build_tiny_policy
from searchr1.rollout.engine import GenerationEngine, HFEngine, SamplingSettings, cut_at_stop
from searchr1.rollout.loop import run_rollout


@pytest.fixture(scope="module")
def model(smol):
    return build_tiny_policy(len(smol), seed=0)


def prompts(tok):
    texts = ["Who founded Quilltown, the capital of Zorbland?", "Hi", "Where is Ostara"]
    return [tok.encode(t, add_special_tokens=False) for t in texts]


def recomputed_logprobs(model, prompt, out, temperature=1.0):
    with torch.no_grad():
        logits = model(torch.tensor([prompt + out])).logits[0, len(prompt) - 1 : -1].float() / temperature
    return torch.log_softmax(logits, -1).gather(-1, torch.tensor(out)[:, None])[:, 0]


def test_left_padded_batch_logprobs_match_a_fresh_forward_pass(smol, model):
    engine = HFEngine(model, smol)
    assert isinstance(engine, GenerationEngine)
    ps = prompts(smol)
    gens = engine.generate(ps, 12, SamplingSettings(temperature=0.7, seed=3), stop=[])
    assert [g.finish_reason for g in gens] == ["length"] * 3 and all(len(g.token_ids) == 12 for g in gens)
    for p, g in zip(ps, gens):  # rows of different lengths: padding must not leak into any row
        ref = recomputed_logprobs(model, p, g.token_ids, temperature=0.7)
        assert torch.allclose(torch.tensor(g.logprobs), ref, atol=1e-4)
    # seeded sampling is reproducible, and a different seed samples differently
    again = engine.generate(ps, 12, SamplingSettings(temperature=0.7, seed=3), stop=[])
    other = engine.generate(ps, 12, SamplingSettings(temperature=0.7, seed=4), stop=[])
    assert [g.token_ids for g in again] == [g.token_ids for g in gens]
    assert [g.token_ids for g in other] != [g.token_ids for g in gens]


def test_a_rows_sample_depends_on_its_own_seed_not_on_the_other_rows(smol, model):
    """Data-parallel ranks generate different subsets of a step's samples: with per-row seeds a sample
    is the same whichever rows share its call."""
    engine, ps = HFEngine(model, smol), prompts(smol)
    sampling = SamplingSettings(temperature=1.0)
    together = engine.generate(ps, 12, sampling, stop=[], seeds=[11, 22, 33])
    alone = engine.generate(ps[1:2], 12, sampling, stop=[], seeds=[22])
    reordered = engine.generate([ps[2], ps[0]], 12, sampling, stop=[], seeds=[33, 11])
    assert alone[0].token_ids == together[1].token_ids
    assert [g.token_ids for g in reordered] == [together[2].token_ids, together[0].token_ids]
    with pytest.raises(ValueError, match="2 seeds for 3 prompts"):
        engine.generate(ps, 4, sampling, stop=[], seeds=[1, 2])


def test_generation_stops_right_after_the_stop_string(smol, model):
    engine = HFEngine(model, smol)
    ps, sampling = prompts(smol), SamplingSettings(temperature=1.0, seed=5)
    free = engine.generate(ps, 20, sampling, stop=[])[0].token_ids
    # Use text the model really samples (tokens 6..8 of row 0) as the stop string; same seed, same draws.
    stop_text = smol.decode(free[6:9])
    k = next(k for k in range(1, 21) if stop_text in smol.decode(free[:k]))
    gens = engine.generate(ps, 20, sampling, stop=[stop_text])
    assert gens[0].finish_reason == "stop" and gens[0].token_ids == free[:k] and k < 20
    assert stop_text not in smol.decode(free[: k - 1])  # not one token later than needed
    # Row 0 left the batch at step k; the other rows' draws do not depend on it.
    for r in (1, 2):
        unstopped = engine.generate(ps, 20, sampling, stop=[])[r].token_ids
        assert gens[r].token_ids == unstopped[: len(gens[r].token_ids)]
        assert gens[r].finish_reason == "stop" or gens[r].token_ids == unstopped


def _copy_head_model(vocab_size):
    from searchr1.models.copy_llama import CopyLlamaConfig, CopyLlamaForCausalLM

    torch.manual_seed(0)
    config = CopyLlamaConfig(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                             num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=256,
                             tie_word_embeddings=True, eos_token_id=2)
    return CopyLlamaForCausalLM(config).eval()


@pytest.mark.parametrize("kind", ["llama", "copy_head"])
def test_rows_leaving_the_batch_keep_the_others_exact(smol, kind):
    """Rows that finish early are dropped from the batch and its KV cache (the copy head's extra cache
    layer included); every remaining row's log-probs still equal a fresh full forward pass."""
    model = build_tiny_policy(len(smol), seed=0) if kind == "llama" else _copy_head_model(len(smol))
    engine, ps = HFEngine(model, smol), prompts(smol)
    free = engine.generate(ps, 16, SamplingSettings(temperature=1.0, seed=7), stop=[])
    stop_text = smol.decode(free[1].token_ids[2:4])  # row 1 stops after ~4 tokens
    gens = engine.generate(ps, 16, SamplingSettings(temperature=1.0, seed=7), stop=[stop_text])
    assert gens[1].finish_reason == "stop" and len(gens[1].token_ids) <= 4
    assert max(len(g.token_ids) for g in gens) > len(gens[1].token_ids)  # someone kept going
    for p, g in zip(ps, gens):
        torch.testing.assert_close(torch.tensor(g.logprobs), recomputed_logprobs(model, p, g.token_ids),
                                   atol=1e-4, rtol=1e-4)


def test_top_k_and_top_p_restrict_the_draws(smol, model):
    ps = prompts(smol)
    greedy = HFEngine(model, smol).generate(ps, 8, SamplingSettings(greedy=True), stop=[])
    nucleus = HFEngine(model, smol).generate(ps, 8, SamplingSettings(temperature=1.0, top_p=1e-6, seed=1), stop=[])
    top1 = HFEngine(model, smol).generate(ps, 8, SamplingSettings(temperature=1.0, top_k=1, seed=1), stop=[])
    assert [g.token_ids for g in nucleus] == [g.token_ids for g in greedy] == [g.token_ids for g in top1]
    top5 = HFEngine(model, smol).generate(ps, 8, SamplingSettings(temperature=1.0, top_k=5, seed=2), stop=[])
    for p, g in zip(ps, top5):
        with torch.no_grad():
            logits = model(torch.tensor([p + g.token_ids])).logits[0, len(p) - 1 : -1]
        ranks = (logits > logits.gather(-1, torch.tensor(g.token_ids)[:, None])).sum(-1)
        assert (ranks < 5).all()


def test_eos_ends_generation_and_is_kept(smol):
    model = build_tiny_policy(len(smol), seed=0)
    p = prompts(smol)[:1]
    free = HFEngine(model, smol).generate(p, 20, SamplingSettings(greedy=True), stop=[])[0].token_ids
    eos_tok = free[4]
    model.generation_config.eos_token_id = eos_tok  # the model's 5th greedy token now ends the sequence
    g = HFEngine(model, smol).generate(p, 20, SamplingSettings(greedy=True), stop=["</search>"])[0]
    first = free.index(eos_tok)
    assert g.finish_reason == "eos" and g.token_ids == free[: first + 1] and g.token_ids[-1] == eos_tok


def test_cut_at_stop_prefers_first_event():
    class Chars:  # a trivial tokenizer: one id per character
        def decode(self, ids, skip_special_tokens=False):
            return "".join(chr(i) for i in ids if i)

    ids = [ord(c) for c in "ab</s>cd"]
    assert cut_at_stop(ids, Chars(), ["</s>"], {0}) == (6, "stop")
    assert cut_at_stop(ids[:3] + [0] + ids[3:], Chars(), ["</s>"], {0}) == (4, "eos")
    assert cut_at_stop(ids, Chars(), ["zz"], {0}) == (8, "length")


def test_rollout_with_real_engine_trains_only_on_sampled_tokens(smol, model):
    """End to end: recomputing log-probs over prompt+response reproduces the engine's at every mask-1
    position, so ids, order and mask are aligned; observation positions carry 0.0."""
    engine = HFEngine(model, smol)
    cfg = RolloutConfig(max_turns=1, max_turn_tokens=6, temperature=1.0, seed=1)
    items = [{"id": "a", "question": "Where is Ostara", "golden_answers": ["x"]},
             {"id": "b", "question": "Who founded Quilltown", "golden_answers": ["y"]}]

    class NoRetriever:
        def search(self, queries, topk):
            raise AssertionError("a random model never closes a search tag")

    res = run_rollout(engine, smol, items, NoRetriever(), cfg, num_generations=2)
    for s in res.samples:
        assert len(s.response_ids) == len(s.response_mask) == len(s.logprobs)
        assert len(s.turns) == 2 and sum(s.response_mask) == 12  # two turns of 6 sampled tokens
        assert 0 in s.response_mask  # the invalid-action message was appended between the two turns
        full = s.prompt_ids + s.response_ids
        with torch.no_grad():
            logits = model(torch.tensor([full])).logits[0, len(s.prompt_ids) - 1 : -1].float()
        ref = torch.log_softmax(logits, -1).gather(-1, torch.tensor(s.response_ids)[:, None])[:, 0]
        on = torch.tensor(s.response_mask, dtype=torch.bool)
        assert torch.allclose(torch.tensor(s.logprobs)[on], ref[on], atol=1e-4)
        assert all(lp == 0.0 for lp, m in zip(s.logprobs, s.response_mask) if m == 0)
    assert res.stats["generated_tokens"] == 4 * 2 * 6


def test_update_weights_loads_new_policy(smol):
    a, b = build_tiny_policy(len(smol), seed=0), build_tiny_policy(len(smol), seed=1)
    engine, sampling, p = HFEngine(a, smol), SamplingSettings(seed=2), prompts(smol)[:1]
    before = engine.generate(p, 8, sampling, [])[0]
    engine.update_weights(b.state_dict())
    after = engine.generate(p, 8, sampling, [])[0]
    assert after == HFEngine(b, smol).generate(p, 8, sampling, [])[0]
    assert after.logprobs != before.logprobs


def test_vllm_sampling_params_mapping():
    pytest.importorskip("vllm")
    from searchr1.rollout.vllm_engine import sampling_params

    sp = sampling_params(SamplingSettings(temperature=0.8, top_p=0.9, top_k=0, seed=7), 64, ["</search>"])
    assert sp.include_stop_str_in_output and sp.stop == ["</search>"] and sp.logprobs == 0 and sp.seed == 7
    assert sp.max_tokens == 64 and sp.temperature == 0.8


def test_sampling_draws_follow_the_filtered_distribution():
    """Inverse-CDF draws reproduce softmax(logits / T) after top-k/top-p filtering (40k draws, 6 tokens)."""
    from searchr1.rollout.engine import sample_tokens

    logits = torch.tensor([[2.0, 1.0, 0.5, 0.0, -1.0, -3.0]]).repeat(40_000, 1)
    uniform = torch.rand(40_000, generator=torch.Generator().manual_seed(0))
    for settings, expected in [
        (SamplingSettings(temperature=0.7), (logits[0] / 0.7).softmax(-1)),
        (SamplingSettings(temperature=1.0, top_k=3), torch.cat([logits[0, :3].softmax(-1), torch.zeros(3)])),
        # top_p=0.6: the first token holds 0.56 < 0.6 of the mass, the first two 0.77: keep two
        (SamplingSettings(temperature=1.0, top_p=0.6), torch.cat([logits[0, :2].softmax(-1), torch.zeros(4)])),
    ]:
        logp = torch.log_softmax(logits / settings.temperature, -1)
        freq = torch.bincount(sample_tokens(logp, settings, uniform), minlength=6).float() / 40_000
        torch.testing.assert_close(freq, expected, atol=0.01, rtol=0)


def test_top_p_over_the_candidates_draws_what_a_full_vocabulary_sort_draws():
    """The nucleus is found among tokens with p >= (1 - top_p) / V only; the draws equal a full sort's."""
    from searchr1.rollout.engine import sample_tokens

    def full_sort_reference(logp, top_p, uniform):
        probs = logp.exp()
        sorted_p, order = probs.sort(dim=-1, descending=True)
        drop = sorted_p.cumsum(-1) - sorted_p > top_p
        cdf = probs.scatter(-1, order, sorted_p.masked_fill(drop, 0.0)).cumsum(-1)
        return torch.searchsorted(cdf, uniform[:, None] * cdf[:, -1:], right=True).clamp_max(cdf.shape[-1] - 1)[:, 0]

    gen = torch.Generator().manual_seed(0)
    for scale in (0.5, 3.0, 8.0):  # nearly flat to peaked, like an untrained and a trained policy
        logp = torch.log_softmax(torch.randn(64, 49_152, generator=gen) * scale, -1)
        for top_p in (0.5, 0.9, 0.95, 0.999):
            uniform = torch.rand(64, generator=gen)
            got = sample_tokens(logp, SamplingSettings(temperature=1.0, top_p=top_p), uniform)
            assert torch.equal(got, full_sort_reference(logp, top_p, uniform)), (scale, top_p)


def test_repeating_tail_detects_short_blocks_repeated_three_times():
    from searchr1.rollout.engine import repeating_tail

    assert repeating_tail([7] * 8) and not repeating_tail([7] * 7)  # at least 8 tokens
    assert repeating_tail([1, 2] * 4) and repeating_tail([9, 1, 2, 3] * 3)
    assert not repeating_tail([1, 2, 3] * 2 + [1, 2])  # two repeats are not degenerate
    assert not repeating_tail(list(range(9)) * 3)  # a block longer than max_period
    assert not repeating_tail([1, 2, 3, 4, 5, 6, 7, 8, 9])


def test_a_degenerate_row_is_cut_and_reported_not_run_to_the_limit(smol):
    model = build_tiny_policy(len(smol), seed=0)
    with torch.no_grad():
        model.model.norm.weight.zero_()  # all logits 0: greedy repeats token 0 forever
    ps, greedy = prompts(smol), SamplingSettings(greedy=True)
    cut = HFEngine(model, smol).generate(ps, 20, greedy, stop=[])
    assert [g.finish_reason for g in cut] == ["repeat"] * 3 and all(len(g.token_ids) == 8 for g in cut)
    full = HFEngine(model, smol, cut_repeats=False).generate(ps, 20, greedy, stop=[])
    assert [g.finish_reason for g in full] == ["length"] * 3 and [g.token_ids[:8] for g in full] == [g.token_ids for g in cut]


def test_rollout_counts_a_repeated_turn_as_invalid(smol):
    model = build_tiny_policy(len(smol), seed=0)
    with torch.no_grad():
        model.model.norm.weight.zero_()
    item = {"id": "q", "question": "Where is Ostara?", "golden_answers": ["x"]}
    res = run_rollout(HFEngine(model, smol), smol, [item], None, RolloutConfig(max_turn_tokens=32), greedy=True)
    [s] = res.samples
    assert s.truncated["repeat"] == 1 and res.stats["truncated_repeat"] == 1
    assert s.turns[-1].action == "invalid" and sum(s.response_mask) == 8 and not s.finished


def test_growing_cache_layer_equals_concatenation_and_writes_in_place():
    """GrowingLayer returns what DynamicLayer's torch.cat returns, through reallocations and rows leaving,
    and between reallocations appends without moving its buffer."""
    from transformers.cache_utils import DynamicLayer

    from searchr1.models.kv_cache import GrowingLayer

    gen = torch.Generator().manual_seed(0)
    grow, ref = GrowingLayer(), DynamicLayer()
    rows = 4
    in_place = 0
    for step, new in enumerate([7, 1, 1, 1, 30, 1, 1, 60, 1, 1]):
        if step == 6:  # rows 1 and 3 leave the batch
            idx = torch.tensor([0, 2])
            grow.batch_select_indices(idx), ref.batch_select_indices(idx)
            rows = 2
        k, v = torch.randn(rows, 2, new, 8, generator=gen), torch.randn(rows, 2, new, 8, generator=gen)
        before = None if grow._buffers is None else grow._buffers[0].data_ptr()
        gk, gv = grow.update(k, v)
        rk, rv = ref.update(k, v)
        torch.testing.assert_close(gk, rk, rtol=0, atol=0)
        torch.testing.assert_close(gv, rv, rtol=0, atol=0)
        assert grow.get_seq_length() == ref.get_seq_length()
        in_place += before == grow._buffers[0].data_ptr()
    assert in_place >= 5  # the single-token steps (all but the reallocations) wrote into the same buffer
    grow.crop(-3), ref.crop(-3)  # ops that replace the tensors start a fresh buffer on the next update
    k = torch.randn(2, 2, 1, 8, generator=gen)
    torch.testing.assert_close(grow.update(k, k)[0], ref.update(k, k)[0], rtol=0, atol=0)


@pytest.mark.parametrize("kind", ["llama", "copy_head"])
def test_engine_decodes_the_same_with_the_growing_cache_as_with_the_models_own(smol, kind, monkeypatch):
    """Tokens and log-probs are identical with the in-place cache (reallocating every couple of tokens
    here) and with transformers' default cache, rows leaving the batch included."""
    from searchr1.models.kv_cache import GrowingLayer

    model = build_tiny_policy(len(smol), seed=0) if kind == "llama" else _copy_head_model(len(smol))
    ps, sampling = prompts(smol), SamplingSettings(temperature=1.0, seed=7)
    free = HFEngine(model, smol).generate(ps, 24, sampling, stop=[])
    stop = [smol.decode(free[1].token_ids[3:5])]  # row 1 leaves the batch early
    monkeypatch.setattr(GrowingLayer, "MIN_SPARE", 2)
    grown_layers = []
    real_update = GrowingLayer.update
    monkeypatch.setattr(GrowingLayer, "update", lambda self, *a, **k: grown_layers.append(self) or real_update(self, *a, **k))
    grown = HFEngine(model, smol).generate(ps, 24, sampling, stop=stop)
    assert len({id(layer) for layer in grown_layers}) == model.config.num_hidden_layers + (kind == "copy_head")
    calls = len(grown_layers)
    default = HFEngine(model, smol, in_place_cache=False).generate(ps, 24, sampling, stop=stop)
    assert len(grown_layers) == calls  # the comparison ran on transformers' own cache
    assert [g.token_ids for g in grown] == [g.token_ids for g in default]
    assert [g.logprobs for g in grown] == [g.logprobs for g in default]
    assert len(grown[1].token_ids) < max(len(g.token_ids) for g in grown)


def test_growing_cache_is_not_used_for_sliding_window_models():
    from transformers import MistralConfig, Qwen2Config

    from searchr1.models.kv_cache import growing_cache

    class Stub(torch.nn.Module):
        def __init__(self, config):
            super().__init__()
            self.config = config

    small = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2)
    assert growing_cache(Stub(MistralConfig(sliding_window=64, **small))) is None
    assert growing_cache(Stub(Qwen2Config(use_sliding_window=True, sliding_window=64, max_window_layers=0, **small))) is None
    assert growing_cache(Stub(Qwen2Config(use_sliding_window=False, **small))) is not None


def test_vllm_tensor_parallel_with_several_training_ranks_is_refused_with_what_to_set():
    from searchr1.rollout.vllm_engine import VLLMConfigError, VLLMEngine

    for layout in (dict(world_size=4), dict(world_size=1, training=True)):  # refused before vLLM is imported
        with pytest.raises(VLLMConfigError, match="Set rollout.vllm_tensor_parallel_size=1"):
            VLLMEngine("unused", tensor_parallel_size=2, **layout)


@pytest.mark.parametrize("kind", ["llama", "copy_head"])
@pytest.mark.parametrize("in_place_cache", [True, False])
def test_rows_with_the_same_prompt_share_one_prefill_and_sample_as_if_alone(smol, kind, in_place_cache):
    """A GRPO group's samples (the same prompt, their own seeds) are prefilled once: the first forward
    pass sees each distinct prompt once, and every row's tokens and log-probs equal those of a run where
    each row pays its own prefill, rows leaving the batch included."""
    model = build_tiny_policy(len(smol), seed=0) if kind == "llama" else _copy_head_model(len(smol))
    a, b, c = prompts(smol)
    ps = [a, a, a, b, b, c, a]  # three groups, one sample of the first apart from the others
    seeds, sampling = [11, 12, 13, 14, 15, 16, 17], SamplingSettings(temperature=1.0)
    prefill_rows = []
    real_forward = model.forward

    def counting_forward(*args, **kwargs):
        if kwargs["input_ids"].shape[1] > 1:  # a prefill (decoding steps feed one token per row)
            prefill_rows.append(kwargs["input_ids"].shape[0])
        return real_forward(*args, **kwargs)

    model.forward = counting_forward
    own = HFEngine(model, smol, in_place_cache=in_place_cache, share_prefill=False)
    alone = own.generate(ps, 20, sampling, stop=[], seeds=seeds)
    stop = [smol.decode(alone[1].token_ids[3:5])]  # row 1 leaves the batch early
    alone = own.generate(ps, 20, sampling, stop=stop, seeds=seeds)
    shared = HFEngine(model, smol, in_place_cache=in_place_cache).generate(ps, 20, sampling, stop=stop, seeds=seeds)
    assert prefill_rows == [7, 7, 3]
    assert [g.token_ids for g in shared] == [g.token_ids for g in alone]
    torch.testing.assert_close([torch.tensor(g.logprobs) for g in shared], [torch.tensor(g.logprobs) for g in alone],
                               atol=1e-5, rtol=1e-5)
    assert len({tuple(g.token_ids) for g in shared[:3]}) > 1  # the group's samples still differ
    assert len(shared[1].token_ids) < max(len(g.token_ids) for g in shared)
