"""The target's product paths are measured per machine, stored with the profile and read by every Target."""
import pytest
import torch
from conftest import tiny_llama

import specdec
import specdec.target.head
import specdec.target.kernels
from specdec.target.kernels import FALLBACK, Kernels, kernels_for
from specdec.policy.latency import LatencyModel, Regression, default_path, latency_key
from specdec.policy.profiling import measure_kernels
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
