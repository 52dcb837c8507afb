"""Hybrid drafting: copies and a model's tree in one tree, merged, exact under greedy and sampling."""
import pytest
import torch

import specdec
from conftest import tiny_llama
from exact_randomness import enumerate_law
from scripted import noisy_copy
from specdec import acceptance, drafters
from specdec.drafters import Hybrid, SuffixCache, merge_copies
from specdec.tree import DraftTree
from test_sampling_lossless import PROMPT, VOCAB as SMALL_VOCAB, exact_law, generated, models

VOCAB = 64


# ---- merging ---------------------------------------------------------------------------------------
def test_copies_merge_into_equal_nodes_and_follow_the_models():
    """A copy equal to a model node descends into it; new copies are numbered after the model's nodes."""
    # model tree, 2 rows: root -> 5 (node 0) -> 6 (node 1); root -> 7 (node 2)
    model = DraftTree(torch.tensor([[5, 6, 7], [5, 6, 7]]), torch.tensor([-1, 0, -1]))
    chains = [[[5, 6, 9], [8]], [[3, 4]]]
    tree = merge_copies(model, chains)
    assert tree.tokens[:, :3].tolist() == [[5, 6, 7], [5, 6, 7]]  # the model's numbering is kept
    assert tree.parents[0].tolist() == [-1, 0, -1, 1, -1]  # 9 below 5 -> 6, 8 below the root
    assert tree.tokens[0, 3:].tolist() == [9, 8]
    assert tree.parents[1].tolist() == [-1, 0, -1, -1, 3]  # 3 -> 4 below the root
    assert tree.tokens[1, 3:].tolist() == [3, 4]
    # point-mass model nodes a copy ran through (5 -> 6 in row 0) count as copies
    assert tree.copied.tolist() == [[True, True, False, True, True], [False, False, False, True, True]]
    assert merge_copies(model, [[], []]) is model  # nothing copied: the model's own tree
    same = merge_copies(model, [[[5, 6]], [[7]]])
    assert torch.equal(same.tokens, model.tokens) and same.copied.tolist() == [[True, True, False], [False, False, True]]


def test_copied_rows_are_point_masses_beside_the_models_law():
    probs = torch.softmax(torch.randn(1, 1, 6, dtype=torch.float64), -1)
    model = DraftTree(torch.tensor([[2]]), torch.tensor([-1]), probs)
    assert merge_copies(model, [[[2, 5]]]).copied.tolist() == [[False, True]]  # a drawn node stays drawn
    tree = merge_copies(model, [[[4, 1]]])
    assert torch.equal(tree.draft_probs[0, 0], probs[0, 0])
    assert tree.draft_probs[0, 1].tolist() == [0, 0, 0, 0, 1, 0]
    assert tree.draft_probs[0, 2].tolist() == [0, 1, 0, 0, 0, 0]
    assert tree.copied[0].tolist() == [False, True, True]


def test_select_and_take_rows_keep_the_copied_marks():
    model = DraftTree(torch.tensor([[5, 6], [5, 6]]), torch.tensor([-1, 0]))
    tree = merge_copies(model, [[[8, 9]], [[8]]])
    kept, origin = tree.select(torch.tensor([[True, False, True, True], [False, False, True, False]]))
    assert kept.copied.tolist() == [[False, True, True], [True, False, False]]  # (5 -> 6 copied nothing: no marks)
    assert origin.tolist() == [[0, 2, 3], [2, -1, -1]]
    assert tree.take_rows(torch.tensor([1])).copied.tolist() == [[False, False, True, False]]


