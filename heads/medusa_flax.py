"""Medusa heads in Flax (linen), the twin of ``heads/medusa.py`` for training.

The same architecture (per head ``h + SiLU(W_k h + b_k)``, zero-initialised, then the target's
output head, which is passed in and never trained) and the same safetensors keys:
``heads.{k}.weight`` [H, H] (torch's [out, in] layout; Flax kernels are its transpose) and
``heads.{k}.bias`` [H].
"""
from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp
import numpy as np


class MedusaHeadsFlax(nn.Module):
    hidden_size: int
    num_heads: int

    @nn.compact
    def __call__(self, hidden: jnp.ndarray) -> jnp.ndarray:
        """Per-head hidden states [K, ..., H] (logits are ``out @ lm_head.T``)."""
        outs = []
        for k in range(self.num_heads):
            dense = nn.Dense(self.hidden_size, kernel_init=nn.initializers.zeros, bias_init=nn.initializers.zeros,
                             name=f"heads_{k}")
            outs.append(hidden + nn.silu(dense(hidden)))
        return jnp.stack(outs)


def logits(module: MedusaHeadsFlax, params, hidden: jnp.ndarray, lm_head: jnp.ndarray) -> jnp.ndarray:
    """Logits [K, ..., V] of every head; ``lm_head`` [V, H] is the target's output embedding."""
    return module.apply({"params": params}, hidden) @ lm_head.T


def to_tensors(params) -> dict[str, np.ndarray]:
    """Flax parameters as the shared safetensors dict (numpy, float32)."""
    out = {}
    for name, layer in params.items():
        k = int(name.split("_")[1])
        out[f"heads.{k}.weight"] = np.asarray(layer["kernel"], dtype=np.float32).T.copy()
        out[f"heads.{k}.bias"] = np.asarray(layer["bias"], dtype=np.float32).copy()
    return out


def from_tensors(tensors: dict) -> dict:
    """Flax parameters from the shared safetensors dict (numpy or torch values)."""
    params = {}
    count = len({key.split(".")[1] for key in tensors if key.startswith("heads.")})
    for k in range(count):
        weight = np.asarray(tensors[f"heads.{k}.weight"], dtype=np.float32)
        params[f"heads_{k}"] = {"kernel": jnp.asarray(weight.T), "bias": jnp.asarray(np.asarray(tensors[f"heads.{k}.bias"],
                                                                                                dtype=np.float32))}
    return params
