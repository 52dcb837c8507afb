"""Cut a trained draft's reduced vocabulary to its ``size`` most frequent tokens, without retraining (FR-Spec).

A draft-v2 head projects onto V' tokens; the product costs in proportion to V'.  FR-Spec drops
the rarest rows of a full head without retraining; here the same cut applies to an already
reduced head: the rows of the ``size`` tokens the target emits most often (the teacher shards'
``token_counts.npy``, EOS always kept) stay, in ascending target-id order, and nothing else
changes.  The draft's law then lives on fewer tokens; losslessness is untouched (verification
uses the target's full law), only acceptance can change, and the card's re-measurement says by
how much.  Usage::

    python -m specdec.train.cut_vocabulary artifacts/draft-smollm2-135m-instruct --sweep 8192,4096,2048
    python -m specdec.train.cut_vocabulary artifacts/draft-smollm2-135m-instruct --size 4096

``--sweep`` measures each size first (coverage, greedy acceptance on the bench prompts, cost per
drafted token against a target step, interleaved), in memory; with ``--size`` too, the sweep is
recorded in the card.

The folder is rewritten in place (``draft.safetensors`` and ``card.json``: its vocabulary, a
``stages`` entry, and, unless ``--no-measure``, its ``measured`` part).  Run it on a quiet
machine: the re-measurement includes a timing.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from specdec.drafters.draft_loading import REDUCED
from specdec.drafters.vocab import coverage, top_tokens, with_subset_head

CARD = "card.json"


def kept_rows(token_ids: torch.Tensor, counts: np.ndarray, size: int, eos: list[int]) -> torch.Tensor:
    """Rows of ``token_ids`` [V'] (ascending) to keep: the ``size`` most counted of them, EOS always, in order."""
    if not 0 < size < token_ids.numel():
        raise ValueError(f"--size must be between 1 and the head's {token_ids.numel() - 1} tokens, got {size}")
    if counts.shape[0] <= int(token_ids.max()):
        raise ValueError(f"the counts cover {counts.shape[0]} tokens; the head holds ids up to {int(token_ids.max())}")
    always = torch.isin(token_ids, torch.tensor(eos, dtype=token_ids.dtype)).nonzero().flatten().tolist()
    return top_tokens(_as_tensor(counts)[token_ids], size, always=always)


def _as_tensor(counts: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.asarray(counts, dtype=np.float64))


def share_of(counts: np.ndarray, token_ids: torch.Tensor) -> float:
    """Share of the counted tokens (the target's own outputs) that ``token_ids`` cover, to 4 places."""
    all_counts = _as_tensor(counts)
    return round(float(all_counts[token_ids].sum() / all_counts.sum()), 4)


def cut(folder: Path, size: int, counts: np.ndarray, eos: list[int]) -> dict:
    """Rewrite ``folder``'s head onto ``size`` tokens; the card's new ``vocabulary`` part."""
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(folder / REDUCED))
    token_ids = tensors["lm_head.token_ids"]
    rows = kept_rows(token_ids, counts, size, eos)
    before = token_ids.numel()
    tensors["lm_head.token_ids"] = token_ids[rows].contiguous()
    tensors["lm_head.weight"] = tensors["lm_head.weight"][rows].contiguous()
    save_file(tensors, str(folder / REDUCED))
    return {"size": int(rows.numel()), "cut_from": before,
            "train_coverage_kept": share_of(counts, tensors["lm_head.token_ids"]),
            "train_coverage_top": round(coverage(_as_tensor(counts), int(rows.numel())), 4)}


