"""Acceptance by (depth, sibling rank), learnt online from what verification kept.

For every verified node whose parent was accepted (or that hangs below the root) the step tells
whether the node itself was accepted: an observation of ``a(depth, rank)``, the probability
that the rank-th child (in draw order) of an accepted node is accepted.  Siblings are disjoint
events (at most one child of a node is kept), so the rates of a node's children sum to at most 1.

Each cell keeps decayed counts of hits and trials (every observation multiplies the cell's old
counts by ``decay``, so about ``1 / (1 - decay)`` recent observations weigh), kept batch-wide and
per row (sequence), and answers a smoothed rate: the batch-wide one
``(hits + w * prior) / (trials + w)`` with ``w = prior_weight`` and the cell's prior
``prior(depth, rank)``; a row's ``(hits + m * batch) / (trials + m)`` with ``m =
row_weight``, so a row leans on what the batch saw until it has seen about as many of its own.  The
batch-wide table outlives a decoding job (a drafter's policy keeps what it learnt across calls);
the rows' tables are per job.

Also learnt: how often a row given a depth proposes anything at all (prompt lookup without a
match proposes nothing), so that a policy weighs a depth by what it yields on average.

A hybrid drafter's nodes come from several *sources* (0: the model's draws, 1: copies); every
cell and the propose shares are then kept per source, so each source earns its nodes by its own
acceptance.  Single-source drafters use source 0 throughout.
"""
from __future__ import annotations

from typing import Callable, Sequence

from .pruning import node_depths, sibling_ranks


def geometric_prior(first: Sequence[float]) -> Callable[[int, int], float]:
    """``p_d * (1 - p_d) ** rank`` with ``p_d`` the first-rank rate of depth d (the last one for deeper depths)."""
    rates = [float(p) for p in first]

    def prior(depth: int, rank: int) -> float:
        p = rates[min(depth, len(rates)) - 1]
        return p * (1.0 - p) ** rank

    return prior


class _Counts:
    """Decayed hits and trials of one cell."""

    __slots__ = ("hits", "trials")

    def __init__(self):
        self.hits = self.trials = 0.0

    def add(self, hit: float, decay: float) -> None:
        self.hits = decay * self.hits + hit
        self.trials = decay * self.trials + 1.0

    def rate(self, prior: float, weight: float) -> float:
        return (self.hits + weight * prior) / (self.trials + weight)


class RankRates:
    def __init__(self, prior: Callable[[int, int], float], decay: float = 0.97, row_weight: float = 8.0,
                 prior_weight: float = 2.0, source_priors: dict[int, Callable[[int, int], float]] | None = None):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"decay must be in [0, 1), got {decay!r}")
        if row_weight < 0 or prior_weight <= 0:
            raise ValueError(f"row_weight must be >= 0 and prior_weight > 0, got {row_weight!r} and {prior_weight!r}")
        self.prior, self.decay = prior, float(decay)
        self.source_priors = dict(source_priors or {})  # a source's own prior (default: ``prior``)
        self.row_weight, self.prior_weight = float(row_weight), float(prior_weight)
        self.batch: dict[tuple[int, int, int], _Counts] = {}  # (depth, rank, source)
        self.rows: dict[int, dict[tuple[int, int, int], _Counts]] = {}
        self.batch_proposes: dict[int, float] = {}  # per source
        self.row_proposes: dict[tuple[int, int], float] = {}  # per (sequence, source)

    def forget_rows(self) -> None:
        """A new job: sequence ids start again, what the batch learnt stays."""
        self.rows.clear()
        self.row_proposes.clear()

    def batch_rate(self, depth: int, rank: int, source: int = 0) -> float:
        counts = self.batch.get((depth, rank, source))
        prior = self.source_priors.get(source, self.prior)(depth, rank)
        return prior if counts is None else counts.rate(prior, self.prior_weight)

    def rate(self, sequence: int, depth: int, rank: int, source: int = 0) -> float:
        own = self.rows.get(sequence, {}).get((depth, rank, source))
        batch = self.batch_rate(depth, rank, source)
        return batch if own is None else own.rate(batch, self.row_weight)

    def rates_of(self, sequence: int) -> Callable[..., float]:
        return lambda depth, rank, source=0: self.rate(sequence, depth, rank, source)

    def proposes(self, sequence: int, source: int = 0) -> float:
        """Share of a row's drafting steps in which it proposed at least one node of ``source``."""
        return self.row_proposes.get((sequence, source), self.batch_proposes.get(source, 1.0))

    def observe(self, sequence: int, parents: Sequence[int], valid: Sequence[bool], path: Sequence[int],
                allowed: bool, sources: Sequence[int] | None = None,
                proposed: dict[int, bool] | None = None) -> None:
        """One row's verified tree (``parents``, ``valid``, each node's source) and its accepted ``path``;
        ``allowed``: it could draft; ``proposed``: per source, whether the drafter proposed any node of
        it before pruning (default: whether the verified tree has one)."""
        if not allowed:
            return
        keep = self.decay
        if proposed is None:
            proposed = {}
            for i, ok in enumerate(valid):
                source = sources[i] if sources is not None else 0
                proposed[source] = proposed.get(source, False) or bool(ok)
            proposed.setdefault(0, False)
        for source, did in proposed.items():
            share = self.batch_proposes.get(source, 1.0)
            self.batch_proposes[source] = keep * share + (1 - keep) * float(did)
            row = self.row_proposes.get((sequence, source), share)
            self.row_proposes[(sequence, source)] = keep * row + (1 - keep) * float(did)
        if not any(valid):
            return
        accepted = set(path)
        ranks, depths = sibling_ranks(parents, valid, sources), node_depths(parents)
        own = self.rows.setdefault(sequence, {})
        for node, parent in enumerate(parents):
            if ranks[node] < 0 or (parent >= 0 and parent not in accepted):
                continue  # a placeholder, or its parent was rejected: nothing learnt about it
            cell = (depths[node], ranks[node], sources[node] if sources is not None else 0)
            hit = 1.0 if node in accepted else 0.0
            self.batch.setdefault(cell, _Counts()).add(hit, keep)
            own.setdefault(cell, _Counts()).add(hit, keep)

    def table(self, depths: int = 4, ranks: int = 4, source: int = 0) -> list[list[float]]:
        """The batch-wide rates of ``source`` as a [depth][rank] table, for reports."""
        return [[round(self.batch_rate(d, r, source), 3) for r in range(ranks)] for d in range(1, depths + 1)]
