"""Collate rollout Samples into padded tensors, and score response tokens under a model.

Layout: prompts left-padded to P, responses right-padded to R, ``input_ids = [prompt | response]``.
Position ``P-1+t`` predicts response token ``t``, so every ``[B, R]`` tensor here (masks, log-probs,
values, rewards) is aligned to the positions that PREDICT the response tokens (shifted by one).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from searchr1.rl.core import entropy_from_logits
from searchr1.rollout.types import Sample


SEQUENCE_KEYS = ("input_ids", "attention_mask", "position_ids")  # [B, P+R]; every other 2-d tensor is [B, R]


@dataclass
class Batch:
    """Padded tensors (``[B, P+R]`` sequence tensors, ``[B, R]`` response tensors) plus group ids."""

    tensors: dict[str, torch.Tensor]
    prompt_len: int
    group_ids: list[str] = field(default_factory=list)

    def __getitem__(self, key: str) -> torch.Tensor:
        return self.tensors[key]

    def __setitem__(self, key: str, value: torch.Tensor) -> None:
        self.tensors[key] = value

    def __len__(self) -> int:
        return self.tensors["input_ids"].shape[0]

    @property
    def response_len(self) -> int:
        return self.tensors["valid_mask"].shape[1]

    def select(self, idx: torch.Tensor | list[int]) -> Batch:
        """The rows ``idx``, without the columns that are padding in all of them: a sub-batch costs its
        own longest row, not the whole batch's."""
        idx = torch.as_tensor(idx, dtype=torch.long)
        rows = {k: v[idx] for k, v in self.tensors.items()}
        P, R = self.prompt_len, self.response_len
        p = int(rows["attention_mask"][:, :P].sum(1).max())
        r = int(rows["valid_mask"].sum(1).max())
        for k, v in rows.items():
            if k in SEQUENCE_KEYS:
                rows[k] = v[:, P - p : P + r]
            elif v.dim() == 2:  # response-aligned [B, R]
                rows[k] = v[:, :r]
        return Batch(rows, p, [self.group_ids[i] for i in idx])

    def chunks(self, size: int) -> list[Batch]:
        return [self.select(list(range(i, min(i + size, len(self))))) for i in range(0, len(self), size)]

    def split(self, parts: int) -> list[Batch]:
        """``parts`` sub-batches of near-equal size with rows grouped by length (less padding; summing
        gradients over them is the same gradient whatever the grouping)."""
        order = torch.argsort(self.tensors["attention_mask"].sum(1), stable=True)
        return [self.select(idx) for idx in torch.tensor_split(order, parts) if len(idx)]

    def length_sorted_chunks(self, size: int) -> list[tuple[torch.Tensor, Batch]]:
        """(row indices, sub-batch) of rows grouped by length, so little padding is computed."""
        order = torch.argsort(self.tensors["attention_mask"].sum(1), stable=True)
        return [(order[i : i + size], self.select(order[i : i + size])) for i in range(0, len(self), size)]

    def to(self, device: torch.device | str) -> Batch:
        return Batch({k: v.to(device) for k, v in self.tensors.items()}, self.prompt_len, self.group_ids)


