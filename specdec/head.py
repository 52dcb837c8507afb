"""Output heads: logits from final hidden states, computed the cheapest way for the rows at hand.

A large vocabulary makes the output head the single biggest matrix of a small model (SmolLM2's
is 49,152 x 576, 113 MB in fp32), and one decoding step reads it from memory once per row it is
applied to.  On CPUs, ``F.linear`` (``x @ W.T`` with the weight stored [V, H]) runs a slow path
for few rows, while ``W @ x.T``, the same product with the weight as the left operand, streams
the weight at full memory speed.  Measured on the development machine (2 threads, fp32,
49,152 x 576; ``python -m specdec.bench.head_cost``): one row 9.6 ms by ``F.linear`` against
3.4 ms by ``W @ x.T`` (padded to two rows: the one-column product takes the slow path too), two
rows 23.9 against 3.0 ms, four 17.2 against 5.0, eight 15.9 against 6.9, sixteen 18.5 against
14.4.  So heads applied to at most ``FEW_ROWS`` rows multiply that way.  The numbers differ from
``F.linear``'s only by float rounding (the same size of error against float64 either way).
"""
from __future__ import annotations

import torch
from torch import nn

FEW_ROWS = 32  # at most this many rows: W @ x.T (measured faster than F.linear up to 32 rows)
# Row counts multiplied as more rows (copies of the first), measured faster in whole forwards: a single
# column takes the slow matrix-vector path (SmolLM2's head: 7.2 ms, padded to two 3.1), and three
# columns cost more than four (SmolLM2-135M's backbone, 2 threads: 23.0 against 20.2 ms; its head
# 3.9 against 3.2 ms).
PADDED_ROWS = {1: 2, 3: 4}


def few_rows_product(weight: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
    """``hidden @ weight.T`` for hidden [..., H] and weight [V, H], computed as ``weight @ hidden.T``."""
    rows = hidden.reshape(-1, hidden.shape[-1])
    count = rows.shape[0]
    if count in PADDED_ROWS:
        rows = torch.cat([rows, rows[:1].expand(PADDED_ROWS[count] - count, -1)])
    out = torch.mm(weight, rows.t()).t()[:count].contiguous()
    return out.reshape(*hidden.shape[:-1], weight.shape[0])


def use_few_rows(hidden: torch.Tensor, most: int = FEW_ROWS) -> bool:
    """Whether ``hidden`` [..., H] is at most ``most`` CPU rows, outside autograd, for :func:`few_rows_product`."""
    rows = hidden.numel() // hidden.shape[-1] if hidden.shape[-1] else 0
    return (hidden.device.type == "cpu" and hidden.dtype == torch.float32 and 0 < rows <= most
            and not torch.is_grad_enabled())


def linear(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
           most: int = FEW_ROWS) -> torch.Tensor:
    """``F.linear(hidden, weight, bias)``, as :func:`few_rows_product` for at most ``most`` CPU rows outside autograd."""
    if use_few_rows(hidden, most) and weight.dtype == hidden.dtype:
        out = few_rows_product(weight, hidden)
        return out if bias is None else out + bias
    return nn.functional.linear(hidden, weight, bias)


def project(head: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """``head(hidden)`` for inputs [..., H]; plain linear layers on the CPU take the fast path for few rows.

    Worth it for matrices larger than the CPU's caches (output heads, wide draft layers); small
    ones run either way at about the same speed.
    """
    if type(head) is nn.Linear:
        return linear(hidden, head.weight, head.bias)
    return head(hidden)


def logits(model: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """A causal LM's logits from its final hidden states (its output head, then any final softcap)."""
    out = project(model.get_output_embeddings(), hidden)
    softcap = getattr(model.config, "final_logit_softcapping", None)
    if softcap:
        out = torch.tanh(out / softcap) * softcap
    return out
