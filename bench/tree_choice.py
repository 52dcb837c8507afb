"""``python -m specdec.bench.tree_choice ARTIFACT``: a trained drafter's default (the goodput policy) against fixed trees.

A deeper or wider tree accepts more tokens per step but makes the verification forward and the
draft dearer; where the two cross depends on the draft's acceptance and on the machine, which is
why generate's default sizes every step's tree itself (:class:`specdec.SmartSpec`).  This measures
that default against fixed settings on one artifact: it decodes the second prompt of each
benchmark category (the default benchmark times the first) greedily with the drafter as
``drafters.load`` builds it and no speculation setting ("goodput"), with every fixed candidate,
and with plain decoding, in one run: each round visits every prompt, and on each prompt every
candidate once, in an order rotated per round.  Per candidate it reports tokens per verification
step and throughput over plain decoding (per-prompt medians of the rounds, summed:
:func:`specdec.bench.sweep.chunked_throughput`).  Every candidate's output must equal plain
decoding's; a difference stops the run.  ``--write`` stores the table and the default's speed
over plain decoding (``measured.speed_over_plain``, which the CLI ranks packaged drafters by) in
the artifact's ``card.json``.  Run it on a quiet machine.

Fixed candidates by kind: a Chimera draft's DEPTH:NODES trees (``--trees``), Medusa heads' node
budgets and a distilled draft's chain lengths (``--sizes``), each at its fixed depth.

    python -m specdec.bench.tree_choice artifacts/chimera-smollm2-135m-instruct --trees 1:1,1:3,2:3,3:4 --write
    python -m specdec.bench.tree_choice artifacts/medusa-smollm2-135m-instruct --sizes 1,2,3,4
"""
from __future__ import annotations

import argparse
import datetime
import json
import sys
import time
from pathlib import Path

import torch

import specdec
from specdec import drafters
from specdec.drafters.artifacts import read_card, resolve

from .prompts import encode, load_prompts
from .sweep import chunked_throughput

PLAIN = "plain"


def parse_trees(text: str) -> list[tuple[int, int]]:
    """``"1:1,2:3"`` -> ``[(1, 1), (2, 3)]``: (depth, node budget) pairs, each a possible tree."""
    trees = []
    for item in text.split(","):
        parts = item.strip().split(":")
        if len(parts) != 2 or not all(p.isdigit() for p in parts):
            raise ValueError(f"tree {item.strip()!r} is not DEPTH:NODES (e.g. 2:3)")
        depth, nodes = int(parts[0]), int(parts[1])
        if depth < 1 or nodes < depth:
            raise ValueError(f"tree {depth}:{nodes} is impossible: depth >= 1 and at least one node per depth")
        trees.append((depth, nodes))
    if len(set(trees)) != len(trees):
        raise ValueError(f"trees {text!r} repeat a candidate")
    return trees


def parse_sizes(text: str) -> list[int]:
    """``"1,2,4"`` -> ``[1, 2, 4]``: node budgets (Medusa) or chain lengths (a draft model), each >= 1."""
    sizes = []
    for item in text.split(","):
        if not item.strip().isdigit() or int(item) < 1:
            raise ValueError(f"size {item.strip()!r} is not a whole number >= 1")
        sizes.append(int(item))
    if len(set(sizes)) != len(sizes):
        raise ValueError(f"sizes {text!r} repeat a candidate")
    return sizes


GOODPUT = "goodput"


def candidates_for(card: dict, artifact: Path, model, choices: list, dtype=None) -> dict:
    """Named (drafter, speculation) pairs to compare, built by ``drafters.load`` from the artifact: the
    default first (``"goodput"``: no speculation setting), then the fixed ``choices``: (depth, nodes) trees
    for a Chimera draft (:func:`parse_trees`), node budgets for Medusa or chain lengths for a distilled
    draft (:func:`parse_sizes`).  ``dtype``: the draft's precision where given (else its card's)."""
    kind = card.get("kind", "")
    extra = {} if dtype is None else {"dtype": dtype}
    if kind == "chimera":
        fixed = {name_of(t): (drafters.load(artifact, model, **extra, **tree_options(*t)), t[0]) for t in choices}
    elif kind == "medusa":
        fixed = {f"{n} nodes": (drafters.load(artifact, model, **extra, max_nodes=n), None) for n in choices}
        fixed = {name: (d, d.max_depth) for name, (d, _) in fixed.items()}
    elif kind.startswith("specdec-draft"):
        fixed = {f"chain {k}": (drafters.load(artifact, model, num_tokens=k), k) for k in choices}
    else:
        raise ValueError(f"{artifact}: card kind {kind!r} is not a Chimera, Medusa or distilled-draft artifact")
    return {GOODPUT: (drafters.load(artifact, model, **extra), None), **fixed}


def tree_options(depth: int, nodes: int) -> dict:
    """The drafter's options for a (depth, nodes) tree: up to 4 children per node, 4 nodes expanded per depth."""
    fan = min(nodes, 4)
    return {"depth": depth, "branch": fan, "width": fan, "max_nodes": nodes}


def name_of(tree: tuple[int, int]) -> str:
    return f"{tree[0]}:{tree[1]}"


