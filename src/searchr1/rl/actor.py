"""The actor: the policy being trained, one DeepSpeed engine.

It scores samples under its current weights and takes clipped policy-gradient steps with the KL loss
and the entropy bonus, all over the tokens the policy generated (``loss_mask``: retrieved tokens are
context, never targets). Forward passes compute in ``compute_dtype`` (bf16 autocast on a CPU over the fp32
weights, models/precision.py); backward runs outside autocast, log-probs and losses in float32.
"""

from __future__ import annotations

import torch
from torch import nn

from searchr1.config import TrainConfig
from searchr1.distributed import world_size
from searchr1.models.heads import can_share_prefix
from searchr1.models.precision import compute_autocast
from searchr1.rl.batch import Batch
from searchr1.rl.core import Aggregation, clipped_policy_loss, kl_penalty
from searchr1.rl.logprobs import forward_logprobs, logprobs_of


class Actor:
    def __init__(self, engine: nn.Module, cfg: TrainConfig, temperature: float, micro_batch_size: int,
                 use_kl_loss: bool, compute_dtype: str = "float32"):
        self.engine, self.cfg, self.temperature = engine, cfg, temperature
        self.micro_batch_size, self.use_kl_loss, self.compute_dtype = micro_batch_size, use_kl_loss, compute_dtype
        # A group's samples share their prompt: micro-batches by group run it once (models/heads.py).
        self.share_prefix = can_share_prefix(engine)

    def _autocast(self):
        return compute_autocast(self.compute_dtype, next(self.engine.parameters()).device)

    def logprobs(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(log-probs, entropy) of the response tokens under the current weights, no gradients."""
        self.engine.eval()
        with self._autocast():
            return logprobs_of(
                self.engine, batch, self.micro_batch_size, self.temperature, chunk_size=self.cfg.logprob_chunk,
                share_prefix=self.share_prefix,
            )

    def update(self, minibatch: Batch) -> dict[str, float]:
        """One optimizer step over ``minibatch`` (this rank's share), in ``gas`` length-sorted micro-batches.

        The loss is aggregated over the whole minibatch on every rank (``train.loss_agg``), so the
        update does not depend on how it is split. DeepSpeed divides each micro-batch's loss by gas and
        averages gradients over ranks: multiplying by both makes the shares add up to that loss.
        Returns this rank's shares of the minibatch's statistics.
        """
        cfg = self.cfg
        gas = cfg.deepspeed.gradient_accumulation_steps
        agg = Aggregation.over(cfg.loss_agg, minibatch.loss_mask)
        stats: dict[str, float] = {}
        self.engine.train()
        for mb in minibatch.split(gas, by_group=self.share_prefix):
            mask = mb.loss_mask
            # One epoch of one minibatch is on-policy: the sampling policy's log-probs are this pass's own.
            on_policy = mb.old_logp is None
            with self._autocast():
                logp, entropy = forward_logprobs(
                    self.engine, mb, self.temperature, with_entropy=cfg.entropy_coef > 0 or on_policy,
                    entropy_grad=cfg.entropy_coef > 0, chunk_size=cfg.logprob_chunk, share_prefix=self.share_prefix,
                )
            old_logp = logp.detach() if on_policy else mb.old_logp
            pg_loss, clip_frac, approx_kl = clipped_policy_loss(
                logp, old_logp, mb.advantages, mask, cfg.clip_range, agg
            )
            loss = pg_loss
            if cfg.entropy_coef > 0:
                loss = loss - cfg.entropy_coef * agg(entropy, mask)
            kl_loss = torch.zeros(())
            if self.use_kl_loss:
                kl_loss = agg(kl_penalty(logp, mb.ref_logp, cfg.kl_estimator), mask)
                loss = loss + cfg.kl_coef * kl_loss
            self.engine.backward(loss * gas * world_size())
            self.engine.step()
            shares = {
                "policy_loss": pg_loss.item(),
                "kl_loss": kl_loss.item(),
                "clip_frac": clip_frac.item(),
                "approx_kl": approx_kl.item(),
            }
            if on_policy:  # the sampling policy's entropy and KL, measured by this very pass
                with torch.no_grad():
                    shares["entropy"] = agg(entropy, mask).item()
                    if mb.ref_logp is not None:
                        shares["kl"] = agg(kl_penalty(old_logp, mb.ref_logp, cfg.kl_estimator), mask).item()
            for k, v in shares.items():  # micro-batch shares add up to the minibatch's value
                stats[k] = stats.get(k, 0.0) + v
        stats["grad_norm"] = float(self.engine.get_global_grad_norm() or 0.0)
        return stats
