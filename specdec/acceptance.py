"""Acceptance rules: pure tensor functions that decide what of a draft tree the target keeps.

No models here. Variable names follow the papers: ``p`` is the target's law, ``q`` the
draft's, ``residual`` is norm(max(0, p - q)).  Every rule returns an :class:`Acceptance`:
the accepted path (node indices, root excluded) and the next token (the correction drawn
from the residual after a rejection, or the bonus token after an accepted leaf).

Lossless rules:
* :func:`greedy_accept` — longest path whose tokens equal the target's argmax.
* :func:`speculative_sampling` — chains, vectorised (Leviathan et al.; Chen et al.): accept x with
  probability min(1, p(x)/q(x)); at the first rejection draw from the residual.
* :func:`recursive_rejection_sampling` — trees (Jeon et al., RSD; SpecTr for point masses):
  children are tested in draw order against a running residual; a child drawn without
  replacement is tested against q with the earlier siblings removed and renormalised, a
  deterministic child as a point mass (accept with probability r(x), else zero x).  Trees
  may mix both (``DraftTree.copied``): a copy is a point mass wherever it stands among drawn
  siblings, and removes nothing from their law, since they were not drawn without it.

Lossy, opt-in: :func:`typical_accept` (Medusa's typical acceptance).

:func:`accept` picks the rule for a step: sampled steps, chains included, walk the tree
(on a chain that walk is speculative sampling) over :class:`SlotLaws`, which computes the target's
head only at the slots the walk reaches, as :func:`greedy_targets` does for greedy acceptance.
Trees may differ in shape from row to row.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

from .sampling import Randomness, SamplingConfig, law_dtype, processed_probs
from .tree import DraftTree


@dataclass
class Acceptance:
    """What one verification keeps, per batch row."""

    paths: list[list[int]]  # accepted node indices from depth 1 down, per row
    next_tokens: torch.Tensor  # [B] long: correction or bonus token after the path

    @property
    def num_accepted(self) -> list[int]:
        return [len(path) for path in self.paths]

    def take_rows(self, rows: list[int]) -> "Acceptance":
        return Acceptance([self.paths[r] for r in rows], self.next_tokens[torch.tensor(rows, dtype=torch.long, device=self.next_tokens.device)])


def _normalise(law: torch.Tensor) -> torch.Tensor:
    return law / law.sum(dim=-1, keepdim=True)


def residual(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """norm(max(0, p - q)) over the last dimension; falls back to ``p`` where p <= q everywhere.

    In exact arithmetic a rejection cannot happen when p <= q everywhere (then p == q), so the
    fallback only catches rounding; it keeps the draw well defined.
    """
    diff = (p - q).clamp_min(0)
    mass = diff.sum(dim=-1, keepdim=True)
    return torch.where(mass > 0, diff / mass.clamp_min(torch.finfo(diff.dtype).tiny), p)


class SlotLaws:
    """The target's processed law at each slot, indexed ``p[row, slot]`` like a [B, 1+N, V] tensor but
    processed (temperature, top-k, top-p, softmax) only for the slots a rule reads, once per slot.

    Recursive rejection sampling reads the root's law and those of the nodes it accepts, usually a
    few slots of a tree; over a 262k vocabulary each law processed costs about a third of a millisecond.

    ``logits``: a [B, 1+N, V] tensor, or a :class:`Verification` with ``tree``, whose logits are then
    computed on demand too, as :func:`greedy_targets` computes them: the output head reads its whole
    matrix on every call (SmolLM2's 113 MB: 7-10 ms a call on 2 CPU cores for 1-4 rows, 20-28 ms for
    12-24), so a tree's every slot at once costs two to three calls' worth where a walk usually needs one
    or two.  The first call covers the root and, while they cost about as much as one row
    (``verification.cheap_rows``), the first nodes; a slot asked for later comes with its descendants
    ``ahead - 1`` levels down, at most twice as many slots as the call before, ``ahead`` doubling from 2.
    """

    def __init__(self, logits, sampling: SamplingConfig, tree: DraftTree | None = None):
        self.sampling = sampling
        self._slots: dict[int, torch.Tensor] = {}
        if isinstance(logits, torch.Tensor):
            self.logits, self.verification = logits, None  # logits [B, 1+N, V]
            self.dtype = law_dtype(logits.dtype)
            return
        if tree is None:
            raise ValueError("SlotLaws over a verification needs the tree, to look ahead below the slots asked for")
        self.logits, self.verification, self.tree = None, logits, tree
        self._valid = tree.node_valid.tolist()
        self.calls, self._ahead = 0, 2
        self._most = max(1, int(logits.cheap_rows) // max(1, tree.batch_size))  # slots per call, doubling
        self._compute(list(range(min(tree.num_nodes + 1, self._most))))

    def __getitem__(self, index: tuple[int, int]) -> torch.Tensor:
        row, slot = index
        slot = int(slot)
        if slot not in self._slots:
            if self.verification is None:
                self._slots[slot] = processed_probs(self.logits[:, slot], self.sampling)
            else:
                self._compute(self._with_descendants(slot))
        return self._slots[slot][row]

    def _with_descendants(self, slot: int) -> list[int]:
        """``slot`` and, breadth first, the slots below it in any row ``ahead - 1`` levels down that are not
        computed yet: at most twice as many slots as the call before (``_most``, doubled here)."""
        self._most *= 2
        wanted, level = [slot], [slot]
        valid = self._valid
        for _ in range(self._ahead - 1):
            below = []
            for s in level:
                for row, kids in enumerate(self.tree.children):
                    below += [node + 1 for node in kids[s] if valid[row][node] and node + 1 not in self._slots]
            level = [s for s in dict.fromkeys(below) if s not in wanted]
            wanted += level[: self._most - len(wanted)]
            if len(wanted) >= self._most or not level:
                break
        self._ahead *= 2
        return wanted

    def _compute(self, slots: list[int]) -> None:
        logits = self.verification.logits_at(torch.tensor(slots, device=self.tree.tokens.device))
        self.dtype = law_dtype(logits.dtype)
        for i, slot in enumerate(slots):
            self._slots[slot] = processed_probs(logits[:, i], self.sampling)
        self.calls += 1


def residual_after_point_mass(r: torch.Tensor, x: int) -> torch.Tensor:
    """:func:`residual` of ``r`` [V] and a point mass at ``x``, without building the point mass:
    max(0, r - 1_x) is ``r`` with token x removed; normalised, or ``r`` itself where nothing is left."""
    diff = r.clone()
    diff[x] = 0
    mass = diff.sum()
    return diff / mass if bool(mass > 0) else r


def acceptance_probability(r_x: torch.Tensor, q_x: torch.Tensor) -> torch.Tensor:
    """min(1, r(x)/q(x)); 0 where q(x) = 0 (a token its proposal could not draw is never kept).

    Rejecting such a token is still lossless: the residual max(0, r - q) equals r there.
    """
    return torch.where(q_x > 0, (r_x / q_x.clamp_min(torch.finfo(q_x.dtype).tiny)).clamp(max=1.0), torch.zeros_like(r_x))


def deepest_passing_nodes(tree: DraftTree, passes: torch.Tensor) -> list[int]:
    """Per row, the deepest node whose whole path passes (``passes`` [B, N]), -1 for none.

    Placeholder nodes never pass; ties between equally deep nodes go to the first drawn.
    """
    b, n = tree.tokens.shape
    if n == 0:
        return [-1] * b
    failing = ~(passes & tree.node_valid)  # [B, N]
    if tree.is_chain:  # a path passes when every node up to it does
        path_passes = failing.long().cumsum(dim=1) == 0
    else:
        node_ancestry = tree.slot_ancestry[:, 1:, 1:].to(torch.float32)  # [B, N, N], node-to-node
        path_passes = torch.bmm(node_ancestry, failing.to(torch.float32)[..., None])[..., 0] == 0
    score = torch.where(path_passes, tree.depth, torch.zeros_like(tree.depth))
    best, deepest = score.max(dim=1)  # max returns the first index among ties
    return torch.where(best > 0, deepest, torch.full_like(deepest, -1)).tolist()


def greedy_accept(tree: DraftTree, target_tokens: torch.Tensor) -> Acceptance:
    """Longest path of nodes equal to the target's argmax at their parent.

    ``target_tokens`` [B, 1+N] is the target's argmax at each slot.  Ties between equally deep
    accepted nodes go to the first drawn.  The next token is the argmax after the path.
    """
    b = tree.batch_size
    expected = target_tokens.gather(1, tree.parent_slots)
    best = deepest_passing_nodes(tree, tree.tokens == expected)
    rows = torch.arange(b, device=target_tokens.device)
    next_tokens = target_tokens[rows, torch.tensor(best, device=target_tokens.device) + 1]
    return Acceptance(_paths(tree, best), next_tokens)


def speculative_sampling(
    draft_tokens: torch.Tensor,
    q: torch.Tensor | None,
    p: torch.Tensor,
    rng: Randomness,
    valid: torch.Tensor | None = None,
    copied: torch.Tensor | None = None,
) -> Acceptance:
    """Speculative sampling for a chain of k drafted tokens.

    ``draft_tokens`` [B, k]; ``q`` [B, k, V] the draft law each was drawn from, or ``None``
    for deterministic drafts (point masses); ``p`` [B, k+1, V] the target's law at the root and
    after each draft.  Accept token i with probability min(1, p_i(x)/q_i(x)); at the first
    rejection draw from norm(max(0, p_i - q_i)); if all are accepted draw a bonus from p_k.
    ``valid`` [B, k] marks placeholders (a row's draft ended early): the row stops there and
    draws from p, as if it had drafted nothing more.  ``copied`` [B, k] marks copies among drawn
    drafts: point masses whatever ``q`` says there.  Point masses are never built over the
    vocabulary: q_i(x) = 1, and a rejected one's row of the residual subtracts 1 at x.
    """
    b, k = draft_tokens.shape
    if q is None:
        point = torch.ones_like(draft_tokens, dtype=torch.bool)
    else:
        point = copied if copied is not None else torch.zeros_like(draft_tokens, dtype=torch.bool)
    p_draft = p[:, :k].gather(2, draft_tokens[..., None]).squeeze(-1)  # [B, k]
    q_draft = torch.ones_like(p_draft) if q is None else q.gather(2, draft_tokens[..., None]).squeeze(-1).to(p.dtype)
    q_draft = torch.where(point, torch.ones_like(q_draft), q_draft)
    if valid is None:
        valid = torch.ones_like(draft_tokens, dtype=torch.bool)
    chance = torch.where(valid, acceptance_probability(p_draft, q_draft), torch.zeros_like(p_draft))
    accept = rng.coins(chance)  # [B, k]
    num_accepted = accept.long().cumprod(dim=1).sum(dim=1)  # leading accepts, per row
    rows = torch.arange(b, device=p.device)
    p_next = p[rows, num_accepted]  # [B, V]
    q_next = torch.zeros_like(p_next)
    rejected = torch.zeros_like(num_accepted, dtype=torch.bool)
    if k:  # stopped before the chain's end, at a real draft (a placeholder subtracts nothing)
        at = num_accepted.clamp(max=k - 1)
        rejected = (num_accepted < k) & valid[rows, at]
        masses = rejected & point[rows, at]
        drawn = rejected & ~masses
        if q is not None:
            q_next[drawn] = q[rows[drawn], at[drawn]].to(p.dtype)
        q_next[rows[masses], draft_tokens[rows[masses], at[masses]]] = 1.0
    law = torch.where(rejected[:, None], residual(p_next, q_next), p_next)
    next_tokens = rng.categorical(law)
    paths = [list(range(int(a))) for a in num_accepted]
    return Acceptance(paths, next_tokens)


def recursive_rejection_sampling(tree: DraftTree, p: torch.Tensor, rng: Randomness) -> Acceptance:
    """Recursive rejection sampling down a draft tree (RSD), lossless for any tree.

    ``p`` [B, 1+N, V] is the target's processed law at each slot (a tensor, or :class:`SlotLaws`
    processing each slot's law as the walk reaches it).  From the root, the
    children of the current slot are tested in draw order against a running residual r
    (starting at p): child x with proposal law Q is accepted with probability
    min(1, r(x)/Q(x)); on rejection r <- norm(max(0, r - Q)).  For drafts with ``draft_probs``
    the siblings were drawn without replacement, so Q is the draft law with the earlier
    siblings removed and renormalised; for deterministic drafts Q is a point mass at x.
    After an accepted child the walk continues from it with a fresh r = p at that slot; when
    no child is accepted (or there are none) the next token is drawn from r.
    """
    b = tree.batch_size
    q = tree.draft_probs
    valid = tree.node_valid.tolist()
    copied = tree.copied.tolist() if (q is not None and tree.copied is not None) else None
    paths, next_tokens = [], []
    for row in range(b):
        slot, path = 0, []
        while True:
            r = p[row, slot]
            kids = [node for node in tree.children[row][slot] if valid[row][node]]
            drawn = kids if copied is None else [node for node in kids if not copied[row][node]]
            chosen = None
            law = q[row, drawn[0]].to(p.dtype).clone() if (q is not None and drawn) else None
            for node in kids:
                x = int(tree.tokens[row, node])
                point = law is None or (copied is not None and copied[row][node])
                if bool(rng.coins(r[x].clamp(max=1.0) if point else acceptance_probability(r[x], law[x]))):
                    chosen = node
                    break
                r = residual_after_point_mass(r, x) if point else residual(r, law)
                if not point:  # the next drawn sibling was drawn with this one removed (copies remove nothing)
                    law = law.clone()
                    law[x] = 0
                    law = _normalise(law) if law.sum() > 0 else law
            if chosen is None:
                next_tokens.append(rng.categorical(r))
                break
            path.append(chosen)
            slot = chosen + 1
        paths.append(path)
    return Acceptance(paths, torch.stack(next_tokens))


def typical_accept(
    tree: DraftTree,
    p: torch.Tensor,
    rng: Randomness,
    posterior_threshold: float = 0.09,
    posterior_alpha: float = 0.3,
) -> Acceptance:
    """Medusa's typical acceptance — LOSSY: output is not distributed as the target's.

    A node is acceptable when p(x) > min(epsilon, delta * exp(-H(p))) at its parent, with
    epsilon = ``posterior_threshold`` and delta = ``posterior_alpha`` (Cai et al., 2024).  The
    longest acceptable path is kept (first drawn among equals) and the next token is drawn
    from p after it.  Opt-in only; never the default.
    """
    b, n = tree.tokens.shape
    entropy = -(p * torch.log(p.clamp_min(torch.finfo(p.dtype).tiny))).sum(-1)  # [B, 1+N]
    threshold = torch.minimum(torch.full_like(entropy, posterior_threshold), posterior_alpha * torch.exp(-entropy))
    parent_p = p.gather(1, tree.parent_slots[..., None].expand(b, n, p.shape[-1]))
    p_node = parent_p.gather(2, tree.tokens[..., None]).squeeze(-1)  # [B, N]
    typical = p_node > threshold.gather(1, tree.parent_slots)
    best = deepest_passing_nodes(tree, typical)
    next_tokens = [rng.categorical(p[row, node + 1]) for row, node in enumerate(best)]
    return Acceptance(_paths(tree, best), torch.stack(next_tokens))


def _paths(tree: DraftTree, deepest: list[int]) -> list[list[int]]:
    """Each row's path from depth 1 down to its node ``deepest[row]`` (-1: the empty path)."""
    if tree.is_chain:
        return [list(range(node + 1)) for node in deepest]
    return [tree.path_to(node, row) for row, node in enumerate(deepest)]


class Verification(Protocol):
    """What the rules need of a verification: the target's logits at chosen slots."""

    def logits_at(self, slots: torch.Tensor) -> torch.Tensor:
        """Logits [B, S, V] at the slots ``slots`` [S] (slot 0 is the root, slot i + 1 node i)."""

    @property
    def logits(self) -> torch.Tensor:
        """[B, 1+N, V] logits at every slot."""

    @property
    def cheap_rows(self) -> int:
        """Rows (batch rows x slots) the output head multiplies for about the cost of one."""


def accept(tree: DraftTree, verification: Verification, sampling: SamplingConfig,
           rng: Randomness, typical: tuple[float, float] | None = None) -> Acceptance:
    """The lossless rule for this tree: greedy match, or speculative / recursive rejection sampling.

    ``typical`` = (epsilon, delta) switches sampling to Medusa's typical acceptance, which is
    LOSSY (opt-in only); greedy decoding ignores it.
    """
    if not sampling.do_sample:
        return greedy_accept(tree, greedy_targets(tree, verification))
    if typical is not None:
        return typical_accept(tree, processed_probs(verification.logits, sampling), rng, *typical)
    # chains too (on a chain the walk is speculative sampling): the head is computed only where the walk goes
    return recursive_rejection_sampling(tree, SlotLaws(verification, sampling, tree), rng)


@torch.no_grad()
def greedy_targets(tree: DraftTree, verification: Verification) -> torch.Tensor:
    """The target's argmax [B, 1+N] at every slot greedy acceptance can reach (-1 at slots not computed).

    The first head call covers the root and, while it stays within the rows the head multiplies for
    about the cost of one (``verification.cheap_rows``, measured per machine), the first nodes too.  Beyond those, logits
    are computed only below nodes whose whole path so far matches in some row, so a rejected draft
    costs no further output-head work: at a depth where such nodes still lack theirs, one call covers
    them and their descendants the next ``ahead - 1`` levels down, ``ahead`` doubling from 2 after every
    call.  Every call reads the whole head (262k rows on Gemma 3), a row more costs a fraction of that,
    so a long accepted path (a copied chain in a hybrid's tree) takes a few calls, not one per level.
    """
    b, n = tree.tokens.shape
    device = tree.tokens.device
    targets = torch.full((b, n + 1), -1, dtype=torch.long, device=device)
    first = min(n + 1, max(1, verification.cheap_rows // b))  # slots in the first call, the root first
    targets[:, :first] = verification.logits_at(torch.arange(first, device=device)).argmax(-1)
    if n == 0:
        return targets
    if tree.is_chain:
        return _greedy_chain_targets(tree, verification, targets, first)
    slots = tree.parent_slots
    valid = tree.node_valid
    reached = torch.zeros(b, n, dtype=torch.bool, device=device)
    always = torch.ones(b, 1, dtype=torch.bool, device=device)
    never = torch.zeros(b, 1, dtype=torch.bool, device=device)
    computed = torch.arange(n, device=device) + 1 < first  # per node: its slot's argmax is known
    ahead = 2
    for depth in range(1, tree.max_depth + 1):
        expected = targets.gather(1, slots)
        parent_ok = torch.cat([always, reached], 1).gather(1, slots)
        hit = (tree.depth == depth) & parent_ok & valid & (tree.tokens == expected)
        reached |= hit
        if not bool(hit.any()):
            break
        if bool(computed[hit.any(dim=0)].all()):
            continue
        below = hit.clone()  # the matching nodes and, speculatively, their descendants ahead - 1 levels down
        for level in range(depth + 1, min(depth + ahead, tree.max_depth + 1)):
            below |= (tree.depth == level) & valid & torch.cat([never, below], 1).gather(1, slots)
        need = (below.any(dim=0) & ~computed).nonzero().squeeze(-1)
        targets[:, need + 1] = verification.logits_at(need + 1).argmax(-1)
        computed[need] = True
        ahead *= 2
    return targets


def _greedy_chain_targets(tree: DraftTree, verification: Verification, targets: torch.Tensor,
                          first: int) -> torch.Tensor:
    """Greedy targets along chains: slot d's argmax is needed while some row matches up to node d.

    Slots ``[0, first)`` are known; the rest are computed in chunks of ``first`` slots, doubling,
    while rows keep matching: a rejected draft costs no more head work, an accepted long chain a
    few head calls, not one per slot.
    """
    n = tree.num_nodes
    device = targets.device
    alive = tree.node_valid.clone()  # [B, N]: node d and every node before it match
    alive[:, 0] &= tree.tokens[:, 0] == targets[:, 0]
    for s in range(1, min(first, n)):
        alive[:, s] &= alive[:, s - 1] & (tree.tokens[:, s] == targets[:, s])
    slot, chunk = first, first
    while slot <= n and bool(alive[:, slot - 1].any()):
        stop = min(n + 1, slot + chunk)
        targets[:, slot:stop] = verification.logits_at(torch.arange(slot, stop, device=device)).argmax(-1)
        for s in range(slot, min(stop, n)):
            alive[:, s] &= alive[:, s - 1] & (tree.tokens[:, s] == targets[:, s])
        slot, chunk = stop, chunk * 2 if slot > 1 else 1
    return targets
