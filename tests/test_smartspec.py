"""SmartSpec: goodput-optimal depths from a latency model and online acceptance; exactness while k changes."""
import itertools

import numpy as np
import pytest
import torch
from conftest import tiny_llama
from exact_randomness import enumerate_law
from scripted import noisy_copy
from test_sampling_lossless import PROMPT, exact_law, generated, models

import specdec
from specdec import drafters
from specdec.policy.latency import LatencyModel, Regression, latency_key
from specdec.tree import DraftTree

VOCAB = 64


def synthetic_latency(model, drafter_name="ScriptedDrafter", verify=(1.0, 0.0, 0.05, 0.0, 0.3, 0.0, 0.0, 0.0), draft=(0.0, 0.05, 0.0, 0.0)):
    """verify(B, n, C) = 1 + 0.05 B (n+1) + 0.3 [n>0] seconds; draft(B, k) = 0.05 k."""
    return LatencyModel(latency_key(model), Regression("linear", list(verify), 1.0),
                        {drafter_name: Regression("linear", list(draft), 1.0)})


class Scripted(drafters.Drafter):
    """Right for the first ``right(position)`` drafted tokens, wrong after (a chain of any depth)."""

    stateless = True

    def __init__(self, reference, right):
        self.reference, self.right, self.num_tokens = reference[0].tolist(), right, 8

    def propose(self, request):
        start = int(request.lengths[0])
        good = self.right(start)
        tokens = [(self.reference[start + i] if start + i < len(self.reference) else 0) if i < good
                  else (self.reference[min(start + i, len(self.reference) - 1)] + 1) % VOCAB
                  for i in range(request.max_depth)]
        return DraftTree.chain(torch.tensor([tokens]))


Scripted.__name__ = "ScriptedDrafter"


@pytest.fixture(scope="module")
def target():
    return tiny_llama(VOCAB, seed=0, eos_token_id=None, pad_token_id=0)


def reference(target, n=90):
    ids = torch.randint(3, VOCAB, (1, 6), generator=torch.Generator().manual_seed(0))
    return ids, target.generate(ids, max_new_tokens=n, do_sample=False, pad_token_id=0)


def test_the_plan_is_the_analytic_optimum(target):
    """Given acceptance rates and a latency model, the chosen depth maximises tokens per second."""
    for rates in ([0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2], [0.3] * 8, [0.99] * 8, [0.0] * 8):
        policy = specdec.SmartSpec(max_depth=8, latency=synthetic_latency(target), prior=rates)  # nothing seen yet
        policy.start(target, Scripted(torch.zeros(1, 1, dtype=torch.long), lambda s: 0))
        context = specdec.StepContext([0, 1], [20, 30], [50, 50], None, 8, None)

        def expected(k):
            total, chain = 1.0, 1.0
            for a in rates[:k]:
                chain *= a
                total += chain
            return total

        want = max(range(9), key=lambda k: 2 * expected(k) / policy.times.predict(2, k, k, 25))
        assert policy.plan(context).depth == [want, want]
    assert want == 0  # nothing is ever accepted: plain decoding


def test_it_settles_on_the_scripted_acceptance_and_stays_exact(target):
    """A drafter right for exactly 3 tokens: SmartSpec drafts and verifies 3 deep once it has learnt so; output is exact."""
    ids, ref = reference(target)
    policy = specdec.SmartSpec(max_depth=8, latency=synthetic_latency(target), decay=0.5, correct_times=False)
    out = specdec.generate(target, ids, Scripted(ref, lambda s: 3), max_new_tokens=90, eos_token_id=[],
                           speculation=policy)
    assert torch.equal(out.sequences, ref)
    chosen = [d[0] for d in out.stats.depth_chosen]
    assert chosen[-6:-1] == [3] * 5, chosen  # the last step is cut by the budget
    assert [h["width"] for h in policy.history[-6:-1]] == [3] * 5
    assert all(p is not None for p in out.stats.predicted_seconds) and len(out.stats.step_seconds) == out.stats.steps
    # the policy saw each whole step (draft, verify, acceptance and commit), as the stats record it
    assert [h["measured_seconds"] for h in policy.history] == pytest.approx(out.stats.step_seconds)


def test_it_stops_drafting_and_comes_back_when_acceptance_returns(target):
    """Wrong drafts: depth 0; from position 50 on the drafts are right: probes find it and depth rises again."""
    ids, ref = reference(target, 120)
    policy = specdec.SmartSpec(max_depth=8, latency=synthetic_latency(target), decay=0.5, probe_every=8,
                               correct_times=False)
    out = specdec.generate(target, ids, Scripted(ref, lambda s: 0 if s < 50 else 6), max_new_tokens=120,
                           eos_token_id=[], speculation=policy)
    assert torch.equal(out.sequences, ref)
    chosen = [d[0] for d in out.stats.depth_chosen]
    early = chosen[5:40]
    assert early.count(0) > 25  # plain decoding while nothing is accepted (with a probe now and then)
    assert max(chosen[-8:]) >= 5  # drafting again once the drafts are right


