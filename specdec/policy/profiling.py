"""Timing what a speculation policy weighs, and the product paths a target's forward should take.

:func:`profile` first measures this machine's :class:`~specdec.target.kernels.Kernels` for the model
(:func:`specdec.policy.kernel_profile.measure_kernels`), then, with those kernels in effect, times
``Target.verify`` of n draft nodes for a grid of batch sizes B, node counts n and contexts C (plus
the output head at the root, what greedy decoding pays at the least) and a drafter's draft seconds
per step at depths k and batch sizes B (from ``specdec.generate`` runs with ``speculation=k``),
interleaved and repeated (medians), and fits a :class:`~specdec.policy.latency.LatencyModel` that
holds the kernels too.  ``quick=True`` profiles a small grid (what SmartSpec does on first use,
with a progress bar); ``python -m specdec.policy.profile`` runs the full grid.  :func:`latency_for`
finds the profile a policy needs: given, on disk, or made now.  Every time read comes from
:class:`~specdec.clock.Clock`, which synchronises an accelerator before each reading.
"""
from __future__ import annotations

import json
import logging
import statistics
from pathlib import Path

import numpy as np
import torch

from ..clock import clock_for
from ..target.kernels import Kernels, remember
from .kernel_profile import kernel_steps, measure_kernels
from .latency import LatencyModel, default_path, draft_features, fit, latency_key, verify_features
from ..target.verifier import Target
from ..tree import DraftTree

log = logging.getLogger("specdec.policy.profile")

FULL = {"batches": (1, 2, 4, 8), "nodes": (0, 1, 2, 3, 5, 7, 11, 15), "contexts": (64, 256, 768), "repeats": 3,
        "depths": (1, 2, 4, 8), "draft_batches": (1, 2, 4, 8)}
QUICK = {"batches": (1, 2, 4), "nodes": (0, 1, 2, 3, 5, 7, 11), "contexts": (128, 512), "repeats": 3,
         "depths": (1, 2, 4), "draft_batches": (1, 4)}  # what a first use pays: about a minute on 2 cores; 3 repeats
# (medians) so that one slow reading of the machine is dropped, not averaged into a verification cost


class _Progress:
    """A tqdm bar when asked for (``total`` units of work), else nothing."""

    def __init__(self, enabled: bool, total: int, desc: str):
        self.bar = None
        if enabled:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, desc=desc, unit="step", dynamic_ncols=True, leave=False)

    def update(self, n: int = 1) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


# ---- verification and drafting ------------------------------------------------------------------------
@torch.no_grad()
def time_verify(model, batches, nodes, contexts, repeats: int, seed: int = 0, kernels: Kernels | None = None,
                progress: _Progress | None = None) -> list[dict]:
    """Seconds of ``Target.verify`` (and the head at the root) per (B, n, C), medians of interleaved repeats."""
    g = torch.Generator().manual_seed(seed)
    vocab = model.get_output_embeddings().weight.shape[0]
    device = next(model.parameters()).device
    clock = clock_for(device)
    points = []
    for context in contexts:
        for batch in batches:
            target = Target(model, kernels=kernels)
            ids = torch.randint(3, vocab, (batch, context + 1), generator=g).to(device)
            roots, _ = target.prefill(ids, torch.ones_like(ids))
            trees = {n: DraftTree.chain(torch.randint(3, vocab, (batch, n), generator=g).to(device)) for n in nodes}
            times = {n: [] for n in nodes}
            for r in range(repeats + 1):  # the first round warms up
                for n in (nodes if r % 2 else reversed(nodes)):
                    started = clock()
                    verification = target.try_verify(roots, trees[n])  # the cache stays at the context
                    verification.logits_at(torch.zeros(1, dtype=torch.long, device=device)).argmax(-1)
                    elapsed = clock() - started
                    if r:
                        times[n].append(elapsed)
                if progress is not None:
                    progress.update(len(nodes))
            points += [{"batch": batch, "nodes": n, "context": context, "seconds": statistics.median(times[n])}
                       for n in nodes]
    return points


@torch.no_grad()
def time_draft(model, drafter, batches, depths, repeats: int = 1, seed: int = 0,
               progress: _Progress | None = None) -> list[dict]:
    """A drafter's draft seconds per step at depth k and batch size B, from ``specdec.generate`` runs."""
    from ..generation import generate

    g = torch.Generator().manual_seed(seed)
    vocab = model.get_output_embeddings().weight.shape[0]
    prompt = torch.randint(3, vocab, (1, 48), generator=g).to(next(model.parameters()).device)
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
            if progress is not None:
                progress.update(repeats + 1)
    return points


def _draft_regression(points: list[dict]):
    dy = np.asarray([p["seconds"] for p in points])
    return fit(lambda form: draft_features([p["batch"] for p in points], [p["depth"] for p in points], form), dy)


