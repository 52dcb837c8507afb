"""Stochastic beam trees verified by recursive rejection sampling keep the target's law exactly.

Stochastic beam search draws continuous Gumbel noise, so its trees cannot be enumerated by
scripting the drafter's random draws.  Its law has a discrete description instead (Kool et
al., 2019): the top-down conditioned Gumbels are the maxima of independent Gumbel-perturbed
log-probabilities of the depth-L sequences (the leaves), so a node's rank at its depth is
the rank at which its first leaf appears when the leaves are drawn one by one without
replacement in proportion to their probability.  The beam at depth d is the first
``sizes[d]`` distinct depth-d prefixes of that leaf order.

1. ``beam_tree_law`` enumerates that leaf order exactly and gives every tree's probability.
2. Recursive rejection sampling is enumerated exactly on every such tree, and the tokens it
   emits, completed by the target's own conditional law, are distributed exactly as the
   target's (to 1e-12); a verifier mutant fails the same check.
3. The drafter's own stochastic beam trees (``RecursiveTree(method="stochastic_beam")`` on a
   tiny model) pass a chi-square test against ``beam_tree_law``, and a naive beam that
   perturbs each depth with fresh, unconditioned Gumbels fails it.
"""
import itertools
import math

import pytest
import torch

from conftest import tiny_llama
from exact_randomness import enumerate_law
from specdec import acceptance, drafters
from specdec.drafters import recursive_tree
from scripted import draft_request
from specdec.sampling import SamplingConfig, seeded_randomness
from specdec.tree import DraftTree
from test_sampling_lossless import chi_square_pvalue


# ---- the exact law of a stochastic beam tree ----------------------------------------------------
def beam_tree_law(q, vocab: int, sizes: tuple[int, ...]) -> dict:
    """Exact law of the stochastic beam tree kept at each depth (``sizes[d]`` nodes at depth d+1).

    ``q(prefix)`` is the draft's law (a list of ``vocab`` floats) after the tuple ``prefix``.
    A tree is a tuple of levels; a level is a tuple of prefixes in the drafter's order
    (by the parent's place in the level above, then by rank).
    """
    depth = len(sizes)
    leaves = list(itertools.product(range(vocab), repeat=depth))
    mass = [math.prod(q(leaf[:i])[leaf[i]] for i in range(depth)) for leaf in leaves]

    def run(rng):
        remaining = torch.tensor(mass, dtype=torch.float64)
        seen = [[] for _ in range(depth)]  # distinct prefixes per depth, in order of appearance
        while any(len(seen[d]) < sizes[d] for d in range(depth)) and remaining.sum() > 0:
            leaf = leaves[int(rng.categorical(remaining))]
            remaining[leaves.index(leaf)] = 0
            for d in range(depth):
                if leaf[: d + 1] not in seen[d]:
                    seen[d].append(leaf[: d + 1])
        levels, above = [], [()]
        for d in range(depth):
            kept = seen[d][: sizes[d]]
            level = tuple(sorted(kept, key=lambda s: (above.index(s[:-1]), kept.index(s))))
            levels.append(level)
            above = list(level)
        return tuple(levels)

    return enumerate_law(run)


def as_draft_tree(levels, q, vocab: int) -> tuple[DraftTree, list[tuple]]:
    """The DraftTree of ``levels`` with the draft law of each node's parent; also the node prefixes."""
    prefixes = [s for level in levels for s in level]
    parents = [-1 if len(s) == 1 else prefixes.index(s[:-1]) for s in prefixes]
    tokens = torch.tensor([[s[-1] for s in prefixes]])
    laws = torch.tensor([[q(s[:-1]) for s in prefixes]], dtype=torch.float64).reshape(1, len(prefixes), vocab)
    return DraftTree(tokens, torch.tensor(parents), laws), prefixes


def random_laws(vocab: int, depth: int, seed: int, zeros: bool):
    """Conditional laws after every prefix of length 0..depth, some with zero entries (top-k)."""
    g = torch.Generator().manual_seed(seed)
    table = {}
    for n in range(depth + 1):
        for prefix in itertools.product(range(vocab), repeat=n):
            w = torch.rand(vocab, generator=g, dtype=torch.float64) ** 3
            if zeros and n % 2 == 0:
                w[torch.argmin(w)] = 0
            table[prefix] = (w / w.sum()).tolist()
    return table.__getitem__


def emitted_law(tree_law, p, q, vocab: int, length: int, verify) -> dict:
    """Law of the first ``length`` tokens: one verification step, then the target's own law."""
    law = {}
    for levels, tree_prob in tree_law.items():
        tree, prefixes = as_draft_tree(levels, q, vocab)
        slots = [()] + prefixes
        p_slots = torch.tensor([[p(s) for s in slots]], dtype=torch.float64)

        def run(rng):
            out = verify(tree, p_slots, rng)
            path = out.paths[0]
            return tuple(int(tree.tokens[0, n]) for n in path) + (int(out.next_tokens[0]),)

        for emitted, prob in enumerate_law(run).items():
            # complete with the target's law, as the following steps would
            for rest in itertools.product(range(vocab), repeat=length - len(emitted)):
                seq, weight = emitted, tree_prob * prob
                for x in rest:
                    weight *= p(seq)[x]
                    seq = seq + (x,)
                law[seq] = law.get(seq, 0.0) + weight
    return law


