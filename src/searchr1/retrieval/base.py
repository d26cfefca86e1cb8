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


def read_secret(env: str, file: str | None, setting: str) -> str | None:
    """``$env``, else the first line of ``file``, else None. Secrets are never settings or arguments:
    settings are logged, and other users can read argv in `ps`. ``setting`` names ``file`` in errors."""
    import os
    from pathlib import Path

    secret = os.environ.get(env, "").strip()
    if secret:
        return secret
    if file:
        path = Path(file)
        if not path.is_file():
            raise RetrievalError(f"{setting} {path}: no such file")
        lines = path.read_text().strip().splitlines()
        if not lines:
            raise RetrievalError(f"{setting} {path}: empty")
        return lines[0].strip()
    return None


def bearer_token(token_file: str | None) -> str | None:
    """The retrieval server's bearer token: ``$SEARCHR1_RETRIEVAL_TOKEN``, else the first line of
    ``token_file``, else None (no auth)."""
    return read_secret(TOKEN_ENV, token_file, "retrieval.server.token_file")
