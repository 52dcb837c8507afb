"""The one decode loop every method shares: propose, verify, accept, commit, adapt.

Knows nothing about tokenization: token ids in, token ids out.  ``generate`` returns
sequences shaped and padded exactly like ``model.generate`` for the same input, and with
``do_sample=False`` the very same tokens; with sampling, tokens distributed exactly as the
target's own sampler's.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from .acceptance import (Acceptance, greedy_accept, recursive_rejection_sampling, speculative_sampling,
                         typical_accept)
from .drafters.base import DraftRequest, Drafter
from .sampling import Randomness, SamplingConfig, processed_probs, seeded_randomness
from .speculation import as_policy
from .stats import DecodeStats
from .target import Target, Verification
from .tree import DraftTree


@dataclass
class GenerateOutput:
    sequences: torch.Tensor  # [B, T + generated], like model.generate
    stats: DecodeStats


def accept(tree: DraftTree, verification: Verification, sampling: SamplingConfig,
           rng: Randomness, typical: tuple[float, float] | None = None) -> Acceptance:
    """The lossless rule for this tree: greedy match, or speculative / recursive rejection sampling.

    ``typical`` = (epsilon, delta) switches sampling to Medusa's typical acceptance, which is
    LOSSY (opt-in only); greedy decoding ignores it.
    """
    if not sampling.do_sample:
        return greedy_accept(tree, greedy_targets(tree, verification))
    p = processed_probs(verification.logits, sampling)
    if typical is not None:
        return typical_accept(tree, p, rng, *typical)
    if tree.is_chain:
        return speculative_sampling(tree.tokens, tree.draft_probs, p, rng, tree.valid)
    return recursive_rejection_sampling(tree, p, rng)


@torch.no_grad()
def greedy_targets(tree: DraftTree, verification: Verification) -> torch.Tensor:
    """The target's argmax [B, 1+N] at every slot greedy acceptance can reach, -1 elsewhere.

    Walks the tree depth by depth and computes logits only for the root and for nodes whose
    whole path so far matches, so a rejected draft costs no output-head work.
    """
    b, n = tree.tokens.shape
    targets = torch.full((b, n + 1), -1, dtype=torch.long, device=tree.tokens.device)
    targets[:, 0] = verification.logits_at(torch.tensor([0], device=targets.device))[:, 0].argmax(-1)
    if n == 0:
        return targets
    slots = tree.parent_slots
    valid = tree.node_valid
    reached = torch.zeros(b, n, dtype=torch.bool, device=targets.device)
    for depth in range(1, int(tree.depth.max()) + 1):
        at_depth = tree.depth == depth
        expected = targets.gather(1, slots[None].expand(b, n))
        parent_ok = torch.cat([torch.ones(b, 1, dtype=torch.bool, device=targets.device), reached], 1)
        parent_ok = parent_ok.gather(1, slots[None].expand(b, n))
        hit = at_depth[None] & parent_ok & valid & (tree.tokens == expected)
        reached |= hit
        need = hit.any(dim=0).nonzero().squeeze(-1)
        if need.numel() == 0:
            break
        targets[:, need + 1] = verification.logits_at(need + 1).argmax(-1)
    return targets


@dataclass
class Cohort:
    """Rows decoded together as one batch: their sequence ids and the state that follows them."""

    ids: list[int]  # sequence ids (input order) of the rows
    target: Target  # the model and these rows' key/value cache
    drafter: Drafter | None  # the drafter's state for these rows
    roots: torch.Tensor  # [B] last committed token per row (not cached yet)
    hidden: torch.Tensor | None = None  # [B, H] target hidden state before each root (head drafters)

    @property
    def size(self) -> int:
        return len(self.ids)

    def take_rows(self, rows: list[int]) -> "Cohort":
        """A cohort of copies of rows ``rows``; may be taken between a step and its commit."""
        index = torch.tensor(rows, dtype=torch.long, device=self.roots.device)
        return Cohort([self.ids[r] for r in rows], self.target.take_rows(index),
                      self.drafter.take_rows(index) if self.drafter is not None else None,
                      self.roots[index], self.hidden[index] if self.hidden is not None else None)

    def join(self, others: list["Cohort"]) -> "Cohort":
        """One cohort of the rows of ``[self, *others]`` (left-padded when their lengths differ)."""
        if not others:
            return self
        parts = [self] + others
        # rows just admitted have no hidden state yet; head drafters then get None for the batch
        hidden = torch.cat([c.hidden for c in parts]) if all(c.hidden is not None for c in parts) else None
        return Cohort([i for c in parts for i in c.ids], self.target.join([c.target for c in others]),
                      self.drafter.join([c.drafter for c in others]) if self.drafter is not None else None,
                      torch.cat([c.roots for c in parts]), hidden)


@dataclass
class StepResult:
    acceptance: Acceptance
    tree: DraftTree
    still: list[int]  # rows of the cohort that go on decoding
    drafted: bool  # whether the drafter proposed (and so must hear the commit)


class Decoding:
    """One decoding job: its settings, every sequence's tokens so far, and the step.

    ``generate`` runs one cohort to the end; ``generate_pool`` runs many, choosing which rows
    step together.  Both go through :meth:`step` and :meth:`commit`, the one decode loop.
    """

    def __init__(self, model, drafter, sampling, eos, rng, policy, max_new_tokens, typical=None):
        self.model = model
        self.typical = typical
        self.drafter = drafter
        self.sampling = sampling
        self.eos = eos
        self.rng = rng
        self.policy = policy
        self.max_new_tokens = max_new_tokens
        self.stats = DecodeStats()
        self.committed: dict[int, list[int]] = {}
        self.generated: dict[int, list[int]] = {}
        self.want_hidden = drafter is not None and drafter.needs_hidden_states

    def admit(self, ids: list[int], input_ids: torch.Tensor, attention_mask: torch.Tensor, drafter) -> Cohort:
        """Prefill the prompts of sequences ``ids`` (a left-padded batch) into a new cohort."""
        started = time.perf_counter()
        target = Target(self.model)
        roots = target.prefill(input_ids, attention_mask)
        self.stats.target_forwards += int(input_ids.shape[1] > 1)
        if drafter is not None:
            drafter.start(self.model, input_ids, attention_mask)
        for i, row, m in zip(ids, input_ids, attention_mask):
            self.committed[i] = row[m.bool()].tolist()
            self.generated[i] = []
        self.stats.prefill_seconds += time.perf_counter() - started
        return Cohort(list(ids), target, drafter, roots, target.prefill_hidden if self.want_hidden else None)

    def length(self, sequence: int) -> int:
        """Committed tokens of a sequence (prompt and generated)."""
        return len(self.committed[sequence])

    def step(self, cohort: Cohort) -> StepResult:
        """Propose, verify and accept for every row of ``cohort``; the caller commits."""
        stats, device = self.stats, cohort.roots.device
        remaining = [self.max_new_tokens - len(self.generated[i]) for i in cohort.ids]
        k = min(self.policy.next_length(), min(remaining) - 1) if cohort.drafter is not None else 0
        # 1. propose
        t0 = time.perf_counter()
        if k > 0:
            sequences, mask = left_padded([self.committed[i] for i in cohort.ids], device)
            tree = cohort.drafter.propose(DraftRequest(sequences, mask, k, self.sampling, self.rng, cohort.hidden))
            _check_tree(tree, k, cohort.size)
        else:
            tree = DraftTree.empty(cohort.size, device)
        t1 = time.perf_counter()
        # 2. verify
        verification = cohort.target.verify(cohort.roots, tree)
        stats.target_forwards += 1
        t2 = time.perf_counter()
        # 3. accept
        acceptance = accept(tree, verification, self.sampling, self.rng, self.typical)
        still = []
        proposed = int(tree.depth.max()) if tree.num_nodes else 0
        for r, sequence in enumerate(cohort.ids):
            path = acceptance.paths[r]
            new = _truncate(tree.tokens[r, path].tolist() + [int(acceptance.next_tokens[r])], remaining[r], self.eos)
            self.generated[sequence].extend(new)
            self.committed[sequence].extend(new)
            stats.depth_accepted[proposed, len(path)] += 1
            if len(self.generated[sequence]) < self.max_new_tokens and new[-1] not in self.eos:
                still.append(r)
        if self.want_hidden:
            slots = torch.tensor([(p[-1] + 1) if p else 0 for p in acceptance.paths], device=device)
            cohort.hidden = verification.hidden[torch.arange(cohort.size, device=device), slots]
        cohort.roots = acceptance.next_tokens
        # 4. adapt
        if k > 0:
            self.policy.observe(tree.num_nodes, sum(acceptance.num_accepted) / cohort.size, time.perf_counter() - t0)
        stats.steps += 1
        stats.row_steps += cohort.size
        stats.drafted_tokens += tree.num_nodes
        stats.draft_seconds += t1 - t0
        stats.verify_seconds += t2 - t1
        stats.other_seconds += time.perf_counter() - t2
        return StepResult(acceptance, tree, still, k > 0)

    def commit(self, cohort: Cohort, acceptance: Acceptance, tree: DraftTree, drafted: bool) -> tuple[bool, float]:
        """Keep every row's accepted path in the target's and drafter's caches.

        Returns whether rows had to be realigned (they kept different numbers of entries) and
        the seconds the commit took.
        """
        started = time.perf_counter()
        ragged = cohort.target.commit(acceptance.paths, tree.num_nodes)
        if drafted:
            cohort.drafter.commit(acceptance, tree)
        seconds = time.perf_counter() - started
        self.stats.other_seconds += seconds
        return ragged, seconds

    def finish(self, started: float) -> None:
        stats = self.stats
        stats.total_seconds = time.perf_counter() - started
        stats.other_seconds += stats.prefill_seconds
        stats.row_tokens = [len(self.generated[i]) for i in sorted(self.generated)]
        stats.tokens_generated = sum(stats.row_tokens)


def generate(
    target,
    input_ids: torch.Tensor,
    drafter: Drafter | None = None,
    attention_mask: torch.Tensor | None = None,
    max_new_tokens: int = 64,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    eos_token_id: int | list[int] | None = None,
    pad_token_id: int | None = None,
    seed: int | None = None,
    speculation=None,
    randomness: Randomness | None = None,
    typical_acceptance: tuple[float, float] | None = None,
) -> GenerateOutput:
    """Decode ``max_new_tokens`` tokens at most from ``target`` with speculative decoding.

    ``target`` is a Hugging Face causal LM; ``drafter=None`` decodes plainly through the same
    loop.  ``speculation`` is the length policy: None (the drafter's ``num_tokens``), an int,
    or a policy object such as SmartSpec.  ``randomness`` replaces the seeded random source
    (every coin and draw goes through it; tests pass one that enumerates outcomes exactly).
    ``typical_acceptance=(epsilon, delta)`` replaces lossless sampling by Medusa's typical
    acceptance: LOSSY, the output is no longer distributed as the target's.

    A batch is decoded together (EQSPEC): after each step rows that accepted different
    numbers of tokens are realigned, and finished rows leave the batch.
    """
    model = target.model if isinstance(target, Target) else target
    _check_inputs(model, input_ids, attention_mask, max_new_tokens, drafter)
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    job = decoding(model, drafter, max_new_tokens, do_sample, temperature, top_k, top_p, eos_token_id, seed,
                   speculation, randomness, input_ids.device, typical_acceptance)
    started = time.perf_counter()
    cohort = job.admit(list(range(input_ids.shape[0])), input_ids, attention_mask, drafter)
    run_to_end(job, cohort)
    job.finish(started)
    generated = [job.generated[i] for i in range(input_ids.shape[0])]
    pad = _pad_id(model, pad_token_id, job.eos, generated)
    return GenerateOutput(_assemble(input_ids, generated, pad), job.stats)


def decoding(model, drafter, max_new_tokens, do_sample, temperature, top_k, top_p, eos_token_id, seed,
             speculation, randomness, device, typical_acceptance=None) -> Decoding:
    """A :class:`Decoding` from ``generate``'s keyword arguments."""
    sampling = SamplingConfig(do_sample, temperature, top_k, top_p)
    rng = randomness if randomness is not None else seeded_randomness(seed, device)
    policy = as_policy(speculation, drafter.num_tokens if drafter is not None else 0)
    typical = _typical(typical_acceptance)
    return Decoding(model, drafter, sampling, _eos_ids(model, eos_token_id), rng, policy, max_new_tokens, typical)


def _typical(value) -> tuple[float, float] | None:
    if value is None:
        return None
    try:
        epsilon, delta = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"typical_acceptance must be None or (epsilon, delta), got {value!r}") from None
    if not (0 <= epsilon <= 1 and delta >= 0):
        raise ValueError(f"typical_acceptance needs 0 <= epsilon <= 1 and delta >= 0, got {value!r}")
    return epsilon, delta


