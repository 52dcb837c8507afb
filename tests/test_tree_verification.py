"""Verifying a draft tree in one forward equals decoding each of its paths incrementally."""
import pytest
import torch

from conftest import tiny_llama
from specdec.target.verifier import Target
from specdec.tree import DraftTree


def full_forward_logits(model, tokens: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.tensor([tokens])).logits[0, -1]


def test_tree_mask_and_positions():
    """Each slot sees the context, the root, its ancestors and itself; positions follow depth."""
    tree = DraftTree(torch.tensor([[5, 6, 7, 8]]), torch.tensor([-1, -1, 0, 2]))
    mask = tree.attention_mask(torch.tensor([[False, True, True]]), torch.float64)[0, 0] == 0
    expected_tree = torch.tensor([
        [1, 0, 0, 0, 0],  # root
        [1, 1, 0, 0, 0],  # node 0
        [1, 0, 1, 0, 0],  # node 1 (sibling of 0)
        [1, 1, 0, 1, 0],  # node 2 (child of 0)
        [1, 1, 0, 1, 1],  # node 3 (child of 2)
    ], dtype=torch.bool)
    assert torch.equal(mask[:, :3], torch.tensor([[False, True, True]] * 5))
    assert torch.equal(mask[:, 3:], expected_tree)
    assert tree.position_ids(torch.tensor([2])).tolist() == [[2, 3, 3, 4, 5]]
    assert tree.depth.tolist() == [[1, 1, 2, 3]]
    assert not tree.is_chain and DraftTree.chain(torch.tensor([[1, 2]])).is_chain


def test_tree_verification_equals_incremental_decoding():
    """Logits at every tree node equal a plain forward over the prompt plus that node's path."""
    model = tiny_llama(64, seed=3)
    prompt = [5, 9, 13, 2, 40, 33]
    # root: 0 -> {0: 11, 1: 12, 2: 13}; 0 -> 3: 21 -> 5: 31; 1 -> 4: 22
    tree = DraftTree(torch.tensor([[11, 12, 13, 21, 22, 31]]), torch.tensor([-1, -1, -1, 0, 1, 3]))
    target = Target(model)
    root, _ = target.prefill(torch.tensor([prompt]), torch.ones(1, len(prompt), dtype=torch.long))
    logits = target.verify(root, tree).logits[0]
    assert torch.allclose(logits[0], full_forward_logits(model, prompt), atol=1e-10)
    for node in range(tree.num_nodes):
        path = tree.tokens[0, tree.path_to(node)].tolist()
        assert torch.allclose(logits[node + 1], full_forward_logits(model, prompt + path), atol=1e-10)


def test_commit_compacts_cache_to_a_branch_path():
    """After committing a path that is not a prefix of the node order, the cache is that path."""
    model = tiny_llama(64, seed=4)
    prompt = [7, 8, 9, 10]
    tree = DraftTree(torch.tensor([[11, 12, 21, 22]]), torch.tensor([-1, -1, 1, 2]))
    target = Target(model)
    root, _ = target.prefill(torch.tensor([prompt]), torch.ones(1, 4, dtype=torch.long))
    target.verify(root, tree)
    target.commit([[1, 2, 3]], tree.num_nodes)  # keep 12 -> 21 -> 22
    assert int(target.lengths[0]) == 3 + 1 + 3  # 3 prompt tokens cached, the old root, the path
    next_root = torch.tensor([50])
    logits = target.verify(next_root, DraftTree.empty(1)).logits[0, 0]
    assert torch.allclose(logits, full_forward_logits(model, prompt + [12, 21, 22, 50]), atol=1e-10)


def test_commit_of_a_chain_prefix_crops():
    """A chain's accepted prefix is kept by cropping; the next forward sees exactly that prefix."""
    model = tiny_llama(64, seed=5)
    prompt = [3, 4, 5]
    tree = DraftTree.chain(torch.tensor([[30, 31, 32, 33]]))
    target = Target(model)
    root, _ = target.prefill(torch.tensor([prompt]), torch.ones(1, 3, dtype=torch.long))
    target.verify(root, tree)
    target.commit([[0, 1]], tree.num_nodes)
    logits = target.verify(torch.tensor([60]), DraftTree.empty(1)).logits[0, 0]
    assert torch.allclose(logits, full_forward_logits(model, prompt + [30, 31, 60]), atol=1e-10)


