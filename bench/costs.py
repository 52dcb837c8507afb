"""``python -m specdec.bench.costs forward|head|draft|step``: what the parts of a decoding step cost.

Each measurement runs its cases interleaved in one run on the real model (medians over
``--repeats``) and prints a table and one JSON line:

* ``forward``: verifying N draft nodes (``Target.try_verify`` of a chain and of a binary tree, with
  the output head at every slot) against one Hugging Face decode step, at a short and a long
  context: the cost curve T(N) / T(1) that a speculation policy weighs against the tokens it wins.
* ``head``: ``F.linear`` against ``W @ x.T`` for few rows, on the output head and an MLP matrix
  (the measurement behind :mod:`specdec.target.head` and :mod:`specdec.target.few_rows`).
* ``draft``: a draft model's one-token step against its target's (a forward with a warm cache).
* ``step``: where a decode step's time goes, for several drafters: the target's backbone forward
  as the engine runs it (``Target._forward``, the lean forward where it applies), its output head
  (``Verification._project``), the drafter's proposal, and the rest (planning, pruning, acceptance,
  cache commits).
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import json
import statistics
import time

import torch

import specdec
from specdec import drafters
from specdec.target.head import few_rows_product
from specdec.target.verifier import Target
from specdec.tree import DraftTree

TEXT = ("The committee met on Tuesday to review the budget for the new library wing, the parking plan and "
        "the schedule of the summer reading programme. ")


def _interleaved(cases: dict, repeats: int) -> dict[str, float]:
    """Median seconds of each callable (it returns its own seconds), one warm-up, rounds in rotated orders."""
    names = list(cases)
    for name in names:
        cases[name]()
    times = {name: [] for name in names}
    for r in range(repeats):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            times[name].append(cases[name]())
    return {name: statistics.median(t) for name, t in times.items()}


# ---- forward: verifying N nodes against a Hugging Face step ----------------------------------------
def binary_tree(n: int) -> torch.Tensor:
    """Parents of the first ``n`` nodes of a binary tree, numbered level by level."""
    return torch.tensor([-1 if i < 2 else (i - 2) // 2 for i in range(n)], dtype=torch.long)


def hf_step(model, ids: torch.Tensor):
    from transformers import DynamicCache

    out = model(ids[:, :-1], use_cache=True, past_key_values=DynamicCache(config=model.config))
    context, token = out.past_key_values, ids[:, -1:]

    def run() -> float:
        cache = copy.deepcopy(context)  # off the clock: sliding-window caches cannot be cropped back
        started = time.perf_counter()
        model(token, past_key_values=cache, use_cache=True, logits_to_keep=1).logits.argmax(-1)
        return time.perf_counter() - started
    return run


def verify_step(model, ids: torch.Tensor, nodes: int, tree: bool):
    target = Target(model)
    roots, _ = target.prefill(ids, torch.ones_like(ids))
    tokens = torch.randint(0, model.config.vocab_size, (1, nodes), generator=torch.Generator().manual_seed(0))
    draft = DraftTree(tokens, binary_tree(nodes) if tree else torch.arange(-1, nodes - 1))

    def run() -> float:
        started = time.perf_counter()
        target.try_verify(roots, draft).logits.argmax(-1)
        return time.perf_counter() - started
    return run


def forward(model, tokenizer, args) -> dict:
    text_ids = tokenizer(TEXT * 64, return_tensors="pt")["input_ids"]
    nodes = [int(n) for n in args.nodes.split(",")]
    results = {}
    for context in (int(c) for c in args.contexts.split(",")):
        ids = text_ids[:, :context + 1]
        cases = {"hf_step": hf_step(model, ids)}
        cases.update({f"verify_chain_{n}": verify_step(model, ids, n, False) for n in nodes})
        cases.update({f"verify_tree_{n}": verify_step(model, ids, n, True) for n in nodes if n > 1})
        seconds = _interleaved(cases, args.repeats)
        results[context] = {name: {"ms": round(s * 1e3, 2), "vs_hf_step": round(s / seconds["hf_step"], 3)}
                            for name, s in seconds.items()}
    print(f"{'case':>16} | " + " | ".join(f"ctx {c}: ms (x hf step)" for c in results))
    for name in results[next(iter(results))]:
        cells = [f"{results[c][name]['ms']:8.2f} ({results[c][name]['vs_hf_step']:.2f}x)" for c in results]
        print(f"{name:>16} | " + " | ".join(f"{cell:>22}" for cell in cells))
    return {"contexts": results}


# ---- head: few-row products ------------------------------------------------------------------------
def head(model, tokenizer, args) -> dict:
    mlp = model.get_decoder().layers[0].mlp
    matrices = {"head": model.get_output_embeddings().weight, "gate_proj": mlp.gate_proj.weight}
    results = {}
    for name, weight in matrices.items():
        for rows in (int(r) for r in args.rows.split(",")):
            x = torch.randn(rows, weight.shape[1], dtype=weight.dtype)

            def timed(fn):
                def run() -> float:
                    started = time.perf_counter()
                    fn()
                    return time.perf_counter() - started
                return run
            seconds = _interleaved({"linear": timed(lambda: torch.nn.functional.linear(x, weight)),
                                    "few_rows": timed(lambda: few_rows_product(weight, x))}, args.repeats)
            ms = {k: round(s * 1e3, 3) for k, s in seconds.items()}
            results[f"{name}[{tuple(weight.shape)}] x {rows}"] = ms
            print(f"{name:>9} {tuple(weight.shape)!s:>14} rows {rows:>3}: F.linear {ms['linear']:8.3f} ms   "
                  f"W @ x.T {ms['few_rows']:8.3f} ms   ({ms['linear'] / ms['few_rows']:.2f}x)", flush=True)
    return {"ms": results}


# ---- draft: a draft model's step against its target's ---------------------------------------------
def one_token_steps(model, prompt: torch.Tensor):
    """A callable timing one one-token forward with a warm cache (the cache grows as decoding would)."""
    state = {}
    out = model(prompt, use_cache=True)
    state["cache"], state["token"] = out.past_key_values, out.logits[:, -1:].argmax(-1)

    def run() -> float:
        started = time.perf_counter()
        out = model(state["token"], past_key_values=state["cache"], use_cache=True)
        seconds = time.perf_counter() - started
        state["cache"], state["token"] = out.past_key_values, out.logits[:, -1:].argmax(-1)
        return seconds
    return run


def draft(model, tokenizer, args) -> dict:
    draft_model = drafters.load_draft_model(model, args.draft)
    prompt = tokenizer(TEXT * 4, return_tensors="pt")["input_ids"]
    seconds = _interleaved({"target": one_token_steps(model, prompt), "draft": one_token_steps(draft_model, prompt)},
                           args.repeats)
    result = {"draft": args.draft, "target_ms": round(seconds["target"] * 1e3, 2),
              "draft_ms": round(seconds["draft"] * 1e3, 2), "ratio": round(seconds["draft"] / seconds["target"], 3),
              "draft_parameters": sum(p.numel() for p in draft_model.parameters())}
    print(f"target step {result['target_ms']:.2f} ms, draft step {result['draft_ms']:.2f} ms: {result['ratio']:.3f}")
    return result


# ---- step: where a decode step's time goes ---------------------------------------------------------
@contextlib.contextmanager
def step_timer():
    """Seconds spent in the target's backbone forward as the engine runs it and in its output head."""
    import specdec.target.verifier as target_module

    totals = {"forwards": [], "head": 0.0}  # seconds of each backbone forward (the first: the prefill)
    forward_of, project = target_module.Target._forward, target_module.Verification._project

    def timed_forward(self, *a, **k):
        started = time.perf_counter()
        out = forward_of(self, *a, **k)
        totals["forwards"].append(time.perf_counter() - started)
        return out

    def timed_project(self, *a, **k):
        started = time.perf_counter()
        out = project(self, *a, **k)
        totals["head"] += time.perf_counter() - started
        return out

    target_module.Target._forward, target_module.Verification._project = timed_forward, timed_project
    try:
        yield totals
    finally:
        target_module.Target._forward, target_module.Verification._project = forward_of, project


