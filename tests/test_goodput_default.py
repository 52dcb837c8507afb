"""The goodput policy as generate's default: pruned trees stay exact (greedy and sampled, in batches), and
``speculation`` still fixes a depth or turns drafting off."""
import logging

import pytest
import torch
from conftest import tiny_llama
from exact_randomness import enumerate_law
from scripted import noisy_copy
from test_batch import PAD, VOCAB, expected_batch, prompts
from test_sampling_lossless import exact_law, generated, models
from test_smartspec import synthetic_latency

import specdec
from specdec import drafters
from specdec.heads.medusa import MedusaHeads


@pytest.fixture(scope="module")
def target():
    return tiny_llama(VOCAB, seed=0, eos_token_id=None, pad_token_id=PAD)


def cheap_to_three(model, drafter):
    """Verifying up to 3 nodes per row costs almost nothing more, 4 or more twice as much: pruning has work to do."""
    latency = synthetic_latency(model, drafter.cost_name, draft=(0.0, 0.01, 0.0, 0.0))
    latency.points["verify"] = [{"batch": b, "nodes": n, "context": c, "seconds": 1.0 + 0.01 * n + (1.0 if n > 3 else 0.0)}
                                for b in (1, 4) for n in range(17) for c in (0, 1000)]
    return latency


class KeepFirst(specdec.SpeculationPolicy):
    """Drafts ``depth`` deep and keeps, per row, the first ``keep[row % len(keep)]`` nodes of its growth
    order by depth-first draw order (closed under parents and earlier siblings), or a mask from ``rule``."""

    def __init__(self, depth, keep=(1,), rule=None):
        self.depth, self.keep, self.rule = depth, keep, rule
        self.widths = []

    def plan(self, context):
        return specdec.SpeculationPlan([self.depth] * context.batch_size)

    def prune(self, tree):
        if self.rule is not None:
            mask = self.rule(tree)
        else:
            mask = torch.zeros(tree.tokens.shape, dtype=torch.bool)
            for row in range(tree.batch_size):
                mask[row, :self.keep[row % len(self.keep)]] = True  # node order: parents and earlier siblings first
        self.widths.append(int((mask & tree.node_valid).sum(1).max()))
        return mask


@pytest.mark.parametrize("make", ["rsd", "medusa", "chain"])
def test_pruned_trees_keep_greedy_output_in_batches(target, make):
    """Per-row pruning (rows keep 1, 3 or 2 nodes) with compaction: every row equals its own generate."""
    rows = prompts(3, seed=5)
    ids, mask, expected = expected_batch(target, rows, 20, None, PAD)
    draft = noisy_copy(target, 0.3)
    drafter = {"rsd": lambda: drafters.RecursiveTree(draft, (2, 2, 1)),
               "medusa": lambda: drafters.Medusa(MedusaHeads(32, 2).double(), [(0,), (1,), (0, 0), (2,), (0, 1)]),
               "chain": lambda: drafters.DraftModel(draft, 4)}[make]()
    policy = KeepFirst(3 if make != "medusa" else 2, keep=(1, 3, 2))
    out = specdec.generate(target, ids, drafter, attention_mask=mask, max_new_tokens=20, eos_token_id=[],
                           pad_token_id=PAD, speculation=policy)
    assert torch.equal(out.sequences, expected)
    assert max(policy.widths) == 3 and min(policy.widths) >= 1  # the verified trees really were pruned


def test_the_goodput_policy_prunes_real_trees_and_stays_exact_with_eos(target):
    """SmartSpec over RSD and Medusa card-like trees in a batch with an EOS id: exact, and no verified tree
    wider than the cost curve allows."""
    rows = prompts(3, seed=8)
    eos = 7
    ids, mask, expected = expected_batch(target, rows, 24, eos, PAD)
    for drafter in (drafters.RecursiveTree(noisy_copy(target, 0.2), (3, 2, 1)),
                    drafters.Medusa(MedusaHeads(32, 3).double(), [(0,), (1,), (0, 0), (2,), (0, 1), (0, 0, 0)])):
        policy = specdec.SmartSpec(latency=cheap_to_three(target, drafter), correct_times=False)
        out = specdec.generate(target, ids, drafter, attention_mask=mask, max_new_tokens=24, eos_token_id=eos,
                               pad_token_id=PAD, speculation=policy)
        assert torch.equal(out.sequences, expected)
        assert max(h["width"] for h in policy.history) <= 3


