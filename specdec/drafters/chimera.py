"""Chimera (Zeng et al., 2024): trigram encoder + one full-context layer over the target's hidden states.

Architecture in ``specdec/heads/chimera.py``.  Per row, the drafter keeps a key/value cache
(:class:`~specdec.drafters.draft_cache.DraftCache`) whose context entries are the target's final
hidden states of every committed token but the root; each commit queues the states of the tokens
the target just cached.  A proposal:

1. catches up (the queued states become context entries: keys and values only, no queries);
2. feeds the root's trigram entry and reads the draft's law of the first token;
3. grows a dynamic tree (EAGLE-2): at each depth the ``width`` candidates of highest draft path
   probability are fed (one forward for all of them, tree attention over the context, their
   ancestors' entries and themselves) and each gets its ``branch`` likeliest children;
4. keeps the ``max_nodes`` candidates of highest path probability, closed under ancestors and
   under earlier siblings, numbered in that order (so a budget of m keeps the best m-node tree).

The tree is a deterministic function of the committed context: its nodes are point masses, so
greedy acceptance and, under sampling, recursive rejection sampling with point-mass children keep
the output exactly the target's.  Draft entries are dropped at every commit (the accepted tokens
come back as the target's own states).
"""
from __future__ import annotations

import copy
import heapq

import torch

from ..tree import DraftTree
from .base import CommitUpdate, Drafter, DraftRequest, as_dtype, output_vocab_size
from .draft_cache import DraftCache

WEIGHTS = "chimera.safetensors"


