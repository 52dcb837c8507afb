"""One key/value cache for every drafter that runs a model of its own (DraftModel, RecursiveTree, Chimera).

Each row's cache holds a prefix of that row's committed history; ``pending[r]`` holds the rest:
for a draft LM, committed tokens (always ending with the root); for a draft that attends over the
target's states (Chimera), the target's hidden states of committed tokens.  A proposal first
*catches up* (one forward over every row's pending items, right-aligned), then *feeds* drafted
nodes, each depth in one forward: a chain through the model's own causal mask, a tree through a
4D mask (the committed context, the node's fed ancestors and itself).  After the step,
:meth:`DraftCache.commit` keeps the fed nodes the target accepted (or none, for drafts whose
context entries differ from their draft entries) and queues the rest of what was committed, so the
next catch-up feeds one or two items per row, never the history.

Draft LMs get their forward from :meth:`DraftCache.for_model`; other drafts pass their own
``run(items, real, positions, mask)`` callables to :meth:`catch_up` and :meth:`feed`.
"""
from __future__ import annotations

from typing import Callable

import torch

from ..target.head import logits as head_logits
from ..target.kv import RaggedCache
from ..tree import DraftTree, additive_mask
from .base import CommitUpdate
from ..target.lean_llama import LeanLlama, supports


