"""Loading the small LMs that draft: a Hugging Face directory, a draft-v2 directory, or the target's own layers.

A draft-v2 directory (``python -m specdec.train.draft``) holds ``config.json`` and
``draft.safetensors``: a Llama backbone, ``embed_projection.weight`` (the draft embeds tokens as
the target's embeddings times this projection, so it stores no embedding table) and a reduced
output head (``lm_head.weight`` over ``lm_head.token_ids``).  Loaded, it is an ordinary
``LlamaForCausalLM`` whose output head is a :class:`~specdec.drafters.vocab.SubsetHead`, so both
specdec's drafters and Hugging Face's assisted generation can use it.
"""
from __future__ import annotations

from pathlib import Path

import torch

from .base import check_same_vocabulary
from .self_draft import truncated_model
from .vocab import with_subset_head

REDUCED = "draft.safetensors"


def load_draft_model(target_model: torch.nn.Module, path=None, self_draft_layers: int | None = None) -> torch.nn.Module:
    """The small LM a drafter drafts with: a Hugging Face or draft-v2 directory (e.g. in ``artifacts/``),
    or, with ``path=None``, the target's first ``self_draft_layers`` layers."""
    if path is not None:
        from .artifacts import resolve

        folder = resolve(path)
        if (folder / REDUCED).is_file():
            model = load_reduced_draft(target_model, folder)
        else:
            from transformers import AutoModelForCausalLM

            model = AutoModelForCausalLM.from_pretrained(folder, dtype=next(target_model.parameters()).dtype)
        check_same_vocabulary(model, target_model)
        return model.eval()
    if self_draft_layers is None:
        raise ValueError("load_draft_model needs a path or self_draft_layers")
    return truncated_model(target_model, int(self_draft_layers))


def load_reduced_draft(target_model: torch.nn.Module, folder: str | Path) -> torch.nn.Module:
    """A draft-v2 directory as a ``LlamaForCausalLM`` embedding through the target and projecting onto its subset."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from .artifacts import read_weights

    folder = Path(folder)
    dtype = next(target_model.parameters()).dtype
    config = AutoConfig.from_pretrained(folder)
    tensors = read_weights(folder / REDUCED)
    for key in ("embed_projection.weight", "embed_projection.in_features", "lm_head.weight", "lm_head.token_ids"):
        if key not in tensors:
            raise ValueError(f"{folder / REDUCED} lacks {key}: not a specdec draft-v2 artifact")
    target_embed = target_model.get_input_embeddings().weight
    width = int(tensors.pop("embed_projection.in_features")[0])
    if width != target_embed.shape[1] or config.vocab_size != target_embed.shape[0]:
        raise ValueError(
            f"draft {folder} was trained for a target with hidden size {width} and vocabulary {config.vocab_size}; "
            f"this target has hidden size {target_embed.shape[1]} and vocabulary {target_embed.shape[0]}")
    projection = tensors.pop("embed_projection.weight").to(dtype)
    head = tensors.pop("lm_head.weight").to(dtype)
    token_ids = tensors.pop("lm_head.token_ids")
    config.tie_word_embeddings = False
    model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    missing, unexpected = model.load_state_dict({k: v.to(dtype) for k, v in tensors.items()}, strict=False)
    if unexpected or set(missing) - {"model.embed_tokens.weight", "lm_head.weight"}:
        raise ValueError(f"{folder / REDUCED} does not match its config: missing {sorted(missing)}, "
                         f"unexpected {sorted(unexpected)}")
    with torch.no_grad():
        model.get_input_embeddings().weight.copy_(target_embed.detach().to(dtype) @ projection.T)
    return with_subset_head(model, token_ids, head)
