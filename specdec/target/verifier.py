"""The target model: prefill, verify a draft tree in one forward, commit the accepted path.

Wraps any Hugging Face causal LM that takes explicit ``position_ids`` and a 4D additive
attention mask (Llama and its kin in transformers 5).  The key/value cache holds every
committed token except the last one, the *root*; each verification feeds ``[root, *nodes]``
so that plain decoding is a verification of the empty tree.

Chains (plain decoding included) need no tree mask: the model's own causal mask is exactly
the chain's, so they pass a 2D padding mask (or none at all when no row is padded), and the
attention kernels take their fast causal path.  Only real trees pass a 4D mask.

The cache is a :class:`~specdec.target.kv.RaggedCache`: per row it knows which entries are real
and so each row's length (the root's position), and it realigns rows that accepted
different numbers of tokens.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch

from . import head as output_head
from .few_rows import few_row_linears
from .kernels import FALLBACK, FUSE_BYTES, Kernels, kernels_for
from .kv import RaggedCache
from .lean_llama import LeanLlama
from .lean_llama import supports as lean_supports
from .masks import padded_prefill_attention, tree_attention
from ..tree import DraftTree


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
    kernels: Kernels = FALLBACK  # the machine's product paths; ``cheap_head_rows`` guides greedy acceptance

    @property
    def cheap_rows(self) -> int:
        """Rows the output head multiplies for about the cost of one."""
        return self.kernels.cheap_head_rows

    def logits_at(self, slots: torch.Tensor) -> torch.Tensor:
        """Logits [B, S, V] at the slots ``slots`` [S]."""
        return self._project(self.hidden[:, slots])

    @property
    def logits(self) -> torch.Tensor:
        """[B, 1+N, V] logits at every slot."""
        return self._project(self.hidden)

    def _project(self, hidden: torch.Tensor) -> torch.Tensor:
        logits = output_head.project(self.head, hidden, self.kernels)
        if self.softcap:
            logits = torch.tanh(logits / self.softcap) * self.softcap
        return logits


class Target:
    """One target model and its key/value cache for one batch of sequences."""

    def __init__(self, model: torch.nn.Module, few_rows: bool = True, lean: bool = True,
                 kernels: Kernels | None = None):
        """``few_rows``: run the model's linear layers as ``W @ x.T`` for few rows (:mod:`specdec.target.few_rows`);
        how few, which counts are padded and whether to fuse come from ``kernels``, by default the ones
        profiled for this model and machine (:func:`specdec.target.kernels.kernels_for`; the fallback without a profile).

        ``lean``: plain Llama models run :class:`~specdec.target.lean_llama.LeanLlama`, the same
        mathematics from the same weights without Hugging Face's per-call plumbing;
        its q/k/v and gate/up products are fused where the kernels say it pays and that copy is at most
        ``FUSE_BYTES``.  Other families, and ``lean=False``, run the model's own forward.
        """
        if not hasattr(model, "config") or not hasattr(model.config, "vocab_size"):
            raise TypeError(f"target must be a Hugging Face causal LM, got {type(model).__name__}")
        self.model = model
        self.kernels = kernels if kernels is not None else kernels_for(model)
        self.lean = None
        if lean and lean_supports(model):
            self.lean = LeanLlama.for_model(model, fuse=self.kernels.fuse and fused_copy_bytes(model) <= FUSE_BYTES)
        self.decoder = model.get_decoder()
        self.head = model.get_output_embeddings()
        self.softcap = getattr(model.config, "final_logit_softcapping", None)
        self.cache: RaggedCache | None = None
        self.few_rows = few_rows

    @property
    def device(self) -> torch.device:
        return self.head.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.head.weight.dtype

    @property
    def lengths(self) -> torch.Tensor:
        """[B] real tokens cached per row: the position of each row's root."""
        return self.cache.lengths

    @torch.no_grad()
    def prefill(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Cache every prompt token but the last, which becomes the root.

        Returns the roots [B] and the final hidden states [B, T-1, H] over the cached prompt
        tokens (left-padded like ``input_ids``; garbage at padding).  ``attention_mask`` [B, T]
        marks real tokens (left padding is 0); the last column must be real in every row.
        """
        self.cache = RaggedCache(self.model.config, input_ids.shape[0], input_ids.device)
        context_mask = attention_mask[:, :-1].bool()
        hidden = torch.zeros(input_ids.shape[0], 0, self.model.config.hidden_size, dtype=self.dtype,
                             device=input_ids.device)
        if input_ids.shape[1] > 1:
            positions = (context_mask.long().cumsum(dim=1) - 1).clamp_min(0)
            mask = None
            if not bool(context_mask.all()):  # left padding; Hugging Face forwards get no fully masked query row
                mask = context_mask.long() if self.lean is not None else \
                    padded_prefill_attention(self.model.config, context_mask, self.dtype)
            hidden = self._forward(input_ids[:, :-1], mask, positions)
        self.cache.appended(context_mask)
        return input_ids[:, -1], hidden

    @torch.no_grad()
    def verify(self, roots: torch.Tensor, tree: DraftTree) -> Verification:
        """One backbone forward over ``[root, *nodes]`` with tree attention; the cache grows by 1+N."""
        b, n1 = roots.shape[0], tree.num_nodes + 1
        if tree.is_chain:
            mask = None
            if self.cache.padded:
                mask = torch.cat([self.cache.mask, self.cache.mask.new_ones(b, n1)], dim=1).long()
        else:
            mask = tree_attention(self.model.config, self.cache.mask, tree, self.cache.lengths, self.dtype)
        hidden = self._forward(tree.verify_inputs(roots), mask, tree.position_ids(self.cache.lengths))
        self.cache.appended(torch.ones(b, n1, dtype=torch.bool))
        return Verification(hidden, self.head, self.softcap, self.kernels)

    @torch.no_grad()
    def try_verify(self, roots: torch.Tensor, tree: DraftTree) -> Verification:
        """:meth:`verify`, then the cache as it was before (the root's and the nodes' entries dropped
        again): what a measurement of verification costs repeats on one context."""
        verification = self.verify(roots, tree)
        keep = self.cache.mask.clone()
        keep[:, self.cache.width - 1 - tree.num_nodes:] = False
        self.cache.keep(keep)
        return verification

    def _forward(self, input_ids, attention_mask, position_ids) -> torch.Tensor:
        """The backbone's final hidden states [B, T, H], the new entries appended to the cache."""
        if self.lean is not None:
            return self.lean(input_ids, attention_mask, position_ids, self.cache.layers,
                             self.kernels.linear_rows if self.few_rows else 0, self.kernels.padded_rows)
        with few_row_linears(self.decoder, self.few_rows, self.kernels):
            return self.decoder(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                                past_key_values=self.cache.kv, use_cache=True).last_hidden_state

    def commit(self, paths: list[list[int]], num_nodes: int) -> bool:
        """Keep each row's root and accepted nodes from the last verification; drop the rest.

        Rows that kept different numbers of nodes are realigned (EQSPEC): kept entries move
        right, padding grows on the left; returns whether that happened.  The token drawn after
        each path becomes that row's next root and is not cached.
        """
        if num_nodes == 0:
            return False
        width = self.cache.width
        keep = self.cache.mask.clone()
        keep[:, width - num_nodes:] = False  # the nodes, unless accepted
        rows = [row for row, path in enumerate(paths) for _ in path]
        if rows:
            cols = [node + width - num_nodes for path in paths for node in path]
            keep[rows, cols] = True
        return self.cache.keep(keep)

    def take_rows(self, rows: torch.Tensor) -> "Target":
        """The same model with a copy of batch rows ``rows`` of the cache (this one unchanged)."""
        out = self._sibling()
        out.cache = self.cache.take_rows(rows)
        return out

    def join(self, others: list["Target"]) -> "Target":
        """One batch of the rows of ``[self, *others]``, in order (left-padded to a common width)."""
        out = self._sibling()
        out.cache = RaggedCache.concat([self.cache] + [o.cache for o in others])
        return out

    def _sibling(self) -> "Target":
        """The same model and settings, no cache."""
        out = copy.copy(self)
        out.cache = None
        return out


def fused_copy_bytes(model: torch.nn.Module) -> int:
    """Bytes a fused LeanLlama would copy: the q, k, v, gate and up weights of every layer."""
    total = 0
    for layer in model.get_decoder().layers:
        for w in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj,
                  layer.mlp.gate_proj, layer.mlp.up_proj):
            total += w.weight.numel() * w.weight.element_size()
    return total
