"""Measuring which matrix-product paths a target's forward should take on this machine.

:func:`measure_kernels` times the model's own weight matrices at decoding's row counts, both ways a
CPU can multiply them (``W @ x.T`` and ``F.linear``), with and without q/k/v and gate/up fused,
and the output head, and derives the :class:`~specdec.target.kernels.Kernels` the forward then
takes.  On the 2-core development CPU the differences are large and irregular: SmolLM2's layer
products cost about the same for 1, 2 and 4 rows and about a third more for 3 or 5, so with 3 rows
padded to 4, a root and up to three draft nodes are multiplied for the price of plain decoding's one row.

Those differences are smaller than the machine's own drift (another process, a shared host's
neighbours), so every timing here is interleaved (:func:`interleaved_medians`): each round runs every
case once in a shuffled order, and each case's median over the rounds is kept.  Timed one case
after another, a slow stretch of the machine reads as a slow kernel, and a kernel choice made from it
(a 3-row product left unpadded) holds for every later decode on the machine.
"""
from __future__ import annotations

import random
import statistics
from typing import Callable, Hashable

import torch

from ..clock import Clock, clock_for
from ..target.head import few_rows_product
from ..target.kernels import Kernels

KERNEL_ROWS = (1, 2, 3, 4, 5, 6, 7, 8, 10, 12, 16, 24, 32)  # row counts the layer products are timed at
HEAD_ROWS = (1, 2, 3, 4, 5, 6, 8, 16, 32, 48, 64)
FUSE_ROWS = (1, 2, 4)  # row counts fused and separate products are compared at
ROUNDS = 5  # interleaved rounds per case (after one warm-up call each)


def interleaved_medians(runs: dict[Hashable, Callable[[], object]], rounds: int, clock: Clock,
                        seed: int = 0, tick: Callable[[int], None] | None = None) -> dict[Hashable, float]:
    """Median seconds of each of ``runs`` (name -> call) over ``rounds`` rounds, each of which calls every
    one of them once, in an order shuffled per round (seeded), after one warm-up call each.

    ``tick(n)`` is told after each round (and after the warm-up) how many calls it made."""
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    order = list(runs)
    for name in order:
        runs[name]()
    if tick is not None:
        tick(len(order))
    times: dict[Hashable, list[float]] = {name: [] for name in order}
    shuffle = random.Random(seed).shuffle
    for _ in range(rounds):
        shuffle(order)
        for name in order:
            started = clock()
            runs[name]()
            times[name].append(clock() - started)
        if tick is not None:
            tick(len(order))
    return {name: statistics.median(seconds) for name, seconds in times.items()}


def layer_matrices(model, fuse: bool) -> list[torch.Tensor]:
    """Every weight matrix a decoder forward multiplies, as the target's forward would hold them."""
    from ..target.lean_llama import LeanLlama, supports

    if supports(model):
        return [w for layer in LeanLlama.for_model(model, fuse=fuse).layers
                for name in ("qkv", "o", "gate_up", "down") for w in (layer[name] if isinstance(layer[name], list)
                                                                    else [layer[name]])]
    return [m.weight for m in model.get_decoder().modules() if type(m) is torch.nn.Linear]


def products(matrices: list[torch.Tensor], rows: int, few: bool) -> Callable[[], list]:
    """A call multiplying ``rows`` random rows by every matrix, as ``W @ x.T`` (``few``) or ``F.linear``."""
    inputs = {w.shape[1]: torch.randn(rows, w.shape[1], dtype=w.dtype, device=w.device) for w in matrices}
    if few:
        return lambda: [few_rows_product(w, inputs[w.shape[1]], {}) for w in matrices]
    return lambda: [torch.nn.functional.linear(inputs[w.shape[1]], w) for w in matrices]


def cut_over(rows: list[int], few: dict, plain: dict) -> int:
    """The row count c (0: none) that makes the products cheapest over ``rows`` in all, counts up to c
    taking ``few`` and larger ones ``plain``; the smaller c among equals.

    A total, not the first count where ``few`` loses: at one row both paths read the weight once and
    tie, and a tie read as a loss would send every count to the path twice as slow at two rows."""
    best, best_cost = 0, sum(plain[r] for r in rows)
    for c in rows:
        cost = sum(few[r] if r <= c else plain[r] for r in rows)
        if cost < best_cost:
            best, best_cost = c, cost
    return best


