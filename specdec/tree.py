"""The draft tree: what a drafter proposes and what the target verifies in one forward.

Nodes are numbered so that every parent comes before its children and siblings follow their
draw order.  The verifier feeds the target ``[root, *nodes]``: the root is the last committed
token (its key/values are not cached yet), so *slot* 0 is the root and slot ``i + 1`` is node
``i``.  The target's logits at a slot give the law of that slot's children.

Each batch row has its own shape: ``parents`` is ``[B, N]`` (a ``[N]`` tensor is shared by
every row).  Rows with fewer nodes than the widest fill the rest with placeholders, which
``valid`` marks False and no rule accepts.  Drafters number nodes in priority order: the
first ``m`` valid nodes of a row are the tree it would propose under a budget of ``m`` nodes,
which is how the engine enforces per-row budgets (:meth:`DraftTree.limited`).

A chain is a tree whose every node has one child.  ``draft_probs`` holds, per node, the
processed draft law its token was drawn from (the law at its parent, before earlier siblings
were removed); ``None`` means the tokens are deterministic guesses (top-k, n-gram copies),
which the acceptance rules treat as point masses.  A tree may mix the two (a hybrid of copies
and a sampling draft model): ``copied`` marks the nodes that are deterministic copies, whose
``draft_probs`` rows are point masses at their tokens; they were not drawn from the model's law,
so the model siblings drawn after them do not exclude their tokens.  ``sources`` says, for a policy
that learns acceptance per source, which source proposed each node (a hybrid's model and its
classes of copies, see :class:`~specdec.drafters.hybrid.Hybrid`); the rules never read it.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import torch


@dataclass
class DraftTree:
    tokens: torch.Tensor  # [B, N] long: the drafted token of each node, per batch row
    parents: torch.Tensor  # [B, N] long (or [N], shared): parent node of each node, -1 for children of the root
    draft_probs: torch.Tensor | None = None  # [B, N, V]: law each node was drawn from, or None
    valid: torch.Tensor | None = None  # [B, N] bool: False at placeholder nodes a row lacks; None = all
    copied: torch.Tensor | None = None  # [B, N] bool: deterministic copies (point masses) among drawn nodes; None = none
    sources: torch.Tensor | None = None  # [B, N] long: the source of each node (0: a model); None = 1 where copied, else 0

    def __post_init__(self):
        if self.tokens.dim() != 2:
            raise ValueError(f"DraftTree.tokens must be [batch, nodes], got shape {tuple(self.tokens.shape)}")
        b, n = self.tokens.shape
        if self.parents.dim() == 1:
            if self.parents.shape != (n,):
                raise ValueError(f"DraftTree.parents must have shape ({n},) or ({b}, {n}), got {tuple(self.parents.shape)}")
            self._shared = True
            self.parents = self.parents[None].expand(b, n)
        else:
            if self.parents.shape != (b, n):
                raise ValueError(f"DraftTree.parents must have shape ({n},) or ({b}, {n}), got {tuple(self.parents.shape)}")
            self._shared = None  # unknown until asked
        if n:
            order = torch.arange(n, device=self.parents.device)
            if not bool((self.parents < order).all()):
                raise ValueError("DraftTree.parents must number every parent before its children")
            if bool((self.parents < -1).any()):
                raise ValueError("DraftTree.parents must be -1 (root) or a node index")
        if self.valid is not None and self.valid.shape != self.tokens.shape:
            raise ValueError(f"DraftTree.valid must match tokens {tuple(self.tokens.shape)}, got {tuple(self.valid.shape)}")
        if self.copied is not None and self.copied.shape != self.tokens.shape:
            raise ValueError(f"DraftTree.copied must match tokens {tuple(self.tokens.shape)}, got {tuple(self.copied.shape)}")
        if self.sources is not None and self.sources.shape != self.tokens.shape:
            raise ValueError(f"DraftTree.sources must match tokens {tuple(self.tokens.shape)}, got {tuple(self.sources.shape)}")
        if self.draft_probs is not None and self.draft_probs.shape[:2] != self.tokens.shape:
            raise ValueError(
                f"DraftTree.draft_probs must be [batch, nodes, vocab] matching tokens {tuple(self.tokens.shape)}, "
                f"got {tuple(self.draft_probs.shape)}"
            )

    # ---- construction -------------------------------------------------------------------
    @classmethod
    def chain(cls, tokens: torch.Tensor, draft_probs: torch.Tensor | None = None,
              valid: torch.Tensor | None = None, copied: torch.Tensor | None = None,
              sources: torch.Tensor | None = None) -> "DraftTree":
        """A chain of ``tokens.shape[1]`` nodes, each the child of the one before."""
        n = tokens.shape[1]
        tree = cls(tokens, torch.arange(-1, n - 1, device=tokens.device), draft_probs, valid, copied, sources)
        tree.__dict__["is_chain"] = True
        return tree

    @classmethod
    def empty(cls, batch_size: int, device: torch.device | str = "cpu") -> "DraftTree":
        """No draft at all: verifying it is one step of plain decoding."""
        return cls.chain(torch.empty(batch_size, 0, dtype=torch.long, device=device))

    def take_rows(self, rows: torch.Tensor) -> "DraftTree":
        """The trees of batch rows ``rows`` only."""
        pick = lambda t: None if t is None else t.index_select(0, rows)  # noqa: E731
        parents = self.parents[0] if self.shared_shape else pick(self.parents)
        tree = DraftTree(pick(self.tokens), parents, pick(self.draft_probs), pick(self.valid), pick(self.copied),
                         pick(self.sources))
        if "is_chain" in self.__dict__:
            tree.__dict__["is_chain"] = self.is_chain
        return tree

    def limited(self, depth: list[int], max_nodes: list[int | None] | None = None) -> "DraftTree":
        """This tree with row r cut to ``depth[r]`` levels and its first ``max_nodes[r]`` nodes.

        Nodes past a row's limits become placeholders.  Since nodes are numbered parents first
        and siblings in draw order, what remains of a row is a tree drafted under those limits.
        """
        if not self.num_nodes:
            return self
        device = self.tokens.device
        within = self.depth <= torch.tensor(depth, device=device)[:, None]
        if max_nodes is not None and any(m is not None for m in max_nodes):
            budget = torch.tensor([self.num_nodes if m is None else m for m in max_nodes], device=device)
            within &= torch.cumsum((within & self.node_valid).long(), dim=1) <= budget[:, None]
        valid = self.node_valid & within
        if bool(valid.all()):
            return self
        return self._with_valid(valid)

    def _with_valid(self, valid: torch.Tensor) -> "DraftTree":
        parents = self.parents[0] if self.shared_shape else self.parents
        tree = DraftTree(self.tokens, parents, self.draft_probs, valid, self.copied, self.sources)
        if "is_chain" in self.__dict__:
            tree.__dict__["is_chain"] = self.is_chain
        return tree

    def select(self, keep: torch.Tensor) -> tuple["DraftTree", torch.Tensor | None]:
        """The tree of the nodes ``keep`` [B, N] marks, compacted, and where each of its nodes came from.

        Each row's kept nodes move to the left in their order (so parents still come first and
        siblings keep their draw order); the tree is as wide as the row keeping the most, the rest
        of a row are placeholders.  Returns the tree and ``origin`` [B, N'] (this tree's node index
        of each new node, -1 at placeholders).  ``origin`` is None where the numbering is unchanged:
        every node kept, or no column freed (the dropped nodes then stay as placeholders).
        ``keep`` must be closed under parents (a kept node's parent is kept): the caller's rule.
        """
        keep = keep.to(torch.bool) & self.node_valid
        if bool(keep.all()):
            return self, None
        b, n = self.tokens.shape
        device = self.tokens.device
        counts = keep.sum(dim=1)
        width = int(counts.max()) if n else 0
        if width == n:  # no column to drop: the same tree with the rest as placeholders, numbering unchanged
            return self._with_valid(keep), None
        # stable order: kept nodes first, each row's in node order
        order = torch.argsort((~keep).to(torch.int8), dim=1, stable=True)[:, :width]  # [B, W]
        new_valid = torch.arange(width, device=device)[None, :] < counts[:, None]
        origin = torch.where(new_valid, order, torch.full_like(order, -1))
        tokens = self.tokens.gather(1, order)
        copied = None if self.copied is None else self.copied.gather(1, order) & new_valid
        sources = None if self.sources is None else torch.where(new_valid, self.sources.gather(1, order), 0)
        if self.is_chain and bool((keep == (torch.cumsum(keep.long(), 1) == torch.arange(1, n + 1, device=device))).all()):
            tree = DraftTree.chain(tokens, None if self.draft_probs is None else
                                   self.draft_probs.gather(1, order[..., None].expand(-1, -1, self.draft_probs.shape[-1])),
                                   None if bool(new_valid.all()) else new_valid, copied, sources)
            return tree, origin
        # new index of every old node (-1 if dropped), then the parents in the new numbering
        renumber = torch.full((b, n + 1), -1, dtype=torch.long, device=device)  # column 0: the root (-1 -> -1)
        rows = torch.arange(b, device=device)[:, None].expand(b, width)
        renumber[rows[new_valid], order[new_valid] + 1] = torch.arange(width, device=device)[None].expand(b, width)[new_valid]
        old_parents = self.parents.gather(1, order)
        parents = torch.where(new_valid, renumber.gather(1, old_parents + 1), torch.full_like(order, -1))
        if bool((new_valid & (old_parents >= 0) & (parents < 0)).any()):
            raise ValueError("DraftTree.select: a kept node's parent was not kept")
        probs = None
        if self.draft_probs is not None:
            probs = self.draft_probs.gather(1, order[..., None].expand(-1, -1, self.draft_probs.shape[-1]))
        shared = bool((parents == parents[:1]).all()) and bool(new_valid.all())
        tree = DraftTree(tokens, parents[0] if shared else parents, probs, None if bool(new_valid.all()) else new_valid,
                         copied, sources)
        return tree, origin

    # ---- shape --------------------------------------------------------------------------
    @property
    def batch_size(self) -> int:
        return self.tokens.shape[0]

    @property
    def num_nodes(self) -> int:
        return self.tokens.shape[1]

    @property
    def node_valid(self) -> torch.Tensor:
        """[B, N] bool: which nodes are real drafts (all, unless ``valid`` says otherwise)."""
        if self.valid is None:
            return torch.ones_like(self.tokens, dtype=torch.bool)
        return self.valid

    def node_sources(self) -> list[list[int]]:
        """Each row's node sources as lists: ``sources``, else 1 at copied nodes and 0 elsewhere."""
        if self.sources is not None:
            return self.sources.tolist()
        if self.copied is not None:
            return [[int(x) for x in row] for row in self.copied.tolist()]
        return [[0] * self.num_nodes for _ in range(self.batch_size)]

    @cached_property
    def valid_counts(self) -> list[int]:
        """Real (non-placeholder) nodes per row."""
        if self.valid is None:
            return [self.num_nodes] * self.batch_size
        return self.valid.sum(dim=1).tolist()

    @property
    def shared_shape(self) -> bool:
        """Whether every row has the same parents (placeholders aside)."""
        if self._shared is None:
            self._shared = bool((self.parents == self.parents[:1]).all())
        return self._shared

    @cached_property
    def is_chain(self) -> bool:
        n = self.num_nodes
        return self.shared_shape and bool(torch.equal(self.parents[0].cpu(), torch.arange(-1, n - 1)))

    @cached_property
    def slot_ancestry(self) -> torch.Tensor:
        """[B, 1+N, 1+N] bool: entry [b, i, j] is True when slot j is slot i or one of its ancestors."""
        b, n = self.tokens.shape
        device = self.parents.device
        if self.is_chain:
            anc = torch.ones(n + 1, n + 1, dtype=torch.bool, device=device).tril()
            return anc[None].expand(b, n + 1, n + 1)
        rows = 1 if self.shared_shape else b
        parents = self.parents[:rows]
        anc = torch.zeros(rows, n + 1, n + 1, dtype=torch.bool, device=device)
        anc[:, 0, 0] = True
        index = torch.arange(rows, device=device)
        for node in range(n):
            anc[:, node + 1] = anc[index, parents[:, node] + 1]
            anc[:, node + 1, node + 1] = True
        return anc.expand(b, n + 1, n + 1)

    @cached_property
    def depth(self) -> torch.Tensor:
        """[B, N] long: depth of each node (children of the root have depth 1)."""
        if self.is_chain:
            return torch.arange(1, self.num_nodes + 1, device=self.parents.device)[None].expand(self.batch_size, -1)
        return self.slot_ancestry[:, 1:, 1:].sum(dim=2)

    @cached_property
    def max_depth(self) -> int:
        """Depth of the deepest node (placeholders included); 0 for the empty tree."""
        return int(self.depth.max()) if self.num_nodes else 0

    @cached_property
    def children(self) -> list[list[list[int]]]:
        """children[row][slot]: node indices whose parent is that slot (slot 0 = root), in draw order."""
        if self.shared_shape:
            kids: list[list[int]] = [[] for _ in range(self.num_nodes + 1)]
            for node, parent in enumerate(self.parents[0].tolist()):
                kids[parent + 1].append(node)
            return [kids] * self.batch_size
        out = []
        for row in self.parents.tolist():
            kids = [[] for _ in range(self.num_nodes + 1)]
            for node, parent in enumerate(row):
                kids[parent + 1].append(node)
            out.append(kids)
        return out

    @property
    def parent_slots(self) -> torch.Tensor:
        """[B, N] long: slot of each node's parent (0 for the root)."""
        return self.parents + 1

    def path_to(self, node: int, row: int = 0) -> list[int]:
        """Node indices from depth 1 down to ``node`` in row ``row`` (empty for the root, ``node == -1``)."""
        parents = self.parents[row].tolist()
        path = []
        while node >= 0:
            path.append(node)
            node = parents[node]
        return path[::-1]

    # ---- what the target needs ----------------------------------------------------------
    def verify_inputs(self, root_tokens: torch.Tensor) -> torch.Tensor:
        """[B, 1+N] token ids for the verification forward: the root, then every node."""
        return torch.cat([root_tokens[:, None], self.tokens], dim=1)

    def position_ids(self, root_positions: torch.Tensor) -> torch.Tensor:
        """[B, 1+N] positions: each row's root position plus each slot's depth."""
        slot_depth = torch.cat([self.depth.new_zeros(self.batch_size, 1), self.depth], dim=1)
        return root_positions[:, None] + slot_depth.to(root_positions.device)

    def attention_mask(self, context_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """Additive 4D mask [B, 1, 1+N, C+1+N] for the verification forward.

        ``context_mask`` [B, C] marks the cached entries each row may see (False at padding).
        Each slot sees the visible context, the root, its own ancestors and itself — nothing else.
        """
        b, c = context_mask.shape
        n1 = self.num_nodes + 1
        visible = torch.cat([context_mask.bool()[:, None, :].expand(b, n1, c),
                             self.slot_ancestry.to(context_mask.device)], dim=2)
        return additive_mask(visible, dtype)


def additive_mask(visible: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """[B, Q, K] booleans (True = may attend) as a 4D additive mask [B, 1, Q, K] for attention."""
    mask = torch.zeros(visible.shape[0], 1, *visible.shape[1:], dtype=dtype, device=visible.device)
    return mask.masked_fill(~visible[:, None], torch.finfo(dtype).min)
