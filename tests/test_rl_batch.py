"""Collation puts every response tensor on the positions that predict it; masked tokens get no gradient."""

from __future__ import annotations

from types import SimpleNamespace

import torch
from torch import nn

from searchr1.models.tiny import build_tiny_policy
from searchr1.rl.batch import collate
from searchr1.rl.core import clipped_policy_loss, kl_penalty, masked_mean, value_loss
from searchr1.rl.critic import build_value_model
from searchr1.rl.logprobs import forward_logprobs, hidden_or_logits, logprobs_of
from searchr1.rollout.types import Sample


def _sample(uid, prompt, response, mask, reward=1.0, group="g"):
    return Sample(uid=uid, group_id=group, question="", golden_answers=[], prompt_ids=prompt,
                  response_ids=response, response_mask=mask, reward=reward)


SAMPLES = [
    _sample("a", [5, 6, 7], [10, 11, 12, 13, 14], [1, 0, 0, 1, 0], reward=1.0),  # ends on an observation
    _sample("b", [8], [20, 21], [1, 1], reward=0.5),
]


def test_collate_left_pads_prompts_right_pads_responses_and_places_reward_on_last_generated():
    b = collate(SAMPLES)
    assert b.prompt_len == 3
    assert b.input_ids.tolist() == [[5, 6, 7, 10, 11, 12, 13, 14], [0, 0, 8, 20, 21, 0, 0, 0]]
    assert b.attention_mask.tolist() == [[1] * 8, [0, 0, 1, 1, 1, 0, 0, 0]]
    assert b.position_ids[1, 2:5].tolist() == [0, 1, 2]
    assert b.generated_mask.tolist() == [[1, 0, 0, 1, 0], [1, 1, 0, 0, 0]]
    assert b.loss_mask.tolist() == b.generated_mask.tolist()
    assert b.valid_mask.tolist() == [[1, 1, 1, 1, 1], [1, 1, 0, 0, 0]]
    assert b.token_rewards.tolist() == [[0, 0, 0, 1.0, 0], [0, 0.5, 0, 0, 0]]
    assert b.group_ids == ["g", "g"]


def test_collate_mask_retrieved_false_trains_on_every_response_token():
    b = collate(SAMPLES, mask_retrieved=False)
    assert b.loss_mask.tolist() == b.valid_mask.tolist()
    assert b.token_rewards[0].tolist() == [0, 0, 0, 1.0, 0]  # reward still on the last generated token


def test_logprobs_of_padded_batch_equal_unpadded_per_sample_scores():
    model = build_tiny_policy(32, seed=0, hidden_size=32, layers=2)
    b = collate(SAMPLES)
    logp, ent = logprobs_of(model, b, micro_batch_size=1)
    for i, s in enumerate(SAMPLES):
        ids = torch.tensor([s.prompt_ids + s.response_ids])
        with torch.no_grad():
            logits = model(input_ids=ids).logits[0]
        p = len(s.prompt_ids)
        ref = torch.log_softmax(logits[p - 1 : -1], -1).gather(-1, ids[0, p:, None]).squeeze(-1)
        # Scored where a loss reads them, the policy's own tokens; 0 on retrieved tokens and padding.
        mask = b.loss_mask[i, : len(s.response_ids)].bool()
        torch.testing.assert_close(logp[i, : len(s.response_ids)][mask], ref[mask], atol=1e-5, rtol=0)
        assert (logp[i][~b.loss_mask[i].bool()] == 0).all()
    assert (ent[b.loss_mask.bool()] > 0).all() and (ent[~b.loss_mask.bool()] == 0).all()


class _LogitsAsParameter(nn.Module):
    """A 'model' whose logits are a leaf parameter, to read the loss gradient per position."""

    def __init__(self, batch_size, length, vocab):
        super().__init__()
        self.logits = nn.Parameter(torch.randn(batch_size, length, vocab))

    def forward(self, **_):
        return SimpleNamespace(logits=self.logits)


