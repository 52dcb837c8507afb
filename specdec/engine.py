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

from .acceptance import Acceptance, greedy_accept, recursive_rejection_sampling, speculative_sampling
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
           rng: Randomness) -> Acceptance:
    """The lossless rule for this tree: greedy match, or speculative / recursive rejection sampling."""
    if not sampling.do_sample:
        return greedy_accept(tree, greedy_targets(tree, verification))
    p = processed_probs(verification.logits, sampling)
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
) -> GenerateOutput:
    """Decode ``max_new_tokens`` tokens at most from ``target`` with speculative decoding.

    ``target`` is a Hugging Face causal LM; ``drafter=None`` decodes plainly through the same
    loop.  ``speculation`` is the length policy: None (the drafter's ``num_tokens``), an int,
    or a policy object such as SmartSpec.  ``randomness`` replaces the seeded random source
    (every coin and draw goes through it; tests pass one that enumerates outcomes exactly).
    """
    model = target.model if isinstance(target, Target) else target
    _check_inputs(model, input_ids, attention_mask, max_new_tokens, drafter)
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    sampling = SamplingConfig(do_sample, temperature, top_k, top_p)
    eos = _eos_ids(model, eos_token_id)
    rng = randomness if randomness is not None else seeded_randomness(seed, input_ids.device)
    policy = as_policy(speculation, drafter.num_tokens if drafter is not None else 0)
    stats = DecodeStats()
    device = input_ids.device

    started = time.perf_counter()
    verifier = Target(model)
    roots = verifier.prefill(input_ids, attention_mask)
    if drafter is not None:
        drafter.start(model, input_ids, attention_mask)
    stats.prefill_seconds = time.perf_counter() - started

    batch = input_ids.shape[0]
    active = list(range(batch))  # original row of each row still decoding
    committed = [row[m.bool()].tolist() for row, m in zip(input_ids, attention_mask)]
    generated: list[list[int]] = [[] for _ in range(batch)]
    want_hidden = drafter is not None and drafter.needs_hidden_states
    hidden = None  # [B, H] target hidden state before each root, for head drafters (none before step 1)
    while active:
        remaining = [max_new_tokens - len(generated[r]) for r in active]
        k = min(policy.next_length(), min(remaining) - 1) if drafter is not None else 0
        # 1. propose
        t0 = time.perf_counter()
        if k > 0:
            sequences, mask = left_padded([committed[r] for r in active], device)
            tree = drafter.propose(DraftRequest(sequences, mask, k, sampling, rng, hidden))
            _check_tree(tree, k, len(active))
        else:
            tree = DraftTree.empty(len(active), device)
        t1 = time.perf_counter()
        # 2. verify
        verification = verifier.verify(roots, tree)
        t2 = time.perf_counter()
        # 3. accept
        acceptance = accept(tree, verification, sampling, rng)
        # 4. commit: every row keeps its path; the target and drafter realign their caches
        verifier.commit(acceptance.paths, tree.num_nodes)
        if k > 0:
            drafter.commit(acceptance, tree)
        still = []
        for i, row in enumerate(active):
            path = acceptance.paths[i]
            new = _truncate(tree.tokens[i, path].tolist() + [int(acceptance.next_tokens[i])], remaining[i], eos)
            generated[row].extend(new)
            committed[row].extend(new)
            stats.accepted_histogram[len(path)] += 1
            if len(generated[row]) < max_new_tokens and new[-1] not in eos:
                still.append(i)
        if want_hidden:
            slots = torch.tensor([(p[-1] + 1) if p else 0 for p in acceptance.paths], device=device)
            hidden = verification.hidden[torch.arange(len(active), device=device), slots]
        roots = acceptance.next_tokens
        # 5. adapt, and drop finished rows
        if k > 0:
            policy.observe(tree.num_nodes, sum(map(len, acceptance.paths)) / len(active), time.perf_counter() - t0)
        stats.steps += 1
        stats.row_steps += len(active)
        stats.drafted_tokens += tree.num_nodes
        if len(still) < len(active):
            keep = torch.tensor(still, dtype=torch.long, device=device)
            verifier.select_rows(keep)
            if drafter is not None:
                drafter.select_rows(keep)
            roots = roots[keep]
            hidden = hidden[keep] if hidden is not None else None
            active = [active[i] for i in still]
        t3 = time.perf_counter()
        stats.draft_seconds += t1 - t0
        stats.verify_seconds += t2 - t1
        stats.other_seconds += t3 - t2
    stats.total_seconds = time.perf_counter() - started
    stats.other_seconds += stats.prefill_seconds
    stats.row_tokens = [len(g) for g in generated]
    stats.tokens_generated = sum(stats.row_tokens)
    stats.target_forwards = verifier.forwards
    stats.realign_seconds = verifier.cache.realign_seconds
    stats.realignments = verifier.cache.realignments
    pad = _pad_id(model, pad_token_id, eos, generated)
    return GenerateOutput(_assemble(input_ids, generated, pad), stats)


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
