"""Chimera in Flax (linen): the twin of ``heads/chimera.py`` that trains it, every draft depth at once.

Same parameters (Flax names mirror the torch module's; :func:`to_tensors` / :func:`from_tensors`
convert) and the same computation.  Training runs the draft's steps for all positions and depths in
parallel: with the token at position u as the last drafted one at depth d, the root sits at
t = u - d + 1, so the query at u sees the context (target states) at positions <= u - d and the
draft entries (trigram encodings) at positions t..u, all within u's own segment, and the head adds
the target's head on the state at u - d (the last verified token).  Since draft entries are
computed from tokens alone, this equals running the draft autoregressively for d steps with the
tokens at t+1..u accepted: the training-time unroll is exact, not an approximation.
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from .llama_flax import RMSNorm, _rotate_half, rotary


class ChimeraFlax(nn.Module):
    config: object  # heads.chimera.ChimeraConfig

    def setup(self):
        c = self.config
        dense = lambda n, name, bias=False: nn.Dense(n, use_bias=bias, name=name,  # noqa: E731
                                                     kernel_init=nn.initializers.normal(0.02))
        self.residual = nn.Dense(3 * c.hidden_size, name="trigram_residual", kernel_init=nn.initializers.zeros)
        self.proj = dense(c.hidden_size, "trigram_proj")
        self.input_layernorm = RMSNorm(c.rms_norm_eps, name="input_layernorm")
        self.post_attention_layernorm = RMSNorm(c.rms_norm_eps, name="post_attention_layernorm")
        self.q_proj = dense(c.num_attention_heads * c.head_dim, "q_proj")
        self.k_proj = dense(c.num_key_value_heads * c.head_dim, "k_proj")
        self.v_proj = dense(c.num_key_value_heads * c.head_dim, "v_proj")
        self.o_proj = dense(c.hidden_size, "o_proj")
        self.gate_proj = dense(c.intermediate_size, "gate_proj")
        self.up_proj = dense(c.intermediate_size, "up_proj")
        self.down_proj = dense(c.hidden_size, "down_proj")
        self.head_verified = dense(c.draft_vocab_size, "head_verified")
        self.head = dense(c.draft_vocab_size, "head")
        if c.state_input:
            self.state_fuse = nn.Dense(c.hidden_size, use_bias=False, name="state_fuse",
                                       kernel_init=nn.initializers.zeros)

    def encode(self, trigram_embeds):
        """[..., 3H] -> [..., H]: the zero-initialised residual block, then the projection."""
        return self.proj(trigram_embeds + nn.silu(self.residual(trigram_embeds)))

    def _kv(self, entries, positions):
        c = self.config
        b, t, _ = entries.shape
        x = self.input_layernorm(entries)
        cos, sin = rotary(positions, c.head_dim, c.rope_theta)
        k = self.k_proj(x).reshape(b, t, c.num_key_value_heads, c.head_dim)
        v = self.v_proj(x).reshape(b, t, c.num_key_value_heads, c.head_dim)
        k = k * cos[:, :, None] + _rotate_half(k) * sin[:, :, None]
        return k, v

    def __call__(self, embeds, prev1, prev2, hidden, positions, segment_ids, at, depths: int):
        """Draft logits [B, D, A, V'] at answer positions ``at`` [B, A] for depths 1..D, and a validity mask [B, D, A].

        ``embeds`` [B, T, H]: the target's embeddings of the row's tokens; ``prev1``/``prev2`` [B, T]: the
        row positions of each token's one and two predecessors within its segment (itself at a segment
        start); ``hidden`` [B, T, H]: the target's states.
        """
        c = self.config
        b, t, _ = embeds.shape
        take = lambda x, idx: jnp.take_along_axis(x, idx[..., None], axis=1)  # noqa: E731  rows of [B, T, H]
        pick = lambda x, idx: jnp.take_along_axis(x, idx, axis=1)  # noqa: E731  entries of [B, T]
        enc = self.encode(jnp.concatenate([take(embeds, prev2), take(embeds, prev1), embeds], axis=-1))  # [B, T, H]
        k_ctx, v_ctx = self._kv(hidden, positions)
        k_drf, v_drf = self._kv(enc, positions)
        keys = jnp.concatenate([k_ctx, k_drf], axis=1)  # [B, 2T, kv, d]
        values = jnp.concatenate([v_ctx, v_drf], axis=1)
        groups = c.num_attention_heads // c.num_key_value_heads
        keys, values = jnp.repeat(keys, groups, axis=2), jnp.repeat(values, groups, axis=2)
        q_enc = take(enc, at)  # [B, A, H]
        q_pos = pick(positions, at)
        cos, sin = rotary(q_pos, c.head_dim, c.rope_theta)
        seg_q, seg_k = pick(segment_ids, at), segment_ids
        same = (seg_q[:, :, None] == seg_k[:, None, :]) & (seg_k[:, None, :] > 0)  # [B, A, T]
        kpos, qpos = positions[:, None, :], q_pos[:, :, None]
        out_logits, out_valid = [], []
        scores = None
        for d in range(1, depths + 1):
            last = jnp.maximum(at - d, 0)
            last_state = take(hidden, last)  # [B, A, H]: the target's state at the last verified token
            q_in = q_enc + self.state_fuse(last_state) if c.state_input else q_enc
            if scores is None or c.state_input:  # without the state input the queries are the same at every depth
                q = self.q_proj(self.input_layernorm(q_in)).reshape(b, -1, c.num_attention_heads, c.head_dim)
                q = q * cos[:, :, None] + _rotate_half(q) * sin[:, :, None]
                scores = jnp.einsum("bqhd,bkhd->bhqk", q, keys) / np.sqrt(c.head_dim)  # [B, h, A, 2T]
            context = same & (kpos <= qpos - d)
            drafts = same & (kpos >= qpos - d + 1) & (kpos <= qpos)
            mask = jnp.concatenate([context, drafts], axis=-1)[:, None]  # [B, 1, A, 2T]
            weights = jax.nn.softmax(jnp.where(mask, scores, jnp.finfo(scores.dtype).min).astype(jnp.float32), -1)
            attn = jnp.einsum("bhqk,bkhd->bqhd", weights.astype(q.dtype), values).reshape(b, -1, c.num_attention_heads * c.head_dim)
            x = q_in + self.o_proj(attn)
            y = self.post_attention_layernorm(x)
            s = x + self.down_proj(nn.silu(self.gate_proj(y)) * self.up_proj(y))
            verified = self.head_verified(last_state)  # [B, A, V']
            out_logits.append(verified + self.head(s))
            out_valid.append((q_pos - d >= 0) & (pick(segment_ids, last) == seg_q))  # a verified state exists
        return jnp.stack(out_logits, axis=1), jnp.stack(out_valid, axis=1)


# ---- the shared safetensors format ---------------------------------------------------------------
_NAMES = {  # Flax module name -> torch parameter prefix
    "trigram_residual": "trigram.residual", "trigram_proj": "trigram.proj",
    "input_layernorm": "layer.input_layernorm", "post_attention_layernorm": "layer.post_attention_layernorm",
    "q_proj": "layer.self_attn.q_proj", "k_proj": "layer.self_attn.k_proj", "v_proj": "layer.self_attn.v_proj",
    "o_proj": "layer.self_attn.o_proj", "gate_proj": "layer.mlp.gate_proj", "up_proj": "layer.mlp.up_proj",
    "down_proj": "layer.mlp.down_proj", "head_verified": "head_verified", "head": "head",
    "state_fuse": "state_fuse",  # only with config.state_input
}


def to_tensors(params) -> dict[str, np.ndarray]:
    """Flax parameters as the torch module's state dict (numpy float32, [out, in] layout)."""
    p = jax.device_get(params)
    out = {}
    for name, prefix in _NAMES.items():
        if name not in p:
            continue
        layer = p[name]
        if "kernel" in layer:
            out[f"{prefix}.weight"] = np.asarray(layer["kernel"], np.float32).T.copy()
        if "bias" in layer:
            out[f"{prefix}.bias"] = np.asarray(layer["bias"], np.float32).copy()
        if "weight" in layer:
            out[f"{prefix}.weight"] = np.asarray(layer["weight"], np.float32).copy()
    return out


def from_tensors(tensors: dict) -> dict:
    """Flax parameters from the torch module's state dict (numpy or torch values)."""
    get = lambda key: jnp.asarray(np.asarray(tensors[key].float().numpy() if hasattr(tensors[key], "numpy")  # noqa: E731
                                             else tensors[key], np.float32))
    params = {}
    for name, prefix in _NAMES.items():
        if f"{prefix}.weight" not in tensors:
            continue
        if name.endswith("layernorm"):
            params[name] = {"weight": get(f"{prefix}.weight")}
        else:
            params[name] = {"kernel": get(f"{prefix}.weight").T}
            if f"{prefix}.bias" in tensors:
                params[name]["bias"] = get(f"{prefix}.bias")
    return params
