"""One key/value cache for every drafter that runs a model of its own (DraftModel, RecursiveTree).

Each row's cache holds a prefix of that row's committed tokens; ``pending[r]`` holds the rest,
which always ends with the root.  A proposal first *catches up* (feeds the pending tokens, and
gets the draft's logits at each root), then *feeds* drafted nodes, each depth in one forward
(a chain through the model's own causal mask, a tree through a 4D mask: the committed context,
the node's fed ancestors and itself).  After the step, :meth:`DraftCache.commit` keeps the fed
nodes the target accepted and queues what was accepted but never fed, plus the new root, so the
next catch-up feeds only those: one or two tokens per row, not the history.
"""
from __future__ import annotations

import torch

from ..head import logits as head_logits
from ..kv import RaggedCache
from ..tree import DraftTree, additive_mask
from .base import CommitUpdate


class DraftCache:
    def __init__(self, model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor):
        self.model = model
        self.kv = RaggedCache(model.config, input_ids.shape[0], input_ids.device)
        self.pending: list[list[int]] = [row[m.bool()].tolist() for row, m in zip(input_ids, attention_mask)]
        self.context = 0  # cache columns holding committed tokens; fed drafts follow them
        self.fed_nodes: list[int] = []  # the tree node of each fed draft column, in order

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def _forward(self, tokens, real, positions, mask, logits_to_keep: int) -> torch.Tensor:
        """The draft's logits at the last ``logits_to_keep`` columns (0: all) of one forward over ``tokens``."""
        out = self.model.get_decoder()(input_ids=tokens, attention_mask=mask, position_ids=positions,
                                       past_key_values=self.kv.kv, use_cache=True)
        self.kv.appended(real)
        hidden = out.last_hidden_state
        return head_logits(self.model, hidden[:, -logits_to_keep:] if logits_to_keep else hidden)

    @torch.no_grad()
    def catch_up(self) -> torch.Tensor:
        """Feed every row's pending tokens; the draft's logits [B, V] at each row's root."""
        counts = [len(p) for p in self.pending]
        width = max(counts)
        if min(counts) < 1:
            raise RuntimeError("a draft cache caught up twice without a commit in between")
        device = self.kv.mask.device
        tokens = torch.zeros(len(counts), width, dtype=torch.long)
        real = torch.zeros(len(counts), width, dtype=torch.bool)
        for row, pending in enumerate(self.pending):
            tokens[row, width - len(pending):] = torch.tensor(pending, dtype=torch.long)
            real[row, width - len(pending):] = True
        tokens, real = tokens.to(device), real.to(device)
        shift = width - torch.tensor(counts, device=device)
        positions = (self.kv.lengths[:, None] + torch.arange(width, device=device) - shift[:, None]).clamp_min(0)
        mask = None
        if self.kv.padded or min(counts) < width:
            mask = torch.cat([self.kv.mask, real], dim=1).long()
        logits = self._forward(tokens, real, positions, mask, logits_to_keep=1)[:, -1]
        self.pending = [[] for _ in counts]
        self.context = self.kv.width
        self.fed_nodes = []
        return logits

    @torch.no_grad()
    def feed_chain(self, tokens: torch.Tensor) -> torch.Tensor:
        """Feed the next node [B] of a chain (its ancestors fed before); its logits [B, V]."""
        real = torch.ones(tokens.shape[0], 1, dtype=torch.bool, device=tokens.device)
        mask = torch.cat([self.kv.mask, real], dim=1).long() if self.kv.padded else None
        positions = self.kv.lengths[:, None]  # the context and every fed node are on the path
        logits = self._forward(tokens[:, None], real, positions, mask, logits_to_keep=1)[:, -1]
        self.fed_nodes.append(len(self.fed_nodes))
        return logits

    @torch.no_grad()
    def feed(self, tree: DraftTree, nodes: list[int]) -> torch.Tensor:
        """Feed tree nodes ``nodes`` (one depth; their ancestors fed before); their logits [B, M, V]."""
        device = self.kv.mask.device
        b, m = tree.batch_size, len(nodes)
        index = torch.tensor(nodes, dtype=torch.long, device=device)
        depth = tree.depth.index_select(1, index)
        positions = self.kv.mask[:, :self.context].sum(dim=1)[:, None] - 1 + depth
        real = torch.ones(b, m, dtype=torch.bool, device=device)
        if tree.is_chain and nodes == list(range(len(self.fed_nodes), len(self.fed_nodes) + m)):
            mask = torch.cat([self.kv.mask, real], dim=1).long() if self.kv.padded else None
        else:  # each node sees the committed context, its fed ancestors and itself
            seen = torch.tensor(self.fed_nodes + nodes, dtype=torch.long, device=device) + 1
            ancestry = tree.slot_ancestry[:, index + 1][:, :, seen]  # [B, M, F + M]
            context = self.kv.mask[:, :self.context][:, None, :].expand(b, m, self.context)
            mask = additive_mask(torch.cat([context, ancestry], dim=2), self.dtype)
        logits = self._forward(tree.tokens.index_select(1, index), real, positions, mask, logits_to_keep=0)
        self.fed_nodes.extend(nodes)
        return logits

    def commit(self, update: CommitUpdate) -> None:
        """Keep the fed nodes on each accepted path; queue the accepted rest and the new root."""
        column = {node: j for j, node in enumerate(self.fed_nodes)} if update.proposed else {}
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
            rest = path[kept:]
            self.pending[row].extend(update.tree.tokens[row, rest].tolist() + [int(update.roots[row])])
        if keep is not None:
            self.kv.keep(keep)
        self.context = self.kv.width
        self.fed_nodes = []

    def take_rows(self, rows: torch.Tensor) -> "DraftCache":
        """A copy of rows ``rows`` (may be taken between a proposal and its commit)."""
        out = DraftCache.__new__(DraftCache)
        out.model = self.model
        out.kv = self.kv.take_rows(rows)
        out.pending = [list(self.pending[r]) for r in rows.tolist()]
        out.context = self.context - (self.kv.width - out.kv.width)  # take_rows trims common left padding
        out.fed_nodes = list(self.fed_nodes)
        return out

    @staticmethod
    def concat(caches: list["DraftCache"]) -> "DraftCache":
        """The rows of ``caches`` in order, as one batch (between steps)."""
        out = DraftCache.__new__(DraftCache)
        out.model = caches[0].model
        out.kv = RaggedCache.concat([c.kv for c in caches])
        out.pending = [list(p) for c in caches for p in c.pending]
        out.context = out.kv.width
        out.fed_nodes = []
        return out
