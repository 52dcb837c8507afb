"""A Llama decoder's forward for decoding, without Hugging Face's per-call machinery.

A decoding step feeds one or a few tokens, so a small model spends most of a step outside its
arithmetic: in ``LlamaModel``'s mask building, rotary and output plumbing and its many small
modules (RESULTS.md has the measurements).  :class:`LeanLlama` runs the same mathematics from the
same weights: q, k and v in one product, gate and up in one, rotary angles from a table the
model's own rotary module fills, and ``scaled_dot_product_attention`` over
:class:`~specdec.target.kv.BufferLayer` caches.  It is used by
:class:`~specdec.drafters.draft_cache.DraftCache` for plain Llama drafts (``supports``) and by
:class:`~specdec.target.verifier.Target` for plain Llama targets, and is held equal to ``LlamaModel`` by
``tests/test_lean_llama.py`` and ``tests/test_lean_target.py``; other families run through their
own Hugging Face forward.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from .head import FEW_ROWS, linear

# scaled_dot_product_attention broadcasts grouped key/value heads itself from torch 2.5 on
_SDPA_GQA = tuple(int(x) for x in torch.__version__.split("+")[0].split(".")[:2]) >= (2, 5)
# rotary types whose angles depend on the position only (not on the sequence length): their cos/sin
# can be computed once per position and looked up (Hugging Face's "dynamic" and "longrope" rescale)
STATIC_ROPE = {"default", "linear", "llama3"}
# F.rms_norm equals LlamaRMSNorm bit for bit in float32 (it normalises in the input's dtype;
# LlamaRMSNorm in float32 whatever the input)
_FUSED_NORM_DTYPES = {torch.float32}
# from 3 to 64 new tokens per row, grouped query heads attend folded into one on the CPU (grouped_attention): a
# verification's tokens (measured: 2-7% off a 3-4 token verification of SmolLM2 at 470-1000 cached tokens on the
# 2-core development CPU, nothing clear at 2); a prefill's many, and accelerators (not measured), keep the kernel's
# own grouped path
FOLD_QUERIES = (3, 64)


def supports(model: nn.Module) -> bool:
    """Whether ``model`` is a plain Llama (no biases, SiLU, one tensor-parallel slice) LeanLlama can run."""
    config = getattr(model, "config", None)
    return (getattr(config, "model_type", None) == "llama" and not getattr(config, "attention_bias", False)
            and not getattr(config, "mlp_bias", False) and getattr(config, "hidden_act", None) == "silu"
            and getattr(config, "pretraining_tp", 1) == 1)


class LeanLlama:
    """``model.get_decoder()``'s last hidden states, computed from its weights (fused once, at construction)."""

    @classmethod
    def for_model(cls, model: nn.Module, fuse: bool = True) -> "LeanLlama":
        """The LeanLlama of ``model``, built once and rebuilt only when its weights change (not per decode)."""
        # inference tensors (a model built inside torch.inference_mode) keep no version counter; they
        # cannot be changed in place outside that mode, so their storage alone identifies them
        weights = tuple((p.data_ptr(), 0 if p.is_inference() else p._version) for p in model.parameters())
        key = "_specdec_lean" if fuse else "_specdec_lean_unfused"
        built = model.__dict__.get(key)  # kept on the model: it lives and dies with it
        if built is None or built[0] != weights:
            built = (weights, cls(model, fuse))
            model.__dict__[key] = built
        return built[1]

    def __init__(self, model: nn.Module, fuse: bool = True):
        """``fuse``: q, k, v (and gate, up) as one product each, from concatenated copies of their weights
        (fewer, larger products; costs a copy of those weights).  Unfused, the model's own weights are
        used as they are, with no extra memory."""
        if not supports(model):
            raise ValueError(f"LeanLlama runs plain Llama models, not {getattr(model.config, 'model_type', '?')}")
        decoder = model.get_decoder()
        config = model.config
        self.decoder = decoder
        self.heads = config.num_attention_heads
        self.kv_heads = config.num_key_value_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.heads
        self.eps = config.rms_norm_eps
        self.intermediate = config.intermediate_size
        self.fused = fuse
        self.rotary = RotaryTable(decoder.rotary_emb)
        with torch.no_grad():
            self.layers = [self._weights(layer, fuse) for layer in decoder.layers]

    @staticmethod
    def _weights(layer: nn.Module, fuse: bool) -> dict:
        attn, mlp = layer.self_attn, layer.mlp
        qkv = [attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight]
        gate_up = [mlp.gate_proj.weight, mlp.up_proj.weight]
        return {
            "qkv": [torch.cat(qkv).contiguous()] if fuse else qkv,
            "o": attn.o_proj.weight,
            "gate_up": [torch.cat(gate_up).contiguous()] if fuse else gate_up,
            "down": mlp.down_proj.weight,
            "norm_in": layer.input_layernorm.weight,
            "norm_post": layer.post_attention_layernorm.weight,
        }

    def _norm(self, hidden: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        dtype = hidden.dtype
        if dtype in _FUSED_NORM_DTYPES and weight.dtype == dtype:
            return F.rms_norm(hidden, weight.shape, weight, self.eps)  # one call instead of six
        hidden = hidden.to(torch.float32)  # as LlamaRMSNorm does, whatever the model's dtype
        hidden = hidden * torch.rsqrt(hidden.pow(2).mean(-1, keepdim=True) + self.eps)
        return weight * hidden.to(dtype)

    @torch.no_grad()
    def __call__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
                 position_ids: torch.Tensor, cache, few_rows: int = FEW_ROWS,
                 padded: dict | None = None) -> torch.Tensor:
        """Hidden states [B, T, H] of ``input_ids`` [B, T] appended to ``cache`` (a RaggedCache's layers).

        Products of at most ``few_rows`` rows (tokens over the batch) take :func:`specdec.target.head.linear`'s
        ``W @ x.T`` path, row counts in ``padded`` padded (:class:`~specdec.target.kernels.Kernels`).

        ``attention_mask``: None (every cached entry real; the new tokens causal among themselves),
        [B, C + T] with 1 for real entries (padding; causal over the new tokens), or a 4D additive
        mask [B, 1, T, C + T] used as given.
        """
        b, t = input_ids.shape
        hidden = self.decoder.embed_tokens(input_ids)
        cos, sin = self.rotary(hidden, position_ids)
        cos, sin = cos[:, None], sin[:, None]  # [B, 1, T, D]
        past = cache[0].get_seq_length()
        mask = self._mask(attention_mask, b, t, past, hidden)
        groups = self.heads // self.kv_heads
        fold = groups > 1 and FOLD_QUERIES[0] <= t <= FOLD_QUERIES[1] and hidden.device.type == "cpu"
        if fold:  # built once per forward: every layer attends with it
            mask = fold_mask(mask, groups, hidden.dtype)
        q_size, kv_size = self.heads * self.head_dim, self.kv_heads * self.head_dim
        for layer, weights in zip(cache, self.layers):
            x = self._norm(hidden, weights["norm_in"])
            if self.fused:  # q and k rotated as one tensor (half the calls)
                qk, v = linear(x, weights["qkv"][0], None, few_rows, padded).split([q_size + kv_size, kv_size], dim=-1)
                qk = apply_rotary(qk.view(b, t, self.heads + self.kv_heads, self.head_dim).transpose(1, 2), cos, sin)
                q, k = qk.split([self.heads, self.kv_heads], dim=1)
            else:
                q, k, v = _products(x, weights["qkv"], [q_size, kv_size, kv_size], few_rows, padded)
                q = apply_rotary(q.view(b, t, self.heads, self.head_dim).transpose(1, 2), cos, sin)
                k = apply_rotary(k.view(b, t, self.kv_heads, self.head_dim).transpose(1, 2), cos, sin)
            keys, values = layer.update(k, v.view(b, t, self.kv_heads, self.head_dim).transpose(1, 2))
            attended = grouped_attention(q, keys, values, mask, groups, folded=fold)
            hidden = hidden + linear(attended.transpose(1, 2).reshape(b, t, q_size), weights["o"], None, few_rows, padded)
            x = self._norm(hidden, weights["norm_post"])
            gate, up = _products(x, weights["gate_up"], [self.intermediate] * 2, few_rows, padded)
            hidden = hidden + linear(F.silu(gate) * up, weights["down"], None, few_rows, padded)
        return self._norm(hidden, self.decoder.norm.weight)

    @staticmethod
    def _mask(attention_mask, b: int, t: int, past: int, like: torch.Tensor):
        if attention_mask is not None and attention_mask.dim() == 4:
            return attention_mask.to(like.dtype)
        if attention_mask is None and t == 1:
            return None  # one new token sees every cached entry
        causal = torch.ones(t, past + t, dtype=torch.bool, device=like.device).tril(past)
        if attention_mask is None:
            return causal
        # padding queries also see themselves, so that no row is all masked (NaN in SDPA); real
        # queries never see padding keys, so what padding computes is never read
        itself = torch.zeros_like(causal)
        itself[:, past:] = torch.eye(t, dtype=torch.bool, device=like.device)
        return (causal[None, None] & attention_mask.bool()[:, None, None, :]) | itself


