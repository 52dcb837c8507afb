"""``python -m specdec.train.teacher``: teacher-forced target outputs over corpus v2's conversations, in shards.

Sequences: every record with a reference answer, and every prompt-only record whose answer
``python -m specdec.train.answers`` wrote (the prompt's ids with the generation prompt, then the
target's own generated ids).  A token is an *answer token* when it belongs to an assistant
message's content or its end of turn (up to the EOS token; the template's newline after it is
not).  Spans come from prefixes: the chat before message i with the generation prompt must be
a prefix of the chat through message i, which must be a prefix of the whole chat; a record
where that fails is skipped and counted.  Sequences are cut at ``max_length`` tokens and
dropped with fewer than ``min_answer`` answer positions left.

Order (the same for both splits): records of every source but ShareGPT and every self-distilled
record first, then ShareGPT's, each in corpus order, until ``max_positions`` answer positions
(the last sequence is cut to fit exactly); the valid split is taken whole unless
``valid_max_positions`` is set.  The order is written to ``plan.json`` on the first run, so a
rerun continues after its last completed shard with the same sequences.

One target forward per sequence.  A shard ``<out_dir>/{split}-NNNNN.safetensors`` holds, for
its n sequences concatenated:

- ``tokens`` int32 [T], ``hidden`` float16 [T, H] (the final normed hidden state at every
  position), ``offsets`` int64 [n+1] into both;
- ``answer`` bool [T]: position t's next token t+1 is an answer token (its state predicts it);
- ``topk_ids`` int32 [A, k] and ``topk_logprobs`` float16 [A, k] at those positions, in order:
  the target's log-softmax over the whole vocabulary (final soft-capping included), top k;
  ``answer_offsets`` int64 [n+1] into them;
- ``token_counts`` int64 [V]: the target's argmax at the shard's answer positions plus the
  tokens of its self-distilled answers.

The JSON sidecar beside it (ids, sources, categories, answer counts, where the plan stands)
marks it complete.  At the end, ``token_counts.npy`` (sum over the train shards, for choosing
the reduced draft vocabulary) and ``teacher.json`` (counts per split, category and source,
seconds, config).  Read the shards with :func:`iter_teacher` or :func:`load_teacher`.
"""
from __future__ import annotations

import collections
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import hydra
import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from specdec.chat import chat_ids

from .answers import eos_ids, load_answers
from .corpus_build import load_corpus

log = logging.getLogger("specdec.train.teacher")

SPLITS = ("train", "valid")
PLAN_KEYS = ("max_length", "min_answer", "topk", "max_positions", "valid_max_positions", "shard_positions")


@dataclass
class Sequence:
    id: str
    source: str
    category: str
    tokens: np.ndarray  # int32 [T]
    answer: np.ndarray  # bool [T]: the next token is an answer token
    distilled_from: int | None  # index of the first self-distilled token, None for a reference answer

    @property
    def answers(self) -> int:
        return int(self.answer.sum())


# -- sequences ------------------------------------------------------------------------------------

def answer_flags(tokenizer, messages: list[dict], eos: list[int],
                 generation_prompt: bool = False) -> tuple[list[int], list[bool]] | None:
    """The chat's ids and, per token, whether it is an answer token; None where the prefix property fails."""
    ids = chat_ids(tokenizer, messages, generation_prompt)
    flags = [False] * len(ids)
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        if i == 0:
            return None
        before = chat_ids(tokenizer, messages[:i], True)
        through = chat_ids(tokenizer, messages[: i + 1], False)
        if through[: len(before)] != before or ids[: len(through)] != through:
            return None
        span = through[len(before):]
        ends = [j for j, t in enumerate(span) if t in eos]
        end = len(before) + (ends[-1] + 1 if ends else len(span))  # the template's text after EOS is no answer
        flags[len(before): end] = [True] * (end - len(before))
    return ids, flags


def build_sequence(tokenizer, record: dict, distilled: list[int] | None, eos: list[int], max_length: int,
                   min_answer: int) -> Sequence | str:
    """The record as a training sequence, or why it is skipped (``template``, ``short``)."""
    chat = answer_flags(tokenizer, record["messages"], eos, generation_prompt=not record["has_answer"])
    if chat is None:
        return "template"
    ids, flags = chat
    start = None
    if not record["has_answer"]:
        start = len(ids)
        ids, flags = ids + list(distilled), flags + [True] * len(distilled)
    tokens = np.asarray(ids[:max_length], dtype=np.int32)
    answer = np.zeros(len(tokens), dtype=bool)
    answer[:-1] = np.asarray(flags[1: len(tokens)], dtype=bool)
    if answer.sum() < min_answer:
        return "short"
    return Sequence(record["id"], record["source"], record["category"], tokens, answer, start)