def profile(model, drafters: dict | None = None, quick: bool = False, grid: dict | None = None,
            progress: bool = False, kernels: Kernels | None = None) -> LatencyModel:
    """Profile ``model`` (and each named drafter) and fit a :class:`LatencyModel` keyed to this setting.

    ``kernels``: use these instead of measuring them (tests; a profile of given kernels)."""
    grid = {**(QUICK if quick else FULL), **(grid or {})}
    drafters = {name: d for name, d in (drafters or {}).items() if d is not None}
    verify_units = len(grid["batches"]) * len(grid["nodes"]) * len(grid["contexts"]) * (grid["repeats"] + 1)
    draft_units = sum(len(grid["draft_batches"]) * len([k for k in grid["depths"] if k <= (d.max_depth or k)]) * 2
                      for d in drafters.values())
    bar = _Progress(progress, (0 if kernels else kernel_steps(model)) + verify_units + draft_units,
                    "specdec: profiling this machine")
    try:
        if kernels is None:
            kernels = measure_kernels(model, progress=bar)
        remember(model, kernels)  # the rest of the profile, and every later forward, runs these kernels
        verify = time_verify(model, grid["batches"], grid["nodes"], grid["contexts"], grid["repeats"],
                             kernels=kernels, progress=bar)
        y = np.asarray([p["seconds"] for p in verify])
        features = lambda form: verify_features([p["batch"] for p in verify], [p["nodes"] for p in verify],  # noqa: E731
                                                [p["context"] for p in verify], form, kernels.linear_rows)
        result = LatencyModel(latency_key(model), fit(features, y), {}, {"verify": verify, "draft": {}},
                              kernels.to_json())
        for name, drafter in drafters.items():
            points = time_draft(model, drafter, grid["draft_batches"], grid["depths"], progress=bar)
            result.add_drafter(name, _draft_regression(points), points)
    finally:
        bar.close()
    return result


def add_drafters(model, latency: LatencyModel, drafters: dict, quick: bool = True, progress: bool = False) -> None:
    """Profile the draft cost of ``drafters`` (name -> drafter) into ``latency``."""
    grid = QUICK if quick else FULL
    bar = _Progress(progress, sum(len(grid["draft_batches"]) * len(grid["depths"]) * 2 for _ in drafters),
                    "specdec: profiling the drafter")
    try:
        for name, drafter in drafters.items():
            points = time_draft(model, drafter, grid["draft_batches"], grid["depths"], progress=bar)
            latency.add_drafter(name, _draft_regression(points), points)
    finally:
        bar.close()


# ---- finding the profile a policy needs ----------------------------------------------------------------
_cache: dict[Path, tuple[float, LatencyModel]] = {}  # path -> (modification time, model)


def _load(path: Path, key: dict) -> LatencyModel:
    stamp = path.stat().st_mtime
    cached = _cache.get(path)
    if cached is None or cached[0] != stamp:
        cached = (stamp, LatencyModel.load(path, key))
        _cache[path] = cached
    return cached[1]


def _default_profile(path: Path, key: dict) -> LatencyModel | None:
    """The default file's profile if it is this setting's; None when there is none, or when it was made on
    another machine or by an older specdec (a shared or copied cache), which is then profiled again."""
    if not path.is_file():
        return None
    try:
        return _load(path, key)
    except (ValueError, KeyError, json.JSONDecodeError) as error:
        log.warning("specdec: %s does not fit this setting (%s); profiling again", path, error)
        return None


def latency_for(model, drafters: dict, given: LatencyModel | str | Path | None = None,
                profile_on_first_use: bool = True) -> LatencyModel:
    """The latency model for ``model`` with the draft cost of every drafter in ``drafters`` (name -> drafter).

    ``given`` (a model or a path) must have been profiled for this model, dtype, device and thread
    count.  Else the file ``python -m specdec.policy.profile`` writes is used, or, the first time on a
    machine, a short profile is made now (with a progress bar) and saved there.  A drafter the
    profile lacks is profiled and added (and saved, for the default file)."""
    key = latency_key(model)
    path = default_path(key)
    if isinstance(given, LatencyModel):
        if given.key != key:
            differs = {k: (given.key.get(k), v) for k, v in key.items() if given.key.get(k) != v}
            raise ValueError(f"the latency model was profiled for another setting: {differs} (it, now)")
        loaded, save = given, given is _cache.get(path, (None, None))[1]
    elif given is not None:
        loaded, save = LatencyModel.load(given, key), False
    elif (loaded := _default_profile(path, key)) is not None:
        save = True
    elif profile_on_first_use:
        if not path.is_file():
            log.warning("specdec: no latency profile for %s on this machine yet; profiling it now, once (about a minute for "
                        "SmolLM2-135M on 2 CPU cores; the bar shows the time left; `python -m specdec.policy.profile` "
                        "makes a fuller one)", key["model"])
        clock = clock_for(model)
        started = clock()
        with torch.inference_mode():
            loaded = profile(model, drafters, quick=True, progress=True)
        loaded.save(path)
        _cache[path] = (path.stat().st_mtime, loaded)
        log.warning("specdec: profiled in %.0f s; saved to %s", clock() - started, path)
        return loaded
    else:
        raise FileNotFoundError(f"no latency profile for {key} at {path}; run `python -m specdec.policy.profile`")
    missing = {name: d for name, d in drafters.items() if name not in loaded.draft}
    if missing:
        log.warning("specdec: the latency profile lacks the draft cost of %s; profiling it now", ", ".join(missing))
        with torch.inference_mode():
            add_drafters(model, loaded, missing, progress=True)
        if save:
            loaded.save(path)
            _cache[path] = (path.stat().st_mtime, loaded)
    return loaded
