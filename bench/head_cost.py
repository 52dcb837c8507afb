"""``python -m specdec.bench.head_cost``: ``F.linear`` against ``W @ x.T`` for few rows, on the target's matrices.

For the target's output head and the first layer's MLP matrices, times both products at each row
count in ``--rows`` (medians over ``--repeats``, the two interleaved) and prints a table and one
JSON line.  This is the measurement behind :mod:`specdec.head` and :mod:`specdec.few_rows`.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

import specdec
from specdec.head import few_rows_product


def _seconds(fn) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", default="smollm2-135m-instruct")
    parser.add_argument("--rows", default="1,2,4,8,16,32,64")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model, _ = specdec.load_model(args.target)
    mlp = model.get_decoder().layers[0].mlp
    matrices = {"head": model.get_output_embeddings().weight, "gate_proj": mlp.gate_proj.weight,
                "down_proj": mlp.down_proj.weight}
    results = {}
    with torch.inference_mode():
        for name, weight in matrices.items():
            for rows in (int(r) for r in args.rows.split(",")):
                x = torch.randn(rows, weight.shape[1], dtype=weight.dtype)
                cases = {"linear": lambda: torch.nn.functional.linear(x, weight),
                         "few_rows": lambda: few_rows_product(weight, x)}
                for fn in cases.values():
                    fn()
                times = {k: [] for k in cases}
                for r in range(args.repeats):
                    for k in (list(cases) if r % 2 == 0 else list(cases)[::-1]):
                        times[k].append(_seconds(cases[k]))
                ms = {k: round(statistics.median(v) * 1e3, 3) for k, v in times.items()}
                results[f"{name}[{tuple(weight.shape)}] x {rows}"] = ms
                print(f"{name:>9} {tuple(weight.shape)!s:>14} rows {rows:>3}: F.linear {ms['linear']:8.3f} ms   "
                      f"W @ x.T {ms['few_rows']:8.3f} ms   ({ms['linear'] / ms['few_rows']:.2f}x)", flush=True)
    print(json.dumps({"target": args.target, "threads": torch.get_num_threads(), "repeats": args.repeats,
                      "ms": results}))


if __name__ == "__main__":
    main()
