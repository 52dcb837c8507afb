"""The drafter protocol: every way of proposing tokens is one small class.

A drafter is started on a prompt batch, ``propose``s a :class:`~specdec.tree.DraftTree` from
the committed context each step, and is told what was accepted through ``commit`` so that its
own caches follow.  It never sees the target's cache and never decides acceptance.
"""
from __future__ import annotations

import abc
from dataclasses import dataclass

import torch

from ..acceptance import Acceptance
from ..sampling import Randomness, SamplingConfig
from ..tree import DraftTree


@dataclass
class DraftRequest:
    """Everything a drafter may look at to propose one tree."""

    sequences: torch.Tensor  # [B, T] committed tokens, the root last (left-padded)
    attention_mask: torch.Tensor  # [B, T] 1 at real tokens
    num_tokens: int  # speculation budget for this step: at most this many tokens deep
    sampling: SamplingConfig
    rng: Randomness  # every random draw goes through it
    hidden: torch.Tensor | None = None  # [B, H] target's last hidden state before the root


class Drafter(abc.ABC):
    """Proposes draft trees. Subclasses implement :meth:`propose`; the rest is optional."""

    #: default speculation length when ``generate(speculation=None)``
    num_tokens: int = 4
    #: whether :meth:`propose` needs the target's hidden state (head drafters)
    needs_hidden_states: bool = False
    #: True when the drafter keeps no per-row state between steps (then rows need no copying)
    stateless: bool = False

    def start(self, target_model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> None:
        """Begin a new batch of prompts; check compatibility with the target."""

    @abc.abstractmethod
    def propose(self, request: DraftRequest) -> DraftTree:
        """A draft tree at most ``request.num_tokens`` deep (``num_tokens`` >= 1)."""

    def commit(self, acceptance: Acceptance, tree: DraftTree) -> None:
        """What the target kept of the last proposal (paths and the token after them), per row."""

    def take_rows(self, rows: torch.Tensor) -> "Drafter":
        """A drafter for batch rows ``rows`` of this one's batch, with its own copy of their state.

        ``self`` is left unchanged.  Used to drop finished rows and, in ``generate_pool``, to
        split a batch into groups; may be called between ``propose`` and ``commit``.
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
    """Rows of a causal LM's output embedding (its logits' width)."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is None:
        raise TypeError(f"{type(model).__name__} has no output embedding; expected a causal LM")
    return head.weight.shape[0]


def check_same_vocabulary(draft_model: torch.nn.Module, target_model: torch.nn.Module) -> None:
    """Raise when a draft's logits do not index the target's vocabulary."""
    draft_v, target_v = output_vocab_size(draft_model), output_vocab_size(target_model)
    if draft_v != target_v:
        raise ValueError(
            f"draft and target vocabularies differ: the draft model predicts {draft_v} tokens, "
            f"the target {target_v}; a draft model must share the target's tokenizer and vocabulary"
        )
