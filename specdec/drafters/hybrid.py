"""Hybrid drafting: copy what the context holds, model what it does not, in one tree per row.

Copying (prompt lookup; SAM-Decoding, Token Recycling and SuffixDecoding in the literature) wins
where the output repeats its context (summaries, retrieval answers, edits) and proposes nothing
elsewhere; a model drafter (Chimera, a distilled draft model, Medusa) does the opposite.  A
:class:`Hybrid` proposes both under one root each step:

* the model drafter's tree, as it drafts it (its node numbers kept, so its own ``commit`` sees
  its nodes where it put them);
* then each *copied* candidate, a chain of tokens that followed an earlier occurrence of the
  context's tail (one per n-gram length that matches, longest first, plus a
  :class:`~specdec.drafters.suffix_cache.SuffixCache`'s continuations when one is given),
  walked down from the root: where a copied token equals a node already under the same parent
  (a model node or an earlier copy) the two are one node, and the copy continues below it.

Copied nodes are point masses (``DraftTree.copied``): greedy acceptance treats every node
alike, and recursive rejection sampling tests a copy as a point mass wherever it stands among
drawn siblings, removing nothing from their draft law, so the target's law is kept exactly
(see :func:`~specdec.acceptance.recursive_rejection_sampling`).  Copies come after the drawn
siblings they merge into, never before: a drawn node is never dropped for equalling a copy.

Copies come in *classes* by how long a tail of the context they matched (``copy_classes``): a
continuation found after 4 or more matching tokens is right far more often than one found after
a single token (on SmolLM2's greedy answers, its first token 85% of the time against 18%, see
RESULTS.md), as SuffixDecoding scores its candidates by match length.  Each class is a source of
its own (1, 2, ...; the model is source 0).

How many nodes each source gets is the goodput policy's call: it learns acceptance per (source,
depth, sibling rank) and keeps, per row, the nodes of highest expected tokens per predicted
second (:mod:`specdec.policy.pruning`).  When nothing matches, the step is the model's tree; when a long
copy keeps being accepted, the step may be mostly a long copied chain.
"""
from __future__ import annotations

import copy as copying

import torch

from ..clock import Clock
from ..tree import DraftTree
from .base import CommitUpdate, Drafter, DraftRequest
from .prompt_lookup import NgramIndex
from .suffix_cache import SuffixCache


