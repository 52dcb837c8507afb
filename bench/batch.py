"""``python -m specdec.bench.batch``: throughput against batch size, plain vs EQSPEC vs EXSPEC.

Every prompt of the dataset is decoded by ``specdec.generate_pool`` at each batch size with
three policies: ``plain`` (no drafter, fixed batches), ``eqspec`` (the drafter, fixed batches
realigned every step) and ``exspec`` (the drafter, sliding pool of equal-length groups).
Throughput is generated tokens over the run's wall time, all prompts together; equivalence
is the share of prompts whose tokens equal batch-size-1 plain decoding's (float32 batched
arithmetic may flip near-ties, which this measures).  Writes ``batch.json``, ``batch.md``
and ``batch.png`` (throughput against batch size) into the run directory.
"""
from __future__ import annotations

import datetime
import json
import logging
import time
from pathlib import Path

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

import specdec

from .app import _decoding, _environment, _quiet_transformers
from .methods import instantiate_with_target, speculation_policy
from .prompts import encode, load_prompts

log = logging.getLogger("specdec.bench.batch")
POLICIES = ("plain", "eqspec", "exspec")


@hydra.main(version_base="1.3", config_path="pkg://specdec.configs", config_name="batch")
def main(cfg: DictConfig) -> None:
    _quiet_transformers()
    document = run(cfg, HydraConfig.get().runtime.output_dir)
    print(markdown(document), flush=True)
    print(json.dumps({"target": document["target"], "output_dir": document["output_dir"],
                      "throughput": {p: {str(b): round(document["runs"][f"{p}@{b}"]["tokens_per_second"], 2)
                                         for b in document["batch_sizes"]} for p in document["policies"]}},
                     separators=(",", ":")), flush=True)


def run(cfg: DictConfig, out_dir: str) -> dict:
    started = time.perf_counter()
    if cfg.target.get("num_threads"):
        torch.set_num_threads(int(cfg.target.num_threads))
    policies = list(cfg.policies)
    unknown = [p for p in policies if p not in POLICIES]
    if unknown or not policies:
        raise ValueError(f"policies must be a non-empty subset of {POLICIES}, got {policies}")
    batch_sizes = [int(b) for b in cfg.batch_sizes]
    if not batch_sizes or min(batch_sizes) < 1:
        raise ValueError(f"batch_sizes must be ints >= 1, got {batch_sizes}")
    model, tokenizer = instantiate(cfg.target.load)
    decoding = _decoding(cfg, model, tokenizer)
    drafter = None
    if cfg.drafter.get("_target_") is not None:
        drafter = instantiate_with_target(cfg.drafter, model)
    prompts = load_prompts(cfg.dataset.path, cfg.dataset.categories, cfg.dataset.per_category)
    rows = [encode(tokenizer, p.messages)[0].tolist() for p in prompts]
    kwargs = dict(max_new_tokens=decoding.max_new_tokens, do_sample=decoding.do_sample,
                  temperature=decoding.temperature, top_k=decoding.top_k, top_p=decoding.top_p,
                  eos_token_id=decoding.eos_token_id, seed=decoding.seed,
                  speculation=speculation_policy(cfg.get("speculation")))
    log.info("%d prompts, max_new_tokens=%d, batch sizes %s, policies %s, drafter %s", len(rows),
             decoding.max_new_tokens, batch_sizes, policies, type(drafter).__name__ if drafter else None)

    def decode(policy: str, batch_size: int, prompt_rows, **extra):
        with torch.inference_mode():
            t0 = time.perf_counter()
            out = specdec.generate_pool(model, prompt_rows, None if policy == "plain" else drafter,
                                        batch_size=batch_size, schedule="eqspec" if policy == "plain" else policy,
                                        window=int(cfg.window_factor) * batch_size,
                                        min_group_size=cfg.min_group_size, **{**kwargs, **extra})
            return out, time.perf_counter() - t0

    for policy in policies:  # warm-up: lazy set-up and allocator growth off the clock
        decode(policy, 2, rows[:2], max_new_tokens=int(cfg.warmup_tokens))
    reference = None
    if 1 not in batch_sizes or "plain" not in policies:  # the equivalence reference is always B=1 plain
        reference, _ = decode("plain", 1, rows)
    runs = {}
    for batch_size in batch_sizes:
        for policy in policies:
            if cfg.min_group_size is not None and int(cfg.min_group_size) > batch_size:
                continue
            out, seconds = decode(policy, batch_size, rows)
            if batch_size == 1 and policy == "plain":
                reference = out
            runs[f"{policy}@{batch_size}"] = _record(policy, batch_size, out, seconds)
            runs[f"{policy}@{batch_size}"]["_tails"] = _tails(out, rows)
            log.info("%-7s B=%-3d %.1f tok/s", policy, batch_size, runs[f"{policy}@{batch_size}"]["tokens_per_second"])
    expected = _tails(reference, rows)
    for record in runs.values():
        record["equivalence"] = sum(a == b for a, b in zip(record.pop("_tails"), expected)) / len(rows)
    _ratios(runs, batch_sizes)
    document = {
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "target": cfg.target.name,
        "drafter": OmegaConf.to_container(cfg.drafter, resolve=True, throw_on_missing=False),
        "decoding": {k: getattr(decoding, k) for k in decoding.__dataclass_fields__},
        "prompts": len(rows),
        "batch_sizes": batch_sizes,
        "policies": policies,
        "window_factor": int(cfg.window_factor),
        "min_group_size": cfg.min_group_size,
        "environment": _environment(),
        "wall_seconds": time.perf_counter() - started,
        "output_dir": str(out_dir),
        "runs": runs,
    }
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "batch.json").write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    (out / "batch.md").write_text(markdown(document), encoding="utf-8")
    plot(document, out / "batch.png")
    return document


