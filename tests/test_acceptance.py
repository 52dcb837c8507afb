"""Exact tests of the acceptance rules on hand-built laws over a vocabulary of ten.

Every random choice (draft draws, coins, residual draws) is enumerated with its probability
(tests/exact_randomness.py), so each law below is computed exactly, not estimated.
"""
import pytest
import torch

from exact_randomness import enumerate_law
from specdec.acceptance import (
    acceptance_probability,
    greedy_accept,
    recursive_rejection_sampling,
    residual,
    speculative_sampling,
    typical_accept,
)
from specdec.tree import DraftTree

V = 10


def laws(seed: int, rows: int, vocab: int = V, zeros: int = 2) -> torch.Tensor:
    """``rows`` random laws over ``vocab`` tokens in float64, each with a few exact zeros."""
    g = torch.Generator().manual_seed(seed)
    raw = torch.rand(rows, vocab, generator=g, dtype=torch.float64) ** 3
    for r in range(rows):
        raw[r, torch.randperm(vocab, generator=g)[:zeros]] = 0
    return raw / raw.sum(-1, keepdim=True)


def draw_without_replacement(rng, q: torch.Tensor, count: int) -> list[int]:
    law, drawn = q.clone(), []
    for _ in range(count):
        x = int(rng.categorical(law / law.sum()))
        drawn.append(x)
        law[x] = 0
    return drawn


def emitted(acceptance, tree, row=0) -> tuple:
    return tuple(tree.tokens[row, acceptance.paths[row]].tolist()) + (int(acceptance.next_tokens[row]),)


def first_token_law(law: dict, vocab: int = V) -> torch.Tensor:
    out = torch.zeros(vocab, dtype=torch.float64)
    for seq, w in law.items():
        out[seq[0]] += w
    return out


def second_token_law_given_first(law: dict, first: int, vocab: int = V) -> torch.Tensor:
    out = torch.zeros(vocab, dtype=torch.float64)
    for seq, w in law.items():
        if seq[0] == first and len(seq) > 1:
            out[seq[1]] += w
    return out / out.sum() if out.sum() > 0 else out


def assert_laws_equal(actual: torch.Tensor, expected: torch.Tensor):
    assert torch.allclose(actual, expected, atol=1e-12, rtol=0), (actual, expected)


# ---- chains -----------------------------------------------------------------------------

def chain_world(k: int, seed: int = 0):
    """Target laws p at the root and after each of k draft positions; draft laws q per position."""
    return laws(seed, k + 1), laws(seed + 100, k)


@pytest.mark.parametrize("k", [1, 3])
def test_speculative_sampling_first_token_follows_target(k):
    """The first emitted token is distributed exactly as p at the root, whatever q is."""
    p, q = chain_world(k)

    def run(rng):
        tokens = torch.tensor([[int(rng.categorical(q[i])) for i in range(k)]])
        tree = DraftTree.chain(tokens, q[None].clone())
        return emitted(speculative_sampling(tree.tokens, tree.draft_probs, p[None], rng), tree)

    law = enumerate_law(run)
    assert abs(sum(law.values()) - 1) < 1e-12
    assert_laws_equal(first_token_law(law), p[0])


def test_speculative_sampling_second_token_follows_target():
    """Given the first token and that the step went on, the second is distributed as p after it."""
    p, q = chain_world(2, seed=3)

    def run(rng):
        tokens = torch.tensor([[int(rng.categorical(q[i])) for i in range(2)]])
        tree = DraftTree.chain(tokens, q[None].clone())
        return emitted(speculative_sampling(tree.tokens, tree.draft_probs, p[None], rng), tree)

    law = enumerate_law(run)
    for first in range(V):
        cond = second_token_law_given_first(law, first)
        if cond.sum() > 0:
            assert_laws_equal(cond, p[1])


