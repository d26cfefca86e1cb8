"""RL math against hand-computed numbers: masked stats, KL estimators, losses, GAE, GRPO, REINFORCE++."""

from __future__ import annotations

import math

import pytest
import torch

from searchr1.rl.core import (
    clipped_policy_loss,
    entropy_from_logits,
    explained_variance,
    kl_penalty,
    masked_mean,
    masked_whiten,
    turn_of_position,
    value_loss,
)
from searchr1.rl.grpo import group_advantages
from searchr1.rl.ppo import compute_gae
from searchr1.rl.reinforce_pp import reinforce_pp_advantages, reinforce_pp_returns

T = torch.tensor


def test_masked_mean_ignores_masked_entries_and_all_masked_gives_zero():
    x = T([[1.0, 2.0, 3.0, 4.0]])
    assert masked_mean(x, T([[1.0, 0.0, 1.0, 0.0]])).item() == 2.0
    assert masked_mean(x, torch.zeros(1, 4)).item() == 0.0
    assert masked_mean(x, T([[1.0, 1.0, 0.0, 0.0]]), dim=1).tolist() == [1.5]


def test_masked_whiten_uses_unbiased_variance_and_zeroes_masked():
    out = masked_whiten(T([[1.0, 100.0, 2.0, 3.0]]), T([[1.0, 0.0, 1.0, 1.0]]))
    torch.testing.assert_close(out, T([[-1.0, 0.0, 0.0, 1.0]]), atol=1e-6, rtol=0)


def test_kl_estimators_match_hand_values():
    logp, ref = T([math.log(0.5)]), T([math.log(0.25)])
    assert kl_penalty(logp, ref, "k1").item() == pytest.approx(math.log(2))
    k3 = 0.5 + math.log(2) - 1  # exp(-log2) - (-log2) - 1
    assert kl_penalty(logp, ref, "k3").item() == pytest.approx(k3)
    assert kl_penalty(logp, ref, "low_var_kl").item() == pytest.approx(k3)
    # low_var_kl is clamped to [-10, 10] (verl); k3 is not.
    assert kl_penalty(T([0.0]), T([-50.0]), "low_var_kl").item() == 10.0
    assert kl_penalty(T([-50.0]), T([0.0]), "low_var_kl").item() == 10.0
    assert kl_penalty(T([0.0]), T([-50.0]), "k3").item() == pytest.approx(49.0)
    assert kl_penalty(T([-1.0]), T([-1.0]), "low_var_kl").item() == 0.0
    with pytest.raises(ValueError, match="kl estimator"):
        kl_penalty(logp, ref, "mse")


def test_entropy_of_uniform_and_one_hot():
    assert entropy_from_logits(torch.zeros(4)).item() == pytest.approx(math.log(4))
    assert entropy_from_logits(T([100.0, 0.0, 0.0])).item() == pytest.approx(0.0, abs=1e-6)


def test_clipped_policy_loss_hand_values():
    old = torch.zeros(1, 3)
    logp = T([[math.log(1.5), math.log(1.5), 5.0]])  # ratio 1.5, 1.5, (masked)
    adv = T([[1.0, -1.0, 7.0]])
    mask = T([[1.0, 1.0, 0.0]])
    loss, clip_frac, approx_kl = clipped_policy_loss(logp, old, adv, mask, clip=0.2)
    # A=+1: max(-1.5, -1.2) = -1.2 (clipped); A=-1: max(1.5, 1.2) = 1.5 (not clipped)
    assert loss.item() == pytest.approx((-1.2 + 1.5) / 2)
    assert clip_frac.item() == pytest.approx(0.5)
    assert approx_kl.item() == pytest.approx(-math.log(1.5))


def test_value_loss_hand_values():
    loss, clip_frac = value_loss(T([[1.0, 3.0]]), T([[0.0, 3.0]]), T([[2.0, 3.5]]), T([[1.0, 0.0]]), clip=0.2)
    # clipped prediction 0.2: max((1-2)^2, (0.2-2)^2) = 3.24
    assert loss.item() == pytest.approx(0.5 * 3.24)
    assert clip_frac.item() == 1.0


