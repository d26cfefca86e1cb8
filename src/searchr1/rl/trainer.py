"""RL trainer (PPO / GRPO / REINFORCE++) on DeepSpeed: rollout → advantages → clipped updates → sync.

Each ``train_step`` reads top to bottom as the phases of one iteration, cleanrl style.
"""

from __future__ import annotations

import copy
import logging
import random
import shutil
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from searchr1.config import Settings
from searchr1.errors import SearchR1Error
from searchr1.io import atomic_path, read_json, write_json
from searchr1.rl import engine as E
from searchr1.rl.batch import Batch, collate, forward_logprobs, hidden_or_logits, logprobs_of, values_of
from searchr1.rl.core import Aggregation, clipped_policy_loss, kl_penalty, masked_mean, value_loss
from searchr1.rl.critic import build_critic
from searchr1.rl.grpo import group_advantages, informative_rows
from searchr1.rl.guard import CollapseGuard
from searchr1.rl.ppo import compute_gae
from searchr1.rl.reinforce_pp import reinforce_pp_advantages
from searchr1.rollout.types import Sample

log = logging.getLogger(__name__)

RolloutFn = Callable[[torch.nn.Module, list[Any]], list[Sample]]


class CollapseError(SearchR1Error, RuntimeError):
    """Training collapsed and ``train.stop_on_collapse`` is set; a checkpoint was saved first."""


class WeightSyncError(SearchR1Error, RuntimeError):
    """Pushing the new weights to the rollout engine failed or did not finish in ``train.sync_timeout_s``."""


def _rank() -> int:
    return torch.distributed.get_rank() if torch.distributed.is_initialized() else 0


def _barrier() -> None:
    if torch.distributed.is_initialized():
        torch.distributed.barrier()


