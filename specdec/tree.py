"""The draft tree: what a drafter proposes and what the target verifies in one forward.

Nodes are numbered in the order they were drawn (siblings in draw order) and every parent
comes before its children.  The verifier feeds the target ``[root, *nodes]``: the root is the
last committed token (its key/values are not cached yet), so *slot* 0 is the root and slot
``i + 1`` is node ``i``.  The target's logits at a slot give the law of that slot's children.

A chain is a tree whose every node has one child.  ``draft_probs`` holds, per node, the
processed draft law its token was drawn from (the law at its parent, before earlier siblings
were removed); ``None`` means the tokens are deterministic guesses (top-k, n-gram copies),
which the acceptance rules treat as point masses.  In a batch every row shares the tree's
shape; ``valid`` marks placeholder nodes (a row with a shorter draft), which no rule accepts.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import torch


@dataclass
class DraftTree:
    tokens: torch.Tensor  # [B, N] long: the drafted token of each node, per batch row
    parents: torch.Tensor  # [N] long: parent node of each node, -1 for children of the root
    draft_probs: torch.Tensor | None = None  # [B, N, V]: law each node was drawn from, or None
    valid: torch.Tensor | None = None  # [B, N] bool: False at placeholder nodes a row lacks; None = all

    def __post_init__(self):
        if self.tokens.dim() != 2:
            raise ValueError(f"DraftTree.tokens must be [batch, nodes], got shape {tuple(self.tokens.shape)}")
        n = self.tokens.shape[1]
        if self.parents.shape != (n,):
            raise ValueError(f"DraftTree.parents must have shape ({n},), got {tuple(self.parents.shape)}")
        if n and not bool((self.parents < torch.arange(n, device=self.parents.device)).all()):
            raise ValueError("DraftTree.parents must number every parent before its children")
        if n and bool((self.parents < -1).any()):
            raise ValueError("DraftTree.parents must be -1 (root) or a node index")
        if self.valid is not None and self.valid.shape != self.tokens.shape:
            raise ValueError(f"DraftTree.valid must match tokens {tuple(self.tokens.shape)}, got {tuple(self.valid.shape)}")
        if self.draft_probs is not None and self.draft_probs.shape[:2] != self.tokens.shape:
            raise ValueError(
                f"DraftTree.draft_probs must be [batch, nodes, vocab] matching tokens {tuple(self.tokens.shape)}, "
                f"got {tuple(self.draft_probs.shape)}"
            )

    # ---- construction -------------------------------------------------------------------
    @classmethod
    def chain(cls, tokens: torch.Tensor, draft_probs: torch.Tensor | None = None,
              valid: torch.Tensor | None = None) -> "DraftTree":
        """A chain of ``tokens.shape[1]`` nodes, each the child of the one before."""
        n = tokens.shape[1]
        parents = torch.arange(-1, n - 1, device=tokens.device)
        return cls(tokens, parents, draft_probs, valid)

    @property
    def node_valid(self) -> torch.Tensor:
        """[B, N] bool: which nodes are real drafts (all, unless ``valid`` says otherwise)."""
        if self.valid is None:
            return torch.ones_like(self.tokens, dtype=torch.bool)
        return self.valid

    @classmethod
    def empty(cls, batch_size: int, device: torch.device | str = "cpu") -> "DraftTree":
        """No draft at all: verifying it is one step of plain decoding."""
        return cls(torch.empty(batch_size, 0, dtype=torch.long, device=device),
                   torch.empty(0, dtype=torch.long, device=device))

    def take_rows(self, rows: torch.Tensor) -> "DraftTree":
        """The same tree shape for batch rows ``rows`` only."""
        pick = lambda t: None if t is None else t.index_select(0, rows)  # noqa: E731
        return DraftTree(pick(self.tokens), self.parents, pick(self.draft_probs), pick(self.valid))

    # ---- shape --------------------------------------------------------------------------
    @property
    def batch_size(self) -> int:
        return self.tokens.shape[0]

    @property
    def num_nodes(self) -> int:
        return self.tokens.shape[1]

    @cached_property
    def is_chain(self) -> bool:
        n = self.num_nodes
        return bool(torch.equal(self.parents.cpu(), torch.arange(-1, n - 1)))

    @cached_property
    def depth(self) -> torch.Tensor:
        """[N] long: depth of each node (children of the root have depth 1)."""
        parents = self.parents.tolist()
        depth: list[int] = []
        for p in parents:
            depth.append(1 if p < 0 else depth[p] + 1)
        return torch.tensor(depth, dtype=torch.long, device=self.parents.device)

    @cached_property
    def children(self) -> list[list[int]]:
        """children[slot]: node indices whose parent is that slot (slot 0 = root), in draw order."""
        kids: list[list[int]] = [[] for _ in range(self.num_nodes + 1)]
        for node, parent in enumerate(self.parents.tolist()):
            kids[parent + 1].append(node)
        return kids

    @cached_property
    def parent_slots(self) -> torch.Tensor:
        """[N] long: slot of each node's parent (0 for the root)."""
        return self.parents + 1

    @cached_property
    def slot_ancestry(self) -> torch.Tensor:
        """[1+N, 1+N] bool: entry [i, j] is True when slot j is slot i or one of its ancestors."""
        n = self.num_nodes
        anc = torch.zeros(n + 1, n + 1, dtype=torch.bool)
        anc[:, 0] = True
        for node, parent in enumerate(self.parents.tolist()):
            anc[node + 1] = anc[parent + 1]
            anc[node + 1, node + 1] = True
        return anc.to(self.parents.device)

    def path_to(self, node: int) -> list[int]:
        """Node indices from depth 1 down to ``node`` (empty for the root, ``node == -1``)."""
        parents = self.parents.tolist()
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
        """[B, 1+N] positions: the root's position plus each slot's depth."""
        slot_depth = torch.cat([self.depth.new_zeros(1), self.depth])
        return root_positions[:, None] + slot_depth[None, :].to(root_positions.device)

    def attention_mask(self, context_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """Additive 4D mask [B, 1, 1+N, C+1+N] for the verification forward.

        ``context_mask`` [B, C] marks the cached entries each row may see (False at padding).
        Each slot sees the visible context, the root, its own ancestors and itself — nothing else.
        """
        b, c = context_mask.shape
        n1 = self.num_nodes + 1
        visible = torch.cat(
            [context_mask.bool()[:, None, :].expand(b, n1, c),
             self.slot_ancestry.to(context_mask.device)[None].expand(b, n1, n1)],
            dim=2,
        )
        return additive_mask(visible, dtype)


def additive_mask(visible: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """[B, Q, K] booleans (True = may attend) as a 4D additive mask [B, 1, Q, K] for attention."""
    mask = torch.zeros(visible.shape[0], 1, *visible.shape[1:], dtype=dtype, device=visible.device)
    return mask.masked_fill(~visible[:, None], torch.finfo(dtype).min)