def step_breakdown(model, ids: torch.Tensor, drafter, max_new_tokens: int, speculation=None) -> dict:
    """Milliseconds per decode step: the whole step and its backbone, head, draft and the rest (prefill excluded)."""
    with step_timer() as totals:
        started = time.perf_counter()
        out = specdec.generate(model, ids, drafter, max_new_tokens=max_new_tokens, eos_token_id=[],
                               speculation=speculation)
        wall = time.perf_counter() - started
    stats, steps = out.stats, out.stats.steps
    loop = wall - stats.prefill_seconds  # the prefill (the first backbone forward) comes before the steps
    backbone = sum(totals["forwards"][1:])
    ms = 1e3 / steps
    parts = {"step_ms": loop * ms, "backbone_ms": backbone * ms, "head_ms": totals["head"] * ms,
             "draft_ms": stats.draft_seconds * ms}
    parts["rest_ms"] = parts["step_ms"] - parts["backbone_ms"] - parts["head_ms"] - parts["draft_ms"]
    parts["tokens_per_step"] = stats.tokens_generated / steps
    return parts


def step(model, tokenizer, args) -> dict:
    ids = tokenizer(TEXT * 6, return_tensors="pt")["input_ids"]
    built = {"none": None, "prompt_lookup": drafters.PromptLookup()}
    for name in args.drafters.split(","):
        if name not in built:
            built[name] = drafters.load(name, model)
    samples = {name: [] for name in built}
    for name, drafter in built.items():  # warm-up
        specdec.generate(model, ids, drafter, max_new_tokens=8, eos_token_id=[])
    for r in range(args.repeats):
        names = list(built)[r % len(built):] + list(built)[:r % len(built)]
        for name in names:
            samples[name].append(step_breakdown(model, ids, built[name], args.max_new_tokens))
    result = {name: {k: round(statistics.median(s[k] for s in runs), 3) for k in runs[0]} for name, runs in samples.items()}
    for name, row in result.items():
        print(f"{name:>32}: step {row['step_ms']:7.2f} ms = backbone {row['backbone_ms']:6.2f} + head "
              f"{row['head_ms']:5.2f} + draft {row['draft_ms']:5.2f} + rest {row['rest_ms']:5.2f} "
              f"({row['tokens_per_step']:.2f} tokens/step)")
    return {"methods": result}


COMMANDS = {"forward": forward, "head": head, "draft": draft, "step": step}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=list(COMMANDS))
    parser.add_argument("--target", default="smollm2-135m-instruct")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--contexts", default="64,512", help="forward: context lengths in tokens")
    parser.add_argument("--nodes", default="0,1,3,7,15", help="forward: draft nodes verified")
    parser.add_argument("--rows", default="1,2,4,8,16,32,64", help="head: rows multiplied")
    parser.add_argument("--draft", default="draft-smollm2-135m-instruct", help="draft: the draft model's artifact")
    parser.add_argument("--drafters", default="chimera-smollm2-135m-instruct,draft-smollm2-135m-instruct",
                        help="step: packaged artifacts to break down (besides plain decoding and prompt lookup)")
    parser.add_argument("--max-new-tokens", type=int, default=64, help="step: tokens per run")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    model, tokenizer = specdec.load_model(args.target)
    with torch.no_grad():  # not inference mode: drafters loaded inside must stay ordinary tensors
        result = COMMANDS[args.what](model, tokenizer, args)
    print(json.dumps({"what": args.what, "target": args.target, "threads": torch.get_num_threads(),
                      "repeats": args.repeats, **result}))


if __name__ == "__main__":
    main()
