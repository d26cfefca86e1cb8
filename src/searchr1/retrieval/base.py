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


TOKEN_ENV = "SEARCHR1_RETRIEVAL_TOKEN"


def bearer_token(token_file: str | None) -> str | None:
    """The retrieval server's bearer token: ``$SEARCHR1_RETRIEVAL_TOKEN``, else the first line of
    ``token_file``, else None (no auth). Never from settings or argv, which other users can read in `ps`."""
    import os
    from pathlib import Path

    token = os.environ.get(TOKEN_ENV, "").strip()
    if token:
        return token
    if token_file:
        path = Path(token_file)
        if not path.is_file():
            raise RetrievalError(f"retrieval.server.token_file {path}: no such file")
        token = path.read_text().strip().splitlines()[0].strip() if path.read_text().strip() else ""
        if not token:
            raise RetrievalError(f"retrieval.server.token_file {path}: empty")
        return token
    return None