class NeverProposes(drafters.Drafter):
    """Prompt lookup on text without repeats: allowed any depth, it proposes nothing."""

    stateless = True
    num_tokens = 4

    def propose(self, request):
        return DraftTree.empty(request.batch_size, request.roots.device)


NeverProposes.__name__ = "ScriptedDrafter"


def test_a_drafter_that_proposes_nothing_counts_as_missing(target):
    """A row that proposes nothing when allowed lowers what drafting yields, so SmartSpec settles on plain decoding."""
    ids, ref = reference(target, 60)
    policy = specdec.SmartSpec(max_depth=4, latency=synthetic_latency(target), prior=0.9, decay=0.5,
                               correct_times=False, probe_every=4)
    out = specdec.generate(target, ids, NeverProposes(), max_new_tokens=60, eos_token_id=[], speculation=policy)
    assert torch.equal(out.sequences, ref)
    chosen = [d[0] for d in out.stats.depth_chosen]
    assert chosen[0] >= 1 and chosen[-20:].count(0) >= 18, chosen  # the prior says draft; what happens says don't
    assert policy.rates.batch_proposes[0] < 0.1
    probes = [i for i, d in enumerate(chosen) if d and i > 3]
    gaps = [b - a for a, b in zip(probes, probes[1:])]
    assert gaps == [8, 16, 16], probes  # fruitless probes back off to 4 x probe_every


def test_measured_step_times_correct_the_profile(target):
    """The profile says drafting pays; steps that draft really take 3x as long: SmartSpec learns it and stops."""
    policy = specdec.SmartSpec(max_depth=4, latency=synthetic_latency(target), time_decay=0.5, min_time_observations=2,
                               prior=0.7)  # held fixed: the reports below carry no accepted paths to learn from
    policy.start(target, Scripted(torch.zeros(1, 1, dtype=torch.long), lambda s: 0))
    context = specdec.StepContext([0], [20], [50], None, 4, None)
    first = policy.plan(context).depth[0]
    assert first >= 1  # the profile alone favours drafting
    chosen = []
    for _ in range(40):  # one step moves the learnt overhead by at most a factor of 1.5: a few dozen to learn 3x
        depth = policy.plan(context).depth[0]
        chosen.append(depth)
        truth = policy.times.profiled(1, depth, depth, 20) * (3.0 if depth else 1.0)
        policy.observe(specdec.StepReport([0], [depth], [depth], [0], 0.0, truth,
                                          tree=DraftTree.chain(torch.zeros(1, depth, dtype=torch.long))))
    assert chosen[-3:] == [0, 0, 0], chosen
    # drafting steps learnt to cost more than their profile says (relative to plain steps, which cost as profiled)
    assert policy.times.correction(1, 0) == pytest.approx(1.0)
    assert policy.times.correction(1, first) > 1.5
    fixed = specdec.SmartSpec(max_depth=4, latency=synthetic_latency(target), correct_times=False, prior=0.7)
    fixed.start(target, Scripted(torch.zeros(1, 1, dtype=torch.long), lambda s: 0))
    fixed.plan(context)
    fixed.observe(specdec.StepReport([0], [first], [first], [0], 0.0, 100.0,
                                     tree=DraftTree.chain(torch.zeros(1, first, dtype=torch.long))))
    assert fixed.times.correction(1, first) == 1.0 and fixed.plan(context).depth[0] == first


def test_greedy_stays_exact_with_a_real_drafter_in_batches(target):
    from test_batch import PAD, expected_batch, prompts

    rows = prompts(3, seed=2)
    ids, mask, expected = expected_batch(target, rows, 24, None, PAD)
    drafter = drafters.DraftModel(noisy_copy(target, 0.5), 4)
    policy = specdec.SmartSpec(latency=synthetic_latency(target, drafter.cost_name))
    out = specdec.generate(target, ids, drafter, attention_mask=mask, max_new_tokens=24, eos_token_id=[],
                           pad_token_id=PAD, speculation=policy)
    assert torch.equal(out.sequences, expected)