class Hybrid(Drafter):
    """A model drafter's tree plus copied continuations from the context, merged under one root.

    ``model``: any drafter (its tree's node numbers are kept).  ``copy_tokens``: the longest copied
    chain; ``candidates``: at most this many copied chains per row per step; ``max_ngram`` and
    ``min_ngram``: the context tails searched for (longest first).  ``suffix_cache``: an index
    over earlier requests whose continuations join the copied candidates; it learns every prompt
    and output this drafter sees, so a drafter kept across calls (``generate_pool``'s prompts, the
    CLI's chat turns) copies from them.  True (the default): a :class:`SuffixCache` of its own;
    a cache: shared with whoever else holds it; False or None: copies from the row's own context only.
    ``copy_classes``: the shortest match of each class of copies, longest first (a copy that matched
    ``n`` tokens is of the first class whose value is at most ``n``; class i is source i + 1);
    ``(1,)``: one class for every copy.
    """

    def __init__(self, model: Drafter, copy_tokens: int = 8, candidates: int = 2, max_ngram: int = 8,
                 min_ngram: int = 1, suffix_cache: SuffixCache | bool | None = True,
                 copy_classes: tuple[int, ...] = (4, 2, 1)):
        if not isinstance(model, Drafter):
            raise TypeError(f"Hybrid(model=...) must be a specdec drafter, got {type(model).__name__}")
        if isinstance(model, Hybrid):
            raise TypeError("Hybrid(model=...) must be a model drafter, not another Hybrid")
        if int(copy_tokens) < 1 or int(candidates) < 1:
            raise ValueError(f"copy_tokens and candidates must be >= 1, got {copy_tokens} and {candidates}")
        if not 1 <= int(min_ngram) <= int(max_ngram):
            raise ValueError(f"need 1 <= min_ngram <= max_ngram, got {min_ngram} and {max_ngram}")
        classes = tuple(int(c) for c in copy_classes)
        if not classes or any(c < 1 for c in classes) or any(a <= b for a, b in zip(classes, classes[1:])):
            raise ValueError(f"copy_classes must be decreasing match lengths >= 1, got {copy_classes!r}")
        self.model = model
        self.copy_classes = classes
        # copying is a dictionary lookup: a step may copy without running the model
        self.free_sources = tuple(range(1, len(classes) + 1))
        self.copy_tokens, self.candidates = int(copy_tokens), int(candidates)
        self.max_ngram, self.min_ngram = int(max_ngram), int(min_ngram)
        if suffix_cache is True:
            suffix_cache = SuffixCache()
        if suffix_cache is not None and suffix_cache is not False and not isinstance(suffix_cache, SuffixCache):
            raise TypeError(f"suffix_cache must be a SuffixCache, True or False, got {type(suffix_cache).__name__}")
        self.suffix_cache = suffix_cache if isinstance(suffix_cache, SuffixCache) else None
        self.model_depth = int(model.num_tokens) if model.max_depth is None else min(int(model.num_tokens), model.max_depth)
        self.num_tokens = max(self.model_depth, self.copy_tokens)
        self.num_nodes = int(getattr(model, "num_nodes", None) or self.model_depth) + self.copy_tokens * self.candidates
        self._rows: list[NgramIndex] = []
        self._clock = Clock("cpu")  # copies are CPU work: no device to wait for
        # seconds spent finding copies and merging them into the model's trees, and adding committed tokens to
        # the n-gram indexes and the suffix cache; shared by the row copies a batch's drafter makes of itself
        self.seconds = {"copies": 0.0, "indexing": 0.0}

    # ---- the protocol ------------------------------------------------------------------------------
    def start(self, target_model, input_ids, attention_mask, hidden=None) -> None:
        self.model.start(target_model, input_ids, attention_mask, hidden)
        prompts = [row[m.bool()].tolist() for row, m in zip(input_ids, attention_mask)]
        self._rows = [NgramIndex(p, self.max_ngram, self.min_ngram) for p in prompts]
        if self.suffix_cache is not None:
            self._sequences = [self.suffix_cache.begin(p) for p in prompts]

    def propose(self, request: DraftRequest) -> DraftTree:
        """The model's tree (unless ``request.sources`` leaves out source 0) with the copies merged in."""
        use_model = request.sources is None or 0 in request.sources
        model_depth = [min(d, self.model_depth) if use_model else 0 for d in request.depth]
        if any(model_depth):
            model_request = DraftRequest(request.roots, request.lengths, model_depth, request.sampling,
                                         request.rng, request.max_nodes)
            tree = self.model.propose(model_request).limited(model_depth)
        else:
            tree = DraftTree.empty(request.batch_size, request.roots.device)
        start = self._clock()
        found = [self._copies(row, depth) if depth else [] for row, depth in enumerate(request.depth)]
        merged = merge_copies(tree, [[chain for chain, _ in row] for row in found],
                              [[source for _, source in row] for row in found])
        self.seconds["copies"] += self._clock() - start
        return merged

    def commit(self, update: CommitUpdate) -> None:
        self.model.commit(update)  # the model's nodes keep their numbers: its own commit reads them
        start = self._clock()
        for row, index in enumerate(self._rows):
            appended = update.appended(row)
            index.extend(appended)
            if self.suffix_cache is not None:
                self.suffix_cache.extend(self._sequences[row], appended)
        self.seconds["indexing"] += self._clock() - start

    def take_rows(self, rows: torch.Tensor) -> "Hybrid":
        out = copying.copy(self)
        out.model = self.model.take_rows(rows)
        out._rows = [self._rows[r].copy() for r in rows.tolist()]
        if self.suffix_cache is not None:
            out._sequences = [self._sequences[r] for r in rows.tolist()]
        return out

    def join(self, others: list["Hybrid"]) -> "Hybrid":
        out = copying.copy(self)
        out.model = self.model.join([o.model for o in others])
        out._rows = [index for d in [self, *others] for index in d._rows]
        if self.suffix_cache is not None:
            out._sequences = [s for d in [self, *others] for s in d._sequences]
        return out

    # ---- for the goodput policy --------------------------------------------------------------------
    def tree_template(self, depth: int) -> list[int]:
        """The model's largest tree at ``min(depth, its depth)``, then one copied chain ``depth`` deep per
        class of copies (the policy weighs each by how often its class proposes anything)."""
        parents = list(self.model.tree_template(min(depth, self.model_depth)))
        for _ in self.copy_classes:
            offset = len(parents)
            parents += [-1] + [offset + i for i in range(depth - 1)]
        return parents

    def template_sources(self, depth: int) -> list[int]:
        model = [0] * len(self.model.tree_template(min(depth, self.model_depth)))
        return model + [source for source in self.free_sources for _ in range(depth)]

    def ready_sources(self) -> list[tuple[int, ...]]:
        """Per row, the classes of the copies it would propose now (the same lookup as :meth:`propose`'s)."""
        start = self._clock()
        ready = [tuple(sorted({source for _, source in self._copies(row, self.copy_tokens)}))
                 for row in range(len(self._rows))]
        self.seconds["copies"] += self._clock() - start
        return ready

    def source_priors(self) -> dict[int, tuple[float, ...]]:
        """Per class of copies, the acceptance a policy assumes before it has seen any (first depth, deeper)."""
        return {source: copy_prior(least) for source, least in zip(self.free_sources, self.copy_classes)}

    @property
    def cost_name(self) -> str:
        return f"Hybrid({self.model.cost_name})"

    @property
    def name(self) -> str:
        return f"Hybrid({self.model.name})"

    # ---- the copies ----------------------------------------------------------------------------------
    def _copies(self, row: int, depth: int) -> list[tuple[list[int], int]]:
        """Up to ``candidates`` distinct continuations of row ``row``'s context, at most ``depth`` long, with
        their sources (their classes by match length), the context's own matches first, longest first."""
        want = min(depth, self.copy_tokens)
        found = self._rows[row].matches(want)
        if self.suffix_cache is not None:
            found = found + self.suffix_cache.matches(self._rows[row].tokens, want)
        return pick_copies(found, self.copy_classes, self.candidates)


