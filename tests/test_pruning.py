"""Pruning a draft tree to what pays: node values, growth order, the best width, and the tree's compaction."""
import pytest
import torch

from specdec.policy.pruning import best_width, expected_tokens, growth_order, node_depths, path_values, sibling_ranks
from specdec.tree import DraftTree

# node: 0 (d1 r0), 1 (d1 r1), 2 (d2 r0 below 0), 3 (d2 r1 below 0), 4 (d3 r0 below 2)
PARENTS = [-1, -1, 0, 0, 2]
RATES = {(1, 0): 0.6, (1, 1): 0.2, (2, 0): 0.5, (2, 1): 0.1, (3, 0): 0.4}


def test_ranks_depths_and_values_by_hand():
    """Ranks count valid siblings in draw order; a value is the product of the rates along the path."""
    assert sibling_ranks(PARENTS) == [0, 1, 0, 1, 0]
    assert sibling_ranks(PARENTS, [True, False, True, True, True]) == [0, -1, 0, 1, 0]
    assert node_depths(PARENTS) == [1, 1, 2, 2, 3]
    values = path_values(PARENTS, lambda d, r: RATES[(d, r)])
    assert values == pytest.approx([0.6, 0.2, 0.3, 0.06, 0.12])
    assert path_values(PARENTS, lambda d, r: RATES[(d, r)], [True, True, True, False, True])[3] == 0.0


def test_the_growth_order_gives_the_best_subtree_of_every_size():
    """Greedy by value among nodes whose parent and earlier siblings are in: 0, 2, 1, 4, 3."""
    values = path_values(PARENTS, lambda d, r: RATES[(d, r)])
    order = growth_order(PARENTS, values)
    assert order == [0, 2, 1, 4, 3]
    assert expected_tokens(values, order) == pytest.approx([1.0, 1.6, 1.9, 2.1, 2.22, 2.28])
    # a later sibling never comes before an earlier one, even when it is worth more (sampled siblings need it)
    upside_down = path_values([-1, -1], lambda d, r: [0.1, 0.5][r])
    assert growth_order([-1, -1], upside_down) == [0, 1]
    assert growth_order(PARENTS, values, [True, True, False, True, True]) == [0, 1, 3]  # below a placeholder: none


def test_the_width_of_highest_goodput_on_a_hand_computed_cost_curve():
    """Goodput 1.0, 1.524, 1.727, 1.4, 1.432, 1.425 for widths 0-5: two nodes; dropping either lowers it."""
    values = path_values(PARENTS, lambda d, r: RATES[(d, r)])
    gains = expected_tokens(values, growth_order(PARENTS, values))
    seconds = [1.0, 1.05, 1.1, 1.5, 1.55, 1.6]
    width, goodput = best_width([gains], seconds.__getitem__)
    assert width == 2 and goodput == pytest.approx(1.9 / 1.1)
    # no chosen node has negative marginal goodput: every smaller subtree is worse
    assert all(gains[m] / seconds[m] < goodput for m in range(width))
    # a flat cost curve takes every node; a steep one none (k = 0 is a valid answer)
    assert best_width([gains], lambda m: 1.0)[0] == 5
    assert best_width([gains], lambda m: 1.0 + m)[0] == 0


def test_a_batch_shares_one_width_and_each_row_keeps_its_own_best():
    """Rows keep min(width, their candidates): a row with none adds one token at any width."""
    rich, poor = [1.0, 1.9, 2.7, 3.4], [1.0]
    width, goodput = best_width([rich, poor], [1.0, 1.1, 1.2, 1.3].__getitem__)
    assert width == 3 and goodput == pytest.approx((3.4 + 1.0) / 1.3)
    assert best_width([[1.0], [1.0]], lambda m: 1.0) == (0, 2.0)


def test_select_compacts_rows_and_says_where_each_node_came_from():
    """Each row's kept nodes move left in order, parents renumbered, the rest placeholders; origin maps back."""
    tokens = torch.tensor([[10, 11, 12, 13, 14], [20, 21, 22, 23, 24]])
    tree = DraftTree(tokens, torch.tensor(PARENTS))
    keep = torch.tensor([[True, False, True, False, True], [True, True, False, False, False]])
    small, origin = tree.select(keep)
    assert small.num_nodes == 3
    assert origin.tolist() == [[0, 2, 4], [0, 1, -1]]
    assert small.tokens[0].tolist() == [10, 12, 14] and small.tokens[1, :2].tolist() == [20, 21]
    assert small.parents.tolist() == [[-1, 0, 1], [-1, -1, -1]]
    assert small.node_valid.tolist() == [[True, True, True], [True, True, False]]
    assert small.depth[0].tolist() == [1, 2, 3]
    same, none = tree.select(torch.ones_like(keep))
    assert same is tree and none is None
    wide, kept_numbering = tree.select(torch.tensor([[True, True, True, True, True], [True, False, False, False, False]]))
    assert kept_numbering is None and wide.num_nodes == 5 and wide.valid_counts == [5, 1]  # no column freed
    with pytest.raises(ValueError, match="parent was not kept"):
        tree.select(torch.tensor([[False, False, True, False, False], [True, False, False, False, False]]))


def test_select_keeps_chains_chains_and_carries_draft_laws():
    probs = torch.rand(2, 4, 6, dtype=torch.float64)
    chain = DraftTree.chain(torch.tensor([[1, 2, 3, 4], [5, 6, 7, 8]]), probs)
    short, origin = chain.select(torch.tensor([[True, True, False, False], [True, False, False, False]]))
    assert short.is_chain and short.num_nodes == 2 and short.valid_counts == [2, 1]
    assert torch.equal(short.draft_probs, probs[:, :2]) and origin.tolist() == [[0, 1], [0, -1]]