def cut(seq: Sequence, answers: int) -> Sequence:
    """The sequence shortened to its first ``answers`` answer positions (and the tokens they predict)."""
    last = int(np.flatnonzero(seq.answer)[answers - 1])
    answer = seq.answer[: last + 2].copy()
    answer[-1] = False
    return Sequence(seq.id, seq.source, seq.category, seq.tokens[: last + 2], answer, seq.distilled_from)


def ordered(records: list[dict], answers: dict, only_self_distilled: bool = False) -> list[str]:
    """Record ids in training order: every non-ShareGPT and self-distilled record, then ShareGPT's
    (``only_self_distilled``: the prompt-only records that have an answer, nothing else)."""
    distilled = [r["id"] for r in records if not r["has_answer"] and r["id"] in answers]
    if only_self_distilled:
        return distilled
    first = set(distilled) | {r["id"] for r in records if r["has_answer"] and r["source"] != "sharegpt"}
    return [r["id"] for r in records if r["id"] in first] + \
        [r["id"] for r in records if r["has_answer"] and r["source"] == "sharegpt"]


# -- the target ----------------------------------------------------------------------------------

@torch.inference_mode()
def teacher_forward(model, tokens: np.ndarray, answer: np.ndarray, topk: int, head_rows: int = 256,
                    body_dtype: str = "float32") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Hidden states float16 [T, H] at every position; top-k ids int32 and log-probs float16 [A, k] at answers.

    ``body_dtype="bfloat16"`` runs the decoder layers under bf16 autocast and the output head in float32:
    faster on CPUs with bf16 kernels, with the argmax nearly always the float32 target's (the head stays
    float32 because it decides the argmax and the top-k law; train/README.md has the measurements)."""
    if body_dtype not in ("float32", "bfloat16"):
        raise ValueError(f"body_dtype must be 'float32' or 'bfloat16', got {body_dtype!r}")
    device = next(model.parameters()).device
    ids = torch.as_tensor(tokens, dtype=torch.long, device=device)[None]
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=body_dtype == "bfloat16"):
        hidden = model.get_decoder()(input_ids=ids, use_cache=False).last_hidden_state[0]
    head = model.get_output_embeddings()
    hidden = hidden.to(head.weight.dtype)
    softcap = getattr(model.config, "final_logit_softcapping", None)
    at = hidden[torch.as_tensor(answer, device=device)]
    top_ids, top_lp = [], []
    for a in range(0, len(at), head_rows):  # the 49k-wide head only at answer positions
        logits = head(at[a: a + head_rows]).float()
        if softcap:
            logits = torch.tanh(logits / softcap) * softcap
        top = torch.log_softmax(logits, dim=-1).topk(topk, dim=-1)
        top_ids.append(top.indices.to(torch.int32))
        top_lp.append(top.values.half())
    half = hidden.half()
    if not torch.isfinite(half).all():
        raise FloatingPointError("a hidden state overflows float16")
    cat = lambda xs, shape: torch.cat(xs).cpu().numpy() if xs else np.zeros(shape, dtype=np.float32)  # noqa: E731
    return (half.cpu().numpy(), cat(top_ids, (0, topk)).astype(np.int32),
            cat(top_lp, (0, topk)).astype(np.float16))


# -- shards --------------------------------------------------------------------------------------

def _shard(out_dir: Path, split: str, index: int, suffix: str) -> Path:
    return out_dir / f"{split}-{index:05d}.{suffix}"


def _write_json(path: Path, data) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def completed_shards(out_dir: Path, split: str) -> list[dict]:
    """Sidecars of the split's complete shards (0, 1, ... while both files exist); stale later files are removed."""
    metas = []
    while _shard(out_dir, split, len(metas), "json").is_file() and \
            _shard(out_dir, split, len(metas), "safetensors").is_file():
        metas.append(json.loads(_shard(out_dir, split, len(metas), "json").read_text(encoding="utf-8")))
    for path in out_dir.glob(f"{split}-*"):
        stem = path.name.split(".")[0]
        if path.name.endswith(".tmp") or int(stem.split("-")[1]) >= len(metas):
            path.unlink()
    return metas