def measure(model, prompts: list[torch.Tensor], candidates: dict, max_new_tokens: int, repeats: int) -> list[dict]:
    """Rows ``{tree, tokens_per_step, tokens_per_second, speed_vs_plain}``, plain decoding first.

    ``candidates`` maps a name to a (drafter, speculation) pair; decoding is greedy and interleaved
    (see the module's doc)."""
    names = [PLAIN, *candidates]
    runs = {name: [[] for _ in prompts] for name in names}  # [prompt][round] = (tokens, seconds)
    tokens, steps, outputs = dict.fromkeys(names, 0), dict.fromkeys(names, 0), {}
    for repeat in range(repeats + 1):  # round 0 warms up (and the default policy learns) and is not timed
        for p, ids in enumerate(prompts):
            shift = (repeat + p) % len(names)
            for name in names[shift:] + names[:shift]:
                drafter, speculation = candidates.get(name, (None, None))
                start = time.perf_counter()
                with torch.inference_mode():
                    out = specdec.generate(model, ids, drafter, max_new_tokens=max_new_tokens, speculation=speculation)
                elapsed = time.perf_counter() - start
                generated = out.sequences[0, ids.shape[1]:].tolist()
                outputs.setdefault((p, name), generated)
                if repeat == 0:
                    continue
                runs[name][p].append((len(generated), elapsed))
                tokens[name] += len(generated)
                steps[name] += out.stats.steps
    for name in candidates:
        for p in range(len(prompts)):
            if outputs[(p, name)] != outputs[(p, PLAIN)]:
                raise RuntimeError(f"tree {name} changed the greedy output of prompt {p}: the drafter is broken")
    rate = {name: chunked_throughput(runs[name]) for name in names}
    return [{"tree": name, "tokens_per_step": round(tokens[name] / max(steps[name], 1), 3),
             "tokens_per_second": round(rate[name], 2), "speed_vs_plain": round(rate[name] / rate[PLAIN], 3)}
            for name in names]


def fastest(rows: list[dict]) -> str:
    """The fixed candidate (never plain decoding, never the default) with the highest throughput."""
    trees = [row for row in rows if row["tree"] not in (PLAIN, GOODPUT)]
    if not trees:
        raise ValueError("no fixed candidate was measured")
    return max(trees, key=lambda row: row["tokens_per_second"])["tree"]


def summary(rows: list[dict], command: str) -> str:
    cells = ", ".join(f"{r['tree']} {r['speed_vs_plain']:.2f}x ({r['tokens_per_step']:.2f} tok/step)"
                      for r in rows if r["tree"] != PLAIN)
    return (f"measured on {datetime.date.today().isoformat()} by `{command}`, greedy, speed over plain decoding in "
            f"the same run (fastest fixed: {fastest(rows)}): {cells}")


def write_choice(folder: Path, rows: list[dict], command: str) -> float:
    """Store the table and the default's speed over plain decoding in ``folder/card.json``; returns that speed."""
    path = folder / "card.json"
    card = json.loads(path.read_text(encoding="utf-8"))
    default = next(row for row in rows if row["tree"] == GOODPUT)
    measured = card.setdefault("measured", {})
    measured["speed_over_plain"] = default["speed_vs_plain"]
    measured["tree_choice"] = summary(rows, command)
    measured["tree_choice_rows"] = rows
    for stale in ("tree_choice", "tree_choice_rows"):  # kept under measured now
        card.pop(stale, None)
    path.write_text(json.dumps(card, indent=2) + "\n", encoding="utf-8")
    return default["speed_vs_plain"]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("artifact", type=Path, help="a Chimera, Medusa or distilled-draft artifact: a folder or a packaged name")
    parser.add_argument("--trees", default="1:1,1:2,1:3,2:2,2:3,3:3,3:4,4:6", help="Chimera: DEPTH:NODES candidates")
    parser.add_argument("--sizes", default="1,2,3,4", help="Medusa: node budgets; a distilled draft: chain lengths")
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dtype", default=None, help="the draft's precision (default: its card's)")
    parser.add_argument("--write", action="store_true", help="store the table and the default's speed in the card")
    args = parser.parse_args(argv)
    args.artifact = resolve(args.artifact)  # a folder or a packaged name
    card = read_card(args.artifact)
    choices = parse_trees(args.trees) if card.get("kind") == "chimera" else parse_sizes(args.sizes)  # before loading
    model, tokenizer = specdec.load_model(card["target"])
    second = {}
    for prompt in load_prompts(per_category=2):  # the last one seen per category is its second
        second[prompt.category] = prompt
    prompts = [encode(tokenizer, p.messages) for p in second.values()]
    candidates = candidates_for(card, args.artifact, model, choices, args.dtype)
    rows = measure(model, prompts, candidates, args.max_new_tokens, args.repeats)
    print(json.dumps({"threads": torch.get_num_threads(), "prompts": len(prompts), "rows": rows}, indent=1))
    command = "python -m specdec.bench.tree_choice " + " ".join(argv if argv is not None else sys.argv[1:])
    print("fastest fixed:", fastest(rows))
    if args.write:
        print("default's speed over plain decoding, written to the card:", write_choice(args.artifact, rows, command))


if __name__ == "__main__":
    main()
