"""What one ``generate`` call did: steps, forwards, accepted tokens and where time went."""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field


@dataclass
class DecodeStats:
    steps: int = 0  # verification forwards (each yields at least one token)
    target_forwards: int = 0  # prefill included
    tokens_generated: int = 0
    drafted_tokens: int = 0  # nodes proposed over all steps
    accepted_histogram: Counter = field(default_factory=Counter)  # accepted draft tokens -> steps
    prefill_seconds: float = 0.0
    draft_seconds: float = 0.0
    verify_seconds: float = 0.0
    other_seconds: float = 0.0  # acceptance, commits, bookkeeping
    total_seconds: float = 0.0

    @property
    def mean_accepted_tokens(self) -> float:
        """Tokens per verification step, the correction/bonus token included (Spec-Bench's count)."""
        return self.tokens_generated / self.steps if self.steps else 0.0

    @property
    def tokens_per_second(self) -> float:
        return self.tokens_generated / self.total_seconds if self.total_seconds > 0 else 0.0

    def as_dict(self) -> dict:
        return {
            "steps": self.steps,
            "target_forwards": self.target_forwards,
            "tokens_generated": self.tokens_generated,
            "drafted_tokens": self.drafted_tokens,
            "mean_accepted_tokens": self.mean_accepted_tokens,
            "accepted_histogram": {int(k): v for k, v in sorted(self.accepted_histogram.items())},
            "prefill_seconds": self.prefill_seconds,
            "draft_seconds": self.draft_seconds,
            "verify_seconds": self.verify_seconds,
            "other_seconds": self.other_seconds,
            "total_seconds": self.total_seconds,
            "tokens_per_second": self.tokens_per_second,
        }