def run_to_end(job: Decoding, cohort: Cohort) -> None:
    """Step one cohort until every row is finished, realigning ragged rows after each step (EQSPEC)."""
    while True:
        result = job.step(cohort)
        ragged, seconds = job.commit(cohort, result.acceptance, result.tree, result.drafted)
        if ragged:
            job.stats.realignments += 1
            job.stats.realign_seconds += seconds
        if not result.still:
            return
        if len(result.still) < cohort.size:
            cohort = cohort.take_rows(result.still)


def left_padded(rows: list[list[int]], device) -> tuple[torch.Tensor, torch.Tensor]:
    """A left-padded [B, T] tensor of token lists and its attention mask."""
    width = max(len(r) for r in rows)
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for i, r in enumerate(rows):
        if r:
            ids[i, width - len(r):] = torch.tensor(r)
            mask[i, width - len(r):] = 1
    return ids.to(device), mask.to(device)


def _assemble(input_ids: torch.Tensor, generated: list[list[int]], pad: int | None) -> torch.Tensor:
    """Prompt plus generated tokens, rows padded after their end, as ``model.generate`` returns."""
    width = max(len(g) for g in generated)
    tail = torch.full((len(generated), width), pad if pad is not None else 0, dtype=input_ids.dtype)
    for i, g in enumerate(generated):
        tail[i, :len(g)] = torch.tensor(g, dtype=input_ids.dtype)
    return torch.cat([input_ids, tail.to(input_ids.device)], dim=1)


