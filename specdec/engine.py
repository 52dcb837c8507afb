"""The one decode loop every method shares: propose, verify, accept, commit, adapt.

Knows nothing about tokenization: token ids in, token ids out.  ``generate`` returns
sequences shaped and padded exactly like ``model.generate`` for the same input, and with
``do_sample=False`` the very same tokens; with sampling, tokens distributed exactly as the
target's own sampler's.

A :class:`Decoding` is one job: its settings, every sequence's tokens so far, and the step.
A *scheduler* (:mod:`specdec.schedule`) decides which rows step together: fixed batches
(EQSPEC; ``generate`` is one such batch) or an equal-length pool (EXSPEC).  :func:`decode` is
the loop both run.
"""
from __future__ import annotations

import copy
import threading
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from .acceptance import Acceptance, accept
from .clock import Clock, clock_for
from .config import DecodeConfig
from .drafters.base import CommitUpdate, Drafter, DraftRequest
from .inputs import eos_ids, pad_id, truncate
from .sampling import Randomness, seeded_randomness
from .policy.speculation import SpeculationPlan, StepContext, StepReport, as_policy
from .stats import DecodeStats
from .streaming import BatchStream
from .target.verifier import Target
from .tree import DraftTree


@dataclass
class Cohort:
    """Rows decoded together as one batch: their sequence ids and the state that follows them."""

    ids: list[int]  # sequence ids (input order) of the rows
    target: Target  # the model and these rows' key/value cache
    drafter: Drafter | None  # the drafter's state for these rows
    roots: torch.Tensor  # [B] last committed token per row (not cached yet)

    @property
    def size(self) -> int:
        return len(self.ids)

    def take_rows(self, rows: list[int]) -> "Cohort":
        """A cohort of copies of rows ``rows``; may be taken between a step and its commit."""
        if rows == list(range(self.size)):
            return self
        index = torch.tensor(rows, dtype=torch.long, device=self.roots.device)
        return Cohort([self.ids[r] for r in rows], self.target.take_rows(index),
                      self.drafter.take_rows(index) if self.drafter is not None else None, self.roots[index])

    def join(self, others: list["Cohort"]) -> "Cohort":
        """One cohort of the rows of ``[self, *others]`` (left-padded when their lengths differ)."""
        if not others:
            return self
        parts = [self] + others
        return Cohort([i for c in parts for i in c.ids], self.target.join([c.target for c in others]),
                      self.drafter.join([c.drafter for c in others]) if self.drafter is not None else None,
                      torch.cat([c.roots for c in parts]))


@dataclass
class Step:
    """What one step proposed, saw and accepted for every row of a cohort, before the commit."""

    tree: DraftTree  # the tree verified: the proposal, cut to the plan and pruned, compacted
    proposal: DraftTree  # the tree as the drafter proposed it
    origin: torch.Tensor | None  # [B, N'] proposal node of each verified node (-1 placeholders); None: the same
    proposed: bool  # whether the drafter proposed (else the tree is empty)
    depth: list[int]  # depth each row was allowed
    acceptance: Acceptance
    hidden: torch.Tensor  # [B, 1+N, H] the target's final hidden state at every slot
    roots: torch.Tensor  # [B] the roots the tree hung below
    draft_seconds: float
    verify_seconds: float
    accept_seconds: float = 0.0

    def take_rows(self, rows: list[int]) -> "Step":
        index = torch.tensor(rows, dtype=torch.long, device=self.roots.device)
        return Step(self.tree.take_rows(index), self.proposal.take_rows(index),
                    None if self.origin is None else self.origin[index], self.proposed, [self.depth[r] for r in rows],
                    self.acceptance.take_rows(rows), self.hidden[index], self.roots[index],
                    self.draft_seconds, self.verify_seconds, self.accept_seconds)

    def update(self) -> CommitUpdate:
        """The drafter's view: tokens the target cached (old root, accepted nodes) and their states,
        the accepted paths numbered as in its own proposal."""
        paths = self.acceptance.paths
        b = len(paths)
        width = 1 + max(len(p) for p in paths)
        slots = torch.zeros(b, width, dtype=torch.long)
        real = torch.zeros(b, width, dtype=torch.bool)
        for row, path in enumerate(paths):
            slots[row, width - 1 - len(path):] = torch.tensor([0] + [node + 1 for node in path])
            real[row, width - 1 - len(path):] = True
        device = self.roots.device
        slots, real = slots.to(device), real.to(device)
        tokens = torch.cat([self.roots[:, None], self.tree.tokens], dim=1).gather(1, slots)
        hidden = self.hidden.gather(1, slots[..., None].expand(-1, -1, self.hidden.shape[-1]))
        if self.origin is not None:
            origin = self.origin.tolist()
            paths = [[origin[row][node] for node in path] for row, path in enumerate(paths)]
        return CommitUpdate(self.proposal, self.proposed, paths, tokens, real, hidden, self.acceptance.next_tokens)


