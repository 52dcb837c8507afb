"""``python -m specdec.bench.soak [--level quick|full]``: specdec used hard and used wrongly, checked.

Each check prints one row (what it ran, its numbers, pass or fail) and the command exits non-zero
if any failed.  ``quick`` (CI, about a minute) runs every check on a tiny random float64 Llama;
``full`` (the record) runs the long generations and the repeated calls on the real target with its
packaged drafters, the large pools on the tiny model (exact equality over a thousand prompts
needs a model whose greedy choices no rounding can flip; the real target would take hours).

* **long**: ``new_tokens`` tokens (or the context's limit) per drafter, greedy and sampled; greedy
  equals ``model.generate``; tokens per second by 1,000-token window; peak resident memory over
  the run against the KV cache's own size.
* **repeated**: 200 calls on the same model and drafter; resident memory after call 200 within 5%
  of call 20.
* **pool**: mixed-length prompts through ``generate_pool``, EXSPEC and EQSPEC, with an EOS id, at
  batch 8; every output equals its own batch-1 ``generate``; none lost, duplicated or reordered.
* **interruption**: an exception raised in a streamer mid-generation, and ``KeyboardInterrupt`` at
  a random step; the same model and drafter then decode exactly again, greedy and seeded sampling.
* **threads**: two threads on one model with their own drafters give the serial outputs; one
  drafter shared by two concurrent calls is refused.
"""
from __future__ import annotations

import argparse
import gc
import random
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

import specdec
from specdec import drafters

LEVELS = {
    "quick": {"long_tokens": 1000, "calls": 200, "pool_prompts": 64, "pool_max_length": 300},
    "full": {"long_tokens": 8000, "calls": 200, "pool_prompts": 1000, "pool_max_length": 1500},
}


@dataclass
class Check:
    name: str
    passed: bool
    numbers: dict = field(default_factory=dict)

    def row(self) -> str:
        shown = ", ".join(f"{k} {v}" for k, v in self.numbers.items())
        return f"| {self.name} | {shown} | {'pass' if self.passed else 'FAIL'} |"


def resident_bytes() -> int:
    """This process's resident memory now (Linux ``/proc``; else the peak so far)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class PeakMemory:
    """The highest resident memory seen (sampled every 10 ms) while the block runs, above its start."""

    def __enter__(self):
        self.start = self.peak = resident_bytes()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        while not self._stop.wait(0.01):
            self.peak = max(self.peak, resident_bytes())

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, resident_bytes())

    @property
    def grown(self) -> int:
        return self.peak - self.start


class Timeline:
    """A streamer that notes when each generated token arrived; ``windows`` gives tokens/s per 1,000."""

    def __init__(self, window: int = 1000):
        self.window, self.times, self.prompt_seen = window, [], False

    def put(self, tokens):
        if not self.prompt_seen:
            self.prompt_seen = True
            return
        self.times += [time.perf_counter()] * tokens.numel()

    def end(self):
        pass

    def windows(self, started: float) -> list[float]:
        marks = [started] + [self.times[i - 1] for i in range(self.window, len(self.times) + 1, self.window)]
        return [round(self.window / (b - a), 1) for a, b in zip(marks, marks[1:])]


def kv_cache_bytes(model, length: int, batch: int = 1) -> int:
    """Keys and values of every layer for ``length`` positions: the cache's theoretical size."""
    c = model.config
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    itemsize = next(model.parameters()).element_size()
    return 2 * c.num_hidden_layers * c.num_key_value_heads * head_dim * length * batch * itemsize


# -- checks ----------------------------------------------------------------------------------------

def long_generation(model, prompt, name: str, make_drafter, new_tokens: int, sample: bool, reference=None) -> Check:
    limit = getattr(model.config, "max_position_embeddings", None) or 10 ** 9
    new_tokens = min(new_tokens, limit - prompt.shape[1])
    timeline = Timeline()
    gc.collect()
    with PeakMemory() as memory, torch.inference_mode():
        started = time.perf_counter()
        out = specdec.generate(model, prompt, make_drafter(), max_new_tokens=new_tokens, eos_token_id=[],
                               do_sample=sample, temperature=0.7 if sample else 1.0, seed=0 if sample else None,
                               streamer=timeline)
    numbers = {"tokens": out.stats.tokens_generated, "tokens/s by 1k": timeline.windows(started),
               "tokens/step": round(out.stats.mean_accepted_tokens, 2),
               "peak MB": round(memory.grown / 2 ** 20, 1),
               "KV MB": round(kv_cache_bytes(model, prompt.shape[1] + new_tokens) / 2 ** 20, 1)}
    passed = out.stats.tokens_generated == new_tokens
    if reference is not None:
        same = int((out.sequences[0, :reference.shape[1]] == reference[0, :out.sequences.shape[1]]).all())
        numbers[f"equals generate (its {reference.shape[1] - prompt.shape[1]} tokens)"] = bool(same)
        passed &= bool(same)
    mode = "T=0.7" if sample else "greedy"
    return Check(f"long: {name}, {mode}", passed, numbers)