def sweep(folder: Path, card: dict, sizes: list[int], counts: np.ndarray, eos: list[int],
          per_category: int = 6) -> dict:
    """Coverage, greedy acceptance and cost of ``folder``'s draft with its head cut to each of ``sizes`` (in memory)."""
    import copy

    import specdec
    from specdec import drafters

    from .measure import acceptance, relative_costs

    model, tokenizer = specdec.load_model(card["target"])
    draft = drafters.load_draft_model(model, folder)
    head = draft.get_output_embeddings()
    chain = int(card.get("measured", {}).get("chain", 4))
    drafts = {}
    for size in sizes:
        if size == head.token_ids.numel():
            drafts[str(size)] = draft
            continue
        rows = kept_rows(head.token_ids, counts, size, eos)
        drafts[str(size)] = with_subset_head(copy.deepcopy(draft), head.token_ids[rows], head.weight.data[rows])
    costs = relative_costs(model, tokenizer, {name: (lambda d=d: drafters.DraftModel(d, chain))
                                              for name, d in drafts.items()})
    out = {}
    for name, d in drafts.items():
        accepted = acceptance(model, tokenizer, lambda: drafters.DraftModel(d, chain), per_category)
        out[name] = {"train_coverage": share_of(counts, d.get_output_embeddings().token_ids),
                     "mean_accepted_tokens": accepted["mean_accepted_tokens"],
                     "per_category": {k: v["mean_accepted_tokens"] for k, v in accepted["per_category"].items()},
                     "draft_ms_per_token": costs[name]["draft_ms_per_token"], "cost_ratio": costs[name]["ratio"]}
        print(name, json.dumps(out[name]), flush=True)
    return {"prompts_per_category": per_category, "chain": chain,
            "target_step_ms": next(iter(costs.values()))["target_step_ms"], "sizes": out}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--size", type=int, default=None, help="cut the head to this many tokens")
    parser.add_argument("--sweep", default=None, help="comma-separated sizes to measure first, e.g. 8192,4096,2048")
    parser.add_argument("--counts", type=Path, default=None,
                        help="token_counts.npy (default: the card's data.teacher folder)")
    parser.add_argument("--per-category", type=int, default=6, help="bench prompts per category for --sweep")
    parser.add_argument("--no-measure", action="store_true", help="skip re-measuring acceptance and cost")
    args = parser.parse_args(argv)
    card_path = args.folder / CARD
    if not (args.folder / REDUCED).is_file() or not card_path.is_file():
        raise FileNotFoundError(f"{args.folder} is not a draft-v2 artifact (needs {REDUCED} and {CARD})")
    card = json.loads(card_path.read_text(encoding="utf-8"))
    counts_path = args.counts or Path(card["data"]["teacher"]) / "token_counts.npy"
    if not counts_path.is_file():
        raise FileNotFoundError(f"{counts_path} does not exist: pass --counts (the teacher shards' token_counts.npy)")
    eos = card["config"].get("eos_token_id")
    eos = [eos] if isinstance(eos, int) else list(eos or [])
    counts = np.load(counts_path)
    if args.size is None and args.sweep is None:
        parser.error("give --size (cut), --sweep (measure), or both")
    measured_sweep = None
    if args.sweep:
        measured_sweep = sweep(args.folder, card, [int(x) for x in args.sweep.split(",")], counts, eos,
                               args.per_category)
    if args.size is None:
        return
    vocabulary = cut(args.folder, args.size, counts, eos)
    if measured_sweep is not None:
        vocabulary["cut_sweep"] = measured_sweep
    card["config"]["draft_vocab_size"] = vocabulary["size"]
    card["vocabulary"] = {**card.get("vocabulary", {}), **vocabulary}
    card.setdefault("stages", []).append({
        "stage": f"training-free vocabulary cut (FR-Spec): {vocabulary['cut_from']} -> {vocabulary['size']} head rows, "
                 "the most frequent by the target's own outputs",
        "command": f"python -m specdec.train.cut_vocabulary {args.folder} --size {args.size}"})
    card["command"] = f"{card.get('command', '')}; then python -m specdec.train.cut_vocabulary <folder> --size {args.size}"
    card_path.write_text(json.dumps(card, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(vocabulary))
    if not args.no_measure:
        from .remeasure import remeasure

        measured = remeasure(args.folder)
        print(json.dumps({"mean_accepted_tokens": measured["mean_accepted_tokens"], "cost": measured["cost"]}))


if __name__ == "__main__":
    main()