def target_law(p, vocab: int, length: int) -> dict:
    law = {}
    for seq in itertools.product(range(vocab), repeat=length):
        law[seq] = math.prod(p(seq[:i])[seq[i]] for i in range(length))
    return law


@pytest.mark.parametrize("vocab,sizes,zeros", [(4, (2, 2), False), (3, (3, 1), True), (4, (2, 1), True), (3, (2, 2, 2), True)])
def test_verifier_law_is_exact_over_beam_trees(vocab, sizes, zeros):
    p = random_laws(vocab, len(sizes) + 1, seed=1, zeros=zeros)
    q = random_laws(vocab, len(sizes), seed=2, zeros=zeros)
    trees = beam_tree_law(q, vocab, sizes)
    assert abs(sum(trees.values()) - 1) < 1e-12
    length = len(sizes) + 1
    law = emitted_law(trees, p, q, vocab, length, acceptance.recursive_rejection_sampling)
    expected = target_law(p, vocab, length)
    assert abs(sum(law.values()) - 1) < 1e-12
    for seq, prob in expected.items():
        assert abs(law.get(seq, 0.0) - prob) < 1e-12, (seq, law.get(seq), prob)


def test_exact_check_rejects_a_verifier_that_keeps_earlier_siblings():
    """Negative control: siblings tested against the full draft law (no removal) break exactness."""
    vocab, sizes = 4, (2, 2)
    p = random_laws(vocab, 3, seed=1, zeros=False)
    q = random_laws(vocab, 2, seed=2, zeros=False)

    law = emitted_law(beam_tree_law(q, vocab, sizes), p, q, vocab, 3, _without_sibling_removal)
    expected = target_law(p, vocab, 3)
    assert max(abs(law.get(s, 0.0) - v) for s, v in expected.items()) > 1e-3


def _without_sibling_removal(tree, p_slots, rng):
    """Recursive rejection sampling with the mistake of testing every sibling against the full q."""
    slot, path = 0, []
    while True:
        r = p_slots[0, slot]
        chosen = None
        for node in tree.children[0][slot]:
            x = int(tree.tokens[0, node])
            law = tree.draft_probs[0, node]
            if bool(rng.coins(acceptance.acceptance_probability(r[x], law[x]))):
                chosen = node
                break
            r = acceptance.residual(r, law)
        if chosen is None:
            return acceptance.Acceptance([path], torch.stack([rng.categorical(r)]))
        path.append(chosen)
        slot = chosen + 1


# ---- the drafter samples that law ----------------------------------------------------------------
VOCAB = 4
PROMPT = torch.tensor([[1, 3, 2]])


def draft_model():
    model = tiny_llama(VOCAB, seed=31, eos_token_id=None, hidden=16, heads=2, kv_heads=1, num_layers=1)
    with torch.no_grad():
        model.lm_head.weight.mul_(3)
    return model


def model_laws(model):
    cache = {}

    def q(prefix):
        if prefix not in cache:
            with torch.no_grad():
                logits = model(torch.cat([PROMPT, torch.tensor([list(prefix)], dtype=torch.long)], 1)).logits
            cache[prefix] = torch.softmax(logits[0, -1], -1).tolist()
        return cache[prefix]
    return q


def sampled_trees(model, sizes, count: int) -> list[tuple]:
    drafter = drafters.RecursiveTree(model, (max(sizes),) * len(sizes), method="stochastic_beam",
                                     beam_width=max(sizes), max_nodes=sum(sizes))
    sampling = SamplingConfig(do_sample=True)
    trees = []
    for seed in range(count):
        drafter.start(model, PROMPT, torch.ones_like(PROMPT))
        tree = drafter.propose(draft_request(PROMPT, len(sizes), sampling, seeded_randomness(seed)))
        prefix = {}
        for node in range(tree.num_nodes):
            parent = int(tree.parents[0, node])
            prefix[node] = (prefix[parent] if parent >= 0 else ()) + (int(tree.tokens[0, node]),)
        depth = tree.depth[0].tolist()
        trees.append(tuple(tuple(prefix[n] for n in range(tree.num_nodes) if depth[n] == d)
                           for d in range(1, len(sizes) + 1)))
    return trees


@pytest.mark.slow
def test_drafter_beam_trees_follow_the_exact_law(monkeypatch):
    model = draft_model()
    sizes = (2, 2)
    law = beam_tree_law(model_laws(model), VOCAB, sizes)
    assert chi_square_pvalue(sampled_trees(model, sizes, 2000), law) > 1e-3
    # negative control: a beam whose children get fresh Gumbels, not conditioned on the parent's
    monkeypatch.setattr(recursive_tree, "conditioned_gumbel", lambda parent, perturbed: perturbed)
    assert chi_square_pvalue(sampled_trees(model, sizes, 2000), law) < 1e-6
