"""specdec.bench.metrics: the arithmetic of every reported number, on hand-made timings."""
from __future__ import annotations

import pytest

from specdec.bench import metrics


def rec(prompt, category, method, tokens, seconds, steps=None, forwards=None, parts=None, identical=True):
    """A hand-made record; ``parts`` = (draft, verify, other) seconds, None for a Hugging Face method."""
    draft, verify, other = parts if parts is not None else (None, None, None)
    return {"prompt_id": prompt, "category": category, "method": method, "new_tokens": tokens,
            "seconds": seconds, "steps": steps if steps is not None else tokens,
            "target_forwards": forwards if forwards is not None else tokens,
            "draft_seconds": draft, "verify_seconds": verify, "other_seconds": other, "identical": identical}


RECORDS = [
    # baseline: 10 tokens in 2 s and 30 tokens in 2 s
    rec("a1", "a", "base", 10, 2.0),
    rec("b1", "b", "base", 30, 2.0),
    # fast: same tokens in 1 s and 1.5 s, 5 and 10 steps, the second prompt differs from the baseline
    rec("a1", "a", "fast", 10, 1.0, steps=5, forwards=6, parts=(0.25, 0.5, 0.25)),
    rec("b1", "b", "fast", 30, 1.5, steps=10, forwards=11, parts=(0.5, 0.75, 0.25), identical=False),
]


def test_totals_then_ratios():
    """tokens/s, mean accepted and forwards are ratios and sums of totals over prompts, not means of ratios."""
    m = metrics.method_metrics([r for r in RECORDS if r["method"] == "fast"],
                               [r for r in RECORDS if r["method"] == "base"])
    assert m["prompts"] == 2 and m["new_tokens"] == 40 and m["seconds"] == 2.5
    assert m["tokens_per_second"] == 16.0  # 40 / 2.5
    assert m["mean_accepted_tokens"] == 40 / 15
    assert m["target_forwards"] == 17


def test_speedup_is_the_ratio_of_seconds_per_token():
    """Speedup = baseline s/token over method s/token: (4/40) / (2.5/40) = 1.6, and 1.0 for the baseline."""
    table = metrics.summarize(RECORDS, ["base", "fast"], "base")
    assert table["overall"]["fast"]["speedup"] == pytest.approx(1.6, abs=1e-15)
    assert table["overall"]["base"]["speedup"] == 1.0
    assert table["by_category"]["a"]["fast"]["speedup"] == 2.0
    assert table["by_category"]["b"]["fast"]["speedup"] == pytest.approx(4 / 3, abs=1e-15)


def test_speedup_uses_only_shared_prompts_and_token_counts():
    """A prompt the baseline lacks is left out; different token counts compare per token."""
    base = [rec("p", "c", "base", 20, 4.0)]
    rows = [rec("p", "c", "m", 10, 1.0), rec("q", "c", "m", 10, 100.0)]
    assert metrics.speedup(rows, base) == 2.0  # 0.2 s/token against 0.1 s/token


def test_time_shares_sum_to_one_and_are_none_without_stats():
    """Shares are summed draft/verify/other seconds over their sum; Hugging Face methods have none."""
    shares = metrics.time_shares([r for r in RECORDS if r["method"] == "fast"])
    assert shares == {"draft_share": 0.75 / 2.5, "verify_share": 1.25 / 2.5, "other_share": 0.5 / 2.5}
    assert metrics.time_shares([r for r in RECORDS if r["method"] == "base"]) == {
        "draft_share": None, "verify_share": None, "other_share": None}


def test_equivalence_is_the_fraction_of_identical_outputs_and_null_when_sampling():
    """Equivalence counts prompts identical to the baseline; any None (sampling) makes it None."""
    table = metrics.summarize(RECORDS, ["base", "fast"], "base")
    assert table["overall"]["fast"]["equivalence"] == 0.5
    assert table["by_category"]["a"]["fast"]["equivalence"] == 1.0
    assert table["by_category"]["b"]["fast"]["equivalence"] == 0.0
    sampled = [dict(r, identical=None) for r in RECORDS]
    assert metrics.summarize(sampled, ["base", "fast"], "base")["overall"]["fast"]["equivalence"] is None


def test_summary_has_every_metric_per_method_and_category():
    """Every metric name appears for every method, overall and in every category, in record order."""
    table = metrics.summarize(RECORDS, ["base", "fast"], "base")
    assert list(table["by_category"]) == ["a", "b"]
    for block in [table["overall"], *table["by_category"].values()]:
        for method in ("base", "fast"):
            assert tuple(block[method]) == metrics.METRICS


