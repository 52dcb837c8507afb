"""A reduced draft vocabulary stays lossless: tokens outside it are never drafted, and the output law is the target's."""
import copy

import torch

import specdec
from conftest import tiny_llama
from exact_randomness import enumerate_law
from specdec import drafters
from specdec.drafters.vocab import SubsetHead, coverage, top_tokens, with_subset_head
from test_sampling_lossless import PROMPT, VOCAB, exact_law, generated, models


def test_subset_head_logits():
    weight = torch.randn(3, 4, dtype=torch.float64)
    head = SubsetHead(weight, torch.tensor([5, 0, 2]), vocab_size=7)
    h = torch.randn(2, 4, dtype=torch.float64)
    logits = head(h)
    assert logits.shape == (2, 7)
    assert torch.equal(logits[:, [5, 0, 2]], h @ weight.T)
    assert torch.isinf(logits[:, [1, 3, 4, 6]]).all()


def test_greedy_never_drafts_a_token_outside_the_subset():
    """A target drafting for itself through a subset head that lacks some of its argmaxes: those are
    never proposed (those steps accept nothing), and the output is still exactly generate's."""
    target = tiny_llama(64, seed=0, eos_token_id=None)
    ids = torch.randint(3, 64, (1, 6), generator=torch.Generator().manual_seed(2))
    ref = target.generate(ids, max_new_tokens=30, do_sample=False, pad_token_id=0)
    produced = set(ref[0, ids.shape[1]:].tolist())
    excluded = sorted(produced)[: len(produced) // 2]
    keep = torch.tensor([t for t in range(64) if t not in excluded])
    draft = with_subset_head(copy.deepcopy(target), keep)

    class Recording(drafters.DraftModel):
        proposed = []

        def propose(self, request):
            tree = super().propose(request)
            self.proposed += tree.tokens.flatten().tolist()
            return tree

    drafter = Recording(draft, 3)
    out = specdec.generate(target, ids, drafter, max_new_tokens=30, eos_token_id=[])
    assert torch.equal(out.sequences, ref)
    assert drafter.proposed and not set(drafter.proposed) & set(excluded)
    assert 0 < out.stats.mean_accepted_tokens < 4  # some drafts accepted, not all


def test_the_output_law_is_the_targets_when_the_subset_excludes_its_favourites():
    """Enumerating every draw: a draft over 3 of 6 tokens (not the target's likeliest) keeps the exact law."""
    target, draft = models()
    config = specdec.SamplingConfig(do_sample=True)
    with torch.no_grad():
        favourite = int(target(PROMPT).logits[0, -1].argmax())
    keep = torch.tensor([t for t in range(VOCAB) if t != favourite][:3])
    draft = with_subset_head(draft, keep)
    expected = exact_law(target, 2, config)
    law = enumerate_law(lambda rng: generated(specdec.generate(
        target, PROMPT, drafters.DraftModel(draft, 2), max_new_tokens=2, do_sample=True, eos_token_id=[],
        randomness=rng)))
    assert abs(sum(law.values()) - 1) < 1e-9
    assert max(abs(law[s] - expected[s]) for s in expected) < 1e-9
    assert law[(favourite, favourite)] > 0  # tokens the draft cannot propose still come out


def test_coverage_and_top_tokens():
    counts = torch.tensor([5, 0, 3, 2])
    assert coverage(counts, 2) == 0.8
    assert top_tokens(counts, 2).tolist() == [0, 2]
    assert top_tokens(counts, 2, always=[1]).tolist() == [0, 1]


def test_greedy_drafts_from_the_subset_logits_what_the_full_logits_would(monkeypatch):
    """Greedy DraftModel takes the argmax over the subset's own logits (mapped to target ids) instead of
    building full-vocabulary logits: it must draft the same tokens as the full-logits path."""
    from specdec.drafters import draft_model

    target = tiny_llama(64, seed=0, eos_token_id=None)
    keep = torch.randperm(64, generator=torch.Generator().manual_seed(5))[:40]  # not in id order
    draft = with_subset_head(tiny_llama(64, seed=1, eos_token_id=None), keep)
    ids = torch.randint(3, 64, (2, 6), generator=torch.Generator().manual_seed(3))

    def proposals():
        class Recording(drafters.DraftModel):
            proposed = []

            def propose(self, request):
                tree = super().propose(request)
                self.proposed.append(tree.tokens.clone())
                return tree

        drafter = Recording(draft, 3)
        out = specdec.generate(target, ids, drafter, max_new_tokens=20, eos_token_id=[])
        return out.sequences, drafter.proposed

    sequences, subset_path = proposals()
    monkeypatch.setattr(draft_model, "SubsetHead", type("NotASubsetHead", (), {}))  # the full-logits path
    reference, full_path = proposals()
    assert torch.equal(sequences, reference)
    assert len(subset_path) == len(full_path) > 3
    assert all(torch.equal(a, b) for a, b in zip(subset_path, full_path))
    assert set(torch.cat([p.flatten() for p in subset_path]).tolist()) <= set(keep.tolist())