def test_speculative_sampling_point_mass_drafts_are_lossless():
    """Deterministic drafts (q=None) are tested as point masses and stay lossless."""
    p, _ = chain_world(2, seed=5)
    guesses = torch.tensor([[3, 7]])

    def run(rng):
        tree = DraftTree.chain(guesses)
        return emitted(speculative_sampling(tree.tokens, None, p[None], rng), tree)

    assert_laws_equal(first_token_law(enumerate_law(run)), p[0])


@pytest.mark.parametrize("copy_at", [0, 1])
def test_speculative_sampling_with_a_copy_among_drawn_drafts_is_lossless(copy_at):
    """A chain mixing a copy (a fixed token, ``copied``) with a drawn draft: the copy is tested as a point
    mass whatever ``q`` says at its position, and both emitted tokens follow the target's laws."""
    p, q = chain_world(2, seed=9)
    copied = torch.tensor([[i == copy_at for i in range(2)]])

    def run(rng):
        tokens = torch.tensor([[7 if i == copy_at else int(rng.categorical(q[i])) for i in range(2)]])
        tree = DraftTree.chain(tokens, q[None].clone())
        return emitted(speculative_sampling(tree.tokens, tree.draft_probs, p[None], rng, copied=copied), tree)

    law = enumerate_law(run)
    assert abs(sum(law.values()) - 1) < 1e-12
    assert_laws_equal(first_token_law(law), p[0])
    for first in range(V):
        cond = second_token_law_given_first(law, first)
        if cond.sum() > 0:
            assert_laws_equal(cond, p[1])


def test_chain_rules_agree():
    """On a chain, speculative sampling and recursive rejection sampling have the same output law."""
    p, q = chain_world(2, seed=7)

    def run_with(rule):
        def run(rng):
            tokens = torch.tensor([[int(rng.categorical(q[i])) for i in range(2)]])
            tree = DraftTree.chain(tokens, q[None].clone())
            acc = rule(tree, rng)
            return emitted(acc, tree)
        return run

    spec = enumerate_law(run_with(lambda t, rng: speculative_sampling(t.tokens, t.draft_probs, p[None], rng)))
    rrs = enumerate_law(run_with(lambda t, rng: recursive_rejection_sampling(t, p[None], rng)))
    assert spec.keys() == rrs.keys()
    for key in spec:
        assert abs(spec[key] - rrs[key]) < 1e-12


# ---- trees ------------------------------------------------------------------------------

TREE_V = 5  # a smaller vocabulary keeps the enumeration of whole trees to a few thousand paths


def sampled_tree_world(seed: int):
    """Root with 3 children drawn without replacement from q0; the first two get a child from q1."""
    p = laws(seed, 2, TREE_V, zeros=1)  # p[0] at the root, p[1] at every depth-1 node
    q = laws(seed + 50, 2, TREE_V, zeros=1)
    return p, q


def build_sampled_tree(rng, q):
    kids = draw_without_replacement(rng, q[0], 3)
    grandkids = [int(rng.categorical(q[1])) for _ in range(2)]
    tokens = torch.tensor([kids + grandkids])
    parents = torch.tensor([-1, -1, -1, 0, 1])
    draft_probs = torch.stack([q[0]] * 3 + [q[1]] * 2)[None]
    return DraftTree(tokens, parents, draft_probs)


def tree_target_laws(p):
    return torch.stack([p[0], p[1], p[1], p[1], p[0], p[0]])[None]  # root, 3 kids, 2 grandkids


@pytest.mark.parametrize("seed", [0, 1])
def test_recursive_rejection_sampling_tree_without_replacement(seed):
    """Siblings drawn without replacement: first token ~ p at root, second ~ p at the child."""
    p, q = sampled_tree_world(seed)

    def run(rng):
        tree = build_sampled_tree(rng, q)
        return emitted(recursive_rejection_sampling(tree, tree_target_laws(p), rng), tree)

    law = enumerate_law(run)
    assert abs(sum(law.values()) - 1) < 1e-12
    assert_laws_equal(first_token_law(law, TREE_V), p[0])
    for first in range(TREE_V):
        cond = second_token_law_given_first(law, first, TREE_V)
        if cond.sum() > 0:
            assert_laws_equal(cond, p[1])