def pick_copies(found: list[tuple[int, list[int]]], classes: tuple[int, ...],
                candidates: int) -> list[tuple[list[int], int]]:
    """The first ``candidates`` distinct non-empty continuations of ``found`` (``(matched, continuation)``
    pairs, in the order to try them), each with its source (:func:`copy_source`)."""
    out: list[tuple[list[int], int]] = []
    for matched, chain in found:
        if chain and all(chain != kept for kept, _ in out):
            out.append((chain, copy_source(matched, classes)))
        if len(out) == candidates:
            break
    return out


def copy_source(matched: int, classes: tuple[int, ...]) -> int:
    """The source of a copy found after a match of ``matched`` tokens: 1 + its class in ``classes``
    (decreasing shortest matches; a match shorter than the last is of the last class)."""
    for i, least in enumerate(classes):
        if matched >= least:
            return i + 1
    return len(classes)


def copy_prior(least: int) -> tuple[float, float]:
    """Acceptance of a copy's first token and of each next one given the previous, for copies found after
    at least ``least`` matching tokens: rounded from SmolLM2's greedy answers to the packaged prompts
    the benchmark does not time (``python -m specdec.bench.copy_classes``; RESULTS.md, 2026-12-07 fifth
    session)."""
    if least >= 4:
        return (0.85, 0.9)
    if least >= 2:
        return (0.5, 0.7)
    return (0.2, 0.6)


