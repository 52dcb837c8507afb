"""A Llama-style causal LM in Flax (linen) for training draft models, exported as a Hugging Face model.

RMSNorm, rotary positions (Hugging Face's default rotate-half layout), grouped-query attention
and a SwiGLU MLP, sized by :class:`DraftConfig`.  :func:`export_hf` writes a directory that
``transformers.LlamaForCausalLM.from_pretrained`` loads with no custom code (config.json +
model.safetensors), so any engine that takes a Hugging Face draft model can use it;
:func:`from_hf_state_dict` reads such weights back into Flax parameters.

Two options make a draft cheap for a large-vocabulary target (the draft-v2 layout,
:func:`export_reduced`, loaded by ``specdec.drafters.load_draft_model``):

* ``embed_dim`` (the target's hidden size): token embeddings are the *target's* embeddings
  projected by ``embed_projection`` [embed_dim -> hidden]; the caller passes the target's
  embedding rows as ``inputs_embeds``, so the draft stores no embedding table of its own.
* ``draft_vocab_size`` V': the output head projects onto V' tokens only (a reduced draft
  vocabulary; the map to target ids ships with the weights).

``positions`` and ``segment_ids`` let one row hold several packed sequences.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np


@dataclass(frozen=True)
class DraftConfig:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    max_position_embeddings: int = 2048
    tie_word_embeddings: bool = True
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None
    embed_dim: int | None = None  # set: embeddings are the target's (this wide), projected
    draft_vocab_size: int | None = None  # set: the head projects onto this many tokens (untied)

    def __post_init__(self):
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not divisible by {self.num_attention_heads} heads")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(f"{self.num_attention_heads} attention heads cannot share {self.num_key_value_heads} "
                             "key/value heads evenly")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads


class RMSNorm(nn.Module):
    eps: float

    @nn.compact
    def __call__(self, x):
        weight = self.param("weight", nn.initializers.ones, (x.shape[-1],))
        x32 = x.astype(jnp.float32)
        normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return weight * normed.astype(x.dtype)


def rotary(positions: jnp.ndarray, head_dim: int, theta: float) -> tuple[jnp.ndarray, jnp.ndarray]:
    """cos, sin [..., T, head_dim] in Hugging Face's layout (frequencies repeated, rotate-half)."""
    inv = 1.0 / (theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))
    freqs = positions[..., None].astype(jnp.float32) * inv
    emb = jnp.concatenate([freqs, freqs], axis=-1)
    return jnp.cos(emb), jnp.sin(emb)


def _rotate_half(x):
    half = x.shape[-1] // 2
    return jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)


class Attention(nn.Module):
    config: DraftConfig

    @nn.compact
    def __call__(self, x, cos, sin, mask):
        c = self.config
        b, t, _ = x.shape
        dense = lambda n, name: nn.Dense(n, use_bias=False, name=name,  # noqa: E731
                                         kernel_init=nn.initializers.normal(0.02))
        q = dense(c.num_attention_heads * c.head_dim, "q_proj")(x).reshape(b, t, c.num_attention_heads, c.head_dim)
        k = dense(c.num_key_value_heads * c.head_dim, "k_proj")(x).reshape(b, t, c.num_key_value_heads, c.head_dim)
        v = dense(c.num_key_value_heads * c.head_dim, "v_proj")(x).reshape(b, t, c.num_key_value_heads, c.head_dim)
        cos, sin = cos[:, :, None, :], sin[:, :, None, :]
        q = q * cos + _rotate_half(q) * sin
        k = k * cos + _rotate_half(k) * sin
        groups = c.num_attention_heads // c.num_key_value_heads
        k = jnp.repeat(k, groups, axis=2)
        v = jnp.repeat(v, groups, axis=2)
        scores = jnp.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(c.head_dim)
        scores = jnp.where(mask[:, None], scores, jnp.finfo(scores.dtype).min)
        weights = jax.nn.softmax(scores.astype(jnp.float32), axis=-1).astype(q.dtype)
        out = jnp.einsum("bhqk,bkhd->bqhd", weights, v).reshape(b, t, -1)
        return dense(c.hidden_size, "o_proj")(out)


class MLP(nn.Module):
    config: DraftConfig

    @nn.compact
    def __call__(self, x):
        c = self.config
        dense = lambda n, name: nn.Dense(n, use_bias=False, name=name,  # noqa: E731
                                         kernel_init=nn.initializers.normal(0.02))
        return dense(c.hidden_size, "down_proj")(nn.silu(dense(c.intermediate_size, "gate_proj")(x))
                                                 * dense(c.intermediate_size, "up_proj")(x))


