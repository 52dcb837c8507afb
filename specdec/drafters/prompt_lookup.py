"""Prompt lookup decoding: copy what followed the last occurrence of the trailing n-gram.

Needs no model (Saxena, 2023; Hugging Face's ``prompt_lookup_num_tokens``).  The trailing
``n``-gram of the committed context, for ``n`` from ``max_ngram`` down to ``min_ngram``, is
searched for earlier in the context; the tokens that followed its most recent earlier
occurrence are proposed as a deterministic chain.
"""
from __future__ import annotations

import copy

import torch

from ..tree import DraftTree
from .base import CommitUpdate, Drafter, DraftRequest


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


class NgramIndex:
    """One row's committed tokens and, per n-gram, its latest start that has a token after it.

    Appending a token registers the n-grams that end just before it, so a lookup costs
    ``max_ngram`` dictionary probes instead of a scan of the context; it returns exactly what
    :func:`lookup_continuation` returns.
    """

    def __init__(self, tokens: list[int], max_ngram: int, min_ngram: int):
        self.tokens: list[int] = []
        self.max_ngram, self.min_ngram = max_ngram, min_ngram
        self.latest: dict[tuple[int, ...], int] = {}
        self.extend(tokens)

    def extend(self, tokens: list[int]) -> None:
        for token in tokens:
            end = len(self.tokens)  # the new token's index: n-grams ending at end - 1 now have a follower
            for n in range(self.min_ngram, min(self.max_ngram, end) + 1):
                self.latest[tuple(self.tokens[end - n:end])] = end - n
            self.tokens.append(token)

    def continuation(self, num_tokens: int) -> list[int]:
        length = len(self.tokens)
        for n in range(min(self.max_ngram, length - 1), self.min_ngram - 1, -1):
            start = self.latest.get(tuple(self.tokens[length - n:]))
            if start is not None:
                return self.tokens[start + n: start + n + num_tokens]
        return []

    def continuations(self, num_tokens: int) -> list[list[int]]:
        """What followed the latest earlier occurrence of each matching tail, longest tail first
        (the first is :meth:`continuation`); the same continuation may appear more than once."""
        return [chain for _, chain in self.matches(num_tokens)]

    def matches(self, num_tokens: int) -> list[tuple[int, list[int]]]:
        """``(n, continuation)`` for each tail of ``n`` tokens that occurred before, longest first:
        the longer the match, the likelier the continuation is right."""
        length = len(self.tokens)
        out = []
        for n in range(min(self.max_ngram, length - 1), self.min_ngram - 1, -1):
            start = self.latest.get(tuple(self.tokens[length - n:]))
            if start is not None:
                out.append((n, self.tokens[start + n: start + n + num_tokens]))
        return out

    def copy(self) -> "NgramIndex":
        out = NgramIndex.__new__(NgramIndex)
        out.tokens, out.latest = list(self.tokens), dict(self.latest)
        out.max_ngram, out.min_ngram = self.max_ngram, self.min_ngram
        return out


class PromptLookup(Drafter):
    """Deterministic n-gram copies from the context; proposes nothing when no n-gram matches.

    Keeps each row's committed tokens (the prompt, then what each commit appends).  In a batch
    each row copies its own continuation; the chain is as long as the longest.
    """

    def __init__(self, num_tokens: int = 10, max_ngram: int = 3, min_ngram: int = 1):
        if int(num_tokens) < 1:
            raise ValueError(f"num_tokens must be >= 1, got {num_tokens}")
        if not 1 <= int(min_ngram) <= int(max_ngram):
            raise ValueError(f"need 1 <= min_ngram <= max_ngram, got {min_ngram} and {max_ngram}")
        self.num_tokens = int(num_tokens)
        self.max_ngram = int(max_ngram)
        self.min_ngram = int(min_ngram)
        self._rows: list[NgramIndex] = []

    def start(self, target_model, input_ids, attention_mask, hidden=None) -> None:
        self._rows = [NgramIndex(row[m.bool()].tolist(), self.max_ngram, self.min_ngram)
                      for row, m in zip(input_ids, attention_mask)]

    def commit(self, update: CommitUpdate) -> None:
        for row, index in enumerate(self._rows):
            index.extend(update.appended(row))

    def take_rows(self, rows: torch.Tensor) -> "PromptLookup":
        out = copy.copy(self)
        out._rows = [self._rows[r].copy() for r in rows.tolist()]
        return out

    def join(self, others: list["PromptLookup"]) -> "PromptLookup":
        out = copy.copy(self)
        out._rows = [index for d in [self, *others] for index in d._rows]
        return out

    def propose(self, request: DraftRequest) -> DraftTree:
        rows = [index.continuation(depth) if depth else [] for index, depth in zip(self._rows, request.depth)]
        width = max(len(r) for r in rows)
        tokens = torch.zeros(len(rows), width, dtype=torch.long)
        valid = torch.zeros(len(rows), width, dtype=torch.bool)
        for i, r in enumerate(rows):  # rows with shorter matches get placeholders no rule accepts
            tokens[i, :len(r)] = torch.tensor(r, dtype=torch.long)
            valid[i, :len(r)] = True
        device = request.roots.device
        return DraftTree.chain(tokens.to(device), valid=None if bool(valid.all()) else valid.to(device))