def repeated_calls(model, prompts, name: str, drafter, calls: int, new_tokens: int = 24) -> Check:
    memory = {}
    with torch.inference_mode():
        for call in range(1, calls + 1):
            specdec.generate(model, prompts[call % len(prompts)], drafter, max_new_tokens=new_tokens)
            if call in (20, calls):
                gc.collect()
                memory[call] = resident_bytes()
    growth = memory[calls] / memory[20] - 1
    return Check(f"repeated: {calls} calls, {name}", growth <= 0.05,
                 {"RSS call 20 MB": round(memory[20] / 2 ** 20, 1),
                  f"RSS call {calls} MB": round(memory[calls] / 2 ** 20, 1), "growth": f"{growth:+.1%}"})


def pool(model, count: int, max_length: int, schedule: str, eos: int, batch: int = 8, new_tokens: int = 12) -> Check:
    rng = random.Random(count)
    vocab = model.config.vocab_size
    prompts = [[rng.randrange(3, vocab) for _ in range(rng.choice([rng.randint(4, 40), rng.randint(4, max_length)]))]
               for _ in range(count)]
    with torch.inference_mode():
        started = time.perf_counter()
        out = specdec.generate_pool(model, prompts, drafters.PromptLookup(), batch_size=batch, schedule=schedule,
                                    max_new_tokens=new_tokens, eos_token_id=eos)
        seconds = time.perf_counter() - started
        alone = [specdec.generate(model, torch.tensor([p]), max_new_tokens=new_tokens, eos_token_id=eos).sequences[0]
                 for p in prompts]
    equal = sum(torch.equal(a, b) for a, b in zip(out.sequences, alone))
    kept = len(out.sequences) == count and all(s[:len(p)].tolist() == p for s, p in zip(out.sequences, prompts))
    ended = sum(int(s[-1]) == eos and len(s) - len(p) < new_tokens for s, p in zip(out.sequences, prompts))
    stats = out.stats
    return Check(f"pool: {count} prompts of 4-{max_length} tokens, {schedule}, batch {batch}", kept and equal == count,
                 {"equal to batch-1": f"{equal}/{count}", "in order, none lost": kept, "ended at EOS": ended,
                  "tokens/s": round(stats.tokens_generated / seconds, 1),
                  "realignment share": f"{stats.realignments / max(stats.steps, 1):.1%}"})


class Breaking:
    """A streamer that raises ``error`` at its ``at``-th put of generated tokens."""

    def __init__(self, at: int, error: BaseException):
        self.at, self.error, self.puts = at, error, -1  # the first put is the prompt

    def put(self, tokens):
        self.puts += 1
        if self.puts == self.at:
            raise self.error

    def end(self):
        pass


def interruption(model, prompt, name: str, drafter, new_tokens: int = 40) -> Check:
    settings = {"max_new_tokens": new_tokens, "eos_token_id": []}
    # a fixed depth: the goodput policy learns across calls, so its trees (and the draws they take) may differ
    sampled = {**settings, "do_sample": True, "temperature": 0.7, "seed": 3, "speculation": 3}
    with torch.inference_mode():
        greedy = specdec.generate(model, prompt, drafter, **settings).sequences
        drawn = specdec.generate(model, prompt, drafter, **sampled).sequences
        results = {}
        for label, error in (("exception", RuntimeError("streamer failed")), ("KeyboardInterrupt", KeyboardInterrupt())):
            step = random.Random(label).randint(2, 8)
            try:
                specdec.generate(model, prompt, drafter, streamer=Breaking(step, error), **settings)
                raised = False
            except type(error):
                raised = True
            again = torch.equal(specdec.generate(model, prompt, drafter, **settings).sequences, greedy)
            again_sampled = torch.equal(specdec.generate(model, prompt, drafter, **sampled).sequences, drawn)
            results[label] = {"raised": raised, "greedy exact": again, "seeded sample same": again_sampled}
    return Check(f"interruption: {name}", all(all(r.values()) for r in results.values()),
                 {f"{k} at a random step": v for k, v in results.items()})


def threads(model, prompts, make_drafter, new_tokens: int = 24) -> Check:
    with torch.inference_mode():
        serial = [specdec.generate(model, p, make_drafter(), max_new_tokens=new_tokens).sequences for p in prompts]
    outputs, errors = {}, []

    def work(index: int):
        try:
            with torch.inference_mode():
                drafter = make_drafter()
                outputs[index] = [specdec.generate(model, p, drafter, max_new_tokens=new_tokens).sequences
                                  for p in prompts[index::2]]
        except Exception as error:  # noqa: BLE001 - reported below
            errors.append(repr(error))

    workers = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    exact = not errors and all(torch.equal(a, b) for i in range(2) for a, b in zip(outputs[i], serial[i::2]))
    shared = make_drafter()
    refused = []

    class Slow:  # holds the first call inside decoding while the second starts
        def __init__(self):
            self.started = threading.Event()

        def put(self, tokens):
            self.started.set()
            time.sleep(0.05)

        def end(self):
            pass

    slow = Slow()
    first = threading.Thread(target=lambda: specdec.generate(model, prompts[0], shared, max_new_tokens=8,
                                                            streamer=slow))
    first.start()
    slow.started.wait(30)
    try:
        specdec.generate(model, prompts[1], shared, max_new_tokens=4)
    except RuntimeError as error:
        refused.append("already decoding" in str(error))
    first.join()
    return Check("threads: two on one model, own drafters; one drafter shared", exact and refused == [True],
                 {"own drafters exact": exact, "shared drafter refused": refused == [True], "errors": errors or "none"})