def default_rotary(theta: float, dim: int):
    """Hugging Face's default rotary angles as a function ``(like, position_ids) -> (cos, sin)`` [B, T, dim],
    for a :class:`RotaryTable` over a layer that has no rotary module of its own (a draft head's)."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))

    def angles(like: torch.Tensor, position_ids: torch.Tensor):
        freqs = position_ids[..., None].float() * inv_freq.to(like.device)
        emb = torch.cat([freqs, freqs], dim=-1)
        return emb.cos().to(like.dtype), emb.sin().to(like.dtype)

    return angles


class RotaryTable:
    """A rotary embedding's cos and sin [B, T, D] at ``position_ids``, looked up from a table of every position.

    Hugging Face's rotary module recomputes the angles at every call (several small operations); the
    table is built by that same module over positions 0..n-1 (so it holds the same numbers, bit for
    bit: each angle is one product of a position and a frequency), and grows when a position
    passes its end.  Rotary types whose angles depend on the sequence length call the module.
    """

    def __init__(self, rotary: nn.Module):
        self.rotary = rotary
        self.static = getattr(rotary, "rope_type", "default") in STATIC_ROPE
        self.tables: dict = {}  # (dtype, device) -> (cos [n, D], sin [n, D])

    def __call__(self, like: torch.Tensor, position_ids: torch.Tensor):
        if not self.static:
            return self.rotary(like, position_ids)
        key = (like.dtype, like.device)
        table = self.tables.get(key)
        needed = int(position_ids.max()) + 1 if position_ids.numel() else 1
        if table is None or table[0].shape[0] < needed:
            size = max(needed, 2 * table[0].shape[0] if table is not None else 1024)
            positions = torch.arange(size, device=like.device)[None]
            cos, sin = self.rotary(like[:1, :1], positions)
            table = self.tables[key] = (cos[0], sin[0])
        return F.embedding(position_ids, table[0]), F.embedding(position_ids, table[1])


def _products(x: torch.Tensor, weights: list[torch.Tensor], sizes: list[int], few_rows: int, padded: dict | None):
    """x times each of ``weights`` (one fused matrix, split into ``sizes``, or one matrix per output)."""
    if len(weights) == 1:
        return linear(x, weights[0], None, few_rows, padded).split(sizes, dim=-1)
    return [linear(x, w, None, few_rows, padded) for w in weights]


def fold_mask(mask: torch.Tensor, groups: int, dtype: torch.dtype) -> torch.Tensor:
    """A mask over [M, K] (2D, or 4D [B, 1, M, K]; boolean or additive) as the additive [B or 1, 1, groups*M, K]
    mask of :func:`grouped_attention`'s folded queries: the M rows once per query head of a group."""
    if mask.dim() == 2:
        mask = mask[None, None]
    folded = mask.repeat(1, 1, groups, 1)
    if folded.dtype == torch.bool:  # as scaled_dot_product_attention reads a boolean mask
        folded = torch.zeros(folded.shape, dtype=dtype, device=folded.device).masked_fill_(~folded, float("-inf"))
    return folded.to(dtype)


