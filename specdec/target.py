"""The target model: prefill, verify a draft tree in one forward, commit the accepted path.

Wraps any Hugging Face causal LM that takes a 4D additive attention mask and explicit
``position_ids`` (Llama and its kin in transformers 5).  The key/value cache holds every
committed token except the last one, the *root*; each verification feeds ``[root, *nodes]``
so that plain decoding is a verification of the empty tree.

The cache is a :class:`~specdec.kv.RaggedCache`: per row it knows which entries are real
and so each row's length (the root's position), and it realigns rows that accepted
different numbers of tokens.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from .kv import RaggedCache
from .tree import DraftTree


@dataclass
class Verification:
    """The target's view of one draft tree: last hidden states, and logits on demand.

    The output head over a large vocabulary costs as much as several tokens of the backbone,
    so logits are computed only for the slots that are asked for (greedy acceptance needs
    just the root and the slots along the accepted path).
    """

    hidden: torch.Tensor  # [B, 1+N, H] final (normed) hidden state at each slot, root first
    head: torch.nn.Module  # the model's output embedding
    softcap: float | None = None

    def logits_at(self, slots: torch.Tensor) -> torch.Tensor:
        """Logits [B, S, V] at the slots ``slots`` [S]."""
        logits = self.head(self.hidden[:, slots])
        if self.softcap:
            logits = torch.tanh(logits / self.softcap) * self.softcap
        return logits

    @property
    def logits(self) -> torch.Tensor:
        """[B, 1+N, V] logits at every slot."""
        return self.logits_at(torch.arange(self.hidden.shape[1], device=self.hidden.device))


class Target:
    """One target model and its key/value cache for one batch of sequences."""

    def __init__(self, model: torch.nn.Module):
        if not hasattr(model, "config") or not hasattr(model.config, "vocab_size"):
            raise TypeError(f"target must be a Hugging Face causal LM, got {type(model).__name__}")
        self.model = model
        self.cache: RaggedCache | None = None
        self.prefill_hidden: torch.Tensor | None = None  # [B, H] after prefill (None for 1-token prompts)
        self.forwards = 0

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @property
    def lengths(self) -> torch.Tensor:
        """[B] real tokens cached per row: the position of each row's root."""
        return self.cache.lengths

    @torch.no_grad()
    def prefill(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Cache every prompt token but the last, which becomes the root; returns the roots [B].

        ``attention_mask`` [B, T] marks real tokens (left padding is 0); the last column must be
        real in every row.
        """
        self.cache = RaggedCache(self.model.config, input_ids.shape[0], input_ids.device)
        self.prefill_hidden = None
        context_mask = attention_mask[:, :-1].bool()
        if input_ids.shape[1] > 1:
            positions = (context_mask.long().cumsum(dim=1) - 1).clamp_min(0)
            out = self.model.get_decoder()(
                input_ids=input_ids[:, :-1],
                attention_mask=context_mask.long(),
                position_ids=positions,
                past_key_values=self.cache.kv,
                use_cache=True,
            )
            self.prefill_hidden = out.last_hidden_state[:, -1]  # before each root: what head drafters read
            self.forwards += 1
        self.cache.appended(context_mask)
        return input_ids[:, -1]

    @torch.no_grad()
    def verify(self, roots: torch.Tensor, tree: DraftTree) -> Verification:
        """One backbone forward over ``[root, *nodes]`` with tree attention; the cache grows by 1+N."""
        out = self.model.get_decoder()(
            input_ids=tree.verify_inputs(roots),
            attention_mask=tree.attention_mask(self.cache.mask, self.dtype),
            position_ids=tree.position_ids(self.cache.lengths),
            past_key_values=self.cache.kv,
            use_cache=True,
        )
        self.forwards += 1
        self.cache.appended(torch.ones(roots.shape[0], 1 + tree.num_nodes, dtype=torch.bool))
        softcap = getattr(self.model.config, "final_logit_softcapping", None)
        return Verification(out.last_hidden_state, self.model.get_output_embeddings(), softcap)

    def commit(self, paths: list[list[int]], num_nodes: int) -> bool:
        """Keep each row's root and accepted nodes from the last verification; drop the rest.

        Rows that kept different numbers of nodes are realigned (EQSPEC): kept entries move
        right, padding grows on the left; returns whether that happened.  The token drawn after
        each path becomes that row's next root and is not cached.
        """
        width = self.cache.width
        keep = self.cache.mask.clone()
        keep[:, width - num_nodes:] = False  # the nodes, unless accepted
        for row, path in enumerate(paths):
            if path:
                keep[row, torch.tensor(path, device=keep.device) + width - num_nodes] = True
        return self.cache.keep(keep)

    def take_rows(self, rows: torch.Tensor) -> "Target":
        """The same model with a copy of batch rows ``rows`` of the cache (this one unchanged)."""
        out = Target(self.model)
        out.cache = self.cache.take_rows(rows)
        return out

    def join(self, others: list["Target"]) -> "Target":
        """One batch of the rows of ``[self, *others]``, in order (left-padded to a common width)."""
        out = Target(self.model)
        out.cache = RaggedCache.concat([self.cache] + [o.cache for o in others])
        return out