def write_shard(out_dir: Path, split: str, index: int, items: list, vocab: int, meta: dict) -> dict:
    from safetensors.numpy import save_file

    seqs = [s for s, _ in items]
    counts = np.zeros(vocab, dtype=np.int64)
    for seq, (_, top_ids, _) in items:
        counts += np.bincount(top_ids[:, 0], minlength=vocab)
        if seq.distilled_from is not None:
            counts += np.bincount(seq.tokens[seq.distilled_from:], minlength=vocab)
    hidden_size = items[0][1][0].shape[1]
    tensors = {
        "tokens": np.concatenate([s.tokens for s in seqs]),
        "hidden": np.concatenate([h for _, (h, _, _) in items]).reshape(-1, hidden_size),
        "answer": np.concatenate([s.answer for s in seqs]),
        "topk_ids": np.concatenate([t for _, (_, t, _) in items]),
        "topk_logprobs": np.concatenate([lp for _, (_, _, lp) in items]),
        "offsets": np.cumsum([0] + [len(s.tokens) for s in seqs]).astype(np.int64),
        "answer_offsets": np.cumsum([0] + [s.answers for s in seqs]).astype(np.int64),
        "token_counts": counts,
    }
    path = _shard(out_dir, split, index, "safetensors")
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp))
    os.replace(tmp, path)
    meta = {"split": split, "shard": index, "sequences": len(seqs), "positions": int(tensors["offsets"][-1]),
            "answer_positions": int(tensors["answer_offsets"][-1]), "ids": [s.id for s in seqs],
            "sources": [s.source for s in seqs], "categories": [s.category for s in seqs],
            "answers": [s.answers for s in seqs], "distilled": [s.distilled_from is not None for s in seqs], **meta}
    _write_json(_shard(out_dir, split, index, "json"), meta)
    return meta


def run_split(model, tokenizer, records: dict[str, dict], answers: dict[str, dict], plan: list[str],
              out_dir: Path, split: str, budget: int | None, *, max_length: int = 1024, min_answer: int = 16,
              topk: int = 32, shard_positions: int = 65536, progress: bool = True,
              body_dtype: str = "float32") -> list[dict]:
    """Process ``plan`` (record ids) into the split's shards, after any already complete; their sidecars."""
    from tqdm.auto import tqdm

    metas = completed_shards(out_dir, split)
    if metas and metas[-1]["final"]:
        return metas
    last = metas[-1] if metas else {"next": 0, "total_answer_positions": 0, "skipped": {}}
    total, skipped = last["total_answer_positions"], collections.Counter(last["skipped"])
    eos, vocab = eos_ids(model), model.get_output_embeddings().weight.shape[0]

    def stream(start: int) -> Iterator[tuple[int, Sequence | str]]:
        for i in range(start, len(plan)):
            record = records[plan[i]]
            distilled = None if record["has_answer"] else answers[record["id"]]["ids"]
            yield i + 1, build_sequence(tokenizer, record, distilled, eos, max_length, min_answer)

    todo = stream(last["next"]) if budget is None or total < budget else iter(())
    if budget is None:  # the bar's total: tokenize the rest first
        todo = list(todo)
        expected = total + sum(s.answers for _, s in todo if not isinstance(s, str))
    else:
        expected = budget
    bar = tqdm(total=expected, initial=total, unit="pos", desc=f"teacher {split}", disable=not progress,
               dynamic_ncols=True, smoothing=0.05)
    items, position, started = [], last["next"], time.perf_counter()
    for position, seq in todo:
        if isinstance(seq, str):
            skipped[seq] += 1
            continue
        if budget is not None and total + seq.answers > budget:
            if budget - total < min_answer:
                skipped["budget"] += 1
                break
            seq = cut(seq, budget - total)
        items.append((seq, teacher_forward(model, seq.tokens, seq.answer, topk, body_dtype=body_dtype)))
        total += seq.answers
        bar.update(seq.answers)
        if sum(s.answers for s, _ in items) >= shard_positions:
            metas.append(write_shard(out_dir, split, len(metas), items, vocab, {
                "next": position, "total_answer_positions": total, "skipped": dict(skipped), "final": False,
                "seconds": time.perf_counter() - started}))
            items, started = [], time.perf_counter()
        if budget is not None and total >= budget:
            break
    bar.close()
    state = {"next": position, "total_answer_positions": total, "skipped": dict(skipped), "final": True}
    if items:
        metas.append(write_shard(out_dir, split, len(metas), items, vocab,
                                 {**state, "seconds": time.perf_counter() - started}))
    elif metas:  # the last shard ended the split: mark it final
        metas[-1].update(state)
        _write_json(_shard(out_dir, split, len(metas) - 1, "json"), metas[-1])
    return metas


