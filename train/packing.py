"""Teacher sequences packed into fixed-length rows, with the target's law at their answer positions.

Reads the shards of ``python -m specdec.train.teacher`` (only the arrays asked for: the fp16
hidden states are large and only heads that read them load them).  Sequences are packed whole,
in a seeded order, into rows of ``row_length`` tokens; each keeps its own positions and a
segment id, so attention never crosses sequences.  A row offers at most ``answers_per_row``
answer positions (a seeded choice when it has more): the output head, however small, is the
costly part of a step.

Every batch carries, per answer position, the target's top-k law renormalised over the draft
vocabulary (``soft_ids`` index the draft's head, ``soft_probs`` sum to 1 where any mass is left),
the next token in the draft vocabulary (``label``, -1 when outside it, and everywhere with
``hard_labels=False``: over text the draft wrote, the next token is no target label) and the target's argmax in
the draft vocabulary (``argmax``, -1 when outside it).  Given the target's embedding table, a
batch also carries ``inputs_embeds``, the embeddings of its tokens (drafts that embed through the
target read them; a frozen table is data, not a parameter).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

BASE_KEYS = ("tokens", "answer", "topk_ids", "topk_logprobs")


def load_arrays(folder: str | Path, split: str, keys=BASE_KEYS, max_shards: int | None = None) -> dict:
    """The split's shards concatenated, ``keys`` only, with ``offsets`` and ``answer_offsets`` shifted."""
    from safetensors import safe_open

    folder = Path(folder)
    paths = sorted(folder.glob(f"{split}-*.safetensors"))
    paths = [p for p in paths if p.with_suffix(".json").is_file()][:max_shards]  # complete shards only
    if not paths:
        raise FileNotFoundError(f"no {split} shards in {folder}: run `python -m specdec.train.teacher` first")
    parts, categories = [], []
    for path in paths:
        with safe_open(str(path), framework="numpy") as f:
            parts.append({k: f.get_tensor(k) for k in set(keys) | {"offsets", "answer_offsets"}})
        categories += json.loads(path.with_suffix(".json").read_text(encoding="utf-8"))["categories"]
    out = {key: np.concatenate([p[key] for p in parts]) for key in keys}
    for key, base in (("offsets", "tokens"), ("answer_offsets", "topk_ids")):
        sizes = [int(p[key][-1]) for p in parts]
        shift = np.cumsum([0] + sizes[:-1])
        out[key] = np.concatenate([parts[0][key][:1]] + [p[key][1:] + s for p, s in zip(parts, shift)])
    out["categories"] = categories
    return out


def draft_index(token_ids: np.ndarray, vocab_size: int) -> np.ndarray:
    """[V] int32: each target token's row in the draft head, -1 for tokens outside the draft vocabulary."""
    index = np.full(vocab_size, -1, np.int32)
    index[np.asarray(token_ids)] = np.arange(len(token_ids), dtype=np.int32)
    return index


