"""The target's product paths are measured per machine, stored with the profile and read by every Target."""
import pytest
import torch
from conftest import tiny_llama

import specdec
import specdec.target.head
import specdec.target.kernels
from specdec.target.kernels import FALLBACK, Kernels, kernels_for
from specdec.policy.latency import LatencyModel, Regression, default_path, latency_key
from specdec.policy.kernel_profile import cut_over, interleaved_medians, measure_kernels, padding
from specdec.target.verifier import Target


@pytest.fixture
def model(monkeypatch):
    monkeypatch.setattr(specdec.target.kernels, "_measured", {})  # nothing remembered from other tests
    return tiny_llama(64, dtype=torch.float32, seed=3)


def test_measured_kernels_are_sane_and_round_trip(model):
    kernels = measure_kernels(model, repeats=1)
    assert kernels.measured and not FALLBACK.measured
    assert 0 <= kernels.linear_rows <= 32 and 0 <= kernels.head_rows <= 64 and 1 <= kernels.cheap_head_rows <= 8
    assert all(v > k for k, v in kernels.padded_rows.items())
    assert Kernels.from_json(kernels.to_json()) == kernels
    with pytest.raises(ValueError, match="padded_rows"):
        Kernels(padded_rows={3: 2})


def test_a_target_uses_the_kernels_stored_with_its_profile(model, monkeypatch):
    """Without a profile: the fallback.  With one that says 'no few-row products, no fusion': the forward obeys."""
    assert Target(model).kernels == FALLBACK
    odd = Kernels(linear_rows=0, head_rows=0, padded_rows={}, cheap_head_rows=2, fuse=False, measured=True)
    key = latency_key(model)
    LatencyModel(key, Regression("linear", [0.01] + [0.0] * 7, 1.0), {}, {}, odd.to_json()).save(default_path(key))
    target = Target(model)
    assert kernels_for(model) == odd and target.kernels == odd and not target.lean.fused
    calls = []
    real = specdec.target.head.few_rows_product
    monkeypatch.setattr(specdec.target.head, "few_rows_product", lambda *a: calls.append(1) or real(*a))
    ids = torch.tensor([[5, 6, 7, 8]])
    out = specdec.generate(model, ids, specdec.drafters.PromptLookup(2), max_new_tokens=5, speculation=2)
    assert calls == [] and torch.equal(out.sequences, model.generate(ids, max_new_tokens=5, do_sample=False))
    default_path(key).unlink()
    specdec.generate(model, ids, None, max_new_tokens=3)
    assert calls  # the fallback multiplies few rows as W @ x.T again


class DriftingMachine:
    """A clock and calls on a machine that slows down as it runs (each call costs more than the last),
    with one reading hit by a spike."""

    def __init__(self, spike_at: int):
        self.now, self.calls, self.spike_at = 0.0, 0, spike_at

    def clock(self) -> float:
        return self.now

    def call(self, cost: float):
        def run():
            self.calls += 1
            self.now += cost * (1 + 0.01 * self.calls) + (100.0 if self.calls == self.spike_at else 0.0)
        return run


def test_interleaved_medians_see_the_same_machine_for_every_case():
    """Equal work reads equal under drift, a spike is dropped, unequal work keeps its order; timed one
    case after another (the old way) the drift alone makes the last of three equal cases read 50% dearer."""
    machine = DriftingMachine(spike_at=20)
    runs = {name: machine.call(1.0) for name in "abc"} | {"double": machine.call(2.0)}
    ticks = []
    seconds = interleaved_medians(runs, rounds=9, clock=machine.clock, tick=ticks.append)
    assert max(seconds[n] for n in "abc") < 1.06 * min(seconds[n] for n in "abc")
    assert all(seconds[n] < 10 for n in seconds)  # the spike's round is not the median
    assert 1.8 < seconds["double"] / seconds["a"] < 2.2
    assert sum(ticks) == 4 * 10  # a warm-up call and 9 rounds of each case
    sequential = DriftingMachine(spike_at=0)
    one_by_one = {}
    for name in "abc":
        run = sequential.call(1.0)
        times = []
        for _ in range(10):
            started = sequential.clock()
            run()
            times.append(sequential.clock() - started)
        one_by_one[name] = sorted(times)[5]
    assert one_by_one["c"] > 1.15 * one_by_one["a"]  # what interleaving avoids
    with pytest.raises(ValueError, match="rounds"):
        interleaved_medians(runs, rounds=0, clock=machine.clock)


def test_the_cut_over_takes_the_cheapest_total_not_the_first_loss():
    """At one row both paths tie; reading the tie as a loss sent every row count to the path twice as slow."""
    rows = [1, 2, 4, 8]
    few = {1: 1.01, 2: 1.0, 4: 1.0, 8: 2.0}
    plain = {1: 1.0, 2: 2.0, 4: 2.0, 8: 2.1}
    assert cut_over(rows, few, plain) == 8
    assert cut_over(rows, {r: 3.0 for r in rows}, plain) == 0  # few-row products never pay: none
    assert cut_over(rows, few, {1: 1.0, 2: 2.0, 4: 2.0, 8: 1.0}) == 4
    assert padding([1, 2, 3, 4, 6], {1: 1.0, 2: 0.9, 3: 1.3, 4: 1.0, 6: 1.6}) == {1: 2, 3: 4}
