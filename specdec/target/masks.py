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

from ..tree import DraftTree, additive_mask


def layer_kinds(config) -> set[str]:
    """The attention kinds of a model's layers: ``full_attention`` and/or ``sliding_attention``."""
    types = getattr(config, "layer_types", None)
    window = getattr(config, "sliding_window", None)
    if types:
        kinds = set(types)
        return kinds if window else kinds - {"sliding_attention"} | {"full_attention"}
    return {"sliding_attention"} if window else {"full_attention"}


def padded_prefill_attention(config, real: torch.Tensor, dtype: torch.dtype):
    """The ``attention_mask`` argument for a prefill of left-padded rows (``real`` [B, T]: False at padding).

    Causal over real keys, with each layer kind's window, as the model's own masks would be, except
    that a padding query sees itself: no query row is fully masked.  A fully masked row is NaN in
    eager attention that takes its softmax in float32 (Gemma 2): a float64 model's masking minimum
    is -inf there, and the padding positions' NaN values would reach the real tokens through the
    next layer's (zero-weighted) attention.  Columns and positions differ by a constant per row, so
    the window is taken over columns.
    """
    b, t = real.shape
    column = torch.arange(t, device=real.device)
    causal = column[None, :] <= column[:, None]  # [T(query), T(key)]
    visible = (causal[None] & real[:, None, :]) | torch.eye(t, dtype=torch.bool, device=real.device)[None]
    full = additive_mask(visible, dtype)
    kinds = layer_kinds(config)
    if kinds == {"full_attention"}:
        return full
    near = column[None, :] > column[:, None] - int(config.sliding_window)
    sliding = additive_mask(visible & (near[None] | torch.eye(t, dtype=torch.bool, device=real.device)[None]), dtype)
    if kinds == {"sliding_attention"} and not getattr(config, "layer_types", None):
        return sliding
    return {"full_attention": full, "sliding_attention": sliding}


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
