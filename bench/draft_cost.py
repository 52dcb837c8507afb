"""``python -m specdec.bench.draft_cost [draft_dir]``: a draft's forward cost relative to its target's.

Times one-token decoding steps (a forward with a warm KV cache, as drafting does) of the target
and of the draft on the same prompt, median over ``--steps`` steps after a warm-up, and prints
a JSON line with both and their ratio.
"""
from __future__ import annotations

import argparse
import json

import torch

import specdec
from specdec.drafters import load_draft_model
from specdec.measure import step_seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("draft", nargs="?", default="artifacts/draft-smollm2-135m-instruct")
    parser.add_argument("--target", default="smollm2-135m-instruct")
    parser.add_argument("--steps", type=int, default=64)
    args = parser.parse_args()
    target, tokenizer = specdec.load_model(args.target)
    draft = load_draft_model(target, args.draft)
    prompt = tokenizer("The quick brown fox jumps over the lazy dog. " * 8, return_tensors="pt")["input_ids"]
    t = step_seconds(target, prompt, args.steps)
    d = step_seconds(draft, prompt, args.steps)
    print(json.dumps({"target": args.target, "draft": args.draft, "prompt_tokens": int(prompt.shape[1]),
                      "target_ms": round(t * 1e3, 2), "draft_ms": round(d * 1e3, 2), "ratio": round(d / t, 3),
                      "draft_parameters": sum(p.numel() for p in draft.parameters()),
                      "threads": torch.get_num_threads()}))


if __name__ == "__main__":
    main()