@pytest.mark.slow
def test_sampled_output_is_the_targets_law_while_k_changes():
    """Exact enumeration: a fresh SmartSpec per run changes k step to step; the law is exactly the target's.

    A four-token vocabulary keeps the enumeration to a couple of thousand runs.
    """
    target, draft = models(vocab=4)
    prompt = torch.tensor([[1, 3, 2]])
    expected = exact_law(target, 3, specdec.SamplingConfig(do_sample=True), prompt)
    latency = synthetic_latency(target, drafters.DraftModel(draft, 2).cost_name,
                                verify=(1.0, 0.0, 0.02, 0.0, 0.1, 0.0, 0.0, 0.0))
    depth_paths = set()

    def run(rng):
        policy = specdec.SmartSpec(max_depth=2, latency=latency, prior=0.6, decay=0.2)
        out = specdec.generate(target, prompt, drafters.DraftModel(draft, 2), max_new_tokens=3, do_sample=True,
                               eos_token_id=[], randomness=rng, speculation=policy)
        depth_paths.add(tuple(tuple(step) for step in out.stats.depth_chosen))
        return generated(out)

    law = enumerate_law(run)
    assert any(len(set(path)) > 1 for path in depth_paths), f"k never changed within a run: {depth_paths}"
    assert abs(sum(law.values()) - 1) < 1e-9
    assert max(abs(law[s] - expected[s]) for s in expected) < 1e-9


def test_a_latency_model_for_another_setting_is_refused(target, tmp_path):
    other = synthetic_latency(target)
    other.key = {**other.key, "threads": other.key["threads"] + 7}
    path = other.save(tmp_path / "latency.json")
    ids, ref = reference(target, 8)
    with pytest.raises(ValueError, match="another setting.*threads"):
        specdec.generate(target, ids, Scripted(ref, lambda s: 1), max_new_tokens=4,
                         speculation=specdec.SmartSpec(latency=path))
    with pytest.raises(ValueError, match="another setting"):
        specdec.generate(target, ids, Scripted(ref, lambda s: 1), max_new_tokens=4,
                         speculation=specdec.SmartSpec(latency=other))


@pytest.mark.parametrize("kwargs,error,message", [
    (dict(max_depth=0), ValueError, "max_depth"), (dict(prior=1.5), ValueError, "prior"),
    (dict(decay=1.0), ValueError, "decay"), (dict(margin=0.5), ValueError, "margin"),
    (dict(latency=5), TypeError, "latency"), (dict(probe_every=0), ValueError, "probe_every"),
])
def test_bad_arguments(kwargs, error, message):
    with pytest.raises(error, match=message):
        specdec.SmartSpec(**kwargs)


def test_latency_regression_fits_and_round_trips(tmp_path, target):
    import numpy as np

    from specdec.policy.latency import fit, verify_features

    grid = list(itertools.product((1, 2, 4), (0, 1, 3, 7), (64, 512)))
    b, n, c = (np.array(x, dtype=float) for x in zip(*grid))
    y = 0.04 + 0.002 * b * (n + 1) + 0.00001 * b * c + 0.01 * (b * (n + 1) > 2)
    model = fit(lambda form: verify_features(b, n, c, form), y)
    assert model.r2_heldout > 0.999
    saved = LatencyModel(latency_key(target), model).save(tmp_path / "m.json")
    back = LatencyModel.load(saved, latency_key(target))
    assert abs(back.verify_seconds(2, 3, 512) - (0.04 + 0.002 * 8 + 0.00001 * 1024 + 0.01)) < 1e-6


def test_fit_with_fewer_points_than_features_reproduces_them():
    """A drafter profiled at one depth gives fewer points than features: the fit still reproduces them."""
    from specdec.policy.latency import draft_features, fit

    batches, depths = [1, 2, 4, 8], [1, 1, 1, 1]
    y = np.array([0.003, 0.004, 0.006, 0.010])
    model = fit(lambda form: draft_features(batches, depths, form), y)
    assert np.allclose(draft_features(batches, depths, model.form) @ np.asarray(model.coef), y, atol=1e-9)
    with pytest.raises(ValueError, match="too few profiled points"):
        fit(lambda form: draft_features([1], [1], form), np.array([0.003]))


