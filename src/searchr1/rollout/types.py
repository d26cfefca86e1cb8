"""What a rollout produces and the trainer consumes: token ids with an explicit per-token loss mask."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass
class Turn:
    """One policy turn: what it generated, and what the environment appended after it."""

    text: str  # decoded generated text of this turn
    action: str  # "search" | "answer" | "invalid" | "truncated" | "retrieve" (rag: passages put in the prompt)
    query: str | None = None
    doc_ids: list[str] = field(default_factory=list)
    observation: str = ""  # appended text (information block or corrective message); masked


@dataclass
class Sample:
    """One trajectory. ``response_ids`` is everything after the prompt, in order: generated tokens
    (mask 1) interleaved with observation tokens (mask 0). Ids are the engine's sampled ids, never
    re-tokenised."""

    uid: str  # unique per sample
    group_id: str  # prompt id: GRPO groups samples by this
    question: str
    golden_answers: list[str]
    prompt_ids: list[int]
    response_ids: list[int]
    response_mask: list[int]
    logprobs: list[float] | None = None  # sampling log-probs aligned with response_ids (0.0 where mask 0)
    turns: list[Turn] = field(default_factory=list)
    answer: str | None = None
    reward: float = 0.0
    finished: bool = False  # wrote </answer> within the limits
    num_searches: int = 0
    num_invalid: int = 0
    truncated: dict[str, int] = field(default_factory=dict)  # counters: prompt/turn/obs/total/repeat (loop.TRUNCATIONS)
    metrics: dict[str, float] = field(default_factory=dict)  # em / substring_em / f1 of ``answer``
    rank: int = 0  # the data-parallel rank that generated it (RL training)

    def to_record(self) -> dict:
        """JSON-serialisable trajectory record (for trajectories.jsonl and the viewer)."""
        return asdict(self)


@dataclass
class RolloutResult:
    samples: list[Sample]
    stats: dict[str, float]  # batch episode statistics (see rollout.loop.episode_stats)