class Chimera(Drafter):
    def __init__(self, draft, depth: int = 4, branch: int = 4, width: int = 4, max_nodes: int = 12):
        from specdec.heads.chimera import ChimeraDraft

        if not isinstance(draft, ChimeraDraft):
            raise TypeError(f"draft must be specdec.heads.chimera.ChimeraDraft, got {type(draft).__name__}")
        for name, value in (("depth", depth), ("branch", branch), ("width", width), ("max_nodes", max_nodes)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        if not hasattr(draft, "embeddings"):
            raise ValueError("the Chimera draft is not bound to a target: use Chimera.from_pretrained(path, target)")
        self.draft = draft.eval()
        self.num_tokens = self.max_depth = depth
        self.branch, self.width, self.num_nodes = branch, width, max_nodes
        self._cache: DraftCache | None = None
        self._last: torch.Tensor | None = None  # [B, H] target state at each row's last verified token
        self._recent: list[list[int]] = []  # per row: the last three committed tokens, the root last

    @classmethod
    def from_pretrained(cls, path, target_model: torch.nn.Module, dtype: torch.dtype | str | None = None,
                        **options) -> "Chimera":
        """A trained Chimera (``chimera.safetensors`` + ``card.json``) bound to ``target_model``.

        ``dtype`` (a torch dtype or its name) is the draft's own precision, by default the card's
        ``serving.dtype``, else the target's.  The draft only proposes, so its precision never changes
        the output, only the bytes it reads per step.  The card's ``tree`` is the largest tree it drafts
        (the goodput policy prunes it every step); ``options`` override it.
        """
        from specdec.heads.chimera import ChimeraConfig, ChimeraDraft

        from .artifacts import read_card, read_weights, resolve

        folder = resolve(path)
        if not (folder / WEIGHTS).is_file():
            raise FileNotFoundError(f"Chimera artifact {folder} lacks {WEIGHTS}")
        card = read_card(folder, "chimera")
        config = ChimeraConfig(**card["config"])
        hidden, vocab = target_model.config.hidden_size, output_vocab_size(target_model)
        if config.hidden_size != hidden or config.vocab_size != vocab:
            raise ValueError(f"Chimera draft {folder} was trained for a target with hidden size {config.hidden_size} "
                             f"and vocabulary {config.vocab_size}; this target has {hidden} and {vocab}")
        tensors = read_weights(folder / WEIGHTS)
        token_ids = tensors.pop("vocab.token_ids")
        dtype = as_dtype(dtype) or as_dtype((card.get("serving") or {}).get("dtype")) or next(target_model.parameters()).dtype
        draft = ChimeraDraft(config)
        draft.load_state_dict({k: v.to(dtype) for k, v in tensors.items()})
        draft = draft.to(dtype)
        draft.bind(target_model.get_input_embeddings().weight, token_ids)
        defaults = card.get("tree", {})
        return cls(draft, **{**{k: defaults[k] for k in ("depth", "branch", "width", "max_nodes") if k in defaults},
                             **options})

    def tree_template(self, depth: int) -> list[int]:
        """Every candidate of the dynamic tree ``depth`` levels deep: ``branch`` children of the root, then
        ``branch`` children of each of the first ``width`` nodes of the level before (as parents)."""
        parents, level = [], [-1]
        for _ in range(min(depth, self.max_depth)):
            first = len(parents)
            for parent in level[:self.width] if level != [-1] else level:
                parents += [parent] * self.branch
            level = list(range(first, len(parents)))
        return parents

    # ---- following the committed sequence ------------------------------------------------------
    def start(self, target_model, input_ids, attention_mask, hidden=None) -> None:
        size = target_model.config.hidden_size
        if size != self.draft.config.hidden_size:
            raise ValueError(f"Chimera draft expects hidden size {self.draft.config.hidden_size}, the target has {size}")
        from transformers import LlamaConfig

        c = self.draft.config
        kv_config = LlamaConfig(hidden_size=c.hidden_size, num_hidden_layers=1, num_attention_heads=c.num_attention_heads,
                                num_key_value_heads=c.num_key_value_heads, head_dim=c.head_dim,
                                intermediate_size=c.intermediate_size, vocab_size=c.vocab_size)
        real = attention_mask[:, :-1].bool()
        states = hidden if hidden is not None else torch.zeros(*real.shape, size)
        pending = [list(states[r][real[r]].unbind(0)) for r in range(input_ids.shape[0])]
        self._cache = DraftCache(kv_config, pending, input_ids.device, self.draft.head.weight.dtype)
        self._last = states[:, -1] if states.shape[1] else None
        self._recent = [row[m.bool()].tolist()[-3:] for row, m in zip(input_ids, attention_mask)]

    def commit(self, update: CommitUpdate) -> None:
        states = [list(update.hidden[r][update.cached_real[r]].unbind(0)) for r in range(len(update.paths))]
        self._cache.commit(update, keep_accepted=False, items=states)
        self._last = update.hidden[:, -1]  # right-aligned: each row's last cached token
        self._recent = [(recent + update.appended(r))[-3:] for r, recent in enumerate(self._recent)]

    def take_rows(self, rows: torch.Tensor) -> "Chimera":
        out = copy.copy(self)
        out._cache = self._cache.take_rows(rows)
        out._last = None if self._last is None else self._last.index_select(0, rows)
        out._recent = [list(self._recent[r]) for r in rows.tolist()]
        return out

    def join(self, others: list["Chimera"]) -> "Chimera":
        out = copy.copy(self)
        parts = [self, *others]
        out._cache = DraftCache.concat([d._cache for d in parts])
        out._last = torch.cat([d._last for d in parts]) if all(d._last is not None for d in parts) else None
        out._recent = [list(r) for d in parts for r in d._recent]
        return out

    # ---- the draft's forwards ------------------------------------------------------------------
    def _context(self, pending, real, positions, mask) -> None:
        """Catch-up: the queued target states become context entries (keys and values only)."""
        b, w = real.shape
        size = self.draft.config.hidden_size
        states = torch.zeros(b, w, size, dtype=self.draft.head.weight.dtype, device=real.device)
        for r, items in enumerate(pending):
            if items:
                states[r, w - len(items):] = torch.stack(items)
        keys, values = self.draft.context_key_values(states, positions)
        self._cache.kv.kv.update(keys, values, 0)

    def _feed(self, trigrams: torch.Tensor, positions: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
        """Draft entries for trigram ids [B, M, 3] at ``positions``, seeing ``visible`` [B, M, C+F+M]; their states."""
        encodings = self.draft.encode(trigrams)
        keys, values = self.draft.layer.key_values(encodings, positions)
        keys, values = self._cache.kv.kv.update(keys, values, 0)
        self._cache.kv.appended(torch.ones(positions.shape, dtype=torch.bool, device=positions.device))
        return self.draft.draft_states(encodings, positions, keys, values, visible, last_state=self._last)

    # ---- proposing -----------------------------------------------------------------------------
    @torch.no_grad()
    def propose(self, request: DraftRequest) -> DraftTree:
        b, device = request.batch_size, request.roots.device
        cache = self._cache
        if self._last is None or not (cache.kv.width or any(cache.pending)):
            return DraftTree.empty(b, device)  # one-token prompts: no verified state yet
        if any(cache.pending):
            cache.catch_up(run=self._context)
        context = cache.kv.mask.clone()  # [B, C]
        root_position = context.sum(dim=1)  # the root's position: every committed token before it is context
        verified = self.draft.verified_logits(self._last)  # [B, V']
        budget = max((m if m is not None else self.num_nodes) for m in (request.max_nodes or [None] * b))
        depth_limit = request.max_depth
        # 1. the root's entry
        recent = [([r[0]] * (3 - len(r)) + r) if r else [0, 0, 0] for r in self._recent]
        root_trigram = torch.tensor(recent, dtype=torch.long, device=device)[:, None]  # [B, 1, 3]
        ones = torch.ones(b, 1, 1, dtype=torch.bool, device=device)
        states = self._feed(root_trigram, root_position[:, None], torch.cat([context[:, None], ones], dim=2))
        logp = torch.log_softmax(self.draft.logits(verified, states).float(), dim=-1)  # [B, 1, V']
        fed = torch.full((b, 1), -1, dtype=torch.long, device=device)  # candidate index of each fed column (-1: root)
        tokens = torch.zeros(b, 0, dtype=torch.long, device=device)
        parents = torch.zeros(b, 0, dtype=torch.long, device=device)
        scores = torch.zeros(b, 0, device=device)
        prev = root_trigram[:, :, 1:]  # [B, 1, 2]: the two tokens before each expanded node's children
        expanded = torch.full((b, 1), -1, dtype=torch.long, device=device)
        base = torch.zeros(b, 1, device=device)
        for depth in range(1, depth_limit + 1):
            # children of the expanded nodes: the branch likeliest of each
            top = torch.topk(logp, min(self.branch, logp.shape[-1]), dim=-1)  # [B, M, k]
            kids = self.draft.token_ids[top.indices].reshape(b, -1)
            first = tokens.shape[1]
            tokens = torch.cat([tokens, kids], dim=1)
            parents = torch.cat([parents, expanded.repeat_interleave(top.indices.shape[-1], dim=1)], dim=1)
            scores = torch.cat([scores, (base[..., None] + top.values).reshape(b, -1)], dim=1)
            kid_prev = prev.repeat_interleave(top.indices.shape[-1], dim=1)  # [B, n_kids, 2]: parent's (t-1, t)
            if depth == depth_limit:
                break
            # expand the width best children of this depth
            block = scores[:, first:]
            pick = torch.topk(block, min(self.width, block.shape[1]), dim=1).indices  # [B, w]
            expanded = pick + first
            chosen = tokens.gather(1, expanded)
            trigrams = torch.cat([kid_prev.gather(1, pick[..., None].expand(-1, -1, 2)), chosen[..., None]], dim=2)
            partial = DraftTree(tokens, parents)
            visible = self._visibility(partial, fed, expanded, context)
            states = self._feed(trigrams, (root_position[:, None] + depth).expand(b, expanded.shape[1]), visible)
            logp = torch.log_softmax(self.draft.logits(verified, states).float(), dim=-1)
            fed = torch.cat([fed, expanded], dim=1)
            prev = trigrams[:, :, 1:]
            base = scores.gather(1, expanded)
        return self._select(tokens, parents, scores, min(budget, tokens.shape[1]))

    @staticmethod
    def _visibility(tree: DraftTree, fed: torch.Tensor, nodes: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """[B, M, C+F+M]: each of ``nodes`` [B, M] sees the context, the fed columns on its path, and itself."""
        b, m = nodes.shape
        anc = tree.slot_ancestry  # [B, 1+N, 1+N]
        rows = anc.gather(1, (nodes + 1)[..., None].expand(b, m, anc.shape[2]))  # [B, M, 1+N]
        columns = torch.cat([fed, nodes], dim=1) + 1  # slots of the fed columns and the new ones (root entry: 0)
        seen = rows.gather(2, columns[:, None, :].expand(b, m, columns.shape[1]))
        return torch.cat([context[:, None, :].expand(b, m, context.shape[1]), seen], dim=2)

    @staticmethod
    def _select(tokens, parents, scores, budget: int) -> DraftTree:
        """Per row, the ``budget`` best candidates closed under ancestors and earlier siblings, best first."""
        b = tokens.shape[0]
        out_tokens = torch.zeros(b, budget, dtype=torch.long)
        out_parents = torch.full((b, budget), -1, dtype=torch.long)
        valid = torch.zeros(b, budget, dtype=torch.bool)
        for r, (row_tokens, row_parents, row_scores) in enumerate(zip(tokens.tolist(), parents.tolist(), scores.tolist())):
            children: dict[int, list[int]] = {}
            for i, p in enumerate(row_parents):
                children.setdefault(p, []).append(i)
            heap = [(-row_scores[children[-1][0]], children[-1][0])] if children.get(-1) else []
            order, number = [], {}
            while heap and len(order) < budget:
                _, i = heapq.heappop(heap)
                number[i] = len(order)
                order.append(i)
                siblings = children[row_parents[i]]
                at = siblings.index(i)
                if at + 1 < len(siblings):  # the next sibling in rank order becomes eligible
                    heapq.heappush(heap, (-row_scores[siblings[at + 1]], siblings[at + 1]))
                if children.get(i):  # and the node's first child
                    heapq.heappush(heap, (-row_scores[children[i][0]], children[i][0]))
            for j, i in enumerate(order):
                out_tokens[r, j] = row_tokens[i]
                out_parents[r, j] = number[row_parents[i]] if row_parents[i] >= 0 else -1
                valid[r, j] = True
            for j in range(len(order), budget):  # placeholders hang under the root
                out_parents[r, j] = -1
        device = tokens.device
        return DraftTree(out_tokens.to(device), out_parents.to(device), None,
                         None if bool(valid.all()) else valid.to(device))
