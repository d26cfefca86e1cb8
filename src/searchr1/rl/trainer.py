"""RL trainer (PPO / GRPO / REINFORCE++) on DeepSpeed: rollout → rewards → scores → advantages →
updates → weight sync, data-parallel over any number of ranks.

``train_step`` reads top to bottom as the phases of one iteration, cleanrl style; the roles it calls
are small: ``Actor`` (rl/actor.py), ``Critic`` (rl/critic.py), ``Reference`` (rl/reference.py), the
reward (rl/reward.py) and the rollout worker (rl/rollout_worker.py, or any function of the same shape).

Data parallelism: every rank draws the same global prompt list each step and rolls out its own
contiguous share (rl/prompts.py); a sample's sampling seed depends on the step and the sample, never
on the rank. Losses are normalised by counts over all ranks, so N ranks make the same update as one
rank on the whole batch; metrics are reduced over ranks.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
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

from searchr1 import distributed as dist
from searchr1.config import Settings
from searchr1.errors import SearchR1Error
from searchr1.io import atomic_path, read_json, write_json
from searchr1.models import lora
from searchr1.models.precision import resolve_dtype
from searchr1.rl import deepspeed_engines as ds
from searchr1.rl.actor import Actor
from searchr1.rl.batch import Batch, collate
from searchr1.rl.core import explained_variance, kl_penalty, turn_of_position
from searchr1.rl.critic import Critic, build_value_model
from searchr1.rl.grpo import group_advantages, informative_rows
from searchr1.rl.guard import CollapseGuard
from searchr1.rl.ppo import compute_gae
from searchr1.rl.prompts import PromptSampler, shard
from searchr1.rl.reference import Reference
from searchr1.rl.reinforce_pp import reinforce_pp_advantages
from searchr1.rl.reward import token_rewards
from searchr1.rollout.types import Sample

log = logging.getLogger(__name__)

# rollout(module, requests, step) -> one Sample per request, in order, with group_id and reward set.
RolloutFn = Callable[[torch.nn.Module, list[Any], int], list[Sample]]
# The update statistics every step logs (0 where no row was trained on), summed over ranks' shares.
UPDATE_KEYS = ("policy_loss", "kl_loss", "clip_frac", "approx_kl", "entropy", "kl")
CRITIC_KEYS = ("value_loss", "value_clip_frac")
# How much of the returns' variance the critic explains before the update: over all its positions, and over
# those after 0, 1 and 2+ retrieved blocks (the first is the critic's guess from the question alone).
# And the mean of returns - values there (> 0: the critic is too pessimistic at that point).
CRITIC_SCORES = ("explained_variance",) + tuple(f"{m}_turn{k}" for m in ("explained_variance", "value_error") for k in range(3))
# The actor's signal on one-search and on multi-search trajectories: the mean over samples of the summed advantage
# (a token-weighted baseline with no critic pushes the longer, multi-search ones down: docs/results.md, issue 31).
ADVANTAGE_KEYS = ("advantage_one_search", "advantage_more_searches")


class CollapseError(SearchR1Error, RuntimeError):
    """Training collapsed and ``train.stop_on_collapse`` is set; a checkpoint was saved first."""


class WeightSyncError(SearchR1Error, RuntimeError):
    """Pushing the new weights to the rollout engine failed or did not finish in ``train.sync_timeout_s``."""


class RLTrainer:
    """Train ``model`` on prompts ``items`` with rewards computed by ``rollout``.

    ``rollout(module, requests, step)`` gets this rank's prompt items, each repeated
    ``num_generations`` times (adjacent), and returns one ``Sample`` per request, in order, with
    ``group_id`` = the prompt's id and ``reward`` filled in. ``sync_fn(buckets)``, if given, pushes
    new weights to this rank's external rollout engine (e.g. vLLM) after each update and after a resume:
    ``buckets`` yields lists of (name, full tensor) of about ``train.sync_bucket_mb`` each (under ZeRO-3
    gathered one bucket at a time). With it the rollout gets the actor module ungathered (the engine
    generates, not the module); without it rollouts use the actor module itself, gathered.
    ``log_fn(metrics, step)`` receives every step's metrics on rank 0; ``eval_fn(module) -> dict`` runs every ``train.eval_every`` steps on every rank (give each
    rank its share of the held-out set and an ``n`` entry: results are averaged weighted by ``n``).
    """

    def __init__(
        self,
        settings: Settings,
        model: torch.nn.Module,
        tokenizer: Any,
        rollout: RolloutFn,
        items: list[Any],
        log_fn: Callable[[dict[str, float], int], None] | None = None,
        eval_fn: Callable[[torch.nn.Module], dict[str, float]] | None = None,
        sync_fn: Callable[[Mapping[str, torch.Tensor]], None] | None = None,
    ):
        cfg = self.cfg = settings.train
        ds.init_distributed()
        self.rank, self.world_size = dist.rank(), dist.world_size()
        self.micro_batch_size = _micro_batch_size(cfg, self.world_size)
        self.temperature = settings.rollout.temperature if settings.rollout.temperature > 0 else 1.0
        self.tokenizer, self.rollout, self.log_fn, self.eval_fn, self.sync_fn = tokenizer, rollout, log_fn, eval_fn, sync_fn
        self.prompts = PromptSampler(items, cfg.prompts_per_step, cfg.seed)

        _seed_everything(cfg.seed)
        self.device = ds.device()
        # bf16 where the device has it (models/precision.py): DeepSpeed's bf16 mode on a GPU, autocast on a CPU
        dtype = self.compute_dtype = resolve_dtype(settings.policy, self.device)
        lora_cfg = cfg.lora if cfg.lora.enabled else None
        # Copies are taken before DeepSpeed wraps (and under ZeRO-3 partitions) the actor, and before LoRA adapts
        # it. With LoRA the reference is the actor itself with its adapters off: no copy.
        ref = copy.deepcopy(model) if cfg.kl_coef > 0 and lora_cfg is None else None
        value_model = build_value_model(model, lora_cfg) if cfg.algorithm == "ppo" else None
        # LoRA: adapters on the actor's target layers, every base weight frozen; only the adapters reach the
        # optimizer (setup_engine passes the parameters that require a gradient) under every ZeRO stage.
        self.adapter = lora.add_lora(model, lora_cfg, "train.lora") if lora_cfg is not None else None
        self.actor = Actor(
            ds.setup_engine(model, cfg.deepspeed, cfg.lr, self.micro_batch_size, compute_dtype=dtype), cfg,
            self.temperature, self.micro_batch_size, use_kl_loss=cfg.kl_coef > 0 and not cfg.kl_in_reward,
            compute_dtype=dtype,
        )
        self.reference = self._reference(ref, dtype)
        self.critic = (
            Critic(ds.setup_engine(value_model, cfg.deepspeed, cfg.critic_lr, self.micro_batch_size, compute_dtype=dtype),
                   cfg, self.micro_batch_size, compute_dtype=dtype)
            if value_model is not None else None
        )
        self.guard = CollapseGuard(cfg.collapse_min_entropy, cfg.collapse_max_kl, cfg.collapse_reward_drop)
        self.step = 0
        self.history: list[dict[str, float]] = []
        self.last_samples: list[Sample] = []  # the last step's samples of every rank (filled on rank 0)

    def _reference(self, ref: torch.nn.Module | None, dtype: str) -> Reference | None:
        """The KL reference (none without a KL term): a frozen copy of the initial policy, or with LoRA the
        actor engine with its adapters disabled, which is exactly the initial policy."""
        cfg = self.cfg
        if cfg.kl_coef == 0:
            return None
        if self.adapter is not None:
            return Reference(self.actor.engine, self.temperature, self.micro_batch_size, cfg.logprob_chunk,
                             compute_dtype=dtype, as_reference=self.adapter.disable_adapter)
        return Reference(ds.setup_reference(ref, cfg.deepspeed, dtype), self.temperature, self.micro_batch_size,
                         cfg.logprob_chunk, compute_dtype=dtype)

    # ----- one iteration -----
    def train_step(self) -> dict[str, float]:
        cfg = self.cfg
        t0 = time.perf_counter()

        # 1. Rollout: this rank's share of the step's prompts, num_generations trajectories each.
        prompts = shard(self.prompts.next_prompts(), self.rank, self.world_size)
        requests = [item for item in prompts for _ in range(cfg.num_generations)]
        with self._rollout_module() as module:
            samples = self.rollout(module, requests, self.step)
        if len(samples) != len(requests):
            raise ValueError(f"rollout returned {len(samples)} samples for {len(requests)} requests")
        if self.step + 1 == cfg.steps:
            self._keep_last_samples(samples)
        t_rollout = time.perf_counter() - t0

        # 2. Rewards are in Sample.reward. Keep the groups that carry a signal (DAPO's dynamic sampling,
        #    without re-sampling): a group whose rewards are all equal has zero advantage under GRPO.
        full = collate(samples, mask_retrieved=cfg.mask_retrieved).to(self.device)
        batch = full.select(informative_rows(full.rewards, full.group_ids)) if cfg.filter_groups else full
        rows = int(dist.all_reduce_sum(torch.tensor([len(batch)]))[0])
        if rows == 0:  # nothing to learn from this step
            return self._finish_step(samples, 0, {}, t0, t_rollout, 0.0, 0.0)
        # Every rank must run the same number of forward/backward passes (gradient reductions, ZeRO-3
        # parameter gathers): pad each rank to the same row count with rows that weigh nothing.
        batch = batch.padded(max(dist.all_reduce_max(len(batch)), cfg.deepspeed.gradient_accumulation_steps), like=full)
        minibatches = self._minibatches(len(batch))

        # 3. Scores under the current actor (never the rollout engine's log-probs), the reference and
        #    the critic. One epoch of one minibatch is on-policy: the update's own forward pass gives
        #    the old log-probs (ratio 1, as verl does), so there is no separate pass.
        on_policy = cfg.ppo_epochs == 1 and len(minibatches[0]) == 1 and not cfg.kl_in_reward
        scores: dict[str, float] = {}
        if not on_policy:
            batch.old_logp, entropy = (t.to(self.device) for t in self.actor.logprobs(batch))
            scores["entropy"] = _global_mean(entropy, batch.loss_mask)
        if self.reference is not None:
            batch.ref_logp = self.reference.logprobs(batch).to(self.device)
            if not on_policy:
                scores["kl"] = _global_mean(kl_penalty(batch.old_logp, batch.ref_logp, cfg.kl_estimator), batch.loss_mask)

        # 4. Rewards per token, and advantages.
        rewards = token_rewards(batch, cfg.kl_coef if cfg.kl_in_reward else 0.0, cfg.kl_estimator)
        turn = turn_of_position(batch.generated_mask, batch.valid_mask)  # retrieved blocks before each position
        if cfg.algorithm == "ppo":
            batch.old_values, mask = self.critic.values(batch).to(self.device), self.critic.mask(batch)
            advantages, batch.returns = compute_gae(rewards, batch.old_values, mask, cfg.gamma, cfg.lam)
            scores["explained_variance"] = explained_variance(batch.old_values, batch.returns, mask)
            capped = turn.clamp(max=2)
            for k in range(3):
                at_turn = mask * (capped == k)
                scores[f"explained_variance_turn{k}"] = explained_variance(batch.old_values, batch.returns, at_turn)
                scores[f"value_error_turn{k}"] = _global_mean(batch.returns - batch.old_values, at_turn)
            batch.advantages = advantages * batch.loss_mask
        elif cfg.algorithm == "grpo":
            batch.advantages = group_advantages(batch.rewards, batch.group_ids).to(self.device)[:, None] * batch.loss_mask
        else:
            batch.advantages, _ = reinforce_pp_advantages(rewards, batch.loss_mask, cfg.gamma)

        searches = turn[:, -1]
        summed = batch.advantages.sum(1)  # every branch above leaves advantages 0 off the loss mask
        scores["advantage_one_search"] = _global_mean(summed, (searches == 1).float())
        scores["advantage_more_searches"] = _global_mean(summed, (searches >= 2).float())

        # 5. ppo_epochs passes of minibatch updates (actor, then critic, one optimizer step each).
        t_update = time.perf_counter()
        self._set_lr()
        stats = self._update(batch, minibatches)
        t_update = time.perf_counter() - t_update

        # 6. Weight sync to this rank's rollout engine.
        t_sync = time.perf_counter()
        self._sync_weights()
        t_sync = time.perf_counter() - t_sync
        return self._finish_step(samples, rows, stats | scores, t0, t_rollout, t_update, t_sync)

    def _minibatches(self, local_rows: int, epochs: int | None = None) -> list[list[list[int]]]:
        """Per epoch (``train.ppo_epochs`` unless given), this rank's rows in shuffled minibatches of about
        ``train.minibatch_size`` rows over all ranks, each with at least one row per accumulation step
        (ranks hold equal row counts)."""
        cfg, gas = self.cfg, self.cfg.deepspeed.gradient_accumulation_steps
        n = max(1, min(round(local_rows * self.world_size / cfg.minibatch_size), local_rows // gas))
        out = []
        for epoch in range(epochs or cfg.ppo_epochs):
            # Shuffle from (seed, step, epoch, rank) alone, so a resumed run shuffles identically.
            gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + self.step * 1009 + epoch * 31 + self.rank)
            perm = torch.randperm(local_rows, generator=gen)
            out.append([part.tolist() for part in torch.tensor_split(perm, n)])
        return out

    def _update(self, batch: Batch, minibatches: list[list[list[int]]]) -> dict[str, float]:
        """The actor's minibatch updates, then the critic's (``train.critic_epochs`` passes), with
        statistics summed over ranks and averaged over each role's minibatches."""
        cfg = self.cfg
        stats = dict.fromkeys(UPDATE_KEYS, 0.0) | {"grad_norm": 0.0, "actor_trained": 0.0}
        if self.critic is None or self.step >= cfg.critic_warmup:  # PPO's first steps may fit only the critic
            stats = self._average(UPDATE_KEYS, [self.actor.update(batch.select(rows)) for e in minibatches for rows in e])
            stats["actor_trained"] = 1.0
        if self.critic is not None:
            passes = self._minibatches(len(batch), cfg.critic_epochs) if cfg.critic_epochs else minibatches
            stats |= self._average(CRITIC_KEYS, [self.critic.update(batch.select(rows)) for e in passes for rows in e])
        return stats

    @staticmethod
    def _average(keys: tuple[str, ...], updates: list[dict[str, float]]) -> dict[str, float]:
        """Each key's mean over the updates, summed over ranks (each rank's share of a minibatch's mean adds
        up to it); grad_norm, where present, is this rank's mean."""
        totals = torch.tensor([[u.get(k, 0.0) for k in keys] for u in updates], dtype=torch.float64).sum(0)
        out = dict(zip(keys, (dist.all_reduce_sum(totals) / len(updates)).tolist()))
        norms = [u["grad_norm"] for u in updates if "grad_norm" in u]
        return out | ({"grad_norm": float(np.mean(norms))} if norms else {})

    def _finish_step(self, samples: list[Sample], trained: int, stats: dict, t0: float, t_rollout: float,
                     t_update: float, t_sync: float) -> dict[str, float]:
        """Advance the step counter and return the step's metrics, reduced over ranks: rewards over every
        sample; losses, KL and entropy over the rows trained on."""
        self.step += 1
        step_time = time.perf_counter() - t0
        rewards = [s.reward for s in samples]
        sums = dist.all_reduce_sum(torch.tensor([
            len(samples), sum(rewards), sum(r * r for r in rewards), sum(r >= 1 for r in rewards),
            sum(len(s.response_ids) for s in samples), sum(sum(s.response_mask) for s in samples),
            sum(s.num_searches for s in samples), sum(s.num_invalid for s in samples), sum(s.finished for s in samples),
        ], dtype=torch.float64)).tolist()
        n, reward, reward_sq, score, tokens, generated, searches, invalid, finished = sums
        variance = (reward_sq - reward * reward / n) / (n - 1) if n > 1 else 0.0
        critic = CRITIC_KEYS + CRITIC_SCORES if self.critic is not None else ()
        untrained = UPDATE_KEYS + ("grad_norm", "actor_trained") + ADVANTAGE_KEYS + critic
        return {
            "reward_mean": reward / n,
            "reward_std": max(variance, 0.0) ** 0.5,
            "score": score / n,
            **dict.fromkeys(untrained, 0.0),  # every step logs the same keys (DVC plots read rows alike)
            **stats,
            "lr": self.actor.engine.optimizer.param_groups[0]["lr"],  # the rate this step's update used
            "samples_trained": float(trained),
            "response_length": tokens / n,
            "generated_length": generated / n,
            "searches_per_sample": searches / n,
            "valid_search_ratio": searches / max(1.0, searches + invalid),
            "finished_ratio": finished / n,
            "tokens_per_s": tokens / step_time,  # all ranks' tokens
            "rollout_time": t_rollout,
            "scoring_time": step_time - t_rollout - t_update - t_sync,  # old/reference log-probs, values, advantages
            "update_time": t_update,
            "sync_time": t_sync,
            "step_time": step_time,
            "data_epoch": float(self.prompts.epoch),
        }

    def _keep_last_samples(self, samples: list[Sample]) -> None:
        """Gather every rank's samples of the final step onto rank 0, each tagged with its rank."""
        for s in samples:
            s.rank = self.rank
        gathered = dist.all_gather_objects(samples)
        self.last_samples = [s for part in gathered for s in part] if self.rank == 0 else []

    def _lr(self, base: float) -> float:
        """The learning rate of the current step: linear warmup over ``warmup_steps``, then ``lr_schedule``."""
        cfg, step = self.cfg, self.step
        if step < cfg.warmup_steps:
            return base * (step + 1) / cfg.warmup_steps
        if cfg.lr_schedule == "constant":
            return base
        # Decay from the end of warmup to 0 after the last step (the last step still trains: 1/n of base).
        left = (cfg.steps - step) / max(1, cfg.steps - cfg.warmup_steps)
        return base * (left if cfg.lr_schedule == "linear" else 0.5 * (1 - math.cos(math.pi * left)))

    def _set_lr(self) -> None:
        for role, base in ((self.actor, self.cfg.lr), (self.critic, self.cfg.critic_lr)):
            if role is not None:
                for group in role.engine.optimizer.param_groups:
                    group["lr"] = self._lr(base)

    @contextlib.contextmanager
    def _rollout_module(self):
        """The actor module for a rollout or evaluation: gathered whole (ZeRO-3) only when it generates
        itself; an external engine (``sync_fn``) already holds the weights."""
        if self.sync_fn is not None:
            yield ds.unwrapped(self.actor.engine).eval()
            return
        with ds.gathered(self.actor.engine) as module:
            yield module.eval()

    def _sync_weights(self) -> None:
        """Push the new weights to every rank's external rollout engine (the HF engine shares the actor
        module) in buckets, within ``train.sync_timeout_s``; if any rank fails, every rank raises."""
        if self.sync_fn is None:
            return
        buckets = ds.parameter_buckets(self.actor.engine, self.cfg.sync_bucket_mb << 20)
        error: list[BaseException] = []

        def push() -> None:
            try:
                self.sync_fn(buckets)
            except BaseException as exc:  # re-raised in the training thread below
                error.append(exc)
            finally:
                for _ in buckets:  # take the remaining buckets: under ZeRO-3 each is a collective of all ranks
                    pass

        # A daemon thread: a hung engine cannot keep the process alive after we raise.
        thread = threading.Thread(target=push, daemon=True, name="weight-sync")
        thread.start()
        thread.join(self.cfg.sync_timeout_s)
        if thread.is_alive():
            error.append(TimeoutError(f"did not finish within {self.cfg.sync_timeout_s:g} s (train.sync_timeout_s)"))
        if dist.any_rank(bool(error)):
            where = f"rank {self.rank}: {error[0]}" if error else "another rank failed"
            raise WeightSyncError(f"weight sync to the rollout engine failed at step {self.step + 1} ({where})")

    # ----- loop -----
    def train(self, resume: bool = False) -> list[dict[str, float]]:
        """Run until ``train.steps``; ``resume=True`` continues exactly from the latest checkpoint."""
        cfg = self.cfg
        if resume and (Path(cfg.out_dir) / "latest.json").exists():
            self.load_checkpoint()
            self._sync_weights()  # the rollout engine still holds the initial weights
        bar = tqdm(total=cfg.steps, initial=self.step, desc=f"{cfg.algorithm} steps", disable=self.rank != 0)
        while self.step < cfg.steps:
            metrics = self.train_step()
            reasons = self.guard.check(metrics)
            metrics["collapse"] = float(bool(reasons))
            if self.eval_fn is not None and self.step % cfg.eval_every == 0:
                metrics |= self._evaluate()
            self.history.append(metrics)
            if self.log_fn is not None and self.rank == 0:
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

    def _evaluate(self) -> dict[str, float]:
        """``eval_fn`` on every rank's share, averaged weighted by each share's ``n``."""
        with self._rollout_module() as module:
            result = self.eval_fn(module)
        n = float(result.get("n", 1.0))
        keys = sorted(k for k in result if k != "n")
        sums = dist.all_reduce_sum(torch.tensor([n] + [n * float(result[k]) for k in keys], dtype=torch.float64))
        return {f"eval/{k}": (sums[i + 1] / max(sums[0], 1.0)).item() for i, k in enumerate(keys)}

    # ----- checkpoints -----
    def save_checkpoint(self) -> Path:
        """Write ``out_dir/step_N`` (engines + per-rank RNG + data position) via a temp dir, then point
        latest.json at it."""
        out = Path(self.cfg.out_dir)
        name = f"step_{self.step:06d}"
        final, tmp = out / name, out / f".{name}.tmp"
        if self.rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        dist.barrier()
        # DeepSpeed checkpoints hold the fp32 master weights and optimizer state: reload is exact. With LoRA only
        # the trained tensors (adapters, the critic's value head): the frozen base is the initial policy's.
        frozen = self.adapter is not None
        self.actor.engine.save_checkpoint(str(tmp / "actor"), tag="ds", save_latest=False, exclude_frozen_parameters=frozen)
        if self.critic is not None:
            self.critic.engine.save_checkpoint(str(tmp / "critic"), tag="ds", save_latest=False,
                                               exclude_frozen_parameters=frozen)
        state = {
            "step": self.step,
            "world_size": self.world_size,
            "prompts": self.prompts.state_dict(),
            "guard": self.guard.state_dict(),
            "history": self.history,
            "rng": _rng_state(),
        }
        torch.save(state, tmp / f"trainer_state_rank{self.rank}.pt")
        dist.barrier()
        if self.rank == 0:
            shutil.rmtree(final, ignore_errors=True)
            tmp.rename(final)
            previous = read_json(out / "latest.json")["path"] if (out / "latest.json").exists() else None
            write_json(out / "latest.json", {"step": self.step, "path": name, "world_size": self.world_size})
            if previous and previous != name:  # keep only the newest checkpoint
                shutil.rmtree(out / previous, ignore_errors=True)
        dist.barrier()
        return final

    def load_checkpoint(self) -> None:
        out = Path(self.cfg.out_dir)
        latest = read_json(out / "latest.json")
        saved_world = int(latest.get("world_size", 1))
        if saved_world != self.world_size:
            raise ValueError(
                f"{out / latest['path']}: saved by {saved_world} ranks, resumed with {self.world_size}; exact "
                "resume needs the same number of ranks (each rank's data share and RNG are in the checkpoint)"
            )
        path = out / latest["path"]
        for role, sub in ((self.actor, "actor"), (self.critic, "critic")):
            if role is None:
                continue
            loaded, _ = role.engine.load_checkpoint(str(path / sub), tag="ds", load_lr_scheduler_states=False,
                                                    load_module_strict=self.adapter is None)
            if loaded is None:
                raise FileNotFoundError(f"{path / sub}: no DeepSpeed checkpoint to resume from")
        state = torch.load(path / f"trainer_state_rank{self.rank}.pt", weights_only=False)
        self.step = state["step"]
        self.prompts.load_state_dict(state["prompts"])
        self.guard.load_state_dict(state["guard"])
        self.history = state["history"]
        _set_rng_state(state["rng"])
        log.info("resumed from %s at step %d", path, self.step)

    def save_final(self) -> Path:
        """Save the policy (HF ``save_pretrained`` + tokenizer) atomically to ``train.final_dir``; with LoRA the
        merged weights, and the adapter in ``final_dir/adapter`` (models/lora.py)."""
        state = ds.full_state_dict(self.actor.engine)
        final = Path(self.cfg.final_dir)
        if self.rank == 0:
            with atomic_path(final) as tmp:
                if self.adapter is None:
                    self.actor.engine.module.save_pretrained(tmp, state_dict=state)
                else:
                    lora.save_policy(self.actor.engine.module, self.adapter, state, tmp)
                if self.tokenizer is not None:
                    self.tokenizer.save_pretrained(tmp)
        dist.barrier()
        return final


def _micro_batch_size(cfg, world: int) -> int:
    """Rows per micro-batch on each rank: the global minibatch over accumulation steps and ranks."""
    gas = cfg.deepspeed.gradient_accumulation_steps
    if cfg.prompts_per_step % world:
        raise ValueError(f"train.prompts_per_step={cfg.prompts_per_step} must be divisible by the {world} ranks")
    if cfg.minibatch_size % (gas * world):
        raise ValueError(
            f"train.minibatch_size={cfg.minibatch_size} (global) must be divisible by "
            f"train.deepspeed.gradient_accumulation_steps={gas} x {world} ranks"
        )
    return cfg.minibatch_size // (gas * world)


def _global_mean(x: torch.Tensor, mask: torch.Tensor) -> float:
    """The masked mean of ``x`` over every rank's rows."""
    total, count = dist.all_reduce_sum(torch.stack([(x.float() * mask).sum(), mask.sum()]).float()).tolist()
    return total / max(count, 1.0)


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