def test_sources_follow_the_copies_through_merging_selection_and_rows():
    """Each copied node keeps the source of the copy that added it; the model's nodes stay source 0, also
    where a copy ran through them (so the model's sibling ranks and acceptance are learnt as if alone)."""
    model = DraftTree(torch.tensor([[5, 6, 7], [5, 6, 7]]), torch.tensor([-1, 0, -1]))
    tree = merge_copies(model, [[[5, 6, 9], [8]], [[3, 4], [3, 2]]], [[3, 1], [2, 1]])
    # row 0: 5 -> 6 (model nodes a class-3 copy ran through: marked copied, source 0), 9 below them (class 3),
    # 8 (class 1), a placeholder;
    # row 1: 3 -> 4 (class 2), then 2 below that 3 (class 1: the node it adds)
    assert tree.sources.tolist() == [[0, 0, 0, 3, 1, 0], [0, 0, 0, 2, 2, 1]]
    assert tree.copied.tolist() == [[True, True, False, True, True, False], [False, False, False, True, True, True]]
    assert tree.node_sources() == tree.sources.tolist()
    kept, _ = tree.select(torch.tensor([[True, True, True, False, True, False], [False, False, False, True, False, True]]))
    assert kept.sources.tolist() == [[0, 0, 0, 1], [2, 1, 0, 0]]
    assert tree.take_rows(torch.tensor([1])).sources.tolist() == [[0, 0, 0, 2, 2, 1]]
    assert merge_copies(model, [[[8]], []]).node_sources() == [[0, 0, 0, 1], [0, 0, 0, 0]]  # default: class 1


def test_copies_are_classed_by_how_long_a_tail_they_matched(target):
    """A continuation found after a long match is source 1, one found after a single token the last class."""
    from specdec.drafters.hybrid import copy_source

    assert [copy_source(n, (4, 2, 1)) for n in (9, 4, 3, 2, 1)] == [1, 1, 2, 2, 3]
    assert [copy_source(n, (1,)) for n in (5, 1)] == [1, 1]
    hybrid = Hybrid(drafters.DraftModel(target, num_tokens=2), copy_tokens=3, candidates=2, suffix_cache=False)
    # the tail [7, 8, 9, 10] occurred before (followed by 11, 12, 13); the tail [10] also after 40 (then 41)
    prompt = torch.tensor([[7, 8, 9, 10, 11, 12, 13, 10, 41, 3, 7, 8, 9, 10]])
    hybrid.start(target, prompt, torch.ones_like(prompt), None)
    # matches, longest first: 4, 3 and 2 tokens (all then 11, 12, 13), 1 token (its latest occurrence: then 41)
    assert hybrid._copies(0, 3) == [([11, 12, 13], 1), ([41, 3, 7], 3)]
    one_class = Hybrid(drafters.DraftModel(target, num_tokens=2), copy_tokens=3, suffix_cache=False, copy_classes=(1,))
    one_class.start(target, prompt, torch.ones_like(prompt), None)
    assert one_class._copies(0, 3) == [([11, 12, 13], 1), ([41, 3, 7], 1)]
    assert hybrid.source_priors()[1][0] > hybrid.source_priors()[3][0]
    with pytest.raises(ValueError, match="copy_classes"):
        Hybrid(drafters.DraftModel(target, num_tokens=2), copy_classes=(1, 2))


# ---- greedy: identical to generate ----------------------------------------------------------------
@pytest.fixture(scope="module")
def target():
    return tiny_llama(VOCAB, seed=0, eos_token_id=None, pad_token_id=0)


def repetitive_prompts(batch: int, seed: int = 0) -> torch.Tensor:
    """Rows that repeat a random phrase, so copies find matches (ragged: the first row is shorter)."""
    g = torch.Generator().manual_seed(seed)
    rows = [torch.randint(3, VOCAB, (5,), generator=g).repeat(3) for _ in range(batch)]
    return torch.stack(rows)


def model_drafter(kind: str, target):
    if kind == "draft":
        return drafters.DraftModel(noisy_copy(target, 0.5), num_tokens=3)
    if kind == "self":
        return drafters.DraftModel(target, num_tokens=2)
    if kind == "rsd":
        return drafters.RecursiveTree(noisy_copy(target, 0.5), branching=[2, 1])
    raise ValueError(kind)


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("kind", ["draft", "self", "rsd"])
def test_greedy_hybrid_matches_generate(target, kind, batch):
    ids = repetitive_prompts(batch, seed=batch)
    mask = torch.ones_like(ids)
    mask[0, :4] = 0  # a ragged batch (left padding)
    ref = target.generate(ids, attention_mask=mask, max_new_tokens=20, do_sample=False, pad_token_id=0)
    drafter = Hybrid(model_drafter(kind, target), copy_tokens=6)
    out = specdec.generate(target, ids, drafter, attention_mask=mask, max_new_tokens=20, eos_token_id=[])
    assert torch.equal(out.sequences, ref)


