"""Measure a trained artifact again with today's runtime, and rewrite its card's ``measured`` part.

Acceptance depends only on the weights, but cost depends on the runtime (a faster draft forward
changes it without retraining).  Usage::

    python -m specdec.train.remeasure artifacts/draft-smollm2-135m-instruct [more folders]

The kind (draft-v2, Medusa, Chimera) is read from the card; the target from its ``target``.
Run it on a quiet machine: the cost is a timing.
"""
from __future__ import annotations

import argparse
import datetime
import json
from pathlib import Path

import specdec
from specdec import drafters

from .measure import acceptance, relative_cost


def drafter_factory(folder: Path, card: dict, model):
    """A callable that returns the artifact's drafter as ``drafters.load`` builds it (its card's settings)."""
    kind = card.get("kind")
    if kind not in ("specdec-draft-v2", "medusa", "chimera"):
        raise ValueError(f"{folder}/card.json has kind {kind!r}; remeasure knows specdec-draft-v2, medusa and chimera")
    drafter = drafters.load(folder, model)
    return lambda: drafter


def remeasure(folder: Path, per_category: int = 2, max_new_tokens: int = 64) -> dict:
    card_path = folder / "card.json"
    if not card_path.is_file():
        raise FileNotFoundError(f"{card_path} does not exist: not a trained artifact folder")
    card = json.loads(card_path.read_text(encoding="utf-8"))
    model, tokenizer = specdec.load_model(card["target"])
    make = drafter_factory(folder, card, model)
    measured = {key: value for key, value in card.get("measured", {}).items() if key == "chain"}
    measured.update(acceptance(model, tokenizer, make, per_category, max_new_tokens))
    measured["cost"] = relative_cost(model, tokenizer, make)
    measured["measured_on"] = datetime.date.today().isoformat()
    card["measured"] = measured
    card_path.write_text(json.dumps(card, indent=2) + "\n", encoding="utf-8")
    return measured


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="+", type=Path)
    parser.add_argument("--per-category", type=int, default=2)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    args = parser.parse_args(argv)
    for folder in args.folders:
        measured = remeasure(folder, args.per_category, args.max_new_tokens)
        print(folder, json.dumps({"mean_accepted_tokens": measured["mean_accepted_tokens"], "cost": measured["cost"]}))


if __name__ == "__main__":
    main()
