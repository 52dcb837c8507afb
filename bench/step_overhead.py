"""``python -m specdec.bench.step_overhead``: where a decoding step's time goes, outside the model forwards.

Decodes one prompt with ``specdec.generate`` for several drafters, timing every forward of the
target's backbone and output head and of the draft model with hooks.  Per step it reports the
wall time, the target's forward (backbone + head), the draft model's forwards, and the rest:
the engine's own overhead (tree building, masks, acceptance, cache commits, bookkeeping).
Runs the methods interleaved, ``--repeats`` times each, and prints medians as one JSON line.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import time

import torch

import specdec
from specdec import drafters

PROMPT = ("Summarise the following notes in three sentences.\n\n" +
          "The committee met on Tuesday to review the budget for the new library wing, the parking plan "
          "and the schedule of the summer reading programme. " * 6)


@contextlib.contextmanager
def forward_timer(modules: dict[str, torch.nn.Module]):
    """Accumulated seconds of every forward of each named module (outermost calls only).

    Output heads that specdec applies itself (``specdec.head.project``, which may bypass the
    module's forward) are timed too, under the name of the head module given.
    """
    import specdec.head as head_module

    totals = {name: 0.0 for name in modules}
    handles, starts = [], {}
    names = {id(module): name for name, module in modules.items()}
    original = head_module.project

    def timed_project(head, hidden):
        name = names.get(id(head))
        before = totals.get(name)
        started = time.perf_counter()
        out = original(head, hidden)
        if name is not None and totals[name] == before:  # the module's own forward hook did not count it
            totals[name] += time.perf_counter() - started
        return out
    head_module.project = timed_project

    for name, module in modules.items():
        def pre(mod, args, kwargs=None, name=name):
            starts.setdefault(name, []).append(time.perf_counter())

        def post(mod, args, output, name=name):
            started = starts[name].pop()
            if not starts[name]:
                totals[name] += time.perf_counter() - started
        handles.append(module.register_forward_pre_hook(pre))
        handles.append(module.register_forward_hook(post))
    try:
        yield totals
    finally:
        head_module.project = original
        for handle in handles:
            handle.remove()


def build(name: str, model, draft_path: str | None):
    """The drafter for method ``name``, and the draft model's modules to time (backbone, head)."""
    if name == "none":
        return None, {}
    if name == "prompt_lookup":
        return drafters.PromptLookup(num_tokens=10, max_ngram=3), {}
    draft = drafters.load_draft_model(model, draft_path, self_draft_layers=4)
    modules = {"draft_backbone": draft.get_decoder(), "draft_head": draft.get_output_embeddings()}
    if name == "draft_model":
        return drafters.DraftModel(draft, num_tokens=4), modules
    if name == "rsd_gumbel":
        return drafters.RecursiveTree(draft, (2, 2, 2, 2), method="gumbel_topk", max_nodes=4), modules
    raise ValueError(f"unknown method {name!r}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", default="smollm2-135m-instruct")
    parser.add_argument("--draft", default="artifacts/draft-smollm2-135m-instruct")
    parser.add_argument("--methods", default="none,prompt_lookup,draft_model,rsd_gumbel")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model, tokenizer = specdec.load_model(args.target)
    ids = tokenizer(PROMPT, return_tensors="pt")["input_ids"]
    methods = {name: build(name, model, args.draft) for name in args.methods.split(",")}
    timed = {"target_backbone": model.get_decoder(), "target_head": model.get_output_embeddings()}
    samples = {name: [] for name in methods}
    with torch.inference_mode():
        for name, (drafter, _) in methods.items():  # warm-up
            specdec.generate(model, ids, drafter, max_new_tokens=8, eos_token_id=[])
        for repeat in range(args.repeats):
            names = list(methods)
            names = names[repeat % len(names):] + names[:repeat % len(names)]
            for name in names:
                drafter, draft_modules = methods[name]
                with forward_timer({**timed, **draft_modules}) as totals:
                    out = specdec.generate(model, ids, drafter, max_new_tokens=args.max_new_tokens, eos_token_id=[])
                stats = out.stats
                steps = stats.steps
                target_ms = (totals["target_backbone"] + totals["target_head"]) * 1e3
                # the prefill is one backbone forward outside the steps: take it out of both sides
                loop_ms = (stats.total_seconds - stats.prefill_seconds) * 1e3
                prefill_forward_ms = stats.prefill_seconds * 1e3
                draft_ms = (totals.get("draft_backbone", 0.0) + totals.get("draft_head", 0.0)) * 1e3
                samples[name].append({
                    "step_ms": loop_ms / steps,
                    "target_forward_ms": (target_ms - prefill_forward_ms) / steps,
                    "draft_forward_ms": draft_ms / steps,
                    "overhead_ms": (loop_ms - (target_ms - prefill_forward_ms) - draft_ms) / steps,
                    "tokens_per_step": stats.tokens_generated / steps,
                })
    result = {"target": args.target, "prompt_tokens": int(ids.shape[1]), "max_new_tokens": args.max_new_tokens,
              "threads": torch.get_num_threads(), "repeats": args.repeats, "methods": {}}
    for name, runs in samples.items():
        result["methods"][name] = {k: round(statistics.median(r[k] for r in runs), 3) for k in runs[0]}
    for name, row in result["methods"].items():
        print(f"{name:>14}: step {row['step_ms']:7.2f} ms = target {row['target_forward_ms']:7.2f} + draft "
              f"{row['draft_forward_ms']:6.2f} + overhead {row['overhead_ms']:5.2f}  ({row['tokens_per_step']:.2f} tok/step)")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
