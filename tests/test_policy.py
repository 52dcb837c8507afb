"""The speculation-policy protocol: per-row depths are obeyed, observe() hears per-row counts, placeholders stay exact."""
import pytest
import torch

import specdec
from conftest import tiny_llama
from exact_randomness import enumerate_law
from specdec import drafters
from specdec.inputs import left_padded
from test_batch import PAD, VOCAB, expected_batch, prompts, target  # noqa: F401  (fixture)
from test_sampling_lossless import exact_law
from test_sampling_lossless import models as small_models


class ScriptedPolicy(specdec.SpeculationPolicy):
    """Depth ``depths[sequence % len(depths)]`` for every row; records every context and report."""

    def __init__(self, depths):
        self.depths = depths
        self.contexts, self.reports = [], []

    def plan(self, context):
        self.contexts.append(context)
        return specdec.SpeculationPlan([self.depths[s % len(self.depths)] for s in context.sequences])

    def observe(self, report):
        self.reports.append(report)


class RecordingDrafter(drafters.DraftModel):
    """A DraftModel that keeps every request it was given."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.requests = []

    def propose(self, request):
        self.requests.append(request)
        return super().propose(request)


def test_per_row_depths_are_obeyed_and_observed(target):
    """Rows draft exactly the depth the policy gives them (within budget); observe hears each row's counts."""
    rows = prompts(3, seed=11)
    ids, mask, expected = expected_batch(target, rows, 20, None, PAD)
    policy = ScriptedPolicy([0, 2, 5])
    drafter = RecordingDrafter(target, 5)  # the target drafting for itself: every draft is accepted
    out = specdec.generate(target, ids, drafter, attention_mask=mask, max_new_tokens=20, eos_token_id=[],
                           pad_token_id=PAD, speculation=policy)
    assert torch.equal(out.sequences, expected)
    assert len(policy.contexts) == len(policy.reports) == out.stats.steps
    for context, report, chosen in zip(policy.contexts, policy.reports, out.stats.depth_chosen):
        want = [min([0, 2, 5][s], left - 1) for s, left in zip(context.sequences, context.remaining)]
        assert report.depth == want == chosen
        assert report.proposed == want  # placeholders past a row's depth are not counted
        assert report.accepted == want  # a self-draft: every real draft accepted
        assert report.sequences == context.sequences
        assert report.draft_seconds >= 0 and report.verify_seconds > 0
    # the drafter drafted to the deepest row's depth only
    assert all(r.max_depth == max(r.depth) for r in drafter.requests)
    # row 0 never drafted, so it gained one token per step; row 2 gained up to six
    assert out.stats.row_tokens == [20, 20, 20]


def test_a_row_near_its_budget_does_not_stop_its_neighbours(target):
    """With fixed k, a row one token from its budget drafts 0 while the others keep drafting k."""
    rows = prompts(2, seed=3)
    ids, mask, expected = expected_batch(target, rows, 13, None, PAD)
    out = specdec.generate(target, ids, drafters.DraftModel(target, 4), attention_mask=mask, max_new_tokens=13,
                           eos_token_id=[], pad_token_id=PAD)
    assert torch.equal(out.sequences, expected)
    # every step gains 5 tokens per row until the budget: 5, 10, then 3 left -> depth 2
    assert out.stats.depth_chosen == [[4, 4], [4, 4], [2, 2]]


def test_int_speculation_and_bad_policies(target):
    ids = torch.tensor([[5, 6, 7]])
    a = specdec.generate(target, ids, drafters.DraftModel(target, 4), max_new_tokens=9, speculation=2, eos_token_id=[])
    assert a.stats.depth_chosen[0] == [2]
    with pytest.raises(TypeError, match="SpeculationPolicy"):
        specdec.generate(target, ids, drafters.DraftModel(target, 4), max_new_tokens=4, speculation="fast")

    class Broken(specdec.SpeculationPolicy):
        def plan(self, context):
            return [3]
    with pytest.raises(TypeError, match="SpeculationPlan"):
        specdec.generate(target, ids, drafters.DraftModel(target, 4), max_new_tokens=4, speculation=Broken())
    with pytest.raises(ValueError, match="ints >= 0"):
        specdec.SpeculationPlan([-1])
    with pytest.raises(ValueError, match=">= 0"):
        specdec.FixedLength(-2)


def test_placeholders_under_sampling_keep_the_law_exact():
    """Rows of one batch drafting 0, 1 and 2 deep (placeholders fill the rest): the joint law is exact."""
    target, draft = small_models()
    config = specdec.SamplingConfig(do_sample=True, top_k=2)
    rows = [[1, 4, 2], [3, 1, 5, 5, 2], [2, 2]]
    ids, mask = left_padded(rows, "cpu")
    laws = [exact_law(target, 2, config, prompt=torch.tensor([r])) for r in rows]

    def run(rng):
        out = specdec.generate(target, ids, drafters.DraftModel(draft, 2), attention_mask=mask, max_new_tokens=2,
                               do_sample=True, top_k=2, eos_token_id=[], pad_token_id=0, randomness=rng,
                               speculation=ScriptedPolicy([0, 1, 2]))
        return tuple(tuple(out.sequences[r, -2:].tolist()) for r in range(3))

    law = enumerate_law(run)
    assert abs(sum(law.values()) - 1) < 1e-9
    for (a, b, c), prob in law.items():
        assert abs(prob - laws[0][a] * laws[1][b] * laws[2][c]) < 1e-9


def test_node_budgets_per_row_cut_the_tree(target):
    """A policy's per-row node budget leaves each row its first nodes only; output stays exact."""

    class Budgets(specdec.SpeculationPolicy):
        def plan(self, context):
            return specdec.SpeculationPlan([3] * context.batch_size, [1, 4, None][: context.batch_size])

    rows = prompts(3, seed=4)
    ids, mask, expected = expected_batch(target, rows, 12, None, PAD)
    drafter = drafters.RecursiveTree(tiny_llama(VOCAB, seed=9, eos_token_id=None), (3, 2, 1))
    out = specdec.generate(target, ids, drafter, attention_mask=mask, max_new_tokens=12, eos_token_id=[],
                           pad_token_id=PAD, speculation=Budgets())
    assert torch.equal(out.sequences, expected)
    tree = specdec.DraftTree(torch.zeros(3, 6, dtype=torch.long), torch.tensor([-1, -1, -1, 0, 0, 1]))
    cut = tree.limited([3, 3, 1], [1, 4, None])
    assert cut.valid_counts == [1, 4, 3]
    assert cut.valid[1].tolist() == [True, True, True, True, False, False]
    assert cut.valid[2].tolist() == [True, True, True, False, False, False]  # depth 1 only
