"""The retriever contract shared by rollout, evaluation and the server.

A retriever maps a batch of queries to, per query, the top-k passages (best first). Batching is
part of the interface on purpose: the encoder dominates cost, so callers always send whole batches.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from searchr1.errors import SearchR1Error
from searchr1.prompts import split_title


@dataclass(frozen=True)
class Doc:
    id: str
    contents: str  # FlashRAG format: '"Title"\ntext'
    score: float = 0.0

    @property
    def title(self) -> str:
        return split_title(self.contents)[0]

    @property
    def text(self) -> str:
        return split_title(self.contents)[1]


class RetrievalError(SearchR1Error, RuntimeError):
    """Retrieval failed (server down after retries, bad response, index problem)."""


@runtime_checkable
class Retriever(Protocol):
    def search(self, queries: list[str], topk: int) -> list[list[Doc]]:
        """Return, for each query, up to ``topk`` documents, best first."""
        ...