def test_lazy_greedy_targets_agree_with_full_argmax():
    """Computing logits only along matching paths gives the same greedy acceptance as all logits."""
    from specdec.acceptance import greedy_accept
    from specdec.acceptance import greedy_targets

    model = tiny_llama(16, seed=6)
    prompt = torch.tensor([[3, 4, 5, 6]])
    g = torch.Generator().manual_seed(0)
    for trial in range(20):
        target = Target(model)
        root, _ = target.prefill(prompt, torch.ones_like(prompt))
        parents = torch.tensor([-1, -1, -1, 0, 0, 1, 3, 5])
        tree = DraftTree(torch.randint(0, 16, (1, 8), generator=g), parents)
        verification = target.verify(root, tree)
        full = verification.logits.argmax(-1)
        if trial % 2:  # make some nodes match so that paths are reached
            tree.tokens[0, 0] = full[0, 0]
            tree.tokens[0, 3] = full[0, 1]
        lazy = greedy_targets(tree, verification)
        reached = lazy >= 0
        assert torch.equal(lazy[reached], full[reached])
        assert greedy_accept(tree, lazy).paths == greedy_accept(tree, full).paths
        assert torch.equal(greedy_accept(tree, lazy).next_tokens, greedy_accept(tree, full).next_tokens)


class CountingVerification:
    """A verification that records the slots of every head call."""

    def __init__(self, verification):
        self.inner, self.calls = verification, []
        self.cheap_rows = verification.cheap_rows

    def logits_at(self, slots):
        self.calls.append(slots.tolist())
        return self.inner.logits_at(slots)


