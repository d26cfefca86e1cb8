"""Collapse guard: flags reward collapse, entropy collapse and KL explosion from step metrics."""

from __future__ import annotations

from collections import deque


class CollapseGuard:
    """Watch ``reward_mean``, ``entropy`` and ``kl``; ``check`` returns the reasons training looks broken.

    Reward collapse: the mean reward of the last ``window`` steps fell below ``(1 - reward_drop)`` of the
    best such window mean seen so far (only once that best exceeds ``min_best_reward``).
    """

    def __init__(
        self, min_entropy: float, max_kl: float, reward_drop: float, window: int = 5, min_best_reward: float = 0.05
    ):
        self.min_entropy, self.max_kl, self.reward_drop = min_entropy, max_kl, reward_drop
        self.window, self.min_best_reward = window, min_best_reward
        self.recent: deque[float] = deque(maxlen=window)
        self.best = float("-inf")

    def check(self, metrics: dict[str, float]) -> list[str]:
        reasons = []
        # Entropy and KL are measured on the rows the actor trained on: a step that trained on none (or
        # only the critic, train.critic_warmup) has neither.
        measured = metrics.get("samples_trained", 1.0) > 0 and metrics.get("actor_trained", 1.0) > 0
        if measured and metrics["entropy"] < self.min_entropy:
            reasons.append(f"entropy collapsed: {metrics['entropy']:.4g} < {self.min_entropy} (train.collapse_min_entropy)")
        if metrics["kl"] > self.max_kl:
            reasons.append(f"KL exploded: {metrics['kl']:.4g} > {self.max_kl} (train.collapse_max_kl)")
        self.recent.append(metrics["reward_mean"])
        if len(self.recent) == self.window:
            mean = sum(self.recent) / self.window
            if self.best > self.min_best_reward and mean < (1 - self.reward_drop) * self.best:
                reasons.append(
                    f"reward collapsed: last-{self.window}-step mean {mean:.4g} < {1 - self.reward_drop:.2f} x best "
                    f"{self.best:.4g} (train.collapse_reward_drop)"
                )
            self.best = max(self.best, mean)
        return reasons

    def state_dict(self) -> dict:
        return {"recent": list(self.recent), "best": self.best}

    def load_state_dict(self, state: dict) -> None:
        self.recent = deque(state["recent"], maxlen=self.window)
        self.best = state["best"]
