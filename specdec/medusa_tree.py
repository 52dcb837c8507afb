"""Medusa's sparse tree: which top-k candidates of which heads the target verifies.

A node is a path of ranks ``(i_1, ..., i_d)``: the i_1-th best guess of head 1, then the
i_2-th best of head 2 after it, and so on.  Taking head accuracies as independent, a node is
accepted with probability ``prod_j acc[j][i_j]`` and the expected number of accepted tokens
is the sum of that over the tree's nodes (Cai et al., 2024).  Since extending a path never
raises its probability, adding the likeliest frontier node one at a time gives the best
tree for a node budget (every node is at most as likely as its parent, so the chosen set is
closed under prefixes).
"""
from __future__ import annotations

import heapq


def build_sparse_tree(accuracies: list[list[float]], max_nodes: int) -> list[tuple[int, ...]]:
    """The ``max_nodes`` rank paths of highest acceptance probability, parents before children.

    ``accuracies[d][i]``: probability that the i-th ranked guess of head d+1 is the target's
    token (top-1 first; each list need not sum to 1).
    """
    if max_nodes < 1:
        raise ValueError(f"max_nodes must be >= 1, got {max_nodes}")
    if not accuracies or any(not row for row in accuracies):
        raise ValueError("accuracies must hold a non-empty list of rank accuracies per head")
    if any(a < 0 or a > 1 for row in accuracies for a in row):
        raise ValueError("accuracies must lie in [0, 1]")
    tree: list[tuple[int, ...]] = []
    frontier = [(-a, i, (i,)) for i, a in enumerate(accuracies[0])]
    heapq.heapify(frontier)
    while frontier and len(tree) < max_nodes:
        neg, _, path = heapq.heappop(frontier)
        tree.append(path)
        if len(path) < len(accuracies):
            for i, a in enumerate(accuracies[len(path)]):
                heapq.heappush(frontier, (neg * a, len(tree) * 1000 + i, path + (i,)))
    return tree


def expected_accepted(tree: list[tuple[int, ...]], accuracies: list[list[float]]) -> float:
    """Expected accepted draft tokens per step under independent head accuracies."""
    total = 0.0
    for path in tree:
        prob = 1.0
        for depth, rank in enumerate(path):
            prob *= accuracies[depth][rank]
        total += prob
    return total
