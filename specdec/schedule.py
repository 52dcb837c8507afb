"""Schedulers: which rows the one decode loop steps together.

A scheduler answers ``next_cohort(job)`` (the rows of the next step, or None when all is
done), may ``regroup`` the rows that go on after a step before their caches are committed,
and takes the committed cohorts back with ``put_back``.

* :class:`FixedBatches` (EQSPEC): batches in input order, each decoded to its end; rows that
  accepted different numbers of tokens are realigned every step.  ``generate`` is one batch.
* :class:`EqualLengthPool` (EXSPEC; Zhang et al., "Batch Speculative Decoding Done Right"):
  a pool of up to ``window`` sequences held in cohorts; each step runs the largest group of
  equal-length rows (up to ``batch_size``), which needs no padding, and regroups its rows by
  their new lengths before committing, so no group is ever realigned.  Only when no group of
  ``min_group_size`` rows exists does it fall back to a padded batch of the rows closest in
  length, which stays together and is realigned like an EQSPEC batch until equal-length groups
  form again.  New prompts enter as sequences finish.  Regrouping copies rows between cohorts
  (``stats.regroup_seconds``); padding rows of different lengths together counts as
  realignment (``realign_seconds``).
"""
from __future__ import annotations

from collections import defaultdict

from .engine import Cohort, Decoding
from .inputs import left_padded


class FixedBatches:
    """Each batch ``(sequence ids, input_ids, attention_mask)`` in turn, decoded to its end (EQSPEC)."""

    def __init__(self, batches):
        self.batches = iter(batches)
        self.current: Cohort | None = None

    def next_cohort(self, job: Decoding) -> Cohort | None:
        if self.current is None:
            batch = next(self.batches, None)
            if batch is None:
                return None
            self.current = job.admit(*batch)
        cohort, self.current = self.current, None
        return cohort

    def regroup(self, job: Decoding, cohort: Cohort, rows: list[int]) -> list[list[int]]:
        return [rows] if rows else []

    def put_back(self, job: Decoding, cohort: Cohort) -> None:
        self.current = cohort


def plan_group(lengths: list[int], batch_size: int, min_group_size: int) -> tuple[list[int], bool]:
    """Which pool rows step together, and whether they share one length (no padding needed).

    The largest set of rows of equal length (at most ``batch_size``; among equals the
    shortest length, so that laggards catch up) is taken when it has ``min_group_size`` rows
    or holds the whole pool; otherwise the ``batch_size`` rows closest in length.
    """
    by_length: dict[int, list[int]] = defaultdict(list)
    for row, length in enumerate(lengths):
        by_length[length].append(row)
    best = max(by_length, key=lambda n: (min(len(by_length[n]), batch_size), -n))
    rows = by_length[best][:batch_size]
    if len(rows) >= min(min_group_size, len(lengths)):
        return rows, True
    order = sorted(range(len(lengths)), key=lambda r: lengths[r])
    size = min(batch_size, len(lengths))
    start = min(range(len(order) - size + 1), key=lambda s: (lengths[order[s + size - 1]] - lengths[order[s]], s))
    return sorted(order[start:start + size]), False


class EqualLengthPool:
    """EXSPEC's sliding pool of equal-length cohorts (see the module docstring)."""

    def __init__(self, prompts: list[list[int]], batch_size: int, window: int, min_group_size: int, device):
        self.prompts = prompts
        self.pending = list(range(len(prompts)))
        self.pool: list[Cohort] = []
        self.batch_size, self.window, self.min_group_size = batch_size, window, min_group_size
        self.device = device
        self.aligned = False  # whether the running group shares one length

    def next_cohort(self, job: Decoding) -> Cohort | None:
        if not self.pending and not self.pool:
            return None
        room = self.window - sum(c.size for c in self.pool)
        if room > 0 and self.pending:
            ids, self.pending = self.pending[:room], self.pending[room:]
            input_ids, mask = left_padded([self.prompts[i] for i in ids], self.device)
            entrants = job.admit(ids, input_ids, mask)
            self.pool.extend(entrants.take_rows(rows) for rows in self._by_length(job, entrants, range(entrants.size)))
        flat = [(c, r) for c in self.pool for r in range(c.size)]
        chosen, self.aligned = plan_group([job.length(c.ids[r]) for c, r in flat], self.batch_size,
                                          self.min_group_size)
        # gather the chosen rows into one cohort; the rest stay in the pool
        started = job.clock()
        picked: dict[int, list[int]] = defaultdict(list)
        for index in chosen:
            cohort, r = flat[index]
            picked[id(cohort)].append(r)
        parts, rest = [], []
        for cohort in self.pool:
            take = picked.get(id(cohort), [])
            if take:
                parts.append(cohort.take_rows(take))
            if len(take) < cohort.size:
                rest.append(cohort.take_rows([r for r in range(cohort.size) if r not in take]))
        group = parts[0].join(parts[1:])
        self.pool = rest
        seconds = job.clock() - started
        job.stats.other_seconds += seconds
        if len(parts) > 1 and len({job.length(i) for i in group.ids}) > 1:  # the join padded rows
            job.note_realignment(seconds)
        else:
            job.stats.regroup_seconds += seconds
        return group

    def regroup(self, job: Decoding, cohort: Cohort, rows: list[int]) -> list[list[int]]:
        """EXSPEC: the rows that go on, by new length (each group commits unpadded); fallback: together."""
        if not rows:
            return []
        if not self.aligned:
            return [rows]
        return self._by_length(job, cohort, rows)

    def put_back(self, job: Decoding, cohort: Cohort) -> None:
        self.pool.append(cohort)

    @staticmethod
    def _by_length(job: Decoding, cohort: Cohort, rows) -> list[list[int]]:
        groups: dict[int, list[int]] = defaultdict(list)
        for r in rows:
            groups[job.length(cohort.ids[r])].append(r)
        return list(groups.values())