# --- GAE: sample with an observation token at t=1 (value 9.0 there must be ignored when masked) ---
REWARDS = T([[0.0, 0.0, 0.0, 1.0]])
VALUES = T([[0.5, 9.0, 0.2, 0.4]])


def test_gae_masked_skips_observation_tokens():
    adv, ret = compute_gae(REWARDS, VALUES, T([[1.0, 0.0, 1.0, 1.0]]), gamma=0.9, lam=0.8)
    # A3 = 1 - .4 = .6 ; A2 = (.9*.4 - .2) + .72*.6 = .592 ; A0 = (.9*.2 - .5) + .72*.592 = .10624
    raw = T([[0.10624, 0.0, 0.592, 0.6]])
    torch.testing.assert_close(ret, T([[0.60624, 0.0, 0.792, 1.0]]))
    torch.testing.assert_close(adv, masked_whiten(raw, T([[1.0, 0.0, 1.0, 1.0]])))
    assert adv[0, 1].item() == 0.0


def test_gae_unmasked_bootstraps_through_observation_values():
    adv, ret = compute_gae(REWARDS, VALUES, torch.ones(1, 4), gamma=0.9, lam=0.8)
    # A1 = (.9*.2 - 9) + .72*.592 = -8.39376 ; A0 = (.9*9 - .5) + .72*A1 = 1.5564928
    raw = T([[1.5564928, -8.39376, 0.592, 0.6]])
    torch.testing.assert_close(ret, raw + VALUES)
    torch.testing.assert_close(adv, masked_whiten(raw, torch.ones(1, 4)))


def test_gae_all_ones_mask_equals_textbook_recursion():
    torch.manual_seed(0)
    r, v = torch.randn(3, 7), torch.randn(3, 7)
    expected, last = torch.zeros(3, 7), torch.zeros(3)
    for t in reversed(range(7)):
        nv = v[:, t + 1] if t < 6 else torch.zeros(3)
        last = r[:, t] + 0.95 * nv - v[:, t] + 0.95 * 0.9 * last
        expected[:, t] = last
    _, ret = compute_gae(r, v, torch.ones(3, 7), gamma=0.95, lam=0.9)
    torch.testing.assert_close(ret, expected + v)


def test_gae_gamma_lambda_one_gives_return_minus_value():
    _, ret = compute_gae(REWARDS, VALUES, T([[1.0, 0.0, 1.0, 1.0]]), gamma=1.0, lam=1.0)
    torch.testing.assert_close(ret, T([[1.0, 0.0, 1.0, 1.0]]))  # outcome reward 1 for every generated token


def test_turn_of_position_counts_the_retrieved_blocks_before_each_token():
    # generated g g | retrieved r r | g | r | g g, then padding
    generated = torch.tensor([[1, 1, 0, 0, 1, 0, 1, 1, 0]])
    valid = torch.tensor([[1, 1, 1, 1, 1, 1, 1, 1, 0]])
    assert turn_of_position(generated, valid).tolist() == [[0, 0, 1, 1, 1, 2, 2, 2, 2]]


def test_explained_variance_per_turn_tells_a_critic_that_reads_the_evidence():
    # Two rows: values know nothing before the first retrieved block and predict the return after it.
    generated = torch.tensor([[1, 1, 0, 1, 1], [1, 1, 0, 1, 1]])
    valid = torch.ones_like(generated)
    returns = torch.tensor([[1.0] * 5, [0.0] * 5]) * generated
    values = torch.tensor([[0.5, 0.5, 0, 1.0, 1.0], [0.5, 0.5, 0, 0.0, 0.0]])
    turn = turn_of_position(generated, valid)
    assert explained_variance(values, returns, generated * (turn == 0)) == pytest.approx(0.0)
    assert explained_variance(values, returns, generated * (turn == 1)) == pytest.approx(1.0)


