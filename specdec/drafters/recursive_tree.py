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
continuations (stochastic_beam).  ``max_nodes`` caps the tree in both methods.  In a batch,
gumbel_topk trees share one shape (a row whose law has fewer possible tokens than a node's
branching gets placeholders); stochastic beam trees have each row's own shape.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch

from ..sampling import processed_probs
from ..tree import DraftTree
from .base import CommitUpdate, Drafter, DraftRequest, check_same_vocabulary
from .draft_cache import DraftCache

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
    """Draft trees from a small causal LM, sampled without replacement (see the module docstring)."""

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
        self.max_depth = len(branching)
        self._cache: DraftCache | None = None

    @property
    def num_nodes(self) -> int:
        """Nodes of a full tree under the budget (what one verification costs the target)."""
        return sum(self._level_widths(len(self.branching), self.max_nodes))

    def _level_widths(self, depth: int, max_nodes: int | None) -> list[int]:
        if self.method == "stochastic_beam":
            return beam_sizes(self.beam_width, len(self.branching), max_nodes)[:depth]
        return [sum(level) for level in level_sizes(self.branching, max_nodes)[:depth]]

    def tree_template(self, depth: int) -> list[int]:
        """The tree's shape ``depth`` levels deep, as parents (a beam's nodes hang below the best of the level before)."""
        parents, frontier = [], [-1]
        if self.method == "stochastic_beam":
            for size in beam_sizes(self.beam_width, len(self.branching), self.max_nodes)[:depth]:
                first = len(parents)
                parents += [frontier[0]] * size
                frontier = list(range(first, len(parents)))
            return parents
        for counts in level_sizes(self.branching, self.max_nodes)[:depth]:
            first = len(parents)
            for parent, count in zip(frontier, counts):
                parents += [parent] * count
            frontier = list(range(first, len(parents)))
        return parents

    def start(self, target_model, input_ids, attention_mask, hidden=None) -> None:
        check_same_vocabulary(self.model, target_model)
        self._cache = DraftCache.for_model(self.model, input_ids, attention_mask)

    # ---- growing one depth -----------------------------------------------------------------
    def _topk_children(self, logits, frontier, counts, request):
        """Children of every frontier node in every row: tokens [B, M] (-1 = none), parents, laws."""
        width = max(counts)
        b, f, v = logits.shape
        if not request.sampling.do_sample:
            drawn, q = torch.topk(logits, width, dim=-1).indices, None
        else:
            q = processed_probs(logits, request.sampling)
            drawn = request.rng.without_replacement(q.reshape(b * f, v), width).reshape(b, f, width)
        columns, parents, rows = [], [], []
        for i, (parent, count) in enumerate(zip(frontier, counts)):
            for j in range(count):
                columns.append(drawn[:, i, j])
                parents.append(parent)
                rows.append(i)
        return torch.stack(columns, dim=1), parents, rows, q

    def _beam_children(self, logits, frontier, parents_state, keep, request):
        """One row's next beam depth (siblings in draw order) and the processed law (None if greedy).

        ``logits`` [F, V] at the row's live frontier nodes ``frontier``, whose beam states are
        ``parents_state``.
        """
        q = None
        if request.sampling.do_sample:
            q = processed_probs(logits, request.sampling)
            log_q = torch.log(q)
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
        return children, q

    # ---- proposing -----------------------------------------------------------------------
    @torch.no_grad()
    def propose(self, request: DraftRequest) -> DraftTree:
        logits = self._cache.catch_up()[:, None]  # [B, 1, V] at the root
        if self.method == "stochastic_beam":
            return self._propose_beam(request, logits)
        device = logits.device
        b = logits.shape[0]
        levels = level_sizes(self.branching, self.max_nodes)[: request.max_depth]
        tokens = torch.zeros(b, 0, dtype=torch.long, device=device)
        valid = torch.zeros(b, 0, dtype=torch.bool, device=device)
        parents, laws, frontier = [], [], [-1]
        for depth, level in enumerate(levels, start=1):
            drawn, kid_parents, kid_rows, q = self._topk_children(logits, frontier, level[: len(frontier)], request)
            parent_valid = torch.stack([valid[:, p] if p >= 0 else torch.ones(b, dtype=torch.bool, device=device)
                                        for p in kid_parents], dim=1)
            frontier = list(range(tokens.shape[1], tokens.shape[1] + drawn.shape[1]))
            valid = torch.cat([valid, parent_valid & (drawn >= 0)], dim=1)
            tokens = torch.cat([tokens, drawn.clamp_min(0)], dim=1)
            parents.extend(kid_parents)
            if q is not None:
                laws.append(q[:, kid_rows])
            if depth == len(levels):
                break
            partial = DraftTree(tokens, torch.tensor(parents, dtype=torch.long, device=device))
            logits = self._cache.feed(partial, frontier)
        draft_probs = torch.cat(laws, dim=1) if laws else None
        return DraftTree(tokens, torch.tensor(parents, dtype=torch.long, device=device), draft_probs,
                         None if bool(valid.all()) else valid)

    def _propose_beam(self, request: DraftRequest, logits: torch.Tensor) -> DraftTree:
        """Each row's own stochastic beam tree; level d holds ``levels[d]`` node columns."""
        device = logits.device
        b, _, v = logits.shape
        levels = beam_sizes(self.beam_width, len(self.branching), self.max_nodes)[: request.max_depth]
        sampling = request.sampling.do_sample
        tokens = torch.zeros(b, 0, dtype=torch.long)
        parents = torch.zeros(b, 0, dtype=torch.long)
        valid = torch.zeros(b, 0, dtype=torch.bool)
        laws = []
        frontier = [-1]  # node index of each frontier column (the root first)
        states: list[list[_Child | None]] = [[_Child(-1, 0, -1)] for _ in range(b)]  # per row, per column
        for depth, keep in enumerate(levels, start=1):
            level_tokens = torch.zeros(b, keep, dtype=torch.long)
            level_parents = torch.full((b, keep), max(frontier[0], -1), dtype=torch.long)
            level_valid = torch.zeros(b, keep, dtype=torch.bool)
            level_laws = torch.zeros(b, keep, v, dtype=torch.float64 if logits.dtype == torch.float64 else torch.float32)
            next_states: list[list[_Child | None]] = []
            for row in range(b):
                live = [col for col, state in enumerate(states[row]) if state is not None]
                children, q = self._beam_children(logits[row, live], [frontier[c] for c in live],
                                                  [states[row][c] for c in live], keep, request)
                for j, child in enumerate(children):
                    level_tokens[row, j] = child.token
                    level_parents[row, j] = child.parent
                    level_valid[row, j] = True
                    if q is not None:
                        level_laws[row, j] = q[child.row]
                next_states.append(children + [None] * (keep - len(children)))
            first = tokens.shape[1]
            frontier = list(range(first, first + keep))
            tokens = torch.cat([tokens, level_tokens], dim=1)
            parents = torch.cat([parents, level_parents], dim=1)
            valid = torch.cat([valid, level_valid], dim=1)
            if sampling:
                laws.append(level_laws)
            states = next_states
            if depth == len(levels) or not bool(level_valid.any()):
                break
            partial = DraftTree(tokens.to(device), parents.to(device))
            logits = self._cache.feed(partial, frontier)
        draft_probs = torch.cat(laws, dim=1).to(device) if laws else None
        return DraftTree(tokens.to(device), parents.to(device), draft_probs,
                         None if bool(valid.all()) else valid.to(device))

    def commit(self, update: CommitUpdate) -> None:
        self._cache.commit(update)

    def take_rows(self, rows: torch.Tensor) -> "RecursiveTree":
        out = copy.copy(self)
        out._cache = self._cache.take_rows(rows)
        return out

    def join(self, others: list["RecursiveTree"]) -> "RecursiveTree":
        out = copy.copy(self)
        out._cache = DraftCache.concat([self._cache] + [o._cache for o in others])
        return out