class RLTrainer:
    """Train ``model`` on prompts ``items`` with rewards computed by ``rollout_fn``.

    ``rollout_fn(model, items)`` gets each prompt item repeated ``num_generations`` times (adjacent)
    and must return one ``Sample`` per item, in order, with ``group_id`` = the prompt's id and
    ``reward`` filled in. ``sync_fn(state_dict)``, if given, pushes new weights to an external rollout
    engine (e.g. vLLM) after each step; without it rollouts use the actor module itself.
    ``log_fn(metrics, step)`` receives every step's metrics; ``eval_fn(model) -> dict`` runs every
    ``train.eval_every`` steps and its results are logged with an ``eval/`` prefix.
    """

    def __init__(
        self,
        settings: Settings,
        model: torch.nn.Module,
        tokenizer: Any,
        rollout_fn: RolloutFn,
        items: list[Any],
        log_fn: Callable[[dict[str, float], int], None] | None = None,
        eval_fn: Callable[[torch.nn.Module], dict[str, float]] | None = None,
        sync_fn: Callable[[Mapping[str, torch.Tensor]], None] | None = None,
    ):
        cfg = self.cfg = settings.train
        if not items:
            raise ValueError("RLTrainer: no training prompts")
        gas = cfg.deepspeed.gradient_accumulation_steps
        if cfg.minibatch_size % gas:
            raise ValueError(
                f"train.minibatch_size={cfg.minibatch_size} must be divisible by "
                f"train.deepspeed.gradient_accumulation_steps={gas}"
            )
        batch_size = cfg.prompts_per_step * cfg.num_generations
        if batch_size % cfg.minibatch_size:
            raise ValueError(
                f"train.prompts_per_step x train.num_generations = {batch_size} samples per step must be "
                f"divisible by train.minibatch_size={cfg.minibatch_size}"
            )
        if cfg.filter_groups and cfg.num_generations < 2:
            raise ValueError("train.filter_groups needs groups: set train.num_generations >= 2")
        self.micro_batch_size = cfg.minibatch_size // gas
        self.temperature = settings.rollout.temperature if settings.rollout.temperature > 0 else 1.0
        self.tokenizer, self.rollout_fn, self.items = tokenizer, rollout_fn, items
        self.log_fn, self.eval_fn, self.sync_fn = log_fn, eval_fn, sync_fn
        # REINFORCE++ has no critic and no KL loss: its KL always enters the token rewards.
        self.kl_in_reward = cfg.kl_in_reward or cfg.algorithm == "reinforce_pp"
        self.use_kl_loss = cfg.kl_coef > 0 and not self.kl_in_reward

        _seed_everything(cfg.seed)
        # Copies are taken before DeepSpeed wraps (and under ZeRO-3 partitions) the actor.
        ref = copy.deepcopy(model) if cfg.kl_coef > 0 else None
        critic = build_critic(model) if cfg.algorithm == "ppo" else None
        self.actor = E.setup_engine(model, cfg.deepspeed, cfg.lr, self.micro_batch_size)
        self.ref = E.setup_reference(ref, cfg.deepspeed) if ref is not None else None
        self.critic = (
            E.setup_engine(critic, cfg.deepspeed, cfg.critic_lr, self.micro_batch_size) if critic is not None else None
        )
        self.device = E.device()
        self.guard = CollapseGuard(cfg.collapse_min_entropy, cfg.collapse_max_kl, cfg.collapse_reward_drop)
        self.step = 0
        self.data_epoch, self.data_pos = 0, 0
        self.history: list[dict[str, float]] = []

    # ----- data order: a seeded permutation per epoch; (epoch, position) is all the state -----
    def _next_prompts(self) -> list[Any]:
        n, out = self.cfg.prompts_per_step, []
        while len(out) < n:
            order = np.random.default_rng([self.cfg.seed, self.data_epoch]).permutation(len(self.items))
            take = order[self.data_pos : self.data_pos + n - len(out)]
            out.extend(self.items[i] for i in take)
            self.data_pos += len(take)
            if self.data_pos >= len(self.items):
                self.data_epoch, self.data_pos = self.data_epoch + 1, 0
        return out

    def _lr(self, base: float) -> float:
        """Linear warmup over ``warmup_steps`` trainer steps, then constant (verl's default schedule)."""
        w = self.cfg.warmup_steps
        return base * min(1.0, (self.step + 1) / w) if w > 0 else base

    def _set_lr(self) -> None:
        for engine, base in ((self.actor, self.cfg.lr), (self.critic, self.cfg.critic_lr)):
            if engine is not None:
                for group in engine.optimizer.param_groups:
                    group["lr"] = self._lr(base)

    # ----- one iteration -----
    def train_step(self) -> dict[str, float]:
        cfg = self.cfg
        t0 = time.perf_counter()

        # 1. Sample prompts and roll out num_generations trajectories per prompt.
        prompts = self._next_prompts()
        requests = [item for item in prompts for _ in range(cfg.num_generations)]
        with E.gathered(self.actor) as module:
            module.eval()
            samples = self.rollout_fn(module, requests)
        if len(samples) != len(requests):
            raise ValueError(f"rollout_fn returned {len(samples)} samples for {len(requests)} requests")
        t_rollout = time.perf_counter() - t0

        # 2. Rewards are in Sample.reward; collate and score every response token under the
        #    CURRENT actor (never the rollout engine's log-probs), the reference, and the critic.
        batch = collate(samples, mask_retrieved=cfg.mask_retrieved).to(self.device)
        rewards = batch["rewards"]
        if cfg.filter_groups:
            # DAPO's dynamic sampling, without re-sampling: a group whose rewards are all equal has zero
            # advantage, so it only dilutes the loss and costs scoring and update time.
            keep = informative_rows(rewards, batch.group_ids)
            batch = batch.select(keep) if keep else None
        gas = cfg.deepspeed.gradient_accumulation_steps
        if batch is None or len(batch) < gas:
            return self._finish_step(samples, rewards, None, {}, t0, t_rollout, 0.0, 0.0)
        # One epoch of one minibatch is on-policy: the old policy is the current one, so its log-probs
        # come from the update's own forward pass (ratio 1, as verl does) instead of a separate pass.
        on_policy = cfg.ppo_epochs == 1 and len(self._minibatches(len(batch), 0)) == 1 and not self.kl_in_reward
        self.actor.eval()
        entropy = None
        if not on_policy:
            old_logp, entropy = logprobs_of(self.actor, batch, self.micro_batch_size, self.temperature)
            batch["old_logp"] = old_logp.to(self.device)
        mask = batch["loss_mask"]
        critic_mask = batch["generated_mask"] if cfg.mask_critic else batch["valid_mask"]
        token_rewards = batch["token_rewards"]
        kl = torch.zeros((), device=self.device)
        if self.ref is not None:
            ref_logp, _ = logprobs_of(self.ref, batch, self.micro_batch_size, self.temperature, with_entropy=False)
            batch["ref_logp"] = ref_logp.to(self.device)
            if not on_policy:
                kl = masked_mean(kl_penalty(batch["old_logp"], batch["ref_logp"], cfg.kl_estimator), mask)
            if self.kl_in_reward:  # per-token k1 penalty, an unbiased reward shaping term
                token_rewards = token_rewards - cfg.kl_coef * kl_penalty(batch["old_logp"], batch["ref_logp"], "k1") * mask

        # 3. Advantages.
        if cfg.algorithm == "ppo":
            self.critic.eval()
            batch["old_values"] = values_of(self.critic, batch, self.micro_batch_size).to(self.device)
            batch["advantages"], batch["returns"] = compute_gae(
                token_rewards, batch["old_values"], critic_mask, cfg.gamma, cfg.lam
            )
            batch["advantages"] = batch["advantages"] * mask
        elif cfg.algorithm == "grpo":
            adv = group_advantages(batch["rewards"], batch.group_ids).to(self.device)
            batch["advantages"] = adv[:, None] * mask
        else:
            batch["advantages"], _ = reinforce_pp_advantages(token_rewards, mask, cfg.gamma)

        # 4. ppo_epochs passes of shuffled minibatch updates.
        t_update = time.perf_counter()
        self._set_lr()
        stats = self._update(batch)
        t_update = time.perf_counter() - t_update

        # 5. Weight sync to the rollout engine.
        t_sync = time.perf_counter()
        self._sync_weights()
        t_sync = time.perf_counter() - t_sync
        if not on_policy:  # else the update measured them on the same rows
            stats |= {"kl": kl.item(), "entropy": masked_mean(entropy.to(self.device), mask).item()}
        return self._finish_step(samples, rewards, batch, stats, t0, t_rollout, t_update, t_sync)

    def _finish_step(self, samples: list[Sample], rewards: torch.Tensor, batch: Batch | None, stats: dict,
                     t0: float, t_rollout: float, t_update: float, t_sync: float) -> dict[str, float]:
        """Advance the step counter and return the step's metrics (rewards over every sample; losses,
        KL and entropy over the rows that were trained on)."""
        cfg = self.cfg
        self.step += 1
        step_time = time.perf_counter() - t0
        trained = len(batch) if batch is not None else 0
        searches = sum(s.num_searches for s in samples)
        n_tokens = sum(len(s.response_ids) for s in samples)
        # Every step logs the same keys (DVC plots read rows alike): 0 where no row was trained on.
        untrained = ("kl", "entropy", "policy_loss", "kl_loss", "clip_frac", "approx_kl", "grad_norm")
        untrained += ("value_loss", "value_clip_frac") if self.critic is not None else ()
        return {
            "reward_mean": rewards.mean().item(),
            "reward_std": rewards.std().item() if len(rewards) > 1 else 0.0,
            "score": (rewards >= 1).float().mean().item(),
            **dict.fromkeys(untrained, 0.0),
            **stats,
            "lr": self._lr(cfg.lr),
            "samples_trained": float(trained),
            "response_length": n_tokens / len(samples),
            "generated_length": sum(sum(s.response_mask) for s in samples) / len(samples),
            "searches_per_sample": searches / len(samples),
            "valid_search_ratio": searches / max(1, searches + sum(s.num_invalid for s in samples)),
            "finished_ratio": sum(s.finished for s in samples) / len(samples),
            "tokens_per_s": n_tokens / step_time,
            "rollout_time": t_rollout,
            "scoring_time": step_time - t_rollout - t_update - t_sync,  # old/reference log-probs, values, advantages
            "update_time": t_update,
            "sync_time": t_sync,
            "step_time": step_time,
            "data_epoch": float(self.data_epoch),
        }

    def _minibatches(self, n_rows: int, epoch: int) -> list[list[int]]:
        """Shuffled row indices in minibatches of about ``train.minibatch_size`` (fewer rows than a full
        batch when groups were filtered), each with at least one row per gradient-accumulation step."""
        cfg, gas = self.cfg, self.cfg.deepspeed.gradient_accumulation_steps
        # Shuffle from (seed, step, epoch) alone, so a resumed run shuffles identically.
        gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + self.step * 1009 + epoch)
        perm = torch.randperm(n_rows, generator=gen)
        n = max(1, min(round(n_rows / cfg.minibatch_size), n_rows // gas))
        return [part.tolist() for part in torch.tensor_split(perm, n)]

    def _update(self, batch: Batch) -> dict[str, float]:
        """``ppo_epochs`` passes of minibatch updates. A minibatch is exactly ``gas`` micro-batches, so it
        ends on one optimizer step, and its loss is aggregated over the whole minibatch (``train.loss_agg``)
        whatever the micro-batch split: DeepSpeed divides each micro-batch loss by gas, we multiply back."""
        cfg, sums, n_minibatches = self.cfg, {}, 0
        gas = cfg.deepspeed.gradient_accumulation_steps
        critic_key = "generated_mask" if cfg.mask_critic else "valid_mask"
        self.actor.train()
        if self.critic is not None:
            self.critic.train()
        for epoch in range(cfg.ppo_epochs):
            for rows in self._minibatches(len(batch), epoch):
                minibatch = batch.select(rows)
                agg = Aggregation.over(cfg.loss_agg, minibatch["loss_mask"])
                critic_agg = Aggregation.over(cfg.loss_agg, minibatch[critic_key])
                stats: dict[str, float] = {}
                for mb in minibatch.split(gas):
                    m = mb["loss_mask"]
                    on_policy = "old_logp" not in mb.tensors
                    # The full-vocabulary entropy is costly: build its graph only when it is in the loss.
                    logp, ent = forward_logprobs(
                        self.actor, mb, self.temperature, with_entropy=cfg.entropy_coef > 0 or on_policy,
                        entropy_grad=cfg.entropy_coef > 0,
                    )
                    old_logp = logp.detach() if on_policy else mb["old_logp"]
                    pg_loss, clip_frac, approx_kl = clipped_policy_loss(
                        logp, old_logp, mb["advantages"], m, cfg.clip_range, agg
                    )
                    loss = pg_loss
                    if cfg.entropy_coef > 0:
                        loss = loss - cfg.entropy_coef * agg(ent, m)
                    kl_loss = torch.zeros(())
                    if self.use_kl_loss:
                        kl_loss = agg(kl_penalty(logp, mb["ref_logp"], cfg.kl_estimator), m)
                        loss = loss + cfg.kl_coef * kl_loss
                    self.actor.backward(loss * gas)
                    self.actor.step()
                    step_stats = {
                        "policy_loss": pg_loss.item(),
                        "kl_loss": kl_loss.item(),
                        "clip_frac": clip_frac.item(),
                        "approx_kl": approx_kl.item(),
                    }
                    if on_policy:  # the sampling policy's KL and entropy, measured by this very pass
                        with torch.no_grad():
                            step_stats["entropy"] = agg(ent, m).item()
                            if "ref_logp" in mb.tensors:
                                step_stats["kl"] = agg(kl_penalty(old_logp, mb["ref_logp"], cfg.kl_estimator), m).item()
                    if self.critic is not None:
                        values = hidden_or_logits(self.critic, mb)
                        v_loss, v_clip = value_loss(
                            values, mb["old_values"], mb["returns"], mb[critic_key], cfg.clip_range_value, critic_agg
                        )
                        self.critic.backward(v_loss * gas)
                        self.critic.step()
                        step_stats |= {"value_loss": v_loss.item(), "value_clip_frac": v_clip.item()}
                    for k, v in step_stats.items():  # micro-batch shares add up to the minibatch's value
                        stats[k] = stats.get(k, 0.0) + v
                stats["grad_norm"] = float(self.actor.get_global_grad_norm() or 0.0)
                for k, v in stats.items():
                    sums[k] = sums.get(k, 0.0) + v
                n_minibatches += 1
        return {k: v / max(n_minibatches, 1) for k, v in sums.items()}

    def _sync_weights(self) -> None:
        """Push new weights to an external rollout engine; the HF engine shares the actor module."""
        if self.sync_fn is None:
            return
        state = E.full_state_dict(self.actor)  # collective under ZeRO-3: every rank calls it
        if _rank() != 0:
            return
        error: list[BaseException] = []

        def push() -> None:
            try:
                self.sync_fn(state)
            except BaseException as exc:  # re-raised in the training thread below
                error.append(exc)

        # A daemon thread: a hung engine cannot keep the process alive after we raise.
        thread = threading.Thread(target=push, daemon=True, name="weight-sync")
        thread.start()
        thread.join(self.cfg.sync_timeout_s)
        if thread.is_alive():
            raise WeightSyncError(
                f"weight sync to the rollout engine did not finish within {self.cfg.sync_timeout_s:g} s "
                f"(train.sync_timeout_s) at step {self.step}"
            )
        if error:
            raise WeightSyncError(f"weight sync to the rollout engine failed at step {self.step}: {error[0]!r}") from error[0]

    # ----- loop -----
    def train(self, resume: bool = False) -> list[dict[str, float]]:
        """Run until ``train.steps``; ``resume=True`` continues exactly from the latest checkpoint."""
        cfg = self.cfg
        if resume and (Path(cfg.out_dir) / "latest.json").exists():
            self.load_checkpoint()
        bar = tqdm(total=cfg.steps, initial=self.step, desc=f"{cfg.algorithm} steps", disable=_rank() != 0)
        while self.step < cfg.steps:
            metrics = self.train_step()
            reasons = self.guard.check(metrics)
            metrics["collapse"] = float(bool(reasons))
            if self.eval_fn is not None and self.step % cfg.eval_every == 0:
                with E.gathered(self.actor) as module:
                    module.eval()
                    metrics |= {f"eval/{k}": float(v) for k, v in self.eval_fn(module).items()}
            self.history.append(metrics)
            if self.log_fn is not None and _rank() == 0:
                self.log_fn(metrics, self.step)
            bar.update(1)
            bar.set_postfix(reward=f"{metrics['reward_mean']:.3f}", kl=f"{metrics['kl']:.3g}")
            if self.step % cfg.save_every == 0:
                self.save_checkpoint()
            if reasons:
                log.warning("step %d: %s", self.step, "; ".join(reasons))
                if cfg.stop_on_collapse:
                    if self.step % cfg.save_every:
                        self.save_checkpoint()
                    raise CollapseError(f"step {self.step}: " + "; ".join(reasons))
        bar.close()
        self.save_final()
        return self.history

    # ----- checkpoints -----
    def save_checkpoint(self) -> Path:
        """Write ``out_dir/step_N`` (engines + RNG + data position) via a temp dir, then point latest.json at it."""
        out = Path(self.cfg.out_dir)
        name = f"step_{self.step:06d}"
        final, tmp = out / name, out / f".{name}.tmp"
        if _rank() == 0:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        _barrier()
        # DeepSpeed checkpoints hold the fp32 master weights and optimizer state: reload is exact.
        self.actor.save_checkpoint(str(tmp / "actor"), tag="ds", save_latest=False)
        if self.critic is not None:
            self.critic.save_checkpoint(str(tmp / "critic"), tag="ds", save_latest=False)
        state = {
            "step": self.step,
            "data_epoch": self.data_epoch,
            "data_pos": self.data_pos,
            "guard": self.guard.state_dict(),
            "history": self.history,
            "rng": _rng_state(),
        }
        torch.save(state, tmp / f"trainer_state_rank{_rank()}.pt")
        _barrier()
        if _rank() == 0:
            shutil.rmtree(final, ignore_errors=True)
            tmp.rename(final)
            previous = read_json(out / "latest.json")["path"] if (out / "latest.json").exists() else None
            write_json(out / "latest.json", {"step": self.step, "path": name})
            if previous and previous != name:  # keep only the newest checkpoint
                shutil.rmtree(out / previous, ignore_errors=True)
        _barrier()
        return final

    def load_checkpoint(self) -> None:
        out = Path(self.cfg.out_dir)
        path = out / read_json(out / "latest.json")["path"]
        for engine, sub in ((self.actor, "actor"), (self.critic, "critic")):
            if engine is None:
                continue
            loaded, _ = engine.load_checkpoint(str(path / sub), tag="ds", load_lr_scheduler_states=False)
            if loaded is None:
                raise FileNotFoundError(f"{path / sub}: no DeepSpeed checkpoint to resume from")
        state = torch.load(path / f"trainer_state_rank{_rank()}.pt", weights_only=False)
        self.step, self.data_epoch, self.data_pos = state["step"], state["data_epoch"], state["data_pos"]
        self.guard.load_state_dict(state["guard"])
        self.history = state["history"]
        _set_rng_state(state["rng"])
        log.info("resumed from %s at step %d", path, self.step)

    def save_final(self) -> Path:
        """Save the policy (HF ``save_pretrained`` + tokenizer) atomically to ``train.final_dir``."""
        state = E.full_state_dict(self.actor)
        final = Path(self.cfg.final_dir)
        if _rank() == 0:
            with atomic_path(final) as tmp:
                self.actor.module.save_pretrained(tmp, state_dict=state)
                if self.tokenizer is not None:
                    self.tokenizer.save_pretrained(tmp)
        _barrier()
        return final


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
