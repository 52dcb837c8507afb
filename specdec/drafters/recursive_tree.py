"""Recursive Speculative Decoding (Jeon et al., 2024): draft trees sampled without replacement.

The tree grows one depth per draft forward, the whole frontier at once with tree attention.
Siblings are never the same token, and the verifier's recursive rejection sampling (which
tests siblings against q with the earlier ones removed) keeps the target's law exactly.

* ``method="gumbel_topk"``: every frontier node at depth d gets ``branching[d-1]`` distinct
  children drawn without replacement from the draft's processed law (Gumbel-Top-k).
* ``method="stochastic_beam"``: stochastic beam search (Kool et al., 2019) of width
  ``beam_width`` over ``len(branching)`` depths: children's Gumbel-perturbed log-probabilities
  are conditioned on their parent's, and only the ``beam_width`` best of a depth survive, so
  unlikely branches are dropped early and the tree holds at most width x depth nodes.  A node's
  surviving children are the first of its own without-replacement order.

With greedy decoding the children are the draft's top tokens (gumbel_topk) or the beam's best
continuations (stochastic_beam).  ``max_nodes`` caps the tree in both methods.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import DynamicCache

from ..acceptance import Acceptance
from ..sampling import processed_probs
from ..target import keep_cache_entries
from ..tree import DraftTree
from .base import DraftRequest, Drafter, check_same_vocabulary

METHODS = ("gumbel_topk", "stochastic_beam")


def level_sizes(branching: tuple[int, ...], max_nodes: int | None) -> list[list[int]]:
    """Children per frontier node at each depth of a gumbel_topk tree, under the node budget.

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


def beam_sizes(width: int, depth: int, max_nodes: int | None) -> list[int]:
    """Nodes kept at each depth of a stochastic beam tree under the node budget."""
    sizes, total = [], 0
    for _ in range(depth):
        room = width if max_nodes is None else min(width, max_nodes - total)
        if room <= 0:
            break
        sizes.append(room)
        total += room
    return sizes


def conditioned_gumbel(parent_score: torch.Tensor, perturbed: torch.Tensor) -> torch.Tensor:
    """Perturbed log-probs of children, shifted so that their maximum equals the parent's.

    ``parent_score`` [F, 1], ``perturbed`` [F, V] (phi + Gumbel); Kool et al. (2019), eq. 23
    in its numerically stable form.  -inf entries stay -inf.
    """
    z = perturbed.max(dim=-1, keepdim=True).values
    v = parent_score - perturbed + torch.log1p(-torch.exp((perturbed - z).clamp(max=-1e-12)))
    shifted = parent_score - v.clamp_min(0) - torch.log1p(torch.exp(-v.abs()))
    return torch.where(torch.isfinite(perturbed), shifted, perturbed)


@dataclass
class _Child:
    parent: int  # node index of the parent, -1 for the root
    row: int  # the parent's row in the frontier's logits
    token: int
    log_prob: float = 0.0  # phi: log-probability of the path under the draft (beam search)
    score: float = 0.0  # G: the perturbed, conditioned log-probability (stochastic beam)