def test_full_policy_loss_gradient_is_exactly_zero_on_masked_positions():
    b = collate(SAMPLES)
    torch.manual_seed(0)
    model = _LogitsAsParameter(2, 8, 32)
    logp, ent = forward_logprobs(model, b)
    mask = b.loss_mask
    old, ref = logp.detach() + 0.1 * torch.randn_like(logp), logp.detach() - 0.3
    adv = torch.randn_like(logp)
    pg, _, _ = clipped_policy_loss(logp, old, adv, mask, 0.2)
    loss = pg - 0.01 * masked_mean(ent, mask) + 0.1 * masked_mean(kl_penalty(logp, ref, "low_var_kl"), mask)
    loss.backward()
    grad = model.logits.grad.abs().sum(-1)  # [B, T]: position P-1+t predicts response token t
    predicts = grad[:, b.prompt_len - 1 : -1]
    assert torch.all(predicts[mask == 0] == 0)
    assert torch.all(predicts[mask == 1] > 0)
    assert torch.all(grad[:, : b.prompt_len - 1] == 0) and torch.all(grad[:, -1] == 0)


def test_value_loss_gradient_is_exactly_zero_on_masked_positions():
    b = collate(SAMPLES)
    critic = build_value_model(build_tiny_policy(32, seed=0, hidden_size=32, layers=1))
    torch.nn.init.normal_(critic.value_head.weight)  # the zero-init head would hide the backbone's gradient
    hidden = {}
    critic.value_head.register_forward_hook(lambda m, i, o: hidden.__setitem__("h", i[0].retain_grad() or i[0]))
    values = hidden_or_logits(critic, b)
    loss, _ = value_loss(values, torch.zeros_like(values), torch.ones_like(values), b.generated_mask, 100.0)
    loss.backward()
    g = hidden["h"].grad.abs().sum(-1)[:, b.prompt_len - 1 : -1]
    assert torch.all(g[b.generated_mask == 0] == 0)
    assert torch.all(g[b.generated_mask == 1] > 0)


def test_a_selected_sub_batch_drops_columns_that_are_padding_in_all_its_rows():
    b = collate(SAMPLES)
    sub = b.select([1])  # prompt of 1 token, response of 2
    assert sub.prompt_len == 1 and sub.input_ids.tolist() == [[8, 20, 21]]
    assert sub.loss_mask.tolist() == [[1, 1]] and sub.token_rewards.tolist() == [[0, 0.5]]
    assert sub.position_ids.tolist() == [[0, 1, 2]]
    model = build_tiny_policy(32, seed=0, hidden_size=32, layers=2)
    full, _ = logprobs_of(model, b, micro_batch_size=2)
    alone, _ = logprobs_of(model, sub, micro_batch_size=1)
    torch.testing.assert_close(alone[0], full[1, :2], atol=1e-5, rtol=0)


def test_split_gives_exactly_the_requested_number_of_length_sorted_parts():
    samples = [_sample(str(i), [1] * (i % 3 + 1), [2] * (i % 5 + 1), [1] * (i % 5 + 1)) for i in range(7)]
    parts = collate(samples).split(3)
    assert [len(p) for p in parts] == [3, 2, 2]
    lengths = [p.attention_mask.sum(1).tolist() for p in parts]
    assert max(lengths[0]) <= min(lengths[1]) and max(lengths[1]) <= min(lengths[2])


def test_padding_rows_weigh_nothing_and_keep_every_tensor_aligned():
    b = collate(SAMPLES)
    padded = b.padded(5, like=b)
    assert len(padded) == 5 and padded.group_ids[:2] == b.group_ids and padded.group_ids[2].startswith("<padding")
    for name in ("loss_mask", "generated_mask", "valid_mask", "token_rewards"):
        assert getattr(padded, name)[2:].abs().sum() == 0
    assert padded.rewards[2:].tolist() == [0.0, 0.0, 0.0]
    assert padded.select([0, 1]).input_ids.tolist() == b.input_ids.tolist()
    assert b.padded(2, like=b) is b
    empty = b.select([])
    assert len(empty) == 0 and len(empty.padded(2, like=b)) == 2


def test_prompt_shards_are_disjoint_contiguous_and_cover_the_step():
    from searchr1.rl.prompts import PromptSampler, shard

    step = PromptSampler(list(range(10)), 6, seed=1).next_prompts()
    parts = [shard(step, r, 3) for r in range(3)]
    assert sum(parts, []) == step and all(len(p) == 2 for p in parts)
    import pytest

    with pytest.raises(ValueError, match="6 prompts cannot be split evenly over 4 ranks"):
        shard(step, 0, 4)