def test_group_advantages_normalise_within_prompt_groups_by_id():
    rewards = T([1.0, 0.0, 0.0, 1.0, 0.5])
    adv = group_advantages(rewards, ["a", "b", "a", "b", "c"], eps=0.0)
    s = 1 / math.sqrt(2)  # (1 - .5) / std([1, 0]) with the unbiased std .7071
    torch.testing.assert_close(adv, T([s, -s, -s, s, 0.5]))  # singleton group: mean 0, std 1
    torch.testing.assert_close(group_advantages(rewards, ["a", "b", "a", "b", "c"], norm_by_std=False),
                               T([0.5, -0.5, -0.5, 0.5, 0.5]))


def test_group_advantages_all_equal_rewards_give_zero():
    assert group_advantages(T([1.0, 1.0, 1.0]), ["q", "q", "q"]).abs().max().item() == 0.0
    with pytest.raises(ValueError, match="group ids"):
        group_advantages(T([1.0]), ["a", "b"])


def test_reinforce_pp_returns_skip_observations_and_whiten():
    rewards = T([[-0.1, 0.0, -0.2, 1.0]])
    mask = T([[1.0, 0.0, 1.0, 1.0]])
    ret = reinforce_pp_returns(rewards, mask, gamma=0.5)
    # G3 = 1 ; G2 = -.2 + .5 = .3 ; G0 = -.1 + .5*.3 = .05 (t=1 is an observation: skipped)
    torch.testing.assert_close(ret, T([[0.05, 0.0, 0.3, 1.0]]))
    adv, _ = reinforce_pp_advantages(rewards, mask, gamma=0.5)
    std = math.sqrt(((0.05 - 0.45) ** 2 + (0.3 - 0.45) ** 2 + (1 - 0.45) ** 2) / 2)
    torch.testing.assert_close(adv, T([[(0.05 - 0.45) / std, 0.0, (0.3 - 0.45) / std, 0.55 / std]]))


@pytest.mark.parametrize("mode", ["token_mean", "seq_mean"])
def test_minibatch_loss_does_not_depend_on_the_micro_batch_split(mode):
    from searchr1.rl.core import Aggregation

    gen = torch.Generator().manual_seed(0)
    per_token = torch.randn(6, 7, generator=gen)
    lengths = torch.tensor([1, 7, 3, 2, 6, 4])
    mask = (torch.arange(7)[None] < lengths[:, None]).float()
    whole = Aggregation(mode)(per_token, mask)
    agg = Aggregation.over(mode, mask)
    for split in ([6], [1, 5], [2, 2, 2], [3, 1, 1, 1]):
        parts = zip(torch.split(per_token, split), torch.split(mask, split))
        assert sum(agg(x, m) for x, m in parts).item() == pytest.approx(whole.item(), abs=1e-6)
    # Per-micro-batch normalisation (the old behaviour) weights short micro-batches up: it differs.
    per_mb = sum(Aggregation(mode)(x, m) for x, m in zip(torch.split(per_token, [1, 5]), torch.split(mask, [1, 5]))) / 2
    assert per_mb.item() != pytest.approx(whole.item(), abs=1e-3)


def test_informative_rows_keep_only_groups_whose_rewards_differ():
    from searchr1.rl.grpo import informative_rows

    rewards = T([1.0, 1.0, 0.0, 1.0, 0.0, 0.0, 1.0])
    groups = ["a", "a", "b", "b", "c", "c", "d"]  # a: all 1, b: mixed, c: all 0, d: alone
    assert informative_rows(rewards, groups) == [2, 3]


def test_collapse_guard_reads_entropy_only_from_steps_that_trained():
    from searchr1.rl.guard import CollapseGuard

    guard = CollapseGuard(min_entropy=0.01, max_kl=1.0, reward_drop=0.5)
    quiet = {"entropy": 0.0, "kl": 0.0, "reward_mean": 0.5, "samples_trained": 0.0}  # every group filtered
    assert guard.check(quiet) == []
    assert "entropy collapsed" in guard.check(quiet | {"samples_trained": 8.0})[0]
    assert "KL exploded" in guard.check(quiet | {"kl": 2.0})[0]
