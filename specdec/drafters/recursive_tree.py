"""Recursive Speculative Decoding (Jeon et al., 2024): draft trees sampled without replacement.

At depth d every frontier node gets ``branching[d-1]`` distinct children drawn without
replacement from the draft's processed law (Gumbel-Top-k), one draft forward per depth for the
whole frontier with tree attention.  Siblings are never the same token, and the verifier's
recursive rejection sampling keeps the target's law exactly.  With greedy decoding the
children are the draft's top-b tokens.
"""
from __future__ import annotations

import torch
from transformers import DynamicCache

from ..acceptance import Acceptance
from ..sampling import processed_probs
from ..target import keep_cache_entries
from ..tree import DraftTree
from .base import DraftRequest, Drafter, check_same_vocabulary

METHODS = ("gumbel_topk",)


def level_sizes(branching: tuple[int, ...], max_nodes: int | None) -> list[list[int]]:
    """Children per frontier node at each depth, under the node budget.

    When a full level would exceed ``max_nodes``, only the first frontier nodes (the earliest
    drawn) get children, until the budget is spent; deeper levels are then dropped.
    """
    plan, frontier, total = [], 1, 0
    for b in branching:
        counts = []
        for _ in range(frontier):
            room = b if max_nodes is None else max(0, min(b, max_nodes - total))
            counts.append(room)
            total += room
        if sum(counts) == 0:
            break
        plan.append(counts)
        frontier = sum(counts)
    return plan


class RecursiveTree(Drafter):
    """Draft trees of shape ``branching`` from a small causal LM, sampled without replacement."""

    def __init__(self, model: torch.nn.Module, branching=(3, 2, 1), method: str = "gumbel_topk",
                 max_nodes: int | None = None):
        if not isinstance(model, torch.nn.Module) or not hasattr(model, "config"):
            raise TypeError(f"RecursiveTree needs a Hugging Face causal LM, got {type(model).__name__}")
        branching = tuple(int(b) for b in branching)
        if not branching or min(branching) < 1:
            raise ValueError(f"branching must be a non-empty sequence of ints >= 1, got {branching}")
        if method not in METHODS:
            raise ValueError(f"unknown method {method!r}; choose one of {METHODS}")
        if max_nodes is not None and int(max_nodes) < 1:
            raise ValueError(f"max_nodes must be >= 1, got {max_nodes}")
        self.model = model
        self.branching = branching
        self.method = method
        self.max_nodes = None if max_nodes is None else int(max_nodes)
        self.num_tokens = len(branching)
        self._cache: DynamicCache | None = None
        self._cached = 0
        self._context = 0  # committed tokens cached when the last tree was proposed
        self._fed: list[int] = []  # tree nodes whose key/values sit in the cache, in order

    @property
    def num_nodes(self) -> int:
        """Nodes of a full tree under the budget (what one verification costs the target)."""
        return sum(sum(level) for level in level_sizes(self.branching, self.max_nodes))

    def start(self, target_model, input_ids, attention_mask) -> None:
        check_same_vocabulary(self.model, target_model)
        if input_ids.shape[0] != 1:
            raise NotImplementedError("RecursiveTree drafts for batch size 1 until EQSPEC realignment lands")
        self._cache = DynamicCache(config=self.model.config)
        self._cached = 0

    def _forward(self, tokens, positions, mask=None):
        return self.model(input_ids=tokens, position_ids=positions, attention_mask=mask,
                          past_key_values=self._cache, use_cache=True).logits

    def _children(self, logits: torch.Tensor, counts: list[int], request: DraftRequest):
        """Children tokens per frontier node (draw order) and the law they were drawn from."""
        if not request.sampling.do_sample:
            width = max(counts)
            top = torch.topk(logits, width, dim=-1).indices
            return [top[i, :c].tolist() for i, c in enumerate(counts)], None
        q = processed_probs(logits, request.sampling)
        width = max(counts)
        drawn = request.rng.without_replacement(q, width)
        kids = [[t for t in drawn[i, :c].tolist() if t >= 0] for i, c in enumerate(counts)]
        return kids, q

    @torch.no_grad()
    def propose(self, request: DraftRequest) -> DraftTree:
        sequences = request.sequences
        device = sequences.device
        context = sequences.shape[1]
        plan = level_sizes(self.branching, self.max_nodes)[: request.num_tokens]
        # depth 1: catch the cache up with the committed tokens, the root last
        new = sequences[:, self._cached:]
        positions = torch.arange(self._cached, context, device=device)[None]
        logits = self._forward(new, positions)[0, -1:]
        tokens: list[int] = []
        parents: list[int] = []
        laws: list[torch.Tensor] = []
        frontier = [-1]
        fed: list[int] = []
        for depth, counts in enumerate(plan, start=1):
            kids, q = self._children(logits, counts[: len(frontier)], request)
            next_frontier = []
            for i, parent in enumerate(frontier):
                for token in kids[i] if i < len(kids) else []:
                    next_frontier.append(len(tokens))
                    tokens.append(token)
                    parents.append(parent)
                    if q is not None:
                        laws.append(q[i])
            frontier = next_frontier
            if not frontier or depth == len(plan):
                break
            # feed the new frontier with tree attention: context, ancestors, itself
            partial = DraftTree(torch.tensor([tokens], device=device), torch.tensor(parents, device=device))
            ancestry = partial.slot_ancestry[1:, 1:]  # node-to-node
            rows = ancestry[frontier][:, fed + frontier]
            visible = torch.cat([torch.ones(len(frontier), context, dtype=torch.bool, device=device), rows], dim=1)
            dtype = next(self.model.parameters()).dtype
            mask = torch.zeros(1, 1, *visible.shape, dtype=dtype, device=device)
            mask = mask.masked_fill(~visible[None, None], torch.finfo(dtype).min)
            positions = (context - 1 + depth) * torch.ones(1, len(frontier), dtype=torch.long, device=device)
            frontier_tokens = torch.tensor([[tokens[n] for n in frontier]], device=device)
            logits = self._forward(frontier_tokens, positions, mask)[0]
            fed.extend(frontier)
        self._context = context
        self._fed = fed
        self._cached = context + len(fed)
        draft_probs = torch.stack(laws)[None] if laws else None
        return DraftTree(torch.tensor([tokens], device=device), torch.tensor(parents, device=device), draft_probs)

    def commit(self, acceptance: Acceptance, tree: DraftTree) -> None:
        kept = [n for n in acceptance.paths[0] if n in self._fed]
        slots = {node: self._context + i for i, node in enumerate(self._fed)}
        index = list(range(self._context)) + [slots[n] for n in kept]
        if len(index) != self._cached:
            keep_cache_entries(self._cache, torch.tensor(index, device=tree.tokens.device))
        self._cached = len(index)
