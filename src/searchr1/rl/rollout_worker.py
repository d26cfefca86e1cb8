"""The rollout worker: one rank's multi-turn search rollouts for RL, and its held-out evaluation.

Each data-parallel rank has its own worker and engine and rolls out its own share of the step's
prompts. The HF engine generates with the actor module itself, so it always has the new weights. A
vLLM engine is colocated on each rank (as TRL's colocate mode and verl's hybrid engine): every rank
loads the new weights into its own engine after each update (``sync``, bucket by bucket), so no samples
or weights cross ranks beyond ZeRO-3's own gathers; between rollouts the engine sleeps (``rest``).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from searchr1.config import Settings
from searchr1.retrieval.base import Retriever
from searchr1.rollout.engine import GenerationEngine, HFEngine
from searchr1.rollout.loop import run_rollout
from searchr1.rollout.types import Sample


class RolloutWorker:
    def __init__(self, settings: Settings, tokenizer: Any, retriever: Retriever, engine: GenerationEngine | None = None):
        self.settings, self.tokenizer, self.retriever = settings, tokenizer, retriever
        self.external = engine  # e.g. VLLMEngine; None: generate with the actor module
        self._hf: HFEngine | None = None  # kept while the module is the same: it caches stop-string tables

    def engine(self, module: nn.Module) -> GenerationEngine:
        if self.external is not None:
            return self.external
        if self._hf is None or self._hf.model is not module:
            self._hf = HFEngine(module, self.tokenizer)
        return self._hf

    def __call__(self, module: nn.Module, requests: list[dict], step: int) -> list[Sample]:
        """One trajectory per request (prompts repeated num_generations times), rewards filled in.
        The sampling seed comes from the step; each sample's own seed from it and the sample's uid
        (rollout.loop.sample_seed), so a resumed run replays exactly and ranks never share draws."""
        s = self.settings
        try:
            result = run_rollout(
                self.engine(module), self.tokenizer, requests, self.retriever, s.rollout, s.reward,
                topk=s.retrieval.topk, seed=s.rollout.seed + 7919 * step,
            )
        finally:
            self.rest()
        for sample, request in zip(result.samples, requests):
            sample.group_id = str(request["id"])
        return result.samples

    def evaluate(self, module: nn.Module, items: list[dict]) -> dict[str, float]:
        """Greedy EM and searches on ``items`` (this rank's share of the held-out questions)."""
        if not items:
            return {"n": 0.0, "em": 0.0, "searches_per_sample": 0.0}
        s = self.settings
        try:
            result = run_rollout(
                self.engine(module), self.tokenizer, items, self.retriever, s.rollout, s.reward,
                topk=s.retrieval.topk, greedy=True,
            )
        finally:
            self.rest()
        return {"n": float(len(items)), "em": result.stats["em"], "searches_per_sample": result.stats["searches_per_sample"]}

    def rest(self) -> None:
        """Between rollouts an external engine sleeps (vLLM frees its GPU memory for the update)."""
        if self.external is not None and hasattr(self.external, "sleep"):
            self.external.sleep()

    def sync(self, weights) -> None:
        """Load new weights (a state dict or buckets of (name, tensor)) into the external engine (the HF
        engine shares the actor's module)."""
        if self.external is not None:
            self.external.update_weights(weights)
