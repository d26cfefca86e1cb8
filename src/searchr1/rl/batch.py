"""The typed batch one RL step works on, and ``collate`` from rollout Samples.

Layout: prompts left-padded to P, responses right-padded to R, ``input_ids = [prompt | response]``.
Position ``P-1+t`` predicts response token ``t``, so every ``[B, R]`` tensor here (masks, log-probs,
values, rewards) is aligned to the positions that PREDICT the response tokens (shifted by one).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from searchr1.rollout.types import Sample

SEQUENCE_FIELDS = ("input_ids", "attention_mask", "position_ids")  # [B, P+R]; other 2-d tensors are [B, R]


@dataclass
class Batch:
    """One step's samples as padded tensors. Collate fills the first block; the step fills the rest."""

    input_ids: torch.Tensor  # [B, P+R]
    attention_mask: torch.Tensor  # [B, P+R]
    position_ids: torch.Tensor  # [B, P+R]
    responses: torch.Tensor  # [B, R] the response token ids
    generated_mask: torch.Tensor  # [B, R] 1 on tokens the policy generated
    valid_mask: torch.Tensor  # [B, R] 1 on every response token (generated or retrieved)
    loss_mask: torch.Tensor  # [B, R] tokens the policy loss, KL and entropy count
    token_rewards: torch.Tensor  # [B, R] the outcome reward on the last generated token
    rewards: torch.Tensor  # [B]
    prompt_len: int
    group_ids: list[str] = field(default_factory=list)
    # Filled in by the step (scoring and advantages):
    old_logp: torch.Tensor | None = None  # [B, R] the sampling policy's log-probs (off-policy updates only)
    ref_logp: torch.Tensor | None = None  # [B, R] the frozen reference's log-probs
    old_values: torch.Tensor | None = None  # [B, R] the critic's values before the update (PPO)
    advantages: torch.Tensor | None = None  # [B, R]
    returns: torch.Tensor | None = None  # [B, R] value targets (PPO)

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    @property
    def response_len(self) -> int:
        return self.valid_mask.shape[1]

    def tensors(self) -> dict[str, torch.Tensor]:
        """Every tensor field that is set, by name."""
        return {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if isinstance(getattr(self, f.name), torch.Tensor)
        }

    def select(self, idx: torch.Tensor | list[int]) -> Batch:
        """The rows ``idx``, without the columns that are padding in all of them: a sub-batch costs its
        own longest row, not the whole batch's."""
        idx = torch.as_tensor(idx, dtype=torch.long)
        P = self.prompt_len
        p = int(self.attention_mask[idx, :P].sum(1).max()) if len(idx) else 0
        # At least one response column: rows padded in for equal passes over ranks have no valid token,
        # and a micro-batch of them only must still run its (zero-weight) forward pass.
        r = max(1, int(self.valid_mask[idx].sum(1).max())) if len(idx) else 0
        rows = {}
        for name, v in self.tensors().items():
            v = v[idx]
            if name in SEQUENCE_FIELDS:
                v = v[:, P - p : P + r]
            elif v.dim() == 2:  # response-aligned [B, R]
                v = v[:, :r]
            rows[name] = v
        return Batch(**rows, prompt_len=p, group_ids=[self.group_ids[i] for i in idx.tolist()])

    def padded(self, rows: int, like: Batch) -> Batch:
        """This batch with rows appended up to ``rows`` that weigh nothing: copies of ``like``'s first row
        with every mask and reward zeroed, each its own group. Data-parallel ranks pad to equal row
        counts so that they run the same number of forward and backward passes."""
        missing = rows - len(self)
        if missing <= 0:
            return self
        source = self if len(self) else like
        pad = source.select([0] * missing)
        for name in ("generated_mask", "valid_mask", "loss_mask", "token_rewards", "rewards"):
            setattr(pad, name, torch.zeros_like(getattr(pad, name)))
        pad.group_ids = [f"<padding {i}>" for i in range(missing)]
        if not len(self):
            return pad
        return _concat(self, pad)

    def split(self, parts: int, by_group: bool = False) -> list[Batch]:
        """``parts`` sub-batches of near-equal size with rows grouped by length (less padding; summing
        gradients over them is the same gradient whatever the grouping), or with ``by_group`` a GRPO
        group's rows together (they share their prompt, which can then run once: models/heads.py).
        Fewer rows than parts gives empty sub-batches at the end, so every rank can take part in the
        same number of steps."""
        return [self.select(idx) for idx in torch.tensor_split(self._order(by_group), parts)]

    def length_sorted_chunks(self, size: int, by_group: bool = False) -> list[tuple[torch.Tensor, Batch]]:
        """(row indices, sub-batch) of rows grouped by length, so little padding is computed (``by_group``:
        see ``split``)."""
        order = self._order(by_group)
        return [(order[i : i + size], self.select(order[i : i + size])) for i in range(0, len(self), size)]

    def _order(self, by_group: bool) -> torch.Tensor:
        """Rows by length; with ``by_group`` by group (groups by their mean length), then by length."""
        lengths = self.attention_mask.sum(1)
        if not by_group or not self.group_ids:
            return torch.argsort(lengths, stable=True)
        members: dict[str, list[int]] = {}
        for i, g in enumerate(self.group_ids):
            members.setdefault(g, []).append(i)
        groups = sorted(members.values(), key=lambda rows: float(lengths[rows].float().mean()))
        return torch.tensor([i for rows in groups for i in sorted(rows, key=lambda i: int(lengths[i]))])

    def to(self, device: torch.device | str) -> Batch:
        return dataclasses.replace(self, **{k: v.to(device) for k, v in self.tensors().items()})


def _concat(a: Batch, b: Batch) -> Batch:
    """Rows of ``a`` then ``b``, re-padded to common prompt and response widths."""
    P, R = max(a.prompt_len, b.prompt_len), max(a.response_len, b.response_len)
    merged = {}
    for name, x in a.tensors().items():
        y = getattr(b, name)
        if name in SEQUENCE_FIELDS:
            x, y = (F.pad(t, (P - p, R - (t.shape[1] - p))) for t, p in ((x, a.prompt_len), (y, b.prompt_len)))
        elif x.dim() == 2:
            x, y = F.pad(x, (0, R - x.shape[1])), F.pad(y, (0, R - y.shape[1]))
        merged[name] = torch.cat([x, y])
    return Batch(**merged, prompt_len=P, group_ids=a.group_ids + b.group_ids)


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
    return Batch(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=(attention_mask.cumsum(-1) - 1).clamp(min=0),
        responses=input_ids[:, P:],
        generated_mask=generated,
        valid_mask=valid,
        loss_mask=generated if mask_retrieved else valid,
        token_rewards=token_rewards,
        rewards=torch.tensor([float(s.reward) for s in samples]),
        prompt_len=P,
        group_ids=[s.group_id for s in samples],
    )