class DraftCache:
    def __init__(self, kv_config, pending: list[list], device, dtype: torch.dtype, model: torch.nn.Module | None = None):
        self.model = model
        self.lean = LeanLlama.for_model(model) if model is not None and supports(model) else None
        self.dtype = dtype
        self.kv = RaggedCache(kv_config, len(pending), device)
        self.pending = pending  # per row: committed items not in the cache yet, in order
        self.context = 0  # cache columns holding committed items; fed drafts follow them
        self.fed_nodes: list[int] = []  # the tree node of each fed draft column, in order

    @classmethod
    def for_model(cls, model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> "DraftCache":
        """The cache of a draft causal LM over the prompts: every prompt token is pending."""
        pending = [row[m.bool()].tolist() for row, m in zip(input_ids, attention_mask)]
        return cls(model.config, pending, input_ids.device, next(model.parameters()).dtype, model)

    # ---- a draft LM's forward ------------------------------------------------------------------
    def _lm(self, logits_to_keep: int, subset: bool = False) -> Callable:
        """A draft LM's forward; its logits over the full vocabulary, or with ``subset`` over its
        :class:`~specdec.drafters.vocab.SubsetHead`'s tokens only (in the head's order)."""
        def run(tokens, real, positions, mask):
            if not isinstance(tokens, torch.Tensor):  # pending token lists, right-aligned
                tokens = _right_aligned(tokens, real.shape[1], real.device)
            if self.lean is not None:
                hidden = self.lean(tokens, mask, positions, self.kv.layers)
            else:
                hidden = self.model.get_decoder()(input_ids=tokens, attention_mask=mask, position_ids=positions,
                                                  past_key_values=self.kv.kv, use_cache=True).last_hidden_state
            hidden = hidden[:, -logits_to_keep:] if logits_to_keep else hidden
            return self.model.get_output_embeddings().subset_logits(hidden) if subset else head_logits(self.model, hidden)
        return run

    # ---- catching up ---------------------------------------------------------------------------
    @torch.no_grad()
    def catch_up(self, run: Callable | None = None, subset: bool = False):
        """Feed every row's pending items; ``run``'s output (default: a draft LM's logits [B, V] at the
        roots, or [B, V'] over its subset head's tokens with ``subset``)."""
        counts = [len(p) for p in self.pending]
        width = max(counts)
        if width == 0:
            raise RuntimeError("nothing to catch up: a draft cache caught up twice without a commit in between")
        device = self.kv.mask.device
        real = torch.zeros(len(counts), width, dtype=torch.bool)
        for row, count in enumerate(counts):
            real[row, width - count:] = True
        real = real.to(device)
        shift = width - torch.tensor(counts, device=device)
        positions = (self.kv.lengths[:, None] + torch.arange(width, device=device) - shift[:, None]).clamp_min(0)
        mask = None
        if self.kv.padded or min(counts) < width:
            mask = torch.cat([self.kv.mask, real], dim=1).long()
        if run is None:
            out = self._lm(1, subset)(self.pending, real, positions, mask)[:, -1]
        else:
            out = run(self.pending, real, positions, mask)
        self.kv.appended(real)
        self.pending = [[] for _ in counts]
        self.context = self.kv.width
        self.fed_nodes = []
        return out

    # ---- feeding drafted nodes -------------------------------------------------------------------
    @torch.no_grad()
    def feed_chain(self, tokens: torch.Tensor, subset: bool = False) -> torch.Tensor:
        """Feed the next node [B] of a draft LM's chain (its ancestors fed before); its logits [B, V]
        (with ``subset``, [B, V'] over its subset head's tokens)."""
        real = torch.ones(tokens.shape[0], 1, dtype=torch.bool, device=tokens.device)
        mask = torch.cat([self.kv.mask, real], dim=1).long() if self.kv.padded else None
        positions = self.kv.lengths[:, None]  # the context and every fed node are on the path
        logits = self._lm(1, subset)(tokens[:, None], real, positions, mask)[:, -1]
        self.kv.appended(real)
        self.fed_nodes.append(len(self.fed_nodes))
        return logits

    @torch.no_grad()
    def feed(self, tree: DraftTree, nodes: list[int], run: Callable | None = None, additive: bool = True):
        """Feed tree nodes ``nodes`` (one depth; their ancestors fed before); ``run``'s output.

        The default ``run`` is a draft LM's (logits [B, M, V] at the nodes).  A custom ``run`` gets
        the nodes' tokens [B, M], their positions, and the mask: a 4D additive one, or with
        ``additive=False`` booleans [B, M, C+F+M] (True = may attend).
        """
        device = self.kv.mask.device
        b, m = tree.batch_size, len(nodes)
        index = torch.tensor(nodes, dtype=torch.long, device=device)
        depth = tree.depth.index_select(1, index)
        positions = self.kv.mask[:, :self.context].sum(dim=1)[:, None] - 1 + depth
        real = torch.ones(b, m, dtype=torch.bool, device=device)
        chain = tree.is_chain and nodes == list(range(len(self.fed_nodes), len(self.fed_nodes) + m))
        if chain and additive:
            mask = torch.cat([self.kv.mask, real], dim=1).long() if self.kv.padded else None
        else:  # each node sees the committed context, its fed ancestors and itself
            seen = torch.tensor(self.fed_nodes + nodes, dtype=torch.long, device=device) + 1
            ancestry = tree.slot_ancestry[:, index + 1][:, :, seen]  # [B, M, F + M]
            context = self.kv.mask[:, :self.context][:, None, :].expand(b, m, self.context)
            visible = torch.cat([context, ancestry], dim=2)
            mask = additive_mask(visible, self.dtype) if additive else visible
        out = (run or self._lm(0))(tree.tokens.index_select(1, index), real, positions, mask)
        self.kv.appended(real)
        self.fed_nodes.extend(nodes)
        return out

    # ---- after the step ----------------------------------------------------------------------------
    def commit(self, update: CommitUpdate, keep_accepted: bool = True, items: list[list] | None = None) -> None:
        """Keep the fed nodes on each accepted path (unless ``keep_accepted`` is False); queue the rest.

        The queued items default to a draft LM's: the accepted tokens that were never fed, then the
        new root.  ``items`` replaces them (per row, what to catch up next).
        """
        column = {node: j for j, node in enumerate(self.fed_nodes)} if update.proposed and keep_accepted else {}
        keep = None
        if self.kv.width > self.context:
            keep = self.kv.mask.clone()
            keep[:, self.context:] = False
        for row, path in enumerate(update.paths):
            kept = 0
            for node in path:
                if node not in column:
                    break
                keep[row, self.context + column[node]] = True
                kept += 1
            if items is None:
                self.pending[row].extend(update.tree.tokens[row, path[kept:]].tolist() + [int(update.roots[row])])
            else:
                self.pending[row].extend(items[row])
        if keep is not None:
            self.kv.keep(keep)
        self.context = self.kv.width
        self.fed_nodes = []

    def take_rows(self, rows: torch.Tensor) -> "DraftCache":
        """A copy of rows ``rows`` (may be taken between a proposal and its commit)."""
        out = DraftCache.__new__(DraftCache)
        out.model, out.lean, out.dtype = self.model, self.lean, self.dtype
        out.kv = self.kv.take_rows(rows)
        out.pending = [list(self.pending[r]) for r in rows.tolist()]
        out.context = self.context - (self.kv.width - out.kv.width)  # take_rows trims common left padding
        out.fed_nodes = list(self.fed_nodes)
        return out

    @staticmethod
    def concat(caches: list["DraftCache"]) -> "DraftCache":
        """The rows of ``caches`` in order, as one batch (between steps)."""
        out = DraftCache.__new__(DraftCache)
        out.model, out.lean, out.dtype = caches[0].model, caches[0].lean, caches[0].dtype
        out.kv = RaggedCache.concat([c.kv for c in caches])
        out.pending = [list(p) for c in caches for p in c.pending]
        out.context = out.kv.width
        out.fed_nodes = []
        return out


def _right_aligned(rows: list[list[int]], width: int, device) -> torch.Tensor:
    tokens = torch.zeros(len(rows), width, dtype=torch.long)
    for r, row in enumerate(rows):
        if row:
            tokens[r, width - len(row):] = torch.tensor(row, dtype=torch.long)
    return tokens.to(device)
