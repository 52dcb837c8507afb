"""Prompt sets: one ``<category>.jsonl`` file per category, each line ``{id, category, messages}``.

``messages`` go through the tokenizer's own chat template with the generation prompt appended,
so every method sees exactly the ids a chat user of the model would send.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from specdec.chat import encode_chat

PACKAGED = Path(__file__).resolve().parent / "prompts"


@dataclass(frozen=True)
class Prompt:
    id: str
    category: str
    messages: list


def load_prompts(path: str | Path | None = None, categories: list[str] | None = None,
                 per_category: int | None = None) -> list[Prompt]:
    """The first ``per_category`` prompts of each category, categories in the order given.

    ``path`` is a folder of ``<category>.jsonl`` files, or the name of a packaged one
    (``repetitive``: ``bench/prompts/repetitive/``); None: the packaged sets;
    ``categories`` None means every file there, in alphabetical order.
    """
    folder = Path(path) if path is not None else PACKAGED
    if path is not None and not folder.is_dir() and (PACKAGED / str(path)).is_dir():
        folder = PACKAGED / str(path)
    if not folder.is_dir():
        raise FileNotFoundError(f"prompt folder {folder} does not exist")
    available = sorted(p.stem for p in folder.glob("*.jsonl"))
    wanted = list(categories) if categories is not None else available
    unknown = [c for c in wanted if c not in available]
    if unknown:
        raise ValueError(f"no prompt file for categories {unknown} in {folder}; available: {available}")
    if per_category is not None and int(per_category) < 1:
        raise ValueError(f"per_category must be >= 1 or null, got {per_category}")
    prompts = []
    for category in wanted:
        lines = (folder / f"{category}.jsonl").read_text(encoding="utf-8").splitlines()
        rows = [json.loads(line) for line in lines if line.strip()]
        for row in rows[: per_category]:
            prompts.append(Prompt(row["id"], row.get("category", category), row["messages"]))
    return prompts


def encode(tokenizer, messages: list) -> torch.Tensor:
    """Token ids ``[1, T]`` of a chat, generation prompt included (:func:`specdec.chat.encode_chat`)."""
    return encode_chat(tokenizer, messages)