def split_summary(metas: list[dict]) -> dict:
    per = {key: collections.defaultdict(lambda: {"sequences": 0, "answer_positions": 0}) for key in
           ("categories", "sources")}
    for meta in metas:
        for key in per:
            for name, answers in zip(meta[key], meta["answers"]):
                per[key][name]["sequences"] += 1
                per[key][name]["answer_positions"] += answers
    seconds = sum(m["seconds"] for m in metas)
    answers = sum(m["answer_positions"] for m in metas)
    return {"shards": len(metas), "sequences": sum(m["sequences"] for m in metas),
            "self_distilled": sum(sum(m["distilled"]) for m in metas),
            "positions": sum(m["positions"] for m in metas),
            "answer_positions": answers, "seconds": seconds,
            "answer_positions_per_second": answers / seconds if seconds else None,
            "skipped": metas[-1]["skipped"] if metas else {},
            "complete": bool(metas) and metas[-1]["final"],
            **{key: dict(sorted(v.items())) for key, v in per.items()}}


def make_plan(out_dir: Path, records: list[dict], answers: dict, settings: dict) -> dict:
    """The order of both splits, written once (``plan.json``) so that reruns resume exactly."""
    path = out_dir / "plan.json"
    if path.is_file():
        plan = json.loads(path.read_text(encoding="utf-8"))
        if plan["settings"] != settings:
            raise ValueError(f"{out_dir} was started with {plan['settings']}, not {settings}: "
                             "use another out_dir (or delete it) to change them")
        return plan
    only = bool(settings.get("only_self_distilled"))
    plan = {"settings": settings, "answers": len(answers),
            "splits": {split: ordered([r for r in records if r["split"] == split], answers, only) for split in SPLITS}}
    _write_json(path, plan)
    return plan


def build_teacher(model, tokenizer, records: list[dict], answers: dict[str, dict], out_dir: str | os.PathLike, *,
                  max_length: int = 1024, min_answer: int = 16, topk: int = 32, max_positions: int | None = 2_500_000,
                  valid_max_positions: int | None = None, shard_positions: int = 65536,
                  progress: bool = True, splits: tuple[str, ...] = SPLITS, only_self_distilled: bool = False,
                  body_dtype: str = "float32") -> dict:
    """The shards of ``splits`` (resuming), ``token_counts.npy`` and the summary (returned, and ``teacher.json``).

    ``splits`` only picks which splits this run works on (``("valid",)`` builds the held-out shards before the
    train budget is reached); the plan and the settings stay those of the first run.  ``only_self_distilled``
    keeps only the records ``answers`` answers (e.g. the draft's rollouts of ``python -m specdec.train.rollouts``)."""
    from safetensors import safe_open

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    settings = {"max_length": max_length, "min_answer": min_answer, "topk": topk, "max_positions": max_positions,
                "valid_max_positions": valid_max_positions, "shard_positions": shard_positions}
    if only_self_distilled:  # only then in the settings: plans written before the option still match
        settings["only_self_distilled"] = True
    if body_dtype != "float32":  # likewise
        settings["body_dtype"] = body_dtype
    plan = make_plan(out_dir, records, answers, settings)
    if len(answers) != plan["answers"]:
        log.warning("answers.jsonl holds %d answers, the plan of %s used %d: new ones need a new out_dir",
                    len(answers), out_dir, plan["answers"])
    by_id = {r["id"]: r for r in records}
    budgets = {"train": max_positions, "valid": valid_max_positions}
    unknown = sorted(set(splits) - set(SPLITS))
    if unknown:
        raise ValueError(f"unknown teacher splits {unknown}: choose from {list(SPLITS)}")
    summary, started = {}, time.perf_counter()
    for split in splits:
        split_started = time.perf_counter()
        before = sum(m["answer_positions"] for m in completed_shards(out_dir, split))
        metas = run_split(model, tokenizer, by_id, answers, plan["splits"][split], out_dir, split, budgets[split],
                          max_length=max_length, min_answer=min_answer, topk=topk,
                          shard_positions=shard_positions, progress=progress, body_dtype=body_dtype)
        summary[split] = split_summary(metas)
        seconds = time.perf_counter() - split_started
        new = summary[split]["answer_positions"] - before
        summary[split]["no_answer"] = sum(1 for r in records if r["split"] == split and not r["has_answer"]
                                          and r["id"] not in plan["splits"][split])
        log.info("teacher %s: %d sequences, %d answer positions (%d new in %.0f s)", split,
                 summary[split]["sequences"], summary[split]["answer_positions"], new, seconds)
    counts = None
    for meta in completed_shards(out_dir, "train"):
        with safe_open(str(_shard(out_dir, "train", meta["shard"], "safetensors")), "np") as f:
            part = f.get_tensor("token_counts")
        counts = part if counts is None else counts + part
    if counts is not None:
        np.save(out_dir / "token_counts.npy", counts)
    summary["seconds_this_run"] = time.perf_counter() - started
    summary["settings"] = settings
    return summary


