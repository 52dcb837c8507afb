"""``python -m specdec.train.corpus_build``: corpus v2, chat records built from text that installs with pip.

Sources (``train/sources/``, one module per package): ShareGPT chats with reference answers, State of
the Union chunks, Python's documentation, HumanEval stubs, maths problems, German course content and
message catalogues, as the prompts users send (summarise, answer from a context, translate, follow up,
write code, solve step by step).  The build then

1. runs the shared decontamination check (``decontam``, its ``contaminated(text)``) and an overlap check
   against the benchmark's own prompts on every record (all message text joined), dropping what they flag;
2. drops exact duplicates and records over the length limits (SmolLM2 tokens, chat template included:
   ``max_tokens`` for a chat with its reference answer, ``max_prompt_tokens`` for a prompt the target
   will answer);
3. puts each group (the record id without its last part) on the train or valid side by a seeded hash,
   shuffles with the seed and writes ``<out_dir>/corpus.jsonl`` and the data card (``card.json``,
   ``CARD.md``).

The same seed, packages and tokenizer give the same ``corpus.jsonl``.
"""
from __future__ import annotations

import collections
import hashlib
import importlib
import importlib.util
import json
import logging
import os
import random
import re
import time
from pathlib import Path
from typing import Callable

import hydra
from omegaconf import DictConfig, OmegaConf

from specdec.chat import chat_ids

from .corpus_card import write_card
from .sources import SOURCES, group_of, package_card

log = logging.getLogger("specdec.train.corpus_build")


class TokenCounter:
    """Token counts of message texts (cached) and of whole chats under the tokenizer's chat template."""

    def __init__(self, tokenizer, batch_size: int = 256):
        self.tokenizer, self.batch_size, self.cache = tokenizer, batch_size, {}
        self.overhead = template_overhead(tokenizer, self.encode)

    def encode(self, texts: list[str]) -> list[int]:
        return [len(ids) for ids in self.tokenizer(texts, add_special_tokens=False)["input_ids"]]

    def count(self, texts: list[str]) -> list[int]:
        todo = sorted({t for t in texts if t not in self.cache})
        for i in range(0, len(todo), self.batch_size):
            batch = todo[i: i + self.batch_size]
            self.cache.update(zip(batch, self.encode(batch)))
        return [self.cache[t] for t in texts]

    def chat(self, messages: list[dict], generation_prompt: bool) -> tuple[int, int]:
        """(all tokens, assistant tokens) of a chat; the assistant's include its role header and end marker."""
        o = self.overhead
        counts = self.count([m["content"] for m in messages])
        total = 0 if messages[0]["role"] == "system" else o["default_system"]
        total += o["generation"] if generation_prompt else 0
        answer = 0
        for m, n in zip(messages, counts):
            total += n + o[m["role"]]
            answer += n + o[m["role"]] if m["role"] == "assistant" else 0
        return total, answer


def template_overhead(tokenizer, encode) -> dict[str, int]:
    """Tokens the chat template adds: per message role, the default system prompt, the generation prompt."""
    def n(roles, generation=False):
        return len(chat_ids(tokenizer, [{"role": r, "content": "x"} for r in roles], generation))

    x = encode(["x"])[0]
    system = n(["system"]) - x
    user = n(["system", "user"]) - n(["system"]) - x
    assistant = n(["system", "user", "assistant"]) - n(["system", "user"]) - x
    return {"system": system, "user": user, "assistant": assistant, "default_system": n(["user"]) - user - x,
            "generation": n(["system", "user"], True) - n(["system", "user"])}


def load_checker(path: str | os.PathLike) -> Callable[[str], bool]:
    """``contaminated(text)`` from the shared decontamination script."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"decontamination script {path} not found (set decontam=/path/to/check.py)")
    spec = importlib.util.spec_from_file_location("specdec_decontam_check", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.contaminated


class BenchOverlap:
    """Flags text sharing ``min_hits`` word 8-grams with one benchmark prompt, or holding a whole short question."""

    def __init__(self, prompts: list[str], n: int = 8, min_hits: int = 3, short: int = 20):
        self.n, self.min_hits = n, min_hits
        self.grams = [self._grams(p, n) for p in prompts]
        self.questions = [g for p in prompts if len(self._words(p)) <= short and (g := self._grams(p, 5))]
        self.any_gram = set().union(*self.grams, *self.questions)

    @staticmethod
    def _words(text: str) -> list[str]:
        return re.findall(r"\w+", text.lower())

    def _grams(self, text: str, n: int) -> set[tuple[str, ...]]:
        w = self._words(text)
        return {tuple(w[i: i + n]) for i in range(len(w) - n + 1)}

    def __call__(self, text: str) -> bool:
        grams = self._grams(text, self.n) & self.any_gram
        if grams and any(len(grams & g) >= self.min_hits for g in self.grams):
            return True
        small = self._grams(text, 5) & self.any_gram
        return any(q <= small for q in self.questions)


def bench_texts() -> list[str]:
    """The user and assistant messages of the packaged benchmark prompts.

    Their system messages are left out: the RAG instruction is the standard one that the corpus's own RAG
    prompts use on purpose; it carries no evaluation content.
    """
    from .measure import bench_prompt_files  # the packaged prompt files: data, not benchmark code

    texts = []
    for path in bench_prompt_files():
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                texts += [m["content"] for m in json.loads(line)["messages"] if m["role"] != "system"]
    return texts


def split_of(record_id: str, seed: int, valid_fraction: float) -> str:
    h = int(hashlib.sha1(f"{seed}:{group_of(record_id)}".encode()).hexdigest()[:15], 16) / 16**15
    return "valid" if h < valid_fraction else "train"


def source_config(cfg: DictConfig, name: str, counter: TokenCounter) -> DictConfig:
    """A source's config section plus the build-wide limits and the template overhead it may need."""
    o = counter.overhead
    extra = {"max_tokens": int(cfg.max_tokens), "max_prompt_tokens": int(cfg.max_prompt_tokens),
             "overhead": [o["default_system"], o["user"], o["assistant"]]}
    return OmegaConf.merge(OmegaConf.create(extra), cfg.sources[name])