# -- runs ----------------------------------------------------------------------------------------------

def tiny_model(max_positions: int = 2048):
    """The benchmark's tiny random float64 Llama (``bench/targets.py``), without its tokenizer."""
    from .targets import tiny_target

    return tiny_target(max_positions=max_positions)[0]


def common_token(model, prompt, new_tokens: int = 64) -> int:
    """A token the model often emits: an EOS id that ends some rows early and not others."""
    with torch.inference_mode():
        out = model.generate(prompt, max_new_tokens=new_tokens, do_sample=False, eos_token_id=None,
                             pad_token_id=0)[0, prompt.shape[1]:]
    return int(torch.bincount(out).argmax())


def run(level: str, progress=print, **sizes_override) -> list[Check]:
    sizes = {**LEVELS[level], **{k: v for k, v in sizes_override.items() if v is not None}}
    checks: list[Check] = []

    def add(check: Check):
        checks.append(check)
        progress(check.row())

    tiny = tiny_model(max(2048, sizes["pool_max_length"] + 64))
    g = torch.Generator().manual_seed(1)
    tiny_prompts = [torch.randint(3, tiny.config.vocab_size, (1, n), generator=g) for n in (12, 30, 7, 50)]
    # no suffix cache: it learns from every call by design (the broken one's committed tokens too), which would
    # change a seeded sample's trees and draws without any state being wrong
    hybrid_tiny = lambda: drafters.Hybrid(drafters.DraftModel.from_target_layers(tiny, 1), suffix_cache=False)  # noqa: E731
    if level == "full":
        model, tokenizer = specdec.load_model("smollm2-135m-instruct")
        from specdec.chat import encode_chat

        from .long_context import long_prompt as source_prompt

        long_prompt = source_prompt(tokenizer, 1500)
        prompts = [encode_chat(tokenizer, [{"role": "user", "content": q}]) for q in
                   ("Name three rivers.", "What is 17 * 23?", "Summarise: the sea is salty because rivers carry salts.")]
        makers = {"none": lambda: None, "prompt lookup": drafters.PromptLookup,
                  "draft": lambda: drafters.load("draft-smollm2-135m-instruct", model),
                  "Chimera": lambda: drafters.load("chimera-smollm2-135m-instruct", model)}
    else:
        model, long_prompt, prompts = tiny, tiny_prompts[0], tiny_prompts
        makers = {"none": lambda: None, "prompt lookup": drafters.PromptLookup,
                  "self-draft": lambda: drafters.DraftModel.from_target_layers(tiny, 1)}
    limit = model.config.max_position_embeddings
    new = min(sizes["long_tokens"], limit - long_prompt.shape[1])
    with torch.inference_mode():
        reference = model.generate(long_prompt, max_new_tokens=new, do_sample=False, pad_token_id=0)  # to its EOS
    for name, make in makers.items():
        add(long_generation(model, long_prompt, name, make, new, False, reference))
        add(long_generation(model, long_prompt, name, make, new, True))
    for name, make in makers.items():
        add(repeated_calls(model, prompts, name, make(), sizes["calls"]))
    eos = common_token(tiny, tiny_prompts[1])
    for schedule in ("exspec", "eqspec"):
        add(pool(tiny, sizes["pool_prompts"], sizes["pool_max_length"], schedule, eos))
    for name, make in makers.items():
        if name != "none":
            add(interruption(model, prompts[0], name, make()))
    add(interruption(tiny, tiny_prompts[1], "hybrid (tiny, no suffix cache)", hybrid_tiny()))
    add(threads(model, prompts * 2, makers["prompt lookup"]))
    return checks


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m specdec.bench.soak", description=__doc__.split("\n\n")[0])
    parser.add_argument("--level", choices=sorted(LEVELS), default="quick")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--long-tokens", type=int, default=None, help="new tokens of each long generation")
    parser.add_argument("--pool-prompts", type=int, default=None, help="prompts in each pool")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"soak ({args.level}, {torch.get_num_threads()} threads)\n\n| check | numbers | result |\n|---|---|---|",
          flush=True)
    checks = run(args.level, progress=lambda row: print(row, flush=True), long_tokens=args.long_tokens,
                 pool_prompts=args.pool_prompts)
    failed = [c.name for c in checks if not c.passed]
    print(f"\n{len(checks) - len(failed)}/{len(checks)} checks passed" + (f"; failed: {failed}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