def test_inside_the_profiled_grid_the_measurements_answer(target):
    """Multilinear interpolation of the profiled points (exact for a multilinear law), context extrapolated;
    outside the grid's batch sizes and node counts, and for an incomplete grid, the regression answers."""
    from specdec.policy.latency import Grid

    def law(b, n, c):
        return 0.01 + 0.002 * b + 0.003 * n + 1e-5 * c + 0.001 * b * n

    points = [{"batch": b, "nodes": n, "context": c, "seconds": law(b, n, c)}
              for b in (1, 4) for n in (0, 2) for c in (100, 300)]
    axes = ("batch", "nodes", "context")
    for b, n, c in ((1, 0, 100), (2, 1, 200), (3, 2, 150), (4, 1, 500), (2, 0, 20)):
        got = Grid(points, axes).at({"batch": b, "nodes": n, "context": c}, extrapolate=("context",))
        assert got == pytest.approx(law(b, n, c), rel=1e-12)
    assert Grid(points, axes).at({"batch": 8, "nodes": 1, "context": 200}, extrapolate=("context",)) is None
    assert Grid(points, axes).at({"batch": 2, "nodes": 1, "context": 500}) is None  # no extrapolation asked
    assert Grid(points[:-1], axes).at({"batch": 2, "nodes": 1, "context": 200}) is None  # not a full grid
    model = LatencyModel(latency_key(target), Regression("linear", [0.5] + [0.0] * 7, 1.0), {}, {"verify": points})
    assert model.verify_seconds(2, 1, 200) == pytest.approx(law(2, 1, 200))
    assert model.verify_seconds(8, 1, 200) == pytest.approx(0.5)  # outside: the regression
    draft_points = [{"batch": b, "depth": k, "seconds": 0.001 * k * b} for b in (1, 4) for k in (1, 4)]
    model.add_drafter("D", Regression("linear", [0.7, 0.0, 0.0, 0.0], 1.0))
    assert model.draft_seconds("D", 2, 2) == pytest.approx(0.7)  # no points: the regression
    model.add_drafter("D", model.draft["D"], draft_points)
    assert model.draft_seconds("D", 2, 2) == pytest.approx(0.004)
    assert model.draft_seconds("D", 2, 8) == pytest.approx(0.7)
    assert model.draft_seconds("D", 2, 0) == 0.0


def test_profiled_grid_is_made_monotone_where_noise_broke_it():
    """Pool adjacent violators exactly; a grid where 3 nodes read cheaper than 2 is pooled along nodes (and
    stays monotone in every axis asked), while a grid that is already monotone is left as measured."""
    from specdec.policy.latency import Grid, isotonic

    assert isotonic([30.1, 32.3, 38.9, 33.5, 46.7]) == pytest.approx([30.1, 32.3, 36.2, 36.2, 46.7])
    assert isotonic([3.0, 2.0, 1.0]) == pytest.approx([2.0, 2.0, 2.0]) and isotonic([]) == []
    noisy = {(1, 0): 30.1, (1, 1): 32.3, (1, 2): 38.9, (1, 3): 33.5, (2, 0): 29.6, (2, 1): 35.0, (2, 2): 49.5,
             (2, 3): 56.3}
    points = [{"batch": b, "nodes": n, "seconds": v} for (b, n), v in noisy.items()]
    raw = Grid(points, ("batch", "nodes"))
    assert raw.at({"batch": 1, "nodes": 3}) == pytest.approx(33.5)  # as measured when not asked
    grid = Grid(points, ("batch", "nodes"), monotone=("nodes", "batch"))
    assert grid.at({"batch": 1, "nodes": 2}) == pytest.approx(36.2) == grid.at({"batch": 1, "nodes": 3})
    for n in range(4):
        row = [grid.at({"batch": b, "nodes": n}) for b in (1, 2)]
        assert row[0] <= row[1] + 1e-9  # batch 2 plain (29.6) no longer cheaper than batch 1 (30.1)
        assert [grid.at({"batch": 2, "nodes": k}) for k in range(4)] == sorted(grid.at({"batch": 2, "nodes": k})
                                                                               for k in range(4))
    clean = [{"batch": b, "nodes": n, "seconds": 10 + b + 2 * n} for b in (1, 2) for n in range(4)]
    assert Grid(clean, ("batch", "nodes"), monotone=("nodes", "batch")).values == Grid(clean, ("batch", "nodes")).values
    with pytest.raises(ValueError, match="not grid axes"):
        Grid(clean, ("batch", "nodes"), monotone=("depth",))


def test_an_overhead_learnt_while_busy_fades_over_plain_steps(target):
    """Drafting steps that ran slow (a busy spell) stop drafting; the plain steps that follow fade that
    overhead back towards the profile, so drafting is weighed again (with forget=1 it never would be)."""
    from specdec.policy.step_time import StepTimes

    for forget, fades in ((0.99, True), (1.0, False)):
        times = StepTimes(synthetic_latency(target), "ScriptedDrafter", forget=forget)
        for _ in range(20):
            times.observe(1, 2, 1.0, 1.5)  # width 2 measured 1.5x its profile
        assert times.correction(1, 2) > 1.4
        for _ in range(150):
            times.observe(1, 0, 1.0, 1.0)  # then only plain steps, as profiled
        assert (times.correction(1, 2) < 1.15) == fades
