"""``python -m specdec.bench.sweep``: the goodput policy (specdec's default) against fixed settings, per drafter and batch size.

For every drafter (``drafters``; those whose artifact is missing are skipped) and batch size
(``batch_sizes``), the dataset's prompts are decoded by ``specdec.generate_pool`` (fixed batches)
with the drafter's default policy (``speculation=None``: the goodput policy, which sizes each
step's depth and tree) and with fixed settings: plain decoding (``k=0``), fixed depths for chain
drafters (``depths``: the drafter's own chain cut to k) and fixed DEPTH:NODES trees for tree
drafters (``trees``: ``FixedLength(depth, max_nodes)``), interleaved: each cell runs ``repeats``
rounds of all its policies, each round in another rotated order.  Throughput is generated tokens
per second over the cell's prompts (per chunk the median round, summed).  "control" is plain
decoding again as its own policy: how far two identical policies read apart, the resolution of
the measurement.  The report gives, per cell, the best fixed setting and the goodput policy's ratio
to it and to plain decoding.  Writes ``sweep.json``, ``sweep.md`` and ``sweep.png`` (the depth the
policy chose over a run, and its predicted against measured step time).
"""
from __future__ import annotations

import datetime
import json
import logging
import statistics
import time
from pathlib import Path

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

import specdec

from .app import _decoding, _environment, _quiet_transformers
from .methods import instantiate_with_target
from .prompts import encode, load_prompts

log = logging.getLogger("specdec.bench.sweep")


@hydra.main(version_base="1.3", config_path="pkg://specdec.configs", config_name="sweep")
def main(cfg: DictConfig) -> None:
    _quiet_transformers()
    document = run(cfg, HydraConfig.get().runtime.output_dir)
    print(markdown(document), flush=True)
    summary = document["summary"]
    print(json.dumps({"target": document["target"], "output_dir": document["output_dir"],
                      "cells_within_3pct": summary["cells_within_3pct"], "cells": summary["cells"],
                      "min_over_best": summary["min_over_best"]}, separators=(",", ":")), flush=True)


def build_drafters(cfg: DictConfig, model) -> tuple[dict, dict]:
    built, skipped = {}, {}
    overrides = [o for o in HydraConfig.get().overrides.task if not o.split("=", 1)[0].lstrip("+~").startswith("drafter")]
    for name in cfg.drafters:
        node = hydra.compose(HydraConfig.get().job.config_name, overrides=overrides + [f"+drafter={name}"]).drafter
        container = {k: v for k, v in OmegaConf.to_container(node, resolve=True, throw_on_missing=False).items()
                     if k != "generate"}
        try:
            built[name] = instantiate_with_target(OmegaConf.create(container), model)
        except Exception as error:
            missing = error if isinstance(error, FileNotFoundError) else error.__cause__
            if not isinstance(missing, FileNotFoundError):
                raise
            skipped[name] = str(missing)
            log.warning("skipping %s: %s", name, missing)
    return built, skipped


def fixed_settings(cfg: DictConfig, drafter) -> list[str]:
    """The fixed policies a drafter is compared with: plain decoding, then depths (chains) or DEPTH:NODES trees."""
    shape = drafter.tree_template(2)
    is_tree = any(p != i - 1 for i, p in enumerate(shape))  # some node is not the child of the one before
    settings = [str(t) for t in cfg.trees] if is_tree else [str(int(d)) for d in cfg.depths if int(d) > 0]
    return ["k=0"] + [f"k={s}" for s in settings]


def speculation_of(policy: str):
    """``k=3`` -> 3, ``k=2:3`` -> FixedLength(2, 3), ``goodput`` -> None (the default), ``control`` -> 0."""
    if policy == "goodput":
        return None
    if policy == "control":
        return 0
    setting = policy[2:]
    if ":" in setting:
        depth, nodes = (int(x) for x in setting.split(":"))
        return specdec.FixedLength(depth, nodes)
    return int(setting)


