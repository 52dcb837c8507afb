"""Many prompts through one decode loop: fixed batches (EQSPEC) or a sliding pool (EXSPEC).

``policy="eqspec"`` decodes the prompts in fixed batches of ``batch_size``, in input order;
after every step rows that accepted different numbers of tokens are realigned.

``policy="exspec"`` (Zhang et al., "Batch Speculative Decoding Done Right") keeps a pool of
up to ``window`` sequences, each row with its own key/value caches, held in *cohorts* (rows
that step together).  Each step runs the largest group of equal-length rows (up to
``batch_size``): such a batch needs no padding, and after the step its rows are regrouped by
their new lengths instead of being realigned.  Only when no group of ``min_group_size`` rows
exists does it fall back to a padded batch of the rows closest in length, which then stays
together and is realigned like an EQSPEC batch until equal-length groups form again.  New
prompts enter as sequences finish.  Regrouping copies rows between cohorts; that cost is
reported in ``stats.regroup_seconds``, realignment (padding rows of different lengths
together, or ragged commits) in ``realign_seconds``.

Results come back in input order, each sequence its prompt followed by its generated tokens.
A row with a length no other row shares waits until the fallback picks it, so EXSPEC trades
per-sequence latency for throughput.
"""
from __future__ import annotations

import copy
import time
from collections import defaultdict
from dataclasses import dataclass

import torch

from .drafters.base import Drafter
from .engine import Cohort, Decoding, _check_inputs, decoding, left_padded, run_to_end
from .sampling import Randomness
from .stats import DecodeStats
from .target import Target

POLICIES = ("exspec", "eqspec")


@dataclass
class PoolOutput:
    sequences: list[torch.Tensor]  # per prompt, in input order: prompt + generated tokens (1D)
    stats: DecodeStats


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


