"""The drafter protocol: every way of proposing tokens is one small class.

A drafter follows the committed sequence of every row through two calls and proposes in
between:

* ``start(target_model, input_ids, attention_mask, hidden)`` at prefill: the prompts
  (left-padded) and the target's final hidden states over every prompt token but the last
  (the *root*, which the first verification computes).
* ``propose(request)``: a :class:`~specdec.tree.DraftTree` hanging below each row's root, at
  most ``request.depth[r]`` deep for row r (the engine masks anything past a row's depth or
  node budget, so drafting to ``request.max_depth`` for every row is correct).
* ``commit(update)`` after *every* step, drafted or not: the tokens the target now caches (the
  old root and the accepted nodes) with their final hidden states, and each row's new root.
  A drafter that attends over the target's history (Medusa, Chimera, EAGLE) keeps what it needs
  of these; one that runs its own model keeps its cache in step through
  :class:`~specdec.drafters.draft_cache.DraftCache`.

So a drafter only ever sees the tokens committed since its last call, never a rebuilt history.
It never sees the target's cache and never decides acceptance.
"""
from __future__ import annotations

import abc
from dataclasses import dataclass

import torch

from ..sampling import Randomness, SamplingConfig
from ..tree import DraftTree


@dataclass
class DraftRequest:
    """What a drafter is asked for in one step."""

    roots: torch.Tensor  # [B] each row's last committed token, which the tree hangs below
    lengths: torch.Tensor  # [B] committed tokens per row, the root included (root position = lengths - 1)
    depth: list[int]  # per row: at most this many tokens deep (0 = nothing wanted from this row)
    sampling: SamplingConfig
    rng: Randomness  # every random draw goes through it
    max_nodes: list[int | None] | None = None  # per row node budget (None: the drafter's own)
    sources: tuple[int, ...] | None = None  # which sources draft (a hybrid's; None: all)

    @property
    def max_depth(self) -> int:
        return max(self.depth)

    @property
    def batch_size(self) -> int:
        return self.roots.shape[0]


@dataclass
class CommitUpdate:
    """What one step committed, per row: a drafter's view of the verification's outcome."""

    tree: DraftTree  # the tree that was verified (empty when nothing was proposed)
    proposed: bool  # whether this drafter proposed that tree (False: it sat the step out)
    paths: list[list[int]]  # accepted node indices per row, from depth 1 down
    cached: torch.Tensor  # [B, W] tokens the target cached this step: the old root, then the accepted nodes
    cached_real: torch.Tensor  # [B, W] bool, right-aligned: False on the left of shorter rows
    hidden: torch.Tensor  # [B, W, H] the target's final hidden states at those tokens
    roots: torch.Tensor  # [B] each row's new root: the token after its path (not cached yet)

    def appended(self, row: int) -> list[int]:
        """Tokens added to row ``row``'s committed sequence: the accepted nodes, then the new root."""
        return self.tree.tokens[row, self.paths[row]].tolist() + [int(self.roots[row])]

    def take_rows(self, rows: list[int]) -> "CommitUpdate":
        index = torch.tensor(rows, dtype=torch.long, device=self.roots.device)
        return CommitUpdate(self.tree.take_rows(index), self.proposed, [self.paths[r] for r in rows],
                            self.cached[index], self.cached_real[index], self.hidden[index], self.roots[index])