@pytest.mark.slow
def test_sampled_law_is_exact_under_pruned_sampled_trees_and_a_broken_prune_is_caught():
    """Exact enumeration on a four-token model: RSD's siblings drawn without replacement, pruned to a
    prefix of each sibling list, keep the target's law; keeping a later sibling without the first does not."""
    target, draft = models(vocab=4)
    prompt = torch.tensor([[1, 3, 2]])
    expected = exact_law(target, 2, specdec.SamplingConfig(do_sample=True), prompt)

    def law_with(rule):
        def run(rng):
            out = specdec.generate(target, prompt, drafters.RecursiveTree(draft, (3, 2)), max_new_tokens=2,
                                   do_sample=True, eos_token_id=[], randomness=rng, speculation=KeepFirst(2, rule=rule))
            return generated(out)
        return enumerate_law(run)

    def prefix(tree):  # the first two children of the root and the first child of the first: closed
        parents = tree.parents[0].tolist()
        first_child = [i for i, p in enumerate(parents) if p == 0][:1]
        mask = torch.zeros(tree.tokens.shape, dtype=torch.bool)
        mask[:, [0, 1] + first_child] = True
        return mask

    def skips_the_first_sibling(tree):  # node 1 without node 0: not a prefix of the draw order
        mask = torch.zeros(tree.tokens.shape, dtype=torch.bool)
        mask[:, [1]] = True
        return mask

    law = law_with(prefix)
    assert abs(sum(law.values()) - 1) < 1e-9
    assert max(abs(law.get(s, 0.0) - p) for s, p in expected.items()) < 1e-9
    broken = law_with(skips_the_first_sibling)
    assert abs(sum(broken.values()) - 1) < 1e-9
    assert max(abs(broken.get(s, 0.0) - p) for s, p in expected.items()) > 1e-3  # the test can fail


@pytest.mark.goodput_default
def test_generate_defaults_to_the_drafters_goodput_policy(target, caplog):
    """No speculation: the drafter's own SmartSpec, profiled on first use (it says so), kept across calls;
    an int still fixes the depth and 0 is plain decoding."""
    ids = torch.randint(3, VOCAB, (1, 6), generator=torch.Generator().manual_seed(4))
    want = target.generate(ids, max_new_tokens=12, do_sample=False, pad_token_id=PAD)
    drafter = drafters.DraftModel(noisy_copy(target, 0.2), 3)
    with caplog.at_level(logging.WARNING, logger="specdec.policy.profile"):
        first = specdec.generate(target, ids, drafter, max_new_tokens=12, eos_token_id=[])
    assert any("profiling it now" in r.getMessage() for r in caplog.records)
    policy = drafter.default_policy()
    assert isinstance(policy, specdec.SmartSpec) and len(policy.history) == first.stats.steps
    second = specdec.generate(target, ids, drafter, max_new_tokens=12, eos_token_id=[])
    assert drafter.default_policy() is policy and len(policy.history) == first.stats.steps + second.stats.steps
    assert torch.equal(first.sequences, want) and torch.equal(second.sequences, want)
    plain = specdec.generate(target, ids, drafter, max_new_tokens=12, eos_token_id=[], speculation=0)
    assert torch.equal(plain.sequences, want) and all(max(d) == 0 for d in plain.stats.depth_chosen)
    fixed = specdec.generate(target, ids, drafter, max_new_tokens=12, eos_token_id=[], speculation=2)
    assert torch.equal(fixed.sequences, want) and all(max(d) == 2 for d in fixed.stats.depth_chosen[:-1])
