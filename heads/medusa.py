"""Medusa heads (Cai et al., 2024), the torch module that serves them.

Head k (k = 1..K) guesses the token k+1 places after the last token the target has
processed, from the target's last (final-normed) hidden state h: a residual block
``h + SiLU(W_k h + b_k)`` whose weights start at zero (so it starts as the identity) feeds the
target's own output head, shared and not copied.  The Flax twin for training is
``heads/medusa_flax.py`` (same parameter names, same safetensors).

Safetensors keys: ``heads.{k}.weight`` [H, H] and ``heads.{k}.bias`` [H], k = 0..K-1.
"""
from __future__ import annotations

import torch
from torch import nn


class ResidualBlock(nn.Module):
    def __init__(self, hidden_size: int):
        super().__init__()
        self.linear = nn.Linear(hidden_size, hidden_size)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        from specdec.target.head import linear  # few rows (a decoding step's) take the faster product on CPUs

        return h + nn.functional.silu(linear(h, self.linear.weight, self.linear.bias))


class MedusaHeads(nn.Module):
    """K residual blocks over the target's hidden state; logits through the target's own head."""

    def __init__(self, hidden_size: int, num_heads: int):
        super().__init__()
        if num_heads < 1:
            raise ValueError(f"num_heads must be >= 1, got {num_heads}")
        self.hidden_size = hidden_size
        self.blocks = nn.ModuleList(ResidualBlock(hidden_size) for _ in range(num_heads))

    @property
    def num_heads(self) -> int:
        return len(self.blocks)

    def states(self, hidden: torch.Tensor, count: int | None = None) -> torch.Tensor:
        """The first ``count`` heads' states [K, ..., H] for hidden states ``hidden`` [..., H] (before the head)."""
        return torch.stack([block(hidden) for block in self.blocks[:count]])

    def forward(self, hidden: torch.Tensor, lm_head: nn.Module) -> torch.Tensor:
        """Logits [K, ..., V] of every head for hidden states ``hidden`` [..., H]."""
        from specdec.target.head import project

        return torch.stack([project(lm_head, state) for state in self.states(hidden)])

    # ---- the shared safetensors format ---------------------------------------------------
    def tensors(self) -> dict[str, torch.Tensor]:
        out = {}
        for k, block in enumerate(self.blocks):
            out[f"heads.{k}.weight"] = block.linear.weight.detach()
            out[f"heads.{k}.bias"] = block.linear.bias.detach()
        return out

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor]) -> "MedusaHeads":
        count = len({key.split(".")[1] for key in tensors if key.startswith("heads.")})
        if count == 0:
            raise ValueError("no Medusa head weights (keys heads.{k}.weight / heads.{k}.bias) in these tensors")
        hidden = tensors["heads.0.weight"].shape[0]
        heads = cls(hidden, count)
        with torch.no_grad():
            for k, block in enumerate(heads.blocks):
                for name in ("weight", "bias"):
                    key = f"heads.{k}.{name}"
                    if key not in tensors:
                        raise ValueError(f"Medusa weights lack {key}")
                    param = getattr(block.linear, name)
                    if tensors[key].shape != param.shape:
                        raise ValueError(f"{key} has shape {tuple(tensors[key].shape)}, expected {tuple(param.shape)}")
                    param.copy_(tensors[key].to(param.dtype))
        return heads
