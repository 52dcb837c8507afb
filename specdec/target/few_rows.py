"""Few-row linear layers: the target's own ``nn.Linear`` layers computed as ``W @ x.T`` while decoding.

A decoding step feeds one to a few dozen tokens per row through every linear layer of the model.
On CPUs ``F.linear`` (``x @ W.T``) takes a slow path for so few rows, while the same product with
the weight as the left operand streams the weight at full memory speed (see :mod:`specdec.target.head`).
:func:`few_row_linears` switches every plain ``nn.Linear`` of a module to that product for the
duration of a ``with`` block, and back: the parameters, the module tree and anything outside the
block (Hugging Face's ``generate`` on the same model) stay untouched.  Inputs with more rows than
the machine's cut-over (:class:`~specdec.target.kernels.Kernels` ``linear_rows``; prefill, big trees),
under autograd or off the CPU take ``F.linear`` as before.  Results differ from ``F.linear``'s
only by float rounding.

Not thread-safe: do not run the same model in other threads meanwhile.  Plain Llama targets skip
this and run :class:`~specdec.target.lean_llama.LeanLlama`, which calls the same product directly.
"""
from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn

from .head import linear
from .kernels import FALLBACK, Kernels

MAX_ROWS = FALLBACK.linear_rows  # the fallback cut-over (rows over the batch) when no profile measured one


class FewRowsLinear(nn.Linear):
    """``nn.Linear`` whose forward takes :func:`specdec.target.head.linear`'s few-row product for few CPU rows."""

    few_rows, padded = MAX_ROWS, None  # set per module by few_row_linears

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias, self.few_rows, self.padded)


@contextmanager
def few_row_linears(module: nn.Module, enabled: bool = True, kernels: Kernels = FALLBACK):
    """Within the block, every plain ``nn.Linear`` in ``module`` multiplies up to ``kernels.linear_rows`` rows as ``W @ x.T``."""
    swapped = [m for m in module.modules() if type(m) is nn.Linear] if enabled else []
    for m in swapped:
        m.__class__ = FewRowsLinear
        m.few_rows, m.padded = kernels.linear_rows, kernels.padded_rows
    try:
        yield module
    finally:
        for m in swapped:
            m.__class__ = nn.Linear
            del m.few_rows, m.padded