def test_zero_time_or_steps_give_none_not_an_error():
    """Degenerate totals (no seconds, no steps) read as None rather than dividing by zero."""
    m = metrics.method_metrics([rec("p", "c", "m", 0, 0.0, steps=0, forwards=0)], [])
    assert m["tokens_per_second"] is None and m["mean_accepted_tokens"] is None and m["speedup"] is None


def test_acceptance_by_position_pools_every_prompts_steps():
    """Per-position rates come from the summed (depth, accepted) counts of all prompts, None for HF methods."""
    a = {**rec("a1", "a", "fast", 10, 1.0), "depth_accepted": [[2, 0, 1], [2, 2, 1]]}
    b = {**rec("b1", "b", "fast", 30, 1.5), "depth_accepted": [[2, 1, 2]]}
    assert metrics.position_rates([a, b]) == [3 / 4, 1 / 3]
    assert metrics.position_rates([a, rec("b1", "b", "hf", 30, 1.5)]) is None


def repeated(prompt, method, tokens, times, category="c"):
    """One record per repeat of ``prompt`` with the given seconds."""
    return [dict(rec(prompt, category, method, tokens, t), repeat=i) for i, t in enumerate(times)]


def test_repeats_collapse_to_per_prompt_medians_and_an_outlier_is_outvoted():
    """seconds = sum of per-prompt medians: one contended run (100 s) does not move the number."""
    base = repeated("p", "base", 10, [2.0, 2.2, 1.8]) + repeated("q", "base", 30, [3.0, 3.0, 3.0])
    fast = repeated("p", "fast", 10, [1.0, 100.0, 1.2]) + repeated("q", "fast", 30, [2.0, 1.5, 2.5])
    m = metrics.method_metrics(fast, base)
    assert m["prompts"] == 2 and m["runs"] == 6
    assert m["seconds"] == 1.2 + 2.0 and m["new_tokens"] == 40
    assert m["tokens_per_second"] == 40 / 3.2
    assert m["speedup"] == pytest.approx((5.0 / 40) / (3.2 / 40))  # baseline medians 2.0 + 3.0 = 5.0 s


def test_spread_is_min_max_over_repeats_per_prompt_with_the_baseline_at_its_medians():
    """*_min uses every prompt's slowest repeat, *_max its fastest; the median value lies between them."""
    base = repeated("p", "base", 10, [2.0, 2.2, 1.8]) + repeated("q", "base", 30, [3.0, 3.0, 3.0])
    fast = repeated("p", "fast", 10, [1.0, 100.0, 1.2]) + repeated("q", "fast", 30, [2.0, 1.5, 2.5])
    m = metrics.method_metrics(fast, base)
    assert m["tokens_per_second_min"] == 40 / (100.0 + 2.5) and m["tokens_per_second_max"] == 40 / (1.0 + 1.5)
    assert m["speedup_min"] == pytest.approx(5.0 / 102.5) and m["speedup_max"] == pytest.approx(5.0 / 2.5)
    assert m["speedup_min"] <= m["speedup"] <= m["speedup_max"]
    b = metrics.method_metrics(base, base)  # the baseline: 1.0, its own run-to-run spread around it
    assert b["speedup"] == 1.0 and b["speedup_min"] == 5.0 / 5.2 and b["speedup_max"] == 5.0 / 4.8


def test_counts_are_per_pass_and_equivalence_counts_runs():
    """new_tokens and target_forwards are per-prompt medians (one pass); equivalence is over every run."""
    runs = repeated("p", "m", 10, [1.0, 1.0, 1.0])
    runs[1]["identical"] = False
    m = metrics.method_metrics(runs, runs)
    assert m["new_tokens"] == 10 and m["target_forwards"] == 10 and m["mean_accepted_tokens"] == 1.0
    assert m["equivalence"] == 2 / 3


def test_sampled_repeats_of_different_lengths_keep_each_runs_own_time_per_token():
    """A run that stopped early (EOS at 30 tokens in 3 s) and two full ones (128 tokens in 10-12 s): the
    prompt's time is its median seconds per token at the median length, never one run's seconds over
    another's count (3 s / 128 tokens, or 12 s / 30 tokens)."""
    runs = [dict(rec("p", "c", "m", n, s), repeat=i) for i, (n, s) in enumerate([(30, 3.0), (128, 10.0), (128, 12.0)])]
    prompt = metrics.per_prompt(runs)["p"]
    assert prompt["new_tokens"] == 128
    assert prompt["seconds"] == pytest.approx(12.0)  # per token 0.1, 0.078, 0.094: median 0.094 x 128
    assert prompt["fastest"] == pytest.approx(10.0) and prompt["slowest"] == pytest.approx(12.8)
