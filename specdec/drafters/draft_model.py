"""A chain drafted autoregressively by a small causal LM (Leviathan et al.; Chen et al.)."""
from __future__ import annotations

import copy

import torch

from ..acceptance import Acceptance
from ..kv import RaggedCache
from ..sampling import choose
from ..tree import DraftTree
from .base import DraftRequest, Drafter, check_same_vocabulary
from .self_draft import truncated_model


def load_draft_model(target_model: torch.nn.Module, path=None, self_draft_layers: int | None = None) -> torch.nn.Module:
    """The small LM a drafter drafts with: a Hugging Face directory (e.g. a distilled draft in
    ``artifacts/``), or, with ``path=None``, the target's first ``self_draft_layers`` layers."""
    if path is not None:
        from transformers import AutoModelForCausalLM

        from ..artifacts import resolve

        model = AutoModelForCausalLM.from_pretrained(resolve(path), dtype=next(target_model.parameters()).dtype)
        check_same_vocabulary(model, target_model)
        return model.eval()
    if self_draft_layers is None:
        raise ValueError("load_draft_model needs a path or self_draft_layers")
    return truncated_model(target_model, int(self_draft_layers))


def catch_up_block(request: DraftRequest, cached: torch.Tensor):
    """The committed tokens each row's draft cache lacks, right-aligned in one block.

    Returns ``(tokens [B, W], real [B, W], positions [B, W])``; every row's last committed token
    (its root) sits in the last column.
    """
    sequences, mask = request.sequences, request.attention_mask.bool()
    committed = mask.sum(dim=1)
    missing = committed - cached
    width = int(missing.max())
    cols = torch.arange(width, device=sequences.device)[None]
    real = cols >= (width - missing)[:, None]
    positions = (cached[:, None] + cols - (width - missing)[:, None]).clamp_min(0)
    return sequences[:, -width:], real, positions


class DraftModel(Drafter):
    """Drafts ``num_tokens`` tokens one at a time with ``model``, keeping its own KV cache.

    The draft's cache follows the committed sequence row by row: after each verification it
    keeps what the target accepted, and the next proposal first feeds what it has not seen
    (the correction or bonus token) before drafting on.
    """

    def __init__(self, model: torch.nn.Module, num_tokens: int = 4):
        if not isinstance(model, torch.nn.Module) or not hasattr(model, "config"):
            raise TypeError(f"DraftModel needs a Hugging Face causal LM, got {type(model).__name__}")
        if int(num_tokens) < 1:
            raise ValueError(f"num_tokens must be >= 1, got {num_tokens}")
        self.model = model
        self.num_tokens = int(num_tokens)
        self._cache: RaggedCache | None = None
        self._committed: torch.Tensor | None = None  # [B] committed tokens when last proposing
        self._fed_drafts = 0  # drafted tokens fed into the cache by the last proposal

    @classmethod
    def from_target_layers(cls, target_model: torch.nn.Module, num_layers: int, num_tokens: int = 4) -> "DraftModel":
        """A self-draft: the target's first ``num_layers`` layers, sharing its weights (no training)."""
        return cls(truncated_model(target_model, num_layers), num_tokens=num_tokens)

    def start(self, target_model, input_ids, attention_mask) -> None:
        check_same_vocabulary(self.model, target_model)
        self._cache = RaggedCache(self.model.config, input_ids.shape[0], input_ids.device)

    def _forward(self, tokens, real, positions):
        attention = torch.cat([self._cache.mask, real], dim=1).long()
        logits = self.model(input_ids=tokens, attention_mask=attention, position_ids=positions,
                            past_key_values=self._cache.kv, use_cache=True, logits_to_keep=1).logits[:, -1]
        self._cache.appended(real)
        return logits

    @torch.no_grad()
    def propose(self, request: DraftRequest) -> DraftTree:
        self._committed = request.attention_mask.sum(dim=1)
        tokens, real, positions = catch_up_block(request, self._cache.lengths)
        drafted, laws = [], []
        for step in range(request.num_tokens):
            logits = self._forward(tokens, real, positions)
            token, law = choose(logits, request.sampling, request.rng)
            drafted.append(token)
            laws.append(law)
            if step + 1 < request.num_tokens:
                tokens, real = token[:, None], torch.ones_like(token[:, None], dtype=torch.bool)
                positions = self._cache.lengths[:, None]
        self._fed_drafts = request.num_tokens - 1
        draft_probs = None if laws[0] is None else torch.stack(laws, dim=1)
        return DraftTree.chain(torch.stack(drafted, dim=1), draft_probs)

    def commit(self, acceptance: Acceptance, tree: DraftTree) -> None:
        accepted = torch.tensor(acceptance.num_accepted, device=self._committed.device)
        valid = self._committed + accepted.clamp(max=self._fed_drafts)
        mask = self._cache.mask
        self._cache.keep(mask & (mask.long().cumsum(dim=1) <= valid[:, None]))

    def take_rows(self, rows: torch.Tensor) -> "DraftModel":
        out = copy.copy(self)
        out._cache = self._cache.take_rows(rows)
        out._committed = self._committed.index_select(0, rows) if self._committed is not None else None
        return out

    def join(self, others: list["DraftModel"]) -> "DraftModel":
        out = copy.copy(self)
        out._cache = RaggedCache.concat([self._cache] + [o._cache for o in others])
        out._committed = None  # rows are joined between steps, before the next proposal
        return out