def padding(rows: list[int], cost: dict, gain: float = 0.95) -> dict:
    """Row counts worth multiplying as a larger measured count: where that one is at least 5% cheaper."""
    padded = {}
    for r in rows:
        larger = [s for s in rows if r < s <= 2 * r]
        if larger:
            cheapest = min(larger, key=lambda s: (cost[s], s))
            if cost[cheapest] < gain * cost[r]:
                padded[r] = cheapest
    return padded


def kernel_steps(model, rounds: int = ROUNDS) -> int:
    """Calls :func:`measure_kernels` reports to a progress bar."""
    from ..target.lean_llama import supports

    per_round = (2 * len(FUSE_ROWS) if supports(model) else 0) + 2 * len(HEAD_ROWS) + 2 * len(KERNEL_ROWS)
    return per_round * (rounds + 1)


@torch.no_grad()
def measure_kernels(model, clock: Clock | None = None, repeats: int = ROUNDS, progress=None) -> Kernels:
    """This machine's product paths for ``model`` (see :mod:`specdec.target.kernels`), timed on its own weights
    in ``repeats`` interleaved rounds (medians); ``progress``: anything with ``update(n)``.

    The few-row products apply to float32 on the CPU only; elsewhere only the head's cheap rows and
    fusion are measured and the few-row limits are 0."""
    from ..target.lean_llama import supports

    clock = clock or clock_for(model)
    tick = progress.update if progress is not None else None
    head = model.get_output_embeddings().weight.detach()
    parameter = next(model.parameters())
    cpu32 = parameter.device.type == "cpu" and parameter.dtype == torch.float32
    fuse = True
    if supports(model):  # fused q/k/v and gate/up against the model's own matrices, at decoding's row counts
        matrices = {f: layer_matrices(model, f) for f in (True, False)}
        seconds = interleaved_medians({(f, r): products(matrices[f], r, cpu32) for f in (True, False) for r in FUSE_ROWS},
                                      repeats, clock, tick=tick)
        fuse = sum(seconds[True, r] for r in FUSE_ROWS) <= 1.02 * sum(seconds[False, r] for r in FUSE_ROWS)
    matrices = layer_matrices(model, fuse)
    runs = {}
    for r in HEAD_ROWS:
        runs["head", r] = products([head], r, cpu32)
        runs["head_plain", r] = products([head], r, False)
    for r in KERNEL_ROWS:
        runs["few", r] = products(matrices, r, True)
        runs["plain", r] = products(matrices, r, False)
    if not cpu32:  # only the head's cheap rows matter
        runs = {name: run for name, run in runs.items() if name[0] == "head"}
    seconds = interleaved_medians(runs, repeats, clock, seed=1, tick=tick)
    head_cost = {r: seconds["head", r] for r in HEAD_ROWS}
    if not cpu32:
        cheap = max(r for r in HEAD_ROWS if r <= 16 and head_cost[r] <= 1.15 * head_cost[1])
        return Kernels(linear_rows=0, head_rows=0, padded_rows={}, cheap_head_rows=cheap, fuse=fuse, measured=True)
    few = {r: seconds["few", r] for r in KERNEL_ROWS}
    plain = {r: seconds["plain", r] for r in KERNEL_ROWS}
    head_plain = {r: seconds["head_plain", r] for r in HEAD_ROWS}
    step = {r: few[r] + head_cost[r] for r in KERNEL_ROWS if r in head_cost}  # a forward's products
    padded = padding(list(step), step)
    padded_few = {r: few[padded.get(r, r)] for r in KERNEL_ROWS}
    linear_rows = cut_over(list(KERNEL_ROWS), padded_few, plain)
    padded_head = {r: head_cost[padded.get(r, r)] if padded.get(r, r) in head_cost else head_cost[r] for r in HEAD_ROWS}
    head_rows = cut_over(list(HEAD_ROWS), padded_head, head_plain)
    cheap = max(r for r in HEAD_ROWS if r <= 8 and padded_head[r] <= 1.15 * padded_head[1])
    padded = {r: s for r, s in padded.items() if r <= max(linear_rows, head_rows)}
    return Kernels(linear_rows=linear_rows, head_rows=head_rows, padded_rows=padded, cheap_head_rows=cheap,
                   fuse=fuse, measured=True)
