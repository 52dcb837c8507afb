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
import json

import torch

from ..medusa_tree import build_sparse_tree
from ..tree import DraftTree
from .base import CommitUpdate, Drafter, DraftRequest, output_vocab_size
from .vocab import SubsetHead


def with_rows(head: torch.nn.Module, token_ids: torch.Tensor, vocab_size: int) -> SubsetHead:
    """The target's own output head restricted to the rows of ``token_ids``."""
    weight = head.weight.detach().index_select(0, token_ids.to(head.weight.device))
    return SubsetHead(weight, token_ids.to(head.weight.device), vocab_size)

WEIGHTS = "medusa.safetensors"
CARD = "card.json"


class Medusa(Drafter):
    """Medusa heads plus the sparse tree of rank paths they are verified with."""


    def __init__(self, heads, tree: list[tuple[int, ...]], token_ids: torch.Tensor | None = None):
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
        self._lm_head = None
        self._hidden: torch.Tensor | None = None  # [B, H] target state before each row's root

    @classmethod
    def from_pretrained(cls, path, target_model: torch.nn.Module, max_nodes: int | None = None) -> "Medusa":
        """Heads and tree from a directory holding ``medusa.safetensors`` and ``card.json``.

        The card's ``tree`` is used unless ``max_nodes`` asks for a tree rebuilt from its
        measured ``top_k_accuracy`` (per head, per rank).
        """
        from safetensors.torch import load_file

        from specdec.heads.medusa import MedusaHeads

        from ..artifacts import resolve

        folder = resolve(path)
        for name in (WEIGHTS, CARD):
            if not (folder / name).is_file():
                raise FileNotFoundError(f"Medusa artifact {folder} lacks {name}")
        card = json.loads((folder / CARD).read_text(encoding="utf-8"))
        tensors = load_file(str(folder / WEIGHTS))
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
        dtype = next(target_model.parameters()).dtype
        return cls(heads.to(dtype), tree, token_ids)

    def start(self, target_model, input_ids, attention_mask, hidden=None) -> None:
        size = getattr(target_model.config, "hidden_size", None)
        if size != self.heads.hidden_size:
            raise ValueError(f"Medusa heads expect hidden size {self.heads.hidden_size}, the target has {size}")
        output_vocab_size(target_model)  # a causal LM with an output head
        head = target_model.get_output_embeddings()
        if self.token_ids is None:
            self._lm_head = head
        elif not isinstance(self._lm_head, SubsetHead) or self._lm_head.weight.device != head.weight.device:
            self._lm_head = with_rows(head, self.token_ids, output_vocab_size(target_model))  # once per drafter
        self.heads.to(device=input_ids.device, dtype=next(target_model.parameters()).dtype)
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
            logits = self._lm_head.subset_logits(self.heads.states(self._hidden, depth))  # [D, B, V']
            guesses = [self._lm_head.token_ids[torch.topk(logits[d], width[d], dim=-1).indices] for d in range(depth)]
        else:
            logits = self.heads(self._hidden, self._lm_head)[:depth]  # [D, B, V]
            guesses = [torch.topk(logits[d], width[d], dim=-1).indices for d in range(depth)]  # [B, width]
        index = {p: i for i, p in enumerate(paths)}
        tokens = torch.stack([guesses[len(p) - 1][:, p[-1]] for p in paths], dim=1)
        parents = torch.tensor([index[p[:-1]] if len(p) > 1 else -1 for p in paths], device=device)
        return DraftTree(tokens, parents)
