"""Prompt lookup decoding: copy what followed the last occurrence of the trailing n-gram.

Needs no model (Saxena, 2023; Hugging Face's ``prompt_lookup_num_tokens``).  The trailing
``n``-gram of the committed context, for ``n`` from ``max_ngram`` down to ``min_ngram``, is
searched for earlier in the context; the tokens that followed its most recent earlier
occurrence are proposed as a deterministic chain.
"""
from __future__ import annotations

import torch

from ..tree import DraftTree
from .base import DraftRequest, Drafter


def lookup_continuation(context: list[int], num_tokens: int, max_ngram: int, min_ngram: int = 1) -> list[int]:
    """Up to ``num_tokens`` tokens that followed the latest earlier match of the context's tail."""
    length = len(context)
    for n in range(min(max_ngram, length - 1), min_ngram - 1, -1):
        tail = context[length - n:]
        # latest start s < length - n with context[s:s+n] == tail and something after it
        for start in range(length - n - 1, -1, -1):
            if context[start:start + n] == tail:
                follow = context[start + n: start + n + num_tokens]
                if follow:
                    return follow
    return []


class PromptLookup(Drafter):
    """Deterministic n-gram copies from the context; proposes nothing when no n-gram matches.

    In a batch each row copies its own continuation; the chain is as long as the longest.
    """

    stateless = True

    def __init__(self, num_tokens: int = 10, max_ngram: int = 3, min_ngram: int = 1):
        if int(num_tokens) < 1:
            raise ValueError(f"num_tokens must be >= 1, got {num_tokens}")
        if not 1 <= int(min_ngram) <= int(max_ngram):
            raise ValueError(f"need 1 <= min_ngram <= max_ngram, got {min_ngram} and {max_ngram}")
        self.num_tokens = int(num_tokens)
        self.max_ngram = int(max_ngram)
        self.min_ngram = int(min_ngram)

    def propose(self, request: DraftRequest) -> DraftTree:
        rows = []
        for seq, mask in zip(request.sequences, request.attention_mask):
            context = seq[mask.bool()].tolist()
            rows.append(lookup_continuation(context, request.num_tokens, self.max_ngram, self.min_ngram))
        width = max(len(r) for r in rows)
        tokens = torch.zeros(len(rows), width, dtype=torch.long)
        valid = torch.zeros(len(rows), width, dtype=torch.bool)
        for i, r in enumerate(rows):  # rows with shorter matches get placeholders no rule accepts
            tokens[i, :len(r)] = torch.tensor(r, dtype=torch.long)
            valid[i, :len(r)] = True
        device = request.sequences.device
        return DraftTree.chain(tokens.to(device), valid=None if bool(valid.all()) else valid.to(device))
