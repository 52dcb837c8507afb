"""Speculation-length policies: how many tokens to draft at each step.

A policy answers ``next_length()`` before each step and hears ``observe(...)`` after it.
An int given to ``generate(speculation=...)`` is a :class:`FixedLength`; adaptive policies
(SmartSpec's goodput rule) implement the same two methods, and 0 (plain decoding) is a valid
answer.
"""
from __future__ import annotations


class FixedLength:
    """Always draft ``k`` tokens (0 means plain decoding)."""

    def __init__(self, k: int):
        if isinstance(k, bool) or not isinstance(k, int) or k < 0:
            raise ValueError(f"speculation length must be an int >= 0, got {k!r}")
        self.k = k

    def next_length(self) -> int:
        return self.k

    def observe(self, proposed: int, accepted: int, seconds: float) -> None:
        pass


def as_policy(speculation, default_k: int):
    """The policy object for ``generate(speculation=...)``: None -> the drafter's own length."""
    if speculation is None:
        return FixedLength(default_k)
    if isinstance(speculation, int) and not isinstance(speculation, bool):
        return FixedLength(speculation)
    if hasattr(speculation, "next_length") and hasattr(speculation, "observe"):
        return speculation
    raise TypeError(
        f"speculation must be None, an int or a policy with next_length()/observe(), got {type(speculation).__name__}"
    )
