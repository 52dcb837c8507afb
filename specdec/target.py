"""The target model: prefill, verify a draft tree in one forward, commit the accepted path.

Wraps any Hugging Face causal LM that takes a 4D additive attention mask and explicit
``position_ids`` (Llama and its kin in transformers 5).  The key/value cache holds every
committed token except the last one, the *root*; each verification feeds ``[root, *nodes]``
so that plain decoding is a verification of the empty tree.

Per row the wrapper tracks explicitly how many real tokens are cached (``lengths``, which is
also the root's position) and which cache entries are real (``context_mask``, False at left
padding) — never inferred from token values, since pad may equal EOS.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import DynamicCache

from .tree import DraftTree


@dataclass
class Verification:
    """The target's view of one draft tree."""

    logits: torch.Tensor  # [B, 1+N, V] at each slot (root first)
    hidden: torch.Tensor | None  # [B, 1+N, H] last hidden state at each slot, when asked for


class Target:
    """One target model and its key/value cache for one batch of sequences."""

    def __init__(self, model: torch.nn.Module):
        if not hasattr(model, "config") or not hasattr(model.config, "vocab_size"):
            raise TypeError(f"target must be a Hugging Face causal LM, got {type(model).__name__}")
        self.model = model
        self.cache: DynamicCache | None = None
        self.context_mask: torch.Tensor | None = None  # [B, C] bool, True at real cached entries
        self.lengths: torch.Tensor | None = None  # [B] long, real tokens cached per row
        self.forwards = 0

    @property
    def vocab_size(self) -> int:
        return self.model.get_output_embeddings().weight.shape[0]

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @property
    def max_positions(self) -> int | None:
        return getattr(self.model.config, "max_position_embeddings", None)

    @torch.no_grad()
    def prefill(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Cache every prompt token but the last, which becomes the root; returns the roots [B].

        ``attention_mask`` [B, T] marks real tokens (left padding is 0); the last column must be
        real in every row.
        """
        self.cache = DynamicCache(config=self.model.config)
        context_mask = attention_mask[:, :-1].bool()
        self.context_mask = context_mask
        self.lengths = context_mask.sum(dim=1)
        if input_ids.shape[1] > 1:
            positions = (context_mask.long().cumsum(dim=1) - 1).clamp_min(0)
            self.model(
                input_ids=input_ids[:, :-1],
                attention_mask=context_mask.long(),
                position_ids=positions,
                past_key_values=self.cache,
                use_cache=True,
                logits_to_keep=1,
            )
            self.forwards += 1
        return input_ids[:, -1]

    @torch.no_grad()
    def verify(self, roots: torch.Tensor, tree: DraftTree, want_hidden: bool = False) -> Verification:
        """One forward over ``[root, *nodes]`` with tree attention; the cache grows by 1+N."""
        mask = tree.attention_mask(self.context_mask, self.dtype)
        out = self.model(
            input_ids=tree.verify_inputs(roots),
            attention_mask=mask,
            position_ids=tree.position_ids(self.lengths),
            past_key_values=self.cache,
            use_cache=True,
            output_hidden_states=want_hidden,
        )
        self.forwards += 1
        hidden = out.hidden_states[-1] if want_hidden else None
        return Verification(out.logits, hidden)

    def commit(self, paths: list[list[int]], num_nodes: int) -> None:
        """Keep the root and the accepted nodes of the last verification; drop the rest.

        The cache then holds the committed tokens contiguously; the token drawn after the path
        becomes the next root and is not cached.
        """
        if len(paths) != 1:
            raise NotImplementedError("committing ragged paths for batch size > 1 needs EQSPEC realignment")
        path = paths[0]
        c = self.context_mask.shape[1]
        kept = 1 + len(path)
        if path == list(range(len(path))) and _cache_length(self.cache) == c + 1 + num_nodes:
            if kept < 1 + num_nodes:
                self.cache.crop(kept - 1 - num_nodes)
        else:
            index = torch.tensor(list(range(c + 1)) + [c + 1 + i for i in path], device=self.device)
            keep_cache_entries(self.cache, index)
        ones = torch.ones(self.context_mask.shape[0], kept, dtype=torch.bool, device=self.device)
        self.context_mask = torch.cat([self.context_mask, ones], dim=1)
        self.lengths = self.lengths + kept


def _cache_length(cache: DynamicCache) -> int:
    return cache.get_seq_length()


def keep_cache_entries(cache: DynamicCache, index: torch.Tensor) -> None:
    """Keep only the cache entries at ``index`` (sequence positions), in that order, in every layer."""
    for layer in cache.layers:
        if getattr(layer, "is_sliding", False):
            raise NotImplementedError("sliding-window caches cannot be compacted to a tree path")
        if layer.is_initialized:
            layer.keys = layer.keys.index_select(-2, index)
            layer.values = layer.values.index_select(-2, index)
