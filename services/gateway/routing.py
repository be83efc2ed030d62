"""RouteMessage's decision: the queue mapped to a message's best intent, or triage when the model is unsure."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Route:
    queue: str
    triaged: bool
    reason: str


@dataclass(frozen=True)
class RoutingTable:
    """Read from a TOML file (see services/gateway/routing.toml): the classifier model, how many intents to
    return, the threshold under which a message goes to triage, and the intent -> queue map."""

    model: str = "intent"
    top_k: int = 3
    min_score: float = 0.4
    triage_queue: str = "triage"
    default_queue: str = "general"
    queues: dict[str, str] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path) -> RoutingTable:
        data = tomllib.loads(path.read_text())
        try:
            table = cls(**data)
        except TypeError as error:
            raise ValueError(f"routing table {path}: {error}") from error
        if table.top_k < 1 or not 0 <= table.min_score <= 1:
            raise ValueError(f"routing table {path}: top_k must be >= 1 and min_score within 0..1")
        return table

    def decide(self, best_label: str, best_score: float) -> Route:
        if best_score < self.min_score:
            return Route(
                self.triage_queue, True, f"best intent {best_label} ({best_score:.2f}) is under {self.min_score:.2f}"
            )
        queue = self.queues.get(best_label, self.default_queue)
        mapped = "maps to" if best_label in self.queues else "has no queue of its own; default"
        return Route(queue, False, f"{best_label} ({best_score:.2f}) {mapped} {queue}")
