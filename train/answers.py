"""``python -m specdec.train.answers``: the target's own greedy answers to corpus v2's prompt-only records.

Records of ``corpus.jsonl`` that end in a user turn (both splits, in corpus order, the first
``limit`` of them) are answered with plain batched decoding (``specdec.generate_pool``, EQSPEC).
Pending prompts are taken ``sort_window`` at a time, sorted by length (less padding per batch)
and decoded in chunks of ``chunk_size``; each chunk is appended to ``answers.jsonl`` as soon as it
is done, one line per record::

    {"id", "answer": decoded text, "ids": generated token ids (EOS included when reached),
     "prompt_tokens", "finished": ended with EOS}

A rerun skips the ids already there, so an interrupted run resumes where it stopped.
"""
from __future__ import annotations

import json
import logging
import os
import time
import zlib
from pathlib import Path

import hydra
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

import specdec
from specdec.chat import encode_chat

from .corpus_build import load_corpus

log = logging.getLogger("specdec.train.answers")


def prompt_records(records: list[dict], limit: int | None = None) -> list[dict]:
    """The records that end in a user turn, in corpus order (the first ``limit``)."""
    prompts = [r for r in records if not r["has_answer"]]
    return prompts if limit is None else prompts[:limit]


def load_answers(path: str | os.PathLike) -> dict[str, dict]:
    """The lines of an ``answers.jsonl`` by id ({} when missing); an unfinished last line is ignored."""
    path = Path(path)
    if not path.is_file():
        return {}
    out = {}
    for line in path.read_text(encoding="utf-8").splitlines(keepends=True):
        if line.endswith("\n"):
            row = json.loads(line)
            out[row["id"]] = row
    return out


def _drop_partial_line(path: Path) -> None:
    """Cut a line left unfinished by a killed run, so that appending starts on a fresh line."""
    if path.is_file() and path.stat().st_size:
        data = path.read_bytes()
        if not data.endswith(b"\n"):
            path.write_bytes(data[: data.rfind(b"\n") + 1])


def eos_ids(model) -> list[int]:
    eos = getattr(model.generation_config, "eos_token_id", None)
    return [] if eos is None else [eos] if isinstance(eos, int) else list(eos)


def answer(model, tokenizer, records: list[dict], out_path: str | os.PathLike, max_new_tokens: int = 192,
           batch_size: int = 16, chunk_size: int = 64, sort_window: int = 256, progress: bool = True, *,
           temperature: float | None = None, seed: int = 0, eos: list[int] | None = None) -> dict:
    """Answer every record of ``records`` not yet in ``out_path``, appending after every chunk; returns stats.

    ``temperature=None`` decodes greedily; a temperature samples, each chunk seeded from ``seed`` and
    its first record's id (a resumed run draws its new chunks as freshly as an uninterrupted one).
    ``eos`` defaults to ``model``'s."""
    from tqdm.auto import tqdm

    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    _drop_partial_line(out_path)
    done = load_answers(out_path)
    pending = [r for r in records if r["id"] not in done]
    eos = eos_ids(model) if eos is None else list(eos)
    stats = {"prompts": len(records), "already_done": len(records) - len(pending), "answered": 0,
             "new_tokens": 0, "finished": 0, "seconds": 0.0}
    bar = tqdm(total=len(records), initial=stats["already_done"], unit="prompt", disable=not progress,
               desc="answers", dynamic_ncols=True)
    started = time.perf_counter()
    for w in range(0, len(pending), sort_window):
        window = [(r, encode_chat(tokenizer, r["messages"])[0].tolist()) for r in pending[w: w + sort_window]]
        window.sort(key=lambda rp: len(rp[1]))
        for c in range(0, len(window), chunk_size):
            chunk = window[c: c + chunk_size]
            sampling = {} if temperature is None else {
                "do_sample": True, "temperature": float(temperature),
                "seed": (int(seed) * 1_000_003 + zlib.crc32(chunk[0][0]["id"].encode())) % 2**31}
            with torch.inference_mode():
                out = specdec.generate_pool(model, [p for _, p in chunk], None, batch_size=batch_size,
                                            schedule="eqspec", max_new_tokens=max_new_tokens,
                                            eos_token_id=eos, **sampling)
            lines = []
            for (record, prompt), seq in zip(chunk, out.sequences):
                ids = seq[len(prompt):].tolist()
                finished = bool(ids) and ids[-1] in eos
                stats["new_tokens"] += len(ids)
                stats["finished"] += finished
                lines.append(json.dumps({"id": record["id"], "answer": tokenizer.decode(ids, skip_special_tokens=True),
                                         "ids": ids, "prompt_tokens": len(prompt), "finished": finished},
                                        ensure_ascii=False) + "\n")
            with open(out_path, "a", encoding="utf-8") as f:
                f.writelines(lines)
                f.flush()
                os.fsync(f.fileno())
            stats["answered"] += len(chunk)
            stats["seconds"] = time.perf_counter() - started
            bar.update(len(chunk))
            bar.set_postfix(tok_s=f"{stats['new_tokens'] / max(stats['seconds'], 1e-9):.1f}")
    bar.close()
    stats["seconds"] = time.perf_counter() - started
    stats["tokens_per_second"] = stats["new_tokens"] / max(stats["seconds"], 1e-9)
    return stats


@hydra.main(version_base="1.3", config_path="pkg://specdec.configs", config_name="train/answers")
def main(cfg: DictConfig) -> None:
    if cfg.target.get("num_threads"):
        torch.set_num_threads(int(cfg.target.num_threads))
    records = prompt_records(load_corpus(cfg.corpus), None if cfg.limit is None else int(cfg.limit))
    model, tokenizer = instantiate(cfg.target.load)
    stats = answer(model, tokenizer, records, cfg.out, int(cfg.max_new_tokens), int(cfg.batch_size),
                   int(cfg.chunk_size), int(cfg.sort_window), bool(cfg.progress))
    log.info("%d prompts answered (%d were done), %d new tokens in %.0f s: %.1f tokens/s -> %s", stats["answered"],
             stats["already_done"], stats["new_tokens"], stats["seconds"], stats["tokens_per_second"], cfg.out)
    record_run(cfg, stats, "answers.json", ("answers", "answer_tokens"))


def record_run(cfg: DictConfig, stats: dict, name: str, count_keys: tuple[str, str], extra: dict | None = None) -> None:
    """Beside ``cfg.out``, the JSON file ``name``: the lines and tokens it now holds (under ``count_keys``),
    ``extra``, and every run so far with its stats and config (this one appended)."""
    summary = Path(cfg.out).with_name(name)
    runs = json.loads(summary.read_text())["runs"] if summary.is_file() else []
    runs.append({**stats, "target": cfg.target.name, "config": OmegaConf.to_container(cfg, resolve=True)})
    total = load_answers(cfg.out)
    summary.write_text(json.dumps({count_keys[0]: len(total), count_keys[1]: sum(len(a["ids"]) for a in total.values()),
                                   **(extra or {}), "runs": runs}, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
