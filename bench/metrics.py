"""Aggregate run records into per-method and per-category numbers, and judge the machine's load.  Pure functions.

A record is one (prompt, method, repeat) run: ``prompt_id, category, method, repeat, new_tokens,
seconds, steps, target_forwards, draft_seconds, verify_seconds, other_seconds, identical`` (the
last four None where a method has no such measure).

Timings: each prompt's repeats collapse to their median first (a run slowed by a burst of other
load is outvoted), then totals over prompts, then ratios of totals, as Spec-Bench reports them:

- ``seconds`` = sum over prompts of the median seconds per token (each run's own seconds over its
  own tokens) times the prompt's median token count; ``new_tokens`` and ``target_forwards`` are
  per-prompt medians (greedy repeats reproduce them; sampled ones end at different lengths)
- ``tokens_per_second`` = new_tokens / seconds
- ``speedup`` = baseline seconds per token / method seconds per token, both from per-prompt
  medians over the prompts the two share
- ``*_min`` / ``*_max``: the spread, min-max over repeats taken per prompt: the same number with
  every prompt's slowest (min) or fastest (max) repeat of the method, the baseline kept at its
  medians.  The median-based value always lies inside.

Counts pooled over every run:

- ``mean_accepted_tokens`` = total tokens / total steps (tokens per token-yielding target
  forward, the bonus token included)
- ``draft_share``, ``verify_share``, ``other_share`` = each part / (draft + verify + other)
- ``equivalence`` = fraction of runs whose output is the baseline's (same round), token for token
- ``acceptance_by_position`` = per draft depth i, the share of steps reaching i that accept it
  (:func:`specdec.stats.acceptance_by_position`; None for methods without stats)
"""
from __future__ import annotations

import statistics
from collections import Counter, defaultdict

from specdec.stats import acceptance_by_position

METRICS = ("prompts", "runs", "new_tokens", "seconds", "tokens_per_second", "tokens_per_second_min",
           "tokens_per_second_max", "speedup", "speedup_min", "speedup_max", "mean_accepted_tokens",
           "target_forwards", "draft_share", "verify_share", "other_share", "equivalence", "acceptance_by_position",
           "copied_share")


def per_prompt(rows: list[dict]) -> dict[str, dict]:
    """``{prompt_id: {seconds, fastest, slowest, new_tokens, target_forwards}}``: each prompt's repeats
    collapsed (median counts; times at the median length).

    Times are taken per token from each run's own seconds and tokens, then scaled to the prompt's
    median length: ``seconds`` = median seconds per token x ``new_tokens``, ``fastest`` / ``slowest``
    the least and most.  Greedy repeats have one length, so this is the median of their seconds;
    sampled repeats end at different lengths, and pairing one run's seconds with another's token
    count (a 30-token run's time over a 128-token run's count) would mix two runs into one number.
    """
    groups = defaultdict(list)
    for r in rows:
        groups[r["prompt_id"]].append(r)
    out = {}
    for p, runs in groups.items():
        tokens = statistics.median_low(r["new_tokens"] for r in runs)
        # each run's seconds at the median length (no tokens at all: the seconds as they are)
        times = [r["seconds"] / max(r["new_tokens"], 1) * tokens if tokens else r["seconds"] for r in runs]
        out[p] = {"seconds": statistics.median(times), "fastest": min(times), "slowest": max(times),
                  "new_tokens": tokens,
                  "target_forwards": statistics.median_low(r["target_forwards"] for r in runs)}
    return out


def method_metrics(rows: list[dict], baseline_rows: list[dict]) -> dict:
    """The metrics of one method over ``rows`` (every repeat); ``baseline_rows`` are the baseline's runs."""
    prompts = per_prompt(rows)
    tokens = sum(p["new_tokens"] for p in prompts.values())
    seconds = sum(p["seconds"] for p in prompts.values())
    low, high = speedup_range(rows, baseline_rows)
    out = {
        "prompts": len(prompts),
        "runs": len(rows),
        "new_tokens": tokens,
        "seconds": seconds,
        "tokens_per_second": _ratio(tokens, seconds),
        "tokens_per_second_min": _ratio(tokens, sum(p["slowest"] for p in prompts.values())),
        "tokens_per_second_max": _ratio(tokens, sum(p["fastest"] for p in prompts.values())),
        "speedup": speedup(rows, baseline_rows),
        "speedup_min": low,
        "speedup_max": high,
        "mean_accepted_tokens": _ratio(sum(r["new_tokens"] for r in rows), sum(r["steps"] for r in rows)),
        "target_forwards": sum(p["target_forwards"] for p in prompts.values()),
    }
    out.update(time_shares(rows))
    identical = [r["identical"] for r in rows]
    out["equivalence"] = None if not rows or None in identical else sum(identical) / len(identical)
    out["acceptance_by_position"] = position_rates(rows)
    out["copied_share"] = copied_share(rows)
    return out


