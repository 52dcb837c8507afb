"""Chimera (Zeng et al., 2024): a light draft that fuses every token, over the target's own hidden states.

The torch module that serves it; ``heads/chimera_flax.py`` is the Flax twin that trains it (same
parameter names, same safetensors).

* **Trigram encoder.** For the token at position t, the target's embeddings of tokens t-2, t-1
  and t (the target's table, shared, not copied; at a sequence's start the first token stands in
  for the missing ones), concatenated [3H], a zero-initialised residual block
  ``x + SiLU(W x + b)``, then a projection 3H -> H.
* **Full-context decoder.** One Llama decoder layer with the target's attention shape.  Its keys
  and values come from two kinds of entries: the target's final hidden state of every committed
  token (the *context*, at that token's position) and the trigram encoding of every draft position
  (at its position).  A draft position's query (its trigram encoding) attends over the context and
  over its own earlier draft positions.
* **Residual head.** ``W_h h + W_s s`` over the reduced draft vocabulary, where h is the target's
  state at the last verified token and s the draft position's output: Chimera's Linear(2H -> V)
  on concat(h, s), split in two (``head_verified`` and ``head``).  Both halves start as the
  target's own output rows for the draft vocabulary, so the head starts as the target's head on
  h + s, as in the paper, and both are trained.
* **State input** (``state_input``, a departure from the paper, as in EAGLE): a draft position's
  query is its trigram encoding plus ``W_f h`` (zero-initialised), h the target's state at the last
  verified token.  Keys and values stay the encodings, so draft entries still depend on tokens only.

Safetensors keys: ``trigram.residual.{weight,bias}``, ``trigram.proj.weight``,
``layer.{input_layernorm,post_attention_layernorm}.weight``,
``layer.self_attn.{q,k,v,o}_proj.weight``, ``layer.mlp.{gate,up,down}_proj.weight``,
``head_verified.weight`` and ``head.weight`` [V', H], ``state_fuse.weight`` [H, H] (with ``state_input``),
``vocab.token_ids`` [V'] (target ids).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from specdec.target.head import project
from specdec.target.lean_llama import RotaryTable, apply_rotary, default_rotary, grouped_attention


@dataclass(frozen=True)
class ChimeraConfig:
    hidden_size: int
    intermediate_size: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    vocab_size: int  # the target's
    draft_vocab_size: int
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    state_input: bool = False  # EAGLE-style: a draft query also reads the last verified target state

    @classmethod
    def from_target(cls, config, draft_vocab_size: int, **overrides) -> "ChimeraConfig":
        theta = getattr(config, "rope_theta", None) or (getattr(config, "rope_parameters", None) or {}).get(
            "rope_theta", 10000.0)
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        fields = dict(hidden_size=config.hidden_size, intermediate_size=config.intermediate_size,
                      num_attention_heads=config.num_attention_heads, num_key_value_heads=config.num_key_value_heads,
                      head_dim=head_dim, vocab_size=config.vocab_size, draft_vocab_size=draft_vocab_size,
                      rms_norm_eps=float(config.rms_norm_eps), rope_theta=float(theta))
        return cls(**{**fields, **overrides})

    def as_dict(self) -> dict:
        return asdict(self)


class RMSNorm(nn.Module):
    def __init__(self, size: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, x):
        x32 = x.float()
        return self.weight * (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)).to(x.dtype)


class TrigramEncoder(nn.Module):
    def __init__(self, hidden_size: int):
        super().__init__()
        self.residual = nn.Linear(3 * hidden_size, 3 * hidden_size)
        nn.init.zeros_(self.residual.weight)
        nn.init.zeros_(self.residual.bias)
        self.proj = nn.Linear(3 * hidden_size, hidden_size, bias=False)

    def forward(self, trigrams: torch.Tensor) -> torch.Tensor:
        """[..., 3H] concatenated embeddings -> [..., H]."""
        return project(self.proj, trigrams + nn.functional.silu(project(self.residual, trigrams)))


class Attention(nn.Module):
    def __init__(self, c: ChimeraConfig):
        super().__init__()
        self.c = c
        self.q_proj = nn.Linear(c.hidden_size, c.num_attention_heads * c.head_dim, bias=False)
        self.k_proj = nn.Linear(c.hidden_size, c.num_key_value_heads * c.head_dim, bias=False)
        self.v_proj = nn.Linear(c.hidden_size, c.num_key_value_heads * c.head_dim, bias=False)
        self.o_proj = nn.Linear(c.num_attention_heads * c.head_dim, c.hidden_size, bias=False)
        self.rotary = RotaryTable(default_rotary(c.rope_theta, c.head_dim))  # angles looked up, not recomputed

    def rope(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Rotary positions for x [B, h, M, d] at positions [B, M]."""
        cos, sin = self.rotary(x, positions)
        return apply_rotary(x, cos[:, None], sin[:, None])

    def key_values(self, x: torch.Tensor, positions: torch.Tensor):
        """Keys and values [B, kv_heads, M, d] of normed inputs x [B, M, H]."""
        b, m, _ = x.shape
        c = self.c
        k = self.k_proj(x).view(b, m, c.num_key_value_heads, c.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(b, m, c.num_key_value_heads, c.head_dim).transpose(1, 2)
        return self.rope(k, positions), v

    def attend(self, x: torch.Tensor, positions: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
               mask: torch.Tensor) -> torch.Tensor:
        """Queries of x [B, M, H] over keys/values [B, kv, K, d] with a boolean mask [B, M, K]."""
        b, m, _ = x.shape
        c = self.c
        q = self.rope(self.q_proj(x).view(b, m, c.num_attention_heads, c.head_dim).transpose(1, 2), positions)
        out = grouped_attention(q, keys, values, mask[:, None], c.num_attention_heads // c.num_key_value_heads)
        return self.o_proj(out.transpose(1, 2).reshape(b, m, -1))


class MLP(nn.Module):
    def __init__(self, c: ChimeraConfig):
        super().__init__()
        self.gate_proj = nn.Linear(c.hidden_size, c.intermediate_size, bias=False)
        self.up_proj = nn.Linear(c.hidden_size, c.intermediate_size, bias=False)
        self.down_proj = nn.Linear(c.intermediate_size, c.hidden_size, bias=False)

    def forward(self, x):
        return project(self.down_proj, nn.functional.silu(project(self.gate_proj, x)) * project(self.up_proj, x))


class DecoderLayer(nn.Module):
    def __init__(self, c: ChimeraConfig):
        super().__init__()
        self.input_layernorm = RMSNorm(c.hidden_size, c.rms_norm_eps)
        self.self_attn = Attention(c)
        self.post_attention_layernorm = RMSNorm(c.hidden_size, c.rms_norm_eps)
        self.mlp = MLP(c)

    def key_values(self, entries: torch.Tensor, positions: torch.Tensor):
        return self.self_attn.key_values(self.input_layernorm(entries), positions)

    def forward(self, x, positions, keys, values, mask):
        x = x + self.self_attn.attend(self.input_layernorm(x), positions, keys, values, mask)
        return x + self.mlp(self.post_attention_layernorm(x))


class ChimeraDraft(nn.Module):
    """The trainable draft; the target's embedding table and head rows are given, not owned."""

    def __init__(self, config: ChimeraConfig):
        super().__init__()
        self.config = config
        self.trigram = TrigramEncoder(config.hidden_size)
        self.layer = DecoderLayer(config)
        self.head_verified = nn.Linear(config.hidden_size, config.draft_vocab_size, bias=False)
        self.head = nn.Linear(config.hidden_size, config.draft_vocab_size, bias=False)
        if config.state_input:
            self.state_fuse = nn.Linear(config.hidden_size, config.hidden_size, bias=False)
            nn.init.zeros_(self.state_fuse.weight)
        self.register_buffer("token_ids", torch.zeros(config.draft_vocab_size, dtype=torch.long), persistent=False)

    def bind(self, embeddings: torch.Tensor, token_ids: torch.Tensor) -> "ChimeraDraft":
        """Attach the target's embedding table [V, H] (shared, never saved) and the draft vocabulary's target ids."""
        self.__dict__["embeddings"] = embeddings
        self.token_ids = torch.as_tensor(token_ids, dtype=torch.long, device=self.head.weight.device)
        return self

    def encode(self, trigram_ids: torch.Tensor) -> torch.Tensor:
        """Trigram encodings [..., H] of token-id triples [..., 3] (t-2, t-1, t)."""
        e = self.embeddings[trigram_ids].to(self.head.weight.dtype)  # [..., 3, H]
        return self.trigram(e.flatten(-2))

    def context_key_values(self, hidden: torch.Tensor, positions: torch.Tensor):
        """Keys/values of the target's states [B, M, H] at positions [B, M] (no queries: context only)."""
        return self.layer.key_values(hidden.to(self.head.weight.dtype), positions)

    def draft_states(self, encodings, positions, keys, values, mask, last_state=None) -> torch.Tensor:
        """The layer's outputs [B, M, H] for draft positions whose keys/values are already in ``keys``/``values``.

        With ``state_input`` the queries are the encodings plus ``W_f h``, h [B, H] the target's state at the
        last verified token (the keys and values stay the encodings: draft entries depend on tokens only)."""
        if self.config.state_input:
            if last_state is None:
                raise ValueError("this Chimera draft reads the last verified state: pass last_state")
            encodings = encodings + project(self.state_fuse, last_state.to(self.head.weight.dtype))[:, None, :]
        return self.layer(encodings, positions, keys, values, mask)

    def verified_logits(self, last_state: torch.Tensor) -> torch.Tensor:
        """``W_h h`` [B, V'] for the target's state at the last verified token (once per step)."""
        return project(self.head_verified, last_state.to(self.head.weight.dtype))

    def logits(self, verified: torch.Tensor, states: torch.Tensor) -> torch.Tensor:
        """Draft logits [B, M, V'] over the draft vocabulary: ``W_h h + W_s s``."""
        return verified[:, None, :] + project(self.head, states)