class Decoding:
    """One decoding job: its settings, every sequence's tokens so far, and the step."""

    def __init__(self, model, drafter: Drafter | None, config: DecodeConfig, rng: Randomness,
                 clock: Clock | None = None):
        self.model = model
        self.clock = clock if clock is not None else clock_for(model)  # synchronises an accelerator
        self.drafter = drafter
        self.config = config
        self.sampling = config.sampling
        self.typical = config.typical_acceptance if config.do_sample else None
        self.eos = eos_ids(model, config.eos_token_id)
        self.pad = pad_id(model, config.pad_token_id, self.eos)
        self.rng = rng
        self.policy = as_policy(config.speculation, drafter)
        self.policy.start(model, drafter)
        self._predicted: float | None = None
        self.stats = DecodeStats()
        self.committed: dict[int, list[int]] = {}
        self.generated: dict[int, list[int]] = {}
        self.stream: BatchStream | None = None
        self.realigned = False  # whether this step's rows were realigned (set by schedulers and commits)

    def note_realignment(self, seconds: float) -> None:
        """Rows of this step were realigned (padding moved or added), which took ``seconds``."""
        self.realigned = True
        self.stats.realign_seconds += seconds

    def admit(self, ids: list[int], input_ids: torch.Tensor, attention_mask: torch.Tensor) -> Cohort:
        """Prefill the prompts of sequences ``ids`` (a left-padded batch) into a new cohort."""
        started = self.clock()
        target = Target(self.model)
        roots, hidden = target.prefill(input_ids, attention_mask)
        self.stats.target_forwards += int(input_ids.shape[1] > 1)
        drafter = copy.copy(self.drafter) if self.drafter is not None else None  # the model is shared
        if drafter is not None:
            drafter.start(self.model, input_ids, attention_mask, hidden)
        for i, row, m in zip(ids, input_ids, attention_mask):
            self.committed[i] = row[m.bool()].tolist()
            self.generated[i] = []
        self.stats.prefill_seconds += self.clock() - started
        return Cohort(list(ids), target, drafter, roots)

    def length(self, sequence: int) -> int:
        """Committed tokens of a sequence (prompt and generated)."""
        return len(self.committed[sequence])

    def step(self, cohort: Cohort) -> Step:
        """1. propose, 2. verify and 3. accept, for every row of ``cohort``; :meth:`commit` follows."""
        t0 = self.clock()
        depth, nodes, sources = self._plan(cohort)
        # 1. propose
        proposed = any(depth)
        origin = None
        if proposed:
            lengths = torch.tensor([self.length(i) for i in cohort.ids], device=cohort.roots.device)
            request = DraftRequest(cohort.roots, lengths, depth, self.sampling, self.rng, nodes, sources)
            proposal = cohort.drafter.propose(request)
            _check_tree(proposal, request)
            limited = proposal.limited(depth, nodes)
            keep = self.policy.prune(limited) if limited.num_nodes else None
            tree, origin = limited.select(limited.node_valid if keep is None else keep)
        else:
            tree = proposal = DraftTree.empty(cohort.size, cohort.roots.device)
        t1 = self.clock()
        # 2. verify
        verification = cohort.target.verify(cohort.roots, tree)
        self.stats.target_forwards += 1
        t2 = self.clock()
        # 3. accept
        acceptance = accept(tree, verification, self.sampling, self.rng, self.typical)
        t3 = self.clock()
        self.stats.other_seconds += t3 - t2
        return Step(tree, proposal, origin, proposed, depth, acceptance, verification.hidden, cohort.roots,
                    t1 - t0, t2 - t1, t3 - t2)

    def _plan(self, cohort: Cohort) -> tuple[list[int], list[int | None] | None, tuple[int, ...] | None]:
        """Each row's depth (the policy's, within the row's budget and the drafter's reach), node budget, and
        the drafter's sources asked for."""
        self._predicted = None
        if cohort.drafter is None:
            return [0] * cohort.size, None, None
        remaining = [self.config.max_new_tokens - len(self.generated[i]) for i in cohort.ids]
        drafter = cohort.drafter
        context = StepContext(list(cohort.ids), [self.length(i) for i in cohort.ids], remaining,
                              drafter.max_depth, drafter.num_tokens, getattr(drafter, "num_nodes", None),
                              drafter.ready_sources() if drafter.free_sources else None)
        plan = self.policy.plan(context)
        if not isinstance(plan, SpeculationPlan) or len(plan.depth) != cohort.size:
            raise TypeError(f"{type(self.policy).__name__}.plan() must return a SpeculationPlan with one depth "
                            f"per row ({cohort.size}), got {plan!r}")
        reach = drafter.max_depth if drafter.max_depth is not None else max(plan.depth, default=0)
        self._predicted = plan.predicted_seconds
        return [max(0, min(d, r - 1, reach)) for d, r in zip(plan.depth, remaining)], plan.max_nodes, plan.sources

    def commit(self, cohort: Cohort, step: Step, regroup=None) -> list[Cohort]:
        """4. commit the token lists, then the caches, and 5. adapt the policy.

        Finished rows leave.  ``regroup(rows)`` may split the rows that go on into groups
        (EXSPEC: by their new lengths), each committed as its own cohort; returns the cohorts.
        """
        started = self.clock()
        stats = self.stats
        paths, next_tokens = step.acceptance.paths, step.acceptance.next_tokens.tolist()
        tokens = step.tree.tokens.tolist() if any(paths) else None
        copied = step.tree.copied.tolist() if step.tree.copied is not None and any(paths) else None
        proposed_depth = self._proposed_depth(step.tree)
        still = []
        for r, sequence in enumerate(cohort.ids):
            path = paths[r]
            remaining = self.config.max_new_tokens - len(self.generated[sequence])
            new = truncate([tokens[r][n] for n in path] + [next_tokens[r]], remaining, self.eos)
            self.generated[sequence].extend(new)
            self.committed[sequence].extend(new)
            finished = len(self.generated[sequence]) >= self.config.max_new_tokens or new[-1] in self.eos
            if self.stream is not None:
                self.stream.put(sequence, new, finished)
            if not finished:
                still.append(r)
            stats.depth_accepted[proposed_depth[r], len(path)] += 1
            if copied is not None:
                stats.accepted_copies += sum(copied[r][n] for n in path)
        if self.stream is not None:
            self.stream.flush()
        stats.steps += 1
        stats.row_steps += cohort.size
        stats.drafted_tokens += sum(step.tree.valid_counts)
        stats.depth_chosen.append(list(step.depth))
        stats.predicted_seconds.append(self._predicted)
        stats.draft_seconds += step.draft_seconds
        stats.verify_seconds += step.verify_seconds
        groups = regroup(self, cohort, still) if regroup is not None else ([still] if still else [])
        parts = []
        for rows in groups:
            t0 = self.clock()
            part = cohort.take_rows(rows)
            part_step = step if part is cohort else step.take_rows(rows)
            if len(groups) > 1:
                stats.regroup_seconds += self.clock() - t0
            t0 = self.clock()
            if part.target.commit(part_step.acceptance.paths, part_step.tree.num_nodes):
                self.note_realignment(self.clock() - t0)
            if part.drafter is not None:
                part.drafter.commit(part_step.update())
            part.roots = part_step.acceptance.next_tokens
            parts.append(part)
        stats.realignments += int(self.realigned)
        self.realigned = False
        committed = self.clock() - started
        stats.other_seconds += committed
        # 5. adapt: the policy sees the whole step, acceptance and the caches' commit (realignment) included
        other = step.accept_seconds + committed
        stats.step_seconds.append(step.draft_seconds + step.verify_seconds + other)
        self.policy.observe(StepReport(list(cohort.ids), list(step.depth), list(step.tree.valid_counts),
                                       [len(p) for p in paths], step.draft_seconds, step.verify_seconds, other,
                                       step.tree, paths))
        return parts

    @staticmethod
    def _proposed_depth(tree: DraftTree) -> list[int]:
        """Per row, the depth of its deepest real node (0 when it drafted nothing)."""
        if not tree.num_nodes:
            return [0] * tree.batch_size
        return (tree.depth * tree.node_valid).max(dim=1).values.tolist()

    def finish(self, started: float) -> None:
        stats = self.stats
        stats.total_seconds = self.clock() - started
        stats.other_seconds += stats.prefill_seconds
        stats.row_tokens = [len(self.generated[i]) for i in sorted(self.generated)]
        stats.tokens_generated = sum(stats.row_tokens)


