"""Message catalogues (``.po``) inside installed packages: interface strings in English with their translations.

Django ships German, French, Spanish and other catalogues for every app.  Entries (``msgid`` English,
``msgstr`` the translation; fuzzy, untranslated and one- or two-word entries skipped) are grouped into
numbered lists and asked mostly from the foreign language into English, with the English as the
reference answer; ``self_distill_fraction`` are left without an answer.
"""
from __future__ import annotations

import random
import re

from . import package_card, package_dir, record

PACKAGES = ["django"]  # the default; the config's ``packages`` decides
NOTE = "Django's locale/<lang>/LC_MESSAGES/*.po message catalogues (BSD-3-Clause)."
LANGUAGES = {"de": "German", "fr": "French", "es": "Spanish", "it": "Italian", "pt": "Portuguese", "nl": "Dutch"}

TO_ENGLISH = [
    "Translate these messages from a web application's interface from {lang} into English:\n\n{text}",
    "Translate the following {lang} sentences into English:\n\n{text}",
    "What do these {lang} phrases mean in English? Keep the numbering.\n\n{text}",
]
FROM_ENGLISH = [
    "Translate these interface messages from English into {lang}:\n\n{text}",
    "Please translate the following sentences into {lang}:\n\n{text}",
]
_ESCAPES = {"n": "\n", "t": "\t", '"': '"', "\\": "\\"}


def _unquote(s: str) -> str:
    return re.sub(r'\\(.)', lambda m: _ESCAPES.get(m.group(1), m.group(1)), s)


def parse_po(text: str) -> list[tuple[str, str]]:
    """``(msgid, msgstr)`` of a .po file's translated, non-fuzzy entries (plurals: the singular forms)."""
    out: list[tuple[str, str]] = []
    entry: dict[str, str] = {}
    fuzzy, field = False, None

    def flush():
        nonlocal fuzzy
        msgid, msgstr = entry.get("msgid", ""), entry.get("msgstr", entry.get("msgstr[0]", ""))
        if msgid and msgstr and not fuzzy:
            out.append((msgid, msgstr))
        entry.clear()
        fuzzy = False

    for line in text.splitlines() + [""]:
        line = line.strip()
        if not line:
            if entry:
                flush()
            field = None
        elif line.startswith("#"):
            if entry and field is not None:
                flush()
                field = None
            fuzzy = fuzzy or (line.startswith("#,") and "fuzzy" in line)
        elif line.startswith('"') and field is not None:
            entry[field] += _unquote(line[1:-1])
        else:
            m = re.match(r'(msgctxt|msgid_plural|msgid|msgstr(?:\[\d+\])?)\s+"(.*)"$', line)
            if m:
                if m.group(1) in ("msgctxt", "msgid") and "msgstr" in "".join(entry):
                    flush()
                field = m.group(1)
                entry[field] = _unquote(m.group(2))
    return out


def load_catalogues(packages: list[str], languages: list[str]) -> dict[str, list[str]]:
    """Language code -> the texts of every ``locale/<lang>/LC_MESSAGES/*.po`` inside the packages."""
    return {lang: [p.read_text(encoding="utf-8") for pkg in packages
                   for p in sorted(package_dir(pkg).rglob(f"locale/{lang}/LC_MESSAGES/*.po"))] for lang in languages}


def usable(msgid: str, msgstr: str, min_words: int) -> bool:
    return len(msgid.split()) >= min_words and msgid.strip() != msgstr.strip() and "\n" not in msgid.strip()


def records(cfg, rng: random.Random, count=None) -> list[dict]:
    catalogues = load_catalogues(list(cfg.packages), list(cfg.languages))
    lo, hi = cfg.group_sizes
    out = []
    for lang in sorted(catalogues):
        entries = sorted({(i, s) for text in catalogues[lang] for i, s in parse_po(text)
                          if usable(i, s, int(cfg.min_words))})
        seen, unique = set(), []
        for msgid, msgstr in entries:  # one translation per English string
            if msgid not in seen:
                seen.add(msgid)
                unique.append((msgid.strip(), msgstr.strip()))
        rng.shuffle(unique)
        i = k = 0
        while i < len(unique):
            group = unique[i: i + rng.randint(lo, hi)]
            i += len(group)
            english = "\n".join(f"{n}. {e}" for n, (e, _) in enumerate(group, 1))
            foreign = "\n".join(f"{n}. {f}" for n, (_, f) in enumerate(group, 1))
            name = LANGUAGES.get(lang, lang)
            if rng.random() < float(cfg.to_english):
                prompt, answer = rng.choice(TO_ENGLISH).format(lang=name, text=foreign), english
            else:
                prompt, answer = rng.choice(FROM_ENGLISH).format(lang=name, text=english), foreign
            answered = rng.random() >= float(cfg.self_distill_fraction)
            msgs = [("user", prompt)] + ([("assistant", answer)] if answered else [])
            out.append(record("catalogues", f"{lang}-{k:04d}/0", "translation", msgs))
            k += 1
    return out


def cards(cfg) -> list[dict]:
    return [package_card(p) for p in cfg.packages]