def test_greedy_hybrid_stops_at_eos_like_generate(target):
    ids = repetitive_prompts(2, seed=5)
    free = target.generate(ids, max_new_tokens=16, do_sample=False, pad_token_id=0)
    eos = int(free[1, ids.shape[1] + 5])  # a token row 1 emits mid-way
    ref = target.generate(ids, max_new_tokens=16, do_sample=False, pad_token_id=0, eos_token_id=eos)
    out = specdec.generate(target, ids, Hybrid(model_drafter("draft", target)), max_new_tokens=16,
                           eos_token_id=eos, pad_token_id=0)
    assert torch.equal(out.sequences, ref[:, :out.sequences.shape[1]])


@pytest.mark.goodput_default
def test_hybrid_under_the_goodput_default_matches_generate(target):
    ids = repetitive_prompts(2, seed=3)
    ref = target.generate(ids, max_new_tokens=24, do_sample=False, pad_token_id=0)
    out = specdec.generate(target, ids, Hybrid(model_drafter("self", target)), max_new_tokens=24, eos_token_id=[])
    assert torch.equal(out.sequences, ref)


def test_a_copy_is_accepted_where_the_model_fails(target):
    """With an unrelated model, the tokens the hybrid gets accepted beyond plain decoding come from copies."""
    ids = repetitive_prompts(1, seed=9)
    ref = target.generate(ids, max_new_tokens=40, do_sample=False, pad_token_id=0)
    unrelated = drafters.DraftModel(tiny_llama(VOCAB, seed=7, eos_token_id=None), num_tokens=1)
    alone = specdec.generate(target, ids, unrelated, max_new_tokens=40, eos_token_id=[])
    unrelated = drafters.DraftModel(tiny_llama(VOCAB, seed=7, eos_token_id=None), num_tokens=1)
    hybrid = specdec.generate(target, ids, Hybrid(unrelated, copy_tokens=8), max_new_tokens=40, eos_token_id=[])
    assert torch.equal(hybrid.sequences, ref) and torch.equal(alone.sequences, ref)
    assert hybrid.stats.steps < alone.stats.steps


# ---- sampling: the target's law, exactly -----------------------------------------------------------
REPEATING = torch.tensor([[1, 4, 2, 1, 4]])  # tails "4" and "1 4" occurred before: copies at every step


def _hybrid_law(target, draft, length, residual_after_point_mass=None, monkeypatch=None):
    if residual_after_point_mass is not None:
        monkeypatch.setattr(acceptance, "residual_after_point_mass", residual_after_point_mass)
    kwargs = dict(max_new_tokens=length, do_sample=True, eos_token_id=[])

    def run(rng):
        drafter = Hybrid(drafters.DraftModel(draft, num_tokens=2), copy_tokens=2, candidates=2, max_ngram=2)
        out = specdec.generate(target, REPEATING, drafter, randomness=rng, **kwargs)
        return tuple(out.sequences[0, REPEATING.shape[1]:].tolist())

    return enumerate_law(run)


def test_sampled_hybrid_keeps_the_target_law_exactly():
    """Model draws and copies as siblings at one depth: recursive rejection sampling keeps p exactly."""
    from specdec.sampling import SamplingConfig

    target, draft = models()
    config = SamplingConfig(do_sample=True)
    expected = exact_law(target, 2, config, REPEATING)
    law = _hybrid_law(target, draft, 2)
    assert abs(sum(law.values()) - 1) < 1e-9
    for seq, prob in expected.items():
        assert abs(law.get(seq, 0.0) - prob) < 1e-9, (seq, law.get(seq), prob)


