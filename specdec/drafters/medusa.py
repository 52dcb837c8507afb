"""Medusa: K heads on the target's last hidden state guess the next K tokens; a sparse tree of
their top guesses is verified in one target forward (Cai et al., 2024).

The heads read the hidden state the target computed for the token before the root (each
step's commit hands it over, the prefill for the first step), so drafting costs no extra
target forward.  Nodes are deterministic top-k guesses: greedy acceptance matches them,
and sampling accepts them by recursive rejection with point-mass children, which is lossless.
Medusa's typical acceptance is a separate, lossy option of the acceptance rules.

Heads may guess over a reduced vocabulary: ``vocab.token_ids`` in the weights file names the
target tokens whose rows of the target's own output head the heads project onto (FR-Spec), so a
head costs a fraction of the 49k-row head.  Verification still uses the target's full law.
"""
from __future__ import annotations

import copy

import torch

from ..medusa_tree import build_sparse_tree
from ..tree import DraftTree
from .base import CommitUpdate, Drafter, DraftRequest, as_dtype, output_vocab_size
from .vocab import SubsetHead


def with_rows(head: torch.nn.Module, token_ids: torch.Tensor, vocab_size: int, dtype: torch.dtype | None = None) -> SubsetHead:
    """The target's own output head restricted to the rows of ``token_ids`` (in ``dtype``, default its own)."""
    weight = head.weight.detach().index_select(0, token_ids.to(head.weight.device))
    return SubsetHead(weight.to(dtype or weight.dtype), token_ids.to(head.weight.device), vocab_size)


def _cast(head: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Linear:
    """A frozen copy of a linear output head in another precision."""
    weight = head.weight.detach()
    out = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=getattr(head, "bias", None) is not None)
    out = out.to(device=weight.device, dtype=dtype)
    with torch.no_grad():
        out.weight.copy_(weight)
        if out.bias is not None:
            out.bias.copy_(head.bias)
    return out.requires_grad_(False)


WEIGHTS = "medusa.safetensors"


