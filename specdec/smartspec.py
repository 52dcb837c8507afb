"""SmartSpec (Liu et al., 2024): each step's speculation length from goodput, down to plain decoding.

Before every step, for the batch at hand, SmartSpec picks the depth K in 0..``max_depth`` that
maximises

    goodput(K) = sum over rows of E_r[tokens | K]  /  (T_verify(B, nodes(K), C) + T_draft(B, K))

where E_r[tokens | K] = 1 + sum_{i<=K} prod_{j<=i} a_j with a_j the acceptance rate at draft
position j (of the steps allowed to draft position j whose path reached it, the share where the
drafter proposed it and the target accepted it; a drafter that proposes nothing, such as prompt
lookup without a match, misses, so the estimate is of a step *allowed* depth K): per row an
exponential moving average, backed by the batch-wide estimate until the row has seen
``min_row_observations`` drafts at that position, and started from ``prior``, or from the
acceptance by position in a ``card`` attribute of the drafter where it has one (the packaged
drafters set none: on the distilled draft at batch 1, starting from its card's 0.30, 0.32, 0.54
measured no better than 0.5 everywhere, 34.7 against 35.4 tokens/s over 12 prompts).  T comes from a :class:`~specdec.latency.LatencyModel`
profiled for this model, dtype, device and thread count: loaded from ``latency`` (a model or a
path), else from the default file (``python -m specdec.profile`` writes it), else profiled on
first use with a short grid (it says so).  K = 0, plain decoding, wins unless drafting's goodput
beats it by ``margin`` (1.0: no margin; the authors' code uses 1.1).  While K = 0 no acceptance
is observed, so after ``probe_every`` such steps one step drafts a single token to look again:
acceptance that rises in the middle of a sequence brings drafting back.  Probes that change
nothing double the interval, up to ``4 * probe_every``; choosing to draft resets it.

Tree drafters: the node budget grows with depth in proportion to the drafter's own
(``nodes(K) = ceil(num_nodes * K / num_tokens)``).  Every row of a batch drafts the same K (the
verification is one dense forward, so a shorter row saves nothing), except where its budget
cuts it.  The policy records its predicted step time; the engine records the measured one.

The profile times the target and the drafter in isolation; a real step also pays the engine's
own work (acceptance, and the caches' commit: realigning rows that accepted different numbers of
tokens) and runs with caches the other model just evicted.  So predictions are corrected
online: per batch size and depth, a moving average of measured over predicted seconds
(``time_decay``) multiplies the profile's prediction once that depth has been observed
``min_time_observations`` times at that batch size; until then a drafting depth takes the correction
of the nearest drafting depth observed at that batch size (drafting steps share their overheads),
and plain decoding none.  ``correct_times=False`` trusts the latency model as it is.
"""
from __future__ import annotations

import logging
import math
from pathlib import Path

from .latency import LatencyModel, default_path, latency_key
from .speculation import SpeculationPlan, SpeculationPolicy, StepContext, StepReport

log = logging.getLogger("specdec.smartspec")