def decode(job: Decoding, scheduler) -> None:
    """The one decode loop: the scheduler picks the rows, the job steps and commits them."""
    while (cohort := scheduler.next_cohort(job)) is not None:
        step = job.step(cohort)  # 1. propose, 2. verify, 3. accept
        for part in job.commit(cohort, step, scheduler.regroup):  # 4. commit, 5. adapt
            scheduler.put_back(job, part)


_claimed: set[int] = set()  # ids of the drafters inside a call now
_claims_lock = threading.Lock()


@contextmanager
def claimed(drafter):
    """Hold ``drafter`` for one call: a drafter keeps per-call state (its caches, the policy's rates), so two
    concurrent calls sharing one would corrupt each other; the second is refused.  Separate drafters on one
    model may decode in parallel threads: the model's weights are only read."""
    if drafter is None:
        yield
        return
    with _claims_lock:
        if id(drafter) in _claimed:
            raise RuntimeError(f"this {type(drafter).__name__} is already decoding in another call (another "
                               "thread?): give each concurrent generate call its own drafter")
        _claimed.add(id(drafter))
    try:
        yield
    finally:
        with _claims_lock:
            _claimed.discard(id(drafter))


def new_job(model, drafter, config: DecodeConfig, randomness: Randomness | None, device) -> Decoding:
    """A :class:`Decoding` with the random source ``randomness`` (default: seeded by ``config.seed``)."""
    rng = randomness if randomness is not None else seeded_randomness(config.seed, device)
    return Decoding(model, drafter, config, rng)


def _check_tree(tree: DraftTree, request: DraftRequest) -> None:
    if not isinstance(tree, DraftTree):
        raise TypeError(f"a drafter's propose() must return a DraftTree, got {type(tree).__name__}")
    if tree.batch_size != request.batch_size:
        raise ValueError(f"draft tree has {tree.batch_size} rows for a batch of {request.batch_size}")
    if tree.max_depth > request.max_depth:
        raise ValueError(f"draft tree is {tree.max_depth} deep, more than the {request.max_depth} tokens asked for")
