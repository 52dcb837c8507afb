"""Attention masks for tree verification, one per kind of attention layer the model has.

Full-attention layers get the tree mask (the context, the root, each slot's ancestors and
itself).  Sliding-window layers see the same, restricted to keys less than ``sliding_window``
positions behind the query (Hugging Face's rule: key position > query position - window), with
positions, not cache columns, since tree slots at one depth share a position.  Models with both
kinds (``config.layer_types``: Gemma 2 and 3, Qwen with ``max_window_layers``, ...) take a dict
keyed by layer type, which transformers' own forwards accept; models whose every layer slides
(Mistral) take the sliding mask alone.  Chains need none of this: the model's own causal masks,
built from a 2D padding mask, are exactly right (every row's cache is contiguous, so cache
columns and positions differ by a per-row constant).
"""
from __future__ import annotations

import torch

from .tree import DraftTree


def layer_kinds(config) -> set[str]:
    """The attention kinds of a model's layers: ``full_attention`` and/or ``sliding_attention``."""
    types = getattr(config, "layer_types", None)
    window = getattr(config, "sliding_window", None)
    if types:
        kinds = set(types)
        return kinds if window else kinds - {"sliding_attention"} | {"full_attention"}
    return {"sliding_attention"} if window else {"full_attention"}


def tree_attention(config, context_mask: torch.Tensor, tree: DraftTree, root_positions: torch.Tensor,
                   dtype: torch.dtype):
    """The ``attention_mask`` argument for verifying ``tree`` after a cache whose real columns are ``context_mask``."""
    full = tree.attention_mask(context_mask, dtype)  # [B, 1, 1+N, C+1+N]
    kinds = layer_kinds(config)
    if kinds == {"full_attention"}:
        return full
    window = int(config.sliding_window)
    context_positions = context_mask.long().cumsum(dim=1) - 1  # [B, C], garbage at padding (masked anyway)
    query_positions = tree.position_ids(root_positions)  # [B, 1+N]
    key_positions = torch.cat([context_positions, query_positions], dim=1)  # [B, C+1+N]
    near = key_positions[:, None, :] > query_positions[:, :, None] - window  # [B, 1+N, C+1+N]
    sliding = full.masked_fill(~near[:, None], torch.finfo(dtype).min)
    if kinds == {"sliding_attention"} and not getattr(config, "layer_types", None):
        return sliding
    return {"full_attention": full, "sliding_attention": sliding}
