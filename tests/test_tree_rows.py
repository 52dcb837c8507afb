"""Trees whose shape differs per batch row: masks, positions, verification, greedy equivalence and exact laws."""
import pytest
import torch

import specdec
from conftest import tiny_llama
from exact_randomness import enumerate_law
from scripted import noisy_copy
from specdec import drafters
from specdec.inputs import left_padded
from specdec.target.verifier import Target
from specdec.tree import DraftTree
from test_batch import PAD, VOCAB, expected_batch, prompts, target  # noqa: F401  (fixture)
from test_sampling_lossless import exact_law
from test_sampling_lossless import models as small_models


def test_each_row_gets_its_own_mask_depths_and_positions():
    tree = DraftTree(torch.tensor([[5, 6, 7], [5, 6, 7]]), torch.tensor([[-1, 0, 1], [-1, -1, 0]]))
    assert not tree.shared_shape and not tree.is_chain
    assert tree.depth.tolist() == [[1, 2, 3], [1, 1, 2]]
    assert tree.position_ids(torch.tensor([4, 9])).tolist() == [[4, 5, 6, 7], [9, 10, 10, 11]]
    visible = tree.attention_mask(torch.ones(2, 1, dtype=torch.bool), torch.float64)[:, 0, :, 1:] == 0
    assert visible[0].tolist() == [[1, 0, 0, 0], [1, 1, 0, 0], [1, 1, 1, 0], [1, 1, 1, 1]]
    assert visible[1].tolist() == [[1, 0, 0, 0], [1, 1, 0, 0], [1, 0, 1, 0], [1, 1, 0, 1]]
    assert tree.children[0][0] == [0] and tree.children[1][0] == [0, 1]
    assert tree.path_to(2, row=0) == [0, 1, 2] and tree.path_to(2, row=1) == [0, 2]
    assert tree.take_rows(torch.tensor([1])).parents.tolist() == [[-1, -1, 0]]


def test_verifying_rows_of_different_shapes_equals_incremental_decoding():
    """In a left-padded batch, logits at every node of every row equal a plain forward over its path."""
    model = tiny_llama(64, seed=3)
    rows = [[5, 9, 13, 2], [40, 33]]
    ids, mask = left_padded(rows, "cpu")
    tree = DraftTree(torch.tensor([[11, 12, 13, 21], [31, 32, 33, 34]]),
                     torch.tensor([[-1, -1, 0, 2], [-1, 0, 0, 1]]))
    target = Target(model)
    roots, _ = target.prefill(ids, mask)
    logits = target.verify(roots, tree).logits
    for r, row in enumerate(rows):
        for node in range(tree.num_nodes):
            path = tree.tokens[r, tree.path_to(node, r)].tolist()
            with torch.no_grad():
                want = model(torch.tensor([row + path])).logits[0, -1]
            assert torch.allclose(logits[r, node + 1], want, atol=1e-10)


@pytest.mark.parametrize("with_eos", [False, True])
def test_stochastic_beam_batches_match_generate(target, with_eos):
    """Beam trees differ in shape from row to row; every row still equals its own greedy generate."""
    rows = prompts(3, seed=8)
    eos = expected_batch(target, rows, 14, None, PAD)[2][1, -5].item() if with_eos else None
    ids, mask, expected = expected_batch(target, rows, 14, eos, PAD)
    drafter = drafters.RecursiveTree(noisy_copy(target, 0.4), (3, 3, 3), method="stochastic_beam", beam_width=3)
    out = specdec.generate(target, ids, drafter, attention_mask=mask, max_new_tokens=14,
                           eos_token_id=eos if eos is not None else [], pad_token_id=PAD)
    assert torch.equal(out.sequences, expected)
    pool = specdec.generate_pool(target, rows, drafter, batch_size=2, schedule="exspec", max_new_tokens=14,
                                 eos_token_id=eos if eos is not None else [])
    for r, seq in enumerate(pool.sequences):
        assert seq.tolist() == rows[r] + [t for t in expected[r, ids.shape[1]:].tolist()][:len(seq) - len(rows[r])]


class TwoShapes(drafters.Drafter):
    """Even rows: a chain of two draws from ``q``; odd rows: two siblings drawn from ``q`` without replacement."""

    stateless = True

    def __init__(self, q: torch.Tensor):
        self.q = q

    def propose(self, request):
        b = request.batch_size
        if request.max_depth < 2:  # the last token: nothing to draft that could be kept
            return DraftTree.empty(b)
        tokens, parents = [], []
        for row in range(b):
            if row % 2 == 0:
                tokens.append([int(request.rng.categorical(self.q)), int(request.rng.categorical(self.q))])
                parents.append([-1, 0])
            else:
                tokens.append(request.rng.without_replacement(self.q[None], 2)[0].tolist())
                parents.append([-1, -1])
        return DraftTree(torch.tensor(tokens), torch.tensor(parents), self.q.expand(b, 2, -1).clone())


def test_rows_of_different_shapes_keep_the_exact_law():
    """A chain in one row and siblings in the other, sampled together: the joint law is the target's."""
    target, _ = small_models()
    config = specdec.SamplingConfig(do_sample=True, top_k=2)
    rows = [[1, 4, 2], [3, 1, 5, 5, 2]]
    ids, mask = left_padded(rows, "cpu")
    laws = [exact_law(target, 3, config, prompt=torch.tensor([r])) for r in rows]
    q = torch.tensor([0.6, 0.0, 0.0, 0.4, 0.0, 0.0], dtype=torch.float64)

    def run(rng):
        out = specdec.generate(target, ids, TwoShapes(q), attention_mask=mask, max_new_tokens=3, do_sample=True,
                               top_k=2, eos_token_id=[], pad_token_id=0, randomness=rng, speculation=2)
        return tuple(out.sequences[0, -3:].tolist()), tuple(out.sequences[1, -3:].tolist())

    law = enumerate_law(run)
    assert abs(sum(law.values()) - 1) < 1e-9
    for (a, b), prob in law.items():
        assert abs(prob - laws[0][a] * laws[1][b]) < 1e-9
