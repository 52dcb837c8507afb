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

A hybrid tree has nodes from two *sources* (a model's draws and copies from the context, see
:class:`~specdec.drafters.hybrid.Hybrid`).  Ranks and rates are then kept per source: the rank of
a copy counts only the copies under its parent, and a copy needs no model sibling before it (a
copy is a point mass, exact wherever it stands), so the best subtree may keep a parent's copies
without its drawn children.  Without ``sources`` every node is of source 0.

Which m pays is a question of time: a step verifying m nodes per row takes ``seconds(m)`` (the
latency model's cost curve), and :func:`best_width` picks the m of highest *goodput*, expected
tokens per second, over a batch whose rows each keep their own best ``min(m, n_r)`` nodes (the
verification is one dense forward as wide as its widest row).  A width that maximises goodput
has no trailing node whose removal would raise it: no kept node has negative marginal goodput.
"""
from __future__ import annotations

import heapq
from typing import Callable, Sequence


def sibling_ranks(parents: Sequence[int], valid: Sequence[bool] | None = None,
                  sources: Sequence[int] | None = None) -> list[int]:
    """Each node's rank among its parent's valid children of its source, in node order (-1 at placeholders)."""
    seen: dict[tuple[int, int], int] = {}
    ranks = []
    for i, parent in enumerate(parents):
        if valid is not None and not valid[i]:
            ranks.append(-1)
            continue
        group = (parent, sources[i] if sources is not None else 0)
        ranks.append(seen.get(group, 0))
        seen[group] = ranks[-1] + 1
    return ranks


def node_depths(parents: Sequence[int]) -> list[int]:
    """Depth of each node (children of the root: 1); parents come before their children."""
    depths: list[int] = []
    for parent in parents:
        depths.append(1 if parent < 0 else depths[parent] + 1)
    return depths


def path_values(parents: Sequence[int], rate: Callable[..., float],
                valid: Sequence[bool] | None = None, sources: Sequence[int] | None = None) -> list[float]:
    """Each node's acceptance probability: the product of ``rate(depth, rank)`` along its path (0 at
    placeholders); with ``sources``, of ``rate(depth, rank, source)``."""
    ranks = sibling_ranks(parents, valid, sources)
    depths = node_depths(parents)
    values: list[float] = []
    for i, parent in enumerate(parents):
        if ranks[i] < 0:
            values.append(0.0)
            continue
        above = 1.0 if parent < 0 else values[parent]
        cell = rate(depths[i], ranks[i]) if sources is None else rate(depths[i], ranks[i], sources[i])
        values.append(above * cell)
    return values


def growth_order(parents: Sequence[int], values: Sequence[float], valid: Sequence[bool] | None = None,
                 sources: Sequence[int] | None = None) -> list[int]:
    """Valid nodes in the order a best subtree grows: its first m nodes are the best m-node subtree
    closed under parents and earlier siblings of the same source (ties go to the earlier node)."""
    groups: dict[tuple[int, int], list[int]] = {}  # (parent, source) -> children in node order
    firsts: dict[int, list[int]] = {}  # parent -> the first child of each of its groups
    for i, parent in enumerate(parents):
        if valid is None or valid[i]:
            group = groups.setdefault((parent, sources[i] if sources is not None else 0), [])
            if not group:
                firsts.setdefault(parent, []).append(i)
            group.append(i)
    heap = [(-values[i], i) for i in firsts.get(-1, [])]
    heapq.heapify(heap)
    order = []
    while heap:
        _, node = heapq.heappop(heap)
        order.append(node)
        siblings = groups[(parents[node], sources[node] if sources is not None else 0)]
        at = siblings.index(node)
        if at + 1 < len(siblings):
            heapq.heappush(heap, (-values[siblings[at + 1]], siblings[at + 1]))
        for child in firsts.get(node, []):
            heapq.heappush(heap, (-values[child], child))
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
