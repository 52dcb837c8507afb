"""Which nodes of a draft tree pay for their verification: pure functions, no models.

A node at depth d that is the r-th child of its parent (its *sibling rank*, in draw order) is
accepted, given that its parent was, with probability ``a(d, r)``, estimated online from what
verification kept.  Taking these as independent, a node's *value*, the probability that it is
accepted, is the product of ``a`` along its path, and a subtree S yields
``1 + sum over S of value`` tokens per step (the 1: the correction or bonus token).  This is
the estimate Medusa uses to build its sparse tree and Sequoia to size its trees; SpecInfer and
EAGLE-2 also keep the nodes of highest path probability (EAGLE-2 with the draft's own
confidence as the value).

Since a value never exceeds its parent's, the best subtree of m nodes is grown greedily from the
root: the next node is the highest-valued one whose parent and earlier siblings are already in
(:func:`growth_order`).  Requiring the earlier siblings keeps every kept sibling set a prefix of
its draw order, which sampled trees (siblings drawn without replacement) need to stay lossless.

Which m pays is a question of time: a step verifying m nodes per row takes ``seconds(m)`` (the
latency model's cost curve), and :func:`best_width` picks the m of highest *goodput*, expected
tokens per second, over a batch whose rows each keep their own best ``min(m, n_r)`` nodes (the
verification is one dense forward as wide as its widest row).  A width that maximises goodput
has no trailing node whose removal would raise it: no kept node has negative marginal goodput.
"""
from __future__ import annotations

import heapq
from typing import Callable, Sequence


def sibling_ranks(parents: Sequence[int], valid: Sequence[bool] | None = None) -> list[int]:
    """Each node's rank among its parent's valid children, in node order (-1 at placeholders)."""
    seen: dict[int, int] = {}
    ranks = []
    for i, parent in enumerate(parents):
        if valid is not None and not valid[i]:
            ranks.append(-1)
            continue
        ranks.append(seen.get(parent, 0))
        seen[parent] = ranks[-1] + 1
    return ranks


def node_depths(parents: Sequence[int]) -> list[int]:
    """Depth of each node (children of the root: 1); parents come before their children."""
    depths: list[int] = []
    for parent in parents:
        depths.append(1 if parent < 0 else depths[parent] + 1)
    return depths


def path_values(parents: Sequence[int], rate: Callable[[int, int], float],
                valid: Sequence[bool] | None = None) -> list[float]:
    """Each node's acceptance probability: the product of ``rate(depth, rank)`` along its path (0 at placeholders)."""
    ranks = sibling_ranks(parents, valid)
    depths = node_depths(parents)
    values: list[float] = []
    for i, parent in enumerate(parents):
        if ranks[i] < 0:
            values.append(0.0)
            continue
        above = 1.0 if parent < 0 else values[parent]
        values.append(above * rate(depths[i], ranks[i]))
    return values


def growth_order(parents: Sequence[int], values: Sequence[float], valid: Sequence[bool] | None = None) -> list[int]:
    """Valid nodes in the order a best subtree grows: its first m nodes are the best m-node subtree
    closed under parents and earlier siblings (ties go to the earlier node)."""
    children: dict[int, list[int]] = {}
    for i, parent in enumerate(parents):
        if valid is None or valid[i]:
            children.setdefault(parent, []).append(i)
    heap = [(-values[children[-1][0]], children[-1][0])] if children.get(-1) else []
    order = []
    while heap:
        _, node = heapq.heappop(heap)
        order.append(node)
        siblings = children[parents[node]]
        at = siblings.index(node)
        if at + 1 < len(siblings):
            heapq.heappush(heap, (-values[siblings[at + 1]], siblings[at + 1]))
        if children.get(node):
            heapq.heappush(heap, (-values[children[node][0]], children[node][0]))
    return order


def expected_tokens(values: Sequence[float], order: Sequence[int]) -> list[float]:
    """Expected tokens per step when keeping the first m nodes of ``order``, for m = 0..len(order)."""
    gains = [1.0]
    for node in order:
        gains.append(gains[-1] + values[node])
    return gains


def best_width(gains: Sequence[Sequence[float]], seconds: Callable[[int], float],
               widest: int | None = None) -> tuple[int, float]:
    """The width m (nodes per row) of highest goodput and that goodput.

    ``gains[r][m]``: row r's expected tokens with its best m nodes (:func:`expected_tokens`; a row
    with fewer candidates keeps them all); ``seconds(m)``: the step's predicted time at width m.
    The smallest m wins ties.
    """
    widest = max((len(g) - 1 for g in gains), default=0) if widest is None else widest
    best, best_goodput = 0, None
    for m in range(widest + 1):
        tokens = sum(g[min(m, len(g) - 1)] for g in gains)
        goodput = tokens / max(seconds(m), 1e-12)
        if best_goodput is None or goodput > best_goodput * (1 + 1e-9):
            best, best_goodput = m, goodput
    return best, float(best_goodput or 0.0)