def collate(samples: list[Sample], mask_retrieved: bool = True, pad_id: int = 0) -> Batch:
    """Pad samples into a Batch.

    ``loss_mask`` is the response mask used by the policy loss: generated tokens only, or every
    response token when ``mask_retrieved=False`` (the paper's ablation). ``generated_mask`` and
    ``valid_mask`` are always both kept. The scalar reward sits on the last generated token.
    """
    if not samples:
        raise ValueError("collate: no samples")
    for s in samples:
        if len(s.response_ids) != len(s.response_mask):
            raise ValueError(
                f"sample {s.uid}: {len(s.response_ids)} response_ids but {len(s.response_mask)} response_mask entries"
            )
        if not s.prompt_ids or not any(s.response_mask):
            raise ValueError(f"sample {s.uid}: empty prompt or no generated response token")
    B = len(samples)
    P = max(len(s.prompt_ids) for s in samples)
    R = max(len(s.response_ids) for s in samples)
    input_ids = torch.full((B, P + R), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((B, P + R), dtype=torch.long)
    generated = torch.zeros((B, R))
    valid = torch.zeros((B, R))
    token_rewards = torch.zeros((B, R))
    for i, s in enumerate(samples):
        p, r = len(s.prompt_ids), len(s.response_ids)
        input_ids[i, P - p : P] = torch.tensor(s.prompt_ids)
        input_ids[i, P : P + r] = torch.tensor(s.response_ids)
        attention_mask[i, P - p : P + r] = 1
        generated[i, :r] = torch.tensor(s.response_mask, dtype=torch.float32)
        valid[i, :r] = 1
        last = max(t for t, m in enumerate(s.response_mask) if m)
        token_rewards[i, last] = float(s.reward)
    tensors = {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "position_ids": (attention_mask.cumsum(-1) - 1).clamp(min=0),
        "responses": input_ids[:, P:],
        "generated_mask": generated,
        "valid_mask": valid,
        "loss_mask": generated if mask_retrieved else valid,
        "token_rewards": token_rewards,
        "rewards": torch.tensor([float(s.reward) for s in samples]),
    }
    return Batch(tensors, P, [s.group_id for s in samples])


def hidden_or_logits(model: torch.nn.Module, batch: Batch, **kwargs) -> torch.Tensor:
    """Run ``model`` on the padded sequences and keep the R positions that predict response tokens."""
    out = model(
        input_ids=batch["input_ids"],
        attention_mask=batch["attention_mask"],
        position_ids=batch["position_ids"],
        use_cache=False,
        **kwargs,
    )
    x = out if isinstance(out, torch.Tensor) else out.logits
    P, R = batch.prompt_len, batch["responses"].shape[1]
    start = P - 1 - (batch["input_ids"].shape[1] - x.shape[1])  # x may hold only the last positions
    return x[:, start : start + R]


def forward_logprobs(
    model: torch.nn.Module, batch: Batch, temperature: float = 1.0, with_entropy: bool = True,
    entropy_grad: bool = True,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """log pi(y_t | y_<t) of each response token (logits / temperature, as sampled), and the entropy
    (with ``entropy_grad=False`` a detached value, for logging, that builds no graph)."""
    # Only the R + 1 last positions predict response tokens: skip the LM head over the prompt.
    logits = hidden_or_logits(model, batch, logits_to_keep=batch["responses"].shape[1] + 1).float()
    if temperature > 0 and temperature != 1.0:
        logits = logits / temperature
    logp = torch.log_softmax(logits, dim=-1).gather(-1, batch["responses"].unsqueeze(-1)).squeeze(-1)
    entropy = None
    if with_entropy:
        with torch.set_grad_enabled(entropy_grad and torch.is_grad_enabled()):
            entropy = entropy_from_logits(logits if entropy_grad else logits.detach())
    return logp, entropy


@torch.no_grad()
def logprobs_of(
    model: torch.nn.Module, batch: Batch, micro_batch_size: int = 8, temperature: float = 1.0, with_entropy: bool = True
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``forward_logprobs`` without gradients, in micro-batches; returns ``[B, R]`` (logp, entropy or None)."""
    device = next(model.parameters()).device
    logps = torch.zeros(len(batch), batch.response_len)
    ents = torch.zeros(len(batch), batch.response_len) if with_entropy else None
    for idx, mb in batch.length_sorted_chunks(micro_batch_size):
        logp, ent = forward_logprobs(model, mb.to(device), temperature, with_entropy)
        logps[idx, : logp.shape[1]] = logp.cpu()
        if ents is not None:
            ents[idx, : ent.shape[1]] = ent.cpu()
    return logps, ents


@torch.no_grad()
def values_of(critic: torch.nn.Module, batch: Batch, micro_batch_size: int = 8) -> torch.Tensor:
    """The critic's value of each response position, ``[B, R]``, in length-sorted micro-batches."""
    device = next(critic.parameters()).device
    values = torch.zeros(len(batch), batch.response_len)
    for idx, mb in batch.length_sorted_chunks(micro_batch_size):
        v = hidden_or_logits(critic, mb.to(device))
        values[idx, : v.shape[1]] = v.float().cpu()
    return values