def copied_share(rows: list[dict]) -> float | None:
    """Of the accepted draft tokens, the share that a copy proposed (a hybrid's); None without stats or drafts."""
    if not rows or any(r.get("accepted_copies") is None for r in rows):
        return None
    accepted = sum(int(k) * v for r in rows for k, v in (r["accepted_histogram"] or {}).items())
    return _ratio(sum(r["accepted_copies"] for r in rows), accepted) if accepted else None


def speedup(rows: list[dict], baseline_rows: list[dict], which: str = "seconds") -> float | None:
    """Baseline seconds per token over the method's, from per-prompt medians, on the prompts both ran.

    ``which`` picks the method's per-prompt time: ``seconds`` (median), ``slowest`` or ``fastest``;
    the baseline always uses its medians.
    """
    base, mine = per_prompt(baseline_rows), per_prompt(rows)
    shared = [p for p in mine if p in base]
    theirs = _ratio(sum(base[p]["seconds"] for p in shared), sum(base[p]["new_tokens"] for p in shared))
    ours = _ratio(sum(mine[p][which] for p in shared), sum(mine[p]["new_tokens"] for p in shared))
    return _ratio(theirs, ours)


def speedup_range(rows: list[dict], baseline_rows: list[dict]) -> tuple[float | None, float | None]:
    """(min, max) speedup: every prompt at the method's slowest, then fastest, repeat."""
    return speedup(rows, baseline_rows, "slowest"), speedup(rows, baseline_rows, "fastest")


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


def load_verdict(samples: list[dict], calibration_before: float | None, calibration_after: float | None,
                 cpu_count: int, threads: int, margin_per_core: float, max_calibration_change: float) -> dict:
    """The ``load`` section of results.json: the numbers, a ``busy`` flag and its ``reasons``.

    ``samples`` are :class:`specdec.bench.runner.LoadMonitor` samples (``loadavg, own, others``),
    the first before the run, the last after it, one per round between.  Busy when either

    - other processes' load, at any sample, exceeds ``others_limit`` = the cores our torch threads
      leave free (``cpu_count - threads``) + ``margin_per_core x cpu_count``: beyond that the
      machine has more runnable threads than cores and ours wait their turn; or
    - the calibration loop's time changed by more than ``max_calibration_change`` between start
      and end (``max / min - 1``): the machine's speed for our work changed during the run.
    """
    first, last = (samples[0], samples[-1]) if samples else ({}, {})
    others = [s["others"] for s in samples if s.get("others") is not None]
    limit = max(0, cpu_count - threads) + margin_per_core * cpu_count
    change = (None if not calibration_before or not calibration_after else
              max(calibration_before, calibration_after) / min(calibration_before, calibration_after) - 1)
    verdict = {
        "cpu_count": cpu_count,
        "threads": threads,
        "loadavg_before": first.get("loadavg"),
        "loadavg_after": last.get("loadavg"),
        "own_after": last.get("own"),
        "others_before": first.get("others"),
        "others_after": last.get("others"),
        "others_max": max(others) if others else None,
        "others_limit": limit,
        "samples": len(samples),
        "calibration_before": calibration_before,
        "calibration_after": calibration_after,
        "calibration_change": change,
        "calibration_limit": max_calibration_change,
    }
    reasons = []
    if verdict["others_max"] is not None and verdict["others_max"] > limit:
        reasons.append(f"other processes kept a load of up to {verdict['others_max']:.2f} "
                       f"(limit {limit:.2f}: {max(0, cpu_count - threads)} spare of {cpu_count} cores "
                       f"+ {margin_per_core:g} per core)")
    if change is not None and change > max_calibration_change:
        reasons.append(f"the calibration loop took {calibration_before * 1e3:.0f} ms at the start and "
                       f"{calibration_after * 1e3:.0f} ms at the end ({change:.0%} apart, limit "
                       f"{max_calibration_change:.0%})")
    verdict["busy"] = bool(reasons)
    verdict["reasons"] = reasons
    return verdict


def _ratio(num: float, den: float) -> float | None:
    return num / den if den else None