class DecoderLayer(nn.Module):
    config: DraftConfig

    @nn.compact
    def __call__(self, x, cos, sin, mask):
        c = self.config
        x = x + Attention(c, name="self_attn")(RMSNorm(c.rms_norm_eps, name="input_layernorm")(x), cos, sin, mask)
        return x + MLP(c, name="mlp")(RMSNorm(c.rms_norm_eps, name="post_attention_layernorm")(x))


class LlamaDraft(nn.Module):
    """Logits [B, T, V] for token ids [B, T]; ``attention_mask`` [B, T] (1 = real, left padding 0)."""

    config: DraftConfig

    @nn.compact
    def __call__(self, input_ids, attention_mask=None, at=None, inputs_embeds=None, positions=None,
                 segment_ids=None):
        """Logits [B, T, V] (V' with a reduced vocabulary); with ``at`` [B, A] (positions), only there [B, A, V].

        ``inputs_embeds`` [B, T, embed_dim]: the target's embedding rows of ``input_ids`` (required
        with ``embed_dim``).  ``positions`` [B, T] and ``segment_ids`` [B, T] (0 = padding) describe
        packed rows: tokens attend causally within their own segment only.
        """
        c = self.config
        if attention_mask is None:
            attention_mask = jnp.ones_like(input_ids)
        embed = None
        if c.embed_dim is not None:
            if inputs_embeds is None:
                raise ValueError("this draft projects the target's embeddings: pass inputs_embeds")
            x = nn.Dense(c.hidden_size, use_bias=False, name="embed_projection",
                         kernel_init=nn.initializers.normal(0.02))(inputs_embeds)
        else:
            embed = nn.Embed(c.vocab_size, c.hidden_size, name="embed_tokens",
                             embedding_init=nn.initializers.normal(0.02))
            x = embed(input_ids)
        if positions is None:
            positions = jnp.clip(jnp.cumsum(attention_mask, axis=-1) - 1, 0)
        cos, sin = rotary(positions, c.head_dim, c.rope_theta)
        t = input_ids.shape[1]
        causal = jnp.tril(jnp.ones((t, t), dtype=bool))
        mask = causal[None] & attention_mask.astype(bool)[:, None, :]
        if segment_ids is not None:
            mask &= segment_ids[:, :, None] == segment_ids[:, None, :]
        for i in range(c.num_hidden_layers):
            x = DecoderLayer(c, name=f"layers_{i}")(x, cos, sin, mask)
        x = RMSNorm(c.rms_norm_eps, name="norm")(x)
        if at is not None:  # the output head over a large vocabulary is the costly part: only where asked
            x = jnp.take_along_axis(x, at[..., None], axis=1)
        if c.draft_vocab_size is not None:
            return nn.Dense(c.draft_vocab_size, use_bias=False, name="lm_head",
                            kernel_init=nn.initializers.normal(0.02))(x)
        if c.tie_word_embeddings and embed is not None:
            return embed.attend(x)
        return nn.Dense(c.vocab_size, use_bias=False, name="lm_head", kernel_init=nn.initializers.normal(0.02))(x)


# ---- Hugging Face format ---------------------------------------------------------------------
_LINEAR = {"self_attn": ("q_proj", "k_proj", "v_proj", "o_proj"), "mlp": ("gate_proj", "up_proj", "down_proj")}


def to_hf_state_dict(params, config: DraftConfig) -> dict[str, np.ndarray]:
    """Flax parameters as a ``LlamaForCausalLM`` state dict (numpy float32, torch's [out, in] layout)."""
    p = jax.device_get(params)
    out = {"model.norm.weight": np.asarray(p["norm"]["weight"], np.float32)}
    if "embed_tokens" in p:
        out["model.embed_tokens.weight"] = np.asarray(p["embed_tokens"]["embedding"], np.float32)
    if "embed_projection" in p:
        out["embed_projection.weight"] = np.asarray(p["embed_projection"]["kernel"], np.float32).T.copy()
    for i in range(config.num_hidden_layers):
        layer = p[f"layers_{i}"]
        prefix = f"model.layers.{i}."
        for block, names in _LINEAR.items():
            for name in names:
                out[f"{prefix}{block}.{name}.weight"] = np.asarray(layer[block][name]["kernel"], np.float32).T.copy()
        for norm in ("input_layernorm", "post_attention_layernorm"):
            out[f"{prefix}{norm}.weight"] = np.asarray(layer[norm]["weight"], np.float32)
    if not config.tie_word_embeddings or config.draft_vocab_size is not None:
        out["lm_head.weight"] = np.asarray(p["lm_head"]["kernel"], np.float32).T.copy()
    return out