class Medusa(Drafter):
    """Medusa heads plus the sparse tree of rank paths they are verified with."""


    def __init__(self, heads, tree: list[tuple[int, ...]], token_ids: torch.Tensor | None = None,
                 dtype: torch.dtype | str | None = None):
        """``heads`` and the sparse ``tree`` of rank paths (the largest tree: the goodput policy prunes it
        per step); ``token_ids``: the reduced vocabulary the heads guess over; ``dtype``: the heads' own
        precision (default: the target's), which never changes the output, only what drafting costs."""
        from specdec.heads.medusa import MedusaHeads

        if not isinstance(heads, MedusaHeads):
            raise TypeError(f"heads must be specdec.heads.medusa.MedusaHeads, got {type(heads).__name__}")
        tree = [tuple(int(i) for i in path) for path in tree]
        if not tree:
            raise ValueError("the Medusa tree needs at least one node")
        seen = set()
        for path in tree:
            if not path or min(path) < 0:
                raise ValueError(f"tree node {path} must be a non-empty tuple of ranks >= 0")
            if len(path) > heads.num_heads:
                raise ValueError(f"tree node {path} is deeper than the {heads.num_heads} heads")
            if len(path) > 1 and path[:-1] not in seen:
                raise ValueError(f"tree node {path} comes before its parent {path[:-1]}")
            if path in seen:
                raise ValueError(f"tree node {path} appears twice")
            seen.add(path)
        self.heads = heads.eval()
        self.tree = tree
        self.num_tokens = max(len(p) for p in tree)
        self.max_depth = self.num_tokens
        self.token_ids = None if token_ids is None else torch.as_tensor(token_ids, dtype=torch.long)
        self.dtype = as_dtype(dtype)
        self._lm_head = None
        self._hidden: torch.Tensor | None = None  # [B, H] target state before each row's root

    @classmethod
    def from_pretrained(cls, path, target_model: torch.nn.Module, max_nodes: int | None = None,
                        dtype: torch.dtype | str | None = None) -> "Medusa":
        """Heads and tree from a directory holding ``medusa.safetensors`` and ``card.json``.

        The card's ``tree`` is used unless ``max_nodes`` asks for a tree rebuilt from its
        measured ``top_k_accuracy`` (per head, per rank); ``dtype`` defaults to the card's
        ``serving.dtype``, else the target's.
        """

        from specdec.heads.medusa import MedusaHeads

        from .artifacts import read_card, read_weights, resolve

        folder = resolve(path)
        if not (folder / WEIGHTS).is_file():
            raise FileNotFoundError(f"Medusa artifact {folder} lacks {WEIGHTS}")
        card = read_card(folder, "medusa")
        tensors = read_weights(folder / WEIGHTS)
        token_ids = tensors.pop("vocab.token_ids", None)
        heads = MedusaHeads.from_tensors(tensors)
        hidden = getattr(target_model.config, "hidden_size", None)
        if hidden != heads.hidden_size:
            raise ValueError(f"Medusa heads of {folder} expect hidden size {heads.hidden_size}, "
                             f"the target has {hidden}: they were trained for another model")
        if max_nodes is not None:
            tree = build_sparse_tree(card["top_k_accuracy"], int(max_nodes))
        else:
            tree = card["tree"]
        vocab = output_vocab_size(target_model)
        if token_ids is not None and (int(token_ids.max()) >= vocab or token_ids.numel() > vocab):
            raise ValueError(f"Medusa heads of {folder} guess token ids up to {int(token_ids.max())}, "
                             f"the target's vocabulary has {vocab}: they were trained for another model")
        dtype = as_dtype(dtype) or as_dtype((card.get("serving") or {}).get("dtype")) or next(target_model.parameters()).dtype
        return cls(heads.to(dtype), tree, token_ids, dtype)

    def tree_template(self, depth: int) -> list[int]:
        """The card tree's nodes no deeper than ``depth``, as parents."""
        paths = [p for p in self.tree if len(p) <= depth]
        index = {p: i for i, p in enumerate(paths)}
        return [index[p[:-1]] if len(p) > 1 else -1 for p in paths]

    def start(self, target_model, input_ids, attention_mask, hidden=None) -> None:
        size = getattr(target_model.config, "hidden_size", None)
        if size != self.heads.hidden_size:
            raise ValueError(f"Medusa heads expect hidden size {self.heads.hidden_size}, the target has {size}")
        output_vocab_size(target_model)  # a causal LM with an output head
        head = target_model.get_output_embeddings()
        dtype = self.dtype or head.weight.dtype
        if self.token_ids is None:
            if dtype == head.weight.dtype:
                self._lm_head = head
            elif getattr(self, "_cast_from", None) is not head or self._lm_head.weight.dtype != dtype:
                self._lm_head, self._cast_from = _cast(head, dtype), head  # once per target head, not per call
        elif not isinstance(self._lm_head, SubsetHead) or self._lm_head.weight.device != head.weight.device:
            self._lm_head = with_rows(head, self.token_ids, output_vocab_size(target_model), dtype)  # once per drafter
        self.heads.to(device=input_ids.device, dtype=dtype)
        # the state before the root; a one-token prompt has none until the first step commits
        self._hidden = hidden[:, -1] if hidden is not None and hidden.shape[1] else None

    def commit(self, update: CommitUpdate) -> None:
        self._hidden = update.hidden[:, -1]  # right-aligned: the last cached token of every row

    def take_rows(self, rows: torch.Tensor) -> "Medusa":
        out = copy.copy(self)
        out._hidden = None if self._hidden is None else self._hidden.index_select(0, rows)
        return out

    def join(self, others: list["Medusa"]) -> "Medusa":
        out = copy.copy(self)
        parts = [self] + others
        out._hidden = None
        if all(d._hidden is not None for d in parts):
            out._hidden = torch.cat([d._hidden for d in parts])
        return out

    @torch.no_grad()
    def propose(self, request: DraftRequest) -> DraftTree:
        device = request.roots.device
        b = request.batch_size
        paths = [p for p in self.tree if len(p) <= request.max_depth]
        if self._hidden is None or not paths:  # a one-token prompt: no hidden state yet
            return DraftTree.empty(b, device)
        depth = max(len(p) for p in paths)
        width = [1 + max(p[d] for p in paths if len(p) > d) for d in range(depth)]
        if isinstance(self._lm_head, SubsetHead):  # rank within the subset, then name target ids
            hidden = self._hidden.to(self._lm_head.weight.dtype)
            logits = self._lm_head.subset_logits(self.heads.states(hidden, depth))  # [D, B, V']
            guesses = [self._lm_head.token_ids[torch.topk(logits[d], width[d], dim=-1).indices] for d in range(depth)]
        else:
            logits = self.heads(self._hidden.to(self._lm_head.weight.dtype), self._lm_head)[:depth]  # [D, B, V]
            guesses = [torch.topk(logits[d], width[d], dim=-1).indices for d in range(depth)]  # [B, width]
        index = {p: i for i, p in enumerate(paths)}
        tokens = torch.stack([guesses[len(p) - 1][:, p[-1]] for p in paths], dim=1)
        parents = torch.tensor([index[p[:-1]] if len(p) > 1 else -1 for p in paths], device=device)
        return DraftTree(tokens, parents)
