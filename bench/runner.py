"""Time every method on every prompt, ``repeats`` times; watch the machine's load while doing it.

Order: ``repeats`` passes over the prompts; on each prompt a *round* runs every method once, the
starting method rotating from round to round.  Interleaving spreads slow drifts of a shared
machine over all methods alike, and a burst of load shorter than a pass hits at most one repeat
of each prompt, which the per-prompt medians of :mod:`.metrics` then ignore.  One record per
(prompt, method, repeat), JSON-ready.

Load: :class:`LoadMonitor` samples the 1-minute load average before the run, after every round
and after the run, and subtracts this process's own share; :func:`calibrate` times a fixed
matmul loop at the start and the end.  :func:`.metrics.load_verdict` turns both into a ``busy``
flag.  ``read_loadavg`` and ``calibrate`` are the only readers, so tests fake the load by
monkeypatching them.
"""
from __future__ import annotations

import logging
import math
import os
import statistics
import time
from dataclasses import replace

import torch
from tqdm.auto import tqdm

from .methods import Method, count_forwards

log = logging.getLogger("specdec.bench")
LOAD_TIME_CONSTANT = 60.0  # seconds: Linux's 1-minute load average is an EMA with this time constant


def warm_up(methods: list[Method], model, input_ids: torch.Tensor, max_new_tokens: int,
            progress: bool = True) -> dict[str, float]:
    """Run each method once on a short budget (first calls pay for lazy set-up and allocator growth).

    Logs one line per method with its time and shows a bar; returns ``{method: seconds}``.
    """
    seconds = {}
    log.info("warm-up: %d methods, %d new tokens each", len(methods), max_new_tokens)
    bar = tqdm(methods, desc="warm-up", unit="method", disable=not progress, dynamic_ncols=True)
    for i, method in enumerate(bar, 1):
        bar.set_postfix_str(method.name, refresh=True)
        full = method.decoding
        method.decoding = replace(full, max_new_tokens=max_new_tokens)
        t0 = time.perf_counter()
        try:
            method.run(model, input_ids)
        finally:
            method.decoding = full
        seconds[method.name] = time.perf_counter() - t0
        log.info("warm-up %d/%d %s: %.2f s", i, len(methods), method.name, seconds[method.name])
    bar.close()
    return seconds


def run_prompts(methods: list[Method], model, prompts: list, encoded: list[torch.Tensor],
                baseline: str, greedy: bool, repeats: int = 1, progress: bool = True,
                monitor: LoadMonitor | None = None) -> list[dict]:
    """Records for every prompt, method and repeat; ``identical`` compares generated ids with the
    baseline's in the same round.  ``monitor`` (if any) is sampled after every round."""
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    records = []
    bar = tqdm(total=len(prompts) * len(methods) * repeats, desc="bench", unit="run", disable=not progress,
               dynamic_ncols=True)
    rounds = 0
    for repeat in range(repeats):
        t_pass = time.perf_counter()
        for method in methods:  # e.g. suffix caches start each pass afresh (a pass is one run over the prompts)
            if hasattr(method, "new_pass"):
                method.new_pass()
        for prompt, input_ids in zip(prompts, encoded):
            shift = rounds % len(methods)
            rounds += 1
            outputs = {}
            for method in methods[shift:] + methods[:shift]:
                bar.set_postfix_str(f"{repeat + 1}/{repeats} {prompt.id} {method.name}", refresh=False)
                with count_forwards(model) as counter:
                    sequences, stats, seconds = method.run(model, input_ids)
                generated = sequences[0, input_ids.shape[1]:].tolist()
                outputs[method.name] = generated
                records.append(_record(prompt, repeat, input_ids, method.name, generated, stats, seconds,
                                       counter["forwards"]))
                bar.update()
            for record in records[-len(methods):]:
                same = outputs[record["method"]] == outputs[baseline]
                record["identical"] = same if greedy else None
            if monitor is not None:
                monitor.sample()
        log.info("pass %d/%d over %d prompts: %.1f s", repeat + 1, repeats, len(prompts),
                 time.perf_counter() - t_pass)
    bar.close()
    return records


def _record(prompt, repeat: int, input_ids, method: str, generated: list[int], stats, seconds: float,
            forwards: int) -> dict:
    """One run.  Hugging Face methods have no stats: their target forwards are counted by a hook
    (each yields tokens); specdec counts its own (its verifier calls the backbone directly)."""
    record = {
        "prompt_id": prompt.id,
        "category": prompt.category,
        "method": method,
        "repeat": repeat,
        "prompt_tokens": int(input_ids.shape[1]),
        "new_tokens": len(generated),
        "seconds": seconds,
        "target_forwards": stats.target_forwards if stats is not None else forwards,
        "steps": stats.steps if stats is not None else forwards,
        "draft_seconds": stats.draft_seconds if stats is not None else None,
        "verify_seconds": stats.verify_seconds if stats is not None else None,
        "other_seconds": stats.other_seconds if stats is not None else None,
        "accepted_histogram": ({str(k): v for k, v in sorted(stats.accepted_histogram.items())}
                               if stats is not None else None),
        "depth_accepted": ([[int(d), int(a), v] for (d, a), v in sorted(stats.depth_accepted.items())]
                           if stats is not None else None),
        "accepted_copies": stats.accepted_copies if stats is not None else None,
        "identical": None,
    }
    return record


# --- machine load ---------------------------------------------------------------------------------

def read_loadavg() -> float | None:
    """The 1-minute load average (runnable tasks of every process, ours included); None where unknown."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def calibrate(size: int = 256, reps: int = 100, trials: int = 5) -> float:
    """Median seconds of a fixed float32 matmul loop on torch's current threads (one untimed trial first).

    The same work at the start and the end of a run: a slower end means our threads got less of
    the CPU (other load, throttling, a CPU quota), whatever the load average says.
    """
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(size, size, generator=generator)
    b = torch.randn(size, size, generator=generator)
    times = []
    for trial in range(trials + 1):
        t0 = time.perf_counter()
        for _ in range(reps):
            torch.mm(a, b)
        if trial:
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


class OwnShare:
    """This process's part of the 1-minute load average, estimated the way the kernel averages load.

    An exponential moving average (time constant 60 s) of our CPU use (``time.process_time`` over
    wall time) between updates; it starts from the CPU seconds spent so far (the imports,
    single-threaded) spread over 60 s.
    """

    def __init__(self):
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        self.value = min(1.0, self.cpu / LOAD_TIME_CONSTANT)

    def update(self) -> float:
        wall, cpu = time.perf_counter(), time.process_time()
        if wall > self.wall:
            decay = math.exp(-(wall - self.wall) / LOAD_TIME_CONSTANT)
            self.value = self.value * decay + (cpu - self.cpu) / (wall - self.wall) * (1 - decay)
        self.wall, self.cpu = wall, cpu
        return self.value


OWN_SHARE = OwnShare()  # one per process, so that the jobs of a Hydra multirun see each other's load as ours


class LoadMonitor:
    """Other processes' part of the 1-minute load average, sampled whenever :meth:`sample` is called:
    ``others = max(0, load average - our own share)`` (:class:`OwnShare`)."""

    def __init__(self, own: OwnShare | None = None):
        self.own = own if own is not None else OWN_SHARE
        self.samples: list[dict] = []

    def sample(self) -> dict:
        """Read the load average now; append and return ``{loadavg, own, others}`` (None where unknown)."""
        own = self.own.update()
        load = read_loadavg()
        others = None if load is None else max(0.0, load - own)
        self.samples.append({"loadavg": load, "own": own, "others": others})
        return self.samples[-1]
