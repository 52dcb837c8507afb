"""Aggregate per-prompt records into per-method and per-category numbers.  Pure functions.

A record is one (prompt, method) run: ``prompt_id, category, method, new_tokens, seconds,
steps, target_forwards, draft_seconds, verify_seconds, other_seconds, identical`` (the last
four None where a method has no such measure).  Totals first, ratios of totals after, as
Spec-Bench reports them:

- ``tokens_per_second`` = total generated tokens / total seconds
- ``speedup`` = baseline seconds per token / method seconds per token, both over the prompts
  the two methods share
- ``mean_accepted_tokens`` = total tokens / total steps (tokens per token-yielding target
  forward, the bonus token included)
- ``draft_share``, ``verify_share``, ``other_share`` = each part / (draft + verify + other)
- ``equivalence`` = fraction of prompts whose output is the baseline's, token for token
- ``acceptance_by_position`` = per draft depth i, the share of steps reaching i that accept it
  (:func:`specdec.stats.acceptance_by_position`; None for methods without stats)
"""
from __future__ import annotations

from collections import Counter

from specdec.stats import acceptance_by_position

METRICS = ("prompts", "new_tokens", "seconds", "tokens_per_second", "speedup", "mean_accepted_tokens",
           "target_forwards", "draft_share", "verify_share", "other_share", "equivalence", "acceptance_by_position")


def method_metrics(rows: list[dict], baseline_rows: list[dict]) -> dict:
    """The metrics of one method over ``rows``; ``baseline_rows`` are the baseline's runs."""
    tokens = sum(r["new_tokens"] for r in rows)
    seconds = sum(r["seconds"] for r in rows)
    steps = sum(r["steps"] for r in rows)
    out = {
        "prompts": len(rows),
        "new_tokens": tokens,
        "seconds": seconds,
        "tokens_per_second": _ratio(tokens, seconds),
        "speedup": speedup(rows, baseline_rows),
        "mean_accepted_tokens": _ratio(tokens, steps),
        "target_forwards": sum(r["target_forwards"] for r in rows),
    }
    out.update(time_shares(rows))
    identical = [r["identical"] for r in rows]
    out["equivalence"] = None if not rows or None in identical else sum(identical) / len(identical)
    out["acceptance_by_position"] = position_rates(rows)
    return out


def speedup(rows: list[dict], baseline_rows: list[dict]) -> float | None:
    """Baseline seconds per token over the method's, on the prompts both ran."""
    base = {r["prompt_id"]: r for r in baseline_rows}
    shared = [r for r in rows if r["prompt_id"] in base]
    mine = _ratio(sum(r["seconds"] for r in shared), sum(r["new_tokens"] for r in shared))
    theirs = _ratio(sum(base[r["prompt_id"]]["seconds"] for r in shared),
                    sum(base[r["prompt_id"]]["new_tokens"] for r in shared))
    return _ratio(theirs, mine)


def position_rates(rows: list[dict]) -> list[float] | None:
    """Acceptance rate per draft position over every step of ``rows`` (None without stats)."""
    triples = [r.get("depth_accepted") for r in rows]
    if not rows or None in triples:
        return None
    pairs = Counter()
    for record in triples:
        for depth, accepted, count in record:
            pairs[depth, accepted] += count
    return acceptance_by_position(pairs)


def time_shares(rows: list[dict]) -> dict:
    """Fractions of decode time spent drafting, verifying and elsewhere (None without stats)."""
    parts = {k: [r[f"{k}_seconds"] for r in rows] for k in ("draft", "verify", "other")}
    if not rows or any(None in v for v in parts.values()):
        return {"draft_share": None, "verify_share": None, "other_share": None}
    sums = {k: sum(v) for k, v in parts.items()}
    total = sum(sums.values())
    return {f"{k}_share": _ratio(s, total) for k, s in sums.items()}


def summarize(records: list[dict], methods: list[str], baseline: str) -> dict:
    """``{"overall": {method: metrics}, "by_category": {category: {method: metrics}}}``."""
    categories = list(dict.fromkeys(r["category"] for r in records))

    def table(rows):
        base = [r for r in rows if r["method"] == baseline]
        return {m: method_metrics([r for r in rows if r["method"] == m], base) for m in methods}

    return {
        "overall": table(records),
        "by_category": {c: table([r for r in records if r["category"] == c]) for c in categories},
    }


def _ratio(num: float, den: float) -> float | None:
    return num / den if den else None
