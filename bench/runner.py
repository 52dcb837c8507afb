"""Time every method on every prompt: a warm-up each, then all methods in turn on each prompt.

Interleaving per prompt (and rotating which method goes first) spreads slow drifts of a shared
machine over all methods alike.  One record per (prompt, method), JSON-ready.
"""
from __future__ import annotations

from dataclasses import replace

import torch
from tqdm.auto import tqdm

from .methods import Method, count_forwards


def warm_up(methods: list[Method], model, input_ids: torch.Tensor, max_new_tokens: int) -> None:
    """Run each method once on a short budget (first calls pay for lazy set-up and allocator growth)."""
    for method in methods:
        full = method.decoding
        method.decoding = replace(full, max_new_tokens=max_new_tokens)
        try:
            method.run(model, input_ids)
        finally:
            method.decoding = full


def run_prompts(methods: list[Method], model, prompts: list, encoded: list[torch.Tensor],
                baseline: str, greedy: bool, progress: bool = True) -> list[dict]:
    """Records for every prompt and method; ``identical`` compares generated ids with the baseline's."""
    records = []
    bar = tqdm(total=len(prompts) * len(methods), desc="bench", unit="run", disable=not progress,
               dynamic_ncols=True)
    for i, (prompt, input_ids) in enumerate(zip(prompts, encoded)):
        shift = i % len(methods)
        outputs = {}
        for method in methods[shift:] + methods[:shift]:
            bar.set_postfix_str(f"{prompt.id} {method.name}", refresh=False)
            with count_forwards(model) as counter:
                sequences, stats, seconds = method.run(model, input_ids)
            generated = sequences[0, input_ids.shape[1]:].tolist()
            outputs[method.name] = generated
            records.append(_record(prompt, input_ids, method.name, generated, stats, seconds, counter["forwards"]))
            bar.update()
        for record in records[-len(methods):]:
            same = outputs[record["method"]] == outputs[baseline]
            record["identical"] = same if greedy else None
    bar.close()
    return records


def _record(prompt, input_ids, method: str, generated: list[int], stats, seconds: float, forwards: int) -> dict:
    """One run.  Hugging Face methods have no stats: their target forwards are counted by a hook
    (each yields tokens); specdec counts its own (its verifier calls the backbone directly)."""
    record = {
        "prompt_id": prompt.id,
        "category": prompt.category,
        "method": method,
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
        "identical": None,
    }
    return record
