"""What a trained drafter does at work, for its card: acceptance per position and per category, and its cost.

Acceptance comes from ``specdec.generate`` (greedy, at the drafter's own depth and tree) on the benchmark's packaged prompts, read as
data (``specdec/bench/prompts/*.jsonl``; the benchmark's code is not imported, and no training
ever sees these prompts).  Cost is measured inside the same engine: the drafter's seconds per
drafted token against plain decoding's seconds per verification step, on one probe prompt.
"""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import torch

import specdec
from specdec.chat import encode_chat
from specdec.stats import DecodeStats


def bench_prompt_files() -> list[Path]:
    """The benchmark's packaged prompt files (found without importing the benchmark's code)."""
    spec = importlib.util.find_spec("specdec.bench")
    folder = Path(next(iter(spec.submodule_search_locations))) / "prompts"
    return sorted(folder.glob("*.jsonl"))


def bench_chats(per_category: int = 2) -> dict[str, list[list[dict]]]:
    """The first ``per_category`` chats of each packaged benchmark category."""
    out = {}
    for path in bench_prompt_files():
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        out[path.stem] = [row["messages"] for row in rows[:per_category]]
    return out


def acceptance(model, tokenizer, make_drafter, per_category: int = 2, max_new_tokens: int = 64) -> dict:
    """Greedy tokens per step and acceptance by position, per benchmark category and overall."""
    pooled, out = DecodeStats(), {"per_category": {}}
    for category, chats in bench_chats(per_category).items():
        stats = DecodeStats()
        for chat in chats:
            drafter = make_drafter()
            with torch.inference_mode():  # at the drafter's own depth: what its tree accepts, not a policy's choice
                run = specdec.generate(model, encode_chat(tokenizer, chat), drafter, max_new_tokens=max_new_tokens,
                                       speculation=int(drafter.num_tokens)).stats
            for total in (stats, pooled):
                total.depth_accepted.update(run.depth_accepted)
                total.tokens_generated += run.tokens_generated
                total.row_steps += run.row_steps
        out["per_category"][category] = {"mean_accepted_tokens": round(stats.mean_accepted_tokens, 3),
                                         "acceptance_by_position": [round(a, 3) for a in stats.acceptance_by_position()]}
    out.update(prompts_per_category=per_category, max_new_tokens=max_new_tokens,
               mean_accepted_tokens=round(pooled.mean_accepted_tokens, 3),
               acceptance_by_position=[round(a, 3) for a in pooled.acceptance_by_position()])
    return out


def relative_cost(model, tokenizer, make_drafter, max_new_tokens: int = 48, repeats: int = 7) -> dict:
    """Seconds per drafted token over seconds per plain decoding step (medians, interleaved runs)."""
    return relative_costs(model, tokenizer, {"drafter": make_drafter}, max_new_tokens, repeats)["drafter"]


def relative_costs(model, tokenizer, makers: dict, max_new_tokens: int = 48, repeats: int = 7) -> dict:
    """:func:`relative_cost` of several drafters (name -> factory), interleaved round by round with plain decoding."""
    import statistics

    ids = encode_chat(tokenizer, [{"role": "user", "content": "Write a short paragraph about rivers and the sea."}])
    plain, draft = [], {name: [] for name in makers}
    with torch.inference_mode():
        for _ in range(repeats + 1):  # the first round warms up
            base = specdec.generate(model, ids, None, max_new_tokens=max_new_tokens, eos_token_id=[]).stats
            plain.append(base.verify_seconds / base.steps)
            for name, make in makers.items():
                drafter = make()
                run = specdec.generate(model, ids, drafter, max_new_tokens=max_new_tokens, eos_token_id=[],
                                       speculation=int(drafter.num_tokens)).stats
                draft[name].append(run.draft_seconds / max(run.drafted_tokens, 1))
    step = statistics.median(plain[1:])
    out = {}
    for name, times in draft.items():
        token = statistics.median(times[1:])
        out[name] = {"target_step_ms": round(step * 1e3, 2), "draft_ms_per_token": round(token * 1e3, 3),
                     "ratio": round(token / step, 4), "threads": torch.get_num_threads()}
    return out


def speeds_against_plain(model, tokenizer, makers: dict, per_category: int = 1, max_new_tokens: int = 64,
                         repeats: int = 2) -> dict:
    """Drafters (name -> factory, at specdec's default policy) against plain decoding on the benchmark's prompts.

    Each prompt runs plain, then every drafter, back to back, ``repeats`` passes after a warm-up; a
    drafter's speedup is total plain seconds over its total seconds, and every output is checked
    against plain's (greedy)."""
    chats = [chat for group in bench_chats(per_category).values() for chat in group]
    prompts = [encode_chat(tokenizer, chat) for chat in chats]
    plain_seconds = 0.0
    runs = {name: {"seconds": 0.0, "tokens": 0, "steps": 0, "equal": True} for name in makers}
    with torch.inference_mode():
        for make in makers.values():
            specdec.generate(model, prompts[0], make(), max_new_tokens=8)  # warm-up (a first use's profile)
        for _ in range(repeats):
            for ids in prompts:
                plain = specdec.generate(model, ids, None, max_new_tokens=max_new_tokens)
                plain_seconds += plain.stats.total_seconds
                for name, make in makers.items():
                    drafted = specdec.generate(model, ids, make(), max_new_tokens=max_new_tokens)
                    run = runs[name]
                    run["seconds"] += drafted.stats.total_seconds
                    run["equal"] &= torch.equal(plain.sequences, drafted.sequences)
                    run["tokens"] += drafted.stats.tokens_generated
                    run["steps"] += drafted.stats.row_steps
    return {name: {"speedup": round(plain_seconds / run["seconds"], 3),
                   "tokens_per_step": round(run["tokens"] / max(run["steps"], 1), 3), "equal": bool(run["equal"]),
                   "prompts": len(prompts), "max_new_tokens": max_new_tokens, "repeats": repeats,
                   "plain_seconds": round(plain_seconds, 2), "drafted_seconds": round(run["seconds"], 2),
                   "threads": torch.get_num_threads()} for name, run in runs.items()}
