"""A chain drafted autoregressively by a small causal LM (Leviathan et al.; Chen et al.)."""
from __future__ import annotations

import copy

import torch

from ..sampling import choose
from ..tree import DraftTree
from .base import CommitUpdate, Drafter, DraftRequest, check_same_vocabulary
from .draft_cache import DraftCache
from .draft_loading import load_draft_model  # noqa: F401  (public here too)
from .self_draft import truncated_model
from .vocab import SubsetHead


class DraftModel(Drafter):
    """Drafts a chain one token at a time with ``model``, keeping its own KV cache.

    The draft's cache follows the committed sequence row by row (:class:`DraftCache`): after
    each verification it keeps what the target accepted, and the next proposal first feeds
    what it has not seen (the correction or bonus token) before drafting on.
    """

    def __init__(self, model: torch.nn.Module, num_tokens: int = 4):
        if not isinstance(model, torch.nn.Module) or not hasattr(model, "config"):
            raise TypeError(f"DraftModel needs a Hugging Face causal LM, got {type(model).__name__}")
        if int(num_tokens) < 1:
            raise ValueError(f"num_tokens must be >= 1, got {num_tokens}")
        self.model = model
        self.num_tokens = int(num_tokens)
        self._cache: DraftCache | None = None

    @classmethod
    def from_pretrained(cls, path, target_model: torch.nn.Module, num_tokens: int | None = None) -> "DraftModel":
        """A trained draft LM (a draft-v2 artifact or a Hugging Face folder) drafting chains for ``target_model``.

        ``num_tokens``, the longest chain (the goodput policy drafts shorter ones when they pay),
        defaults to the card's ``serving.num_tokens``, else 4."""
        from .artifacts import CARD, read_card, resolve

        folder = resolve(path)
        card = read_card(folder) if (folder / CARD).is_file() else {}
        if num_tokens is None:
            num_tokens = int((card.get("serving") or {}).get("num_tokens", 4))
        return cls(load_draft_model(target_model, folder), num_tokens=num_tokens)

    @classmethod
    def from_target_layers(cls, target_model: torch.nn.Module, num_layers: int, num_tokens: int = 4) -> "DraftModel":
        """A self-draft: the target's first ``num_layers`` layers, sharing its weights (no training)."""
        return cls(truncated_model(target_model, num_layers), num_tokens=num_tokens)

    def start(self, target_model, input_ids, attention_mask, hidden=None) -> None:
        check_same_vocabulary(self.model, target_model)
        self._cache = DraftCache.for_model(self.model, input_ids, attention_mask)

    @torch.no_grad()
    def propose(self, request: DraftRequest) -> DraftTree:
        depth = request.max_depth
        head = self.model.get_output_embeddings()
        # greedy over a reduced vocabulary: the argmax of the subset's logits, mapped to target ids,
        # is the argmax of the full logits (-inf elsewhere) without building them
        subset = head.token_ids if isinstance(head, SubsetHead) and not request.sampling.do_sample else None
        logits = self._cache.catch_up(subset=subset is not None)
        drafted, laws = [], []
        for step in range(depth):
            if subset is not None:
                token, law = subset[logits.argmax(dim=-1)], None
            else:
                token, law = choose(logits, request.sampling, request.rng)
            drafted.append(token)
            laws.append(law)
            if step + 1 < depth:
                logits = self._cache.feed_chain(token, subset=subset is not None)
        draft_probs = None if laws[0] is None else torch.stack(laws, dim=1)
        return DraftTree.chain(torch.stack(drafted, dim=1), draft_probs)

    def commit(self, update: CommitUpdate) -> None:
        self._cache.commit(update)

    def take_rows(self, rows: torch.Tensor) -> "DraftModel":
        out = copy.copy(self)
        out._cache = self._cache.take_rows(rows)
        return out

    def join(self, others: list["DraftModel"]) -> "DraftModel":
        out = copy.copy(self)
        out._cache = DraftCache.concat([self._cache] + [o._cache for o in others])
        return out
