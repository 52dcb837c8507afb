"""Output heads: logits from final hidden states, computed the cheapest way for the rows at hand.

A large vocabulary makes the output head the single biggest matrix of a small model (SmolLM2's
is 49,152 x 576, 113 MB in fp32), and one decoding step reads it from memory once per row it is
applied to.  On CPUs, ``F.linear`` (``x @ W.T`` with the weight stored [V, H]) runs a slow path
for few rows, while ``W @ x.T``, the same product with the weight as the left operand, streams
the weight at full memory speed.  So products of few rows multiply that way, some row counts
padded to a few more rows (a single column takes the slow matrix-vector path); how few, and which
counts, are this machine's :class:`~specdec.target.kernels.Kernels` (measured by the profile, or the
fallback).  The numbers differ from ``F.linear``'s only by float rounding.
"""
from __future__ import annotations

import torch
from torch import nn

from .kernels import FALLBACK

FEW_ROWS = FALLBACK.head_rows  # the fallback row limits and padding (specdec.target.kernels: measured ones win)
PADDED_ROWS = FALLBACK.padded_rows


def few_rows_product(weight: torch.Tensor, hidden: torch.Tensor, padded: dict | None = None) -> torch.Tensor:
    """``hidden @ weight.T`` for hidden [..., H] and weight [V, H], computed as ``weight @ hidden.T``;
    row counts in ``padded`` (default :data:`PADDED_ROWS`) are multiplied as that many rows."""
    padded = PADDED_ROWS if padded is None else padded
    rows = hidden.reshape(-1, hidden.shape[-1])
    count = rows.shape[0]
    if count in padded:
        rows = torch.cat([rows, rows[:1].expand(padded[count] - count, -1)])
    out = torch.mm(weight, rows.t()).t()[:count].contiguous()
    return out.reshape(*hidden.shape[:-1], weight.shape[0])


def use_few_rows(hidden: torch.Tensor, most: int = FEW_ROWS) -> bool:
    """Whether ``hidden`` [..., H] is at most ``most`` CPU rows, outside autograd, for :func:`few_rows_product`."""
    rows = hidden.numel() // hidden.shape[-1] if hidden.shape[-1] else 0
    return (hidden.device.type == "cpu" and hidden.dtype == torch.float32 and 0 < rows <= most
            and not torch.is_grad_enabled())


def linear(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
           most: int = FEW_ROWS, padded: dict | None = None) -> torch.Tensor:
    """``F.linear(hidden, weight, bias)``, as :func:`few_rows_product` for at most ``most`` CPU rows outside autograd."""
    if use_few_rows(hidden, most) and weight.dtype == hidden.dtype:
        out = few_rows_product(weight, hidden, padded)
        return out if bias is None else out + bias
    return nn.functional.linear(hidden, weight, bias)


def project(head: nn.Module, hidden: torch.Tensor, kernels=None) -> torch.Tensor:
    """``head(hidden)`` for inputs [..., H]; plain linear layers on the CPU take the fast path for few rows
    (``kernels``: this machine's :class:`~specdec.target.kernels.Kernels`, default the fallback).

    Worth it for matrices larger than the CPU's caches (output heads, wide draft layers); small
    ones run either way at about the same speed.
    """
    if type(head) is nn.Linear:
        kernels = kernels or FALLBACK
        return linear(hidden, head.weight, head.bias, kernels.head_rows, kernels.padded_rows)
    return head(hidden)


def logits(model: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """A causal LM's logits from its final hidden states (its output head, then any final softcap)."""
    out = project(model.get_output_embeddings(), hidden)
    softcap = getattr(model.config, "final_logit_softcapping", None)
    if softcap:
        out = torch.tanh(out / softcap) * softcap
    return out