def grouped_attention(q, keys, values, mask, groups: int, folded: bool = False) -> torch.Tensor:
    """Attention of q [B, h, M, d] over keys/values [B, h / groups, K, d] (grouped-query heads).

    ``folded``: the ``groups`` query heads that share a key/value head attend as one head of
    ``groups * M`` queries, with ``mask`` already folded by :func:`fold_mask`.  The same sums; on
    CPUs the attention kernel runs a few queries per head slowly (2 to 8 queries took 2-3x the time
    of one on the 2-core development machine at 500 keys, folded 1.3-2x), and folded they fill it.
    """
    if folded:
        b, h, m, d = q.shape
        out = F.scaled_dot_product_attention(q.reshape(b, h // groups, groups * m, d), keys, values, attn_mask=mask)
        return out.reshape(b, h, m, d)
    if groups == 1:
        return F.scaled_dot_product_attention(q, keys, values, attn_mask=mask)
    if _SDPA_GQA:
        return F.scaled_dot_product_attention(q, keys, values, attn_mask=mask, enable_gqa=True)
    return F.scaled_dot_product_attention(q, keys.repeat_interleave(groups, dim=1),
                                          values.repeat_interleave(groups, dim=1), attn_mask=mask)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary embedding in Hugging Face's rotate-half layout."""
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos + rotated * sin