def test_validation_holdout_is_a_seeded_draw_across_all_sources():
    from searchr1.stages import validation_holdout

    rows = [{"id": f"nq{i}"} for i in range(50)] + [{"id": f"hotpot{i}"} for i in range(50)]
    train, held = validation_holdout(rows, 20, seed=0)
    assert len(held) == 20 and len(train) == 80 and not {r["id"] for r in train} & {r["id"] for r in held}
    assert any(r["id"].startswith("nq") for r in held) and any(r["id"].startswith("hotpot") for r in held)
    assert validation_holdout(rows, 20, seed=0)[1] == held and validation_holdout(rows, 20, seed=1)[1] != held


def test_chunked_scoring_equals_one_pass_in_values_and_gradients():
    from searchr1.models.heads import plain_head

    b = collate(SAMPLES)
    model = build_tiny_policy(32, seed=0, hidden_size=32, layers=2)
    results = []
    for chunk in (0, 2):
        model.zero_grad()
        logp, ent = forward_logprobs(model, b, temperature=0.7, chunk_size=chunk)
        (logp.sum() + 0.1 * ent.sum()).backward()
        results.append((logp.detach(), ent.detach(), [p.grad.clone() for p in model.parameters()]))
    (lp0, e0, g0), (lp2, e2, g2) = results
    torch.testing.assert_close(lp2, lp0, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(e2, e0, atol=1e-6, rtol=1e-5)
    for a, c in zip(g0, g2):
        torch.testing.assert_close(c, a, atol=1e-6, rtol=1e-5)
    assert plain_head(model) is not None


def test_the_copy_head_is_never_chunked():
    from searchr1.models.copy_llama import CopyLlamaConfig, CopyLlamaForCausalLM
    from searchr1.models.heads import plain_head

    config = CopyLlamaConfig(vocab_size=32, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                             num_attention_heads=2, num_key_value_heads=2, copy_head_dim=8)
    assert plain_head(CopyLlamaForCausalLM(config)) is None


def test_a_groups_prompt_runs_once_with_the_same_logprobs_entropy_and_gradient():
    """Micro-batches by group run the prompt a group's samples share once (models/heads.py): log-probs,
    entropies and gradients equal those of running every row in full, in the plain and the chunked head
    paths; rows of other groups (other prompt lengths) are ordered apart."""
    gen = torch.Generator().manual_seed(0)
    prompts = {g: torch.randint(3, 60, (n,), generator=gen).tolist() for g, n in (("a", 20), ("b", 24))}
    samples = []
    for i in range(6):
        g = "ab"[i % 2]
        n = 5 + 3 * i
        mask = [1] * 3 + [0] * (n - 5) + [1] * 2
        samples.append(_sample(f"s{i}", prompts[g], torch.randint(3, 60, (n,), generator=gen).tolist(), mask, group=g))
    batch = collate(samples)
    order = batch._order(by_group=True).tolist()
    assert [batch.group_ids[i] for i in order] == ["a"] * 3 + ["b"] * 3
    for chunk in (0, 4):
        results = []
        for share in (False, True):
            model = build_tiny_policy(64, seed=0).train()
            prefills = []
            model.model.register_forward_pre_hook(lambda m, a, kw, p=prefills: p.append(kw["input_ids"].shape[0]),
                                                  with_kwargs=True)
            grads, logps, ents = [], [], []
            for mb in batch.split(2, by_group=True):
                logp, ent = forward_logprobs(model, mb, chunk_size=chunk, share_prefix=share)
                (logp * mb.loss_mask).sum().backward()
                logps.append(logp[mb.loss_mask.bool()])
                ents.append(ent[mb.loss_mask.bool()])
            grads = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
            results.append((torch.cat(logps), torch.cat(ents), grads, prefills))
        (lp0, e0, g0, calls0), (lp1, e1, g1, calls1) = results
        assert calls0 == [3, 3] and calls1 == [1, 3, 1, 3]  # each group's prompt ran once
        torch.testing.assert_close(lp1, lp0, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(e1, e0, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(g1, g0, atol=1e-5, rtol=1e-4)
    scored, _ = logprobs_of(build_tiny_policy(64, seed=0), batch, micro_batch_size=3, share_prefix=True)
    plain, _ = logprobs_of(build_tiny_policy(64, seed=0), batch, micro_batch_size=3)
    torch.testing.assert_close(scored, plain, atol=1e-5, rtol=1e-5)