class SmartSpec(SpeculationPolicy):
    def __init__(self, max_depth: int | None = None, latency: LatencyModel | str | Path | None = None,
                 prior: float | list[float] = 0.5, decay: float = 0.9, margin: float = 1.0,
                 min_row_observations: int = 8, profile_on_first_use: bool = True, probe_every: int = 16,
                 time_decay: float = 0.8, min_time_observations: int = 3, correct_times: bool = True):
        if max_depth is not None and (isinstance(max_depth, bool) or not isinstance(max_depth, int) or max_depth < 1):
            raise ValueError(f"max_depth must be an int >= 1 or None, got {max_depth!r}")
        priors = [prior] if isinstance(prior, (int, float)) else list(prior)
        if not priors or any(not 0.0 <= float(p) <= 1.0 for p in priors):
            raise ValueError(f"prior must be an acceptance rate in [0, 1] or a list of them, got {prior!r}")
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"decay must be in [0, 1), got {decay!r}")
        if margin < 1.0:
            raise ValueError(f"margin must be >= 1 (1: none), got {margin!r}")
        if not isinstance(latency, (LatencyModel, str, Path, type(None))):
            raise TypeError(f"latency must be a LatencyModel, a path or None, got {type(latency).__name__}")
        self.max_depth, self.latency, self.prior = max_depth, latency, [float(p) for p in priors]
        self.decay, self.margin, self.min_row = decay, margin, min_row_observations
        self.profile_on_first_use = profile_on_first_use
        if isinstance(probe_every, bool) or not isinstance(probe_every, int) or probe_every < 1:
            raise ValueError(f"probe_every must be an int >= 1, got {probe_every!r}")
        self.probe_every, self._idle, self._probe_interval = probe_every, 0, probe_every
        if not 0.0 <= time_decay < 1.0:
            raise ValueError(f"time_decay must be in [0, 1), got {time_decay!r}")
        self.time_decay, self.min_time = float(time_decay), int(min_time_observations)
        self.correct_times = bool(correct_times)
        self.time_ratio: dict[tuple[int, int], float] = {}  # (batch, depth) -> measured / profiled seconds
        self.time_count: dict[tuple[int, int], int] = {}
        self.batch_rates: list[float] = []  # per position, batch-wide
        self.row_rates: dict[int, list[float]] = {}  # per sequence, per position
        self.row_counts: dict[int, list[int]] = {}
        self.drafter_name = "drafter"
        self.history: list[dict] = []  # per step: chosen depth, predicted and measured seconds

    # ---- set-up ---------------------------------------------------------------------------------
    def start(self, model, drafter) -> None:
        """Bind to the job's model and drafter: the latency model, the priors, the depth limit."""
        self.row_rates.clear()  # sequence ids are per job; what was learnt for the batch carries over
        self.row_counts.clear()
        if drafter is None:
            return
        self.drafter_name = type(drafter).__name__
        self.default_depth = int(drafter.num_tokens)
        self.default_nodes = getattr(drafter, "num_nodes", None)
        limit = drafter.max_depth or max(8, self.default_depth)
        self.depth_limit = min(self.max_depth or limit, limit)
        card = getattr(drafter, "card", None) or {}
        measured = (card.get("measured") or {}).get("acceptance_by_position")
        if measured and not self.batch_rates:
            self.prior = [float(a) for a in measured]
        if not self.batch_rates:
            self.batch_rates = [self._prior(i) for i in range(self.depth_limit)]
        self.latency = self._latency_model(model, drafter)

    def _latency_model(self, model, drafter) -> LatencyModel:
        key = latency_key(model)
        if isinstance(self.latency, LatencyModel):
            if self.latency.key != key:
                differs = {k: (self.latency.key.get(k), v) for k, v in key.items() if self.latency.key.get(k) != v}
                raise ValueError(f"the latency model was profiled for another setting: {differs} (it, now)")
            loaded = self.latency
        elif self.latency is not None:
            loaded = LatencyModel.load(self.latency, key)
        elif default_path(key).is_file():
            loaded = LatencyModel.load(default_path(key), key)
        elif self.profile_on_first_use:
            from .profiling import profile

            log.warning("SmartSpec: no latency profile for %s; profiling a short grid now "
                        "(run `python -m specdec.profile` once to keep a full one)", key)
            loaded = profile(model, {self.drafter_name: drafter}, quick=True)
            loaded.save(default_path(key))
        else:
            raise FileNotFoundError(f"no latency profile for {key} at {default_path(key)}; "
                                    "run `python -m specdec.profile`")
        if self.drafter_name not in loaded.draft:
            from .profiling import profile

            log.warning("SmartSpec: the latency profile lacks %s's draft cost; profiling it now", self.drafter_name)
            extra = profile(model, {self.drafter_name: drafter}, quick=True)
            loaded.add_drafter(self.drafter_name, extra.draft[self.drafter_name],
                               extra.points.get("draft", {}).get(self.drafter_name))
        return loaded

    def _prior(self, position: int) -> float:
        return self.prior[min(position, len(self.prior) - 1)]

    # ---- the decision ---------------------------------------------------------------------------
    def rates(self, sequence: int) -> list[float]:
        """Acceptance rate per draft position for a row: its own where it has enough evidence, else the batch's."""
        own, counts = self.row_rates.get(sequence), self.row_counts.get(sequence)
        if own is None:
            return list(self.batch_rates)
        return [o if c >= self.min_row else b for o, c, b in zip(own, counts, self.batch_rates)]

    @staticmethod
    def expected_tokens(rates: list[float], depth: int) -> float:
        """1 + sum_{i<=depth} prod_{j<=i} a_j: tokens a step yields when drafting ``depth`` deep."""
        total, chain = 1.0, 1.0
        for a in rates[:depth]:
            chain *= a
            total += chain
        return total

    def nodes(self, depth: int) -> int:
        if self.default_nodes is None or depth == 0:
            return depth
        return max(depth, math.ceil(self.default_nodes * depth / max(self.default_depth, 1)))

    def profiled_seconds(self, batch: int, depth: int, context: float) -> float:
        """The latency model's step time: verification of the depth's nodes plus drafting them."""
        return (self.latency.verify_seconds(batch, self.nodes(depth), context)
                + self.latency.draft_seconds(self.drafter_name, batch, depth))

    def time_correction(self, batch: int, depth: int) -> float:
        """Measured over profiled seconds for (batch, depth): its own average once observed enough; for a
        drafting depth not yet observed, that of the nearest drafting depth observed at this batch size
        (drafting steps share their overheads); else 1."""
        if not self.correct_times:
            return 1.0
        if self.time_count.get((batch, depth), 0) >= self.min_time:
            return self.time_ratio[(batch, depth)]
        if depth == 0:
            return 1.0
        seen = [k for (b, k), n in self.time_count.items() if b == batch and k > 0 and n >= self.min_time]
        if not seen:
            return 1.0
        return self.time_ratio[(batch, min(seen, key=lambda k: (abs(k - depth), k)))]

    def step_seconds(self, batch: int, depth: int, context: float) -> float:
        return self.profiled_seconds(batch, depth, context) * self.time_correction(batch, depth)

    def plan(self, context: StepContext) -> SpeculationPlan:
        if getattr(self, "latency", None) is None or not isinstance(self.latency, LatencyModel):
            raise RuntimeError("SmartSpec.plan before start(): the engine binds the policy to its model first")
        b = context.batch_size
        mean_context = sum(context.lengths) / b
        rates = [self.rates(s) for s in context.sequences]
        profiled = [self.profiled_seconds(b, depth, mean_context) for depth in range(self.depth_limit + 1)]
        best_depth, best, predicted = 0, None, None
        for depth, raw in enumerate(profiled):
            tokens = sum(self.expected_tokens(r, min(depth, left - 1)) for r, left in zip(rates, context.remaining))
            seconds = raw * self.time_correction(b, depth)
            goodput = tokens / seconds * (self.margin if depth == 0 else 1.0)
            if best is None or goodput > best:
                best_depth, best, predicted = depth, goodput, seconds
        self._idle = self._idle + 1 if best_depth == 0 else 0
        if best_depth > 0:
            self._probe_interval = self.probe_every
        if self._idle >= self._probe_interval and self.depth_limit >= 1:  # look at the acceptance again
            best_depth, predicted, self._idle = 1, profiled[1] * self.time_correction(b, 1), 0
            # probes that change nothing come ever more rarely (up to 4x): at batch 8 a probe step costs
            # half a step more, which was 3% of throughput at one probe every 16 steps
            self._probe_interval = min(2 * self._probe_interval, 4 * self.probe_every)
        nodes = None
        if self.default_nodes is not None:
            nodes = [self.nodes(min(best_depth, left - 1)) for left in context.remaining]
        self.history.append({"depth": best_depth, "predicted_seconds": predicted, "batch": b,
                             "profiled_seconds": profiled[best_depth]})
        return SpeculationPlan([best_depth] * b, nodes, predicted)

    def observe(self, report: StepReport) -> None:
        if self.history and "measured_seconds" not in self.history[-1]:
            last = self.history[-1]
            last["measured_seconds"] = measured = report.draft_seconds + report.verify_seconds + report.other_seconds
            ratio = measured / max(last["profiled_seconds"], 1e-9)
            key, keep = (last["batch"], last["depth"]), self.time_decay
            seen = self.time_count.get(key, 0)
            self.time_ratio[key] = ratio if seen == 0 else keep * self.time_ratio[key] + (1 - keep) * ratio
            self.time_count[key] = seen + 1
        keep = self.decay
        for sequence, depth, _proposed, accepted in zip(report.sequences, report.depth, report.proposed,
                                                       report.accepted):
            own = self.row_rates.setdefault(sequence, list(self.batch_rates))
            counts = self.row_counts.setdefault(sequence, [0] * len(self.batch_rates))
            # every position the row was allowed and reached counts, drafted or not: a drafter that came up
            # short (prompt lookup without a match) missed there, so the rates give E[tokens | depth k]
            for position in range(min(depth, accepted + 1, len(self.batch_rates))):
                hit = 1.0 if position < accepted else 0.0  # reached position+1; accepted it or not
                own[position] = keep * own[position] + (1 - keep) * hit
                counts[position] += 1
                self.batch_rates[position] = keep * self.batch_rates[position] + (1 - keep) * hit
