"""The data card of corpus v2: ``card.json`` (everything, for scripts) and ``CARD.md`` (the same, for people)."""
from __future__ import annotations

import collections
import hashlib
import json
import platform
from pathlib import Path

from omegaconf import OmegaConf

EXCLUDED = ("Nothing built on MT-bench, GSM8K's test split, CNN/DailyMail, Natural Questions, WMT14's test set or "
            "BIG-bench, and none of the benchmark's prompts (bench/prompts/).")


def _sums(records: list[dict], key: str, answer_len: int) -> dict[str, dict]:
    out: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    lengths: dict[str, list[int]] = collections.defaultdict(list)
    for r in records:
        c = out[r[key]]
        c["records"] += 1
        c["with_answer" if r["has_answer"] else "self_distill"] += 1
        c[r["split"]] += 1
        c["tokens"] += r["tokens"]
        c["answer_tokens"] += r["answer_tokens"]
        lengths[r[key]].append(r["tokens"])
    table = {}
    for name in sorted(out):
        c, ls = out[name], sorted(lengths[name])
        table[name] = {k: c[k] for k in ("records", "with_answer", "self_distill", "train", "valid", "tokens",
                                         "answer_tokens")}
        table[name]["estimated_positions"] = c["answer_tokens"] + answer_len * c["self_distill"]
        table[name]["tokens_per_record"] = {"median": ls[len(ls) // 2], "p90": ls[int(len(ls) * 0.9)], "max": ls[-1]}
    return table


def card_data(records, stats, packages, cfg, command, seconds, corpus_sha256: str) -> dict:
    answer_len = int(cfg.self_distill_answer_tokens)
    by_source = _sums(records, "source", answer_len)
    for name, st in stats.items():
        by_source.setdefault(name, {"records": 0})
        by_source[name]["checks"] = {k: st.get(k, 0) for k in ("built", "flagged_decontam", "flagged_bench",
                                                               "duplicates", "too_long")}
        by_source[name]["seconds"] = st.get("seconds")
        by_source[name].update(packages.get(name, {}))
    with_answer = sum(r["has_answer"] for r in records)
    answer_tokens = sum(r["answer_tokens"] for r in records)
    return {
        "command": command, "seed": int(cfg.seed), "records": len(records), "with_answer": with_answer,
        "self_distill": len(records) - with_answer, "tokens": sum(r["tokens"] for r in records),
        "answer_tokens": answer_tokens,
        "estimated_positions": answer_tokens + answer_len * (len(records) - with_answer),
        "self_distill_answer_tokens": answer_len,
        "splits": dict(collections.Counter(r["split"] for r in records)),
        "flagged": {name: st.get("flagged_decontam", 0) + st.get("flagged_bench", 0) for name, st in stats.items()},
        "by_category": _sums(records, "category", answer_len), "by_source": by_source,
        "limits": {"max_tokens": int(cfg.max_tokens), "max_prompt_tokens": int(cfg.max_prompt_tokens),
                   "valid_fraction": float(cfg.valid_fraction)},
        "tokenizer": str(cfg.tokenizer), "python": platform.python_version(), "corpus_sha256": corpus_sha256,
        "wall_seconds": round(seconds, 1), "excluded": EXCLUDED,
        "config": OmegaConf.to_container(cfg.sources, resolve=True),
    }


def markdown(card: dict) -> str:
    lines = [
        "# Corpus v2: data card", "",
        f"`{card['command']}` (seed {card['seed']}, Python {card['python']}, tokenizer `{card['tokenizer']}`), "
        f"{card['wall_seconds']:.0f} s.", "",
        f"{card['records']:,} records: {card['with_answer']:,} end in a reference answer, {card['self_distill']:,} are "
        f"prompts for self-distillation (the target writes the answer). {card['tokens']:,} tokens, chat template "
        f"included; {card['answer_tokens']:,} reference-answer tokens; about {card['estimated_positions']:,} training "
        f"positions counting {card['self_distill_answer_tokens']} per self-distilled answer. Split: "
        + ", ".join(f"{k} {v:,}" for k, v in sorted(card["splits"].items())) + " (by group: a conversation or document "
        f"chunk stays on one side). Chats with answers fit {card['limits']['max_tokens']} tokens, prompts "
        f"{card['limits']['max_prompt_tokens']}.", "",
        "## Sources", "",
        "| source | packages (version, licence) | records | with answer | self-distill | tokens | answer tokens "
        "| flagged (decontam / bench) | duplicates | too long |",
        "|---|---|---:|---:|---:|---:|---:|---|---:|---:|",
    ]
    for name, s in card["by_source"].items():
        pk = "; ".join(f"{p['package']} {p['version']} ({p['license']})" for p in s.get("packages", [])) or "–"
        ch = s.get("checks", {})
        lines.append(f"| {name} | {pk} | {s.get('records', 0):,} | {s.get('with_answer', 0):,} | "
                     f"{s.get('self_distill', 0):,} | {s.get('tokens', 0):,} | {s.get('answer_tokens', 0):,} | "
                     f"{ch.get('flagged_decontam', 0)} / {ch.get('flagged_bench', 0)} | {ch.get('duplicates', 0)} | "
                     f"{ch.get('too_long', 0)} |")
    lines += ["", "Provenance:", ""] + [f"- **{n}**: {s.get('note', '')}" for n, s in card["by_source"].items()]
    lines += ["", "## Categories", "",
              "| category | records | with answer | self-distill | tokens | answer tokens | est. positions "
              "| tokens per record (median / p90 / max) |", "|---|---:|---:|---:|---:|---:|---:|---|"]
    for name, c in card["by_category"].items():
        t = c["tokens_per_record"]
        lines.append(f"| {name} | {c['records']:,} | {c['with_answer']:,} | {c['self_distill']:,} | {c['tokens']:,} | "
                     f"{c['answer_tokens']:,} | {c['estimated_positions']:,} | "
                     f"{t['median']} / {t['p90']} / {t['max']} |")
    lines += ["", "## Checks", "",
              "Every record built (all message text joined) goes through the shared decontamination script "
              "(`contaminated(text)`) and an overlap check against the benchmark's prompts (3 shared word 8-grams "
              "with one prompt, or a whole short question); flagged records are dropped, then exact duplicates and "
              "records over the length limits.", "", card["excluded"], "",
              "## Format", "",
              "`corpus.jsonl`, one record per line: `id` (`<source>/<group>/<n>`), `source`, `category`, `split` "
              "(`train`/`valid`), `has_answer` (the last message is a reference assistant answer; false: the chat "
              "ends with a user turn), `messages` (`role`, `content`). Records are in a seeded random order. "
              f"sha256 `{card['corpus_sha256']}`.", ""]
    return "\n".join(lines)


def write_card(out_dir: Path, records, stats, packages, cfg, command: str, seconds: float) -> dict:
    digest = hashlib.sha256((Path(out_dir) / "corpus.jsonl").read_bytes()).hexdigest()
    card = card_data(records, stats, packages, cfg, command, seconds, digest)
    (Path(out_dir) / "card.json").write_text(json.dumps(card, indent=2) + "\n", encoding="utf-8")
    (Path(out_dir) / "CARD.md").write_text(markdown(card), encoding="utf-8")
    return card
