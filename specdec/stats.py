"""What one ``generate`` call did: steps, forwards, accepted tokens and where time went."""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field


@dataclass
class DecodeStats:
    steps: int = 0  # verification forwards (each yields at least one token per row)
    row_steps: int = 0  # verification forwards times the rows decoding in each
    target_forwards: int = 0  # prefill included
    tokens_generated: int = 0
    drafted_tokens: int = 0  # nodes proposed over all steps
    accepted_copies: int = 0  # accepted draft tokens that were copies (a hybrid's; DraftTree.copied)
    depth_accepted: Counter = field(default_factory=Counter)  # (draft depth proposed, accepted) -> row steps
    prefill_seconds: float = 0.0
    draft_seconds: float = 0.0
    verify_seconds: float = 0.0
    other_seconds: float = 0.0  # acceptance, commits, bookkeeping
    total_seconds: float = 0.0
    realign_seconds: float = 0.0  # part of other_seconds: moving KV entries of ragged rows
    realignments: int = 0  # steps whose rows had to be realigned (padding shifted or added)
    regroup_seconds: float = 0.0  # part of other_seconds: copying rows between groups (generate_pool)
    row_tokens: list = field(default_factory=list)  # tokens generated per batch row
    depth_chosen: list = field(default_factory=list)  # per step, the draft depth allowed to each row
    step_seconds: list = field(default_factory=list)  # per step, the whole step measured (draft, verify, accept, commit)
    predicted_seconds: list = field(default_factory=list)  # per step, the policy's prediction (None: none made)

    @property
    def accepted_histogram(self) -> Counter:
        """Accepted draft tokens -> row steps, whatever depth was proposed."""
        histogram = Counter()
        for (_, accepted), steps in self.depth_accepted.items():
            histogram[accepted] += steps
        return histogram

    def acceptance_by_position(self) -> list[float]:
        """See :func:`acceptance_by_position`: this call's per-depth acceptance rates."""
        return acceptance_by_position(self.depth_accepted)

    @property
    def mean_accepted_tokens(self) -> float:
        """Tokens per row per verification, the correction/bonus token included (Spec-Bench's count)."""
        return self.tokens_generated / self.row_steps if self.row_steps else 0.0

    @property
    def aligned_fraction(self) -> float:
        """Share of steps that needed no realignment."""
        return 1.0 - self.realignments / self.steps if self.steps else 1.0

    @property
    def tokens_per_second(self) -> float:
        return self.tokens_generated / self.total_seconds if self.total_seconds > 0 else 0.0

    def as_dict(self) -> dict:
        return {
            "steps": self.steps,
            "row_steps": self.row_steps,
            "target_forwards": self.target_forwards,
            "tokens_generated": self.tokens_generated,
            "drafted_tokens": self.drafted_tokens,
            "accepted_copies": self.accepted_copies,
            "mean_accepted_tokens": self.mean_accepted_tokens,
            "accepted_histogram": {int(k): v for k, v in sorted(self.accepted_histogram.items())},
            "acceptance_by_position": self.acceptance_by_position(),
            "prefill_seconds": self.prefill_seconds,
            "draft_seconds": self.draft_seconds,
            "verify_seconds": self.verify_seconds,
            "other_seconds": self.other_seconds,
            "total_seconds": self.total_seconds,
            "realign_seconds": self.realign_seconds,
            "realignments": self.realignments,
            "regroup_seconds": self.regroup_seconds,
            "aligned_fraction": self.aligned_fraction,
            "row_tokens": list(self.row_tokens),
            "depth_chosen": [list(d) for d in self.depth_chosen],
            "step_seconds": list(self.step_seconds),
            "predicted_seconds": list(self.predicted_seconds),
            "tokens_per_second": self.tokens_per_second,
        }


def acceptance_by_position(depth_accepted: dict[tuple[int, int], int]) -> list[float]:
    """Rate at which draft position i is accepted given position i-1 was, for i = 1, 2, ...

    ``depth_accepted`` maps ``(depth proposed, tokens accepted)`` to a count of row steps.
    Entry i-1 is the chain's alpha_i: among steps that proposed at least i positions and
    accepted the first i-1, the share that also accepted position i (steps drafting short of i,
    near the token budget, do not count against it).  Up to the deepest position that some
    step reached (proposed, with every position before it accepted).
    """
    pairs = {(int(d), int(a)): v for (d, a), v in depth_accepted.items()}
    if any(a < 0 or a > d or v < 0 for (d, a), v in pairs.items()):
        raise ValueError(f"need 0 <= accepted <= depth and counts >= 0, got {dict(depth_accepted)}")
    deepest = max((d for (d, _), v in pairs.items() if v > 0), default=0)
    rates = []
    for i in range(1, deepest + 1):
        reached = sum(v for (d, a), v in pairs.items() if d >= i and a >= i - 1)
        passed = sum(v for (d, a), v in pairs.items() if d >= i and a >= i)
        if not reached:
            break
        rates.append(passed / reached)
    return rates
