"""A reduced draft vocabulary (FR-Spec; EAGLE-3's draft-to-target map).

A draft's output head is most of its cost when the vocabulary is large (49,152 rows for
SmolLM2).  :class:`SubsetHead` projects onto the ``V'`` most frequent tokens of the target's own
outputs only, and answers in full-vocabulary ids: every other token gets logit -inf, so the
draft's law lives on the subset.  Nothing else changes: drafters, samplers and acceptance rules
see ordinary full-vocabulary logits.  Losslessness is untouched, because the verifier always
uses the target's full law (residual included): a token outside the subset is simply never
drafted, and the target still emits it when it should.
"""
from __future__ import annotations

import torch
from torch import nn

from ..target.head import linear
from .base import output_vocab_size


class SubsetHead(nn.Module):
    """Logits over ``vocab_size`` tokens computed from ``weight`` [V', H], the rows of ``token_ids`` [V']."""

    def __init__(self, weight: torch.Tensor, token_ids: torch.Tensor, vocab_size: int):
        super().__init__()
        token_ids = torch.as_tensor(token_ids, dtype=torch.long)
        if weight.dim() != 2 or token_ids.shape != (weight.shape[0],):
            raise ValueError(f"a subset head needs weight [V', H] and token_ids [V'], got {tuple(weight.shape)} "
                             f"and {tuple(token_ids.shape)}")
        if token_ids.numel() == 0 or int(token_ids.min()) < 0 or int(token_ids.max()) >= vocab_size:
            raise ValueError(f"token_ids must be ids in [0, {vocab_size})")
        if torch.unique(token_ids).numel() != token_ids.numel():
            raise ValueError("token_ids must not repeat a token")
        self.weight = nn.Parameter(weight.detach().clone(), requires_grad=False)
        self.register_buffer("token_ids", token_ids, persistent=False)
        self.vocab_size = int(vocab_size)

    @property
    def in_features(self) -> int:
        return self.weight.shape[1]

    @property
    def out_features(self) -> int:
        return self.vocab_size

    def subset_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Logits [..., V'] over the subset only."""
        return linear(hidden, self.weight)  # the faster product for few rows (see specdec.target.head)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        sub = self.subset_logits(hidden)
        out = sub.new_full((*sub.shape[:-1], self.vocab_size), float("-inf"))
        return out.index_copy_(-1, self.token_ids, sub)

    def extra_repr(self) -> str:
        return f"subset={self.weight.shape[0]}, vocab_size={self.vocab_size}, hidden={self.weight.shape[1]}"


def with_subset_head(model: nn.Module, token_ids, weight: torch.Tensor | None = None) -> nn.Module:
    """``model`` (a causal LM, changed in place and returned) projecting onto ``token_ids`` only.

    ``weight`` [V', H] gives the subset head's rows; by default they are the model's own output
    rows for those tokens (a training-free cut, as FR-Spec does).
    """
    head = model.get_output_embeddings()
    vocab = output_vocab_size(model)
    token_ids = torch.as_tensor(token_ids, dtype=torch.long)
    if weight is None:
        weight = head.weight.index_select(0, token_ids.to(head.weight.device))
    if weight.shape[1] != head.weight.shape[1]:
        raise ValueError(f"subset head rows have width {weight.shape[1]}, the model's hidden size is {head.weight.shape[1]}")
    subset = SubsetHead(weight.to(head.weight.dtype), token_ids, vocab).to(head.weight.device)
    model.set_output_embeddings(subset)
    model.config.tie_word_embeddings = False  # the head no longer shares the embedding's storage
    return model


def coverage(counts: torch.Tensor, size: int) -> float:
    """Share of the counted tokens that the ``size`` most frequent ones cover."""
    total = float(counts.sum())
    return float(torch.topk(counts.double(), size).values.sum()) / total if total else 0.0


def top_tokens(counts: torch.Tensor, size: int, always: list[int] = ()) -> torch.Tensor:
    """The ``size`` most frequent token ids (``always`` included, e.g. EOS), sorted ascending."""
    counts = counts.double().clone()
    for token in always:
        counts[token] = float("inf")
    return torch.topk(counts, size).indices.sort().values
