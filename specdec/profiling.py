"""Timing what a speculation policy weighs: the target's verification and a drafter's proposal.

:func:`profile` measures, interleaved and repeated (medians), ``Target.verify`` of a chain of n draft
nodes for a grid of batch sizes B, node counts n and contexts C (plus the output head at the root,
what greedy decoding pays at the least), and a drafter's draft seconds per step at depths k and
batch sizes B (from ``specdec.generate`` runs with ``speculation=k``), then fits a
:class:`~specdec.latency.LatencyModel`.  ``quick=True`` profiles a small grid in seconds (what
SmartSpec does on first use); ``python -m specdec.profile`` runs the full grid and saves it.
"""
from __future__ import annotations

import statistics
import time

import numpy as np
import torch

from .latency import LatencyModel, draft_features, fit, latency_key, verify_features
from .target import Target
from .tree import DraftTree

FULL = {"batches": (1, 2, 4, 8), "nodes": (0, 1, 2, 3, 5, 7, 11, 15), "contexts": (64, 256, 768), "repeats": 3,
        "depths": (1, 2, 4, 8)}
QUICK = {"batches": (1, 4), "nodes": (0, 1, 3, 7), "contexts": (128, 512), "repeats": 2, "depths": (1, 2, 4)}


@torch.no_grad()
def time_verify(model, batches, nodes, contexts, repeats: int, seed: int = 0) -> list[dict]:
    """Seconds of ``Target.verify`` (and the head at the root) per (B, n, C), medians of interleaved repeats."""
    g = torch.Generator().manual_seed(seed)
    vocab = model.get_output_embeddings().weight.shape[0]
    points = []
    for context in contexts:
        for batch in batches:
            target = Target(model)
            ids = torch.randint(3, vocab, (batch, context + 1), generator=g)
            roots, _ = target.prefill(ids, torch.ones_like(ids))
            trees = {n: DraftTree.chain(torch.randint(3, vocab, (batch, n), generator=g)) for n in nodes}
            times = {n: [] for n in nodes}
            for r in range(repeats + 1):  # the first round warms up
                for n in (nodes if r % 2 else reversed(nodes)):
                    started = time.perf_counter()
                    verification = target.verify(roots, trees[n])
                    verification.logits_at(torch.zeros(1, dtype=torch.long)).argmax(-1)
                    elapsed = time.perf_counter() - started
                    cache = target.cache
                    keep = cache.mask.clone()
                    keep[:, cache.width - 1 - n:] = False  # back to the context
                    cache.keep(keep)
                    if r:
                        times[n].append(elapsed)
            points += [{"batch": batch, "nodes": n, "context": context, "seconds": statistics.median(times[n])}
                       for n in nodes]
    return points


@torch.no_grad()
def time_draft(model, drafter, batches, depths, repeats: int = 1, seed: int = 0) -> list[dict]:
    """A drafter's draft seconds per step at depth k and batch size B, from ``specdec.generate`` runs."""
    from .engine import generate

    g = torch.Generator().manual_seed(seed)
    vocab = model.get_output_embeddings().weight.shape[0]
    prompt = torch.randint(3, vocab, (1, 96), generator=g)
    reach = drafter.max_depth or max(depths)
    points = []
    for batch in batches:
        ids = prompt.repeat(batch, 1)
        for k in [d for d in depths if d <= reach]:
            runs = []
            for _ in range(repeats + 1):
                stats = generate(model, ids, drafter, max_new_tokens=2 * k + 6, eos_token_id=[], speculation=k).stats
                drafted = sum(1 for step in stats.depth_chosen if max(step) > 0)
                runs.append(stats.draft_seconds / max(drafted, 1))
            points.append({"batch": batch, "depth": k, "seconds": statistics.median(runs[1:])})
    return points


def profile(model, drafters: dict | None = None, quick: bool = False, grid: dict | None = None) -> LatencyModel:
    """Profile ``model`` (and each named drafter) and fit a :class:`LatencyModel` keyed to this setting."""
    grid = {**(QUICK if quick else FULL), **(grid or {})}
    verify = time_verify(model, grid["batches"], grid["nodes"], grid["contexts"], grid["repeats"])
    y = np.asarray([p["seconds"] for p in verify])
    features = lambda form: verify_features([p["batch"] for p in verify], [p["nodes"] for p in verify],  # noqa: E731
                                            [p["context"] for p in verify], form)
    result = LatencyModel(latency_key(model), fit(features, y), {}, {"verify": verify, "draft": {}})
    for name, drafter in (drafters or {}).items():
        if drafter is None:
            continue
        points = time_draft(model, drafter, grid["batches"], grid["depths"])
        result.points["draft"][name] = points
        dy = np.asarray([p["seconds"] for p in points])
        result.draft[name] = fit(lambda form, pts=points: draft_features([p["batch"] for p in pts],
                                                                          [p["depth"] for p in pts], form), dy)
    return result