def merge_copies(tree: DraftTree, chains: list[list[list[int]]], sources: list[list[int]] | None = None) -> DraftTree:
    """``tree`` with each row's copied ``chains`` hung below the root, merged into equal nodes.

    ``sources[row][i]``: the source of ``chains[row][i]`` (default 1), kept in the tree's ``sources`` for
    the nodes it adds (a node two copies share keeps the first one's source).  The model's own nodes stay
    source 0 even where a copy ran through them: a goodput policy learns the model's acceptance by its
    sibling ranks, which relabelling its nodes would shuffle, and a copy's by the nodes it adds, the ones
    whose value is in question when it prunes.

    The tree's own nodes keep their numbers; copies that add nodes follow them, marked ``copied``
    (point masses: their ``draft_probs`` rows, where the tree has them, are one-hot).  Where the
    tree's nodes are point masses too (no ``draft_probs``: greedy, top-k drafts), a node a copy ran
    through is marked copied as well, so the share of accepted tokens credited to copies counts every
    copied token, not only those the model did not also guess (marks change nothing of the verification
    then).  A drawn node (with a draft law) stays a drawn node.  Returns ``tree`` itself when no row
    adds or marks a node.
    """
    b, n = tree.tokens.shape
    parents_rows = tree.parents.tolist()
    tokens_rows = tree.tokens.tolist()
    valid_rows = tree.node_valid.tolist()
    added: list[list[tuple[int, int, int]]] = []  # per row: (token, parent, source) of each new copied node
    marked: list[set[int]] = []  # per row: the tree's own nodes a copy ran through
    for row in range(b):
        below = {(parents_rows[row][i], tokens_rows[row][i]): i for i in range(n - 1, -1, -1) if valid_rows[row][i]}
        new: list[tuple[int, int, int]] = []
        ran: set[int] = set()
        for c, chain in enumerate(chains[row]):
            source = 1 if sources is None else int(sources[row][c])
            parent = -1
            for token in chain:
                node = below.get((parent, token))
                if node is None:
                    node = n + len(new)
                    new.append((token, parent, source))
                    below[(parent, token)] = node
                elif node < n:
                    ran.add(node)
                parent = node
        added.append(new)
        marked.append(ran if tree.draft_probs is None else set())
    extra = max((len(a) for a in added), default=0)
    if not extra and not any(marked):
        return tree
    device = tree.tokens.device
    tokens = torch.zeros(b, n + extra, dtype=torch.long)
    parents = torch.full((b, n + extra), -1, dtype=torch.long)
    valid = torch.zeros(b, n + extra, dtype=torch.bool)
    copied = torch.zeros(b, n + extra, dtype=torch.bool)
    node_sources = torch.zeros(b, n + extra, dtype=torch.long)
    tokens[:, :n], parents[:, :n], valid[:, :n] = tree.tokens.cpu(), tree.parents.cpu(), tree.node_valid.cpu()
    if tree.sources is not None or tree.copied is not None:
        node_sources[:, :n] = torch.tensor(tree.node_sources(), dtype=torch.long)
    for row, new in enumerate(added):
        if new:
            tokens[row, n:n + len(new)] = torch.tensor([t for t, _, _ in new])
            parents[row, n:n + len(new)] = torch.tensor([p for _, p, _ in new])
            valid[row, n:n + len(new)] = True
            copied[row, n:n + len(new)] = True
            node_sources[row, n:n + len(new)] = torch.tensor([s for _, _, s in new])
        if marked[row]:
            copied[row, sorted(marked[row])] = True  # (their source stays the model's: see the docstring)
    probs = None
    if tree.draft_probs is not None:
        vocab = tree.draft_probs.shape[-1]
        probs = torch.cat([tree.draft_probs, torch.nn.functional.one_hot(tokens[:, n:].to(device), vocab)
                           .to(tree.draft_probs.dtype)], dim=1)
    out = DraftTree(tokens.to(device), parents.to(device), probs, None if bool(valid.all()) else valid.to(device),
                    copied.to(device), node_sources.to(device))
    return out