def test_recursive_rejection_sampling_deterministic_children():
    """Top-k children (no draft law) are tested as point masses; output law is still p."""
    p = laws(11, 1)[0]
    target = torch.stack([p, p, p, p])[None]
    tree = DraftTree(torch.tensor([[4, 1, 8]]), torch.tensor([-1, -1, -1]))

    law = enumerate_law(lambda rng: emitted(recursive_rejection_sampling(tree, target, rng), tree))
    assert_laws_equal(first_token_law(law), p)


def test_enumeration_detects_a_wrong_rule():
    """Negative control: resampling from p (not the residual) after a rejection is caught."""
    p, q = chain_world(1, seed=13)

    def wrong_rule(rng):
        x = int(rng.categorical(q[0]))
        if bool(rng.coins(acceptance_probability(p[0, x], q[0, x]))):
            return (x,)
        return (int(rng.categorical(p[0])),)

    assert not torch.allclose(first_token_law(enumerate_law(wrong_rule)), p[0], atol=1e-6)


def test_typical_acceptance_is_lossy():
    """Typical acceptance (opt-in) does not preserve the target's law; the test shows by how much."""
    p = laws(17, 3)
    guesses = torch.tensor([[int(p[0].argmax()), int(p[1].argmax())]])
    tree = DraftTree.chain(guesses)
    law = enumerate_law(lambda rng: emitted(typical_accept(tree, p[None], rng, 0.3, 0.3), tree))
    assert not torch.allclose(first_token_law(law), p[0], atol=1e-3)


# ---- greedy and helpers ------------------------------------------------------------------

def test_greedy_accept_longest_matching_path():
    """Greedy keeps the deepest node whose whole path matches the target argmax."""
    # root -> a(0), b(1); a -> c(2); b -> d(3) -> e(4)
    tree = DraftTree(torch.tensor([[5, 6, 7, 8, 9]]), torch.tensor([-1, -1, 0, 1, 3]))
    # argmax per slot: root says 6 (b); at a: 7; at b: 8 (d); at c: 1; at d: 9 (e); at e: 2
    target = torch.tensor([[6, 7, 8, 1, 9, 2]])
    acc = greedy_accept(tree, target)
    assert acc.paths == [[1, 3, 4]]
    assert acc.next_tokens.tolist() == [2]


def test_greedy_accept_rejects_everything():
    """No matching child: nothing accepted, the next token is the root's argmax."""
    tree = DraftTree.chain(torch.tensor([[1, 2, 3]]))
    acc = greedy_accept(tree, torch.tensor([[4, 2, 3, 0]]))
    assert acc.paths == [[]] and acc.next_tokens.tolist() == [4]


def test_greedy_accept_empty_tree_is_plain_decoding():
    """An empty tree yields exactly the target's argmax at the root."""
    acc = greedy_accept(DraftTree.empty(2), torch.tensor([[3], [9]]))
    assert acc.paths == [[], []] and acc.next_tokens.tolist() == [3, 9]


def test_residual_of_identical_laws_falls_back_to_p():
    """norm(max(0, p - q)) is undefined when p == q; the fallback keeps a valid law."""
    p = laws(1, 1)[0]
    assert torch.equal(residual(p, p), p)
    q = laws(2, 1)[0]
    r = residual(p, q)
    assert abs(float(r.sum()) - 1) < 1e-12 and bool((r[q >= p] == 0).all())


def test_acceptance_probability_edges():
    """min(1, r/q), and 0 for a token its proposal gave no mass."""
    r = torch.tensor([0.2, 0.5, 0.3], dtype=torch.float64)
    q = torch.tensor([0.4, 0.25, 0.0], dtype=torch.float64)
    assert acceptance_probability(r, q).tolist() == [0.5, 1.0, 0.0]