def from_hf_state_dict(state: dict, config: DraftConfig) -> dict:
    """Flax parameters from a ``LlamaForCausalLM`` state dict (numpy or torch values)."""
    get = lambda key: jnp.asarray(np.asarray(_numpy(state[key]), np.float32))  # noqa: E731
    params = {"norm": {"weight": get("model.norm.weight")}}
    if config.embed_dim is not None:
        params["embed_projection"] = {"kernel": get("embed_projection.weight").T}
    else:
        params["embed_tokens"] = {"embedding": get("model.embed_tokens.weight")}
    for i in range(config.num_hidden_layers):
        prefix = f"model.layers.{i}."
        layer = {block: {name: {"kernel": get(f"{prefix}{block}.{name}.weight").T} for name in names}
                 for block, names in _LINEAR.items()}
        for norm in ("input_layernorm", "post_attention_layernorm"):
            layer[norm] = {"weight": get(f"{prefix}{norm}.weight")}
        params[f"layers_{i}"] = layer
    if not config.tie_word_embeddings or config.draft_vocab_size is not None:
        params["lm_head"] = {"kernel": get("lm_head.weight").T}
    return params


def hf_config(config: DraftConfig):
    from transformers import LlamaConfig

    fields = {k: v for k, v in asdict(config).items() if k not in ("embed_dim", "draft_vocab_size")}
    if config.draft_vocab_size is not None:
        fields["tie_word_embeddings"] = False  # the full-vocabulary embedding and the subset head are apart
    return LlamaConfig(**fields, head_dim=config.head_dim, attention_bias=False, mlp_bias=False, hidden_act="silu")


def export_hf(params, config: DraftConfig, folder: str | Path, dtype: str = "bfloat16", extra: dict | None = None) -> Path:
    """Write ``config.json`` and ``model.safetensors`` (``dtype``) that ``LlamaForCausalLM`` loads as is."""
    import torch
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    torch_dtype = getattr(torch, dtype)
    hf = hf_config(config)
    hf.torch_dtype = dtype
    hf.architectures = ["LlamaForCausalLM"]
    hf.save_pretrained(folder)
    tensors = {k: torch.from_numpy(np.array(v)).to(torch_dtype).contiguous()
               for k, v in to_hf_state_dict(params, config).items()}
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    if extra:
        (folder / "card.json").write_text(json.dumps(extra, indent=2) + "\n", encoding="utf-8")
    return folder


def export_reduced(params, config: DraftConfig, token_ids, folder: str | Path, dtype: str = "bfloat16",
                   extra: dict | None = None) -> Path:
    """Write a draft-v2 directory: ``config.json`` (a LlamaConfig over the full vocabulary) and
    ``draft.safetensors``: the backbone in Hugging Face names, ``embed_projection.weight`` [hidden,
    embed_dim], ``lm_head.weight`` [V', hidden] and ``lm_head.token_ids`` [V'] (target ids)."""
    import torch
    from safetensors.torch import save_file

    if config.embed_dim is None or config.draft_vocab_size is None:
        raise ValueError("export_reduced is for drafts with embed_dim and draft_vocab_size set")
    token_ids = np.asarray(token_ids, np.int64)
    if token_ids.shape != (config.draft_vocab_size,):
        raise ValueError(f"{len(token_ids)} token ids for a head of {config.draft_vocab_size} rows")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    hf = hf_config(config)
    hf.torch_dtype = dtype
    hf.architectures = ["LlamaForCausalLM"]
    hf.save_pretrained(folder)
    torch_dtype = getattr(torch, dtype)
    tensors = {k: torch.from_numpy(np.array(v)).to(torch_dtype).contiguous()
               for k, v in to_hf_state_dict(params, config).items()}
    tensors["lm_head.token_ids"] = torch.from_numpy(token_ids)
    tensors["embed_projection.in_features"] = torch.tensor([config.embed_dim])
    save_file(tensors, str(folder / "draft.safetensors"), metadata={"format": "pt", "kind": "specdec-draft-v2"})
    if extra:
        (folder / "card.json").write_text(json.dumps(extra, indent=2) + "\n", encoding="utf-8")
    return folder


def config_from_hf(hf) -> DraftConfig:
    """A :class:`DraftConfig` from a transformers ``LlamaConfig`` (e.g. the target's, to derive a draft)."""
    return DraftConfig(vocab_size=hf.vocab_size, hidden_size=hf.hidden_size, intermediate_size=hf.intermediate_size,
                       num_hidden_layers=hf.num_hidden_layers, num_attention_heads=hf.num_attention_heads,
                       num_key_value_heads=hf.num_key_value_heads, rms_norm_eps=hf.rms_norm_eps,
                       rope_theta=float(getattr(hf, "rope_theta", None) or hf.rope_parameters["rope_theta"]),
                       max_position_embeddings=hf.max_position_embeddings,
                       tie_word_embeddings=bool(hf.tie_word_embeddings), bos_token_id=hf.bos_token_id,
                       eos_token_id=hf.eos_token_id)


def _numpy(value):
    if hasattr(value, "detach"):
        return value.detach().float().cpu().numpy()
    return value
