"""Self-drafting by layer truncation: the target's first layers, its embeddings, norm and head.

No training and no extra weights: the returned model shares every parameter with the target
(Draft & Verify, LayerSkip-style early exit without the fine-tuning).  Supported for models
laid out as ``model.model.{embed_tokens, layers, norm, rotary_emb}`` + ``model.lm_head``
(Llama, Mistral, Qwen2, SmolLM and kin).
"""
from __future__ import annotations

import copy

import torch


def truncated_model(model: torch.nn.Module, num_layers: int) -> torch.nn.Module:
    """A causal LM that runs only the first ``num_layers`` decoder layers of ``model``.

    The result shares all weights with ``model`` (nothing is copied) and has its own config
    whose ``num_hidden_layers`` is ``num_layers``, so it keeps its own, shorter KV cache.
    """
    backbone = getattr(model, "model", None)
    layers = getattr(backbone, "layers", None)
    if layers is None or not hasattr(model, "lm_head"):
        raise TypeError(
            f"cannot truncate {type(model).__name__}: expected a Llama-style layout "
            "(model.model.layers and model.lm_head)"
        )
    total = len(layers)
    if not 1 <= int(num_layers) <= total:
        raise ValueError(f"num_layers must be between 1 and {total} for this model, got {num_layers}")

    config = copy.deepcopy(model.config)
    config.num_hidden_layers = int(num_layers)
    if getattr(config, "layer_types", None) is not None:
        config.layer_types = list(config.layer_types[: int(num_layers)])

    draft = copy.copy(model)  # shallow: shares parameters; module dicts are replaced below
    draft._modules = dict(model._modules)
    draft.config = config
    inner = copy.copy(backbone)
    inner._modules = dict(backbone._modules)
    inner.config = config
    inner.layers = torch.nn.ModuleList(list(layers)[: int(num_layers)])
    draft._modules["model"] = inner
    return draft
