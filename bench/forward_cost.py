"""``python -m specdec.bench.forward_cost``: what verifying N draft nodes costs, against one Hugging Face step.

In one interleaved run on the real model, at a short and a long context, times:

* ``hf_step``: one Hugging Face decode step, ``model(token, past_key_values=DynamicCache, logits_to_keep=1)``;
* ``verify_chain_N`` / ``verify_tree_N`` for N in ``--nodes``: ``Target.verify`` of N draft nodes (a
  chain, and a binary tree through the 4D tree mask) plus the output head at every slot (the cost
  when sampling, or when greedy accepts everything), then the drafts are dropped again.

Medians over ``--repeats`` rounds; each round runs every case once in a rotated order.  Prints a
table and one JSON line.  This is the cost curve T(N) / T(1) that a speculation policy weighs
against the tokens a draft is expected to win.
"""
from __future__ import annotations

import argparse
import copy
import json
import statistics
import time

import torch
from transformers import DynamicCache

import specdec
from specdec.target import Target
from specdec.tree import DraftTree

TEXT = ("The committee met on Tuesday to review the budget for the new library wing, the parking plan and "
        "the schedule of the summer reading programme. ")


def binary_tree(n: int) -> torch.Tensor:
    """Parents of the first ``n`` nodes of a binary tree, numbered level by level."""
    return torch.tensor([-1 if i < 2 else (i - 2) // 2 for i in range(n)], dtype=torch.long)


class Case:
    """One timed operation on its own cache over the context ``ids``."""

    def __init__(self, model, ids: torch.Tensor, nodes: int | None, tree: bool):
        self.model, self.nodes, self.tree = model, nodes, tree
        if nodes is None:  # a Hugging Face step
            out = model(ids[:, :-1], use_cache=True, past_key_values=DynamicCache(config=model.config))
            self.cache, self.token = out.past_key_values, ids[:, -1:]
            self.name = "hf_step"
        else:
            self.target = Target(model)
            self.roots, _ = self.target.prefill(ids, torch.ones_like(ids))
            tokens = torch.randint(0, model.config.vocab_size, (1, nodes), generator=torch.Generator().manual_seed(0))
            parents = binary_tree(nodes) if tree else torch.arange(-1, nodes - 1)
            self.draft = DraftTree(tokens, parents)
            self.name = f"verify_{'tree' if tree else 'chain'}_{nodes}"

    def __call__(self) -> float:
        if self.nodes is None:
            # a fresh copy of the context's cache, off the clock: sliding-window caches (Gemma 3)
            # cannot be cropped back once the window is full
            cache = copy.deepcopy(self.cache)
            started = time.perf_counter()
            out = self.model(self.token, past_key_values=cache, use_cache=True, logits_to_keep=1)
            out.logits.argmax(-1)
            return time.perf_counter() - started
        started = time.perf_counter()
        verification = self.target.verify(self.roots, self.draft)
        verification.logits.argmax(-1)
        seconds = time.perf_counter() - started
        cache = self.target.cache
        keep = cache.mask.clone()
        keep[:, cache.width - 1 - self.nodes:] = False  # drop the root's and the drafts' entries again
        cache.keep(keep)
        return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", default="smollm2-135m-instruct")
    parser.add_argument("--contexts", default="64,512", help="context lengths in tokens")
    parser.add_argument("--nodes", default="0,1,3,7,15")
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model, tokenizer = specdec.load_model(args.target)
    text_ids = tokenizer(TEXT * 64, return_tensors="pt")["input_ids"]
    nodes = [int(n) for n in args.nodes.split(",")]
    results = {}
    with torch.inference_mode():
        for context in (int(c) for c in args.contexts.split(",")):
            ids = text_ids[:, :context + 1]
            cases = [Case(model, ids, None, False)]
            cases += [Case(model, ids, n, False) for n in nodes]
            cases += [Case(model, ids, n, True) for n in nodes if n > 1]
            times = {c.name: [] for c in cases}
            for case in cases:  # warm-up
                case()
            for r in range(args.repeats):
                shift = r % len(cases)
                for case in cases[shift:] + cases[:shift]:
                    times[case.name].append(case())
            hf = statistics.median(times["hf_step"])
            results[context] = {name: {"ms": round(statistics.median(t) * 1e3, 2),
                                       "vs_hf_step": round(statistics.median(t) / hf, 3)} for name, t in times.items()}
    print(f"{'case':>16} | " + " | ".join(f"ctx {c}: ms (x hf step)" for c in results))
    for name in results[next(iter(results))]:
        cells = [f"{results[c][name]['ms']:8.2f} ({results[c][name]['vs_hf_step']:.2f}x)" for c in results]
        print(f"{name:>16} | " + " | ".join(f"{cell:>22}" for cell in cells))
    print(json.dumps({"target": args.target, "threads": torch.get_num_threads(), "repeats": args.repeats,
                      "contexts": results}))


if __name__ == "__main__":
    main()