def _pad_id(model, pad_token_id, eos: set[int], generated: list[list[int]]) -> int | None:
    if pad_token_id is not None:
        return pad_token_id
    config_pad = getattr(getattr(model, "generation_config", None), "pad_token_id", None)
    if config_pad is not None:
        return config_pad
    if eos:
        return min(eos)  # as transformers does: pad with EOS when no pad token is set
    if len({len(g) for g in generated}) > 1:
        raise ValueError("rows ended at different lengths but no pad_token_id is known; pass pad_token_id")
    return None


def _truncate(tokens: list[int], remaining: int, eos: set[int]) -> list[int]:
    """Cut a step's tokens at the budget and just after the first end-of-sequence token."""
    tokens = tokens[:remaining]
    for i, token in enumerate(tokens):
        if token in eos:
            return tokens[: i + 1]
    return tokens


def _eos_ids(model, eos_token_id) -> set[int]:
    if eos_token_id is None:
        config = getattr(model, "generation_config", None)
        eos_token_id = getattr(config, "eos_token_id", None)
    if eos_token_id is None:
        return set()
    if isinstance(eos_token_id, int):
        return {eos_token_id}
    return {int(t) for t in eos_token_id}


def _check_inputs(model, input_ids, attention_mask, max_new_tokens, drafter) -> None:
    if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2:
        shape = tuple(input_ids.shape) if isinstance(input_ids, torch.Tensor) else type(input_ids).__name__
        raise ValueError(f"input_ids must be a 2D LongTensor [batch, length], got {shape}")
    if input_ids.numel() == 0:
        raise ValueError(f"input_ids is empty (shape {tuple(input_ids.shape)}); give at least one token per row")
    if input_ids.dtype not in (torch.long, torch.int):
        raise ValueError(f"input_ids must hold integer token ids, got dtype {input_ids.dtype}")
    vocab = model.get_output_embeddings().weight.shape[0]
    if int(input_ids.min()) < 0 or int(input_ids.max()) >= vocab:
        raise ValueError(f"input_ids holds token ids outside the model's vocabulary [0, {vocab})")
    if attention_mask is not None:
        if attention_mask.shape != input_ids.shape:
            raise ValueError(
                f"attention_mask shape {tuple(attention_mask.shape)} does not match input_ids {tuple(input_ids.shape)}"
            )
        if not bool(attention_mask[:, -1].bool().all()):
            raise ValueError("attention_mask must be left-padded: the last column must be 1 in every row")
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be an int >= 1, got {max_new_tokens!r}")
    limit = getattr(model.config, "max_position_embeddings", None)
    if limit is not None and input_ids.shape[1] + max_new_tokens > limit:
        raise ValueError(
            f"prompt length {input_ids.shape[1]} + max_new_tokens {max_new_tokens} exceeds the model's "
            f"context of {limit} positions"
        )
    if drafter is not None and not isinstance(drafter, Drafter):
        raise TypeError(
            f"drafter must be a specdec.drafters.Drafter (e.g. DraftModel, PromptLookup) or None, "
            f"got {type(drafter).__name__}"
        )


def _check_tree(tree: DraftTree, k: int, batch_size: int) -> None:
    if not isinstance(tree, DraftTree):
        raise TypeError(f"a drafter's propose() must return a DraftTree, got {type(tree).__name__}")
    if tree.batch_size != batch_size:
        raise ValueError(f"draft tree has {tree.batch_size} rows for a batch of {batch_size}")
    if tree.num_nodes and int(tree.depth.max()) > k:
        raise ValueError(f"draft tree is {int(tree.depth.max())} deep, more than the {k} tokens asked for")
