"""Speculation-length policies: how deep (and how wide) each row drafts at each step.

Before a step the engine asks the policy for a :class:`SpeculationPlan` given a
:class:`StepContext` (batch size, each row's committed length and remaining budget); after
the step it tells the policy what happened in a :class:`StepReport` (per row: nodes proposed,
depth proposed, tokens accepted; draft and verify seconds).  A depth of 0 is plain decoding
for that row; the engine never drafts past a row's budget, whatever the plan says, and rows
that draft less than the deepest get placeholder nodes, so one row near its budget does not
turn drafting off for its neighbours.

After the drafter proposed, the policy may prune the tree (:meth:`SpeculationPolicy.prune`): the
nodes it drops are not verified, and the engine compacts what is left.

``generate(speculation=k)`` with an int is :class:`FixedLength` (``0``: plain decoding); ``None``
with a drafter is the goodput policy, :class:`~specdec.policy.smartspec.SmartSpec`, one per drafter
(:meth:`~specdec.drafters.Drafter.default_policy`), so that what it learns carries over from call
to call.  Adaptive policies subclass :class:`SpeculationPolicy`.
"""
from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class StepContext:
    """What a policy knows before a step."""

    sequences: list[int]  # sequence id of each row (stable across steps; input order in generate_pool)
    lengths: list[int]  # committed tokens per row (prompt and generated)
    remaining: list[int]  # tokens each row may still generate (>= 1)
    max_depth: int | None  # the deepest tree the drafter can draft (None: any)
    default_depth: int  # the drafter's own depth (its num_tokens)
    default_nodes: int | None  # the drafter's own node budget per row (None: not a tree drafter)
    ready: list[tuple[int, ...]] | None = None  # per row, the free sources that have something to propose now

    @property
    def batch_size(self) -> int:
        return len(self.sequences)


@dataclass(frozen=True)
class SpeculationPlan:
    """A policy's answer: per row, how deep to draft (0 = not at all) and with how many nodes."""

    depth: list[int]
    max_nodes: list[int | None] | None = None  # None: the drafter's own budget
    predicted_seconds: float | None = None  # the policy's prediction of the step's time, if it makes one
    sources: tuple[int, ...] | None = None  # which of a hybrid drafter's sources draft this step (None: all)

    def __post_init__(self):
        if any(isinstance(d, bool) or not isinstance(d, int) or d < 0 for d in self.depth):
            raise ValueError(f"speculation depths must be ints >= 0, got {self.depth}")
        if self.max_nodes is not None:
            if len(self.max_nodes) != len(self.depth):
                raise ValueError(f"{len(self.max_nodes)} node budgets for {len(self.depth)} rows")
            if any(m is not None and (not isinstance(m, int) or m < 0) for m in self.max_nodes):
                raise ValueError(f"node budgets must be ints >= 0 or None, got {self.max_nodes}")


@dataclass(frozen=True)
class StepReport:
    """What happened in a step, per row, and where its time went."""

    sequences: list[int]
    depth: list[int]  # depth the row was allowed to draft (0: it did not draft)
    proposed: list[int]  # real draft nodes proposed for the row
    accepted: list[int]  # draft tokens accepted (the correction or bonus token not counted)
    draft_seconds: float
    verify_seconds: float
    other_seconds: float = 0.0  # acceptance and the commit (cache realignment, regrouping)
    tree: object = None  # the DraftTree that was verified (after pruning), or None
    paths: list[list[int]] | None = None  # per row, the accepted nodes of ``tree`` from depth 1 down


class SpeculationPolicy(abc.ABC):
    """Chooses each row's speculation depth (and node budget) for the next step."""

    def start(self, model, drafter) -> None:
        """Called once per decoding job, before its first step, with the target model and the drafter."""

    @abc.abstractmethod
    def plan(self, context: StepContext) -> SpeculationPlan:
        """The depth (and node budget) per row for the next step."""

    def prune(self, tree) -> "torch.Tensor | None":
        """After the proposal: which nodes of ``tree`` (a DraftTree, already cut to the plan) to verify, as a
        [B, N] bool mask closed under parents and earlier siblings; None keeps them all."""
        return None

    def observe(self, report: StepReport) -> None:
        """Hear what the step did (acceptance, timings); adaptive policies learn from it."""


class FixedLength(SpeculationPolicy):
    """Always draft ``k`` tokens deep (0 means plain decoding), with the drafter's own node budget."""

    def __init__(self, k: int, max_nodes: int | None = None):
        if isinstance(k, bool) or not isinstance(k, int) or k < 0:
            raise ValueError(f"speculation length must be an int >= 0, got {k!r}")
        if max_nodes is not None and (isinstance(max_nodes, bool) or not isinstance(max_nodes, int) or max_nodes < 1):
            raise ValueError(f"max_nodes must be an int >= 1 or None, got {max_nodes!r}")
        self.k = k
        self.max_nodes = max_nodes

    def plan(self, context: StepContext) -> SpeculationPlan:
        nodes = None if self.max_nodes is None else [self.max_nodes] * context.batch_size
        return SpeculationPlan([self.k] * context.batch_size, nodes)

    def __repr__(self) -> str:
        return f"FixedLength({self.k})"


def default_policy(drafter) -> SpeculationPolicy:
    """The policy ``generate`` uses for ``drafter`` when given no ``speculation``: its goodput policy."""
    return drafter.default_policy()


def as_policy(speculation, drafter) -> SpeculationPolicy:
    """The policy object for ``generate(speculation=...)``: None -> the drafter's goodput policy
    (plain decoding without a drafter)."""
    if speculation is None:
        return default_policy(drafter) if drafter is not None else FixedLength(0)
    if isinstance(speculation, int) and not isinstance(speculation, bool):
        return FixedLength(speculation)
    if isinstance(speculation, SpeculationPolicy):
        return speculation
    raise TypeError(
        f"speculation must be None, an int >= 0 or a specdec.SpeculationPolicy, got {type(speculation).__name__}"
    )