@pytest.mark.parametrize("batch", [1, 2, 3, 5])
@pytest.mark.parametrize("shape", ["chain", "tree"])
def test_greedy_targets_agree_with_full_argmax_across_batches(batch, shape):
    """Chains and trees, every batch size: the lazy targets give the full argmax's acceptance,
    the first head call covers the root and as many slots as stay cheap, and no slot is computed twice."""
    from specdec.acceptance import greedy_accept, greedy_targets

    model = tiny_llama(16, seed=7)
    prompt = torch.randint(1, 16, (batch, 5), generator=torch.Generator().manual_seed(batch))
    g = torch.Generator().manual_seed(1)
    parents = torch.tensor([-1, 0, 1, 2, 3, 4]) if shape == "chain" else torch.tensor([-1, -1, 0, 0, 2, 4])
    path = [0, 1, 2, 3, 4, 5] if shape == "chain" else [0, 2, 4, 5]  # a root-to-leaf path, parents first
    accepted = set()
    for trial in range(12):
        tokens = torch.randint(0, 16, (batch, 6), generator=g)
        matches = [(r + trial) % (len(path) + 1) for r in range(batch)]  # row r matches this many path nodes

        def verified():
            tree = DraftTree(tokens, parents) if shape == "tree" else DraftTree.chain(tokens)
            target = Target(model)
            root, _ = target.prefill(prompt, torch.ones_like(prompt))
            return tree, target.verify(root, tree)

        for _ in range(len(path)):  # a node's target depends on its ancestors: fix them one level per round
            tree, verification = verified()
            full = verification.logits.argmax(-1)
            for r, m in enumerate(matches):
                for i, node in enumerate(path[:m]):
                    tokens[r, node] = full[r, 0 if i == 0 else path[i - 1] + 1]
        tree, verification = verified()
        full = verification.logits.argmax(-1)
        counting = CountingVerification(verification)
        lazy = greedy_targets(tree, counting)
        reached = lazy >= 0
        assert torch.equal(lazy[reached], full[reached])
        ours, theirs = greedy_accept(tree, lazy), greedy_accept(tree, full)
        assert ours.paths == theirs.paths and torch.equal(ours.next_tokens, theirs.next_tokens)
        accepted.update(len(p) for p in theirs.paths)
        assert counting.calls[0] == list(range(min(7, max(1, verification.cheap_rows // batch))))
        computed = [s for call in counting.calls for s in call]
        assert len(computed) == len(set(computed))  # no slot's logits computed twice
    assert len(accepted) >= 3  # the trials reached short and long accepted paths


def test_a_long_accepted_path_in_a_tree_takes_few_head_calls():
    """A copied chain of 7 tokens beside a sibling, all accepted: the head is called a few times (the look-ahead
    doubles), not once per level, and the acceptance is the full argmax's."""
    from specdec.acceptance import greedy_accept, greedy_targets

    model = tiny_llama(16, seed=8)
    prompt = torch.tensor([[3, 4, 5, 6, 7]])
    parents = torch.tensor([-1, -1, 1, 2, 3, 4, 5, 6])  # node 0: a sibling; nodes 1-7: a chain
    tokens = torch.zeros(1, 8, dtype=torch.long)

    def verified():
        tree = DraftTree(tokens, parents)
        target = Target(model)
        root, _ = target.prefill(prompt, torch.ones_like(prompt))
        return tree, target.verify(root, tree)

    for level in range(7):  # make the chain the target's own greedy continuation, one level per round
        tree, verification = verified()
        full = verification.logits.argmax(-1)
        tokens[0, 1 + level] = full[0, 0 if level == 0 else level + 1]
        tokens[0, 0] = (full[0, 0] + 1) % 16  # the sibling is wrong
    tree, verification = verified()
    full = verification.logits.argmax(-1)
    counting = CountingVerification(verification)
    counting.cheap_rows = 1  # the first call covers the root alone
    lazy = greedy_targets(tree, counting)
    assert greedy_accept(tree, lazy).paths == greedy_accept(tree, full).paths == [[1, 2, 3, 4, 5, 6, 7]]
    assert len(counting.calls) <= 4, counting.calls  # root, then levels 1-2, 3-6, 7: not 1 + 7 calls
    computed = [s for call in counting.calls for s in call]
    assert len(computed) == len(set(computed)) and 1 not in computed  # the rejected sibling's slot is never computed


@pytest.mark.parametrize("batch", [1, 3])
def test_sampled_acceptance_computes_the_head_where_the_walk_goes(batch):
    """Recursive rejection sampling over a verification: the laws it reads are the full logits' (the same
    acceptance for the same coins); a walk that stops at the root or one level down computes the head
    for a few slots, not the tree's every one, and a 5-deep walk takes at most 4 calls."""
    from specdec.acceptance import SlotLaws, recursive_rejection_sampling
    from specdec.sampling import Randomness, SamplingConfig

    model = tiny_llama(16, seed=7)
    prompt = torch.randint(1, 16, (batch, 5), generator=torch.Generator().manual_seed(batch))
    parents = torch.tensor([-1, -1, 0, 0, 1, 2, 4, 6, 7, -1, 9, 10])  # three branches below the root
    tokens = torch.randint(1, 16, (batch, 12), generator=torch.Generator().manual_seed(2))

    def verified():
        target = Target(model)
        root, _ = target.prefill(prompt, torch.ones_like(prompt))
        return target.verify(root, DraftTree(tokens, parents))

    for node in (1, 4, 6, 7, 8):  # the second branch follows the target's argmax: walks go deep there
        tokens[:, node] = verified().logits.argmax(-1)[:, int(parents[node]) + 1]
    tree, verification = DraftTree(tokens, parents), verified()
    sampling = SamplingConfig(do_sample=True, temperature=0.02)
    depths = []
    for seed in range(8):
        counting = CountingVerification(verification)
        counting.cheap_rows = batch  # one slot in the first call
        full = recursive_rejection_sampling(tree, SlotLaws(verification.logits, sampling),
                                            Randomness(torch.Generator().manual_seed(seed)))
        lazy = recursive_rejection_sampling(tree, SlotLaws(counting, sampling, tree),
                                            Randomness(torch.Generator().manual_seed(seed)))
        assert lazy.paths == full.paths and torch.equal(lazy.next_tokens, full.next_tokens)
        computed = [s for call in counting.calls for s in call]
        assert len(computed) == len(set(computed))  # no slot twice
        deepest = max(len(path) for path in full.paths)
        depths.append(deepest)
        if deepest <= 1:  # per row: the root, then an accepted child with one below it; never all 13 slots
            assert len(computed) <= 3 if batch == 1 else len(computed) < tree.num_nodes + 1, counting.calls
        assert len(counting.calls) <= 4, counting.calls  # 1, 2, 4 and 8 slots at most: a 5-deep walk takes 4
    assert max(depths) >= 3  # deep walks occurred