def test_a_mixed_tree_is_drafted_in_that_enumeration():
    """The law test above sees copies beside drawn siblings at the same depth (else it proves little)."""
    target, draft = models()
    from specdec.sampling import seeded_randomness

    seen = []
    real = acceptance.recursive_rejection_sampling

    def spy(tree, p, rng):
        seen.append(tree)
        return real(tree, p, rng)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(acceptance, "recursive_rejection_sampling", spy)
        for seed in range(6):
            drafter = Hybrid(drafters.DraftModel(draft, num_tokens=2), copy_tokens=2, candidates=2, max_ngram=2)
            specdec.generate(target, REPEATING, drafter, randomness=seeded_randomness(seed), max_new_tokens=2,
                             do_sample=True, eos_token_id=[])
    mixed = [t for t in seen if t.copied is not None and t.draft_probs is not None
             and any(bool(t.copied[0, kids].any()) and not bool(t.copied[0, kids].all())
                     for kids in (torch.tensor(k) for k in t.children[0] if len(k) > 1))]
    assert mixed


def _residual_kept_after_point_masses(r, x):
    """Mutant of ``acceptance.residual_after_point_mass``: a rejected copy leaves the running residual as it was."""
    return r


def test_exact_check_fails_when_a_copy_leaves_the_residual_unchanged(monkeypatch):
    """Negative control: the same enumeration catches a verifier that skips the residual update at copies."""
    from specdec.sampling import SamplingConfig

    target, draft = models()
    expected = exact_law(target, 2, SamplingConfig(do_sample=True), REPEATING)
    law = _hybrid_law(target, draft, 2, _residual_kept_after_point_masses, monkeypatch)
    assert max(abs(law.get(seq, 0.0) - prob) for seq, prob in expected.items()) > 1e-3


# ---- the suffix cache ------------------------------------------------------------------------------
def test_suffix_cache_finds_continuations_across_documents():
    cache = SuffixCache(max_ngram=3, min_ngram=2)
    cache.begin([1, 2, 3, 4, 5])
    doc = cache.begin([9, 9])
    cache.extend(doc, [2, 3, 7])
    assert cache.continuations([8, 2, 3], 2) == [[7]]  # the latest occurrence of (2, 3): the second document
    assert cache.continuations([1, 2, 3], 3) == [[4, 5], [7]]  # (1, 2, 3), then (2, 3)
    assert cache.continuations([6, 6], 2) == []


def test_suffix_cache_stays_within_its_limit_and_drops_the_oldest():
    cache = SuffixCache(max_tokens=40, max_ngram=3, min_ngram=2)
    first = cache.begin(list(range(100, 120)))
    for i in range(5):
        cache.begin(list(range(200 + 20 * i, 220 + 20 * i)))
    assert len(cache) <= 40
    assert first not in cache.documents
    assert cache.continuations([100, 101], 2) == []  # the dropped document's n-grams are gone
    assert cache.continuations([280, 281], 2) == [[282, 283]]
    assert "40 tokens" in repr(cache) or "of 40" in repr(cache)
    with pytest.raises(ValueError, match="max_tokens"):
        SuffixCache(max_tokens=0)


def test_a_shared_suffix_cache_speeds_up_a_repeated_request(target):
    """The second identical request copies the first one's output from the cache: fewer steps, same tokens."""
    g = torch.Generator().manual_seed(11)
    ids = torch.randint(3, VOCAB, (1, 12), generator=g)
    ref = target.generate(ids, max_new_tokens=30, do_sample=False, pad_token_id=0)
    cache = SuffixCache()
    unrelated = lambda: drafters.DraftModel(tiny_llama(VOCAB, seed=7, eos_token_id=None), num_tokens=1)  # noqa: E731
    first = specdec.generate(target, ids, Hybrid(unrelated(), copy_tokens=8, suffix_cache=cache),
                             max_new_tokens=30, eos_token_id=[])
    second = specdec.generate(target, ids, Hybrid(unrelated(), copy_tokens=8, suffix_cache=cache),
                              max_new_tokens=30, eos_token_id=[])
    assert torch.equal(first.sequences, ref) and torch.equal(second.sequences, ref)
    assert second.stats.steps < first.stats.steps


