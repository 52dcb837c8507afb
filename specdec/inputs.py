"""Checking what users pass in, and shaping what goes back out like ``model.generate`` does."""
from __future__ import annotations

import numbers

import torch


def check_inputs(model, input_ids, attention_mask, max_new_tokens: int, drafter, pad_token_id=None,
                 eos_token_id=None, name: str = "input_ids") -> None:
    """Raise a clear error for input ``generate`` cannot decode correctly (``name``: what the user called the ids).

    A batch whose rows start with the pad token but comes without ``attention_mask`` is refused,
    not warned about as Hugging Face does: without a mask the padding would be decoded as text
    and the answers would silently differ from each row's own.
    """
    from .drafters.base import Drafter

    if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2:
        shape = tuple(input_ids.shape) if isinstance(input_ids, torch.Tensor) else type(input_ids).__name__
        raise ValueError(f"input_ids must be a 2D LongTensor [batch, length], got {shape}")
    if input_ids.numel() == 0:
        raise ValueError(f"input_ids is empty (shape {tuple(input_ids.shape)}); give at least one token per row")
    if input_ids.dtype not in (torch.long, torch.int):
        raise ValueError(f"input_ids must hold integer token ids, got dtype {input_ids.dtype}")
    head = model.get_output_embeddings()  # a subset head (reduced-vocabulary draft) still speaks the full vocabulary
    vocab = int(getattr(head, "out_features", None) or head.weight.shape[0])
    if int(input_ids.min()) < 0 or int(input_ids.max()) >= vocab:
        raise ValueError(f"{name} holds token ids outside the model's vocabulary [0, {vocab})")
    for argument, value in (("eos_token_id", eos_token_id), ("pad_token_id", pad_token_id)):
        ids = [] if value is None else [value] if isinstance(value, numbers.Integral) else value
        if not isinstance(ids, (list, tuple)) or any(isinstance(t, bool) or not isinstance(t, numbers.Integral)
                                                     for t in ids):
            raise ValueError(f"{argument} must be an int token id{' or a list of them' * (argument[0] == 'e')}, "
                             f"got {value!r}")
        if any(not 0 <= t < vocab for t in ids):
            raise ValueError(f"{argument} {value!r} is outside the model's vocabulary [0, {vocab})")
    if attention_mask is None and input_ids.shape[0] > 1:
        pad = pad_token_id if pad_token_id is not None else getattr(getattr(model, "generation_config", None),
                                                                    "pad_token_id", None)
        if pad is not None and bool((input_ids[:, 0] == pad).any()):
            raise ValueError(
                f"input_ids is a batch whose rows start with the pad token ({pad}) but no attention_mask was given: "
                "padding would be decoded as text.  Pass the tokenizer's attention_mask (left padding), or "
                "attention_mask=torch.ones_like(input_ids) if those tokens are real")
    if attention_mask is not None:
        if attention_mask.shape != input_ids.shape:
            raise ValueError(
                f"attention_mask shape {tuple(attention_mask.shape)} does not match input_ids {tuple(input_ids.shape)}"
            )
        if not bool(((attention_mask == 0) | (attention_mask == 1)).all()):
            raise ValueError("attention_mask must hold only 0 and 1 (1: a real token, 0: left padding)")
        if not bool(attention_mask[:, -1].bool().all()):
            raise ValueError("attention_mask must be left-padded: the last column must be 1 in every row")
    limit = getattr(model.config, "max_position_embeddings", None)
    if limit is not None and input_ids.shape[1] + max_new_tokens > limit:
        raise ValueError(
            f"prompt length {input_ids.shape[1]} + max_new_tokens {max_new_tokens} exceeds the model's "
            f"context of {limit} positions"
        )
    if drafter is not None and not isinstance(drafter, Drafter):
        raise TypeError(
            f"drafter must be a specdec.drafters.Drafter (e.g. DraftModel, PromptLookup) or None, "
            f"got {type(drafter).__name__}"
        )


