"""SmartSpec: each step's draft depth and tree from goodput, down to plain decoding.

Goodput is expected tokens per second (Liu et al., 2024, "Optimizing Speculative Decoding for
Serving LLMs Using Goodput").  SmartSpec chose one speculation length per step; here the whole
tree is sized, in two moves per step:

1. **Before drafting** (:meth:`SmartSpec.plan`), the depth K.  For every K up to the drafter's
   reach, the drafter's largest tree at that depth (:meth:`~specdec.drafters.Drafter.tree_template`,
   e.g. Medusa's card tree, Chimera's dynamic tree, a chain) is valued node by node from the
   acceptance learnt per (depth, sibling rank) (:mod:`specdec.policy.acceptance_rates`); its best subtree
   of every width m is read off (:mod:`specdec.policy.pruning`), and the step's goodput is

       sum over rows of E_r[tokens | K, m]  /  (T_draft(B, K) + T_verify(B, m, C)),

   weighted by how often a row proposes at all.  The best (K, m) names K; K = 0 is plain decoding,
   and wins unless drafting's goodput beats it by ``margin`` (1.0: no margin; the authors' code
   uses 1.1).
2. **After drafting** (:meth:`SmartSpec.prune`), the tree the drafter actually proposed (its
   card tree, cut to depth K) is pruned per row to its best subtree of a common width m: the m
   maximising goodput with the draft's predicted time already spent.  Rows keep their own nodes
   and may keep fewer (a row whose lookup matched nothing keeps none).  Kept sibling sets are
   prefixes of their draw order, so sampled trees stay lossless.

From Sequoia (Chen et al., 2024) this takes the positional acceptance vector, per depth and
sibling rank, and the choice of tree size against a measured cost curve; from EAGLE-2 (Li et al.,
2024) the per-step pruning of a drafted tree to the nodes of highest path probability (with the
learnt rates as the probability, not the draft's confidence); from SmartSpec the goodput rule, the
profiled cost model with online correction (:mod:`specdec.policy.step_time`), and K = 0.

T comes from a :class:`~specdec.policy.latency.LatencyModel` profiled for this model, dtype, device and
thread count: ``latency`` (a model or a path), else the file ``python -m specdec.policy.profile``
writes, else profiled on first use with a short grid (it says so and shows a progress bar).
While K = 0 nothing is observed, so after ``probe_every`` such steps one step drafts one level
and keeps at least one node per row: acceptance that rises mid-sequence brings drafting back.
Probes that change nothing double the interval, up to ``4 * probe_every``.  The other way round,
after ``probe_every`` drafting steps in a row one step decodes plainly, so that the machine's speed
(measured on plain steps) and a drafting width's own overhead stay apart (:mod:`specdec.policy.step_time`).

A hybrid drafter (:class:`~specdec.drafters.hybrid.Hybrid`) proposes nodes of several sources, a
model's draws and classes of copies.  Acceptance is learnt per source (copies start from the
drafter's :meth:`~specdec.drafters.Drafter.source_priors`, else ``copy_prior``: once a copy's
first token is right, the next ones usually are), the pruning ranks both sources' nodes by the
same values, and the plan weighs one more option per depth: the drafter's *free* sources alone (copies,
a dictionary lookup), which costs no draft time, is drafted to the full depth and left to the pruning.
After ``probe_every`` copy-only steps in a row the model is weighed again.

One SmartSpec learns across the jobs it serves (what ``drafter.default_policy()`` relies on): the
batch-wide acceptance and the time corrections carry over, the per-row rates start afresh.
"""
from __future__ import annotations

from pathlib import Path

import torch

from .acceptance_rates import RankRates, geometric_prior
from .latency import LatencyModel
from .pruning import best_width, expected_tokens, growth_order, node_depths, path_values
from .speculation import SpeculationPlan, SpeculationPolicy, StepContext, StepReport
from .step_time import StepTimes

HISTORY = 100_000  # steps of history a policy keeps (for reports and traces)