def run(cfg: DictConfig, out_dir: str) -> dict:
    started = time.perf_counter()
    if cfg.target.get("num_threads"):
        torch.set_num_threads(int(cfg.target.num_threads))
    model, tokenizer = instantiate(cfg.target.load)
    decoding = _decoding(cfg, model, tokenizer)
    prompts = load_prompts(cfg.dataset.path, cfg.dataset.categories, cfg.dataset.per_category)
    rows = [encode(tokenizer, p.messages)[0].tolist() for p in prompts]
    drafters, skipped = build_drafters(cfg, model)
    cells, traces = [], {}
    with torch.inference_mode():
        for name, drafter in drafters.items():  # warm-up, and the first-use profile, off the clock
            specdec.generate_pool(model, rows[:2], drafter, batch_size=2, schedule="eqspec", config=decoding,
                                  max_new_tokens=8, speculation=None)
        for name, drafter in drafters.items():
            policies = ["goodput"] + fixed_settings(cfg, drafter) + (["control"] if cfg.get("control") else [])
            for batch_size in [int(b) for b in cfg.batch_sizes]:
                cell = measure_cell(model, rows, drafter, batch_size, decoding, policies, repeats=int(cfg.repeats),
                                    shift=len(cells))
                traces[f"{name}@{batch_size}"] = cell.pop("trace")
                rates = cell["tokens_per_second"]
                fixed = {p: v for p, v in rates.items() if p.startswith("k=")}
                best = max(fixed, key=fixed.get)
                if "control" in rates:  # plain decoding again: what identical policies read apart
                    cell["control_over_plain"] = rates["control"] / fixed["k=0"]
                cell.update(drafter=name, batch_size=batch_size, policies=policies, best_fixed=best,
                            goodput_over_best=rates["goodput"] / fixed[best],
                            goodput_over_plain=rates["goodput"] / fixed["k=0"])
                cells.append(cell)
                log.info("%s B=%d: %s", name, batch_size, {k: round(v, 1) for k, v in rates.items()})
    summary = {"cells_within_3pct": sum(c["goodput_over_best"] >= 0.97 for c in cells), "cells": len(cells),
               "min_over_best": min((c["goodput_over_best"] for c in cells), default=None),
               "min_over_plain": min((c["goodput_over_plain"] for c in cells), default=None),
               "median_step_prediction_error": statistics.median(
                   [c["prediction_error"] for c in cells if c.get("prediction_error") is not None] or [float("nan")])}
    controls = [c["control_over_plain"] for c in cells if "control_over_plain" in c]
    if controls:
        summary["control_over_plain"] = {"min": min(controls), "max": max(controls),
                                         "cells_within_3pct": sum(abs(1 - r) <= 0.03 for r in controls)}
    latency = next((d.default_policy().latency for d in drafters.values()), None)
    document = {
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "target": cfg.target.name, "output_dir": str(out_dir), "skipped": skipped,
        "prompts": len(rows), "max_new_tokens": decoding.max_new_tokens, "cells": cells, "summary": summary,
        "latency_model": None if latency is None else {"key": latency.key, "verify_r2": latency.verify.r2_heldout,
                                                        "kernels": latency.kernels,
                                                        "draft_r2": {k: v.r2_heldout for k, v in latency.draft.items()}},
        "acceptance": {name: d.default_policy().rates.table() for name, d in drafters.items()},
        "traces": traces, "environment": _environment(), "wall_seconds": time.perf_counter() - started,
        "config": OmegaConf.to_container(cfg, resolve=True),
    }
    out = Path(out_dir)
    (out / "sweep.json").write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    (out / "sweep.md").write_text(markdown(document) + "\n", encoding="utf-8")
    plot(document, out / "sweep.png")
    return document