def generate_pool(
    target,
    prompts: list,
    drafter: Drafter | None = None,
    batch_size: int = 8,
    policy: str = "exspec",
    window: int | None = None,
    min_group_size: int | None = None,
    max_new_tokens: int = 64,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    eos_token_id: int | list[int] | None = None,
    seed: int | None = None,
    speculation=None,
    randomness: Randomness | None = None,
    typical_acceptance: tuple[float, float] | None = None,
) -> PoolOutput:
    """Decode every prompt of ``prompts`` (token-id lists or 1D tensors) with ``batch_size`` rows per step.

    ``window`` (default ``2 * batch_size``) bounds the EXSPEC pool; ``min_group_size`` (default
    ``batch_size // 2``) is the smallest equal-length group it runs unpadded.  The other
    arguments are ``specdec.generate``'s.  Greedy output equals ``generate``'s (and
    ``model.generate``'s) for each prompt alone; sampled output is distributed like it.
    """
    model = target.model if isinstance(target, Target) else target
    rows = _prompt_rows(prompts)
    if policy not in POLICIES:
        raise ValueError(f"unknown policy {policy!r}; choose one of {POLICIES}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
    window = 2 * batch_size if window is None else window
    if not isinstance(window, int) or window < batch_size:
        raise ValueError(f"window must be an int >= batch_size ({batch_size}), got {window!r}")
    min_group_size = max(1, batch_size // 2) if min_group_size is None else min_group_size
    if not isinstance(min_group_size, int) or not 1 <= min_group_size <= batch_size:
        raise ValueError(f"min_group_size must be an int in [1, batch_size={batch_size}], got {min_group_size!r}")
    device = next(model.parameters()).device
    for row in rows:  # the same checks as generate, per prompt
        _check_inputs(model, torch.tensor([row], device=device), None, max_new_tokens, drafter)
    job = decoding(model, drafter, max_new_tokens, do_sample, temperature, top_k, top_p, eos_token_id, seed,
                   speculation, randomness, device, typical_acceptance)
    started = time.perf_counter()
    if policy == "eqspec":
        for first in range(0, len(rows), batch_size):
            ids = list(range(first, min(first + batch_size, len(rows))))
            input_ids, mask = left_padded([rows[i] for i in ids], device)
            run_to_end(job, job.admit(ids, input_ids, mask, _fresh(drafter)))
    else:
        _run_pool(job, rows, drafter, batch_size, window, min_group_size, device)
    job.finish(started)
    sequences = [torch.tensor(job.committed[i], dtype=torch.long, device=device) for i in range(len(rows))]
    return PoolOutput(sequences, job.stats)


def _run_pool(job: Decoding, rows: list[list[int]], drafter, batch_size, window, min_group_size, device) -> None:
    stats = job.stats
    pending = list(range(len(rows)))
    pool: list[Cohort] = []
    while pending or pool:
        room = window - sum(c.size for c in pool)
        if room > 0 and pending:
            ids, pending = pending[:room], pending[room:]
            input_ids, mask = left_padded([rows[i] for i in ids], device)
            entrants = job.admit(ids, input_ids, mask, _fresh(drafter))
            pool.extend(c for c, _ in _by_length(job, entrants, list(range(entrants.size))))
        flat = [(c, r) for c in pool for r in range(c.size)]
        chosen, aligned = plan_group([job.length(c.ids[r]) for c, r in flat], batch_size, min_group_size)
        # gather the chosen rows into one cohort; the rest stay in the pool
        t0 = time.perf_counter()
        picked: dict[int, list[int]] = defaultdict(list)
        for index in chosen:
            cohort, r = flat[index]
            picked[id(cohort)].append(r)
        parts, rest = [], []
        for cohort in pool:
            take = picked.get(id(cohort), [])
            if len(take) == cohort.size:
                parts.append(cohort)
            elif take:
                parts.append(cohort.take_rows(take))
                rest.append(cohort.take_rows([r for r in range(cohort.size) if r not in take]))
            else:
                rest.append(cohort)
        group = parts[0].join(parts[1:])
        gather_seconds = time.perf_counter() - t0
        padded = len(parts) > 1 and len({job.length(i) for i in group.ids}) > 1  # the join moved rows
        pool = rest
        # one step of the one decode loop
        result = job.step(group)
        realigned, realign_seconds = padded, gather_seconds if padded else 0.0
        if aligned:  # EXSPEC: regroup the rows by their new lengths; each group stays unpadded
            t1 = time.perf_counter()
            groups = _by_length(job, group, result.still)
            stats.regroup_seconds += time.perf_counter() - t1 + gather_seconds
            stats.other_seconds += time.perf_counter() - t1
            for part, part_rows in groups:
                index = torch.tensor(part_rows, device=device)
                ragged, seconds = job.commit(part, result.acceptance.take_rows(part_rows),
                                             result.tree.take_rows(index), result.drafted)
                realigned |= ragged
                realign_seconds += seconds if ragged else 0.0
                pool.append(part)
        else:  # fallback: a padded batch, realigned like EQSPEC, kept together while it lasts
            ragged, seconds = job.commit(group, result.acceptance, result.tree, result.drafted)
            realigned |= ragged
            realign_seconds += seconds if ragged else 0.0
            if result.still:
                pool.append(group if len(result.still) == group.size else group.take_rows(result.still))
        stats.other_seconds += gather_seconds
        if realigned:
            stats.realignments += 1
            stats.realign_seconds += realign_seconds


def _by_length(job: Decoding, cohort: Cohort, rows: list[int]) -> list[tuple[Cohort, list[int]]]:
    """Rows ``rows`` of ``cohort`` split into cohorts of equal committed length, with their row indices."""
    groups: dict[int, list[int]] = defaultdict(list)
    for r in rows:
        groups[job.length(cohort.ids[r])].append(r)
    if len(groups) == 1 and len(rows) == cohort.size:
        return [(cohort, rows)]
    return [(cohort.take_rows(members), members) for members in groups.values()]


def _fresh(drafter: Drafter | None) -> Drafter | None:
    """A drafter object for a new batch: ``start`` gives it its own state; the model is shared."""
    return copy.copy(drafter) if drafter is not None else None


def _prompt_rows(prompts) -> list[list[int]]:
    if isinstance(prompts, torch.Tensor) or not isinstance(prompts, (list, tuple)) or not prompts:
        raise ValueError("prompts must be a non-empty list of token-id lists or 1D tensors")
    rows = []
    for i, p in enumerate(prompts):
        if isinstance(p, torch.Tensor):
            if p.dim() != 1:
                raise ValueError(f"prompt {i} must be a 1D tensor of token ids, got shape {tuple(p.shape)}")
            p = p.tolist()
        if not isinstance(p, (list, tuple)) or not p or not all(isinstance(t, int) for t in p):
            raise ValueError(f"prompt {i} must be a non-empty list of int token ids")
        rows.append(list(p))
    return rows