class RecursiveTree(Drafter):
    """Draft trees from a small causal LM, sampled without replacement."""

    def __init__(self, model: torch.nn.Module, branching=(3, 2, 1), method: str = "gumbel_topk",
                 max_nodes: int | None = None, beam_width: int | None = None):
        if not isinstance(model, torch.nn.Module) or not hasattr(model, "config"):
            raise TypeError(f"RecursiveTree needs a Hugging Face causal LM, got {type(model).__name__}")
        branching = tuple(int(b) for b in branching)
        if not branching or min(branching) < 1:
            raise ValueError(f"branching must be a non-empty sequence of ints >= 1, got {branching}")
        if method not in METHODS:
            raise ValueError(f"unknown method {method!r}; choose one of {METHODS}")
        if max_nodes is not None and int(max_nodes) < 1:
            raise ValueError(f"max_nodes must be >= 1, got {max_nodes}")
        if beam_width is not None and int(beam_width) < 1:
            raise ValueError(f"beam_width must be >= 1, got {beam_width}")
        self.model = model
        self.branching = branching
        self.method = method
        self.max_nodes = None if max_nodes is None else int(max_nodes)
        self.beam_width = int(beam_width) if beam_width is not None else max(branching)
        self.num_tokens = len(branching)
        self._cache: DynamicCache | None = None
        self._cached = 0
        self._context = 0  # committed tokens cached when the last tree was proposed
        self._fed: list[int] = []  # tree nodes whose key/values sit in the cache, in order

    @property
    def num_nodes(self) -> int:
        """Nodes of a full tree under the budget (what one verification costs the target)."""
        if self.method == "stochastic_beam":
            return sum(beam_sizes(self.beam_width, len(self.branching), self.max_nodes))
        return sum(sum(level) for level in level_sizes(self.branching, self.max_nodes))

    def start(self, target_model, input_ids, attention_mask) -> None:
        check_same_vocabulary(self.model, target_model)
        if input_ids.shape[0] != 1:
            raise NotImplementedError("RecursiveTree drafts for batch size 1 until EQSPEC realignment lands")
        self._cache = DynamicCache(config=self.model.config)
        self._cached = 0

    # ---- growing one depth -----------------------------------------------------------------
    def _topk_children(self, logits, frontier, counts, request) -> list[_Child]:
        width = max(counts)
        if not request.sampling.do_sample:
            drawn = torch.topk(logits, width, dim=-1).indices
        else:
            drawn = request.rng.without_replacement(processed_probs(logits, request.sampling), width)
        return [_Child(parent, row, token)
                for row, (parent, count) in enumerate(zip(frontier, counts))
                for token in drawn[row, :count].tolist() if token >= 0]

    def _beam_children(self, logits, frontier, parents_state, keep, request) -> list[_Child]:
        if request.sampling.do_sample:
            log_q = torch.log(processed_probs(logits, request.sampling))
        else:
            log_q = torch.log_softmax(logits.to(torch.float64), dim=-1)
        phi = torch.tensor([s.log_prob for s in parents_state], dtype=log_q.dtype)[:, None] + log_q
        if request.sampling.do_sample:
            perturbed = phi + request.rng.gumbel(phi.shape, phi.dtype, phi.device)
            parent_score = torch.tensor([s.score for s in parents_state], dtype=phi.dtype)[:, None]
            score = conditioned_gumbel(parent_score, perturbed)
        else:
            score = phi
        flat = torch.topk(score.reshape(-1), min(keep, score.numel()))
        children = []
        for value, index in zip(flat.values.tolist(), flat.indices.tolist()):
            if value == float("-inf"):
                break
            row, token = divmod(index, score.shape[1])
            children.append(_Child(frontier[row], row, token, float(phi[row, token]), value))
        # siblings in their own draw order: by parent, then by score
        children.sort(key=lambda c: (c.row, -c.score))
        return children

    # ---- the draft forward ---------------------------------------------------------------
    def _forward(self, tokens, positions, mask=None):
        return self.model(input_ids=tokens, position_ids=positions, attention_mask=mask,
                          past_key_values=self._cache, use_cache=True).logits

    def _feed_frontier(self, tokens, parents, frontier, fed, context, depth, device):
        """One draft forward over the frontier with tree attention: context, ancestors, itself."""
        partial = DraftTree(torch.tensor([tokens], device=device), torch.tensor(parents, device=device))
        rows = partial.slot_ancestry[1:, 1:][frontier][:, fed + frontier]
        visible = torch.cat([torch.ones(len(frontier), context, dtype=torch.bool, device=device), rows], dim=1)
        dtype = next(self.model.parameters()).dtype
        mask = torch.zeros(1, 1, *visible.shape, dtype=dtype, device=device)
        mask = mask.masked_fill(~visible[None, None], torch.finfo(dtype).min)
        positions = torch.full((1, len(frontier)), context - 1 + depth, dtype=torch.long, device=device)
        frontier_tokens = torch.tensor([[tokens[n] for n in frontier]], device=device)
        return self._forward(frontier_tokens, positions, mask)[0]

    @torch.no_grad()
    def propose(self, request: DraftRequest) -> DraftTree:
        sequences = request.sequences
        device = sequences.device
        context = sequences.shape[1]
        if self.method == "stochastic_beam":
            levels = beam_sizes(self.beam_width, len(self.branching), self.max_nodes)[: request.num_tokens]
        else:
            levels = level_sizes(self.branching, self.max_nodes)[: request.num_tokens]
        # depth 1 starts from the root: catch the cache up with the committed tokens
        new = sequences[:, self._cached:]
        positions = torch.arange(self._cached, context, device=device)[None]
        logits = self._forward(new, positions)[0, -1:]
        tokens, parents, laws, fed = [], [], [], []
        frontier, state = [-1], [_Child(-1, 0, -1)]
        for depth, level in enumerate(levels, start=1):
            if self.method == "stochastic_beam":
                children = self._beam_children(logits, frontier, state, level, request)
            else:
                children = self._topk_children(logits, frontier, level[: len(frontier)], request)
            if request.sampling.do_sample:
                q = processed_probs(logits, request.sampling)
                laws.extend(q[c.row] for c in children)
            frontier = list(range(len(tokens), len(tokens) + len(children)))
            tokens.extend(c.token for c in children)
            parents.extend(c.parent for c in children)
            state = children
            if not frontier or depth == len(levels):
                break
            logits = self._feed_frontier(tokens, parents, frontier, fed, context, depth, device)
            fed.extend(frontier)
        self._context, self._fed, self._cached = context, fed, context + len(fed)
        draft_probs = torch.stack(laws)[None] if laws else None
        return DraftTree(torch.tensor([tokens], dtype=torch.long, device=device),
                         torch.tensor(parents, dtype=torch.long, device=device), draft_probs)

    def commit(self, acceptance: Acceptance, tree: DraftTree) -> None:
        kept = [n for n in acceptance.paths[0] if n in self._fed]
        slots = {node: self._context + i for i, node in enumerate(self._fed)}
        index = list(range(self._context)) + [slots[n] for n in kept]
        if len(index) != self._cached:
            keep_cache_entries(self._cache, torch.tensor(index, device=tree.tokens.device))
        self._cached = len(index)