def prompt_rows(prompts) -> list[list[int]]:
    """``generate_pool``'s prompts as lists of token ids: a list of id lists or 1D tensors, or a tokenizer's
    batch (``BatchEncoding`` or a dict with ``input_ids`` and ``attention_mask``; padding is dropped)."""
    if hasattr(prompts, "keys") and "input_ids" in prompts:
        ids, mask = prompts["input_ids"], prompts.get("attention_mask")
        ids = ids.tolist() if isinstance(ids, torch.Tensor) else list(ids)
        if mask is None:
            if len({len(row) for row in ids}) > 1 or len(ids) == 1:
                return prompt_rows(ids)
            raise ValueError("a batch of prompts without attention_mask: pass the tokenizer's attention_mask too, "
                             "so that padding is not read as text")
        mask = mask.tolist() if isinstance(mask, torch.Tensor) else list(mask)
        return prompt_rows([[t for t, m in zip(row, keep) if m] for row, keep in zip(ids, mask)])
    if isinstance(prompts, torch.Tensor):
        raise ValueError(f"prompts must be a list of token-id lists or 1D tensors (or a tokenizer's BatchEncoding), "
                         f"got a {prompts.dim()}D tensor: for a padded batch pass its attention_mask through a "
                         f"BatchEncoding, for equal-length rows pass list(tensor)")
    if not isinstance(prompts, (list, tuple)) or not prompts:
        raise ValueError(f"prompts must be a non-empty list of token-id lists or 1D tensors, got {type(prompts).__name__}")
    rows = []
    for i, p in enumerate(prompts):
        if isinstance(p, torch.Tensor):
            if p.dim() != 1:
                raise ValueError(f"prompt {i} must be a 1D tensor of token ids, got shape {tuple(p.shape)}")
            p = p.tolist()
        if not isinstance(p, (list, tuple)) or not p or not all(isinstance(t, int) for t in p):
            raise ValueError(f"prompt {i} must be a non-empty list of int token ids, got {type(p).__name__}"
                             + (f" of {type(p[0]).__name__}" if isinstance(p, (list, tuple)) and p else ""))
        rows.append(list(p))
    return rows


def left_padded(rows: list[list[int]], device) -> tuple[torch.Tensor, torch.Tensor]:
    """A left-padded [B, T] tensor of token lists and its attention mask."""
    width = max(len(r) for r in rows)
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for i, r in enumerate(rows):
        if r:
            ids[i, width - len(r):] = torch.tensor(r)
            mask[i, width - len(r):] = 1
    return ids.to(device), mask.to(device)


def eos_ids(model, eos_token_id) -> set[int]:
    """The stop tokens: ``eos_token_id`` (an id or a list; ``[]`` for none), else the model's."""
    if eos_token_id is None:
        config = getattr(model, "generation_config", None)
        eos_token_id = getattr(config, "eos_token_id", None)
    if eos_token_id is None:
        return set()
    if isinstance(eos_token_id, int):
        return {eos_token_id}
    return {int(t) for t in eos_token_id}


def pad_id(model, pad_token_id, eos: set[int]) -> int | None:
    """The id that pads rows which ended early: given, the model's, else the first EOS (as transformers does)."""
    if pad_token_id is not None:
        return pad_token_id
    config_pad = getattr(getattr(model, "generation_config", None), "pad_token_id", None)
    if config_pad is not None:
        return config_pad
    return min(eos) if eos else None


def assemble(input_ids: torch.Tensor, generated: list[list[int]], pad: int | None) -> torch.Tensor:
    """Prompt plus generated tokens, rows padded after their end, as ``model.generate`` returns."""
    width = max(len(g) for g in generated)
    if pad is None and len({len(g) for g in generated}) > 1:
        raise ValueError("rows ended at different lengths but no pad_token_id is known; pass pad_token_id")
    tail = torch.full((len(generated), width), pad if pad is not None else 0, dtype=input_ids.dtype)
    for i, g in enumerate(generated):
        tail[i, :len(g)] = torch.tensor(g, dtype=input_ids.dtype)
    return torch.cat([input_ids, tail.to(input_ids.device)], dim=1)


def truncate(tokens: list[int], remaining: int, eos: set[int]) -> list[int]:
    """Cut a step's tokens at the budget and just after the first end-of-sequence token."""
    tokens = tokens[:remaining]
    for i, token in enumerate(tokens):
        if token in eos:
            return tokens[: i + 1]
    return tokens
