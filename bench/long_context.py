"""``python -m specdec.bench.long_context``: the trained drafters far beyond their training length.

The packaged drafters were trained on rows of at most 1,024 tokens.  This decodes a prompt of
``--context`` tokens (a long document the drafters never saw: specdec's own source, to be explained)
with plain decoding and every packaged drafter under the default goodput policy, interleaved over
``--repeats`` rounds, and reports per drafter: output equal to ``model.generate``, tokens per step,
acceptance by depth, and speed over plain decoding.  Where a drafter's acceptance falls, the policy
should draft less, so that no drafter runs slower than plain decoding.
"""
from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import torch

import specdec
from specdec import drafters
from specdec.chat import encode_chat


def long_prompt(tokenizer, context: int) -> torch.Tensor:
    """A chat asking to explain ``context`` tokens (about) of specdec's own source files."""
    text, files = "", sorted(Path(specdec.__file__).parent.rglob("*.py"))
    for path in files:
        text += f"\n# {path.name}\n" + path.read_text()
        if len(tokenizer(text)["input_ids"]) > context:
            break
    ids = tokenizer(text)["input_ids"][: context - 40]
    document = tokenizer.decode(ids)
    return encode_chat(tokenizer, [{"role": "user", "content": "Explain what this code does:\n" + document}])


def run(model_name: str, context: int, new_tokens: int, repeats: int, artifacts: list[str]) -> list[dict]:
    model, tokenizer = specdec.load_model(model_name)
    ids = long_prompt(tokenizer, context)
    makers = {"none": lambda: None, **{a: (lambda a=a: drafters.load(a, model)) for a in artifacts}}
    with torch.inference_mode():
        reference = model.generate(ids, max_new_tokens=new_tokens, do_sample=False)
        for make in makers.values():  # warm-up (and a first use's profile) off the clock
            specdec.generate(model, ids[:, :64], make(), max_new_tokens=4)
        seconds = {name: [] for name in makers}
        last = {}
        for _ in range(repeats):
            for name, make in makers.items():
                out = specdec.generate(model, ids, make(), max_new_tokens=new_tokens)
                seconds[name].append(out.stats.total_seconds)
                last[name] = out
    plain = statistics.median(seconds["none"])
    rows = []
    for name, out in last.items():
        rows.append({"drafter": name, "prompt_tokens": ids.shape[1],
                     "equal": bool(torch.equal(out.sequences, reference)),
                     "tokens_per_step": round(out.stats.mean_accepted_tokens, 2),
                     "acceptance_by_depth": [round(a, 2) for a in out.stats.acceptance_by_position()],
                     "speed_over_plain": round(plain / statistics.median(seconds[name]), 3),
                     "seconds": round(statistics.median(seconds[name]), 2)})
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m specdec.bench.long_context", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--context", type=int, default=4096, help="prompt tokens (about)")
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--artifacts", default="chimera-smollm2-135m-instruct,draft-smollm2-135m-instruct,"
                                                 "medusa-smollm2-135m-instruct")
    args = parser.parse_args(argv)
    rows = run(args.model, args.context, args.new_tokens, args.repeats, args.artifacts.split(","))
    print(f"| drafter | prompt tokens | equals generate | tokens/step | acceptance by depth | speed over plain |\n"
          f"|---|---:|---|---:|---|---:|")
    for r in rows:
        print(f"| {r['drafter']} | {r['prompt_tokens']} | {r['equal']} | {r['tokens_per_step']} | "
              f"{r['acceptance_by_depth']} | {r['speed_over_plain']}x |")


if __name__ == "__main__":
    main()