def test_hybrid_rejects_bad_arguments(target):
    with pytest.raises(TypeError, match="drafter"):
        Hybrid(target)
    with pytest.raises(ValueError, match="copy_tokens"):
        Hybrid(drafters.PromptLookup(), copy_tokens=0)


# ---- the goodput policy splits the tree between the sources -----------------------------------------
def test_goodput_copies_without_running_a_model_that_does_not_pay(target):
    """With a dear, useless model and copies that match, the policy asks for copies alone (its free sources),
    the model is not run on those steps, and the output stays exact."""
    from test_smartspec import synthetic_latency

    class Counting(drafters.DraftModel):
        calls = 0

        def propose(self, request):
            Counting.calls += 1
            return super().propose(request)

    unrelated = Counting(tiny_llama(VOCAB, seed=7, eos_token_id=None), num_tokens=2)
    hybrid = Hybrid(unrelated, copy_tokens=6, suffix_cache=False)
    # drafting costs 2 s a level, verifying ~1 s: only free copies can pay
    latency = synthetic_latency(target, hybrid.cost_name, draft=(0.0, 2.0, 0.0, 0.0))
    policy = specdec.SmartSpec(latency=latency, correct_times=False, decay=0.5)
    ids = repetitive_prompts(1, seed=9)
    ref = target.generate(ids, max_new_tokens=40, do_sample=False, pad_token_id=0)
    seen = []
    real_plan = policy.plan
    policy.plan = lambda context: seen.append(real_plan(context)) or seen[-1]
    out = specdec.generate(target, ids, hybrid, max_new_tokens=40, eos_token_id=[], speculation=policy)
    assert torch.equal(out.sequences, ref)
    assert hybrid.free_sources == (1, 2, 3)  # the three classes of copies by match length
    copy_only = [p for p in seen if p.sources == hybrid.free_sources and max(p.depth) > 0]
    assert len(copy_only) > len(seen) // 2
    full = [p for p in seen if p.sources is None and max(p.depth) > 0]
    assert Counting.calls == len(full)


def test_the_policy_learns_each_class_of_copies_apart():
    """Copies of a class that keeps being right earn the nodes; those of a class that keeps failing lose
    them, though both hang below the root at rank 0 of their class."""
    from specdec.policy.acceptance_rates import RankRates, geometric_prior
    from specdec.policy.pruning import growth_order, path_values

    rates = RankRates(geometric_prior([0.5]), decay=0.9, source_priors={1: geometric_prior([0.5]),
                                                                        3: geometric_prior([0.5])})
    parents, sources = [-1, 0, -1, 2], [1, 1, 3, 3]  # a class-1 chain, then a class-3 chain
    for _ in range(20):
        rates.observe(0, parents, [True] * 4, path=[0, 1], allowed=True, sources=sources)
    values = path_values(parents, rates.rates_of(0), None, sources)
    assert values[0] > 0.9 and values[1] > 0.8 and values[2] < 0.1
    assert growth_order(parents, values, None, sources)[:2] == [0, 1]


def test_copy_acceptance_by_class_counts_what_a_greedy_target_would_keep():
    """The study behind the classes' priors (bench/copy_classes.py), on hand-made answers."""
    from specdec.bench.copy_classes import copy_acceptance

    pairs = [([5, 6, 7, 8, 5, 6], [7, 8, 9]),  # copies 7 8 5 (2 right), 8 5 6 (1), 5 6 7 (0): all after 2+ tokens
             ([3, 4, 3], [4])]  # 4 3 after a 1-token match: 1 right, then the answer ends
    table = copy_acceptance(pairs, classes=(2, 1), candidates=1, copy_tokens=3)
    assert table[1] == {"first": 0.75, "chains": 3, "rates": [0.667, 0.5, 0.0]}
    assert table[2] == {"first": 0.25, "chains": 1, "rates": [1.0, 0.0, None]}