# -- reading -------------------------------------------------------------------------------------

def iter_teacher(folder: str | os.PathLike, split: str) -> Iterator[dict]:
    """The split's shards in order, each a dict of numpy arrays plus ``meta`` (its sidecar)."""
    from safetensors.numpy import load_file

    folder = Path(folder)
    index = 0
    while _shard(folder, split, index, "json").is_file():
        data = load_file(str(_shard(folder, split, index, "safetensors")))
        data["meta"] = json.loads(_shard(folder, split, index, "json").read_text(encoding="utf-8"))
        yield data
        index += 1
    if index == 0:
        raise FileNotFoundError(f"no {split} shards in {folder}: run `python -m specdec.train.teacher` first")


def load_teacher(folder: str | os.PathLike, split: str) -> dict:
    """All of a split's shards in memory, concatenated (offsets shifted; ``ids``/``categories`` lists)."""
    parts = list(iter_teacher(folder, split))
    out = {key: np.concatenate([p[key] for p in parts]) for key in
           ("tokens", "hidden", "answer", "topk_ids", "topk_logprobs")}
    for key, base in (("offsets", "tokens"), ("answer_offsets", "topk_ids")):
        shift = np.cumsum([0] + [len(p[base]) for p in parts[:-1]])
        out[key] = np.concatenate([parts[0][key][:1]] + [p[key][1:] + s for p, s in zip(parts, shift)])
    out["token_counts"] = sum(p["token_counts"] for p in parts)
    out["ids"] = [i for p in parts for i in p["meta"]["ids"]]
    out["categories"] = [c for p in parts for c in p["meta"]["categories"]]
    return out


@hydra.main(version_base="1.3", config_path="pkg://specdec.configs", config_name="train/teacher")
def main(cfg: DictConfig) -> None:
    if cfg.target.get("num_threads"):
        torch.set_num_threads(int(cfg.target.num_threads))
    records = load_corpus(cfg.corpus)
    answers = load_answers(cfg.answers)
    model, tokenizer = instantiate(cfg.target.load)
    optional = lambda v: None if v is None else int(v)  # noqa: E731
    summary = build_teacher(model, tokenizer, records, answers, cfg.out_dir, max_length=int(cfg.max_length),
                            min_answer=int(cfg.min_answer), topk=int(cfg.topk),
                            max_positions=optional(cfg.max_positions),
                            valid_max_positions=optional(cfg.valid_max_positions),
                            shard_positions=int(cfg.shard_positions), progress=bool(cfg.progress),
                            splits=tuple(cfg.splits), only_self_distilled=bool(cfg.get("only_self_distilled", False)),
                            body_dtype=str(cfg.get("body_dtype", "float32")))
    summary["target"] = cfg.target.name
    summary["config"] = OmegaConf.to_container(cfg, resolve=True)
    _write_json(Path(cfg.out_dir) / "teacher.json", summary)
    log.info("teacher outputs in %.0f s -> %s", summary["seconds_this_run"], cfg.out_dir)


if __name__ == "__main__":
    main()
