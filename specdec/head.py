"""Output heads: logits from final hidden states, computed the cheapest way for the rows at hand.

A large vocabulary makes the output head the single biggest matrix of a small model (SmolLM2's
is 49,152 x 576, 113 MB in fp32), and one decoding step reads it from memory once per row it is
applied to.  On CPUs, ``F.linear`` with the weight stored [V, H] runs a slow matrix-vector path
for one to three rows; the same product against a [H, V] copy of the weight streams memory about
twice as fast (measured on the development machine: 5.3 ms against 11.3 ms for one row, 10 ms
against 25 ms for two).  From four rows on ``F.linear`` is the faster of the two.  So heads
applied to few rows use a transposed copy of the weight, made once per weight and refreshed when
the weight changes.  The numbers differ from ``F.linear``'s only by float rounding.
"""
from __future__ import annotations

import weakref

import torch
from torch import nn

FEW_ROWS = 3  # at most this many rows: multiply by the transposed copy

_transposed: dict[int, tuple[weakref.ref, int, torch.Tensor]] = {}  # id(weight) -> (weight, version, copy)


def transposed_weight(weight: torch.Tensor) -> torch.Tensor:
    """A contiguous [H, V] copy of ``weight`` [V, H], cached until the weight changes in place or goes away."""
    cached = _transposed.get(id(weight))
    if cached is None or cached[0]() is not weight or cached[1] != weight._version:
        with torch.no_grad():
            copy = weight.detach().t().contiguous()
        key = id(weight)
        _transposed[key] = (weakref.ref(weight, lambda _: _transposed.pop(key, None)), weight._version, copy)
        return copy
    return cached[2]


def project(head: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """``head(hidden)`` for inputs [..., H]; plain linear layers on the CPU take the fast path for few rows.

    Worth it for matrices larger than the CPU's caches (output heads, wide draft layers); small
    ones run either way at the same speed.
    """
    rows = hidden.numel() // hidden.shape[-1] if hidden.shape[-1] else 0
    if (type(head) is nn.Linear and hidden.device.type == "cpu" and 0 < rows <= FEW_ROWS
            and not torch.is_grad_enabled()):
        out = hidden @ transposed_weight(head.weight)
        return out if head.bias is None else out + head.bias
    return head(hidden)


def logits(model: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """A causal LM's logits from its final hidden states (its output head, then any final softcap)."""
    out = project(model.get_output_embeddings(), hidden)
    softcap = getattr(model.config, "final_logit_softcapping", None)
    if softcap:
        out = torch.tanh(out / softcap) * softcap
    return out