def build(cfg: DictConfig, counter: TokenCounter, checks: dict[str, Callable[[str], bool]],
          progress: bool = False) -> tuple[list[dict], dict]:
    """Records of every enabled source after the checks and limits, shuffled, with ``split``; and the counts."""
    from tqdm.auto import tqdm

    seed, kept, seen = int(cfg.seed), [], set()
    stats = collections.defaultdict(lambda: collections.Counter())
    names = [s for s in SOURCES if s in cfg.sources and cfg.sources[s].get("enabled", True)]
    for name in tqdm(names, desc="sources", disable=not progress):
        module = importlib.import_module(f"{__package__}.sources.{name}")
        started = time.perf_counter()
        records = module.records(source_config(cfg, name, counter), random.Random(f"{seed}:{name}"), counter.count)
        st = stats[name]
        st["built"] += len(records)
        for rec in tqdm(records, desc=f"check {name}", disable=not progress, leave=False):
            text = "\n".join(m["content"] for m in rec["messages"])
            flags = [label for label, check in checks.items() if check(text)]
            for label in flags:
                st[f"flagged_{label}"] += 1
            if flags:
                continue
            digest = hashlib.sha1(json.dumps(rec["messages"], sort_keys=True).encode()).hexdigest()
            if digest in seen:
                st["duplicates"] += 1
                continue
            seen.add(digest)
            total, answer = counter.chat(rec["messages"], generation_prompt=not rec["has_answer"])
            if total > int(cfg.max_tokens if rec["has_answer"] else cfg.max_prompt_tokens):
                st["too_long"] += 1
                continue
            rec["split"] = split_of(rec["id"], seed, float(cfg.valid_fraction))
            rec["tokens"], rec["answer_tokens"] = total, answer if rec["has_answer"] else 0
            kept.append(rec)
        st["seconds"] = round(time.perf_counter() - started, 1)
    kept.sort(key=lambda r: r["id"])
    random.Random(seed).shuffle(kept)
    return kept, {k: dict(v) for k, v in stats.items()}


def write_jsonl(path: Path, records: list[dict]) -> None:
    """One record per line (token counts left to the card), written atomically."""
    tmp = path.with_suffix(".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        for r in records:
            row = {k: r[k] for k in ("id", "source", "category", "split", "has_answer", "messages")}
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    os.replace(tmp, path)


def load_corpus(path: str | os.PathLike, split: str | None = None) -> list[dict]:
    """The records of a ``corpus.jsonl`` (``split``: only ``train`` or ``valid``)."""
    with open(path, encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return [r for r in rows if split is None or r["split"] == split]


def source_packages(cfg: DictConfig) -> dict[str, dict]:
    out = {}
    for name in SOURCES:
        if name in cfg.sources and cfg.sources[name].get("enabled", True):
            module = importlib.import_module(f"{__package__}.sources.{name}")
            dists = module.cards(cfg.sources[name]) if hasattr(module, "cards") else \
                [package_card(d) for d in module.PACKAGES]
            out[name] = {"packages": dists, "note": module.NOTE}
    return out


def load_tokenizer(name_or_path: str):
    from transformers import AutoTokenizer

    from specdec.loading import REGISTRY, cached_model_dir

    path = cached_model_dir(name_or_path) if str(name_or_path).lower() in REGISTRY else name_or_path
    return AutoTokenizer.from_pretrained(path)


@hydra.main(version_base="1.3", config_path="pkg://specdec.configs", config_name="train/corpus")
def main(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig

    started = time.perf_counter()
    out_dir = Path(cfg.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    counter = TokenCounter(load_tokenizer(cfg.tokenizer))
    checks = {"decontam": load_checker(cfg.decontam), "bench": BenchOverlap(bench_texts())}
    records, stats = build(cfg, counter, checks, progress=bool(cfg.progress))
    write_jsonl(out_dir / "corpus.jsonl", records)
    command = " ".join(["python -m specdec.train.corpus_build", *HydraConfig.get().overrides.task])
    card = write_card(out_dir, records, stats, source_packages(cfg), cfg, command, time.perf_counter() - started)
    log.info("%d records (%d with answers), %d tokens, ~%d training positions in %.0f s -> %s", card["records"],
             card["with_answer"], card["tokens"], card["estimated_positions"], card["wall_seconds"], out_dir)


if __name__ == "__main__":
    main()
