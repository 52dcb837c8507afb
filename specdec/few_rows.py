"""Few-row linear layers: the target's own ``nn.Linear`` layers computed as ``W @ x.T`` while decoding.

A decoding step feeds one to a few dozen tokens per row through every linear layer of the model.
On CPUs ``F.linear`` (``x @ W.T``) takes a slow path for so few rows, and a step with two tokens
cost 1.44x a step with one on SmolLM2-135M (2 threads): a profile put 86% of a step in
``aten::mm``.  The same product with the weight as the left operand streams the weight at full
memory speed (see :mod:`specdec.head`).  :func:`few_row_linears` switches every plain
``nn.Linear`` of a module to that product for the duration of a ``with`` block, and back: the
parameters, the module tree and anything outside the block (Hugging Face's ``generate`` on the
same model) stay untouched.  Inputs with more than ``MAX_ROWS`` rows (prefill, big trees), under
autograd or off the CPU take ``F.linear`` as before.

Measured inside a SmolLM2-135M verification (2 threads, context 200, ``F.linear`` against
``W @ x.T`` in every layer and the head): 1 token 51.5 against 34.0 ms, 2 tokens 81.5 against 36.4,
3: 90.7 / 46.8, 4: 71.5 / 46.8, 5: 67.0 / 53.3, 6: 67.1 / 60.7, 8: 72.8 / 67.2, 12: 94.6 / 105.2,
16: 90.1 / 88.9 (one Hugging Face step: 57.7 ms).  Hence ``MAX_ROWS = 8``: the layers' matrices
are small enough that beyond a few rows ``F.linear``'s blocked kernel catches up.  Results differ
from ``F.linear``'s only by float rounding.
Not thread-safe: do not run the same model in other threads meanwhile.  Plain Llama targets skip
this and run :class:`~specdec.lean_llama.LeanLlama`, which calls the same product directly.
"""
from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn

from .head import linear

MAX_ROWS = 8  # rows (tokens over the batch) up to which a layer multiplies as W @ x.T


class FewRowsLinear(nn.Linear):
    """``nn.Linear`` whose forward takes :func:`specdec.head.linear`'s few-row product for at most ``MAX_ROWS`` CPU rows."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias, MAX_ROWS)


@contextmanager
def few_row_linears(module: nn.Module, enabled: bool = True):
    """Within the block, every plain ``nn.Linear`` in ``module`` multiplies few rows as ``W @ x.T``."""
    swapped = [m for m in module.modules() if type(m) is nn.Linear] if enabled else []
    for m in swapped:
        m.__class__ = FewRowsLinear
    try:
        yield module
    finally:
        for m in swapped:
            m.__class__ = nn.Linear
