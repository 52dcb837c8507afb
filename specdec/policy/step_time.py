"""A step's predicted seconds: the profiled cost curve, corrected online by what steps really took.

The latency model (:mod:`specdec.policy.latency`) times the target's verification of ``width`` nodes per
row and the drafter's proposal of ``depth`` levels in isolation, interleaved, so it knows their
relative costs well but not two things a real step adds: the machine's speed *now* (a shared
machine drifts by tens of percent within minutes) and the engine's own work around a drafting
step (acceptance over more slots, the caches' commit, realigning rows that accepted different
numbers of tokens, caches the other model just evicted).  So each prediction is multiplied by

    speed(batch) * overhead(batch, width)

``speed`` (1 until a plain step is seen) is a moving average (weight ``decay`` on the past) of
measured over profiled seconds of plain steps (width 0); ``overhead`` (1 for plain steps, by
definition) is a slower moving average (``overhead_decay``) of a drafting width's measured over
profiled seconds divided by the speed, used once that (batch, width) was observed
``min_observations`` times (a drafting width not yet seen borrows the nearest drafting width's).
Keeping the two apart needs plain steps now and then, which the goodput policy makes sure of.
What a single step says is clipped to a factor of ``OUTLIER`` around what is known, so one slow
step (a first call's allocations, another process) cannot make a width look so dear that the
policy never tries it again; and every plain step pulls the overheads back towards 1 by a factor
``forget``, so that overheads learnt while the machine was busy, which stop the policy from drafting
and so from measuring them again, fade (by half in about 70 plain steps) instead of locking drafting out.
``correct=False`` trusts the profile as it is.
"""
from __future__ import annotations

from .latency import LatencyModel

OUTLIER = 1.5  # what one step says of the speed or an overhead is clipped to this factor around what is known


class StepTimes:
    def __init__(self, latency: LatencyModel, drafter_name: str, correct: bool = True, decay: float = 0.8,
                 min_observations: int = 3, overhead_decay: float = 0.9, forget: float = 0.99):
        if not 0.0 <= decay < 1.0 or not 0.0 <= overhead_decay < 1.0:
            raise ValueError(f"time decays must be in [0, 1), got {decay!r} and {overhead_decay!r}")
        self.latency, self.drafter_name = latency, drafter_name
        self.correct, self.decay, self.min_observations = bool(correct), float(decay), int(min_observations)
        self.overhead_decay = float(overhead_decay)
        if not 0.0 <= forget <= 1.0:
            raise ValueError(f"forget must be in [0, 1], got {forget!r}")
        self.forget = float(forget)
        self.speed: dict[int, float] = {}  # batch -> measured / profiled, plain steps
        self.overhead: dict[tuple[int, int], float] = {}  # (batch, width) -> its ratio / speed
        self.count: dict[tuple[int, int], int] = {}
        self._curves: dict[tuple[int, int], list[float]] = {}  # (batch, context // 8) -> seconds per width
        self._corrections: dict[int, list[float]] = {}  # batch -> correction per width, until the next observation

    def draft(self, batch: int, depth: int, drafting: bool = True) -> float:
        """Draft seconds of ``depth`` levels; 0 when not ``drafting`` (a hybrid step that only copies)."""
        return self.latency.draft_seconds(self.drafter_name, batch, depth) if depth > 0 and drafting else 0.0

    def profiled(self, batch: int, depth: int, width: int, context: float, drafting: bool = True) -> float:
        """The latency model's seconds: drafting ``depth`` levels, then verifying ``width`` nodes per row."""
        return self.draft(batch, depth, drafting) + self.curve(batch, context, width)[0][width]

    def correction(self, batch: int, width: int) -> float:
        if not self.correct:
            return 1.0
        return self.speed.get(batch, 1.0) * self._overhead(batch, width)

    def _overhead(self, batch: int, width: int) -> float:
        if width == 0:
            return 1.0
        if self.count.get((batch, width), 0) >= self.min_observations:
            return self.overhead[(batch, width)]
        seen = [w for (b, w), n in self.count.items() if b == batch and w > 0 and n >= self.min_observations]
        if not seen:
            return 1.0
        return self.overhead[(batch, min(seen, key=lambda w: (abs(w - width), w)))]

    def predict(self, batch: int, depth: int, width: int, context: float) -> float:
        return self.profiled(batch, depth, width, context) * self.correction(batch, width)

    def curve(self, batch: int, context: float, widest: int) -> tuple[list[float], list[float]]:
        """Verification seconds and corrections for widths 0..``widest`` at once (what one step's choice reads).

        Verification times are looked up at the context rounded to 8 tokens and kept, so a decode
        asks the latency model a few times per 8 tokens, not at every step."""
        key = (batch, int(context) // 8)
        cached = self._curves.get(key)
        if cached is None or len(cached) <= widest:
            cached = [self.latency.verify_seconds(batch, m, key[1] * 8 + 4) for m in range(widest + 1)]
            if len(self._curves) > 4096:
                self._curves.clear()
            self._curves[key] = cached
        corrections = self._corrections.get(batch)
        if corrections is None or len(corrections) <= widest:
            corrections = self._corrections[batch] = [self.correction(batch, m) for m in range(widest + 1)]
        return cached[:widest + 1], corrections[:widest + 1]

    def seconds(self, batch: int, depth: int, context: float, widest: int, drafting: bool = True) -> list[float]:
        """Predicted step seconds for widths 0..``widest`` after drafting ``depth`` levels (none if not ``drafting``)."""
        verify, correction = self.curve(batch, context, widest)
        draft = self.draft(batch, depth, drafting)
        return [(draft + v) * c for v, c in zip(verify, correction)]

    def observe(self, batch: int, width: int, profiled: float, measured: float) -> None:
        """One step's profiled and measured seconds: a plain step moves the speed, a drafting step its width's overhead."""
        ratio = measured / max(profiled, 1e-9)
        self._corrections.pop(batch, None)
        speed = self.speed.get(batch, 1.0)  # until a plain step says otherwise, the machine runs as profiled
        key = (batch, width)
        if width == 0:
            self.speed[batch] = self.decay * speed + (1 - self.decay) * _clip(ratio, speed)
            for other in [k for k in self.overhead if k[0] == batch]:  # unobserved overheads fade towards 1
                self.overhead[other] = 1.0 + (self.overhead[other] - 1.0) * self.forget
        else:
            known = self.overhead.get(key, 1.0)  # starts at no overhead, and learns
            keep = self.overhead_decay
            self.overhead[key] = keep * known + (1 - keep) * _clip(ratio / speed, known)
        self.count[key] = self.count.get(key, 0) + 1


def _clip(value: float, known: float) -> float:
    """``value`` within a factor of ``OUTLIER`` of ``known``."""
    return min(max(value, known / OUTLIER), known * OUTLIER)