class Drafter(abc.ABC):
    """Proposes draft trees. Subclasses implement :meth:`propose`; the rest is optional."""

    #: the drafter's own depth: ``speculation=None`` drafts at most this deep unless ``max_depth`` says more
    num_tokens: int = 4
    #: the deepest tree this drafter can draft (None: any depth)
    max_depth: int | None = None
    #: True when the drafter keeps no per-row state between steps (then rows need no copying)
    stateless: bool = False
    #: sources (see :meth:`template_sources`) whose drafting costs next to nothing (lookups): a policy may
    #: ask for these alone (``DraftRequest.sources``) and save the others' draft time
    free_sources: tuple[int, ...] = ()

    def start(self, target_model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
              hidden: torch.Tensor) -> None:
        """Begin a new batch of prompts; check compatibility with the target.

        ``hidden`` [B, T-1, H]: the target's final hidden states at ``input_ids[:, :-1]``.
        """

    @abc.abstractmethod
    def propose(self, request: DraftRequest) -> DraftTree:
        """A draft tree at most ``request.max_depth`` deep (>= 1), nodes numbered in priority order."""

    def commit(self, update: CommitUpdate) -> None:
        """What the target kept of the last step, per row (called after every step)."""

    def tree_template(self, depth: int) -> list[int]:
        """Parents (-1: the root) of the largest tree this drafter proposes when asked for ``depth`` levels,
        nodes in its priority order, levels growing one after another.  A chain by default; tree drafters
        give their own shape (the goodput policy values it node by node before drafting)."""
        reach = depth if self.max_depth is None else min(depth, self.max_depth)
        return list(range(-1, reach - 1))

    def template_sources(self, depth: int) -> list[int] | None:
        """The source of each node of :meth:`tree_template` (0: drawn by a model, 1 and up: copied), for
        drafters that mix sources (:class:`~specdec.drafters.hybrid.Hybrid`); None: one source."""
        return None

    def ready_sources(self) -> list[tuple[int, ...]] | None:
        """Per row of the current batch, which of the :attr:`free_sources` would propose something if asked
        now (a lookup costs next to nothing, so a policy may look before it plans); None: unknown."""
        return None

    def source_priors(self) -> dict[int, tuple[float, ...]]:
        """Per source, the acceptance a policy assumes before it has observed any (by depth, the last one
        for deeper levels); sources left out get the policy's own prior."""
        return {}

    @property
    def cost_name(self) -> str:
        """The name a latency profile keeps this drafter's draft cost under (its class and what it drafts with)."""
        model = next((m for m in (getattr(self, a, None) for a in ("model", "draft", "heads"))
                      if isinstance(m, torch.nn.Module)), None)
        if model is not None:
            parameter = next(model.parameters(), None)
            size = sum(p.numel() for p in model.parameters())
            return f"{self.name}:{size}:{str(parameter.dtype).replace('torch.', '') if parameter is not None else ''}"
        return self.name

    def default_policy(self):
        """The speculation policy ``generate`` uses with this drafter when given none: a goodput policy
        (:class:`~specdec.policy.smartspec.SmartSpec`) made on first use and kept, so it learns across calls."""
        policy = self.__dict__.get("_default_policy")
        if policy is None:
            from ..policy.smartspec import SmartSpec

            policy = self.__dict__["_default_policy"] = SmartSpec()
        return policy

    def take_rows(self, rows: torch.Tensor) -> "Drafter":
        """A drafter for batch rows ``rows`` of this one's batch, with its own copy of their state.

        ``self`` is left unchanged.  Used to drop finished rows and, in ``generate_pool``, to
        split a batch into groups; called between a ``commit`` and the next ``propose``.
        """
        if self.stateless:
            return self
        raise NotImplementedError(
            f"{self.name} keeps per-row state but does not implement take_rows()/join(), "
            "which batches with finishing rows and generate_pool need"
        )

    def join(self, others: list["Drafter"]) -> "Drafter":
        """One drafter for the rows of ``[self, *others]`` in order (states made by ``start``/``take_rows``)."""
        if self.stateless:
            return self
        raise NotImplementedError(f"{self.name} keeps per-row state but does not implement join()")

    @property
    def name(self) -> str:
        return type(self).__name__


def output_vocab_size(model: torch.nn.Module) -> int:
    """Width of a causal LM's logits: its full vocabulary, also when the head is a subset head."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is None:
        raise TypeError(f"{type(model).__name__} has no output embedding; expected a causal LM")
    return int(getattr(head, "vocab_size", None) or head.weight.shape[0])


def check_same_vocabulary(draft_model: torch.nn.Module, target_model: torch.nn.Module) -> None:
    """Raise when a draft's logits do not index the target's vocabulary."""
    draft_v, target_v = output_vocab_size(draft_model), output_vocab_size(target_model)
    if draft_v != target_v:
        raise ValueError(
            f"draft and target vocabularies differ: the draft model predicts {draft_v} tokens, "
            f"the target {target_v}; a draft model must share the target's tokenizer and vocabulary"
        )


def as_dtype(value) -> "torch.dtype | None":
    """A torch dtype from a dtype, its name (``"float16"``, ``"torch.float16"``) or None (None)."""
    if value is None or isinstance(value, torch.dtype):
        return value
    name = str(value).removeprefix("torch.")
    dtype = getattr(torch, name, None)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(f"unknown floating-point dtype {value!r} (e.g. 'float32', 'float16', 'bfloat16')")
    return dtype