class SmartSpec(SpeculationPolicy):
    def __init__(self, max_depth: int | None = None, latency: LatencyModel | str | Path | None = None,
                 prior: float | list[float] = 0.5, decay: float = 0.97, margin: float = 1.0,
                 row_weight: float = 8.0, profile_on_first_use: bool = True, probe_every: int = 16,
                 time_decay: float = 0.8, min_time_observations: int = 3, correct_times: bool = True,
                 copy_prior: float | list[float] = (0.4, 0.7)):
        if max_depth is not None and (isinstance(max_depth, bool) or not isinstance(max_depth, int) or max_depth < 1):
            raise ValueError(f"max_depth must be an int >= 1 or None, got {max_depth!r}")
        priors = [prior] if isinstance(prior, (int, float)) else list(prior)
        if not priors or any(not 0.0 <= float(p) <= 1.0 for p in priors):
            raise ValueError(f"prior must be an acceptance rate in [0, 1] or a list of them, got {prior!r}")
        if margin < 1.0:
            raise ValueError(f"margin must be >= 1 (1: none), got {margin!r}")
        if not isinstance(latency, (LatencyModel, str, Path, type(None))):
            raise TypeError(f"latency must be a LatencyModel, a path or None, got {type(latency).__name__}")
        if isinstance(probe_every, bool) or not isinstance(probe_every, int) or probe_every < 1:
            raise ValueError(f"probe_every must be an int >= 1, got {probe_every!r}")
        if not 0.0 <= time_decay < 1.0:
            raise ValueError(f"time_decay must be in [0, 1), got {time_decay!r}")
        self.max_depth, self.latency, self.margin = max_depth, latency, float(margin)
        copies = [copy_prior] if isinstance(copy_prior, (int, float)) else list(copy_prior)
        if not copies or any(not 0.0 <= float(p) <= 1.0 for p in copies):
            raise ValueError(f"copy_prior must be an acceptance rate in [0, 1] or a list of them, got {copy_prior!r}")
        self._copy_prior = geometric_prior(copies)
        self.rates = RankRates(geometric_prior(priors), decay, row_weight, source_priors={1: self._copy_prior})
        self.profile_on_first_use = profile_on_first_use
        self.probe_every, self._idle, self._probe_interval, self._drafting = probe_every, 0, probe_every, 0
        self._free_steps = 0  # steps in a row that drafted only the drafter's free sources
        self.time_decay, self.min_time, self.correct_times = float(time_decay), int(min_time_observations), bool(correct_times)
        self.times: StepTimes | None = None
        self.drafter = None
        self.depth_limit = 0
        self.node_limit = 0
        self._template: tuple[list[int], list[int], list[int]] | None = None
        self._step: dict | None = None  # the step being planned: depth, probe, predicted times
        self.history: list[dict] = []  # per step: depth, width, predicted and measured seconds

    # ---- set-up ---------------------------------------------------------------------------------
    def start(self, model, drafter) -> None:
        """Bind to the job's model and drafter: the latency model, the depth limit, the drafter's tree shapes."""
        self.rates.forget_rows()  # sequence ids are per job; what was learnt for the batch carries over
        if drafter is None:
            return
        name = drafter.cost_name
        if self.times is None or self.times.drafter_name != name or self.drafter is not drafter:
            from .profiling import latency_for

            latency = latency_for(model, {name: drafter}, self.latency if self.times is None else self.times.latency,
                                  self.profile_on_first_use)
            if self.times is None or self.times.latency is not latency or self.times.drafter_name != name:
                self.times = StepTimes(latency, name, self.correct_times, self.time_decay, self.min_time)
            self.latency = latency
        if self.drafter is not drafter:
            self._template = None
            self.rates.source_priors.update({source: self._copy_prior for source in drafter.free_sources})
            self.rates.source_priors.update({source: geometric_prior(rates)
                                             for source, rates in drafter.source_priors().items()})
        self.drafter = drafter
        want = self.max_depth or int(drafter.num_tokens)  # the drafter's own depth bounds its trees
        self.depth_limit = want if drafter.max_depth is None else min(want, drafter.max_depth)
        self.node_limit = int(getattr(drafter, "num_nodes", None) or 64)

    def template(self) -> tuple[list[int], list[int], list[int]]:
        """Parents, depths and sources (0 throughout for a single-source drafter) of the drafter's largest
        tree, ``depth_limit`` levels deep (built once).

        The tree at a smaller depth K is its nodes of depth <= K: the drafters' trees grow level by level."""
        if self._template is None:
            parents = list(self.drafter.tree_template(self.depth_limit))
            sources = self.drafter.template_sources(self.depth_limit)
            self._template = (parents, node_depths(parents), [0] * len(parents) if sources is None else list(sources))
        return self._template

    # ---- before drafting: the depth ---------------------------------------------------------------
    def plan(self, context: StepContext) -> SpeculationPlan:
        if self.times is None:
            raise RuntimeError("SmartSpec.plan before start(): the engine binds the policy to its model first")
        b = context.batch_size
        mean_context = sum(context.lengths) / b
        parents, depths, sources = self.template()
        widest = min(len(parents), self.node_limit)
        ready = context.ready if context.ready is not None else [None] * b
        rows = [self._ordered_values(s, parents, sources, r) for s, r in zip(context.sequences, ready)]
        free = self._free_nodes(parents, sources)
        choice = (0, 0, None, False)  # depth, width, goodput, free sources only
        for only_free in ([False] if free is None else [False, True]):
            # copying costs no draft time at any depth: one look at the deepest (the pruning cuts it later)
            for depth in ([self.depth_limit] if only_free else range(self.depth_limit + 1)):
                seconds = self.times.seconds(b, depth, mean_context, widest if depth else 0, drafting=not only_free)
                gains = [self._gains(values, depths, order, min(depth, left - 1), widest, free if only_free else None)
                         for (values, order), left in zip(rows, context.remaining)]
                width, goodput = best_width(gains, seconds.__getitem__, len(seconds) - 1)
                if depth == 0:
                    goodput *= self.margin
                if choice[2] is None or goodput > choice[2] * (1 + 1e-9):
                    choice = (depth, width, goodput, only_free)
        depth = choice[0] if choice[1] > 0 else 0
        only_free = choice[3] and depth > 0
        if free is not None and not (depth and not only_free):
            # free sources cost no draft time and a step whose copies find nothing is a plain step: rather than
            # decode plainly, copy to the full depth and let the pruning keep what pays (possibly nothing)
            depth, only_free = self.depth_limit, True
        probe = False
        if only_free:
            self._free_steps += 1
            if self._free_steps >= self._probe_interval:  # weigh the model again on what it now does
                depth, only_free, probe, self._free_steps = self.depth_limit, False, True, 0
                self._probe_interval = min(2 * self._probe_interval, 4 * self.probe_every)
        elif depth > 0:
            self._free_steps = 0
        self._idle = self._idle + 1 if depth == 0 else 0
        self._drafting = self._drafting + 1 if depth > 0 else 0
        if depth > 0:
            if not probe and not only_free:
                self._probe_interval = self.probe_every
            if self._drafting > self.probe_every and not probe:  # a plain step now and then keeps the machine's speed known
                depth, only_free, self._drafting = 0, False, 0
        elif self._idle >= self._probe_interval and self.depth_limit >= 1:  # look at the acceptance again
            depth, probe, self._idle = 1, True, 0
            self._probe_interval = min(2 * self._probe_interval, 4 * self.probe_every)
        self._step = {"depth": depth, "probe": probe, "batch": b, "context": mean_context,
                      "sequences": list(context.sequences), "drafting": not only_free}
        predicted = self.times.seconds(b, depth, mean_context, choice[1], drafting=not only_free)[choice[1] if depth else 0]
        return SpeculationPlan([depth] * b, None, predicted, tuple(self.drafter.free_sources) if only_free else None)

    def _free_nodes(self, parents: list[int], sources: list[int]) -> set[int] | None:
        """Template nodes a step drafting only the drafter's free sources proposes (None: it has none)."""
        free_sources = set(self.drafter.free_sources)
        if not free_sources:
            return None
        free: set[int] = set()
        for node, (parent, source) in enumerate(zip(parents, sources)):
            if source in free_sources and (parent < 0 or parent in free):
                free.add(node)
        return free or None

    def _ordered_values(self, sequence: int, parents: list[int], sources: list[int],
                        ready: tuple[int, ...] | None = None) -> tuple[list[float], list[int]]:
        """The template's node values for a row, each weighted by how often the row proposes a node of
        its source at all, and their growth order."""
        values = path_values(parents, self.rates.rates_of(sequence), None, sources)
        shares = {s: self.rates.proposes(sequence, s) for s in set(sources)}
        if ready is not None:  # the drafter looked: its free sources propose now or not at all
            shares.update({s: float(s in ready) for s in self.drafter.free_sources})
        values = [shares[s] * v for v, s in zip(values, sources)]
        return values, growth_order(parents, values, None, sources)

    @staticmethod
    def _gains(values, depths: list[int], order: list[int], depth: int, widest: int,
               among: set[int] | None = None) -> list[float]:
        """Expected tokens with the best m nodes no deeper than ``depth`` (and in ``among``, if given), m = 0..widest."""
        gains = [1.0]
        if depth <= 0:
            return gains
        for node in order:
            if len(gains) > widest:
                break
            if depths[node] <= depth and (among is None or node in among):
                gains.append(gains[-1] + values[node])
        return gains

    # ---- after drafting: the tree -------------------------------------------------------------------
    def prune(self, tree) -> torch.Tensor | None:
        step = self._step
        if step is None or not tree.num_nodes:
            return None
        b, depth, context = step["batch"], step["depth"], step["context"]
        orders, gains = [], []
        valid_rows = tree.node_valid.tolist()
        sources_rows = tree.node_sources()  # each node's source: 0 for the model's, 1 and up for copies
        asked = self._asked(step)  # a copy-only step says nothing of the model
        step["proposed"] = [{s: any(v and k == s for v, k in zip(ok, kinds)) for s in asked}
                            for ok, kinds in zip(valid_rows, sources_rows)]  # per source asked for, before pruning
        for sequence, parents, valid, sources in zip(step["sequences"], tree.parents.tolist(), valid_rows, sources_rows):
            values = path_values(parents, self.rates.rates_of(sequence), valid, sources)
            order = growth_order(parents, values, valid, sources)
            orders.append(order)
            gains.append(expected_tokens(values, order))
        seconds = self.times.seconds(b, depth, context, max(len(o) for o in orders), drafting=step["drafting"])
        width, _ = best_width(gains, seconds.__getitem__, len(seconds) - 1)
        if step["probe"]:
            width = max(width, 1)
        keep = torch.zeros(tree.tokens.shape, dtype=torch.bool)
        for row, order in enumerate(orders):
            keep[row, order[:width]] = True
        return keep.to(tree.tokens.device)

    def _asked(self, step: dict) -> tuple[int, ...]:
        """The sources a step asked the drafter for: its free ones alone, or all it has."""
        if not step["drafting"]:
            return tuple(self.drafter.free_sources)
        return tuple(sorted(set(self.template()[2])))

    # ---- after the step -----------------------------------------------------------------------------
    def observe(self, report: StepReport) -> None:
        step, self._step = self._step, None
        measured = report.draft_seconds + report.verify_seconds + report.other_seconds
        if step is not None:
            width = report.tree.num_nodes if report.tree is not None else max(report.proposed, default=0)
            profiled = self.times.profiled(step["batch"], step["depth"], width, step["context"], step["drafting"])
            predicted = profiled * self.times.correction(step["batch"], width)
            if len(self.history) >= HISTORY:  # a policy kept for a long time keeps its recent steps only
                del self.history[:HISTORY // 2]
            self.history.append({"depth": step["depth"], "width": width, "batch": step["batch"],
                                 "predicted_seconds": predicted, "profiled_seconds": profiled,
                                 "measured_seconds": measured})
            self.times.observe(step["batch"], width, profiled, measured)
        if report.tree is None or report.paths is None:
            return
        parents_rows, valid_rows = report.tree.parents.tolist(), report.tree.node_valid.tolist()
        sources_rows = (report.tree.node_sources()
                        if report.tree.copied is not None or report.tree.sources is not None else None)
        proposed = step.get("proposed") if step is not None else None
        if proposed is None and step is not None and not report.tree.num_nodes:  # nothing proposed: no pruning saw it
            proposed = [dict.fromkeys(self._asked(step), False) for _ in report.sequences]
        for row, (sequence, depth) in enumerate(zip(report.sequences, report.depth)):
            sources = None if sources_rows is None else sources_rows[row]
            self.rates.observe(sequence, parents_rows[row], valid_rows[row], report.paths[row], allowed=depth > 0,
                               sources=sources, proposed=None if proposed is None else proposed[row])

    def __repr__(self) -> str:
        return f"SmartSpec(max_depth={self.max_depth}, drafter={getattr(self.times, 'drafter_name', None)})"
