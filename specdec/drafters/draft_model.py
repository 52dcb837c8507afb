"""A chain drafted autoregressively by a small causal LM (Leviathan et al.; Chen et al.)."""
from __future__ import annotations

import torch
from transformers import DynamicCache

from ..acceptance import Acceptance
from ..sampling import choose
from ..tree import DraftTree
from .base import DraftRequest, Drafter, check_same_vocabulary
from .self_draft import truncated_model


class DraftModel(Drafter):
    """Drafts ``num_tokens`` tokens one at a time with ``model``, keeping its own KV cache.

    The draft's cache follows the committed sequence: after each verification it is cropped
    to the tokens the target accepted, and the next proposal feeds what it has not seen (the
    correction or bonus token) before drafting on.
    """

    def __init__(self, model: torch.nn.Module, num_tokens: int = 4):
        if not isinstance(model, torch.nn.Module) or not hasattr(model, "config"):
            raise TypeError(f"DraftModel needs a Hugging Face causal LM, got {type(model).__name__}")
        if int(num_tokens) < 1:
            raise ValueError(f"num_tokens must be >= 1, got {num_tokens}")
        self.model = model
        self.num_tokens = int(num_tokens)
        self._cache: DynamicCache | None = None
        self._cached = 0  # columns of the committed sequence held in the cache
        self._proposed_from = 0  # sequence length when the last tree was proposed
        self._fed_drafts = 0  # drafted tokens fed into the cache by the last proposal

    @classmethod
    def from_target_layers(cls, target_model: torch.nn.Module, num_layers: int, num_tokens: int = 4) -> "DraftModel":
        """A self-draft: the target's first ``num_layers`` layers, sharing its weights (no training)."""
        return cls(truncated_model(target_model, num_layers), num_tokens=num_tokens)

    def start(self, target_model, input_ids, attention_mask) -> None:
        check_same_vocabulary(self.model, target_model)
        if input_ids.shape[0] != 1:
            raise NotImplementedError("DraftModel drafts for batch size 1 until EQSPEC realignment lands")
        self._cache = DynamicCache(config=self.model.config)
        self._cached = 0

    @torch.no_grad()
    def propose(self, request: DraftRequest) -> DraftTree:
        sequences = request.sequences
        new = sequences[:, self._cached:]
        positions = torch.arange(self._cached, sequences.shape[1], device=sequences.device)[None]
        tokens, laws = [], []
        for step in range(request.num_tokens):
            logits = self.model(
                input_ids=new,
                position_ids=positions,
                past_key_values=self._cache,
                use_cache=True,
                logits_to_keep=1,
            ).logits[:, -1]
            token, law = choose(logits, request.sampling, request.rng)
            tokens.append(token)
            laws.append(law)
            new = token[:, None]
            positions = positions[:, -1:] + 1
        self._proposed_from = sequences.shape[1]
        self._fed_drafts = request.num_tokens - 1
        self._cached = self._proposed_from + self._fed_drafts
        draft_probs = None if laws[0] is None else torch.stack(laws, dim=1)
        return DraftTree.chain(torch.stack(tokens, dim=1), draft_probs)

    def commit(self, acceptance: Acceptance, tree: DraftTree) -> None:
        valid = self._proposed_from + min(acceptance.num_accepted[0], self._fed_drafts)
        if self._cached > valid:
            self._cache.crop(valid - self._cached)
            self._cached = valid