class PackedTeacher:
    """Rows of packed teacher sequences; ``batch(rows)`` assembles training arrays."""

    def __init__(self, arrays: dict, to_draft: np.ndarray, row_length: int, answers_per_row: int, seed: int = 0,
                 embeddings: np.ndarray | None = None, hard_labels: bool = True):
        self.a, self.to_draft, self.embeddings, self.hard_labels = arrays, to_draft, embeddings, hard_labels
        self.row_length, self.answers_per_row, self.seed = row_length, answers_per_row, seed
        offsets = arrays["offsets"]
        lengths = np.minimum(np.diff(offsets), row_length)
        rows, current, used = [], [], 0
        for i in np.random.default_rng(seed).permutation(len(lengths)):
            if current and used + lengths[i] > row_length:
                rows.append(current)
                current, used = [], 0
            current.append(int(i))
            used += int(lengths[i])
        if current:
            rows.append(current)
        self.rows = rows
        self.answer_positions = int(arrays["answer"].sum())

    def __len__(self) -> int:
        return len(self.rows)

    def batch(self, rows) -> dict:
        t, a = self.row_length, self.answers_per_row
        k = self.a["topk_ids"].shape[1]
        b = len(rows)
        out = {"input_ids": np.zeros((b, t), np.int32), "positions": np.zeros((b, t), np.int32),
               "segment_ids": np.zeros((b, t), np.int32), "at": np.zeros((b, a), np.int32),
               "label": np.full((b, a), -1, np.int32), "argmax": np.full((b, a), -1, np.int32),
               "soft_ids": np.zeros((b, a, k), np.int32), "soft_probs": np.zeros((b, a, k), np.float32),
               "weight": np.zeros((b, a), np.float32)}
        offsets, answer_offsets = self.a["offsets"], self.a["answer_offsets"]
        for r, row in enumerate(rows):
            spots = []  # (row position, index into the top-k arrays, next token)
            start = 0
            for segment, i in enumerate(self.rows[row], start=1):
                lo, hi = int(offsets[i]), int(offsets[i + 1])
                n = min(hi - lo, t - start)
                tokens = self.a["tokens"][lo:lo + n]
                out["input_ids"][r, start:start + n] = tokens
                out["positions"][r, start:start + n] = np.arange(n)
                out["segment_ids"][r, start:start + n] = segment
                where = np.flatnonzero(self.a["answer"][lo:hi])
                first = int(answer_offsets[i])
                for j, p in enumerate(where):
                    if p + 1 < n:  # the next token is inside the row
                        spots.append((start + p, first + j, int(self.a["tokens"][lo + p + 1])))
                start += n
            if len(spots) > a:
                pick = np.random.default_rng([self.seed, row]).choice(len(spots), a, replace=False)
                spots = [spots[j] for j in np.sort(pick)]
            for j, (position, top, token) in enumerate(spots):
                ids = self.to_draft[self.a["topk_ids"][top]]
                probs = np.exp(self.a["topk_logprobs"][top].astype(np.float32)) * (ids >= 0)
                mass = probs.sum()
                out["at"][r, j] = position
                out["soft_ids"][r, j] = np.maximum(ids, 0)
                out["soft_probs"][r, j] = probs / mass if mass > 0 else 0.0
                out["label"][r, j] = self.to_draft[token] if self.hard_labels else -1
                out["argmax"][r, j] = ids[0]
                out["weight"][r, j] = 1.0
        if self.embeddings is not None:
            out["inputs_embeds"] = self.embeddings[out["input_ids"]]
        if "hidden" in self.a:  # the target's states over the row, and each token's predecessors in its segment
            out["hidden"] = np.zeros((b, t, self.a["hidden"].shape[1]), np.float32)
            for r, row in enumerate(rows):
                start = 0
                for i in self.rows[row]:
                    lo, hi = int(offsets[i]), int(offsets[i + 1])
                    n = min(hi - lo, t - start)
                    out["hidden"][r, start:start + n] = self.a["hidden"][lo:lo + n]
                    start += n
            index = np.arange(t)[None].repeat(b, 0)
            out["prev1"] = np.where(out["positions"] > 0, index - 1, index).astype(np.int32)
            out["prev2"] = np.take_along_axis(out["prev1"], out["prev1"], axis=1)
        return out


def mixed_batch(parts: list[tuple["PackedTeacher", int]], seed: int, step: int) -> dict:
    """One batch of ``n`` random rows of each ``(data, n)`` of ``parts``, concatenated in that order
    (rows drawn from ``(seed, step, part)``: a resumed run sees the same batches)."""
    batches = []
    for index, (data, n) in enumerate(parts):
        if n < 0 or (n and not len(data)):
            raise ValueError(f"cannot draw {n} rows from a set of {len(data)}")
        if n:
            batches.append(data.batch(np.random.default_rng([seed, step, index]).integers(0, len(data), n)))
    if not batches:
        raise ValueError("a batch needs at least one row")
    return {key: np.concatenate([b[key] for b in batches]) for key in batches[0]}