def measure_cell(model, rows: list, drafter, batch_size: int, decoding, policies: list[str],
                 *, repeats: int, shift: int) -> dict:
    """One cell: the prompts in chunks of ``batch_size``; each chunk decoded ``repeats`` times by every
    policy back to back, each round in another rotated order, so that every policy meets the same
    machine state within seconds of the others."""
    chunks = [rows[i:i + batch_size] for i in range(0, len(rows), batch_size)]
    runs = {p: [[] for _ in chunks] for p in policies}
    trace = {"depth": [], "width": [], "predicted": [], "measured": []}
    history = drafter.default_policy().history
    for c, chunk in enumerate(chunks):
        for round_ in range(repeats):
            first = (shift + c + round_) % len(policies)
            for policy in policies[first:] + policies[:first]:
                seen = len(history)
                t0 = time.perf_counter()
                out = specdec.generate_pool(model, chunk, drafter, batch_size=batch_size, schedule="eqspec",
                                            config=decoding, speculation=speculation_of(policy))
                runs[policy][c].append((out.stats.tokens_generated, time.perf_counter() - t0))
                if policy == "goodput" and round_ == repeats - 1:
                    for step in history[seen:]:
                        trace["depth"].append(step["depth"])
                        trace["width"].append(step["width"])
                        trace["predicted"].append(step["predicted_seconds"])
                        trace["measured"].append(step["measured_seconds"])
    errors = [abs(p - m) / m for p, m in zip(trace["predicted"], trace["measured"]) if p is not None and m > 0]
    return {"tokens_per_second": {p: chunked_throughput(r) for p, r in runs.items()},
            "runs": {p: [[s for _, s in chunk] for chunk in r] for p, r in runs.items()},
            "goodput_depth": statistics.mean(trace["depth"]) if trace["depth"] else 0.0,
            "goodput_width": statistics.mean(trace["width"]) if trace["width"] else 0.0,
            "prediction_error": statistics.median(errors) if errors else None, "trace": trace}


def chunked_throughput(runs: list[list[tuple[int, float]]]) -> float:
    """Tokens per second of one policy from ``runs[chunk][round] = (tokens, seconds)``: each chunk's
    median over its rounds (a hiccup in one round does not move it), summed over the chunks."""
    if not runs or any(not chunk for chunk in runs):
        raise ValueError("every chunk needs at least one timed run")
    tokens = sum(statistics.median(t for t, _ in chunk) for chunk in runs)
    seconds = sum(statistics.median(s for _, s in chunk) for chunk in runs)
    if seconds <= 0:
        raise ValueError(f"non-positive total time {seconds}")
    return tokens / seconds


def markdown(document: dict) -> str:
    lines = [f"# Goodput policy against fixed settings: {document['target']}, {document['prompts']} prompts, "
             f"{document['max_new_tokens']} new tokens (tokens/s)", "",
             "| drafter | batch | goodput | plain (k=0) | best fixed | its tokens/s | goodput / best | goodput / plain "
             "| control / plain | mean depth | mean width |",
             "|---|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|"]
    for c in document["cells"]:
        rates = c["tokens_per_second"]
        control = f"{c['control_over_plain']:.3f}" if "control_over_plain" in c else "-"
        lines.append(f"| {c['drafter']} | {c['batch_size']} | {rates['goodput']:.1f} | {rates['k=0']:.1f} | "
                     f"{c['best_fixed']} | {rates[c['best_fixed']]:.1f} | {c['goodput_over_best']:.3f} | "
                     f"{c['goodput_over_plain']:.3f} | {control} | {c.get('goodput_depth', 0):.2f} | "
                     f"{c.get('goodput_width', 0):.2f} |")
    s = document["summary"]
    if s["min_over_best"] is not None:
        lines += ["", f"The goodput policy is within 3% of the best fixed setting in {s['cells_within_3pct']} of "
                      f"{s['cells']} cells (lowest ratio {s['min_over_best']:.3f}); lowest ratio to plain decoding "
                      f"{s['min_over_plain']:.3f}.",
                  f"Median relative error of its predicted step time against the measured one: "
                  f"{s.get('median_step_prediction_error', float('nan')):.3f}."]
    if "control_over_plain" in s:
        c = s["control_over_plain"]
        lines.append(f"Control (plain decoding run again as its own policy) over plain decoding: {c['min']:.3f} to "
                     f"{c['max']:.3f}, within 3% in {c['cells_within_3pct']} of {s['cells']} cells: the resolution "
                     "of this measurement.")
    return "\n".join(lines)


def plot(document: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    for name, trace in document["traces"].items():
        left.plot(trace["depth"], label=name, linewidth=1)
        pairs = [(p, m) for p, m in zip(trace["predicted"], trace["measured"]) if p is not None]
        if pairs:
            right.scatter([1e3 * p for p, _ in pairs], [1e3 * m for _, m in pairs], s=6, label=name)
    left.set_xlabel("step")
    left.set_ylabel("depth chosen by the goodput policy")
    left.legend(fontsize=7)
    lim = right.get_xlim()
    right.plot(lim, lim, color="grey", linewidth=0.8)
    right.set_xlabel("predicted step time (ms)")
    right.set_ylabel("measured step time (ms)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