def _tails(out, rows) -> list[list[int]]:
    return [seq[len(r):].tolist() for seq, r in zip(out.sequences, rows)]


def _record(policy: str, batch_size: int, out, seconds: float) -> dict:
    stats = out.stats
    return {
        "policy": policy,
        "batch_size": batch_size,
        "seconds": seconds,
        "tokens": stats.tokens_generated,
        "tokens_per_second": stats.tokens_generated / seconds,
        "steps": stats.steps,
        "mean_accepted_tokens": stats.mean_accepted_tokens,
        "aligned_fraction": stats.aligned_fraction,
        "realign_share": stats.realign_seconds / seconds,
        "regroup_share": stats.regroup_seconds / seconds,
        "draft_share": stats.draft_seconds / seconds,
        "verify_share": stats.verify_seconds / seconds,
        "row_tokens": list(stats.row_tokens),
        "_tails": None,
    }


def _ratios(runs: dict, batch_sizes: list[int]) -> None:
    """Throughput over batch-size-1 of the same policy, and over plain decoding at the same batch size."""
    for record in runs.values():
        one = runs.get(f"{record['policy']}@1")
        plain = runs.get(f"plain@{record['batch_size']}")
        record["vs_batch1"] = record["tokens_per_second"] / one["tokens_per_second"] if one else None
        record["vs_plain"] = record["tokens_per_second"] / plain["tokens_per_second"] if plain else None


def markdown(document: dict) -> str:
    d = document["decoding"]
    mode = "greedy" if not d["do_sample"] else f"sampling (temperature {d['temperature']})"
    drafter = document["drafter"].get("_target_") or "none"
    lines = [f"# specdec batch benchmark: {document['target']}", "",
             f"{document['prompts']} prompts, max_new_tokens={d['max_new_tokens']}, {mode}, drafter `{drafter}`, "
             f"EXSPEC window {document['window_factor']}×batch, {document['environment']['num_threads']} torch threads, "
             f"wall time {document['wall_seconds']:.0f} s.", "",
             "| policy | batch | tokens/s | vs batch 1 | vs plain | mean accepted | aligned steps | realign share "
             "| regroup share | equivalence |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in document["runs"].values():
        lines.append(f"| {r['policy']} | {r['batch_size']} | {r['tokens_per_second']:.1f} | {_x(r['vs_batch1'])} | "
                     f"{_x(r['vs_plain'])} | {r['mean_accepted_tokens']:.2f} | {r['aligned_fraction']:.0%} | "
                     f"{r['realign_share']:.1%} | {r['regroup_share']:.1%} | {r['equivalence']:.2f} |")
    return "\n".join(lines) + "\n"


def plot(document: dict, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for policy in document["policies"]:
        points = [(r["batch_size"], r["tokens_per_second"]) for r in document["runs"].values() if r["policy"] == policy]
        ax.plot([b for b, _ in points], [t for _, t in points], marker="o", label=policy)
    ax.set_xscale("log", base=2)
    ax.set_xticks(document["batch_sizes"])
    ax.set_xticklabels([str(b) for b in document["batch_sizes"]])
    ax.set_xlabel("batch size")
    ax.set_ylabel("generated tokens / s (all prompts)")
    ax.set_title(f"specdec throughput: {document['target']}")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _x(value) -> str:
    return "–" if value is None else f"{value:.2f}×"


if __name__ == "__main__":
    main()
